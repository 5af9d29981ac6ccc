//! The L7 run: one topology, five ways to reach the same backends, the
//! same two loads against each, in interleaved rounds.
//!
//! ```text
//!  client ns (wrk, h2load: CPU 0)   node ns (proxies: CPU 1)                  pod ns ×3 (CPU 0)
//!  10.0.0.2 ───────────────────► direct: forwarded to pod 0 ────────────────► l7-backend :8080
//!                                nginx    10.0.0.1:8082 (h1), :8083 (h2c) ──►  HTTP/1.1 + h2c
//!                                HAProxy  10.0.0.1:8084 (h1), :8085 (h2c) ──►
//!                                switchyard 10.96.0.10:80 (upstream h2c) ───►
//!                                switchyard 10.96.0.11:80 (upstream h1) ────►
//! ```
//!
//! Every proxy runs the whole time, but only one is ever under load. The
//! proxies are pinned to one CPU and everything else (the load tools, the
//! backends) to the other.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_tests::topology::{NODE_IP4, POD_HTTP_PORT};
use switchyard_tests::{Daemon, Manifests, Netns, Process, Topology, client, objects, poll_until};

use super::backend::{NAME_PATH, READY};
use super::haproxy::{self as haproxy_http, HaproxyHttpConfig};
use super::load::{self, LoadResult, LoadShape, Scenario};
use super::memory::{self, Memory};
use super::nginx::{self, Nginx, NginxConfig};
use crate::cpu::{self, CpuTimes, ThreadAffinity};

/// The cluster IP of the Service whose port says `appProtocol:
/// kubernetes.io/h2c`: switchyard speaks HTTP/2 to the pods.
pub const SERVICE_H2C_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The cluster IP of the Service whose port says `appProtocol: http`:
/// switchyard speaks HTTP/1.1 to the pods over a pool of kept-alive
/// connections.
pub const SERVICE_HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// Both Services' port.
pub const SERVICE_PORT: u16 = 80;
/// Where every backend listens.
pub const BACKEND_PORT: u16 = POD_HTTP_PORT;
/// nginx's HTTP/1.1 listener, on the node's address on the client link.
pub const NGINX_HTTP1_PORT: u16 = 8082;
/// nginx's h2c listener.
pub const NGINX_H2C_PORT: u16 = 8083;
/// HAProxy's HTTP/1.1 frontend.
pub const HAPROXY_HTTP1_PORT: u16 = 8084;
/// HAProxy's h2c frontend.
pub const HAPROXY_H2C_PORT: u16 = 8085;
/// How many pods serve the Services.
pub const PODS: usize = 3;
/// Requests the balancing check sends over one connection.
pub const BALANCE_CHECK_REQUESTS: usize = 2 * PODS;

/// One way to reach the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Straight to pod 0, forwarded by the node's kernel: no proxy.
    Direct,
    /// nginx, `proxy_pass` with upstream keep-alive (HTTP/1.1 upstream).
    Nginx,
    /// HAProxy, `mode http` (HTTP/1.1 upstream).
    Haproxy,
    /// switchyard's L7 proxy on the `kubernetes.io/h2c` Service: h2c upstream.
    SwitchyardH2c,
    /// switchyard's L7 proxy on the `http` Service: HTTP/1.1 upstream.
    SwitchyardHttp,
}

impl Target {
    /// Every target, in the order of a round.
    pub const ALL: [Target; 5] = [
        Target::Direct,
        Target::Nginx,
        Target::Haproxy,
        Target::SwitchyardH2c,
        Target::SwitchyardHttp,
    ];

    /// The name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::SwitchyardH2c => "switchyard-h2c",
            Self::SwitchyardHttp => "switchyard-http",
        }
    }

    /// The target named `name`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|target| target.as_str() == name)
            .with_context(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown target {name:?} (known: {})", known.join(", "))
            })
    }

    /// Whether this is switchyard.
    pub fn is_switchyard(self) -> bool {
        matches!(self, Self::SwitchyardH2c | Self::SwitchyardHttp)
    }

    /// What the client connects to in `scenario`; `pod0` for direct.
    pub fn address(self, scenario: Scenario, pod0: Ipv4Addr) -> SocketAddr {
        let (ip, port) = match (self, scenario) {
            (Self::Direct, _) => (pod0, BACKEND_PORT),
            (Self::Nginx, Scenario::Http1) => (NODE_IP4, NGINX_HTTP1_PORT),
            (Self::Nginx, Scenario::H2c) => (NODE_IP4, NGINX_H2C_PORT),
            (Self::Haproxy, Scenario::Http1) => (NODE_IP4, HAPROXY_HTTP1_PORT),
            (Self::Haproxy, Scenario::H2c) => (NODE_IP4, HAPROXY_H2C_PORT),
            (Self::SwitchyardH2c, _) => (SERVICE_H2C_VIP, SERVICE_PORT),
            (Self::SwitchyardHttp, _) => (SERVICE_HTTP_VIP, SERVICE_PORT),
        };
        SocketAddr::new(IpAddr::V4(ip), port)
    }
}

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct L7Config {
    /// The `l7-backend` binary.
    pub backend_bin: PathBuf,
    /// One measurement window (whole seconds for wrk).
    pub duration: Duration,
    /// An unrecorded run per target and scenario before the first round.
    pub warmup: Duration,
    /// Idle time before each measurement; also the window in which the
    /// machine's background load is sampled.
    pub pause: Duration,
    /// Before a measurement, wait (up to `quiet_wait`) until no CPU was
    /// busier than this fraction during a pause.
    pub quiet_threshold: f64,
    /// The longest wait for a quiet machine.
    pub quiet_wait: Duration,
    /// Rounds; each measures every scenario on every target once.
    pub repeats: usize,
    /// The targets, in round order.
    pub targets: Vec<Target>,
    /// How hard the tools push.
    pub shape: LoadShape,
    /// nginx's upstream `keepalive`.
    pub nginx_keepalive: usize,
    /// Measure switchyard even where its balancing check shows no
    /// per-request balancing (its numbers are then not an L7 proxy's).
    pub measure_unbalanced: bool,
    /// The CPU of the proxies.
    pub proxy_cpu: usize,
    /// The CPU of the load tools and the backends.
    pub load_cpu: usize,
}

/// One load run against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// Which round (0-based).
    pub round: usize,
    /// Against what.
    pub target: Target,
    /// Which load.
    pub scenario: Scenario,
    /// What the tool measured, unless the run failed.
    pub result: Option<LoadResult>,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// CPU time the proxy's processes used during the run, seconds.
    pub proxy_cpu_s: Option<f64>,
    /// The part of it spent in user space (the rest is the kernel's), seconds.
    #[serde(default)]
    pub proxy_user_s: Option<f64>,
    /// The proxy's memory over the run: the peak of the window (reset at
    /// its start) and the resident set at its end.
    pub proxy_memory: Option<Memory>,
    /// Fraction of time each CPU was busy during the run (machine-wide).
    pub cpu_busy: Vec<f64>,
    /// Fraction of time each CPU was busy in the pause before the run,
    /// while the benchmark was idle: other tenants' load.
    pub background_busy: Vec<f64>,
    /// How long the run waited for a quiet machine, seconds.
    pub quiet_wait_s: f64,
    /// Warnings and errors switchyard logged during the run.
    pub switchyard_log: Vec<String>,
}

/// How one proxy balanced the requests of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceCheck {
    /// The backends that answered, in order.
    pub names: Vec<String>,
    /// The connections curl opened for them (1: all on one connection).
    pub connections: u64,
    /// The HTTP version curl spoke (`1.1`, `2`).
    pub http_version: String,
}

impl BalanceCheck {
    /// All requests went over one connection and more than one backend
    /// answered them.
    pub fn per_request(&self) -> bool {
        let mut names: Vec<&String> = self.names.iter().collect();
        names.sort();
        names.dedup();
        self.connections == 1 && names.len() > 1
    }
}

/// The balancing check of one target in one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BalanceEntry {
    /// The target.
    pub target: Target,
    /// The protocol curl spoke.
    pub scenario: Scenario,
    /// What it saw, or why it failed.
    pub result: Result<BalanceCheck, String>,
}

/// A target left out of a scenario, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skipped {
    /// The target.
    pub target: Target,
    /// The scenario.
    pub scenario: Scenario,
    /// Why.
    pub reason: String,
}

/// How the run was set up, as checked at its start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Setup {
    /// How each proxy balanced the requests of one connection.
    pub balance: Vec<BalanceEntry>,
    /// What was not measured.
    pub skipped: Vec<Skipped>,
    /// Warm-up runs that failed.
    pub warmup_failures: Vec<String>,
    /// Threads and CPUs of each proxy at the start (checked to be pinned
    /// to the proxy CPU); nginx's master and worker together.
    pub proxy_threads: BTreeMap<Target, Vec<ThreadAffinity>>,
    /// The backends' threads (checked to be pinned to the load CPU).
    pub backend_threads: Vec<ThreadAffinity>,
    /// Each proxy's memory once started, before any load.
    pub idle_memory: BTreeMap<Target, Memory>,
    /// The backend binary.
    pub backend_bin: String,
    /// The nginx configuration used.
    pub nginx_config: String,
    /// The HAProxy configuration used.
    pub haproxy_config: String,
    /// The Services given to switchyard.
    pub service_manifests: Vec<Value>,
}

/// Everything the run saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// How it was set up.
    pub setup: Setup,
    /// Every measurement, in the order taken.
    pub measurements: Vec<Measurement>,
    /// Each proxy's threads at the end, with the CPU time each used.
    pub proxy_threads_after: BTreeMap<Target, Vec<ThreadAffinity>>,
    /// Proxies that exited during the run: how, and the end of their log.
    pub exits: BTreeMap<String, String>,
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

/// Which proxy process serves a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proxy {
    Nginx,
    Haproxy,
    Switchyard,
}

impl Proxy {
    fn of(target: Target) -> Option<Self> {
        match target {
            Target::Direct => None,
            Target::Nginx => Some(Self::Nginx),
            Target::Haproxy => Some(Self::Haproxy),
            Target::SwitchyardH2c | Target::SwitchyardHttp => Some(Self::Switchyard),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::Switchyard => "switchyard",
        }
    }
}

/// The running pieces.
struct Bench {
    config: L7Config,
    ticks_per_s: u64,
    pod0: Ipv4Addr,
    scratch: PathBuf,
    exits: BTreeMap<String, String>,
    // Field order is drop order: proxies first, then the backends, then the
    // topology.
    nginx: Nginx,
    haproxy: Process,
    daemon: Daemon,
    _backends: Vec<Process>,
    topo: Topology,
}

impl Bench {
    fn client(&self) -> &Netns {
        self.topo.client()
    }

    fn pids(&self, target: Target) -> Vec<u32> {
        match Proxy::of(target) {
            None => Vec::new(),
            Some(Proxy::Nginx) => self.nginx.pids(),
            Some(Proxy::Haproxy) => vec![self.haproxy.pid()],
            Some(Proxy::Switchyard) => vec![self.daemon.pid()],
        }
    }

    /// Whether the proxy of `target` still runs; records how it exited if not.
    fn alive(&mut self, target: Target) -> bool {
        let Some(proxy) = Proxy::of(target) else {
            return true;
        };
        if self.exits.contains_key(proxy.as_str()) {
            return false;
        }
        let status = match proxy {
            Proxy::Nginx => self.nginx.try_wait(),
            Proxy::Haproxy => self.haproxy.try_wait(),
            Proxy::Switchyard => self.daemon.try_wait(),
        };
        let exit = match status {
            Ok(None) => return true,
            Ok(Some(status)) => {
                let log = match proxy {
                    Proxy::Nginx => self.nginx.log(&self.scratch.join("nginx")),
                    Proxy::Haproxy => self.haproxy.log(),
                    Proxy::Switchyard => self.daemon.log_tail(60),
                };
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "{} exited ({status}); last log lines:\n{}",
                    proxy.as_str(),
                    tail.join("\n")
                )
            }
            Err(error) => format!("cannot wait for {}: {error:#}", proxy.as_str()),
        };
        self.exits.insert(proxy.as_str().to_owned(), exit);
        false
    }

    fn load(&self, target: Target, scenario: Scenario, duration: Duration) -> Result<LoadResult> {
        load::run(
            self.client(),
            scenario,
            &self.config.shape,
            target.address(scenario, self.pod0),
            duration,
            &self.scratch,
        )
    }

    fn proxy_time(&self, pids: &[u32]) -> Option<cpu::ProcessTimes> {
        pids.iter()
            .map(|&pid| cpu::process_times(pid, self.ticks_per_s).ok())
            .try_fold(cpu::ProcessTimes::default(), |sum, t| Some(sum + t?))
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
            proxy_user_s: None,
            proxy_memory: None,
            cpu_busy: Vec::new(),
            background_busy: Vec::new(),
            quiet_wait_s: 0.0,
            switchyard_log: Vec::new(),
        };
        (measurement.background_busy, measurement.quiet_wait_s) = self.settle();
        if !self.alive(target) {
            measurement.failure = Some(format!("the proxy of {} is not running", target.as_str()));
            return measurement;
        }
        let pids = self.pids(target);
        let reset = memory::reset_peak(&pids);
        let log_before = self.daemon.log().len();
        let proxy_before = self.proxy_time(&pids);
        let cpus_before = CpuTimes::read().ok();
        let result = self.load(target, scenario, self.config.duration);
        let cpus_after = CpuTimes::read().ok();
        let proxy_after = self.proxy_time(&pids);
        if !pids.is_empty() && reset.is_ok() {
            measurement.proxy_memory = memory::read(&pids).ok();
        }
        if let (Some(before), Some(after)) = (proxy_before, proxy_after) {
            let user = after.user.saturating_sub(before.user);
            let system = after.system.saturating_sub(before.system);
            measurement.proxy_cpu_s = Some((user + system).as_secs_f64());
            measurement.proxy_user_s = Some(user.as_secs_f64());
        }
        if let (Some(before), Some(after)) = (cpus_before, cpus_after) {
            measurement.cpu_busy = after.busy_since(&before);
        }
        if target.is_switchyard() {
            let log = self.daemon.log();
            measurement.switchyard_log = problem_lines(log.get(log_before..).unwrap_or_default());
        }
        match result {
            Ok(result) => measurement.result = Some(result),
            Err(error) => measurement.failure = Some(format!("{error:#}")),
        }
        if !self.alive(target) {
            let exit = Proxy::of(target)
                .and_then(|proxy| self.exits.get(proxy.as_str()).cloned())
                .unwrap_or_default();
            measurement.failure = Some(match measurement.failure.take() {
                Some(failure) => format!("{failure}; {exit}"),
                None => exit,
            });
        }
        measurement
    }
}

/// The two Services switchyard serves: the same pods, port 80 to 8080,
/// round-robin, upstream h2c on one and HTTP/1.1 on the other.
pub fn service_manifests() -> Vec<Value> {
    [
        ("web-h2c", SERVICE_H2C_VIP, "kubernetes.io/h2c"),
        ("web-http", SERVICE_HTTP_VIP, "http"),
    ]
    .into_iter()
    .map(|(name, vip, app_protocol)| {
        let mut service = objects::Service::new(name)
            .cluster_ips(&[&vip.to_string()])
            .selector("app", "web")
            .port(objects::ServicePort::tcp(
                "http",
                SERVICE_PORT,
                BACKEND_PORT,
            ))
            .to_value();
        service["spec"]["ports"][0]["appProtocol"] = json!(app_protocol);
        // The same algorithm as nginx's default and HAProxy's `balance roundrobin`.
        service["metadata"]["annotations"] = json!({"switchyard.io/lb-algorithm": "round-robin"});
        service
    })
    .collect()
}

/// Sends [`BALANCE_CHECK_REQUESTS`] requests for `/name` to `addr` on one
/// connection and reports which backends answered over how many
/// connections. HTTP/1.1: one curl process with the URL repeated, which
/// keeps the connection alive between them. h2c: `nghttp` (curl 7.88 fails
/// to reuse a prior-knowledge connection), which opens one connection and
/// sends its URLs as concurrent streams; the URLs differ by a query string,
/// since it fetches a URL only once.
pub fn check_balance(client: &Netns, addr: SocketAddr, scenario: Scenario) -> Result<BalanceCheck> {
    let url = format!("http://{addr}{NAME_PATH}");
    match scenario {
        Scenario::Http1 => {
            let mut args = vec![
                "-sS",
                "--fail",
                "--max-time",
                "10",
                "--http1.1",
                "-w",
                "%{http_version} %{num_connects}\n",
            ];
            for _ in 0..BALANCE_CHECK_REQUESTS {
                args.push(&url);
            }
            let output = client::curl(client, &args)?;
            if !output.status.success() {
                bail!(
                    "curl {url} (HTTP/1.1) failed ({}): {}",
                    output.status,
                    output.stderr.trim()
                );
            }
            parse_curl_balance(&output.stdout)
        }
        Scenario::H2c => {
            let mut argv = vec!["nghttp".to_owned(), "-v".to_owned()];
            argv.extend((0..BALANCE_CHECK_REQUESTS).map(|i| format!("{url}?{i}")));
            let output = client.exec_with(&argv, None, Duration::from_secs(20))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                bail!(
                    "nghttp {url} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            parse_nghttp_balance(&stdout)
        }
    }
}

/// Parses what [`check_balance`]'s curl printed: per request the body (a
/// name and a newline) and then `<http version> <new connections>`.
pub fn parse_curl_balance(stdout: &str) -> Result<BalanceCheck> {
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.is_empty() || !lines.len().is_multiple_of(2) {
        bail!("unexpected curl output: {stdout:?}");
    }
    let mut check = BalanceCheck {
        names: Vec::new(),
        connections: 0,
        http_version: String::new(),
    };
    for pair in lines.chunks(2) {
        let (name, info) = (pair[0], pair[1]);
        let mut fields = info.split_whitespace();
        let (Some(version), Some(connects)) = (fields.next(), fields.next()) else {
            bail!("unexpected curl line {info:?} in {stdout:?}");
        };
        check.names.push(name.trim().to_owned());
        check.connections += connects
            .parse::<u64>()
            .with_context(|| format!("connections in {info:?}"))?;
        version.clone_into(&mut check.http_version);
    }
    Ok(check)
}

/// Parses `nghttp -v`: its frame log (`[  0.000] Connected` once per
/// connection) with the bodies (the backends' names, `web-<i>`) in between.
pub fn parse_nghttp_balance(stdout: &str) -> Result<BalanceCheck> {
    let connections = stdout
        .lines()
        .filter(|line| line.starts_with('[') && line.trim_end().ends_with("] Connected"))
        .count() as u64;
    let names: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.strip_prefix("web-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!("nghttp printed no backend name: {stdout:?}");
    }
    Ok(BalanceCheck {
        names,
        connections,
        http_version: "2".to_owned(),
    })
}

/// Waits until `addr` answers `/name` from the client over HTTP/1.1.
fn wait_answering(
    client: &Netns,
    addr: SocketAddr,
    mut exited: impl FnMut() -> Result<()>,
) -> Result<()> {
    let url = format!("http://{addr}{NAME_PATH}");
    poll_until(
        &format!("{url} to answer from the client"),
        Duration::from_secs(20),
        || {
            exited()?;
            Ok(client::curl_once(client, &url).ok())
        },
    )?;
    Ok(())
}

/// Starts the backends, one per pod, on the load CPU (the calling thread's).
fn start_backends(topo: &Topology, bin: &std::path::Path) -> Result<Vec<Process>> {
    let mut backends = Vec::with_capacity(PODS);
    for (index, pod) in topo.pods().iter().enumerate() {
        let name = format!("web-{index}");
        let log = topo.scratch_dir().join(format!("backend-{name}.log"));
        let mut process = pod.ns().spawn(
            [
                bin.to_string_lossy().into_owned(),
                "--listen".into(),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), BACKEND_PORT).to_string(),
                "--name".into(),
                name,
            ],
            &log,
        )?;
        process.wait_for_line(READY, Duration::from_secs(10))?;
        backends.push(process);
    }
    Ok(backends)
}

/// Builds the topology, starts the backends and every proxy, checks the
/// setup, and runs every measurement. Everything started is stopped and
/// every namespace deleted when this returns, also on error.
pub fn run(config: &L7Config) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    let ticks_per_s = cpu::clock_ticks()?;
    // Everything spawned from here on starts on the load CPU, unless
    // spawned inside `cpu::with_cpu` or under `taskset`.
    cpu::pin_this_thread(&[config.load_cpu])?;

    let mut setup = Setup {
        backend_bin: config.backend_bin.to_string_lossy().into_owned(),
        ..Setup::default()
    };
    let topo = Topology::new(PODS)?;
    let scratch = topo.scratch_dir().to_path_buf();
    let backends = start_backends(&topo, &config.backend_bin)?;
    for backend in &backends {
        setup.backend_threads.extend(cpu::check_pinned(
            "l7-backend",
            backend.pid(),
            config.load_cpu,
            ticks_per_s,
        )?);
    }
    let pod0 = topo.pod(0).ipv4();
    let servers: Vec<SocketAddr> = topo
        .pods()
        .iter()
        .map(|pod| SocketAddr::new(IpAddr::V4(pod.ipv4()), BACKEND_PORT))
        .collect();
    // Thousands of connections may be opened over a run (h2load and wrk
    // reconnect after errors; warm-ups): use the whole port range.
    for ns in [topo.client(), topo.node()] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }

    let manifests = Manifests::new_in(&scratch)?;
    setup.service_manifests = service_manifests();
    let mut documents = setup.service_manifests.clone();
    documents.extend((0..PODS).map(|index| objects::Pod::web(&topo, index).to_value()));
    manifests.write_objects("web.yaml", &documents)?;
    let daemon = cpu::with_cpu(config.proxy_cpu, || topo.start_daemon(&manifests))?;
    for target in [Target::SwitchyardH2c, Target::SwitchyardHttp] {
        daemon.with_log(wait_answering(
            topo.client(),
            target.address(Scenario::Http1, pod0),
            || Ok(()),
        ))?;
    }
    setup.proxy_threads.insert(
        Target::SwitchyardH2c,
        cpu::check_pinned("switchyard", daemon.pid(), config.proxy_cpu, ticks_per_s)?,
    );

    let nginx_config = NginxConfig {
        listen_http1: Target::Nginx.address(Scenario::Http1, pod0),
        listen_h2c: Target::Nginx.address(Scenario::H2c, pod0),
        servers: servers.clone(),
        upstream_keepalive: config.nginx_keepalive,
        worker_connections: 4096,
        keepalive_requests: 1_000_000_000,
        prefix: scratch.join("nginx"),
    };
    setup.nginx_config = nginx_config.render();
    let mut nginx = nginx::start(topo.node(), &nginx_config, config.proxy_cpu)?;
    let answering = wait_answering(topo.client(), nginx_config.listen_http1, || {
        match nginx.try_wait()? {
            Some(status) => bail!("nginx exited ({status})"),
            None => Ok(()),
        }
    });
    answering.with_context(|| format!("nginx log:\n{}", nginx.log(&nginx_config.prefix)))?;
    let mut nginx_threads = Vec::new();
    for pid in nginx.pids() {
        nginx_threads.extend(cpu::check_pinned(
            "nginx",
            pid,
            config.proxy_cpu,
            ticks_per_s,
        )?);
    }
    setup.proxy_threads.insert(Target::Nginx, nginx_threads);

    let haproxy_config = HaproxyHttpConfig {
        bind_http1: Target::Haproxy.address(Scenario::Http1, pod0),
        bind_h2c: Target::Haproxy.address(Scenario::H2c, pod0),
        servers,
        maxconn: crate::haproxy::maxconn_for_fd_limit(50_000),
    };
    setup.haproxy_config = haproxy_config.render();
    let mut haproxy = haproxy_http::start(
        topo.node(),
        &haproxy_config,
        &scratch.join("haproxy.cfg"),
        &scratch.join("haproxy.log"),
        config.proxy_cpu,
    )?;
    let answering = wait_answering(topo.client(), haproxy_config.bind_http1, || {
        match haproxy.try_wait()? {
            Some(status) => bail!("haproxy exited ({status})"),
            None => Ok(()),
        }
    });
    answering.with_context(|| format!("haproxy log:\n{}", haproxy.log()))?;
    setup.proxy_threads.insert(
        Target::Haproxy,
        cpu::check_pinned("haproxy", haproxy.pid(), config.proxy_cpu, ticks_per_s)?,
    );

    let mut bench = Bench {
        config: config.clone(),
        ticks_per_s,
        pod0,
        scratch,
        exits: BTreeMap::new(),
        nginx,
        haproxy,
        daemon,
        _backends: backends,
        topo,
    };

    for &target in &config.targets {
        let pids = bench.pids(target);
        if !pids.is_empty()
            && let Ok(memory) = memory::read(&pids)
        {
            setup.idle_memory.insert(target, memory);
        }
        for scenario in Scenario::ALL {
            let result = check_balance(bench.client(), target.address(scenario, pod0), scenario)
                .map_err(|error| format!("{error:#}"));
            let skip = match &result {
                _ if !target.is_switchyard() || config.measure_unbalanced => None,
                Ok(check) if check.per_request() => None,
                Ok(check) => Some(format!(
                    "switchyard answered the {} requests of one {} connection from {} over {} \
                     connection(s): no per-request balancing, so its L7 proxy is not serving \
                     this Service (an L4 proxy's numbers would be misleading here; \
                     --measure-unbalanced measures it anyway)",
                    check.names.len(),
                    scenario.as_str(),
                    check.names.join(", "),
                    check.connections
                )),
                Err(error) => Some(format!("the balancing check failed: {error}")),
            };
            if let Some(reason) = skip {
                eprintln!("not measuring {} {scenario}: {reason}", target.as_str());
                setup.skipped.push(Skipped {
                    target,
                    scenario,
                    reason,
                });
            }
            setup.balance.push(BalanceEntry {
                target,
                scenario,
                result,
            });
        }
    }
    let measured = |setup: &Setup, target: Target, scenario: Scenario| {
        !setup
            .skipped
            .iter()
            .any(|skip| skip.target == target && skip.scenario == scenario)
    };

    for scenario in Scenario::ALL {
        for &target in &config.targets {
            if !measured(&setup, target, scenario) {
                continue;
            }
            eprintln!(
                "warm-up: {} {scenario} ({:?})",
                target.as_str(),
                config.warmup
            );
            if let Err(error) = bench.load(target, scenario, config.warmup) {
                eprintln!("warm-up against {} failed: {error:#}", target.as_str());
                setup
                    .warmup_failures
                    .push(format!("{} {scenario}: {error:#}", target.as_str()));
            }
        }
    }

    let total = config.repeats
        * Scenario::ALL
            .iter()
            .map(|&scenario| {
                config
                    .targets
                    .iter()
                    .filter(|&&target| measured(&setup, target, scenario))
                    .count()
            })
            .sum::<usize>();
    let mut measurements = Vec::with_capacity(total);
    for round in 0..config.repeats {
        for scenario in Scenario::ALL {
            for &target in &config.targets {
                if !measured(&setup, target, scenario) {
                    continue;
                }
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

    let mut proxy_threads_after = BTreeMap::new();
    for target in [Target::Nginx, Target::Haproxy, Target::SwitchyardH2c] {
        if !bench.alive(target) {
            continue;
        }
        let mut threads = Vec::new();
        for pid in bench.pids(target) {
            threads.extend(cpu::threads(pid, ticks_per_s).unwrap_or_default());
        }
        proxy_threads_after.insert(target, threads);
    }
    Ok(Outcome {
        setup,
        measurements,
        proxy_threads_after,
        switchyard_problems: problem_lines(&bench.daemon.log()),
        exits: bench.exits.clone(),
    })
}

/// One line for the progress log.
fn describe(measurement: &Measurement) -> String {
    match (&measurement.result, &measurement.failure) {
        (_, Some(failure)) => format!("FAILED: {failure}"),
        (Some(result), None) => {
            let cpu = measurement
                .proxy_cpu_s
                .map(|s| format!(", proxy CPU {:.0}%", 100.0 * s / result.duration_s))
                .unwrap_or_default();
            let memory = measurement
                .proxy_memory
                .as_ref()
                .map(|m| format!(", peak {:.1} MiB", m.peak_kib as f64 / 1024.0))
                .unwrap_or_default();
            let background: Vec<String> = measurement
                .background_busy
                .iter()
                .map(|busy| format!("{:.0}%", busy * 100.0))
                .collect();
            format!(
                "{:.0} req/s, p99 {:.2} ms, {} errors{cpu}{memory} (background load before: {}, waited {:.0} s)",
                result.ok_per_s,
                result.latency.p99_us / 1000.0,
                result.errors,
                background.join("/"),
                measurement.quiet_wait_s
            )
        }
        (None, None) => "no result".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_check_reads_names_and_connections() {
        let check =
            parse_curl_balance("web-0\n1.1 1\nweb-1\n1.1 0\nweb-2\n1.1 0\n").expect("parse");
        assert_eq!(check.names, vec!["web-0", "web-1", "web-2"]);
        assert_eq!(check.connections, 1);
        assert_eq!(check.http_version, "1.1");
        assert!(check.per_request());
    }

    #[test]
    fn one_backend_per_connection_is_not_per_request_balancing() {
        let l4 = parse_curl_balance("web-1\n1.1 1\nweb-1\n1.1 0\nweb-1\n1.1 0\n").expect("parse");
        assert!(!l4.per_request());
        // Rotating names over fresh connections is per-connection balancing.
        let fresh = parse_curl_balance("web-0\n1.1 1\nweb-1\n1.1 1\n").expect("parse");
        assert!(!fresh.per_request());
        assert!(parse_curl_balance("web-0\n").is_err());
    }

    #[test]
    fn nghttp_check_counts_connections_and_names_in_its_frame_log() {
        let stdout = "[  0.000] Connected\n\
            [  0.000] send SETTINGS frame <length=12, flags=0x00, stream_id=0>\n\
            \x20         [SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]\n\
            [  0.001] recv HEADERS frame <length=38, flags=0x04, stream_id=13>\n\
            web-0\n\
            [  0.001] recv DATA frame <length=6, flags=0x01, stream_id=13>\n\
            web-1\n\
            web-2\n\
            [  0.002] send GOAWAY frame <length=8, flags=0x00, stream_id=0>\n";
        let check = parse_nghttp_balance(stdout).expect("parse");
        assert_eq!(check.names, vec!["web-0", "web-1", "web-2"]);
        assert_eq!(check.connections, 1);
        assert!(check.per_request());
        assert!(parse_nghttp_balance("[  0.000] Connected\n").is_err());
    }

    #[test]
    fn services_ask_for_h2c_and_http_upstreams_round_robin() {
        let services = service_manifests();
        assert_eq!(services.len(), 2);
        assert_eq!(
            services[0]["spec"]["ports"][0]["appProtocol"],
            "kubernetes.io/h2c"
        );
        assert_eq!(services[0]["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(services[1]["spec"]["ports"][0]["appProtocol"], "http");
        assert_eq!(services[1]["spec"]["clusterIP"], "10.96.0.11");
        for service in &services {
            assert_eq!(
                service["metadata"]["annotations"]["switchyard.io/lb-algorithm"],
                "round-robin"
            );
            assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
        }
    }

    #[test]
    fn every_target_has_its_own_address_per_scenario() {
        let pod0 = Ipv4Addr::new(10, 244, 0, 10);
        let mut addresses = std::collections::BTreeSet::new();
        for target in Target::ALL {
            for scenario in Scenario::ALL {
                addresses.insert(target.address(scenario, pod0));
            }
            assert_eq!(Target::parse(target.as_str()).expect("parse"), target);
        }
        // nginx and HAProxy listen on a port per protocol; switchyard and the
        // backends detect the protocol on one.
        assert_eq!(addresses.len(), 1 + 2 + 2 + 1 + 1);
        assert!(Target::parse("envoy").is_err());
    }
}
