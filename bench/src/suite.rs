//! The comparison run: one topology, three ways to reach the same pods, the
//! same load against each, in interleaved rounds.
//!
//! ```text
//!  client ns (loadgen, CPU 0)        node ns                          pod ns ×3
//!  10.0.0.2 ──────────────────► direct: forwarded ─────────────────► pod-server :8080
//!                               switchyard  10.96.0.10:80 (CPU 1) ─►  (CPU 0)
//!                               HAProxy     10.0.0.1:8081 (CPU 1) ─►
//! ```
//!
//! Both proxies run the whole time, but only one is ever under load. The
//! proxies are pinned to one CPU and everything else (load generator, pod
//! servers) to the other, so a proxy competes with nothing of the
//! benchmark's own for its CPU.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_tests::topology::{NODE_IP4, POD_HTTP_PORT};
use switchyard_tests::{Daemon, Manifests, Process, Topology, client, objects, poll_until};

use crate::cpu::{self, CpuTimes, ThreadAffinity};
use crate::haproxy::{self, HaproxyConfig};
use crate::loadgen::{LoadResult, Scenario};

/// The Service's cluster IP.
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service's port.
pub const SERVICE_PORT: u16 = 80;
/// Where HAProxy listens, on the node's address on the client link.
pub const HAPROXY_PORT: u16 = 8081;
/// How many pods serve the Service.
pub const PODS: usize = 3;

/// One way to reach the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Straight to the pod addresses (round-robin in the client), forwarded
    /// by the node's kernel: the anchor with no proxy.
    Direct,
    /// The Service VIP, served by switchyard's userspace L4 proxy.
    Switchyard,
    /// HAProxy in `mode tcp`.
    Haproxy,
}

impl Target {
    /// Every target, in the order of a round.
    pub const ALL: [Target; 3] = [Target::Direct, Target::Switchyard, Target::Haproxy];

    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Switchyard => "switchyard",
            Self::Haproxy => "haproxy",
        }
    }
}

/// The programs the run starts (pod-server is found by the topology
/// library, the switchyard binary by `$SWITCHYARD_BIN`).
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// The load generator binary.
    pub loadgen: PathBuf,
    /// One measurement window.
    pub duration: Duration,
    /// A short unrecorded run per target before the first round.
    pub warmup: Duration,
    /// Idle time between two measurements (sockets in `TIME_WAIT` settle);
    /// also the window in which the machine's background load is sampled.
    pub pause: Duration,
    /// Before a measurement, wait (up to `quiet_wait`) until no CPU was
    /// busier than this fraction during a pause: other tenants of a shared
    /// machine come and go.
    pub quiet_threshold: f64,
    /// The longest wait for a quiet machine; the run goes ahead after it.
    pub quiet_wait: Duration,
    /// Rounds; each measures every scenario on every target once.
    pub repeats: usize,
    /// Concurrent workers of the connection scenario.
    pub cps_workers: usize,
    /// Connections of the bulk scenario.
    pub bulk_connections: usize,
    /// Size of one bulk download.
    pub body_bytes: u64,
    /// Cap on the requests one load run may start.
    pub max_requests: u64,
    /// The CPU the proxy under test runs on.
    pub proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    pub load_cpu: usize,
}

/// One load run against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// Which round (0-based).
    pub round: usize,
    /// Against what.
    pub target: Target,
    /// What.
    pub scenario: Scenario,
    /// What the load generator measured, unless the run failed.
    pub result: Option<LoadResult>,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// CPU time the proxy under test used during the run, in seconds.
    pub proxy_cpu_s: Option<f64>,
    /// Fraction of time each CPU was busy during the run (machine-wide: other
    /// tenants' work shows here too).
    pub cpu_busy: Vec<f64>,
    /// Fraction of time each CPU was busy in the pause just before the run,
    /// while the benchmark itself was idle: other tenants' load.
    pub background_busy: Vec<f64>,
    /// How long the run waited for the machine to be quiet, in seconds.
    pub quiet_wait_s: f64,
    /// Warnings and errors switchyard logged during the run.
    pub switchyard_log: Vec<String>,
}

/// How the run was set up, as checked at its start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Setup {
    /// Pod names in the order 9 fresh connections reached them, per proxy
    /// (or why that check failed).
    pub round_robin: BTreeMap<Target, Result<Vec<String>, String>>,
    /// Warm-up runs that failed (the measurements still run).
    pub warmup_failures: Vec<String>,
    /// switchyard's threads and their CPUs, at the start (checked to be
    /// pinned to the proxy CPU).
    pub switchyard_threads: Vec<ThreadAffinity>,
    /// HAProxy's threads and their CPUs, at the start.
    pub haproxy_threads: Vec<ThreadAffinity>,
    /// The pod servers' threads and their CPUs.
    pub pod_server_threads: Vec<ThreadAffinity>,
    /// The `pod-server` binary.
    pub pod_server_bin: String,
    /// The load generator binary.
    pub loadgen_bin: String,
    /// The HAProxy configuration used.
    pub haproxy_config: String,
    /// The Service manifest given to switchyard.
    pub service_manifest: serde_json::Value,
}

/// Everything the run saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// How it was set up.
    pub setup: Setup,
    /// Every measurement, in the order taken.
    pub measurements: Vec<Measurement>,
    /// switchyard's threads at the end, with the CPU time each used: shows
    /// how many of them did the proxying.
    pub switchyard_threads_after: Vec<ThreadAffinity>,
    /// HAProxy's threads at the end, with their CPU time.
    pub haproxy_threads_after: Vec<ThreadAffinity>,
    /// If switchyard exited during the run: how, and the end of its log.
    pub switchyard_exit: Option<String>,
    /// Every warning or error line switchyard logged, first ones only.
    pub switchyard_problems: Vec<String>,
}

/// How many warning lines are kept per run and overall.
const LOG_LINES_KEPT: usize = 40;

fn problem_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| {
            line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked")
        })
        .take(LOG_LINES_KEPT)
        .map(str::to_owned)
        .collect()
}

/// The running pieces.
struct Bench {
    config: SuiteConfig,
    ticks_per_s: u64,
    // Field order is drop order: proxies first, then the topology.
    haproxy: Process,
    daemon: Daemon,
    topo: Topology,
    switchyard_exit: Option<String>,
}

impl Bench {
    fn addresses(&self, target: Target) -> Vec<SocketAddr> {
        match target {
            Target::Direct => self
                .topo
                .pods()
                .iter()
                .map(|pod| SocketAddr::new(IpAddr::V4(pod.ipv4()), POD_HTTP_PORT))
                .collect(),
            Target::Switchyard => vec![SocketAddr::new(IpAddr::V4(SERVICE_VIP), SERVICE_PORT)],
            Target::Haproxy => vec![SocketAddr::new(IpAddr::V4(NODE_IP4), HAPROXY_PORT)],
        }
    }

    fn proxy_pid(&self, target: Target) -> Option<u32> {
        match target {
            Target::Direct => None,
            Target::Switchyard => Some(self.daemon.pid()),
            Target::Haproxy => Some(self.haproxy.pid()),
        }
    }

    /// Runs the load generator once in the client namespace.
    fn load(&self, target: Target, scenario: Scenario, duration: Duration) -> Result<LoadResult> {
        let config = &self.config;
        let workers = match scenario {
            Scenario::Cps => config.cps_workers,
            Scenario::Bulk => config.bulk_connections,
        };
        let mut argv: Vec<String> = vec![
            "taskset".into(),
            "-c".into(),
            config.load_cpu.to_string(),
            config.loadgen.to_string_lossy().into_owned(),
            "--scenario".into(),
            scenario.as_str().into(),
            "--workers".into(),
            workers.to_string(),
            "--duration".into(),
            format!("{}ms", duration.as_millis()),
            "--body-bytes".into(),
            config.body_bytes.to_string(),
            "--max-requests".into(),
            config.max_requests.to_string(),
        ];
        for addr in self.addresses(target) {
            argv.extend(["--target".into(), addr.to_string()]);
        }
        // The generator stops itself at the deadline; this only catches a hang.
        let output =
            self.topo
                .client()
                .exec_with(&argv, None, duration + Duration::from_mins(1))?;
        if !output.status.success() {
            bail!(
                "loadgen {scenario} against {} failed ({}): {}",
                target.as_str(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "loadgen printed no result: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    fn switchyard_alive(&mut self) -> bool {
        if self.switchyard_exit.is_some() {
            return false;
        }
        match self.daemon.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.switchyard_exit = Some(format!(
                    "switchyard exited ({status}); last log lines:\n{}",
                    self.daemon.log_tail(60)
                ));
                false
            }
            Err(error) => {
                self.switchyard_exit = Some(format!("cannot wait for switchyard: {error:#}"));
                false
            }
        }
    }

    /// Sleeps for the pause, sampling how busy the CPUs were meanwhile, and
    /// goes on sleeping (up to the quiet wait) while some CPU was busier than
    /// the threshold. Returns the last sample and the extra time waited.
    #[allow(
        clippy::disallowed_types,
        reason = "synchronous orchestration, no runtime: std's clock is the right one"
    )]
    fn settle(&self) -> (Vec<f64>, f64) {
        let start = std::time::Instant::now();
        loop {
            let before = CpuTimes::read().ok();
            std::thread::sleep(self.config.pause);
            let busy = match (before, CpuTimes::read().ok()) {
                (Some(before), Some(after)) => after.busy_since(&before),
                _ => Vec::new(),
            };
            let waited = start.elapsed().saturating_sub(self.config.pause);
            let quiet = busy.iter().all(|&b| b <= self.config.quiet_threshold);
            if quiet || waited >= self.config.quiet_wait {
                return (busy, waited.as_secs_f64());
            }
        }
    }

    fn measure(&mut self, round: usize, target: Target, scenario: Scenario) -> Measurement {
        let mut measurement = Measurement {
            round,
            target,
            scenario,
            result: None,
            failure: None,
            proxy_cpu_s: None,
            cpu_busy: Vec::new(),
            background_busy: Vec::new(),
            quiet_wait_s: 0.0,
            switchyard_log: Vec::new(),
        };
        (measurement.background_busy, measurement.quiet_wait_s) = self.settle();
        if target == Target::Switchyard && !self.switchyard_alive() {
            measurement.failure = Some("switchyard is not running".to_owned());
            return measurement;
        }
        let log_before = self.daemon.log().len();
        let pid = self.proxy_pid(target);
        let proxy_before = pid.and_then(|pid| cpu::process_time(pid, self.ticks_per_s).ok());
        let cpus_before = CpuTimes::read().ok();
        let result = self.load(target, scenario, self.config.duration);
        let cpus_after = CpuTimes::read().ok();
        let proxy_after = pid.and_then(|pid| cpu::process_time(pid, self.ticks_per_s).ok());
        if let (Some(before), Some(after)) = (proxy_before, proxy_after) {
            measurement.proxy_cpu_s = Some(after.saturating_sub(before).as_secs_f64());
        }
        if let (Some(before), Some(after)) = (cpus_before, cpus_after) {
            measurement.cpu_busy = after.busy_since(&before);
        }
        let log = self.daemon.log();
        measurement.switchyard_log = problem_lines(log.get(log_before..).unwrap_or_default());
        match result {
            Ok(result) => measurement.result = Some(result),
            Err(error) => measurement.failure = Some(format!("{error:#}")),
        }
        if target == Target::Switchyard && !self.switchyard_alive() {
            let exit = self.switchyard_exit.clone().unwrap_or_default();
            measurement.failure = Some(match measurement.failure.take() {
                Some(failure) => format!("{failure}; {exit}"),
                None => exit,
            });
        }
        measurement
    }
}

/// The Service switchyard serves: the VIP, port 80 to 8080, round-robin.
fn service_manifest() -> serde_json::Value {
    let mut service = objects::Service::new("web")
        .cluster_ips(&[&SERVICE_VIP.to_string()])
        .selector("app", "web")
        .port(objects::ServicePort::tcp(
            "http",
            SERVICE_PORT,
            POD_HTTP_PORT,
        ))
        .to_value();
    // The same algorithm as HAProxy's `balance roundrobin`.
    service["metadata"]["annotations"] = json!({"switchyard.io/lb-algorithm": "round-robin"});
    service
}

/// Waits until `url` answers 200 from the client.
fn wait_answering(topo: &Topology, url: &str) -> Result<()> {
    poll_until(
        &format!("{url} to answer from the client"),
        Duration::from_secs(20),
        || Ok(client::curl_once(topo.client(), url).ok()),
    )?;
    Ok(())
}

/// Builds the topology, starts the pods and both proxies, checks the
/// setup, and runs every measurement. Everything started is stopped and
/// every namespace deleted when this returns, also on error.
pub fn run(config: &SuiteConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    let ticks_per_s = cpu::clock_ticks()?;
    // Everything spawned from here on starts on the load CPU, unless
    // spawned inside `cpu::with_cpu`.
    cpu::pin_this_thread(&[config.load_cpu])?;

    let mut setup = Setup {
        pod_server_bin: switchyard_tests::topology::pod_server_bin()?
            .to_string_lossy()
            .into_owned(),
        loadgen_bin: config.loadgen.to_string_lossy().into_owned(),
        ..Setup::default()
    };
    let mut topo = Topology::new(PODS)?;
    topo.start_pod_servers()?;
    for index in 0..PODS {
        let pid = topo
            .pod_mut(index)
            .server()
            .map(|server| server.pid())
            .context("pod server not started")?;
        setup.pod_server_threads.extend(cpu::check_pinned(
            "pod-server",
            pid,
            config.load_cpu,
            ticks_per_s,
        )?);
    }
    // Hundreds of thousands of short connections per run: use the whole
    // port range and reuse TIME_WAIT ports for outgoing connections.
    for ns in [topo.client(), topo.node()] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }

    let manifests = Manifests::new_in(topo.scratch_dir())?;
    setup.service_manifest = service_manifest();
    let mut documents = vec![setup.service_manifest.clone()];
    documents.extend((0..PODS).map(|index| objects::Pod::web(&topo, index).to_value()));
    manifests.write_objects("web.yaml", &documents)?;

    let daemon = cpu::with_cpu(config.proxy_cpu, || topo.start_daemon(&manifests))?;
    daemon.with_log(wait_answering(
        &topo,
        &format!("http://{SERVICE_VIP}:{SERVICE_PORT}/"),
    ))?;
    setup.switchyard_threads =
        cpu::check_pinned("switchyard", daemon.pid(), config.proxy_cpu, ticks_per_s)?;

    let haproxy_config = HaproxyConfig {
        bind: SocketAddr::new(IpAddr::V4(NODE_IP4), HAPROXY_PORT),
        servers: (0..PODS)
            .map(|index| SocketAddr::new(IpAddr::V4(topo.pod(index).ipv4()), POD_HTTP_PORT))
            .collect(),
        maxconn: haproxy::maxconn_for_fd_limit(50_000),
    };
    setup.haproxy_config = haproxy_config.render();
    let mut haproxy = haproxy::start(
        topo.node(),
        &haproxy_config,
        &topo.scratch_dir().join("haproxy.cfg"),
        &topo.scratch_dir().join("haproxy.log"),
        config.proxy_cpu,
    )?;
    let url = format!("http://{NODE_IP4}:{HAPROXY_PORT}/");
    let answering = poll_until(
        &format!("{url} to answer from the client"),
        Duration::from_secs(20),
        || {
            if let Some(status) = haproxy.try_wait()? {
                bail!("haproxy exited ({status})");
            }
            Ok(client::curl_once(topo.client(), &url).ok())
        },
    );
    answering.with_context(|| format!("haproxy log:\n{}", haproxy.log()))?;
    setup.haproxy_threads =
        cpu::check_pinned("haproxy", haproxy.pid(), config.proxy_cpu, ticks_per_s)?;

    let mut bench = Bench {
        config: config.clone(),
        ticks_per_s,
        haproxy,
        daemon,
        topo,
        switchyard_exit: None,
    };
    for target in [Target::Switchyard, Target::Haproxy] {
        let url = match target {
            Target::Switchyard => format!("http://{SERVICE_VIP}:{SERVICE_PORT}/"),
            _ => format!("http://{NODE_IP4}:{HAPROXY_PORT}/"),
        };
        let names = client::curl_many(bench.topo.client(), &url, 3 * PODS)
            .map_err(|error| format!("{error:#}"));
        setup.round_robin.insert(target, names);
    }

    for target in Target::ALL {
        eprintln!("warm-up: {} ({:?})", target.as_str(), config.warmup);
        if let Err(error) = bench.load(target, Scenario::Cps, config.warmup) {
            eprintln!("warm-up against {} failed: {error:#}", target.as_str());
            setup
                .warmup_failures
                .push(format!("{}: {error:#}", target.as_str()));
        }
    }

    let total = config.repeats * 2 * Target::ALL.len();
    let mut measurements = Vec::with_capacity(total);
    for round in 0..config.repeats {
        for scenario in [Scenario::Cps, Scenario::Bulk] {
            for target in Target::ALL {
                let measurement = bench.measure(round, target, scenario);
                eprintln!(
                    "[{}/{total}] round {} {scenario} {}: {}",
                    measurements.len() + 1,
                    round + 1,
                    target.as_str(),
                    describe(&measurement)
                );
                measurements.push(measurement);
            }
        }
    }

    let switchyard_threads_after = if bench.switchyard_alive() {
        cpu::threads(bench.daemon.pid(), ticks_per_s).unwrap_or_default()
    } else {
        Vec::new()
    };
    let haproxy_threads_after = cpu::threads(bench.haproxy.pid(), ticks_per_s).unwrap_or_default();
    Ok(Outcome {
        switchyard_threads_after,
        haproxy_threads_after,
        setup,
        measurements,
        switchyard_problems: problem_lines(&bench.daemon.log()),
        switchyard_exit: bench.switchyard_exit.clone(),
    })
}

/// One line for the progress log.
fn describe(measurement: &Measurement) -> String {
    match (&measurement.result, &measurement.failure) {
        (_, Some(failure)) => format!("FAILED: {failure}"),
        (Some(result), None) => {
            let value = match result.scenario {
                Scenario::Cps => format!("{:.0} conn/s", result.completed_per_s),
                Scenario::Bulk => format!("{:.0} MB/s", result.mb_per_s),
            };
            let cpu = measurement
                .proxy_cpu_s
                .map(|s| format!(", proxy CPU {:.0}%", 100.0 * s / result.duration_s))
                .unwrap_or_default();
            let background: Vec<String> = measurement
                .background_busy
                .iter()
                .map(|busy| format!("{:.0}%", busy * 100.0))
                .collect();
            format!(
                "{value}, {} errors{cpu} (background load before: {}, waited {:.0} s)",
                result.errors,
                background.join("/"),
                measurement.quiet_wait_s
            )
        }
        (None, None) => "no result".to_owned(),
    }
}
