//! One start of `switchyard run` and its timeline: the process spawned in the node
//! namespace, its `/healthz` asked every 10 ms (from a thread inside that namespace, with a
//! plain HTTP/1.1 request on a fresh connection), its log read as it grows; then what its
//! maps hold, through `switchyard services` and bpftool.

// A synchronous driver: std's clock is the one to time a process with.
#![allow(
    clippy::disallowed_types,
    reason = "a synchronous driver: no tokio clock to pause"
)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use switchyard_tests::{Netns, Process};

use super::log::StartLog;
use crate::cpu;
use crate::in_netns;

/// How `switchyard run` is started; the same for every start of the run.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// The switchyard binary.
    pub bin: PathBuf,
    /// The node namespace it runs in.
    pub node: Netns,
    /// `--kubeconfig`.
    pub kubeconfig: PathBuf,
    /// `--hostname-override`.
    pub hostname: String,
    /// `--cgroup-path`: the cgroup the run made.
    pub cgroup: PathBuf,
    /// `--metrics-bind-address` (also what `switchyard services` asks).
    pub metrics: SocketAddr,
    /// `--healthz-bind-address`.
    pub healthz: SocketAddr,
    /// More arguments (map sizes).
    pub extra_args: Vec<String>,
    /// How often `/healthz` is asked.
    pub poll_interval: Duration,
    /// The longest wait for the first view and `/healthz`.
    pub timeout: Duration,
}

/// Which start of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Empty pins: everything is written.
    Cold,
    /// Over the pins the cold start left: nothing should be written.
    Restart,
}

impl Variant {
    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold (empty pins)",
            Self::Restart => "restart over pinned state",
        }
    }
}

/// What `switchyard services -o json` showed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frontends {
    /// Frontends listed.
    pub frontends: usize,
    /// Of those, the ones with exactly the cluster's endpoints per Service.
    pub complete: usize,
    /// Backends over all frontends.
    pub backends: usize,
    /// Seconds the command took.
    pub took_s: f64,
}

/// The lookup maps as bpftool dumps them, each reduced to its entry count and a digest of
/// its sorted entries (keys, values and the ids they hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDigest {
    /// `(map, entries, sha256 of the sorted entries)`.
    pub maps: Vec<(String, usize, String)>,
}

/// The maps compared.
pub const LOOKUP_MAPS: [&str; 3] = ["sy_frontends", "sy_slots", "sy_backends"];

/// One start, measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Start {
    /// From the spawn to `/healthz` answering 200, seconds (at the polling's resolution).
    pub healthz_s: Option<f64>,
    /// What the log said, times relative to the spawn.
    pub log: StartLog,
    /// The daemon's CPU time (user + system) when both were seen, seconds.
    pub daemon_cpu_s: Option<f64>,
    /// Per CPU, the fraction busy from the spawn until both were seen (the whole machine).
    pub machine_busy: Vec<f64>,
    /// `switchyard services -o json` afterwards, or why it failed.
    pub frontends: Option<Result<Frontends, String>>,
    /// The lookup maps afterwards, or why they could not be read.
    pub maps: Option<Result<MapDigest, String>>,
    /// Seconds from SIGTERM to the exit, and how it exited.
    pub stop: Option<(f64, String)>,
    /// The daemon's log file.
    pub log_path: String,
    /// Why the start is incomplete, if it is.
    pub failure: Option<String>,
}

impl DaemonSpec {
    fn argv(&self, pin_path: &Path, admin_socket: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            "env".into(),
            "RUST_LOG=info".into(),
            self.bin.clone().into(),
            "run".into(),
            "--proxy-mode".into(),
            "ebpf".into(),
            "--kubeconfig".into(),
            self.kubeconfig.clone().into(),
            "--hostname-override".into(),
            self.hostname.clone().into(),
            "--cgroup-path".into(),
            self.cgroup.clone().into(),
            "--bpf-pin-path".into(),
            pin_path.into(),
            // No tc programs on any interface: the socket-level programs on the cgroup only.
            "--devices".into(),
            "none".into(),
            "--sync-period".into(),
            "1h".into(),
            "--admin-socket".into(),
            admin_socket.into(),
            "--metrics-bind-address".into(),
            self.metrics.to_string().into(),
            "--healthz-bind-address".into(),
            self.healthz.to_string().into(),
            // Nothing to hand over or drain: a stop takes no time.
            "--handover-wait".into(),
            "0s".into(),
            "--shutdown-grace-period".into(),
            "1s".into(),
        ];
        argv.extend(self.extra_args.iter().map(OsString::from));
        argv
    }

    /// Starts the daemon with pins under `pin_path`, logging to `log_path`, and follows it
    /// until it has logged its first view and `/healthz` answered 200 (or the timeout). The
    /// process is returned running, for the caller to stop.
    pub fn start(&self, pin_path: &Path, log_path: &Path) -> Result<(Process, Start)> {
        let ticks = cpu::clock_ticks()?;
        let socket = log_path.with_extension("sock");
        let argv = self.argv(pin_path, &socket);
        let busy_before = cpu::CpuTimes::read()?;
        let spawned_wall = SystemTime::now();
        let spawned = Instant::now();
        let mut process = self.node.spawn_nsenter(&argv, log_path)?;
        let mut start = Start {
            log_path: log_path.display().to_string(),
            ..Start::default()
        };
        let followed = in_netns(&self.node, || {
            self.follow(&mut process, &mut start, spawned, spawned_wall)
        });
        start.daemon_cpu_s = cpu::process_time(process.pid(), ticks)
            .ok()
            .map(|d| d.as_secs_f64());
        if let Ok(now) = cpu::CpuTimes::read() {
            start.machine_busy = now.busy_since(&busy_before);
        }
        if let Err(error) = followed {
            start.failure = Some(format!("{error:#}"));
        }
        Ok((process, start))
    }

    /// The polling loop, on a thread inside the node namespace.
    fn follow(
        &self,
        process: &mut Process,
        start: &mut Start,
        spawned: Instant,
        spawned_wall: SystemTime,
    ) -> Result<()> {
        let healthz = SocketAddr::new([127, 0, 0, 1].into(), self.healthz.port());
        let mut reader = LogReader::new(process.log_path());
        let mut next = spawned;
        loop {
            if start.healthz_s.is_none() && healthz_code(healthz) == Some(200) {
                start.healthz_s = Some(spawned.elapsed().as_secs_f64());
            }
            for line in reader.new_lines() {
                start.log.feed(&line, spawned_wall);
            }
            if start.healthz_s.is_some() && start.log.first_view.is_some() {
                return Ok(());
            }
            if let Some(status) = process.try_wait()? {
                for line in reader.new_lines() {
                    start.log.feed(&line, spawned_wall);
                }
                bail!(
                    "switchyard exited ({status}) before its first view was programmed and healthy"
                );
            }
            if spawned.elapsed() > self.timeout {
                bail!(
                    "after {:?}: first view {}, /healthz {}",
                    self.timeout,
                    if start.log.first_view.is_some() {
                        "logged"
                    } else {
                        "not logged"
                    },
                    if start.healthz_s.is_some() {
                        "200"
                    } else {
                        "not 200"
                    }
                );
            }
            next += self.poll_interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }

    /// `switchyard services -o json` in the node namespace: the frontends as the daemon
    /// reads them back from its maps.
    pub fn frontends(&self, per_service: usize) -> Result<Frontends> {
        let asked = Instant::now();
        let argv: Vec<OsString> = vec![
            self.bin.clone().into(),
            "services".into(),
            "--metrics-address".into(),
            self.metrics.to_string().into(),
            "--output".into(),
            "json".into(),
        ];
        let output = self.node.exec_with(&argv, None, Duration::from_mins(1))?;
        ensure!(
            output.status.success(),
            "switchyard services failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let took_s = asked.elapsed().as_secs_f64();
        let views: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("`switchyard services -o json` is not JSON")?;
        let views = views
            .as_array()
            .context("`switchyard services -o json` is not a list")?;
        let backends = |v: &serde_json::Value| v["backends"].as_array().map_or(0, Vec::len);
        Ok(Frontends {
            frontends: views.len(),
            complete: views.iter().filter(|v| backends(v) == per_service).count(),
            backends: views.iter().map(backends).sum(),
            took_s,
        })
    }
}

/// The status code of `GET /healthz` on a fresh connection, or `None` when nothing answered.
fn healthz_code(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 32];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    // `HTTP/1.1 200 OK`: the code is the second word.
    std::str::from_utf8(&head[..read])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Reads a growing log file line by line.
struct LogReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogReader {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_owned).collect()
    }
}

/// Dumps the lookup maps pinned under `pin_path` with bpftool.
pub fn map_digest(pin_path: &Path) -> Result<MapDigest> {
    let mut out = MapDigest::default();
    for map in LOOKUP_MAPS {
        let path = pin_path.join(map);
        let output = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path)
            .output()
            .context("run bpftool (is it installed?)")?;
        ensure!(
            output.status.success(),
            "bpftool map dump pinned {} failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let dump: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("bpftool's dump of {map} is not JSON"))?;
        let mut entries: Vec<String> = dump
            .as_array()
            .with_context(|| format!("bpftool's dump of {map} is not a list"))?
            .iter()
            .map(serde_json::Value::to_string)
            .collect();
        entries.sort();
        let mut hash = Sha256::new();
        for entry in &entries {
            hash.update(entry.as_bytes());
            hash.update(b"\n");
        }
        let digest = hash
            .finalize()
            .iter()
            .take(8)
            .fold(String::new(), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            });
        out.maps.push((map.to_owned(), entries.len(), digest));
    }
    Ok(out)
}

/// Stops the daemon with SIGTERM (SIGKILL after 15 s): seconds it took and how it exited.
pub fn stop(process: &mut Process) -> Result<(f64, String)> {
    let asked = Instant::now();
    let status = process.terminate(Duration::from_secs(15))?;
    Ok((asked.elapsed().as_secs_f64(), status.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_reader_returns_complete_lines_once() {
        let dir = std::env::temp_dir().join(format!("firstsync-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "one\ntw").unwrap();
        let mut reader = LogReader::new(&path);
        assert_eq!(reader.new_lines(), ["one"]);
        assert!(reader.new_lines().is_empty());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"o\nthree\n").unwrap();
        assert_eq!(reader.new_lines(), ["two", "three"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
