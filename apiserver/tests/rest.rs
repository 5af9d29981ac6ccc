//! The REST verbs over HTTPS with token authentication, through the Rust client and kubectl.

mod common;

use common::{Server, rv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_for_every_kind_with_the_rust_client() -> anyhow::Result<()> {
    let mut s = Server::start("crud").await?;
    let c = &s.client;

    // Discovery.
    let api = c.get("/api").await?;
    assert_eq!(api.body["versions"], json!(["v1"]));
    let v1 = c.get("/api/v1").await?;
    let names: Vec<&str> = v1.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in [
        "namespaces",
        "nodes",
        "pods",
        "pods/status",
        "services",
        "secrets",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let d = c.get("/apis/discovery.k8s.io/v1").await?;
    assert_eq!(d.body["resources"][0]["name"], "endpointslices");

    // Wrong or missing token: 401 with a Status.
    let bad = c.with_token("nope").get("/api/v1/pods").await?;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.body["reason"], "Unauthorized");
    for path in [
        "/api/v1/pods",
        "/api/v1/services?watch=true",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api",
    ] {
        let none = c.with_token("").get(path).await?;
        assert_eq!(none.status, 401, "{path} without a token");
    }

    let objects = [
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        ),
        (
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        ),
        (
            "/api/v1/namespaces/team/pods",
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}),
        ),
        (
            "/api/v1/namespaces/team/services",
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        ),
        (
            "/api/v1/namespaces/team/secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds"}, "data": {"password": "aHVudGVyMg=="}}),
        ),
        (
            "/apis/discovery.k8s.io/v1/namespaces/team/endpointslices",
            json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "manual", "labels": {"kubernetes.io/service-name": "other"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"]}],
            "ports": [{"port": 8080, "protocol": "TCP"}]}),
        ),
    ];
    let mut last_rv = 0;
    for (collection, body) in &objects {
        let name = body["metadata"]["name"].as_str().unwrap();
        let created = c.post(collection, body).await?;
        assert_eq!(created.status, 201, "{collection}: {}", created.body);
        assert!(rv(&created.body) > last_rv, "resourceVersions increase");
        last_rv = rv(&created.body);
        assert!(
            created.body["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );
        assert!(created.body["metadata"]["creationTimestamp"].is_string());

        let again = c.post(collection, body).await?;
        assert_eq!(again.status, 409, "{}", again.body);
        assert_eq!(again.body["reason"], "AlreadyExists");

        let item = format!("{collection}/{name}");
        let got = c.get(&item).await?;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, created.body);

        let list = c.get(collection).await?;
        assert_eq!(list.status, 200);
        assert!(list.body["kind"].as_str().unwrap().ends_with("List"));
        assert!(
            list.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["metadata"]["name"] == name)
        );
        assert!(rv(&list.body) >= last_rv);

        // Update with the current resourceVersion works; with a stale one it conflicts.
        let mut changed = got.body.clone();
        changed["metadata"]["labels"]["touched"] = json!("yes");
        let updated = c.put(&item, &changed).await?;
        assert_eq!(updated.status, 200, "{}", updated.body);
        assert_eq!(updated.body["metadata"]["labels"]["touched"], "yes");
        assert!(rv(&updated.body) > last_rv);
        last_rv = rv(&updated.body);
        let stale = c.put(&item, &changed).await?;
        assert_eq!(stale.status, 409, "{}", stale.body);
        assert_eq!(stale.body["reason"], "Conflict");
    }

    // A namespaced list across namespaces, and one that is empty elsewhere.
    let all = c.get("/api/v1/pods").await?;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
    let none = c.get("/api/v1/namespaces/default/pods").await?;
    assert_eq!(none.body["items"].as_array().unwrap().len(), 0);

    // Create in a missing namespace: 404 for the namespace.
    let missing = c
        .post(
            "/api/v1/namespaces/nowhere/secrets",
            &json!({"metadata": {"name": "x"}}),
        )
        .await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["message"], "namespaces \"nowhere\" not found");

    // Delete: the object goes (secrets at once; pods after their grace period, here 0).
    let gone = c.delete("/api/v1/namespaces/team/secrets/creds").await?;
    assert_eq!(gone.status, 200);
    let after = c.get("/api/v1/namespaces/team/secrets/creds").await?;
    assert_eq!(after.status, 404);
    assert_eq!(after.body["reason"], "NotFound");
    assert_eq!(after.body["details"]["kind"], "secrets");
    let pod = c
        .delete("/api/v1/namespaces/team/pods/web-1?gracePeriodSeconds=0")
        .await?;
    assert_eq!(pod.status, 200);
    assert_eq!(
        c.get("/api/v1/namespaces/team/pods/web-1").await?.status,
        404
    );

    // Deleting the namespace takes what is in it.
    assert_eq!(c.delete("/api/v1/namespaces/team").await?.status, 200);
    assert_eq!(
        c.get("/api/v1/namespaces/team/services/web").await?.status,
        404
    );
    assert_eq!(
        c.get("/api/v1/services").await?.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_get_delete() -> anyhow::Result<()> {
    let mut s = Server::start("kubectl").await?;
    let manifest = r"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: shop
stringData: {token: abc}
";
    let path = s.dir.0.join("manifest.yaml");
    std::fs::write(&path, manifest)?;
    let out = s.kubectl(&["create", "-f", path.to_str().unwrap()]).await?;
    assert!(out.contains("pod/web-1 created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");

    let ns = s.kubectl(&["get", "namespaces"]).await?;
    assert!(ns.contains("shop") && ns.contains("default"), "{ns}");
    let pods = s
        .kubectl(&["get", "pods", "-n", "shop", "-o", "json"])
        .await?;
    let pods: serde_json::Value = serde_json::from_str(&pods)?;
    assert_eq!(pods["items"][0]["metadata"]["name"], "web-1");
    let svc = s
        .kubectl(&["get", "svc", "web", "-n", "shop", "-o", "json"])
        .await?;
    let svc: serde_json::Value = serde_json::from_str(&svc)?;
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    // Server-side printing: kubectl's table columns.
    let table = s
        .kubectl(&["get", "svc", "-n", "shop", "-o", "wide"])
        .await?;
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let row: Vec<&str> = rows.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["web", "ClusterIP", "10.96.0.1", "<none>", "80/TCP"]
    );
    assert_eq!(row[6], "app=web");
    let pods = s.kubectl(&["get", "pods", "-n", "shop"]).await?;
    assert!(
        pods.starts_with("NAME") && pods.contains("web-1   0/1     Pending"),
        "{pods}"
    );
    let secret = s
        .kubectl(&[
            "get",
            "secret",
            "token",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.token}",
        ])
        .await?;
    assert_eq!(secret, "YWJj");
    let slices = s
        .kubectl(&[
            "get",
            "endpointslices.discovery.k8s.io",
            "-n",
            "shop",
            "-o",
            "name",
        ])
        .await?;
    assert!(!slices.contains("error"), "{slices}");
    let all = s
        .kubectl(&["get", "all", "-n", "shop", "-o", "name"])
        .await?;
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        ["pod/web-1", "service/web"],
        "{all}"
    );
    let kinds = s.kubectl(&["api-resources", "-o", "name"]).await?;
    for kind in [
        "pods",
        "services",
        "endpointslices.discovery.k8s.io",
        "secrets",
        "nodes",
        "namespaces",
    ] {
        assert!(kinds.lines().any(|l| l == kind), "{kind} in {kinds}");
    }

    let (ok, _, err) = s
        .kubectl_output(&["get", "pod", "nope", "-n", "shop"], None)
        .await?;
    assert!(!ok);
    assert!(err.contains("pods \"nope\" not found"), "{err}");

    let out = s
        .kubectl(&["delete", "secret", "token", "-n", "shop"])
        .await?;
    assert!(out.contains("secret \"token\" deleted"), "{out}");
    let out = s
        .kubectl(&[
            "delete",
            "pod",
            "web-1",
            "-n",
            "shop",
            "--grace-period=0",
            "--force",
        ])
        .await?;
    assert!(out.contains("deleted"), "{out}");
    let left = s
        .kubectl(&["get", "pods,secrets", "-n", "shop", "-o", "name"])
        .await?;
    assert_eq!(left.trim(), "", "{left}");
    let out = s.kubectl(&["delete", "namespace", "shop"]).await?;
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    let (ok, _, err) = s
        .kubectl_output(&["get", "svc", "web", "-n", "shop"], None)
        .await?;
    assert!(!ok && err.contains("not found"), "{err}");
    s.stop().await;
    Ok(())
}
