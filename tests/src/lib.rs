//! Test topologies for switchyard: network namespaces as a node, its pods and
//! a client; real backend servers (`pod-server`); the real `switchyard`
//! binary; real clients (`curl`, `python3`).
//!
//! The end-to-end tests in `tests/` and the comparison benchmarks build on
//! this library. Everything it creates is owned by a guard whose `Drop`
//! undoes it, also when a test panics: [`Process`] kills its process by PID
//! (SIGTERM, then SIGKILL), [`Netns`] deletes its namespace, [`ScratchDir`]
//! removes its files (and keeps them, printing where, when the test failed).
//!
//! The daemon runs in either proxy mode ([`Mode`]): in eBPF mode
//! ([`DaemonConfig::ebpf`]) its programs are attached to the topology's
//! client cgroup and its maps and links pinned under
//! `/sys/fs/bpf/<topology prefix>`; [`Daemon`] and [`Topology`] run
//! `switchyard cleanup` when dropped, so no program, link or pin outlives
//! the test.
//!
//! What it never does: touch the machine's own interfaces, routes or root
//! cgroup, or give a namespace a route out of the machine. Every veth pair is
//! created inside the test's namespaces, no namespace has a default route
//! that leads anywhere but the test's own node, and the node namespace has no
//! link to the host at all.
//!
//! A typical test:
//!
//! ```no_run
//! use switchyard_tests::{Manifests, Topology, client, objects};
//! # fn main() -> anyhow::Result<()> {
//! let mut topo = Topology::new(3)?;
//! topo.start_pod_servers()?;
//! let manifests = Manifests::new_in(topo.scratch_dir())?;
//! manifests.write_objects("svc.yaml", &[objects::Service::new("web")
//!     .cluster_ips(&["10.96.0.10"])
//!     .selector("app", "web")
//!     .port(objects::ServicePort::tcp("http", 80, 8080))
//!     .to_value()])?;
//! let daemon = topo.start_daemon(&manifests)?;
//! let names = client::curl_many(topo.client(), "http://10.96.0.10/", 30)?;
//! # drop(daemon); Ok(()) }
//! ```

#![forbid(unsafe_code)]
// A synchronous test harness: std's clock and locks are the right ones here.
#![allow(clippy::disallowed_types)]

pub mod client;
pub mod cluster;
pub mod daemon;
pub mod h2_backend;
pub mod manifests;
pub mod metrics;
pub mod netns;
pub mod objects;
pub mod poll;
pub mod scratch;
pub mod sockets;
pub mod topology;
pub mod yaml;

pub use cluster::{ApiServer, Cluster, ClusterPod, Kubectl, ensure_kubectl};
pub use daemon::{Daemon, DaemonConfig, EbpfPaths, Mode};
pub use manifests::Manifests;
pub use netns::{Netns, Process, require_root, unique_prefix};
pub use poll::poll_until;
pub use scratch::ScratchDir;
pub use topology::{PodNs, PodServerConfig, Topology};

use std::path::PathBuf;

/// The workspace root (the folder holding the workspace `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), std::path::Path::to_path_buf)
}

/// Generates `mod NAME { fn userspace(); fn ebpf(); }` for each scenario `NAME(mode)`: two
/// `#[test]`s, one per proxy mode.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn userspace() -> anyhow::Result<()> {
                super::$name($crate::Mode::Userspace)
            }

            #[test]
            fn ebpf() -> anyhow::Result<()> {
                super::$name($crate::Mode::Ebpf)
            }
        }
    )*};
}

/// A topology with `pods` pods running the default servers (`web-<i>`) and a manifest
/// folder holding this node's Node object (its IPv4 and IPv6 `InternalIP`s).
pub fn cluster(pods: usize) -> anyhow::Result<(Topology, Manifests)> {
    let mut topo = Topology::new(pods)?;
    topo.start_pod_servers()?;
    let manifests = Manifests::new_in(topo.scratch_dir())?;
    manifests.write_objects(
        "node.yaml",
        &[objects::node(
            topology::NODE_NAME,
            &[
                std::net::IpAddr::V4(topology::NODE_IP4),
                std::net::IpAddr::V6(topology::NODE_IP6),
            ],
        )],
    )?;
    Ok((topo, manifests))
}
