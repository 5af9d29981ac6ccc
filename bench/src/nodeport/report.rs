//! The dated result of a `nodeport` run: medians over the rounds per target
//! and load, their ratios to direct, the checks made before measuring, every
//! run, and what went wrong; Markdown for people, JSON for tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::load::Load;
use super::{Measurement, Outcome, RunConfig};
use crate::machine::Machine;
use crate::report::median;

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// Rounds.
    pub rounds: usize,
    /// One measurement window, seconds.
    pub duration_s: f64,
    /// Unrecorded warm-up per target and round, seconds.
    pub warmup_s: f64,
    /// Idle time before each measurement, seconds.
    pub pause_s: f64,
    /// A CPU busier than this fraction in the pause made the run wait.
    pub quiet_threshold: f64,
    /// The longest such wait, seconds.
    pub quiet_wait_s: f64,
    /// The loads, in order.
    pub loads: Vec<Load>,
    /// Cap on the requests of one run.
    pub max_requests: u64,
    /// The CPU of the daemon, the API server and the rule loads.
    pub proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    pub load_cpu: usize,
    /// kube-proxy's `--cluster-cidr`.
    pub cluster_cidr: String,
    /// `net.ipv4.tcp_timestamps` in the external client's namespace, if set.
    pub client_tcp_timestamps: Option<u8>,
    /// Whether the bridge was prepared for XDP (for every target).
    #[serde(default)]
    pub xdp_bridge: bool,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &RunConfig) -> Self {
        Self {
            rounds: config.rounds,
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            pause_s: config.pause.as_secs_f64(),
            quiet_threshold: config.quiet_threshold,
            quiet_wait_s: config.quiet_wait.as_secs_f64(),
            loads: config.loads.clone(),
            max_requests: config.max_requests,
            proxy_cpu: config.proxy_cpu,
            load_cpu: config.load_cpu,
            cluster_cidr: config.cluster_cidr.clone(),
            client_tcp_timestamps: config.client_tcp_timestamps,
            xdp_bridge: config.xdp_bridge,
        }
    }
}

/// One target under one load, over the rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The target.
    pub target: String,
    /// The load.
    pub load: Option<Load>,
    /// Median rate: connections (or kept-alive requests) per second.
    pub rate: Option<f64>,
    /// Each round's rate, in round order (failed runs left out).
    pub rates: Vec<f64>,
    /// Median over the rounds of the median latency, microseconds.
    pub p50_us: Option<f64>,
    /// Median over the rounds of the 99th percentile, microseconds.
    pub p99_us: Option<f64>,
    /// Runs that produced no result.
    pub failed_runs: usize,
    /// Failed requests over the runs.
    pub errors: u64,
    /// Median CPU use of the switchyard daemon during the runs, percent of
    /// one CPU.
    pub daemon_cpu_pct: Option<f64>,
    /// `rate / direct's rate`.
    pub rate_vs_direct: Option<f64>,
    /// `p50 / direct's p50`.
    pub p50_vs_direct: Option<f64>,
    /// `p99 / direct's p99`.
    pub p99_vs_direct: Option<f64>,
}

impl Stat {
    fn of(measurements: &[Measurement], target: &str, load: Load) -> Self {
        let mut stat = Self {
            target: target.to_owned(),
            load: Some(load),
            ..Self::default()
        };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut daemon = Vec::new();
        for m in measurements
            .iter()
            .filter(|m| m.target == target && m.load == load)
        {
            let Some(result) = m.result.as_ref().filter(|_| m.failure.is_none()) else {
                stat.failed_runs += 1;
                continue;
            };
            stat.rates.push(result.rate());
            stat.errors += result.errors();
            if let Some(latency) = result.latency() {
                p50.push(latency.p50_us as f64);
                p99.push(latency.p99_us as f64);
            }
            if let Some(cpu_s) = m.daemon_cpu_s {
                let window = match &result {
                    super::load::RunResult::Connections(r) => r.duration_s,
                    super::load::RunResult::KeepAlive(r) => r.duration_s,
                };
                daemon.push(100.0 * cpu_s / window.max(f64::EPSILON));
            }
        }
        stat.rate = median(&stat.rates);
        stat.p50_us = median(&p50);
        stat.p99_us = median(&p99);
        stat.daemon_cpu_pct = median(&daemon);
        stat
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The whole result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// Uncommitted changes to switchyard's sources at the time of the run.
    pub uncommitted_sources: Vec<String>,
    /// How.
    pub method: Method,
    /// Per target and load, in target then load order.
    pub stats: Vec<Stat>,
    /// Everything measured and seen.
    pub outcome: Outcome,
}

/// The target the others are divided by.
const ANCHOR: &str = "direct";

impl Report {
    /// Summarizes `outcome`.
    pub fn new(
        machine: Machine,
        uncommitted_sources: Vec<String>,
        method: Method,
        outcome: Outcome,
    ) -> Self {
        let mut stats = Vec::new();
        for target in &outcome.targets {
            for &load in &method.loads {
                stats.push(Stat::of(&outcome.measurements, &target.name, load));
            }
        }
        let anchors: Vec<Stat> = stats
            .iter()
            .filter(|s| s.target == ANCHOR)
            .cloned()
            .collect();
        for stat in &mut stats {
            if let Some(anchor) = anchors.iter().find(|a| a.load == stat.load) {
                stat.rate_vs_direct = ratio(stat.rate, anchor.rate);
                stat.p50_vs_direct = ratio(stat.p50_us, anchor.p50_us);
                stat.p99_vs_direct = ratio(stat.p99_us, anchor.p99_us);
            }
        }
        Self {
            machine,
            uncommitted_sources,
            method,
            stats,
            outcome,
        }
    }

    fn stat(&self, target: &str, load: Load) -> Option<&Stat> {
        self.stats
            .iter()
            .find(|s| s.target == target && s.load == Some(load))
    }

    /// Writes `<dir>/<date>-nodeport[-<tag>].md` and `.json`, `date`
    /// defaulting to the day of the run; returns their paths.
    pub fn write(
        &self,
        dir: &Path,
        date: Option<&str>,
        tag: Option<&str>,
    ) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let date = date.unwrap_or(&self.machine.date);
        let stem = match tag {
            Some(tag) => format!("{date}-nodeport-{tag}"),
            None => format!("{date}-nodeport"),
        };
        let md = dir.join(format!("{stem}.md"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&md, self.markdown()).with_context(|| format!("write {}", md.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", json.display()))?;
        Ok((md, json))
    }

    /// The report for people.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "# NodePort to a pod on another node: switchyard's tc eBPF datapath against kube-proxy's iptables rules\n"
        );
        let _ = writeln!(
            out,
            "Run {} on Linux {}, {} CPUs ({}); switchyard {} (`{}`, built {}), {} build.",
            m.started,
            m.kernel,
            m.cpus,
            m.cpu_model,
            short(&m.switchyard_commit),
            m.switchyard_binary,
            m.switchyard_built,
            m.profile
        );
        if self.uncommitted_sources.is_empty() {
            out.push_str("No uncommitted changes to switchyard's sources.\n\n");
        } else {
            let _ = writeln!(
                out,
                "Uncommitted changes to switchyard's sources: {}.\n",
                self.uncommitted_sources.join("; ")
            );
        }
        let _ = writeln!(
            out,
            "An external client (192.168.0.200, on the bridge, outside the cluster) connects to the NodePort 192.168.0.10:30080 of node 0; the Service's only endpoint is the pod web-1-0 (10.244.1.10:8080) on node 1, so node 0 translates the destination and the source (to its own address) and forwards over the bridge, and the replies come back through node 0. The anchor, direct, connects to the pod's address routed via node 1, with no Service and no NAT. Node 1 runs no proxy, except for switchyard-dsr, which needs switchyard on the backend's node too (node 0 only translates the destination and marks the SYN; node 1 sends the replies straight to the client). Medians of {} rounds, the targets one after another in each round; only one target is ever set up.\n",
            self.method.rounds
        );
        self.write_failures(&mut out);
        self.write_connections(&mut out);
        self.write_keepalive(&mut out);
        self.write_switchyard(&mut out);
        self.write_method(&mut out);
        self.write_checks(&mut out);
        self.write_runs(&mut out);
        self.write_problems(&mut out);
        out
    }

    fn write_failures(&self, out: &mut String) {
        let failed = self.outcome.failed_targets();
        if failed.is_empty() {
            return;
        }
        out.push_str("## NOT MEASURED\n\n");
        for (target, why) in &failed {
            let _ = writeln!(
                out,
                "**{target}** failed:\n\n```text\n{}\n```\n",
                why.trim()
            );
        }
    }

    fn write_connections(&self, out: &mut String) {
        let loads: Vec<Load> = self
            .method
            .loads
            .iter()
            .copied()
            .filter(|l| matches!(l, Load::Connections { .. }))
            .collect();
        if loads.is_empty() {
            return;
        }
        out.push_str("## New connections per second\n\n");
        out.push_str(
            "A new TCP connection per request (`loadgen --scenario cps`: connect, `GET /` with `Connection: close`, read to EOF, close). The latency is that of the whole connection, from `connect()` to EOF, with one connection in flight (so it is the path's own cost, not a queue). Ratios are to direct: for the rate, 1.00 is as fast as direct; for latency, above 1 is slower.\n\n",
        );
        let mut head = String::from("| target |");
        let mut rule = String::from("|---|");
        for load in &loads {
            let _ = write!(head, " conn/s, {load} | vs direct |");
            rule.push_str("---:|---:|");
        }
        let single = loads
            .iter()
            .copied()
            .find(|l| matches!(l, Load::Connections { in_flight: 1 }));
        if single.is_some() {
            head.push_str(" connection p50 / p99 (x1) | vs direct (p50 / p99) |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for target in &self.outcome.targets {
            let mut row = format!("| {} |", target.name);
            for &load in &loads {
                let stat = self.stat(&target.name, load);
                let _ = write!(
                    row,
                    " {} | {} |",
                    rate_cell(stat),
                    times(stat.and_then(|s| s.rate_vs_direct))
                );
            }
            if let Some(load) = single {
                let stat = self.stat(&target.name, load);
                let _ = write!(
                    row,
                    " {} / {} | {} / {} |",
                    micros(stat.and_then(|s| s.p50_us)),
                    micros(stat.and_then(|s| s.p99_us)),
                    times(stat.and_then(|s| s.p50_vs_direct)),
                    times(stat.and_then(|s| s.p99_vs_direct)),
                );
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }

    fn write_keepalive(&self, out: &mut String) {
        let loads: Vec<Load> = self
            .method
            .loads
            .iter()
            .copied()
            .filter(|l| matches!(l, Load::KeepAlive { .. }))
            .collect();
        if loads.is_empty() {
            return;
        }
        out.push_str("## Request latency on a kept-alive connection\n\n");
        out.push_str(
            "`GET /` again and again on a connection kept alive (the `keepalive` probe of this benchmark; the first request of each connection is not counted), one request in flight: the latency of a request on a flow the datapath already knows (conntrack entry in place), from the write to the last byte of the answer.\n\n",
        );
        out.push_str("| target | load | requests/s | vs direct | p50 | p99 | vs direct (p50 / p99) |\n|---|---|---:|---:|---:|---:|---:|\n");
        for target in &self.outcome.targets {
            for &load in &loads {
                let stat = self.stat(&target.name, load);
                let _ = writeln!(
                    out,
                    "| {} | {load} | {} | {} | {} | {} | {} / {} |",
                    target.name,
                    rate_cell(stat),
                    times(stat.and_then(|s| s.rate_vs_direct)),
                    micros(stat.and_then(|s| s.p50_us)),
                    micros(stat.and_then(|s| s.p99_us)),
                    times(stat.and_then(|s| s.p50_vs_direct)),
                    times(stat.and_then(|s| s.p99_vs_direct)),
                );
            }
        }
        out.push('\n');
    }

    fn write_switchyard(&self, out: &mut String) {
        let daemon_rows: Vec<&Stat> = self
            .stats
            .iter()
            .filter(|s| s.daemon_cpu_pct.is_some())
            .collect();
        let rounds: Vec<_> = self
            .outcome
            .rounds
            .iter()
            .filter(|r| r.teardown.daemon_cpu_s.is_some())
            .collect();
        let rules: Vec<_> = self
            .outcome
            .rounds
            .iter()
            .filter(|r| r.setup.rules_load_s.is_some())
            .collect();
        if daemon_rows.is_empty() && rounds.is_empty() && rules.is_empty() {
            return;
        }
        out.push_str("## Set-up and the proxies' own CPU\n\n");
        if !daemon_rows.is_empty() {
            out.push_str(
                "The switchyard daemon's CPU time (user + system, `/proc/<pid>/stat`) during the load windows, as a share of one CPU (the datapath itself runs in the kernel, in the softirq of the CPU the packets arrive on, and is not in this figure):\n\n",
            );
            for stat in daemon_rows {
                let _ = writeln!(
                    out,
                    "- {} under {}: {:.2} % of a CPU",
                    stat.target,
                    stat.load.map_or_else(String::new, |l| l.to_string()),
                    stat.daemon_cpu_pct.unwrap_or_default()
                );
            }
            out.push('\n');
        }
        for r in rounds {
            let mut packets = String::new();
            if let Some(n) = r.teardown.nodeport_packets {
                let _ = write!(packets, "; {n:.0} packets translated by its programs");
                if let Some(tx) = r.teardown.xdp_tx_packets {
                    let _ = write!(
                        packets,
                        ", {tx:.0} of them sent back out by XDP ({:.0} %)",
                        100.0 * tx / n.max(1.0)
                    );
                }
            }
            let _ = writeln!(
                out,
                "- round {} {}: daemon started and the NodePort answering after {}; {:.2} s of CPU over its whole life (start, sync, measurements, stop){packets}",
                r.round + 1,
                r.target,
                seconds(r.setup.ready_s),
                r.teardown.daemon_cpu_s.unwrap_or_default()
            );
        }
        for r in rules {
            let _ = writeln!(
                out,
                "- round {} {}: {} bytes of rules loaded in {}, answering after {}",
                r.round + 1,
                r.target,
                r.setup.rule_bytes.unwrap_or_default(),
                seconds(r.setup.rules_load_s),
                seconds(r.setup.ready_s)
            );
        }
        out.push('\n');
    }

    fn write_method(&self, out: &mut String) {
        let method = &self.method;
        out.push_str("## How it was measured\n\n");
        out.push_str("```text\n external ns 192.168.0.200 ──┐ bridge br0 192.168.0.1 (network ns, does not forward)\n   loadgen, keepalive probe  ├── node 0 eth0 192.168.0.10  :30080  <- the target: tc programs, or kube-proxy's rules\n                             └── node 1 eth0 192.168.0.11 ── pod web-1-0 10.244.1.10:8080\n```\n\n");
        out.push_str("| target | connects to | what carries the connection |\n|---|---|---|\n");
        for t in &self.outcome.targets {
            let _ = writeln!(out, "| {} | {} | {} |", t.name, t.address, t.summary);
        }
        out.push('\n');
        let loads: Vec<String> = method.loads.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "- The cluster of switchyard-tests: two node namespaces on a bridge, one pod each (`pod-server`), the embedded API server with the Node objects (InternalIP 192.168.0.10 and .11), the Pod and the Service (type NodePort, node port 30080, `externalTrafficPolicy: Cluster`).\n\
             - Per round, each target in turn: set up (switchyard: `switchyard run --proxy-mode ebpf --devices eth0` on node 0, watching the API server, until the NodePort answers; kube-proxy: the hooks and the rules loaded into node 0 with iptables-restore), checked, a {:.0} s warm-up, then the loads ({}) for {:.0} s each, then torn down (switchyard stopped and `switchyard cleanup`; the rules flushed) and the NodePort checked to answer no more.\n\
             - Checks before measuring: 5 fresh connections from the external client must all be answered by web-1-0, and the pod must see the client as 192.168.0.10 (node 0's SNAT or MASQUERADE) through a NodePort target, as 192.168.0.200 directly.\n\
             - CPUs: the load generator, the keep-alive probe and the pod servers on CPU {} (so the kernel's work for the packets, which runs where they are sent, is there too); the daemon, the API server and the rule loads on CPU {}.\n\
             - Before each measurement the CPUs are sampled for {:.0} s; while one is busier than {:.0} % the run waits, up to {:.0} s. The machine is shared: each run's CPU load, before and during, is in the table of every run.\n\
             - kube-proxy's `--cluster-cidr` in its rules: {}. At most {} requests per run.\n\
             - `net.ipv4.tcp_timestamps` in the external client's namespace: {}. With Linux's default (1) every connection's timestamps get a random offset, and one client opening tens of thousands of connections a second through a NAT that reuses source ports (MASQUERADE `--random-fully`; switchyard's SNAT, which keeps the client's port when it can) makes the pod meet a SYN whose timestamp is older than its TIME_WAIT socket's for the same addresses and ports: the pod drops it (PAWS) and the client retransmits it a second later, so the rate measures those stalls, not the datapath. With 2 (timestamps without the random offset) such a SYN reopens the TIME_WAIT socket (RFC 6191). The table of every run counts the client's SYN retransmits and the pod's PAWS drops.\n",
            method.warmup_s,
            loads.join(", "),
            method.duration_s,
            method.load_cpu,
            method.proxy_cpu,
            method.pause_s,
            method.quiet_threshold * 100.0,
            method.quiet_wait_s,
            method.cluster_cidr,
            method.max_requests,
            method
                .client_tcp_timestamps
                .map_or_else(|| "the default".to_owned(), |v| v.to_string()),
        );
        if method.xdp_bridge {
            out.push_str(
                "- The bridge was prepared for XDP, for every target (`Cluster::prepare_xdp`): the external client and the pods compute their TCP checksums (`ethtool -K eth0 tx off`, since a frame that XDP sends back out keeps no checksum offload), and every bridge port runs an XDP program that passes everything (a veth delivers `XDP_TX` frames only to a peer with XDP). The numbers are not comparable with a run on the plain bridge.\n",
            );
        }
    }

    fn write_checks(&self, out: &mut String) {
        out.push_str("## Checks before measuring\n\n| round | target | URL | answered by | pod saw the client as | expected |\n|---:|---|---|---|---|---|\n");
        for r in &self.outcome.rounds {
            match &r.validation {
                Some(v) => {
                    let mut names = v.answered.clone();
                    names.dedup();
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} ({}x) | {} | {} |",
                        r.round + 1,
                        r.target,
                        v.url,
                        names.join(", "),
                        v.answered.len(),
                        v.peer,
                        v.expected_peer
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | | FAILED (see above) | | |",
                        r.round + 1,
                        r.target
                    );
                }
            }
        }
        out.push('\n');
    }

    fn write_runs(&self, out: &mut String) {
        out.push_str("## Every run\n\n| round | target | load | rate /s | p50 | p99 | errors | SYN retransmits | PAWS drops at the pod | CPU busy during | before | waited | daemon CPU | node 0 conntrack |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|\n");
        for m in &self.outcome.measurements {
            let (rate, p50, p99, errors) = match (&m.result, &m.failure) {
                (Some(r), None) => (
                    format!("{:.0}", r.rate()),
                    micros(r.latency().map(|l| l.p50_us as f64)),
                    micros(r.latency().map(|l| l.p99_us as f64)),
                    r.errors().to_string(),
                ),
                _ => (
                    "failed".to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {rate} | {p50} | {p99} | {errors} | {} | {} | {} | {} | {:.0} s | {} | {} |",
                m.round + 1,
                m.target,
                m.load,
                m.client_syn_retransmits
                    .map_or_else(String::new, |n| n.to_string()),
                m.pod_paws_rejects
                    .map_or_else(String::new, |n| n.to_string()),
                percents(&m.cpu_busy),
                percents(&m.background_busy),
                m.quiet_wait_s,
                m.daemon_cpu_s
                    .map_or_else(String::new, |s| format!("{s:.3} s")),
                m.node_conntrack.map_or_else(String::new, |n| n.to_string()),
            );
        }
        out.push('\n');
    }

    fn write_problems(&self, out: &mut String) {
        let mut lines: Vec<String> = Vec::new();
        for m in &self.outcome.measurements {
            if let Some(failure) = &m.failure {
                lines.push(format!(
                    "round {} {} {}: {}",
                    m.round + 1,
                    m.target,
                    m.load,
                    failure.replace('\n', " ")
                ));
            }
            if let Some(result) = &m.result {
                for (kind, n) in result.error_kinds() {
                    lines.push(format!(
                        "round {} {} {}: {n} x {kind}",
                        m.round + 1,
                        m.target,
                        m.load
                    ));
                }
            }
        }
        for r in &self.outcome.rounds {
            if let Some(why) = &r.warmup_failure {
                lines.push(format!(
                    "round {} {} warm-up: {}",
                    r.round + 1,
                    r.target,
                    why.replace('\n', " ")
                ));
            }
            if let Some(why) = &r.teardown_failure {
                lines.push(format!(
                    "round {} {} tear-down: {}",
                    r.round + 1,
                    r.target,
                    why.replace('\n', " ")
                ));
            }
            for line in &r.teardown.daemon_problems {
                lines.push(format!(
                    "round {} {} daemon: `{}`",
                    r.round + 1,
                    r.target,
                    line.trim()
                ));
            }
        }
        out.push_str("## Problems\n\n");
        if lines.is_empty() && self.outcome.failed_targets().is_empty() {
            out.push_str(
                "None: every target answered right, no request failed, the daemon logged no warning.\n",
            );
        }
        for line in lines {
            let _ = writeln!(out, "- {line}");
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn rate_cell(stat: Option<&Stat>) -> String {
    let Some(stat) = stat else {
        return "n/a".to_owned();
    };
    let Some(rate) = stat.rate else {
        return "not measured".to_owned();
    };
    let min = stat.rates.iter().copied().reduce(f64::min).unwrap_or(rate);
    let max = stat.rates.iter().copied().reduce(f64::max).unwrap_or(rate);
    let mut cell = format!("{rate:.0} ({min:.0}–{max:.0})");
    if stat.errors > 0 || stat.failed_runs > 0 {
        let _ = write!(
            cell,
            " [{} errors, {} failed runs]",
            stat.errors, stat.failed_runs
        );
    }
    cell
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

fn micros(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        Some(v) => format!("{v:.0} µs"),
        None => "n/a".to_owned(),
    }
}

fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} s"))
}

fn percents(busy: &[f64]) -> String {
    busy.iter()
        .map(|b| format!("{:.0}%", b * 100.0))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{Latency, LoadResult, Scenario};
    use crate::nodeport::TargetInfo;
    use crate::nodeport::load::RunResult;

    fn run(target: &str, round: usize, rate: f64, p50: u64) -> Measurement {
        Measurement {
            round,
            target: target.to_owned(),
            load: Load::Connections { in_flight: 1 },
            result: Some(RunResult::Connections(LoadResult {
                scenario: Scenario::Cps,
                targets: Vec::new(),
                workers: 1,
                duration_s: 5.0,
                completed: (rate * 5.0) as u64,
                errors: 0,
                error_kinds: std::collections::BTreeMap::new(),
                bytes: 0,
                completed_per_s: rate,
                mb_per_s: 0.0,
                latency: Some(Latency {
                    p50_us: p50,
                    p90_us: p50,
                    p99_us: p50 * 2,
                    max_us: p50 * 3,
                }),
                capped: false,
            })),
            failure: None,
            cpu_busy: Vec::new(),
            background_busy: Vec::new(),
            quiet_wait_s: 0.0,
            daemon_cpu_s: None,
            node_conntrack: None,
            client_syn_retransmits: None,
            pod_paws_rejects: None,
        }
    }

    #[test]
    fn medians_over_rounds_are_divided_by_direct() {
        let outcome = Outcome {
            targets: ["direct", "switchyard-tc"]
                .iter()
                .map(|name| TargetInfo {
                    name: (*name).to_owned(),
                    summary: String::new(),
                    address: String::new(),
                })
                .collect(),
            measurements: vec![
                run("direct", 0, 1000.0, 100),
                run("direct", 1, 3000.0, 100),
                run("direct", 2, 2000.0, 100),
                run("switchyard-tc", 0, 1500.0, 150),
                run("switchyard-tc", 1, 1000.0, 200),
                run("switchyard-tc", 2, 500.0, 100),
            ],
            ..Outcome::default()
        };
        let method = Method {
            rounds: 3,
            duration_s: 5.0,
            warmup_s: 1.0,
            pause_s: 1.0,
            quiet_threshold: 0.25,
            quiet_wait_s: 3.0,
            loads: vec![Load::Connections { in_flight: 1 }],
            max_requests: 1,
            proxy_cpu: 1,
            load_cpu: 0,
            cluster_cidr: String::new(),
            client_tcp_timestamps: Some(2),
            xdp_bridge: false,
        };
        let report = Report::new(Machine::default(), Vec::new(), method, outcome);
        let load = Load::Connections { in_flight: 1 };
        let sy = report.stat("switchyard-tc", load).expect("a row");
        assert_eq!(sy.rate, Some(1000.0));
        assert_eq!(sy.rate_vs_direct, Some(0.5));
        assert_eq!(sy.p50_vs_direct, Some(1.5));
        assert_eq!(sy.p99_vs_direct, Some(1.5));
        let direct = report.stat("direct", load).expect("a row");
        assert_eq!(direct.rate_vs_direct, Some(1.0));
        let text = report.markdown();
        assert!(
            text.contains("| switchyard-tc | 1000 (500–1500) | 0.50 |"),
            "{text}"
        );
    }
}
