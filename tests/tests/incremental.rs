//! Incremental updates end to end, in both proxy modes: changes to one Service never disturb
//! another Service's frontend. A keep-alive connection through one VIP stays up and keeps
//! answering while another Service is changed, deleted and recreated around it (in eBPF mode
//! that also means switchyard's closing of sockets to removed backends leaves it alone). In
//! userspace mode the untouched frontend's counters show it was never rebuilt; in eBPF mode
//! (where the kernel keeps no per-frontend counters) its entry, as read back from the kernel's
//! maps, is the same before and after.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use switchyard_tests::objects::{Pod, Service, ServicePort};
use switchyard_tests::{Daemon, Manifests, Mode, Topology, client, poll_until};

/// Holds one TCP connection to `host:port` and sends `count` keep-alive GETs on it, `pause`
/// seconds apart; prints each body, or `error ...` and exits 1 when the connection breaks.
const KEEPALIVE_CLIENT: &str = r#"
import socket, sys, time
host, port, count, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=5)
f = s.makefile("rb")
for i in range(count):
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
        body = f.read(length).decode().strip()
        print("ok", body, flush=True)
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)
        sys.exit(1)
    if i + 1 < count:
        time.sleep(pause)
"#;

fn web_service(name: &str, vip: &str, app: &str) -> Service {
    Service::new(name)
        .cluster_ips(&[vip])
        .selector("app", app)
        .port(ServicePort::tcp("http", 80, 8080))
}

#[test]
fn untouched_frontends_never_notice_other_changes_userspace() -> Result<()> {
    untouched_frontends_never_notice_other_changes(Mode::Userspace)
}

#[test]
fn untouched_frontends_never_notice_other_changes_ebpf() -> Result<()> {
    untouched_frontends_never_notice_other_changes(Mode::Ebpf)
}

/// What the daemon shows of web's frontend, in both of its views: the entry in `/services`
/// and the one in `switchyard services --output json`.
fn web_entry(daemon: &Daemon) -> Result<(Value, Value)> {
    let find = |all: Value, source: &str| {
        all.as_array()
            .with_context(|| format!("{source} is a list"))?
            .iter()
            .find(|f| f["frontend"] == "10.96.0.10:80/TCP")
            .cloned()
            .with_context(|| format!("web's frontend in {source}: {all}"))
    };
    Ok((
        find(daemon.services_json()?, "/services")?,
        find(
            daemon.services_cli_json()?,
            "switchyard services --output json",
        )?,
    ))
}

fn untouched_frontends_never_notice_other_changes(mode: Mode) -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_pod_servers()?;
    let manifests = Manifests::new_in(topo.scratch_dir())?;
    // web over pods 0 and 1; other over pod 2.
    for index in 0..3 {
        let app = if index == 2 { "other" } else { "web" };
        let pod = Pod::web(&topo, index).without_labels().label("app", app);
        manifests.write_objects(&format!("pod-{index}.yaml"), &[pod.to_value()])?;
    }
    manifests.write_objects(
        "web.yaml",
        &[web_service("web", "10.96.0.10", "web").to_value()],
    )?;
    manifests.write_objects(
        "other.yaml",
        &[web_service("other", "10.96.0.20", "other").to_value()],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log(hold_one_change_the_other(&topo, &manifests, &daemon, mode))
}

fn hold_one_change_the_other(
    topo: &Topology,
    manifests: &Manifests,
    daemon: &Daemon,
    mode: Mode,
) -> Result<()> {
    poll_until("both Services to answer", Duration::from_secs(5), || {
        let web = client::curl_many_results(topo.client(), "http://10.96.0.10/", 1)?.remove(0);
        let other = client::curl_many_results(topo.client(), "http://10.96.0.20/", 1)?.remove(0);
        Ok((web.is_ok() && other.is_ok()).then_some(()))
    })?;
    // Those two probes are the only connections web has seen so far.
    let baseline = web_connections_total(&daemon.services_json()?)?;
    let entry_before = web_entry(daemon)?;

    let log = topo.scratch_dir().join("keepalive.log");
    let mut held = topo.client().spawn(
        [
            "python3",
            "-c",
            KEEPALIVE_CLIENT,
            "10.96.0.10",
            "80",
            "4",
            "1.5",
        ],
        &log,
    )?;

    // While the connection is held: change `other` in every way a user might.
    let other_pod = |app: &str| Pod::web(topo, 2).without_labels().label("app", app);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        manifests.write_objects("pod-2.yaml", &[other_pod("none").to_value()])?;
        std::thread::sleep(Duration::from_millis(300));
        manifests.write_objects("pod-2.yaml", &[other_pod("other").to_value()])?;
        manifests.write_objects(
            "other.yaml",
            &[Service::new("other")
                .cluster_ips(&["10.96.0.20"])
                .selector("app", "other")
                .port(ServicePort::tcp("http", 80 + round, 8080))
                .to_value()],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        manifests.remove("other.yaml")?;
        std::thread::sleep(Duration::from_millis(300));
        manifests.write_objects(
            "other.yaml",
            &[web_service("other", "10.96.0.20", "other").to_value()],
        )?;
    }

    let status = held
        .wait_timeout(Duration::from_secs(20))?
        .context("the keep-alive client did not finish")?;
    let output = std::fs::read_to_string(&log)?;
    ensure!(
        status.success(),
        "the held connection broke: {output}\n{}",
        daemon.log_tail(30)
    );
    let answers: Vec<&str> = output.lines().filter(|l| l.starts_with("ok ")).collect();
    ensure!(
        answers.len() == 4,
        "four answers on one connection: {output}"
    );
    ensure!(
        answers.iter().all(|a| *a == answers[0]),
        "one connection stays on one pod: {output}"
    );

    match mode {
        // web's frontend kept its state: the held connection is its only new one, and its
        // counters were never reset by a rebuild.
        Mode::Userspace => {
            let after = web_connections_total(&daemon.services_json()?)?;
            ensure!(
                after == baseline + 1,
                "web saw {baseline} then {after} connections"
            );
        }
        // The kernel does not count (connections_total stays 0); web's entry in the maps is
        // exactly what it was.
        Mode::Ebpf => {
            ensure!(baseline == 0, "eBPF mode counted {baseline} connections");
            let entry_after = web_entry(daemon)?;
            ensure!(
                entry_after == entry_before,
                "web's frontend changed while only `other` was touched:\nbefore {entry_before:?}\nafter  {entry_after:?}"
            );
        }
    }

    // And `other` ends up served again.
    poll_until("other to answer again", Duration::from_secs(5), || {
        Ok(
            client::curl_many_results(topo.client(), "http://10.96.0.20/", 1)?
                .remove(0)
                .ok(),
        )
    })?;
    Ok(())
}

fn web_connections_total(services: &serde_json::Value) -> Result<u64> {
    services
        .as_array()
        .context("/services is a list")?
        .iter()
        .find(|f| f["frontend"] == "10.96.0.10:80/TCP")
        .and_then(|f| f["connections_total"].as_u64())
        .context("web's frontend in /services")
}
