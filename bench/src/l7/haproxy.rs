//! HAProxy as an L7 proxy (`mode http`): its configuration and its process.
//! The L4 setup of `compare` is [`crate::haproxy`]; this one shares its
//! version check and descriptor limit, not its configuration.
//!
//! It speaks HTTP/1.1 to the pods (servers without `proto h2`), like nginx,
//! with idle server connections shared between clients (`http-reuse
//! always`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use switchyard_tests::{Netns, Process};

/// How HAProxy is set up for the L7 comparison: `mode http`, one thread,
/// round-robin per request, no health checks, no logging.
#[derive(Clone, Debug)]
pub struct HaproxyHttpConfig {
    /// The HTTP/1.1 frontend.
    pub bind_http1: SocketAddr,
    /// The HTTP/2 frontend (`proto h2`: h2c with prior knowledge).
    pub bind_h2c: SocketAddr,
    /// The pods.
    pub servers: Vec<SocketAddr>,
    /// `maxconn`, global and per frontend.
    pub maxconn: u32,
}

impl HaproxyHttpConfig {
    /// The configuration file.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# Written by switchyard-bench (l7): mode http, one thread, round-robin,\n\
             # server connections reused, no health checks, no logs.\n\
             global\n\
             \x20   nbthread 1\n\
             \x20   maxconn {maxconn}\n\
             \n\
             defaults\n\
             \x20   mode http\n\
             \x20   no log\n\
             \x20   maxconn {maxconn}\n\
             \x20   option http-keep-alive\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   timeout http-keep-alive 60s\n\
             \n\
             frontend http1\n\
             \x20   bind {http1}\n\
             \x20   default_backend pods\n\
             \n\
             frontend h2c\n\
             \x20   bind {h2c} proto h2\n\
             \x20   default_backend pods\n\
             \n\
             backend pods\n\
             \x20   balance roundrobin\n\
             \x20   http-reuse always\n",
            maxconn = self.maxconn,
            http1 = self.bind_http1,
            h2c = self.bind_h2c,
        );
        for (index, server) in self.servers.iter().enumerate() {
            let _ = writeln!(text, "    server pod{index} {server}");
        }
        text
    }
}

/// Writes `config` to `path`, checks it with `haproxy -c`, and starts
/// HAProxy in the foreground (`-db`) in `ns` on CPU `cpu`, logging to `log`.
pub fn start(
    ns: &Netns,
    config: &HaproxyHttpConfig,
    path: &Path,
    log: &Path,
    cpu: usize,
) -> Result<Process> {
    crate::haproxy::start_rendered(ns, &config.render(), path, log, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_http_mode_with_both_frontends_and_reuse() {
        let config = HaproxyHttpConfig {
            bind_http1: "10.0.0.1:8084".parse().expect("addr"),
            bind_h2c: "10.0.0.1:8085".parse().expect("addr"),
            servers: vec![
                "10.244.0.10:8080".parse().expect("addr"),
                "10.244.0.11:8080".parse().expect("addr"),
            ],
            maxconn: 1000,
        };
        let text = config.render();
        for line in [
            "mode http",
            "nbthread 1",
            "bind 10.0.0.1:8084",
            "bind 10.0.0.1:8085 proto h2",
            "balance roundrobin",
            "http-reuse always",
            "server pod0 10.244.0.10:8080",
            "server pod1 10.244.0.11:8080",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "{line}:\n{text}");
        }
        assert!(
            !text
                .lines()
                .any(|line| line.trim_start().starts_with("server") && line.contains("check")),
            "{text}"
        );
    }
}
