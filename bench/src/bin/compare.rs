//! `compare`: switchyard's userspace L4 proxy against HAProxy and against a
//! direct connection, on one namespace topology. Needs root. Writes
//! `<out>/<date>-userspace-l4.md` and `.json`. See `bench/README.md`.

// "HAProxy" is a product name in prose, not code to put in backticks.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_bench::binaries;
use switchyard_bench::suite::SuiteConfig;

#[derive(Debug, Parser)]
#[command(
    about = "Measure switchyard's userspace L4 proxy against HAProxy and a direct connection"
)]
struct Args {
    /// One measurement window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rounds; the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    repeats: u16,
    /// Concurrent workers of the connections-per-second scenario.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Connections of the bulk scenario.
    #[arg(long, default_value_t = 4)]
    bulk_connections: usize,
    /// Size of one bulk download.
    #[arg(long, default_value_t = 268_435_456)]
    body_bytes: u64,
    /// Cap on the requests one load run may start.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Unrecorded warm-up per target before the first round.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Idle time between measurements.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pause: Duration,
    /// Before each run, wait while some CPU was busier than this (percent)
    /// in the idle pause: other tenants of a shared machine.
    #[arg(long, default_value_t = 25.0)]
    quiet_threshold: f64,
    /// The longest wait for a quiet machine before a run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    quiet_wait: Duration,
    /// The CPU of the proxy under test.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// The switchyard binary (default: `switchyard` beside this program, built
    /// with the same profile).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the programs the run starts.
    #[arg(long)]
    no_build: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.proxy_cpu == args.load_cpu {
        bail!("--proxy-cpu and --load-cpu must differ: the proxy gets a CPU of its own");
    }
    // Taken before the build, which may replace this very file.
    let dir = binaries::bin_dir()?;
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| dir.join("switchyard"));
    if !args.no_build {
        binaries::build(args.switchyard_bin.is_none())?;
    }
    let switchyard = std::fs::canonicalize(&switchyard)
        .with_context(|| format!("switchyard binary {}", switchyard.display()))?;
    // The child needs no build: done here already, or not asked for.
    binaries::reexec_with_switchyard_bin(
        &switchyard,
        if args.no_build { &[] } else { &["--no-build"] },
    )?;
    let loadgen = dir.join("loadgen");
    binaries::require(&loadgen, "the loadgen binary")?;
    binaries::require(&dir.join("pod-server"), "the pod-server binary")?;
    let config = SuiteConfig {
        loadgen,
        duration: args.duration,
        warmup: args.warmup,
        pause: args.pause,
        quiet_threshold: args.quiet_threshold / 100.0,
        quiet_wait: args.quiet_wait,
        repeats: usize::from(args.repeats),
        cps_workers: args.workers,
        bulk_connections: args.bulk_connections,
        body_bytes: args.body_bytes,
        max_requests: args.max_requests,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
    };
    let out = args
        .out
        .unwrap_or_else(|| switchyard_tests::workspace_dir().join("bench/results"));
    let (report, md, json) = switchyard_bench::compare(&config, &switchyard, &out)?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
