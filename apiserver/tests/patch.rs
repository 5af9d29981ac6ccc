//! Patches: `kubectl apply` (strategic merge patches with the last-applied annotation),
//! `kubectl patch` of each type, and resourceVersion preconditions in patches.

mod common;

use common::Server;
use serde_json::{Value, json};

const V1: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx:1
    env: [{name: A, value: '1'}]
  - name: sidecar
    image: envoy:1
";

const V2: &str = r"
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 9090}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx:2
    env: [{name: A, value: '1'}]
  - name: sidecar
    image: envoy:1
";

async fn get(s: &Server, what: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        &s.kubectl(&["get", what, "-o", "json"]).await?,
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_configures_and_leaves_unchanged() -> anyhow::Result<()> {
    let mut s = Server::start("apply").await?;
    let path = s.dir.0.join("app.yaml");
    std::fs::write(&path, V1)?;
    let file = path.to_str().unwrap().to_owned();
    let out = s.kubectl(&["apply", "-f", &file]).await?;
    assert!(
        out.contains("service/web created") && out.contains("pod/web-1 created"),
        "{out}"
    );
    let svc = get(&s, "svc/web").await?;
    let applied =
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("last-applied annotation");
    let applied: Value = serde_json::from_str(applied)?;
    assert_eq!(applied["spec"]["ports"][1]["port"], 443);
    let ip = svc["spec"]["clusterIP"].clone();

    let out = s.kubectl(&["apply", "-f", &file]).await?;
    assert!(
        out.contains("service/web unchanged") && out.contains("pod/web-1 unchanged"),
        "{out}"
    );

    std::fs::write(&path, V2)?;
    let (ok, out, err) = s
        .kubectl_output(&["apply", "-f", &file, "-v=6"], None)
        .await?;
    assert!(ok, "{err}");
    assert!(
        out.contains("service/web configured") && out.contains("pod/web-1 configured"),
        "{out}"
    );
    assert!(err.contains("PATCH https://"), "kubectl patched: {err}");
    let svc = get(&s, "svc/web").await?;
    // The https port was removed (it was in the last applied configuration), http changed,
    // the allocated clusterIP stayed.
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1, "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9090);
    assert_eq!(svc["spec"]["clusterIP"], ip);
    assert_eq!(svc["metadata"]["labels"]["tier"], "front");
    let applied: Value = serde_json::from_str(
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap(),
    )?;
    assert_eq!(applied["metadata"]["labels"]["tier"], "front");
    let pod = get(&s, "pod/web-1").await?;
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(pod["spec"]["containers"][1]["name"], "sidecar");
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "A");

    let out = s.kubectl(&["apply", "-f", &file]).await?;
    assert!(out.contains("service/web unchanged"), "{out}");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_of_every_type() -> anyhow::Result<()> {
    let mut s = Server::start("kpatch").await?;
    let path = s.dir.0.join("app.yaml");
    std::fs::write(&path, V1)?;
    s.kubectl(&["create", "-f", path.to_str().unwrap()]).await?;

    let out = s
        .kubectl(&[
            "patch",
            "svc",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}},"spec":{"sessionAffinity":"ClientIP"}}"#,
        ])
        .await?;
    assert!(out.contains("service/web patched"), "{out}");
    let svc = get(&s, "svc/web").await?;
    assert_eq!(svc["metadata"]["labels"]["x"], "y");
    assert_eq!(svc["spec"]["sessionAffinity"], "ClientIP");

    // Strategic (kubectl's default): the container is found by name, the other is kept.
    s.kubectl(&[
        "patch",
        "pod",
        "web-1",
        "-p",
        r#"{"spec":{"containers":[{"name":"sidecar","image":"envoy:2"}]}}"#,
    ])
    .await?;
    let pod = get(&s, "pod/web-1").await?;
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1");
    assert_eq!(pod["spec"]["containers"][1]["image"], "envoy:2");

    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/targetPort","value":7070}]"#,
    ])
    .await?;
    assert_eq!(
        get(&s, "svc/web").await?["spec"]["ports"][0]["targetPort"],
        7070
    );

    let out = s
        .kubectl(&[
            "patch",
            "svc",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#,
        ])
        .await?;
    assert!(out.contains("(no change)"), "{out}");

    // A patch naming a stale resourceVersion conflicts; a patch on a missing object is 404.
    let c = &s.client;
    let r = c
        .patch(
            "/api/v1/namespaces/default/services/web",
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}}),
        )
        .await?;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (409, Some("Conflict"))
    );
    let r = c
        .patch(
            "/api/v1/namespaces/default/services/nope",
            "application/merge-patch+json",
            &json!({}),
        )
        .await?;
    assert_eq!(r.status, 404);
    let r = c
        .patch(
            "/api/v1/namespaces/default/services/web",
            "application/apply-patch+yaml",
            &json!({}),
        )
        .await?;
    assert_eq!(r.status, 415);
    s.stop().await;
    Ok(())
}
