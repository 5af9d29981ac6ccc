//! `cargo xtask`: the project's commands.
//!
//! - `cargo xtask run`: builds switchyard, installs missing Debian packages, brings up a demo
//!   node with three pods in network namespaces, starts the daemon on `examples/demo/` and
//!   shows traffic being balanced (then keeps it up until Ctrl-C, or exits with `--once`).
//! - `cargo xtask test`: installs what the tests need, builds, and runs every test (unit tests
//!   and the end-to-end tests, which need root).
//! - `cargo xtask lint`: `cargo fmt --check` and clippy with warnings denied.
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: the cargo-fuzz targets of `fuzz/`, each for
//!   a given time (nightly toolchain).
//! - `cargo xtask bench`: the criterion model benchmark, the comparison against `HAProxy`, the
//!   socket-LB, API-watch, `NodePort` and L7 benchmarks.
//! - `cargo xtask soak --minutes N`: the churn soak (1,000 Services, 50 endpoint changes/s,
//!   clients connecting throughout), results in `bench/results/`. Not part of `bench`: it is long.

mod demo;
mod fuzz;
mod packages;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "switchyard's build, demo, test and benchmark commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build, set up a demo node in network namespaces and show switchyard balancing traffic.
    Run {
        /// Exit after the demo instead of keeping it up until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Use the userspace datapath instead of eBPF.
        #[arg(long)]
        userspace: bool,
    },
    /// Run every test: unit tests and end-to-end tests (as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and clippy (warnings are errors).
    Lint,
    /// The demo itself, run by `run` with the release binaries in its environment.
    #[command(name = "__demo", hide = true)]
    Demo,
    /// Run the fuzz targets of fuzz/ (manifest, model, `http_request`), each for a given time,
    /// growing and minimizing their corpora.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Which targets (default: all).
        targets: Vec<String>,
    },
    /// Run the benchmarks and write their results to bench/results/.
    Bench {
        /// Length of each comparison measurement.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// The churn soak: endpoints changing at 50/s over 1,000 Services while clients connect;
    /// failed connections, programming latency and the daemon's memory, to bench/results/.
    Soak {
        /// Minutes of churn.
        #[arg(long, default_value = "30")]
        minutes: String,
        /// Extra arguments for the soak binary (e.g. `--services 200`), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    // Taken first: a rebuild of xtask while it runs would leave /proc/self/exe "(deleted)".
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Run { once, userspace } => {
            require_root("the demo creates network namespaces")?;
            packages::ensure(&[&packages::BUILD, &packages::RUN])?;
            step("building switchyard (release)");
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "switchyard-control",
                    "-p",
                    "switchyard-tests",
                    "--bins",
                ],
            )?;
            demo::run(&exe, &root, once, userspace)
        }
        Task::Demo => demo::inner(),
        Task::Test { args } => {
            require_root("the end-to-end tests create network namespaces")?;
            packages::ensure(&[&packages::BUILD, &packages::RUN])?;
            step("building the binaries the end-to-end tests run");
            cargo(&root, &["build", "--workspace", "--bins"])?;
            step("running every test");
            let mut test_args = vec!["test", "--workspace", "--no-fail-fast"];
            if !args.is_empty() {
                test_args.push("--");
                test_args.extend(args.iter().map(String::as_str));
            }
            let bin = root.join("target/debug/switchyard");
            let status = Command::new(cargo_bin())
                .args(&test_args)
                .current_dir(&root)
                .env("SWITCHYARD_BIN", &bin)
                .env("POD_SERVER_BIN", root.join("target/debug/pod-server"))
                .status()
                .context("cannot run cargo test")?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
        Task::Lint => {
            packages::ensure(&[&packages::BUILD])?;
            step("cargo fmt --check");
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            step("cargo clippy (clippy::all denied)");
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "clippy::all",
                    "-D",
                    "rust_2018_idioms",
                ],
            )
        }
        Task::Fuzz { seconds, targets } => fuzz::run(&root, &targets, seconds),
        Task::Bench { duration } => {
            require_root("the comparison benchmark creates network namespaces")?;
            packages::ensure(&[&packages::BUILD, &packages::RUN, &packages::BENCH])?;
            step("criterion: the model at 10,000 Services");
            cargo(
                &root,
                &["bench", "-p", "switchyard-control", "--bench", "model"],
            )?;
            step("building for the comparison (release)");
            cargo(&root, &["build", "--release", "--workspace", "--bins"])?;
            step("comparison: switchyard userspace L4 against HAProxy and a direct connection");
            let status = Command::new(root.join("target/release/compare"))
                .args(["--duration", &duration, "--out"])
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
                .status()
                .context("cannot run the comparison benchmark")?;
            if !status.success() {
                bail!("the comparison benchmark failed");
            }
            step(
                "socket-level LB: switchyard eBPF against kube-proxy's iptables and nftables rule shapes",
            );
            let status = Command::new(root.join("target/release/socketlb"))
                .args(["--no-build", "--out"])
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
                .status()
                .context("cannot run the socket-LB benchmark")?;
            if !status.success() {
                bail!("the socket-LB benchmark failed");
            }
            step(
                "the Kubernetes watch path: 10,000 Services x 10 Pods through the API server, then one-Pod changes",
            );
            let status = Command::new(root.join("target/release/apiwatch"))
                .arg("--out")
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
                .status()
                .context("cannot run the API watch benchmark")?;
            if !status.success() {
                bail!("the API watch benchmark failed");
            }
            step(
                "the first full sync: 10,000 Services x 3 endpoints from process start, against kube-proxy's rule shapes loaded from empty",
            );
            let status = Command::new(root.join("target/release/firstsync"))
                .arg("--out")
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .status()
                .context("cannot run the first-sync benchmark")?;
            if !status.success() {
                bail!("the first-sync benchmark failed");
            }
            step(
                "NodePort from outside to a pod on another node: switchyard's tc eBPF datapath against kube-proxy's iptables rules and a direct connection",
            );
            let status = Command::new(root.join("target/release/nodeport"))
                .args(["--no-build", "--out"])
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
                .status()
                .context("cannot run the NodePort benchmark")?;
            if !status.success() {
                bail!("the NodePort benchmark failed");
            }
            step(
                "L7: switchyard's HTTP proxy against nginx and HAProxy with wrk (HTTP/1.1) and h2load (h2c)",
            );
            let status = Command::new(root.join("target/release/l7"))
                .args(["--no-build", "--out"])
                .arg(root.join("bench/results"))
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .status()
                .context("cannot run the L7 benchmark")?;
            if !status.success() {
                bail!("the L7 benchmark failed");
            }
            Ok(())
        }
        Task::Soak { minutes, args } => {
            require_root("the soak creates network namespaces")?;
            packages::ensure(&[&packages::BUILD, &packages::RUN])?;
            step("building for the soak (release)");
            cargo(&root, &["build", "--release", "--workspace", "--bins"])?;
            step(&format!(
                "churn soak: 1,000 Services, 50 endpoint changes/s, {minutes} min"
            ));
            let status = Command::new(root.join("target/release/soak"))
                .args(["--minutes", &minutes, "--out"])
                .arg(root.join("bench/results"))
                .args(&args)
                .current_dir(&root)
                .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
                .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
                .status()
                .context("cannot run the soak")?;
            if !status.success() {
                bail!("the soak failed");
            }
            Ok(())
        }
    }
}

/// Prints what is being done, so a long step is never silent.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_bin())
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn require_root(why: &str) -> Result<()> {
    if !nix_is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // The effective uid, read without a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
