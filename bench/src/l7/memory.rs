//! A proxy's memory, from `/proc/<pid>/status`: its resident set now
//! (`VmRSS`) and its peak (`VmHWM`, the high-water mark).
//!
//! The peak is reset before each measurement by writing `5` to
//! `/proc/<pid>/clear_refs` (Linux 4.0+: "reset the peak resident set size
//! to the current one"; it clears nothing else), so the peak read after a
//! run is the peak of that run's window, not of whatever came before (the
//! other scenario, the warm-up, the start).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Memory of a group of processes (nginx's master and worker, or one
/// process), summed, in KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Sum of `VmHWM`.
    pub peak_kib: u64,
    /// Sum of `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM` of each process, in the order given.
    pub peak_kib_each: Vec<u64>,
}

/// Resets the peak of each process to its current resident set.
pub fn reset_peak(pids: &[u32]) -> Result<()> {
    for pid in pids {
        let path = format!("/proc/{pid}/clear_refs");
        std::fs::write(&path, "5").with_context(|| format!("write 5 to {path}"))?;
    }
    Ok(())
}

/// Reads the memory of `pids` now.
pub fn read(pids: &[u32]) -> Result<Memory> {
    let mut memory = Memory::default();
    for pid in pids {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let peak = field_kib(&status, "VmHWM:").with_context(|| format!("no VmHWM in {path}"))?;
        let rss = field_kib(&status, "VmRSS:").with_context(|| format!("no VmRSS in {path}"))?;
        memory.peak_kib += peak;
        memory.rss_kib += rss;
        memory.peak_kib_each.push(peak);
    }
    Ok(memory)
}

/// `VmHWM:\t   12345 kB` → 12345.
fn field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status =
            "Name:\tnginx\nVmPeak:\t   20000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(field_kib(status, "VmHWM:"), Some(5120));
        assert_eq!(field_kib(status, "VmRSS:"), Some(4096));
        assert_eq!(field_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_a_peak_at_least_its_resident_set() {
        let pid = std::process::id();
        let memory = read(&[pid]).expect("read /proc/self/status");
        assert!(memory.peak_kib >= memory.rss_kib, "{memory:?}");
        assert!(memory.rss_kib > 0, "{memory:?}");
        assert_eq!(memory.peak_kib_each, vec![memory.peak_kib]);
    }
}
