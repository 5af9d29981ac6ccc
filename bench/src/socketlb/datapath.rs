//! Part 1: connection setup through a ClusterIP, at each cluster size, for
//! every target, in interleaved rounds.
//!
//! Per size: fresh client namespaces; the kube-proxy shapes loaded into
//! theirs (the load timed); switchyard started on manifests of the same
//! cluster (the time until the measured VIP answers recorded); every target
//! checked to answer; then rounds of (direct, switchyard, iptables legacy,
//! iptables-nft, nftables). At the end of a size the daemon is stopped, its
//! eBPF state removed (`switchyard cleanup`) and the client namespaces, with
//! their rules, deleted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::daemon::{BPFFS, EbpfPaths};
use switchyard_tests::topology::POD_HTTP_PORT;
use switchyard_tests::{Daemon, DaemonConfig, Manifests, Netns, Topology, client, poll_until};

use super::RunConfig;
use super::targets::{ClientNs, Target};
use crate::cluster::{self, Cluster, MEASURED_VIP, SERVICE_PORT};
use crate::cpu::{self, CpuTimes};
use crate::kube_proxy::{iptables, nftables};
use crate::loadgen::LoadResult;
use crate::rule_loader::{self, Backend};

/// One load run against one target at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// Services in the cluster.
    pub services: usize,
    /// Which round (0-based).
    pub round: usize,
    /// Against what.
    pub target: Target,
    /// Concurrent connections of the load generator: many for the rate, one
    /// for the latency of a connection on an otherwise idle path.
    pub workers: usize,
    /// What the load generator measured, unless the run failed.
    pub result: Option<LoadResult>,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// Fraction of time each CPU was busy during the run (machine-wide).
    pub cpu_busy: Vec<f64>,
    /// Fraction of time each CPU was busy in the idle pause before the run:
    /// other tenants' load.
    pub background_busy: Vec<f64>,
    /// How long the run waited for a quiet machine, seconds.
    pub quiet_wait_s: f64,
    /// Conntrack entries in the client's namespace after the run (the
    /// kube-proxy shapes only).
    pub conntrack_entries: Option<u64>,
}

/// How one size was set up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SizeSetup {
    /// Services in the cluster.
    pub services: usize,
    /// Endpoints over all Services.
    pub endpoints: usize,
    /// Seconds each kube-proxy shape took to load (hooks excluded), by target.
    pub load_s: BTreeMap<Target, f64>,
    /// Size of each target's rule text, bytes.
    pub rule_bytes: BTreeMap<Target, usize>,
    /// Seconds from starting switchyard to the measured VIP answering.
    pub switchyard_ready_s: Option<f64>,
    /// CPU time (user + system) switchyard used from its start to the end
    /// of this size's measurements, seconds.
    pub switchyard_cpu_s: Option<f64>,
    /// Wall time over the same span, seconds.
    pub switchyard_wall_s: Option<f64>,
    /// Bytes of manifests switchyard read.
    pub manifest_bytes: usize,
    /// Pod names 30 fresh connections reached, per target (or why not).
    pub spread: BTreeMap<Target, Result<BTreeMap<String, usize>, String>>,
    /// Targets that could not be set up, and why (they are not measured).
    pub unavailable: BTreeMap<Target, String>,
    /// Warm-up runs that failed.
    pub warmup_failures: Vec<String>,
    /// switchyard's warnings and errors at this size (first lines).
    pub switchyard_problems: Vec<String>,
    /// How switchyard exited, if it did so on its own.
    pub switchyard_exit: Option<String>,
    /// End-to-end programming latency of one-endpoint changes written as
    /// manifest files, from the daemon's histogram, if measured here.
    pub manifest_changes: Option<super::control_plane::HistogramSummary>,
}

/// What part 1 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatapathOutcome {
    /// Per size, how it was set up.
    pub sizes: Vec<SizeSetup>,
    /// Every measurement, in the order taken.
    pub measurements: Vec<Measurement>,
}

const LOG_LINES_KEPT: usize = 40;

fn problem_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .take(LOG_LINES_KEPT)
        .map(str::to_owned)
        .collect()
}

/// The eBPF state of the in-process driver: removed with `switchyard
/// cleanup` when dropped, also on error, then its bpffs folder.
#[derive(Debug)]
pub struct EbpfState {
    /// The switchyard binary.
    pub bin: PathBuf,
    /// The bpffs folder it pins under.
    pub pin_path: PathBuf,
    /// The cgroup its programs attach to.
    pub cgroup: PathBuf,
}

impl Drop for EbpfState {
    fn drop(&mut self) {
        let output = std::process::Command::new(&self.bin)
            .arg("cleanup")
            .arg("--bpf-pin-path")
            .arg(&self.pin_path)
            .arg("--cgroup-path")
            .arg(&self.cgroup)
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "switchyard cleanup {}: {} {}",
                self.pin_path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => eprintln!("switchyard cleanup {}: {error}", self.pin_path.display()),
        }
        if self.pin_path.exists()
            && let Err(error) = std::fs::remove_dir_all(&self.pin_path)
        {
            eprintln!("could not remove {}: {error}", self.pin_path.display());
        }
    }
}

/// The running pieces of one size. Field order is drop order: the daemon
/// first (its guard stops it, then removes its eBPF state with `switchyard
/// cleanup`), then the client namespaces (and their rules).
struct SizeBench<'a> {
    config: &'a RunConfig,
    topo: &'a Topology,
    cluster: Cluster,
    daemon: Option<Daemon>,
    clients: BTreeMap<Target, ClientNs>,
    manifests: Option<Manifests>,
    setup: SizeSetup,
    #[allow(
        clippy::disallowed_types,
        reason = "synchronous orchestration: std's clock"
    )]
    daemon_started: Option<std::time::Instant>,
}

/// A run of the load generator against `targets` from `ns`.
pub fn run_loadgen(
    config: &RunConfig,
    ns: &Netns,
    targets: &[SocketAddr],
    workers: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let mut argv: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        config.load_cpu.to_string(),
        config.loadgen.to_string_lossy().into_owned(),
        "--scenario".into(),
        "cps".into(),
        "--workers".into(),
        workers.to_string(),
        "--duration".into(),
        format!("{}ms", duration.as_millis()),
        "--max-requests".into(),
        config.max_requests.to_string(),
    ];
    for addr in targets {
        argv.extend(["--target".into(), addr.to_string()]);
    }
    let output = ns.exec_with(&argv, None, duration + Duration::from_mins(1))?;
    if !output.status.success() {
        bail!(
            "loadgen failed ({}): {}",
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

/// Sleeps for the pause, sampling the CPUs, and goes on (up to the quiet
/// wait) while one was busier than the threshold. Returns the last sample
/// and the extra time waited.
#[allow(
    clippy::disallowed_types,
    reason = "synchronous orchestration, no runtime: std's clock is the right one"
)]
pub fn settle(config: &RunConfig) -> (Vec<f64>, f64) {
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

impl SizeBench<'_> {
    fn client_ns(&self, target: Target) -> Option<&Netns> {
        match target {
            Target::SwitchyardEbpf => Some(self.topo.client()),
            other => self.clients.get(&other).map(|c| &c.ns),
        }
    }

    fn addresses(&self, target: Target) -> Vec<SocketAddr> {
        match target {
            Target::Direct => self
                .topo
                .pods()
                .iter()
                .map(|pod| SocketAddr::new(IpAddr::V4(pod.ipv4()), POD_HTTP_PORT))
                .collect(),
            _ => vec![SocketAddr::new(IpAddr::V4(MEASURED_VIP), SERVICE_PORT)],
        }
    }

    fn url(&self, target: Target) -> String {
        let addr = self.addresses(target)[0];
        format!("http://{addr}/")
    }

    /// Loads kube-proxy's rules of `target` into its client namespace.
    fn load_rules(&mut self, target: Target, backend: Backend) -> Result<()> {
        let ns = self.clients[&target].ns.clone();
        let (hooks, text) = match backend {
            Backend::Nftables => (
                None,
                nftables::transaction(&self.cluster, &nftables::Sync::Initial),
            ),
            Backend::IptablesLegacy | Backend::IptablesNft => (
                Some(iptables::hooks()),
                iptables::restore_input(&self.cluster, iptables::Sync::Full),
            ),
        };
        self.setup.rule_bytes.insert(target, text.len());
        let elapsed = rule_loader::in_netns(
            &ns,
            self.config.proxy_cpu,
            self.config.load_timeout,
            |loader| {
                if let Some(hooks) = &hooks {
                    loader.load(backend, hooks)?;
                }
                loader.load(backend, &text)
            },
        )?;
        self.setup.load_s.insert(target, elapsed.as_secs_f64());
        eprintln!(
            "  {}: {} bytes loaded in {:.2} s",
            target.as_str(),
            text.len(),
            elapsed.as_secs_f64()
        );
        Ok(())
    }

    /// Writes the cluster as manifests (the changed Service alone in a file
    /// of its own, the rest in files of up to 1,000 Services) and starts
    /// switchyard on them, pinned to the proxy CPU.
    #[allow(
        clippy::disallowed_types,
        reason = "synchronous orchestration, no runtime: std's clock is the right one"
    )]
    fn start_switchyard(&mut self, index: usize) -> Result<()> {
        let config = self.config;
        anyhow::ensure!(config.switchyard_bin.is_some(), "no switchyard binary");
        let manifests = Manifests::new_in(&self.topo.scratch_dir().join(format!("size{index}")))?;
        let changed = self.cluster.changed_index();
        let mut chunk = Vec::new();
        let mut file = 0;
        let mut bytes = 0;
        for spec in self.cluster.all() {
            let docs = cluster::manifests(&spec);
            if self.cluster.service(changed).name == spec.name {
                let text = switchyard_tests::yaml::to_documents(&docs);
                bytes += text.len();
                manifests.write("changed.yaml", &text)?;
                continue;
            }
            chunk.extend(docs);
            if chunk.len() >= 2000 {
                let text = switchyard_tests::yaml::to_documents(&chunk);
                bytes += text.len();
                manifests.write(&format!("services-{file:03}.yaml"), &text)?;
                file += 1;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            let text = switchyard_tests::yaml::to_documents(&chunk);
            bytes += text.len();
            manifests.write(&format!("services-{file:03}.yaml"), &text)?;
        }
        self.setup.manifest_bytes = bytes;
        let cgroup = self
            .topo
            .client()
            .cgroup()
            .context("the topology's client has no cgroup")?
            .to_path_buf();
        let pin_path = PathBuf::from(format!("{BPFFS}/{}-size{index}", self.topo.prefix()));
        let daemon_config = DaemonConfig {
            proxy_mode: "ebpf".to_owned(),
            // The guard runs `switchyard cleanup` for these when dropped.
            ebpf: Some(EbpfPaths { cgroup, pin_path }),
            // The periodic check reads every map back: at 50,000 Services
            // that is work on the proxy CPU in the middle of other targets'
            // runs, so it is made rare. Changes are applied as they come.
            sync_period: "1h".to_owned(),
            // The maps are sized for the cluster (the defaults hold 262,144 distinct
            // backends; every endpoint here is distinct), as an operator would size them.
            extra_args: crate::cluster::bpf_map_args(
                self.cluster.services,
                self.cluster.endpoint_count(),
            ),
            // /healthz answers 200 after the first full sync.
            ready_timeout: Duration::from_mins(1)
                + Duration::from_millis(10)
                    * u32::try_from(self.cluster.services).unwrap_or(u32::MAX),
            ..DaemonConfig::default()
        };
        let start = std::time::Instant::now();
        self.daemon_started = Some(start);
        let node = self.topo.node().clone();
        let scratch = self.topo.scratch_dir().to_path_buf();
        let path = manifests.path().to_path_buf();
        let daemon = cpu::with_cpu(config.proxy_cpu, || {
            Daemon::start(&node, &path, &scratch, &daemon_config)
        })?;
        self.manifests = Some(manifests);
        let url = self.url(Target::SwitchyardEbpf);
        let mut daemon = daemon;
        let answered = poll_until(
            "the measured VIP to answer through switchyard",
            Duration::from_mins(10),
            || {
                if let Some(status) = daemon.try_wait()? {
                    return Ok(Some(Err(anyhow::anyhow!("switchyard exited ({status})"))));
                }
                Ok(client::curl_once(self.topo.client(), &url).ok().map(Ok))
            },
        )
        .and_then(|r| r);
        let tail = daemon.log_tail(60);
        self.daemon = Some(daemon);
        answered.map_err(|error| anyhow::anyhow!("{error:#}\n--- switchyard log ---\n{tail}"))?;
        self.setup.switchyard_ready_s = Some(start.elapsed().as_secs_f64());
        eprintln!(
            "  switchyard-ebpf: {} bytes of manifests, VIP answering after {:.2} s",
            bytes,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn set_up(&mut self, index: usize, targets: &[Target]) {
        for &target in targets {
            let result = match target {
                Target::Direct => ClientNs::create(self.topo, target).map(|c| {
                    self.clients.insert(target, c);
                }),
                Target::SwitchyardEbpf => {
                    if self.config.switchyard_bin.is_none() {
                        Err(anyhow::anyhow!(
                            "{}",
                            self.config
                                .switchyard_missing
                                .clone()
                                .unwrap_or_else(|| "no switchyard binary".to_owned())
                        ))
                    } else {
                        self.start_switchyard(index)
                    }
                }
                other => {
                    let backend = other.backend().expect("a kube-proxy shape has a backend");
                    ClientNs::create(self.topo, other).and_then(|c| {
                        self.clients.insert(other, c);
                        self.load_rules(other, backend)
                    })
                }
            };
            if let Err(error) = result {
                eprintln!("  {}: not measured: {error:#}", target.as_str());
                self.setup
                    .unavailable
                    .insert(target, format!("{error:#}").replace('\n', " "));
            }
        }
        for &target in targets {
            if self.setup.unavailable.contains_key(&target) {
                continue;
            }
            let Some(ns) = self.client_ns(target) else {
                continue;
            };
            let url = self.url(target);
            let spread = if target == Target::Direct {
                // Round-robin in the client: nothing to see.
                client::curl_many(ns, &url, 3).map(|names| client::tally(&names))
            } else {
                client::curl_many(ns, &url, 30).map(|names| client::tally(&names))
            };
            if let Err(error) = &spread {
                self.setup
                    .unavailable
                    .insert(target, format!("does not answer: {error:#}"));
            }
            self.setup
                .spread
                .insert(target, spread.map_err(|e| format!("{e:#}")));
        }
    }

    fn measure(&mut self, round: usize, target: Target, workers: usize) -> Measurement {
        let config = self.config;
        let mut m = Measurement {
            services: self.cluster.services,
            round,
            target,
            workers,
            result: None,
            failure: None,
            cpu_busy: Vec::new(),
            background_busy: Vec::new(),
            quiet_wait_s: 0.0,
            conntrack_entries: None,
        };
        (m.background_busy, m.quiet_wait_s) = settle(config);
        let Some(ns) = self.client_ns(target).cloned() else {
            m.failure = Some("no client namespace".to_owned());
            return m;
        };
        let before = CpuTimes::read().ok();
        let result = run_loadgen(
            config,
            &ns,
            &self.addresses(target),
            workers,
            config.duration,
        );
        if let (Some(before), Some(after)) = (before, CpuTimes::read().ok()) {
            m.cpu_busy = after.busy_since(&before);
        }
        if target.backend().is_some() {
            m.conntrack_entries = ns
                .run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        match result {
            Ok(result) => m.result = Some(result),
            Err(error) => m.failure = Some(format!("{error:#}")),
        }
        if target == Target::SwitchyardEbpf
            && let Some(daemon) = self.daemon.as_mut()
            && let Ok(Some(status)) = daemon.try_wait()
        {
            let exit = format!("switchyard exited ({status}): {}", daemon.log_tail(40));
            self.setup.switchyard_exit = Some(exit.clone());
            m.failure = Some(m.failure.map_or(exit.clone(), |f| format!("{f}; {exit}")));
        }
        m
    }
}

/// One line for the progress log.
pub fn describe(m: &Measurement) -> String {
    match (&m.result, &m.failure) {
        (_, Some(failure)) => format!("FAILED: {failure}"),
        (Some(r), None) => {
            let latency = r.latency.as_ref().map_or(String::new(), |l| {
                format!(", p50 {} us, p99 {} us", l.p50_us, l.p99_us)
            });
            let background: Vec<String> = m
                .background_busy
                .iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect();
            format!(
                "{:.0} conn/s{latency}, {} errors (background {}, waited {:.0} s)",
                r.completed_per_s,
                r.errors,
                background.join("/"),
                m.quiet_wait_s
            )
        }
        (None, None) => "no result".to_owned(),
    }
}

/// Runs part 1 on `topo` (pods started) for every size.
pub fn run(
    config: &RunConfig,
    topo: &Topology,
    manifest_changes: &mut dyn FnMut(
        &Daemon,
        &Manifests,
        &Cluster,
    ) -> Option<super::control_plane::HistogramSummary>,
) -> DatapathOutcome {
    let mut outcome = DatapathOutcome::default();
    let pods: Vec<_> = topo
        .pods()
        .iter()
        .map(switchyard_tests::PodNs::ipv4)
        .collect();
    for (index, &services) in config.sizes.iter().enumerate() {
        eprintln!("== {services} Services x {} endpoints", config.endpoints);
        let mut cluster = Cluster::new(services, config.endpoints, pods.clone());
        cluster.cluster_cidr.clone_from(&config.cluster_cidr);
        let mut bench = SizeBench {
            config,
            topo,
            setup: SizeSetup {
                services,
                endpoints: cluster.endpoint_count(),
                ..SizeSetup::default()
            },
            cluster,
            daemon: None,
            clients: BTreeMap::new(),
            manifests: None,
            daemon_started: None,
        };
        bench.set_up(index, &config.targets);
        let live: Vec<Target> = config
            .targets
            .iter()
            .copied()
            .filter(|t| !bench.setup.unavailable.contains_key(t))
            .collect();
        for &target in &live {
            if let Some(ns) = bench.client_ns(target).cloned()
                && let Err(error) = run_loadgen(
                    config,
                    &ns,
                    &bench.addresses(target),
                    config.workers,
                    config.warmup,
                )
            {
                bench
                    .setup
                    .warmup_failures
                    .push(format!("{}: {error:#}", target.as_str()));
            }
        }
        let loads: Vec<usize> = [config.workers, config.latency_workers]
            .into_iter()
            .filter(|&w| w > 0)
            .collect();
        for round in 0..config.repeats {
            for &workers in &loads {
                for &target in &live {
                    let m = bench.measure(round, target, workers);
                    eprintln!(
                        "  round {}/{} {services} {:<28} x{workers:<3} {}",
                        round + 1,
                        config.repeats,
                        target.as_str(),
                        describe(&m)
                    );
                    outcome.measurements.push(m);
                }
            }
        }
        if let (Some(daemon), Some(started)) = (bench.daemon.as_ref(), bench.daemon_started) {
            bench.setup.switchyard_wall_s = Some(started.elapsed().as_secs_f64());
            bench.setup.switchyard_cpu_s = cpu::clock_ticks()
                .and_then(|ticks| cpu::process_time(daemon.pid(), ticks))
                .ok()
                .map(|t| t.as_secs_f64());
        }
        if let (Some(daemon), Some(manifests)) = (bench.daemon.as_ref(), bench.manifests.as_ref()) {
            bench.setup.manifest_changes = manifest_changes(daemon, manifests, &bench.cluster);
            bench.setup.switchyard_problems = problem_lines(&daemon.log());
        }
        outcome.sizes.push(std::mem::take(&mut bench.setup));
        drop(bench);
    }
    outcome
}
