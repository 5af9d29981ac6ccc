use super::*;
use serde_json::json;

fn service(spec: Value) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "s-1"}, "spec": spec}),
    )
    .unwrap()
}

fn pod(name: &str, labels: Value, status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status,
    }))
    .unwrap()
}

fn running(ip: &str) -> Value {
    json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
           "conditions": [{"type": "Ready", "status": "True"}]})
}

fn conditions(e: &Endpoint) -> (bool, bool, bool) {
    let c = e.conditions.as_ref().unwrap();
    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
}

#[test]
fn selection_conditions_and_named_ports() {
    let svc = service(json!({"selector": {"app": "web"}, "ipFamilies": ["IPv4"],
                             "ports": [{"name": "h", "port": 80, "targetPort": "http"}]}));
    let mut terminating = pod("c", json!({"app": "web"}), running("10.244.0.3"));
    terminating.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    let pods = [
        pod("a", json!({"app": "web"}), running("10.244.0.1")),
        pod(
            "b",
            json!({"app": "web"}),
            json!({"phase": "Running", "podIP": "10.244.0.2"}),
        ),
        terminating,
        pod("d", json!({"app": "db"}), running("10.244.0.4")),
        pod("e", json!({"app": "web"}), json!({"phase": "Pending"})),
        pod(
            "f",
            json!({"app": "web"}),
            json!({"phase": "Succeeded", "podIP": "10.244.0.6"}),
        ),
        pod("g", json!({"app": "web"}), running("fd00:244::7")),
    ];
    let slices = desired_slices(&svc, &pods, |n| {
        (n == "node-1").then(|| "zone-a".to_owned())
    });
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(s.ports[0].port, Some(8080));
    assert_eq!(s.ports[0].name.as_deref(), Some("h"));
    let got: Vec<(&str, (bool, bool, bool))> = s
        .endpoints
        .iter()
        .map(|e| (e.addresses[0].as_str(), conditions(e)))
        .collect();
    assert_eq!(
        got,
        [
            ("10.244.0.1", (true, true, false)),
            ("10.244.0.2", (false, false, false)),
            ("10.244.0.3", (false, true, true)),
        ]
    );
    let e = &s.endpoints[0];
    assert_eq!(e.zone.as_deref(), Some("zone-a"));
    assert_eq!(e.node_name.as_deref(), Some("node-1"));
    let r = e.target_ref.as_ref().unwrap();
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
        (Some("Pod"), Some("a"), Some("uid-a"))
    );
}

#[test]
fn dual_stack_publish_not_ready_and_placeholder() {
    let svc = service(
        json!({"selector": {"app": "web"}, "ipFamilies": ["IPv4", "IPv6"],
                             "publishNotReadyAddresses": true, "ports": [{"port": 80}]}),
    );
    let pods = [pod(
        "a",
        json!({"app": "web"}),
        json!({"phase": "Running",
        "podIPs": [{"ip": "10.244.0.1"}, {"ip": "fd00:244::1"}]}),
    )];
    let slices = desired_slices(&svc, &pods, |_| None);
    let types: Vec<&str> = slices.iter().map(|s| s.address_type).collect();
    assert_eq!(types, ["IPv4", "IPv6"]);
    assert!(
        slices.iter().all(|s| conditions(&s.endpoints[0]).0),
        "published while not ready"
    );
    assert_eq!(slices[0].ports[0].port, Some(80));

    // No Pods: one empty slice of the primary family. No selector: nothing.
    let v6 = service(
        json!({"selector": {"app": "web"}, "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
    );
    let empty = desired_slices(&v6, &[], |_| None);
    assert_eq!(
        empty,
        [DesiredSlice {
            address_type: "IPv6",
            ports: vec![],
            endpoints: vec![]
        }]
    );
    let external = service(
        json!({"type": "ExternalName", "externalName": "x.invalid", "selector": {"app": "web"}}),
    );
    assert!(desired_slices(&external, &pods, |_| None).is_empty());
    let manual = service(json!({"ports": [{"port": 80}]}));
    assert!(desired_slices(&manual, &pods, |_| None).is_empty());
}

#[test]
fn at_most_100_endpoints_a_slice_and_one_slice_per_port_set() {
    let svc =
        service(json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}));
    let mut pods: Vec<Pod> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i}"),
                json!({"app": "web"}),
                running(&format!("10.244.{}.{}", i / 200, i % 200 + 1)),
            )
        })
        .collect();
    // Two Pods name their port differently: they get a slice of their own.
    for p in pods.iter_mut().take(2) {
        p.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
    }
    let slices = desired_slices(&svc, &pods, |_| None);
    let sizes: Vec<(usize, Option<i32>)> = slices
        .iter()
        .map(|s| (s.endpoints.len(), s.ports[0].port))
        .collect();
    assert_eq!(
        sizes,
        [
            (100, Some(8080)),
            (100, Some(8080)),
            (48, Some(8080)),
            (2, Some(9090))
        ]
    );
}

#[test]
fn selects_needs_a_non_empty_selector() {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    assert!(selects(
        &service(json!({"selector": {"app": "web"}})),
        Some(&labels)
    ));
    assert!(!selects(
        &service(json!({"selector": {"app": "db"}})),
        Some(&labels)
    ));
    assert!(!selects(&service(json!({"selector": {}})), Some(&labels)));
    assert!(!selects(&service(json!({})), Some(&labels)));
}
