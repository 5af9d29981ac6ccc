//! Watches: from a resourceVersion, bookmarks, label and field selectors, 410 Expired, and
//! `kubectl get -w`.

mod common;

use std::time::Duration;

use common::{Server, TempDir, rv};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const T: Duration = Duration::from_secs(10);

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": app}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_resource_version_with_bookmarks() -> anyhow::Result<()> {
    let mut s = Server::start("watch").await?;
    let c = &s.client;
    c.post(PODS, &pod("before", "web")).await?;
    let list = c.get(PODS).await?;
    let from = rv(&list.body);
    let mut w = c
        .watch(&format!(
            "{PODS}?watch=true&resourceVersion={from}&allowWatchBookmarks=true"
        ))
        .await?;

    let created = c.post(PODS, &pod("web-1", "web")).await?.body;
    let e = w.next_change(T).await?;
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["metadata"]["name"], "web-1");
    assert_eq!(rv(&e["object"]), rv(&created));

    let mut changed = created.clone();
    changed["metadata"]["labels"]["v"] = json!("2");
    let updated = c.put(&format!("{PODS}/web-1"), &changed).await?.body;
    let e = w.next_change(T).await?;
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(rv(&e["object"]), rv(&updated));

    c.delete(&format!("{PODS}/web-1?gracePeriodSeconds=0"))
        .await?;
    let e = w.next_change(T).await?;
    assert_eq!(e["type"], "DELETED");
    assert!(rv(&e["object"]) > rv(&updated));
    let deleted_rv = rv(&e["object"]);

    // A bookmark comes (the interval is 300 ms here) and carries the latest resourceVersion.
    let bookmark = loop {
        let e = w.next(T).await?.expect("stream open");
        if e["type"] == "BOOKMARK" {
            break e;
        }
    };
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert_eq!(rv(&bookmark["object"]), deleted_rv);

    // Resuming from the bookmark misses nothing and repeats nothing.
    let mut resumed = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={deleted_rv}"))
        .await?;
    c.post(PODS, &pod("web-2", "web")).await?;
    let e = resumed.next_change(T).await?;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("web-2"))
    );

    // From an older resourceVersion the history replays what came after it.
    let mut replay = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={from}"))
        .await?;
    let kinds: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                replay.next_change(T).await?["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        v
    };
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED", "ADDED"]);

    // resourceVersion=0 starts with the current state.
    let mut fresh = c
        .watch(&format!("{PODS}?watch=1&resourceVersion=0"))
        .await?;
    let mut names = vec![];
    for _ in 0..2 {
        let e = fresh.next_change(T).await?;
        assert_eq!(e["type"], "ADDED");
        names.push(e["object"]["metadata"]["name"].as_str().unwrap().to_owned());
    }
    names.sort();
    assert_eq!(names, ["before", "web-2"]);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_selectors_translate_events() -> anyhow::Result<()> {
    let mut s = Server::start("watchsel").await?;
    let c = &s.client;
    let mut by_label = c
        .watch(&format!("{PODS}?watch=1&labelSelector=app%3Dweb"))
        .await?;
    let mut by_name = c
        .watch(&format!(
            "{PODS}?watch=1&fieldSelector=metadata.name%3Dtarget"
        ))
        .await?;
    c.post(PODS, &pod("other", "db")).await?;
    let target = c.post(PODS, &pod("target", "db")).await?.body;
    let e = by_name.next_change(T).await?;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("target"))
    );

    // The label changes to match: ADDED to the label watch; then away again: DELETED.
    let r = c
        .patch(
            &format!("{PODS}/target"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"app": "web"}}}),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = by_label.next_change(T).await?;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("target"))
    );
    c.patch(
        &format!("{PODS}/target"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "db"}}}),
    )
    .await?;
    let e = by_label.next_change(T).await?;
    assert_eq!(e["type"], "DELETED");
    assert!(rv(&e["object"]) > rv(&target));
    // The name watch saw both changes as modifications, and never saw "other".
    for _ in 0..2 {
        let e = by_name.next_change(T).await?;
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("MODIFIED"), Some("target"))
        );
    }
    c.delete(&format!("{PODS}/other?gracePeriodSeconds=0"))
        .await?;
    c.delete(&format!("{PODS}/target?gracePeriodSeconds=0"))
        .await?;
    let e = by_name.next_change(T).await?;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("target"))
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_resource_versions_expire() -> anyhow::Result<()> {
    let dir = TempDir::new("expired");
    let mut s = Server::start_with(dir, |mut c| {
        c.watch_history = 3;
        c
    })
    .await?;
    let c = s.client.clone();
    let first = rv(&c.post(PODS, &pod("p0", "a")).await?.body);
    for i in 1..6 {
        c.post(PODS, &pod(&format!("p{i}"), "a")).await?;
    }
    let mut w = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={first}"))
        .await?;
    let e = w.next(T).await?.expect("an event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        w.next(T).await?.is_none(),
        "the stream ends after the error"
    );
    let recent = rv(&c.get(PODS).await?.body);
    let mut ok = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={}", recent - 1))
        .await?;
    let e = ok.next_change(T).await?;
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["metadata"]["name"], "p5");

    // After a restart the history is gone: a watch from before it expires, the list does not.
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, TempDir::new("unused"));
    let mut s = Server::start_with(dir, |c| c).await?;
    let c = s.client.clone();
    let mut w = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={}", recent - 1))
        .await?;
    assert_eq!(w.next(T).await?.expect("an event")["object"]["code"], 410);
    let after = rv(&c.get(PODS).await?.body);
    assert!(after >= recent);
    let mut w = c
        .watch(&format!("{PODS}?watch=1&resourceVersion={after}"))
        .await?;
    let created = c.post(PODS, &pod("p6", "a")).await?.body;
    assert!(
        rv(&created) > recent,
        "resourceVersions keep increasing across restarts"
    );
    assert_eq!(w.next_change(T).await?["object"]["metadata"]["name"], "p6");
    s.stop().await;
    Ok(())
}

/// A child process killed when the guard drops.
struct Child(tokio::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_changes() -> anyhow::Result<()> {
    let mut s = Server::start("kubectlwatch").await?;
    let mut child = Child(
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(["get", "pods", "-w", "-o", "name"])
            .env("HOME", &s.dir.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?,
    );
    let mut lines = tokio::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    // Give kubectl time to list and start its watch; what it misses it would show on list.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.client.post(PODS, &pod("seen", "web")).await?;
    let mut got = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        // `-o name` prints the name for each event: once when added, once when deleted.
        while let Some(line) = lines.next_line().await? {
            got.push(line.clone());
            if line == "pod/seen" {
                if got.len() == 1 {
                    s.client
                        .delete(&format!("{PODS}/seen?gracePeriodSeconds=0"))
                        .await?;
                } else {
                    return anyhow::Ok(true);
                }
            }
        }
        Ok(false)
    })
    .await;
    assert!(matches!(found, Ok(Ok(true))), "kubectl printed {got:?}");
    drop(child);
    s.stop().await;
    Ok(())
}
