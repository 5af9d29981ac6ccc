//! `apiwatch writer`: runs in the network namespace (where the API server
//! listens) and writes to the API server as a client does, through `kube`:
//! the bulk load with many creates in flight, single creates and deletes
//! timed around the request, and a watch on the measured Service's
//! EndpointSlices that reports when the server's controller updated them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_tests::objects;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::protocol::{BulkSpec, BulkTimes, WriterCommand, WriterEvent, monotonic_ns};

/// The port every Service listens on and the Pods' target port.
pub const SERVICE_PORT: u16 = 80;
/// The Pods' port.
pub const TARGET_PORT: u16 = 8080;

/// How many times a create that failed for a reason other than the request
/// itself (a 4xx) is tried.
const TRIES: usize = 5;

/// A client of the API server of `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .context("load the kubeconfig")?;
    kube::Client::try_from(config).context("build the client")
}

/// Service `svc-<n>` of the bulk load.
pub fn bulk_service(n: usize) -> Value {
    let name = format!("svc-{n}");
    objects::Service::new(&name)
        .selector("app", &name)
        .port(objects::ServicePort::tcp("http", SERVICE_PORT, TARGET_PORT))
        .to_value()
}

/// Pod `index` (counted over the whole load) of the bulk load: the
/// `index % pods_per_service`-th Pod of Service `index / pods_per_service`.
pub fn bulk_pod(spec: &BulkSpec, index: usize) -> Value {
    let service = index / spec.pods_per_service.max(1);
    let ip = Ipv4Addr::from(
        u32::from(spec.first_pod_ip).wrapping_add(u32::try_from(index).unwrap_or(u32::MAX)),
    );
    objects::Pod::new(&format!(
        "svc-{service}-{}",
        index % spec.pods_per_service.max(1)
    ))
    .node(Some(&format!("node-{}", index % spec.nodes.max(1))))
    .ips(&[IpAddr::V4(ip)])
    .label("app", &format!("svc-{service}"))
    .port("http", TARGET_PORT)
    .to_value()
}

fn is_client_error(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) if (400..500).contains(&status.code) => Some(status.code),
        _ => None,
    }
}

/// Creates `object`, trying again after failures that are not the
/// request's fault. An object that already exists (a retry of a create
/// whose answer was lost) counts as created. Returns the retries made.
async fn create_with_retry<K>(api: &Api<K>, object: Value) -> Result<usize, String>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).map_err(|e| format!("build the object: {e}"))?;
    let mut retries = 0;
    loop {
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => return Ok(retries),
            Err(error) => match is_client_error(&error) {
                Some(409) if retries > 0 => return Ok(retries),
                None if retries + 1 < TRIES => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(_) | None => return Err(error.to_string()),
            },
        }
    }
}

struct Tally {
    services: AtomicUsize,
    pods: AtomicUsize,
    errors: AtomicUsize,
    retries: AtomicUsize,
    first_error: std::sync::OnceLock<String>,
}

impl Tally {
    fn progress(&self) -> WriterEvent {
        WriterEvent::Progress {
            services: self.services.load(Ordering::Relaxed),
            pods: self.pods.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            t_ns: monotonic_ns(),
        }
    }

    fn count(
        &self,
        done: &Result<usize, String>,
        counter: &AtomicUsize,
        out: &UnboundedSender<WriterEvent>,
    ) {
        match done {
            Ok(retries) => {
                self.retries.fetch_add(*retries, Ordering::Relaxed);
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    let _ = out.send(self.progress());
                }
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.first_error.set(error.clone());
            }
        }
    }
}

async fn bulk(
    client: kube::Client,
    namespace: String,
    spec: BulkSpec,
    out: UnboundedSender<WriterEvent>,
) {
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let tally = Tally {
        services: AtomicUsize::new(0),
        pods: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
        first_error: std::sync::OnceLock::new(),
    };
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started_ns = monotonic_ns();
    futures::stream::iter(0..spec.services)
        .map(|n| create_with_retry(&services, bulk_service(n)))
        .buffer_unordered(spec.concurrency.max(1))
        .for_each(|done| {
            tally.count(&done, &tally.services, &out);
            async {}
        })
        .await;
    let services_done_ns = monotonic_ns();
    let _ = out.send(tally.progress());
    futures::stream::iter(0..spec.services * spec.pods_per_service)
        .map(|i| create_with_retry(&pods, bulk_pod(&spec, i)))
        .buffer_unordered(spec.concurrency.max(1))
        .for_each(|done| {
            tally.count(&done, &tally.pods, &out);
            async {}
        })
        .await;
    let pods_done_ns = monotonic_ns();
    let _ = out.send(WriterEvent::BulkDone(BulkTimes {
        started_ns,
        started_unix_s,
        services_done_ns,
        pods_done_ns,
        services_created: tally.services.load(Ordering::Relaxed),
        pods_created: tally.pods.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        first_error: tally.first_error.get().cloned(),
    }));
}

fn ready_addresses(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

async fn watch_slices(
    client: kube::Client,
    namespace: String,
    service: String,
    out: UnboundedSender<WriterEvent>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    loop {
        let result: Result<()> = async {
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .context("list the slices")?;
            let version = list.metadata.resource_version.unwrap_or_default();
            let mut events = api
                .watch(
                    &WatchParams::default().labels(&selector).timeout(290),
                    &version,
                )
                .await
                .context("watch the slices")?
                .boxed();
            while let Some(event) = events.try_next().await.context("the slice watch")? {
                let t_ns = monotonic_ns();
                let (kind, slice) = match event {
                    WatchEvent::Added(s) => ("added", s),
                    WatchEvent::Modified(s) => ("modified", s),
                    WatchEvent::Deleted(s) => ("deleted", s),
                    WatchEvent::Bookmark(_) => continue,
                    WatchEvent::Error(e) => anyhow::bail!("watch error: {e:?}"),
                };
                let ready = if kind == "deleted" {
                    Vec::new()
                } else {
                    ready_addresses(&slice)
                };
                let _ = out.send(WriterEvent::Slice {
                    t_ns,
                    kind: kind.to_owned(),
                    ready,
                });
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            let _ = out.send(WriterEvent::WatchError {
                t_ns: monotonic_ns(),
                error: format!("{error:#}"),
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn timed<F>(op: &str, name: String, f: F) -> WriterEvent
where
    F: Future<Output = Result<(), String>>,
{
    let sent_ns = monotonic_ns();
    let result = f.await;
    WriterEvent::Done {
        op: op.to_owned(),
        name,
        sent_ns,
        acked_ns: monotonic_ns(),
        error: result.err(),
    }
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap_or("").to_owned()
}

async fn create_once<K>(api: &Api<K>, object: Value) -> Result<(), String>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).map_err(|e| format!("build the object: {e}"))?;
    api.create(&PostParams::default(), &typed)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Answers commands from stdin until it closes.
pub async fn run(kubeconfig: &Path, namespace: &str) -> Result<()> {
    let (out, mut events) = unbounded_channel::<WriterEvent>();
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(event) = events.recv().await {
            let Ok(mut line) = serde_json::to_vec(&event) else {
                continue;
            };
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let client = client(kubeconfig).await?;
    // One request first, so that connecting is not part of the first timed write.
    client
        .apiserver_version()
        .await
        .context("ask the API server its version")?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let _ = out.send(WriterEvent::Ready);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let out = Arc::new(out);
    while let Some(line) = lines.next_line().await.context("read stdin")? {
        let command: WriterCommand = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(error) => {
                let _ = out.send(WriterEvent::Error {
                    error: format!("not a command ({error}): {line}"),
                });
                continue;
            }
        };
        match command {
            WriterCommand::CreateService { object } => {
                let event = timed(
                    "create_service",
                    name_of(&object),
                    create_once(&services, object),
                )
                .await;
                let _ = out.send(event);
            }
            WriterCommand::CreatePod { object } => {
                let event = timed("create_pod", name_of(&object), create_once(&pods, object)).await;
                let _ = out.send(event);
            }
            WriterCommand::DeletePod { name } => {
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                let event = timed("delete_pod", name.clone(), async {
                    pods.delete(&name, &params)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .await;
                let _ = out.send(event);
            }
            WriterCommand::Bulk(spec) => {
                tokio::spawn(bulk(
                    client.clone(),
                    namespace.to_owned(),
                    spec,
                    (*out).clone(),
                ));
            }
            WriterCommand::WatchSlices { service } => {
                tokio::spawn(watch_slices(
                    client.clone(),
                    namespace.to_owned(),
                    service,
                    (*out).clone(),
                ));
            }
        }
    }
    // Stdin closed: the run is over. The watch and any bulk load end with
    // the runtime.
    drop(printer);
    Ok(())
}
