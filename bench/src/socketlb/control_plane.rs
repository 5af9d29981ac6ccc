//! Part 2: the control plane. How long it takes to program a cluster from
//! empty, and how long a one-endpoint change takes at that size:
//!
//! - kube-proxy's shapes, in a namespace of their own with no traffic:
//!   `iptables-restore` (legacy and nft backends) of the full ruleset (its
//!   full sync) and of the changed chains with `--noflush` (its partial
//!   sync); `nft -f` of the full transaction and of the changed chains. The
//!   clock runs from spawning the loader to its exit: the rule text is
//!   rendered before, so kube-proxy's own work (computing and writing it) is
//!   not counted.
//! - switchyard, in process (binary `socketlb-control`): store update +
//!   recompute of the affected Service + `EbpfDatapath::apply` of the diff,
//!   against a cgroup and pin path of its own.
//! - switchyard end to end, through manifest files and the daemon's
//!   `kubeproxy_network_programming_duration_seconds` histogram, at the size
//!   of part 1 that matches.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::{Daemon, Manifests, Netns, metrics, poll_until, yaml};

use super::RunConfig;
use crate::cluster::{self, Cluster};
use crate::kube_proxy::{iptables, nftables};
use crate::rule_loader::{self, Backend};

/// Percentiles of a set of durations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// How many.
    pub count: usize,
    /// Median, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Mean, milliseconds.
    pub mean_ms: Option<f64>,
    /// Slowest, milliseconds.
    pub max_ms: Option<f64>,
}

impl Durations {
    /// Summarizes `samples` (seconds).
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] * 1e3;
        Self {
            count: sorted.len(),
            p50_ms: Some(at(0.5)),
            p99_ms: Some(at(0.99)),
            mean_ms: Some(sorted.iter().sum::<f64>() / sorted.len() as f64 * 1e3),
            max_ms: Some(at(1.0)),
        }
    }
}

/// A series of one-endpoint changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Changes {
    /// The durations of those that succeeded.
    pub durations: Durations,
    /// Changes asked for.
    pub asked: usize,
    /// Whether the time limit stopped the series before `asked`.
    pub time_limited: bool,
    /// Changes that failed.
    pub failures: usize,
    /// The first failure.
    pub first_failure: Option<String>,
}

/// One kube-proxy shape's control-plane figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RulesResult {
    /// The loader.
    pub backend: Backend,
    /// Seconds to load the full ruleset into an empty namespace, per try.
    pub initial_s: Vec<f64>,
    /// Size of that ruleset, bytes.
    pub initial_bytes: usize,
    /// Why the initial load failed, if it did.
    pub initial_failure: Option<String>,
    /// Changes written as a partial sync.
    pub partial: Changes,
    /// Size of one partial sync's input, bytes.
    pub partial_bytes: usize,
    /// Changes written as a full sync.
    pub full: Changes,
    /// nftables only: `nft --json list chains` of the table, which kube-proxy
    /// runs on every sync to find stale chains (median of 5, seconds; not
    /// included in the change figures).
    pub list_chains_s: Option<f64>,
}

/// What `socketlb-control` measured (it prints this as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InProcessResult {
    /// Services programmed.
    pub services: usize,
    /// Endpoints over all Services.
    pub endpoints: usize,
    /// Seconds to upsert every object into an empty store.
    pub initial_store_s: f64,
    /// Seconds to compute the whole table from the store.
    pub initial_recompute_s: f64,
    /// Seconds to apply the whole diff to an empty datapath.
    pub initial_apply_s: f64,
    /// Frontends the initial apply programmed.
    pub initial_programmed: usize,
    /// Frontends the initial apply failed on, with the first reason.
    pub initial_failed: usize,
    /// The first failure's reason.
    pub initial_first_failure: Option<String>,
    /// Per change: store update + recompute + apply, seconds.
    pub changes_s: Vec<f64>,
    /// Per change: the apply alone, seconds.
    pub apply_s: Vec<f64>,
    /// Changes asked for.
    pub asked: usize,
    /// Whether the time limit stopped the series.
    pub time_limited: bool,
    /// Changes whose apply reported a failure.
    pub change_failures: usize,
    /// The first of those.
    pub change_first_failure: Option<String>,
}

/// A histogram read from the daemon before and after a series of changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// Services at that size.
    pub services: usize,
    /// Changes written.
    pub changes: usize,
    /// Observations the histogram gained.
    pub observations: u64,
    /// Upper bound of the bucket holding the median, seconds.
    pub p50_le_s: Option<f64>,
    /// Upper bound of the bucket holding the 99th percentile, seconds.
    pub p99_le_s: Option<f64>,
    /// Mean of the observations, seconds.
    pub mean_s: Option<f64>,
    /// Changes whose observation did not show within 10 s.
    pub timeouts: usize,
}

/// What part 2 measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlOutcome {
    /// Services programmed.
    pub services: usize,
    /// Endpoints over all Services.
    pub endpoints: usize,
    /// The kube-proxy shapes.
    pub rules: Vec<RulesResult>,
    /// switchyard in process, or why it could not run.
    pub switchyard: Option<Result<InProcessResult, String>>,
}

/// Alternates a Service between its full endpoint set and one endpoint
/// fewer: the one-endpoint change.
struct Flip {
    trimmed: bool,
}

impl Flip {
    fn next(&mut self) -> bool {
        self.trimmed = !self.trimmed;
        self.trimmed
    }
}

#[allow(
    clippy::disallowed_types,
    reason = "synchronous orchestration, no runtime: std's clock is the right one"
)]
fn changes(
    config: &RunConfig,
    texts: &[String; 2],
    mut load: impl FnMut(&str) -> Result<Duration>,
) -> Changes {
    let start = std::time::Instant::now();
    let mut flip = Flip { trimmed: false };
    let mut samples = Vec::with_capacity(config.changes);
    let mut out = Changes {
        asked: config.changes,
        ..Changes::default()
    };
    for _ in 0..config.changes {
        if start.elapsed() >= config.change_time_limit {
            out.time_limited = true;
            break;
        }
        let text = &texts[usize::from(flip.next())];
        match load(text) {
            Ok(elapsed) => samples.push(elapsed.as_secs_f64()),
            Err(error) => {
                out.failures += 1;
                out.first_failure
                    .get_or_insert_with(|| format!("{error:#}"));
                // A broken loader fails fast; do not spin on it.
                if out.failures >= 10 {
                    break;
                }
            }
        }
    }
    out.durations = Durations::of(&samples);
    out
}

/// Measures one kube-proxy shape in fresh namespaces named after `prefix`.
fn measure_rules(
    config: &RunConfig,
    prefix: &str,
    backend: Backend,
    cluster: &Cluster,
) -> RulesResult {
    let changed = cluster.changed_index();
    let mut trimmed = cluster.clone();
    trimmed.trimmed = Some(changed);
    let (initial, full_texts, partial_texts) = match backend {
        Backend::Nftables => {
            let stale = nftables::endpoint_chain(&cluster.service(changed), config.endpoints - 1);
            (
                nftables::transaction(cluster, &nftables::Sync::Initial),
                [
                    nftables::transaction(cluster, &nftables::Sync::Full),
                    nftables::transaction(&trimmed, &nftables::Sync::Full),
                ],
                [
                    nftables::transaction(
                        cluster,
                        &nftables::Sync::Partial {
                            index: changed,
                            stale: None,
                        },
                    ),
                    nftables::transaction(
                        &trimmed,
                        &nftables::Sync::Partial {
                            index: changed,
                            stale: Some(stale),
                        },
                    ),
                ],
            )
        }
        Backend::IptablesLegacy | Backend::IptablesNft => (
            iptables::restore_input(cluster, iptables::Sync::Full),
            [
                iptables::restore_input(cluster, iptables::Sync::Full),
                iptables::restore_input(&trimmed, iptables::Sync::Full),
            ],
            [
                iptables::restore_input(cluster, iptables::Sync::Partial(changed)),
                iptables::restore_input(&trimmed, iptables::Sync::Partial(changed)),
            ],
        ),
    };
    let mut result = RulesResult {
        backend,
        initial_s: Vec::new(),
        initial_bytes: initial.len(),
        initial_failure: None,
        partial: Changes::default(),
        partial_bytes: partial_texts[1].len(),
        full: Changes::default(),
        list_chains_s: None,
    };
    let hooks =
        matches!(backend, Backend::IptablesLegacy | Backend::IptablesNft).then(iptables::hooks);
    let tag = match backend {
        Backend::IptablesLegacy => "ipt-legacy",
        Backend::IptablesNft => "ipt-nft",
        Backend::Nftables => "nft",
    };
    // Each try starts from a fresh, empty namespace; the last one is kept
    // for the changes.
    let mut kept: Option<Netns> = None;
    for attempt in 0..config.control_repeats {
        let ns = match Netns::create(&format!("{prefix}-cp-{tag}{attempt}")) {
            Ok(ns) => ns,
            Err(error) => {
                result.initial_failure = Some(format!("{error:#}"));
                return result;
            }
        };
        let loaded = rule_loader::in_netns(&ns, config.proxy_cpu, config.load_timeout, |loader| {
            if let Some(hooks) = &hooks {
                loader.load(backend, hooks)?;
            }
            loader.load(backend, &initial)
        });
        match loaded {
            Ok(elapsed) => result.initial_s.push(elapsed.as_secs_f64()),
            Err(error) => {
                result.initial_failure = Some(format!("{error:#}"));
                return result;
            }
        }
        eprintln!(
            "  {} from empty: {:.2} s ({} bytes)",
            backend.as_str(),
            result.initial_s.last().copied().unwrap_or_default(),
            initial.len()
        );
        kept = Some(ns);
        // At a minute or more a load is its own average; further tries would
        // only cost the run its time.
        if result.initial_s.last().is_some_and(|&s| s >= 60.0) {
            break;
        }
    }
    let Some(ns) = kept else {
        return result;
    };
    let run = rule_loader::in_netns(&ns, config.proxy_cpu, config.load_timeout, |loader| {
        let partial = changes(config, &partial_texts, |text| loader.load(backend, text));
        eprintln!(
            "  {} partial: {} changes, p50 {:?} ms",
            backend.as_str(),
            partial.durations.count,
            partial.durations.p50_ms
        );
        let full = changes(config, &full_texts, |text| loader.load(backend, text));
        eprintln!(
            "  {} full: {} changes, p50 {:?} ms",
            backend.as_str(),
            full.durations.count,
            full.durations.p50_ms
        );
        let list = (backend == Backend::Nftables).then(|| {
            let mut samples: Vec<f64> = (0..5)
                .filter_map(|_| {
                    loader
                        .run(&["nft", "--json", "list", "chains", "ip", "kube-proxy"], "")
                        .ok()
                        .map(|d| d.as_secs_f64())
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            samples.get(samples.len() / 2).copied()
        });
        Ok((partial, full, list.flatten()))
    });
    match run {
        Ok((partial, full, list)) => {
            result.partial = partial;
            result.full = full;
            result.list_chains_s = list;
        }
        Err(error) => result.partial.first_failure = Some(format!("{error:#}")),
    }
    result
}

/// The mount point of the cgroup v2 hierarchy.
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .context("no cgroup2 hierarchy is mounted")
}

/// A cgroup made for the in-process driver, with nothing in it: its eBPF
/// state is removed (`switchyard cleanup`), then the cgroup, when dropped.
struct DriverCgroup {
    state: Option<super::datapath::EbpfState>,
    cgroup: PathBuf,
}

impl Drop for DriverCgroup {
    fn drop(&mut self) {
        drop(self.state.take());
        if let Err(error) = std::fs::remove_dir(&self.cgroup)
            && self.cgroup.exists()
        {
            eprintln!("could not remove cgroup {}: {error}", self.cgroup.display());
        }
    }
}

fn measure_in_process(config: &RunConfig, prefix: &str) -> Result<InProcessResult> {
    let driver = config
        .control_driver
        .clone()
        .context("socketlb-control was not built")?;
    let bin = config
        .switchyard_bin
        .clone()
        .context("no switchyard binary (needed for `switchyard cleanup`)")?;
    let cgroup = cgroup2_root()?.join(format!("{prefix}-cp"));
    std::fs::create_dir(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
    let pin_path = PathBuf::from(format!("/sys/fs/bpf/{prefix}-cp"));
    let guard = DriverCgroup {
        state: Some(super::datapath::EbpfState {
            bin,
            pin_path: pin_path.clone(),
            cgroup: cgroup.clone(),
        }),
        cgroup: cgroup.clone(),
    };
    let child = Command::new("taskset")
        .arg("-c")
        .arg(config.proxy_cpu.to_string())
        .arg(&driver)
        .args(["--services", &config.control_services.to_string()])
        .args(["--endpoints", &config.endpoints.to_string()])
        .args(["--changes", &config.changes.to_string()])
        .arg("--time-limit")
        .arg(format!("{}s", config.change_time_limit.as_secs()))
        .arg("--pin-path")
        .arg(&pin_path)
        .arg("--cgroup-path")
        .arg(&cgroup)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", driver.display()))?;
    crate::reaper::DRIVER_PID.store(child.id(), std::sync::atomic::Ordering::Relaxed);
    let output = child.wait_with_output();
    crate::reaper::DRIVER_PID.store(0, std::sync::atomic::Ordering::Relaxed);
    let output = output.with_context(|| format!("wait for {}", driver.display()))?;
    drop(guard);
    if !output.status.success() {
        bail!(
            "socketlb-control failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "socketlb-control printed no result: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs part 2.
pub fn run(config: &RunConfig, prefix: &str, pods: Vec<std::net::Ipv4Addr>) -> ControlOutcome {
    let mut cluster = Cluster::new(config.control_services, config.endpoints, pods);
    cluster.cluster_cidr.clone_from(&config.cluster_cidr);
    eprintln!(
        "== control plane: {} Services x {} endpoints",
        cluster.services, config.endpoints
    );
    let mut outcome = ControlOutcome {
        services: cluster.services,
        endpoints: cluster.endpoint_count(),
        ..ControlOutcome::default()
    };
    if config.control_targets.switchyard {
        let result = measure_in_process(config, prefix);
        match &result {
            Ok(r) => eprintln!(
                "  switchyard in process: initial {:.2} s, {} changes",
                r.initial_store_s + r.initial_recompute_s + r.initial_apply_s,
                r.changes_s.len()
            ),
            Err(error) => eprintln!("  switchyard in process: not measured: {error:#}"),
        }
        outcome.switchyard = Some(result.map_err(|e| format!("{e:#}")));
    }
    for backend in [
        Backend::IptablesLegacy,
        Backend::IptablesNft,
        Backend::Nftables,
    ] {
        if config.control_targets.backends.contains(&backend) {
            outcome
                .rules
                .push(measure_rules(config, prefix, backend, &cluster));
        }
    }
    outcome
}

/// Which control-plane measurements to run.
#[derive(Clone, Debug)]
pub struct ControlTargets {
    /// switchyard in process.
    pub switchyard: bool,
    /// The kube-proxy shapes.
    pub backends: Vec<Backend>,
}

fn histogram(daemon: &Daemon) -> Result<Vec<(f64, f64)>> {
    let text = daemon.metrics()?;
    let samples = metrics::parse(&text);
    let mut buckets: Vec<(f64, f64)> = metrics::samples(
        &samples,
        "kubeproxy_network_programming_duration_seconds_bucket",
    )
    .iter()
    .filter_map(|s| {
        let le = match s.label("le")? {
            "+Inf" => f64::INFINITY,
            other => other.parse().ok()?,
        };
        Some((le, s.value))
    })
    .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sum = metrics::sum(
        &samples,
        "kubeproxy_network_programming_duration_seconds_sum",
        &[],
    );
    buckets.push((f64::NAN, sum));
    Ok(buckets)
}

/// Writes `n` one-endpoint changes of the changed Service into its manifest
/// file, one at a time, each after the previous one showed in the daemon's
/// histogram, and summarizes what the histogram gained.
pub fn manifest_changes(
    daemon: &Daemon,
    manifests: &Manifests,
    cluster: &Cluster,
    n: usize,
) -> Result<HistogramSummary> {
    let changed = cluster.changed_index();
    let mut flip = Flip { trimmed: false };
    let before = histogram(daemon)?;
    let count = |h: &[(f64, f64)]| {
        h.iter()
            .find(|(le, _)| le.is_infinite())
            .map_or(0.0, |(_, c)| *c)
    };
    let mut summary = HistogramSummary {
        services: cluster.services,
        changes: n,
        ..HistogramSummary::default()
    };
    let mut seen = count(&before);
    for _ in 0..n {
        let mut version = cluster.clone();
        if flip.next() {
            version.trimmed = Some(changed);
        }
        let docs = cluster::manifests(&version.service(changed));
        manifests.write("changed.yaml", &yaml::to_documents(&docs))?;
        let waited = poll_until(
            "the change to show in the histogram",
            Duration::from_secs(10),
            || {
                let now = count(&histogram(daemon)?);
                Ok((now > seen).then_some(now))
            },
        );
        match waited {
            Ok(now) => seen = now,
            Err(_) => summary.timeouts += 1,
        }
        // Let the file watcher's debounce settle between changes.
        std::thread::sleep(Duration::from_millis(50));
    }
    // Back to the full endpoint set, as part 1 measured it.
    if flip.trimmed {
        let docs = cluster::manifests(&cluster.service(changed));
        manifests.write("changed.yaml", &yaml::to_documents(&docs))?;
    }
    let after = histogram(daemon)?;
    let total = count(&after) - count(&before);
    summary.observations = total.max(0.0) as u64;
    let sum_of = |h: &[(f64, f64)]| {
        h.iter()
            .find(|(le, _)| le.is_nan())
            .map_or(0.0, |(_, s)| *s)
    };
    if total > 0.0 {
        summary.mean_s = Some((sum_of(&after) - sum_of(&before)) / total);
        let quantile = |q: f64| {
            after
                .iter()
                .zip(&before)
                .filter(|((le, _), _)| !le.is_nan())
                .find(|((_, a), (_, b))| a - b >= q * total)
                .map(|((le, _), _)| *le)
        };
        summary.p50_le_s = quantile(0.5);
        summary.p99_le_s = quantile(0.99);
    }
    Ok(summary)
}
