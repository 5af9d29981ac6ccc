//! The dated report of a `socketlb` run: Markdown for people, JSON (every
//! run, the machine, the settings) for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::control_plane::{Changes, ControlOutcome, Durations};
use super::datapath::Measurement;
use super::targets::Target;
use super::{Outcome, RunConfig};
use crate::machine::Machine;
use crate::report::median;

/// Versions of the tools measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Versions {
    /// `iptables-legacy -V`.
    pub iptables_legacy: String,
    /// `iptables-nft -V`.
    pub iptables_nft: String,
    /// `nft -v`.
    pub nft: String,
}

fn first_line(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Ok(output) => format!("unknown ({program} {arg}: {})", output.status),
        Err(error) => format!("not installed ({program}: {error})"),
    }
}

impl Versions {
    /// Asks each tool.
    pub fn gather() -> Self {
        Self {
            iptables_legacy: first_line("iptables-legacy", "-V"),
            iptables_nft: first_line("iptables-nft", "-V"),
            nft: first_line("nft", "-v"),
        }
    }
}

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// Cluster sizes of part 1.
    pub sizes: Vec<usize>,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// kube-proxy's `--cluster-cidr`.
    pub cluster_cidr: String,
    /// Targets of part 1.
    pub targets: Vec<Target>,
    /// One measurement, seconds.
    pub duration_s: f64,
    /// Warm-up per target and size, seconds.
    pub warmup_s: f64,
    /// Pause before each measurement, seconds.
    pub pause_s: f64,
    /// Quiet threshold (fraction of a CPU).
    pub quiet_threshold: f64,
    /// Longest quiet wait, seconds.
    pub quiet_wait_s: f64,
    /// Rounds per size.
    pub repeats: usize,
    /// Load generator connections of the rate runs.
    pub workers: usize,
    /// Load generator connections of the latency runs.
    pub latency_workers: usize,
    /// The daemon's and loaders' CPU.
    pub proxy_cpu: usize,
    /// The load generator's and pods' CPU.
    pub load_cpu: usize,
    /// Services of part 2.
    pub control_services: usize,
    /// Changes asked per method in part 2.
    pub changes: usize,
    /// Time limit per series of changes, seconds.
    pub change_time_limit_s: f64,
    /// Loads from empty per kube-proxy shape.
    pub control_repeats: usize,
    /// Changes through manifest files in part 1.
    pub manifest_changes: usize,
    /// Longest rule load, seconds.
    pub load_timeout_s: f64,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &RunConfig) -> Self {
        Self {
            sizes: config.sizes.clone(),
            endpoints: config.endpoints,
            cluster_cidr: config.cluster_cidr.clone(),
            targets: config.targets.clone(),
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            pause_s: config.pause.as_secs_f64(),
            quiet_threshold: config.quiet_threshold,
            quiet_wait_s: config.quiet_wait.as_secs_f64(),
            repeats: config.repeats,
            workers: config.workers,
            latency_workers: config.latency_workers,
            proxy_cpu: config.proxy_cpu,
            load_cpu: config.load_cpu,
            control_services: config.control_services,
            changes: config.changes,
            change_time_limit_s: config.change_time_limit.as_secs_f64(),
            control_repeats: config.control_repeats,
            manifest_changes: config.manifest_changes,
            load_timeout_s: config.load_timeout.as_secs_f64(),
        }
    }
}

/// One target at one size, over the rounds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cell {
    /// Services.
    pub services: usize,
    /// Target.
    pub target: Option<Target>,
    /// Concurrent connections.
    pub workers: usize,
    /// Median conn/s.
    pub cps: Option<f64>,
    /// Smallest and largest conn/s.
    pub cps_min: Option<f64>,
    /// Largest conn/s.
    pub cps_max: Option<f64>,
    /// Median over the rounds of the median latency, ms.
    pub p50_ms: Option<f64>,
    /// Median over the rounds of the 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// `cps / direct cps` at the same size.
    pub ratio_to_direct: Option<f64>,
    /// Failed requests over the rounds.
    pub errors: u64,
    /// Rounds with no result.
    pub failed_runs: usize,
}

fn cell(measurements: &[Measurement], services: usize, target: Target, workers: usize) -> Cell {
    let runs: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.services == services && m.target == target && m.workers == workers)
        .collect();
    let mut cps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut out = Cell {
        services,
        target: Some(target),
        workers,
        ..Cell::default()
    };
    for m in runs {
        match &m.result {
            Some(r) if m.failure.is_none() => {
                cps.push(r.completed_per_s);
                out.errors += r.errors;
                if let Some(l) = &r.latency {
                    p50.push(l.p50_us as f64 / 1e3);
                    p99.push(l.p99_us as f64 / 1e3);
                }
            }
            _ => out.failed_runs += 1,
        }
    }
    out.cps = median(&cps);
    out.cps_min = cps.iter().copied().reduce(f64::min);
    out.cps_max = cps.iter().copied().reduce(f64::max);
    out.p50_ms = median(&p50);
    out.p99_ms = median(&p99);
    out
}

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// Tool versions.
    pub versions: Versions,
    /// `switchyard run --help`'s line on the eBPF mode, or why it is missing.
    pub switchyard_ebpf: String,
    /// Settings.
    pub method: Method,
    /// Part 1 summarized, size by size and target by target.
    pub cells: Vec<Cell>,
    /// Everything measured.
    pub outcome: Outcome,
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 1.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.3} ms"),
        None => "n/a".to_owned(),
    }
}

fn seconds(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 10.0 => format!("{v:.1} s"),
        Some(v) if v >= 0.1 => format!("{v:.2} s"),
        Some(v) => format!("{:.1} ms", v * 1e3),
        None => "n/a".to_owned(),
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn label(target: Target) -> &'static str {
    match target {
        Target::Direct => "direct (pod IPs, no Service)",
        Target::SwitchyardEbpf => "switchyard eBPF (socket LB)",
        Target::IptablesLegacy => "kube-proxy iptables shape, iptables-legacy",
        Target::IptablesNft => "kube-proxy iptables shape, iptables-nft",
        Target::Nftables => "kube-proxy nftables shape",
    }
}

impl Report {
    /// Summarizes `outcome`.
    pub fn new(
        machine: Machine,
        versions: Versions,
        switchyard_ebpf: String,
        method: Method,
        outcome: Outcome,
    ) -> Self {
        let mut cells = Vec::new();
        let loads: Vec<usize> = [method.workers, method.latency_workers]
            .into_iter()
            .filter(|&w| w > 0)
            .collect();
        for &workers in &loads {
            for &services in &method.sizes {
                let direct = cell(
                    &outcome.datapath.measurements,
                    services,
                    Target::Direct,
                    workers,
                )
                .cps;
                for &target in &method.targets {
                    let mut c = cell(&outcome.datapath.measurements, services, target, workers);
                    c.ratio_to_direct = match (c.cps, direct) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    };
                    cells.push(c);
                }
            }
        }
        Self {
            machine,
            versions,
            switchyard_ebpf,
            method,
            cells,
            outcome,
        }
    }

    fn cell(&self, services: usize, target: Target, workers: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.services == services && c.target == Some(target) && c.workers == workers)
    }

    /// The Markdown form.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# switchyard eBPF socket-LB against kube-proxy's rule shapes, {}\n",
            self.machine.date
        );
        self.write_machine(&mut out);
        self.write_method(&mut out);
        self.write_datapath(&mut out);
        self.write_control(&mut out);
        self.write_runs(&mut out);
        self.write_observations(&mut out);
        out
    }

    fn write_machine(&self, out: &mut String) {
        let m = &self.machine;
        let v = &self.versions;
        let uncommitted = if m.switchyard_uncommitted.is_empty() {
            "none".to_owned()
        } else {
            m.switchyard_uncommitted.join(", ")
        };
        out.push_str("## Machine and versions\n\n| | |\n|---|---|\n");
        for (key, value) in [
            ("started (UTC)", m.started.clone()),
            ("kernel", m.kernel.clone()),
            ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
            ("iptables (legacy)", v.iptables_legacy.clone()),
            ("iptables (nft backend)", v.iptables_nft.clone()),
            ("nft", v.nft.clone()),
            ("switchyard commit", m.switchyard_commit.clone()),
            ("uncommitted in control/, proxy/", uncommitted),
            (
                "switchyard binary",
                format!("`{}`, built {}", m.switchyard_binary, m.switchyard_built),
            ),
            ("switchyard eBPF mode", self.switchyard_ebpf.clone()),
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
             - **Cluster**: N ClusterIP Services (`10.96.x.y:80`, one TCP port), each with {eps} endpoints \
             (one `EndpointSlice`), for N in {sizes:?}. The measured Service `default/web` \
             (`10.96.0.10:80` → 8080) has the 3 real pods (`10.244.0.10`–`12`, `pod-server`) as its \
             endpoints and sits in the middle of the order of Services (kube-proxy's iptables \
             `KUBE-SERVICES` chain is matched top to bottom; the middle is what a random order gives on \
             average); every other endpoint is a fake address in `10.225.0.0`+ that is never connected to.\n\
             - **Targets**, each reached from a client namespace of its own (so a connection only meets \
             the rules of the target it measures; all of them go through the same node namespace to the \
             same pods):\n\
             \x20 - **direct**: the 3 pod addresses, round-robin in the client, no Service (the anchor);\n\
             \x20 - **switchyard eBPF**: `switchyard run --proxy-mode ebpf` in the node namespace with \
             `--cgroup-path` the client's cgroup and a run-specific `--bpf-pin-path`, fed the cluster as \
             manifest files (Service + EndpointSlice per Service); its cgroup `connect4` program rewrites \
             the connect to a backend (no per-packet NAT, no conntrack);\n\
             \x20 - **kube-proxy iptables shape**: the rules kube-proxy's iptables proxier writes \
             (`KUBE-SERVICES` → `KUBE-SVC-<hash>` with `-m statistic --mode random --probability` 1/n, \
             1/(n-1), ... → `KUBE-SEP-<hash>` with `KUBE-MARK-MASQ` and `DNAT`, masquerade in \
             `KUBE-POSTROUTING`, `--cluster-cidr {cidr}`; comments dropped above 1,000 endpoints, \
             as kube-proxy does), loaded with `iptables-restore --noflush --counters` into the client's \
             namespace, hooked from the nat `OUTPUT` chain (`-A OUTPUT -j KUBE-SERVICES`) as for \
             connections made on a node; measured with both iptables backends (legacy and nft);\n\
             \x20 - **kube-proxy nftables shape** (kube-proxy ≥ 1.31): table `ip kube-proxy`, \
             `ip daddr . meta l4proto . th dport vmap @service-ips`, per-Service chains with \
             `numgen random mod N vmap {{ ... }}`, endpoint chains with `dnat to`, loaded with `nft -f`.\n\
             - {masq}\n\
             - **Load**: `loadgen` (one tokio thread, CPU {load}); each worker loops over connect, \
             `GET /` with `Connection: close`, read to EOF, close: conn/s counts completed requests, \
             latency is per request (connect to close). Two loads: {workers} workers (the rate; their \
             latency is mostly time queued behind each other) and {lat_workers} (the latency of a \
             connection on an otherwise idle path: what the rules cost each connection). {duration} s \
             per measurement, {warmup} s warm-up per target and size, {repeats} rounds, each going \
             through every load and target in turn (direct, switchyard, iptables legacy, iptables-nft, \
             nftables); the tables show the median of the rounds. The pods run on CPU {load} too; switchyard's daemon and every rule loader on CPU \
             {proxy}. The eBPF program and the netfilter rules run in the client's `connect()` and \
             packet path, on CPU {load}.\n\
             - Before each measurement the CPUs are sampled over a {pause} s pause; while one was busier \
             than {quiet:.0}% the run waits, up to {quiet_wait} s.\n\
             - Between sizes the daemon is stopped and its eBPF state removed (`switchyard cleanup`), and \
             the client namespaces, with their rules, deleted; each size starts from fresh ones. \
             switchyard runs with `--sync-period 1h` so that its periodic full check (which reads every \
             map back) does not run in the middle of other targets' measurements.\n\
             - **Control plane** at {cp} Services × {eps} endpoints, each loader pinned to CPU {proxy}, \
             in empty namespaces with no traffic: time to program from empty (median of {cpr} tries, or one when it took a minute or more; each \
             in a fresh namespace; kube-proxy's jump rules from the built-in chains are added before the \
             clock starts), then up to {changes} one-endpoint changes (a Service alternately loses and \
             regains its last endpoint), each series stopped after {limit} s; a single load slower than \
             {load_timeout} s is killed and reported as such. kube-proxy's shapes are \
             timed from spawning `iptables-restore` / `nft -f` to its exit, with the rule text rendered \
             beforehand (kube-proxy's own work to compute and write it is not counted); \"partial\" is \
             kube-proxy's partial sync (the top-level chains, `KUBE-SERVICES` with one rule per Service, \
             and the changed Service's chains, `--noflush`; for nftables the changed chains only), \
             \"full\" its full sync. switchyard is timed in process (`socketlb-control`, linking \
             switchyard-control): store update + recompute of the affected Service \
             (`IncrementalTable`) + `EbpfDatapath::apply` of the diff, against a cgroup and bpffs \
             folder of its own.\n\n",
            eps = m.endpoints,
            cidr = m.cluster_cidr,
            masq = if crate::cluster::cidr_contains(
                &m.cluster_cidr,
                std::net::Ipv4Addr::new(10, 0, 2, 2)
            ) {
                "The clients' addresses (`10.0.*`) are inside the cluster CIDR, so kube-proxy's shapes treat \
                 them as pods talking to a Service: DNAT only, no masquerade (`--cluster-cidr \
                 10.224.0.0/11` measures node-local, host-network clients, which kube-proxy masquerades)."
            } else {
                "The clients' addresses (`10.0.*`) are outside the cluster CIDR, so kube-proxy's shapes \
                 masquerade them (`MASQUERADE --random-fully`), as kube-proxy does for a node's own \
                 host-network processes; switchyard needs no NAT."
            },
            sizes = m.sizes,
            load = m.load_cpu,
            proxy = m.proxy_cpu,
            workers = m.workers,
            lat_workers = m.latency_workers,
            duration = m.duration_s,
            warmup = m.warmup_s,
            repeats = m.repeats,
            pause = m.pause_s,
            quiet = m.quiet_threshold * 100.0,
            quiet_wait = m.quiet_wait_s,
            cp = m.control_services,
            cpr = m.control_repeats,
            changes = m.changes,
            limit = m.change_time_limit_s,
            load_timeout = m.load_timeout_s,
        );
    }

    fn write_datapath(&self, out: &mut String) {
        let m = &self.method;
        if self.outcome.datapath.measurements.is_empty() {
            out.push_str("## Connection setup through a ClusterIP\n\nNot run.\n\n");
            return;
        }
        let _ = writeln!(
            out,
            "## Connection setup through a ClusterIP (median of {} rounds)\n",
            m.repeats
        );
        let header: Vec<String> = m.sizes.iter().map(|s| format!("{s} Services")).collect();
        let grid = |out: &mut String,
                    title: &str,
                    workers: usize,
                    value: &dyn Fn(&Cell) -> Option<String>| {
            let _ = writeln!(out, "### {title}\n\n| target | {} |", header.join(" | "));
            let _ = writeln!(out, "|---|{}", "---:|".repeat(m.sizes.len()));
            for &target in &m.targets {
                let cells: Vec<String> = m
                    .sizes
                    .iter()
                    .map(|&s| {
                        self.cell(s, target, workers)
                            .and_then(value)
                            .unwrap_or_else(|| "n/a".to_owned())
                    })
                    .collect();
                let _ = writeln!(out, "| {} | {} |", label(target), cells.join(" | "));
            }
            out.push('\n');
        };
        grid(
            out,
            &format!(
                "conn/s with {} connections in flight (ratio to direct)",
                m.workers
            ),
            m.workers,
            &|c| {
                c.cps
                    .map(|_| format!("{} ({})", number(c.cps, 0), number(c.ratio_to_direct, 2)))
            },
        );
        if m.latency_workers > 0 {
            grid(
                out,
                &format!(
                    "Latency of one connection (connect, request, reply, close), p50 / p99, {} in flight",
                    m.latency_workers
                ),
                m.latency_workers,
                &|c| {
                    c.p50_ms
                        .map(|_| format!("{} / {}", ms(c.p50_ms), ms(c.p99_ms)))
                },
            );
            grid(
                out,
                &format!(
                    "conn/s with {} in flight (ratio to direct)",
                    m.latency_workers
                ),
                m.latency_workers,
                &|c| {
                    c.cps
                        .map(|_| format!("{} ({})", number(c.cps, 0), number(c.ratio_to_direct, 2)))
                },
            );
        }
        grid(
            out,
            &format!(
                "Latency with {} in flight, p50 / p99 (mostly queueing: in a closed loop it is about {} / conn/s)",
                m.workers, m.workers
            ),
            m.workers,
            &|c| {
                c.p50_ms
                    .map(|_| format!("{} / {}", ms(c.p50_ms), ms(c.p99_ms)))
            },
        );
        out.push_str(
            "### Every cell\n\n| Services | target | in flight | conn/s | min – max | ratio to direct | p50 | p99 | errors | failed runs |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.cells {
            let Some(target) = c.target else { continue };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} – {} | {} | {} | {} | {} | {} |",
                c.services,
                target.as_str(),
                c.workers,
                number(c.cps, 0),
                number(c.cps_min, 0),
                number(c.cps_max, 0),
                number(c.ratio_to_direct, 3),
                ms(c.p50_ms),
                ms(c.p99_ms),
                c.errors,
                c.failed_runs
            );
        }
        out.push_str(
            "\n### Setting up each size\n\n| Services | endpoints | rules loaded in: iptables-legacy | iptables-nft | nft | switchyard: start to VIP answering | switchyard CPU over the size (share of one CPU) | manifests | rule text (iptables / nft) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for size in &self.outcome.datapath.sizes {
            let load = |t| seconds(size.load_s.get(&t).copied());
            let text = |t| {
                size.rule_bytes
                    .get(&t)
                    .map_or("n/a".to_owned(), |b| bytes(*b))
            };
            let daemon_cpu = match (size.switchyard_cpu_s, size.switchyard_wall_s) {
                (Some(cpu), Some(wall)) if wall > 0.0 => {
                    format!(
                        "{} of {} ({:.0}%)",
                        seconds(Some(cpu)),
                        seconds(Some(wall)),
                        100.0 * cpu / wall
                    )
                }
                _ => "n/a".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {daemon_cpu} | {} | {} / {} |",
                size.services,
                size.endpoints,
                load(Target::IptablesLegacy),
                load(Target::IptablesNft),
                load(Target::Nftables),
                seconds(size.switchyard_ready_s),
                bytes(size.manifest_bytes),
                text(Target::IptablesLegacy),
                text(Target::Nftables),
            );
        }
        out.push('\n');
    }

    fn write_control(&self, out: &mut String) {
        let Some(control) = &self.outcome.control else {
            out.push_str("## Control plane\n\nNot run.\n\n");
            return;
        };
        let _ = writeln!(
            out,
            "## Control plane: {} Services × {} endpoints ({} endpoints)\n\n\
             | method | program from empty | one-endpoint change p50 | p99 | mean | changes timed | input per change |\n\
             |---|---:|---:|---:|---:|---:|---:|",
            control.services, self.method.endpoints, control.endpoints
        );
        write_switchyard_rows(out, control);
        for rules in &control.rules {
            let initial = median(&rules.initial_s);
            let from_empty = match (&rules.initial_failure, initial) {
                (Some(failure), _) => format!("failed: {}", failure.replace('|', "/")),
                (None, value) => format!("{} ({})", seconds(value), bytes(rules.initial_bytes)),
            };
            for (kind, changes, input) in [
                ("partial sync", &rules.partial, bytes(rules.partial_bytes)),
                ("full sync", &rules.full, bytes(rules.initial_bytes)),
            ] {
                let _ = writeln!(
                    out,
                    "| kube-proxy shape, `{}`, {kind} | {from_empty} | {} | {} | {} | {} | {input} |",
                    rules.backend.as_str(),
                    ms(changes.durations.p50_ms),
                    ms(changes.durations.p99_ms),
                    ms(changes.durations.mean_ms),
                    changes_done(changes),
                );
            }
        }
        out.push('\n');
        for rules in &control.rules {
            if let Some(list) = rules.list_chains_s {
                let _ = writeln!(
                    out,
                    "- `nft --json list chains ip kube-proxy` at this size takes {} (median of 5): \
                     kube-proxy's nftables proxier runs it on every sync to find stale chains, on top \
                     of the transaction timed above.",
                    seconds(Some(list))
                );
            }
            for (kind, changes) in [("partial", &rules.partial), ("full", &rules.full)] {
                if let Some(failure) = &changes.first_failure {
                    let _ = writeln!(
                        out,
                        "- `{}` {kind}: {} changes failed; the first: {failure}",
                        rules.backend.as_str(),
                        changes.failures
                    );
                }
            }
        }
        for size in &self.outcome.datapath.sizes {
            if let Some(h) = &size.manifest_changes {
                let _ = writeln!(
                    out,
                    "- switchyard end to end, through manifest files at {} Services: {} one-endpoint \
                     changes written to the changed Service's file, one at a time; the daemon's \
                     `kubeproxy_network_programming_duration_seconds` gained {} observations: median \
                     ≤ {}, 99th percentile ≤ {} (bucket upper bounds), mean {}{}.",
                    h.services,
                    h.changes,
                    h.observations,
                    seconds(h.p50_le_s),
                    seconds(h.p99_le_s),
                    seconds(h.mean_s),
                    if h.timeouts > 0 {
                        format!("; {} changes did not show within 10 s", h.timeouts)
                    } else {
                        String::new()
                    }
                );
            }
        }
        out.push('\n');
    }

    fn write_runs(&self, out: &mut String) {
        let runs = &self.outcome.datapath.measurements;
        if runs.is_empty() {
            return;
        }
        out.push_str(
            "## Every run\n\n| # | Services | round | target | in flight | conn/s | p50 | p99 | errors | CPU busy | background before | waited | conntrack entries |\n\
             |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let pct = |v: &[f64]| {
            v.iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (i, m) in runs.iter().enumerate() {
            let (cps, p50, p99, errors) = match (&m.result, &m.failure) {
                (Some(r), None) => (
                    format!("{:.0}", r.completed_per_s),
                    ms(r.latency.as_ref().map(|l| l.p50_us as f64 / 1e3)),
                    ms(r.latency.as_ref().map(|l| l.p99_us as f64 / 1e3)),
                    r.errors.to_string(),
                ),
                _ => ("failed".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {cps} | {p50} | {p99} | {errors} | {} | {} | {:.0} s | {} |",
                i + 1,
                m.services,
                m.round + 1,
                m.target.as_str(),
                m.workers,
                pct(&m.cpu_busy),
                pct(&m.background_busy),
                m.quiet_wait_s,
                m.conntrack_entries
                    .map_or("-".to_owned(), |n| n.to_string()),
            );
        }
        out.push('\n');
    }

    fn write_observations(&self, out: &mut String) {
        out.push_str("## What was seen\n\n");
        let mut any = false;
        for size in &self.outcome.datapath.sizes {
            for (target, why) in &size.unavailable {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} Services: {} was not measured: {why}",
                    size.services,
                    target.as_str()
                );
            }
            for (target, spread) in &size.spread {
                if let Ok(names) = spread
                    && *target != Target::Direct
                {
                    let names: Vec<String> =
                        names.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
                    let _ = writeln!(
                        out,
                        "- {} Services, {}: 30 fresh connections reached {}",
                        size.services,
                        target.as_str(),
                        names.join(", ")
                    );
                }
            }
            for failure in &size.warmup_failures {
                let _ = writeln!(
                    out,
                    "- {} Services: warm-up failed: {failure}",
                    size.services
                );
            }
            if let Some(exit) = &size.switchyard_exit {
                let _ = writeln!(
                    out,
                    "- **switchyard exited at {} Services**:\n\n```text\n{exit}\n```",
                    size.services
                );
            }
            if !size.switchyard_problems.is_empty() {
                let _ = writeln!(
                    out,
                    "- switchyard's warnings and errors at {} Services (first {}):\n\n```text\n{}\n```",
                    size.services,
                    size.switchyard_problems.len(),
                    size.switchyard_problems.join("\n")
                );
            }
        }
        let mut kinds: BTreeMap<(usize, Target, String), u64> = BTreeMap::new();
        for m in &self.outcome.datapath.measurements {
            if let Some(failure) = &m.failure {
                let _ = writeln!(
                    out,
                    "- {} Services round {} {} failed: {}",
                    m.services,
                    m.round + 1,
                    m.target.as_str(),
                    failure.replace('\n', " ")
                );
            }
            if let Some(r) = &m.result {
                for (kind, n) in &r.error_kinds {
                    *kinds
                        .entry((m.services, m.target, kind.clone()))
                        .or_default() += n;
                }
            }
        }
        for ((services, target, kind), n) in &kinds {
            any = true;
            let _ = writeln!(
                out,
                "- {services} Services, {}: {n} requests failed with `{kind}`",
                target.as_str()
            );
        }
        if let Some(Some(Err(error))) = self.outcome.control.as_ref().map(|c| c.switchyard.as_ref())
        {
            any = true;
            let _ = writeln!(out, "- switchyard in process was not measured: {error}");
        }
        if !any {
            out.push_str("- No request failed and every target was measured.\n");
        }
        out.push('\n');
    }

    /// Writes `<dir>/<date>-socketlb[-<tag>].md` and `.json`; returns their
    /// paths.
    pub fn write(&self, dir: &Path, tag: Option<&str>) -> Result<(PathBuf, PathBuf)> {
        crate::report::write_dated(
            dir,
            &self.machine.date,
            "socketlb",
            tag,
            &self.markdown(),
            self,
        )
    }
}

fn changes_done(changes: &Changes) -> String {
    let mut text = format!("{} of {}", changes.durations.count, changes.asked);
    if changes.time_limited {
        text.push_str(" (time limit)");
    }
    if changes.failures > 0 {
        let _ = write!(text, ", {} failed", changes.failures);
    }
    text
}

fn write_switchyard_rows(out: &mut String, control: &ControlOutcome) {
    match &control.switchyard {
        Some(Ok(r)) => {
            let changes = Changes {
                durations: Durations::of(&r.changes_s),
                asked: r.asked,
                time_limited: r.time_limited,
                failures: r.change_failures,
                first_failure: r.change_first_failure.clone(),
            };
            let apply = Durations::of(&r.apply_s);
            let total = r.initial_store_s + r.initial_recompute_s + r.initial_apply_s;
            let _ = writeln!(
                out,
                "| switchyard eBPF, in process (store + recompute + apply) | {} (store {}, table {}, apply {}) | {} | {} | {} | {} | one `EndpointSlice` |",
                seconds(Some(total)),
                seconds(Some(r.initial_store_s)),
                seconds(Some(r.initial_recompute_s)),
                seconds(Some(r.initial_apply_s)),
                ms(changes.durations.p50_ms),
                ms(changes.durations.p99_ms),
                ms(changes.durations.mean_ms),
                changes_done(&changes),
            );
            let _ = writeln!(
                out,
                "| switchyard eBPF, the apply alone (map writes) | {} | {} | {} | {} | {} | |",
                seconds(Some(r.initial_apply_s)),
                ms(apply.p50_ms),
                ms(apply.p99_ms),
                ms(apply.mean_ms),
                apply.count,
            );
        }
        Some(Err(error)) => {
            let _ = writeln!(
                out,
                "| switchyard eBPF, in process | not measured: {} | | | | | |",
                error.replace('|', "/").replace('\n', " ")
            );
        }
        None => {}
    }
}
