//! `apiwatch`: 10,000 Services with 10 Pods each created through the API
//! server, the time until every node daemon has programmed them, and the
//! latency of a one-Pod change (create to first traffic) at that size and on
//! an idle cluster. Needs root. Writes `<out>/<date>-apiwatch.md` and
//! `.json`. Build first: `cargo build --release -p switchyard-bench --bin
//! apiwatch`, `-p switchyard-control --bin switchyard`, `-p
//! switchyard-tests --bin pod-server`.
//!
//! The hidden subcommands `writer` and `probe` are this program started
//! again inside the cluster's namespaces (see `switchyard_bench::apiwatch`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use switchyard_bench::apiwatch::probe::ProbeConfig;
use switchyard_bench::apiwatch::report::{self, Method, Report};
use switchyard_bench::apiwatch::{self, RunConfig};
use switchyard_bench::binaries;
use switchyard_bench::machine::Machine;

#[derive(Debug, Parser)]
#[command(
    about = "Measure switchyard's node daemons following the API server: a 10,000-Service bulk load and one-Pod changes"
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Services of the bulk load.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Pods per Service.
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    /// One-Pod changes per series (idle, then loaded).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Nodes, each with its daemon.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Creates in flight at once in the bulk load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The longest wait for the bulk load to be programmed everywhere.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20m")]
    bulk_timeout: Duration,
    /// The longest wait for one change to reach a node.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    change_timeout: Duration,
    /// How often the daemons' /metrics are read during the bulk load.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    poll_interval: Duration,
    /// Rest between the bulk load and the loaded series.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    settle: Duration,
    /// The probes' pause between connects.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1ms")]
    probe_interval: Duration,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Added to the report's file name: `<date>-apiwatch-<tag>.md`.
    #[arg(long)]
    tag: Option<String>,
    /// The switchyard binary (default: `switchyard` beside this program).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Helper {
    /// Inside the network namespace: write to the API server (commands on stdin).
    #[command(hide = true)]
    Writer {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Inside a client namespace: connect to the Service (commands on stdin).
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1ms")]
        interval: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
        attempt_timeout: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        wait_limit: Duration,
    },
}

fn run(args: RunArgs) -> Result<()> {
    let dir = binaries::bin_dir()?;
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| dir.join("switchyard"));
    binaries::require(&switchyard, "the switchyard binary")?;
    binaries::require(&dir.join("pod-server"), "the pod-server binary")?;
    let switchyard = std::fs::canonicalize(&switchyard)
        .with_context(|| format!("resolve {}", switchyard.display()))?;
    binaries::reexec_with_switchyard_bin(&switchyard, &[])?;
    switchyard_bench::reaper::install(Some(switchyard.clone()))?;
    let config = RunConfig {
        services: args.services,
        pods_per_service: args.pods_per_service,
        changes: args.changes,
        nodes: args.nodes,
        concurrency: args.concurrency,
        bulk_timeout: args.bulk_timeout,
        change_timeout: args.change_timeout,
        poll_interval: args.poll_interval,
        settle: args.settle,
        probe_interval: args.probe_interval,
        exe: std::env::current_exe().context("find the running executable")?,
        daemon_args: switchyard_bench::cluster::bpf_map_args(
            args.services + 1,
            args.services * args.pods_per_service,
        ),
    };
    let machine = Machine::gather(
        &switchyard_tests::workspace_dir(),
        &switchyard,
        "not used by this run".to_owned(),
    );
    let uncommitted = report::uncommitted_sources(&switchyard_tests::workspace_dir(), &switchyard);
    let outcome = apiwatch::run(&config)?;
    let report = Report::new(machine, uncommitted, Method::of(&config), outcome);
    let out = args
        .out
        .unwrap_or_else(|| switchyard_tests::workspace_dir().join("bench/results"));
    let (md, json) = report.write(&out, args.tag.as_deref())?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        None => run(cli.run),
        Some(Helper::Writer {
            kubeconfig,
            namespace,
        }) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start the runtime")?
            .block_on(apiwatch::writer::run(&kubeconfig, &namespace)),
        Some(Helper::Probe {
            target,
            interval,
            attempt_timeout,
            wait_limit,
        }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the runtime")?
            .block_on(apiwatch::probe::run(ProbeConfig {
                target,
                interval,
                attempt_timeout,
                wait_limit,
            })),
    }
}
