//! Cleanup when the run is interrupted. A signal ends the process without
//! running the guards' destructors, so on SIGINT, SIGTERM or SIGHUP this
//! removes, by name, everything the run made: every name it gives starts
//! with `sy<pid>x` (switchyard-tests' `unique_prefix`). It stops the
//! processes inside its namespaces by PID, removes its eBPF state with
//! `switchyard cleanup`, then deletes the namespaces and cgroups.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child outside the run's namespaces (the in-process driver) that the
/// reaper must stop too; 0 when there is none.
pub static DRIVER_PID: AtomicU32 = AtomicU32::new(0);

fn prefix() -> String {
    format!("sy{}x", std::process::id())
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

fn kill_pid(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes everything of this run; `switchyard` is the binary whose
/// `cleanup` command removes the eBPF state.
pub fn reap(switchyard: Option<&Path>) {
    let prefix = prefix();
    if let Ok(pid) = i32::try_from(DRIVER_PID.load(Ordering::Relaxed))
        && pid > 0
    {
        kill_pid(pid);
    }
    let namespaces: Vec<String> = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| name.starts_with(&prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for ns in &namespaces {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    kill_pid(pid);
                }
            }
        }
    }
    let cgroups = cgroup2_root()
        .map(|root| entries_with_prefix(&root, &prefix))
        .unwrap_or_default();
    for pins in entries_with_prefix(Path::new("/sys/fs/bpf"), &prefix) {
        let name = pins
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (topo, suffix) = name.split_once('-').unwrap_or((&name, ""));
        let cgroup_name = if suffix == "cp" {
            format!("{topo}-cp")
        } else {
            format!("{topo}-client")
        };
        let cgroup = cgroups.iter().find(|c| {
            c.file_name()
                .is_some_and(|n| n.to_string_lossy() == cgroup_name)
        });
        if let (Some(bin), Some(cgroup)) = (switchyard, cgroup) {
            let _ = Command::new(bin)
                .arg("cleanup")
                .arg("--bpf-pin-path")
                .arg(&pins)
                .arg("--cgroup-path")
                .arg(cgroup)
                .status();
        }
    }
    for ns in &namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for scratch in entries_with_prefix(&std::env::temp_dir().join("switchyard-tests"), &prefix) {
        let _ = std::fs::remove_dir_all(scratch);
    }
    for cgroup in &cgroups {
        if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    kill_pid(pid);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Err(error) = std::fs::remove_dir(cgroup) {
            eprintln!("could not remove cgroup {}: {error}", cgroup.display());
        }
    }
}

/// Reaps on SIGINT, SIGTERM and SIGHUP, then exits with status 130.
pub fn install(switchyard: Option<PathBuf>) -> Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("interrupted: removing this run's namespaces, cgroups and eBPF state");
        reap(switchyard.as_deref());
        std::process::exit(130);
    })
    .context("install the signal handler")
}
