//! `nodeport`: a NodePort Service reached from outside the cluster, with its
//! only endpoint on another node than the one the client connects to,
//! through switchyard's tc eBPF datapath and through kube-proxy's iptables
//! rules, against a direct connection to the pod, in one run on one
//! topology.
//!
//! ```text
//!  external ns  192.168.0.200 ──┐ bridge br0 (network ns)
//!    loadgen, keepalive probe   │
//!                               ├── node 0  eth0 192.168.0.10   <- the target under test:
//!                               │     :30080 NodePort               switchyard's tc programs,
//!                               │                                   or kube-proxy's rules
//!                               └── node 1  eth0 192.168.0.11 ── pod web-1-0 10.244.1.10:8080
//! ```
//!
//! - **direct**: the client connects to 10.244.1.10:8080, routed via
//!   node 1 (a route added to the external client for this run): no
//!   Service, no NAT. The anchor.
//! - **NodePort targets**: the client connects to 192.168.0.10:30080; node
//!   0 picks the endpoint, rewrites the destination, and (the pod being
//!   remote) the source to its own address, and forwards over the bridge to
//!   node 1; the replies come back through node 0.
//!
//! Node 1 runs no proxy for any target but `switchyard-dsr` (direct server
//! return needs switchyard on the backend's node), so the other targets differ
//! only in node 0. The API server holds the Node objects (with their `InternalIP`), the
//! Service (type NodePort, `externalTrafficPolicy: Cluster`) and the Pod;
//! switchyard reads them, and kube-proxy's rules are written from the same
//! description ([`service`]).
//!
//! One target is set up at a time ([`targets`]), in rounds: each round sets
//! every target up in turn, checks that it answers with the right pod and
//! the right client address, measures it ([`load`]) and tears it down, so
//! switchyard never runs while kube-proxy's rules are measured, and the
//! reverse. The report ([`report`]) shows medians over the rounds and the
//! ratios to direct.

pub mod interrupt;
pub mod iptables;
pub mod keepalive;
pub mod load;
pub mod report;
pub mod service;
pub mod targets;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::{ApiServer, Cluster, Netns, objects};

use crate::cpu::{self, CpuTimes};
use load::{Load, RunResult};
use service::NodePortService;
use targets::{SetupInfo, Target, TearDownInfo, Validation};

/// The node whose NodePort the client connects to.
pub const ENTRY_NODE: usize = 0;
/// The node the pod runs on.
pub const POD_NODE: usize = 1;

/// How the run is done; built once from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The load generator binary.
    pub loadgen: PathBuf,
    /// This program (its hidden `keepalive` subcommand is the latency probe).
    pub exe: PathBuf,
    /// The targets, in the order of a round.
    pub targets: Vec<Target>,
    /// Rounds; the report shows medians over them.
    pub rounds: usize,
    /// One measurement window.
    pub duration: Duration,
    /// An unrecorded run per target and round before its measurements.
    pub warmup: Duration,
    /// Idle time before each measurement, in which the CPUs are sampled.
    pub pause: Duration,
    /// A CPU busier than this fraction in the pause makes the run wait.
    pub quiet_threshold: f64,
    /// The longest such wait.
    pub quiet_wait: Duration,
    /// The loads, in order, per target and round.
    pub loads: Vec<Load>,
    /// Cap on the requests one load run may start.
    pub max_requests: u64,
    /// The CPU of the daemon, the API server and the rule loads.
    pub proxy_cpu: usize,
    /// The CPU of the load, the pod servers and so of the packets' work.
    pub load_cpu: usize,
    /// The longest wait for a target to answer once set up.
    pub ready_timeout: Duration,
    /// kube-proxy's `--cluster-cidr` for its rules.
    pub cluster_cidr: String,
    /// `net.ipv4.tcp_timestamps` in the external client's namespace, if set
    /// (see the field's flag in the binary: 2 keeps one client's
    /// timestamps monotonic across its connections).
    pub client_tcp_timestamps: Option<u8>,
    /// Prepare the bridge for XDP before the first round (some target needs
    /// it; see [`Target::needs_xdp_bridge`]).
    pub xdp_bridge: bool,
}

/// What the targets need to know of the topology.
#[derive(Debug)]
pub struct Scene<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The API server's kubeconfig (for the daemon).
    pub kubeconfig: PathBuf,
    /// The Service measured.
    pub service: NodePortService,
    /// The run's settings.
    pub config: &'a RunConfig,
}

/// A target as the report describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// What carries its connections.
    pub summary: String,
    /// Where the client connects.
    pub address: String,
}

/// One load run against one target in one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// Which round (0-based).
    pub round: usize,
    /// Which target.
    pub target: String,
    /// Which load.
    pub load: Load,
    /// What it measured, unless it failed.
    pub result: Option<RunResult>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Fraction of time each CPU was busy during the run (machine-wide).
    pub cpu_busy: Vec<f64>,
    /// The same in the idle pause before: other tenants' load.
    pub background_busy: Vec<f64>,
    /// How long the run waited for a quiet machine, seconds.
    pub quiet_wait_s: f64,
    /// CPU time the switchyard daemon used during the run, seconds.
    pub daemon_cpu_s: Option<f64>,
    /// Conntrack entries in node 0 after the run.
    pub node_conntrack: Option<u64>,
    /// SYNs the external client retransmitted during the run
    /// (`TcpExt.TCPSynRetrans`): each is a connection that waited a second.
    pub client_syn_retransmits: Option<u64>,
    /// SYNs the pod dropped on a TIME_WAIT socket with newer timestamps
    /// during the run (`TcpExt.PAWSTimewait`): a source port reused too soon.
    pub pod_paws_rejects: Option<u64>,
}

/// One target in one round: set-up, validation, tear-down.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetRound {
    /// Which round (0-based).
    pub round: usize,
    /// Which target.
    pub target: String,
    /// How it was set up.
    pub setup: SetupInfo,
    /// What the checks before measuring saw.
    pub validation: Option<Validation>,
    /// Why it could not be set up or did not answer right (it is then not
    /// measured in this or any later round).
    pub failure: Option<String>,
    /// What tearing it down found.
    pub teardown: TearDownInfo,
    /// Why it could not be torn down cleanly (the run stops).
    pub teardown_failure: Option<String>,
    /// The warm-up run's failure, if any.
    pub warmup_failure: Option<String>,
}

/// Everything the run measured and saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The targets, in round order.
    pub targets: Vec<TargetInfo>,
    /// The Service measured.
    pub service: Option<NodePortService>,
    /// Per target and round.
    pub rounds: Vec<TargetRound>,
    /// Every load run, in the order taken.
    pub measurements: Vec<Measurement>,
}

impl Outcome {
    /// The targets that failed their set-up or validation, with the first
    /// reason.
    pub fn failed_targets(&self) -> Vec<(String, String)> {
        let mut failed: Vec<(String, String)> = Vec::new();
        for round in &self.rounds {
            if let Some(why) = round.failure.as_ref().or(round.teardown_failure.as_ref())
                && !failed.iter().any(|(name, _)| name == &round.target)
            {
                failed.push((round.target.clone(), why.clone()));
            }
        }
        failed
    }
}

/// Sleeps for the pause, sampling the CPUs, and goes on (up to the quiet
/// wait) while one was busier than the threshold. Returns the last sample
/// and the extra time waited.
#[allow(
    clippy::disallowed_types,
    reason = "synchronous orchestration, no runtime: std's clock is the right one"
)]
fn settle(config: &RunConfig) -> (Vec<f64>, f64) {
    let start = std::time::Instant::now();
    loop {
        let before = CpuTimes::read().ok();
        std::thread::sleep(config.pause);
        let busy = match (before, CpuTimes::read().ok()) {
            (Some(before), Some(after)) => after.busy_since(&before),
            _ => Vec::new(),
        };
        let waited = start.elapsed().saturating_sub(config.pause);
        if busy.iter().all(|&b| b <= config.quiet_threshold) || waited >= config.quiet_wait {
            return (busy, waited.as_secs_f64());
        }
    }
}

fn daemon_cpu(pid: Option<u32>) -> Option<Duration> {
    let pid = pid?;
    cpu::clock_ticks()
        .and_then(|ticks| cpu::process_time(pid, ticks))
        .ok()
}

fn node_conntrack(scene: &Scene<'_>) -> Option<u64> {
    scene
        .cluster
        .node(ENTRY_NODE)
        .run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// `TcpExt` counters of `ns` (`/proc/net/netstat`: a line of names, then a
/// line of values).
fn tcp_ext(ns: &Netns) -> Option<BTreeMap<String, u64>> {
    let text = ns.run(["cat", "/proc/net/netstat"]).ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    Some(
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
            .collect(),
    )
}

/// How much counter `name` grew from `before` to `after`.
fn grew(
    before: Option<&BTreeMap<String, u64>>,
    after: Option<&BTreeMap<String, u64>>,
    name: &str,
) -> Option<u64> {
    Some(after?.get(name)?.saturating_sub(*before?.get(name)?))
}

/// One line for the progress log.
pub fn describe(m: &Measurement) -> String {
    match (&m.result, &m.failure) {
        (_, Some(failure)) => format!("FAILED: {failure}"),
        (Some(r), None) => {
            let latency = r.latency().map_or(String::new(), |l| {
                format!(", p50 {} us, p99 {} us", l.p50_us, l.p99_us)
            });
            let background: Vec<String> = m
                .background_busy
                .iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect();
            format!(
                "{:.0}/s{latency}, {} errors, {} SYN retransmits (background {}, waited {:.0} s)",
                r.rate(),
                r.errors(),
                m.client_syn_retransmits
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                background.join("/"),
                m.quiet_wait_s
            )
        }
        (None, None) => "no result".to_owned(),
    }
}

/// Sets `target` up, validates, measures every load, tears it down.
fn run_target(
    scene: &Scene<'_>,
    target: Target,
    round: usize,
    measurements: &mut Vec<Measurement>,
) -> TargetRound {
    let config = scene.config;
    let mut record = TargetRound {
        round,
        target: target.name.to_owned(),
        ..TargetRound::default()
    };
    let addr = targets::address(scene, target);
    let (mut active, setup) = match targets::set_up(scene, target) {
        Ok(done) => done,
        Err(error) => {
            record.failure = Some(format!("set-up: {error:#}"));
            // The failed set-up dropped its own state; the next target must
            // not find it either.
            if let Err(error) = targets::ensure_closed(scene, "after a failed set-up") {
                record.teardown_failure = Some(format!("{error:#}"));
            }
            return record;
        }
    };
    record.setup = setup;
    match targets::validate(scene, target) {
        Ok(validation) => record.validation = Some(validation),
        Err(error) => record.failure = Some(format!("validation: {error:#}")),
    }
    if record.failure.is_none() {
        if !config.warmup.is_zero()
            && let Err(error) = load::run(
                config,
                scene.cluster.external(),
                Load::Connections { in_flight: 32 },
                addr,
                config.warmup,
                &scene.service.pod_name,
            )
        {
            record.warmup_failure = Some(format!("{error:#}"));
        }
        for &load in &config.loads {
            let mut m = Measurement {
                round,
                target: target.name.to_owned(),
                load,
                result: None,
                failure: None,
                cpu_busy: Vec::new(),
                background_busy: Vec::new(),
                quiet_wait_s: 0.0,
                daemon_cpu_s: None,
                node_conntrack: None,
                client_syn_retransmits: None,
                pod_paws_rejects: None,
            };
            (m.background_busy, m.quiet_wait_s) = settle(config);
            let pid = active.daemon_pid();
            let cpu_before = daemon_cpu(pid);
            let client_before = tcp_ext(scene.cluster.external());
            let pod_before = tcp_ext(scene.cluster.pod(POD_NODE, 0).ns());
            let before = CpuTimes::read().ok();
            let result = load::run(
                config,
                scene.cluster.external(),
                load,
                addr,
                config.duration,
                &scene.service.pod_name,
            );
            if let (Some(before), Some(after)) = (before, CpuTimes::read().ok()) {
                m.cpu_busy = after.busy_since(&before);
            }
            if let (Some(before), Some(after)) = (cpu_before, daemon_cpu(pid)) {
                m.daemon_cpu_s = Some(after.saturating_sub(before).as_secs_f64());
            }
            m.node_conntrack = node_conntrack(scene);
            m.client_syn_retransmits = grew(
                client_before.as_ref(),
                tcp_ext(scene.cluster.external()).as_ref(),
                "TCPSynRetrans",
            );
            m.pod_paws_rejects = grew(
                pod_before.as_ref(),
                tcp_ext(scene.cluster.pod(POD_NODE, 0).ns()).as_ref(),
                "PAWSTimewait",
            );
            match result {
                Ok(result) => m.result = Some(result),
                Err(error) => m.failure = Some(format!("{error:#}")),
            }
            if let Err(error) = active.check_running() {
                m.failure = Some(format!("{error:#}"));
                record.failure = Some(format!("during the load: {error:#}"));
            }
            eprintln!(
                "  round {}/{} {:<24} {:<20} {}",
                round + 1,
                config.rounds,
                target.name,
                load.to_string(),
                describe(&m)
            );
            measurements.push(m);
            if record.failure.is_some() {
                break;
            }
        }
    }
    match targets::tear_down(scene, target, active) {
        Ok(info) => record.teardown = info,
        Err(error) => record.teardown_failure = Some(format!("{error:#}")),
    }
    record
}

/// Builds the cluster, runs every round and tears everything down.
/// Targets that fail their set-up or validation are reported and not tried
/// again; a target that cannot be torn down stops the run (the next one
/// would measure its leftovers).
pub fn run(config: &RunConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    // Everything spawned from here on starts on the load CPU, unless spawned
    // inside `cpu::with_cpu` (the daemon, the API server) or a pinned loader
    // thread.
    cpu::pin_this_thread(&[config.load_cpu])?;
    let mut cluster = Cluster::new(2, 1)?;
    cluster.start_pod_servers()?;
    // Declared after the cluster: dropped (stopped) before it.
    let api = cpu::with_cpu(config.proxy_cpu, || {
        ApiServer::start(cluster.net(), cluster.scratch_dir())
    })?;
    let kubectl = api.kubectl();
    for i in [ENTRY_NODE, POD_NODE] {
        kubectl.apply_json(&objects::node(
            &cluster.node_name(i),
            &[IpAddr::V4(cluster.node_ip(i))],
        ))?;
    }
    let pod = cluster.pod(POD_NODE, 0);
    let service = NodePortService::web(pod.ipv4(), &pod.name(), &cluster.node_name(POD_NODE));
    if pod.server_name() != Some(service.pod_name.as_str()) {
        bail!(
            "the pod server on node 1 answers {:?}, not {}",
            pod.server_name(),
            service.pod_name
        );
    }
    kubectl.apply_json(&service.pod_object())?;
    kubectl.apply_json(&service.service_object())?;
    if config.xdp_bridge {
        cluster.prepare_xdp()?;
    }
    if let Some(value) = config.client_tcp_timestamps {
        cluster
            .external()
            .sysctl("net.ipv4.tcp_timestamps", &value.to_string())?;
    }
    // The anchor's route: the pod's address via its own node.
    cluster.external().run([
        "ip",
        "route",
        "add",
        &format!("10.244.{POD_NODE}.0/24"),
        "via",
        &cluster.node_ip(POD_NODE).to_string(),
        "dev",
        "eth0",
    ])?;
    let scene = Scene {
        cluster: &cluster,
        kubeconfig: api.kubeconfig(),
        service: service.clone(),
        config,
    };
    targets::ensure_closed(&scene, "before any target was set up")
        .context("the NodePort must not answer before a target serves it")?;
    let mut outcome = Outcome {
        targets: config
            .targets
            .iter()
            .map(|&t| TargetInfo {
                name: t.name.to_owned(),
                summary: t.summary.to_owned(),
                address: targets::address(&scene, t).to_string(),
            })
            .collect(),
        service: Some(service),
        ..Outcome::default()
    };
    let mut failed: Vec<&str> = Vec::new();
    'rounds: for round in 0..config.rounds {
        for &target in &config.targets {
            if failed.contains(&target.name) {
                continue;
            }
            eprintln!(
                "== round {}/{}: {} ({})",
                round + 1,
                config.rounds,
                target.name,
                targets::address(&scene, target)
            );
            let record = run_target(&scene, target, round, &mut outcome.measurements);
            if let Some(failure) = &record.failure {
                eprintln!("!! {} is NOT MEASURED from here on: {failure}", target.name);
                failed.push(target.name);
            }
            let stop = record.teardown_failure.clone();
            outcome.rounds.push(record);
            if let Some(why) = stop {
                eprintln!(
                    "!! {} could not be torn down, stopping the run: {why}",
                    target.name
                );
                break 'rounds;
            }
        }
    }
    drop(scene);
    drop(api);
    drop(cluster);
    Ok(outcome)
}
