//! The dated result of an L7 run: medians and ranges per target and load,
//! ratios to nginx from the same run, every run, and what went wrong, as
//! Markdown for people and JSON for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::load::{LoadShape, Scenario};
use super::suite::{L7Config, Measurement, Outcome, PODS, Target};
use crate::cpu::ThreadAffinity;
use crate::machine::Machine;
use crate::report::median;

/// The goal of the issue: at least this many times nginx's requests per
/// second...
pub const GOAL_RPS_RATIO: f64 = 1.2;
/// ...at a p99 latency at most this many times nginx's.
pub const GOAL_P99_RATIO: f64 = 1.0;
/// A load CPU busier than this (median over the runs) is flagged as a limit.
const SATURATED: f64 = 0.95;

/// Versions of the other programs measured and used.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tools {
    /// `nginx -v`.
    pub nginx: String,
    /// `wrk -v`, first line.
    pub wrk: String,
    /// `h2load --version`.
    pub h2load: String,
}

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// One measurement window, seconds.
    pub duration_s: f64,
    /// Unrecorded warm-up per target and load, seconds.
    pub warmup_s: f64,
    /// Idle time before each measurement, seconds.
    pub pause_s: f64,
    /// A CPU busier than this fraction in the pause counts as disturbed.
    pub quiet_threshold: f64,
    /// The longest wait for a quiet machine, seconds.
    pub quiet_wait_s: f64,
    /// Rounds.
    pub repeats: usize,
    /// The targets, in round order.
    pub targets: Vec<Target>,
    /// How hard the tools push.
    pub shape: LoadShape,
    /// nginx's upstream `keepalive`.
    pub nginx_keepalive: usize,
    /// Whether switchyard was measured without per-request balancing.
    pub measure_unbalanced: bool,
    /// The proxies' CPU.
    pub proxy_cpu: usize,
    /// The load tools' and backends' CPU.
    pub load_cpu: usize,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &L7Config) -> Self {
        Self {
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            pause_s: config.pause.as_secs_f64(),
            quiet_threshold: config.quiet_threshold,
            quiet_wait_s: config.quiet_wait.as_secs_f64(),
            repeats: config.repeats,
            targets: config.targets.clone(),
            shape: config.shape.clone(),
            nginx_keepalive: config.nginx_keepalive,
            measure_unbalanced: config.measure_unbalanced,
            proxy_cpu: config.proxy_cpu,
            load_cpu: config.load_cpu,
        }
    }
}

/// One target under one load, over all rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Why it was not measured, if it was not.
    pub skipped: Option<String>,
    /// The median of `values`: 2xx responses per second.
    pub median: Option<f64>,
    /// Each round's value, in round order (failed runs left out).
    pub values: Vec<f64>,
    /// The smallest of `values`.
    pub min: Option<f64>,
    /// The largest of `values`.
    pub max: Option<f64>,
    /// Median over the runs of their median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// Median over the runs of their 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// The smallest run's p99, milliseconds.
    pub p99_min_ms: Option<f64>,
    /// The largest run's p99, milliseconds.
    pub p99_max_ms: Option<f64>,
    /// Median over the runs of requests per second of proxy CPU time.
    pub per_cpu_s: Option<f64>,
    /// Median CPU use of the proxy, percent of one CPU.
    pub proxy_cpu_pct: Option<f64>,
    /// Median over the runs of the proxy's user-space CPU time per 2xx response, µs.
    #[serde(default)]
    pub user_us_per_req: Option<f64>,
    /// Median over the runs of the proxy's kernel CPU time per 2xx response, µs.
    #[serde(default)]
    pub sys_us_per_req: Option<f64>,
    /// The highest peak resident memory of the proxy over the runs' windows
    /// (nginx: master + worker), MiB.
    pub peak_mib: Option<f64>,
    /// Median over the runs of how busy the load CPU was (0..1).
    pub load_cpu_busy: Option<f64>,
    /// Runs that produced no result.
    pub failed_runs: usize,
    /// Failed requests, summed over the runs.
    pub errors: u64,
}

impl Stat {
    /// Summarizes the runs of `target` under `scenario`.
    pub fn of(
        measurements: &[Measurement],
        target: Target,
        scenario: Scenario,
        load_cpu: usize,
    ) -> Self {
        let mut stat = Self::default();
        let (mut p50, mut p99, mut cpu, mut per_cpu, mut load_busy, mut peaks) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let (mut user_us, mut sys_us) = (Vec::new(), Vec::new());
        for run in measurements
            .iter()
            .filter(|m| m.target == target && m.scenario == scenario)
        {
            let Some(result) = run.result.as_ref().filter(|_| run.failure.is_none()) else {
                stat.failed_runs += 1;
                continue;
            };
            stat.values.push(result.ok_per_s);
            stat.errors += result.errors;
            p50.push(result.latency.p50_us / 1000.0);
            p99.push(result.latency.p99_us / 1000.0);
            load_busy.extend(run.cpu_busy.get(load_cpu).copied());
            if let Some(seconds) = run.proxy_cpu_s.filter(|&s| s > 0.0) {
                cpu.push(100.0 * seconds / result.duration_s);
                per_cpu.push(result.ok as f64 / seconds);
                if let Some(user) = run.proxy_user_s
                    && result.ok > 0
                {
                    let per_req = 1e6 / result.ok as f64;
                    user_us.push(user * per_req);
                    sys_us.push((seconds - user).max(0.0) * per_req);
                }
            }
            if let Some(memory) = &run.proxy_memory {
                peaks.push(memory.peak_kib as f64 / 1024.0);
            }
        }
        stat.median = median(&stat.values);
        stat.min = stat.values.iter().copied().reduce(f64::min);
        stat.max = stat.values.iter().copied().reduce(f64::max);
        stat.p50_ms = median(&p50);
        stat.p99_ms = median(&p99);
        stat.p99_min_ms = p99.iter().copied().reduce(f64::min);
        stat.p99_max_ms = p99.iter().copied().reduce(f64::max);
        stat.per_cpu_s = median(&per_cpu);
        stat.proxy_cpu_pct = median(&cpu);
        stat.user_us_per_req = median(&user_us);
        stat.sys_us_per_req = median(&sys_us);
        stat.peak_mib = peaks.iter().copied().reduce(f64::max);
        stat.load_cpu_busy = median(&load_busy);
        stat
    }
}

/// One target under one load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The target.
    pub target: Target,
    /// The load.
    pub scenario: Scenario,
    /// Its summary.
    pub stat: Stat,
}

/// A target against nginx under one load, from the same run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    /// The target.
    pub target: Target,
    /// The load.
    pub scenario: Scenario,
    /// Of the median requests per second.
    pub rps: Option<f64>,
    /// Of the median p99 latency (below 1: better than nginx).
    pub p99: Option<f64>,
    /// Of the median requests per proxy CPU-second (none for direct).
    pub per_cpu_s: Option<f64>,
    /// Of the peak memory (none for direct).
    pub peak_memory: Option<f64>,
    /// Requests per second over nginx's, round by round (each round's two
    /// runs are minutes apart at most): how steady the ratio is.
    pub rps_by_round: Vec<f64>,
    /// For switchyard: whether the medians meet the goal (at least
    /// [`GOAL_RPS_RATIO`] × nginx's requests per second at a p99 at most
    /// [`GOAL_P99_RATIO`] × nginx's).
    pub goal_met: Option<bool>,
}

/// The whole result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// The other programs.
    pub tools: Tools,
    /// How.
    pub method: Method,
    /// Medians per target and load.
    pub rows: Vec<Row>,
    /// Against nginx.
    pub ratios: Vec<Ratio>,
    /// Everything measured and seen.
    pub outcome: Outcome,
    /// Set when the switchyard binary is older than the last commit to
    /// `proxy/` or `control/`.
    #[serde(default)]
    pub switchyard_binary_note: Option<String>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn by_round(
    measurements: &[Measurement],
    target: Target,
    scenario: Scenario,
) -> BTreeMap<usize, f64> {
    measurements
        .iter()
        .filter(|m| m.target == target && m.scenario == scenario && m.failure.is_none())
        .filter_map(|m| m.result.as_ref().map(|r| (m.round, r.ok_per_s)))
        .collect()
}

impl Report {
    /// Summarizes `outcome`.
    pub fn new(machine: Machine, tools: Tools, method: Method, outcome: Outcome) -> Self {
        let mut rows = Vec::new();
        for scenario in Scenario::ALL {
            for &target in &method.targets {
                let mut stat = Stat::of(&outcome.measurements, target, scenario, method.load_cpu);
                stat.skipped = outcome
                    .setup
                    .skipped
                    .iter()
                    .find(|skip| skip.target == target && skip.scenario == scenario)
                    .map(|skip| skip.reason.clone());
                rows.push(Row {
                    target,
                    scenario,
                    stat,
                });
            }
        }
        let mut ratios = Vec::new();
        for scenario in Scenario::ALL {
            let Some(nginx) = rows
                .iter()
                .find(|row| row.target == Target::Nginx && row.scenario == scenario)
            else {
                continue;
            };
            let nginx_rounds = by_round(&outcome.measurements, Target::Nginx, scenario);
            for row in rows
                .iter()
                .filter(|row| row.scenario == scenario && row.target != Target::Nginx)
            {
                let (a, b) = (&row.stat, &nginx.stat);
                let rps = ratio(a.median, b.median);
                let p99 = ratio(a.p99_ms, b.p99_ms);
                let rps_by_round = by_round(&outcome.measurements, row.target, scenario)
                    .iter()
                    .filter_map(|(round, value)| {
                        ratio(Some(*value), nginx_rounds.get(round).copied())
                    })
                    .collect();
                let goal_met = match (row.target.is_switchyard(), rps, p99) {
                    (true, Some(rps), Some(p99)) => {
                        Some(rps >= GOAL_RPS_RATIO && p99 <= GOAL_P99_RATIO)
                    }
                    _ => None,
                };
                ratios.push(Ratio {
                    target: row.target,
                    scenario,
                    rps,
                    p99,
                    per_cpu_s: ratio(a.per_cpu_s, b.per_cpu_s),
                    peak_memory: ratio(a.peak_mib, b.peak_mib),
                    rps_by_round,
                    goal_met,
                });
            }
        }
        Self {
            machine,
            tools,
            method,
            rows,
            ratios,
            outcome,
            switchyard_binary_note: None,
        }
    }

    /// Writes `<dir>/<date>-l7.md` and `.json`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let stem = format!("{}-l7", self.machine.date);
        let md = dir.join(format!("{stem}.md"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&md, self.markdown()).with_context(|| format!("write {}", md.display()))?;
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(&json, text).with_context(|| format!("write {}", json.display()))?;
        Ok((md, json))
    }

    /// The Markdown page.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        self.write_header(&mut out);
        self.write_results(&mut out);
        self.write_runs(&mut out);
        self.write_observations(&mut out);
        out
    }

    fn write_header(&self, out: &mut String) {
        let m = &self.machine;
        let method = &self.method;
        let shape = &method.shape;
        let _ = writeln!(
            out,
            "# switchyard L7 proxy vs nginx vs HAProxy: {}\n",
            m.date
        );
        out.push_str(
            "A measurement, not a check: nothing here passes or fails. Written by \
             `cargo run --release -p switchyard-bench --bin l7`; see `bench/README.md`.\n\n",
        );
        out.push_str("## Machine and software\n\n| | |\n|---|---|\n");
        let uncommitted = if m.switchyard_uncommitted.is_empty() {
            String::new()
        } else {
            format!(
                " (plus uncommitted changes: {})",
                m.switchyard_uncommitted
                    .iter()
                    .map(|line| format!("`{line}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for (key, value) in [
            ("kernel (`uname -r`)", m.kernel.clone()),
            ("CPUs (`nproc --all`)", m.cpus.clone()),
            ("CPU model", m.cpu_model.clone()),
            ("run started", m.started.clone()),
            ("nginx", self.tools.nginx.clone()),
            ("HAProxy", m.haproxy.clone()),
            ("wrk", self.tools.wrk.clone()),
            ("h2load", self.tools.h2load.clone()),
            (
                "switchyard",
                format!("commit `{}`{uncommitted}", m.switchyard_commit),
            ),
            (
                "switchyard binary",
                format!("`{}`, built {}", m.switchyard_binary, m.switchyard_built),
            ),
            ("benchmark build profile", m.profile.clone()),
        ] {
            let _ = writeln!(out, "| {key} | {value} |");
        }
        if let Some(note) = &self.switchyard_binary_note {
            let _ = writeln!(out, "\n**Note**: {note}.");
        }
        let streams = shape.h2_connections * shape.h2_streams;
        let _ = write!(
            out,
            "\n## Method\n\n\
             - One topology of network namespaces (switchyard-tests): a client (10.0.0.2), a node, \
             and {PODS} pods each running `l7-backend` (hyper; HTTP/1.1 and h2c with prior \
             knowledge on port 8080, one thread, a 3-byte body `ok\\n`). Nothing leaves the machine.\n\
             - The targets, reached from the same client with the same tools:\n\
             \x20 - **direct**: pod 0 (10.244.0.10:8080), forwarded by the node's kernel (no proxy; \
             the anchor: one backend instead of three);\n\
             \x20 - **nginx**: 10.0.0.1:8082 (HTTP/1.1) and :8083 (`listen ... http2`, h2c), \
             `worker_processes 1`, `proxy_pass` to an `upstream` of the {PODS} pods (round-robin) \
             with `keepalive {keepalive}`, `proxy_http_version 1.1`, `proxy_set_header Connection \
             \"\"`, `access_log off`, `keepalive_requests` raised for clients and upstream \
             (nginx's default of 1000 closes a connection after 1000 requests, which neither \
             other proxy does and which stops h2load's connections for good); nginx speaks \
             HTTP/1.1 to the pods whatever the client spoke;\n\
             \x20 - **haproxy**: 10.0.0.1:8084 (HTTP/1.1) and :8085 (`bind ... proto h2`), \
             `mode http`, `nbthread 1`, `balance roundrobin`, `http-reuse always`, no health \
             checks, no logging; HTTP/1.1 to the pods;\n\
             \x20 - **switchyard-h2c**: the Service 10.96.0.10:80 whose port has `appProtocol: \
             kubernetes.io/h2c`: `switchyard run --proxy-mode userspace`, its L7 proxy balancing \
             each request, HTTP/1.1 or h2c from the client (detected), HTTP/2 cleartext to the pods;\n\
             \x20 - **switchyard-http**: the Service 10.96.0.11:80, `appProtocol: http`: the same \
             daemon, HTTP/1.1 to the pods over kept-alive pooled connections.\n\
             \x20 Both Services carry `switchyard.io/lb-algorithm: round-robin`. Before measuring, \
             {checks} requests for `/name` on one connection (curl) show how each target balances; \
             switchyard is measured only where they reached more than one pod{unbalanced}.\n\
             - CPU pinning: every proxy on CPU {proxy} (nginx and HAProxy under `taskset`, \
             switchyard started by a thread pinned there, so tokio sizes its pool to one worker \
             and `--l7-threads` defaults to one L7 thread); \
             the load tools and the backends on CPU {load}. All proxies stay up the whole time; \
             only one is ever under load.\n\
             - **http1**: `wrk -t1 -c{wrk} -d{duration}s --timeout {timeout}s`: {wrk} kept-alive \
             HTTP/1.1 connections, one request in flight on each. Percentiles from wrk's own \
             histogram (printed exactly by a `done` hook).\n\
             - **h2c**: `h2load -t1 -c{h2c} -m{h2m} -D {duration}s`: {h2c} HTTP/2 connections with \
             prior knowledge, {h2m} streams in flight on each ({streams} in all, as many as \
             wrk's, so nginx's upstream pool of {keepalive} covers every request in flight). \
             h2load prints no percentiles: they are computed from its `--log-file` (every \
             request's latency).\n\
             - req/s counts 2xx responses inside the window. p50 and p99 are of each run's \
             requests; the tables show the median over the rounds of each, and the range of p99.\n\
             - Each measurement lasts {duration} s; before the first round each target gets an \
             unrecorded {warmup} s warm-up per load; {pause} s idle before each measurement. \
             {repeats} rounds, interleaved (per load: {order}, then again), and the tables show the \
             median of the rounds. Ratios to nginx divide the medians of the same run; the \
             per-round ratios pair each round's run with nginx's run of that round.\n\
             - Before each measurement the CPUs are sampled over the pause; while one was busier \
             than {quiet:.0}% (other tenants: the benchmark itself is idle then) the run waits, up \
             to {quiet_wait} s, then goes ahead anyway. The per-run table shows that background load.\n\
             - \"proxy CPU\" is the proxy's user+system time over the window (nginx: master and \
             worker; switchyard: the whole daemon, its control plane included); \"req per proxy \
             CPU-second\" divides the 2xx responses by it, an efficiency figure that other \
             tenants on the proxy CPU disturb less than the rate; \"proxy CPU per request\" is \
             the same time per 2xx response, split into user space and kernel (`utime` and \
             `stime` of `/proc/<pid>/stat`): what the proxy's own code costs, and what its system \
             calls and the network stack's work inside them cost.\n\
             - \"peak memory\" is the proxy's peak resident set during the window: `VmHWM` of \
             `/proc/<pid>/status`, reset to the current resident set at the start of each window \
             by writing `5` to `/proc/<pid>/clear_refs`; for nginx the sum over master and worker; \
             for switchyard the whole daemon (both Services, the control plane and the embedded \
             state). The table shows the highest over the rounds.\n\n",
            keepalive = method.nginx_keepalive,
            checks = super::suite::BALANCE_CHECK_REQUESTS,
            unbalanced = if method.measure_unbalanced {
                " (this run: `--measure-unbalanced`, switchyard measured regardless)"
            } else {
                ""
            },
            proxy = method.proxy_cpu,
            load = method.load_cpu,
            wrk = shape.wrk_connections,
            timeout = shape.timeout.as_secs(),
            h2c = shape.h2_connections,
            h2m = shape.h2_streams,
            duration = method.duration_s,
            warmup = method.warmup_s,
            pause = method.pause_s,
            repeats = method.repeats,
            order = method
                .targets
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            quiet = method.quiet_threshold * 100.0,
            quiet_wait = method.quiet_wait_s,
        );
    }

    fn write_results(&self, out: &mut String) {
        let shape = &self.method.shape;
        let _ = writeln!(
            out,
            "## Results (median of {} rounds)\n",
            self.method.repeats
        );
        for scenario in Scenario::ALL {
            let title = match scenario {
                Scenario::Http1 => format!(
                    "HTTP/1.1 keep-alive (wrk, {} connections)",
                    shape.wrk_connections
                ),
                Scenario::H2c => format!(
                    "HTTP/2 cleartext (h2load, {} connections × {} streams)",
                    shape.h2_connections, shape.h2_streams
                ),
            };
            let _ = writeln!(
                out,
                "### {title}\n\n\
                 | target | req/s | min – max | p50 | p99 | p99 min – max | proxy CPU | req per proxy CPU-second | proxy CPU per request (user + kernel) | peak memory | errors |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in self.rows.iter().filter(|row| row.scenario == scenario) {
                let s = &row.stat;
                if s.skipped.is_some() {
                    let _ = writeln!(
                        out,
                        "| {} | not measured (see below) | | | | | | | | | |",
                        row.target.as_str()
                    );
                    continue;
                }
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.target.as_str(),
                    number(s.median, 0),
                    range(s.min, s.max, 0, ""),
                    ms(s.p50_ms),
                    ms(s.p99_ms),
                    range(s.p99_min_ms, s.p99_max_ms, 2, " ms"),
                    percent(s.proxy_cpu_pct),
                    number(s.per_cpu_s, 0),
                    match (s.user_us_per_req, s.sys_us_per_req) {
                        (Some(u), Some(k)) => format!("{u:.1} + {k:.1} µs"),
                        _ => "-".to_owned(),
                    },
                    s.peak_mib
                        .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.1} MiB")),
                    errors(s),
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "### Ratios to nginx (same run)\n\n\
             Goal: switchyard at least {GOAL_RPS_RATIO}× nginx's req/s at a p99 no worse than \
             nginx's (p99 ratio ≤ {GOAL_P99_RATIO}).\n\n\
             | target | load | req/s | p99 | req per proxy CPU-second | peak memory | req/s by round | goal |\n\
             |---|---|---:|---:|---:|---:|---:|---|"
        );
        for r in &self.ratios {
            let rounds: Vec<String> = r.rps_by_round.iter().map(|v| format!("{v:.2}")).collect();
            let goal = match r.goal_met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {goal} |",
                r.target.as_str(),
                r.scenario,
                times(r.rps),
                times(r.p99),
                times(r.per_cpu_s),
                times(r.peak_memory),
                if rounds.is_empty() {
                    "-".to_owned()
                } else {
                    rounds.join(", ")
                },
            );
        }
        out.push('\n');
    }

    fn write_runs(&self, out: &mut String) {
        let cpus = self
            .outcome
            .measurements
            .iter()
            .map(|m| m.cpu_busy.len())
            .max()
            .unwrap_or(0);
        out.push_str(
            "## Every run\n\n| # | round | load | target | req/s | p50 | p99 | errors | proxy CPU | peak memory |",
        );
        for cpu in 0..cpus {
            let _ = write!(out, " CPU {cpu} busy |");
        }
        for cpu in 0..cpus {
            let _ = write!(out, " CPU {cpu} before |");
        }
        out.push_str(" waited |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
        for _ in 0..2 * cpus {
            out.push_str("---:|");
        }
        out.push_str("---:|\n");
        for (index, m) in self.outcome.measurements.iter().enumerate() {
            let (value, p50, p99, errors, cpu) = match (&m.result, &m.failure) {
                (Some(result), None) => (
                    format!("{:.0}", result.ok_per_s),
                    format!("{:.2} ms", result.latency.p50_us / 1000.0),
                    format!("{:.2} ms", result.latency.p99_us / 1000.0),
                    result.errors.to_string(),
                    percent(m.proxy_cpu_s.map(|s| 100.0 * s / result.duration_s)),
                ),
                _ => (
                    "failed".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                ),
            };
            let memory = m.proxy_memory.as_ref().map_or_else(
                || "-".to_owned(),
                |memory| format!("{:.1} MiB", memory.peak_kib as f64 / 1024.0),
            );
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {value} | {p50} | {p99} | {errors} | {cpu} | {memory} |",
                index + 1,
                m.round + 1,
                m.scenario,
                m.target.as_str()
            );
            for busy in [&m.cpu_busy, &m.background_busy] {
                for cpu in 0..cpus {
                    let _ = write!(out, " {} |", percent(busy.get(cpu).map(|b| b * 100.0)));
                }
            }
            let _ = writeln!(out, " {:.0} s |", m.quiet_wait_s);
        }
        out.push('\n');
    }

    fn write_observations(&self, out: &mut String) {
        let outcome = &self.outcome;
        let setup = &outcome.setup;
        out.push_str("## What was seen\n\n");
        for entry in &setup.balance {
            let _ = match &entry.result {
                Ok(check) => writeln!(
                    out,
                    "- {} {}: {} requests on {} connection(s) (HTTP/{}) were answered by {}{}",
                    entry.target.as_str(),
                    entry.scenario,
                    check.names.len(),
                    check.connections,
                    check.http_version,
                    check.names.join(", "),
                    if check.per_request() {
                        ": balanced per request"
                    } else {
                        ""
                    }
                ),
                Err(error) => writeln!(
                    out,
                    "- {} {}: the balancing check failed: {error}",
                    entry.target.as_str(),
                    entry.scenario
                ),
            };
        }
        for skip in &setup.skipped {
            let _ = writeln!(
                out,
                "- **{} {} not measured**: {}",
                skip.target.as_str(),
                skip.scenario,
                skip.reason
            );
        }
        let _ = writeln!(
            out,
            "- Threads, all pinned as planned: {} on CPU {proxy}; the {PODS} backends {} on CPU {load}.",
            setup
                .proxy_threads
                .iter()
                .map(|(target, threads)| format!(
                    "{} {}",
                    proxy_name(*target),
                    thread_names(threads)
                ))
                .collect::<Vec<_>>()
                .join("; "),
            thread_names(&setup.backend_threads),
            proxy = self.method.proxy_cpu,
            load = self.method.load_cpu,
        );
        if !setup.idle_memory.is_empty() {
            let idle: Vec<String> = setup
                .idle_memory
                .iter()
                .filter(|(target, _)| **target != Target::SwitchyardHttp)
                .map(|(target, memory)| {
                    format!(
                        "{} {:.1} MiB",
                        proxy_name(*target),
                        memory.rss_kib as f64 / 1024.0
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "- Resident memory once started, before any load: {}.",
                idle.join(", ")
            );
        }
        for (target, threads) in &outcome.proxy_threads_after {
            if threads.is_empty() {
                continue;
            }
            let times: Vec<String> = threads
                .iter()
                .map(|t| format!("`{}` {:.1} s", t.name, t.cpu_s))
                .collect();
            let _ = writeln!(
                out,
                "- CPU time per {} thread over the whole run: {}.",
                proxy_name(*target),
                times.join(", ")
            );
        }
        let _ = writeln!(out, "- Backend binary: `{}`.", setup.backend_bin);
        for row in &self.rows {
            if let Some(busy) = row.stat.load_cpu_busy.filter(|&busy| busy >= SATURATED) {
                let _ = writeln!(
                    out,
                    "- {} {}: the load CPU (the tool, the backends and the kernel's work for \
                     them) was {:.0}% busy: that side, not only the target, limits this number.",
                    row.target.as_str(),
                    row.scenario,
                    busy * 100.0
                );
            }
        }
        for failure in &setup.warmup_failures {
            let _ = writeln!(out, "- warm-up failed: {failure}");
        }
        let mut kinds: BTreeMap<(Target, Scenario, String), u64> = BTreeMap::new();
        for m in &outcome.measurements {
            if let Some(failure) = &m.failure {
                let _ = writeln!(
                    out,
                    "- run {} {} {} failed: {}",
                    m.round + 1,
                    m.scenario,
                    m.target.as_str(),
                    failure.replace('\n', " ")
                );
            }
            if let Some(result) = &m.result {
                for (kind, n) in &result.error_kinds {
                    *kinds
                        .entry((m.target, m.scenario, kind.clone()))
                        .or_default() += n;
                }
            }
        }
        if kinds.is_empty() {
            out.push_str("- No request failed.\n");
        }
        for ((target, scenario, kind), n) in &kinds {
            let _ = writeln!(
                out,
                "- {} {scenario}: {n} requests failed with `{kind}`",
                target.as_str()
            );
        }
        if outcome.exits.is_empty() {
            out.push_str("- Every proxy kept running to the end.\n");
        }
        for (proxy, exit) in &outcome.exits {
            let _ = writeln!(
                out,
                "- **{proxy} exited during the run**:\n\n```text\n{exit}\n```"
            );
        }
        if outcome.switchyard_problems.is_empty() {
            out.push_str("- switchyard logged no warning or error.\n");
        } else {
            let _ = writeln!(
                out,
                "- switchyard logged warnings or errors (first {}):\n\n```text\n{}\n```",
                outcome.switchyard_problems.len(),
                outcome.switchyard_problems.join("\n")
            );
        }
        let _ = writeln!(
            out,
            "\n## nginx configuration\n\n```nginx\n{}```\n\n## HAProxy configuration\n\n```text\n{}```\n\n## switchyard Services\n\n```json\n{}\n```",
            setup.nginx_config,
            setup.haproxy_config,
            serde_json::to_string_pretty(&setup.service_manifests).unwrap_or_default()
        );
    }
}

/// The process behind a target, for the lines about threads and memory.
fn proxy_name(target: Target) -> &'static str {
    match target {
        Target::Direct => "direct",
        Target::Nginx => "nginx",
        Target::Haproxy => "HAProxy",
        Target::SwitchyardH2c | Target::SwitchyardHttp => "switchyard",
    }
}

/// `4 threads (`switchyard`, 2× `tokio-rt-worker`, ...)`
fn thread_names(threads: &[ThreadAffinity]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for thread in threads {
        *counts.entry(thread.name.as_str()).or_default() += 1;
    }
    let names: Vec<String> = counts
        .iter()
        .map(|(name, n)| {
            if *n == 1 {
                format!("`{name}`")
            } else {
                format!("{n}× `{name}`")
            }
        })
        .collect();
    let plural = if threads.len() == 1 { "" } else { "s" };
    format!("{} thread{plural} ({})", threads.len(), names.join(", "))
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} ms"))
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}×"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}%"))
}

fn range(min: Option<f64>, max: Option<f64>, decimals: usize, unit: &str) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min:.decimals$} – {max:.decimals$}{unit}"),
        _ => "n/a".to_owned(),
    }
}

fn errors(stat: &Stat) -> String {
    if stat.failed_runs == 0 {
        stat.errors.to_string()
    } else {
        format!("{} ({} runs failed)", stat.errors, stat.failed_runs)
    }
}

#[cfg(test)]
mod tests;
