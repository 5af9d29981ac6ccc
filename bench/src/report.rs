//! The dated result of a comparison run: medians, ratios, every run, and
//! what went wrong, as Markdown for people and JSON for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cpu::ThreadAffinity;
use crate::loadgen::Scenario;
use crate::machine::Machine;
use crate::suite::{Measurement, Outcome, SuiteConfig, Target};

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// One measurement window, seconds.
    pub duration_s: f64,
    /// Unrecorded warm-up per target, seconds.
    pub warmup_s: f64,
    /// Idle time between measurements, seconds.
    pub pause_s: f64,
    /// A CPU busier than this fraction in the pause counts as disturbed.
    pub quiet_threshold: f64,
    /// The longest wait for a quiet machine before a run, seconds.
    pub quiet_wait_s: f64,
    /// Rounds.
    pub repeats: usize,
    /// Workers of the connection scenario.
    pub cps_workers: usize,
    /// Connections of the bulk scenario.
    pub bulk_connections: usize,
    /// Size of one bulk download, bytes.
    pub body_bytes: u64,
    /// Cap on the requests of one run.
    pub max_requests: u64,
    /// The proxy's CPU.
    pub proxy_cpu: usize,
    /// The load generator's and pod servers' CPU.
    pub load_cpu: usize,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &SuiteConfig) -> Self {
        Self {
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            pause_s: config.pause.as_secs_f64(),
            quiet_threshold: config.quiet_threshold,
            quiet_wait_s: config.quiet_wait.as_secs_f64(),
            repeats: config.repeats,
            cps_workers: config.cps_workers,
            bulk_connections: config.bulk_connections,
            body_bytes: config.body_bytes,
            max_requests: config.max_requests,
            proxy_cpu: config.proxy_cpu,
            load_cpu: config.load_cpu,
        }
    }
}

/// One target in one scenario, over all rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The median of `values`: conn/s (cps) or MB/s (bulk).
    pub median: Option<f64>,
    /// Each round's value, in round order (failed runs left out).
    pub values: Vec<f64>,
    /// The smallest of `values`.
    pub min: Option<f64>,
    /// The largest of `values`.
    pub max: Option<f64>,
    /// Median of the runs' value per second of proxy CPU time: conn per
    /// CPU-second (cps) or MB per CPU-second (bulk). Less sensitive than the
    /// rate itself to other tenants taking the proxy's CPU.
    pub per_cpu_s: Option<f64>,
    /// Runs that produced no result.
    pub failed_runs: usize,
    /// Failed requests, summed over the runs.
    pub errors: u64,
    /// Median CPU use of the proxy during the runs, percent of one CPU.
    pub proxy_cpu_pct: Option<f64>,
    /// Median over the runs of how busy the load CPU was (0..1).
    pub load_cpu_busy: Option<f64>,
    /// Median of the runs' median latency, milliseconds (cps).
    pub p50_ms: Option<f64>,
    /// Median of the runs' 99th percentile latency, milliseconds (cps).
    pub p99_ms: Option<f64>,
}

/// `10000` as `10,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes a report as `<dir>/<date>-<name>[-<tag>].md` and `.json`; returns their paths.
pub fn write_dated<T: Serialize>(
    dir: &Path,
    date: &str,
    name: &str,
    tag: Option<&str>,
    markdown: &str,
    report: &T,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let stem = match tag {
        Some(tag) => format!("{date}-{name}-{tag}"),
        None => format!("{date}-{name}"),
    };
    let md = dir.join(format!("{stem}.md"));
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&md, markdown).with_context(|| format!("write {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("write {}", json.display()))?;
    Ok((md, json))
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    })
}

impl Stat {
    /// Summarizes the runs of `target` in `scenario`.
    pub fn of(
        measurements: &[Measurement],
        target: Target,
        scenario: Scenario,
        load_cpu: usize,
    ) -> Self {
        let runs: Vec<&Measurement> = measurements
            .iter()
            .filter(|m| m.target == target && m.scenario == scenario)
            .collect();
        let mut stat = Self::default();
        let mut cpu = Vec::new();
        let mut per_cpu = Vec::new();
        let mut load_busy = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for run in runs {
            let Some(result) = run.result.as_ref().filter(|_| run.failure.is_none()) else {
                stat.failed_runs += 1;
                continue;
            };
            let value = match scenario {
                Scenario::Cps => result.completed_per_s,
                Scenario::Bulk => result.mb_per_s,
            };
            stat.values.push(value);
            stat.errors += result.errors;
            load_busy.extend(run.cpu_busy.get(load_cpu).copied());
            if let Some(seconds) = run.proxy_cpu_s.filter(|&s| s > 0.0) {
                cpu.push(100.0 * seconds / result.duration_s);
                per_cpu.push(value * result.duration_s / seconds);
            }
            if let Some(latency) = &result.latency {
                p50.push(latency.p50_us as f64 / 1000.0);
                p99.push(latency.p99_us as f64 / 1000.0);
            }
        }
        stat.median = median(&stat.values);
        stat.min = stat.values.iter().copied().reduce(f64::min);
        stat.max = stat.values.iter().copied().reduce(f64::max);
        stat.per_cpu_s = median(&per_cpu);
        stat.load_cpu_busy = median(&load_busy);
        stat.proxy_cpu_pct = median(&cpu);
        stat.p50_ms = median(&p50);
        stat.p99_ms = median(&p99);
        stat
    }
}

/// One target over both scenarios.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The target.
    pub target: Target,
    /// New connections per second.
    pub cps: Stat,
    /// Bulk throughput.
    pub bulk: Stat,
}

/// `numerator / denominator` of the medians, per scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    /// `switchyard / haproxy`, ...
    pub name: String,
    /// Of conn/s.
    pub cps: Option<f64>,
    /// Of MB/s.
    pub bulk: Option<f64>,
    /// Of conn per proxy CPU-second (none when the denominator is direct).
    pub cps_per_cpu_s: Option<f64>,
    /// Of MB per proxy CPU-second (none when the denominator is direct).
    pub bulk_per_cpu_s: Option<f64>,
}

/// The whole result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// How.
    pub method: Method,
    /// Medians per target.
    pub rows: Vec<Row>,
    /// The ratios of the medians.
    pub ratios: Vec<Ratio>,
    /// Everything measured and seen.
    pub outcome: Outcome,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Report {
    /// Summarizes `outcome`.
    pub fn new(machine: Machine, method: Method, outcome: Outcome) -> Self {
        let rows: Vec<Row> = Target::ALL
            .iter()
            .map(|&target| Row {
                target,
                cps: Stat::of(
                    &outcome.measurements,
                    target,
                    Scenario::Cps,
                    method.load_cpu,
                ),
                bulk: Stat::of(
                    &outcome.measurements,
                    target,
                    Scenario::Bulk,
                    method.load_cpu,
                ),
            })
            .collect();
        let row = |target: Target| rows.iter().find(|row| row.target == target);
        let mut ratios = Vec::new();
        for (a, b) in [
            (Target::Switchyard, Target::Haproxy),
            (Target::Switchyard, Target::Direct),
            (Target::Haproxy, Target::Direct),
        ] {
            if let (Some(ra), Some(rb)) = (row(a), row(b)) {
                ratios.push(Ratio {
                    name: format!("{} / {}", a.as_str(), b.as_str()),
                    cps: ratio(ra.cps.median, rb.cps.median),
                    bulk: ratio(ra.bulk.median, rb.bulk.median),
                    cps_per_cpu_s: ratio(ra.cps.per_cpu_s, rb.cps.per_cpu_s),
                    bulk_per_cpu_s: ratio(ra.bulk.per_cpu_s, rb.bulk.per_cpu_s),
                });
            }
        }
        Self {
            machine,
            method,
            rows,
            ratios,
            outcome,
        }
    }

    /// Writes `<dir>/<date>-userspace-l4.md` and `.json`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let stem = format!("{}-userspace-l4", self.machine.date);
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
        let _ = writeln!(
            out,
            "# switchyard userspace L4 proxy vs HAProxy vs direct: {}\n",
            m.date
        );
        out.push_str(
            "A measurement, not a check: nothing here passes or fails. Written by \
             `cargo run --release -p switchyard-bench --bin compare`; see `bench/README.md`.\n\n",
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
            ("HAProxy", m.haproxy.clone()),
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
        let _ = write!(
            out,
            "\n## Method\n\n\
             - One topology of network namespaces (switchyard-tests): a client (10.0.0.2), a node, \
             and {pods} pods each running `pod-server` (HTTP on 8080). Nothing leaves the machine.\n\
             - Three targets, reached from the same client with the same load generator:\n\
             \x20 - **direct**: the {pods} pod addresses, round-robin in the client, forwarded by the \
             node's kernel (no proxy; the anchor);\n\
             \x20 - **switchyard**: the Service VIP 10.96.0.10:80 (targetPort 8080, annotation \
             `switchyard.io/lb-algorithm: round-robin`), served by `switchyard run --proxy-mode userspace`;\n\
             \x20 - **haproxy**: HAProxy on 10.0.0.1:8081, `mode tcp`, `balance roundrobin`, \
             `nbthread 1`, no health checks, no logging (configuration below).\n\
             - CPU pinning: the proxy under test on CPU {proxy} (both proxies are started there by a \
             thread pinned to it, so tokio sizes its pool to one worker); the load generator and the \
             pod servers on CPU {load}. Both proxies stay up the whole time; only one is ever under load.\n\
             - **conn/s**: {workers} concurrent workers each loop over connect, \
             `GET / HTTP/1.1` with `Connection: close`, read to EOF, close: one new TCP connection per \
             request. Counted: requests completed inside the window, per second.\n\
             - **MB/s**: {conns} connections each download `/bytes/{body}` (with `Connection: close`) \
             again and again; bytes received inside the window, in 10^6 bytes per second.\n\
             - Each measurement lasts {duration} s; before the first round each target gets an \
             unrecorded {warmup} s warm-up; {pause} s idle between measurements. {repeats} rounds, \
             interleaved (direct, switchyard, haproxy, direct, ...), and the table shows the median \
             of the rounds, to tame the noise of a shared machine. A request cut off by the end of \
             the window counts neither as done nor as failed.\n\
             - Before each measurement the CPUs are sampled over the pause; while either was busier \
             than {quiet:.0}% (other tenants: the benchmark itself is idle then) the run waits, up \
             to {quiet_wait} s, then goes ahead anyway. The per-run table shows that background load.\n\
             - \"proxy CPU\" is the proxy process's user+system time over the window (100% = one CPU \
             busy); softirq work the kernel does for its sockets is counted only where it happens \
             to interrupt the proxy. \"per proxy CPU-second\" divides the work done by that time: \
             a measure of efficiency that other tenants' load on the proxy's CPU disturbs less than \
             the rate itself.\n\
             - HAProxy runs with its defaults apart from the settings above (so 16 kB buffers, no \
             splicing); switchyard with the defaults of `switchyard run`.\n\n",
            pods = crate::suite::PODS,
            proxy = method.proxy_cpu,
            load = method.load_cpu,
            workers = method.cps_workers,
            conns = method.bulk_connections,
            body = method.body_bytes,
            duration = method.duration_s,
            warmup = method.warmup_s,
            pause = method.pause_s,
            repeats = method.repeats,
            quiet = method.quiet_threshold * 100.0,
            quiet_wait = method.quiet_wait_s,
        );
    }

    fn write_results(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "## Results (median of {} rounds)\n\n\
             ### New connections per second\n\n\
             | target | conn/s | min – max | latency p50 / p99 | proxy CPU | conn per proxy CPU-second | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|",
            self.method.repeats
        );
        for row in &self.rows {
            let latency = match (row.cps.p50_ms, row.cps.p99_ms) {
                (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2} ms"),
                _ => "n/a".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {latency} | {} | {} | {} |",
                row.target.as_str(),
                number(row.cps.median, 0),
                range(&row.cps, 0),
                percent(row.cps.proxy_cpu_pct),
                number(row.cps.per_cpu_s, 0),
                errors(&row.cps),
            );
        }
        out.push_str(
            "\n### Bulk throughput (10^6 bytes per second)\n\n\
             | target | MB/s | min – max | proxy CPU | MB per proxy CPU-second | errors |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.target.as_str(),
                number(row.bulk.median, 0),
                range(&row.bulk, 0),
                percent(row.bulk.proxy_cpu_pct),
                number(row.bulk.per_cpu_s, 0),
                errors(&row.bulk),
            );
        }
        out.push_str(
            "\n### Ratios\n\n\
             | ratio of medians | conn/s | MB/s | conn per proxy CPU-second | MB per proxy CPU-second |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for ratio in &self.ratios {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                ratio.name,
                number(ratio.cps, 2),
                number(ratio.bulk, 2),
                number(ratio.cps_per_cpu_s, 2),
                number(ratio.bulk_per_cpu_s, 2),
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
            "## Every run\n\n| # | round | scenario | target | value | errors | proxy CPU |",
        );
        for cpu in 0..cpus {
            let _ = write!(out, " CPU {cpu} busy |");
        }
        for cpu in 0..cpus {
            let _ = write!(out, " CPU {cpu} before |");
        }
        out.push_str(" waited |\n|---:|---:|---|---|---:|---:|---:|");
        for _ in 0..2 * cpus {
            out.push_str("---:|");
        }
        out.push_str("---:|");
        out.push('\n');
        for (index, m) in self.outcome.measurements.iter().enumerate() {
            let (value, errors, cpu) = match (&m.result, &m.failure) {
                (Some(result), None) => (
                    match m.scenario {
                        Scenario::Cps => format!("{:.0} conn/s", result.completed_per_s),
                        Scenario::Bulk => format!("{:.0} MB/s", result.mb_per_s),
                    },
                    result.errors.to_string(),
                    percent(m.proxy_cpu_s.map(|s| 100.0 * s / result.duration_s)),
                ),
                _ => ("failed".to_owned(), "-".to_owned(), "-".to_owned()),
            };
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {value} | {errors} | {cpu} |",
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
        for (target, names) in &setup.round_robin {
            let _ = match names {
                Ok(names) => writeln!(
                    out,
                    "- {} balanced {} fresh connections as: {}",
                    target.as_str(),
                    names.len(),
                    names.join(", ")
                ),
                Err(error) => writeln!(
                    out,
                    "- {}: the round-robin check failed: {error}",
                    target.as_str()
                ),
            };
        }
        let _ = writeln!(
            out,
            "- Threads, all pinned as planned: switchyard {} on CPU {proxy}; HAProxy {} on CPU \
             {proxy}; the 3 pod servers {} on CPU {load} (tokio's workers and its blocking pool \
             both show as `tokio-rt-worker`).",
            thread_names(&setup.switchyard_threads),
            thread_names(&setup.haproxy_threads),
            thread_names(&setup.pod_server_threads),
            proxy = self.method.proxy_cpu,
            load = self.method.load_cpu,
        );
        for (name, threads) in [
            ("switchyard", &outcome.switchyard_threads_after),
            ("HAProxy", &outcome.haproxy_threads_after),
        ] {
            if threads.is_empty() {
                continue;
            }
            let times: Vec<String> = threads
                .iter()
                .map(|t| format!("`{}` {:.1} s", t.name, t.cpu_s))
                .collect();
            let _ = writeln!(
                out,
                "- CPU time per {name} thread over the whole run: {}.",
                times.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "- Binaries: pod-server `{}`, loadgen `{}`.",
            setup.pod_server_bin, setup.loadgen_bin
        );
        for row in &self.rows {
            for (scenario, stat) in [(Scenario::Cps, &row.cps), (Scenario::Bulk, &row.bulk)] {
                if let Some(busy) = stat.load_cpu_busy.filter(|&busy| busy >= SATURATED) {
                    let _ = writeln!(
                        out,
                        "- {} {scenario}: the load CPU (load generator, pod servers and the \
                         kernel's work for them) was {:.0}% busy: that side, not only the target, \
                         limits this number.",
                        row.target.as_str(),
                        busy * 100.0
                    );
                }
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
        match &outcome.switchyard_exit {
            Some(exit) => {
                let _ = writeln!(
                    out,
                    "- **switchyard exited during the run**:\n\n```text\n{exit}\n```"
                );
            }
            None => out.push_str("- switchyard kept running to the end.\n"),
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
            "\n## HAProxy configuration\n\n```text\n{}```\n\n## switchyard Service\n\n```json\n{}\n```",
            setup.haproxy_config,
            serde_json::to_string_pretty(&setup.service_manifest).unwrap_or_default()
        );
    }
}

/// A load CPU busier than this (median over the runs) is flagged as a limit.
const SATURATED: f64 = 0.95;

/// `4 threads: switchyard, 2× tokio-rt-worker, ...`
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

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}%"))
}

fn range(stat: &Stat, decimals: usize) -> String {
    match (stat.min, stat.max) {
        (Some(min), Some(max)) => format!("{min:.decimals$} – {max:.decimals$}"),
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
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratio_needs_both_sides() {
        assert_eq!(ratio(Some(1.0), Some(2.0)), Some(0.5));
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
