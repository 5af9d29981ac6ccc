//! nginx as the reference L7 proxy: its configuration and its processes.
//!
//! One master and one worker (`worker_processes 1`), both in the node
//! namespace on the proxy CPU; `proxy_pass` to an `upstream` of the pods with
//! a pool of kept-alive upstream connections. nginx always speaks HTTP/1.1
//! to an upstream (it has no HTTP/2 client for `proxy_pass`), whatever the
//! client spoke.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard_tests::{Netns, Process, poll_until};

/// How nginx is set up.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// The HTTP/1.1 listener.
    pub listen_http1: SocketAddr,
    /// The HTTP/2 listener (`listen ... http2`: h2c with prior knowledge
    /// only, nginx 1.22 has no detection of the preface on one port).
    pub listen_h2c: SocketAddr,
    /// The pods.
    pub servers: Vec<SocketAddr>,
    /// `keepalive` of the upstream: idle connections to the pods kept per
    /// worker.
    pub upstream_keepalive: usize,
    /// `worker_connections`.
    pub worker_connections: usize,
    /// `keepalive_requests`, for clients and for the upstream pool. nginx's
    /// default (1000) closes a kept-alive connection after that many
    /// requests; neither HAProxy nor switchyard does, and h2load does not
    /// reconnect after the GOAWAY, so the benchmark raises it.
    pub keepalive_requests: u64,
    /// The folder of its pid file, logs and temporary files.
    pub prefix: PathBuf,
}

impl NginxConfig {
    /// The configuration file.
    pub fn render(&self) -> String {
        let prefix = self.prefix.display();
        let mut upstream = String::new();
        for server in &self.servers {
            let _ = writeln!(upstream, "        server {server};");
        }
        format!(
            "# Written by switchyard-bench (l7): one worker, proxy_pass to the pods with\n\
             # upstream keep-alive, no access log.\n\
             worker_processes 1;\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\n\
             \n\
             events {{\n\
             \x20   worker_connections {worker_connections};\n\
             }}\n\
             \n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   keepalive_requests {keepalive_requests};\n\
             \x20   client_body_temp_path {prefix}/client_body;\n\
             \x20   proxy_temp_path {prefix}/proxy;\n\
             \x20   fastcgi_temp_path {prefix}/fastcgi;\n\
             \x20   uwsgi_temp_path {prefix}/uwsgi;\n\
             \x20   scgi_temp_path {prefix}/scgi;\n\
             \n\
             \x20   upstream pods {{\n\
             {upstream}\
             \x20       keepalive {keepalive};\n\
             \x20       keepalive_requests {keepalive_requests};\n\
             \x20   }}\n\
             \n\
             \x20   server {{\n\
             \x20       listen {http1};\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://pods;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20       }}\n\
             \x20   }}\n\
             \n\
             \x20   server {{\n\
             \x20       listen {h2c} http2;\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://pods;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            worker_connections = self.worker_connections,
            keepalive_requests = self.keepalive_requests,
            keepalive = self.upstream_keepalive,
            http1 = self.listen_http1,
            h2c = self.listen_h2c,
        )
    }
}

/// The first line of `nginx -v` (which prints to stderr).
pub fn version() -> Result<String> {
    let output = Command::new("nginx")
        .arg("-v")
        .output()
        .context("run `nginx -v` (Debian package nginx-light)")?;
    let text = String::from_utf8_lossy(&output.stderr);
    Ok(text
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("nginx version: ")
        .to_owned())
}

/// A running nginx: the master (whose guard kills it) and the worker it
/// forked. Dropping it stops the master (SIGTERM: a fast shutdown that takes
/// the worker with it) and then kills, by PID, any worker still there.
#[derive(Debug)]
pub struct Nginx {
    workers: Vec<u32>,
    master: Process,
}

impl Nginx {
    /// The master's PID.
    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// Master first, then the workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master.pid()];
        pids.extend(&self.workers);
        pids
    }

    /// Its exit status, if the master has exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.master.try_wait()
    }

    /// The error log and what the master printed.
    pub fn log(&self, prefix: &Path) -> String {
        format!(
            "{}{}",
            self.master.log(),
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(error) = self.master.terminate(Duration::from_secs(5)) {
            eprintln!("stopping nginx (pid {}): {error:#}", self.master.pid());
        }
        for &worker in &self.workers {
            // Only if it is still the worker we saw: an nginx process whose
            // parent is gone (re-parented) or still the master.
            if (is_nginx_child_of(worker, self.master.pid()) || is_nginx_child_of(worker, 1))
                && let Ok(pid) = i32::try_from(worker)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Writes `config` to `<prefix>/nginx.conf`, checks it with `nginx -t`, and
/// starts nginx in the foreground (`daemon off`) in `ns` on CPU `cpu`;
/// returns once the worker is up.
pub fn start(ns: &Netns, config: &NginxConfig, cpu: usize) -> Result<Nginx> {
    let prefix = &config.prefix;
    std::fs::create_dir_all(prefix).with_context(|| format!("create {}", prefix.display()))?;
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config.render()).with_context(|| format!("write {}", path.display()))?;
    let conf = path.to_string_lossy().into_owned();
    let prefix_arg = format!("{}/", prefix.display());
    let error_log = prefix.join("error.log").to_string_lossy().into_owned();
    let base = [
        "nginx",
        "-c",
        conf.as_str(),
        "-p",
        prefix_arg.as_str(),
        "-e",
        error_log.as_str(),
    ];
    let mut check: Vec<&str> = base.to_vec();
    check.push("-t");
    let output = ns.exec(&check)?;
    if !output.status.success() {
        bail!(
            "nginx rejects its configuration {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let cpu = cpu.to_string();
    let mut argv: Vec<&str> = vec!["taskset", "-c", &cpu];
    argv.extend(base);
    argv.extend(["-g", "daemon off;"]);
    let mut master = ns.spawn(&argv, &prefix.join("nginx.out"))?;
    // `ip netns exec` and `taskset` exec, so the PID is the master's.
    let master_pid = master.pid();
    let prefix_for_log = prefix.clone();
    let workers = poll_until("nginx's worker", Duration::from_secs(10), || {
        if let Some(status) = master.try_wait()? {
            bail!(
                "nginx exited ({status}): {}{}",
                master.log(),
                std::fs::read_to_string(prefix_for_log.join("error.log")).unwrap_or_default()
            );
        }
        let workers = nginx_children(master_pid);
        Ok((!workers.is_empty()).then_some(workers))
    })?;
    Ok(Nginx { workers, master })
}

/// The PIDs of the `nginx` processes whose parent is `parent`.
fn nginx_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| is_nginx_child_of(pid, parent))
        .collect();
    children.sort_unstable();
    children
}

fn is_nginx_child_of(pid: u32, parent: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    field("Name:") == Some("nginx") && field("PPid:") == Some(parent.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_upstream_connections_alive() {
        let config = NginxConfig {
            listen_http1: "10.0.0.1:8082".parse().expect("addr"),
            listen_h2c: "10.0.0.1:8083".parse().expect("addr"),
            servers: vec![
                "10.244.0.10:8080".parse().expect("addr"),
                "10.244.0.11:8080".parse().expect("addr"),
            ],
            upstream_keepalive: 64,
            worker_connections: 4096,
            keepalive_requests: 1_000_000,
            prefix: "/tmp/x".into(),
        };
        let text = config.render();
        for line in [
            "worker_processes 1;",
            "access_log off;",
            "server 10.244.0.10:8080;",
            "server 10.244.0.11:8080;",
            "keepalive 64;",
            "keepalive_requests 1000000;",
            "listen 10.0.0.1:8082;",
            "listen 10.0.0.1:8083 http2;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "{line}:\n{text}");
        }
        // Both listeners proxy to the pool.
        assert_eq!(text.matches("proxy_pass http://pods;").count(), 2, "{text}");
    }
}
