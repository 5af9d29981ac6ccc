//! Validation of the fields switchyard reads, with Kubernetes' rules, so a bad object is
//! rejected whole with the field that is wrong, before it can reach a datapath.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A field that breaks a rule: `spec.ports[1].port: 70000 is out of range 1-65535`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError {
        field: field.into(),
        message: message.into(),
    })
}

fn check_port(field: &str, value: i32) -> Result<u16, ValidationError> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => invalid(field, format!("{value} is out of range 1-65535")),
    }
}

fn check_protocol(field: &str, value: Option<&str>) -> Result<(), ValidationError> {
    match value {
        None | Some("TCP" | "UDP" | "SCTP") => Ok(()),
        Some(other) => invalid(
            field,
            format!("unknown protocol {other:?} (want TCP, UDP or SCTP)"),
        ),
    }
}

fn check_name(meta: &ObjectMeta) -> Result<(), ValidationError> {
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return invalid("metadata.name", "is required");
    }
    if name.len() > 253 {
        return invalid("metadata.name", "is longer than 253 characters");
    }
    Ok(())
}

/// Kubernetes' `IANA_SVC_NAME`: 1-15 lowercase letters, digits and '-', with a letter, no '-' at
/// either end and no "--".
fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Kubernetes' label name (and label value, when not empty): at most 63 characters of
/// `[A-Za-z0-9._-]`, beginning and ending with a letter or digit.
fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes' DNS subdomain (a label key's prefix): at most 253 characters of dot-separated
/// lowercase DNS labels.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label key: `[prefix/]name`.
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// A shortened value for a message: an oversized value is not logged whole.
fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.len() <= SHOWN {
        format!("{value:?}")
    } else {
        let mut end = SHOWN;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}... ({} bytes)", &value[..end], value.len())
    }
}

fn check_selector(
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    for (key, value) in selector {
        if !is_label_key(key) {
            return invalid(
                "spec.selector",
                format!("key {} is not a valid label key", shown(key)),
            );
        }
        if !value.is_empty() && !is_label_name(value) {
            return invalid(
                format!("spec.selector[{key:?}]"),
                format!("{} is not a valid label value", shown(value)),
            );
        }
    }
    Ok(())
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, ValidationError> {
    value
        .parse::<IpAddr>()
        .or_else(|_| invalid(field, format!("{value:?} is not a valid IP address")))
}

/// Checks a Service's fields that switchyard uses.
pub fn validate_service(service: &Service) -> Result<(), ValidationError> {
    check_name(&service.metadata)?;
    let Some(spec) = service.spec.as_ref() else {
        return invalid("spec", "is required");
    };
    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") => {}
        Some(other) => return invalid("spec.type", format!("unknown type {other:?}")),
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if !cluster_ip.is_empty() && cluster_ip != "None" {
        parse_ip("spec.clusterIP", cluster_ip)?;
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if ips.len() > 2 {
        return invalid("spec.clusterIPs", "may hold at most two addresses");
    }
    let mut families = BTreeSet::new();
    for (i, ip) in ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if ip == "None" {
            if ips.len() > 1 {
                return invalid(field, "\"None\" must be the only entry");
            }
            continue;
        }
        let parsed = parse_ip(&field, ip)?;
        if !families.insert(parsed.is_ipv4()) {
            return invalid(field, "both entries are of the same IP family");
        }
    }
    if let Some(first) = ips.first()
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        return invalid(
            "spec.clusterIPs[0]",
            format!("{first:?} must equal spec.clusterIP {cluster_ip:?}"),
        );
    }

    if let Some(selector) = &spec.selector {
        check_selector(selector)?;
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let number = check_port(&field("port"), port.port)?;
        check_protocol(&field("protocol"), port.protocol.as_deref())?;
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_port_name(name) {
            return invalid(field("name"), format!("{name:?} is not a valid port name"));
        }
        if ports.len() > 1 && name.is_empty() {
            return invalid(
                field("name"),
                "is required when a Service has more than one port",
            );
        }
        if !names.insert(name) {
            return invalid(field("name"), format!("duplicate port name {name:?}"));
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !numbers.insert((number, protocol)) {
            return invalid(field("port"), format!("duplicate port {number}/{protocol}"));
        }
        match &port.target_port {
            None => {}
            Some(IntOrString::Int(n)) => {
                check_port(&field("targetPort"), *n)?;
            }
            Some(IntOrString::String(s)) => {
                if let Ok(n) = s.parse::<i32>() {
                    check_port(&field("targetPort"), n)?;
                } else if !is_port_name(s) {
                    return invalid(
                        field("targetPort"),
                        format!("{s:?} is neither a port number nor a valid port name"),
                    );
                }
            }
        }
        if let Some(node_port) = port.node_port {
            check_port(&field("nodePort"), node_port)?;
        }
    }

    match spec.session_affinity.as_deref() {
        None | Some("None" | "ClientIP") => {}
        Some(other) => {
            return invalid(
                "spec.sessionAffinity",
                format!("unknown value {other:?} (want None or ClientIP)"),
            );
        }
    }
    if let Some(timeout) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        && !(1..=86_400).contains(&timeout)
    {
        return invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{timeout} is out of range 1-86400"),
        );
    }
    for (field, value) in [
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
    ] {
        match value {
            None | Some("Cluster" | "Local") => {}
            Some(other) => {
                return invalid(
                    field,
                    format!("unknown value {other:?} (want Cluster or Local)"),
                );
            }
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        parse_ip(&format!("spec.externalIPs[{i}]"), ip.trim())?;
    }
    for (i, range) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        check_cidr(&format!("spec.loadBalancerSourceRanges[{i}]"), range)?;
    }
    if let Some(ranges) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::ANNOTATION_SOURCE_RANGES))
    {
        for range in ranges.split(',').filter(|r| !r.trim().is_empty()) {
            check_cidr(
                &format!(
                    "metadata.annotations[{:?}]",
                    super::ANNOTATION_SOURCE_RANGES
                ),
                range,
            )?;
        }
    }
    if let Some(port) = spec.health_check_node_port {
        check_port("spec.healthCheckNodePort", port)?;
    }
    if let Some(status) = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
    {
        for (i, ingress) in status.ingress.iter().flatten().enumerate() {
            if let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) {
                parse_ip(&format!("status.loadBalancer.ingress[{i}].ip"), ip.trim())?;
            }
        }
    }
    Ok(())
}

fn check_cidr(field: &str, value: &str) -> Result<(), ValidationError> {
    match value.trim().parse::<ipnet::IpNet>() {
        Ok(_) => Ok(()),
        Err(_) => invalid(field, format!("{value:?} is not a valid CIDR")),
    }
}

/// Checks an `EndpointSlice`'s address type, addresses and ports.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<(), ValidationError> {
    check_name(&slice.metadata)?;
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => None,
        other => {
            return invalid(
                "addressType",
                format!("unknown address type {other:?} (want IPv4, IPv6 or FQDN)"),
            );
        }
    };
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        if endpoint.addresses.is_empty() {
            return invalid(
                format!("endpoints[{i}].addresses"),
                "must hold at least one address",
            );
        }
        let Some(ipv4) = family else { continue };
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ip = parse_ip(&field, address)?;
            if ip.is_ipv4() != ipv4 {
                return invalid(
                    field,
                    format!("{address} is not of addressType {}", slice.address_type),
                );
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = port.port {
            check_port(&format!("ports[{i}].port"), n)?;
        }
        check_protocol(&format!("ports[{i}].protocol"), port.protocol.as_deref())?;
        let name = port.name.as_deref().unwrap_or("");
        if !names.insert(name) {
            return invalid(
                format!("ports[{i}].name"),
                format!("duplicate port name {name:?}"),
            );
        }
    }
    Ok(())
}

/// Checks a Pod's addresses and container ports.
pub fn validate_pod(pod: &Pod) -> Result<(), ValidationError> {
    check_name(&pod.metadata)?;
    if let Some(status) = pod.status.as_ref() {
        if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
            parse_ip("status.podIP", ip)?;
        }
        for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
            parse_ip(&format!("status.podIPs[{i}].ip"), &ip.ip)?;
        }
    }
    if let Some(spec) = pod.spec.as_ref() {
        for (c, container) in spec.containers.iter().enumerate() {
            for (p, port) in container.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{c}].ports[{p}]");
                check_port(&format!("{field}.containerPort"), port.container_port)?;
                check_protocol(&format!("{field}.protocol"), port.protocol.as_deref())?;
            }
        }
    }
    Ok(())
}

/// Checks a Node's name.
pub fn validate_node(node: &Node) -> Result<(), ValidationError> {
    check_name(&node.metadata)
}
