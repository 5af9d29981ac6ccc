//! `#[repr(C)]` mirrors of the structs in `switchyard.h`, byte for byte.
//!
//! These are what goes into the kernel's maps. Addresses and ports are in
//! network byte order, as in the header; only [`super`] converts them.
//! A unit test compares every size and offset with the C compiler's.

#![allow(unsafe_code)]

/// `struct sy_frontend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyFrontendKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `struct sy_frontend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyFrontend {
    pub service_id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
    pub maglev_size: u32,
    pub snat_addr: [u8; 16],
    pub kind: u8,
    pub pad: [u8; 3],
}

/// `struct sy_slot_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SySlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// `struct sy_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SySlot {
    pub backend_id: u32,
}

/// `struct sy_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyBackend {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub state: u8,
}

/// `struct sy_maglev_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyMaglevKey {
    pub service_id: u32,
    pub chunk: u32,
}

/// Entries of one `struct sy_maglev_chunk`.
pub const MAGLEV_CHUNK: usize = 1024;

/// `struct sy_maglev_chunk`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyMaglevChunk {
    pub backend_id: [u32; MAGLEV_CHUNK],
}

impl Default for SyMaglevChunk {
    fn default() -> Self {
        Self {
            backend_id: [0; MAGLEV_CHUNK],
        }
    }
}

/// `struct sy_srcrange_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SySrcrangeKey {
    pub prefixlen: u32,
    pub service_id: u32,
    pub addr: [u8; 16],
}

/// The data of a `struct sy_srcrange_key` after its `prefixlen`, as aya's
/// `lpm_trie::Key` wraps it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SySrcrangeData {
    pub service_id: u32,
    pub addr: [u8; 16],
}

/// `struct sy_flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyFlow {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// `struct sy_ct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyCt {
    pub last_seen_ns: u64,
    pub backend: [u8; 16],
    pub snat_addr: [u8; 16],
    pub backend_port: u16,
    pub snat_port: u16,
    pub backend_id: u32,
    pub family: u8,
    pub flags: u8,
    pub pad: [u8; 6],
}

/// `struct sy_ct_rev`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyCtRev {
    pub last_seen_ns: u64,
    pub client: [u8; 16],
    pub frontend: [u8; 16],
    pub client_port: u16,
    pub frontend_port: u16,
    pub family: u8,
    pub flags: u8,
    pub pad: [u8; 2],
}

/// `struct sy_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyAffinityKey {
    pub client_cookie: u64,
    pub service_id: u32,
    pub pad: u32,
}

/// `struct sy_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyAffinity {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad: u32,
}

/// `struct sy_revnat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyRevnatKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub pad: [u8; 5],
}

/// `struct sy_revnat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyRevnat {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub pad: u8,
}

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte
// arrays, and has no implicit padding (the layout test checks that every
// struct's size is the sum of its fields' sizes), so every bit pattern is a
// valid value and no uninitialised byte is ever read.
unsafe impl aya::Pod for SyFrontendKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SyFrontend {}
// SAFETY: as above.
unsafe impl aya::Pod for SySlotKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SySlot {}
// SAFETY: as above.
unsafe impl aya::Pod for SyBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for SyMaglevKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SyAffinityKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SyAffinity {}
// SAFETY: as above.
unsafe impl aya::Pod for SyRevnatKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SyRevnat {}
// SAFETY: as above.
unsafe impl aya::Pod for SyMaglevChunk {}
// SAFETY: as above.
unsafe impl aya::Pod for SySrcrangeKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SyFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for SySrcrangeData {}
// SAFETY: as above.
unsafe impl aya::Pod for SyCt {}
// SAFETY: as above.
unsafe impl aya::Pod for SyCtRev {}
