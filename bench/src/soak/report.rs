//! The dated report of a soak: Markdown for people, JSON (every sample, tick, failure and
//! probe, the machine, the settings) for tools, and an SVG plot of the daemon's memory, the
//! programming latency and the connections over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::plot::{self, Panel, Series, Style};
use super::stats::{LogHistogram, PromHistogram, mean_between, nearest_rank, slope};
use super::{MetricsSample, Outcome, ProcSample, RunConfig};
use crate::machine::Machine;
use crate::report::thousands;

/// Memory after the warm-up counts as flat when it grew by less than this share of what it was
/// at the end of the warm-up (and by less than [`FLAT_TOLERANCE_MIB`]).
pub const FLAT_TOLERANCE: f64 = 0.02;
/// ... or by less than this, whichever is larger.
pub const FLAT_TOLERANCE_MIB: f64 = 1.0;
/// A connection slower than this is reported as slow (not failed).
pub const SLOW_MS: f64 = 1000.0;

/// The settings, as reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Method {
    /// Minutes of churn asked for.
    pub minutes: f64,
    /// Services.
    pub services: usize,
    /// Sample Services.
    pub samples: usize,
    /// Ready Pods of every other Service.
    pub endpoints_per_service: usize,
    /// Endpoint changes per second asked for.
    pub rate: f64,
    /// The client's connections per second.
    pub connect_rate: f64,
    /// The client's connect timeout, seconds.
    pub connect_timeout_s: f64,
    /// The client's timeout for a whole connection, seconds.
    pub request_timeout_s: f64,
    /// Warm-up, minutes (as used: at most a third of the run).
    pub warmup_min: f64,
    /// Memory and CPU sampling period, seconds.
    pub sample_interval_s: f64,
    /// `/metrics` period, seconds.
    pub metrics_interval_s: f64,
    /// Time between a lifecycle's steps, seconds.
    pub step_s: f64,
    /// Pod grace period, seconds.
    pub grace_s: f64,
    /// The daemon's `--sync-period`.
    pub sync_period: String,
    /// Extra daemon arguments.
    pub daemon_args: Vec<String>,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &RunConfig) -> Self {
        let minutes = config.duration.as_secs_f64() / 60.0;
        Self {
            minutes,
            services: config.services,
            samples: config.samples,
            endpoints_per_service: config.endpoints_per_service,
            rate: config.rate,
            connect_rate: config.connect_rate,
            connect_timeout_s: config.connect_timeout.as_secs_f64(),
            request_timeout_s: config.request_timeout.as_secs_f64(),
            warmup_min: (config.warmup.as_secs_f64() / 60.0).min(minutes / 3.0),
            sample_interval_s: config.sample_interval.as_secs_f64(),
            metrics_interval_s: config.metrics_interval.as_secs_f64(),
            step_s: config.step.as_secs_f64(),
            grace_s: config.grace.as_secs_f64(),
            sync_period: config.sync_period.clone(),
            daemon_args: config.daemon_args.clone(),
        }
    }
}

/// A distribution of milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Spread {
    /// Values.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Largest.
    pub max_ms: Option<f64>,
}

impl Spread {
    fn of_values(values: &[f64]) -> Self {
        Self {
            count: values.len() as u64,
            p50_ms: nearest_rank(values, 0.5),
            p99_ms: nearest_rank(values, 0.99),
            max_ms: values.iter().copied().reduce(f64::max),
        }
    }

    fn of_histogram(h: &LogHistogram) -> Self {
        Self {
            count: h.count,
            p50_ms: h.quantile_ms(0.5),
            p99_ms: h.quantile_ms(0.99),
            max_ms: (h.count > 0).then(|| h.max_us as f64 / 1e3),
        }
    }
}

/// The daemon's programming histogram over a window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Programming {
    /// Observations.
    pub count: f64,
    /// Median, interpolated inside its bucket, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, interpolated, milliseconds.
    pub p99_ms: Option<f64>,
    /// The bucket bound the median is under, milliseconds.
    pub p50_le_ms: Option<f64>,
    /// The bucket bound the 99th percentile is under, milliseconds.
    pub p99_le_ms: Option<f64>,
    /// Mean, milliseconds.
    pub mean_ms: Option<f64>,
}

impl Programming {
    fn of(h: &PromHistogram) -> Self {
        let ms = |v: Option<f64>| v.map(|s| s * 1e3);
        Self {
            count: h.count,
            p50_ms: ms(h.quantile(0.5)),
            p99_ms: ms(h.quantile(0.99)),
            p50_le_ms: ms(h.quantile_upper(0.5)),
            p99_le_ms: ms(h.quantile_upper(0.99)),
            mean_ms: ms(h.mean()),
        }
    }
}

/// The daemon's resident memory over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Once it had programmed the cluster, before the churn, MiB.
    pub after_load_mib: Option<f64>,
    /// At the start of the churn, MiB.
    pub start_mib: Option<f64>,
    /// The mean over the minute ending with the warm-up, MiB.
    pub warmup_end_mib: Option<f64>,
    /// The mean over the last minute, MiB.
    pub end_mib: Option<f64>,
    /// The most seen, MiB, and when (minutes).
    pub max_mib: Option<(f64, f64)>,
    /// `VmHWM` at the end, MiB.
    pub peak_mib: Option<f64>,
    /// Least-squares slope after the warm-up, MiB per minute.
    pub slope_mib_per_min: Option<f64>,
    /// End minus warm-up end, MiB.
    pub growth_mib: Option<f64>,
    /// Growth as a share of the warm-up end.
    pub growth_share: Option<f64>,
    /// Minutes after the warm-up.
    pub after_warmup_min: f64,
    /// The goal: flat after the warm-up (see [`FLAT_TOLERANCE`]).
    pub flat: Option<bool>,
}

/// CPU over the churn, in CPUs (1.0 is one CPU busy all the time).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// CPUs of the machine.
    pub cpus: f64,
    /// The daemon.
    pub daemon: f64,
    /// The API server.
    pub apiserver: f64,
    /// The client.
    pub client: f64,
    /// The pod servers.
    pub pods: f64,
    /// This program (the engine and the driver).
    pub driver: f64,
    /// Everything else on the machine: other tenants, the kernel's own work, short commands.
    pub other: f64,
    /// The busiest minute of `other`.
    pub other_max_minute: f64,
}

/// One row of the timeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Window {
    /// From, minutes since the churn started.
    pub from_min: f64,
    /// To.
    pub to_min: f64,
    /// Endpoint changes written or completed.
    pub changes: u64,
    /// Connections that succeeded.
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// The daemon's histogram over the window.
    pub programming: Programming,
    /// Direct measurements in the window.
    pub probe: Spread,
    /// The daemon's resident memory at the window's end, MiB.
    pub rss_mib: Option<f64>,
    /// CPU in the window.
    pub cpu: CpuUse,
}

/// The figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Connections that succeeded.
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Of all connections, started by probes.
    pub probe_connections: u64,
    /// Successful connections slower than [`SLOW_MS`].
    pub slow: u64,
    /// Connect to the end of the answer.
    pub connection: Spread,
    /// Endpoint changes done.
    pub changes: u64,
    /// Per second of churn.
    pub change_rate: f64,
    /// The daemon's endpoint changes received over the churn.
    pub daemon_endpoint_changes: f64,
    /// The daemon's histogram over the churn.
    pub programming: Programming,
    /// Ready write sent → first connection to the new pod.
    pub probe: Spread,
    /// Probes that gave up.
    pub probes_missing: usize,
    /// Memory.
    pub memory: Memory,
    /// CPU.
    pub cpu: CpuUse,
    /// The timeline.
    pub windows: Vec<Window>,
}

/// The last sample at or before `t` (else the first).
fn at_or_before<T>(samples: &[T], t: f64, time: impl Fn(&T) -> f64) -> Option<&T> {
    samples
        .iter()
        .rev()
        .find(|s| time(s) <= t + 1e-9)
        .or_else(|| samples.first())
}

fn programming_between(metrics: &[MetricsSample], from: f64, to: f64) -> Option<PromHistogram> {
    let a = at_or_before(metrics, from, |m| m.t_s)?;
    let b = at_or_before(metrics, to, |m| m.t_s)?;
    Some(b.programming.since(&a.programming))
}

fn cpu_between(samples: &[ProcSample], from: f64, to: f64) -> CpuUse {
    let (Some(a), Some(b)) = (
        at_or_before(samples, from, |s| s.t_s),
        at_or_before(samples, to, |s| s.t_s),
    ) else {
        return CpuUse::default();
    };
    let dt = b.t_s - a.t_s;
    if dt <= 0.0 {
        return CpuUse::default();
    }
    let per = |x: f64| x / dt;
    let daemon = per(b.daemon.cpu_s - a.daemon.cpu_s);
    let apiserver = per(b.apiserver.cpu_s - a.apiserver.cpu_s);
    let client = per(b.client.cpu_s - a.client.cpu_s);
    let pods = per(b.pods_cpu_s - a.pods_cpu_s);
    let driver = per(b.driver_cpu_s - a.driver_cpu_s);
    let busy = per(b.machine_busy_s - a.machine_busy_s);
    CpuUse {
        cpus: per(b.machine_total_s - a.machine_total_s),
        daemon,
        apiserver,
        client,
        pods,
        driver,
        other: (busy - daemon - apiserver - client - pods - driver).max(0.0),
        other_max_minute: 0.0,
    }
}

fn memory(outcome: &Outcome, warmup_min: f64) -> Memory {
    let points: Vec<(f64, f64)> = outcome
        .samples
        .iter()
        .filter(|s| s.t_s >= 0.0 && s.daemon.rss_mib > 0.0)
        .map(|s| (s.t_s / 60.0, s.daemon.rss_mib))
        .collect();
    let end = points.last().map_or(0.0, |p| p.0);
    let after: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 >= warmup_min)
        .collect();
    let warmup_end_mib = mean_between(&points, (warmup_min - 1.0).max(0.0), warmup_min);
    let end_mib = mean_between(&points, (end - 1.0).max(warmup_min), end);
    let growth_mib = warmup_end_mib.zip(end_mib).map(|(a, b)| b - a);
    let growth_share = warmup_end_mib
        .zip(growth_mib)
        .and_then(|(a, g)| (a > 0.0).then(|| g / a));
    let flat = warmup_end_mib
        .zip(growth_mib)
        .map(|(a, g)| g < (a * FLAT_TOLERANCE).max(FLAT_TOLERANCE_MIB));
    Memory {
        after_load_mib: outcome.daemon_after_load.map(|u| u.rss_mib),
        start_mib: points.first().map(|p| p.1),
        warmup_end_mib,
        end_mib,
        max_mib: points
            .iter()
            .copied()
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
            .map(|(t, v)| (v, t)),
        peak_mib: outcome.samples.last().map(|s| s.daemon.peak_rss_mib),
        slope_mib_per_min: slope(&after),
        growth_mib,
        growth_share,
        after_warmup_min: (end - warmup_min).max(0.0),
        flat: (after.len() >= 2).then_some(()).and(flat),
    }
}

fn windows(outcome: &Outcome, window_s: f64) -> Vec<Window> {
    let soak = outcome.soak_s;
    let mut out = Vec::new();
    let mut from = 0.0;
    while from < soak - 1e-6 {
        let mut to = (from + window_s).min(soak);
        // A tail shorter than a tenth of a window joins this one.
        if soak - to < window_s / 10.0 {
            to = soak;
        }
        let changes = outcome
            .churn
            .changes_per_second
            .iter()
            .enumerate()
            .filter(|(s, _)| (*s as f64) >= from && (*s as f64) < to)
            .map(|(_, n)| u64::from(*n))
            .sum();
        let (mut ok, mut failed) = (0, 0);
        for (t_ns, o, f, _) in &outcome.client.ticks {
            let t = t_ns.saturating_sub(outcome.t0_ns) as f64 / 1e9;
            if t > from && t <= to + 1e-6 {
                ok += o;
                failed += f;
            }
        }
        let probes: Vec<f64> = outcome
            .churn
            .probes
            .iter()
            .filter(|p| p.t_s >= from && p.t_s < to)
            .filter_map(|p| p.latency_ms)
            .collect();
        out.push(Window {
            from_min: from / 60.0,
            to_min: to / 60.0,
            changes,
            ok,
            failed,
            programming: programming_between(&outcome.metrics, from, to)
                .as_ref()
                .map(Programming::of)
                .unwrap_or_default(),
            probe: Spread::of_values(&probes),
            rss_mib: at_or_before(&outcome.samples, to, |s| s.t_s).map(|s| s.daemon.rss_mib),
            cpu: cpu_between(&outcome.samples, from, to),
        });
        from = to;
    }
    out
}

impl Summary {
    /// The figures of `outcome`, with the warm-up `warmup_min` minutes long.
    pub fn of(outcome: &Outcome, warmup_min: f64) -> Self {
        let client = outcome.client.summary.clone().unwrap_or_default();
        let (ok, failed) = if outcome.client.summary.is_some() {
            (client.ok, client.failed)
        } else {
            // The client died: count from its ticks and failures.
            (
                outcome.client.ticks.iter().map(|t| t.1).sum(),
                outcome.client.failures_total,
            )
        };
        let probes: Vec<f64> = outcome
            .churn
            .probes
            .iter()
            .filter_map(|p| p.latency_ms)
            .collect();
        let soak = outcome.soak_s;
        let endpoint_changes = match (
            at_or_before(&outcome.metrics, 0.0, |m| m.t_s),
            at_or_before(&outcome.metrics, soak, |m| m.t_s),
        ) {
            (Some(a), Some(b)) => b.endpoint_changes - a.endpoint_changes,
            _ => 0.0,
        };
        let mut cpu = cpu_between(&outcome.samples, 0.0, soak);
        let minutes = windows(outcome, 60.0);
        cpu.other_max_minute = minutes.iter().map(|w| w.cpu.other).fold(0.0, f64::max);
        let window_s = if soak >= 15.0 * 60.0 { 300.0 } else { 60.0 };
        Self {
            ok,
            failed,
            probe_connections: client.probe_connections,
            slow: client.latency.count_above_ms(SLOW_MS),
            connection: Spread::of_histogram(&client.latency),
            changes: outcome.churn.changes,
            change_rate: if outcome.churn.churn_s > 0.0 {
                outcome.churn.changes as f64 / outcome.churn.churn_s
            } else {
                0.0
            },
            daemon_endpoint_changes: endpoint_changes,
            programming: programming_between(&outcome.metrics, 0.0, soak)
                .as_ref()
                .map(Programming::of)
                .unwrap_or_default(),
            probe: Spread::of_values(&probes),
            probes_missing: outcome
                .churn
                .probes
                .iter()
                .filter(|p| p.latency_ms.is_none())
                .count(),
            memory: memory(outcome, warmup_min),
            cpu,
            windows: windows(outcome, window_s),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// Sources changed but not committed when the run started.
    pub uncommitted_sources: Vec<String>,
    /// The settings.
    pub method: Method,
    /// The figures.
    pub summary: Summary,
    /// Everything measured.
    pub outcome: Outcome,
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "n/a".to_owned(),
    }
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} MiB"))
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

impl Report {
    /// Puts the report together.
    pub fn new(
        machine: Machine,
        uncommitted_sources: Vec<String>,
        method: Method,
        outcome: Outcome,
    ) -> Self {
        let summary = Summary::of(&outcome, method.warmup_min);
        Self {
            machine,
            uncommitted_sources,
            method,
            summary,
            outcome,
        }
    }

    fn stem(&self, tag: Option<&str>) -> String {
        match tag {
            Some(tag) => format!("{}-soak-{tag}", self.machine.date),
            None => format!("{}-soak", self.machine.date),
        }
    }

    /// The Markdown form; `svg` is the plot's file name, beside it.
    pub fn markdown(&self, svg: &str) -> String {
        let mut out = String::new();
        let m = &self.method;
        let _ = writeln!(
            out,
            "# Churn soak: {} Services, {:.0} endpoint changes/s, {:.0} min, {}\n",
            thousands(m.services as u64),
            m.rate,
            self.outcome.soak_s / 60.0,
            self.machine.date
        );
        self.write_result(&mut out);
        let _ = writeln!(
            out,
            "![daemon memory, programming latency and connections over time]({svg})\n"
        );
        self.write_timeline(&mut out);
        self.write_failures(&mut out);
        self.write_daemon(&mut out);
        self.write_machine(&mut out);
        self.write_method(&mut out);
        out
    }

    fn write_result(&self, out: &mut String) {
        let s = &self.summary;
        let o = &self.outcome;
        out.push_str("## Result\n\n");
        if let Some(failure) = &o.failure {
            let _ = writeln!(out, "- **The run stopped early**: {failure}");
        }
        let verdict = if s.failed == 0 {
            "**met**"
        } else {
            "**not met**"
        };
        let _ = writeln!(
            out,
            "- **Connections**: {} to the {} sample Services' ClusterIPs, **{} failed** (goal 0: {verdict}); \
             {} of them by the latency probes. Connect to the end of the answer: p50 {}, p99 {}, max {}; {} slower than {:.0} s.",
            thousands(s.ok + s.failed),
            self.method.samples,
            thousands(s.failed),
            thousands(s.probe_connections),
            ms(s.connection.p50_ms),
            ms(s.connection.p99_ms),
            ms(s.connection.max_ms),
            s.slow,
            SLOW_MS / 1e3,
        );
        let _ = writeln!(
            out,
            "- **Churn**: {} endpoint changes in {:.1} min ({:.1}/s; the daemon counted {} endpoint changes received), \
             {} lifecycles ({} cut short by a failed write).",
            thousands(s.changes),
            o.churn.churn_s / 60.0,
            s.change_rate,
            thousands(s.daemon_endpoint_changes as u64),
            thousands(o.churn.lifecycles.values().sum()),
            o.churn.lifecycles_cut,
        );
        let p = &s.programming;
        let _ = writeln!(
            out,
            "- **Network programming latency**, the daemon's `kubeproxy_network_programming_duration_seconds` \
             (from the Pod change, by the slice's trigger time, to the maps written) over {} observations: \
             **p50 {}, p99 {}** (interpolated in the buckets; bucket bounds ≤ {} and ≤ {}), mean {}.",
            thousands(p.count as u64),
            ms(p.p50_ms),
            ms(p.p99_ms),
            ms(p.p50_le_ms),
            ms(p.p99_le_ms),
            ms(p.mean_ms),
        );
        let _ = writeln!(
            out,
            "- **Through the datapath** (a sample Service's new real pod made ready: write sent → first \
             connection through the ClusterIP that reached it), {} changes: **p50 {}, p99 {}**, max {}{}.",
            s.probe.count,
            ms(s.probe.p50_ms),
            ms(s.probe.p99_ms),
            ms(s.probe.max_ms),
            if s.probes_missing > 0 {
                format!("; {} never reached the new pod in time", s.probes_missing)
            } else {
                String::new()
            }
        );
        let mem = &s.memory;
        let flat = match mem.flat {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "- **Daemon memory** (VmRSS): {} after the initial sync, {} at the start of the churn, {} at the end of \
             the {:.0}-minute warm-up, **{} at the end** (means over a minute); max {} at {:.1} min. After the warm-up: \
             {}{} over {:.0} min, slope {} MiB/min. Goal flat after warm-up (growth below {:.0}% or {FLAT_TOLERANCE_MIB:.0} MiB): {flat}.",
            mib(mem.after_load_mib),
            mib(mem.start_mib),
            mib(mem.warmup_end_mib),
            self.method.warmup_min,
            mib(mem.end_mib),
            mib(mem.max_mib.map(|m| m.0)),
            mem.max_mib.map_or(0.0, |m| m.1),
            mem.growth_mib
                .map_or_else(|| "n/a".to_owned(), |g| format!("{g:+.1} MiB")),
            mem.growth_share
                .map_or_else(String::new, |g| format!(" ({:+.1}%)", g * 100.0)),
            mem.after_warmup_min,
            mem.slope_mib_per_min
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:+.3}")),
            FLAT_TOLERANCE * 100.0,
        );
        if let Some(check) = &o.check {
            let _ = writeln!(
                out,
                "- **Datapath at the end** (churn stopped, every grace period over): {} of {} Services' frontends in \
                 the kernel's maps hold exactly the endpoints the API server's Pods give{}.",
                check.matching,
                check.services,
                if check.differences.is_empty() {
                    String::new()
                } else {
                    format!("; differences: {}", check.differences.join("; "))
                }
            );
        }
        let c = &s.cpu;
        let _ = writeln!(
            out,
            "- **CPU** (of {:.0} CPUs): daemon {}, API server {}, client {}, pod servers {}, this program {}; \
             everything else on the machine (other tenants, kernel work, short commands) {} on average, {} in its busiest minute.",
            c.cpus,
            pct(c.daemon),
            pct(c.apiserver),
            pct(c.client),
            pct(c.pods),
            pct(c.driver),
            pct(c.other),
            pct(c.other_max_minute),
        );
        let warnings: usize = o
            .problems
            .iter()
            .filter(|p| p.process == "daemon")
            .map(|p| p.count)
            .sum();
        let _ = writeln!(
            out,
            "- **Daemon log**: {warnings} warning and error lines{}.\n",
            if warnings > 0 { " (below)" } else { "" }
        );
    }

    fn write_timeline(&self, out: &mut String) {
        out.push_str("## Over time\n\n");
        out.push_str(
            "| minutes | changes | connections ok | failed | programming p50 / p99 (daemon) | probe p50 / max (n) | daemon RSS at end | daemon CPU | other load |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for w in &self.summary.windows {
            let _ = writeln!(
                out,
                "| {:.0}–{:.0} | {} | {} | {} | {} / {} | {} / {} ({}) | {} | {} | {} |",
                w.from_min,
                w.to_min,
                thousands(w.changes),
                thousands(w.ok),
                w.failed,
                ms(w.programming.p50_ms),
                ms(w.programming.p99_ms),
                ms(w.probe.p50_ms),
                ms(w.probe.max_ms),
                w.probe.count,
                mib(w.rss_mib),
                pct(w.cpu.daemon),
                pct(w.cpu.other),
            );
        }
        out.push('\n');
    }

    fn write_failures(&self, out: &mut String) {
        let record = &self.outcome.client;
        if record.failures_total == 0 {
            return;
        }
        let _ = writeln!(
            out,
            "## Failed connections\n\n{} in all; the first {} (every kept one is in the JSON):\n",
            record.failures_total,
            record.failures.len().min(50)
        );
        out.push_str("| minute | unix time | target | error | after | probe |\n|---:|---:|---|---|---:|---|\n");
        for f in record.failures.iter().take(50) {
            let _ = writeln!(
                out,
                "| {:.2} | {:.3} | {} | {} | {:.1} ms | {} |",
                f.t_ns.saturating_sub(self.outcome.t0_ns) as f64 / 60e9,
                f.unix_s,
                f.target,
                f.error.replace('|', "/"),
                f.ms,
                if f.probe { "yes" } else { "" }
            );
        }
        out.push('\n');
    }

    fn write_daemon(&self, out: &mut String) {
        let o = &self.outcome;
        out.push_str("## The daemon and the API server\n\n");
        if let (Some(first), Some(last)) = (o.metrics.first(), o.metrics.last()) {
            let sync = last.sync.since(&first.sync);
            let _ = writeln!(
                out,
                "- Over the churn: {} syncs (p50 {}, p99 {}, interpolated), {} datapath repairs, {} datapath errors, \
                 {} map-full refusals, {} watch errors, {} connects to a frontend without backends, \
                 {} lookups of a missing backend, {} connects translated.",
                thousands(sync.count as u64),
                ms(sync.quantile(0.5).map(|v| v * 1e3)),
                ms(sync.quantile(0.99).map(|v| v * 1e3)),
                last.repairs - first.repairs,
                last.datapath_errors - first.datapath_errors,
                last.map_full - first.map_full,
                last.watch_errors - first.watch_errors,
                last.bpf_no_backend - first.bpf_no_backend,
                last.bpf_backend_missing - first.bpf_backend_missing,
                thousands((last.bpf_translations - first.bpf_translations) as u64),
            );
            let _ = writeln!(
                out,
                "- Programmed at the end of the churn: {} Services, {} frontends, {} active backends.",
                last.services, last.frontends, last.backends_active
            );
        }
        let _ = writeln!(
            out,
            "- Start: healthy {} after it was started, every Service and backend programmed {} after it was started.",
            o.daemon_healthy_s
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} s")),
            o.programmed_s
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} s")),
        );
        if let (Some(a), Some(b)) = (o.samples.first(), o.samples.last()) {
            let _ = writeln!(
                out,
                "- The API server's memory: {} at the start of the churn, {} at the end.",
                mib(Some(a.apiserver.rss_mib)),
                mib(Some(b.apiserver.rss_mib))
            );
        }
        out.push_str(
            "\nWrites to the API server (each a Pod create, status update or delete):\n\n",
        );
        out.push_str("| write | ok | failed | answered p50 / p99 / max |\n|---|---:|---:|---:|\n");
        for (op, w) in &o.churn.writes {
            let spread = Spread::of_histogram(&w.ack);
            let _ = writeln!(
                out,
                "| {op} | {} | {} | {} / {} / {} |",
                thousands(w.ok),
                w.errors,
                ms(spread.p50_ms),
                ms(spread.p99_ms),
                ms(spread.max_ms)
            );
        }
        for error in o
            .churn
            .writes
            .values()
            .flat_map(|w| w.first_errors.iter())
            .take(10)
        {
            let _ = writeln!(out, "\n    {error}");
        }
        let _ = writeln!(
            out,
            "\nLifecycles: {:?}; the next Service was busy {} times, every Service was busy {} times; \
             Pods at the end {} (terminating {}); the engine's model differed from the API server on {} Services.\n",
            o.churn.lifecycles,
            o.churn.busy_skips,
            o.churn.no_free_service,
            o.churn.pods_at_end.0,
            o.churn.pods_at_end.1,
            o.churn.model_differs.len(),
        );
        if !o.exits.is_empty() {
            let _ = writeln!(out, "Exits during the run: {}\n", o.exits.join("; "));
        }
        if !o.problems.is_empty() {
            out.push_str(
                "Warnings and errors logged, grouped by message (first line of each):\n\n",
            );
            for p in o.problems.iter().take(20) {
                let _ = writeln!(
                    out,
                    "- {} ×{}: `{}`",
                    p.process,
                    p.count,
                    p.first.replace('`', "'")
                );
            }
            out.push('\n');
        }
    }

    fn write_machine(&self, out: &mut String) {
        let m = &self.machine;
        out.push_str("## Machine and versions\n\n| | |\n|---|---|\n");
        let _ = writeln!(out, "| started (UTC) | {} |", m.started);
        let _ = writeln!(out, "| kernel | {} |", m.kernel);
        let _ = writeln!(out, "| CPU | {} × {} |", m.cpus, m.cpu_model);
        let _ = writeln!(out, "| switchyard commit | {} |", m.switchyard_commit);
        let uncommitted = if self.uncommitted_sources.is_empty() {
            "none".to_owned()
        } else {
            self.uncommitted_sources.join("; ")
        };
        let _ = writeln!(
            out,
            "| uncommitted in apiserver/, control/, proxy/, ebpf/ | {uncommitted} |"
        );
        let _ = writeln!(
            out,
            "| switchyard binary (daemon and API server) | `{}`, built {} |",
            m.switchyard_binary, m.switchyard_built
        );
        let _ = writeln!(out, "| benchmark build profile | {} |\n", m.profile);
    }

    fn write_method(&self, out: &mut String) {
        let m = &self.method;
        let _ = writeln!(
            out,
            "## Method\n\n\
             - **Cluster**: one node of switchyard-tests' multi-node topology: the embedded API server \
             (`switchyard apiserver`, its EndpointSlice controller deriving the slices from the Pods) in the bridge's \
             namespace, the daemon in the node namespace (`switchyard run --proxy-mode ebpf --kubeconfig ... \
             --devices none --sync-period {}`; its programs attached to the node's client cgroup only, pinned under the \
             cluster's bpffs folder), watching Services and EndpointSlices as on a cluster. Extra daemon arguments: {}.\n\
             - **Services**: {} ClusterIP Services `svc-<n>` (`10.96.1.1` upward, port 80 → 8080, selector `app=svc-<n>`). \
             {} of them, spread evenly, are *sample* Services, each with two real pod servers (`pod-server` in pod \
             namespaces), one of them behind a ready Pod at any time. Every other Service has {} ready Pods with fake \
             addresses (`10.225.0.0` upward; nothing routes there).\n\
             - **Churn**: {:.0} endpoint changes/s in total. Every {:.0} ms a *lifecycle* starts on the next Service of a \
             fixed order (a stride through all of them, skipping a Service whose last lifecycle is still running); its steps \
             are {:.1} s apart and each is one endpoint change. *Replace*: a new Pod is created not ready; made ready (status \
             update); the oldest ready Pod is deleted with a {:.0} s grace period (`ready=false, serving=true, terminating=true`); \
             the API server removes it when the grace period ends. A sample Service's replace swaps its two real pods. On \
             sample Services every other lifecycle is a *decoy*: a Pod with a fake address is created not ready, deleted \
             (terminating, not serving), marked ready while terminating (serving), and removed: a datapath that ever used a \
             not-ready or terminating endpoint beside a ready one would send clients to an address that does not answer.\n\
             - **Clients**: in the node's client namespace and cgroup, a new TCP connection {:.0} times a second, \
             round-robin over the sample Services' ClusterIPs: connect (timeout {:.0} s), `GET /`, read to the end, close \
             (the whole at most {:.0} s); anything but a `200` in time is a failure, recorded with its time and error.\n\
             - **Programming latency**: the daemon's `kubeproxy_network_programming_duration_seconds` histogram, read from \
             `/metrics` every {:.0} s; it starts at the EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`, \
             which the API server's controller sets to the time of the Pod change, and ends when the datapath was written. \
             Percentiles are interpolated linearly inside the buckets (1 ms × 2^k), as Prometheus' `histogram_quantile` does. \
             Directly, at every replace on a sample Service: the client starts a fresh connection to the Service every \
             millisecond (in parallel, without waiting for the earlier ones) and the latency is from just before the status \
             update making the new real pod ready is sent to the start of the first connection that the new pod answered \
             (both the old and the new pod are ready then, chosen at random, so this adds about a millisecond or two). \
             All times are `CLOCK_MONOTONIC`, shared by the processes.\n\
             - **Memory and CPU**: `VmRSS`, `VmHWM` and CPU time of the daemon (and of the API server, the client, the pod \
             servers and this program) from `/proc` every {:.0} s, the machine's from `/proc/stat`. The first {:.0} min \
             are the warm-up; the memory figures are means over a minute; the slope is a least-squares fit after the warm-up. \
             \"Other load\" is the machine's busy time minus that of the processes of the run.\n\
             - **At the end**: the churn stops, running lifecycles finish and their grace periods pass; then every Service's \
             frontend in the kernel's maps (the daemon's `/services`, read back from the maps) is compared with the ready \
             endpoints of its Pods as the API server lists them.\n",
            m.sync_period,
            if m.daemon_args.is_empty() {
                "none".to_owned()
            } else {
                format!("`{}`", m.daemon_args.join(" "))
            },
            thousands(m.services as u64),
            m.samples,
            m.endpoints_per_service,
            m.rate,
            4000.0 / m.rate,
            m.step_s,
            m.grace_s,
            m.connect_rate,
            m.connect_timeout_s,
            m.request_timeout_s,
            m.metrics_interval_s,
            m.sample_interval_s,
            m.warmup_min,
        );
    }

    /// The plot.
    pub fn svg(&self) -> String {
        let o = &self.outcome;
        let minutes = o.soak_s / 60.0;
        let warmup = vec![(self.method.warmup_min, "end of warm-up".to_owned())];
        let rss = |of: fn(&ProcSample) -> f64| -> Vec<(f64, f64)> {
            o.samples
                .iter()
                .filter(|s| s.t_s >= 0.0)
                .map(|s| (s.t_s / 60.0, of(s)))
                .collect()
        };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut t = 0.0;
        while t < o.soak_s - 1e-6 {
            let mut to = (t + 60.0).min(o.soak_s);
            if o.soak_s - to < 6.0 {
                to = o.soak_s;
            }
            if let Some(h) = programming_between(&o.metrics, t, to)
                && h.count > 0.0
            {
                let mid = (t + to) / 120.0;
                p50.push((mid, h.quantile(0.5).unwrap_or(f64::NAN) * 1e3));
                p99.push((mid, h.quantile(0.99).unwrap_or(f64::NAN) * 1e3));
            }
            t = to;
        }
        let probes: Vec<(f64, f64)> = o
            .churn
            .probes
            .iter()
            .filter_map(|p| p.latency_ms.map(|l| (p.t_s / 60.0, l)))
            .collect();
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut bucket = (0u64, 0u64, 0usize);
        for (i, (t_ns, o_, f, _)) in o.client.ticks.iter().enumerate() {
            bucket.0 += o_;
            bucket.1 += f;
            bucket.2 += 1;
            if bucket.2 == 10 || i + 1 == o.client.ticks.len() {
                let t = t_ns.saturating_sub(o.t0_ns) as f64 / 60e9;
                ok.push((t, bucket.0 as f64 / bucket.2 as f64));
                failed.push((t, bucket.1 as f64 / bucket.2 as f64));
                bucket = (0, 0, 0);
            }
        }
        let panels = [
            Panel {
                title: "resident memory (VmRSS)".to_owned(),
                y_label: "MiB".to_owned(),
                series: vec![
                    Series {
                        label: "the daemon (switchyard run)".to_owned(),
                        color: "#1f77b4",
                        style: Style::Line,
                        points: rss(|s| s.daemon.rss_mib),
                    },
                    Series {
                        label: "the API server".to_owned(),
                        color: "#8c564b",
                        style: Style::Line,
                        points: rss(|s| s.apiserver.rss_mib),
                    },
                ],
                markers: warmup.clone(),
                from_zero: true,
            },
            Panel {
                title: "network programming latency".to_owned(),
                y_label: "ms".to_owned(),
                series: vec![
                    Series {
                        label: "daemon histogram p50 (per minute)".to_owned(),
                        color: "#2ca02c",
                        style: Style::Line,
                        points: p50,
                    },
                    Series {
                        label: "p99".to_owned(),
                        color: "#ff7f0e",
                        style: Style::Line,
                        points: p99,
                    },
                    Series {
                        label: "through the datapath (each change)".to_owned(),
                        color: "#9467bd",
                        style: Style::Dots,
                        points: probes,
                    },
                ],
                markers: warmup.clone(),
                from_zero: true,
            },
            Panel {
                title: "client connections per second (10 s means)".to_owned(),
                y_label: "per second".to_owned(),
                series: vec![
                    Series {
                        label: "answered".to_owned(),
                        color: "#1f77b4",
                        style: Style::Line,
                        points: ok,
                    },
                    Series {
                        label: "failed".to_owned(),
                        color: "#d62728",
                        style: Style::Line,
                        points: failed,
                    },
                ],
                markers: warmup,
                from_zero: true,
            },
        ];
        plot::render(
            &format!(
                "switchyard churn soak, {}: {} Services, {:.0} endpoint changes/s",
                self.machine.date,
                thousands(self.method.services as u64),
                self.method.rate
            ),
            "minutes since the churn started",
            minutes,
            &panels,
        )
    }

    /// Writes `<dir>/<date>-soak[-tag].md`, `.json` and `.svg`.
    pub fn write(&self, dir: &Path, tag: Option<&str>) -> Result<(PathBuf, PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let stem = self.stem(tag);
        let md = dir.join(format!("{stem}.md"));
        let json = dir.join(format!("{stem}.json"));
        let svg = dir.join(format!("{stem}.svg"));
        std::fs::write(&svg, self.svg()).with_context(|| format!("write {}", svg.display()))?;
        std::fs::write(&md, self.markdown(&format!("{stem}.svg")))
            .with_context(|| format!("write {}", md.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", json.display()))?;
        Ok((md, json, svg))
    }
}

#[cfg(test)]
mod tests {
    use super::super::churn::{ChurnReport, ProbeSample};
    use super::super::client::{ClientRecord, ClientSummary, Failure};
    use super::*;
    use crate::apiwatch::usage::Usage;

    fn histogram(fast: f64, slow: f64) -> PromHistogram {
        PromHistogram {
            buckets: vec![
                (0.008, 0.0),
                (0.016, fast),
                (0.032, fast + slow),
                (f64::MAX, fast + slow),
            ],
            count: fast + slow,
            sum: 0.0,
        }
    }

    /// 10 minutes: memory grows 2 MiB in the first 3, then stays; one failure.
    fn outcome() -> Outcome {
        let t0_ns = 1_000_000_000_000;
        let samples = (0..=120)
            .map(|i| {
                let t_s = f64::from(i) * 5.0;
                ProcSample {
                    t_s,
                    daemon: Usage {
                        cpu_s: t_s * 0.1,
                        rss_mib: 40.0 + (t_s / 90.0).min(2.0),
                        peak_rss_mib: 42.0,
                    },
                    machine_busy_s: t_s * 0.5,
                    machine_total_s: t_s * 2.0,
                    ..ProcSample::default()
                }
            })
            .collect();
        let metrics = (0..=60)
            .map(|i| MetricsSample {
                t_s: f64::from(i) * 10.0,
                programming: histogram(f64::from(i) * 100.0, f64::from(i)),
                ..MetricsSample::default()
            })
            .collect();
        Outcome {
            t0_ns,
            soak_s: 600.0,
            samples,
            metrics,
            churn: ChurnReport {
                changes: 30_000,
                churn_s: 600.0,
                changes_per_second: vec![50; 600],
                probes: vec![
                    ProbeSample {
                        t_s: 30.0,
                        latency_ms: Some(25.0),
                        ..ProbeSample::default()
                    },
                    ProbeSample {
                        t_s: 400.0,
                        latency_ms: None,
                        ..ProbeSample::default()
                    },
                ],
                ..ChurnReport::default()
            },
            client: ClientRecord {
                ticks: (1..=600)
                    .map(|s| (t0_ns + s * 1_000_000_000, 100, u64::from(s == 300), 0))
                    .collect(),
                failures: vec![Failure {
                    t_ns: t0_ns + 299_500_000_000,
                    target: "10.96.1.32:80".to_owned(),
                    error: "connect: Connection refused (os error 111)".to_owned(),
                    ..Failure::default()
                }],
                failures_total: 1,
                summary: Some(ClientSummary {
                    ok: 60_000,
                    failed: 1,
                    ..ClientSummary::default()
                }),
                garbage: Vec::new(),
            },
            ..Outcome::default()
        }
    }

    #[test]
    fn the_summary_has_the_goals_figures() {
        let s = Summary::of(&outcome(), 5.0);
        assert_eq!((s.ok, s.failed), (60_000, 1));
        assert!((s.change_rate - 50.0).abs() < 1e-9);
        // 99% of observations are in (8, 16] ms.
        let p50 = s.programming.p50_ms.unwrap();
        assert!((8.0..16.0).contains(&p50), "{p50}");
        assert_eq!(s.programming.p99_le_ms, Some(16.0));
        assert_eq!(s.probe.count, 1);
        assert_eq!(s.probes_missing, 1);
        let m = &s.memory;
        assert!((m.warmup_end_mib.unwrap() - 42.0).abs() < 1e-9);
        assert!((m.end_mib.unwrap() - 42.0).abs() < 1e-9);
        assert!(m.slope_mib_per_min.unwrap().abs() < 1e-9);
        assert_eq!(m.flat, Some(true));
        // The CPU: the daemon 10% of a CPU, the machine 25% busy of 2 CPUs.
        assert!((s.cpu.daemon - 0.1).abs() < 1e-9);
        assert!((s.cpu.cpus - 2.0).abs() < 1e-9);
        assert!((s.cpu.other - 0.4).abs() < 1e-9);
        assert_eq!(s.windows.len(), 10);
        // A tail of a few seconds joins the last window.
        let mut longer = outcome();
        longer.soak_s = 603.0;
        let windows = Summary::of(&longer, 5.0).windows;
        assert_eq!(windows.len(), 10);
        assert!((windows[9].to_min - 10.05).abs() < 1e-9);
        assert_eq!(s.windows[4].failed, 1);
        assert_eq!(s.windows[0].changes, 3000);
        assert_eq!(s.windows[0].ok, 6000);
    }

    #[test]
    fn growing_memory_is_not_flat() {
        let mut o = outcome();
        for s in &mut o.samples {
            s.daemon.rss_mib = 40.0 + s.t_s / 60.0;
        }
        let m = Summary::of(&o, 5.0).memory;
        assert!((m.slope_mib_per_min.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(m.flat, Some(false));
    }

    #[test]
    fn the_markdown_and_the_plot_carry_the_figures() {
        let report = Report::new(
            Machine {
                date: "2026-12-03".to_owned(),
                ..Machine::default()
            },
            Vec::new(),
            Method {
                minutes: 10.0,
                services: 1000,
                samples: 16,
                rate: 50.0,
                warmup_min: 5.0,
                ..Method::default()
            },
            outcome(),
        );
        let md = report.markdown("2026-12-03-soak.svg");
        assert!(md.starts_with("# Churn soak: 1,000 Services, 50 endpoint changes/s, 10 min"));
        assert!(md.contains("**1 failed** (goal 0: **not met**)"));
        assert!(md.contains("Goal flat after warm-up"));
        assert!(md.contains("![daemon memory"));
        assert!(md.contains("Connection refused"));
        assert_eq!(md.matches("\n| 4–5 |").count(), 1);
        let svg = report.svg();
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert!(svg.contains("end of warm-up"));
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary.failed, 1);
    }
}
