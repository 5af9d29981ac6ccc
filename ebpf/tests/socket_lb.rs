//! Kernel tests of the socket load balancer: real programs attached to a
//! cgroup the test creates, real clients in a namespace inside that cgroup,
//! real pod servers behind it.
//!
//! Safety of the machine: programs attach only to the client cgroup the
//! topology created (or one the test made under the cgroup v2 root); pins
//! live in a bpffs folder named after the test; the client has no route out.
//! A guard detaches, unpins and removes everything on drop, also when the
//! test fails.
//!
//! Needs root and the `pod-server` binary (`cargo xtask test` builds it; or
//! `cargo build -p switchyard-tests`).

#![allow(clippy::disallowed_types, reason = "a synchronous test harness")]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use switchyard_ebpf::{
    BackendValue, EbpfError, FLAG_AFFINITY, FLAG_DROP, FLAG_MAGLEV, FrontendKey, FrontendValue,
    LinkState, MAPS, PROGRAMS, Proto, SlotKey, SocketLb, SocketLbConfig, cleanup,
    destroy_sockets_to,
};
use switchyard_tests::netns::Netns;
use switchyard_tests::topology::{POD_HTTP_PORT, POD_UDP_PORT};
use switchyard_tests::{Topology, client, poll_until, require_root, unique_prefix};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// A topology with the socket load balancer attached to its client's
/// cgroup. Dropping it cleans the load balancer up before the topology
/// (and so the cgroup) goes.
struct Fixture {
    lb: Option<SocketLb>,
    config: SocketLbConfig,
    topo: Topology,
}

impl Fixture {
    fn new(pods: usize) -> Result<Self> {
        Self::with(pods, |_| {})
    }

    fn with(pods: usize, tweak: impl FnOnce(&mut SocketLbConfig)) -> Result<Self> {
        require_root()?;
        let mut topo = Topology::new(pods)?;
        topo.start_pod_servers()?;
        let cgroup = topo
            .client()
            .cgroup()
            .context("the client namespace has no cgroup")?
            .to_path_buf();
        let mut config = SocketLbConfig::new(pin_dir(topo.prefix()), cgroup);
        tweak(&mut config);
        let mut fixture = Self {
            lb: None,
            config,
            topo,
        };
        fixture.lb = Some(SocketLb::open(&fixture.config)?);
        Ok(fixture)
    }

    fn lb(&mut self) -> &mut SocketLb {
        self.lb.as_mut().expect("the load balancer is open")
    }

    fn client(&self) -> &Netns {
        self.topo.client()
    }

    fn pod_addr(&self, index: usize, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.topo.pod(index).ipv4()), port)
    }

    /// Backends `id_base + i` for every pod on `port`, slots `1..=n`, then the
    /// frontend: make-before-break order.
    fn program(
        &mut self,
        frontend: FrontendKey,
        service_id: u32,
        backend_port: u16,
        flags: u16,
        affinity_timeout: u32,
    ) -> Result<Vec<u32>> {
        let pods = self.topo.pods().len();
        let mut ids = Vec::new();
        for index in 0..pods {
            let id = service_id * 100 + index as u32 + 1;
            let addr = match frontend.addr {
                IpAddr::V4(_) => self.pod_addr(index, backend_port),
                IpAddr::V6(_) => {
                    SocketAddr::new(IpAddr::V6(self.topo.pod(index).ipv6()), backend_port)
                }
            };
            self.lb().backend_put(id, &BackendValue::active(addr))?;
            self.lb()
                .slot_put(&SlotKey::new(service_id, index as u32 + 1), id)?;
            ids.push(id);
        }
        self.lb().frontend_put(
            &frontend,
            &FrontendValue {
                service_id,
                count: pods as u16,
                flags,
                affinity_timeout,
                ..FrontendValue::default()
            },
        )?;
        Ok(ids)
    }

    fn web(&mut self) -> Result<Vec<u32>> {
        self.program(tcp(VIP, 80), 1, POD_HTTP_PORT, 0, 0)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.lb = None;
        if let Err(error) = cleanup(&self.config.pin_path, &self.config.cgroup_path) {
            eprintln!("cleanup {}: {error}", self.config.pin_path.display());
        }
    }
}

fn pin_dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/{prefix}-ebpf"))
}

fn tcp(ip: Ipv4Addr, port: u16) -> FrontendKey {
    FrontendKey::new(IpAddr::V4(ip), port, Proto::Tcp)
}

fn udp(ip: Ipv4Addr, port: u16) -> FrontendKey {
    FrontendKey::new(IpAddr::V4(ip), port, Proto::Udp)
}

/// Runs a python3 snippet in `ns` and returns its stdout, trimmed.
fn python(ns: &Netns, code: &str) -> Result<String> {
    let output = ns.exec_with(["python3", "-c", code], None, Duration::from_secs(30))?;
    ensure!(
        output.status.success(),
        "python3 failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What a TCP connect to `addr` from `ns` does: `ok <peer>` or the
/// exception's name and errno.
fn connect_outcome(ns: &Netns, addr: &str, port: u16) -> Result<String> {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    python(
        ns,
        &format!(
            r#"
import socket
s = socket.socket(socket.{family}, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(("{addr}", {port}))
    p = s.getpeername()
    print("ok", p[0], p[1])
except OSError as e:
    print(type(e).__name__, e.errno)
"#
        ),
    )
}

#[test]
fn tcp_reaches_every_backend_and_getpeername_shows_the_vip() -> Result<()> {
    let mut fx = Fixture::new(3)?;
    fx.web()?;
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 40)?;
    let tally = client::tally(&names);
    assert_eq!(
        tally.keys().cloned().collect::<Vec<_>>(),
        ["web-0", "web-1", "web-2"],
        "every pod gets traffic: {tally:?}"
    );

    assert_eq!(
        connect_outcome(fx.client(), "10.96.0.10", 80)?,
        "ok 10.96.0.10 80"
    );
    // The server saw a direct connection from the client.
    let peer = client::curl_once(fx.client(), "http://10.96.0.10/peer")?;
    assert!(
        peer.starts_with("10.0.0.2:"),
        "peer as the pod saw it: {peer}"
    );

    let stats = fx.lb().stats()?;
    assert!(stats.translated >= 42, "{stats:?}");
    assert!(stats.revnat >= 1, "{stats:?}");
    assert_eq!(stats.backend_missing, 0, "{stats:?}");
    Ok(())
}

#[test]
fn udp_replies_come_from_the_vip_connected_or_not() -> Result<()> {
    let mut fx = Fixture::new(3)?;
    fx.program(udp(VIP, 53), 2, POD_UDP_PORT, 0, 0)?;
    let target = SocketAddr::new(IpAddr::V4(VIP), 53);
    let replies = client::udp_requests(fx.client(), target, "hello", 30)?;
    let mut pods = BTreeSet::new();
    for reply in replies {
        let reply = reply.map_err(anyhow::Error::msg)?;
        assert_eq!(reply.from, target, "unconnected recvfrom source");
        pods.insert(reply.pod().to_owned());
    }
    assert_eq!(pods.len(), 3, "every pod answers: {pods:?}");

    let connected = python(
        fx.client(),
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("10.96.0.10", 53))
s.send(b"ping")
data, peer = s.recvfrom(1000)
print(s.getpeername()[0], s.getpeername()[1], peer[0], peer[1], data.decode().split(" ")[1])
"#,
    )?;
    assert_eq!(connected, "10.96.0.10 53 10.96.0.10 53 ping");
    Ok(())
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_balanced() -> Result<()> {
    let mut fx = Fixture::new(2)?;
    fx.web()?;
    let v6 = FrontendKey::new("fd00:96::10".parse()?, 80, Proto::Tcp);
    fx.program(v6, 3, POD_HTTP_PORT, 0, 0)?;

    let names = client::curl_many(fx.client(), "http://[fd00:96::10]/", 20)?;
    assert_eq!(client::tally(&names).len(), 2, "{names:?}");
    assert_eq!(
        connect_outcome(fx.client(), "fd00:96::10", 80)?,
        "ok fd00:96::10 80"
    );
    // A dual-stack socket talking IPv4 through the mapped form.
    assert_eq!(
        connect_outcome(fx.client(), "::ffff:10.96.0.10", 80)?,
        "ok ::ffff:10.96.0.10 80"
    );
    Ok(())
}

#[test]
fn a_frontend_without_backends_refuses_or_drops_at_once() -> Result<()> {
    let mut fx = Fixture::new(1)?;
    let refuse = tcp(VIP, 81);
    let drop = tcp(VIP, 82);
    for (key, flags) in [(refuse, 0), (drop, FLAG_DROP)] {
        fx.lb().frontend_put(
            &key,
            &FrontendValue {
                service_id: 9,
                count: 0,
                flags,
                affinity_timeout: 0,
                ..FrontendValue::default()
            },
        )?;
    }
    // With a 5 s timeout, a timeout would show as TimeoutError: these fail
    // in the connect call itself.
    assert_eq!(
        connect_outcome(fx.client(), "10.96.0.10", 81)?,
        format!("ConnectionRefusedError {}", libc::ECONNREFUSED)
    );
    assert_eq!(
        connect_outcome(fx.client(), "10.96.0.10", 82)?,
        format!("PermissionError {}", libc::EPERM)
    );
    fx.lb().frontend_put(
        &udp(VIP, 83),
        &FrontendValue {
            service_id: 10,
            count: 0,
            flags: 0,
            affinity_timeout: 0,
            ..FrontendValue::default()
        },
    )?;
    let udp_outcomes = python(
        fx.client(),
        r#"
import socket
for port in (83, 84):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("10.96.0.10", port))
        print("sent", end=" ")
    except OSError as e:
        print(type(e).__name__, end=" ")
"#,
    )?;
    // A UDP frontend without backends refuses sendto; no frontend on 84:
    // sendto is left alone (and goes nowhere).
    assert_eq!(udp_outcomes, "ConnectionRefusedError sent");
    assert!(fx.lb().stats()?.no_backend >= 3);
    Ok(())
}

#[test]
fn affinity_keeps_a_client_on_one_backend() -> Result<()> {
    let mut fx = Fixture::new(3)?;
    fx.program(tcp(VIP, 80), 4, POD_HTTP_PORT, FLAG_AFFINITY, 300)?;
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 20)?;
    let tally = client::tally(&names);
    assert_eq!(tally.len(), 1, "one backend for the client: {tally:?}");

    // Forget it and make that backend leave the slots: the client moves.
    let stuck = names[0].clone();
    let stuck_index: usize = stuck.trim_start_matches("web-").parse()?;
    assert!(fx.lb().affinity_clear(4)? >= 1);
    let others: Vec<u32> = (0..3)
        .filter(|i| *i != stuck_index)
        .map(|i| 400 + i as u32 + 1)
        .collect();
    for (slot, id) in others.iter().enumerate() {
        fx.lb().slot_put(&SlotKey::new(4, slot as u32 + 1), *id)?;
    }
    let mut value = fx.lb().frontend_get(&tcp(VIP, 80))?.context("frontend")?;
    value.count = 2;
    fx.lb().frontend_put(&tcp(VIP, 80), &value)?;
    fx.lb().slot_delete(&SlotKey::new(4, 3))?;
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 20)?;
    let tally = client::tally(&names);
    assert_eq!(tally.len(), 1, "{tally:?}");
    assert!(!tally.contains_key(&stuck), "{tally:?}");
    Ok(())
}

#[test]
fn maglev_picks_through_the_table_consistently() -> Result<()> {
    // A table of two chunks: the programs must find entries beyond the first 1,024.
    const MAGLEV_SIZE: u32 = 2039;
    let mut fx = Fixture::new(3)?;
    let ids = fx.program(tcp(VIP, 80), 5, POD_HTTP_PORT, FLAG_MAGLEV, 0)?;
    let mut value = fx.lb().frontend_get(&tcp(VIP, 80))?.context("frontend")?;
    value.maglev_size = MAGLEV_SIZE;
    fx.lb().frontend_put(&tcp(VIP, 80), &value)?;
    let mixed: Vec<u32> = (0..MAGLEV_SIZE as usize).map(|i| ids[i % 3]).collect();
    fx.lb().maglev_put_table(5, &mixed)?;
    assert_eq!(fx.lb().maglev_table(5, MAGLEV_SIZE)?, Some(mixed));
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 20)?;
    assert_eq!(
        client::tally(&names).len(),
        1,
        "one client, one table entry: {names:?}"
    );

    // Every entry on pod 2: the table, not the slots, decides.
    fx.lb()
        .maglev_put_table(5, &vec![ids[2]; MAGLEV_SIZE as usize])?;
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 10)?;
    assert!(names.iter().all(|n| n == "web-2"), "{names:?}");

    assert!(matches!(
        fx.lb().maglev_put_table(5, &[]),
        Err(EbpfError::InvalidInput { .. })
    ));
    fx.lb().maglev_delete_table(5, MAGLEV_SIZE)?;
    assert_eq!(fx.lb().maglev_table(5, MAGLEV_SIZE)?, None);
    // A Maglev frontend without a table refuses rather than guessing.
    assert_eq!(
        connect_outcome(fx.client(), "10.96.0.10", 80)?,
        format!("ConnectionRefusedError {}", libc::ECONNREFUSED)
    );
    assert!(fx.lb().stats()?.backend_missing >= 1);
    Ok(())
}

#[test]
fn reopening_reuses_links_and_maps_and_traffic_never_stops() -> Result<()> {
    let mut fx = Fixture::new(2)?;
    let first = fx.lb().report().clone();
    assert!(
        first
            .programs
            .iter()
            .all(|p| p.state == LinkState::Attached),
        "{first:?}"
    );
    assert_eq!(first.maps_created.len(), MAPS.len(), "{first:?}");
    fx.web()?;
    client::curl_many(fx.client(), "http://10.96.0.10/", 4)?;

    // The daemon goes away: the kernel keeps translating.
    fx.lb = None;
    let names = client::curl_many(fx.client(), "http://10.96.0.10/", 10)?;
    assert_eq!(names.len(), 10);

    fx.lb = Some(SocketLb::open(&fx.config)?);
    let second = fx.lb().report().clone();
    assert!(
        second.programs.iter().all(|p| p.state == LinkState::Reused),
        "{second:?}"
    );
    assert_eq!(second.maps_reused.len(), MAPS.len(), "{second:?}");
    assert_eq!(second.size_mismatches, [], "{second:?}");
    let ids =
        |r: &switchyard_ebpf::OpenReport| r.programs.iter().map(|p| p.link_id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second), "the same links");
    for (old, new) in first.programs.iter().zip(&second.programs) {
        assert_ne!(
            old.prog_id, new.prog_id,
            "{}: the reused link runs the program loaded now",
            new.program
        );
    }
    assert_eq!(
        fx.lb().frontend_get(&tcp(VIP, 80))?,
        Some(FrontendValue {
            service_id: 1,
            count: 2,
            flags: 0,
            affinity_timeout: 0,
            ..FrontendValue::default()
        })
    );
    assert_eq!(fx.lb().backends()?.len(), 2);
    assert_eq!(fx.lb().slots_of(1, 2)?, vec![Some(101), Some(102)]);
    assert!(fx.lb().stats()?.translated >= 14, "counters survive too");
    client::curl_many(fx.client(), "http://10.96.0.10/", 4)?;
    Ok(())
}

#[test]
fn cleanup_detaches_and_unpins_everything() -> Result<()> {
    let mut fx = Fixture::new(1)?;
    fx.web()?;
    client::curl_once(fx.client(), "http://10.96.0.10/")?;
    fx.lb = None;
    cleanup(&fx.config.pin_path, &fx.config.cgroup_path)?;
    assert!(!fx.config.pin_path.exists(), "pin folder removed");
    let out = client::curl(
        fx.client(),
        &["-sS", "--connect-timeout", "2", "http://10.96.0.10/"],
    )?;
    assert!(
        !out.status.success(),
        "the VIP is no longer translated: {out:?}"
    );
    // Pods are still reachable directly.
    client::curl_once(fx.client(), "http://10.244.0.10:8080/")?;
    assert_eq!(
        switchyard_ebpf::attached_programs(&fx.config.cgroup_path)?,
        Vec::<String>::new()
    );
    // Idempotent.
    cleanup(&fx.config.pin_path, &fx.config.cgroup_path)?;
    Ok(())
}

#[test]
fn verify_links_repairs_a_lost_pin() -> Result<()> {
    let mut fx = Fixture::new(1)?;
    fx.web()?;
    assert_eq!(fx.lb().verify_links()?, Vec::<String>::new());
    // Losing the pin releases the link: connects are no longer translated.
    std::fs::remove_file(fx.config.pin_path.join("link_sy_connect4"))?;
    poll_until("the VIP to stop answering", Duration::from_secs(10), || {
        let out = client::curl(
            fx.client(),
            &["-sS", "--connect-timeout", "1", "http://10.96.0.10/"],
        )?;
        Ok((!out.status.success()).then_some(()))
    })?;
    let repaired = fx.lb().verify_links()?;
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert!(
        repaired[0].starts_with("sy_connect4: link pin missing"),
        "{repaired:?}"
    );
    client::curl_once(fx.client(), "http://10.96.0.10/")?;
    assert_eq!(fx.lb().verify_links()?, Vec::<String>::new());

    // A lost map pin is re-pinned from the open map, entries and all.
    std::fs::remove_file(fx.config.pin_path.join("sy_frontends"))?;
    assert_eq!(
        fx.lb().verify_links()?,
        ["sy_frontends: map pin missing: re-pinned"]
    );
    fx.lb = None;
    fx.lb = Some(SocketLb::open(&fx.config)?);
    assert!(fx.lb().report().maps_reused.contains(&"sy_frontends"));
    assert!(fx.lb().frontend_get(&tcp(VIP, 80))?.is_some());
    Ok(())
}

/// A cgroup v2 folder of our own, removed on drop.
struct CgroupGuard(PathBuf);

impl CgroupGuard {
    fn new() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let root = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<_> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .context("no cgroup2 mount")?;
        let path = root.join(unique_prefix());
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir(&self.0) {
            eprintln!("remove {}: {error}", self.0.display());
        }
    }
}

/// Cleans a pin folder up on drop.
struct PinGuard(SocketLbConfig);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(error) = cleanup(&self.0.pin_path, &self.0.cgroup_path) {
            eprintln!("cleanup {}: {error}", self.0.pin_path.display());
        }
    }
}

#[test]
fn a_full_map_is_map_full_naming_the_map_and_key() -> Result<()> {
    require_root()?;
    let cgroup = CgroupGuard::new()?;
    let name = cgroup
        .0
        .file_name()
        .context("cgroup name")?
        .to_string_lossy()
        .into_owned();
    let mut config = SocketLbConfig::new(pin_dir(&name), &cgroup.0);
    config.max_frontends = 2;
    config.max_backends = 1;
    let guard = PinGuard(config.clone());
    let lb = SocketLb::open(&guard.0)?;
    let value = FrontendValue {
        service_id: 1,
        count: 0,
        flags: 0,
        affinity_timeout: 0,
        ..FrontendValue::default()
    };
    lb.frontend_put(&tcp(VIP, 1), &value)?;
    lb.frontend_put(&tcp(VIP, 2), &value)?;
    // Overwriting an existing key still works when full.
    lb.frontend_put(&tcp(VIP, 2), &value)?;
    match lb.frontend_put(&tcp(VIP, 3), &value) {
        Err(EbpfError::MapFull { map, key }) => {
            assert_eq!(map, "sy_frontends");
            assert_eq!(key, "10.96.0.10:3/tcp");
        }
        other => bail!("expected MapFull, got {other:?}"),
    }
    lb.backend_put(1, &BackendValue::active("10.244.0.10:80".parse()?))?;
    let error = lb
        .backend_put(2, &BackendValue::active("10.244.0.11:80".parse()?))
        .expect_err("sy_backends holds one entry");
    assert!(matches!(
        error,
        EbpfError::MapFull {
            map: "sy_backends",
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "map sy_backends is full: cannot add backend 2"
    );
    assert_eq!(lb.frontends()?.len(), 2);
    assert!(lb.frontend_delete(&tcp(VIP, 1))?);
    assert!(!lb.frontend_delete(&tcp(VIP, 1))?);
    lb.frontend_put(&tcp(VIP, 3), &value)?;
    drop(lb);

    // A pinned map keeps its size, and the report says so.
    let mut bigger = config.clone();
    bigger.max_frontends = 8;
    let lb = SocketLb::open(&bigger)?;
    assert_eq!(
        lb.report().size_mismatches,
        [switchyard_ebpf::SizeMismatch {
            map: "sy_frontends",
            pinned: 2,
            configured: 8
        }]
    );
    assert!(matches!(
        lb.frontend_put(&tcp(VIP, 4), &value),
        Err(EbpfError::MapFull { .. })
    ));
    drop(lb);
    drop(guard);
    assert!(!config.pin_path.exists());
    Ok(())
}

#[test]
fn probe_loads_without_attaching() -> Result<()> {
    require_root()?;
    switchyard_ebpf::probe()?;
    Ok(())
}

#[test]
fn every_program_is_attached_to_the_test_cgroup_only() -> Result<()> {
    let fx = Fixture::new(0)?;
    let report = fx.lb.as_ref().context("open")?.report().clone();
    assert_eq!(report.programs.len(), PROGRAMS.len());
    let mut expected: Vec<String> = PROGRAMS.iter().map(|p| (*p).to_owned()).collect();
    expected.sort();
    assert_eq!(
        switchyard_ebpf::attached_programs(&fx.config.cgroup_path)?,
        expected,
        "each program once, on the test's cgroup"
    );
    // Reopening attaches nothing more.
    let again = SocketLb::open(&fx.config)?;
    assert!(
        again
            .report()
            .programs
            .iter()
            .all(|p| p.state == LinkState::Reused)
    );
    drop(again);
    assert_eq!(
        switchyard_ebpf::attached_programs(&fx.config.cgroup_path)?,
        expected
    );
    for program in PROGRAMS {
        assert!(
            Path::new(&fx.config.pin_path)
                .join(format!("link_{program}"))
                .exists()
        );
    }
    Ok(())
}

/// A Python client that connects a socket to the VIP, exchanges once, says
/// `ready`, waits for `go`, then reports what its next recv does.
const HELD_SOCKET: &str = r#"
import os, socket, sys, time
kind, go = sys.argv[1], sys.argv[2]
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("10.96.0.10", 53))
    s.settimeout(3)
    s.send(b"one")
    s.recv(1000)
else:
    s = socket.create_connection(("10.96.0.10", 80), timeout=3)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
s.settimeout(3)
try:
    data = s.recv(1000)
    print("data", len(data), flush=True)
except OSError as e:
    print("error", type(e).__name__, e.errno, flush=True)
"#;

/// Runs `f` on a thread that entered namespace `ns` (`sock_diag` works on the
/// calling thread's namespace).
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(format!("/run/netns/{}", ns.name()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

#[test]
fn destroy_sockets_to_closes_connected_sockets_to_a_backend() -> Result<()> {
    let mut fx = Fixture::new(1)?;
    fx.web()?;
    fx.program(udp(VIP, 53), 2, POD_UDP_PORT, 0, 0)?;
    let udp_backend = fx.pod_addr(0, POD_UDP_PORT);
    let tcp_backend = fx.pod_addr(0, POD_HTTP_PORT);

    for (kind, backend, proto, errno) in [
        ("udp", udp_backend, Proto::Udp, libc::ECONNABORTED),
        ("tcp", tcp_backend, Proto::Tcp, libc::ECONNABORTED),
    ] {
        let go = fx.topo.scratch_dir().join(format!("go-{kind}"));
        let log = fx.topo.scratch_dir().join(format!("held-{kind}.log"));
        let mut held = fx.client().spawn(
            [
                "python3",
                "-c",
                HELD_SOCKET,
                kind,
                go.to_str().context("path")?,
            ],
            &log,
        )?;
        held.wait_for_line("ready", Duration::from_secs(10))?;
        // Nothing to close in the test's own namespace.
        assert_eq!(destroy_sockets_to(backend, proto)?, 0);
        let closed = in_netns(fx.client(), move || Ok(destroy_sockets_to(backend, proto)?))?;
        assert_eq!(closed, 1, "{kind}: one socket to {backend}");
        std::fs::write(&go, "")?;
        held.wait_for_line(
            &format!("error ConnectionAbortedError {errno}"),
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}
