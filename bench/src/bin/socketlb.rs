//! `socketlb`: switchyard's eBPF socket-level load balancing against
//! kube-proxy's iptables and nftables rule shapes, at 10 to 50,000
//! Services: connection setup through a `ClusterIP`, and the time to program
//! and change the rules. Needs root. Writes `<out>/<date>-socketlb.md` and
//! `.json`. See `bench/README.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use switchyard_bench::binaries;
use switchyard_bench::cluster::Cluster;
use switchyard_bench::kube_proxy::{iptables, nftables};
use switchyard_bench::machine::Machine;
use switchyard_bench::rule_loader::Backend;
use switchyard_bench::socketlb::control_plane::ControlTargets;
use switchyard_bench::socketlb::report::{Method, Report, Versions};
use switchyard_bench::socketlb::targets::Target;
use switchyard_bench::socketlb::{self, RunConfig};

#[derive(Debug, Parser)]
#[command(
    about = "Measure switchyard's eBPF socket LB against kube-proxy's iptables and nftables rule shapes"
)]
struct Args {
    /// Cluster sizes (Services) for the connection measurements.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,50000")]
    sizes: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// kube-proxy's --cluster-cidr for its rule shapes. The default holds the
    /// clients (10.0.*), so they count as pods and are not masqueraded; with
    /// 10.224.0.0/11 they count as host-network processes and are.
    #[arg(long, default_value = switchyard_bench::cluster::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// Where the dated report goes (default: `bench/results` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Targets of the connection measurements, in round order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,switchyard-ebpf,kube-proxy-iptables-legacy,kube-proxy-iptables-nft,kube-proxy-nftables"
    )]
    targets: Vec<String>,
    /// One measurement window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Unrecorded warm-up per target and size.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Idle time before each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pause: Duration,
    /// Rounds per size; the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    repeats: u16,
    /// Concurrent connections of the load generator for the rate.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Concurrent connections of the latency runs (0: none): with one, a
    /// connection's latency is the path's own cost, not a queue.
    #[arg(long, default_value_t = 1)]
    latency_workers: usize,
    /// Cap on the requests one load run may start.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Wait before a run while some CPU was busier than this (percent).
    #[arg(long, default_value_t = 25.0)]
    quiet_threshold: f64,
    /// The longest wait for a quiet machine.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    quiet_wait: Duration,
    /// The CPU of the daemon and the rule loaders.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// The CPU of the load generator and the pod servers.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Services of the control-plane measurements.
    #[arg(long, default_value_t = 10_000)]
    control_services: usize,
    /// One-endpoint changes per control-plane method.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// The longest series of changes per method.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    change_time_limit: Duration,
    /// Loads from empty per kube-proxy shape.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    control_repeats: u16,
    /// Changes written through manifest files to the running daemon at the
    /// size equal to --control-services (0: none).
    #[arg(long, default_value_t = 100)]
    manifest_changes: usize,
    /// A rule load (iptables-restore, nft -f) slower than this is killed and
    /// its target reported as not measured at that size.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    load_timeout: Duration,
    /// Added to the report's file name: `<date>-socketlb-<tag>.md`.
    #[arg(long)]
    tag: Option<String>,
    /// Skip the connection measurements.
    #[arg(long)]
    skip_datapath: bool,
    /// Skip the control-plane measurements.
    #[arg(long)]
    skip_control: bool,
    /// The switchyard binary (default: `switchyard` beside this program).
    #[arg(long, env = "SWITCHYARD_BIN")]
    switchyard_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the programs the run starts.
    #[arg(long)]
    no_build: bool,
    /// Print kube-proxy's rules for a cluster of --control-services Services
    /// (`iptables` or `nftables`) and exit.
    #[arg(long, value_name = "SHAPE")]
    print_rules: Option<String>,
}

fn cargo_build(package: &str, bin: &str, features: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(switchyard_tests::workspace_dir())
        .args(["build", "-j2", "-p", package, "--bin", bin]);
    for feature in features {
        command.args(["--features", feature]);
    }
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("building {bin}: {command:?}");
    let status = command.status().context("run cargo")?;
    if !status.success() {
        bail!("building {bin} failed ({status})");
    }
    Ok(())
}

/// `switchyard run --help`'s line about the eBPF mode, or why it has none.
fn ebpf_mode(bin: &Path) -> Result<String, String> {
    let output = Command::new(bin)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&output.stdout);
    help.lines()
        .find(|line| line.contains("ebpf"))
        .map(|line| line.trim().to_owned())
        .ok_or_else(|| {
            format!(
                "{} has no eBPF mode (`run --help` never mentions ebpf)",
                bin.display()
            )
        })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(shape) = &args.print_rules {
        let pods = (10..13)
            .map(|o| std::net::Ipv4Addr::new(10, 244, 0, o))
            .collect();
        let mut cluster = Cluster::new(args.control_services, args.endpoints, pods);
        cluster.cluster_cidr.clone_from(&args.cluster_cidr);
        match shape.as_str() {
            "iptables" => print!(
                "{}{}",
                iptables::hooks(),
                iptables::restore_input(&cluster, iptables::Sync::Full)
            ),
            "nftables" => print!(
                "{}",
                nftables::transaction(&cluster, &nftables::Sync::Initial)
            ),
            other => bail!("--print-rules takes iptables or nftables, not {other}"),
        }
        return Ok(());
    }
    if args.proxy_cpu == args.load_cpu {
        bail!("--proxy-cpu and --load-cpu must differ");
    }
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|name| Target::parse(name).with_context(|| format!("unknown target {name}")))
        .collect::<Result<_>>()?;
    let dir = binaries::bin_dir()?;
    let mut build_notes: Vec<String> = Vec::new();
    if !args.no_build {
        cargo_build("switchyard-bench", "loadgen", &[])?;
        cargo_build("switchyard-tests", "pod-server", &[])?;
        if args.switchyard_bin.is_none()
            && let Err(error) = cargo_build("switchyard-control", "switchyard", &[])
        {
            build_notes.push(format!("{error:#}"));
        }
        if let Err(error) = cargo_build("switchyard-bench", "socketlb-control", &["control"]) {
            build_notes.push(format!("{error:#}"));
        }
    }
    let switchyard = args
        .switchyard_bin
        .clone()
        .unwrap_or_else(|| dir.join("switchyard"));
    let switchyard = std::fs::canonicalize(&switchyard).ok();
    if let Some(bin) = &switchyard {
        // The child needs no build: done here already, or not asked for.
        binaries::reexec_with_switchyard_bin(
            bin,
            if args.no_build { &[] } else { &["--no-build"] },
        )?;
    }
    switchyard_bench::reaper::install(switchyard.clone())?;
    let loadgen = dir.join("loadgen");
    binaries::require(&loadgen, "the loadgen binary")?;
    binaries::require(&dir.join("pod-server"), "the pod-server binary")?;
    let (switchyard_bin, switchyard_missing, ebpf_line) = match &switchyard {
        None => {
            let why = format!("no switchyard binary ({})", build_notes.join("; "));
            (None, Some(why.clone()), why)
        }
        Some(bin) => match ebpf_mode(bin) {
            Ok(line) => (Some(bin.clone()), None, line),
            Err(why) => (None, Some(why.clone()), why),
        },
    };
    let driver = dir.join("socketlb-control");
    let control_driver = driver.is_file().then_some(driver);
    let config = RunConfig {
        loadgen,
        // `switchyard cleanup` needs the binary even when its eBPF mode is
        // not measured.
        switchyard_bin: switchyard_bin.clone(),
        switchyard_missing,
        control_driver: if switchyard_bin.is_some() {
            control_driver
        } else {
            None
        },
        sizes: args.sizes.clone(),
        endpoints: args.endpoints,
        cluster_cidr: args.cluster_cidr.clone(),
        targets,
        duration: args.duration,
        warmup: args.warmup,
        pause: args.pause,
        quiet_threshold: args.quiet_threshold / 100.0,
        quiet_wait: args.quiet_wait,
        repeats: usize::from(args.repeats),
        workers: args.workers,
        latency_workers: args.latency_workers,
        max_requests: args.max_requests,
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
        control_services: args.control_services,
        changes: args.changes,
        change_time_limit: args.change_time_limit,
        control_repeats: usize::from(args.control_repeats),
        control_targets: ControlTargets {
            switchyard: true,
            backends: vec![
                Backend::IptablesLegacy,
                Backend::IptablesNft,
                Backend::Nftables,
            ],
        },
        manifest_changes: args.manifest_changes,
        load_timeout: args.load_timeout,
        skip_datapath: args.skip_datapath,
        skip_control: args.skip_control,
    };
    let machine = Machine::gather(
        &switchyard_tests::workspace_dir(),
        switchyard.as_deref().unwrap_or(Path::new("none")),
        "not used by this run".to_owned(),
    );
    let versions = Versions::gather();
    let outcome = socketlb::run(&config)?;
    let report = Report::new(machine, versions, ebpf_line, Method::of(&config), outcome);
    let out = args
        .out
        .unwrap_or_else(|| switchyard_tests::workspace_dir().join("bench/results"));
    let (md, json) = report.write(&out, args.tag.as_deref())?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
