//! The map entries in switchyard's own terms, and their conversion to and
//! from the kernel layouts in [`raw`].
//!
//! Host ↔ network byte order is handled here and nowhere else: the friendly
//! types hold ports in host order and addresses as [`IpAddr`]; the raw ones
//! hold what the BPF programs compare against `ctx->user_port` and
//! `ctx->user_ip4`/`user_ip6` (network order). Counts, ids, flags and
//! timeouts are host order on both sides.

pub mod raw;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use self::raw::MAGLEV_CHUNK;
use self::raw::{SyBackend, SyFrontend, SyFrontendKey, SyMaglevKey, SySlotKey};

/// `SY_FAMILY_V4`.
pub const FAMILY_V4: u8 = 4;
/// `SY_FAMILY_V6`.
pub const FAMILY_V6: u8 = 6;
/// `SY_F_AFFINITY`: `sessionAffinity: ClientIP`; the client is the socket's
/// network namespace (its cookie), or the packet's source address.
pub const FLAG_AFFINITY: u16 = 0x1;
/// `SY_F_MAGLEV`: choose through the service's Maglev table.
pub const FLAG_MAGLEV: u16 = 0x2;
/// `SY_F_DROP`: with no backends, fail with EPERM instead of ECONNREFUSED.
pub const FLAG_DROP: u16 = 0x4;
/// `SY_F_SRC_RANGES`: packet level, only sources in `sy_srcranges` may open a flow.
pub const FLAG_SRC_RANGES: u16 = 0x8;
/// `SY_F_DSR`: packet level, TCP: a backend on another node answers the
/// client itself (direct server return).
pub const FLAG_DSR: u16 = 0x10;
/// `SY_B_TERMINATING`.
const BACKEND_TERMINATING: u8 = 0x1;
/// `SY_B_LOCAL`.
const BACKEND_LOCAL: u8 = 0x2;
/// The largest Maglev table the kernel maps are meant for (a prime).
pub const MAGLEV_MAX_SIZE: u32 = 131_071;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// A transport protocol a frontend can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (and MPTCP sockets, which the programs treat as TCP).
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol with IP protocol number `number`, if it is one.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Why a raw entry does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The family byte is neither 4 nor 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// The protocol byte is neither TCP nor UDP.
    #[error("unknown protocol {0}")]
    Proto(u8),
    /// The state byte is neither 0 (active) nor 1 (terminating).
    #[error("unknown backend state {0}")]
    State(u8),
    /// A frontend kind outside `SY_KIND_*`.
    #[error("unknown frontend kind {0}")]
    Kind(u8),
}

/// An address as the maps hold it: the family byte and 16 bytes, IPv4 in
/// the first four (network order), the rest zero.
fn addr_to_raw(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_V4)
        }
        IpAddr::V6(v6) => {
            bytes.copy_from_slice(&v6.octets());
            (bytes, FAMILY_V6)
        }
    }
}

fn addr_from_raw(bytes: [u8; 16], family: u8) -> Result<IpAddr, DecodeError> {
    match family {
        FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
        other => Err(DecodeError::Family(other)),
    }
}

/// A Service address: VIP, port and protocol (`sy_frontend_key`).
///
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is stored as IPv6 as it is
/// given, and never matches: the programs look such destinations up as IPv4.
/// Write the IPv4 frontend instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The VIP.
    pub addr: IpAddr,
    /// The port, host byte order.
    pub port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl FrontendKey {
    /// A frontend key.
    pub const fn new(addr: IpAddr, port: u16, proto: Proto) -> Self {
        Self { addr, port, proto }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

impl From<FrontendKey> for SyFrontendKey {
    fn from(key: FrontendKey) -> Self {
        let (addr, family) = addr_to_raw(key.addr);
        Self {
            addr,
            port: key.port.to_be(),
            proto: key.proto.number(),
            family,
        }
    }
}

impl TryFrom<SyFrontendKey> for FrontendKey {
    type Error = DecodeError;

    fn try_from(raw: SyFrontendKey) -> Result<Self, Self::Error> {
        Ok(Self {
            addr: addr_from_raw(raw.addr, raw.family)?,
            port: u16::from_be(raw.port),
            proto: Proto::from_number(raw.proto).ok_or(DecodeError::Proto(raw.proto))?,
        })
    }
}

/// Which Service address a frontend is (`SY_KIND_*`): the packet-level
/// programs serve every kind but [`FrontendKind::ClusterIp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// A cluster IP (socket level only).
    #[default]
    ClusterIp,
    /// A node port on one of the node's addresses.
    NodePort,
    /// An external IP.
    ExternalIp,
    /// A load balancer's ingress IP.
    LoadBalancer,
}

impl FrontendKind {
    const fn to_raw(self) -> u8 {
        match self {
            Self::ClusterIp => 0,
            Self::NodePort => 1,
            Self::ExternalIp => 2,
            Self::LoadBalancer => 3,
        }
    }

    const fn from_raw(raw: u8) -> Result<Self, DecodeError> {
        match raw {
            0 => Ok(Self::ClusterIp),
            1 => Ok(Self::NodePort),
            2 => Ok(Self::ExternalIp),
            3 => Ok(Self::LoadBalancer),
            other => Err(DecodeError::Kind(other)),
        }
    }
}

/// What a frontend points at (`sy_frontend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// The service's id: key into slots, Maglev tables and affinity. Never 0.
    pub service_id: u32,
    /// Backends in slots `1..=count`; 0 refuses (or drops, [`FLAG_DROP`]).
    pub count: u16,
    /// [`FLAG_AFFINITY`], [`FLAG_MAGLEV`], [`FLAG_DROP`], [`FLAG_SRC_RANGES`].
    pub flags: u16,
    /// Seconds a client keeps its backend after its last connection, with
    /// [`FLAG_AFFINITY`].
    pub affinity_timeout: u32,
    /// Entries of the Maglev table (a prime), with [`FLAG_MAGLEV`].
    pub maglev_size: u32,
    /// Packet level: the node address that traffic to a backend on another
    /// node is sent from. Stored as 16 bytes; an address whose last 12 bytes
    /// are zero reads back as IPv4.
    pub snat: Option<IpAddr>,
    /// Which Service address it is.
    pub kind: FrontendKind,
}

impl From<FrontendValue> for SyFrontend {
    fn from(value: FrontendValue) -> Self {
        Self {
            service_id: value.service_id,
            count: value.count,
            flags: value.flags,
            affinity_timeout: value.affinity_timeout,
            maglev_size: value.maglev_size,
            snat_addr: value.snat.map_or([0; 16], |a| addr_to_raw(a).0),
            kind: value.kind.to_raw(),
            pad: [0; 3],
        }
    }
}

impl TryFrom<SyFrontend> for FrontendValue {
    type Error = DecodeError;

    fn try_from(raw: SyFrontend) -> Result<Self, Self::Error> {
        let snat = if raw.snat_addr == [0; 16] {
            None
        } else if raw.snat_addr[4..].iter().all(|b| *b == 0) {
            Some(addr_from_raw(raw.snat_addr, FAMILY_V4)?)
        } else {
            Some(addr_from_raw(raw.snat_addr, FAMILY_V6)?)
        };
        Ok(Self {
            service_id: raw.service_id,
            count: raw.count,
            flags: raw.flags,
            affinity_timeout: raw.affinity_timeout,
            maglev_size: raw.maglev_size,
            snat,
            kind: FrontendKind::from_raw(raw.kind)?,
        })
    }
}

/// Whether a backend takes new connections (informational for the
/// programs: userspace decides which backends are in the slots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Serving.
    #[default]
    Active,
    /// Draining: kept for existing connections and affinity.
    Terminating,
}

impl BackendState {
    const fn to_raw(self) -> u8 {
        match self {
            Self::Active => 0,
            Self::Terminating => BACKEND_TERMINATING,
        }
    }
}

/// A backend (`sy_backend`), shared by every service that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Its address and port (host order in the `SocketAddr`).
    pub addr: SocketAddr,
    /// Active or terminating.
    pub state: BackendState,
    /// On this node: packet-level traffic reaches it without SNAT.
    pub local: bool,
}

impl BackendValue {
    /// An active backend at `addr` on another node.
    pub const fn active(addr: SocketAddr) -> Self {
        Self {
            addr,
            state: BackendState::Active,
            local: false,
        }
    }
}

impl From<BackendValue> for SyBackend {
    fn from(value: BackendValue) -> Self {
        let (addr, family) = addr_to_raw(value.addr.ip());
        Self {
            addr,
            port: value.addr.port().to_be(),
            family,
            state: value.state.to_raw() | if value.local { BACKEND_LOCAL } else { 0 },
        }
    }
}

impl BackendValue {
    /// `self`, if `state` holds no bits beyond `SY_B_*`.
    const fn checked(self, state: u8) -> Result<Self, DecodeError> {
        if state & !(BACKEND_TERMINATING | BACKEND_LOCAL) != 0 {
            return Err(DecodeError::State(state));
        }
        Ok(self)
    }
}

impl TryFrom<SyBackend> for BackendValue {
    type Error = DecodeError;

    fn try_from(raw: SyBackend) -> Result<Self, Self::Error> {
        Self {
            addr: SocketAddr::new(addr_from_raw(raw.addr, raw.family)?, u16::from_be(raw.port)),
            state: if raw.state & BACKEND_TERMINATING != 0 {
                BackendState::Terminating
            } else {
                BackendState::Active
            },
            local: raw.state & BACKEND_LOCAL != 0,
        }
        .checked(raw.state)
    }
}

/// Slot `slot` (1-based) of service `service_id` (`sy_slot_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// The service.
    pub service_id: u32,
    /// The slot, `1..=count`.
    pub slot: u32,
}

impl SlotKey {
    /// A slot key.
    pub const fn new(service_id: u32, slot: u32) -> Self {
        Self { service_id, slot }
    }
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {} slot {}", self.service_id, self.slot)
    }
}

impl From<SlotKey> for SySlotKey {
    fn from(key: SlotKey) -> Self {
        Self {
            service_id: key.service_id,
            slot: key.slot,
        }
    }
}

impl From<SySlotKey> for SlotKey {
    fn from(raw: SySlotKey) -> Self {
        Self {
            service_id: raw.service_id,
            slot: raw.slot,
        }
    }
}

/// Chunk `chunk` of service `service_id`'s Maglev table (`sy_maglev_key`):
/// entries `chunk * MAGLEV_CHUNK ..` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    /// The service.
    pub service_id: u32,
    /// The chunk.
    pub chunk: u32,
}

impl MaglevKey {
    /// A Maglev key.
    pub const fn new(service_id: u32, chunk: u32) -> Self {
        Self { service_id, chunk }
    }
}

impl fmt::Display for MaglevKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {} maglev chunk {}", self.service_id, self.chunk)
    }
}

impl From<MaglevKey> for SyMaglevKey {
    fn from(key: MaglevKey) -> Self {
        Self {
            service_id: key.service_id,
            chunk: key.chunk,
        }
    }
}

/// The programs' counters (`sy_stats`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connects and sendmsgs rewritten to a backend.
    pub translated: u64,
    /// Refused or dropped: a frontend without backends.
    pub no_backend: u64,
    /// A slot or Maglev entry pointed at no backend (should stay 0).
    pub backend_missing: u64,
    /// Replies and getpeername calls rewritten back to the VIP.
    pub revnat: u64,
    /// Packet level: new flows sent to a backend.
    pub ns_flows: u64,
    /// Packet level: dropped, source outside `loadBalancerSourceRanges`.
    pub ns_denied: u64,
    /// Packet level: dropped, no free SNAT port.
    pub ns_snat_failed: u64,
    /// Packet level: packets translated, both directions.
    pub ns_packets: u64,
    /// Of those, sent back out by the XDP program.
    pub xdp_tx: u64,
    /// DSR: SYNs sent with the option, or received and recorded.
    pub dsr: u64,
}

/// Indices into `sy_stats` (`enum sy_stat`).
pub(crate) mod stat {
    pub const TRANSLATED: u32 = 0;
    pub const NO_BACKEND: u32 = 1;
    pub const BACKEND_MISSING: u32 = 2;
    pub const REVNAT: u32 = 3;
    pub const NS_FLOWS: u32 = 4;
    pub const NS_DENIED: u32 = 5;
    pub const NS_SNAT_FAILED: u32 = 6;
    pub const NS_PACKETS: u32 = 7;
    pub const XDP_TX: u32 = 8;
    pub const DSR: u32 = 9;
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "checked against the header by the layout test")
    )]
    pub const MAX: u32 = 10;
}
