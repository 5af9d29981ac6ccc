//! `firstsync`: the first full sync of `switchyard run --proxy-mode ebpf` at 10,000
//! Services × 3 endpoints, from process start to a programmed datapath, cold and over its
//! own pins, against kube-proxy's rule shapes for the same cluster loaded from empty. Needs
//! root. Writes `<out>/<date>-firstsync.md` and `.json`. Build first: `cargo build
//! --release -p switchyard-bench --bin firstsync -p switchyard-control --bin switchyard`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use switchyard_bench::binaries;
use switchyard_bench::firstsync::anchor::AnchorConfig;
use switchyard_bench::firstsync::report::{Method, Report};
use switchyard_bench::firstsync::{self, RunConfig};
use switchyard_bench::machine::Machine;
use switchyard_bench::rule_loader::Backend;

#[derive(Debug, Parser)]
#[command(
    about = "Measure switchyard's first full sync from process start (10,000 Services × 3 endpoints) against kube-proxy's rule shapes"
)]
struct Cli {
    /// Services in the API server.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service (the measured Service's fixed three).
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Rounds: a cold start (empty pins) and a restart over its pins each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only the cold starts.
    #[arg(long)]
    no_restart: bool,
    /// Writes in flight while filling the API server.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How often `/healthz` is asked.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    poll_interval: Duration,
    /// The longest wait for one start's first view and `/healthz`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3m")]
    start_timeout: Duration,
    /// Do not dump the lookup maps with bpftool after each start.
    #[arg(long)]
    no_map_check: bool,
    /// Skip kube-proxy's rule shapes.
    #[arg(long)]
    no_anchor: bool,
    /// Loads from empty per kube-proxy shape.
    #[arg(long, default_value_t = 3)]
    anchor_tries: usize,
    /// A rule load slower than this is killed (iptables-nft takes minutes at this size).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    anchor_timeout: Duration,
    /// A load slower than this is not tried again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    anchor_enough: Duration,
    /// The CPU the rule loader is pinned to.
    #[arg(long, default_value_t = 1)]
    anchor_cpu: usize,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Added to the report's file name: `<date>-firstsync-<tag>.md`.
    #[arg(long)]
    tag: Option<String>,
    /// Write the report again from the JSON of an earlier run (after a change to the
    /// report's form) and exit; nothing is measured.
    #[arg(long, value_name = "JSON")]
    from_json: Option<PathBuf>,
    /// The switchyard binary (default: `switchyard` beside this program).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
}

/// Rebuilds the report of `json` (its summaries computed again) and writes it beside it.
fn rerender(json: &std::path::Path, tag: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let old: Report =
        serde_json::from_str(&text).with_context(|| format!("parse {}", json.display()))?;
    let report = Report::new(
        old.machine,
        old.uncommitted_sources,
        old.method,
        old.outcome,
    );
    let dir = json.parent().unwrap_or(std::path::Path::new("."));
    let (md, json) = report.write(dir, tag)?;
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

fn main() -> Result<()> {
    let args = Cli::parse();
    if let Some(json) = &args.from_json {
        return rerender(json, args.tag.as_deref());
    }
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| binaries::bin_dir().unwrap_or_default().join("switchyard"));
    binaries::require(&switchyard, "the switchyard binary")?;
    let switchyard = std::fs::canonicalize(&switchyard)
        .with_context(|| format!("resolve {}", switchyard.display()))?;
    binaries::reexec_with_switchyard_bin(&switchyard, &[])?;
    switchyard_bench::reaper::install(Some(switchyard.clone()))?;
    let config = RunConfig {
        switchyard: switchyard.clone(),
        services: args.services,
        endpoints: args.endpoints,
        rounds: args.rounds,
        restart: !args.no_restart,
        concurrency: args.concurrency,
        poll_interval: args.poll_interval,
        start_timeout: args.start_timeout,
        check_maps: !args.no_map_check,
        anchor: (!args.no_anchor).then(|| AnchorConfig {
            backends: vec![
                Backend::IptablesLegacy,
                Backend::Nftables,
                Backend::IptablesNft,
            ],
            tries: args.anchor_tries.max(1),
            enough: args.anchor_enough,
            timeout: args.anchor_timeout,
            cpu: args.anchor_cpu,
        }),
        daemon_args: switchyard_bench::cluster::bpf_map_args(
            args.services + 1,
            args.services * args.endpoints,
        ),
    };
    let workspace = switchyard_tests::workspace_dir();
    let machine = Machine::gather(&workspace, &switchyard, "not used by this run".to_owned());
    let uncommitted =
        switchyard_bench::apiwatch::report::uncommitted_sources(&workspace, &switchyard);
    let outcome = firstsync::run(&config)?;
    let report = Report::new(machine, uncommitted, Method::of(&config), outcome);
    let out = args.out.unwrap_or_else(|| workspace.join("bench/results"));
    let (md, json) = report.write(&out, args.tag.as_deref())?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
