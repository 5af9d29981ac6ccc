//! `apiwatch`: switchyard's node daemons following a Kubernetes API server.
//! How long 10,000 Services with 10 Pods each take from the first write to
//! the API server until every node daemon has programmed them, and, at that
//! size and on an idle (one-Service) cluster in the same run, the latency of
//! a one-Pod change from the create request to the first connection that
//! reaches the new Pod, on every node.
//!
//! The cluster is the multi-node topology of switchyard-tests (a bridge,
//! nodes, two real pod servers and a client per node), the embedded API
//! server (`switchyard apiserver`) in its network namespace, and one
//! eBPF-mode daemon per node watching it. Three kinds of process do the
//! work, each where it has to be:
//!
//! - the writer ([`writer`], in the network namespace, the only one that
//!   reaches the API server) creates the objects through `kube`, times each
//!   single write, and watches the measured Service's EndpointSlices;
//! - a probe per node ([`probe`], in the node's client namespace and cgroup,
//!   where the eBPF programs apply) connects to the Service in a tight loop
//!   and reports the first connect that succeeds, or fails;
//! - this process (the machine's namespace) drives them, reads each daemon's
//!   `/metrics`, and the CPU and memory of every process from `/proc`.
//!
//! They share `CLOCK_MONOTONIC` ([`protocol::monotonic_ns`]) for every
//! timestamp. Nothing but the measured Service `default/web`
//! (`10.96.0.10:80`) is ever connected to; the bulk Pods have fake addresses
//! (`10.225.0.0` and up) that only exist as API objects.

// The driver is synchronous (threads and child processes, no runtime whose
// clock a test could pause), so std's clock is the right one here.
#![allow(
    clippy::disallowed_types,
    reason = "a synchronous driver: no tokio clock to pause"
)]

pub mod child;
pub mod probe;
pub mod protocol;
pub mod report;
pub mod usage;
pub mod writer;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use switchyard_tests::{ApiServer, Cluster, Daemon, Mode, metrics, objects};

use child::LineChild;
use protocol::{
    Awaited, BulkSpec, BulkTimes, ProbeCommand, ProbeEvent, WriterCommand, WriterEvent,
    monotonic_ns,
};
use usage::{PhaseUsage, Usage};

/// The measured Service's cluster IP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The first fake Pod address of the bulk load (never connected to).
pub const FIRST_FAKE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 225, 0, 0);
/// Real pod servers per node.
pub const REAL_PODS_PER_NODE: usize = 2;
/// The namespace of every object.
pub const NAMESPACE: &str = "default";

/// How the run is done; built once from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Services of the bulk load.
    pub services: usize,
    /// Pods per Service of the bulk load.
    pub pods_per_service: usize,
    /// One-Pod changes per series.
    pub changes: usize,
    /// Nodes (one daemon each).
    pub nodes: usize,
    /// Creates in flight at once in the bulk load.
    pub concurrency: usize,
    /// The longest wait for the bulk load to be programmed everywhere.
    pub bulk_timeout: Duration,
    /// The longest wait for one change to reach a node.
    pub change_timeout: Duration,
    /// How often the daemons' `/metrics` are read during the bulk load.
    pub poll_interval: Duration,
    /// Idle time after the bulk load, before the second series.
    pub settle: Duration,
    /// The probes' pause between connects.
    pub probe_interval: Duration,
    /// This program, started again as the writer and the probes.
    pub exe: PathBuf,
    /// More `switchyard run` arguments (map sizes).
    pub daemon_args: Vec<String>,
}

/// One one-Pod change: created, reached by every node, deleted, refused by
/// every node again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Change {
    /// Its position in the series.
    pub index: usize,
    /// The Pod's name.
    pub pod: String,
    /// Its address (a real pod server's).
    pub pod_ip: String,
    /// The node it is on.
    pub pod_node: usize,
    /// Just before the create request was sent.
    pub create_sent_ns: u64,
    /// When the API server acknowledged it.
    pub create_acked_ns: u64,
    /// Why the create failed, if it did.
    pub create_error: Option<String>,
    /// When the writer's watch saw the Pod ready in the Service's slices.
    pub slice_ready_ns: Option<u64>,
    /// Per node: the first connect that succeeded (`None`: not in time).
    pub open_ns: Vec<Option<u64>>,
    /// Just before the delete request was sent.
    pub delete_sent_ns: u64,
    /// When the API server acknowledged it.
    pub delete_acked_ns: u64,
    /// Why the delete failed, if it did.
    pub delete_error: Option<String>,
    /// When the writer's watch saw the Pod leave the slices.
    pub slice_gone_ns: Option<u64>,
    /// Per node: the first connect refused again.
    pub closed_ns: Vec<Option<u64>>,
}

/// The daemons' own measure over a series: `kubeproxy_network_programming_duration_seconds`
/// (from the slice's trigger time to the datapath write), summed over the nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgrammingHistogram {
    /// Observations in the series.
    pub count: f64,
    /// Their sum, seconds.
    pub sum_s: f64,
    /// Upper bound of the bucket holding the median, seconds.
    pub p50_le_s: Option<f64>,
    /// Upper bound of the bucket holding the 99th percentile, seconds.
    pub p99_le_s: Option<f64>,
}

/// A series of changes at one cluster size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Series {
    /// `idle` or `loaded`.
    pub name: String,
    /// Services in the API server during the series (the measured one included).
    pub services: usize,
    /// Pods in the API server during the series, besides the changed one.
    pub pods: usize,
    /// Every change.
    pub changes: Vec<Change>,
    /// The daemons' own measure.
    pub daemon_histogram: ProgrammingHistogram,
    /// CPU and memory over the series.
    pub usage: Vec<PhaseUsage>,
    /// Wall time of the series, seconds.
    pub took_s: f64,
}

/// One reading of a daemon's counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// `switchyard_services`.
    pub services: f64,
    /// `switchyard_frontends`.
    pub frontends: f64,
    /// Active backends summed over the frontends, read from the kernel maps
    /// (`switchyard_service_backends{state="active"}`).
    pub backends: f64,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`.
    pub last_sync_unix_s: f64,
}

/// One node during the bulk load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeBulk {
    /// The node.
    pub node: usize,
    /// Counts before the bulk load.
    pub before: Counts,
    /// Counts when it was seen complete (or at the timeout).
    pub after: Counts,
    /// Seconds from the first write until its `/metrics` first showed every
    /// Service and backend (at the resolution of the polling).
    pub programmed_s: Option<f64>,
    /// Seconds from the first write to the daemon's last sync before that
    /// (its own timestamp: the sync that completed the load).
    pub last_sync_s: Option<f64>,
    /// `switchyard services -o json` afterwards: frontends in the maps.
    pub cli_frontends: Option<usize>,
    /// ... and their backends.
    pub cli_backends: Option<usize>,
    /// Sampled bulk Services found with all their backends, of those sampled.
    pub sampled_complete: Option<(usize, usize)>,
}

/// A polling sample of the bulk load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the bulk load was started.
    pub t_s: f64,
    /// Services the writer had created.
    pub services_written: usize,
    /// Pods the writer had created.
    pub pods_written: usize,
    /// Per node: services programmed.
    pub services: Vec<f64>,
    /// Per node: backends programmed.
    pub backends: Vec<f64>,
}

/// The bulk load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bulk {
    /// Services asked for.
    pub services: usize,
    /// Pods asked for.
    pub pods: usize,
    /// The writer's own timings.
    pub writer: BulkTimes,
    /// Per node.
    pub nodes: Vec<NodeBulk>,
    /// Seconds from the first write until every node's `/metrics` had shown
    /// it all (an upper bound, at the resolution of the polling).
    pub all_programmed_s: Option<f64>,
    /// Seconds from the first write to the last of the nodes' completing
    /// syncs, by the daemons' own sync timestamps (tighter).
    pub all_programmed_sync_s: Option<f64>,
    /// The polling samples.
    pub timeline: Vec<Sample>,
    /// CPU and memory from the first write until all was programmed.
    pub usage: Vec<PhaseUsage>,
    /// Why it is incomplete, if it is.
    pub failure: Option<String>,
}

/// Everything the run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The series on the idle cluster (the measured Service only).
    pub idle: Option<Series>,
    /// The bulk load.
    pub bulk: Option<Bulk>,
    /// The series at the bulk size.
    pub loaded: Option<Series>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
    /// Warnings and errors of the daemons and the API server (first ones).
    pub problems: Vec<String>,
    /// Memory and CPU of every process at the end of the run.
    pub final_usage: Vec<(String, Usage)>,
}

/// The run's helper processes and what they reported on the side.
struct Helpers {
    writer: LineChild,
    probes: Vec<LineChild>,
    seq: u64,
    /// Every slice event of the measured Service: (time, ready addresses).
    slices: Vec<(u64, Vec<String>)>,
    /// The latest bulk progress: (services, pods, errors).
    progress: (usize, usize, usize),
    bulk_done: Option<BulkTimes>,
    watch_errors: Vec<String>,
}

const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

impl Helpers {
    /// Takes the writer's next event that is not a side report (slice event,
    /// progress, bulk result), waiting at most `timeout`.
    fn writer_event(&mut self, timeout: Duration) -> Result<Option<WriterEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.writer.try_recv::<WriterEvent>(left)? else {
                return Ok(None);
            };
            match event {
                WriterEvent::Slice { t_ns, ready, .. } => self.slices.push((t_ns, ready)),
                WriterEvent::Progress {
                    services,
                    pods,
                    errors,
                    ..
                } => self.progress = (services, pods, errors),
                WriterEvent::BulkDone(times) => {
                    self.progress = (times.services_created, times.pods_created, times.errors);
                    self.bulk_done = Some(times);
                }
                WriterEvent::WatchError { error, .. } => {
                    if self.watch_errors.len() < 20 {
                        self.watch_errors.push(error);
                    }
                }
                other => return Ok(Some(other)),
            }
        }
    }

    /// Sends `command` to the writer and waits for its `done`.
    fn write(&mut self, command: &WriterCommand) -> Result<(u64, u64, Option<String>)> {
        self.writer.send(command)?;
        match self.writer_event(HELPER_TIMEOUT)? {
            Some(WriterEvent::Done {
                sent_ns,
                acked_ns,
                error,
                ..
            }) => Ok((sent_ns, acked_ns, error)),
            Some(WriterEvent::Error { error }) => bail!("the writer: {error}"),
            Some(other) => bail!("the writer answered {other:?}"),
            None => bail!("the writer did not answer {command:?} in {HELPER_TIMEOUT:?}"),
        }
    }

    /// Starts every probe waiting for `wait`; returns once each is connecting.
    fn start_probes(&mut self, wait: Awaited) -> Result<u64> {
        self.seq += 1;
        let seq = self.seq;
        for probe in &mut self.probes {
            probe.send(&ProbeCommand { seq, wait })?;
        }
        for probe in &mut self.probes {
            match probe.recv::<ProbeEvent>(HELPER_TIMEOUT)? {
                ProbeEvent::Waiting { seq: s } if s == seq => {}
                other => bail!("a probe answered {other:?} to command {seq}"),
            }
        }
        Ok(seq)
    }

    /// Collects every probe's answer to command `seq`.
    fn probe_results(&mut self, seq: u64, limit: Duration) -> Result<Vec<Option<u64>>> {
        let mut out = Vec::with_capacity(self.probes.len());
        for probe in &mut self.probes {
            match probe.recv::<ProbeEvent>(limit + HELPER_TIMEOUT)? {
                ProbeEvent::Reached { seq: s, t_ns, .. } if s == seq => out.push(t_ns),
                other => bail!("a probe answered {other:?} to command {seq}"),
            }
        }
        Ok(out)
    }

    /// The first slice event at or after `since` for which `wanted` holds,
    /// waiting up to `timeout` for it to arrive.
    fn slice_event(
        &mut self,
        since: u64,
        timeout: Duration,
        wanted: impl Fn(&[String]) -> bool,
    ) -> Result<Option<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((t, _)) = self
                .slices
                .iter()
                .find(|(t, ready)| *t >= since && wanted(ready))
            {
                return Ok(Some(*t));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if let Some(other) = self.writer_event(left.min(Duration::from_millis(50)))? {
                bail!("the writer said {other:?} unasked");
            }
        }
    }
}

fn counts(daemon: &Daemon) -> Result<Counts> {
    let samples = metrics::parse(&daemon.metrics()?);
    Ok(Counts {
        services: metrics::sum(&samples, "switchyard_services", &[]),
        frontends: metrics::sum(&samples, "switchyard_frontends", &[]),
        backends: metrics::sum(
            &samples,
            "switchyard_service_backends",
            &[("state", "active")],
        ),
        last_sync_unix_s: metrics::sum(
            &samples,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            &[],
        ),
    })
}

/// The programming-latency histogram of every daemon, summed: (upper bound,
/// cumulative count) per bucket, then count and sum.
fn programming_histogram(daemons: &[Daemon]) -> Result<(BTreeMap<u64, f64>, f64, f64)> {
    let name = "kubeproxy_network_programming_duration_seconds";
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    let (mut count, mut sum) = (0.0, 0.0);
    for daemon in daemons {
        let samples = metrics::parse(&daemon.metrics()?);
        for s in metrics::samples(&samples, &format!("{name}_bucket")) {
            if let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) {
                // Keyed by nanoseconds so that the map orders them (+Inf last).
                let key = if le.is_finite() {
                    (le * 1e9) as u64
                } else {
                    u64::MAX
                };
                *buckets.entry(key).or_default() += s.value;
            }
        }
        count += metrics::sum(&samples, &format!("{name}_count"), &[]);
        sum += metrics::sum(&samples, &format!("{name}_sum"), &[]);
    }
    Ok((buckets, count, sum))
}

fn histogram_between(
    before: &(BTreeMap<u64, f64>, f64, f64),
    after: &(BTreeMap<u64, f64>, f64, f64),
) -> ProgrammingHistogram {
    let count = after.1 - before.1;
    let quantile = |q: f64| -> Option<f64> {
        if count <= 0.0 {
            return None;
        }
        after.0.iter().find_map(|(le, cumulative)| {
            let earlier = before.0.get(le).copied().unwrap_or(0.0);
            (cumulative - earlier >= q * count).then(|| {
                if *le == u64::MAX {
                    f64::INFINITY
                } else {
                    *le as f64 / 1e9
                }
            })
        })
    };
    ProgrammingHistogram {
        count,
        sum_s: after.2 - before.2,
        p50_le_s: quantile(0.5),
        p99_le_s: quantile(0.99),
    }
}

/// The processes whose CPU and memory are reported, with their PIDs.
fn processes(daemons: &[Daemon], api: &ApiServer, helpers: &Helpers) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = daemons
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("node-{i} daemon"), d.pid()))
        .collect();
    out.push(("apiserver".to_owned(), api.pid()));
    out.push(("writer".to_owned(), helpers.writer.pid()));
    out
}

fn read_usage(procs: &[(String, u32)], ticks: u64) -> Vec<Usage> {
    procs
        .iter()
        .map(|(_, pid)| Usage::read(*pid, ticks).unwrap_or_default())
        .collect()
}

fn phase_usage(procs: &[(String, u32)], start: &[Usage], end: &[Usage]) -> Vec<PhaseUsage> {
    procs
        .iter()
        .zip(start.iter().zip(end))
        .map(|((name, _), (s, e))| PhaseUsage::between(name, *s, *e))
        .collect()
}

fn ensure_alive(daemons: &mut [Daemon], api: &mut ApiServer) -> Result<()> {
    for (i, daemon) in daemons.iter_mut().enumerate() {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "node {i}'s daemon exited ({status}):\n{}",
                daemon.log_tail(40)
            );
        }
    }
    if let Some(status) = api.try_wait()? {
        let log = api.log();
        let lines: Vec<&str> = log.lines().collect();
        bail!(
            "the API server exited ({status}):\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    Ok(())
}

/// The real pod server change `k` of a series uses: spread over the nodes.
fn real_pod(cluster: &Cluster, k: usize) -> (usize, Ipv4Addr) {
    let nodes = cluster.node_count();
    let node = k % nodes;
    let index = (k / nodes) % REAL_PODS_PER_NODE;
    (node, cluster.pod(node, index).ipv4())
}

struct Env<'a> {
    config: &'a RunConfig,
    cluster: &'a Cluster,
    api: &'a mut ApiServer,
    daemons: &'a mut Vec<Daemon>,
    helpers: &'a mut Helpers,
    ticks: u64,
}

fn run_series(env: &mut Env<'_>, name: &str, services: usize, pods: usize) -> Result<Series> {
    let config = env.config;
    let procs = processes(env.daemons, env.api, env.helpers);
    let histogram_before = programming_histogram(env.daemons)?;
    let usage_before = read_usage(&procs, env.ticks);
    let started = Instant::now();
    let mut series = Series {
        name: name.to_owned(),
        services,
        pods,
        ..Series::default()
    };
    for k in 0..config.changes {
        let (node, ip) = real_pod(env.cluster, k);
        let pod = format!("web-{name}-{k}");
        let object = objects::Pod::new(&pod)
            .node(Some(&env.cluster.node_name(node)))
            .ips(&[IpAddr::V4(ip)])
            .label("app", "web")
            .port("http", writer::TARGET_PORT)
            .to_value();
        let ip_text = ip.to_string();
        let h = &mut *env.helpers;
        let seq = h.start_probes(Awaited::Open)?;
        let (create_sent_ns, create_acked_ns, create_error) =
            h.write(&WriterCommand::CreatePod { object })?;
        let open_ns = h.probe_results(seq, config.change_timeout)?;
        let slice_ready_ns = h.slice_event(create_sent_ns, Duration::from_secs(2), |ready| {
            ready.contains(&ip_text)
        })?;
        let seq = h.start_probes(Awaited::Closed)?;
        let (delete_sent_ns, delete_acked_ns, delete_error) =
            h.write(&WriterCommand::DeletePod { name: pod.clone() })?;
        let closed_ns = h.probe_results(seq, config.change_timeout)?;
        let slice_gone_ns = h.slice_event(delete_sent_ns, Duration::from_secs(2), |ready| {
            !ready.contains(&ip_text)
        })?;
        let change = Change {
            index: k,
            pod,
            pod_ip: ip_text,
            pod_node: node,
            create_sent_ns,
            create_acked_ns,
            create_error,
            slice_ready_ns,
            open_ns,
            delete_sent_ns,
            delete_acked_ns,
            delete_error,
            slice_gone_ns,
            closed_ns,
        };
        let ms = |t: &Option<u64>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| format!("{:.1}", t.saturating_sub(create_sent_ns) as f64 / 1e6),
            )
        };
        eprintln!(
            "  {name} change {k}: create acked {:.1} ms, slice {} ms, nodes {} ms",
            create_acked_ns.saturating_sub(create_sent_ns) as f64 / 1e6,
            ms(&change.slice_ready_ns),
            change
                .open_ns
                .iter()
                .map(ms)
                .collect::<Vec<_>>()
                .join(" / ")
        );
        series.changes.push(change);
        ensure_alive(env.daemons, env.api)?;
    }
    series.took_s = started.elapsed().as_secs_f64();
    let usage_after = read_usage(&procs, env.ticks);
    series.usage = phase_usage(&procs, &usage_before, &usage_after);
    let histogram_after = programming_histogram(env.daemons)?;
    series.daemon_histogram = histogram_between(&histogram_before, &histogram_after);
    Ok(series)
}

/// `switchyard services -o json` of a daemon: (frontends, backends, and how
/// many of the sampled bulk Services have all their backends).
fn cli_check(
    daemon: &Daemon,
    sampled: &[String],
    per_service: usize,
) -> Result<(usize, usize, usize)> {
    let views = daemon.services_cli_json()?;
    let views = views
        .as_array()
        .context("`switchyard services -o json` is not a list")?;
    let backends = |v: &serde_json::Value| v["backends"].as_array().map_or(0, Vec::len);
    let total: usize = views.iter().map(backends).sum();
    let complete = sampled
        .iter()
        .filter(|name| {
            views.iter().any(|v| {
                v["service"].as_str().is_some_and(|s| {
                    s.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
                }) && backends(v) == per_service
            })
        })
        .count();
    Ok((views.len(), total, complete))
}

fn run_bulk(env: &mut Env<'_>) -> Result<Bulk> {
    let config = env.config;
    let n_nodes = env.daemons.len();
    let mut bulk = Bulk {
        services: config.services,
        pods: config.services * config.pods_per_service,
        ..Bulk::default()
    };
    for (i, daemon) in env.daemons.iter().enumerate() {
        bulk.nodes.push(NodeBulk {
            node: i,
            before: counts(daemon)?,
            ..NodeBulk::default()
        });
    }
    let want_services = |b: &Counts| b.services + config.services as f64;
    let want_backends =
        |b: &Counts| b.backends + (config.services * config.pods_per_service) as f64;
    let procs = processes(env.daemons, env.api, env.helpers);
    let usage_before = read_usage(&procs, env.ticks);
    let spec = BulkSpec {
        services: config.services,
        pods_per_service: config.pods_per_service,
        nodes: n_nodes,
        concurrency: config.concurrency,
        first_pod_ip: FIRST_FAKE_POD_IP,
    };
    let asked_ns = monotonic_ns();
    env.helpers.writer.send(&WriterCommand::Bulk(spec))?;
    let started = Instant::now();
    let mut programmed_ns: Vec<Option<u64>> = vec![None; n_nodes];
    let mut usage_end = None;
    loop {
        // Waiting for the writer's reports is the pause between polls.
        if let Some(other) = env.helpers.writer_event(config.poll_interval)? {
            bail!("the writer said {other:?} during the bulk load");
        }
        ensure_alive(env.daemons, env.api)?;
        let mut sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            services_written: env.helpers.progress.0,
            pods_written: env.helpers.progress.1,
            ..Sample::default()
        };
        for (i, daemon) in env.daemons.iter().enumerate() {
            let now = match counts(daemon) {
                Ok(c) => c,
                Err(error) => {
                    eprintln!("  node {i}: /metrics failed: {error:#}");
                    continue;
                }
            };
            sample.services.push(now.services);
            sample.backends.push(now.backends);
            let node = &mut bulk.nodes[i];
            if programmed_ns[i].is_none()
                && now.services >= want_services(&node.before)
                && now.backends >= want_backends(&node.before)
            {
                programmed_ns[i] = Some(monotonic_ns());
                node.after = now;
            }
        }
        eprintln!(
            "  bulk {:.0} s: written {} services, {} pods ({} errors); programmed services {:?}, backends {:?}",
            sample.t_s,
            sample.services_written,
            sample.pods_written,
            env.helpers.progress.2,
            sample.services,
            sample.backends
        );
        bulk.timeline.push(sample);
        if usage_end.is_none() && programmed_ns.iter().all(Option::is_some) {
            usage_end = Some(read_usage(&procs, env.ticks));
        }
        if usage_end.is_some() && env.helpers.bulk_done.is_some() {
            break;
        }
        if started.elapsed() > config.bulk_timeout {
            bulk.failure = Some(format!(
                "not every node had programmed the load after {:?}",
                config.bulk_timeout
            ));
            for (i, daemon) in env.daemons.iter().enumerate() {
                if programmed_ns[i].is_none() {
                    bulk.nodes[i].after = counts(daemon).unwrap_or_default();
                }
            }
            break;
        }
    }
    let usage_end = usage_end.unwrap_or_else(|| read_usage(&procs, env.ticks));
    bulk.usage = phase_usage(&procs, &usage_before, &usage_end);
    let times = env.helpers.bulk_done.clone().unwrap_or_default();
    let origin = if times.started_ns > 0 {
        times.started_ns
    } else {
        asked_ns
    };
    for (i, node) in bulk.nodes.iter_mut().enumerate() {
        node.programmed_s = programmed_ns[i].map(|t| t.saturating_sub(origin) as f64 / 1e9);
        if node.programmed_s.is_some() && times.started_unix_s > 0.0 {
            node.last_sync_s = Some(node.after.last_sync_unix_s - times.started_unix_s);
        }
    }
    bulk.all_programmed_s = programmed_ns
        .iter()
        .copied()
        .collect::<Option<Vec<u64>>>()
        .and_then(|all| all.into_iter().max())
        .map(|t| t.saturating_sub(origin) as f64 / 1e9);
    bulk.all_programmed_sync_s = bulk
        .nodes
        .iter()
        .map(|n| n.last_sync_s)
        .collect::<Option<Vec<f64>>>()
        .and_then(|all| all.into_iter().reduce(f64::max));
    if times.errors > 0 && bulk.failure.is_none() {
        bulk.failure = Some(format!(
            "{} writes failed; the first: {}",
            times.errors,
            times.first_error.clone().unwrap_or_default()
        ));
    }
    bulk.writer = times;
    // What the maps hold, read back through the CLI, with a few Services
    // checked for all their backends.
    let sampled: Vec<String> = [0, config.services / 2, config.services.saturating_sub(1)]
        .iter()
        .map(|n| format!("{NAMESPACE}/svc-{n}"))
        .collect();
    for (i, daemon) in env.daemons.iter().enumerate() {
        match cli_check(daemon, &sampled, config.pods_per_service) {
            Ok((frontends, backends, complete)) => {
                let node = &mut bulk.nodes[i];
                node.cli_frontends = Some(frontends);
                node.cli_backends = Some(backends);
                node.sampled_complete = Some((complete, sampled.len()));
            }
            Err(error) => eprintln!("  node {i}: switchyard services failed: {error:#}"),
        }
    }
    Ok(bulk)
}

fn problems(daemons: &[Daemon], api: &ApiServer) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = |who: &str, log: String| {
        let mut n = 0;
        for line in log.lines() {
            if line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked") {
                n += 1;
                if n <= 10 {
                    let short: String = line.chars().take(400).collect();
                    out.push(format!("{who}: {short}"));
                }
            }
        }
        if n > 10 {
            out.push(format!("{who}: ... {} more warnings and errors", n - 10));
        }
    };
    for (i, daemon) in daemons.iter().enumerate() {
        scan(&format!("node-{i}"), daemon.log());
    }
    scan("apiserver", api.log());
    out
}

fn start_helpers(config: &RunConfig, cluster: &Cluster, api: &ApiServer) -> Result<Helpers> {
    let scratch = cluster.scratch_dir();
    let argv: Vec<OsString> = vec![
        config.exe.clone().into(),
        "writer".into(),
        "--kubeconfig".into(),
        api.kubeconfig().into(),
        "--namespace".into(),
        NAMESPACE.into(),
    ];
    let mut writer = LineChild::spawn(
        cluster.net(),
        &argv,
        "the writer",
        &scratch.join("writer.log"),
    )?;
    match writer.recv::<WriterEvent>(HELPER_TIMEOUT)? {
        WriterEvent::Ready => {}
        other => bail!("the writer started with {other:?}"),
    }
    let mut probes = Vec::new();
    for i in 0..cluster.node_count() {
        let argv: Vec<OsString> = vec![
            config.exe.clone().into(),
            "probe".into(),
            "--target".into(),
            format!("{VIP}:{}", writer::SERVICE_PORT).into(),
            "--interval".into(),
            humantime::format_duration(config.probe_interval)
                .to_string()
                .into(),
            "--wait-limit".into(),
            humantime::format_duration(config.change_timeout)
                .to_string()
                .into(),
        ];
        let mut probe = LineChild::spawn(
            cluster.client(i),
            &argv,
            &format!("node {i}'s probe"),
            &scratch.join(format!("probe{i}.log")),
        )?;
        match probe.recv::<ProbeEvent>(HELPER_TIMEOUT)? {
            ProbeEvent::Ready => {}
            other => bail!("node {i}'s probe started with {other:?}"),
        }
        probes.push(probe);
    }
    Ok(Helpers {
        writer,
        probes,
        seq: 0,
        slices: Vec::new(),
        progress: (0, 0, 0),
        bulk_done: None,
        watch_errors: Vec::new(),
    })
}

/// Builds the cluster, runs the idle series, the bulk load and the loaded
/// series, and tears everything down (also on error). A failure part-way
/// is recorded in the outcome with what was measured until then.
pub fn run(config: &RunConfig) -> Result<Outcome> {
    switchyard_tests::require_root()?;
    ensure!(config.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        config.services <= 60_000,
        "at most 60,000 Services fit the Service CIDR 10.96.0.0/16 here"
    );
    let ticks = crate::cpu::clock_ticks()?;
    eprintln!("building the cluster: {} nodes", config.nodes);
    let mut cluster = Cluster::new(config.nodes, REAL_PODS_PER_NODE)?;
    cluster.start_pod_servers()?;
    let mut api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let mut daemons = Vec::new();
    for i in 0..config.nodes {
        let mut daemon_config = cluster.daemon_config(i, Mode::Ebpf, &api.kubeconfig())?;
        "1h".clone_into(&mut daemon_config.sync_period);
        daemon_config.ready_timeout = Duration::from_mins(2);
        daemon_config.extra_args.clone_from(&config.daemon_args);
        daemons.push(cluster.start_daemon(i, &daemon_config)?);
    }
    let mut helpers = start_helpers(config, &cluster, &api)?;
    let mut outcome = Outcome::default();
    let mut env = Env {
        config,
        cluster: &cluster,
        api: &mut api,
        daemons: &mut daemons,
        helpers: &mut helpers,
        ticks,
    };
    if let Err(error) = run_phases(&mut env, &mut outcome) {
        outcome.failure = Some(format!("{error:#}"));
        eprintln!("the run stopped early: {error:#}");
    }
    for error in &env.helpers.watch_errors {
        outcome
            .problems
            .push(format!("writer's slice watch: {error}"));
    }
    outcome.problems.extend(problems(env.daemons, env.api));
    let procs = processes(env.daemons, env.api, env.helpers);
    outcome.final_usage = procs
        .iter()
        .map(|(name, pid)| (name.clone(), Usage::read(*pid, ticks).unwrap_or_default()))
        .collect();
    drop(helpers);
    drop(daemons);
    drop(api);
    drop(cluster);
    Ok(outcome)
}

fn run_phases(env: &mut Env<'_>, outcome: &mut Outcome) -> Result<()> {
    let config = env.config;
    // The measured Service, with no Pod yet: every node refuses it.
    let before: Vec<Counts> = env.daemons.iter().map(counts).collect::<Result<_>>()?;
    let web = objects::Service::new("web")
        .cluster_ips(&[&VIP.to_string()])
        .selector("app", "web")
        .port(objects::ServicePort::tcp(
            "http",
            writer::SERVICE_PORT,
            writer::TARGET_PORT,
        ))
        .to_value();
    let (_, _, error) = env
        .helpers
        .write(&WriterCommand::CreateService { object: web })?;
    if let Some(error) = error {
        bail!("creating Service web: {error}");
    }
    for (i, daemon) in env.daemons.iter().enumerate() {
        switchyard_tests::poll_until(
            &format!("node {i} to program Service web"),
            Duration::from_secs(30),
            || Ok((counts(daemon)?.frontends > before[i].frontends).then_some(())),
        )?;
    }
    env.helpers.writer.send(&WriterCommand::WatchSlices {
        service: "web".to_owned(),
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let services_idle = before
        .iter()
        .map(|c| c.services as usize)
        .max()
        .unwrap_or(0)
        + 1;
    eprintln!(
        "idle series: {} changes at {services_idle} Services",
        config.changes
    );
    outcome.idle = Some(run_series(env, "idle", services_idle, 0)?);
    if config.services > 0 {
        eprintln!(
            "bulk load: {} Services × {} Pods",
            config.services, config.pods_per_service
        );
        let bulk = run_bulk(env)?;
        let failed = bulk.failure.is_some() && bulk.all_programmed_s.is_none();
        outcome.bulk = Some(bulk);
        if failed {
            bail!("the bulk load was not programmed everywhere; no loaded series");
        }
        std::thread::sleep(config.settle);
        eprintln!(
            "loaded series: {} changes at {} Services",
            config.changes,
            services_idle + config.services
        );
        outcome.loaded = Some(run_series(
            env,
            "loaded",
            services_idle + config.services,
            config.services * config.pods_per_service,
        )?);
    }
    Ok(())
}
