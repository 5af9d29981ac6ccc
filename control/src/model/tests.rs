//! Table-driven cases for every Service rule the model follows.
#![allow(clippy::needless_pass_by_value, clippy::items_after_statements)] // test helpers take values for brevity

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::store::{Object, ObjectKey, Store};

fn service(spec: Value) -> Object {
    service_with(json!({"name": "web", "namespace": "default"}), spec)
}

fn service_with(metadata: Value, spec: Value) -> Object {
    let svc: Service = serde_json::from_value(json!({"metadata": metadata, "spec": spec}))
        .expect("test Service parses");
    Object::Service(svc)
}

fn slice(name: &str, address_type: &str, ports: Value, endpoints: Value) -> Object {
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice parses");
    Object::EndpointSlice(s)
}

/// A Pod `name` with labels, IPs, readiness, node and named container ports.
fn pod(name: &str, labels: Value, ips: &[&str], ready: bool, extra: Value) -> Object {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "ports": []}]},
        "status": {
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    });
    merge(&mut p, extra);
    Object::Pod(serde_json::from_value(p).expect("test Pod parses"))
}

fn node(name: &str, zone: &str) -> Object {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}
    }))
    .expect("test Node parses");
    Object::Node(n)
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn ep(ip: &str, conditions: Value) -> Value {
    json!({"addresses": [ip], "conditions": conditions, "nodeName": "node-a"})
}

const NODE: &str = "node-a";

fn run(objects: Vec<Object>) -> (ServiceTable, Vec<Warning>) {
    let mut store = Store::new();
    for object in objects {
        store.upsert(object);
    }
    compute_table(&store, &NodeContext::named(NODE))
}

/// `vip:port/proto -> sorted "ip:port" backends`, for compact expectations.
fn summary(table: &ServiceTable) -> Vec<String> {
    table
        .entries()
        .map(|e| {
            let backends: Vec<String> = e
                .backends
                .iter()
                .map(|b| {
                    let state = match b.state {
                        BackendState::Active => "",
                        BackendState::Terminating => "(t)",
                    };
                    match b.addr {
                        IpAddr::V4(a) => format!("{a}:{}{state}", b.port),
                        IpAddr::V6(a) => format!("[{a}]:{}{state}", b.port),
                    }
                })
                .collect();
            format!("{} -> {}", e.frontend, backends.join(","))
        })
        .collect()
}

fn basic_spec() -> Value {
    json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
           "ports": [{"port": 80, "targetPort": 8080}]})
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

#[test]
fn frontends_and_backends() {
    let v4_slice = || {
        slice(
            "web-a",
            "IPv4",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([ep("10.244.0.11", ready()), ep("10.244.0.12", ready())]),
        )
    };
    let cases: Vec<(&str, Vec<Object>, Vec<&str>)> = vec![
        (
            "one port, one slice",
            vec![
                service(json!({"clusterIP": "10.96.0.10",
                               "ports": [{"name": "http", "port": 80}]})),
                v4_slice(),
            ],
            vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        (
            "TCP and UDP ports match slice ports by name and protocol",
            vec![
                service(json!({"clusterIP": "10.96.0.10", "ports": [
                    {"name": "http", "port": 80},
                    {"name": "dns", "port": 53, "protocol": "UDP"}]})),
                v4_slice(),
            ],
            vec![
                "10.96.0.10:53/UDP -> 10.244.0.11:5353,10.244.0.12:5353",
                "10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080",
            ],
        ),
        (
            "dual stack: each family gets its own endpoints",
            vec![
                service(
                    json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                               "ports": [{"name": "http", "port": 80}]}),
                ),
                v4_slice(),
                slice(
                    "web-b",
                    "IPv6",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("fd00:244::11", ready())]),
                ),
            ],
            vec![
                "10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080",
                "[fd00:96::10]:80/TCP -> [fd00:244::11]:8080",
            ],
        ),
        (
            "IPv6-only Service",
            vec![
                service(
                    json!({"clusterIP": "fd00:96::10", "ports": [{"name": "http", "port": 80}]}),
                ),
                slice(
                    "web-b",
                    "IPv6",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("fd00:244::11", ready())]),
                ),
            ],
            vec!["[fd00:96::10]:80/TCP -> [fd00:244::11]:8080"],
        ),
        (
            "an address of the wrong family in a slice is not used",
            vec![
                service(
                    json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
                ),
                slice(
                    "web-b",
                    "IPv6",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("fd00:244::11", ready())]),
                ),
            ],
            vec!["10.96.0.10:80/TCP -> "],
        ),
        (
            "no endpoints: frontend with no backends",
            vec![service(basic_spec())],
            vec!["10.96.0.10:80/TCP -> "],
        ),
        (
            "the same endpoint in two slices is used once",
            vec![
                service(
                    json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
                ),
                v4_slice(),
                slice(
                    "web-c",
                    "IPv4",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("10.244.0.11", ready())]),
                ),
            ],
            vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080"],
        ),
        (
            "explicit slices win over pods",
            vec![
                service(
                    json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                               "ports": [{"name": "http", "port": 80, "targetPort": 9999}]}),
                ),
                v4_slice(),
                pod(
                    "web-9",
                    json!({"app": "web"}),
                    &["10.244.0.99"],
                    true,
                    json!({}),
                ),
            ],
            vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080"],
        ),
    ];
    for (name, objects, want) in cases {
        let (table, warnings) = run(objects);
        assert_eq!(summary(&table), want, "{name}");
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

#[test]
fn services_that_are_skipped() {
    let ports = json!([{"port": 80}]);
    let cases: Vec<(&str, Object)> = vec![
        (
            "clusterIP None",
            service(json!({"clusterIP": "None", "ports": ports})),
        ),
        (
            "headless label",
            service_with(
                json!({"name": "web", "namespace": "default",
                       "labels": {"service.kubernetes.io/headless": ""}}),
                json!({"clusterIP": "10.96.0.10", "ports": ports}),
            ),
        ),
        (
            "service-proxy-name label",
            service_with(
                json!({"name": "web", "namespace": "default",
                       "labels": {"service.kubernetes.io/service-proxy-name": "other"}}),
                json!({"clusterIP": "10.96.0.10", "ports": ports}),
            ),
        ),
        (
            "ExternalName",
            service(
                json!({"type": "ExternalName", "externalName": "example.invalid", "ports": ports}),
            ),
        ),
    ];
    for (name, object) in cases {
        let (table, warnings) = run(vec![object]);
        assert!(table.is_empty(), "{name}: {:?}", summary(&table));
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

#[test]
fn unsupported_and_invalid_services_warn() {
    let cases: Vec<(&str, Object, Vec<&str>, &str)> = vec![
        (
            "SCTP port skipped, TCP kept",
            service(json!({"clusterIP": "10.96.0.10", "ports": [
                {"name": "a", "port": 80}, {"name": "b", "port": 9, "protocol": "SCTP"}]})),
            vec!["10.96.0.10:80/TCP -> "],
            "protocol SCTP is not supported",
        ),
        (
            "port out of range",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 70000}]})),
            vec![],
            "spec.ports[0].port: 70000 is out of range 1-65535",
        ),
        (
            "port zero",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 0}]})),
            vec![],
            "spec.ports[0].port: 0 is out of range",
        ),
        (
            "bad cluster IP",
            service(json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]})),
            vec![],
            "spec.clusterIP: \"10.96.0.300\" is not a valid IP address",
        ),
        (
            "duplicate port names",
            service(json!({"clusterIP": "10.96.0.10", "ports": [
                {"name": "a", "port": 80}, {"name": "a", "port": 81}]})),
            vec![],
            "spec.ports[1].name: duplicate port name \"a\"",
        ),
        (
            "unknown protocol",
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "QUIC"}]}),
            ),
            vec![],
            "spec.ports[0].protocol: unknown protocol \"QUIC\"",
        ),
        (
            "no cluster IP",
            service(json!({"ports": [{"port": 80}]})),
            vec![],
            "has no clusterIP",
        ),
        (
            "unknown algorithm falls back to random",
            service_with(
                json!({"name": "web", "namespace": "default",
                       "annotations": {"switchyard.io/lb-algorithm": "fastest"}}),
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
            ),
            vec!["10.96.0.10:80/TCP -> "],
            "unknown algorithm \"fastest\"",
        ),
        (
            "a 64 KiB selector value",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                           "selector": {"app": "x".repeat(65_536)}})),
            vec![],
            "spec.selector[\"app\"]: \"xxxxxxxx",
        ),
        (
            "a selector key that is no label key",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                           "selector": {"-app": "web"}})),
            vec![],
            "key \"-app\" is not a valid label key",
        ),
        (
            "a selector key with a bad prefix",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                           "selector": {"Example.COM/app": "web"}})),
            vec![],
            "is not a valid label key",
        ),
    ];
    for (name, object, want, message) in cases {
        let (table, warnings) = run(vec![object]);
        assert_eq!(summary(&table), want, "{name}");
        assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        let text = warnings[0].to_string();
        assert!(text.starts_with("service default/web: "), "{name}: {text}");
        assert!(text.contains(message), "{name}: {text}");
    }
}

fn run_limited(objects: Vec<Object>, limits: crate::model::Limits) -> (ServiceTable, Vec<Warning>) {
    let mut store = Store::new();
    for object in objects {
        store.upsert(object);
    }
    let node = NodeContext {
        limits,
        ..NodeContext::named(NODE)
    };
    compute_table(&store, &node)
}

/// 10,000 ports (valid in Kubernetes, where nothing bounds them) are more than the default
/// `--max-service-ports`: the Service is left out whole, with a warning naming the flag.
#[test]
fn a_service_with_more_ports_than_the_limit_is_left_out_whole() {
    let ports: Vec<Value> = (1..=10_000)
        .map(|p| json!({"name": format!("p{p}"), "port": p}))
        .collect();
    let (table, warnings) = run(vec![
        service(json!({"clusterIP": "10.96.0.10", "ports": ports})),
        service_with(
            json!({"name": "other", "namespace": "default"}),
            json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}),
        ),
    ]);
    assert_eq!(summary(&table), vec!["10.96.0.11:80/TCP -> "]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].limit, Some("service-ports"));
    let text = warnings[0].to_string();
    assert!(
        text.starts_with(
            "service default/web: has 10000 ports, more than --max-service-ports 1000"
        ),
        "{text}"
    );
}

#[test]
fn backends_beyond_the_limit_are_left_out_ready_first_with_a_warning() {
    let endpoints = json!([
        ep(
            "10.244.0.14",
            json!({"ready": false, "serving": true, "terminating": true})
        ),
        ep("10.244.0.13", ready()),
        ep("10.244.0.12", ready()),
        ep("10.244.0.11", ready()),
    ]);
    let objects = || {
        vec![
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
            slice("web-a", "IPv4", json!([{"port": 8080}]), endpoints.clone()),
        ]
    };
    let limits = |n| crate::model::Limits {
        max_service_backends: n,
        ..crate::model::Limits::default()
    };
    let (table, warnings) = run_limited(objects(), limits(2));
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.0.12:8080"]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].limit, Some("service-backends"));
    assert!(
        warnings[0]
            .message
            .contains("more than --max-service-backends 2"),
        "{}",
        warnings[0]
    );
    // At the limit exactly: all of them, no warning.
    let (table, warnings) = run_limited(objects(), limits(3));
    assert_eq!(summary(&table).len(), 1);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn an_oversized_value_is_not_logged_whole() {
    let (_, warnings) = run(vec![service(json!({
        "clusterIP": "10.96.0.10", "ports": [{"port": 80}],
        "selector": {"app": "x".repeat(65_536)}
    }))]);
    let text = warnings[0].to_string();
    assert!(text.contains("(65536 bytes)"), "{text}");
    assert!(
        text.len() < 400,
        "the warning holds the whole value: {} bytes",
        text.len()
    );
}

/// A selector of 64 KiB made of valid entries is valid, as in Kubernetes: the Service is
/// served, and it selects only a Pod carrying every one of them.
#[test]
fn a_64_kib_selector_of_valid_entries_is_served() {
    let selector: serde_json::Map<String, Value> = (0..1024)
        .map(|i| (format!("k{i:04}"), Value::String(format!("{i:0>60}"))))
        .collect();
    let size: usize = selector
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    assert!(size >= 64 * 1024, "{size}");
    let (table, warnings) = run(vec![service(json!({
        "clusterIP": "10.96.0.10", "ports": [{"port": 80}],
        "selector": Value::Object(selector)
    }))]);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(summary(&table), vec!["10.96.0.10:80/TCP -> "]);
}

#[test]
fn endpoint_conditions() {
    let with = |conditions: Vec<Value>| {
        let endpoints: Vec<Value> = conditions
            .into_iter()
            .enumerate()
            .map(|(i, c)| ep(&format!("10.244.0.{}", 11 + i), c))
            .collect();
        vec![
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
            slice(
                "web-a",
                "IPv4",
                json!([{"port": 8080}]),
                Value::Array(endpoints),
            ),
        ]
    };
    let terminating = json!({"ready": false, "serving": true, "terminating": true});
    let not_serving = json!({"ready": false, "serving": false, "terminating": true});
    let not_ready = json!({"ready": false, "serving": false, "terminating": false});
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "ready only",
            vec![ready(), not_ready.clone()],
            "10.244.0.11:8080",
        ),
        (
            "unset conditions mean ready",
            vec![json!({}), not_ready.clone()],
            "10.244.0.11:8080",
        ),
        (
            "ready wins over terminating",
            vec![terminating.clone(), ready()],
            "10.244.0.12:8080",
        ),
        (
            "no ready: serving-and-terminating fallback",
            vec![
                terminating.clone(),
                not_serving.clone(),
                terminating.clone(),
            ],
            "10.244.0.11:8080(t),10.244.0.13:8080(t)",
        ),
        (
            "no ready, none serving: empty",
            vec![not_serving, not_ready],
            "",
        ),
    ];
    for (name, conditions, want) in cases {
        let (table, _) = run(with(conditions));
        assert_eq!(
            summary(&table),
            vec![format!("10.96.0.10:80/TCP -> {want}")],
            "{name}"
        );
    }
}

#[test]
fn label_selection_derives_endpoints_from_pods() {
    let named_port = |name: &str, number: i32| {
        json!({"spec": {"containers": [{"name": "app", "ports": [
            {"name": name, "containerPort": number}]}]}})
    };
    let deleting = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
    let web = json!({"app": "web"});
    let cases: Vec<(&str, Value, Vec<Object>, &str)> = vec![
        (
            "selector picks matching ready pods with an IP",
            basic_spec(),
            vec![
                pod("web-0", web.clone(), &["10.244.0.10"], true, json!({})),
                pod("web-1", web.clone(), &["10.244.0.11"], true, json!({})),
                pod(
                    "other",
                    json!({"app": "db"}),
                    &["10.244.0.12"],
                    true,
                    json!({}),
                ),
                pod("no-ip", web.clone(), &[], true, json!({})),
                pod(
                    "done",
                    web.clone(),
                    &["10.244.0.13"],
                    true,
                    json!({"status": {"phase": "Succeeded"}}),
                ),
            ],
            "10.244.0.10:8080,10.244.0.11:8080",
        ),
        (
            "a pod in another namespace is not selected",
            basic_spec(),
            vec![pod(
                "web-0",
                web.clone(),
                &["10.244.0.10"],
                true,
                json!({"metadata": {"namespace": "other"}}),
            )],
            "",
        ),
        (
            "not-ready pods are left out",
            basic_spec(),
            vec![
                pod("web-0", web.clone(), &["10.244.0.10"], false, json!({})),
                pod("web-1", web.clone(), &["10.244.0.11"], true, json!({})),
            ],
            "10.244.0.11:8080",
        ),
        (
            "publishNotReadyAddresses uses not-ready pods",
            json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                   "publishNotReadyAddresses": true, "ports": [{"port": 80, "targetPort": 8080}]}),
            vec![pod(
                "web-0",
                web.clone(),
                &["10.244.0.10"],
                false,
                json!({}),
            )],
            "10.244.0.10:8080",
        ),
        (
            "deleting pods are the terminating fallback",
            basic_spec(),
            vec![
                pod(
                    "web-0",
                    web.clone(),
                    &["10.244.0.10"],
                    true,
                    deleting.clone(),
                ),
                pod(
                    "web-1",
                    web.clone(),
                    &["10.244.0.11"],
                    false,
                    deleting.clone(),
                ),
            ],
            "10.244.0.10:8080(t)",
        ),
        (
            "a ready pod wins over a deleting one",
            basic_spec(),
            vec![
                pod("web-0", web.clone(), &["10.244.0.10"], true, deleting),
                pod("web-1", web.clone(), &["10.244.0.11"], true, json!({})),
            ],
            "10.244.0.11:8080",
        ),
        (
            "targetPort unset means the Service port",
            json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}),
            vec![pod("web-0", web.clone(), &["10.244.0.10"], true, json!({}))],
            "10.244.0.10:80",
        ),
        (
            "named targetPort resolved per pod; a pod without the name is left out",
            json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                   "ports": [{"port": 80, "targetPort": "http"}]}),
            vec![
                pod(
                    "web-0",
                    web.clone(),
                    &["10.244.0.10"],
                    true,
                    named_port("http", 8080),
                ),
                pod(
                    "web-1",
                    web.clone(),
                    &["10.244.0.11"],
                    true,
                    named_port("http", 8081),
                ),
                pod(
                    "web-2",
                    web.clone(),
                    &["10.244.0.12"],
                    true,
                    named_port("admin", 9000),
                ),
            ],
            "10.244.0.10:8080,10.244.0.11:8081",
        ),
        (
            "a Service without a selector derives nothing",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
            vec![pod("web-0", web, &["10.244.0.10"], true, json!({}))],
            "",
        ),
    ];
    for (name, spec, pods, want) in cases {
        let mut objects = vec![service(spec)];
        objects.extend(pods);
        let (table, warnings) = run(objects);
        assert_eq!(
            summary(&table),
            vec![format!("10.96.0.10:80/TCP -> {want}")],
            "{name}"
        );
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

#[test]
fn derived_endpoints_carry_node_and_zone() {
    let (table, _) = run(vec![
        service(basic_spec()),
        node("node-a", "zone-1"),
        pod(
            "web-0",
            json!({"app": "web"}),
            &["10.244.0.10", "fd00:244::10"],
            true,
            json!({}),
        ),
    ]);
    let entry = table.entries().next().expect("one frontend");
    assert_eq!(
        entry.backends.len(),
        1,
        "only the IPv4 address for an IPv4 VIP"
    );
    assert_eq!(entry.backends[0].node.as_deref(), Some("node-a"));
    assert_eq!(entry.backends[0].zone.as_deref(), Some("zone-1"));
}

#[test]
fn affinity_algorithm_and_traffic_policy() {
    let meta = |annotation: Option<&str>| match annotation {
        Some(a) => json!({"name": "web", "namespace": "default",
                          "annotations": {"switchyard.io/lb-algorithm": a}}),
        None => json!({"name": "web", "namespace": "default"}),
    };
    let spec = |extra: Value| {
        let mut s = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
        merge(&mut s, extra);
        s
    };
    let endpoints = || {
        slice(
            "web-a",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                ep("10.244.0.11", ready()),
                {"addresses": ["10.244.1.11"], "nodeName": "node-b"},
                {"addresses": ["10.244.0.12"], "nodeName": "node-a",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        )
    };
    struct Case {
        name: &'static str,
        annotation: Option<&'static str>,
        spec: Value,
        with_endpoints: bool,
        affinity: Option<Duration>,
        algorithm: Algorithm,
        on_empty: EmptyAction,
        backends: &'static str,
    }
    let cases = vec![
        Case {
            name: "defaults",
            annotation: None,
            spec: spec(json!({})),
            with_endpoints: true,
            affinity: None,
            algorithm: Algorithm::Random,
            on_empty: EmptyAction::Reject,
            backends: "10.244.0.11:8080,10.244.1.11:8080",
        },
        Case {
            name: "ClientIP with the default timeout",
            annotation: None,
            spec: spec(json!({"sessionAffinity": "ClientIP"})),
            with_endpoints: true,
            affinity: Some(Duration::from_hours(3)),
            algorithm: Algorithm::Random,
            on_empty: EmptyAction::Reject,
            backends: "10.244.0.11:8080,10.244.1.11:8080",
        },
        Case {
            name: "ClientIP with timeoutSeconds",
            annotation: None,
            spec: spec(json!({"sessionAffinity": "ClientIP",
                              "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}})),
            with_endpoints: true,
            affinity: Some(Duration::from_mins(1)),
            algorithm: Algorithm::Random,
            on_empty: EmptyAction::Reject,
            backends: "10.244.0.11:8080,10.244.1.11:8080",
        },
        Case {
            name: "round robin annotation",
            annotation: Some("round-robin"),
            spec: spec(json!({})),
            with_endpoints: true,
            affinity: None,
            algorithm: Algorithm::RoundRobin,
            on_empty: EmptyAction::Reject,
            backends: "10.244.0.11:8080,10.244.1.11:8080",
        },
        Case {
            name: "least connections annotation",
            annotation: Some("least-connections"),
            spec: spec(json!({})),
            with_endpoints: true,
            affinity: None,
            algorithm: Algorithm::LeastConnections,
            on_empty: EmptyAction::Reject,
            backends: "10.244.0.11:8080,10.244.1.11:8080",
        },
        Case {
            name: "internalTrafficPolicy Local keeps this node's endpoints",
            annotation: None,
            spec: spec(json!({"internalTrafficPolicy": "Local"})),
            with_endpoints: true,
            affinity: None,
            algorithm: Algorithm::Random,
            on_empty: EmptyAction::Drop,
            backends: "10.244.0.11:8080",
        },
        Case {
            name: "internalTrafficPolicy Local with no local endpoint drops",
            annotation: None,
            spec: spec(json!({"internalTrafficPolicy": "Local"})),
            with_endpoints: false,
            affinity: None,
            algorithm: Algorithm::Random,
            on_empty: EmptyAction::Drop,
            backends: "",
        },
    ];
    for case in cases {
        let mut objects = vec![service_with(meta(case.annotation), case.spec)];
        if case.with_endpoints {
            objects.push(endpoints());
        }
        let (table, warnings) = run(objects);
        let entry = table.entries().next().expect("one frontend");
        assert_eq!(entry.affinity, case.affinity, "{}", case.name);
        assert_eq!(entry.algorithm, case.algorithm, "{}", case.name);
        assert_eq!(entry.on_empty, case.on_empty, "{}", case.name);
        assert_eq!(
            summary(&table),
            vec![format!("10.96.0.10:80/TCP -> {}", case.backends)],
            "{}",
            case.name
        );
        assert!(warnings.is_empty(), "{}: {warnings:?}", case.name);
    }
}

#[test]
fn local_policy_falls_back_to_local_terminating() {
    let (table, _) = run(vec![
        service(
            json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                       "ports": [{"port": 80}]}),
        ),
        slice(
            "web-a",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                {"addresses": ["10.244.1.11"], "nodeName": "node-b"},
                {"addresses": ["10.244.0.12"], "nodeName": "node-a",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        ),
    ]);
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.12:8080(t)"]
    );
}

#[test]
fn invalid_slices_are_skipped_alone() {
    let (table, warnings) = run(vec![
        service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
        slice(
            "good",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("10.244.0.11", ready())]),
        ),
        slice(
            "bad",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("fd00::1", ready())]),
        ),
    ]);
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080"]
    );
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, "EndpointSlice");
    assert!(
        warnings[0]
            .to_string()
            .contains("endpoints[0].addresses[0]"),
        "{}",
        warnings[0]
    );
}

#[test]
fn two_services_claiming_one_frontend() {
    let (table, warnings) = run(vec![
        service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
        service_with(
            json!({"name": "zzz", "namespace": "default"}),
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        ),
    ]);
    assert_eq!(table.len(), 1);
    assert_eq!(
        table.entries().next().map(|e| e.service.name.as_str()),
        Some("web")
    );
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .to_string()
            .contains("already served by service default/web")
    );
}

#[test]
fn store_reports_affected_services() {
    let mut store = Store::new();
    store.upsert(service(basic_spec()));
    store.upsert(service_with(
        json!({"name": "db", "namespace": "default"}),
        json!({"clusterIP": "10.96.0.11", "selector": {"app": "db"}, "ports": [{"port": 5432}]}),
    ));
    let web = ObjectKey::new("default", "web");
    let db = ObjectKey::new("default", "db");

    let (affected, counts) = store.upsert(pod(
        "p",
        json!({"app": "web"}),
        &["10.244.0.10"],
        true,
        json!({}),
    ));
    assert_eq!(affected.services.iter().collect::<Vec<_>>(), vec![&web]);
    assert_eq!(counts.endpoints, 1);
    // Relabelled from web to db: both Services see the change.
    let (affected, _) = store.upsert(pod(
        "p",
        json!({"app": "db"}),
        &["10.244.0.10"],
        true,
        json!({}),
    ));
    assert_eq!(affected.services.len(), 2);
    let (affected, _) = store.delete(crate::store::Kind::Pod, &ObjectKey::new("default", "p"));
    assert_eq!(affected.services.iter().collect::<Vec<_>>(), vec![&db]);
    let (affected, _) = store.upsert(slice("s", "IPv4", json!([]), json!([])));
    assert_eq!(affected.services.iter().collect::<Vec<_>>(), vec![&web]);
    let (affected, _) = store.upsert(node("node-a", "z"));
    assert!(affected.all);
}

#[test]
fn draining_lists_terminating_endpoints_left_out() {
    let terminating = json!({"ready": false, "serving": true, "terminating": true});
    let (table, _) = run(vec![
        service_with(
            json!({"name": "web", "namespace": "default",
                   "annotations": {"switchyard.io/lb-algorithm": "maglev"}}),
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        ),
        slice(
            "web-a",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("10.244.0.11", ready()), ep("10.244.0.12", terminating)]),
        ),
    ]);
    let entry = table.entries().next().expect("one frontend");
    assert_eq!(entry.algorithm, Algorithm::Maglev);
    assert_eq!(entry.backends.len(), 1);
    let draining: Vec<String> = entry.draining.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(
        draining,
        vec!["10.244.0.12"],
        "terminating, not used, still there"
    );
}

/// A Node `name` with `status.addresses` given as (type, address).
fn node_with_addresses(name: &str, addresses: &[(&str, &str)]) -> Object {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"addresses": addresses.iter()
            .map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>()},
    }))
    .expect("test Node parses");
    Object::Node(n)
}

fn run_with(objects: Vec<Object>, node: &NodeContext) -> (ServiceTable, Vec<Warning>) {
    let mut store = Store::new();
    for object in objects {
        store.upsert(object);
    }
    compute_table(&store, node)
}

/// `kind addr:port/proto algorithm snat=.. -> backends`, for north-south expectations.
fn ns_summary(table: &ServiceTable) -> Vec<String> {
    table
        .entries()
        .map(|e| {
            let backends: Vec<String> = e
                .backends
                .iter()
                .map(|b| format!("{}{}", b.addr, if b.local { "(l)" } else { "" }))
                .collect();
            let mut line = format!(
                "{} {} {:?}",
                e.frontend.kind.name(),
                e.frontend,
                e.algorithm
            );
            if let Some(snat) = e.snat {
                line.push_str(&format!(" snat={snat}"));
            }
            if e.on_empty == EmptyAction::Drop {
                line.push_str(" drop");
            }
            if let Some(ranges) = &e.source_ranges {
                let r: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                line.push_str(&format!(" ranges=[{}]", r.join(",")));
            }
            if let Some(port) = e.health_check_node_port {
                line.push_str(&format!(" hc={port}"));
            }
            format!("{line} -> {}", backends.join(","))
        })
        .collect()
}

#[test]
fn north_south_frontends() {
    let this_node = || {
        node_with_addresses(
            NODE,
            &[
                ("Hostname", "node-a"),
                ("ExternalIP", "203.0.113.5"),
                ("InternalIP", "192.168.0.10"),
                ("InternalIP", "fd00:192::10"),
            ],
        )
    };
    let endpoints = || {
        slice(
            "web-a",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                ep("10.244.0.11", ready()),
                {"addresses": ["10.244.1.11"], "nodeName": "node-b"},
            ]),
        )
    };
    let svc = |extra: Value| {
        let mut s = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]});
        merge(&mut s, extra);
        s
    };
    let with_status = |spec: Value, status: Value| {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": spec,
            "status": status,
        }))
        .expect("test Service parses");
        Object::Service(svc)
    };
    let all = NodeContext::named(NODE);
    let primary = NodeContext {
        nodeport_addresses: NodePortAddresses::Primary,
        ..NodeContext::named(NODE)
    };
    let external_only = NodeContext {
        nodeport_addresses: NodePortAddresses::parse("203.0.113.0/24").unwrap(),
        ..NodeContext::named(NODE)
    };
    let b = "10.244.0.11(l),10.244.1.11";
    let cases: Vec<(&str, Vec<Object>, &NodeContext, Vec<String>)> = vec![
        (
            "NodePort on every node address of the Service's family, Maglev, SNAT to the InternalIP",
            vec![
                service(svc(json!({"type": "NodePort"}))),
                endpoints(),
                this_node(),
            ],
            &all,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
                format!("NodePort 203.0.113.5:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "--nodeport-addresses primary: the first InternalIP",
            vec![
                service(svc(json!({"type": "NodePort"}))),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "--nodeport-addresses CIDR",
            vec![
                service(svc(json!({"type": "NodePort"}))),
                endpoints(),
                this_node(),
            ],
            &external_only,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("NodePort 203.0.113.5:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "a nodePort on a ClusterIP Service is not served",
            vec![service(svc(json!({}))), endpoints(), this_node()],
            &primary,
            vec![format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}")],
        ),
        (
            "externalIPs on the Service port, of any type; an IPv6 one is not of the Service's family",
            vec![
                service(svc(json!({"externalIPs": ["198.51.100.7", "fd00:1::7"]}))),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("ExternalIP 198.51.100.7:80/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "LoadBalancer: NodePort and ingress IPs; ipMode Proxy and hostnames are the load balancer's",
            vec![
                with_status(
                    svc(json!({"type": "LoadBalancer"})),
                    json!({"loadBalancer": {"ingress": [
                        {"ip": "198.51.100.9"},
                        {"ip": "198.51.100.10", "ipMode": "Proxy"},
                        {"hostname": "lb.example.invalid"},
                    ]}}),
                ),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("LoadBalancer 198.51.100.9:80/TCP Maglev snat=192.168.0.10 -> {b}"),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "an external IP that is also the load balancer's is served once, as the external IP",
            vec![
                with_status(
                    svc(json!({"type": "LoadBalancer", "externalIPs": ["198.51.100.9"]})),
                    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}),
                ),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("ExternalIP 198.51.100.9:80/TCP Maglev snat=192.168.0.10 -> {b}"),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "externalTrafficPolicy Local: local endpoints only, no SNAT, drop when none; \
             the health check node port; internal traffic keeps every endpoint",
            vec![
                with_status(
                    svc(
                        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                               "healthCheckNodePort": 32000}),
                    ),
                    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}),
                ),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                "LoadBalancer 198.51.100.9:80/TCP Maglev drop hc=32000 -> 10.244.0.11(l)"
                    .to_owned(),
                "NodePort 192.168.0.10:30080/TCP Maglev drop hc=32000 -> 10.244.0.11(l)".to_owned(),
            ],
        ),
        (
            "externalTrafficPolicy Local on a NodePort Service has no health check node port",
            vec![
                service(svc(
                    json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                                   "healthCheckNodePort": 32000}),
                )),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                "NodePort 192.168.0.10:30080/TCP Maglev drop -> 10.244.0.11(l)".to_owned(),
            ],
        ),
        (
            "internalTrafficPolicy Local narrows the ClusterIP only",
            vec![
                service(svc(
                    json!({"type": "NodePort", "internalTrafficPolicy": "Local"}),
                )),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                "ClusterIP 10.96.0.10:80/TCP Random drop -> 10.244.0.11(l)".to_owned(),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "loadBalancerSourceRanges apply to the load balancer's IPs, in their family",
            vec![
                with_status(
                    svc(json!({"type": "LoadBalancer",
                               "loadBalancerSourceRanges": ["192.168.0.200/32", "10.1.2.3/16", "fd00::/8"]})),
                    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}),
                ),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!(
                    "LoadBalancer 198.51.100.9:80/TCP Maglev snat=192.168.0.10 ranges=[192.168.0.200/32,10.1.0.0/16] -> {b}"
                ),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "source ranges of the other family only: no one of this family may connect",
            vec![
                with_status(
                    svc(json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ["fd00::/8"]})),
                    json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}),
                ),
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!(
                    "LoadBalancer 198.51.100.9:80/TCP Maglev snat=192.168.0.10 ranges=[] -> {b}"
                ),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "the source-ranges annotation when the field is empty",
            vec![
                {
                    let svc: Service = serde_json::from_value(json!({
                        "metadata": {"name": "web", "namespace": "default", "annotations": {
                            "service.beta.kubernetes.io/load-balancer-source-ranges": "192.168.0.0/24, 10.0.0.0/8"}},
                        "spec": svc(json!({"type": "LoadBalancer"})),
                        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}},
                    }))
                    .unwrap();
                    Object::Service(svc)
                },
                endpoints(),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!(
                    "LoadBalancer 198.51.100.9:80/TCP Maglev snat=192.168.0.10 ranges=[192.168.0.0/24,10.0.0.0/8] -> {b}"
                ),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
            ],
        ),
        (
            "dual stack: each family's node address with its own endpoints",
            vec![
                service(
                    json!({"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                               "ports": [{"port": 80, "nodePort": 30080}]}),
                ),
                endpoints(),
                slice(
                    "web-b",
                    "IPv6",
                    json!([{"port": 8080}]),
                    json!([ep("fd00:244::11", ready())]),
                ),
                this_node(),
            ],
            &primary,
            vec![
                format!("ClusterIP 10.96.0.10:80/TCP Random -> {b}"),
                format!("NodePort 192.168.0.10:30080/TCP Maglev snat=192.168.0.10 -> {b}"),
                "ClusterIP [fd00:96::10]:80/TCP Random -> fd00:244::11(l)".to_owned(),
                "NodePort [fd00:192::10]:30080/TCP Maglev snat=fd00:192::10 -> fd00:244::11(l)"
                    .to_owned(),
            ],
        ),
    ];
    for (name, objects, node, want) in cases {
        let (table, warnings) = run_with(objects, node);
        assert!(warnings.is_empty(), "{name}: warnings {warnings:?}");
        let mut got = ns_summary(&table);
        let mut want = want;
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn north_south_bad_input_is_reported() {
    let endpoints = slice(
        "web-a",
        "IPv4",
        json!([{"port": 8080}]),
        json!([ep("10.244.0.11", ready())]),
    );
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an externalIP that is no address",
            json!({"clusterIP": "10.96.0.10", "externalIPs": ["300.1.1.1"], "ports": [{"port": 80}]}),
            "spec.externalIPs[0]",
        ),
        (
            "a source range that is no CIDR",
            json!({"clusterIP": "10.96.0.10", "type": "LoadBalancer",
                   "loadBalancerSourceRanges": ["10.0.0.0/33"], "ports": [{"port": 80}]}),
            "spec.loadBalancerSourceRanges[0]",
        ),
        (
            "a health check node port out of range",
            json!({"clusterIP": "10.96.0.10", "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 70000, "ports": [{"port": 80}]}),
            "spec.healthCheckNodePort",
        ),
    ];
    for (name, spec, field) in cases {
        let (table, warnings) = run(vec![
            service(spec),
            endpoints.clone(),
            service_with(
                json!({"name": "other", "namespace": "default"}),
                json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}),
            ),
        ]);
        assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        assert!(
            warnings[0].invalid && warnings[0].message.contains(field),
            "{name}: {warnings:?}"
        );
        assert_eq!(table.len(), 1, "{name}: the other Service stays");
    }

    // A node without addresses: NodePorts cannot be served, and the warning says why.
    let (table, warnings) = run(vec![
        service(json!({"clusterIP": "10.96.0.10", "type": "NodePort",
                       "ports": [{"port": 80, "nodePort": 30080}]})),
        endpoints,
        node(NODE, "a"),
    ]);
    assert_eq!(table.len(), 1, "the ClusterIP is served");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].message.contains("no address for NodePorts") && !warnings[0].invalid);
}

#[test]
fn nodeport_addresses_flag() {
    assert_eq!(
        NodePortAddresses::parse("").unwrap(),
        NodePortAddresses::All
    );
    assert_eq!(
        NodePortAddresses::parse("Primary").unwrap(),
        NodePortAddresses::Primary
    );
    assert_eq!(
        NodePortAddresses::parse("192.168.0.7/24, fd00::/8").unwrap(),
        NodePortAddresses::Cidrs(vec![
            "192.168.0.0/24".parse().unwrap(),
            "fd00::/8".parse().unwrap()
        ])
    );
    let error = NodePortAddresses::parse("192.168.0.0/24,eth0").unwrap_err();
    assert!(error.contains("\"eth0\""), "{error}");
}

fn tls_secret(name: &str, kind: &str, data: Value) -> Object {
    Object::Secret(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "type": kind,
            "data": data,
        }))
        .expect("test Secret parses"),
    )
}

/// `upstream balancer tls` of each frontend's L7 settings, or `L4`.
fn l7_summary(table: &ServiceTable) -> Vec<String> {
    table
        .entries()
        .map(|e| match &e.l7 {
            None => format!("{} L4", e.frontend),
            Some(l7) => format!(
                "{} {} {}{}",
                e.frontend,
                l7.spec.upstream,
                l7.spec.balancer,
                if l7.spec.tls.is_some() { " tls" } else { "" }
            ),
        })
        .collect()
}

#[test]
fn which_ports_are_served_per_request() {
    use base64_free::b64;
    struct Case {
        name: &'static str,
        annotations: Value,
        ports: Value,
        secrets: Vec<Object>,
        want: Vec<&'static str>,
        warnings: Vec<&'static str>,
    }
    let port = |name: &str, number: u16, app: Option<&str>, proto: &str| {
        let mut p = json!({"name": name, "port": number, "targetPort": 8080, "protocol": proto});
        if let Some(app) = app {
            p["appProtocol"] = json!(app);
        }
        p
    };
    let cert = json!({"tls.crt": b64("CERT"), "tls.key": b64("KEY")});
    let cases = vec![
        Case {
            name: "appProtocol picks the upstream protocol; others stay L4",
            annotations: json!({}),
            ports: json!([
                port("a", 80, Some("http"), "TCP"),
                port("b", 81, Some("kubernetes.io/h2c"), "TCP"),
                port("c", 82, Some("grpc"), "TCP"),
                port("d", 83, Some("https"), "TCP"),
                port("e", 84, Some("kubernetes.io/ws"), "TCP"),
                port("f", 85, None, "TCP"),
                port("g", 86, Some("http"), "UDP"),
            ]),
            secrets: vec![],
            want: vec![
                "10.96.0.10:80/TCP http1 peak-ewma",
                "10.96.0.10:81/TCP h2c peak-ewma",
                "10.96.0.10:82/TCP h2c peak-ewma",
                "10.96.0.10:83/TCP https peak-ewma",
                "10.96.0.10:84/TCP L4",
                "10.96.0.10:85/TCP L4",
                "10.96.0.10:86/UDP L4",
            ],
            warnings: vec![],
        },
        Case {
            name: "the l7 annotation turns every TCP port on, or every port off",
            annotations: json!({"switchyard.io/l7": "true"}),
            ports: json!([
                port("a", 80, None, "TCP"),
                port("b", 81, Some("grpc"), "TCP"),
                port("u", 53, None, "UDP")
            ]),
            secrets: vec![],
            want: vec![
                "10.96.0.10:53/UDP L4",
                "10.96.0.10:80/TCP http1 peak-ewma",
                "10.96.0.10:81/TCP h2c peak-ewma",
            ],
            warnings: vec![],
        },
        Case {
            name: "l7 false wins over appProtocol",
            annotations: json!({"switchyard.io/l7": "false"}),
            ports: json!([port("a", 80, Some("http"), "TCP")]),
            secrets: vec![],
            want: vec!["10.96.0.10:80/TCP L4"],
            warnings: vec![],
        },
        Case {
            name: "balancers by annotation, and the L4 one where it means something per request",
            annotations: json!({"switchyard.io/l7-balancer": "header:X-User"}),
            ports: json!([port("a", 80, Some("http"), "TCP")]),
            secrets: vec![],
            want: vec!["10.96.0.10:80/TCP http1 hash(header x-user)"],
            warnings: vec![],
        },
        Case {
            name: "lb-algorithm round-robin applies per request",
            annotations: json!({"switchyard.io/lb-algorithm": "round-robin"}),
            ports: json!([port("a", 80, Some("http"), "TCP")]),
            secrets: vec![],
            want: vec!["10.96.0.10:80/TCP http1 round-robin"],
            warnings: vec![],
        },
        Case {
            name: "bad values warn, name the annotation and fall back to defaults",
            annotations: json!({
                "switchyard.io/l7": "yes",
                "switchyard.io/l7-balancer": "fastest",
                "switchyard.io/l7-timeout": "soon",
                "switchyard.io/l7-retries": "-1",
                "switchyard.io/l7-health-check-path": "healthz",
            }),
            ports: json!([port("a", 80, Some("http"), "TCP")]),
            secrets: vec![],
            want: vec!["10.96.0.10:80/TCP http1 peak-ewma"],
            warnings: vec![
                "switchyard.io/l7: \"yes\" is not true or false",
                "switchyard.io/l7-balancer: \"fastest\"",
                "switchyard.io/l7-timeout: \"soon\" is not a duration",
                "switchyard.io/l7-retries: \"-1\" is not a whole number",
                "switchyard.io/l7-health-check-path: \"healthz\" is not a path",
            ],
        },
        Case {
            name: "TLS from a kubernetes.io/tls Secret",
            annotations: json!({"switchyard.io/tls-secret": "web-tls"}),
            ports: json!([port("a", 443, Some("http"), "TCP")]),
            secrets: vec![tls_secret("web-tls", "kubernetes.io/tls", cert.clone())],
            want: vec!["10.96.0.10:443/TCP http1 peak-ewma tls"],
            warnings: vec![],
        },
        Case {
            name: "a missing Secret skips the port rather than serve plaintext",
            annotations: json!({"switchyard.io/tls-secret": "web-tls"}),
            ports: json!([
                port("a", 443, Some("http"), "TCP"),
                port("b", 80, None, "TCP")
            ]),
            secrets: vec![],
            want: vec!["10.96.0.10:80/TCP L4"],
            warnings: vec!["secret default/web-tls not found"],
        },
        Case {
            name: "a Secret of another type, or without its keys, skips the port",
            annotations: json!({"switchyard.io/tls-secret": "web-tls", "switchyard.io/upstream-ca-secret": "ca"}),
            ports: json!([port("a", 443, Some("https"), "TCP")]),
            secrets: vec![
                tls_secret("web-tls", "Opaque", cert.clone()),
                tls_secret("ca", "kubernetes.io/tls", cert),
            ],
            want: vec![],
            warnings: vec!["secret default/web-tls is not of type kubernetes.io/tls"],
        },
    ];
    for case in cases {
        let mut objects = vec![
            service_with(
                json!({"name": "web", "namespace": "default", "annotations": case.annotations}),
                json!({"clusterIP": "10.96.0.10", "ports": case.ports}),
            ),
            slice(
                "web-1",
                "IPv4",
                json!([
                    {"name": "a", "port": 8080, "protocol": "TCP"}, {"name": "b", "port": 8080, "protocol": "TCP"},
                    {"name": "c", "port": 8080, "protocol": "TCP"}, {"name": "d", "port": 8080, "protocol": "TCP"},
                    {"name": "e", "port": 8080, "protocol": "TCP"}, {"name": "f", "port": 8080, "protocol": "TCP"},
                    {"name": "g", "port": 8080, "protocol": "UDP"}, {"name": "u", "port": 8080, "protocol": "UDP"},
                ]),
                json!([ep("10.244.0.5", ready())]),
            ),
        ];
        objects.extend(case.secrets);
        let (table, warnings) = run(objects);
        let mut got = l7_summary(&table);
        got.sort();
        let mut want: Vec<String> = case.want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{}", case.name);
        assert_eq!(
            warnings.len(),
            case.warnings.len(),
            "{}: {warnings:?}",
            case.name
        );
        for expected in &case.warnings {
            assert!(
                warnings.iter().any(|w| w.message.contains(expected)),
                "{}: no warning contains {expected:?}: {warnings:?}",
                case.name
            );
        }
    }
}

#[test]
fn l7_settings_come_from_annotations() {
    let (table, warnings) = run(vec![
        service_with(
            json!({"name": "web", "namespace": "default", "annotations": {
                "switchyard.io/l7-timeout": "15s",
                "switchyard.io/l7-per-try-timeout": "2s",
                "switchyard.io/l7-retries": "0",
                "switchyard.io/l7-retry-budget-percent": "50",
                "switchyard.io/l7-retry-min-per-second": "3",
                "switchyard.io/l7-outlier-failures": "2",
                "switchyard.io/l7-outlier-ejection": "1m",
                "switchyard.io/l7-outlier-max-ejection-percent": "34",
                "switchyard.io/l7-health-check-path": "/healthz",
                "switchyard.io/l7-health-check-interval": "3s",
                "switchyard.io/l7-max-header-bytes": "16384",
                "switchyard.io/l7-max-body-bytes": "1048576",
                "switchyard.io/l7-idle-timeout": "90s",
                "switchyard.io/l7-header-timeout": "2s",
                "switchyard.io/l7-balancer": "cookie:session",
                "switchyard.io/upstream-server-name": "web.default.svc",
            }}),
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "appProtocol": "http", "targetPort": 8080}]}),
        ),
        slice(
            "web-1",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("10.244.0.5", ready())]),
        ),
    ]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = &table.entries().next().unwrap().l7.as_ref().unwrap().spec;
    use switchyard_proxy::l7::*;
    assert_eq!(spec.timeouts.request, Some(Duration::from_secs(15)));
    assert_eq!(spec.timeouts.per_try, Some(Duration::from_secs(2)));
    assert_eq!(
        spec.retries,
        RetryPolicy {
            max_retries: 0,
            budget_percent: 50,
            min_retries_per_second: 3
        }
    );
    assert_eq!(
        spec.outlier,
        OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(60),
            max_ejection_percent: 34
        }
    );
    let check = spec.health_check.as_ref().unwrap();
    assert_eq!(
        (check.path.as_str(), check.interval),
        ("/healthz", Duration::from_secs(3))
    );
    assert_eq!(
        spec.limits,
        Limits {
            max_header_bytes: 16_384,
            max_body_bytes: Some(1_048_576),
            idle_timeout: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(2),
        }
    );
    assert_eq!(
        spec.balancer,
        RequestBalancer::ConsistentHash(HashKey::Cookie("session".into()))
    );
    assert_eq!(
        spec.upstream_tls.server_name.as_deref(),
        Some("web.default.svc")
    );
}

#[test]
fn a_secret_change_recomputes_the_services_naming_it() {
    let mut store = Store::new();
    store.upsert(service_with(
        json!({"name": "web", "namespace": "default", "annotations": {"switchyard.io/tls-secret": "web-tls"}}),
        basic_spec(),
    ));
    store.upsert(service_with(
        json!({"name": "other", "namespace": "default"}),
        basic_spec(),
    ));
    let (affected, _) = store.upsert(tls_secret("web-tls", "kubernetes.io/tls", json!({})));
    assert_eq!(
        affected.services.into_iter().collect::<Vec<_>>(),
        [ObjectKey::new("default", "web")]
    );
    let (affected, _) = store.delete(
        crate::store::Kind::Secret,
        &ObjectKey::new("default", "web-tls"),
    );
    assert_eq!(affected.services.len(), 1);
    let (affected, _) = store.upsert(tls_secret("unrelated", "kubernetes.io/tls", json!({})));
    assert!(affected.is_empty());
}

/// Base64 for the test Secrets, without a dependency.
mod base64_free {
    pub fn b64(s: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// An endpoint on `node` in `zone`, ready or not, with the hints given (JSON, or null).
fn zoned_ep(ip: &str, node: &str, zone: &str, ready: bool, hints: Value) -> Value {
    json!({"addresses": [ip], "nodeName": node, "zone": zone, "hints": hints,
           "conditions": {"ready": ready, "serving": ready, "terminating": false}})
}

/// Topology-aware routing seen from node-a in zone-1 (kube-proxy's rules: hints decide, a
/// missing hint or none for here means all, `Local` policies win), for hinted slices written
/// by any controller and for endpoints the model derives from Pods itself.
#[test]
fn topology_hints_keep_traffic_close() {
    let z = |zone: &str| json!({"forZones": [{"name": zone}]});
    let zn = |zone: &str, node: &str| json!({"forZones": [{"name": zone}], "forNodes": [{"name": node}]});
    let here_a = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
    struct Case {
        name: &'static str,
        spec: Value,
        endpoints: Value,
        want: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "zone hints: this zone's endpoints",
            spec: here_a.clone(),
            endpoints: json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", true, z("zone-1")),
                zoned_ep("10.244.1.11", "node-b", "zone-1", true, z("zone-1")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, z("zone-2")),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.1.11:8080"],
        },
        Case {
            name: "one ready endpoint without a hint: all",
            spec: here_a.clone(),
            endpoints: json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", true, z("zone-1")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, Value::Null),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.2.11:8080"],
        },
        Case {
            name: "this zone's endpoints are not ready: all ready ones",
            spec: here_a.clone(),
            endpoints: json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", false, z("zone-1")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, z("zone-2")),
                zoned_ep("10.244.2.12", "node-c", "zone-2", true, z("zone-2")),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.2.11:8080,10.244.2.12:8080"],
        },
        Case {
            name: "node hints: this node's endpoints",
            spec: here_a.clone(),
            endpoints: json!([
                zoned_ep(
                    "10.244.0.11",
                    "node-a",
                    "zone-1",
                    true,
                    zn("zone-1", "node-a")
                ),
                zoned_ep(
                    "10.244.1.11",
                    "node-b",
                    "zone-1",
                    true,
                    zn("zone-1", "node-b")
                ),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080"],
        },
        Case {
            name: "node hints, this node's endpoint not ready: the zone rule",
            spec: here_a.clone(),
            endpoints: json!([
                zoned_ep(
                    "10.244.0.11",
                    "node-a",
                    "zone-1",
                    false,
                    zn("zone-1", "node-a")
                ),
                zoned_ep(
                    "10.244.1.11",
                    "node-b",
                    "zone-1",
                    true,
                    zn("zone-1", "node-b")
                ),
                zoned_ep(
                    "10.244.2.11",
                    "node-c",
                    "zone-2",
                    true,
                    zn("zone-2", "node-c")
                ),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.1.11:8080"],
        },
        Case {
            name: "internalTrafficPolicy: Local wins over the hints",
            spec: json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                         "internalTrafficPolicy": "Local"}),
            endpoints: json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", true, z("zone-2")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, z("zone-2")),
            ]),
            want: vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080"],
        },
        Case {
            name: "external traffic with policy Cluster follows the hints too, Local does not",
            spec: json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                         "externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local"}),
            endpoints: json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", true, z("zone-2")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, z("zone-2")),
            ]),
            want: vec![
                "10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.2.11:8080",
                "192.0.2.10:80/TCP -> 10.244.0.11:8080",
            ],
        },
    ];
    for case in cases {
        let (table, warnings) = run(vec![
            node("node-a", "zone-1"),
            service(case.spec),
            slice("web-a", "IPv4", json!([{"port": 8080}]), case.endpoints),
        ]);
        assert!(warnings.is_empty(), "{}: {warnings:?}", case.name);
        assert_eq!(summary(&table), case.want, "{}", case.name);
    }

    // Without a zone label on this node, zone hints cannot apply.
    let (table, _) = run(vec![
        service(here_a.clone()),
        slice(
            "web-a",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                zoned_ep("10.244.0.11", "node-a", "zone-1", true, z("zone-1")),
                zoned_ep("10.244.2.11", "node-c", "zone-2", true, z("zone-2")),
            ]),
        ),
    ]);
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.11:8080,10.244.2.11:8080"],
        "this node has no zone"
    );
}

/// Endpoints the model derives from Pods get the hints Kubernetes' controller would write:
/// `trafficDistribution: PreferClose` keeps node-a (zone-1) on zone-1's Pods, and
/// `PreferSameNode` on its own.
#[test]
fn derived_endpoints_follow_traffic_distribution() {
    let on = |name: &str, ip: &str, node: &str| {
        pod(
            name,
            json!({"app": "web"}),
            &[ip],
            true,
            json!({"spec": {"nodeName": node}}),
        )
    };
    let objects = |distribution: &str| {
        let mut spec = basic_spec();
        merge(&mut spec, json!({"trafficDistribution": distribution}));
        vec![
            node("node-a", "zone-1"),
            node("node-b", "zone-1"),
            node("node-c", "zone-2"),
            service(spec),
            on("web-0", "10.244.0.10", "node-a"),
            on("web-1", "10.244.1.10", "node-b"),
            on("web-2", "10.244.2.10", "node-c"),
        ]
    };
    let (table, _) = run(objects("PreferClose"));
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.10:8080,10.244.1.10:8080"]
    );
    let (table, _) = run(objects("PreferSameNode"));
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.10:8080"]
    );
    let (table, _) = run(objects("Unknown"));
    assert_eq!(
        summary(&table),
        vec!["10.96.0.10:80/TCP -> 10.244.0.10:8080,10.244.1.10:8080,10.244.2.10:8080"]
    );
}
