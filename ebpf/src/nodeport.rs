//! The packet-level load balancer for north-south traffic: loading
//! `nodeport.bpf.c` over the maps [`crate::SocketLb`] pinned, and attaching
//! its tc programs to the node's external interfaces through pinned TCX
//! links (so they keep serving while the daemon is away).
//!
//! Open [`crate::SocketLb`] first: it creates (or reuses) the pinned maps,
//! and this object's maps are the very same pins.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::programs::links::FdLink;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};

use crate::socket_lb::{SocketLbConfig, parse_over_pins, pin_link, program_as, remove_pin};
use crate::{EbpfError, LinkState, sys};

/// The compiled `nodeport.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeport.bpf.o"));

/// The tc programs and where each attaches.
pub const NODEPORT_PROGRAMS: [(&str, Direction); 2] = [
    // Replies leaving the node first: a flow is never opened whose replies
    // would not be translated.
    ("sy_nodeport_egress", Direction::Egress),
    ("sy_nodeport_ingress", Direction::Ingress),
];

/// `BPF_TCX_INGRESS` and `BPF_TCX_EGRESS`, as link info reports them.
const TCX_INGRESS: u32 = 46;
const TCX_EGRESS: u32 = 47;

/// Prefix of the pins of the tc links: `link_tc_<direction>_<interface>`.
const TC_LINK_PREFIX: &str = "link_tc_";
/// Prefix of the pins of the XDP links: `link_xdp_<interface>`.
const XDP_LINK_PREFIX: &str = "link_xdp_";
/// The XDP program (`--xdp`).
pub const XDP_PROGRAM: &str = "sy_nodeport_xdp";

/// Which way a tc program sees packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through it.
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::Ingress => TcAttachType::Ingress,
            Self::Egress => TcAttachType::Egress,
        }
    }

    fn tcx(self) -> u32 {
        match self {
            Self::Ingress => TCX_INGRESS,
            Self::Egress => TCX_EGRESS,
        }
    }
}

/// How the tc programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcMode {
    /// Pinned TCX links where the kernel has them (Linux 6.6 and later),
    /// clsact filters otherwise.
    #[default]
    Auto,
    /// Filters on the interface's clsact qdisc, through netlink (what
    /// kernels before 6.6 have). They stay when the daemon exits, but are
    /// not pinned: the next start replaces them (a moment without them), and
    /// the periodic check cannot see them.
    Clsact,
}

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// In the driver (native XDP).
    Driver,
    /// In the stack, for drivers without XDP (generic XDP; slower than
    /// native, still before tc).
    Generic,
}

/// One program's attachment to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLink {
    /// The interface.
    pub device: String,
    /// `sy_nodeport_ingress` or `sy_nodeport_egress`.
    pub program: &'static str,
    /// Reused (its program swapped in place) or attached now.
    pub state: LinkState,
    /// The kernel's id of the link.
    pub link_id: u32,
    /// For the XDP program: native or generic.
    pub xdp: Option<XdpAttach>,
}

/// The loaded packet-level programs and their links.
///
/// Dropping it detaches nothing; [`cleanup_devices`] does.
pub struct NodePortLb {
    ebpf: Ebpf,
    pin_path: PathBuf,
    devices: Vec<String>,
    xdp: bool,
    tc_mode: TcMode,
    links: Vec<DeviceLink>,
}

impl std::fmt::Debug for NodePortLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePortLb")
            .field("pin_path", &self.pin_path)
            .field("devices", &self.devices)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl NodePortLb {
    /// Loads the tc programs over the maps pinned in `sizes.pin_path` and
    /// attaches them to every interface of `devices` (ingress and egress).
    /// A link pinned by an earlier run on the same interface is kept and
    /// its program replaced in place; links pinned for interfaces that are
    /// no longer listed are detached. With `xdp`, the XDP fast path is
    /// attached in front of the tc programs too (native where the driver has
    /// it, generic otherwise); without, an XDP link left by an earlier run
    /// is detached.
    pub fn open(
        sizes: &SocketLbConfig,
        devices: &[String],
        xdp: bool,
        mut tc_mode: TcMode,
    ) -> Result<Self, EbpfError> {
        let pin_path = sizes.pin_path.clone();
        let mut ebpf = load(&pin_path, &sizes.max_entries())?;
        let mut links = Vec::new();
        for device in devices {
            let ifindex = ifindex_of(device)?;
            for (program, direction) in NODEPORT_PROGRAMS {
                let (state, link_id) = ensure_tc_link(
                    &mut ebpf,
                    &pin_path,
                    program,
                    direction,
                    (device, ifindex),
                    &mut tc_mode,
                    true,
                )?
                .ok_or_else(|| EbpfError::Pin {
                    path: tc_link_pin(&pin_path, direction, device),
                    detail: "link neither reused nor attached".to_owned(),
                })?;
                links.push(DeviceLink {
                    device: device.clone(),
                    program,
                    state,
                    link_id,
                    xdp: None,
                });
            }
            if xdp {
                let (state, link_id, mode) = ensure_xdp_link(
                    &mut ebpf, &pin_path, device, ifindex, true,
                )?
                .ok_or_else(|| EbpfError::Pin {
                    path: xdp_link_pin(&pin_path, device),
                    detail: "link neither reused nor attached".to_owned(),
                })?;
                links.push(DeviceLink {
                    device: device.clone(),
                    program: XDP_PROGRAM,
                    state,
                    link_id,
                    xdp: Some(mode),
                });
            }
        }
        let wanted: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
        let none = BTreeSet::new();
        detach_other_devices(&pin_path, &wanted, if xdp { &wanted } else { &none })?;
        tracing::info!(
            devices = ?devices,
            reused = links.iter().filter(|l| l.state == LinkState::Reused).count(),
            attached = links.iter().filter(|l| l.state == LinkState::Attached).count(),
            xdp = ?links.iter().filter_map(|l| l.xdp).collect::<Vec<_>>(),
            "north-south programs attached (tc through TCX, and XDP with --xdp)"
        );
        Ok(Self {
            ebpf,
            pin_path,
            devices: devices.to_vec(),
            xdp,
            tc_mode,
            links,
        })
    }

    /// The links as [`Self::open`] found and made them.
    pub fn links(&self) -> &[DeviceLink] {
        &self.links
    }

    /// Re-attaches every program whose link went missing or was detached
    /// from its interface (drift repair); one line per repair.
    pub fn verify_links(&mut self) -> Result<Vec<String>, EbpfError> {
        let mut repaired = Vec::new();
        for device in &self.devices {
            let Ok(ifindex) = ifindex_of(device) else {
                tracing::warn!(%device, "interface is gone: its tc programs cannot be checked");
                continue;
            };
            for (program, direction) in NODEPORT_PROGRAMS {
                if self.tc_mode == TcMode::Clsact {
                    continue; // filters, not links: nothing to check them by
                }
                if let Some((_, link_id)) = ensure_tc_link(
                    &mut self.ebpf,
                    &self.pin_path,
                    program,
                    direction,
                    (device, ifindex),
                    &mut self.tc_mode,
                    false,
                )? {
                    tracing::warn!(%device, program, link_id, "tc program was not attached: re-attached");
                    repaired.push(format!(
                        "{program} on {device}: not attached: re-attached (link {link_id})"
                    ));
                }
            }
            if self.xdp
                && let Some((_, link_id, _)) =
                    ensure_xdp_link(&mut self.ebpf, &self.pin_path, device, ifindex, false)?
            {
                tracing::warn!(%device, link_id, "XDP program was not attached: re-attached");
                repaired.push(format!(
                    "{XDP_PROGRAM} on {device}: not attached: re-attached (link {link_id})"
                ));
            }
        }
        Ok(repaired)
    }
}

fn ifindex_of(device: &str) -> Result<u32, EbpfError> {
    nix::net::if_::if_nametoindex(device)
        .map_err(|errno| EbpfError::io("find interface", Path::new(device), io::Error::from(errno)))
}

fn tc_link_pin(pin_path: &Path, direction: Direction, device: &str) -> PathBuf {
    pin_path.join(format!("{TC_LINK_PREFIX}{}_{device}", direction.name()))
}

/// Parses the object over the pinned maps and loads the tc programs.
fn load(pin_dir: &Path, max_entries: &[(&'static str, u32)]) -> Result<Ebpf, EbpfError> {
    let mut ebpf = parse_over_pins(OBJECT, pin_dir, max_entries)?;
    for (program, _) in NODEPORT_PROGRAMS {
        classifier(&mut ebpf, program)?
            .load()
            .map_err(|source| EbpfError::Program {
                program,
                action: "load".to_owned(),
                source: Box::new(source),
            })?;
    }
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|source| EbpfError::Program {
            program: XDP_PROGRAM,
            action: "load".to_owned(),
            source: Box::new(source),
        })?;
    Ok(ebpf)
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    program_as(ebpf, program, "as a tc classifier")
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, EbpfError> {
    program_as(ebpf, XDP_PROGRAM, "as an XDP program")
}

/// The link an earlier run pinned at `pin`, if it is still attached where
/// `attached_right` says it should be. A stale one (detached, or attached
/// elsewhere) is detached and unpinned, and `None` returned.
fn live_pinned_link(
    pin: &Path,
    attached_right: impl Fn(&sys::LinkInfo) -> bool,
) -> Result<Option<(OwnedFd, sys::LinkInfo)>, EbpfError> {
    let Ok(link) = sys::obj_get(pin) else {
        return Ok(None);
    };
    match sys::link_info(link.as_fd()) {
        Ok(info) if attached_right(&info) => Ok(Some((link, info))),
        info => {
            tracing::warn!(pin = %pin.display(), ?info, "pinned link is not attached to its interface: replacing it");
            let _ = sys::link_detach(link.as_fd());
            remove_pin(pin)?;
            Ok(None)
        }
    }
}

/// Replaces the program a live link runs with the one just loaded (traffic
/// never stops); keeps the old one if the kernel refuses.
fn swap_program(
    link: &OwnedFd,
    prog_fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    program: &'static str,
    device: &str,
) -> Result<(), EbpfError> {
    let prog_fd = prog_fd.map_err(|source| EbpfError::Program {
        program,
        action: "get its fd".to_owned(),
        source: Box::new(source),
    })?;
    if let Err(error) = sys::link_update(link.as_fd(), prog_fd.as_fd()) {
        tracing::warn!(program, %device, %error, "could not update the pinned link's program; keeping the old one");
    }
    Ok(())
}

fn xdp_link_pin(pin_path: &Path, device: &str) -> PathBuf {
    pin_path.join(format!("{XDP_LINK_PREFIX}{device}"))
}

/// Makes sure the XDP program is attached to `device` through a pinned XDP
/// link: native first, generic when the driver refuses. As
/// [`ensure_tc_link`] for a link that is already there (the mode it was
/// attached in is not known then, and reported as native).
fn ensure_xdp_link(
    ebpf: &mut Ebpf,
    pin_path: &Path,
    device: &str,
    ifindex: u32,
    update: bool,
) -> Result<Option<(LinkState, u32, XdpAttach)>, EbpfError> {
    let pin = xdp_link_pin(pin_path, device);
    let prog = xdp_program(ebpf)?;
    if let Some((link, info)) = live_pinned_link(&pin, |info| {
        info.link_type == sys::LINK_TYPE_XDP && info.ifindex == ifindex
    })? {
        if !update {
            return Ok(None);
        }
        swap_program(&link, prog.fd(), XDP_PROGRAM, device)?;
        return Ok(Some((LinkState::Reused, info.id, XdpAttach::Driver)));
    }
    let (id, mode) = match prog.attach(device, XdpMode::Driver) {
        Ok(id) => (id, XdpAttach::Driver),
        Err(native) => {
            tracing::info!(%device, error = %native, "native XDP refused: attaching generic XDP");
            let id = prog
                .attach(device, XdpMode::Skb)
                .map_err(|source| EbpfError::Program {
                    program: XDP_PROGRAM,
                    action: format!("attach to {device}"),
                    source: Box::new(source),
                })?;
            (id, XdpAttach::Generic)
        }
    };
    let link = prog.take_link(id).map_err(|source| EbpfError::Program {
        program: XDP_PROGRAM,
        action: format!("take its link on {device}"),
        source: Box::new(source),
    })?;
    let fd_link = FdLink::try_from(link).map_err(|error| EbpfError::Pin {
        path: pin.clone(),
        detail: format!("the XDP program on {device} was not attached as a link ({error})"),
    })?;
    let info = pin_link(fd_link, &pin)?;
    Ok(Some((LinkState::Attached, info.id, mode)))
}

/// Attaches `program` as a filter on `device`'s clsact qdisc (created if
/// missing), replacing the filter of an earlier run. Returns link id 0: a
/// filter is not a link.
fn attach_clsact(
    prog: &mut SchedClassifier,
    program: &'static str,
    direction: Direction,
    device: &str,
) -> Result<(LinkState, u32), EbpfError> {
    // Already there is fine; any real trouble fails the attach below.
    let _ = tc::qdisc_add_clsact(device);
    let _ = tc::qdisc_detach_program(device, direction.attach_type(), program);
    let id = prog
        .attach_with_options(
            device,
            direction.attach_type(),
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|source| EbpfError::Program {
            program,
            action: format!("attach to {device} ({}, clsact)", direction.name()),
            source: Box::new(source),
        })?;
    let link = prog.take_link(id).map_err(|source| EbpfError::Program {
        program,
        action: format!("take its filter on {device}"),
        source: Box::new(source),
    })?;
    // The filter lives on the interface, not in this process: dropping the
    // link would remove it.
    std::mem::forget(link);
    Ok((LinkState::Attached, 0))
}

/// Removes switchyard's clsact filters from `devices` (for `switchyard
/// cleanup` after `--tc-attach clsact`); interfaces without them are fine.
pub fn cleanup_clsact(devices: &[String]) {
    for device in devices {
        for (program, direction) in NODEPORT_PROGRAMS {
            let _ = tc::qdisc_detach_program(device, direction.attach_type(), program);
        }
    }
}

/// Makes sure `program` is attached to `device` in `direction`: through a
/// pinned TCX link (as `ensure_link` of the socket load balancer: a live
/// link is kept, its program updated with `update`, a stale one replaced),
/// or as a clsact filter in [`TcMode::Clsact`], which `Auto` falls back to
/// when the kernel has no TCX.
fn ensure_tc_link(
    ebpf: &mut Ebpf,
    pin_path: &Path,
    program: &'static str,
    direction: Direction,
    (device, ifindex): (&str, u32),
    mode: &mut TcMode,
    update: bool,
) -> Result<Option<(LinkState, u32)>, EbpfError> {
    let pin = tc_link_pin(pin_path, direction, device);
    let prog = classifier(ebpf, program)?;
    if *mode == TcMode::Clsact {
        return attach_clsact(prog, program, direction, device).map(Some);
    }
    if let Some((link, info)) = live_pinned_link(&pin, |info| {
        info.link_type == sys::LINK_TYPE_TCX
            && info.ifindex == ifindex
            && info.tcx_attach_type == direction.tcx()
    })? {
        if !update {
            return Ok(None);
        }
        swap_program(&link, prog.fd(), program, device)?;
        return Ok(Some((LinkState::Reused, info.id)));
    }
    let attach_error = |source: aya::programs::ProgramError| EbpfError::Program {
        program,
        action: format!("attach to {device} ({})", direction.name()),
        source: Box::new(source),
    };
    let id = match prog.attach_with_options(
        device,
        direction.attach_type(),
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    ) {
        Ok(id) => id,
        Err(error) => {
            tracing::warn!(%device, %error, "no TCX on this kernel: attaching the tc programs as clsact filters");
            *mode = TcMode::Clsact;
            return attach_clsact(prog, program, direction, device).map(Some);
        }
    };
    let link = prog.take_link(id).map_err(attach_error)?;
    let fd_link = FdLink::try_from(link).map_err(|error| EbpfError::Pin {
        path: pin.clone(),
        detail: format!(
            "{program} on {device} was not attached as a TCX link ({error}); north-south \
             programs need Linux 6.6 or later"
        ),
    })?;
    let info = pin_link(fd_link, &pin)?;
    Ok(Some((LinkState::Attached, info.id)))
}

/// The tc and XDP link pins in `pin_path`, with the interface each names
/// and whether it is an XDP one.
fn device_link_pins(pin_path: &Path) -> Vec<(PathBuf, String, bool)> {
    let Ok(entries) = std::fs::read_dir(pin_path) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if let Some(device) = name.strip_prefix(XDP_LINK_PREFIX) {
                return Some((entry.path(), device.to_owned(), true));
            }
            let rest = name.strip_prefix(TC_LINK_PREFIX)?;
            let device = rest
                .strip_prefix("ingress_")
                .or_else(|| rest.strip_prefix("egress_"))?;
            Some((entry.path(), device.to_owned(), false))
        })
        .collect()
}

/// Detaches and unpins the tc links of interfaces not in `tc`, and the XDP
/// links of interfaces not in `xdp`.
fn detach_other_devices(
    pin_path: &Path,
    tc: &BTreeSet<&str>,
    xdp: &BTreeSet<&str>,
) -> Result<(), EbpfError> {
    for (pin, device, is_xdp) in device_link_pins(pin_path) {
        let keep = if is_xdp { xdp } else { tc };
        if keep.contains(device.as_str()) {
            continue;
        }
        if let Ok(link) = sys::obj_get(&pin) {
            let _ = sys::link_detach(link.as_fd());
        }
        remove_pin(&pin)?;
        tracing::info!(%device, xdp = is_xdp, "detached north-south programs no longer wanted on the interface");
    }
    Ok(())
}

/// Detaches and unpins every tc link pinned in `pin_path` (part of
/// [`crate::cleanup`]).
pub(crate) fn cleanup_devices(pin_path: &Path) -> Result<(), EbpfError> {
    detach_other_devices(pin_path, &BTreeSet::new(), &BTreeSet::new())
}
