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

fn event(key: &str, object: Value, prev: Option<Value>, kind: EventType) -> crate::store::Event {
    crate::store::Event {
        rv: 1,
        key: key.to_owned(),
        kind,
        object: Arc::new(object),
        prev: prev.map(Arc::new),
    }
}

#[test]
fn the_index_follows_pods_slices_and_services() {
    let mut index = Index::default();
    let pod_a = json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web", "tier": "x"}}});
    let svc = json!({"metadata": {"name": "web", "namespace": "default"},
                     "spec": {"selector": {"app": "web", "tier": "x"}}});
    let slice = json!({"metadata": {"name": "web-1", "namespace": "default",
        "labels": {LABEL_SERVICE_NAME: "web", LABEL_MANAGED_BY: MANAGED_BY}}});
    let user_slice = json!({"metadata": {"name": "mine", "namespace": "default",
        "labels": {LABEL_SERVICE_NAME: "web"}}});
    index.apply(&event(
        "pods/default/a",
        pod_a.clone(),
        None,
        EventType::Added,
    ));
    index.apply(&event("services/default/web", svc, None, EventType::Added));
    index.apply(&event(
        "endpointslices/default/web-1",
        slice,
        None,
        EventType::Added,
    ));
    index.apply(&event(
        "endpointslices/default/mine",
        user_slice,
        None,
        EventType::Added,
    ));

    let key3 = |k: &str, v: &str| ("default".to_owned(), k.to_owned(), v.to_owned());
    assert!(index.pods[&key3("app", "web")].contains("a"));
    assert!(index.pods[&key3("tier", "x")].contains("a"));
    // Only managed slices are the controller's.
    assert_eq!(
        index.slices[&("default".to_owned(), "web".to_owned())],
        BTreeSet::from(["web-1".to_owned()])
    );
    // The Service is found from a pod label that is its selector's first pair.
    let found: Vec<&String> = index
        .services_for_labels("default", labels_of(&pod_a))
        .collect();
    assert_eq!(found, ["web"]);
    // Another namespace finds nothing.
    assert_eq!(
        index
            .services_for_labels("other", labels_of(&pod_a))
            .count(),
        0
    );

    // Relabelled: the old pair is gone, the new one is there; applying twice changes nothing.
    let relabelled =
        json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "db"}}});
    for _ in 0..2 {
        index.apply(&event(
            "pods/default/a",
            relabelled.clone(),
            Some(pod_a.clone()),
            EventType::Modified,
        ));
    }
    assert!(!index.pods.contains_key(&key3("app", "web")));
    assert!(!index.pods.contains_key(&key3("tier", "x")));
    assert!(index.pods[&key3("app", "db")].contains("a"));
    // Deleted: nothing left of it.
    index.apply(&event(
        "pods/default/a",
        relabelled.clone(),
        Some(relabelled),
        EventType::Deleted,
    ));
    assert!(index.pods.is_empty());
}
