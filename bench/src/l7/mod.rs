//! The L7 comparison (binary `l7`): switchyard's HTTP proxy against nginx
//! (`proxy_pass` with upstream keep-alive) and HAProxy (`mode http`), and
//! against a direct connection to one backend, under HTTP/1.1 keep-alive
//! (`wrk`) and HTTP/2 cleartext (`h2load`) with small responses: requests
//! per second, p99 latency, the proxy's CPU time and its peak memory.
//!
//! What it owns: the backend every proxy talks to ([`backend`], binary
//! `l7-backend`), nginx's and HAProxy's HTTP setups ([`nginx`],
//! [`haproxy`]), running and parsing the load tools ([`load`]), a proxy's
//! memory ([`memory`]), the run itself ([`suite`]) and its dated report
//! ([`report`]).
//!
//! What it never does: pass or fail, or send traffic anywhere but the
//! namespaces it created through `switchyard-tests`.

pub mod backend;
pub mod haproxy;
pub mod load;
pub mod memory;
pub mod nginx;
pub mod report;
pub mod suite;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::machine::Machine;
use report::{Method, Report, Tools};
use suite::L7Config;

/// What the run needs besides its configuration.
#[derive(Clone, Debug)]
pub struct RunPaths {
    /// The switchyard binary measured (which `$SWITCHYARD_BIN` must name:
    /// the topology library starts it from there).
    pub switchyard_bin: PathBuf,
    /// Where the report goes.
    pub out_dir: PathBuf,
    /// The date in the report's name, if not today's (UTC).
    pub date: Option<String>,
}

/// Checks the tools, runs the comparison described by `config` and writes
/// the report. Returns it and the paths of its Markdown and JSON files.
pub fn run(config: &L7Config, paths: &RunPaths) -> Result<(Report, PathBuf, PathBuf)> {
    load::require_tools()?;
    let tools = Tools {
        nginx: nginx::version()?,
        wrk: first_line("wrk", &["-v"]),
        h2load: first_line("h2load", &["--version"]),
    };
    let haproxy = crate::haproxy::version()?;
    let mut machine = Machine::gather(
        &switchyard_tests::workspace_dir(),
        &paths.switchyard_bin,
        haproxy,
    );
    if let Some(date) = &paths.date {
        date.clone_into(&mut machine.date);
    }
    let binary_note = binary_older_than_sources(&paths.switchyard_bin);
    if let Some(note) = &binary_note {
        eprintln!("warning: {note}");
    }
    let outcome = suite::run(config)?;
    let mut report = Report::new(machine, tools, Method::of(config), outcome);
    report.switchyard_binary_note = binary_note;
    let (md, json) = report.write(&paths.out_dir)?;
    Ok((report, md, json))
}

/// A warning when the switchyard binary was built before the last commit
/// that touched `proxy/` or `control/`: the report's commit line then names
/// a commit the binary may not contain (cargo builds from the working tree,
/// and both crates change while the benchmark runs).
fn binary_older_than_sources(bin: &Path) -> Option<String> {
    let built = std::fs::metadata(bin)
        .and_then(|meta| meta.modified())
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let workspace = switchyard_tests::workspace_dir();
    let dir = workspace.to_string_lossy();
    let safe = format!("safe.directory={dir}");
    let mut git = Command::new("git");
    git.args(["-c", &safe, "-C", &dir]);
    git.args(["log", "-1", "--format=%ct %h", "--", "proxy", "control"]);
    let output = git.output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (time, commit) = text.trim().split_once(' ')?;
    let committed: u64 = time.parse().ok()?;
    (committed > built).then(|| {
        format!(
            "the switchyard binary {} was built {} s before commit {commit} changed proxy/ or \
             control/: it may not contain that commit (rebuild, or drop --no-build)",
            bin.display(),
            committed - built
        )
    })
}

/// The first line `program args` prints on stdout, whatever its exit
/// status (`wrk -v` prints its version, then its usage, and exits 1).
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(error) => format!("unknown ({program}: {error})"),
    }
}

/// Builds, with the profile of this binary, what the run starts:
/// `l7-backend` (this crate) and, unless the caller brings its own,
/// `switchyard` (switchyard-control); one package per cargo call, as
/// [`crate::binaries::build`] explains. Cargo makes this a no-op when
/// nothing changed.
pub fn build(with_switchyard: bool, jobs: usize) -> Result<()> {
    let mut packages = vec![("switchyard-bench", "l7-backend")];
    if with_switchyard {
        packages.push(("switchyard-control", "switchyard"));
    }
    crate::binaries::build_bins(&packages, jobs)
}

/// Fails unless `path` is a file, saying how to make it.
pub fn require(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{what} not found at {}: build it (`cargo build --release -p switchyard-bench --bin l7-backend`, `cargo build --release -p switchyard-control --bin switchyard`) or drop --no-build",
            path.display()
        );
    }
    Ok(())
}
