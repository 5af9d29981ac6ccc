//! Debian packages the commands need, installed when what they provide is missing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Something a package provides: a command on PATH, or a file.
pub enum Provides {
    Command(&'static str),
    File(&'static str),
}

/// What must be there, and the Debian package that provides it.
pub struct Need {
    pub provides: Provides,
    pub package: &'static str,
}

const fn command(name: &'static str, package: &'static str) -> Need {
    Need {
        provides: Provides::Command(name),
        package,
    }
}

const fn file(path: &'static str, package: &'static str) -> Need {
    Need {
        provides: Provides::File(path),
        package,
    }
}

/// What building switchyard needs: clang-19 and libbpf's headers compile the BPF programs.
pub const BUILD: [Need; 4] = [
    command("clang-19", "clang-19"),
    command("llvm-strip-19", "llvm-19"),
    file("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    command("bpftool", "bpftool"),
];

/// What the demo and the tests run: `ip` and `sysctl` for namespaces, `ethtool` for the XDP
/// test's offloads, curl, h2load and python3 as clients, kubectl against the API server
/// (Debian's `kubernetes-client` when no kubectl is on PATH).
pub const RUN: [Need; 7] = [
    command("ip", "iproute2"),
    command("h2load", "nghttp2-client"),
    command("sysctl", "procps"),
    command("ethtool", "ethtool"),
    command("curl", "curl"),
    command("python3", "python3"),
    command("kubectl", "kubernetes-client"),
];

/// What the benchmarks run besides: `HAProxy`, nginx and wrk (the L7 anchors), `taskset`,
/// `iptables` and `nft`.
pub const BENCH: [Need; 6] = [
    command("haproxy", "haproxy"),
    command("nginx", "nginx-light"),
    command("wrk", "wrk"),
    command("taskset", "util-linux"),
    command("iptables-restore", "iptables"),
    command("nft", "nftables"),
];

fn present(need: &Need) -> bool {
    match need.provides {
        Provides::File(path) => Path::new(path).exists(),
        Provides::Command(name) => Command::new("sh")
            .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Installs the packages of everything missing, with one `apt-get update` first.
pub fn ensure(needs: &[&[Need]]) -> Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .flat_map(|n| n.iter())
        .filter(|n| !present(n))
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
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
