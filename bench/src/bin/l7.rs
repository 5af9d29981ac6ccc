//! `l7`: switchyard's L7 (HTTP) proxy against nginx and HAProxy, and a
//! direct connection, under HTTP/1.1 keep-alive (wrk) and HTTP/2 cleartext
//! (h2load). Needs root. Writes `<out>/<date>-l7.md` and `.json`. See
//! `switchyard_bench::l7` and `bench/README.md`.

// "HAProxy" is a product name in prose, not code to put in backticks.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_bench::binaries;
use switchyard_bench::l7::load::LoadShape;
use switchyard_bench::l7::suite::{L7Config, Target};
use switchyard_bench::l7::{self, RunPaths};

#[derive(Debug, Parser)]
#[command(
    about = "Measure switchyard's L7 proxy against nginx, HAProxy and a direct connection, with wrk (HTTP/1.1) and h2load (HTTP/2)"
)]
struct Args {
    /// One measurement window (whole seconds: wrk's unit).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Rounds; the report shows the median (five: on a shared machine one proxy's rate moves
    /// by up to 1.4× from round to round, and a median of three is one bad round from a wrong
    /// verdict).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    repeats: u16,
    /// Targets, in round order (known: direct, nginx, haproxy, switchyard-h2c, switchyard-http).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nginx,haproxy,switchyard-h2c,switchyard-http"
    )]
    targets: Vec<String>,
    /// wrk's kept-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 64)]
    wrk_connections: usize,
    /// h2load's HTTP/2 connections.
    #[arg(long, default_value_t = 16)]
    h2_connections: usize,
    /// h2load's streams in flight per connection.
    #[arg(long, default_value_t = 4)]
    h2_streams: usize,
    /// wrk's request timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
    /// nginx's upstream `keepalive` (idle connections to the pods it keeps).
    #[arg(long, default_value_t = 64)]
    nginx_keepalive: usize,
    /// Measure switchyard even where it does not balance the requests of one
    /// connection over the pods (before its L7 mode serves a Service, the
    /// numbers are its L4 proxy's).
    #[arg(long)]
    measure_unbalanced: bool,
    /// Unrecorded warm-up per target and load before the first round.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Idle time before each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pause: Duration,
    /// Before each run, wait while some CPU was busier than this (percent)
    /// in the idle pause: other tenants of a shared machine.
    #[arg(long, default_value_t = 25.0)]
    quiet_threshold: f64,
    /// The longest wait for a quiet machine before a run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    quiet_wait: Duration,
    /// The CPU of the proxies.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// The CPU of the load tools and the backends.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The date in the report's file name (default: the day of the run, UTC).
    #[arg(long)]
    date: Option<String>,
    /// The switchyard binary (default: `switchyard` beside this program, built
    /// with the same profile).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the programs the run starts.
    #[arg(long)]
    no_build: bool,
    /// Parallel jobs of those builds (the machine is shared).
    #[arg(long, default_value_t = 1)]
    build_jobs: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.proxy_cpu == args.load_cpu {
        bail!("--proxy-cpu and --load-cpu must differ: the proxies get a CPU of their own");
    }
    let targets = args
        .targets
        .iter()
        .map(|name| Target::parse(name))
        .collect::<Result<Vec<_>>>()?;
    // Taken before the build, which may replace this very file.
    let dir = binaries::bin_dir()?;
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| dir.join("switchyard"));
    if !args.no_build {
        l7::build(args.switchyard_bin.is_none(), args.build_jobs)?;
    }
    let switchyard = std::fs::canonicalize(&switchyard)
        .with_context(|| format!("switchyard binary {}", switchyard.display()))?;
    // The child needs no build: done here already, or not asked for.
    binaries::reexec_with_switchyard_bin(
        &switchyard,
        if args.no_build { &[] } else { &["--no-build"] },
    )?;
    let backend_bin = dir.join("l7-backend");
    l7::require(&backend_bin, "the l7-backend binary")?;
    switchyard_bench::reaper::install(Some(switchyard.clone()))?;
    let config = L7Config {
        backend_bin,
        duration: args.duration,
        warmup: args.warmup,
        pause: args.pause,
        quiet_threshold: args.quiet_threshold / 100.0,
        quiet_wait: args.quiet_wait,
        repeats: usize::from(args.repeats),
        targets,
        shape: LoadShape {
            wrk_connections: args.wrk_connections,
            h2_connections: args.h2_connections,
            h2_streams: args.h2_streams,
            cpu: args.load_cpu,
            timeout: args.timeout,
        },
        nginx_keepalive: args.nginx_keepalive,
        measure_unbalanced: args.measure_unbalanced,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
    };
    let paths = RunPaths {
        switchyard_bin: switchyard,
        out_dir: args
            .out
            .unwrap_or_else(|| switchyard_tests::workspace_dir().join("bench/results")),
        date: args.date,
    };
    let (report, md, json) = l7::run(&config, &paths)?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
