//! Closing sockets that still point at a backend that is gone, in every network namespace of
//! the processes in switchyard's cgroup (pods have namespaces of their own), through the
//! kernel's `sock_diag` socket destroy. A client then sees an error and reconnects, and its next
//! `connect()`/`sendmsg()` is balanced to a live backend.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use switchyard_ebpf::Proto;

/// `/proc/PID/ns/net` of one process per network namespace found in the cgroup's subtree,
/// keyed by the namespace's (device, inode).
fn namespaces_of(cgroup: &Path) -> BTreeMap<(u64, u64), PathBuf> {
    let mut out = BTreeMap::new();
    let mut folders = vec![cgroup.to_path_buf()];
    while let Some(folder) = folders.pop() {
        if let Ok(procs) = std::fs::read_to_string(folder.join("cgroup.procs")) {
            for pid in procs.lines().filter(|l| !l.is_empty()) {
                let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                match std::fs::metadata(&ns) {
                    Ok(meta) => {
                        out.entry((meta.dev(), meta.ino())).or_insert(ns);
                    }
                    // The process has exited.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    // Not silent: its stale sockets stay open (e.g. CAP_SYS_PTRACE missing).
                    Err(error) => {
                        tracing::warn!(netns = %ns.display(), %error, "cannot open a process's network namespace; its sockets to removed backends stay open");
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&folder) {
            folders.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Closes, in each namespace of the cgroup's processes, the sockets connected to `gone`.
/// Runs on blocking threads (entering a namespace changes the calling thread).
pub fn close_in_cgroup(cgroup: &Path, gone: &[(SocketAddr, Proto)]) {
    for ns in namespaces_of(cgroup).into_values() {
        let Ok(file) = File::open(&ns) else {
            continue; // the process has exited
        };
        let gone = gone.to_vec();
        let worker = std::thread::spawn(move || -> Result<usize, String> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot enter the namespace: {e}"))?;
            let mut closed = 0;
            for (addr, proto) in &gone {
                closed += switchyard_ebpf::destroy_sockets_to(*addr, *proto)
                    .map_err(|e| format!("cannot close sockets to {addr}: {e}"))?;
            }
            Ok(closed)
        });
        match worker.join() {
            Ok(Ok(0)) => {}
            Ok(Ok(closed)) => {
                tracing::info!(closed, netns = %ns.display(), "closed sockets to backends that are gone");
            }
            Ok(Err(error)) => tracing::warn!(netns = %ns.display(), "{error}"),
            Err(_) => tracing::warn!(netns = %ns.display(), "socket closing thread failed"),
        }
    }
}
