//! The real `switchyard` binary, run inside a node namespace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, Process};
use crate::poll::poll_until;
use crate::topology::NODE_NAME;

/// How the daemon is started. `Default` is the interface the tests rely on:
/// userspace proxy, metrics on `127.0.0.1:10249`, health on `0.0.0.0:10256`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// `--hostname-override`.
    pub hostname: String,
    /// `--proxy-mode`.
    pub proxy_mode: String,
    /// `--metrics-bind-address`; also where [`Daemon::metrics`] looks.
    pub metrics_bind: String,
    /// `--healthz-bind-address`; [`Daemon::healthz`] asks its port on
    /// `127.0.0.1`.
    pub healthz_bind: String,
    /// `--shutdown-grace-period`.
    pub shutdown_grace: String,
    /// `--sync-period`.
    pub sync_period: String,
    /// More arguments after these.
    pub extra_args: Vec<String>,
    /// Extra environment variables (`RUST_LOG` is `info` unless set here).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/healthz` to answer 200.
    pub ready_timeout: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            hostname: NODE_NAME.to_owned(),
            proxy_mode: "userspace".to_owned(),
            metrics_bind: "127.0.0.1:10249".to_owned(),
            healthz_bind: "0.0.0.0:10256".to_owned(),
            shutdown_grace: "5s".to_owned(),
            sync_period: "30s".to_owned(),
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

impl DaemonConfig {
    /// Adds an argument after the standard ones.
    #[must_use]
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Sets an environment variable for the daemon.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Finds the `switchyard` binary: `$SWITCHYARD_BIN`, else
/// `<workspace>/target/debug/switchyard`.
pub fn switchyard_bin() -> Result<PathBuf> {
    let path = std::env::var_os("SWITCHYARD_BIN").map_or_else(
        || crate::workspace_dir().join("target/debug/switchyard"),
        PathBuf::from,
    );
    if !path.is_file() {
        bail!(
            "switchyard binary not found at {}: run `cargo build -p switchyard-control` or `cargo xtask test` (or set SWITCHYARD_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A running `switchyard run` inside a node namespace, killed by PID on
/// drop (SIGTERM, then SIGKILL). Its stdout and stderr go to a log file;
/// when a test fails the tail of that log is printed.
#[derive(Debug)]
pub struct Daemon {
    process: Process,
    bin: PathBuf,
    node: Netns,
    config: DaemonConfig,
}

impl Daemon {
    /// Starts `switchyard run --manifests MANIFESTS ...` in `node`, logging
    /// to `<log_dir>/switchyard.log` (or `switchyard-N.log` if taken), and
    /// waits until `/healthz` answers 200.
    pub fn start(
        node: &Netns,
        manifests: &Path,
        log_dir: &Path,
        config: &DaemonConfig,
    ) -> Result<Self> {
        let bin = switchyard_bin()?;
        let mut log = log_dir.join("switchyard.log");
        let mut n = 1;
        while log.exists() {
            log = log_dir.join(format!("switchyard-{n}.log"));
            n += 1;
        }
        let mut argv: Vec<OsString> = vec![
            "env".into(),
            format!(
                "RUST_LOG={}",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".to_owned())
            )
            .into(),
        ];
        argv.extend(config.env.iter().map(|(k, v)| format!("{k}={v}").into()));
        argv.push(bin.clone().into());
        argv.push("run".into());
        argv.push("--manifests".into());
        argv.push(manifests.into());
        for (flag, value) in [
            ("--hostname-override", &config.hostname),
            ("--proxy-mode", &config.proxy_mode),
            ("--metrics-bind-address", &config.metrics_bind),
            ("--healthz-bind-address", &config.healthz_bind),
            ("--shutdown-grace-period", &config.shutdown_grace),
            ("--sync-period", &config.sync_period),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        argv.extend(config.extra_args.iter().map(OsString::from));
        let process = node.spawn(&argv, &log)?;
        let mut daemon = Self {
            process,
            bin,
            node: node.clone(),
            config: config.clone(),
        };
        daemon.wait_healthy(config.ready_timeout)?;
        Ok(daemon)
    }

    /// Waits until `/healthz` answers 200; fails with the log if the daemon
    /// exits or `timeout` passes.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let result = poll_until("switchyard /healthz to answer 200", timeout, || {
            if let Some(status) = self.process.try_wait()? {
                bail!("switchyard exited ({status}) before it was healthy");
            }
            Ok((self.healthz().map(|(code, _)| code).ok() == Some(200)).then_some(()))
        });
        if let Err(error) = result {
            bail!("{error:#}\n--- switchyard log ---\n{}", self.log());
        }
        Ok(())
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The node namespace it runs in.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until some log line satisfies `matches`, and returns that line.
    pub fn wait_for_log(
        &self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        poll_until(what, timeout, || {
            Ok(self
                .log()
                .lines()
                .find(|line| matches(line))
                .map(str::to_owned))
        })
        .with_context(|| format!("--- switchyard log ---\n{}", self.log()))
    }

    fn http_get(&self, url: &str) -> Result<(u16, String)> {
        let output = self.node.exec_with(
            [
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                url,
            ],
            None,
            Duration::from_secs(10),
        )?;
        if !output.status.success() {
            bail!(
                "curl {url}: {} ({})",
                String::from_utf8_lossy(&output.stderr).trim(),
                output.status
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let (body, code) = text.rsplit_once('\n').context("no status code")?;
        Ok((code.trim().parse()?, body.to_owned()))
    }

    fn local_url(bind: &str, path: &str) -> String {
        // A wildcard bind is asked on loopback.
        let port = bind.rsplit_once(':').map_or(bind, |(_, port)| port);
        let host = bind.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
        let host = match host {
            "0.0.0.0" | "" => "127.0.0.1",
            "[::]" => "[::1]",
            other => other,
        };
        format!("http://{host}:{port}{path}")
    }

    /// `GET /healthz` on the health address: status code and body.
    pub fn healthz(&self) -> Result<(u16, String)> {
        self.http_get(&Self::local_url(&self.config.healthz_bind, "/healthz"))
    }

    /// `GET /metrics` (Prometheus text); fails unless 200.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) =
            self.http_get(&Self::local_url(&self.config.metrics_bind, "/metrics"))?;
        if code != 200 {
            bail!("/metrics answered {code}: {body}");
        }
        Ok(body)
    }

    /// `GET /services` on the metrics address, parsed as JSON.
    pub fn services_json(&self) -> Result<serde_json::Value> {
        let (code, body) =
            self.http_get(&Self::local_url(&self.config.metrics_bind, "/services"))?;
        if code != 200 {
            bail!("/services answered {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("/services is not JSON: {body}"))
    }

    /// Runs `switchyard ARGS...` (the CLI) in the node namespace.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut argv: Vec<OsString> = vec![self.bin.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        self.node.exec_with(&argv, None, Duration::from_secs(20))
    }

    /// Sends SIGTERM and waits up to `timeout` for it to exit (SIGKILL
    /// after that); returns how it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.terminate(timeout)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Returns `result`, with the tail of the daemon's log appended to the
    /// message if it is an error: a test returning `Err` drops its guards
    /// before the harness prints the error, so the log must travel with it.
    pub fn with_log<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|error| {
            anyhow::anyhow!(
                "{error:#}\n--- switchyard log ({}), last lines ---\n{}\n--- end of switchyard log ---",
                self.log_path().display(),
                self.log_tail(200)
            )
        })
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process guard, for signals other than SIGTERM.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- switchyard log ({}), last lines ---\n{}\n--- end of switchyard log ---",
                self.log_path().display(),
                self.log_tail(200)
            );
        }
    }
}
