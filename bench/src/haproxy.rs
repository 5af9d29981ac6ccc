//! HAProxy as the reference L4 proxy: its configuration and its process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use switchyard_tests::{Netns, Process};

/// How HAProxy is set up for the comparison: `mode tcp`, one thread,
/// round-robin over the pods, no health checks, no logging.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// Where it listens.
    pub bind: SocketAddr,
    /// The pods.
    pub servers: Vec<SocketAddr>,
    /// `maxconn`, global and per frontend: well above what the load opens.
    pub maxconn: u32,
}

impl HaproxyConfig {
    /// The configuration file.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# Written by switchyard-bench (compare). L4 only: mode tcp, one thread,\n\
             # round-robin, no health checks, no logs.\n\
             global\n\
             \x20   nbthread 1\n\
             \x20   maxconn {maxconn}\n\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   no log\n\
             \x20   maxconn {maxconn}\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \n\
             frontend bench\n\
             \x20   bind {bind}\n\
             \x20   default_backend pods\n\
             \n\
             backend pods\n\
             \x20   balance roundrobin\n",
            maxconn = self.maxconn,
            bind = self.bind,
        );
        for (index, server) in self.servers.iter().enumerate() {
            let _ = writeln!(text, "    server pod{index} {server}");
        }
        text
    }
}

/// A `maxconn` that fits this process's open-file limit (which HAProxy
/// inherits and cannot raise without `CAP_SYS_RESOURCE`): HAProxy wants two
/// descriptors per connection plus a few of its own. At most `ceiling`.
pub fn maxconn_for_fd_limit(ceiling: u32) -> u32 {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
        })
        .and_then(|hard| hard.parse::<u64>().ok());
    match hard {
        // "unlimited" or unreadable: trust the ceiling.
        None => ceiling,
        Some(hard) => u32::try_from(hard.saturating_sub(200) / 2)
            .unwrap_or(u32::MAX)
            .clamp(256, ceiling),
    }
}

/// The first line of `haproxy -v`, or a message saying how to install it.
pub fn version() -> Result<String> {
    let output = Command::new("haproxy").arg("-v").output();
    match output {
        Ok(output) if output.status.success() => Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()),
        _ => bail!(
            "haproxy is not installed: run `apt-get update && apt-get install -y haproxy` \
             (`cargo xtask bench` does this) and try again"
        ),
    }
}

/// Writes `config` to `path`, checks it with `haproxy -c`, and starts
/// HAProxy in the foreground in `ns` on CPU `cpu`, logging to `log`.
pub fn start(
    ns: &Netns,
    config: &HaproxyConfig,
    path: &Path,
    log: &Path,
    cpu: usize,
) -> Result<Process> {
    start_rendered(ns, &config.render(), path, log, cpu)
}

/// [`start`] with a configuration already rendered (the L7 benchmark's `mode http` one).
pub fn start_rendered(
    ns: &Netns,
    config: &str,
    path: &Path,
    log: &Path,
    cpu: usize,
) -> Result<Process> {
    std::fs::write(path, config).with_context(|| format!("write {}", path.display()))?;
    let path_arg = path.to_string_lossy();
    let check = ns.exec(["haproxy", "-c", "-q", "-f", &path_arg])?;
    if !check.status.success() {
        bail!(
            "haproxy rejects its configuration {}: {}{}",
            path.display(),
            String::from_utf8_lossy(&check.stderr).trim(),
            String::from_utf8_lossy(&check.stdout).trim()
        );
    }
    let cpu = cpu.to_string();
    // `-db`: stay in the foreground, so the guard's PID is HAProxy's.
    ns.spawn(
        ["taskset", "-c", &cpu, "haproxy", "-db", "-f", &path_arg],
        log,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_server_without_checks() {
        let config = HaproxyConfig {
            bind: "10.0.0.1:8081".parse().expect("addr"),
            servers: vec![
                "10.244.0.10:8080".parse().expect("addr"),
                "10.244.0.11:8080".parse().expect("addr"),
            ],
            maxconn: 1000,
        };
        let text = config.render();
        assert!(text.contains("    bind 10.0.0.1:8081\n"), "{text}");
        assert!(text.contains("    nbthread 1\n"), "{text}");
        assert!(text.contains("    balance roundrobin\n"), "{text}");
        assert!(
            text.ends_with("    server pod0 10.244.0.10:8080\n    server pod1 10.244.0.11:8080\n"),
            "{text}"
        );
        assert!(
            !text
                .lines()
                .any(|line| line.trim_start().starts_with("server") && line.contains("check")),
            "{text}"
        );
    }
}
