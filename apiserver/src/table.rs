//! Server-side printing: the `Table` form `kubectl get` asks for (`Accept: ...;as=Table;
//! g=meta.k8s.io;v=v1`), with the columns kubectl shows for these kinds.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::resources::Resource;
use crate::time;

/// (name, type, priority): priority 1 columns show with `-o wide`.
fn columns(res: &Resource) -> &'static [(&'static str, &'static str, u8)] {
    match res.plural {
        "namespaces" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        "nodes" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
        ],
        "pods" => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        "services" => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "secrets" => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        _ => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
    }
}

/// kubectl's short human durations (`45s`, `3m12s`, `5h`, `12d`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28_800..172_800 => format!("{}h", s / 3600),
        172_800..691_200 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        691_200..63_072_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

fn age(obj: &Value, now: SystemTime) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(time::parse)
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration(now.duration_since(t).unwrap_or_default()),
        )
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".to_owned() } else { s }
}

fn cells(res: &Resource, o: &Value, now: SystemTime) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let age = json!(age(o, now));
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match res.plural {
        "namespaces" => vec![name, json!(str_of(&o["status"]["phase"])), age],
        "nodes" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map_or("Unknown", |c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                });
            let roles: Vec<&str> = o["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            vec![
                name,
                json!(ready),
                json!(or_none(roles.join(","))),
                age,
                json!(str_of(&o["status"]["nodeInfo"]["kubeletVersion"])),
            ]
        }
        "pods" => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"].as_array();
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|c| c["ready"] == true)
                .count();
            let restarts: i64 = statuses
                .into_iter()
                .flatten()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".to_owned()
            } else {
                str_of(&o["status"]["phase"])
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age,
                json!(or_none(str_of(&o["status"]["podIP"]))),
                json!(or_none(str_of(&o["spec"]["nodeName"]))),
            ]
        }
        "services" => {
            let spec = &o["spec"];
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_u64() {
                    Some(n) => format!("{}:{n}/{}", p["port"], str_of(&p["protocol"])),
                    None => format!("{}/{}", p["port"], str_of(&p["protocol"])),
                })
                .collect();
            let mut external: Vec<String> = spec["externalIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(str_of)
                .collect();
            external.extend(
                o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| str_of(&i["ip"])),
            );
            if spec["type"] == "ExternalName" {
                external.push(str_of(&spec["externalName"]));
            }
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            let external = if external.is_empty() && spec["type"] == "LoadBalancer" {
                "<pending>".to_owned()
            } else {
                or_none(external.join(","))
            };
            vec![
                name,
                json!(str_of(&spec["type"])),
                json!(or_none(str_of(&spec["clusterIP"]))),
                json!(external),
                json!(or_none(ports.join(","))),
                age,
                json!(or_none(selector.join(","))),
            ]
        }
        "secrets" => vec![
            name,
            json!(str_of(&o["type"])),
            json!(o["data"].as_object().map_or(0, serde_json::Map::len)),
            age,
        ],
        _ => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["port"].to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| str_of(&a))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name,
                json!(str_of(&o["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".to_owned()
                } else {
                    ports.join(",")
                }),
                json!(or_none(shown)),
                age,
            ]
        }
    }
}

/// A `Table` of `objects`; `api_version` is `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
pub fn table(res: &Resource, objects: &[&Value], rv: Option<u64>, api_version: &str) -> Value {
    let now = time::now();
    let defs: Vec<Value> = columns(res)
        .iter()
        .map(|(name, ty, priority)| {
            json!({"name": name, "type": ty, "format": if *name == "Name" { "name" } else { "" },
                   "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": cells(res, o, now),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": o["metadata"]},
            })
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {},
        "columnDefinitions": defs,
        "rows": rows,
    });
    if let Some(rv) = rv {
        t["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
    t
}

/// The Table API version a request's Accept header asks for, if it asks for one.
pub fn wanted(accept: &str) -> Option<&'static str> {
    accept
        .split(',')
        .map(str::trim)
        .find(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"))
        .map(|a| {
            if a.contains("v=v1beta1") {
                "meta.k8s.io/v1beta1"
            } else {
                "meta.k8s.io/v1"
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (3000, "50m"),
            (4 * 3600 + 120, "4h2m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(s)), want);
        }
    }

    #[test]
    fn accept_headers() {
        assert_eq!(
            wanted(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            ),
            Some("meta.k8s.io/v1")
        );
        assert_eq!(wanted("application/json"), None);
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.1",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30000}], "selector": {"app": "web"}}});
        let t = table(
            &crate::resources::SERVICES,
            &[&svc],
            Some(3),
            "meta.k8s.io/v1",
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "NodePort",
                "10.96.0.1",
                "<none>",
                "80:30000/TCP",
                "<unknown>",
                "app=web"
            ])
        );
        assert_eq!(t["columnDefinitions"][2]["name"], "Cluster-IP");
    }
}
