//! The engine: runs on a thread of its own that has entered the cluster's network namespace
//! (where the API server listens), writes to the API server through `kube` as any client
//! would, and drives the client process. It loads the cluster ([`super::plan`]), then, while
//! the soak runs, starts a lifecycle every `4 / rate` seconds on the next Service that is not
//! busy, each one a task that writes its steps a fixed time apart. When told to stop it lets
//! the running lifecycles finish (their Pods' grace periods included), reads back every Pod
//! and says what the datapath must hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_tests::objects;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};

use super::client::{ClientProcess, ClientRecord};
use super::plan::{
    CHANGES_PER_LIFECYCLE, Lifecycle, LifecycleKind, NAMESPACE, NODE, PORT_NAME, Plan, PodState,
    SERVICE_PORT, Schedule, ServiceState, TARGET_PORT, fake_ip, service_name, usable_backends, vip,
};
use super::stats::LogHistogram;
use crate::apiwatch::protocol::monotonic_ns;

/// A write that has not been answered by then fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Creates in flight while loading the cluster.
const LOAD_CONCURRENCY: usize = 16;
/// How long after a Pod's grace period the engine counts it as removed.
const REMOVAL_MARGIN: Duration = Duration::from_millis(1500);

/// What the engine is given.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The API server's kubeconfig.
    pub kubeconfig: PathBuf,
    /// The cluster.
    pub plan: Plan,
    /// Per sample Service: its two real pods (address, server name).
    pub real: Vec<[(Ipv4Addr, String); 2]>,
    /// Endpoint changes per second, over all Services.
    pub rate: f64,
    /// Time between a lifecycle's steps.
    pub step: Duration,
    /// The Pods' termination grace period.
    pub grace: Duration,
    /// The longest a probe waits for the new pod.
    pub probe_limit: Duration,
    /// Where the client's stderr goes.
    pub client_log: PathBuf,
}

/// What the driver tells the engine.
#[derive(Debug)]
pub enum MainCommand {
    /// The daemon has programmed the cluster: start the client, then the churn.
    Go,
    /// Stop the churn and drain.
    Stop,
    /// The driver has checked the datapath: stop the client and finish.
    Checked,
}

/// What the engine tells the driver.
#[derive(Debug)]
pub enum EngineEvent {
    /// The cluster is written.
    Loaded(LoadReport),
    /// The client runs (its PID); the churn starts now (`CLOCK_MONOTONIC`).
    Started {
        /// The client's PID.
        client_pid: Option<u32>,
        /// When the churn started.
        t0_ns: u64,
    },
    /// The churn is over and drained: what each Service's frontend must hold
    /// (`default/svc-N:http` → backends `ip:port`), from the Pods as the API server has them.
    Drained(BTreeMap<String, BTreeSet<String>>),
}

/// The initial load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Services created.
    pub services: usize,
    /// Pods created.
    pub pods: usize,
    /// Ready endpoints in all, the number the daemon must program.
    pub backends: usize,
    /// Seconds it took.
    pub took_s: f64,
}

/// One kind of write.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WriteStats {
    /// Writes answered with success.
    pub ok: u64,
    /// Writes that failed.
    pub errors: u64,
    /// The first failures.
    pub first_errors: Vec<String>,
    /// Request sent to answer, successful writes.
    pub ack: LogHistogram,
}

/// One direct measurement: a sample Service's new real pod made ready, and the first
/// connection through the ClusterIP that reached it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeSample {
    /// When the ready write was sent, seconds since the churn started.
    pub t_s: f64,
    /// The Service.
    pub service: String,
    /// The pod server waited for.
    pub pod: String,
    /// Ready write sent → first connection to the new pod started, milliseconds (`None`: not
    /// within the probe's limit).
    pub latency_ms: Option<f64>,
    /// Ready write sent → the API server's answer, milliseconds.
    pub write_ack_ms: f64,
    /// Connections the probe started.
    pub attempts: u64,
    /// Why there is no measurement, if there is none.
    pub error: Option<String>,
}

/// What the churn did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    /// The initial load.
    pub load: LoadReport,
    /// Lifecycles started, by kind.
    pub lifecycles: BTreeMap<String, u64>,
    /// Lifecycles that ended early (a write failed).
    pub lifecycles_cut: u64,
    /// Times the next Service in the order was busy and another was taken.
    pub busy_skips: u64,
    /// Ticks with every Service busy (no lifecycle started).
    pub no_free_service: u64,
    /// Endpoint changes done: successful writes, and removals at the end of a grace period.
    pub changes: u64,
    /// Changes per second of the churn, by the second they happened in.
    pub changes_per_second: Vec<u32>,
    /// Writes by kind (`create`, `ready`, `delete`).
    pub writes: BTreeMap<String, WriteStats>,
    /// Every direct measurement.
    pub probes: Vec<ProbeSample>,
    /// Seconds from the start of the churn to the stop.
    pub churn_s: f64,
    /// Seconds from the stop until every lifecycle had finished.
    pub drain_s: f64,
    /// Pods in the API server at the end, and of those terminating.
    pub pods_at_end: (usize, usize),
    /// Whether the engine's own model of each Service agreed with the API server at the end
    /// (Services whose usable endpoints differ; a failed write can make them differ).
    pub model_differs: Vec<String>,
    /// Why the engine stopped early, if it did.
    pub failure: Option<String>,
}

/// Everything the engine hands back.
#[derive(Debug, Default)]
pub struct EngineOutcome {
    /// The churn.
    pub churn: ChurnReport,
    /// The client's record.
    pub client: ClientRecord,
}

fn service_object(index: usize) -> Value {
    let name = service_name(index);
    objects::Service::new(&name)
        .cluster_ips(&[&vip(index).to_string()])
        .selector("app", &name)
        .port(objects::ServicePort::tcp(
            PORT_NAME,
            SERVICE_PORT,
            TARGET_PORT,
        ))
        .to_value()
}

fn pod_object(service: usize, pod: &PodState) -> Value {
    objects::Pod::new(&pod.name)
        .node(Some(NODE))
        .ips(&[std::net::IpAddr::V4(pod.ip)])
        .label("app", &service_name(service))
        .port(PORT_NAME, TARGET_PORT)
        .ready(pod.ready)
        .to_value()
}

fn ready_patch() -> Value {
    json!({"status": {"conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
    ]}})
}

/// The shared state of the lifecycles.
struct Ctx {
    pods: Api<Pod>,
    model: Mutex<Vec<ServiceState>>,
    next_fake: AtomicU64,
    writes: Mutex<BTreeMap<String, WriteStats>>,
    probes: Mutex<Vec<ProbeSample>>,
    changes: AtomicU64,
    per_second: Mutex<Vec<u32>>,
    cut: AtomicU64,
    client: ClientProcess,
    t0: Instant,
    t0_ns: u64,
    config: EngineConfig,
}

impl Ctx {
    fn fake(&self) -> Ipv4Addr {
        fake_ip(self.next_fake.fetch_add(1, Ordering::Relaxed))
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        let second = self.t0.elapsed().as_secs() as usize;
        let mut per = self.per_second.lock();
        if per.len() <= second {
            per.resize(second + 1, 0);
        }
        per[second] += 1;
    }

    /// Runs one write, times it and counts it as `op`; `true` if it succeeded.
    async fn write<T, F>(&self, op: &str, what: &str, request: F) -> bool
    where
        F: Future<Output = Result<T, kube::Error>>,
    {
        let started = Instant::now();
        let result = timeout(WRITE_TIMEOUT, request).await;
        let took = started.elapsed();
        let error = match result {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {WRITE_TIMEOUT:?}")),
        };
        let mut writes = self.writes.lock();
        let stats = writes.entry(op.to_owned()).or_default();
        if let Some(error) = error {
            stats.errors += 1;
            if stats.first_errors.len() < 20 {
                stats.first_errors.push(format!(
                    "{:.1} s: {op} {what}: {error}",
                    self.t0.elapsed().as_secs_f64()
                ));
            }
            false
        } else {
            stats.ok += 1;
            stats.ack.record(took.as_micros() as u64);
            drop(writes);
            self.changed();
            true
        }
    }

    fn with_service<T>(&self, index: usize, f: impl FnOnce(&mut ServiceState) -> T) -> T {
        f(&mut self.model.lock()[index])
    }

    async fn create(&self, service: usize, pod: &PodState) -> bool {
        let object: Pod = match serde_json::from_value(pod_object(service, pod)) {
            Ok(object) => object,
            Err(error) => {
                log_line(&format!("pod {}: {error}", pod.name));
                return false;
            }
        };
        self.write(
            "create",
            &pod.name,
            self.pods.create(&PostParams::default(), &object),
        )
        .await
    }

    async fn make_ready(&self, name: &str) -> bool {
        let patch = ready_patch();
        self.write(
            "ready",
            name,
            self.pods
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
    }

    async fn delete(&self, name: &str) -> bool {
        let params = DeleteParams {
            grace_period_seconds: Some(
                u32::try_from(self.config.grace.as_secs()).unwrap_or(u32::MAX),
            ),
            ..DeleteParams::default()
        };
        self.write("delete", name, self.pods.delete(name, &params))
            .await
    }

    /// Waits out `name`'s grace period (the API server removes it), then counts the removal.
    async fn removal(&self, service: usize, name: &str) {
        sleep(self.config.grace + REMOVAL_MARGIN).await;
        self.changed();
        self.with_service(service, |s| s.removed(name));
    }

    async fn probe_after_ready(&self, service: usize, pod: &str, new_pod: &str) -> bool {
        let target = SocketAddr::new(vip(service).into(), SERVICE_PORT);
        let probe = self
            .client
            .probe(target, pod, self.config.probe_limit)
            .await;
        let sent_ns = monotonic_ns();
        let sent = Instant::now();
        let ok = self.make_ready(new_pod).await;
        let ack_ms = sent.elapsed().as_secs_f64() * 1e3;
        let mut sample = ProbeSample {
            t_s: sent_ns.saturating_sub(self.t0_ns) as f64 / 1e9,
            service: service_name(service),
            pod: pod.to_owned(),
            write_ack_ms: ack_ms,
            ..ProbeSample::default()
        };
        match probe {
            Err(error) => sample.error = Some(format!("{error:#}")),
            Ok(_) if !ok => sample.error = Some("the ready write failed".to_owned()),
            Ok(rx) => match rx.await {
                Ok((Some(t_ns), attempts)) => {
                    sample.latency_ms = Some(t_ns.saturating_sub(sent_ns) as f64 / 1e6);
                    sample.attempts = attempts;
                }
                Ok((None, attempts)) => {
                    sample.attempts = attempts;
                    sample.error = Some(format!(
                        "the new pod did not answer within {:?}",
                        self.config.probe_limit
                    ));
                }
                Err(_) => sample.error = Some("the client went away".to_owned()),
            },
        }
        self.probes.lock().push(sample);
        ok
    }

    async fn lifecycle(self: Arc<Self>, life: Lifecycle) {
        let service = life.service;
        let started = Instant::now();
        let step = self.config.step;
        let finished = self.run_steps(&life, started, step).await;
        if !finished {
            self.cut.fetch_add(1, Ordering::Relaxed);
        }
        self.with_service(service, |s| s.busy = false);
    }

    /// The steps of `life`; `false` when a write failed and it stopped.
    async fn run_steps(&self, life: &Lifecycle, started: Instant, step: Duration) -> bool {
        let service = life.service;
        let new = &life.new_pod;
        if !self.create(service, new).await {
            return false;
        }
        self.with_service(service, |s| s.created(new.clone()));
        sleep_until(started + step).await;
        match life.kind {
            LifecycleKind::Replace => {
                let ready = match &life.probe_name {
                    Some(server) => self.probe_after_ready(service, server, &new.name).await,
                    None => self.make_ready(&new.name).await,
                };
                if !ready {
                    return false;
                }
                self.with_service(service, |s| s.made_ready(&new.name));
                sleep_until(started + 2 * step).await;
                let Some(old) = &life.old_pod else {
                    return true;
                };
                if !self.delete(old).await {
                    return false;
                }
                self.with_service(service, |s| s.deleting(old));
                self.removal(service, old).await;
            }
            LifecycleKind::Decoy => {
                if !self.delete(&new.name).await {
                    return false;
                }
                self.with_service(service, |s| s.deleting(&new.name));
                sleep_until(started + 2 * step).await;
                // Ready while terminating: serving, never to be used while a ready one exists.
                if self.make_ready(&new.name).await {
                    self.with_service(service, |s| s.made_ready(&new.name));
                }
                self.removal(service, &new.name).await;
            }
        }
        true
    }
}

fn log_line(line: &str) {
    eprintln!("soak engine: {line}");
}

async fn create_with_retry<K>(api: &Api<K>, object: Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).context("build the object")?;
    let mut tries = 0;
    loop {
        tries += 1;
        match timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &typed)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 && tries > 1 => return Ok(()),
            Ok(Err(kube::Error::Api(status))) if (400..500).contains(&status.code) => {
                bail!("the API server refused it: {status:?}")
            }
            Ok(Err(error)) if tries < 5 => {
                log_line(&format!("create failed, retrying: {error}"));
            }
            Err(_) if tries < 5 => log_line("create timed out, retrying"),
            Ok(Err(error)) => return Err(error).context("create"),
            Err(_) => bail!("create: no answer within {WRITE_TIMEOUT:?} five times"),
        }
        sleep(Duration::from_millis(200)).await;
    }
}

async fn load(client: &kube::Client, model: &[ServiceState]) -> Result<LoadReport> {
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let results: Vec<Result<()>> = futures::stream::iter(0..model.len())
        .map(|i| create_with_retry(&services, service_object(i)))
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .context("create the Services")?;
    let all: Vec<(usize, &PodState)> = model
        .iter()
        .flat_map(|s| s.pods.iter().map(move |p| (s.index, p)))
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(all.iter())
        .map(|(service, pod)| create_with_retry(&pods, pod_object(*service, pod)))
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .context("create the Pods")?;
    Ok(LoadReport {
        services: model.len(),
        pods: all.len(),
        backends: model.iter().map(|s| s.usable().len()).sum(),
        took_s: started.elapsed().as_secs_f64(),
    })
}

fn pod_state(pod: &Pod) -> Option<(String, PodState)> {
    let service = pod.metadata.labels.as_ref()?.get("app")?.clone();
    let status = pod.status.as_ref()?;
    let ip: Ipv4Addr = status.pod_ip.as_ref()?.parse().ok()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some((
        service,
        PodState {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            real: false,
        },
    ))
}

/// What every Service's frontend must hold, from the Pods as the API server has them; also
/// (Pods, terminating Pods).
async fn expected_from_api(
    pods: &Api<Pod>,
    services: usize,
) -> Result<(BTreeMap<String, BTreeSet<Ipv4Addr>>, usize, usize)> {
    let list = pods
        .list(&ListParams::default())
        .await
        .context("list the Pods")?;
    let mut by_service: BTreeMap<String, Vec<PodState>> = (0..services)
        .map(|i| (service_name(i), Vec::new()))
        .collect();
    let mut terminating = 0;
    for pod in &list.items {
        if let Some((service, state)) = pod_state(pod) {
            terminating += usize::from(state.terminating);
            by_service.entry(service).or_default().push(state);
        }
    }
    let expected = by_service
        .into_iter()
        .map(|(service, pods)| (service, usable_backends(&pods)))
        .collect();
    Ok((expected, list.items.len(), terminating))
}

/// The frontend name `switchyard services` gives Service `name`'s port.
pub fn frontend_service(name: &str) -> String {
    format!("{NAMESPACE}/{name}:{PORT_NAME}")
}

/// Runs the engine (see the module docs) on the current thread's runtime.
pub async fn run(
    config: EngineConfig,
    client_command: std::process::Command,
    mut from_main: UnboundedReceiver<MainCommand>,
    to_main: std::sync::mpsc::Sender<EngineEvent>,
) -> Result<EngineOutcome> {
    let client = crate::apiwatch::writer::client(&config.kubeconfig).await?;
    client
        .apiserver_version()
        .await
        .context("ask the API server its version")?;
    let next_fake = AtomicU64::new(0);
    let mut fake = || fake_ip(next_fake.fetch_add(1, Ordering::Relaxed));
    let real = config.real.clone();
    let model = config.plan.initial(&mut fake, |k| real[k].clone());
    let load_report = load(&client, &model).await?;
    let _ = to_main.send(EngineEvent::Loaded(load_report.clone()));
    match from_main.recv().await {
        Some(MainCommand::Go) => {}
        other => bail!("stopped before the soak began ({other:?})"),
    }
    let process = ClientProcess::start(client_command, &config.client_log).await?;
    let t0_ns = monotonic_ns();
    let _ = to_main.send(EngineEvent::Started {
        client_pid: process.pid(),
        t0_ns,
    });
    let ctx = Arc::new(Ctx {
        pods: Api::namespaced(client.clone(), NAMESPACE),
        model: Mutex::new(model),
        next_fake: AtomicU64::new(next_fake.load(Ordering::Relaxed)),
        writes: Mutex::new(BTreeMap::new()),
        probes: Mutex::new(Vec::new()),
        changes: AtomicU64::new(0),
        per_second: Mutex::new(Vec::new()),
        cut: AtomicU64::new(0),
        client: process,
        t0: Instant::now(),
        t0_ns,
        config: config.clone(),
    });
    let mut report = ChurnReport {
        load: load_report,
        ..ChurnReport::default()
    };
    let period = Duration::from_secs_f64(CHANGES_PER_LIFECYCLE as f64 / config.rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut schedule = Schedule::new(config.plan.services);
    let mut lifecycles = JoinSet::new();
    let stopped_by_main = loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut model = ctx.model.lock();
                let mut planned = None;
                for _ in 0..config.plan.services {
                    let index = schedule.next_service();
                    if model[index].busy {
                        report.busy_skips += 1;
                        continue;
                    }
                    planned = Some(model[index].plan(&mut || ctx.fake()));
                    break;
                }
                drop(model);
                match planned {
                    Some(life) => {
                        let kind = match life.kind {
                            LifecycleKind::Replace => "replace",
                            LifecycleKind::Decoy => "decoy",
                        };
                        *report.lifecycles.entry(kind.to_owned()).or_default() += 1;
                        lifecycles.spawn(ctx.clone().lifecycle(life));
                    }
                    None => report.no_free_service += 1,
                }
            }
            Some(_) = lifecycles.join_next(), if !lifecycles.is_empty() => {}
            command = from_main.recv() => break matches!(command, Some(MainCommand::Stop)),
        }
    };
    report.churn_s = ctx.t0.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    let drain_limit = config.grace + 3 * config.step + WRITE_TIMEOUT * 3 + Duration::from_secs(10);
    let drained = timeout(drain_limit, async {
        while lifecycles.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        report.failure = Some(format!(
            "{} lifecycles had not finished {drain_limit:?} after the stop",
            lifecycles.len()
        ));
        lifecycles.abort_all();
        while lifecycles.join_next().await.is_some() {}
    }
    report.drain_s = drain_started.elapsed().as_secs_f64();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let (expected, pods, terminating) = expected_from_api(&pods_api, config.plan.services).await?;
    report.pods_at_end = (pods, terminating);
    {
        let model = ctx.model.lock();
        for state in model.iter() {
            let name = service_name(state.index);
            if expected.get(&name) != Some(&state.usable()) {
                report.model_differs.push(name);
            }
        }
    }
    let to_check = expected
        .iter()
        .map(|(service, ips)| {
            (
                frontend_service(service),
                ips.iter().map(|ip| format!("{ip}:{TARGET_PORT}")).collect(),
            )
        })
        .collect();
    if stopped_by_main {
        let _ = to_main.send(EngineEvent::Drained(to_check));
        // The driver answers once it has read the datapath (or goes away).
        let _ = from_main.recv().await;
    }
    report.lifecycles_cut = ctx.cut.load(Ordering::Relaxed);
    report.changes = ctx.changes.load(Ordering::Relaxed);
    report.changes_per_second.clone_from(&ctx.per_second.lock());
    report.writes = ctx.writes.lock().clone();
    report.probes = std::mem::take(&mut *ctx.probes.lock());
    report.probes.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let Ok(ctx) = Arc::try_unwrap(ctx) else {
        bail!("a lifecycle still holds the engine's state")
    };
    let record = ctx.client.stop(Duration::from_secs(20)).await;
    Ok(EngineOutcome {
        churn: report,
        client: record,
    })
}
