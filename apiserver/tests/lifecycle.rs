//! Graceful Pod deletion and the status subresource.

mod common;

use std::time::Duration;

use common::{Server, TempDir, eventually, rv};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";
const T: Duration = Duration::from_secs(10);

fn pod(name: &str, grace: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": "web"}},
           "spec": {"terminationGracePeriodSeconds": grace,
                    "containers": [{"name": "c", "image": "busybox"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_deleted_gracefully() -> anyhow::Result<()> {
    let mut s = Server::start("graceful").await?;
    let c = s.client.clone();
    c.post(PODS, &pod("slow", 2)).await?;
    let mut w = c
        .watch(&format!(
            "{PODS}?watch=1&fieldSelector=metadata.name%3Dslow&resourceVersion={}",
            rv(&c.get(PODS).await?.body)
        ))
        .await?;
    let started = tokio::time::Instant::now();
    let r = c.delete(&format!("{PODS}/slow")).await?;
    assert_eq!(r.status, 200);
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 2);
    // Still there, terminating.
    let still = c.get(&format!("{PODS}/slow")).await?;
    assert_eq!(still.status, 200);
    let e = w.next_change(T).await?;
    assert_eq!(e["type"], "MODIFIED");
    assert!(e["object"]["metadata"]["deletionTimestamp"].is_string());
    let e = w.next_change(T).await?;
    assert_eq!(e["type"], "DELETED");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "removed after {waited:?}");
    assert_eq!(c.get(&format!("{PODS}/slow")).await?.status, 404);

    // A second delete with a shorter grace period shortens it; 0 removes at once.
    c.post(PODS, &pod("shorten", 30)).await?;
    c.delete(&format!("{PODS}/shorten")).await?;
    let r = c
        .delete(&format!("{PODS}/shorten?gracePeriodSeconds=0"))
        .await?;
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&format!("{PODS}/shorten")).await?.status, 404);

    // A finished Pod goes at once.
    c.post(PODS, &pod("done", 30)).await?;
    let r = c
        .patch(
            &format!("{PODS}/done/status"),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Succeeded"}}),
        )
        .await?;
    assert_eq!(r.body["status"]["phase"], "Succeeded");
    c.delete(&format!("{PODS}/done")).await?;
    assert_eq!(c.get(&format!("{PODS}/done")).await?.status, 404);

    // kubectl delete waits for the Pod to be gone.
    c.post(PODS, &pod("kubectl", 30)).await?;
    let out = s
        .kubectl(&["delete", "pod", "kubectl", "--grace-period=1"])
        .await?;
    assert!(out.contains("pod \"kubectl\" deleted"), "{out}");
    assert_eq!(c.get(&format!("{PODS}/kubectl")).await?.status, 404);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_terminating_across_a_restart_is_still_removed() -> anyhow::Result<()> {
    let mut s = Server::start("gracerestart").await?;
    s.client.post(PODS, &pod("p", 2)).await?;
    s.client.delete(&format!("{PODS}/p")).await?;
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, TempDir::new("unused"));
    let mut s = Server::start_with(dir, |c| c).await?;
    let c = s.client.clone();
    assert_eq!(c.get(&format!("{PODS}/p")).await?.status, 200);
    eventually(T, || {
        let c = c.clone();
        async move { Ok((c.get(&format!("{PODS}/p")).await?.status == 404).then_some(())) }
    })
    .await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_subresource_writes_only_status() -> anyhow::Result<()> {
    let mut s = Server::start("status").await?;
    let c = s.client.clone();
    let created = c.post(PODS, &pod("p", 0)).await?.body;
    assert_eq!(created["status"]["phase"], "Pending");

    // Through the main resource, status does not change.
    let mut main = created.clone();
    main["status"]["phase"] = json!("Running");
    main["metadata"]["labels"]["x"] = json!("1");
    let r = c.put(&format!("{PODS}/p"), &main).await?.body;
    assert_eq!(r["status"]["phase"], "Pending");
    assert_eq!(r["metadata"]["labels"]["x"], "1");

    // Through status, only status changes.
    let mut st = r.clone();
    st["status"] = json!({"phase": "Running", "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}],
                          "conditions": [{"type": "Ready", "status": "True"}]});
    st["metadata"]["labels"]["x"] = json!("2");
    st["spec"]["containers"][0]["image"] = json!("other");
    let r = c.put(&format!("{PODS}/p/status"), &st).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"]["podIP"], "10.244.0.9");
    assert_eq!(r.body["metadata"]["labels"]["x"], "1");
    assert_eq!(r.body["spec"]["containers"][0]["image"], "busybox");
    let got = c.get(&format!("{PODS}/p/status")).await?.body;
    assert_eq!(got["status"]["phase"], "Running");

    // A strategic patch merges conditions by type.
    let r = c
        .patch(
            &format!("{PODS}/p/status"),
            "application/strategic-merge-patch+json",
            &json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}),
        )
        .await?
        .body;
    assert_eq!(
        r["status"]["conditions"].as_array().unwrap().len(),
        2,
        "{r}"
    );

    // kubectl can write status too.
    s.kubectl(&[
        "patch",
        "pod",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"}}"#,
    ])
    .await?;
    assert_eq!(
        c.get(&format!("{PODS}/p")).await?.body["status"]["phase"],
        "Failed"
    );
    // Secrets have no status subresource.
    assert_eq!(
        c.get("/api/v1/namespaces/default/secrets/x/status")
            .await?
            .status,
        404
    );
    s.stop().await;
    Ok(())
}
