//! Network namespaces and the processes started inside them, as guards.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a command run with [`Netns::exec`] may take before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_mins(1);

/// How long a [`Process`] gets between SIGTERM and SIGKILL when dropped.
pub const DROP_GRACE: Duration = Duration::from_secs(2);

/// Fails with a clear message unless the effective user is root: the tests
/// create network namespaces and cannot run otherwise. A test must fail,
/// never pass silently, when it cannot run.
pub fn require_root() -> Result<()> {
    let uid = std::fs::metadata("/proc/self")
        .context("stat /proc/self")?
        .uid();
    if uid != 0 {
        bail!(
            "switchyard's end-to-end tests need root (they create network namespaces); \
             running as uid {uid}: run them as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}

/// A name prefix unique to this process and call: `sy<pid>x<counter>`.
///
/// Short enough that `<prefix>-<suffix>` stays readable; interface names
/// never use it (they live inside the namespaces, where they cannot clash).
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sy{}x{n}", std::process::id())
}

/// The PID in a name made by [`unique_prefix`], if the name is one.
fn prefix_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sy")?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup/unified` on
/// a hybrid system, `/sys/fs/cgroup` on a pure v2 one).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .context("no cgroup2 hierarchy is mounted")
}

/// Removes namespaces and cgroups that an earlier, killed run of these tests
/// left behind: only names made by [`unique_prefix`] whose process is gone.
fn reap_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if prefix_pid(name).is_some_and(|pid| !process_alive(pid)) {
            kill_netns_pids(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    // eBPF state first: a cgroup must be clean before it is removed.
    if let Ok(entries) = std::fs::read_dir(crate::daemon::BPFFS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix_pid(&name).is_some_and(|pid| !process_alive(pid)) {
                let prefix = name.split('-').next().unwrap_or(&name);
                let cgroup = cgroup2_root()
                    .map(|root| root.join(format!("{prefix}-client")))
                    .unwrap_or_default();
                if let Err(error) = crate::daemon::cleanup_ebpf(&entry.path(), &cgroup) {
                    eprintln!("stale {}: {error:#}", entry.path().display());
                }
            }
        }
    }
    if let Ok(root) = cgroup2_root()
        && let Ok(entries) = std::fs::read_dir(&root)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix_pid(&name).is_some_and(|pid| !process_alive(pid)) {
                remove_cgroup(&entry.path());
            }
        }
    }
}

/// SIGKILLs, by PID, every process still inside namespace `name`.
fn kill_netns_pids(name: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills the processes left in a cgroup the tests made, then removes it.
fn remove_cgroup(path: &Path) {
    let procs = path.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        if pids.trim().is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids.split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(error) = std::fs::remove_dir(path)
        && path.exists()
    {
        eprintln!("could not remove cgroup {}: {error}", path.display());
    }
}

#[derive(Debug)]
struct NetnsInner {
    name: String,
    /// A cgroup v2 folder that every process started in the namespace joins.
    cgroup: Option<PathBuf>,
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        // Processes are normally gone by now (their guards hold a clone of
        // this namespace); anything left was started in it by a test.
        kill_netns_pids(&self.name);
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(output) if !output.status.success() => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => eprintln!("ip netns del {}: {error}", self.name),
            Ok(_) => {}
        }
        if let Some(cgroup) = &self.cgroup {
            remove_cgroup(cgroup);
        }
    }
}

/// A network namespace, deleted when the last clone is dropped.
///
/// Clones share the namespace: a [`Process`] started in it holds a clone,
/// so the namespace outlives every process the guard knows of.
#[derive(Clone, Debug)]
pub struct Netns {
    inner: Arc<NetnsInner>,
}

impl Netns {
    /// Creates namespace `name` with `lo` up and IPv6 duplicate address
    /// detection off (addresses are usable at once).
    pub fn create(name: &str) -> Result<Self> {
        Self::create_inner(name, false)
    }

    /// Like [`Netns::create`], and every process started in the namespace
    /// also joins a fresh cgroup v2 folder of the same name, so cgroup-attached
    /// programs (socket-level load balancing) can be scoped to it.
    pub fn create_in_cgroup(name: &str) -> Result<Self> {
        Self::create_inner(name, true)
    }

    fn create_inner(name: &str, with_cgroup: bool) -> Result<Self> {
        static REAP: Once = Once::new();
        require_root()?;
        REAP.call_once(reap_stale);

        let output = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .context("run `ip netns add`")?;
        if !output.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // From here on the guard deletes the namespace, also on error.
        let mut inner = NetnsInner {
            name: name.to_owned(),
            cgroup: None,
        };
        if with_cgroup {
            let path = cgroup2_root()?.join(name);
            std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
            inner.cgroup = Some(path);
        }
        let ns = Self {
            inner: Arc::new(inner),
        };
        ns.run(["ip", "link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cgroup folder processes join, if the namespace has one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.inner.cgroup.as_deref()
    }

    /// A command that runs `argv` inside the namespace (and its cgroup).
    ///
    /// `ip netns exec` execs the program, and the cgroup step execs too, so
    /// the spawned child's PID is the program's PID.
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command;
        if let Some(cgroup) = &self.inner.cgroup {
            command = Command::new("sh");
            command
                .arg("-c")
                .arg(r#"echo $$ > "$1" && shift && exec ip netns exec "$@""#)
                .arg("sh")
                .arg(cgroup.join("cgroup.procs"));
        } else {
            command = Command::new("ip");
            command.args(["netns", "exec"]);
        }
        command.arg(&self.inner.name);
        command.args(argv);
        command
    }

    /// Runs `argv` in the namespace and returns its output, whatever its
    /// exit status; kills it after [`EXEC_TIMEOUT`].
    pub fn exec<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_with(argv, None, EXEC_TIMEOUT)
    }

    /// Runs `argv` with `stdin` fed to it, killing it after `timeout`.
    pub fn exec_with<I, S>(
        &self,
        argv: I,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        let command = self.command(&argv);
        run_with_timeout(command, stdin, timeout)
            .with_context(|| format!("in netns {}: {}", self.name(), display_argv(&argv)))
    }

    /// Runs `argv` in the namespace, fails unless it exits 0, and returns
    /// its stdout.
    pub fn run<I, S>(&self, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        let output = self.exec(&argv)?;
        if !output.status.success() {
            bail!(
                "in netns {}: `{}` failed ({}): {}{}",
                self.name(),
                display_argv(&argv),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.name())
    }

    /// A command that runs `argv` in the namespace through `nsenter --net`:
    /// unlike `ip netns exec`, which mounts a fresh `/sys` for the
    /// namespace, it keeps the machine's mounts, so the program sees the
    /// cgroup tree and bpffs (the eBPF daemon needs both). Only the network
    /// namespace changes; the cgroup is never joined (this is for the node's
    /// own processes, not the client's). `nsenter` execs the program, so the
    /// child's PID is the program's PID.
    pub fn nsenter_command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path().display()));
        command.arg("--");
        command.args(argv);
        command
    }

    /// Starts `argv` in the namespace with stdout and stderr going to `log`;
    /// the returned guard kills it by PID on drop.
    pub fn spawn<I, S>(&self, argv: I, log: &Path) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        self.spawn_command(self.command(&argv), &argv, log)
    }

    /// Like [`Netns::spawn`], through [`Netns::nsenter_command`] (the
    /// machine's `/sys` stays visible).
    pub fn spawn_nsenter<I, S>(&self, argv: I, log: &Path) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        self.spawn_command(self.nsenter_command(&argv), &argv, log)
    }

    fn spawn_command(
        &self,
        mut command: Command,
        argv: &[OsString],
        log: &Path,
    ) -> Result<Process> {
        let label = display_argv(argv);
        let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("in netns {}: spawn {label}", self.name()))?;
        Ok(Process {
            child,
            exited: None,
            label,
            log: log.to_path_buf(),
            _ns: self.clone(),
        })
    }

    /// Sets a sysctl inside the namespace (`/proc/sys/net` is per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// The addresses on `dev`, as `ip -o addr show dev DEV` lists them
    /// (`10.96.0.10/32`, `fd00:96::10/128`, ...).
    pub fn addresses(&self, dev: &str) -> Result<Vec<String>> {
        let out = self.run(["ip", "-o", "addr", "show", "dev", dev])?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let family = fields.nth(2)?;
                matches!(family, "inet" | "inet6")
                    .then(|| fields.next().map(str::to_owned))
                    .flatten()
            })
            .collect())
    }

    /// The PIDs of all processes inside the namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let output = Command::new("ip")
            .args(["netns", "pids", self.name()])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect())
    }
}

fn display_argv(argv: &[OsString]) -> String {
    argv.iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command`, feeding it `stdin`, and kills it if it outlives `timeout`.
pub fn run_with_timeout(
    mut command: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("spawn")?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut stdout_pipe = child.stdout.take().context("stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("stderr pipe")?;
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut buf);
        buf
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "killed after {timeout:?}; stdout: {}; stderr: {}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

/// A process started inside a namespace, killed by PID on drop (SIGTERM,
/// then SIGKILL after [`DROP_GRACE`]).
#[derive(Debug)]
pub struct Process {
    child: Child,
    exited: Option<ExitStatus>,
    label: String,
    log: PathBuf,
    // Declared last: dropped after the process is dead.
    _ns: Netns,
}

impl Process {
    /// The process's PID (the program's own: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Sends `signal` to it by PID.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!("{} has already exited", self.label);
        }
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("kill {signal} {pid}"))?;
        Ok(())
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how it exited.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Waits until its output contains a line equal to `line` (after
    /// trimming); fails with the log if it exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.lines().any(|l| l.trim() == line) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {line:?}; output:\n{log}",
                    self.label
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {line:?} within {timeout:?}; output:\n{log}",
                    self.label
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(error) = self.terminate(DROP_GRACE) {
            eprintln!("stopping {} (pid {}): {error:#}", self.label, self.pid());
        }
    }
}
