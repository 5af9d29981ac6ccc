//! switchyard's comparison benchmarks: the userspace L4 TCP proxy measured
//! against HAProxy and against a direct connection to the pods, on one
//! topology of network namespaces, with a load generator of its own.
//!
//! What it owns: the load generator ([`loadgen`], binary `loadgen`), the
//! HAProxy setup ([`haproxy`]), CPU pinning and accounting ([`cpu`]), the
//! run itself ([`suite`]) and its dated report ([`report`], written to
//! `bench/results/`). The binary `compare` ties them together.
//!
//! The socket-LB comparison (binary `socketlb`, module [`socketlb`]) measures
//! switchyard's eBPF datapath against kube-proxy's iptables and nftables rule
//! shapes ([`kube_proxy`], loaded by [`rule_loader`]) on a synthetic cluster
//! of up to 50,000 Services ([`cluster`]).
//!
//! The API-server benchmark (binary `apiwatch`, module [`apiwatch`]) loads
//! 10,000 Services with 10 Pods each through the embedded API server into a
//! three-node cluster and times how long the node daemons take to program
//! them, and how long a one-Pod change takes to reach every node.
//!
//! The NodePort benchmark (binary `nodeport`, module [`nodeport`]) measures a
//! NodePort reached from outside the cluster, its endpoint on another node,
//! through switchyard's tc eBPF datapath and kube-proxy's iptables rules,
//! against a direct connection to the pod.
//!
//! The L7 benchmark (binary `l7`, module [`l7`]) measures switchyard's HTTP
//! proxy against nginx and HAProxy in HTTP mode, with wrk (HTTP/1.1) and
//! h2load (HTTP/2 cleartext), against backends of its own (`l7-backend`).
//!
//! The first-sync benchmark (binary `firstsync`, module [`firstsync`]) times
//! one node daemon's first full sync of 10,000 Services × 3 endpoints from
//! process start, cold and over its own pins, against kube-proxy's rule
//! shapes for the same cluster loaded from empty.
//!
//! What it never does: pass or fail (it measures), or send traffic anywhere
//! but loopback and the namespaces it created through `switchyard-tests`.

#![forbid(unsafe_code)]
// "HAProxy" is a product name in prose, not code to put in backticks.
#![allow(clippy::doc_markdown)]

pub mod apiwatch;
pub mod binaries;
pub mod cluster;
pub mod cpu;
pub mod firstsync;
pub mod haproxy;
pub mod kube_proxy;
pub mod l7;
pub mod loadgen;
pub mod machine;
pub mod nodeport;
pub mod reaper;
pub mod report;
pub mod rule_loader;
pub mod soak;
pub mod socketlb;
pub mod suite;

use std::path::{Path, PathBuf};

use anyhow::Result;

use anyhow::Context as _;

use crate::machine::Machine;
use crate::report::{Method, Report};
use crate::suite::SuiteConfig;

/// Runs the comparison described by `config` against the switchyard binary
/// `switchyard_bin` (which `$SWITCHYARD_BIN` must name: the topology
/// library starts it from there) and writes the report into `out_dir`.
/// Returns the report and the paths of its Markdown and JSON files.
pub fn compare(
    config: &SuiteConfig,
    switchyard_bin: &Path,
    out_dir: &Path,
) -> Result<(Report, PathBuf, PathBuf)> {
    let haproxy = haproxy::version()?;
    let machine = Machine::gather(&switchyard_tests::workspace_dir(), switchyard_bin, haproxy);
    let outcome = suite::run(config)?;
    let report = Report::new(machine, Method::of(config), outcome);
    let (md, json) = report.write(out_dir)?;
    Ok((report, md, json))
}

/// Runs `f` on a thread that has entered network namespace `ns`, and returns what it
/// returned. The thread is not pinned to a CPU unless `f` pins it (what it starts inherits
/// the mask).
pub fn in_netns<T: Send>(
    ns: &switchyard_tests::Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let path = ns.path();
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("enter network namespace {}", path.display()))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {} panicked", ns.name()))?
    })
}
