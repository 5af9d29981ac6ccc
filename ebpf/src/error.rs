//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// What went wrong in the eBPF datapath, and with which object.
///
/// A full map is its own variant ([`EbpfError::MapFull`]) so the caller can
/// tell "the kernel has no room" (resize, or skip the Service) from a bug.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// Parsing the object or creating its maps failed.
    #[error("loading the socket-LB object (pin path {pin_path}): {source}")]
    Load {
        /// The folder maps are pinned in.
        pin_path: PathBuf,
        /// What aya reported.
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// A program could not be found, loaded (verified) or attached.
    #[error("program {program}: {action}: {source}")]
    Program {
        /// The program's name (`sy_connect4`, ...).
        program: &'static str,
        /// What was being done (`load`, `attach to /sys/fs/cgroup/...`).
        action: String,
        /// What aya reported.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The object has no program or map of that name (a build mismatch).
    #[error("the BPF object has no {kind} named {name}")]
    Missing {
        /// `program` or `map`.
        kind: &'static str,
        /// The name looked for.
        name: &'static str,
    },

    /// A map was not what this crate expects (type or key/value size): a
    /// pinned map left by an incompatible version, for example.
    #[error("map {map}: {source}")]
    MapType {
        /// The map's name.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// An update failed because the map has no room (E2BIG, ENOSPC, ENOMEM).
    #[error("map {map} is full: cannot add {key}")]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// The key that did not fit.
        key: String,
    },

    /// A map operation failed for another reason.
    #[error("map {map}: {op} {key}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// `get`, `put`, `delete` or `iterate`.
        op: &'static str,
        /// The key, as text.
        key: String,
        /// What aya reported.
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// An entry read from a map does not decode (an unknown family or
    /// protocol): something other than this crate wrote it.
    #[error("map {map}: entry {key} is invalid: {detail}")]
    Corrupt {
        /// The map's name.
        map: &'static str,
        /// The raw key, as text.
        key: String,
        /// What is wrong with it.
        detail: String,
    },

    /// An argument this crate cannot write (a Maglev table of the wrong size).
    #[error("{what}")]
    InvalidInput {
        /// What is wrong.
        what: String,
    },

    /// Pinning or unpinning a link or map failed.
    #[error("pin {path}: {detail}")]
    Pin {
        /// The pin's path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },

    /// A file-system or system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// A netlink (`sock_diag`) exchange failed.
    #[error("sock_diag: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl EbpfError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
