//! The dated report of an `apiwatch` run: Markdown for people, JSON (every
//! change, every polling sample, the machine, the settings) for tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::usage::PhaseUsage;
use super::{Bulk, Change, Outcome, RunConfig, Series};
use crate::machine::Machine;

/// The goal: a one-Pod change reaches every node within this, at the 99th
/// percentile, on a 10,000-Service cluster.
pub const GOAL_P99_MS: f64 = 100.0;

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// Services of the bulk load.
    pub services: usize,
    /// Pods per Service.
    pub pods_per_service: usize,
    /// Changes per series.
    pub changes: usize,
    /// Nodes.
    pub nodes: usize,
    /// Creates in flight in the bulk load.
    pub concurrency: usize,
    /// Polling period of `/metrics` in the bulk load, seconds.
    pub poll_interval_s: f64,
    /// Pause between a probe's connects, seconds.
    pub probe_interval_s: f64,
    /// Longest wait per change and node, seconds.
    pub change_timeout_s: f64,
    /// Pause between the bulk load and the second series, seconds.
    pub settle_s: f64,
    /// Extra daemon arguments.
    pub daemon_args: Vec<String>,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &RunConfig) -> Self {
        Self {
            services: config.services,
            pods_per_service: config.pods_per_service,
            changes: config.changes,
            nodes: config.nodes,
            concurrency: config.concurrency,
            poll_interval_s: config.poll_interval.as_secs_f64(),
            probe_interval_s: config.probe_interval.as_secs_f64(),
            change_timeout_s: config.change_timeout.as_secs_f64(),
            settle_s: config.settle.as_secs_f64(),
            daemon_args: config.daemon_args.clone(),
        }
    }
}

/// Order statistics of a set of durations, milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Values.
    pub count: usize,
    /// Values missing (the wait gave up).
    pub missing: usize,
    /// Median (nearest rank).
    pub p50_ms: Option<f64>,
    /// 99th percentile (nearest rank).
    pub p99_ms: Option<f64>,
    /// Largest.
    pub max_ms: Option<f64>,
    /// Smallest.
    pub min_ms: Option<f64>,
    /// Mean.
    pub mean_ms: Option<f64>,
}

fn rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[k - 1])
}

impl Summary {
    /// From durations in nanoseconds (`None`: missing).
    pub fn of(values_ns: impl IntoIterator<Item = Option<u64>>) -> Self {
        let mut missing = 0;
        let mut ms: Vec<f64> = Vec::new();
        for v in values_ns {
            match v {
                Some(ns) => ms.push(ns as f64 / 1e6),
                None => missing += 1,
            }
        }
        ms.sort_by(f64::total_cmp);
        Self {
            count: ms.len(),
            missing,
            p50_ms: rank(&ms, 0.5),
            p99_ms: rank(&ms, 0.99),
            max_ms: ms.last().copied(),
            min_ms: ms.first().copied(),
            mean_ms: (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64),
        }
    }
}

fn since(t: Option<u64>, origin: u64) -> Option<u64> {
    t.map(|t| t.saturating_sub(origin))
}

/// A series summarized.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// `idle` or `loaded`.
    pub name: String,
    /// Services in the cluster.
    pub services: usize,
    /// Pods in the cluster besides the changed one.
    pub pods: usize,
    /// Create sent → acknowledged by the API server.
    pub create_ack: Summary,
    /// Create sent → the writer's watch saw the Pod in the slice.
    pub create_slice: Summary,
    /// Create sent → first successful connect, on the slowest node of each
    /// change (the change reached every node).
    pub create_all_nodes: Summary,
    /// Create sent → first successful connect, every (change, node) pair.
    pub create_any_node: Summary,
    /// The same, per node.
    pub create_per_node: Vec<Summary>,
    /// Slice seen by the writer → first connect on the slowest node.
    pub slice_to_all_nodes: Summary,
    /// Delete sent → refused again on the slowest node.
    pub delete_all_nodes: Summary,
    /// Delete sent → acknowledged.
    pub delete_ack: Summary,
}

impl SeriesSummary {
    /// Summarizes `series`.
    pub fn of(series: &Series, nodes: usize) -> Self {
        let c = &series.changes;
        let all = |open: &[Option<u64>]| -> Option<u64> {
            open.iter()
                .copied()
                .collect::<Option<Vec<u64>>>()?
                .into_iter()
                .max()
        };
        Self {
            name: series.name.clone(),
            services: series.services,
            pods: series.pods,
            create_ack: Summary::of(
                c.iter()
                    .map(|x| Some(x.create_acked_ns.saturating_sub(x.create_sent_ns))),
            ),
            create_slice: Summary::of(c.iter().map(|x| since(x.slice_ready_ns, x.create_sent_ns))),
            create_all_nodes: Summary::of(
                c.iter().map(|x| since(all(&x.open_ns), x.create_sent_ns)),
            ),
            create_any_node: Summary::of(
                c.iter()
                    .flat_map(|x| x.open_ns.iter().map(|t| since(*t, x.create_sent_ns))),
            ),
            create_per_node: (0..nodes)
                .map(|i| {
                    Summary::of(
                        c.iter()
                            .map(|x| since(x.open_ns.get(i).copied().flatten(), x.create_sent_ns)),
                    )
                })
                .collect(),
            slice_to_all_nodes: Summary::of(c.iter().map(|x| {
                let slice = x.slice_ready_ns?;
                since(all(&x.open_ns), slice)
            })),
            delete_all_nodes: Summary::of(
                c.iter().map(|x| since(all(&x.closed_ns), x.delete_sent_ns)),
            ),
            delete_ack: Summary::of(
                c.iter()
                    .map(|x| Some(x.delete_acked_ns.saturating_sub(x.delete_sent_ns))),
            ),
        }
    }
}

/// A figure for kube-proxy, for reference only: nothing of kube-proxy runs
/// in this benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Anchor {
    /// What was measured.
    pub what: String,
    /// The figure.
    pub figure: String,
    /// Where it comes from.
    pub source: String,
}

fn anchors() -> Vec<Anchor> {
    let socketlb = "socketlb report [1]";
    vec![
        Anchor {
            what: "iptables (legacy) mode: one-endpoint change, partial sync".into(),
            figure: "p50 1157 ms, p99 1450 ms (rule load only)".into(),
            source: socketlb.into(),
        },
        Anchor {
            what: "iptables (legacy) mode: full sync".into(),
            figure: "p50 6256 ms, p99 7532 ms; 6.86 s from empty".into(),
            source: socketlb.into(),
        },
        Anchor {
            what: "nftables mode: one-endpoint change (changed chains only)".into(),
            figure: "p50 595 ms, p99 823 ms (rule load only)".into(),
            source: socketlb.into(),
        },
        Anchor {
            what: "nftables mode: program from empty".into(),
            figure: "179.8 s".into(),
            source: socketlb.into(),
        },
        Anchor {
            what: "kube-proxy's batching of changes".into(),
            figure: "at most one sync per `--iptables-min-sync-period` (default 1 s): changes arriving within a second of the last sync wait for the next one, whatever the rule load costs".into(),
            source: "kubernetes/kubernetes#92836 (the 1 s default)".into(),
        },
        Anchor {
            what: "Kubernetes' network programming latency SLI".into(),
            figure: "defined (Service or ready-Pod change → reflected in the load balancing, p99 over all programmers) but its SLO threshold is still unset (WIP)".into(),
            source: "kubernetes/community sig-scalability/slos/network_programming_latency.md".into(),
        },
    ]
}

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// Settings.
    pub method: Method,
    /// The idle series summarized.
    pub idle: Option<SeriesSummary>,
    /// The loaded series summarized.
    pub loaded: Option<SeriesSummary>,
    /// kube-proxy's figures, for reference.
    pub anchors: Vec<Anchor>,
    /// `git status --porcelain` of the sources in the switchyard binary
    /// (`apiserver/`, `control/`, `proxy/`, `ebpf/`) at the time of the run.
    pub uncommitted_sources: Vec<String>,
    /// Everything measured.
    pub outcome: Outcome,
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    crate::report::thousands(n as u64)
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "n/a".to_owned(),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} s"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".to_owned(),
    }
}

fn missing(s: &Summary) -> String {
    if s.missing == 0 {
        String::new()
    } else {
        format!(" ({} timed out)", s.missing)
    }
}

impl Report {
    /// Puts the report together.
    pub fn new(
        machine: Machine,
        uncommitted_sources: Vec<String>,
        method: Method,
        outcome: Outcome,
    ) -> Self {
        let nodes = method.nodes;
        Self {
            machine,
            uncommitted_sources,
            idle: outcome.idle.as_ref().map(|s| SeriesSummary::of(s, nodes)),
            loaded: outcome.loaded.as_ref().map(|s| SeriesSummary::of(s, nodes)),
            method,
            anchors: anchors(),
            outcome,
        }
    }

    /// The Markdown form.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.method;
        let _ = writeln!(
            out,
            "# switchyard following the API server: {} Services × {} Pods, and one-Pod changes, {}\n",
            thousands(m.services),
            m.pods_per_service,
            self.machine.date
        );
        self.write_headline(&mut out);
        self.write_machine(&mut out);
        self.write_method(&mut out);
        self.write_bulk(&mut out);
        self.write_changes(&mut out);
        self.write_anchors(&mut out);
        self.write_observations(&mut out);
        out
    }

    fn write_headline(&self, out: &mut String) {
        out.push_str("## Result\n\n");
        let m = &self.method;
        if let Some(bulk) = &self.outcome.bulk {
            let w = &bulk.writer;
            let _ = writeln!(
                out,
                "- **Bulk load**: {} Services and {} Pods written in {} ({} for the Services); \
                 every node had programmed all of them {} after the first write (by the daemons' own \
                 sync times; first seen complete by polling at {}).",
                thousands(w.services_created),
                thousands(w.pods_created),
                secs(Some(
                    w.pods_done_ns.saturating_sub(w.started_ns) as f64 / 1e9
                )),
                secs(Some(
                    w.services_done_ns.saturating_sub(w.started_ns) as f64 / 1e9
                )),
                secs(bulk.all_programmed_sync_s),
                secs(bulk.all_programmed_s),
            );
        }
        if let Some(loaded) = &self.loaded {
            let p99 = loaded.create_all_nodes.p99_ms;
            let verdict = match p99 {
                Some(p) if p < GOAL_P99_MS && loaded.create_all_nodes.missing == 0 => "**met**",
                Some(_) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "- **One-Pod change at {} Services** (create request sent → first connection to the new Pod \
                 through the ClusterIP, on the slowest of the {} nodes, {} changes): p50 {}, p99 {}, max {}. \
                 Goal p99 < {GOAL_P99_MS:.0} ms: {verdict}.",
                thousands(loaded.services),
                m.nodes,
                loaded.create_all_nodes.count,
                ms(loaded.create_all_nodes.p50_ms),
                ms(p99),
                ms(loaded.create_all_nodes.max_ms),
            );
        }
        if let Some(idle) = &self.idle {
            let _ = write!(
                out,
                "- **Idle cluster** ({} Service{}): p50 {}, p99 {}",
                idle.services,
                if idle.services == 1 { "" } else { "s" },
                ms(idle.create_all_nodes.p50_ms),
                ms(idle.create_all_nodes.p99_ms)
            );
            if let Some(loaded) = &self.loaded {
                let _ = write!(
                    out,
                    "; the loaded cluster takes {} the idle one's time at p50 and {} at p99",
                    ratio(loaded.create_all_nodes.p50_ms, idle.create_all_nodes.p50_ms),
                    ratio(loaded.create_all_nodes.p99_ms, idle.create_all_nodes.p99_ms),
                );
            }
            out.push_str(".\n");
        }
        if let Some(failure) = &self.outcome.failure {
            let _ = writeln!(
                out,
                "- **The run stopped early**: {}",
                failure.replace('\n', " ")
            );
        }
        out.push('\n');
    }

    fn write_machine(&self, out: &mut String) {
        let m = &self.machine;
        let uncommitted = if self.uncommitted_sources.is_empty() {
            "none".to_owned()
        } else {
            self.uncommitted_sources.join(", ")
        };
        out.push_str("## Machine and versions\n\n| | |\n|---|---|\n");
        for (key, value) in [
            ("started (UTC)", m.started.clone()),
            ("kernel", m.kernel.clone()),
            ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
            ("switchyard commit", m.switchyard_commit.clone()),
            (
                "uncommitted in apiserver/, control/, proxy/, ebpf/",
                uncommitted,
            ),
            (
                "switchyard binary (daemons and API server)",
                format!("`{}`, built {}", m.switchyard_binary, m.switchyard_built),
            ),
            ("benchmark build profile", m.profile.clone()),
        ] {
            let _ = writeln!(out, "| {key} | {value} |");
        }
        out.push('\n');
    }

    fn write_method(&self, out: &mut String) {
        let m = &self.method;
        let _ = write!(
            out,
            "## Method\n\n\
             - **Cluster**: the multi-node topology of switchyard-tests: {nodes} node namespaces on one bridge, \
             each with 2 real pod servers (`pod-server`, `10.244.<node>.10`–`11`, HTTP on 8080) and a client \
             namespace in a cgroup of its own. The embedded API server (`switchyard apiserver`, its database \
             committed with fsync per write) runs in the bridge's namespace on `192.168.0.1:6443`, its \
             EndpointSlice controller deriving the slices from the Pods. Each node runs `switchyard run \
             --proxy-mode ebpf --kubeconfig ... --sync-period 1h` (eBPF socket load balancing attached to the \
             node's client cgroup), watching Services and EndpointSlices. Daemon arguments added: {args}.\n\
             - **Writer**: a process in the bridge's namespace (the only one that reaches the API server), \
             using `kube` as any client would (one HTTPS request per object, {conc} in flight in the bulk load).\n\
             - **Idle series first**: Service `default/web` (`10.96.0.10:80` → 8080, selector `app=web`) is \
             created with no Pod; then {changes} one-Pod changes: a Pod `app=web`, ready at creation, with the \
             address of one of the real pod servers (rotating over the nodes), is created; a probe on every \
             node's client starts a fresh non-blocking connect to `10.96.0.10:80` every {probe} ms (each \
             given 200 ms), and the latency is from just before the create request is sent to the first \
             connect that succeeds (a connect refused by the eBPF program for lack of backends fails at once). \
             Then the Pod is deleted (grace period 0) and each probe connects until it is refused again \
             before the next change. All times are `CLOCK_MONOTONIC`, shared by the writer, the probes and \
             this process. The writer also watches `web`'s EndpointSlices, which shows when the API server's \
             controller wrote the change (split: API server + controller, then watch delivery + daemon + \
             map write).\n\
             - **Bulk load**: {services} Services `svc-<n>` (ClusterIP allocated by the server, port 80 → 8080, \
             selector `app=svc-<n>`), all Services first, then {pps} Pods each (ready at creation, spread \
             over the nodes, fake addresses from `10.225.0.0` up that nothing connects to). Each daemon's \
             `/metrics` is read every {poll} s: a node has programmed the load when `switchyard_services` \
             has grown by {services} and the active backends read from its kernel maps \
             (`switchyard_service_backends{{state=\"active\"}}`, summed) by {total}; its last sync time \
             (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`) then dates the sync that completed it. \
             Afterwards `switchyard services -o json` on each node counts what its maps hold, and three \
             Services (first, middle, last) are checked for all their backends.\n\
             - **Loaded series**: after {settle} s of rest, the same {changes} changes with the bulk load in \
             place. No `/metrics` read happens during a series (a read walks the kernel maps under the \
             datapath's lock), only before and after it.\n\
             - CPU time (user + system) and resident memory of every daemon, the API server and the writer \
             are read from `/proc/<pid>/stat` and `/proc/<pid>/status`.\n\
             - Percentiles are nearest-rank over the changes; \"all nodes\" is, per change, the slowest \
             node's time (the change had reached every node).\n\n",
            nodes = m.nodes,
            args = if m.daemon_args.is_empty() {
                "none".to_owned()
            } else {
                format!("`{}`", m.daemon_args.join(" "))
            },
            conc = m.concurrency,
            changes = m.changes,
            probe = m.probe_interval_s * 1e3,
            services = m.services,
            pps = m.pods_per_service,
            total = m.services * m.pods_per_service,
            poll = m.poll_interval_s,
            settle = m.settle_s,
        );
    }

    fn write_bulk(&self, out: &mut String) {
        out.push_str("## Bulk load\n\n");
        let Some(bulk) = &self.outcome.bulk else {
            out.push_str("Not run.\n\n");
            return;
        };
        let w = &bulk.writer;
        let t = |ns: u64| ns.saturating_sub(w.started_ns) as f64 / 1e9;
        let services_s = t(w.services_done_ns);
        let pods_s = w.pods_done_ns.saturating_sub(w.services_done_ns) as f64 / 1e9;
        let rate = |n: usize, s: f64| {
            if s > 0.0 {
                format!("{:.0}/s", n as f64 / s)
            } else {
                "n/a".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "| phase | objects | took | rate |\n|---|---:|---:|---:|\n\
             | Services written | {} | {} | {} |\n\
             | Pods written | {} | {} | {} |\n\
             | all written | {} | {} | {} |\n\
             | every node programmed all, by its last sync (from the first write) | {} Services, {} backends | {} | |\n\
             | ... first seen complete by polling | | {} | |\n",
            w.services_created,
            secs(Some(services_s)),
            rate(w.services_created, services_s),
            w.pods_created,
            secs(Some(pods_s)),
            rate(w.pods_created, pods_s),
            w.services_created + w.pods_created,
            secs(Some(t(w.pods_done_ns))),
            rate(w.services_created + w.pods_created, t(w.pods_done_ns)),
            bulk.services,
            bulk.pods,
            secs(bulk.all_programmed_sync_s),
            secs(bulk.all_programmed_s),
        );
        if w.errors > 0 || w.retries > 0 {
            let _ = writeln!(
                out,
                "Writes failed: {}, retried: {}; first failure: {}\n",
                w.errors,
                w.retries,
                w.first_error.as_deref().unwrap_or("none")
            );
        }
        out.push_str(
            "| node | programmed (polled) | its last sync | services | frontends | backends (maps) | `switchyard services`: frontends / backends | sampled Services complete |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for n in &bulk.nodes {
            let _ = writeln!(
                out,
                "| node-{} | {} | {} | {:.0} → {:.0} | {:.0} → {:.0} | {:.0} → {:.0} | {} / {} | {} |",
                n.node,
                secs(n.programmed_s),
                secs(n.last_sync_s),
                n.before.services,
                n.after.services,
                n.before.frontends,
                n.after.frontends,
                n.before.backends,
                n.after.backends,
                n.cli_frontends.map_or("n/a".to_owned(), |v| v.to_string()),
                n.cli_backends.map_or("n/a".to_owned(), |v| v.to_string()),
                n.sampled_complete
                    .map_or("n/a".to_owned(), |(a, b)| format!("{a} of {b}")),
            );
        }
        out.push('\n');
        write_usage(
            out,
            "CPU and memory from the first write until every node had programmed the load",
            &bulk.usage,
            bulk.all_programmed_s,
        );
        write_timeline(out, bulk);
    }

    fn write_changes(&self, out: &mut String) {
        out.push_str("## One-Pod change: create to first traffic\n\n");
        let rows: Vec<&SeriesSummary> = [self.idle.as_ref(), self.loaded.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        if rows.is_empty() {
            out.push_str("Not run.\n\n");
            return;
        }
        out.push_str(
            "| cluster | changes | create acked p50 / p99 | slice seen p50 / p99 | **all nodes p50** | **all nodes p99** | all nodes max | slice → all nodes p50 / p99 | delete → refused everywhere p50 / p99 |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &rows {
            let _ = writeln!(
                out,
                "| {} ({} Service{}, {} Pods) | {}{} | {} / {} | {} / {} | {} | {} | {} | {} / {} | {} / {} |",
                s.name,
                s.services,
                if s.services == 1 { "" } else { "s" },
                s.pods,
                s.create_all_nodes.count,
                missing(&s.create_all_nodes),
                ms(s.create_ack.p50_ms),
                ms(s.create_ack.p99_ms),
                ms(s.create_slice.p50_ms),
                ms(s.create_slice.p99_ms),
                ms(s.create_all_nodes.p50_ms),
                ms(s.create_all_nodes.p99_ms),
                ms(s.create_all_nodes.max_ms),
                ms(s.slice_to_all_nodes.p50_ms),
                ms(s.slice_to_all_nodes.p99_ms),
                ms(s.delete_all_nodes.p50_ms),
                ms(s.delete_all_nodes.p99_ms),
            );
        }
        if let (Some(idle), Some(loaded)) = (&self.idle, &self.loaded) {
            let _ = writeln!(
                out,
                "| **loaded / idle** | | {} / {} | {} / {} | {} | {} | {} | {} / {} | {} / {} |",
                ratio(loaded.create_ack.p50_ms, idle.create_ack.p50_ms),
                ratio(loaded.create_ack.p99_ms, idle.create_ack.p99_ms),
                ratio(loaded.create_slice.p50_ms, idle.create_slice.p50_ms),
                ratio(loaded.create_slice.p99_ms, idle.create_slice.p99_ms),
                ratio(loaded.create_all_nodes.p50_ms, idle.create_all_nodes.p50_ms),
                ratio(loaded.create_all_nodes.p99_ms, idle.create_all_nodes.p99_ms),
                ratio(loaded.create_all_nodes.max_ms, idle.create_all_nodes.max_ms),
                ratio(
                    loaded.slice_to_all_nodes.p50_ms,
                    idle.slice_to_all_nodes.p50_ms
                ),
                ratio(
                    loaded.slice_to_all_nodes.p99_ms,
                    idle.slice_to_all_nodes.p99_ms
                ),
                ratio(loaded.delete_all_nodes.p50_ms, idle.delete_all_nodes.p50_ms),
                ratio(loaded.delete_all_nodes.p99_ms, idle.delete_all_nodes.p99_ms),
            );
        }
        out.push_str("\nPer node (create sent → first connect on that node):\n\n| cluster | node | p50 | p99 | max | timed out |\n|---|---|---:|---:|---:|---:|\n");
        for s in &rows {
            for (i, n) in s.create_per_node.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "| {} | node-{i} | {} | {} | {} | {} |",
                    s.name,
                    ms(n.p50_ms),
                    ms(n.p99_ms),
                    ms(n.max_ms),
                    n.missing
                );
            }
            let _ = writeln!(
                out,
                "| {} | every (change, node) | {} | {} | {} | {} |",
                s.name,
                ms(s.create_any_node.p50_ms),
                ms(s.create_any_node.p99_ms),
                ms(s.create_any_node.max_ms),
                s.create_any_node.missing
            );
        }
        out.push('\n');
        out.push_str("The daemons' own `kubeproxy_network_programming_duration_seconds` over each series (from the slice's trigger-time annotation, which the API server's controller sets to when it took the change, to the datapath write), all nodes together; bucket upper bounds:\n\n| cluster | observations | mean | p50 ≤ | p99 ≤ |\n|---|---:|---:|---:|---:|\n");
        for series in [self.outcome.idle.as_ref(), self.outcome.loaded.as_ref()]
            .into_iter()
            .flatten()
        {
            let h = &series.daemon_histogram;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} |",
                series.name,
                h.count,
                ms((h.count > 0.0).then(|| h.sum_s / h.count * 1e3)),
                ms(h.p50_le_s.map(|s| s * 1e3)),
                ms(h.p99_le_s.map(|s| s * 1e3)),
            );
        }
        out.push('\n');
        for series in [self.outcome.idle.as_ref(), self.outcome.loaded.as_ref()]
            .into_iter()
            .flatten()
        {
            write_usage(
                out,
                &format!("CPU and memory over the {} series", series.name),
                &series.usage,
                Some(series.took_s),
            );
        }
    }

    fn write_anchors(&self, out: &mut String) {
        out.push_str(
            "## kube-proxy, for reference only\n\nNo kube-proxy runs in this benchmark; these are the figures we have, \
             none of them end to end through an API server:\n\n| what | figure | source |\n|---|---|---|\n",
        );
        for a in &self.anchors {
            let _ = writeln!(out, "| {} | {} | {} |", a.what, a.figure, a.source);
        }
        out.push_str(
            "\n[1] `bench/results/2026-12-01-socketlb.md`: this machine, 10,000 Services × 10 endpoints, \
             kube-proxy's rule shapes loaded by `iptables-restore` / `nft -f` into an empty namespace, timed \
             from spawn to exit. kube-proxy's own watch of the API server, its computation and its rendering of \
             the rules are not counted, so an end-to-end kube-proxy figure comparable to the ones above would \
             be larger.\n\n",
        );
    }

    fn write_findings(&self, out: &mut String) {
        for s in [self.idle.as_ref(), self.loaded.as_ref()]
            .into_iter()
            .flatten()
        {
            let (Some(slice), Some(total), Some(daemon50), Some(daemon99)) = (
                s.create_slice.p50_ms,
                s.create_all_nodes.p50_ms,
                s.slice_to_all_nodes.p50_ms,
                s.slice_to_all_nodes.p99_ms,
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "- {} cluster: of the median {} from create to every node, {} ({:.0}%) pass before the writer's \
                 watch sees the Pod in the slice (the API server's write, {} of it, and its EndpointSlice \
                 controller, which waits a batching delay after the first change before it reconciles: \
                 `BATCH_DELAY`, 20 ms in `apiserver/src/controller.rs` when this was written); from there, watch delivery to the daemons, their sync and the map writes until the \
                 slowest node connects take {} at the median and {} at p99.",
                s.name,
                ms(Some(total)),
                ms(Some(slice)),
                slice / total * 100.0,
                ms(s.create_ack.p50_ms),
                ms(Some(daemon50)),
                ms(Some(daemon99)),
            );
        }
        if let Some(bulk) = &self.outcome.bulk {
            let w = &bulk.writer;
            let written_s = w.pods_done_ns.saturating_sub(w.started_ns) as f64 / 1e9;
            if let Some(done) = bulk.all_programmed_sync_s {
                let _ = writeln!(
                    out,
                    "- Bulk load: the daemons kept up with the writes: the last node's completing sync came {:.1} s \
                     after the last write was acknowledged, so the {:.1} s are the API server's write rate \
                     ({:.0} objects/s with {} in flight, each write one fsync'd transaction).",
                    done - written_s,
                    done,
                    (w.services_created + w.pods_created) as f64 / written_s.max(1e-9),
                    self.method.concurrency,
                );
            }
            if let Some(api) = bulk.usage.iter().find(|u| u.process == "apiserver") {
                let daemons: Vec<&PhaseUsage> = bulk
                    .usage
                    .iter()
                    .filter(|u| u.process.ends_with("daemon"))
                    .collect();
                let daemon_cpu =
                    daemons.iter().map(|u| u.cpu_s).sum::<f64>() / daemons.len().max(1) as f64;
                let daemon_rss = daemons.iter().map(|u| u.rss_mib).fold(0.0, f64::max);
                let objects = (w.services_created + w.pods_created).max(1) as f64;
                let _ = writeln!(
                    out,
                    "- Bulk load cost: the API server used {:.1} s of CPU and held {:.0} MiB at the end \
                     ({:.1} KiB per object stored, Services and Pods together, slices and history besides); \
                     each daemon used {:.1} s of CPU and at most {:.0} MiB for {} Services and {} backends.",
                    api.cpu_s,
                    api.rss_mib,
                    api.rss_mib * 1024.0 / objects,
                    daemon_cpu,
                    daemon_rss,
                    bulk.services,
                    bulk.pods,
                );
            }
        }
    }

    fn write_observations(&self, out: &mut String) {
        out.push_str("## What was seen\n\n");
        self.write_findings(out);
        let mut any = false;
        for series in [self.outcome.idle.as_ref(), self.outcome.loaded.as_ref()]
            .into_iter()
            .flatten()
        {
            let slow: Vec<&Change> = series
                .changes
                .iter()
                .filter(|c| c.open_ns.iter().any(Option::is_none))
                .collect();
            if !slow.is_empty() {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} series: {} changes did not reach every node within {:.0} s.",
                    series.name,
                    slow.len(),
                    self.method.change_timeout_s
                );
            }
            let errors: Vec<&String> = series
                .changes
                .iter()
                .filter_map(|c| c.create_error.as_ref().or(c.delete_error.as_ref()))
                .collect();
            if let Some(first) = errors.first() {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} series: {} writes failed, the first: {first}",
                    series.name,
                    errors.len()
                );
            }
        }
        if let Some(bulk) = &self.outcome.bulk
            && let Some(failure) = &bulk.failure
        {
            any = true;
            let _ = writeln!(out, "- Bulk load: {failure}");
        }
        if let Some(failure) = &self.outcome.failure {
            any = true;
            let _ = writeln!(out, "- The run stopped early:\n\n```text\n{failure}\n```");
        }
        if !self.outcome.problems.is_empty() {
            any = true;
            let _ = writeln!(
                out,
                "- Warnings and errors logged (first ones per process):\n\n```text\n{}\n```",
                self.outcome.problems.join("\n")
            );
        }
        if !any {
            out.push_str(
                "- Every change reached every node, every write succeeded, and no process logged a warning.\n",
            );
        }
        out.push('\n');
    }

    /// Writes `<dir>/<date>-apiwatch[-<tag>].md` and `.json`; returns their
    /// paths.
    pub fn write(&self, dir: &Path, tag: Option<&str>) -> Result<(PathBuf, PathBuf)> {
        crate::report::write_dated(
            dir,
            &self.machine.date,
            "apiwatch",
            tag,
            &self.markdown(),
            self,
        )
    }
}

/// `git status --porcelain` of the sources the switchyard binary is built
/// from, one entry per changed file, each marked when the file changed after
/// `binary` was built (so the binary cannot hold that change).
pub fn uncommitted_sources(workspace: &Path, binary: &Path) -> Vec<String> {
    let dir = workspace.to_string_lossy();
    let output = std::process::Command::new("git")
        .args(["-c", &format!("safe.directory={dir}"), "-C", &dir])
        .args([
            "status",
            "--porcelain",
            "--",
            "apiserver",
            "control",
            "proxy",
            "ebpf",
        ])
        .output();
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|line| {
                let path = line.split_whitespace().last().unwrap_or_default();
                let changed = std::fs::metadata(workspace.join(path))
                    .and_then(|m| m.modified())
                    .ok();
                match (changed, built) {
                    (Some(changed), Some(built)) if changed > built => {
                        format!("{line} (changed after the binary was built: not in it)")
                    }
                    _ => line.to_owned(),
                }
            })
            .collect(),
        Ok(o) => vec![format!("unknown (git status: {})", o.status)],
        Err(e) => vec![format!("unknown (git: {e})")],
    }
}

fn write_usage(out: &mut String, title: &str, usage: &[PhaseUsage], took_s: Option<f64>) {
    let _ = writeln!(
        out,
        "{title} ({}):\n\n| process | CPU | share of one CPU | resident memory at the end | peak resident memory |\n|---|---:|---:|---:|---:|",
        secs(took_s)
    );
    for u in usage {
        let share = took_s
            .filter(|t| *t > 0.0)
            .map_or("n/a".to_owned(), |t| format!("{:.0}%", u.cpu_s / t * 100.0));
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {share} | {:.0} MiB | {:.0} MiB |",
            u.process, u.cpu_s, u.rss_mib, u.peak_rss_mib
        );
    }
    out.push('\n');
}

fn write_timeline(out: &mut String, bulk: &Bulk) {
    if bulk.timeline.is_empty() {
        return;
    }
    out.push_str("Progress (about ten of the polling samples; every one is in the JSON):\n\n| since the first write | Services written | Pods written | services programmed per node | backends programmed per node |\n|---:|---:|---:|---|---|\n");
    let step = (bulk.timeline.len() / 10).max(1);
    let last = bulk.timeline.len() - 1;
    for (i, s) in bulk.timeline.iter().enumerate() {
        if i % step != 0 && i != last {
            continue;
        }
        let join = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {:.0} s | {} | {} | {} | {} |",
            s.t_s,
            s.services_written,
            s.pods_written,
            join(&s.services),
            join(&s.backends)
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::{Summary, thousands};

    #[test]
    fn percentiles_are_nearest_rank() {
        // 1..=100 ms: p50 is the 50th value, p99 the 99th; a missing value is counted apart.
        let values = (1..=100u64).map(|ms| Some(ms * 1_000_000)).chain([None]);
        let s = Summary::of(values);
        assert_eq!(s.count, 100);
        assert_eq!(s.missing, 1);
        assert_eq!(s.p50_ms, Some(50.0));
        assert_eq!(s.p99_ms, Some(99.0));
        assert_eq!(s.max_ms, Some(100.0));
        assert_eq!(Summary::of([Some(7_000_000)]).p99_ms, Some(7.0));
        assert_eq!(Summary::of([None]).p50_ms, None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
