//! `soak`: switchyard's node daemon under endpoint churn for a long time (30 minutes by
//! default): 1,000 Services whose endpoints change at 50 changes/s through the API server,
//! clients connecting without pause to the Services that always have a ready endpoint. Needs
//! root. Writes `<out>/<date>-soak.md`, `.json` and `.svg`. Build first: `cargo build --release
//! -p switchyard-bench --bin soak`, `-p switchyard-control --bin switchyard`, `-p
//! switchyard-tests --bin pod-server` (`cargo xtask soak` does all of it).
//!
//! The hidden subcommand `client` is this program started again inside the client namespace
//! (see `switchyard_bench::soak`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use switchyard_bench::binaries;
use switchyard_bench::machine::Machine;
use switchyard_bench::soak::client::ClientConfig;
use switchyard_bench::soak::report::{Method, Report};
use switchyard_bench::soak::{self, RunConfig};

#[derive(Debug, Parser)]
#[command(
    about = "Soak switchyard's node daemon under endpoint churn: failed connections, programming latency, memory over time"
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    run: RunArgs,
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Minutes of churn.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Of those, served by real pods and connected to (two pod servers each).
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Ready Pods of every other Service.
    #[arg(long, default_value_t = 5)]
    endpoints_per_service: usize,
    /// Endpoint changes per second, over all Services.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// The client's new connections per second.
    #[arg(long, default_value_t = 100.0)]
    connect_rate: f64,
    /// The client's connect timeout.
    #[arg(long, value_parser = duration, default_value = "2s")]
    connect_timeout: Duration,
    /// The client's timeout for a whole connection.
    #[arg(long, value_parser = duration, default_value = "5s")]
    request_timeout: Duration,
    /// The warm-up, at most a third of the run.
    #[arg(long, value_parser = duration, default_value = "5m")]
    warmup: Duration,
    /// How often the processes' memory and CPU are read.
    #[arg(long, value_parser = duration, default_value = "5s")]
    sample_interval: Duration,
    /// How often the daemon's /metrics are read.
    #[arg(long, value_parser = duration, default_value = "10s")]
    metrics_interval: Duration,
    /// Time between the steps of a lifecycle (create, ready, delete).
    #[arg(long, value_parser = duration, default_value = "1s")]
    step: Duration,
    /// The Pods' termination grace period (whole seconds).
    #[arg(long, value_parser = duration, default_value = "5s")]
    grace: Duration,
    /// The longest a probe waits for a new pod to answer.
    #[arg(long, value_parser = duration, default_value = "10s")]
    probe_limit: Duration,
    /// The daemon's --sync-period.
    #[arg(long, default_value = "30s")]
    sync_period: String,
    /// One more `switchyard run` argument (repeat it for several).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Added to the report's file names: `<date>-soak-<tag>.md`.
    #[arg(long)]
    tag: Option<String>,
    /// The switchyard binary (default: `switchyard` beside this program).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Helper {
    /// Inside the client namespace: connect to the Services (commands on stdin).
    #[command(hide = true)]
    Client {
        #[arg(long, value_delimiter = ',')]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, value_parser = duration, default_value = "2s")]
        connect_timeout: Duration,
        #[arg(long, value_parser = duration, default_value = "5s")]
        request_timeout: Duration,
        #[arg(long, default_value_t = 512)]
        max_in_flight: usize,
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
    anyhow::ensure!(args.minutes > 0.0, "--minutes must be positive");
    switchyard_bench::reaper::install(Some(switchyard.clone()))?;
    let config = RunConfig {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        services: args.services,
        samples: args.samples,
        endpoints_per_service: args.endpoints_per_service,
        rate: args.rate,
        connect_rate: args.connect_rate,
        connect_timeout: args.connect_timeout,
        request_timeout: args.request_timeout,
        warmup: args.warmup,
        sample_interval: args.sample_interval,
        metrics_interval: args.metrics_interval,
        step: args.step,
        grace: args.grace,
        probe_limit: args.probe_limit,
        sync_period: args.sync_period,
        daemon_args: args.daemon_args,
        exe: std::env::current_exe().context("find the running executable")?,
    };
    let workspace = switchyard_tests::workspace_dir();
    let machine = Machine::gather(&workspace, &switchyard, "not used by this run".to_owned());
    let uncommitted =
        switchyard_bench::apiwatch::report::uncommitted_sources(&workspace, &switchyard);
    let outcome = soak::run(&config)?;
    let failed = outcome.failure.clone();
    let report = Report::new(machine, uncommitted, Method::of(&config), outcome);
    let out = args.out.unwrap_or_else(|| workspace.join("bench/results"));
    let (md, json, svg) = report.write(&out, args.tag.as_deref())?;
    print!(
        "{}",
        report.markdown(&svg.file_name().unwrap_or_default().to_string_lossy())
    );
    eprintln!(
        "wrote {}, {} and {}",
        md.display(),
        json.display(),
        svg.display()
    );
    if let Some(failure) = failed {
        bail!("the soak stopped early: {failure}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        None => run(cli.run),
        Some(Helper::Client {
            targets,
            rate,
            connect_timeout,
            request_timeout,
            max_in_flight,
        }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the runtime")?
            .block_on(soak::client::run(ClientConfig {
                targets,
                rate,
                connect_timeout,
                request_timeout,
                max_in_flight,
            })),
    }
}
