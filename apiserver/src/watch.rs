//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//! `ERROR`) from a resourceVersion, filtered by namespace and selectors, as long as the client
//! stays, the timeout allows and the server runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::ApiError;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, Store, Subscription};

pub struct WatchRequest {
    pub resource: &'static Resource,
    pub prefix: String,
    pub from: Option<u64>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: the current state as ADDED events, then a bookmark marking
    /// their end.
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub bookmark_interval: Duration,
    /// Events carry one-row Tables of this `meta.k8s.io` version (`kubectl get -w`).
    pub as_table: Option<&'static str>,
}

impl WatchRequest {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// What a change looks like through this watch's selectors: an object that starts matching
    /// is ADDED, one that stops is DELETED.
    fn translate(&self, event: &Event) -> Option<(EventType, Arc<Value>)> {
        if !event.key.starts_with(&self.prefix) {
            return None;
        }
        let now = self.matches(&event.object);
        let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
        match (event.kind, before, now) {
            (EventType::Deleted, true, _) => Some((EventType::Deleted, event.object.clone())),
            (EventType::Deleted, false, _) => None,
            (_, false, true) => Some((EventType::Added, event.object.clone())),
            (_, true, true) => Some((EventType::Modified, event.object.clone())),
            (_, true, false) => {
                let mut gone = (*event.object).clone();
                gone["metadata"]["resourceVersion"] = json!(event.rv.to_string());
                Some((EventType::Deleted, Arc::new(gone)))
            }
            (_, false, false) => None,
        }
    }
}

impl WatchRequest {
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        match self.as_table {
            Some(version) => line(
                kind,
                &crate::table::table(self.resource, &[object], None, version),
            ),
            None => line(kind, object),
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut buf = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    buf.push(b'\n');
    Bytes::from(buf)
}

fn bookmark(res: &Resource, rv: u64) -> Bytes {
    line(
        "BOOKMARK",
        &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

/// Starts a watch; its events arrive on the returned channel, which closes when the watch
/// ends. A resourceVersion older than the history, or newer than the store (whose client saw a
/// store since lost), gives one ERROR event with 410 Expired.
pub fn start(
    store: &Arc<Store>,
    req: WatchRequest,
    mut shutdown: watch::Receiver<bool>,
    tasks: &tokio_util::task::TaskTracker,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    let from = if req.send_initial_events {
        None
    } else {
        req.from
    };
    let sub = match store.subscribe(&req.prefix, from) {
        Ok(sub) => sub,
        Err(expired) => {
            let err = ApiError::expired(if expired.requested > expired.newest {
                format!(
                    "resource version {} is newer than this server's {} (its store was reset): list again",
                    expired.requested, expired.newest
                )
            } else {
                format!(
                    "too old resource version: {} ({})",
                    expired.requested, expired.oldest
                )
            });
            let _ = tx.try_send(line("ERROR", &err.status()));
            return rx;
        }
    };
    let store = Arc::clone(store);
    tasks.spawn(async move {
        let Subscription {
            initial,
            backlog,
            rv,
            mut rx,
        } = sub;
        for object in initial.iter().filter(|o| req.matches(o)) {
            if tx.send(req.event("ADDED", object)).await.is_err() {
                return;
            }
        }
        for event in &backlog {
            if let Some((kind, object)) = req.translate(event)
                && tx.send(req.event(kind.as_str(), &object)).await.is_err()
            {
                return;
            }
        }
        // Everything up to the subscription's resourceVersion has been sent; the receiver
        // holds exactly the changes after it.
        let mut last_rv = rv;
        if req.send_initial_events {
            let end = line(
                "BOOKMARK",
                &json!({"kind": req.resource.kind, "apiVersion": req.resource.api_version(),
                        "metadata": {"resourceVersion": rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}),
            );
            if tx.send(end).await.is_err() {
                return;
            }
        }
        let timeout = tokio::time::sleep(req.timeout.unwrap_or(Duration::from_hours(8760)));
        tokio::pin!(timeout);
        let mut ticker = tokio::time::interval(req.bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if let Some((kind, object)) = req.translate(&event)
                            && tx.send(req.event(kind.as_str(), &object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // Too slow to keep up with every change of the store (a burst of another
                    // kind's writes, say): pick up again from the history, after the last
                    // change this watch took, so the client notices nothing. Only when the
                    // history no longer reaches back that far does the watch end (the client
                    // resumes, gets 410 and relists).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let Ok(sub) = store.subscribe(&req.prefix, Some(last_rv)) else {
                            return;
                        };
                        for event in &sub.backlog {
                            if event.rv <= last_rv {
                                continue;
                            }
                            last_rv = event.rv;
                            if let Some((kind, object)) = req.translate(event)
                                && tx.send(req.event(kind.as_str(), &object)).await.is_err()
                            {
                                return;
                            }
                        }
                        last_rv = last_rv.max(sub.rv);
                        rx = sub.rx;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if req.bookmarks => {
                    if tx.send(bookmark(req.resource, last_rv)).await.is_err() {
                        return;
                    }
                }
                () = &mut timeout => return,
                _ = shutdown.changed() => return,
                () = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PODS;
    use crate::store::{Change, tests::tempdir};

    #[tokio::test]
    async fn a_watch_that_lags_behind_picks_up_from_the_history() {
        let dir = tempdir();
        // Subscribers lag after 8 queued changes; the history keeps 10,000.
        let store = Arc::new(Store::open_with(&dir.0.join("db.redb"), 10_000, 8).unwrap());
        let req = WatchRequest {
            resource: &PODS,
            prefix: "pods/".to_owned(),
            from: Some(store.resource_version()),
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
            bookmarks: false,
            send_initial_events: false,
            timeout: None,
            bookmark_interval: Duration::from_secs(60),
            as_table: None,
        };
        let (_stop, shutdown) = watch::channel(false);
        let tasks = tokio_util::task::TaskTracker::new();
        let mut rx = start(&store, req, shutdown, &tasks);
        // Nobody reads while 1,000 changes are made: the watch's own queue (256) fills, it
        // stops taking changes, and falls far behind the store's.
        const N: usize = 1000;
        for i in 0..N {
            store
                .transact(|_| {
                    Ok(vec![Change::Put {
                        key: format!("pods/default/p{i}"),
                        object: json!({"metadata": {"name": format!("p{i}"), "namespace": "default"}}),
                    }])
                })
                .unwrap();
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut seen = Vec::new();
        while seen.len() < N {
            let line = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the watch keeps delivering")
                .expect("the watch does not end");
            let event: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(event["type"], "ADDED", "{event}");
            seen.push(
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let want: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
        assert_eq!(seen, want, "every change once, in order");
    }
}
