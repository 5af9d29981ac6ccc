//! CPU time and memory of a process, from `/proc`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cpu;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time (user + system) so far, seconds.
    pub cpu_s: f64,
    /// Resident memory now (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// The most resident memory so far (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Usage {
    /// Reads process `pid` now.
    pub fn read(pid: u32, ticks_per_s: u64) -> Result<Self> {
        let cpu_s = cpu::process_time(pid, ticks_per_s)?.as_secs_f64();
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Ok(Self {
            cpu_s,
            rss_mib: status_kib(&status, "VmRSS:").unwrap_or(0.0) / 1024.0,
            peak_rss_mib: status_kib(&status, "VmHWM:").unwrap_or(0.0) / 1024.0,
        })
    }
}

/// A process over a phase: CPU used between two readings, memory at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseUsage {
    /// `node-<i>`, `apiserver` or `writer`.
    pub process: String,
    /// CPU seconds used in the phase.
    pub cpu_s: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// The most resident memory up to the end, MiB.
    pub peak_rss_mib: f64,
}

impl PhaseUsage {
    /// From the readings at the start and the end of the phase.
    pub fn between(process: &str, start: Usage, end: Usage) -> Self {
        Self {
            process: process.to_owned(),
            cpu_s: end.cpu_s - start.cpu_s,
            rss_mib: end.rss_mib,
            peak_rss_mib: end.peak_rss_mib,
        }
    }
}
