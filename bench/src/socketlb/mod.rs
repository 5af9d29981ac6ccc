//! `socketlb`: switchyard's eBPF socket-level load balancing against the rule
//! shapes of kube-proxy's iptables and nftables modes, at 10 to 50,000
//! Services: connection setup through a ClusterIP ([`datapath`]) and the
//! time to program the rules and change them ([`control_plane`]), written to
//! a dated report ([`report`]).
//!
//! Everything runs inside namespaces this run creates: the topology of
//! switchyard-tests (client, node, 3 pods), a client namespace per target
//! ([`targets`]), and empty namespaces for the control-plane loads. eBPF
//! programs attach only to cgroups this run created, with pins under
//! run-specific bpffs folders; all of it is removed when the run ends, also
//! on error.

pub mod control_plane;
pub mod datapath;
pub mod report;
pub mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use switchyard_tests::Topology;

use crate::cpu;
use control_plane::{ControlOutcome, ControlTargets};
use datapath::DatapathOutcome;
use targets::Target;

/// How the run is done; built once from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The load generator binary.
    pub loadgen: PathBuf,
    /// The switchyard binary, unless its eBPF mode is unavailable.
    pub switchyard_bin: Option<PathBuf>,
    /// Why switchyard's eBPF mode is not measured, when it is not.
    pub switchyard_missing: Option<String>,
    /// The in-process control-plane driver, if it was built.
    pub control_driver: Option<PathBuf>,
    /// Cluster sizes (Services) of part 1.
    pub sizes: Vec<usize>,
    /// Endpoints per Service (but the measured one, which has the 3 pods).
    pub endpoints: usize,
    /// kube-proxy's `--cluster-cidr` for the rule shapes.
    pub cluster_cidr: String,
    /// The targets of part 1, in round order.
    pub targets: Vec<Target>,
    /// One measurement window.
    pub duration: Duration,
    /// An unrecorded run per target and size before the first round.
    pub warmup: Duration,
    /// Idle time before each measurement, in which the background is sampled.
    pub pause: Duration,
    /// A CPU busier than this in the pause makes the run wait.
    pub quiet_threshold: f64,
    /// The longest such wait.
    pub quiet_wait: Duration,
    /// Rounds per size.
    pub repeats: usize,
    /// Concurrent connections of the load generator for the rate.
    pub workers: usize,
    /// Concurrent connections for the latency runs (0: none).
    pub latency_workers: usize,
    /// Cap on the requests of one load run.
    pub max_requests: u64,
    /// The CPU of the daemon and of the rule loaders.
    pub proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    pub load_cpu: usize,
    /// Services of part 2.
    pub control_services: usize,
    /// One-endpoint changes per method in part 2.
    pub changes: usize,
    /// The longest series of changes per method.
    pub change_time_limit: Duration,
    /// Loads from empty per kube-proxy shape.
    pub control_repeats: usize,
    /// Which part-2 measurements to run.
    pub control_targets: ControlTargets,
    /// Changes written through manifest files to the daemon in part 1, at
    /// the size equal to `control_services` (0: none).
    pub manifest_changes: usize,
    /// A rule load slower than this is killed (the target is then not
    /// measured at that size).
    pub load_timeout: Duration,
    /// Skip part 1.
    pub skip_datapath: bool,
    /// Skip part 2.
    pub skip_control: bool,
}

/// Everything the run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Part 1.
    pub datapath: DatapathOutcome,
    /// Part 2.
    pub control: Option<ControlOutcome>,
}

/// Builds the topology, runs both parts and tears everything down.
pub fn run(config: &RunConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    // Everything spawned from here on starts on the load CPU, unless spawned
    // inside `cpu::with_cpu` (the daemon) or a pinned loader thread.
    cpu::pin_this_thread(&[config.load_cpu])?;
    let mut topo = Topology::new(3)?;
    topo.start_pod_servers()?;
    let pods: Vec<_> = topo
        .pods()
        .iter()
        .map(switchyard_tests::PodNs::ipv4)
        .collect();
    let mut outcome = Outcome::default();
    if !config.skip_datapath {
        let mut changes = |daemon: &switchyard_tests::Daemon,
                           manifests: &switchyard_tests::Manifests,
                           cluster: &crate::cluster::Cluster| {
            if config.manifest_changes == 0 || cluster.services != config.control_services {
                return None;
            }
            eprintln!(
                "  switchyard-ebpf: {} changes through manifest files",
                config.manifest_changes
            );
            match control_plane::manifest_changes(
                daemon,
                manifests,
                cluster,
                config.manifest_changes,
            ) {
                Ok(summary) => Some(summary),
                Err(error) => {
                    eprintln!("  manifest changes failed: {error:#}");
                    None
                }
            }
        };
        outcome.datapath = datapath::run(config, &topo, &mut changes);
    }
    if !config.skip_control {
        outcome.control = Some(control_plane::run(config, topo.prefix(), pods));
    }
    Ok(outcome)
}
