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
    pub index: u32,
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
