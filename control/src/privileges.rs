//! Least privilege: the capabilities `switchyard run` needs, by proxy mode, and dropping all
//! the others at start, before any thread is made (capabilities are per thread, and threads
//! inherit them).
//!
//! | capability            | why                                                                  |
//! |-----------------------|----------------------------------------------------------------------|
//! | `CAP_NET_ADMIN`       | VIPs on the VIP interface, tc and XDP attach, cgroup socket programs |
//! | `CAP_NET_BIND_SERVICE`| Service ports below 1024 (userspace mode's VIP listeners, L7)       |
//! | `CAP_BPF`             | eBPF mode: loading programs, creating and pinning maps              |
//! | `CAP_PERFMON`         | eBPF mode: the programs' pointer arithmetic and helper calls        |
//! | `CAP_SYS_ADMIN`       | eBPF mode: cgroup attach, links and maps reopened by id at restart, |
//! |                       | entering pods' network namespaces                                    |
//! | `CAP_SYS_PTRACE`      | eBPF mode with `--close-stale-sockets`: opening the network         |
//! |                       | namespace of the cgroup's processes to close their stale sockets    |
//!
//! `--proxy-mode auto` keeps eBPF mode's set, since it may choose eBPF.
//!
//! Everything else (`CAP_DAC_OVERRIDE`, `CAP_SYS_PTRACE`, `CAP_SETUID`, ...) is dropped from
//! the effective, permitted, inheritable and ambient sets and, when the process may
//! (`CAP_SETPCAP`), from the bounding set, so nothing it runs can get it back.

use std::collections::BTreeSet;

use caps::{CapSet, Capability, CapsHashSet};

use crate::cli::ProxyMode;

/// The capabilities `switchyard run` keeps in `mode` (`close_stale`: `--close-stale-sockets`).
pub fn needed(mode: ProxyMode, close_stale: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::from([Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE]);
    if mode != ProxyMode::Userspace {
        keep.extend([
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_SYS_ADMIN,
        ]);
        if close_stale {
            // /proc/PID/ns/net of processes that hold more capabilities than the daemon.
            keep.insert(Capability::CAP_SYS_PTRACE);
        }
    }
    keep
}

/// Why the capabilities could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "switchyard run --proxy-mode {mode} needs {missing}, which this process does not have \
         (run it as root, or grant them: e.g. `setcap` on the binary or the pod's securityContext)"
    )]
    Missing { mode: &'static str, missing: String },
    #[error("cannot {action} capabilities: {source}")]
    Caps {
        action: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// What [`drop_all_but`] did, for the start log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Kept, by name.
    pub kept: BTreeSet<String>,
    /// Dropped from the permitted set, by name.
    pub dropped: BTreeSet<String>,
    /// Whether the bounding set was cleared too (needs `CAP_SETPCAP`).
    pub bounding: bool,
}

fn names(set: &CapsHashSet) -> BTreeSet<String> {
    set.iter().map(ToString::to_string).collect()
}

fn caps_error(action: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { action, source }
}

/// Keeps `keep` and drops every other capability of the calling thread. Call it before any
/// other thread exists. Fails, changing nothing, when a capability of `keep` is missing.
pub fn drop_all_but(keep: &CapsHashSet, mode: ProxyMode) -> Result<Dropped, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_error("read"))?;
    let missing: CapsHashSet = keep.difference(&permitted).copied().collect();
    if !missing.is_empty() {
        let missing = names(&missing).into_iter().collect::<Vec<_>>().join(", ");
        return Err(PrivilegeError::Missing {
            mode: match mode {
                ProxyMode::Auto => "auto",
                ProxyMode::Ebpf => "ebpf",
                ProxyMode::Userspace => "userspace",
            },
            missing,
        });
    }
    let dropped: CapsHashSet = permitted.difference(keep).copied().collect();
    // The bounding set first: lowering it takes CAP_SETPCAP, which goes next.
    let bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_error("read"))?;
    if bounding {
        for cap in caps::read(None, CapSet::Bounding).map_err(caps_error("read"))? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(caps_error("lower the bounding"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error("clear the ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("clear the inheritable"))?;
    // Effective must stay within permitted: lower it first.
    caps::set(None, CapSet::Effective, keep).map_err(caps_error("set the effective"))?;
    caps::set(None, CapSet::Permitted, keep).map_err(caps_error("set the permitted"))?;
    Ok(Dropped {
        kept: names(keep),
        dropped: names(&dropped),
        bounding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userspace_mode_needs_no_ebpf_capability() {
        assert_eq!(
            needed(ProxyMode::Userspace, true),
            needed(ProxyMode::Userspace, false)
        );
        let caps = names(&needed(ProxyMode::Userspace, true));
        assert_eq!(
            caps,
            BTreeSet::from([
                "CAP_NET_ADMIN".to_owned(),
                "CAP_NET_BIND_SERVICE".to_owned()
            ])
        );
    }

    #[test]
    fn ebpf_and_auto_modes_add_bpf_perfmon_and_sys_admin() {
        assert_eq!(
            needed(ProxyMode::Auto, false),
            needed(ProxyMode::Ebpf, false)
        );
        let caps = names(&needed(ProxyMode::Ebpf, false));
        let want: BTreeSet<String> = [
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(caps, want);
        let with_stale = names(&needed(ProxyMode::Ebpf, true));
        assert_eq!(
            with_stale.difference(&want).collect::<Vec<_>>(),
            vec!["CAP_SYS_PTRACE"]
        );
    }

    /// Capabilities are per thread: the drop is tried on a thread of its own, which leaves the
    /// test process as it was.
    #[test]
    fn a_thread_keeps_exactly_what_it_needs() {
        let outcome = std::thread::spawn(|| {
            let keep = needed(ProxyMode::Userspace, false);
            let dropped = drop_all_but(&keep, ProxyMode::Userspace);
            let effective = caps::read(None, CapSet::Effective).unwrap();
            let permitted = caps::read(None, CapSet::Permitted).unwrap();
            let bounding = caps::read(None, CapSet::Bounding).unwrap();
            (keep, dropped, effective, permitted, bounding)
        })
        .join()
        .unwrap();
        let (keep, dropped, effective, permitted, bounding) = outcome;
        match dropped {
            Ok(dropped) => {
                assert_eq!(effective, keep);
                assert_eq!(permitted, keep);
                if dropped.bounding {
                    assert_eq!(bounding, keep, "nothing can be regained through exec");
                }
                assert!(dropped.dropped.contains("CAP_DAC_OVERRIDE") || !is_root());
            }
            // Not root: the missing capabilities are named, and nothing was changed.
            Err(PrivilegeError::Missing { missing, .. }) => {
                assert!(missing.contains("CAP_NET_ADMIN"), "{missing}");
            }
            Err(error) => panic!("{error}"),
        }
    }

    fn is_root() -> bool {
        caps::has_cap(None, CapSet::Permitted, Capability::CAP_DAC_OVERRIDE).unwrap_or(false)
    }
}
