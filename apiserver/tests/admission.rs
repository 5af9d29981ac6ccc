//! What the server does to objects on the way in: validation with Status bodies, `ClusterIP` and
//! `NodePort` allocation, immutability.

mod common;

use common::{Server, TempDir};
use serde_json::{Value, json};

const SVCS: &str = "/api/v1/namespaces/default/services";

fn svc(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn causes(body: &Value) -> Vec<String> {
    body["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {}",
                c["reason"].as_str().unwrap_or(""),
                c["field"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_get_422_with_field_causes() -> anyhow::Result<()> {
    let mut s = Server::start("invalid").await?;
    let c = &s.client;
    let r = c
        .post(
            SVCS,
            &svc(
                "web",
                json!({"ports": [{"port": 0}, {"name": "b", "port": 80, "protocol": "ICMP"}]}),
            ),
        )
        .await?;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(r.body["code"], 422);
    assert_eq!(r.body["details"]["kind"], "Service");
    assert_eq!(r.body["details"]["name"], "web");
    let got = causes(&r.body);
    for want in [
        "FieldValueRequired spec.ports[0].name",
        "FieldValueInvalid spec.ports[0].port",
        "FieldValueNotSupported spec.ports[1].protocol",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
    }
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Service \"web\" is invalid: [")
    );

    let r = c.post(SVCS, &svc("web", json!({}))).await?;
    assert_eq!(causes(&r.body), ["FieldValueRequired spec.ports"]);
    let r = c
        .post(SVCS, &svc("Web_1", json!({"ports": [{"port": 80}]})))
        .await?;
    assert_eq!(r.status, 422);
    assert_eq!(causes(&r.body), ["FieldValueInvalid metadata.name"]);

    let r = c
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )
        .await?;
    assert_eq!(
        (r.status, causes(&r.body)),
        (422, vec!["FieldValueRequired spec.containers".to_owned()])
    );
    let r = c
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .await?;
    assert_eq!(
        causes(&r.body),
        ["FieldValueRequired spec.containers[0].image"]
    );
    // A body of the wrong shape is a 400, as the real server's decoder says.
    let r = c
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}}),
        )
        .await?;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let r = c
        .post("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", &json!({
            "metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}))
        .await?;
    assert_eq!(
        causes(&r.body),
        ["FieldValueInvalid endpoints[0].addresses[0]"]
    );
    let r = c
        .post(
            "/api/v1/namespaces/default/secrets",
            &json!({"metadata": {"name": "s"}, "data": {"k": "not base64!"}}),
        )
        .await?;
    assert_eq!(r.status, 400);

    // A running Pod's spec may only change its images.
    let pod =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
    let created = c.post("/api/v1/namespaces/default/pods", &pod).await?.body;
    let mut changed = created.clone();
    changed["spec"]["containers"][0]["image"] = json!("b");
    assert_eq!(
        c.put("/api/v1/namespaces/default/pods/p", &changed)
            .await?
            .status,
        200
    );
    let current = c.get("/api/v1/namespaces/default/pods/p").await?.body;
    let mut changed = current.clone();
    changed["spec"]["containers"][0]["name"] = json!("d");
    let r = c.put("/api/v1/namespaces/default/pods/p", &changed).await?;
    assert_eq!(
        (r.status, causes(&r.body)),
        (422, vec!["FieldValueForbidden spec".to_owned()])
    );

    // kubectl shows the server's message.
    let path = s.dir.0.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports: [{port: 70000}]\n",
    )?;
    let (ok, _, err) = s
        .kubectl_output(&["create", "-f", path.to_str().unwrap()], None)
        .await?;
    assert!(!ok);
    assert!(err.contains("The Service \"bad\" is invalid"), "{err}");
    assert!(
        err.contains("spec.ports[0].port: Invalid value: 70000"),
        "{err}"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_are_allocated_checked_and_kept() -> anyhow::Result<()> {
    let mut s = Server::start("clusterip").await?;
    let c = &s.client;
    let ports = json!([{"port": 80}]);
    let a = c.post(SVCS, &svc("a", json!({"ports": ports}))).await?.body;
    assert_eq!(a["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.96.0.1"]));
    assert_eq!(a["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(a["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(a["spec"]["ports"][0]["protocol"], "TCP");
    let b = c
        .post(
            SVCS,
            &svc("b", json!({"ports": ports, "clusterIP": "10.96.5.5"})),
        )
        .await?
        .body;
    assert_eq!(b["spec"]["clusterIPs"], json!(["10.96.5.5"]));
    // Two IPs and no policy: dual stack is inferred, as the real server does.
    let inferred = c
        .post(
            SVCS,
            &svc(
                "inferred",
                json!({"ports": ports, "clusterIP": "10.96.6.6", "clusterIPs": ["10.96.6.6", "fd00:96::66"]}),
            ),
        )
        .await?;
    assert_eq!(inferred.status, 201, "{}", inferred.body);
    assert_eq!(inferred.body["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(inferred.body["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let r = c
        .post(
            SVCS,
            &svc("c", json!({"ports": ports, "clusterIP": "10.96.5.5"})),
        )
        .await?;
    assert_eq!(r.status, 422);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{}",
        r.body
    );
    let r = c
        .post(
            SVCS,
            &svc("c", json!({"ports": ports, "clusterIP": "192.168.0.1"})),
        )
        .await?;
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("The range of valid IPs is 10.96.0.0/16"),
        "{}",
        r.body
    );
    let dual = c
        .post(
            SVCS,
            &svc(
                "dual",
                json!({"ports": ports, "ipFamilyPolicy": "PreferDualStack"}),
            ),
        )
        .await?
        .body;
    assert_eq!(
        dual["spec"]["clusterIPs"],
        json!(["10.96.0.2", "fd00:96::1"])
    );
    assert_eq!(dual["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let v6 = c
        .post(
            SVCS,
            &svc("v6", json!({"ports": ports, "ipFamilies": ["IPv6"]})),
        )
        .await?
        .body;
    assert_eq!(v6["spec"]["clusterIPs"], json!(["fd00:96::2"]));
    let headless = c
        .post(SVCS, &svc("headless", json!({"clusterIP": "None"})))
        .await?;
    assert_eq!(headless.status, 201, "{}", headless.body);
    assert_eq!(headless.body["spec"]["clusterIPs"], json!(["None"]));
    let ext = c
        .post(
            SVCS,
            &svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.invalid"}),
            ),
        )
        .await?
        .body;
    assert!(ext["spec"]["clusterIP"].is_null());

    // An update that leaves clusterIP out keeps it; one that changes it is refused.
    let mut update = a.clone();
    update["spec"].as_object_mut().unwrap().remove("clusterIP");
    update["spec"].as_object_mut().unwrap().remove("clusterIPs");
    let kept = c.put(&format!("{SVCS}/a"), &update).await?;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.body["spec"]["clusterIP"], "10.96.0.1");
    let mut moved = kept.body.clone();
    moved["spec"]["clusterIP"] = json!("10.96.9.9");
    moved["spec"]["clusterIPs"] = json!(["10.96.9.9"]);
    let r = c.put(&format!("{SVCS}/a"), &moved).await?;
    assert_eq!(
        (r.status, causes(&r.body)),
        (422, vec!["FieldValueInvalid spec.clusterIPs[0]".to_owned()])
    );

    // A freed address is given out again.
    c.delete(&format!("{SVCS}/a")).await?;
    let again = c
        .post(SVCS, &svc("again", json!({"ports": ports})))
        .await?
        .body;
    assert_eq!(again["spec"]["clusterIP"], "10.96.0.1");
    s.stop().await;

    // A single-stack IPv6 cluster.
    let dir = TempDir::new("clusterip6");
    let mut s = Server::start_with(dir, |mut c| {
        c.service_cluster_ip_range = vec!["fd00:96::/108".to_owned()];
        c
    })
    .await?;
    let one = s
        .client
        .post(SVCS, &svc("one", json!({"ports": ports})))
        .await?
        .body;
    assert_eq!(one["spec"]["clusterIPs"], json!(["fd00:96::1"]));
    let r = s
        .client
        .post(
            SVCS,
            &svc(
                "two",
                json!({"ports": ports, "ipFamilyPolicy": "RequireDualStack"}),
            ),
        )
        .await?;
    assert_eq!(r.status, 422);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_and_released() -> anyhow::Result<()> {
    let mut s = Server::start("nodeport").await?;
    let c = &s.client;
    let a = c
        .post(SVCS, &svc("a", json!({"type": "NodePort", "ports": [{"name": "h", "port": 80}, {"name": "s", "port": 443}]})))
        .await?
        .body;
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(a["spec"]["ports"][1]["nodePort"], 30001);
    assert_eq!(a["spec"]["externalTrafficPolicy"], "Cluster");
    let b = c
        .post(
            SVCS,
            &svc(
                "b",
                json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 31000}]}),
            ),
        )
        .await?
        .body;
    assert_eq!(b["spec"]["ports"][0]["nodePort"], 31000);
    let r = c
        .post(
            SVCS,
            &svc(
                "c",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
            ),
        )
        .await?;
    assert_eq!(r.status, 422);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("provided port is already allocated"),
        "{}",
        r.body
    );
    let r = c
        .post(
            SVCS,
            &svc(
                "c",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}),
            ),
        )
        .await?;
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("The range of valid ports is 30000-32767"),
        "{}",
        r.body
    );
    let r = c
        .post(
            SVCS,
            &svc(
                "c",
                json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30500}]}),
            ),
        )
        .await?;
    assert_eq!(
        causes(&r.body),
        ["FieldValueForbidden spec.ports[0].nodePort"]
    );

    // An update without nodePorts keeps them; turning into a ClusterIP Service frees them.
    let mut update = a.clone();
    for p in update["spec"]["ports"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("nodePort");
    }
    let kept = c.put(&format!("{SVCS}/a"), &update).await?.body;
    assert_eq!(kept["spec"]["ports"][1]["nodePort"], 30001);
    let r = c
        .patch(
            &format!("{SVCS}/a"),
            "application/merge-patch+json",
            &json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": null}}),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["spec"]["ports"][0]["nodePort"].is_null(),
        "{}",
        r.body
    );
    let d = c
        .post(
            SVCS,
            &svc("d", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await?
        .body;
    assert_eq!(d["spec"]["ports"][0]["nodePort"], 30000);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_field_validation_and_server_dry_run() -> anyhow::Result<()> {
    let mut s = Server::start("strict").await?;
    let path = s.dir.0.join("typo.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: typo}\nspec:\n  ports: [{port: 80, targetPrt: 8080}]\n",
    )?;
    let file = path.to_str().unwrap().to_owned();
    let (ok, _, err) = s.kubectl_output(&["create", "-f", &file], None).await?;
    assert!(!ok);
    assert!(
        err.contains("unknown field \"spec.ports[0].targetPrt\""),
        "{err}"
    );
    // Without strict validation the unknown field is dropped, as the real server does.
    let r = s
        .client
        .post(
            SVCS,
            &svc("typo", json!({"ports": [{"port": 80, "targetPrt": 8080}]})),
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body["spec"]["ports"][0].get("targetPrt").is_none(),
        "{}",
        r.body
    );

    // Server-side dry run: validated and allocated, not stored.
    let path = s.dir.0.join("dry.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: dry}\nspec:\n  ports: [{port: 80}]\n",
    )?;
    let out = s
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            path.to_str().unwrap(),
            "-o",
            "json",
        ])
        .await?;
    let dry: Value = serde_json::from_str(&out)?;
    assert!(dry["spec"]["clusterIP"].is_string(), "{dry}");
    assert_eq!(s.client.get(&format!("{SVCS}/dry")).await?.status, 404);
    let out = s
        .kubectl(&["delete", "svc", "typo", "--dry-run=server"])
        .await?;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    assert_eq!(s.client.get(&format!("{SVCS}/typo")).await?.status, 200);
    s.stop().await;
    Ok(())
}
