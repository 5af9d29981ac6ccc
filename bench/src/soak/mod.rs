//! `soak`: switchyard's node daemon under endpoint churn for a long time. 1,000 Services (by
//! default) whose endpoints change at 50 changes per second in total (Pods created, made ready,
//! terminated, removed), clients connecting without pause to the sample Services that always
//! have a ready endpoint, for 30 minutes. It reports the failed connections (the goal is none),
//! the network programming latency (the daemon's histogram and direct measurements through the
//! datapath), and the daemon's memory over time (the goal is flat after a warm-up).
//!
//! The cluster is one node of the multi-node topology of switchyard-tests: the bridge's network
//! namespace holds the embedded API server (`switchyard apiserver`, its EndpointSlice
//! controller deriving the slices from the Pods), the node namespace the daemon (`switchyard run
//! --proxy-mode ebpf --kubeconfig ...`, its programs attached to the node's client cgroup and
//! pinned under the cluster's bpffs folder), and 2 real pod servers per sample Service. Three
//! actors do the work:
//!
//! - the engine ([`churn`]), on a thread of this process that has entered the network
//!   namespace, writes the Services and Pods and carries out the churn ([`plan`]);
//! - the client ([`client`], this program started again in the client namespace and cgroup)
//!   connects, counts, and probes on the engine's request;
//! - this thread builds and removes everything, samples the daemon's memory and CPU from
//!   `/proc` and its `/metrics`, and checks at the end that the kernel's maps hold exactly what
//!   the API server says.
//!
//! Safety: every connection stays inside the cluster's namespaces; the daemon's programs attach
//! to the cluster's client cgroup only (`--devices none`: no tc program on any interface); the
//! guards of switchyard-tests (and, on a signal, [`crate::reaper`]) remove the namespaces,
//! cgroups, pins and processes, also on failure; every process is ended by its PID.

// The driver is synchronous (threads, child processes and sleeps, no runtime whose clock a test
// could pause), so std's clock is the right one here; the engine and the client use tokio's.
#![allow(
    clippy::disallowed_types,
    reason = "a synchronous driver: no tokio clock to pause"
)]

pub mod churn;
pub mod client;
pub mod plan;
pub mod plot;
pub mod report;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::{ApiServer, Cluster, Daemon, Mode, metrics};
use tokio::sync::mpsc::UnboundedSender;

use crate::apiwatch::protocol::monotonic_ns;
use crate::apiwatch::usage::Usage;
use crate::cpu;
use churn::{ChurnReport, EngineConfig, EngineEvent, EngineOutcome, LoadReport, MainCommand};
use client::ClientRecord;
use plan::{Plan, SERVICE_PORT, vip};
use stats::PromHistogram;

/// How the soak is run; built once from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// How long the churn runs.
    pub duration: Duration,
    /// Services.
    pub services: usize,
    /// Of those, served by real pods and connected to.
    pub samples: usize,
    /// Ready Pods of every other Service.
    pub endpoints_per_service: usize,
    /// Endpoint changes per second, over all Services.
    pub rate: f64,
    /// The client's new connections per second.
    pub connect_rate: f64,
    /// The client's connect timeout.
    pub connect_timeout: Duration,
    /// The client's timeout for a whole connection.
    pub request_timeout: Duration,
    /// Memory before this is the warm-up.
    pub warmup: Duration,
    /// How often the processes' memory and CPU are read.
    pub sample_interval: Duration,
    /// How often the daemon's `/metrics` are read.
    pub metrics_interval: Duration,
    /// Time between a lifecycle's steps.
    pub step: Duration,
    /// The Pods' termination grace period.
    pub grace: Duration,
    /// The longest a probe waits for a new pod.
    pub probe_limit: Duration,
    /// The daemon's `--sync-period`.
    pub sync_period: String,
    /// More `switchyard run` arguments.
    pub daemon_args: Vec<String>,
    /// This program, started again as the client.
    pub exe: PathBuf,
}

/// One reading of the processes and the machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// Seconds since the churn started (negative before).
    pub t_s: f64,
    /// The daemon.
    pub daemon: Usage,
    /// The API server.
    pub apiserver: Usage,
    /// The client.
    pub client: Usage,
    /// CPU seconds of every pod server so far.
    pub pods_cpu_s: f64,
    /// CPU seconds of this process (the driver and the engine) so far.
    pub driver_cpu_s: f64,
    /// Busy CPU seconds of the whole machine since boot, all CPUs.
    pub machine_busy_s: f64,
    /// Elapsed CPU seconds since boot, all CPUs.
    pub machine_total_s: f64,
}

/// One reading of the daemon's `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetricsSample {
    /// Seconds since the churn started (negative before).
    pub t_s: f64,
    /// `kubeproxy_network_programming_duration_seconds`.
    pub programming: PromHistogram,
    /// `kubeproxy_sync_proxy_rules_duration_seconds`.
    pub sync: PromHistogram,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`.
    pub endpoint_changes: f64,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`.
    pub service_changes: f64,
    /// `switchyard_datapath_repairs_total`.
    pub repairs: f64,
    /// `switchyard_datapath_errors_total`.
    pub datapath_errors: f64,
    /// `switchyard_bpf_map_full_total`.
    pub map_full: f64,
    /// `switchyard_api_watch_errors_total`.
    pub watch_errors: f64,
    /// `switchyard_bpf_no_backend_total`.
    pub bpf_no_backend: f64,
    /// `switchyard_bpf_backend_missing_total`.
    pub bpf_backend_missing: f64,
    /// `switchyard_bpf_translations_total`.
    pub bpf_translations: f64,
    /// `switchyard_services`.
    pub services: f64,
    /// `switchyard_frontends`.
    pub frontends: f64,
    /// `switchyard_service_backends{state="active"}`, summed.
    pub backends_active: f64,
}

impl MetricsSample {
    fn read(daemon: &Daemon, t_s: f64) -> Result<Self> {
        let all = metrics::parse(&daemon.metrics()?);
        let sum = |name: &str| metrics::sum(&all, name, &[]);
        Ok(Self {
            t_s,
            programming: PromHistogram::from_samples(
                &all,
                "kubeproxy_network_programming_duration_seconds",
            ),
            sync: PromHistogram::from_samples(&all, "kubeproxy_sync_proxy_rules_duration_seconds"),
            endpoint_changes: sum("kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            service_changes: sum("kubeproxy_sync_proxy_rules_service_changes_total"),
            repairs: sum("switchyard_datapath_repairs_total"),
            datapath_errors: sum("switchyard_datapath_errors_total"),
            map_full: sum("switchyard_bpf_map_full_total"),
            watch_errors: sum("switchyard_api_watch_errors_total"),
            bpf_no_backend: sum("switchyard_bpf_no_backend_total"),
            bpf_backend_missing: sum("switchyard_bpf_backend_missing_total"),
            bpf_translations: sum("switchyard_bpf_translations_total"),
            services: sum("switchyard_services"),
            frontends: sum("switchyard_frontends"),
            backends_active: metrics::sum(
                &all,
                "switchyard_service_backends",
                &[("state", "active")],
            ),
        })
    }
}

/// The end-of-run check: the kernel's maps against the API server's Pods.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConsistencyCheck {
    /// Services compared.
    pub services: usize,
    /// Of those, holding exactly the backends the API server's Pods give.
    pub matching: usize,
    /// The first differences.
    pub differences: Vec<String>,
    /// Seconds from the drain until they matched (or the check gave up).
    pub took_s: f64,
}

/// Warnings and errors a process logged, grouped by message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Problem {
    /// `daemon` or `apiserver`.
    pub process: String,
    /// How many lines had this message.
    pub count: usize,
    /// The first such line.
    pub first: String,
}

/// Everything the run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The cluster.
    pub plan: Option<Plan>,
    /// Seconds from the daemon's start until `/healthz` answered.
    pub daemon_healthy_s: Option<f64>,
    /// Seconds from the daemon's start until `/metrics` showed every Service and backend.
    pub programmed_s: Option<f64>,
    /// The daemon once it had programmed the cluster.
    pub daemon_after_load: Option<Usage>,
    /// The churn's start (`CLOCK_MONOTONIC` ns): the origin of every `t_s`.
    pub t0_ns: u64,
    /// Seconds of churn.
    pub soak_s: f64,
    /// Processes and machine, every sample interval.
    pub samples: Vec<ProcSample>,
    /// The daemon's `/metrics`, every metrics interval.
    pub metrics: Vec<MetricsSample>,
    /// The check at the end.
    pub check: Option<ConsistencyCheck>,
    /// What the engine did.
    pub churn: ChurnReport,
    /// What the client saw.
    pub client: ClientRecord,
    /// Warnings and errors of the daemon and the API server.
    pub problems: Vec<Problem>,
    /// The daemon's and the API server's exits, if they exited during the run.
    pub exits: Vec<String>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
}

/// What the driver's thread measured.
#[derive(Default)]
struct DriverOutcome {
    daemon_healthy_s: Option<f64>,
    programmed_s: Option<f64>,
    daemon_after_load: Option<Usage>,
    t0_ns: u64,
    soak_s: f64,
    samples: Vec<ProcSample>,
    metrics: Vec<MetricsSample>,
    check: Option<ConsistencyCheck>,
    exits: Vec<String>,
}

/// The PIDs whose CPU and memory are sampled.
struct Pids {
    daemon: u32,
    apiserver: u32,
    client: Option<u32>,
    pods: Vec<u32>,
}

fn machine_cpu(ticks: u64) -> (f64, f64) {
    cpu::CpuTimes::read().map_or((0.0, 0.0), |times| {
        let (busy, total) = times
            .per_cpu
            .iter()
            .fold((0, 0), |(b, t), (busy, total)| (b + busy, t + total));
        (
            busy as f64 / ticks.max(1) as f64,
            total as f64 / ticks.max(1) as f64,
        )
    })
}

fn proc_sample(pids: &Pids, ticks: u64, t_s: f64) -> ProcSample {
    let read = |pid: u32| Usage::read(pid, ticks).unwrap_or_default();
    let (machine_busy_s, machine_total_s) = machine_cpu(ticks);
    ProcSample {
        t_s,
        daemon: read(pids.daemon),
        apiserver: read(pids.apiserver),
        client: pids.client.map(read).unwrap_or_default(),
        pods_cpu_s: pids
            .pods
            .iter()
            .map(|pid| cpu::process_time(*pid, ticks).map_or(0.0, |d| d.as_secs_f64()))
            .sum(),
        driver_cpu_s: cpu::process_time(std::process::id(), ticks).map_or(0.0, |d| d.as_secs_f64()),
        machine_busy_s,
        machine_total_s,
    }
}

/// The backends of every `svc-*` frontend in the daemon's `/services` (read from the kernel's
/// maps in eBPF mode).
fn kernel_backends(daemon: &Daemon) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let views = daemon.services_json()?;
    let views = views.as_array().context("/services is not a list")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for view in views {
        let Some(service) = view["service"].as_str() else {
            continue;
        };
        let backends = out.entry(service.to_owned()).or_default();
        for backend in view["backends"].as_array().into_iter().flatten() {
            if let Some(addr) = backend["backend"].as_str() {
                backends.insert(addr.to_owned());
            }
        }
    }
    Ok(out)
}

/// Compares `kernel` with `expected`: (matching Services, the first differences).
pub fn compare_backends(
    expected: &BTreeMap<String, BTreeSet<String>>,
    kernel: &BTreeMap<String, BTreeSet<String>>,
) -> (usize, Vec<String>) {
    let empty = BTreeSet::new();
    let mut matching = 0;
    let mut differences = Vec::new();
    for (service, want) in expected {
        let have = kernel.get(service).unwrap_or(&empty);
        if have == want {
            matching += 1;
        } else if differences.len() < 20 {
            let extra: Vec<&String> = have.difference(want).collect();
            let missing: Vec<&String> = want.difference(have).collect();
            differences.push(format!(
                "{service}: the maps have {extra:?} too many and lack {missing:?}"
            ));
        }
    }
    (matching, differences)
}

fn check_datapath(
    daemon: &Daemon,
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> ConsistencyCheck {
    let started = Instant::now();
    let mut check = ConsistencyCheck {
        services: expected.len(),
        ..ConsistencyCheck::default()
    };
    // The last removals may still be on their way: give them a few seconds.
    loop {
        match kernel_backends(daemon) {
            Ok(kernel) => {
                let (matching, differences) = compare_backends(expected, &kernel);
                check.matching = matching;
                check.differences = differences;
            }
            Err(error) => check.differences = vec![format!("/services failed: {error:#}")],
        }
        if check.matching == check.services || started.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    check.took_s = started.elapsed().as_secs_f64();
    check
}

/// Warnings, errors and panics in `log`, grouped by their message (the line without its
/// timestamp).
pub fn problems_in(process: &str, log: &str) -> Vec<Problem> {
    let mut groups: Vec<Problem> = Vec::new();
    for line in log.lines() {
        let Some(at) = [" WARN ", " ERROR ", "panicked"]
            .iter()
            .filter_map(|marker| line.find(marker))
            .min()
        else {
            continue;
        };
        let message = line[at..].trim();
        let key: String = message.chars().take(160).collect();
        match groups.iter_mut().find(|g| g.first.contains(&key)) {
            Some(group) => group.count += 1,
            None => groups.push(Problem {
                process: process.to_owned(),
                count: 1,
                first: line.chars().take(600).collect(),
            }),
        }
    }
    groups
}

fn daemon_config(
    config: &RunConfig,
    cluster: &Cluster,
    api: &ApiServer,
) -> Result<switchyard_tests::DaemonConfig> {
    let mut daemon = cluster.daemon_config(0, Mode::Ebpf, &api.kubeconfig())?;
    // ClusterIPs only: the programs stay on the client's cgroup, none on an interface.
    daemon.extra_args = vec!["--devices".to_owned(), "none".to_owned()];
    daemon.extra_args.extend(config.daemon_args.iter().cloned());
    daemon.sync_period.clone_from(&config.sync_period);
    daemon.ready_timeout = Duration::from_mins(2);
    Ok(daemon)
}

fn client_argv(config: &RunConfig, plan: &Plan) -> Vec<OsString> {
    let targets: Vec<String> = plan
        .samples
        .iter()
        .map(|&s| format!("{}:{SERVICE_PORT}", vip(s)))
        .collect();
    vec![
        config.exe.clone().into(),
        "client".into(),
        "--targets".into(),
        targets.join(",").into(),
        "--rate".into(),
        config.connect_rate.to_string().into(),
        "--connect-timeout".into(),
        humantime::format_duration(config.connect_timeout)
            .to_string()
            .into(),
        "--request-timeout".into(),
        humantime::format_duration(config.request_timeout)
            .to_string()
            .into(),
    ]
}

fn recv(from_engine: &Receiver<EngineEvent>, limit: Duration, what: &str) -> Result<EngineEvent> {
    match from_engine.recv_timeout(limit) {
        Ok(event) => Ok(event),
        Err(RecvTimeoutError::Timeout) => bail!("the engine did not report {what} in {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => {
            bail!("the engine stopped before {what} (its error follows)")
        }
    }
}

struct Env<'a> {
    config: &'a RunConfig,
    cluster: &'a Cluster,
    api: &'a mut ApiServer,
    pod_pids: Vec<u32>,
    ticks: u64,
}

fn alive(daemon: &mut Daemon, api: &mut ApiServer) -> Result<()> {
    if let Some(status) = daemon.try_wait()? {
        bail!(
            "the daemon exited ({status}); its log ends:\n{}",
            daemon.log_tail(40)
        );
    }
    if let Some(status) = api.try_wait()? {
        bail!("the API server exited ({status})");
    }
    Ok(())
}

/// The driver's part: starts the daemon once the cluster is written, waits until it has
/// programmed it, lets the engine churn for the run's duration while sampling, then checks the
/// datapath. The daemon is left in `slot`, so that it outlives the client.
#[allow(
    clippy::needless_pass_by_value,
    reason = "dropping the sender on return is what tells the engine the driver is gone"
)]
fn drive(
    env: &mut Env<'_>,
    slot: &mut Option<Daemon>,
    out: &mut DriverOutcome,
    to_engine: UnboundedSender<MainCommand>,
    from_engine: &Receiver<EngineEvent>,
) -> Result<()> {
    let config = env.config;
    let EngineEvent::Loaded(load) = recv(from_engine, Duration::from_mins(15), "the load")? else {
        bail!("the engine reported something else than the load first");
    };
    eprintln!(
        "loaded {} Services and {} Pods in {:.1} s; starting the daemon",
        load.services, load.pods, load.took_s
    );
    let started = Instant::now();
    let daemon = slot.insert(
        env.cluster
            .start_daemon(0, &daemon_config(config, env.cluster, env.api)?)?,
    );
    out.daemon_healthy_s = Some(started.elapsed().as_secs_f64());
    wait_programmed(daemon, &load)?;
    out.programmed_s = Some(started.elapsed().as_secs_f64());
    out.daemon_after_load = Usage::read(daemon.pid(), env.ticks).ok();
    eprintln!(
        "the daemon programmed the cluster {:.1} s after its start ({:.0} MiB resident)",
        started.elapsed().as_secs_f64(),
        out.daemon_after_load.map_or(0.0, |u| u.rss_mib)
    );
    let _ = to_engine.send(MainCommand::Go);
    let EngineEvent::Started { client_pid, t0_ns } =
        recv(from_engine, Duration::from_mins(1), "the start")?
    else {
        bail!("the engine reported something else than the start");
    };
    out.t0_ns = t0_ns;
    let pids = Pids {
        daemon: daemon.pid(),
        apiserver: env.api.pid(),
        client: client_pid,
        pods: env.pod_pids.clone(),
    };
    let since_t0 = || monotonic_ns().saturating_sub(t0_ns) as f64 / 1e9;
    out.samples.push(proc_sample(&pids, env.ticks, since_t0()));
    out.metrics.push(MetricsSample::read(daemon, since_t0())?);
    let t0 = Instant::now();
    let mut next_sample = t0 + config.sample_interval;
    let mut next_metrics = t0 + config.metrics_interval;
    let mut next_report = t0 + Duration::from_mins(1);
    let end = t0 + config.duration;
    let result = (|| -> Result<()> {
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let wake = next_sample.min(next_metrics).min(end);
            match from_engine.recv_timeout(wake.saturating_duration_since(now)) {
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("the engine stopped during the soak"),
                Ok(event) => bail!("the engine said {event:?} during the soak"),
            }
            alive(daemon, env.api)?;
            let now = Instant::now();
            if now >= next_sample {
                out.samples.push(proc_sample(&pids, env.ticks, since_t0()));
                next_sample += config.sample_interval;
            }
            if now >= next_metrics {
                match MetricsSample::read(daemon, since_t0()) {
                    Ok(sample) => out.metrics.push(sample),
                    Err(error) => eprintln!("  /metrics failed: {error:#}"),
                }
                next_metrics += config.metrics_interval;
            }
            if now >= next_report {
                next_report += Duration::from_mins(1);
                progress(out);
            }
        }
    })();
    out.soak_s = since_t0();
    out.samples.push(proc_sample(&pids, env.ticks, since_t0()));
    if let Ok(sample) = MetricsSample::read(daemon, since_t0()) {
        out.metrics.push(sample);
    }
    let _ = to_engine.send(MainCommand::Stop);
    result?;
    eprintln!("the churn stopped after {:.0} s; draining", out.soak_s);
    let EngineEvent::Drained(expected) = recv(from_engine, Duration::from_mins(3), "the drain")?
    else {
        bail!("the engine reported something else than the drain");
    };
    let check = check_datapath(daemon, &expected);
    eprintln!(
        "datapath check: {} of {} Services hold exactly the API server's endpoints",
        check.matching, check.services
    );
    out.check = Some(check);
    let _ = to_engine.send(MainCommand::Checked);
    Ok(())
}

fn progress(out: &DriverOutcome) {
    let Some(last) = out.samples.last() else {
        return;
    };
    let latency = match (out.metrics.first(), out.metrics.last()) {
        (Some(first), Some(last)) => {
            let h = last.programming.since(&first.programming);
            format!(
                "programming p50 {:.1} ms, p99 {:.1} ms over {} changes",
                h.quantile(0.5).unwrap_or(0.0) * 1e3,
                h.quantile(0.99).unwrap_or(0.0) * 1e3,
                h.count
            )
        }
        _ => String::new(),
    };
    eprintln!(
        "  {:.0} min: daemon {:.1} MiB resident, {:.1} CPU s; {latency}",
        last.t_s / 60.0,
        last.daemon.rss_mib,
        last.daemon.cpu_s
    );
}

fn wait_programmed(daemon: &mut Daemon, load: &LoadReport) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon exited ({status}) before it programmed the cluster");
        }
        let now = MetricsSample::read(daemon, 0.0).ok();
        if let Some(now) = &now
            && now.services >= load.services as f64
            && now.backends_active >= load.backends as f64
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_mins(5) {
            bail!(
                "the daemon had not programmed {} Services and {} backends after 5 min (metrics: {:?})",
                load.services,
                load.backends,
                now.map(|n| (n.services, n.backends_active))
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Enters the network namespace at `net` on this thread and runs the engine there.
fn engine_thread(
    net: &Path,
    config: EngineConfig,
    client_command: std::process::Command,
    from_main: tokio::sync::mpsc::UnboundedReceiver<MainCommand>,
    to_main: std::sync::mpsc::Sender<EngineEvent>,
) -> Result<EngineOutcome> {
    let ns = File::open(net).with_context(|| format!("open {}", net.display()))?;
    // Only this thread changes namespace; the runtime's threads are made from it and so are in
    // the namespace too.
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter {}", net.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the engine's runtime")?
        .block_on(churn::run(config, client_command, from_main, to_main))
}

/// Builds the cluster, loads it, runs the soak and tears everything down (also on error). A
/// failure part-way is recorded in the outcome with what was measured until then.
pub fn run(config: &RunConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    anyhow::ensure!(config.samples >= 1, "at least one sample Service is needed");
    anyhow::ensure!(
        2 * config.samples <= switchyard_tests::cluster::MAX_PODS_PER_NODE,
        "at most {} sample Services fit the address plan",
        switchyard_tests::cluster::MAX_PODS_PER_NODE / 2
    );
    anyhow::ensure!(config.rate > 0.0, "the change rate must be positive");
    let ticks = cpu::clock_ticks()?;
    let plan = Plan::new(
        config.services,
        config.samples,
        config.endpoints_per_service,
    );
    eprintln!(
        "building the cluster: 1 node, {} real pods for {} sample Services",
        2 * config.samples,
        config.samples
    );
    let mut cluster = Cluster::new(1, 2 * config.samples)?;
    cluster.start_pod_servers()?;
    let mut pod_pids = Vec::new();
    for j in 0..2 * config.samples {
        if let Some(server) = cluster.pod_mut(0, j).server() {
            pod_pids.push(server.pid());
        }
    }
    let real = (0..config.samples)
        .map(|k| {
            let pod = |j: usize| {
                let p = cluster.pod(0, j);
                (p.ipv4(), p.name())
            };
            [pod(2 * k), pod(2 * k + 1)]
        })
        .collect();
    let mut api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let engine_config = EngineConfig {
        kubeconfig: api.kubeconfig(),
        plan: plan.clone(),
        real,
        rate: config.rate,
        step: config.step,
        grace: config.grace,
        probe_limit: config.probe_limit,
        client_log: cluster.scratch_dir().join("client.log"),
    };
    let client_command = cluster.client(0).command(client_argv(config, &plan));
    let net = cluster.net().path();
    let mut outcome = Outcome {
        plan: Some(plan),
        ..Outcome::default()
    };
    let mut daemon: Option<Daemon> = None;
    let mut driver = DriverOutcome::default();
    let mut env = Env {
        config,
        cluster: &cluster,
        api: &mut api,
        pod_pids,
        ticks,
    };
    let (driver_result, engine_result) = std::thread::scope(|scope| {
        let (to_engine, from_main) = tokio::sync::mpsc::unbounded_channel();
        let (to_main, from_engine) = std::sync::mpsc::channel();
        let engine = std::thread::Builder::new()
            .name("soak-engine".to_owned())
            .spawn_scoped(scope, move || {
                engine_thread(&net, engine_config, client_command, from_main, to_main)
            });
        let driver_result = match &engine {
            Ok(_) => drive(&mut env, &mut daemon, &mut driver, to_engine, &from_engine),
            Err(error) => Err(anyhow::anyhow!("start the engine's thread: {error}")),
        };
        let engine_result = match engine {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the engine panicked"))),
            Err(error) => Err(anyhow::anyhow!("{error}")),
        };
        (driver_result, engine_result)
    });
    match engine_result {
        Ok(engine) => {
            outcome.churn = engine.churn;
            outcome.client = engine.client;
        }
        Err(error) => {
            let message = format!("the engine: {error:#}");
            eprintln!("{message}");
            outcome.failure = Some(message);
        }
    }
    if let Err(error) = driver_result {
        let message = format!("{error:#}");
        eprintln!("the run stopped early: {message}");
        outcome.failure = Some(match outcome.failure.take() {
            Some(engine) => format!("{message}; {engine}"),
            None => message,
        });
    }
    if let Some(daemon) = daemon.as_mut() {
        if let Ok(Some(status)) = daemon.try_wait() {
            driver.exits.push(format!("daemon: {status}"));
        }
        outcome
            .problems
            .extend(problems_in("daemon", &daemon.log()));
    }
    if let Ok(Some(status)) = api.try_wait() {
        driver.exits.push(format!("apiserver: {status}"));
    }
    outcome
        .problems
        .extend(problems_in("apiserver", &api.log()));
    outcome.daemon_healthy_s = driver.daemon_healthy_s;
    outcome.programmed_s = driver.programmed_s;
    outcome.daemon_after_load = driver.daemon_after_load;
    outcome.t0_ns = driver.t0_ns;
    outcome.soak_s = driver.soak_s;
    outcome.samples = driver.samples;
    outcome.metrics = driver.metrics;
    outcome.check = driver.check;
    outcome.exits = driver.exits;
    drop(daemon);
    drop(api);
    drop(cluster);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_datapath_is_compared_service_by_service() {
        let set = |items: &[&str]| {
            items
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>()
        };
        let expected = BTreeMap::from([
            ("default/svc-0:http".to_owned(), set(&["10.225.0.1:8080"])),
            ("default/svc-1:http".to_owned(), set(&["10.225.0.2:8080"])),
            ("default/svc-2:http".to_owned(), set(&[])),
        ]);
        let kernel = BTreeMap::from([
            ("default/svc-0:http".to_owned(), set(&["10.225.0.1:8080"])),
            (
                "default/svc-1:http".to_owned(),
                set(&["10.225.0.2:8080", "10.225.0.9:8080"]),
            ),
            (
                "default/kubernetes:https".to_owned(),
                set(&["192.168.0.1:6443"]),
            ),
        ]);
        let (matching, differences) = compare_backends(&expected, &kernel);
        // svc-2 has no frontend with backends: as expected.
        assert_eq!(matching, 2);
        assert_eq!(differences.len(), 1);
        assert!(differences[0].contains("svc-1") && differences[0].contains("10.225.0.9"));
    }

    #[test]
    fn log_problems_are_grouped_by_message() {
        let log = "2026-12-03T15:00:00.1Z  INFO switchyard: started\n\
                   2026-12-03T15:00:01.1Z  WARN switchyard::source: watch failed kind=Pod\n\
                   2026-12-03T15:00:02.2Z  WARN switchyard::source: watch failed kind=Pod\n\
                   2026-12-03T15:00:03.3Z ERROR switchyard::datapath: map full\n\
                   thread 'main' panicked at src/x.rs:1:1\n";
        let problems = problems_in("daemon", log);
        assert_eq!(problems.len(), 3);
        assert_eq!(problems[0].count, 2);
        assert!(problems[0].first.starts_with("2026-12-03T15:00:01.1Z"));
        assert_eq!(problems[1].count, 1);
        assert!(problems[2].first.contains("panicked"));
        assert!(problems_in("daemon", "all fine\n").is_empty());
    }
}
