//! `firstsync`: the first full sync of a node daemon, from process start to a programmed
//! datapath, at 10,000 Services × 3 endpoints (issue 8: under 1 s after the initial lists
//! arrive), against kube-proxy's rule shapes loaded from empty on the same machine.
//!
//! The embedded API server (`switchyard apiserver`) runs in the network namespace of a
//! one-node switchyard-tests cluster and is filled before anything is measured: every
//! Service a selectorless ClusterIP Service with one EndpointSlice of 3 ready endpoints
//! (fake addresses nothing connects to; [`writer`]). Then, per round, `switchyard run
//! --proxy-mode ebpf` starts in the node namespace with empty pins (a fresh bpffs folder),
//! attached to a cgroup the run made and nothing else joins, and is followed from the spawn
//! to its `first complete view programmed` line and `/healthz` answering 200 ([`start`],
//! [`log`]); it is stopped, started again over the pins it left (the restart, which should
//! write nothing), stopped, and its state removed with `switchyard cleanup`. Last, the
//! anchor ([`anchor`]): kube-proxy's iptables and nftables rule shapes for the same cluster,
//! loaded from empty with `iptables-legacy-restore`, `iptables-nft-restore` and `nft -f`.
//!
//! What it never does: attach a program anywhere but the run's own cgroup (no `--devices`),
//! pin outside its own bpffs folders, or send a packet: no process ever joins the cgroup,
//! and the only connections are the API server's clients and `/healthz` inside the
//! namespaces. Guards (and, on a signal, [`crate::reaper`]) remove all of it.

pub mod anchor;
pub mod log;
pub mod report;
pub mod start;
pub mod writer;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use switchyard_tests::{ApiServer, Cluster as Topology};

use crate::cluster::Cluster;
use crate::socketlb::datapath::EbpfState;
use anchor::{AnchorConfig, Load};
use start::{DaemonSpec, Start, Variant};
use writer::Stored;

/// The measured Service's endpoints: fake, like every other (no pod runs anywhere).
pub const WEB_ENDPOINTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 226, 0, 1),
    Ipv4Addr::new(10, 226, 0, 2),
    Ipv4Addr::new(10, 226, 0, 3),
];

/// How the run is done; built once from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The switchyard binary (daemon, API server, CLI, cleanup).
    pub switchyard: PathBuf,
    /// Services in the API server.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Rounds (a cold start and a restart each).
    pub rounds: usize,
    /// Whether each round also restarts over the pinned state.
    pub restart: bool,
    /// Writes in flight while filling the API server.
    pub concurrency: usize,
    /// How often `/healthz` is asked.
    pub poll_interval: Duration,
    /// The longest wait for one start's first view and `/healthz`.
    pub start_timeout: Duration,
    /// Whether the lookup maps are dumped (bpftool) after each start.
    pub check_maps: bool,
    /// The kube-proxy shapes, or `None` to skip them.
    pub anchor: Option<AnchorConfig>,
    /// More `switchyard run` arguments (map sizes).
    pub daemon_args: Vec<String>,
}

/// One round: a cold start, then a restart over its pins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Round {
    /// Its number, from 1.
    pub round: usize,
    /// The bpffs folder of the round.
    pub pin_path: String,
    /// The start with empty pins.
    pub cold: Option<Start>,
    /// The start over the pins the cold start left.
    pub restart: Option<Start>,
}

impl Round {
    /// The start of `variant`.
    pub fn start(&self, variant: Variant) -> Option<&Start> {
        match variant {
            Variant::Cold => self.cold.as_ref(),
            Variant::Restart => self.restart.as_ref(),
        }
    }

    /// Whether the restart found the lookup maps exactly as the cold start left them.
    pub fn maps_unchanged(&self) -> Option<bool> {
        let cold = self.cold.as_ref()?.maps.as_ref()?.as_ref().ok()?;
        let restart = self.restart.as_ref()?.maps.as_ref()?.as_ref().ok()?;
        Some(cold == restart)
    }
}

/// Everything the run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// What the API server held.
    pub stored: Option<Stored>,
    /// Every round.
    pub rounds: Vec<Round>,
    /// kube-proxy's shapes loaded from empty.
    pub anchor: Vec<Load>,
    /// Warnings and errors of the API server (the first few).
    pub apiserver_problems: Vec<String>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
}

/// A cgroup v2 folder the run made, that nothing joins; removed when dropped (after the
/// rounds' guards have detached everything from it).
struct RunCgroup {
    path: PathBuf,
}

impl RunCgroup {
    fn create(name: &str) -> Result<Self> {
        let path = switchyard_tests::netns::cgroup2_root()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir(&self.path)
            && self.path.exists()
        {
            eprintln!("could not remove cgroup {}: {error}", self.path.display());
        }
    }
}

/// The first few warning and error lines of `log`.
fn problems(who: &str, log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .take(10)
        .map(|l| format!("{who}: {}", l.chars().take(400).collect::<String>()))
        .collect()
}

/// Builds the node and the API server, fills it, runs the rounds and the anchor, and tears
/// everything down (also on error). A failure part-way is recorded in the outcome with what
/// was measured until then.
pub fn run(config: &RunConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    ensure!(
        (1..=crate::cluster::MAX_SERVICES).contains(&config.services),
        "1 to {} Services fit the address plan",
        crate::cluster::MAX_SERVICES
    );
    ensure!(
        config.endpoints == WEB_ENDPOINTS.len(),
        "the measured Service has {} endpoints: --endpoints must be {} too",
        WEB_ENDPOINTS.len(),
        WEB_ENDPOINTS.len()
    );
    let cluster = Cluster::new(config.services, config.endpoints, WEB_ENDPOINTS.to_vec());
    eprintln!("building the node and the API server");
    let topo = Topology::new(1, 0)?;
    let api = ApiServer::start(topo.net(), topo.scratch_dir())?;
    let mut outcome = Outcome::default();
    if let Err(error) = run_phases(config, &topo, &api, &cluster, &mut outcome) {
        eprintln!("the run stopped early: {error:#}");
        outcome.failure = Some(format!("{error:#}"));
    }
    outcome.apiserver_problems = problems("apiserver", &api.log());
    drop(api);
    drop(topo);
    Ok(outcome)
}

fn run_phases(
    config: &RunConfig,
    topo: &Topology,
    api: &ApiServer,
    cluster: &Cluster,
    outcome: &mut Outcome,
) -> Result<()> {
    eprintln!(
        "writing {} Services × {} endpoints (a Service and an EndpointSlice each)",
        config.services, config.endpoints
    );
    let stored = writer::write(topo.net(), &api.kubeconfig(), cluster, config.concurrency)?;
    eprintln!(
        "  stored: {} Services, {} EndpointSlices ({} complete) in {:.1} s",
        stored.services, stored.slices, stored.slices_complete, stored.took_s
    );
    outcome.stored = Some(stored.clone());
    ensure!(
        stored.services == stored.services_before + config.services
            && stored.slices_complete == config.services,
        "the API server holds {} Services and {} complete slices, not {} and {}",
        stored.services,
        stored.slices_complete,
        stored.services_before + config.services,
        config.services
    );
    // The run's own prefix (the reaper's pattern): `<prefix>-client` is the cgroup,
    // `/sys/fs/bpf/<prefix>-round<n>` each round's pins.
    let prefix = switchyard_tests::unique_prefix();
    let cgroup = RunCgroup::create(&format!("{prefix}-client"))?;
    let spec = DaemonSpec {
        bin: config.switchyard.clone(),
        node: topo.node(0).clone(),
        kubeconfig: api.kubeconfig(),
        hostname: topo.node_name(0),
        cgroup: cgroup.path.clone(),
        metrics: SocketAddr::from(([127, 0, 0, 1], 10249)),
        healthz: SocketAddr::from(([127, 0, 0, 1], 10256)),
        extra_args: config.daemon_args.clone(),
        poll_interval: config.poll_interval,
        timeout: config.start_timeout,
    };
    for round in 1..=config.rounds {
        let pin_path =
            Path::new(switchyard_tests::daemon::BPFFS).join(format!("{prefix}-round{round}"));
        let log_dir = topo.scratch_dir().join(format!("round{round}"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let mut record = Round {
            round,
            pin_path: pin_path.display().to_string(),
            ..Round::default()
        };
        ensure!(!pin_path.exists(), "{} exists already", pin_path.display());
        // Dropped at the end of the round, after the daemon: `switchyard cleanup` empties
        // the pins and detaches the programs, so the next round starts from nothing.
        let _state = EbpfState {
            bin: config.switchyard.clone(),
            pin_path: pin_path.clone(),
            cgroup: cgroup.path.clone(),
        };
        let variants: &[Variant] = if config.restart {
            &[Variant::Cold, Variant::Restart]
        } else {
            &[Variant::Cold]
        };
        for &variant in variants {
            let start = measure_start(config, &spec, &pin_path, &log_dir, variant, round);
            let failed = start.failure.is_some();
            match variant {
                Variant::Cold => record.cold = Some(start),
                Variant::Restart => record.restart = Some(start),
            }
            if failed {
                break;
            }
        }
        outcome.rounds.push(record);
    }
    drop(cgroup);
    if let Some(anchor) = &config.anchor {
        eprintln!(
            "anchor: kube-proxy's rule shapes for the same {} × {} cluster, from empty",
            config.services, config.endpoints
        );
        outcome.anchor = anchor::run(anchor, &prefix, cluster);
    }
    Ok(())
}

/// One start of a round: started, followed, its maps read, stopped.
fn measure_start(
    config: &RunConfig,
    spec: &DaemonSpec,
    pin_path: &Path,
    log_dir: &Path,
    variant: Variant,
    round: usize,
) -> Start {
    let name = match variant {
        Variant::Cold => "cold",
        Variant::Restart => "restart",
    };
    let (mut process, mut start) = match spec.start(pin_path, &log_dir.join(format!("{name}.log")))
    {
        Ok(started) => started,
        Err(error) => {
            return Start {
                failure: Some(format!("{error:#}")),
                ..Start::default()
            };
        }
    };
    if start.failure.is_none() {
        start.frontends = Some(
            spec.frontends(config.endpoints)
                .map_err(|e| format!("{e:#}")),
        );
        if config.check_maps {
            start.maps = Some(start::map_digest(pin_path).map_err(|e| format!("{e:#}")));
        }
    }
    match start::stop(&mut process) {
        Ok(stopped) => start.stop = Some(stopped),
        Err(error) => {
            start
                .failure
                .get_or_insert_with(|| format!("stopping: {error:#}"));
        }
    }
    // Warnings logged after the first view (the check after it, the shutdown) count too.
    if let Ok(whole) = std::fs::read_to_string(&start.log_path) {
        start.log.recount_problems(&whole);
    }
    eprintln!(
        "  round {round}, {}: {}",
        variant.as_str(),
        report::one_line(&start)
    );
    start
}
