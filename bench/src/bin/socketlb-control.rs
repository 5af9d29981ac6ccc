//! `socketlb-control`: switchyard's control plane in process, for
//! `socketlb`. Programs a cluster of `--services` Services into an empty
//! eBPF datapath (store, incremental table, `EbpfDatapath::apply`) and then
//! times one-endpoint changes, each store update + recompute + apply. Prints
//! a `switchyard_bench::socketlb::control_plane::InProcessResult` as JSON.
//!
//! It attaches to `--cgroup-path` and pins under `--pin-path`, both made for
//! it by `socketlb`, which removes them (`switchyard cleanup`) afterwards.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_bench::cluster::{self, Cluster};
use switchyard_bench::socketlb::control_plane::InProcessResult;
use switchyard_control::datapath::Datapath as _;
use switchyard_control::datapath::ebpf::{EbpfConfig, EbpfDatapath};
use switchyard_control::incremental::IncrementalTable;
use switchyard_control::model::NodeContext;
use switchyard_control::store::{Affected, Object, Store};

#[derive(Debug, Parser)]
#[command(
    about = "switchyard's control plane in process: program a cluster, then time one-endpoint changes"
)]
struct Args {
    #[arg(long)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    time_limit: Duration,
    /// bpffs folder for the maps and links (made for this run).
    #[arg(long)]
    pin_path: PathBuf,
    /// The cgroup to attach to (made for this run, with nothing in it).
    #[arg(long)]
    cgroup_path: PathBuf,
}

fn objects(cluster: &Cluster, index: usize) -> Result<[Object; 2]> {
    let [service, slice] = cluster::manifests(&cluster.service(index));
    let service: Service = serde_json::from_value(service).context("Service")?;
    let slice: EndpointSlice = serde_json::from_value(slice).context("EndpointSlice")?;
    Ok([Object::Service(service), Object::EndpointSlice(slice)])
}

#[allow(
    clippy::disallowed_types,
    reason = "times synchronous steps; the runtime only drives the apply future"
)]
fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pods = (10..13)
        .map(|o| std::net::Ipv4Addr::new(10, 244, 0, o))
        .collect();
    let cluster = Cluster::new(args.services, args.endpoints, pods);
    let mut all = Vec::with_capacity(2 * cluster.services);
    for index in 0..cluster.services {
        all.extend(objects(&cluster, index)?);
    }
    let changed = cluster.changed_index();
    let mut trimmed = cluster.clone();
    trimmed.trimmed = Some(changed);
    let [_, full_slice] = objects(&cluster, changed)?;
    let [_, trimmed_slice] = objects(&trimmed, changed)?;

    let config = EbpfConfig {
        socket_lb: switchyard_ebpf::SocketLbConfig {
            pin_path: args.pin_path.clone(),
            cgroup_path: args.cgroup_path.clone(),
            ..switchyard_ebpf::SocketLbConfig::default()
        },
        close_stale_sockets: false,
    };
    let mut datapath = EbpfDatapath::new(&config).context("open the eBPF datapath")?;
    let node = NodeContext::named("node-0");
    let mut result = InProcessResult {
        services: cluster.services,
        endpoints: cluster.endpoint_count(),
        asked: args.changes,
        ..InProcessResult::default()
    };

    let start = std::time::Instant::now();
    let mut store = Store::new();
    for object in all {
        store.upsert(object);
    }
    result.initial_store_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let mut table = IncrementalTable::new();
    let (diff, _) = table.update(
        &store,
        &node,
        &Affected {
            all: true,
            ..Affected::default()
        },
    );
    result.initial_recompute_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let applied = runtime.block_on(datapath.apply(&diff));
    result.initial_apply_s = start.elapsed().as_secs_f64();
    result.initial_programmed = applied.programmed;
    result.initial_failed = applied.failed.len();
    result.initial_first_failure = applied.failed.first().map(|(f, why)| format!("{f}: {why}"));

    let series = std::time::Instant::now();
    let versions = [trimmed_slice, full_slice];
    for i in 0..args.changes {
        if series.elapsed() >= args.time_limit {
            result.time_limited = true;
            break;
        }
        let object = versions[i % 2].clone();
        let start = std::time::Instant::now();
        let (affected, _) = store.upsert(object);
        let (diff, _) = table.update(&store, &node, &affected);
        let apply_start = std::time::Instant::now();
        let applied = runtime.block_on(datapath.apply(&diff));
        let now = std::time::Instant::now();
        result.changes_s.push((now - start).as_secs_f64());
        result.apply_s.push((now - apply_start).as_secs_f64());
        if diff.changed.len() != 1 || !applied.failed.is_empty() {
            result.change_failures += 1;
            result.change_first_failure.get_or_insert_with(|| {
                format!(
                    "change {i}: diff of {} changed, {} added, {} removed; failed: {:?}",
                    diff.changed.len(),
                    diff.added.len(),
                    diff.removed.len(),
                    applied.failed
                )
            });
        }
    }
    drop(datapath);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
