//! End-to-end tests of what only the eBPF datapath promises: socket-level
//! load balancing seen from the application (getpeername and UDP replies
//! show the VIP, the pod sees the client's own address), immediate refusal,
//! moving connected UDP clients off a deleted backend, a restart under load
//! that loses no connection and rewrites nothing, and 10,000 Services.
//!
//! Every daemon here runs with `--proxy-mode ebpf`, attached to the
//! topology's client cgroup and pinned under `/sys/fs/bpf/<prefix>`; the
//! guards run `switchyard cleanup` however a test ends.

#![allow(clippy::disallowed_types)] // synchronous tests: std's clock is the right one

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use switchyard_tests::objects::{self, Endpoint, EndpointSlice, Pod, Service, ServicePort};
use switchyard_tests::topology::{CLIENT_IP4, CLIENT_IP6, NODE_IP4, NODE_IP6, NODE_NAME};
use switchyard_tests::{
    Daemon, DaemonConfig, Manifests, Mode, Topology, client, metrics, poll_until,
};

/// Far longer than the daemon needs to apply a change (it promises 200 ms).
const PICKUP: Duration = Duration::from_secs(5);

/// A topology with `pods` pods running the default servers (`web-<i>`),
/// each pod's manifest in `pod-web-<i>.yaml`, and the Node.
fn cluster(pods: usize) -> Result<(Topology, Manifests)> {
    let (topo, manifests) = switchyard_tests::cluster(pods)?;
    for index in 0..pods {
        let pod = Pod::web(&topo, index);
        manifests.write_objects(&format!("pod-{}.yaml", pod.name()), &[pod.to_value()])?;
    }
    Ok((topo, manifests))
}

/// Seconds since the epoch, as Python's `time.time()` reports them.
fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// For each of `count` fresh TCP connections to `host:port`: the peer as
/// `getpeername()` reports it, the local address, and what the pod's
/// `/peer` says it saw, as `PEER_IP PEER_PORT LOCAL_IP LOCAL_PORT BODY`.
const PEERNAME_CLIENT: &str = r#"
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for _ in range(count):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
    peer, local = s.getpeername(), s.getsockname()
    s.sendall(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
    print(peer[0], peer[1], local[0], local[1], body, flush=True)
"#;

#[test]
fn getpeername_shows_the_vip_and_the_pod_sees_the_client() -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.10", "fd00:96::10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        for (vip, client_ip) in [
            ("10.96.0.10", IpAddr::V4(CLIENT_IP4)),
            ("fd00:96::10", IpAddr::V6(CLIENT_IP6)),
        ] {
            let out = client::python(
                topo.client(),
                PEERNAME_CLIENT,
                &[vip, "80", "10"],
                Duration::from_secs(30),
            )?;
            ensure!(out.lines().count() == 10, "ten connections: {out}");
            for line in out.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                let [peer_ip, peer_port, local_ip, local_port, seen] = fields[..] else {
                    bail!("unexpected line {line:?}");
                };
                ensure!(
                    peer_ip == vip && peer_port == "80",
                    "getpeername() says {peer_ip} port {peer_port}, not the VIP {vip} port 80"
                );
                let local: IpAddr = local_ip.parse()?;
                ensure!(local == client_ip, "the socket is bound to {local}");
                // The pod sees this very socket: the client's address and port.
                let expected = SocketAddr::new(client_ip, local_port.parse()?).to_string();
                ensure!(
                    seen == expected,
                    "the pod saw the connection from {seen}, expected {expected} (the client itself)"
                );
            }
        }
        Ok(())
    })())
}

/// `count` connected UDP sockets to `host:port`, one exchange each:
/// `PEERNAME_IP PEERNAME_PORT FROM_IP FROM_PORT PAYLOAD`.
const CONNECTED_UDP_CLIENT: &str = r#"
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for i in range(count):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, port))
    s.send(b"hello%d" % i)
    data, peer = s.recvfrom(1000)
    name = s.getpeername()
    s.close()
    print(name[0], name[1], peer[0], peer[1], data.decode(), flush=True)
"#;

#[test]
fn udp_replies_come_from_the_vip_connected_or_not() -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("dns")
        .cluster_ips(&["10.96.0.53", "fd00:96::53"])
        .selector("app", "web")
        .port(ServicePort::udp("dns", 53, 5353));
    manifests.write_objects("svc-dns.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        for vip in ["10.96.0.53", "fd00:96::53"] {
            let target = SocketAddr::new(vip.parse()?, 53);
            // Unconnected: sendto() and recvfrom(), a fresh socket each.
            let mut pods = BTreeSet::new();
            for (i, reply) in client::udp_requests(topo.client(), target, "ping", 20)?
                .into_iter()
                .enumerate()
            {
                let reply = reply.map_err(|e| anyhow::anyhow!("{vip} exchange {i}: {e}"))?;
                ensure!(
                    reply.from == target,
                    "unconnected {vip}: the reply came from {} instead of the VIP",
                    reply.from
                );
                ensure!(
                    reply.payload == format!("{} ping", reply.pod()),
                    "reply {:?}",
                    reply.payload
                );
                pods.insert(reply.pod().to_owned());
            }
            ensure!(pods.len() > 1, "20 unconnected flows to {vip}: {pods:?}");

            // Connected: connect(), send(), recvfrom(), getpeername().
            let out = client::python(
                topo.client(),
                CONNECTED_UDP_CLIENT,
                &[vip, "53", "20"],
                Duration::from_secs(30),
            )?;
            let mut pods = BTreeSet::new();
            for (i, line) in out.lines().enumerate() {
                let fields: Vec<&str> = line.split(' ').collect();
                let [name_ip, name_port, from_ip, from_port, pod, payload] = fields[..] else {
                    bail!("unexpected line {line:?}");
                };
                ensure!(
                    (name_ip, name_port) == (vip, "53"),
                    "connected {vip}: getpeername() says {name_ip} port {name_port}"
                );
                ensure!(
                    (from_ip, from_port) == (vip, "53"),
                    "connected {vip}: the reply came from {from_ip} port {from_port}"
                );
                ensure!(payload == format!("hello{i}"), "reply {line:?}");
                pods.insert(pod.to_owned());
            }
            ensure!(out.lines().count() == 20, "twenty exchanges: {out}");
            ensure!(pods.len() > 1, "20 connected sockets to {vip}: {pods:?}");
        }
        Ok(())
    })())
}

/// Keeps ONE connected UDP socket to `host:port` for `duration` seconds,
/// sending every 100 ms; prints what each exchange did, with Python's
/// `time.time()`. After an error (a socket switchyard closed) it opens a
/// new socket, as a DNS client would.
const UDP_STICKY_CLIENT: &str = r#"
import socket, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    s.connect((host, port))
    return s
s = connect()
end = time.monotonic() + duration
seq = 0
while time.monotonic() < end:
    seq += 1
    try:
        s.send(b"q%d" % seq)
        data = s.recv(1000)
        print("ok", time.time(), data.decode().split(" ")[0], flush=True)
    except socket.timeout:
        print("timeout", time.time(), flush=True)
    except OSError as e:
        print("error", time.time(), type(e).__name__, e.errno, flush=True)
        s.close()
        s = connect()
    time.sleep(0.1)
print("done", time.time(), flush=True)
"#;

/// One line of [`UDP_STICKY_CLIENT`]'s output.
#[derive(Debug)]
struct Exchange {
    at: f64,
    kind: String,
    detail: String,
}

fn parse_exchanges(log: &str) -> Result<Vec<Exchange>> {
    log.lines()
        .map(|line| {
            let mut fields = line.splitn(3, ' ');
            let kind = fields.next().unwrap_or_default().to_owned();
            let at = fields
                .next()
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("no time in {line:?}"))?;
            Ok(Exchange {
                at,
                kind,
                detail: fields.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

#[test]
fn connected_udp_client_leaves_a_deleted_backend_within_a_second() -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("dns")
        .cluster_ips(&["10.96.0.53"])
        .selector("app", "web")
        .port(ServicePort::udp("dns", 53, 5353));
    manifests.write_objects("svc-dns.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        let log = topo.scratch_dir().join("udp-sticky.log");
        let mut held = topo.client().spawn(
            ["python3", "-c", UDP_STICKY_CLIENT, "10.96.0.53", "53", "5"],
            &log,
        )?;
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        // Half a second of answers, all from the one backend the socket is
        // connected to.
        let first = poll_until("five answers on the held socket", PICKUP, || {
            let exchanges = parse_exchanges(&read())?;
            Ok((exchanges.iter().filter(|e| e.kind == "ok").count() >= 5).then_some(exchanges))
        })?;
        let pod = first[0].detail.clone();
        ensure!(
            first.iter().all(|e| e.kind == "ok" && e.detail == pod),
            "one connected socket talks to one backend: {first:?}"
        );
        let index: usize = pod
            .strip_prefix("web-")
            .and_then(|i| i.parse().ok())
            .with_context(|| format!("answered by {pod:?}"))?;

        // The pod is deleted; its server keeps running, so only switchyard
        // closing the socket moves the client.
        let deleted_at = now_epoch();
        manifests.remove(&format!("pod-web-{index}.yaml"))?;
        let status = held
            .wait_timeout(Duration::from_secs(15))?
            .context("the UDP client did not finish")?;
        let output = read();
        ensure!(status.success(), "the UDP client failed: {output}");
        let exchanges = parse_exchanges(&output)?;
        let report = || format!("deleted {pod} at {deleted_at:.3}; client output:\n{output}");

        let timeouts = exchanges.iter().filter(|e| e.kind == "timeout").count();
        ensure!(
            timeouts == 0,
            "{timeouts} exchanges timed out; {}",
            report()
        );
        let errors: Vec<&Exchange> = exchanges.iter().filter(|e| e.kind == "error").collect();
        ensure!(
            errors.len() == 1,
            "the held socket must fail exactly once (closed by switchyard), got {} errors; {}",
            errors.len(),
            report()
        );
        let error = errors[0];
        ensure!(
            error.at > deleted_at,
            "the socket failed before the pod was deleted; {}",
            report()
        );
        let after: Vec<&Exchange> = exchanges
            .iter()
            .filter(|e| e.kind == "ok" && e.at > error.at)
            .collect();
        let first_other = after
            .first()
            .with_context(|| format!("no answer after the error; {}", report()))?;
        ensure!(
            after.iter().all(|e| e.detail != pod),
            "{pod} answered again after it was deleted; {}",
            report()
        );
        ensure!(
            first_other.at - deleted_at <= 1.0,
            "the first answer from another pod came {:.3} s after the deletion; {}",
            first_other.at - deleted_at,
            report()
        );
        ensure!(
            exchanges
                .iter()
                .filter(|e| e.kind == "ok" && e.at < error.at)
                .all(|e| e.detail == pod),
            "before the error every answer came from {pod}; {}",
            report()
        );
        ensure!(
            after.len() >= 10,
            "the new socket keeps being answered; {}",
            report()
        );
        eprintln!(
            "socket error {} {:.3} s after the deletion; {} answered {:.3} s after it",
            error.detail,
            error.at - deleted_at,
            first_other.detail,
            first_other.at - deleted_at
        );
        Ok(())
    })())
}

/// Connects (TCP) and sends a datagram (UDP) to `host`, timing each call:
/// `tcp ERROR SECONDS` and `udp ERROR SECONDS` (`ok` for no error).
const REFUSAL_CLIENT: &str = r#"
import socket, sys, time
host, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def outcome(call):
    start = time.monotonic()
    try:
        call()
        result = "ok"
    except OSError as e:
        result = type(e).__name__
    return "%s %.6f" % (result, time.monotonic() - start)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.settimeout(5)
print("tcp", outcome(lambda: t.connect((host, tcp_port))), flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("udp", outcome(lambda: u.sendto(b"x", (host, udp_port))), flush=True)
"#;

/// What [`REFUSAL_CLIENT`] saw: (protocol, error class, seconds).
fn refusal_outcomes(
    ns: &switchyard_tests::Netns,
    host: &str,
) -> Result<Vec<(String, String, f64)>> {
    let out = client::python(
        ns,
        REFUSAL_CLIENT,
        &[host, "80", "53"],
        Duration::from_secs(20),
    )?;
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [proto, error, seconds] = fields[..] else {
                bail!("unexpected line {line:?}");
            };
            Ok((proto.to_owned(), error.to_owned(), seconds.parse()?))
        })
        .collect()
}

#[test]
fn service_without_endpoints_refuses_at_once() -> Result<()> {
    let (topo, manifests) = cluster(1)?;
    let empty = Service::new("empty")
        .cluster_ips(&["10.96.0.30"])
        .selector("tier", "backend")
        .port(ServicePort::tcp("http", 80, 8080))
        .port(ServicePort::udp("dns", 53, 5353));
    let web = Service::new("web")
        .cluster_ips(&["10.96.0.10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc.yaml", &[web.to_value(), empty.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        client::curl_once(topo.client(), "http://10.96.0.10/")?;
        let out = client::curl(
            topo.client(),
            &[
                "-sS",
                "--connect-timeout",
                "5",
                "-w",
                "%{time_total}",
                "http://10.96.0.30:80/",
            ],
        )?;
        ensure!(
            out.code == Some(7),
            "curl to a Service without endpoints must fail to connect (exit 7), got {:?}: {}",
            out.code,
            out.stderr.trim()
        );
        let curl_seconds: f64 = out.stdout.trim().parse().unwrap_or(f64::MAX);
        ensure!(
            curl_seconds < 0.2,
            "curl's own transfer took {curl_seconds} s (whole run {:?}): a refusal is immediate",
            out.elapsed
        );

        let outcomes = refusal_outcomes(topo.client(), "10.96.0.30")?;
        for (proto, error, seconds) in &outcomes {
            ensure!(
                error == "ConnectionRefusedError",
                "{proto} to a Service without endpoints: {error}, expected ConnectionRefusedError"
            );
            ensure!(*seconds < 0.2, "{proto} refusal took {seconds} s");
        }
        ensure!(outcomes.len() == 2, "tcp and udp: {outcomes:?}");
        let refused = metrics::sum(
            &metrics::parse(&daemon.metrics()?),
            "switchyard_bpf_no_backend_total",
            &[],
        );
        ensure!(
            refused >= 3.0,
            "switchyard_bpf_no_backend_total is {refused} after 3 refusals"
        );
        Ok(())
    })())
}

#[test]
fn local_policy_without_a_local_endpoint_fails_with_eperm() -> Result<()> {
    let (topo, manifests) = cluster(1)?;
    let service = Service::new("local")
        .cluster_ips(&["10.96.0.40"])
        .internal_traffic_policy("Local")
        .port(ServicePort::tcp("http", 80, 8080))
        .port(ServicePort::udp("dns", 53, 5353));
    manifests.write_objects("svc-local.yaml", &[service.to_value()])?;
    // Its one endpoint is on another node.
    let slice = |node: &str| {
        EndpointSlice::new("local-1", "local")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint(
                Endpoint::new(IpAddr::V4(topo.pod(0).ipv4()))
                    .node(Some(node))
                    .pod("web-0"),
            )
            .to_value()
    };
    manifests.write_objects("slice-local.yaml", &[slice("node-1")])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        let outcomes = refusal_outcomes(topo.client(), "10.96.0.40")?;
        for (proto, error, seconds) in &outcomes {
            ensure!(
                error == "PermissionError",
                "{proto} to a Local Service without a local endpoint: {error}, expected PermissionError (EPERM)"
            );
            ensure!(*seconds < 0.2, "{proto} took {seconds} s");
        }
        ensure!(outcomes.len() == 2, "tcp and udp: {outcomes:?}");
        // With the endpoint on this node, the Service serves.
        manifests.write_objects("slice-local.yaml", &[slice(NODE_NAME)])?;
        let name = poll_until("the local endpoint to serve", PICKUP, || {
            Ok(client::curl_many_results(topo.client(), "http://10.96.0.40/", 1)?
                .remove(0)
                .ok())
        })?;
        ensure!(name == "web-0", "answered by {name}");
        Ok(())
    })())
}

/// `bpftool map dump pinned PIN` (read only), parsed.
fn dump_map(pin: &std::path::Path) -> Result<Value> {
    let output = std::process::Command::new("bpftool")
        .arg("--json")
        .arg("map")
        .arg("dump")
        .arg("pinned")
        .arg(pin)
        .output()
        .context("run bpftool")?;
    ensure!(
        output.status.success(),
        "bpftool map dump pinned {}: {}",
        pin.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout).context("bpftool's JSON")
}

/// The lookup maps' entries, keyed by map, sorted (hash order is not
/// stable across dumps).
fn dump_lookup_maps(daemon: &Daemon) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let pins = &daemon.ebpf_paths().context("eBPF paths")?.pin_path;
    let mut out = BTreeMap::new();
    for map in ["sy_frontends", "sy_slots", "sy_backends"] {
        let mut entries: Vec<String> = dump_map(&pins.join(map))?
            .as_array()
            .with_context(|| format!("{map} dump is a list"))?
            .iter()
            .map(Value::to_string)
            .collect();
        entries.sort();
        out.insert(map, entries);
    }
    Ok(out)
}

/// How the daemon is stopped and started again under load.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// SIGKILL (a crash), then the same binary.
    Kill,
    /// SIGTERM (a DaemonSet's rolling update), then a new binary started over the running
    /// datapath.
    TermAndUpgrade,
}

#[test]
fn restart_loses_no_connection_and_rewrites_nothing() -> Result<()> {
    restart_under_load(Restart::Kill)
}

#[test]
fn sigterm_and_an_upgrade_lose_no_connection_and_rewrite_nothing() -> Result<()> {
    restart_under_load(Restart::TermAndUpgrade)
}

/// A client connects (one HTTP request each) in a loop while the daemon is stopped as `how`
/// says and started again: no connection and no request fails, also while no daemon runs,
/// and the new process reuses every link and map and rewrites nothing.
fn restart_under_load(how: Restart) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.10", "fd00:96::10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let mut daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    let result = (|| {
        client::curl_many(topo.client(), "http://10.96.0.10/", 5)?;
        let services_before = daemon.services_cli_json()?;
        let maps_before = dump_lookup_maps(&daemon)?;
        ensure!(
            maps_before["sy_frontends"].len() == 2 && maps_before["sy_backends"].len() == 6,
            "two frontends over six backends (three pods, two families): {maps_before:?}"
        );

        let log = topo.scratch_dir().join("connect-loop.log");
        let mut clients = topo.client().spawn(
            [
                "python3",
                "-c",
                client::CONNECT_LOOP_CLIENT,
                "10.96.0.10",
                "80",
                "6",
                "0.05",
            ],
            &log,
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let killed_at = now_epoch();
        match how {
            Restart::Kill => {
                let status = daemon.kill()?;
                eprintln!("switchyard killed: {status}");
            }
            Restart::TermAndUpgrade => {
                let status = daemon.terminate(Duration::from_secs(15))?;
                ensure!(status.success(), "SIGTERM: switchyard exited {status}");
                // The new version: another file, as a new image would bring.
                let upgraded = topo.scratch_dir().join("switchyard-upgraded");
                std::fs::copy(switchyard_tests::daemon::switchyard_bin()?, &upgraded)?;
                daemon.set_bin(&upgraded);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let restarting_at = now_epoch();
        let started = Instant::now();
        daemon.restart()?;
        eprintln!(
            "{how:?}: started again and healthy in {:?}",
            started.elapsed()
        );

        let status = clients
            .wait_timeout(Duration::from_secs(20))?
            .context("the connecting client did not finish")?;
        let output = std::fs::read_to_string(&log)?;
        ensure!(status.success(), "the client failed: {output}");
        let lines: Vec<(&str, f64, &str)> = output
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                Some((f.next()?, f.next()?.parse().ok()?, f.next().unwrap_or("")))
            })
            .collect();
        let failed: Vec<&(&str, f64, &str)> = lines.iter().filter(|l| l.0 != "ok").collect();
        ensure!(
            failed.is_empty(),
            "{} of {} connections failed across the restart: {failed:?}",
            failed.len(),
            lines.len()
        );
        let during = lines
            .iter()
            .filter(|l| l.1 > killed_at && l.1 < restarting_at)
            .count();
        ensure!(
            lines.len() >= 60 && during >= 20,
            "{} connections, {during} while no daemon ran: too few to tell",
            lines.len()
        );
        let pods: BTreeSet<&str> = lines.iter().map(|l| l.2).collect();
        ensure!(pods.len() == 3, "connections reached {pods:?}");

        let open = daemon
            .log()
            .lines()
            .find(|l| l.contains("socket load balancer open"))
            .map(str::to_owned)
            .context("the restarted daemon did not log `socket load balancer open`")?;
        ensure!(
            open.contains("reused_links=8") && open.contains("reused_maps=10"), // every one of switchyard_ebpf::MAPS
            "the restarted daemon did not reuse every link and map: {open}"
        );
        ensure!(
            open.contains("attached_links=0"),
            "the restarted daemon attached links anew: {open}"
        );
        let read_back = daemon
            .log()
            .lines()
            .find(|l| l.contains("state read back from the kernel"))
            .map(str::to_owned)
            .context("the restarted daemon did not log reading the maps back")?;
        ensure!(
            read_back.contains("frontends=2") && read_back.contains("backends=6"),
            "the restarted daemon did not find the frontends in the maps: {read_back}"
        );
        let services_after = daemon.services_cli_json()?;
        ensure!(
            services_after == services_before,
            "`switchyard services` differs after the restart:\nbefore {services_before}\nafter  {services_after}"
        );
        let maps_after = dump_lookup_maps(&daemon)?;
        ensure!(
            maps_after == maps_before,
            "the restarted daemon rewrote the maps (ids changed):\nbefore {maps_before:?}\nafter  {maps_after:?}"
        );
        Ok(())
    })();
    daemon.with_log(result)
}

/// How many Services the scale test programs, each with a slice of
/// [`SCALE_ENDPOINTS`] endpoints.
const SCALE_SERVICES: usize = 10_000;
const SCALE_ENDPOINTS: usize = 10;
/// Every this many Services, one is in the sample: all its endpoints are
/// the real pods, and the test connects to it.
const SCALE_SAMPLE_EVERY: usize = 500;

/// The `ClusterIP` of Service `i`: `10.96.1.1` ... `10.96.40.250`.
fn scale_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// A fake endpoint address, distinct per (Service, slot): `10.245.0.1`
/// onwards, a range nothing routes to (the test never connects there).
fn scale_fake(n: usize) -> Ipv4Addr {
    let block = n / 250;
    Ipv4Addr::new(
        10,
        245 + (block / 250) as u8,
        (block % 250) as u8,
        1 + (n % 250) as u8,
    )
}

/// Writes the Services and their slices as JSON documents in files of
/// 1,000 Services each; returns the sample's indices.
fn write_scale_manifests(topo: &Topology, manifests: &Manifests) -> Result<Vec<usize>> {
    let real: Vec<IpAddr> = topo.pods().iter().map(|p| IpAddr::V4(p.ipv4())).collect();
    let mut sample = Vec::new();
    let mut text = String::new();
    let mut fake = 0;
    for i in 0..SCALE_SERVICES {
        let name = format!("svc-{i:05}");
        let service = Service::new(&name)
            .cluster_ips(&[&scale_vip(i).to_string()])
            .port(ServicePort::tcp("http", 80, 8080));
        let mut slice = EndpointSlice::new(&format!("{name}-1"), &name).port("http", 8080, "TCP");
        let addresses: Vec<IpAddr> = if i % SCALE_SAMPLE_EVERY == 0 {
            sample.push(i);
            real.clone()
        } else {
            let mut addresses = real.clone();
            while addresses.len() < SCALE_ENDPOINTS {
                addresses.push(IpAddr::V4(scale_fake(fake)));
                fake += 1;
            }
            addresses
        };
        for address in addresses {
            slice = slice.endpoint(Endpoint::new(address));
        }
        // JSON is YAML: flow-style documents keep 10,000 Services quick to
        // write and to read.
        let _ = writeln!(
            text,
            "---\n{}\n---\n{}",
            service.to_value(),
            slice.to_value()
        );
        if (i + 1) % 1000 == 0 {
            manifests.write(&format!("services-{:02}.yaml", i / 1000), &text)?;
            text.clear();
        }
    }
    Ok(sample)
}

#[test]
fn ten_thousand_services_of_ten_endpoints() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_pod_servers()?;
    let manifests = Manifests::new_in(topo.scratch_dir())?;
    manifests.write_objects(
        "node.yaml",
        &[objects::node(
            NODE_NAME,
            &[IpAddr::V4(NODE_IP4), IpAddr::V6(NODE_IP6)],
        )],
    )?;
    let started = Instant::now();
    let sample = write_scale_manifests(&topo, &manifests)?;
    eprintln!("manifests written in {:?}", started.elapsed());
    let config = DaemonConfig {
        ready_timeout: Duration::from_mins(1),
        ..DaemonConfig::ebpf(&topo)?
    };
    let started = Instant::now();
    let daemon = topo.start_daemon_with(&manifests, &config)?;
    eprintln!("healthy after {:?}", started.elapsed());
    daemon.with_log((|| {
        // A consistent first view: the first table programmed held every Service, not the
        // part of them whose objects had arrived.
        let first = daemon.wait_for_log(
            "the first view to be programmed",
            Duration::from_secs(10),
            |l| l.contains("first complete view programmed"),
        )?;
        // The sample Services have the real pods as their endpoints, every other one ten.
        let want_backends =
            (SCALE_SERVICES - sample.len()) * SCALE_ENDPOINTS + sample.len() * topo.pods().len();
        let field = |name: &str| -> Option<String> {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        };
        eprintln!(
            "first view: {} Services, {} frontends, {} backends; programmed {} after the \
             initial lists, {} after the process started",
            field("services").unwrap_or_default(),
            field("frontends").unwrap_or_default(),
            field("backends").unwrap_or_default(),
            field("after_lists").unwrap_or_default(),
            field("since_start").unwrap_or_default(),
        );
        ensure!(
            field("services") == Some(SCALE_SERVICES.to_string())
                && field("frontends") == Some(SCALE_SERVICES.to_string())
                && field("backends") == Some(want_backends.to_string()),
            "the first programmed view was not the whole cluster: {first}"
        );
        let frontends = poll_until(
            "`switchyard services` to list 10,000 frontends",
            Duration::from_mins(1),
            || {
                let all = daemon.services_cli_json()?;
                let frontends = all.as_array().context("a list")?.clone();
                Ok((frontends.len() >= SCALE_SERVICES).then_some(frontends))
            },
        )?;
        eprintln!("10,000 frontends listed after {:?}", started.elapsed());
        ensure!(
            frontends.len() == SCALE_SERVICES,
            "{} frontends listed",
            frontends.len()
        );
        let by_frontend: BTreeMap<&str, usize> = frontends
            .iter()
            .filter_map(|f| {
                Some((
                    f["frontend"].as_str()?,
                    f["backends"].as_array().map_or(0, Vec::len),
                ))
            })
            .collect();
        for i in [1, 4_999, 9_999] {
            let key = format!("{}:80/TCP", scale_vip(i));
            ensure!(
                by_frontend.get(key.as_str()) == Some(&SCALE_ENDPOINTS),
                "{key} has {:?} backends, expected {SCALE_ENDPOINTS}",
                by_frontend.get(key.as_str())
            );
        }

        let mut pods = BTreeSet::new();
        for &i in &sample {
            let url = format!("http://{}/", scale_vip(i));
            let names = client::curl_many(topo.client(), &url, 5)
                .with_context(|| format!("sample Service {i}"))?;
            ensure!(
                names.iter().all(|n| n.starts_with("web-")),
                "{url}: {names:?}"
            );
            pods.extend(names);
        }
        ensure!(pods.len() == 3, "the sample's connections reached {pods:?}");
        eprintln!(
            "{} sample Services answered after {:?}",
            sample.len(),
            started.elapsed()
        );
        Ok(())
    })())
}

/// What `bpftool cgroup show CGROUP` lists (read only).
fn attached_programs(cgroup: &std::path::Path) -> Result<String> {
    let output = std::process::Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .context("run bpftool")?;
    ensure!(
        output.status.success(),
        "bpftool cgroup show {}: {}",
        cgroup.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn guards_remove_every_trace_of_the_ebpf_datapath() -> Result<()> {
    let (topo, manifests) = cluster(1)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    let paths = daemon.ebpf_paths().context("eBPF paths")?.clone();
    let pid = daemon.pid();
    ensure!(
        paths.pin_path == topo.bpf_pin_path()
            && paths.pin_path.starts_with("/sys/fs/bpf/")
            && Some(paths.cgroup.as_path()) == topo.client().cgroup(),
        "pinned to {} and attached to {}: not the topology's own",
        paths.pin_path.display(),
        paths.cgroup.display()
    );
    client::curl_once(topo.client(), "http://10.96.0.10/")?;
    let attached = attached_programs(&paths.cgroup)?;
    ensure!(
        attached.matches("sy_").count() == 8,
        "eight programs on the client's cgroup:\n{attached}"
    );
    // The machine's root cgroup has none of them.
    let root = switchyard_tests::netns::cgroup2_root()?;
    let on_root = attached_programs(&root)?;
    ensure!(
        !on_root.contains("sy_"),
        "switchyard programs on the machine's root cgroup:\n{on_root}"
    );

    drop(daemon);
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "switchyard (pid {pid}) survived its guard"
    );
    ensure!(
        !paths.pin_path.exists(),
        "{} survived the daemon's guard",
        paths.pin_path.display()
    );
    let attached = attached_programs(&paths.cgroup)?;
    ensure!(
        !attached.contains("sy_"),
        "programs left on the client's cgroup:\n{attached}"
    );
    drop(manifests);
    drop(topo);
    ensure!(
        !paths.cgroup.exists(),
        "{} survived the topology",
        paths.cgroup.display()
    );
    Ok(())
}

/// Holds ONE TCP connection to `host:port` for `duration` seconds, one
/// keep-alive `GET /` every 100 ms: `ok TIME POD`, then `error TIME ERROR`
/// and exit when the connection breaks.
const HELD_TCP_CLIENT: &str = r#"
import socket, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=2)
f = s.makefile("rb")
end = time.monotonic() + duration
while time.monotonic() < end:
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        length = None
        while True:
            line = f.readline()
            if not line:
                raise EOFError("connection closed")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode().partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        print("ok", time.time(), f.read(length).decode().strip(), flush=True)
    except (OSError, EOFError) as e:
        print("error", time.time(), type(e).__name__, flush=True)
        break
    time.sleep(0.1)
print("done", time.time(), flush=True)
"#;

#[test]
fn held_tcp_connection_drains_while_terminating_and_closes_when_gone() -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, Mode::Ebpf)?;
    daemon.with_log((|| {
        let log = topo.scratch_dir().join("held-tcp.log");
        let mut held = topo.client().spawn(
            ["python3", "-c", HELD_TCP_CLIENT, "10.96.0.10", "80", "8"],
            &log,
        )?;
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let first = poll_until("three answers on the held connection", PICKUP, || {
            let exchanges = parse_exchanges(&read())?;
            Ok((exchanges.iter().filter(|e| e.kind == "ok").count() >= 3).then_some(exchanges))
        })?;
        let pod = first[0].detail.clone();
        let index: usize = pod
            .strip_prefix("web-")
            .and_then(|i| i.parse().ok())
            .with_context(|| format!("answered by {pod:?}"))?;

        // Terminating (still serving): new connections go elsewhere, the held
        // one is left to drain.
        let terminating = Pod::web(&topo, index).terminating(true);
        manifests.write_objects(&format!("pod-web-{index}.yaml"), &[terminating.to_value()])?;
        let others: Vec<String> = (0..3)
            .filter(|i| *i != index)
            .map(|i| format!("web-{i}"))
            .collect();
        poll_until(
            &format!("{pod} to leave new connections' rotation"),
            PICKUP,
            || {
                let names = client::curl_many(topo.client(), "http://10.96.0.10/", 20)?;
                Ok(names.iter().all(|n| others.contains(n)).then_some(()))
            },
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let draining = parse_exchanges(&read())?;
        ensure!(
            draining.iter().all(|e| e.kind == "ok" && e.detail == pod),
            "the held connection to a terminating backend must keep working: {draining:?}"
        );

        // Gone: switchyard closes the connection.
        let deleted_at = now_epoch();
        manifests.remove(&format!("pod-web-{index}.yaml"))?;
        let status = held
            .wait_timeout(Duration::from_secs(15))?
            .context("the held client did not finish")?;
        let output = read();
        ensure!(status.success(), "the held client failed: {output}");
        let exchanges = parse_exchanges(&output)?;
        let error = exchanges
            .iter()
            .find(|e| e.kind == "error")
            .with_context(|| {
                format!("the connection to deleted {pod} was never closed:\n{output}")
            })?;
        ensure!(
            error.at > deleted_at && error.at - deleted_at <= 1.0,
            "the connection broke {:.3} s after {pod} was deleted:\n{output}",
            error.at - deleted_at
        );
        eprintln!(
            "the connection to {pod} broke ({}) {:.3} s after the deletion",
            error.detail,
            error.at - deleted_at
        );
        Ok(())
    })())
}

/// The frontends `/services` lists, as `VIP:port/PROTO` strings.
fn listed_frontends(daemon: &Daemon) -> Result<BTreeSet<String>> {
    Ok(daemon
        .services_json()?
        .as_array()
        .context("/services is a list")?
        .iter()
        .filter_map(|f| f["frontend"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn a_full_map_is_reported_and_the_programmed_services_keep_working() -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    let services: Vec<Value> = (41..47)
        .map(|i| {
            Service::new(&format!("svc-{i}"))
                .cluster_ips(&[&format!("10.96.0.{i}")])
                .selector("app", "web")
                .port(ServicePort::tcp("http", 80, 8080))
                .to_value()
        })
        .collect();
    manifests.write_objects("services.yaml", &services)?;
    let mut config = DaemonConfig::ebpf(&topo)?
        .arg("--bpf-max-frontends")
        .arg("4");
    // A short sync period, so the Services that did not fit are retried quickly.
    config.sync_period = "1s".to_owned();
    let daemon = topo.start_daemon_with(&manifests, &config)?;
    daemon.with_log((|| {
        // Four fit; two are refused by the kernel, and the daemon says so.
        let programmed = poll_until("four frontends in the kernel", PICKUP, || {
            let listed = listed_frontends(&daemon)?;
            Ok((listed.len() == 4).then_some(listed))
        })?;
        daemon.wait_for_log("the full map in the log", PICKUP, |line| {
            line.contains("sy_frontends") && line.contains("full")
        })?;
        let full = metrics::sum(
            &metrics::parse(&daemon.metrics()?),
            "switchyard_bpf_map_full_total",
            &[("map", "sy_frontends")],
        );
        ensure!(
            full >= 2.0,
            "switchyard_bpf_map_full_total{{map=sy_frontends}} is {full}"
        );
        ensure!(daemon.healthz()?.0 == 200, "the daemon stays healthy");
        // Every Service that was programmed answers.
        for frontend in &programmed {
            let vip = frontend.split(':').next().unwrap_or_default();
            client::curl_once(topo.client(), &format!("http://{vip}/"))?;
        }
        // Room made: the two left out are programmed at the next sync.
        let removed: Vec<String> = programmed.iter().take(2).cloned().collect();
        let keep: Vec<Value> = services
            .iter()
            .filter(|s| {
                let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default();
                !removed.iter().any(|f| f.starts_with(&format!("{ip}:")))
            })
            .cloned()
            .collect();
        ensure!(keep.len() == 4, "four Services remain: {keep:?}");
        manifests.write_objects("services.yaml", &keep)?;
        let after = poll_until("the left-out Services programmed", PICKUP, || {
            let listed = listed_frontends(&daemon)?;
            Ok(
                (listed.len() == 4 && removed.iter().all(|r| !listed.contains(r)))
                    .then_some(listed),
            )
        })?;
        for frontend in &after {
            let vip = frontend.split(':').next().unwrap_or_default();
            client::curl_once(topo.client(), &format!("http://{vip}/"))?;
        }
        Ok(())
    })())
}

/// `bpftool ARGS...`, for the changes a test makes by hand to its own pins
/// (never anything else); returns its standard output.
fn bpftool(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .context("run bpftool")?;
    ensure!(
        output.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes every entry of the pinned map by hand (as an operator's stray
/// `bpftool map delete` would); returns how many there were.
fn delete_all_entries(pin: &std::path::Path) -> Result<usize> {
    let entries = dump_map(pin)?;
    let entries = entries.as_array().context("a map dump is a list")?;
    let pin_arg = pin.to_str().context("pin path is not UTF-8")?;
    for entry in entries {
        let key: Vec<&str> = entry["key"]
            .as_array()
            .context("an entry's key is a list of bytes")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut args = vec!["map", "delete", "pinned", pin_arg, "key"];
        args.extend(key);
        bpftool(&args)?;
    }
    Ok(entries.len())
}

#[test]
fn drift_in_the_kernel_is_repaired_on_request_on_sighup_and_every_period() -> Result<()> {
    /// Short, so the periodic check comes round within the test.
    const PERIOD: Duration = Duration::from_secs(4);
    let (topo, manifests) = cluster(2)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.10"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let config = DaemonConfig {
        sync_period: format!("{}s", PERIOD.as_secs()),
        ..DaemonConfig::ebpf(&topo)?
    };
    let mut daemon = topo.start_daemon_with(&manifests, &config)?;
    let result = (|| {
        client::curl_many(topo.client(), "http://10.96.0.10/", 3)?;
        let pins = daemon.ebpf_paths().context("eBPF paths")?.pin_path.clone();
        let frontends = pins.join("sy_frontends");
        let repairs = |daemon: &Daemon| -> Result<f64> {
            Ok(metrics::sum(
                &metrics::parse(&daemon.metrics()?),
                "switchyard_datapath_repairs_total",
                &[],
            ))
        };
        ensure!(
            daemon.repair()?.is_empty(),
            "a datapath nobody touched needs no repair"
        );
        ensure!(repairs(&daemon)? == 0.0, "no repair counted yet");

        // 1. The frontend's entry deleted by hand: `switchyard repair` puts
        //    it back before it returns.
        ensure!(delete_all_entries(&frontends)? == 1, "one frontend entry");
        ensure!(dump_map(&frontends)?.as_array().is_some_and(Vec::is_empty));
        let repaired = daemon.repair()?;
        ensure!(
            repaired.iter().any(|r| r.contains("10.96.0.10:80")),
            "the repair does not name the frontend: {repaired:?}"
        );
        ensure!(
            dump_map(&frontends)?.as_array().map(Vec::len) == Some(1),
            "the frontend entry is not back after `switchyard repair`"
        );
        client::curl_many(topo.client(), "http://10.96.0.10/", 3)?;

        // 2. A program's link detached by hand: SIGHUP re-attaches it.
        let link = pins.join("link_sy_connect4");
        let link_arg = link.to_str().context("pin path")?;
        let shown: Value =
            serde_json::from_str(&bpftool(&["--json", "link", "show", "pinned", link_arg])?)
                .context("bpftool's JSON")?;
        let id = shown["id"].as_u64().context("the link's id")?.to_string();
        bpftool(&["link", "detach", "id", &id])?;
        let cgroup = daemon.ebpf_paths().context("eBPF paths")?.cgroup.clone();
        ensure!(
            !attached_programs(&cgroup)?.contains("connect4"),
            "connect4 still attached after the detach"
        );
        let signalled = Instant::now();
        daemon.process().signal(nix::sys::signal::Signal::SIGHUP)?;
        poll_until("connect4 re-attached after SIGHUP", PICKUP, || {
            Ok(attached_programs(&cgroup)?
                .contains("connect4")
                .then_some(()))
        })?;
        eprintln!("re-attached {:?} after SIGHUP", signalled.elapsed());
        client::curl_many(topo.client(), "http://10.96.0.10/", 3)?;

        // 3. Nobody asks: the periodic check repairs within one period.
        ensure!(delete_all_entries(&frontends)? == 1, "one frontend entry");
        let deleted = Instant::now();
        poll_until(
            "the periodic check's repair of the entry",
            PERIOD * 2,
            || Ok((dump_map(&frontends)?.as_array().map(Vec::len) == Some(1)).then_some(())),
        )?;
        eprintln!(
            "the periodic check repaired the entry {:?} after it was deleted (period {PERIOD:?})",
            deleted.elapsed()
        );
        client::curl_many(topo.client(), "http://10.96.0.10/", 3)?;

        let counted = repairs(&daemon)?;
        ensure!(
            counted >= 3.0,
            "switchyard_datapath_repairs_total is {counted}, three repairs were made"
        );
        let logged = daemon
            .log()
            .lines()
            .filter(|l| l.contains("repaired drift"))
            .count();
        ensure!(
            logged >= 3,
            "{logged} `repaired drift` log lines for three repairs"
        );
        Ok(())
    })();
    daemon.with_log(result)
}
