//! Debian packages the commands need, installed when a command they provide is missing.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// A command and the Debian package that provides it.
pub struct Need {
    pub command: &'static str,
    pub package: &'static str,
}

const fn need(command: &'static str, package: &'static str) -> Need {
    Need { command, package }
}

/// What the demo runs: `ip` and `sysctl` for namespaces, curl and python3 as clients.
pub const DEMO: [Need; 4] = [
    need("ip", "iproute2"),
    need("sysctl", "procps"),
    need("curl", "curl"),
    need("python3", "python3"),
];
/// What the tests run.
pub const TEST: [Need; 4] = DEMO;
/// What the benchmarks run: also `HAProxy` and `taskset`.
pub const BENCH: [Need; 6] = [
    need("ip", "iproute2"),
    need("sysctl", "procps"),
    need("curl", "curl"),
    need("python3", "python3"),
    need("haproxy", "haproxy"),
    need("taskset", "util-linux"),
];

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the packages of every missing command, with one `apt-get update` first.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|n| !have(n.command))
        .map(|n| n.package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    crate::step(&format!(
        "installing missing Debian packages: {}",
        missing.join(" ")
    ));
    let update = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .context("cannot run apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get install")?;
    if !install.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
