//! Facts about the machine and the software measured, for the report.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Where and what was measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// CPUs online (`nproc --all`).
    pub cpus: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The day of the run, UTC (`YYYY-MM-DD`).
    pub date: String,
    /// When the run started, UTC.
    pub started: String,
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// The workspace's `git rev-parse HEAD`.
    pub switchyard_commit: String,
    /// Uncommitted changes under `control/` and `proxy/` at the time of the
    /// run (the binary may include them).
    pub switchyard_uncommitted: Vec<String>,
    /// The switchyard binary measured.
    pub switchyard_binary: String,
    /// When that binary was built (its mtime, UTC).
    pub switchyard_built: String,
    /// The cargo profile of the benchmark binaries (`release` or `debug`).
    pub profile: String,
}

/// Runs a command and returns its trimmed stdout, or `unknown (why)`.
fn output_of(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => format!(
            "unknown ({program} {}: {})",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("unknown ({program}: {error})"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The git commands run as root on a checkout owned by someone else: allow
/// that one folder for this one command.
fn git(workspace: &Path, args: &[&str]) -> String {
    let dir = workspace.to_string_lossy();
    let safe = format!("safe.directory={dir}");
    let mut argv = vec!["-c", safe.as_str(), "-C", &dir];
    argv.extend_from_slice(args);
    output_of("git", &argv)
}

impl Machine {
    /// Gathers the facts now.
    pub fn gather(workspace: &Path, switchyard_bin: &Path, haproxy: String) -> Self {
        let bin = switchyard_bin.to_string_lossy().into_owned();
        let uncommitted = git(
            workspace,
            &["status", "--porcelain", "--", "control", "proxy"],
        );
        Self {
            kernel: output_of("uname", &["-r"]),
            cpus: output_of("nproc", &["--all"]),
            cpu_model: cpu_model(),
            date: output_of("date", &["-u", "+%Y-%m-%d"]),
            started: output_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            haproxy,
            switchyard_commit: git(workspace, &["rev-parse", "HEAD"]),
            switchyard_uncommitted: uncommitted
                .lines()
                .map(|line| line.trim().to_owned())
                .filter(|line| !line.is_empty())
                .collect(),
            switchyard_built: output_of("date", &["-u", "-r", &bin, "+%Y-%m-%dT%H:%M:%SZ"]),
            switchyard_binary: bin,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
        }
    }
}
