//! The socket-level load balancer: loading `socket_lb.bpf.c`, pinning its
//! maps and links, attaching it to a cgroup, and typed access to its maps.

use std::fmt::Display;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader, Pod};
use parking_lot::Mutex;

use crate::EbpfError;
use crate::maps::raw::{
    SyAffinity, SyAffinityKey, SyBackend, SyCt, SyCtRev, SyFlow, SyFrontend, SyFrontendKey,
    SyMaglevChunk, SyMaglevKey, SyRevnat, SyRevnatKey, SySlot, SySlotKey, SySrcrangeData,
};
use crate::maps::{
    BackendValue, FrontendKey, FrontendValue, MAGLEV_CHUNK, MAGLEV_MAX_SIZE, MaglevKey, SlotKey,
    Stats, stat,
};
use crate::sys;

/// The compiled `socket_lb.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_lb.bpf.o"));

/// The programs, in attach order: reverse translation first, so that no
/// socket is ever sent to a backend whose replies would not be translated.
pub const PROGRAMS: [&str; 8] = [
    "sy_recvmsg4",
    "sy_recvmsg6",
    "sy_getpeername4",
    "sy_getpeername6",
    "sy_connect4",
    "sy_connect6",
    "sy_sendmsg4",
    "sy_sendmsg6",
];

/// The maps, each pinned by name in the pin folder (and shared with the
/// packet-level programs of [`crate::NodePortLb`]).
pub const MAPS: [&str; 10] = [
    "sy_frontends",
    "sy_slots",
    "sy_backends",
    "sy_maglev",
    "sy_affinity",
    "sy_revnat",
    "sy_srcranges",
    "sy_ct",
    "sy_ct_rev",
    "sy_stats",
];

const LINK_PREFIX: &str = "link_";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Where the socket load balancer lives and how big its maps are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLbConfig {
    /// The bpffs folder that holds the pinned maps and links
    /// (`/sys/fs/bpf/switchyard`).
    pub pin_path: PathBuf,
    /// The cgroup v2 folder the programs attach to: every socket of every
    /// process in it (and its descendants) is balanced.
    pub cgroup_path: PathBuf,
    /// Entries of `sy_frontends` (Service address + port + protocol).
    pub max_frontends: u32,
    /// Entries of `sy_backends`.
    pub max_backends: u32,
    /// Entries of `sy_slots` (backends of all services together).
    pub max_slots: u32,
    /// Entries of `sy_maglev`: chunks of [`MAGLEV_CHUNK`] table entries
    /// (one per 1,024 entries of each Maglev frontend's table).
    pub max_maglev: u32,
    /// Entries of `sy_affinity` (LRU: clients × affinity services).
    pub max_affinity: u32,
    /// Entries of `sy_revnat` (LRU: sockets talking to a backend).
    pub max_revnat: u32,
    /// Entries of `sy_srcranges` (`loadBalancerSourceRanges` of all
    /// frontends).
    pub max_source_ranges: u32,
    /// Entries of `sy_ct` and of `sy_ct_rev` (LRU: north-south flows).
    pub max_conntrack: u32,
}

impl Default for SocketLbConfig {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from("/sys/fs/bpf/switchyard"),
            cgroup_path: PathBuf::from("/sys/fs/cgroup/unified"),
            max_frontends: 65_536,
            max_backends: 262_144,
            max_slots: 1_048_576,
            max_maglev: 65_536,
            max_affinity: 65_536,
            max_revnat: 262_144,
            max_source_ranges: 65_536,
            max_conntrack: 262_144,
        }
    }
}

impl SocketLbConfig {
    /// The default sizes with this pin folder and cgroup.
    pub fn new(pin_path: impl Into<PathBuf>, cgroup_path: impl Into<PathBuf>) -> Self {
        Self {
            pin_path: pin_path.into(),
            cgroup_path: cgroup_path.into(),
            ..Self::default()
        }
    }

    pub(crate) fn max_entries(&self) -> [(&'static str, u32); 9] {
        [
            ("sy_frontends", self.max_frontends),
            ("sy_backends", self.max_backends),
            ("sy_slots", self.max_slots),
            ("sy_maglev", self.max_maglev),
            ("sy_affinity", self.max_affinity),
            ("sy_revnat", self.max_revnat),
            ("sy_srcranges", self.max_source_ranges),
            ("sy_ct", self.max_conntrack),
            ("sy_ct_rev", self.max_conntrack),
        ]
    }
}

/// How [`SocketLb::open`] found a program's attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Its pinned link was still attached to the cgroup and was kept; the
    /// link's program was swapped in place for the one just loaded
    /// (`BPF_LINK_UPDATE`), so traffic never stopped.
    Reused,
    /// It was attached to the cgroup and its link pinned now.
    Attached,
}

/// One program's attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramLink {
    /// The program (`sy_connect4`, ...).
    pub program: &'static str,
    /// Reused or attached.
    pub state: LinkState,
    /// The kernel's id of its link.
    pub link_id: u32,
    /// The kernel's id of the program the link runs: the one loaded by this
    /// open, also for a reused link.
    pub prog_id: u32,
}

/// What [`SocketLb::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Every program, in attach order.
    pub programs: Vec<ProgramLink>,
    /// Maps whose pins existed and were reused, with their entries.
    pub maps_reused: Vec<&'static str>,
    /// Maps created (and pinned) now.
    pub maps_created: Vec<&'static str>,
    /// Reused maps whose size differs from the configuration: a pinned map
    /// keeps its size until [`cleanup`].
    pub size_mismatches: Vec<SizeMismatch>,
}

/// A reused map whose size is not the configured one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeMismatch {
    /// The map.
    pub map: &'static str,
    /// Its entries, as pinned.
    pub pinned: u32,
    /// Its entries, as configured now.
    pub configured: u32,
}

/// The loaded socket load balancer: its maps, and the programs attached to
/// the cgroup through pinned links.
///
/// Dropping it detaches nothing: links and maps stay pinned, and the kernel
/// keeps balancing with the last state written. [`cleanup`] removes them.
pub struct SocketLb {
    config: SocketLbConfig,
    cgroup_id: u64,
    ebpf: Ebpf,
    report: OpenReport,
    frontends: Mutex<BpfHashMap<MapData, SyFrontendKey, SyFrontend>>,
    slots: Mutex<BpfHashMap<MapData, SySlotKey, SySlot>>,
    backends: Mutex<BpfHashMap<MapData, u32, SyBackend>>,
    maglev: Mutex<BpfHashMap<MapData, SyMaglevKey, SyMaglevChunk>>,
    affinity: Mutex<BpfHashMap<MapData, SyAffinityKey, SyAffinity>>,
    revnat: Mutex<BpfHashMap<MapData, SyRevnatKey, SyRevnat>>,
    srcranges: Mutex<LpmTrie<MapData, SySrcrangeData, u8>>,
    ct: Mutex<BpfHashMap<MapData, SyFlow, SyCt>>,
    ct_rev: Mutex<BpfHashMap<MapData, SyFlow, SyCtRev>>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("config", &self.config)
            .field("cgroup_id", &self.cgroup_id)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl SocketLb {
    /// Loads the programs, reusing the maps pinned in `config.pin_path` (so a
    /// restarted daemon finds its state) and the links pinned there (so
    /// traffic never stops); attaches and pins whatever is missing.
    ///
    /// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there.
    pub fn open(config: &SocketLbConfig) -> Result<Self, EbpfError> {
        let cgroup_id = cgroup_id(&config.cgroup_path)?;
        prepare_pin_dir(&config.pin_path)?;
        let (maps_reused, maps_created): (Vec<_>, Vec<_>) = MAPS
            .iter()
            .partition(|name| config.pin_path.join(name).exists());

        let mut ebpf = load_object(&config.pin_path, &config.max_entries())?;
        // Maps first: a pinned map of the wrong type fails here, before any
        // link is touched.
        let frontends = take_hash_map(&mut ebpf, "sy_frontends")?;
        let slots = take_hash_map(&mut ebpf, "sy_slots")?;
        let backends = take_hash_map(&mut ebpf, "sy_backends")?;
        let maglev = take_hash_map(&mut ebpf, "sy_maglev")?;
        let affinity = take_hash_map(&mut ebpf, "sy_affinity")?;
        let revnat = take_hash_map(&mut ebpf, "sy_revnat")?;
        let srcranges = {
            let map = ebpf.take_map("sy_srcranges").ok_or(EbpfError::Missing {
                kind: "map",
                name: "sy_srcranges",
            })?;
            LpmTrie::try_from(map).map_err(|source| EbpfError::MapType {
                map: "sy_srcranges",
                source: Box::new(source),
            })?
        };
        let ct = take_hash_map(&mut ebpf, "sy_ct")?;
        let ct_rev = take_hash_map(&mut ebpf, "sy_ct_rev")?;
        let stats = {
            let map = ebpf.take_map("sy_stats").ok_or(EbpfError::Missing {
                kind: "map",
                name: "sy_stats",
            })?;
            PerCpuArray::try_from(map).map_err(|source| EbpfError::MapType {
                map: "sy_stats",
                source: Box::new(source),
            })?
        };
        let mut size_mismatches = Vec::new();
        for ((name, want), map) in config.max_entries().into_iter().zip([
            IterableMap::map(&frontends),
            IterableMap::map(&backends),
            IterableMap::map(&slots),
            IterableMap::map(&maglev),
            IterableMap::map(&affinity),
            IterableMap::map(&revnat),
            IterableMap::map(&srcranges),
            IterableMap::map(&ct),
            IterableMap::map(&ct_rev),
        ]) {
            let have = map
                .info()
                .map_err(|source| EbpfError::MapType {
                    map: name,
                    source: Box::new(source),
                })?
                .max_entries();
            if have != want {
                tracing::warn!(
                    map = name,
                    pinned = have,
                    configured = want,
                    "a pinned map keeps its size; `cleanup` and reopen to resize it"
                );
                size_mismatches.push(SizeMismatch {
                    map: name,
                    pinned: have,
                    configured: want,
                });
            }
        }

        let mut report = OpenReport {
            programs: Vec::with_capacity(PROGRAMS.len()),
            maps_reused,
            maps_created,
            size_mismatches,
        };
        for program in PROGRAMS {
            let (state, info) = ensure_link(&mut ebpf, program, config, cgroup_id, true)?
                .ok_or_else(|| EbpfError::Pin {
                    path: link_pin(&config.pin_path, program),
                    detail: "link neither reused nor attached".to_owned(),
                })?;
            report.programs.push(ProgramLink {
                program,
                state,
                link_id: info.id,
                prog_id: info.prog_id,
            });
        }
        tracing::info!(
            pin_path = %config.pin_path.display(),
            cgroup = %config.cgroup_path.display(),
            reused_links = report.programs.iter().filter(|p| p.state == LinkState::Reused).count(),
            attached_links = report.programs.iter().filter(|p| p.state == LinkState::Attached).count(),
            reused_maps = report.maps_reused.len(),
            "socket load balancer open"
        );

        Ok(Self {
            frontends: Mutex::new(frontends),
            slots: Mutex::new(slots),
            backends: Mutex::new(backends),
            maglev: Mutex::new(maglev),
            affinity: Mutex::new(affinity),
            revnat: Mutex::new(revnat),
            srcranges: Mutex::new(srcranges),
            ct: Mutex::new(ct),
            ct_rev: Mutex::new(ct_rev),
            stats: Mutex::new(stats),
            config: config.clone(),
            cgroup_id,
            ebpf,
            report,
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SocketLbConfig {
        &self.config
    }

    /// What [`SocketLb::open`] reused and attached.
    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// Re-attaches and re-pins every program whose link pin went missing, or
    /// whose pinned link is no longer attached to the cgroup, and re-pins
    /// every map whose pin went missing (drift repair). Returns one line per
    /// repair; empty when nothing had drifted.
    pub fn verify_links(&mut self) -> Result<Vec<String>, EbpfError> {
        let mut repaired = Vec::new();
        for program in PROGRAMS {
            let pin = link_pin(&self.config.pin_path, program);
            let before = if pin.exists() {
                "pinned link not attached to the cgroup"
            } else {
                "link pin missing"
            };
            if let Some((_, info)) =
                ensure_link(&mut self.ebpf, program, &self.config, self.cgroup_id, false)?
            {
                let link_id = info.id;
                tracing::warn!(program, link_id, "{before}: re-attached");
                repaired.push(format!("{program}: {before}: re-attached (link {link_id})"));
            }
        }
        let dir = &self.config.pin_path;
        repin_map(
            dir,
            "sy_frontends",
            IterableMap::map(&*self.frontends.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_slots",
            IterableMap::map(&*self.slots.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_backends",
            IterableMap::map(&*self.backends.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_maglev",
            IterableMap::map(&*self.maglev.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_affinity",
            IterableMap::map(&*self.affinity.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_revnat",
            IterableMap::map(&*self.revnat.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_srcranges",
            IterableMap::map(&*self.srcranges.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_ct",
            IterableMap::map(&*self.ct.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_ct_rev",
            IterableMap::map(&*self.ct_rev.lock()),
            &mut repaired,
        )?;
        repin_map(
            dir,
            "sy_stats",
            IterableMap::map(&*self.stats.lock()),
            &mut repaired,
        )?;
        Ok(repaired)
    }

    // --- frontends ---

    /// The frontend `key`, if there is one.
    pub fn frontend_get(&self, key: &FrontendKey) -> Result<Option<FrontendValue>, EbpfError> {
        get(
            &self.frontends,
            "sy_frontends",
            key,
            &SyFrontendKey::from(*key),
        )?
        .map(|raw| decode_frontend(key, raw))
        .transpose()
    }

    /// Writes the frontend `key`. Write its backends and slots first.
    pub fn frontend_put(&self, key: &FrontendKey, value: &FrontendValue) -> Result<(), EbpfError> {
        put(
            &self.frontends,
            "sy_frontends",
            key,
            &SyFrontendKey::from(*key),
            &SyFrontend::from(*value),
        )
    }

    /// Removes the frontend `key`; returns whether it was there.
    pub fn frontend_delete(&self, key: &FrontendKey) -> Result<bool, EbpfError> {
        delete(
            &self.frontends,
            "sy_frontends",
            key,
            &SyFrontendKey::from(*key),
        )
    }

    /// Every frontend.
    pub fn frontends(&self) -> Result<Vec<(FrontendKey, FrontendValue)>, EbpfError> {
        let mut out = Vec::new();
        for entry in &*self.frontends.lock() {
            let (raw_key, raw_value) =
                entry.map_err(|source| iterate_error("sy_frontends", source))?;
            let key = FrontendKey::try_from(raw_key).map_err(|error| EbpfError::Corrupt {
                map: "sy_frontends",
                key: format!("{raw_key:?}"),
                detail: error.to_string(),
            })?;
            out.push((key, decode_frontend(&key, raw_value)?));
        }
        out.sort_by_key(|(key, _)| *key);
        Ok(out)
    }

    // --- slots ---

    /// The backend id in slot `key`, if set.
    pub fn slot_get(&self, key: &SlotKey) -> Result<Option<u32>, EbpfError> {
        Ok(get(&self.slots, "sy_slots", key, &SySlotKey::from(*key))?.map(|slot| slot.backend_id))
    }

    /// Points slot `key` at `backend_id`.
    pub fn slot_put(&self, key: &SlotKey, backend_id: u32) -> Result<(), EbpfError> {
        put(
            &self.slots,
            "sy_slots",
            key,
            &SySlotKey::from(*key),
            &SySlot { backend_id },
        )
    }

    /// Clears slot `key`; returns whether it was set.
    pub fn slot_delete(&self, key: &SlotKey) -> Result<bool, EbpfError> {
        delete(&self.slots, "sy_slots", key, &SySlotKey::from(*key))
    }

    /// Slots `1..=count` of `service_id`, in order (`None` for an unset one).
    pub fn slots_of(&self, service_id: u32, count: u16) -> Result<Vec<Option<u32>>, EbpfError> {
        (1..=u32::from(count))
            .map(|slot| self.slot_get(&SlotKey::new(service_id, slot)))
            .collect()
    }

    // --- backends ---

    /// Backend `id`, if there is one.
    pub fn backend_get(&self, id: u32) -> Result<Option<BackendValue>, EbpfError> {
        get(&self.backends, "sy_backends", &BackendId(id), &id)?
            .map(|raw| decode_backend(id, raw))
            .transpose()
    }

    /// Writes backend `id`.
    pub fn backend_put(&self, id: u32, value: &BackendValue) -> Result<(), EbpfError> {
        put(
            &self.backends,
            "sy_backends",
            &BackendId(id),
            &id,
            &SyBackend::from(*value),
        )
    }

    /// Removes backend `id`; returns whether it was there. Unlink it from
    /// every slot and Maglev table first.
    pub fn backend_delete(&self, id: u32) -> Result<bool, EbpfError> {
        delete(&self.backends, "sy_backends", &BackendId(id), &id)
    }

    /// Every backend, by id.
    pub fn backends(&self) -> Result<Vec<(u32, BackendValue)>, EbpfError> {
        let mut out = Vec::new();
        for entry in &*self.backends.lock() {
            let (id, raw) = entry.map_err(|source| iterate_error("sy_backends", source))?;
            out.push((id, decode_backend(id, raw)?));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    // --- Maglev ---

    /// Writes `service_id`'s whole Maglev table, entry `i` = `table[i]`: its
    /// length (`1..=MAGLEV_MAX_SIZE`, a prime) is the frontend's
    /// `maglev_size`. Written in chunks of [`MAGLEV_CHUNK`]; a table that
    /// shrank leaves chunks beyond it, which [`Self::maglev_delete_table`]
    /// with the old size removes.
    pub fn maglev_put_table(&self, service_id: u32, table: &[u32]) -> Result<(), EbpfError> {
        if table.is_empty() || table.len() > MAGLEV_MAX_SIZE as usize {
            return Err(EbpfError::InvalidInput {
                what: format!(
                    "map sy_maglev: service {service_id}: a Maglev table has 1 to {MAGLEV_MAX_SIZE} entries, got {}",
                    table.len()
                ),
            });
        }
        for (chunk, entries) in (0u32..).zip(table.chunks(MAGLEV_CHUNK)) {
            let mut value = SyMaglevChunk::default();
            value.backend_id[..entries.len()].copy_from_slice(entries);
            let key = MaglevKey::new(service_id, chunk);
            put(
                &self.maglev,
                "sy_maglev",
                &key,
                &SyMaglevKey::from(key),
                &value,
            )?;
        }
        Ok(())
    }

    /// `service_id`'s Maglev table of `size` entries, if every chunk of it
    /// is there.
    pub fn maglev_table(&self, service_id: u32, size: u32) -> Result<Option<Vec<u32>>, EbpfError> {
        let size = size as usize;
        let mut table = Vec::with_capacity(size);
        for chunk in 0..chunks_of(size) {
            let key = MaglevKey::new(service_id, chunk);
            match get(&self.maglev, "sy_maglev", &key, &SyMaglevKey::from(key))? {
                Some(value) => {
                    let take = (size - table.len()).min(MAGLEV_CHUNK);
                    table.extend_from_slice(&value.backend_id[..take]);
                }
                None => return Ok(None),
            }
        }
        Ok(Some(table))
    }

    /// Removes `service_id`'s Maglev table of `size` entries.
    pub fn maglev_delete_table(&self, service_id: u32, size: u32) -> Result<(), EbpfError> {
        for chunk in 0..chunks_of(size as usize) {
            let key = MaglevKey::new(service_id, chunk);
            delete(&self.maglev, "sy_maglev", &key, &SyMaglevKey::from(key))?;
        }
        Ok(())
    }

    /// Removes the chunks of `service_id`'s table beyond the first `keep`
    /// entries, up to `old_size` (a table that shrank).
    pub fn maglev_trim_table(
        &self,
        service_id: u32,
        keep: u32,
        old_size: u32,
    ) -> Result<(), EbpfError> {
        for chunk in chunks_of(keep as usize)..chunks_of(old_size as usize) {
            let key = MaglevKey::new(service_id, chunk);
            delete(&self.maglev, "sy_maglev", &key, &SyMaglevKey::from(key))?;
        }
        Ok(())
    }

    // --- loadBalancerSourceRanges ---

    /// Admits `range` to `service_id`'s packet-level frontends.
    pub fn source_range_put(&self, service_id: u32, range: ipnet::IpNet) -> Result<(), EbpfError> {
        let key = source_range_key(service_id, range);
        self.srcranges
            .lock()
            .insert(&key, 1u8, 0)
            .map_err(|source| {
                map_write_error("sy_srcranges", &SourceRange(service_id, range), source)
            })
    }

    /// Removes `range` from `service_id`'s admitted sources.
    pub fn source_range_delete(
        &self,
        service_id: u32,
        range: ipnet::IpNet,
    ) -> Result<bool, EbpfError> {
        let key = source_range_key(service_id, range);
        match self.srcranges.lock().remove(&key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) if errno_of(&source) == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(EbpfError::Map {
                map: "sy_srcranges",
                op: "delete",
                key: SourceRange(service_id, range).to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// Every admitted source range, by service id.
    pub fn source_ranges(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, Vec<ipnet::IpNet>>, EbpfError> {
        let mut out: std::collections::BTreeMap<u32, Vec<ipnet::IpNet>> =
            std::collections::BTreeMap::new();
        for key in self.srcranges.lock().keys() {
            let key = key.map_err(|source| iterate_error("sy_srcranges", source))?;
            let data = key.data();
            let Some(bits) = key.prefix_len().checked_sub(32) else {
                continue;
            };
            // An IPv4 range has at most 32 bits and its address in the first four bytes.
            let net = if bits <= 32 && data.addr[4..].iter().all(|b| *b == 0) {
                let a =
                    std::net::Ipv4Addr::new(data.addr[0], data.addr[1], data.addr[2], data.addr[3]);
                ipnet::Ipv4Net::new(a, bits as u8)
                    .map(ipnet::IpNet::V4)
                    .ok()
            } else {
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(data.addr), bits as u8)
                    .map(ipnet::IpNet::V6)
                    .ok()
            };
            if let Some(net) = net {
                out.entry(data.service_id).or_default().push(net);
            }
        }
        for ranges in out.values_mut() {
            ranges.sort();
        }
        Ok(out)
    }

    // --- packet-level connection tracking ---

    /// Flows in `sy_ct` (client to frontend) and in `sy_ct_rev` (replies):
    /// for status and tests; walks both maps.
    pub fn conntrack_len(&self) -> Result<(usize, usize), EbpfError> {
        let forward = self.ct.lock().keys().count();
        let reverse = self.ct_rev.lock().keys().count();
        Ok((forward, reverse))
    }

    // --- affinity, reverse translation, counters ---

    /// Forgets every client's backend for `service_id` (its backends or its
    /// affinity changed); returns how many entries went.
    pub fn affinity_clear(&self, service_id: u32) -> Result<usize, EbpfError> {
        let mut keys = Vec::new();
        for key in self.affinity.lock().keys() {
            let key = key.map_err(|source| iterate_error("sy_affinity", source))?;
            if key.service_id == service_id {
                keys.push(key);
            }
        }
        let mut removed = 0;
        for key in keys {
            let text = format!("client {} service {}", key.client_cookie, key.service_id);
            if delete(&self.affinity, "sy_affinity", &text, &key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The backend id a client (netns cookie) is stuck to for `service_id`.
    pub fn affinity_get(
        &self,
        client_cookie: u64,
        service_id: u32,
    ) -> Result<Option<u32>, EbpfError> {
        let key = SyAffinityKey {
            client_cookie,
            service_id,
            pad: 0,
        };
        let text = format!("client {client_cookie} service {service_id}");
        Ok(get(&self.affinity, "sy_affinity", &text, &key)?.map(|value| value.backend_id))
    }

    /// How many sockets have a reverse-translation entry (LRU: entries of
    /// closed sockets linger until evicted).
    pub fn revnat_len(&self) -> Result<usize, EbpfError> {
        let mut n = 0;
        for key in self.revnat.lock().keys() {
            key.map_err(|source| iterate_error("sy_revnat", source))?;
            n += 1;
        }
        Ok(n)
    }

    /// The programs' counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, EbpfError> {
        let read = |index: u32| -> Result<u64, EbpfError> {
            let values = self
                .stats
                .lock()
                .get(&index, 0)
                .map_err(|source| EbpfError::Map {
                    map: "sy_stats",
                    op: "get",
                    key: format!("counter {index}"),
                    source: Box::new(source),
                })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Stats {
            translated: read(stat::TRANSLATED)?,
            no_backend: read(stat::NO_BACKEND)?,
            backend_missing: read(stat::BACKEND_MISSING)?,
            revnat: read(stat::REVNAT)?,
            ns_flows: read(stat::NS_FLOWS)?,
            ns_denied: read(stat::NS_DENIED)?,
            ns_snat_failed: read(stat::NS_SNAT_FAILED)?,
            ns_packets: read(stat::NS_PACKETS)?,
            xdp_tx: read(stat::XDP_TX)?,
            dsr: read(stat::DSR)?,
        })
    }
}

/// Pins `map` as `dir/name` again if that pin is gone.
fn repin_map(
    dir: &Path,
    name: &'static str,
    map: &MapData,
    repaired: &mut Vec<String>,
) -> Result<(), EbpfError> {
    let pin = dir.join(name);
    if pin.exists() {
        return Ok(());
    }
    map.pin(&pin).map_err(|error| EbpfError::Pin {
        path: pin.clone(),
        detail: error.to_string(),
    })?;
    tracing::warn!(map = name, "map pin missing: re-pinned");
    repaired.push(format!("{name}: map pin missing: re-pinned"));
    Ok(())
}

/// How many chunks of `sy_maglev` a table of `size` entries takes.
fn chunks_of(size: usize) -> u32 {
    u32::try_from(size.div_ceil(MAGLEV_CHUNK)).unwrap_or(u32::MAX)
}

fn source_range_key(service_id: u32, range: ipnet::IpNet) -> LpmKey<SySrcrangeData> {
    let range = range.trunc();
    let mut addr = [0u8; 16];
    match range.addr() {
        std::net::IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
    }
    LpmKey::new(
        32 + u32::from(range.prefix_len()),
        SySrcrangeData { service_id, addr },
    )
}

/// `service <id> range <cidr>`, for error messages.
struct SourceRange(u32, ipnet::IpNet);

impl Display for SourceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {} range {}", self.0, self.1)
    }
}

/// The error of a failed map write: [`EbpfError::MapFull`] when the map is
/// full.
fn map_write_error(name: &'static str, key_text: &dyn Display, source: MapError) -> EbpfError {
    if matches!(
        errno_of(&source),
        Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
    ) {
        EbpfError::MapFull {
            map: name,
            key: key_text.to_string(),
        }
    } else {
        EbpfError::Map {
            map: name,
            op: "put",
            key: key_text.to_string(),
            source: Box::new(source),
        }
    }
}

/// `backend <id>`, for error messages.
struct BackendId(u32);

impl Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend {}", self.0)
    }
}

fn decode_frontend(key: &FrontendKey, raw: SyFrontend) -> Result<FrontendValue, EbpfError> {
    FrontendValue::try_from(raw).map_err(|error| EbpfError::Corrupt {
        map: "sy_frontends",
        key: key.to_string(),
        detail: error.to_string(),
    })
}

fn decode_backend(id: u32, raw: SyBackend) -> Result<BackendValue, EbpfError> {
    BackendValue::try_from(raw).map_err(|error| EbpfError::Corrupt {
        map: "sy_backends",
        key: format!("backend {id}"),
        detail: error.to_string(),
    })
}

fn errno_of(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(SyscallError { io_error, .. }) | MapError::IoError(io_error) => {
            io_error.raw_os_error()
        }
        _ => None,
    }
}

fn iterate_error(map: &'static str, source: MapError) -> EbpfError {
    EbpfError::Map {
        map,
        op: "iterate",
        key: "(all keys)".to_owned(),
        source: Box::new(source),
    }
}

fn get<K: Pod, V: Pod>(
    map: &Mutex<BpfHashMap<MapData, K, V>>,
    name: &'static str,
    key_text: &dyn Display,
    key: &K,
) -> Result<Option<V>, EbpfError> {
    match map.lock().get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) if errno_of(&source) == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(EbpfError::Map {
            map: name,
            op: "get",
            key: key_text.to_string(),
            source: Box::new(source),
        }),
    }
}

fn put<K: Pod, V: Pod>(
    map: &Mutex<BpfHashMap<MapData, K, V>>,
    name: &'static str,
    key_text: &dyn Display,
    key: &K,
    value: &V,
) -> Result<(), EbpfError> {
    map.lock()
        .insert(key, value, 0)
        .map_err(|source| map_write_error(name, key_text, source))
}

fn delete<K: Pod, V: Pod>(
    map: &Mutex<BpfHashMap<MapData, K, V>>,
    name: &'static str,
    key_text: &dyn Display,
    key: &K,
) -> Result<bool, EbpfError> {
    let removed = map.lock().remove(key);
    match removed {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(source) if errno_of(&source) == Some(libc::ENOENT) => Ok(false),
        Err(source) => Err(EbpfError::Map {
            map: name,
            op: "delete",
            key: key_text.to_string(),
            source: Box::new(source),
        }),
    }
}

fn take_hash_map<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::Missing { kind: "map", name })?;
    BpfHashMap::try_from(map).map_err(|source| EbpfError::MapType {
        map: name,
        source: Box::new(source),
    })
}

fn link_pin(pin_path: &Path, program: &str) -> PathBuf {
    pin_path.join(format!("{LINK_PREFIX}{program}"))
}

/// The id of the cgroup v2 folder `path` (its inode number).
fn cgroup_id(path: &Path) -> Result<u64, EbpfError> {
    let meta =
        std::fs::metadata(path).map_err(|error| EbpfError::io("open cgroup", path, error))?;
    if !meta.is_dir() {
        return Err(EbpfError::io(
            "open cgroup",
            path,
            io::Error::new(io::ErrorKind::NotADirectory, "not a cgroup folder"),
        ));
    }
    Ok(meta.ino())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts bpffs at `/sys/fs/bpf` if needed, creates `pin_path` and checks
/// it is on a bpffs (pins anywhere else fail with EPERM).
fn prepare_pin_dir(pin_path: &Path) -> Result<(), EbpfError> {
    let default = Path::new(DEFAULT_BPFFS);
    if pin_path.starts_with(default) && !is_bpffs(default) {
        std::fs::create_dir_all(default)
            .map_err(|error| EbpfError::io("create bpffs mount point", default, error))?;
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| EbpfError::io("mount bpffs on", default, io::Error::from(errno)))?;
        tracing::info!("mounted bpffs on {DEFAULT_BPFFS}");
    }
    std::fs::create_dir_all(pin_path)
        .map_err(|error| EbpfError::io("create pin folder", pin_path, error))?;
    if !is_bpffs(pin_path) {
        return Err(EbpfError::Pin {
            path: pin_path.to_owned(),
            detail: "not on a bpf file system (mount -t bpf bpf /sys/fs/bpf)".to_owned(),
        });
    }
    Ok(())
}

/// Parses the object and creates (or reuses, from `pin_dir`) its maps, then
/// loads every program into the kernel (the verifier runs here).
fn load_object(pin_dir: &Path, max_entries: &[(&'static str, u32)]) -> Result<Ebpf, EbpfError> {
    let mut ebpf = parse_over_pins(OBJECT, pin_dir, max_entries)?;
    for program in PROGRAMS {
        cgroup_program(&mut ebpf, program)?
            .load()
            .map_err(|source| EbpfError::Program {
                program,
                action: "load".to_owned(),
                source: Box::new(source),
            })?;
    }
    Ok(ebpf)
}

/// Parses a BPF object and creates its maps, or reuses those pinned in
/// `pin_dir` (every map of both objects is pinned by name there), sized as
/// `max_entries` says.
pub(crate) fn parse_over_pins(
    object: &[u8],
    pin_dir: &Path,
    max_entries: &[(&'static str, u32)],
) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    for (name, size) in max_entries {
        loader.map_max_entries(name, *size);
    }
    loader.load(object).map_err(|source| EbpfError::Load {
        pin_path: pin_dir.to_owned(),
        source: Box::new(source),
    })
}

fn cgroup_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut CgroupSockAddr, EbpfError> {
    program_as(ebpf, program, "as cgroup/sock_addr")
}

/// The program `program` of `ebpf` as a `T` (`what` names `T` in the error).
pub(crate) fn program_as<'a, T>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
    what: &str,
) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or(EbpfError::Missing {
            kind: "program",
            name: program,
        })?
        .try_into()
        .map_err(|source| EbpfError::Program {
            program,
            action: what.to_owned(),
            source: Box::new(source),
        })
}

/// Pins `link` at `pin` and reads back what the kernel says of it (the pin
/// keeps the link attached once our fd is closed).
pub(crate) fn pin_link(link: FdLink, pin: &Path) -> Result<sys::LinkInfo, EbpfError> {
    drop(link.pin(pin).map_err(|error| EbpfError::Pin {
        path: pin.to_owned(),
        detail: error.to_string(),
    })?);
    let link = sys::obj_get(pin).map_err(|error| EbpfError::io("open pinned link", pin, error))?;
    link_info_of(pin, &link)
}

/// Opens the link pinned at `pin` if it is still attached to cgroup
/// `cgroup_id`; removes the pin of a link that is not (detaching it first,
/// in case another holder keeps it alive on another cgroup).
fn open_attached_link(pin: &Path, cgroup_id: u64) -> Result<Option<OwnedFd>, EbpfError> {
    let fd = match sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            tracing::warn!(pin = %pin.display(), %error, "unreadable link pin: replacing it");
            remove_pin(pin)?;
            return Ok(None);
        }
    };
    match sys::link_info(fd.as_fd()) {
        Ok(info) if info.link_type == sys::LINK_TYPE_CGROUP && info.cgroup_id == cgroup_id => {
            Ok(Some(fd))
        }
        info => {
            tracing::warn!(pin = %pin.display(), ?info, "pinned link is not attached to the cgroup: replacing it");
            let _ = sys::link_detach(fd.as_fd());
            remove_pin(pin)?;
            Ok(None)
        }
    }
}

pub(crate) fn remove_pin(pin: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(EbpfError::io("unpin", pin, error)),
    }
}

/// Makes sure `program` is attached to the cgroup through a pinned link.
///
/// A link already attached is kept; with `update` its program is replaced
/// in place by the one just loaded, and it is reported as reused. Otherwise
/// nothing is reported for it (`None`). A missing or stale link is attached
/// and pinned anew.
fn ensure_link(
    ebpf: &mut Ebpf,
    program: &'static str,
    config: &SocketLbConfig,
    cgroup_id: u64,
    update: bool,
) -> Result<Option<(LinkState, sys::LinkInfo)>, EbpfError> {
    let pin = link_pin(&config.pin_path, program);
    let prog = cgroup_program(ebpf, program)?;
    if let Some(link) = open_attached_link(&pin, cgroup_id)? {
        if !update {
            return Ok(None);
        }
        let prog_fd = prog.fd().map_err(|source| EbpfError::Program {
            program,
            action: "get its fd".to_owned(),
            source: Box::new(source),
        })?;
        if let Err(error) = sys::link_update(link.as_fd(), prog_fd.as_fd()) {
            // Still attached with the old program, which uses the same
            // pinned maps: keep serving rather than re-attach.
            tracing::warn!(program, %error, "could not update the pinned link's program; keeping the old one");
        }
        let info = link_info_of(&pin, &link)?;
        return Ok(Some((LinkState::Reused, info)));
    }

    let cgroup = File::open(&config.cgroup_path)
        .map_err(|error| EbpfError::io("open cgroup", &config.cgroup_path, error))?;
    let attach_error = |source: aya::programs::ProgramError| EbpfError::Program {
        program,
        action: format!("attach to {}", config.cgroup_path.display()),
        source: Box::new(source),
    };
    let attached = prog
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(attach_error)?;
    let link = prog.take_link(attached).map_err(attach_error)?;
    let fd_link = FdLink::try_from(link).map_err(|error| EbpfError::Pin {
        path: pin.clone(),
        detail: format!("link of {program} is not an fd link: {error}"),
    })?;
    // Dropping the pinned link only closes our fd: the pin keeps it attached.
    let info = pin_link(fd_link, &pin)?;
    Ok(Some((LinkState::Attached, info)))
}

fn link_info_of(pin: &Path, link: &OwnedFd) -> Result<sys::LinkInfo, EbpfError> {
    sys::link_info(link.as_fd()).map_err(|error| EbpfError::io("read link info of", pin, error))
}

/// Detaches and unpins every link and map switchyard pinned in `pin_path`,
/// detaches any other switchyard program still attached to `cgroup_path`
/// through a link, and removes the folder. Idempotent: a missing folder or
/// cgroup is fine.
pub fn cleanup(pin_path: &Path, cgroup_path: &Path) -> Result<(), EbpfError> {
    if pin_path.exists() {
        crate::nodeport::cleanup_devices(pin_path)?;
        for program in PROGRAMS {
            let pin = link_pin(pin_path, program);
            if let Ok(fd) = sys::obj_get(&pin)
                && let Err(error) = sys::link_detach(fd.as_fd())
            {
                // Already detached (ENOLINK) is fine; anything else is not.
                if error.raw_os_error() != Some(libc::ENOLINK) {
                    return Err(EbpfError::io("detach link", &pin, error));
                }
            }
            remove_pin(&pin)?;
        }
        for map in MAPS {
            remove_pin(&pin_path.join(map))?;
        }
    }
    if let Ok(id) = cgroup_id(cgroup_path) {
        detach_strays(cgroup_path, id)?;
    }
    match std::fs::remove_dir(pin_path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(EbpfError::io("remove pin folder", pin_path, error)),
    }
}

/// The cgroup links on cgroup `cgroup_id` whose program is one of ours (by
/// name), with that name.
fn our_links(cgroup_path: &Path, cgroup_id: u64) -> Result<Vec<(OwnedFd, String)>, EbpfError> {
    let ours: std::collections::BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?;
            PROGRAMS
                .contains(&name)
                .then(|| (info.id(), name.to_owned()))
        })
        .collect();
    let ids =
        sys::link_ids().map_err(|error| EbpfError::io("list links for", cgroup_path, error))?;
    let mut links = Vec::new();
    for id in ids {
        // A link can go away between listing and opening it.
        let Ok(fd) = sys::link_fd_by_id(id) else {
            continue;
        };
        let Ok(info) = sys::link_info(fd.as_fd()) else {
            continue;
        };
        if info.link_type == sys::LINK_TYPE_CGROUP
            && info.cgroup_id == cgroup_id
            && let Some(name) = ours.get(&info.prog_id)
        {
            links.push((fd, name.clone()));
        }
    }
    Ok(links)
}

/// The names of switchyard's programs attached through links to the cgroup
/// `cgroup_path`, sorted (a program attached twice is listed twice). Empty
/// for a cgroup that does not exist.
pub fn attached_programs(cgroup_path: &Path) -> Result<Vec<String>, EbpfError> {
    let Ok(id) = cgroup_id(cgroup_path) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = our_links(cgroup_path, id)?
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    names.sort();
    Ok(names)
}

/// Detaches every link of ours left on cgroup `cgroup_id`: links whose pins
/// were lost while some process still holds them open.
fn detach_strays(cgroup_path: &Path, cgroup_id: u64) -> Result<(), EbpfError> {
    for (fd, name) in our_links(cgroup_path, cgroup_id)? {
        sys::link_detach(fd.as_fd())
            .map_err(|error| EbpfError::io("detach stray link on", cgroup_path, error))?;
        tracing::info!(program = %name, "detached a stray switchyard link");
    }
    Ok(())
}

/// Whether this kernel can load these programs (for `--proxy-mode auto`):
/// parses the object, creates its maps (tiny, in a temporary pin folder on
/// bpffs that is removed again) and runs the verifier on every program.
/// Attaches nothing.
pub fn probe() -> Result<(), EbpfError> {
    let dir = Path::new(DEFAULT_BPFFS).join(format!("switchyard-probe-{}", std::process::id()));
    prepare_pin_dir(&dir)?;
    let sizes = [
        ("sy_frontends", 1),
        ("sy_backends", 1),
        ("sy_slots", 1),
        ("sy_maglev", 1),
        ("sy_affinity", 1),
        ("sy_revnat", 1),
        ("sy_srcranges", 1),
        ("sy_ct", 1),
        ("sy_ct_rev", 1),
    ];
    let result = load_object(&dir, &sizes).map(drop);
    for map in MAPS {
        let _ = std::fs::remove_file(dir.join(map));
    }
    let _ = std::fs::remove_dir(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lb_can_be_shared_between_threads() {
        // Map operations take `&self` (each map has its own lock), so the
        // controller can read state for metrics while it writes.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SocketLb>();
    }

    #[test]
    fn default_config_is_the_daemons() {
        let config = SocketLbConfig::default();
        assert_eq!(config.pin_path, Path::new("/sys/fs/bpf/switchyard"));
        assert_eq!(config.cgroup_path, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            config.max_entries(),
            [
                ("sy_frontends", 65_536),
                ("sy_backends", 262_144),
                ("sy_slots", 1_048_576),
                ("sy_maglev", 65_536),
                ("sy_affinity", 65_536),
                ("sy_revnat", 262_144),
                ("sy_srcranges", 65_536),
                ("sy_ct", 262_144),
                ("sy_ct_rev", 262_144),
            ]
        );
    }

    #[test]
    fn every_map_of_the_object_is_listed_and_sized() {
        // The object's maps are exactly MAPS; each sized one can be resized.
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        let mut names: Vec<_> = object.maps.keys().cloned().collect();
        names.sort();
        let mut expected: Vec<_> = MAPS.iter().map(|m| (*m).to_owned()).collect();
        expected.sort();
        assert_eq!(names, expected);
        let mut programs: Vec<_> = object.programs.keys().cloned().collect();
        programs.sort();
        let mut expected: Vec<_> = PROGRAMS.iter().map(|p| (*p).to_owned()).collect();
        expected.sort();
        assert_eq!(programs, expected);
    }
}
