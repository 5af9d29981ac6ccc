//! The eBPF datapath: socket-level load balancing. Each frontend is an entry of the kernel's
//! `sy_frontends` map, its backends slots of `sy_slots` pointing into `sy_backends`; the
//! cgroup programs of `switchyard-ebpf` rewrite `connect()`/`sendmsg()` to a backend.
//!
//! Updates are make-before-break: a backend is written before any slot points at it; new slots
//! before the frontend's count covers them; the count shrinks before slots beyond it go; a
//! backend is deleted only when no slot points at it. A lookup sees the old or the new backend
//! set, or a mix of live backends, never a slot that points at nothing.
//!
//! The kernel's maps are the truth: at start (and after any failed write) the in-memory view
//! is read back from them, so a restarted daemon rewrites only what differs and traffic never
//! stops. Nothing is flushed when the daemon stops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;
use switchyard_ebpf::{
    BackendState as KernelBackendState, BackendValue, EbpfError, FLAG_AFFINITY, FLAG_DROP,
    FLAG_DSR, FLAG_MAGLEV, FLAG_SRC_RANGES, FrontendKey, FrontendKind as KernelKind, FrontendValue,
    NodePortLb, Proto, SlotKey, SocketLb, SocketLbConfig, TcMode,
};

use super::{Applied, BackendView, Datapath, Drift, FrontendView};
use crate::diff::TableDiff;
use crate::model::{
    Algorithm, BackendState, EmptyAction, Frontend, FrontendKind, Protocol, ServiceEntry,
    ServiceTable,
};

/// Configuration of the eBPF datapath.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    pub socket_lb: SocketLbConfig,
    /// Close sockets of the cgroup's processes that are connected to a backend that is gone,
    /// so clients (UDP DNS clients above all) reconnect to a live one.
    pub close_stale_sockets: bool,
    /// The node's external interfaces, where the tc programs serve NodePorts, external and
    /// load-balancer IPs.
    pub devices: Devices,
    /// Put the XDP fast path in front of the tc programs.
    pub xdp: bool,
    /// How the tc programs attach (TCX, or clsact filters).
    pub tc_mode: TcMode,
    /// TCP north-south flows to a backend on another node are answered by that node directly
    /// (direct server return) instead of through SNAT here.
    pub dsr: bool,
    /// The smallest Maglev table (a prime of [`crate::maglev::TABLE_SIZES`]); a frontend
    /// with more than a hundredth of it in backends gets a larger one.
    pub maglev_table_size: u32,
}

/// Where the tc programs attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    /// The interfaces that hold the node addresses the table uses (NodePort addresses and
    /// SNAT sources), as they become known.
    Auto,
    /// These interfaces.
    Listed(Vec<String>),
    /// None: north-south frontends are served at socket level only.
    Off,
}

impl Devices {
    /// From `--devices`: empty is [`Devices::Auto`], `none` is [`Devices::Off`].
    pub fn from_flag(values: &[String]) -> Devices {
        let names: Vec<String> = values
            .iter()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        match names.as_slice() {
            [] => Devices::Auto,
            [only] if only.eq_ignore_ascii_case("none") => Devices::Off,
            _ => Devices::Listed(names),
        }
    }
}

/// The interfaces that hold any of `addrs` (in this network namespace), sorted.
fn interfaces_holding(addrs: &BTreeSet<IpAddr>) -> Vec<String> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: BTreeSet<String> = BTreeSet::new();
    for ifaddr in list {
        let Some(address) = ifaddr.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if addrs.contains(&ip) && ifaddr.interface_name != "lo" {
            out.insert(ifaddr.interface_name);
        }
    }
    out.into_iter().collect()
}

/// What one frontend holds in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    service_id: u32,
    flags: u16,
    affinity_timeout: u32,
    /// Entries of its Maglev table (0 without one).
    maglev_size: u32,
    snat: Option<IpAddr>,
    /// Its `loadBalancerSourceRanges` in `sy_srcranges`, sorted.
    source_ranges: Vec<IpNet>,
    /// Backend ids of slots 1..=count.
    backends: Vec<u32>,
}

/// A backend's identity in `sy_backends`: address and port (shared by every frontend).
type BackendAddr = (IpAddr, u16);

/// The in-memory view of the maps, always rebuildable from them.
#[derive(Debug, Default)]
struct View {
    frontends: BTreeMap<Frontend, Programmed>,
    backends: BTreeMap<u32, BackendValue>,
    ids: BTreeMap<BackendAddr, u32>,
    refs: BTreeMap<u32, usize>,
    next_backend_id: u32,
    free_backend_ids: Vec<u32>,
    service_ids: BTreeSet<u32>,
    next_service_id: u32,
}

impl View {
    fn allocate_service_id(&mut self) -> u32 {
        loop {
            self.next_service_id = self.next_service_id.wrapping_add(1).max(1);
            if self.service_ids.insert(self.next_service_id) {
                return self.next_service_id;
            }
        }
    }

    fn allocate_backend_id(&mut self) -> u32 {
        if let Some(id) = self.free_backend_ids.pop() {
            return id;
        }
        loop {
            self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
            if !self.backends.contains_key(&self.next_backend_id) {
                return self.next_backend_id;
            }
        }
    }
}

/// The eBPF datapath: socket-level balancing, and packet-level for north-south frontends.
pub struct EbpfDatapath {
    lb: Arc<Mutex<SocketLb>>,
    /// The tc programs on the node's external interfaces (none without `--devices`).
    nodeport: Option<NodePortLb>,
    devices: Devices,
    xdp: bool,
    tc_mode: TcMode,
    dsr: bool,
    socket_lb_config: SocketLbConfig,
    /// With [`Devices::Auto`]: the node addresses the table uses, and so where the tc programs
    /// are attached.
    node_addresses: BTreeSet<IpAddr>,
    maglev_table_size: u32,
    view: View,
    /// Service names, for the status views (the kernel does not know them).
    names: Arc<Mutex<BTreeMap<Frontend, String>>>,
    cgroup: PathBuf,
    close_stale_sockets: bool,
    /// Per frontend, its terminating backends left out of the slots (their open connections
    /// drain; sockets to them are closed only once they are gone).
    draining: BTreeMap<Frontend, BTreeSet<SocketAddr>>,
    /// How many frontends drain each backend.
    draining_refs: BTreeMap<SocketAddr, usize>,
}

fn protocol_of(proto: Protocol) -> Proto {
    match proto {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

fn key_of(frontend: &Frontend) -> FrontendKey {
    FrontendKey {
        addr: frontend.addr,
        port: frontend.port,
        proto: protocol_of(frontend.proto),
    }
}

fn frontend_of(key: &FrontendKey, kind: KernelKind) -> Frontend {
    Frontend {
        addr: key.addr,
        port: key.port,
        proto: match key.proto {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
        },
        kind: match kind {
            KernelKind::ClusterIp => FrontendKind::ClusterIp,
            KernelKind::NodePort => FrontendKind::NodePort,
            KernelKind::ExternalIp => FrontendKind::ExternalIp,
            KernelKind::LoadBalancer => FrontendKind::LoadBalancer,
        },
    }
}

fn kernel_kind(kind: FrontendKind) -> KernelKind {
    match kind {
        FrontendKind::ClusterIp => KernelKind::ClusterIp,
        FrontendKind::NodePort => KernelKind::NodePort,
        FrontendKind::ExternalIp => KernelKind::ExternalIp,
        FrontendKind::LoadBalancer => KernelKind::LoadBalancer,
    }
}

fn backend_value(backend: &crate::model::Backend) -> BackendValue {
    BackendValue {
        addr: SocketAddr::new(backend.addr, backend.port),
        state: match backend.state {
            BackendState::Active => KernelBackendState::Active,
            BackendState::Terminating => KernelBackendState::Terminating,
        },
        local: backend.local,
    }
}

/// The entry's source ranges as the kernel holds them: sorted, without duplicates.
fn ranges_of(entry: &ServiceEntry) -> Vec<IpNet> {
    let mut ranges: Vec<IpNet> = entry
        .source_ranges
        .iter()
        .flatten()
        .map(IpNet::trunc)
        .collect();
    ranges.sort();
    ranges.dedup();
    ranges
}

fn flags_of(entry: &ServiceEntry, dsr: bool) -> u16 {
    let mut flags = 0;
    // DSR replaces the SNAT of externalTrafficPolicy: Cluster, for TCP.
    if dsr
        && entry.snat.is_some()
        && entry.frontend.kind.is_external()
        && entry.frontend.proto == Protocol::Tcp
    {
        flags |= FLAG_DSR;
    }
    if entry.source_ranges.is_some() {
        flags |= FLAG_SRC_RANGES;
    }
    if entry.affinity.is_some() {
        flags |= FLAG_AFFINITY;
    }
    if entry.algorithm == Algorithm::Maglev {
        flags |= FLAG_MAGLEV;
    }
    if entry.on_empty == EmptyAction::Drop {
        flags |= FLAG_DROP;
    }
    flags
}

fn affinity_seconds(entry: &ServiceEntry) -> u32 {
    entry
        .affinity
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Reads the whole kernel state into a view.
fn read_back(lb: &SocketLb) -> Result<View, EbpfError> {
    let mut view = View::default();
    let mut ranges = lb.source_ranges()?;
    for (id, value) in lb.backends()? {
        view.ids.insert((value.addr.ip(), value.addr.port()), id);
        view.backends.insert(id, value);
        view.next_backend_id = view.next_backend_id.max(id);
    }
    for (key, value) in lb.frontends()? {
        // A slot that is missing (a write that failed half-way) is dropped from the view; the
        // next check rewrites the frontend.
        let backends: Vec<u32> = lb
            .slots_of(value.service_id, value.count)?
            .into_iter()
            .flatten()
            .collect();
        for id in &backends {
            *view.refs.entry(*id).or_default() += 1;
        }
        view.service_ids.insert(value.service_id);
        view.next_service_id = view.next_service_id.max(value.service_id);
        view.frontends.insert(
            frontend_of(&key, value.kind),
            Programmed {
                service_id: value.service_id,
                flags: value.flags,
                affinity_timeout: value.affinity_timeout,
                maglev_size: if value.flags & FLAG_MAGLEV != 0 {
                    value.maglev_size
                } else {
                    0
                },
                snat: value.snat,
                source_ranges: ranges.remove(&value.service_id).unwrap_or_default(),
                backends,
            },
        );
    }
    Ok(view)
}

impl EbpfDatapath {
    /// Opens (or creates) the pinned maps and links, and reads their state back.
    pub fn new(config: &EbpfConfig) -> Result<EbpfDatapath, EbpfError> {
        let lb = SocketLb::open(&config.socket_lb)?;
        // The packet-level programs share the maps the socket load balancer just opened.
        let nodeport = match &config.devices {
            Devices::Listed(devices) => Some(NodePortLb::open(
                &config.socket_lb,
                devices,
                config.xdp,
                config.tc_mode,
            )?),
            Devices::Auto | Devices::Off => None,
        };
        let mut datapath = EbpfDatapath {
            view: View::default(),
            lb: Arc::new(Mutex::new(lb)),
            nodeport,
            devices: config.devices.clone(),
            xdp: config.xdp,
            tc_mode: config.tc_mode,
            dsr: config.dsr,
            socket_lb_config: config.socket_lb.clone(),
            node_addresses: BTreeSet::new(),
            maglev_table_size: config.maglev_table_size,
            names: Arc::new(Mutex::new(BTreeMap::new())),
            cgroup: config.socket_lb.cgroup_path.clone(),
            close_stale_sockets: config.close_stale_sockets,
            draining: BTreeMap::new(),
            draining_refs: BTreeMap::new(),
        };
        datapath.resync()?;
        tracing::info!(
            frontends = datapath.view.frontends.len(),
            backends = datapath.view.backends.len(),
            "eBPF maps opened; state read back from the kernel"
        );
        Ok(datapath)
    }

    /// Rebuilds the in-memory view from the kernel and frees backends no slot points at.
    fn resync(&mut self) -> Result<(), EbpfError> {
        let lb = self.lb.lock();
        let mut view = read_back(&lb)?;
        let orphans: Vec<u32> = view
            .backends
            .keys()
            .filter(|id| !view.refs.contains_key(id))
            .copied()
            .collect();
        for id in orphans {
            lb.backend_delete(id)?;
            if let Some(value) = view.backends.remove(&id) {
                view.ids.remove(&(value.addr.ip(), value.addr.port()));
            }
        }
        drop(lb);
        self.view = view;
        Ok(())
    }

    /// The status source reading each frontend back from the kernel, for `/services` and
    /// metrics.
    pub fn status(&self) -> Arc<EbpfStatus> {
        Arc::new(EbpfStatus {
            lb: Arc::clone(&self.lb),
            names: Arc::clone(&self.names),
        })
    }

    /// Takes a reference on a backend, writing it to the kernel if it is new or changed.
    fn acquire(&mut self, backend: &crate::model::Backend) -> Result<u32, EbpfError> {
        let value = backend_value(backend);
        let (addr, port) = (backend.addr, backend.port);
        let id = match self.view.ids.get(&(addr, port)) {
            Some(id) => *id,
            None => self.view.allocate_backend_id(),
        };
        if self.view.backends.get(&id) != Some(&value) {
            self.lb.lock().backend_put(id, &value)?;
            self.view.backends.insert(id, value);
            self.view.ids.insert((addr, port), id);
        }
        *self.view.refs.entry(id).or_default() += 1;
        Ok(id)
    }

    /// Drops a reference; the last one deletes the backend.
    fn release(&mut self, id: u32) -> Result<(), EbpfError> {
        let Some(count) = self.view.refs.get_mut(&id) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        self.view.refs.remove(&id);
        self.lb.lock().backend_delete(id)?;
        let gone = self
            .view
            .backends
            .remove(&id)
            .map(|v| (v.addr.ip(), v.addr.port()));
        if let Some(addr) = gone {
            self.view.ids.remove(&addr);
        }
        self.view.free_backend_ids.push(id);
        Ok(())
    }

    /// With [`Devices::Auto`], attaches the tc programs to the interfaces that hold the node
    /// addresses the table now uses (NodePort addresses and SNAT sources) when those changed.
    fn follow_devices<'a>(&mut self, entries: impl Iterator<Item = &'a ServiceEntry>) {
        if self.devices != Devices::Auto {
            return;
        }
        let mut addresses = self.node_addresses.clone();
        for entry in entries {
            if entry.frontend.kind == FrontendKind::NodePort {
                addresses.insert(entry.frontend.addr);
            }
            addresses.extend(entry.snat);
        }
        if addresses == self.node_addresses && self.nodeport.is_some() {
            return;
        }
        let devices = interfaces_holding(&addresses);
        self.node_addresses = addresses;
        if devices.is_empty() {
            return;
        }
        match NodePortLb::open(&self.socket_lb_config, &devices, self.xdp, self.tc_mode) {
            Ok(lb) => self.nodeport = Some(lb),
            Err(error) => {
                tracing::error!(?devices, %error, "cannot attach the north-south tc programs");
            }
        }
    }

    /// The Maglev table size the entry gets (0 without Maglev or backends).
    fn maglev_size(&self, entry: &ServiceEntry) -> u32 {
        if entry.algorithm != Algorithm::Maglev || entry.backends.is_empty() {
            return 0;
        }
        let usable = entry.backends.len().min(usize::from(u16::MAX));
        crate::maglev::table_size(usable, self.maglev_table_size)
    }

    /// Whether the kernel already holds exactly what `entry` asks for.
    fn is_programmed(&self, entry: &ServiceEntry) -> bool {
        let Some(programmed) = self.view.frontends.get(&entry.frontend) else {
            return false;
        };
        programmed.flags == flags_of(entry, self.dsr)
            && programmed.affinity_timeout == affinity_seconds(entry)
            && programmed.maglev_size == self.maglev_size(entry)
            && programmed.snat == snat_of(entry)
            && programmed.source_ranges == ranges_of(entry)
            && programmed.backends.len() == entry.backends.len()
            && programmed
                .backends
                .iter()
                .zip(&entry.backends)
                .all(|(id, b)| self.view.backends.get(id) == Some(&backend_value(b)))
    }

    /// Writes one frontend, make-before-break.
    fn program(&mut self, entry: &ServiceEntry) -> Result<(), EbpfError> {
        self.names
            .lock()
            .insert(entry.frontend, entry.display_name());
        if self.is_programmed(entry) {
            return Ok(());
        }
        let key = key_of(&entry.frontend);
        let previous = self.view.frontends.get(&entry.frontend).cloned();
        let service_id = match &previous {
            Some(p) => p.service_id,
            None => self.view.allocate_service_id(),
        };
        // 1. Backends first: each is in the kernel before a slot points at it.
        // A frontend's count is 16 bits: more backends than that are not used.
        let usable = &entry.backends[..entry.backends.len().min(usize::from(u16::MAX))];
        let mut ids = Vec::with_capacity(usable.len());
        for backend in usable {
            ids.push(self.acquire(backend)?);
        }
        let count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
        let ids = &ids[..];
        let flags = flags_of(entry, self.dsr);
        let maglev_size = self.maglev_size(entry);
        let source_ranges = ranges_of(entry);
        let old_ids = previous
            .as_ref()
            .map(|p| p.backends.clone())
            .unwrap_or_default();
        let old_ranges = previous
            .as_ref()
            .map(|p| p.source_ranges.clone())
            .unwrap_or_default();
        {
            let lb = self.lb.lock();
            // 2. The Maglev table, when used, before the frontend points at it.
            if flags & FLAG_MAGLEV != 0 && !ids.is_empty() {
                let names: Vec<String> = entry
                    .backends
                    .iter()
                    .take(ids.len())
                    .map(|b| SocketAddr::new(b.addr, b.port).to_string())
                    .collect();
                let table: Vec<u32> = crate::maglev::table(&names, maglev_size as usize)
                    .into_iter()
                    .map(|i| ids[i as usize])
                    .collect();
                lb.maglev_put_table(service_id, &table)?;
            }
            // Ranges that are new, before the frontend may check them.
            for range in source_ranges.iter().filter(|r| !old_ranges.contains(r)) {
                lb.source_range_put(service_id, *range)?;
            }
            // 3. Slots: new ones beyond the old count, then the ones that change in place.
            for (i, id) in ids.iter().enumerate().skip(old_ids.len()) {
                lb.slot_put(&SlotKey::new(service_id, slot_number(i)), *id)?;
            }
            for (i, id) in ids.iter().enumerate().take(old_ids.len()) {
                if old_ids[i] != *id {
                    lb.slot_put(&SlotKey::new(service_id, slot_number(i)), *id)?;
                }
            }
            // 4. The frontend: the one write that switches lookups to the new set.
            lb.frontend_put(
                &key,
                &FrontendValue {
                    service_id,
                    count,
                    flags,
                    affinity_timeout: affinity_seconds(entry),
                    maglev_size,
                    snat: snat_of(entry),
                    kind: kernel_kind(entry.frontend.kind),
                },
            )?;
            // 5. What the new count no longer covers.
            for i in ids.len()..old_ids.len() {
                lb.slot_delete(&SlotKey::new(service_id, slot_number(i)))?;
            }
            let old_flags = previous.as_ref().map_or(0, |p| p.flags);
            let old_size = previous.as_ref().map_or(0, |p| p.maglev_size);
            if old_flags & FLAG_MAGLEV != 0 {
                if flags & FLAG_MAGLEV == 0 || ids.is_empty() {
                    lb.maglev_delete_table(service_id, old_size)?;
                } else if old_size > maglev_size {
                    lb.maglev_trim_table(service_id, maglev_size, old_size)?;
                }
            }
            for range in old_ranges.iter().filter(|r| !source_ranges.contains(r)) {
                lb.source_range_delete(service_id, *range)?;
            }
            if old_flags & FLAG_AFFINITY != 0 && flags & FLAG_AFFINITY == 0 {
                lb.affinity_clear(service_id)?;
            }
        }
        self.view.frontends.insert(
            entry.frontend,
            Programmed {
                service_id,
                flags,
                affinity_timeout: affinity_seconds(entry),
                maglev_size: if flags & FLAG_MAGLEV != 0 && !ids.is_empty() {
                    maglev_size
                } else {
                    0
                },
                snat: snat_of(entry),
                source_ranges,
                backends: ids.to_vec(),
            },
        );
        // 6. Backends the old set used, last.
        for id in old_ids {
            self.release(id)?;
        }
        Ok(())
    }

    /// Removes one frontend: the frontend first, then its slots and tables, then its backends.
    fn unprogram(&mut self, frontend: &Frontend) -> Result<(), EbpfError> {
        self.names.lock().remove(frontend);
        let Some(programmed) = self.view.frontends.remove(frontend) else {
            return Ok(());
        };
        {
            let lb = self.lb.lock();
            lb.frontend_delete(&key_of(frontend))?;
            for i in 0..programmed.backends.len() {
                lb.slot_delete(&SlotKey::new(programmed.service_id, slot_number(i)))?;
            }
            if programmed.flags & FLAG_MAGLEV != 0 {
                lb.maglev_delete_table(programmed.service_id, programmed.maglev_size)?;
            }
            for range in &programmed.source_ranges {
                lb.source_range_delete(programmed.service_id, *range)?;
            }
            if programmed.flags & FLAG_AFFINITY != 0 {
                lb.affinity_clear(programmed.service_id)?;
            }
        }
        self.view.service_ids.remove(&programmed.service_id);
        for id in programmed.backends {
            self.release(id)?;
        }
        Ok(())
    }

    /// The backends a frontend still has sockets to legitimately: those in its slots and those
    /// draining (terminating, left out of the slots).
    fn members(&self, frontend: &Frontend) -> BTreeSet<SocketAddr> {
        let mut out: BTreeSet<SocketAddr> = self
            .view
            .frontends
            .get(frontend)
            .into_iter()
            .flat_map(|p| &p.backends)
            .filter_map(|id| self.view.backends.get(id).map(|b| b.addr))
            .collect();
        out.extend(self.draining.get(frontend).into_iter().flatten().copied());
        out
    }

    /// Records the frontend's draining backends (`None`: the frontend is gone).
    fn set_draining(&mut self, frontend: Frontend, draining: Option<BTreeSet<SocketAddr>>) {
        for addr in self.draining.remove(&frontend).into_iter().flatten() {
            if let Some(n) = self.draining_refs.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    self.draining_refs.remove(&addr);
                }
            }
        }
        if let Some(draining) = draining.filter(|d| !d.is_empty()) {
            for addr in &draining {
                *self.draining_refs.entry(*addr).or_default() += 1;
            }
            self.draining.insert(frontend, draining);
        }
    }

    /// Whether any frontend still uses or drains the backend.
    fn is_alive(&self, addr: &SocketAddr) -> bool {
        self.view.ids.contains_key(&(addr.ip(), addr.port()))
            || self.draining_refs.contains_key(addr)
    }

    /// After a failed write the view may not match the kernel: read it back.
    fn recover(&mut self, what: &str) {
        if let Err(error) = self.resync() {
            tracing::error!(%error, "cannot read the eBPF maps back after a failed {what}");
        }
    }

    /// Closes sockets still connected to backends that are gone (never to draining ones).
    fn close_stale(&self, gone: Vec<(SocketAddr, Proto)>) {
        if !self.close_stale_sockets || gone.is_empty() {
            return;
        }
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || super::stale::close_in_cgroup(&cgroup, &gone));
    }
}

/// The SNAT address the kernel gets for an entry: only for north-south frontends.
fn snat_of(entry: &ServiceEntry) -> Option<IpAddr> {
    entry.snat.filter(|_| entry.frontend.kind.is_external())
}

/// Slot numbers start at 1 (slot 0 is never used, as in Cilium's layout).
fn slot_number(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

impl Datapath for EbpfDatapath {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    async fn apply(&mut self, diff: &TableDiff) -> Applied {
        let mut applied = Applied::default();
        self.follow_devices(diff.added.iter().chain(&diff.changed));
        // Backends a frontend stops using or draining: their sockets are closed below unless
        // another frontend still uses or drains them.
        let mut left: BTreeSet<(SocketAddr, Proto)> = BTreeSet::new();
        // After a failed write the view is read back from the kernel, once at the end: when a
        // map is full, every further write fails too, and reading back after each of them
        // made a sync quadratic in the table's size.
        let mut failed_writes = false;
        for entry in diff.added.iter().chain(&diff.changed) {
            let before = self.members(&entry.frontend);
            match self.program(entry) {
                Ok(()) => {
                    applied.programmed += 1;
                    let draining = entry
                        .draining
                        .iter()
                        .map(|b| SocketAddr::new(b.addr, b.port))
                        .collect();
                    self.set_draining(entry.frontend, Some(draining));
                    let after = self.members(&entry.frontend);
                    let proto = protocol_of(entry.frontend.proto);
                    left.extend(before.difference(&after).map(|a| (*a, proto)));
                }
                Err(error) => {
                    if let EbpfError::MapFull { map, .. } = &error {
                        applied.full_maps.push(map);
                    }
                    applied.failed.push((entry.frontend, error.to_string()));
                    failed_writes = true;
                }
            }
        }
        for frontend in &diff.removed {
            let before = self.members(frontend);
            match self.unprogram(frontend) {
                Ok(()) => {
                    applied.programmed += 1;
                    self.set_draining(*frontend, None);
                    let proto = protocol_of(frontend.proto);
                    left.extend(before.into_iter().map(|a| (a, proto)));
                }
                Err(error) => {
                    applied.failed.push((*frontend, error.to_string()));
                    failed_writes = true;
                }
            }
        }
        if failed_writes {
            self.recover("update");
        }
        let gone: Vec<(SocketAddr, Proto)> = left
            .into_iter()
            .filter(|(addr, _)| !self.is_alive(addr))
            .collect();
        self.close_stale(gone);
        applied
    }

    async fn verify(&mut self, want: &ServiceTable) -> Drift {
        let mut drift = Drift::default();
        let before: BTreeMap<Frontend, Programmed> = self.view.frontends.clone();
        self.recover("check");
        for (frontend, programmed) in &self.view.frontends {
            if before.get(frontend) != Some(programmed) {
                drift.repaired.push(format!(
                    "frontend {frontend} differed from the kernel's maps"
                ));
            }
        }
        // As in `apply`: after failed writes the maps are read back once, at the end (a full
        // map fails every write), and a few failures are logged one by one, the rest counted.
        const LOGGED: usize = 10;
        let mut failed = 0;
        for entry in want.entries() {
            if self.is_programmed(entry) {
                continue;
            }
            match self.program(entry) {
                Ok(()) => drift.repaired.push(format!(
                    "frontend {} reprogrammed in the kernel",
                    entry.frontend
                )),
                Err(error) => {
                    failed += 1;
                    if failed <= LOGGED {
                        tracing::warn!(frontend = %entry.frontend, %error, "cannot program frontend");
                    }
                }
            }
        }
        if failed > 0 {
            if failed > LOGGED {
                tracing::warn!(
                    more = failed - LOGGED,
                    "more frontends could not be programmed"
                );
            }
            self.recover("repair");
        }
        let extra: Vec<Frontend> = self
            .view
            .frontends
            .keys()
            .filter(|f| want.get(f).is_none())
            .copied()
            .collect();
        for frontend in extra {
            match self.unprogram(&frontend) {
                Ok(()) => drift
                    .repaired
                    .push(format!("stale frontend {frontend} removed from the kernel")),
                Err(error) => tracing::warn!(%frontend, %error, "cannot remove stale frontend"),
            }
        }
        match self.lb.lock().verify_links() {
            Ok(repaired) => drift.repaired.extend(repaired),
            Err(error) => tracing::warn!(%error, "cannot check the eBPF program links"),
        }
        if let Some(nodeport) = self.nodeport.as_mut() {
            match nodeport.verify_links() {
                Ok(repaired) => drift.repaired.extend(repaired),
                Err(error) => tracing::warn!(%error, "cannot check the tc program links"),
            }
        }
        drift
    }

    async fn shutdown(&mut self, _grace: Duration, _handed_over: bool) {
        // Nothing is flushed: the kernel keeps serving the last programmed state while
        // switchyard is away, and the next instance reconciles to it.
        tracing::info!("leaving the eBPF datapath in place (pinned maps and links keep serving)");
    }
}

/// The status of the eBPF datapath, read from the kernel at each call.
pub struct EbpfStatus {
    lb: Arc<Mutex<SocketLb>>,
    names: Arc<Mutex<BTreeMap<Frontend, String>>>,
}

impl super::StatusSource for EbpfStatus {
    fn frontends(&self) -> Vec<FrontendView> {
        kernel_views(&self.lb.lock(), &self.names.lock())
    }

    fn counts_connections(&self) -> bool {
        false
    }

    fn counters(&self) -> Vec<super::DatapathCounter> {
        let stats = match self.lb.lock().stats() {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(%error, "cannot read the eBPF counters");
                return Vec::new();
            }
        };
        let counter = |name, help, value| super::DatapathCounter { name, help, value };
        vec![
            counter(
                "switchyard_bpf_translations_total",
                "connect() and sendmsg() calls rewritten from a VIP to a backend in the kernel",
                stats.translated,
            ),
            counter(
                "switchyard_bpf_no_backend_total",
                "connects and sends to a frontend without backends, refused or dropped",
                stats.no_backend,
            ),
            counter(
                "switchyard_bpf_backend_missing_total",
                "lookups that found a slot or Maglev entry pointing at no backend (should stay 0)",
                stats.backend_missing,
            ),
            counter(
                "switchyard_bpf_reverse_translations_total",
                "UDP replies and getpeername() results rewritten back to the VIP",
                stats.revnat,
            ),
            counter(
                "switchyard_bpf_nodeport_flows_total",
                "north-south flows (NodePort, external and load-balancer IPs) sent to a backend by the tc programs",
                stats.ns_flows,
            ),
            counter(
                "switchyard_bpf_nodeport_packets_total",
                "north-south packets translated by the tc programs, both directions",
                stats.ns_packets,
            ),
            counter(
                "switchyard_bpf_xdp_tx_total",
                "north-south packets translated and sent back out by the XDP program (--xdp)",
                stats.xdp_tx,
            ),
            counter(
                "switchyard_bpf_dsr_total",
                "DSR flows: SYNs sent to another node's backend with the DSR option, or received with it",
                stats.dsr,
            ),
            counter(
                "switchyard_bpf_source_range_denied_total",
                "north-south packets dropped: source outside loadBalancerSourceRanges",
                stats.ns_denied,
            ),
            counter(
                "switchyard_bpf_snat_failed_total",
                "north-south flows dropped: no free SNAT port towards the backend",
                stats.ns_snat_failed,
            ),
        ]
    }
}

/// The frontends as the kernel holds them.
fn kernel_views(lb: &SocketLb, names: &BTreeMap<Frontend, String>) -> Vec<FrontendView> {
    let view = match read_back(lb) {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(%error, "cannot read the eBPF maps");
            return Vec::new();
        }
    };
    let mut out: Vec<FrontendView> = view
        .frontends
        .iter()
        .map(|(frontend, programmed)| {
            let algorithm = if programmed.flags & FLAG_MAGLEV != 0 {
                "maglev"
            } else {
                "random"
            };
            FrontendView {
                frontend: frontend.to_string(),
                kind: frontend.kind.name().to_owned(),
                service: names
                    .get(frontend)
                    .cloned()
                    .unwrap_or_else(|| "?".to_owned()),
                algorithm: algorithm.to_owned(),
                affinity_seconds: (programmed.flags & FLAG_AFFINITY != 0)
                    .then_some(u64::from(programmed.affinity_timeout)),
                listening: programmed.flags & FLAG_DROP != 0 || !programmed.backends.is_empty(),
                connections_total: 0,
                l7: None,
                backends: programmed
                    .backends
                    .iter()
                    .map(|id| {
                        let (backend, state) = view.backends.get(id).map_or_else(
                            || (format!("missing backend id {id}"), "missing"),
                            |b| {
                                (
                                    b.addr.to_string(),
                                    match b.state {
                                        KernelBackendState::Active => "active",
                                        KernelBackendState::Terminating => "terminating",
                                    },
                                )
                            },
                        );
                        BackendView {
                            backend,
                            state: state.to_owned(),
                            connections_total: 0,
                            connections_active: 0,
                            bytes_sent: 0,
                            bytes_received: 0,
                            connect_failures: 0,
                            l7: None,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.service
            .cmp(&b.service)
            .then_with(|| a.frontend.cmp(&b.frontend))
    });
    out
}
