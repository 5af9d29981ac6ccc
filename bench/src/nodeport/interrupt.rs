//! Cleanup when the run is interrupted. A signal ends the process without
//! running the guards' destructors; [`crate::reaper`] then removes the run's
//! processes, namespaces and cgroups by name, but it pairs eBPF pins with
//! the single-node topology's client cgroup (`<prefix>-client`). The
//! cluster used here pins node `i`'s daemon under `<prefix>-node<i>` and
//! attaches it to client `i`'s cgroup `<prefix>-c<i>`, so those are removed
//! here first, with `switchyard cleanup`, before the reaper runs (and after
//! the daemons are killed: a running daemon would repair what cleanup
//! removes).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pin folders of this process's clusters' node daemons, each with the
/// cgroup of its node's client.
fn node_pins(bpffs: &Path, cgroup_root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let prefix = format!("sy{}x", std::process::id());
    let Ok(entries) = std::fs::read_dir(bpffs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                return None;
            }
            let (cluster, node) = name.rsplit_once("-node")?;
            node.parse::<usize>().ok()?;
            Some((entry.path(), cgroup_root.join(format!("{cluster}-c{node}"))))
        })
        .collect()
}

/// SIGKILL to every process inside this run's namespaces (`sy<pid>x...`).
fn kill_namespace_processes() {
    let prefix = format!("sy{}x", std::process::id());
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for ns in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
    {
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
}

/// On SIGINT, SIGTERM or SIGHUP: `switchyard cleanup` for every node
/// daemon's pins, then the reaper; exits with status 130.
pub fn install(switchyard: PathBuf) -> Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("interrupted: removing this run's eBPF state, namespaces and cgroups");
        kill_namespace_processes();
        let cgroup_root = switchyard_tests::netns::cgroup2_root().unwrap_or_default();
        for (pins, cgroup) in node_pins(Path::new(switchyard_tests::daemon::BPFFS), &cgroup_root) {
            let _ = Command::new(&switchyard)
                .arg("cleanup")
                .arg("--bpf-pin-path")
                .arg(&pins)
                .arg("--cgroup-path")
                .arg(&cgroup)
                .status();
        }
        crate::reaper::reap(Some(&switchyard));
        std::process::exit(130);
    })
    .context("install the signal handler")
}
