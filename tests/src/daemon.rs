//! The real `switchyard` binary, run inside a node namespace, in either
//! proxy mode.
//!
//! The daemon is started with `nsenter --net`, not `ip netns exec`: the
//! latter mounts a fresh `/sys` for the namespace, which hides the cgroup
//! tree and the machine's bpffs from an eBPF-mode daemon.
//!
//! In eBPF mode the daemon attaches its programs to the topology's client
//! cgroup (never the machine's root cgroup) and pins its maps and links in a
//! folder of the test's own under `/sys/fs/bpf`. Since the daemon leaves
//! that state in place when it stops (by design), the [`Daemon`] guard runs
//! `switchyard cleanup` when it is dropped, after the process is gone.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;

use crate::netns::{DROP_GRACE, Netns, Process, run_with_timeout};
use crate::poll::poll_until;
use crate::topology::{NODE_NAME, Topology};

/// Where bpffs is mounted; each test pins into a folder of its own below.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Which datapath the daemon serves Service traffic with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `--proxy-mode userspace`: VIPs on the node's `lo`, a userspace L4
    /// proxy bound to each VIP:port.
    Userspace,
    /// `--proxy-mode ebpf`: socket-level load balancing by cgroup programs
    /// attached to the client's cgroup; no VIP on any interface.
    Ebpf,
}

impl Mode {
    /// Both modes, userspace first.
    pub const ALL: [Mode; 2] = [Mode::Userspace, Mode::Ebpf];

    /// The value of `--proxy-mode` (and of `/proxyMode`).
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Userspace => "userspace",
            Mode::Ebpf => "ebpf",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

/// Where an eBPF-mode daemon attaches and pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfPaths {
    /// `--cgroup-path`: a cgroup v2 folder the test made (the client's).
    pub cgroup: PathBuf,
    /// `--bpf-pin-path`: a folder under [`BPFFS`] of the test's own.
    pub pin_path: PathBuf,
}

/// How the daemon is started. `Default` is the interface the tests rely on:
/// userspace proxy, metrics on `127.0.0.1:10249`, health on `0.0.0.0:10256`.
/// [`DaemonConfig::ebpf`] (or [`DaemonConfig::for_mode`]) gives the eBPF
/// datapath scoped to a topology's client.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// `--hostname-override`.
    pub hostname: String,
    /// `--proxy-mode` (see [`Mode::flag`]; free text so a test can pass
    /// `auto` or nonsense).
    pub proxy_mode: String,
    /// `--cgroup-path` and `--bpf-pin-path`, and what the guard cleans up
    /// on drop. Set by [`DaemonConfig::ebpf`].
    pub ebpf: Option<EbpfPaths>,
    /// `--metrics-bind-address`; also where [`Daemon::metrics`] looks.
    pub metrics_bind: String,
    /// `--healthz-bind-address`; [`Daemon::healthz`] asks its port on
    /// `127.0.0.1`.
    pub healthz_bind: String,
    /// `--shutdown-grace-period`.
    pub shutdown_grace: String,
    /// `--handover-wait`: how long, after SIGTERM, the daemon keeps its listeners open
    /// waiting for a successor to take them over. `0s` by default (the daemon's own default
    /// is 5 s), so that stopping a test daemon stays fast.
    pub handover_wait: String,
    /// `--sync-period`.
    pub sync_period: String,
    /// `--kubeconfig`: watch this API server instead of the manifest folder
    /// (the folder given to [`Daemon::start`] is then not passed).
    pub kubeconfig: Option<PathBuf>,
    /// `--data-dir` of the embedded API server (default: `switchyard-data` in
    /// the log folder, kept across [`Daemon::restart`]).
    pub data_dir: Option<PathBuf>,
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
            proxy_mode: Mode::Userspace.flag().to_owned(),
            ebpf: None,
            metrics_bind: "127.0.0.1:10249".to_owned(),
            healthz_bind: "0.0.0.0:10256".to_owned(),
            shutdown_grace: "5s".to_owned(),
            handover_wait: "0s".to_owned(),
            sync_period: "30s".to_owned(),
            kubeconfig: None,
            data_dir: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

impl DaemonConfig {
    /// The default configuration in `mode`; for [`Mode::Ebpf`] see
    /// [`DaemonConfig::ebpf`].
    pub fn for_mode(mode: Mode, topo: &Topology) -> Result<Self> {
        match mode {
            Mode::Userspace => Ok(Self::default()),
            Mode::Ebpf => Self::ebpf(topo),
        }
    }

    /// The eBPF datapath for `topo`'s client: `--proxy-mode ebpf
    /// --cgroup-path <the client's cgroup> --bpf-pin-path
    /// /sys/fs/bpf/<topology prefix>`.
    pub fn ebpf(topo: &Topology) -> Result<Self> {
        let cgroup = topo
            .client()
            .cgroup()
            .context("the topology's client has no cgroup to attach to")?
            .to_path_buf();
        Ok(Self {
            proxy_mode: Mode::Ebpf.flag().to_owned(),
            ebpf: Some(EbpfPaths {
                cgroup,
                pin_path: topo.bpf_pin_path(),
            }),
            ..Self::default()
        })
    }

    /// The mode `proxy_mode` names (anything but `ebpf` is userspace).
    pub fn mode(&self) -> Mode {
        if self.proxy_mode == Mode::Ebpf.flag() {
            Mode::Ebpf
        } else {
            Mode::Userspace
        }
    }

    /// Adds an argument after the standard ones.
    #[must_use]
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// The `--admin-socket` given in `extra_args` (as `--admin-socket PATH` or
    /// `--admin-socket=PATH`), if any.
    pub fn admin_socket(&self) -> Option<PathBuf> {
        let mut args = self.extra_args.iter();
        while let Some(arg) = args.next() {
            if arg == "--admin-socket" {
                return args.next().map(PathBuf::from);
            }
            if let Some(path) = arg.strip_prefix("--admin-socket=") {
                return Some(PathBuf::from(path));
            }
        }
        None
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

/// Runs `switchyard cleanup --bpf-pin-path PIN --cgroup-path CGROUP` on the
/// machine (it touches bpffs and the cgroup only, no network): detaches
/// switchyard's programs from the cgroup and removes the pins and the
/// folder. Harmless when there is nothing to remove.
pub fn cleanup_ebpf(pin_path: &Path, cgroup: &Path) -> Result<()> {
    let bin = switchyard_bin()?;
    let mut command = Command::new(&bin);
    command
        .arg("cleanup")
        .arg("--bpf-pin-path")
        .arg(pin_path)
        .arg("--cgroup-path")
        .arg(cgroup);
    let output = run_with_timeout(command, None, Duration::from_secs(20))
        .with_context(|| format!("switchyard cleanup --bpf-pin-path {}", pin_path.display()))?;
    ensure!(
        output.status.success(),
        "switchyard cleanup --bpf-pin-path {} --cgroup-path {} failed ({}): {}",
        pin_path.display(),
        cgroup.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    ensure!(
        !pin_path.exists(),
        "{} still exists after switchyard cleanup",
        pin_path.display()
    );
    Ok(())
}

/// A running `switchyard run` inside a node namespace, killed by PID on
/// drop (SIGTERM, then SIGKILL); in eBPF mode its datapath is then removed
/// with `switchyard cleanup`. Its stdout and stderr go to a log file; when a
/// test fails the tail of that log is printed.
#[derive(Debug)]
pub struct Daemon {
    process: Process,
    bin: PathBuf,
    node: Netns,
    config: DaemonConfig,
    manifests: PathBuf,
    log_dir: PathBuf,
    /// Set once `switchyard cleanup` has run for the eBPF state.
    cleaned: bool,
}

impl Daemon {
    /// Starts `switchyard run --manifests MANIFESTS ...` in `node` (through
    /// `nsenter --net`), logging to `<log_dir>/switchyard.log` (or
    /// `switchyard-N.log` if taken), and waits until `/healthz` answers 200.
    pub fn start(
        node: &Netns,
        manifests: &Path,
        log_dir: &Path,
        config: &DaemonConfig,
    ) -> Result<Self> {
        let bin = switchyard_bin()?;
        if let Some(ebpf) = &config.ebpf {
            ensure!(
                ebpf.cgroup.join("cgroup.procs").is_file(),
                "eBPF mode: {} is not a cgroup v2 folder",
                ebpf.cgroup.display()
            );
            ensure!(
                ebpf.pin_path.starts_with(BPFFS) && ebpf.pin_path != Path::new(BPFFS),
                "eBPF mode: pins must go to a folder of the test's own under {BPFFS}, not {}",
                ebpf.pin_path.display()
            );
        }
        let process = Self::spawn(&bin, node, manifests, log_dir, config)?;
        // From here on the guard stops the process and cleans up, also when
        // the daemon never gets healthy.
        let mut daemon = Self {
            process,
            bin,
            node: node.clone(),
            config: config.clone(),
            manifests: manifests.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            cleaned: false,
        };
        daemon.wait_healthy(config.ready_timeout)?;
        Ok(daemon)
    }

    fn spawn(
        bin: &Path,
        node: &Netns,
        manifests: &Path,
        log_dir: &Path,
        config: &DaemonConfig,
    ) -> Result<Process> {
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
        argv.push(bin.into());
        argv.push("run".into());
        if let Some(kubeconfig) = &config.kubeconfig {
            argv.push("--kubeconfig".into());
            argv.push(kubeconfig.into());
        } else {
            argv.push("--manifests".into());
            argv.push(manifests.into());
            argv.push("--data-dir".into());
            argv.push(data_dir(config, log_dir).into());
        }
        for (flag, value) in [
            ("--hostname-override", &config.hostname),
            ("--proxy-mode", &config.proxy_mode),
            ("--metrics-bind-address", &config.metrics_bind),
            ("--healthz-bind-address", &config.healthz_bind),
            ("--shutdown-grace-period", &config.shutdown_grace),
            ("--handover-wait", &config.handover_wait),
            ("--sync-period", &config.sync_period),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        if let Some(ebpf) = &config.ebpf {
            argv.push("--cgroup-path".into());
            argv.push(ebpf.cgroup.clone().into());
            argv.push("--bpf-pin-path".into());
            argv.push(ebpf.pin_path.clone().into());
        }
        if config.admin_socket().is_none() {
            // Beside the log, so that daemons of one test, and of tests run at once, never
            // share the default socket.
            argv.push("--admin-socket".into());
            argv.push(log.with_extension("sock").into());
        }
        argv.extend(config.extra_args.iter().map(OsString::from));
        node.spawn_nsenter(&argv, &log)
    }

    /// Starts the daemon again with the same configuration and a new log
    /// file, once the previous process has exited (see [`Daemon::kill`]),
    /// and waits until it is healthy. In eBPF mode the new process finds the
    /// pinned state the old one left.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_wait()? {
            eprintln!("restarting switchyard (the previous process exited: {status})");
        } else {
            bail!("switchyard (pid {}) is still running", self.pid());
        }
        ensure!(
            !self.cleaned,
            "the eBPF state was cleaned up: nothing to restart onto"
        );
        self.process = Self::spawn(
            &self.bin,
            &self.node,
            &self.manifests,
            &self.log_dir,
            &self.config,
        )?;
        self.wait_healthy(self.config.ready_timeout)
    }

    /// The binary [`Daemon::restart`] starts from now on (an upgrade).
    pub fn set_bin(&mut self, bin: &Path) {
        self.bin = bin.to_path_buf();
    }

    /// Sends SIGKILL and waits for the process to be gone: nothing of the
    /// daemon's own shutdown runs.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.process.signal(Signal::SIGKILL)?;
        self.process
            .wait_timeout(Duration::from_secs(10))?
            .context("switchyard did not die of SIGKILL within 10 s")
    }

    /// Its proxy mode.
    pub fn mode(&self) -> Mode {
        self.config.mode()
    }

    /// Where it attached and pinned, in eBPF mode.
    pub fn ebpf_paths(&self) -> Option<&EbpfPaths> {
        self.config.ebpf.as_ref()
    }

    /// Runs `switchyard cleanup` for its eBPF state now (the guard does it
    /// on drop otherwise). Fails if the daemon is still running: its
    /// periodic check would attach everything again.
    pub fn cleanup_ebpf(&mut self) -> Result<()> {
        if self.process.try_wait()?.is_none() {
            bail!("switchyard is still running: stop it before cleaning up");
        }
        if let Some(ebpf) = &self.config.ebpf {
            cleanup_ebpf(&ebpf.pin_path, &ebpf.cgroup)?;
        }
        self.cleaned = true;
        Ok(())
    }

    /// The kubeconfig of the daemon's embedded API server
    /// (`<data dir>/kubeconfig`), or `None` when it watches another one.
    pub fn embedded_kubeconfig(&self) -> Option<PathBuf> {
        self.config
            .kubeconfig
            .is_none()
            .then(|| data_dir(&self.config, &self.log_dir).join("kubeconfig"))
    }

    /// Waits until `/healthz` answers 200; fails with the log if the daemon
    /// exits or `timeout` passes.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        // An exit ends the wait at once (an error inside the poll would be retried).
        let mut exited = None;
        let result = poll_until("switchyard /healthz to answer 200", timeout, || {
            if let Some(status) = self.process.try_wait()? {
                exited = Some(status);
                return Ok(Some(()));
            }
            Ok((self.healthz().map(|(code, _)| code).ok() == Some(200)).then_some(()))
        });
        if let Some(status) = exited {
            bail!(
                "switchyard exited ({status}) before it was healthy\n--- switchyard log ---\n{}",
                self.log()
            );
        }
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

    /// Its admin socket, which `switchyard repair` talks to: the one given in
    /// `extra_args` (see [`DaemonConfig::admin_socket`]), else the one beside its log.
    pub fn admin_socket(&self) -> PathBuf {
        self.config
            .admin_socket()
            .unwrap_or_else(|| self.log_path().with_extension("sock"))
    }

    /// `switchyard repair --output json`: checks the datapath now; returns the repairs made
    /// (and prints them with the time the command took).
    pub fn repair(&self) -> Result<Vec<String>> {
        let asked = std::time::Instant::now();
        let socket = self.admin_socket();
        let socket = socket.to_str().context("admin socket path is not UTF-8")?;
        let output = self.cli(&["repair", "--admin-socket", socket, "--output", "json"])?;
        ensure!(
            output.status.success(),
            "switchyard repair failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "`switchyard repair --output json` is not JSON: {}",
                    String::from_utf8_lossy(&output.stdout)
                )
            })?;
        let repaired: Vec<String> = report["repaired"]
            .as_array()
            .context("no `repaired` list in the repair report")?
            .iter()
            .map(|line| {
                line.as_str()
                    .map(str::to_owned)
                    .context("a repair is not a string")
            })
            .collect::<Result<_>>()?;
        eprintln!(
            "`switchyard repair` answered in {:?}: {repaired:?}",
            asked.elapsed()
        );
        Ok(repaired)
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

    /// `GET /proxyMode` on the metrics address (`ebpf` or `userspace`).
    pub fn proxy_mode_endpoint(&self) -> Result<String> {
        let (code, body) =
            self.http_get(&Self::local_url(&self.config.metrics_bind, "/proxyMode"))?;
        if code != 200 {
            bail!("/proxyMode answered {code}: {body}");
        }
        Ok(body.trim().to_owned())
    }

    /// `switchyard services --output json`, parsed: the frontends as the
    /// daemon's datapath holds them (in eBPF mode, read back from the maps).
    pub fn services_cli_json(&self) -> Result<serde_json::Value> {
        let output = self.cli(&["services", "--output", "json"])?;
        ensure!(
            output.status.success(),
            "switchyard services --output json failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "`switchyard services --output json` is not JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
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

    /// Sends SIGTERM and returns at once, without waiting for the exit (see
    /// [`Daemon::wait_exit`]).
    pub fn sigterm(&mut self) -> Result<()> {
        self.process.signal(Signal::SIGTERM)
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process.wait_timeout(timeout)
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
        // The process first: a running daemon would repair what cleanup
        // removes.
        if let Err(error) = self.process.terminate(DROP_GRACE) {
            eprintln!("stopping switchyard (pid {}): {error:#}", self.pid());
        }
        if !self.cleaned
            && let Some(ebpf) = &self.config.ebpf
            && let Err(error) = cleanup_ebpf(&ebpf.pin_path, &ebpf.cgroup)
        {
            eprintln!("{error:#}");
        }
    }
}

/// `--data-dir` of a daemon with this configuration logging to `log_dir`.
fn data_dir(config: &DaemonConfig, log_dir: &Path) -> PathBuf {
    config
        .data_dir
        .clone()
        .unwrap_or_else(|| log_dir.join("switchyard-data"))
}
