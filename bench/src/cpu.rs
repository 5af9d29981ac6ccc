//! Which CPU runs what, and how busy each was: pinning by affinity mask and
//! CPU accounting read from `/proc`.
//!
//! A process inherits the affinity mask of the thread that spawns it, and a
//! tokio runtime sizes its worker pool from that mask, so a proxy started by
//! a thread pinned to one CPU runs there with one worker.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The calling thread's own id, as `sched_*affinity` take it.
fn this_thread() -> Pid {
    Pid::from_raw(0)
}

fn cpu_set(cpus: &[usize]) -> Result<CpuSet> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .with_context(|| format!("CPU {cpu} is out of range"))?;
    }
    Ok(set)
}

/// Pins the calling thread (and so everything it spawns from now on) to
/// `cpus`.
pub fn pin_this_thread(cpus: &[usize]) -> Result<()> {
    sched_setaffinity(this_thread(), &cpu_set(cpus)?)
        .with_context(|| format!("pin this thread to CPUs {cpus:?}"))
}

/// Runs `f` with the calling thread pinned to `cpu`, so that the processes
/// `f` spawns start there; the thread's mask is restored afterwards.
pub fn with_cpu<T>(cpu: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let saved = sched_getaffinity(this_thread()).context("read this thread's CPU mask")?;
    sched_setaffinity(this_thread(), &cpu_set(&[cpu])?)
        .with_context(|| format!("pin this thread to CPU {cpu}"))?;
    let result = f();
    sched_setaffinity(this_thread(), &saved).context("restore this thread's CPU mask")?;
    result
}

/// One thread of a process and the CPUs it may run on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadAffinity {
    /// Its thread id.
    pub tid: u32,
    /// Its name (`comm`), e.g. `tokio-runtime-w`.
    pub name: String,
    /// `Cpus_allowed_list`, e.g. `1`.
    pub cpus: String,
    /// CPU time (user + system) it has used, in seconds.
    pub cpu_s: f64,
}

/// Every thread of process `pid`, its allowed CPUs and the CPU time it used.
pub fn threads(pid: u32, ticks_per_s: u64) -> Result<Vec<ThreadAffinity>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let path = entry.path();
        // A thread may exit between the listing and the reads.
        let (Ok(comm), Ok(status), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let cpus = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        threads.push(ThreadAffinity {
            tid,
            name: comm.trim().to_owned(),
            cpus,
            cpu_s: parse_process_times(&stat, ticks_per_s).map_or(0.0, |t| t.total().as_secs_f64()),
        });
    }
    threads.sort_by_key(|thread| thread.tid);
    Ok(threads)
}

/// Fails unless every thread of `pid` may run on exactly `cpu`.
pub fn check_pinned(
    label: &str,
    pid: u32,
    cpu: usize,
    ticks_per_s: u64,
) -> Result<Vec<ThreadAffinity>> {
    let threads = threads(pid, ticks_per_s)?;
    let want = cpu.to_string();
    let stray: Vec<&ThreadAffinity> = threads.iter().filter(|t| t.cpus != want).collect();
    if !stray.is_empty() {
        bail!("{label} (pid {pid}) has threads not pinned to CPU {cpu}: {stray:?}");
    }
    Ok(threads)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> Result<u64> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("run getconf CLK_TCK")?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")
}

/// CPU time (user + system) used so far by all threads of process `pid`.
pub fn process_time(pid: u32, ticks_per_s: u64) -> Result<Duration> {
    Ok(process_times(pid, ticks_per_s)?.total())
}

/// CPU time of a process, split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessTimes {
    /// In user space.
    pub user: Duration,
    /// In the kernel on its behalf (system calls, and the network stack's work they do).
    pub system: Duration,
}

impl ProcessTimes {
    /// User and system time together.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

impl std::ops::Add for ProcessTimes {
    type Output = ProcessTimes;

    fn add(self, other: ProcessTimes) -> ProcessTimes {
        ProcessTimes {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// User and system CPU time used so far by all threads of process `pid`.
pub fn process_times(pid: u32, ticks_per_s: u64) -> Result<ProcessTimes> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_process_times(&stat, ticks_per_s).with_context(|| format!("parse {path}: {stat}"))
}

fn parse_process_times(stat: &str, ticks_per_s: u64) -> Option<ProcessTimes> {
    // `comm` may hold spaces and parentheses: the fields start after the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_s.max(1));
    Some(ProcessTimes {
        user: time(utime),
        system: time(stime),
    })
}

/// Busy and total time of each CPU, from `/proc/stat` (in clock ticks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// `(busy, total)` per CPU, indexed by CPU number.
    pub per_cpu: Vec<(u64, u64)>,
}

impl CpuTimes {
    /// Reads `/proc/stat` now.
    pub fn read() -> Result<Self> {
        Self::read_from(Path::new("/proc/stat"))
    }

    fn read_from(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut per_cpu = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(name) = fields.next() else { continue };
            let Some(index) = name
                .strip_prefix("cpu")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal guest guest_nice;
            // guest time is already inside user, so it is not added again.
            let total: u64 = values.iter().take(8).sum();
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            if per_cpu.len() <= index {
                per_cpu.resize(index + 1, (0, 0));
            }
            per_cpu[index] = (total.saturating_sub(idle), total);
        }
        Self { per_cpu }
    }

    /// The fraction of time each CPU was busy between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &Self) -> Vec<f64> {
        self.per_cpu
            .iter()
            .zip(&earlier.per_cpu)
            .map(|(&(busy, total), &(busy0, total0))| {
                let dt = total.saturating_sub(total0);
                if dt == 0 {
                    0.0
                } else {
                    busy.saturating_sub(busy0) as f64 / dt as f64
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_times_are_user_and_system_ticks() {
        let stat = "4242 (tokio (w) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(
            parse_process_times(stat, 100),
            Some(ProcessTimes {
                user: Duration::from_millis(2500),
                system: Duration::from_millis(500),
            })
        );
        assert_eq!(parse_process_times("garbage", 100), None);
    }

    #[test]
    fn cpu_busy_fraction_counts_everything_but_idle_and_iowait() {
        let before = CpuTimes::parse(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0 0 0\n",
        );
        let after = CpuTimes::parse(
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 50 0 25 125 0 0 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0 0 0\n",
        );
        assert_eq!(after.busy_since(&before), vec![0.75, 0.0]);
    }
}
