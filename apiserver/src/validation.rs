//! What the real API server does to these kinds on the way in: defaults, validation (with
//! field causes), and `ClusterIP` and `NodePort` allocation for Services.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::error::Cause;
use crate::net::Ranges;
use crate::resources::{ENDPOINTSLICES, NAMESPACES, PODS, Resource, SECRETS, SERVICES};
use crate::store::View;

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

pub fn name_message(res: &Resource) -> &'static str {
    if res.plural == SERVICES.plural {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
    } else if res.plural == NAMESPACES.plural {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    }
}

pub fn valid_name(res: &Resource, name: &str) -> bool {
    if res.plural == SERVICES.plural {
        is_dns1035_label(name)
    } else if res.plural == NAMESPACES.plural {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Fills in what the real API server defaults.
pub fn apply_defaults(res: &Resource, obj: &mut Value) {
    if res.plural == PODS.plural {
        let spec = &mut obj["spec"];
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
        ] {
            if spec.get(k).is_none_or(Value::is_null) {
                spec[k] = v;
            }
        }
        if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
            for c in containers {
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if p.get("protocol").is_none_or(Value::is_null) {
                            p["protocol"] = json!("TCP");
                        }
                    }
                }
            }
        }
        if obj["status"]["phase"].is_null() {
            obj["status"]["phase"] = json!("Pending");
        }
    } else if res.plural == SERVICES.plural {
        let spec = &mut obj["spec"];
        if spec.get("type").is_none_or(Value::is_null) {
            spec["type"] = json!("ClusterIP");
        }
        let external_name = spec["type"] == "ExternalName";
        if !external_name {
            for (k, v) in [
                ("sessionAffinity", json!("None")),
                ("internalTrafficPolicy", json!("Cluster")),
            ] {
                if spec.get(k).is_none_or(Value::is_null) {
                    spec[k] = v;
                }
            }
        }
        if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
            && spec.get("externalTrafficPolicy").is_none_or(Value::is_null)
        {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if p.get("protocol").is_none_or(Value::is_null) {
                    p["protocol"] = json!("TCP");
                }
                if p.get("targetPort").is_none_or(Value::is_null) && !external_name {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
        if obj.get("status").is_none_or(Value::is_null) {
            obj["status"] = json!({"loadBalancer": {}});
        }
    } else if res.plural == NAMESPACES.plural {
        if obj["spec"]["finalizers"].is_null() {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        obj["status"]["phase"] = json!("Active");
        let name = obj["metadata"]["name"].clone();
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    } else if res.plural == SECRETS.plural {
        if obj.get("type").is_none_or(Value::is_null) {
            obj["type"] = json!("Opaque");
        }
        // stringData is write-only: it is folded into data, base64-encoded.
        if let Some(Value::Object(strings)) =
            obj.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            for (k, v) in strings {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                obj["data"][k] = json!(crate::pki::base64(text.as_bytes()));
            }
        }
    }
}

/// Checks an object (after defaults); `old` is the stored one on update.
pub fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &obj["metadata"];
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
            if !v.as_str().is_some_and(is_label_value) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
        }
    }
    if res.plural == PODS.plural {
        validate_pod(obj, old, &mut causes);
    } else if res.plural == SERVICES.plural {
        validate_service(obj, old, &mut causes);
    } else if res.plural == ENDPOINTSLICES.plural {
        validate_endpoint_slice(obj, old, &mut causes);
    } else if res.plural == SECRETS.plural
        && let Some(data) = obj.get("data").and_then(Value::as_object)
    {
        for k in data.keys() {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                causes.push(Cause::invalid(
                    format!("data[{k}]"),
                    format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
        }
    }
    causes
}

fn valid_port(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

fn validate_pod(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            let mut names = HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let field = format!("spec.containers[{i}]");
                match str_at(c, "name") {
                    None | Some("") => causes.push(Cause::required(format!("{field}.name"))),
                    Some(n) if !is_dns1123_label(n) => causes.push(Cause::invalid(
                        format!("{field}.name"),
                        format!("Invalid value: {n:?}: {}", name_message(&NAMESPACES)),
                    )),
                    Some(n) if !names.insert(n) => {
                        causes.push(Cause::duplicate(
                            format!("{field}.name"),
                            format!("Duplicate value: {n:?}"),
                        ));
                    }
                    Some(_) => {}
                }
                if str_at(c, "image").is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{field}.image")));
                }
                for (j, p) in c
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if !valid_port(&p["containerPort"]) {
                        causes.push(Cause::invalid(
                            format!("{field}.ports[{j}].containerPort"),
                            format!(
                                "Invalid value: {}: must be between 1 and 65535, inclusive",
                                p["containerPort"]
                            ),
                        ));
                    }
                }
            }
        }
        _ => causes.push(Cause::required("spec.containers")),
    }
    if let Some(old) = old {
        // Only images may change in a running Pod's spec.
        let strip = |spec: &Value| {
            let mut spec = spec.clone();
            if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
            if let Some(s) = spec.as_object_mut() {
                s.remove("activeDeadlineSeconds");
                s.remove("tolerations");
                s.remove("terminationGracePeriodSeconds");
            }
            spec
        };
        if strip(&old["spec"]) != strip(spec) {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "spec".to_owned(),
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_owned(),
            });
        }
    }
}

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn validate_service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(Cause::not_supported(
            "spec.type",
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    if ty == "ExternalName" && str_at(spec, "externalName").is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.externalName"));
    }
    let headless = spec["clusterIP"] == "None";
    let ports = spec.get("ports").and_then(Value::as_array);
    if ports.is_none_or(Vec::is_empty) && !headless && ty != "ExternalName" {
        causes.push(Cause::required("spec.ports"));
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match str_at(p, "name") {
            None | Some("") if ports.len() > 1 => {
                causes.push(Cause::required(format!("{field}.name")));
            }
            Some(n) if !n.is_empty() && !is_dns1123_label(n) => causes.push(Cause::invalid(
                format!("{field}.name"),
                format!("Invalid value: {n:?}: {}", name_message(&NAMESPACES)),
            )),
            Some(n) if !n.is_empty() && !names.insert(n) => causes.push(Cause::duplicate(
                format!("{field}.name"),
                format!("Duplicate value: {n:?}"),
            )),
            _ => {}
        }
        if !valid_port(&p["port"]) {
            causes.push(Cause::invalid(
                format!("{field}.port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    p["port"]
                ),
            ));
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            causes.push(Cause::not_supported(
                format!("{field}.protocol"),
                format!(
                    "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        match &p["targetPort"] {
            Value::Null => {}
            v @ Value::Number(_) if valid_port(v) => {}
            Value::String(s) if !s.is_empty() && s.len() <= 15 && is_dns1123_label(s) => {}
            v => causes.push(Cause::invalid(
                format!("{field}.targetPort"),
                format!("Invalid value: {v}: must be a port number between 1 and 65535 or an IANA service name"),
            )),
        }
    }
    if let Some(aff) = str_at(spec, "sessionAffinity")
        && !["None", "ClientIP"].contains(&aff)
    {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            format!("Unsupported value: {aff:?}: supported values: \"ClientIP\", \"None\""),
        ));
    }
    if let Some(p) = str_at(spec, "externalTrafficPolicy") {
        if !["Cluster", "Local"].contains(&p) {
            causes.push(Cause::not_supported(
                "spec.externalTrafficPolicy",
                format!("Unsupported value: {p:?}: supported values: \"Cluster\", \"Local\""),
            ));
        } else if !matches!(ty, "NodePort" | "LoadBalancer") {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                "Invalid value: may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            ));
        }
    }
    if let Some(old) = old {
        let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or("");
        let new_ip = spec["clusterIP"].as_str().unwrap_or("");
        // An empty one keeps the old address (see allocate_service).
        if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip && ty != "ExternalName" {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                format!("Invalid value: {new_ip:?}: may not change once set"),
            ));
        }
    }
}

fn validate_endpoint_slice(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let family = obj["addressType"].as_str();
    match family {
        Some("IPv4" | "IPv6" | "FQDN") => {}
        None => causes.push(Cause::required("addressType")),
        Some(other) => causes.push(Cause::not_supported(
            "addressType",
            format!("Unsupported value: {other:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        )),
    }
    if let Some(old) = old
        && old["addressType"] != obj["addressType"]
    {
        causes.push(Cause::invalid(
            "addressType",
            "Invalid value: field is immutable",
        ));
    }
    let endpoints = obj
        .get("endpoints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if endpoints.len() > 1000 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "endpoints".to_owned(),
            message: format!(
                "Too many: {}: must have at most 1000 items",
                endpoints.len()
            ),
        });
    }
    for (i, e) in endpoints.iter().enumerate() {
        let addrs = e
            .get("addresses")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if addrs.is_empty() {
            causes.push(Cause::required(format!("endpoints[{i}].addresses")));
        }
        for (j, a) in addrs.iter().enumerate() {
            let ok = match (family, a.as_str().map(str::parse::<IpAddr>)) {
                (Some("IPv4"), Some(Ok(ip))) => ip.is_ipv4(),
                (Some("IPv6"), Some(Ok(ip))) => ip.is_ipv6(),
                (Some("FQDN"), _) => a.as_str().is_some_and(is_dns1123_subdomain),
                _ => false,
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "Invalid value: {a}: must be a valid {} address",
                        family.unwrap_or("IP")
                    ),
                ));
            }
        }
    }
    for (i, p) in obj
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !p["port"].is_null() && !p["port"].as_i64().is_some_and(|n| (0..=65535).contains(&n)) {
            causes.push(Cause::invalid(
                format!("ports[{i}].port"),
                format!(
                    "Invalid value: {}: must be between 0 and 65535, inclusive",
                    p["port"]
                ),
            ));
        }
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Allocates (or checks) the Service's `ClusterIPs` and `NodePorts` against every other Service.
/// `old` is the stored Service on update: what it had allocated is kept.
pub fn allocate_service(
    view: &View<'_>,
    key: &str,
    obj: &mut Value,
    old: Option<&Value>,
    ranges: &Ranges,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    // What every other Service holds, from the store's index (not a scan of every Service).
    let used_ips = |ip: IpAddr| view.ip_in_use(ip, key);
    let used_port = |n: u64| view.node_port_in_use(n, key);
    let spec = &mut obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();

    // NodePorts.
    let old_spec = old.map(|o| &o["spec"]);
    let old_had_node_ports =
        old_spec.is_some_and(|s| matches!(s["type"].as_str(), Some("NodePort" | "LoadBalancer")));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        let mut mine = HashSet::new();
        for (i, p) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
                if p["nodePort"].is_null() {
                    // Keep what this port had (matched by port and protocol).
                    let kept = old_spec
                        .and_then(|s| s["ports"].as_array())
                        .into_iter()
                        .flatten()
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                        .and_then(|o| o["nodePort"].as_u64());
                    if let Some(n) = kept {
                        p["nodePort"] = json!(n);
                    }
                }
                if let Some(n) = p["nodePort"].as_u64() {
                    if n < u64::from(ranges.node_ports.0) || n > u64::from(ranges.node_ports.1) {
                        causes.push(Cause::invalid(
                            field,
                            format!(
                                "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                ranges.node_ports.0, ranges.node_ports.1
                            ),
                        ));
                    } else if used_port(n) {
                        causes.push(Cause::invalid(
                            field,
                            format!("Invalid value: {n}: provided port is already allocated"),
                        ));
                    } else {
                        mine.insert(n);
                    }
                } else if !p["nodePort"].is_null() {
                    causes.push(Cause::invalid(
                        field,
                        format!("Invalid value: {}", p["nodePort"]),
                    ));
                }
            } else if !p["nodePort"].is_null() {
                if old_had_node_ports {
                    // The type changed away from NodePort: its ports are released.
                    if let Some(p) = p.as_object_mut() {
                        p.remove("nodePort");
                    }
                } else {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        field,
                        message: format!("Forbidden: may not be used when `type` is '{ty}'"),
                    });
                }
            }
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            for p in ports.iter_mut() {
                if p["nodePort"].is_null() {
                    let free = (ranges.node_ports.0..=ranges.node_ports.1)
                        .map(u64::from)
                        .find(|n| !used_port(*n) && !mine.contains(n));
                    match free {
                        Some(n) => {
                            mine.insert(n);
                            p["nodePort"] = json!(n);
                        }
                        None => causes.push(Cause::invalid(
                            "spec.ports",
                            "Invalid value: no NodePorts left in the range",
                        )),
                    }
                }
            }
        }
    }

    // ClusterIPs.
    if ty == "ExternalName" {
        if let Some(s) = spec.as_object_mut() {
            for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                s.remove(k);
            }
        }
        return causes;
    }
    if let Some(old_spec) = old_spec
        && spec["clusterIP"].as_str().is_none_or(str::is_empty)
        && old_spec["clusterIP"].is_string()
    {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec[k].is_null() {
                spec[k] = old_spec[k].clone();
            }
        }
    }
    let mut requested: Vec<String> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if let Some(ip) = spec["clusterIP"].as_str().filter(|s| !s.is_empty()) {
        if requested.is_empty() {
            requested.push(ip.to_owned());
        } else if requested[0] != ip {
            causes.push(Cause::invalid(
                "spec.clusterIPs",
                "Invalid value: must have the same value as spec.clusterIP as its first item",
            ));
            return causes;
        }
    }
    let headless = requested.first().is_some_and(|s| s == "None");
    // As the real server infers it: two IPs or two families ask for dual stack.
    let two = |field: &str| spec[field].as_array().is_some_and(|a| a.len() == 2);
    let inferred = if two("clusterIPs") || two("ipFamilies") {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let policy = spec["ipFamilyPolicy"]
        .as_str()
        .unwrap_or(inferred)
        .to_owned();
    if !["SingleStack", "PreferDualStack", "RequireDualStack"].contains(&policy.as_str()) {
        causes.push(Cause::not_supported(
            "spec.ipFamilyPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""),
        ));
        return causes;
    }
    // The families, in order: as asked, else those of the requested IPs, else the primary.
    let mut families: Vec<String> = spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if families.is_empty() && !headless {
        families = requested
            .iter()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .map(|ip| family_of(ip).to_owned())
            .collect();
    }
    if families.is_empty() {
        families.extend(ranges.service.first().map(|c| c.family().to_owned()));
    }
    if policy == "SingleStack" {
        families.truncate(1);
    } else {
        for c in &ranges.service {
            if !families.iter().any(|f| f == c.family()) {
                families.push(c.family().to_owned());
            }
        }
    }
    for (i, f) in families.iter().enumerate() {
        if ranges.family(f).is_none() {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                format!("Invalid value: {f:?}: not configured on this cluster"),
            ));
        }
    }
    if policy == "RequireDualStack" && families.len() < 2 {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ));
    }
    if !causes.is_empty() {
        return causes;
    }
    let mut ips = Vec::new();
    if headless {
        ips.push("None".to_owned());
    } else {
        for (i, family) in families.iter().enumerate() {
            let Some(cidr) = ranges.family(family) else {
                continue;
            };
            match requested.get(i).map(|s| s.parse::<IpAddr>()) {
                Some(Ok(ip)) if family_of(ip) == family => {
                    // Keeping one's own address on update is not a collision.
                    let own = old_spec.is_some_and(|s| {
                        s["clusterIPs"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(&ip.to_string())))
                    });
                    if own {
                        ips.push(ip.to_string());
                    } else if let Err(why) = cidr.check(ip, used_ips) {
                        causes.push(Cause::invalid(
                            format!("spec.clusterIPs[{i}]"),
                            format!("Invalid value: {:?}: {why}", ip.to_string()),
                        ));
                    } else {
                        ips.push(ip.to_string());
                    }
                }
                Some(_) => causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    format!(
                        "Invalid value: {:?}: must be a valid {family} address",
                        requested[i]
                    ),
                )),
                None => match cidr.allocate(used_ips) {
                    Some(ip) => ips.push(ip.to_string()),
                    None => causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        format!("Invalid value: no addresses left in {cidr}"),
                    )),
                },
            }
        }
    }
    if causes.is_empty() {
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
        spec["ipFamilies"] = json!(families);
        spec["ipFamilyPolicy"] = json!(policy);
    }
    causes
}

#[cfg(test)]
mod tests;
