//! The `EndpointSlice` controller: a user who creates only Pods and a Service gets slices.

mod common;

use std::time::Duration;

use common::{Client, Server, eventually};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

fn pod(name: &str, app: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": app}},
           "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

async fn slices_of(c: &Client, service: &str) -> anyhow::Result<Vec<Value>> {
    let r = c
        .get(&format!(
            "{SLICES}?labelSelector=kubernetes.io%2Fservice-name%3D{service}"
        ))
        .await?;
    Ok(r.body["items"].as_array().cloned().unwrap_or_default())
}

/// (address, ready, serving, terminating) of every endpoint of the Service, sorted.
async fn endpoints(c: &Client, service: &str) -> anyhow::Result<Vec<(String, bool, bool, bool)>> {
    let mut out = Vec::new();
    for s in slices_of(c, service).await? {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            let cond = &e["conditions"];
            out.push((
                e["addresses"][0].as_str().unwrap_or("").to_owned(),
                cond["ready"] == true,
                cond["serving"] == true,
                cond["terminating"] == true,
            ));
        }
    }
    out.sort();
    Ok(out)
}

async fn wait_for(
    c: &Client,
    service: &str,
    want: Vec<(&str, bool, bool, bool)>,
) -> anyhow::Result<()> {
    let want: Vec<(String, bool, bool, bool)> = want
        .into_iter()
        .map(|(a, r, s, t)| (a.to_owned(), r, s, t))
        .collect();
    let last = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let got = eventually(T, || {
        let c = c.clone();
        let want = want.clone();
        let last = last.clone();
        async move {
            let got = endpoints(&c, service).await?;
            *last.lock() = got.clone();
            Ok((got == want).then_some(()))
        }
    })
    .await;
    let last = last.lock().clone();
    assert!(
        got.is_ok(),
        "endpoints of {service}: want {want:?}, have {last:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_pods_and_services() -> anyhow::Result<()> {
    let mut s = Server::start("slices").await?;
    let c = s.client.clone();
    c.post(
        "/api/v1/nodes",
        &json!({"metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}}}),
    )
    .await?;
    c.post(PODS, &pod("web-1", "web", "10.244.0.1", true))
        .await?;
    c.post(PODS, &pod("web-2", "web", "10.244.0.2", true))
        .await?;
    c.post(PODS, &pod("db-1", "db", "10.244.0.3", true)).await?;
    let svc = c
        .post(SVCS, &json!({"metadata": {"name": "web", "labels": {"team": "a"}},
                            "spec": {"selector": {"app": "web"}, "ports": [{"name": "h", "port": 80, "targetPort": "http"}]}}))
        .await?
        .body;
    wait_for(
        &c,
        "web",
        vec![
            ("10.244.0.1", true, true, false),
            ("10.244.0.2", true, true, false),
        ],
    )
    .await?;
    let slices = slices_of(&c, "web").await?;
    assert_eq!(slices.len(), 1);
    let slice = &slices[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"],
        json!([{"name": "h", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        slice["metadata"]["labels"]["team"], "a",
        "the Service's labels are copied"
    );
    let owner = &slice["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Service"), Some("web"))
    );
    assert_eq!(owner["uid"], svc["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert!(
        slice["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .is_string()
    );
    assert_eq!(slice["endpoints"][0]["zone"], "z1");
    assert_eq!(slice["endpoints"][0]["nodeName"], "node-1");
    assert_eq!(slice["endpoints"][0]["targetRef"]["name"], "web-1");
    let slice_name = slice["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(slice_name.starts_with("web-"));

    // Readiness changes; a Pod that stops matching leaves; one that starts matching joins.
    c.patch(
        &format!("{PODS}/web-2/status"),
        "application/strategic-merge-patch+json",
        &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    )
    .await?;
    c.patch(
        &format!("{PODS}/db-1"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await?;
    wait_for(
        &c,
        "web",
        vec![
            ("10.244.0.1", true, true, false),
            ("10.244.0.2", false, false, false),
            ("10.244.0.3", true, true, false),
        ],
    )
    .await?;
    // The slice was rewritten in place.
    assert_eq!(
        slices_of(&c, "web").await?[0]["metadata"]["name"],
        slice_name
    );

    // A gracefully deleted Pod is terminating (serving, not ready) until it is gone.
    c.delete(&format!("{PODS}/web-1")).await?;
    wait_for(
        &c,
        "web",
        vec![
            ("10.244.0.1", false, true, true),
            ("10.244.0.2", false, false, false),
            ("10.244.0.3", true, true, false),
        ],
    )
    .await?;
    wait_for(
        &c,
        "web",
        vec![
            ("10.244.0.2", false, false, false),
            ("10.244.0.3", true, true, false),
        ],
    )
    .await?;

    // A managed slice deleted by hand comes back.
    c.delete(&format!("{SLICES}/{slice_name}")).await?;
    wait_for(
        &c,
        "web",
        vec![
            ("10.244.0.2", false, false, false),
            ("10.244.0.3", true, true, false),
        ],
    )
    .await?;

    // kubectl sees them.
    let out = s
        .kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])
        .await?;
    assert!(
        out.starts_with("endpointslice.discovery.k8s.io/web-"),
        "{out}"
    );

    // A Service without a selector gets nothing made for it; a hand-made slice is left alone.
    c.post(
        SVCS,
        &json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await?;
    c.post(SLICES, &json!({"metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
                           "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.9"]}]}))
        .await?;
    // Deleting the Service takes its slices.
    c.delete(&format!("{SVCS}/web")).await?;
    eventually(T, || {
        let c = c.clone();
        async move { Ok(slices_of(&c, "web").await?.is_empty().then_some(())) }
    })
    .await?;
    let manual = slices_of(&c, "manual").await?;
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0]["metadata"]["name"], "manual-1");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_services_are_split_at_100_endpoints() -> anyhow::Result<()> {
    let mut s = Server::start("bigslices").await?;
    let c = s.client.clone();
    c.post(SVCS, &json!({"metadata": {"name": "big"}, "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]}}))
        .await?;
    // An empty placeholder slice first.
    eventually(T, || {
        let c = c.clone();
        async move {
            let s = slices_of(&c, "big").await?;
            Ok((s.len() == 1 && s[0]["endpoints"] == json!([])).then_some(()))
        }
    })
    .await?;
    for i in 0..250 {
        c.post(
            PODS,
            &pod(
                &format!("big-{i}"),
                "big",
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                true,
            ),
        )
        .await?;
    }
    let sizes = eventually(T, || {
        let c = c.clone();
        async move {
            let mut sizes: Vec<usize> = slices_of(&c, "big")
                .await?
                .iter()
                .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
                .collect();
            sizes.sort_unstable();
            Ok((sizes.iter().sum::<usize>() == 250).then_some(sizes))
        }
    })
    .await?;
    assert_eq!(sizes, [50, 100, 100]);
    s.stop().await;
    Ok(())
}

/// The hints of every endpoint of the Service: (address, zones, nodes), sorted.
async fn hints(c: &Client, service: &str) -> anyhow::Result<Vec<(String, Value, Value)>> {
    let mut out = Vec::new();
    for s in slices_of(c, service).await? {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            out.push((
                e["addresses"][0].as_str().unwrap_or("").to_owned(),
                e["hints"]["forZones"].clone(),
                e["hints"]["forNodes"].clone(),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `trafficDistribution` makes the controller hint each endpoint for its own zone (and node
/// for `PreferSameNode`), from the zone label of the Pod's Node; the hints follow changes of the
/// Service and of the Nodes' labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_distribution_writes_topology_hints() -> anyhow::Result<()> {
    let mut s = Server::start("hints").await?;
    let c = s.client.clone();
    for (node, zone) in [("node-1", "z1"), ("node-2", "z2")] {
        c.post(
            "/api/v1/nodes",
            &json!({"metadata": {"name": node, "labels": {"topology.kubernetes.io/zone": zone}}}),
        )
        .await?;
    }
    let mut on_node_2 = pod("web-2", "web", "10.244.0.2", true);
    on_node_2["spec"]["nodeName"] = json!("node-2");
    c.post(PODS, &pod("web-1", "web", "10.244.0.1", true))
        .await?;
    c.post(PODS, &on_node_2).await?;
    let spec = |distribution: Value| {
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}],
                        "trafficDistribution": distribution}})
    };
    c.post(SVCS, &spec(json!("PreferClose"))).await?;
    let expect = |want: Vec<(&str, Value, Value)>| {
        let c = c.clone();
        let want: Vec<(String, Value, Value)> = want
            .into_iter()
            .map(|(a, z, n)| (a.to_owned(), z, n))
            .collect();
        async move {
            let last = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
            let got = eventually(T, || {
                let (c, want, last) = (c.clone(), want.clone(), last.clone());
                async move {
                    let got = hints(&c, "web").await?;
                    *last.lock() = got.clone();
                    Ok((got == want).then_some(()))
                }
            })
            .await;
            assert!(got.is_ok(), "hints: want {want:?}, have {:?}", last.lock());
        }
    };
    let zone = |z: &str| json!([{"name": z}]);
    expect(vec![
        ("10.244.0.1", zone("z1"), Value::Null),
        ("10.244.0.2", zone("z2"), Value::Null),
    ])
    .await;

    // PreferSameNode: node hints as well.
    let current = c.get(&format!("{SVCS}/web")).await?.body;
    let mut changed = current.clone();
    changed["spec"]["trafficDistribution"] = json!("PreferSameNode");
    c.put(&format!("{SVCS}/web"), &changed).await?;
    expect(vec![
        ("10.244.0.1", zone("z1"), json!([{"name": "node-1"}])),
        ("10.244.0.2", zone("z2"), json!([{"name": "node-2"}])),
    ])
    .await;

    // A Node moves to another zone: its endpoint's hint follows.
    c.patch(
        "/api/v1/nodes/node-2",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "z3"}}}),
    )
    .await?;
    expect(vec![
        ("10.244.0.1", zone("z1"), json!([{"name": "node-1"}])),
        ("10.244.0.2", zone("z3"), json!([{"name": "node-2"}])),
    ])
    .await;

    // No trafficDistribution: no hints.
    let current = c.get(&format!("{SVCS}/web")).await?.body;
    let mut changed = current.clone();
    changed["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("trafficDistribution");
    c.put(&format!("{SVCS}/web"), &changed).await?;
    expect(vec![
        ("10.244.0.1", Value::Null, Value::Null),
        ("10.244.0.2", Value::Null, Value::Null),
    ])
    .await;
    s.stop().await;
    Ok(())
}
