//! The Kubernetes watch source: Services, EndpointSlices and this Node (and, when slices are
//! derived here, every Node and Pod) from an API server, with `kube`'s runtime watcher.
//!
//! Each kind has its own watch. A watch that fails (the API server is unreachable, a watch
//! expired with 410 Gone) is restarted with backoff and relists; nothing is sent to the
//! controller until a relist is complete, and then only the difference (objects whose
//! resourceVersion changed, and deletions of what the new list no longer holds), so the
//! datapath keeps the last good state throughout an outage and nothing is flushed.
//! [`SourceEvent::Synced`] is sent once every kind has delivered its first complete list.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SourceEvent;
use crate::metrics::Metrics;
use crate::store::{Kind, Object, ObjectKey};

/// The label selector kube-proxy watches Services and EndpointSlices with: not headless, and
/// not claimed by another service proxy.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct ClusterConnection {
    /// A kubeconfig file (its current context).
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL; overrides the kubeconfig's server, as kube-proxy's `--master`.
    pub master: Option<String>,
}

impl ClusterConnection {
    /// Whether a cluster is configured: a kubeconfig or a master was given, or the process
    /// runs in a Pod (`KUBERNETES_SERVICE_HOST` is set).
    pub fn is_configured(&self) -> bool {
        self.kubeconfig.is_some()
            || self.master.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    /// A client for the configured API server: the kubeconfig when given, else the in-cluster
    /// configuration when in a Pod, else `--master` alone (no credentials).
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        let mut config = if let Some(path) = &self.kubeconfig {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Kubeconfig(path.clone(), e))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| ClusterError::Kubeconfig(path.clone(), e))?
        } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            kube::Config::incluster().map_err(ClusterError::InCluster)?
        } else if let Some(master) = &self.master {
            kube::Config::new(parse_master(master)?)
        } else {
            return Err(ClusterError::NotConfigured);
        };
        if let Some(master) = &self.master {
            config.cluster_url = parse_master(master)?;
        }
        kube::Client::try_from(config).map_err(ClusterError::Client)
    }
}

fn parse_master(master: &str) -> Result<hyper::Uri, ClusterError> {
    master
        .parse::<hyper::Uri>()
        .ok()
        .filter(|uri| uri.scheme().is_some() && uri.host().is_some())
        .ok_or_else(|| ClusterError::Master(master.to_owned()))
}

/// Why the watch source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    #[error("cannot use the in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("--master {0:?} is not a URL such as https://10.0.0.1:6443")]
    Master(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("no API server is configured (--kubeconfig, --master or in-cluster)")]
    NotConfigured,
}

/// What the watch source reads.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's name: its Node object gives the node's labels and zone.
    pub node_name: String,
    /// Also watch Pods (and every Node, for zones) so that a Service with a selector and no
    /// EndpointSlices gets slices derived here; for API servers without an EndpointSlice
    /// controller.
    pub derive_endpoint_slices: bool,
    /// Also watch `kubernetes.io/tls` Secrets, for the certificates of L7 frontends that
    /// terminate or originate TLS. Their list does not hold up the first sync, so a node
    /// proxy without read access to Secrets serves everything else.
    pub watch_secrets: bool,
}

/// Watches the API server until cancelled. Returns only when cancelled or when the controller
/// is gone; API errors are retried with backoff, logged and counted in
/// `switchyard_api_watch_errors_total`.
pub async fn run(
    client: kube::Client,
    config: ClusterConfig,
    events: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let proxied = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let nodes = if config.derive_endpoint_slices {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={}", config.node_name))
    };
    let kinds = if config.derive_endpoint_slices { 4 } else { 3 };
    let shared = Arc::new(Shared {
        events,
        metrics,
        unsynced: AtomicUsize::new(kinds),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch::<Service>(
        kube::Api::all(client.clone()),
        proxied.clone(),
        Kind::Service,
        Object::Service,
        Arc::clone(&shared),
    ));
    tasks.spawn(watch::<EndpointSlice>(
        kube::Api::all(client.clone()),
        proxied,
        Kind::EndpointSlice,
        Object::EndpointSlice,
        Arc::clone(&shared),
    ));
    tasks.spawn(watch::<Node>(
        kube::Api::all(client.clone()),
        nodes,
        Kind::Node,
        Object::Node,
        Arc::clone(&shared),
    ));
    if config.watch_secrets {
        tasks.spawn(watch::<Secret>(
            kube::Api::all(client.clone()),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            Kind::Secret,
            Object::Secret,
            Arc::clone(&shared),
        ));
    }
    if config.derive_endpoint_slices {
        tasks.spawn(watch::<Pod>(
            kube::Api::all(client),
            watcher::Config::default(),
            Kind::Pod,
            Object::Pod,
            Arc::clone(&shared),
        ));
    }
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = tasks.join_next() => {} // the controller is gone
    }
    tasks.abort_all();
}

struct Shared {
    events: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    /// Kinds that have not delivered their first complete list yet.
    unsynced: AtomicUsize,
}

/// What one kind's watch has delivered to the controller, and a relist in progress.
struct KindState {
    kind: Kind,
    /// Every object sent, with the resourceVersion sent.
    known: HashMap<ObjectKey, String>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    relist: Option<Vec<Object>>,
    synced: bool,
}

impl KindState {
    fn new(kind: Kind) -> Self {
        KindState {
            kind,
            known: HashMap::new(),
            relist: None,
            synced: false,
        }
    }

    /// What to send for an object added or changed; `None` when it was already sent as it is.
    fn apply(&mut self, object: Object) -> Option<Object> {
        let rv = resource_version(&object);
        match self.known.insert(object.key(), rv.clone()) {
            Some(old) if !rv.is_empty() && old == rv => None,
            _ => Some(object),
        }
    }

    fn delete(&mut self, object: &Object) -> Option<(Kind, ObjectKey)> {
        let key = object.key();
        self.known.remove(&key).map(|_| (self.kind, key))
    }

    /// The difference between what was sent and a complete list.
    fn finish_relist(&mut self, listed: Vec<Object>) -> (Vec<Object>, Vec<(Kind, ObjectKey)>) {
        let present: std::collections::HashSet<ObjectKey> =
            listed.iter().map(Object::key).collect();
        let deletes: Vec<(Kind, ObjectKey)> = self
            .known
            .keys()
            .filter(|key| !present.contains(*key))
            .map(|key| (self.kind, key.clone()))
            .collect();
        for (_, key) in &deletes {
            self.known.remove(key);
        }
        let upserts = listed.into_iter().filter_map(|o| self.apply(o)).collect();
        (upserts, deletes)
    }
}

fn resource_version(object: &Object) -> String {
    let meta = match object {
        Object::Service(o) => &o.metadata,
        Object::EndpointSlice(o) => &o.metadata,
        Object::Pod(o) => &o.metadata,
        Object::Node(o) => &o.metadata,
        Object::Secret(o) => &o.metadata,
    };
    meta.resource_version.clone().unwrap_or_default()
}

/// When the change behind an object happened, as far as it says: an EndpointSlice's trigger
/// time annotation, else now.
fn observed_at(objects: &[Object], received: Instant) -> Instant {
    let now = SystemTime::now();
    objects
        .iter()
        .filter_map(|object| match object {
            Object::EndpointSlice(slice) => super::trigger_age(slice, now),
            _ => None,
        })
        .filter_map(|age| received.checked_sub(age))
        .min()
        .unwrap_or(received)
}

/// The retry delays of a failed list or watch: from 200 ms, doubling, at most 5 s, with
/// jitter so that the nodes of a cluster do not retry in step; reset after two minutes
/// without a failure. client-go's reflector (and kube-rs's default) waits up to 30 s, which
/// after an API outage leaves a node on stale state for half a minute; 5 s caps that while
/// the jitter spreads the retries of many nodes.
fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exponential),
        Duration::from_mins(2),
    )
}

async fn watch<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    shared: Arc<Shared>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut state = KindState::new(kind);
    let stream = watcher::watcher(api, config).backoff(watch_backoff());
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let received = Instant::now();
        let mut list_done = false;
        let (upserts, deletes) = match event {
            Ok(Event::Init) => {
                state.relist = Some(Vec::new());
                if state.synced
                    && kind != Kind::Secret
                    && shared
                        .events
                        .send(SourceEvent::Relisting(kind))
                        .await
                        .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(Event::InitApply(object)) => {
                state.relist.get_or_insert_with(Vec::new).push(wrap(object));
                continue;
            }
            Ok(Event::InitDone) => {
                list_done = true;
                let listed = state.relist.take().unwrap_or_default();
                let count = listed.len();
                let diff = state.finish_relist(listed);
                tracing::debug!(
                    kind = %kind,
                    objects = count,
                    changed = diff.0.len(),
                    deleted = diff.1.len(),
                    "list received"
                );
                diff
            }
            Ok(Event::Apply(object)) => {
                (state.apply(wrap(object)).into_iter().collect(), Vec::new())
            }
            Ok(Event::Delete(object)) => (
                Vec::new(),
                state.delete(&wrap(object)).into_iter().collect(),
            ),
            Err(error) => {
                tracing::warn!(
                    kind = %kind,
                    %error,
                    "watch failed; retrying with backoff and keeping the last good state"
                );
                shared
                    .metrics
                    .watch_errors
                    .with_label_values(&[kind.as_str()])
                    .inc();
                continue;
            }
        };
        if !upserts.is_empty() || !deletes.is_empty() {
            let observed = observed_at(&upserts, received);
            let sent = shared
                .events
                .send(SourceEvent::Changes {
                    upserts,
                    deletes,
                    observed,
                })
                .await;
            if sent.is_err() {
                return;
            }
        }
        if list_done
            && state.synced
            && kind != Kind::Secret
            && shared
                .events
                .send(SourceEvent::Relisted(kind))
                .await
                .is_err()
        {
            return;
        }
        if state.relist.is_none() && !state.synced {
            state.synced = true;
            tracing::info!(kind = %kind, objects = state.known.len(), "initial list received");
            if kind != Kind::Secret
                && shared.unsynced.fetch_sub(1, Ordering::AcqRel) == 1
                && shared.events.send(SourceEvent::Synced).await.is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ANNOTATION_TRIGGER_TIME;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(name: &str, rv: &str) -> Object {
        Object::Service(Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        })
    }

    fn names(objects: &[Object]) -> Vec<String> {
        let mut names: Vec<String> = objects.iter().map(|o| o.key().name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_relist_sends_only_the_difference() {
        let mut state = KindState::new(Kind::Service);
        let (upserts, deletes) = state.finish_relist(vec![service("a", "1"), service("b", "2")]);
        assert_eq!(names(&upserts), ["a", "b"]);
        assert!(deletes.is_empty());

        // After an outage: a unchanged, b changed, c new, and d never seen is not deleted.
        let (upserts, deletes) = state.finish_relist(vec![
            service("a", "1"),
            service("b", "5"),
            service("c", "6"),
        ]);
        assert_eq!(names(&upserts), ["b", "c"]);
        assert!(deletes.is_empty());

        // b was deleted while the watch was down.
        let (upserts, deletes) = state.finish_relist(vec![service("a", "1"), service("c", "6")]);
        assert!(upserts.is_empty());
        assert_eq!(deletes, [(Kind::Service, ObjectKey::new("default", "b"))]);
    }

    #[test]
    fn events_are_deduplicated_by_resource_version() {
        let mut state = KindState::new(Kind::Service);
        assert!(state.apply(service("a", "1")).is_some());
        assert!(state.apply(service("a", "1")).is_none());
        assert!(state.apply(service("a", "2")).is_some());
        assert_eq!(
            state.delete(&service("a", "3")),
            Some((Kind::Service, ObjectKey::new("default", "a")))
        );
        // A delete of something never sent sends nothing.
        assert_eq!(state.delete(&service("z", "1")), None);
    }

    #[test]
    fn programming_latency_starts_at_the_trigger_time() {
        let received = Instant::now();
        let at = SystemTime::now() - Duration::from_millis(1500);
        let mut slice = EndpointSlice::default();
        slice.metadata.annotations = Some(
            [(
                ANNOTATION_TRIGGER_TIME.to_owned(),
                humantime::format_rfc3339_seconds(at).to_string(),
            )]
            .into(),
        );
        let observed = observed_at(&[Object::EndpointSlice(slice)], received);
        let age = received - observed;
        // RFC 3339 seconds: the trigger time is rounded down by up to 1 s.
        assert!(
            age >= Duration::from_millis(1000) && age < Duration::from_millis(2600),
            "{age:?}"
        );
        // No annotation: the time the event arrived.
        assert_eq!(observed_at(&[service("a", "1")], received), received);
        // A trigger time in the future (clock skew) is ignored.
        let mut future = EndpointSlice::default();
        future.metadata.annotations = Some(
            [(
                ANNOTATION_TRIGGER_TIME.to_owned(),
                humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(60))
                    .to_string(),
            )]
            .into(),
        );
        assert_eq!(
            observed_at(&[Object::EndpointSlice(future)], received),
            received
        );
    }
}
