//! switchyard's eBPF datapath.
//!
//! What it owns:
//! - the BPF programs, in C (`src/bpf/*.bpf.c`), and `src/bpf/switchyard.h`,
//!   the one header with every map key and value;
//! - their build with clang-19 (`build.rs`; the object is embedded in the
//!   crate);
//! - the loader ([`SocketLb::open`]): maps and links pinned on bpffs, so a
//!   restarted daemon finds its state and traffic never stops; attachment to
//!   a cgroup v2; drift repair ([`SocketLb::verify_links`]) and
//!   [`cleanup`];
//! - typed map handles ([`maps`]): `#[repr(C)]` mirrors of the header,
//!   friendly types, and the host ↔ network byte order conversions;
//! - closing sockets to removed backends ([`destroy_sockets_to`]).
//!
//! What it never does: Service semantics. It does not know Kubernetes, does
//! not choose backends, slots, Maglev tables or ids, and does not order
//! updates: it writes what it is told, entry by entry, and the caller (the
//! controller's eBPF datapath adapter) makes each change make-before-break
//! (backends, then slots, then the frontend's count; removal the other way).
//!
//! The socket load balancer ([`SocketLb`]) translates a Service address to a
//! backend when a socket connects (TCP, connected UDP) or sends (unconnected
//! UDP), in the `cgroup/connect*` and `cgroup/sendmsg*` hooks, and back in
//! `cgroup/recvmsg*` and `cgroup/getpeername*`, so applications see the VIP.
//! It balances sockets of processes in the configured cgroup only.
//!
//! The north-south load balancer ([`NodePortLb`]) serves `NodePorts`,
//! external IPs and load-balancer IPs on the packet path: tc programs on the
//! node's external interfaces over the same maps, with connection tracking
//! (`sy_ct`, `sy_ct_rev`), SNAT for backends on other nodes, and
//! `loadBalancerSourceRanges` (`sy_srcranges`).

// Mirroring kernel layouts (`unsafe impl aya::Pod`) and a few raw bpf(2)
// commands need `unsafe`; the modules that do allow it, each `unsafe` with
// a `// SAFETY:` line. Everything else is safe code.
#![deny(unsafe_code)]

mod error;
pub mod maps;
mod nodeport;
mod socket_lb;
mod sockets;
mod sys;

pub use error::EbpfError;
pub use maps::{
    BackendState, BackendValue, FLAG_AFFINITY, FLAG_DROP, FLAG_DSR, FLAG_MAGLEV, FLAG_SRC_RANGES,
    FrontendKey, FrontendKind, FrontendValue, MAGLEV_CHUNK, MAGLEV_MAX_SIZE, MaglevKey, Proto,
    SlotKey, Stats,
};
pub use nodeport::{
    DeviceLink, Direction, NODEPORT_PROGRAMS, NodePortLb, TcMode, XDP_PROGRAM, XdpAttach,
    cleanup_clsact,
};
pub use socket_lb::{
    LinkState, MAPS, OpenReport, PROGRAMS, ProgramLink, SizeMismatch, SocketLb, SocketLbConfig,
    attached_programs, cleanup, probe,
};
pub use sockets::destroy_sockets_to;
