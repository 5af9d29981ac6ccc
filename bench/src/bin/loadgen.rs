//! `loadgen`: the benchmark's load generator. Runs one scenario against one
//! or more addresses for a bounded time and prints what it measured as JSON
//! on stdout. See `switchyard_bench::loadgen`.

// "HAProxy" is a product name in prose, not code to put in backticks.
#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use switchyard_bench::loadgen::{self, LoadConfig, Scenario};

#[derive(Debug, Parser)]
#[command(
    about = "Closed-loop HTTP/1.1 load: new connections per second, or bulk bytes per second"
)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// An address to connect to; several are used round-robin.
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddr>,
    /// Concurrent workers, one connection each.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// The measurement window (at most 10 minutes).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Body size of one bulk download.
    #[arg(long, default_value_t = 268_435_456)]
    body_bytes: u64,
    /// At most this many requests (downloads) are started in all.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// A request (cps) or a read (bulk) slower than this counts as an error.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = LoadConfig {
        scenario: args.scenario,
        targets: args.targets,
        workers: args.workers,
        duration: args.duration,
        body_bytes: args.body_bytes,
        max_requests: args.max_requests,
        timeout: args.timeout,
    };
    // One thread: the generator shares its CPU with the backends, and a
    // single event loop costs the least per request.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(loadgen::run(&config))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
