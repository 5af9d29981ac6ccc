//! `nodeport`: a NodePort Service reached from a client outside the cluster,
//! its endpoint on another node, through switchyard's tc eBPF datapath and
//! through kube-proxy's iptables rules, against a direct connection to the
//! pod: new connections per second and request latency. Needs root. Writes
//! `<out>/<date>-nodeport.md` and `.json`. See `switchyard_bench::nodeport`
//! and `bench/README.md`.
//!
//! The hidden subcommand `keepalive` is this program started again inside
//! the external client's namespace: the keep-alive latency probe.

// "NodePort" is a Kubernetes term in prose, not code to put in backticks.
#![allow(clippy::doc_markdown)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use switchyard_bench::binaries;
use switchyard_bench::machine::Machine;
use switchyard_bench::nodeport::keepalive::{self, KeepAliveConfig};
use switchyard_bench::nodeport::load::Load;
use switchyard_bench::nodeport::report::{Method, Report};
use switchyard_bench::nodeport::targets::{self, CATALOG, DEFAULT_TARGETS};
use switchyard_bench::nodeport::{self, RunConfig, interrupt};

#[derive(Debug, Parser)]
#[command(
    about = "Measure a NodePort to a pod on another node: switchyard's tc eBPF datapath against kube-proxy's iptables rules and a direct connection"
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Targets, in round order (known: direct, switchyard-tc, switchyard-dsr, switchyard-xdp,
    /// kube-proxy-iptables, kube-proxy-iptables-nft).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.iter().map(|t| (*t).to_owned()))]
    targets: Vec<String>,
    /// Also measure switchyard's XDP fast path (`switchyard-xdp`, after
    /// `switchyard-tc`). The bridge is then prepared for XDP for every
    /// target (see the report).
    #[arg(long)]
    xdp: bool,
    /// Rounds; the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// One measurement window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Unrecorded warm-up per target and round.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Idle time before each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pause: Duration,
    /// Wait before a run while some CPU was busier than this (percent).
    #[arg(long, default_value_t = 25.0)]
    quiet_threshold: f64,
    /// The longest wait for a quiet machine.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    quiet_wait: Duration,
    /// New connections in flight for the connection rate (0: not measured).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// New connections in flight for the connection latency (0: not measured).
    #[arg(long, default_value_t = 1)]
    latency_workers: usize,
    /// Kept-alive connections for the request latency (0: not measured).
    #[arg(long, default_value_t = 1)]
    keepalive_connections: usize,
    /// Cap on the requests one load run may start.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// The CPU of the daemon, the API server and the rule loads.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// The longest wait for a target to answer once set up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    ready_timeout: Duration,
    /// kube-proxy's --cluster-cidr in its rules (the pods' range).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// `net.ipv4.tcp_timestamps` in the external client's namespace. With
    /// the default of Linux (1), each connection's timestamps get a random
    /// offset; one client opening tens of thousands of connections through
    /// a NAT that reuses source ports then meets the pod's TIME_WAIT
    /// sockets with older timestamps, the pod drops the SYN (PAWS) and the
    /// client waits a second to retransmit it. 2 keeps timestamps but
    /// without the offsets, so a SYN reopens TIME_WAIT as RFC 6191 allows.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    client_tcp_timestamps: u8,
    /// Where the report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The date in the report's file name (default: the day of the run, UTC).
    #[arg(long)]
    date: Option<String>,
    /// Added to the report's file name: `<date>-nodeport-<tag>.md`.
    #[arg(long)]
    tag: Option<String>,
    /// The switchyard binary (default: `switchyard` beside this program).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the programs the run starts.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Subcommand)]
enum Helper {
    /// Inside the client's namespace: requests on kept-alive connections;
    /// prints the result as JSON.
    #[command(hide = true)]
    Keepalive {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
        #[arg(long)]
        expect: Option<String>,
    },
}

fn run(args: RunArgs) -> Result<()> {
    if args.proxy_cpu == args.load_cpu {
        bail!("--proxy-cpu and --load-cpu must differ");
    }
    let targets = args
        .targets
        .iter()
        .map(|name| {
            targets::find(name).with_context(|| {
                let known: Vec<&str> = CATALOG.iter().map(|t| t.name).collect();
                format!("unknown target {name} (known: {})", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut targets = targets;
    if args.xdp && !targets.iter().any(|t| t.name == "switchyard-xdp") {
        let xdp = targets::find("switchyard-xdp").context("switchyard-xdp is in the catalog")?;
        let at = targets
            .iter()
            .position(|t| t.name == "switchyard-tc")
            .map_or(targets.len(), |i| i + 1);
        targets.insert(at, xdp);
    }
    let xdp_bridge = targets.iter().any(|t| t.needs_xdp_bridge);
    let exe = std::env::current_exe().context("find the running executable")?;
    let dir = binaries::bin_dir()?;
    if !args.no_build {
        binaries::build(args.switchyard_bin.is_none())?;
    }
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| dir.join("switchyard"));
    binaries::require(&switchyard, "the switchyard binary")?;
    let switchyard = std::fs::canonicalize(&switchyard)
        .with_context(|| format!("resolve {}", switchyard.display()))?;
    // The child needs no build: done here already, or not asked for.
    binaries::reexec_with_switchyard_bin(
        &switchyard,
        if args.no_build { &[] } else { &["--no-build"] },
    )?;
    interrupt::install(switchyard.clone())?;
    let loadgen = dir.join("loadgen");
    binaries::require(&loadgen, "the loadgen binary")?;
    binaries::require(&dir.join("pod-server"), "the pod-server binary")?;
    let mut loads = Vec::new();
    if args.workers > 0 {
        loads.push(Load::Connections {
            in_flight: args.workers,
        });
    }
    if args.latency_workers > 0 {
        loads.push(Load::Connections {
            in_flight: args.latency_workers,
        });
    }
    if args.keepalive_connections > 0 {
        loads.push(Load::KeepAlive {
            connections: args.keepalive_connections,
        });
    }
    let config = RunConfig {
        loadgen,
        exe,
        targets,
        rounds: usize::from(args.rounds),
        duration: args.duration,
        warmup: args.warmup,
        pause: args.pause,
        quiet_threshold: args.quiet_threshold / 100.0,
        quiet_wait: args.quiet_wait,
        loads,
        max_requests: args.max_requests,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
        ready_timeout: args.ready_timeout,
        cluster_cidr: args.cluster_cidr.clone(),
        client_tcp_timestamps: Some(args.client_tcp_timestamps),
        xdp_bridge,
    };
    let workspace = switchyard_tests::workspace_dir();
    let machine = Machine::gather(&workspace, &switchyard, "not used by this run".to_owned());
    let uncommitted =
        switchyard_bench::apiwatch::report::uncommitted_sources(&workspace, &switchyard);
    let outcome = nodeport::run(&config)?;
    let failed = outcome.failed_targets();
    let report = Report::new(machine, uncommitted, Method::of(&config), outcome);
    let out = args.out.unwrap_or_else(|| workspace.join("bench/results"));
    let (md, json) = report.write(&out, args.date.as_deref(), args.tag.as_deref())?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "not every target was measured ({}): see the report's NOT MEASURED section",
            names.join(", ")
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        None => run(cli.run),
        Some(Helper::Keepalive {
            target,
            connections,
            duration,
            timeout,
            expect,
        }) => {
            // One thread: the probe shares its CPU with the pod servers, and
            // a single event loop costs the least per request.
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the runtime")?
                .block_on(keepalive::run(&KeepAliveConfig {
                    target,
                    connections,
                    duration,
                    timeout,
                    expect,
                }))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
    }
}
