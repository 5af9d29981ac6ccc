//! Kubernetes for real: three node daemons in three node namespaces watch one API server
//! (`switchyard apiserver`, in the network namespace), and kubectl is the only client that
//! writes to it. Services and Pods created with kubectl are reachable through the ClusterIP
//! from a client on every node; scaling the pods changes every node's rotation within a
//! second; the API server killed with SIGKILL in the middle of writes loses no acknowledged
//! write, and the nodes' traffic never stops. A userspace-mode daemon upgraded in place (the
//! next instance started beside it, before or after the old one's SIGTERM) hands its
//! listeners over without losing a connection; that needs the external API server too, since
//! an embedded one cannot be shared by two instances.
#![allow(clippy::disallowed_types)] // synchronous tests: std's clock and locks are the right ones

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use switchyard_tests::cluster::ClusterPod;
use switchyard_tests::{
    ApiServer, Cluster, Daemon, DaemonConfig, Kubectl, Mode, client, metrics, objects, poll_until,
};

const VIP: &str = "10.96.0.10";
const NODES: usize = 3;
/// A change reaches every node's datapath within this (the issue's bar).
const PROPAGATION: Duration = Duration::from_secs(1);

/// A Pod object for pod `pod` of the cluster: on its node, ready, label `app=web`.
fn pod_object(cluster: &Cluster, pod: &ClusterPod) -> Value {
    let ips: Vec<IpAddr> = pod.ips();
    objects::Pod::new(&pod.name())
        .node(Some(&cluster.node_name(pod.node())))
        .ips(&ips)
        .label("app", "web")
        .port("http", 8080)
        .to_value()
}

fn web_service() -> Value {
    objects::Service::new("web")
        .cluster_ips(&[VIP])
        .selector("app", "web")
        .port(objects::ServicePort::tcp("http", 80, 8080))
        .to_value()
}

/// Starts one eBPF-mode daemon per node, all watching `api`.
fn start_daemons(cluster: &Cluster, api: &ApiServer) -> Result<Vec<Daemon>> {
    (0..cluster.node_count())
        .map(|i| {
            let config = cluster.daemon_config(i, Mode::Ebpf, &api.kubeconfig())?;
            cluster.start_daemon(i, &config)
        })
        .collect()
}

/// The pods answering `n` fresh connections to the VIP from client `i` (failures included as
/// errors).
fn rotation(cluster: &Cluster, i: usize, n: usize) -> Result<BTreeSet<String>> {
    Ok(
        client::curl_many(cluster.client(i), &format!("http://{VIP}/"), n)?
            .into_iter()
            .collect(),
    )
}

/// Waits until every node's rotation is exactly `want`; returns how long it took.
fn wait_rotation(
    cluster: &Cluster,
    daemons: &[Daemon],
    want: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    for (i, daemon) in daemons.iter().enumerate() {
        let left = timeout.saturating_sub(started.elapsed());
        daemon.with_log(poll_until(
            &format!("node {i}'s rotation to be {want:?}"),
            left.max(Duration::from_millis(100)),
            || {
                // Enough requests that a missing pod is noticed (6 pods: P(miss) < 1e-5).
                let seen = rotation(cluster, i, 8 * want.len().max(1))?;
                Ok((&seen == want).then_some(()))
            },
        ))?;
    }
    Ok(started.elapsed())
}

#[test]
fn kubectl_creates_scales_and_deletes_and_every_node_follows() -> Result<()> {
    let mut cluster = Cluster::new(NODES, 2)?;
    cluster.start_pod_servers()?;
    let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let kubectl = api.kubectl();
    let daemons = start_daemons(&cluster, &api)?;

    // A watch that records every Pod event, as an operator would run it.
    let watch_log = cluster.scratch_dir().join("kubectl-get-w.log");
    let watch = kubectl.spawn(&["get", "pods", "-w", "--output-watch-events"], &watch_log)?;
    let services_log = cluster.scratch_dir().join("kubectl-get-services-w.log");
    let services_watch = kubectl.spawn(
        &["get", "services", "-w", "--output-watch-events"],
        &services_log,
    )?;

    // Create: the Service and four of the six pods.
    kubectl.create_json(&web_service())?;
    let pods: Vec<&ClusterPod> = cluster.pods().collect();
    for pod in &pods[..4] {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    let svc = kubectl.get_json(&["get", "service", "web"])?;
    ensure!(
        svc["spec"]["clusterIP"] == VIP,
        "kubectl get service: {svc}"
    );
    let mut want: BTreeSet<String> = pods[..4].iter().map(|p| p.name()).collect();
    wait_rotation(&cluster, &daemons, &want, Duration::from_secs(10))?;

    // The EndpointSlice the API server derived, as kubectl lists it.
    let slices = kubectl.get_json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ])?;
    let endpoints: usize = slices["items"]
        .as_array()
        .context("a list")?
        .iter()
        .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
        .sum();
    // A single-stack (IPv4) Service: one endpoint per pod, IPv4 only.
    ensure!(endpoints == 4, "endpoints in the slices: {slices}");
    ensure!(
        slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["addressType"] == "IPv4"),
        "slices of another family: {slices}"
    );

    // Scale up: two more pods reach every node's rotation within a second.
    for pod in &pods[4..] {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    want.extend(pods[4..].iter().map(|p| p.name()));
    // The budget: the second the change may take, and the checks of three nodes (48
    // connections each) made one after another.
    let took = wait_rotation(&cluster, &daemons, &want, PROPAGATION * 3)?;
    eprintln!("scale up to 6 pods reached all {NODES} nodes in {took:?}");

    // Scale down: deleting a pod (gracefully: it is terminating) takes it out of every
    // node's rotation for new connections.
    kubectl.run(&["delete", "pod", &pods[0].name(), "--wait=false"])?;
    kubectl.run(&[
        "delete",
        "pod",
        &pods[3].name(),
        "--grace-period=0",
        "--force",
    ])?;
    want.remove(&pods[0].name());
    want.remove(&pods[3].name());
    let took = wait_rotation(&cluster, &daemons, &want, PROPAGATION * 3)?;
    eprintln!("scale down to 4 pods reached all {NODES} nodes in {took:?}");

    // Patch: a pod relabelled out of the selector leaves the rotation.
    kubectl.run(&[
        "patch",
        "pod",
        &pods[1].name(),
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"app":"other"}}}"#,
    ])?;
    want.remove(&pods[1].name());
    wait_rotation(&cluster, &daemons, &want, PROPAGATION * 3)?;
    let patched = kubectl.get_json(&["get", "pod", &pods[1].name()])?;
    ensure!(
        patched["metadata"]["labels"]["app"] == "other",
        "patched pod: {patched}"
    );

    // Patch a Service (strategic merge, kubectl's default): a label; it keeps serving.
    kubectl.run(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"metadata":{"labels":{"team":"payments"}}}"#,
    ])?;
    let patched = kubectl.get_json(&["get", "service", "web"])?;
    ensure!(
        patched["metadata"]["labels"]["team"] == "payments",
        "patched service: {patched}"
    );
    wait_rotation(&cluster, &daemons, &want, PROPAGATION * 3)?;

    // A Service without a selector and an EndpointSlice written with kubectl: created, got,
    // patched (its endpoint turns not ready, so every node refuses) and deleted.
    let manual_vip = "10.96.0.20";
    let backend = cluster.pod(2, 0);
    kubectl.create_json(
        &objects::Service::new("manual")
            .cluster_ips(&[manual_vip])
            .port(objects::ServicePort::tcp("http", 80, 8080))
            .to_value(),
    )?;
    kubectl.create_json(
        &objects::EndpointSlice::new("manual-1", "manual")
            .port("http", 8080, "TCP")
            .endpoint(
                objects::Endpoint::new(backend.ipv4().into())
                    .node(Some(&cluster.node_name(backend.node()))),
            )
            .to_value(),
    )?;
    let slice = kubectl.get_json(&["get", "endpointslice", "manual-1"])?;
    ensure!(
        slice["endpoints"][0]["addresses"][0] == backend.ipv4().to_string(),
        "kubectl get endpointslice: {slice}"
    );
    let manual_answers = |i: usize| -> Result<Option<bool>> {
        let results =
            client::curl_many_results(cluster.client(i), &format!("http://{manual_vip}/"), 1)?;
        Ok(Some(
            results[0]
                .as_ref()
                .is_ok_and(|name| *name == backend.name()),
        ))
    };
    for (i, daemon) in daemons.iter().enumerate() {
        daemon.with_log(poll_until(
            &format!("node {i} to serve {manual_vip} from the kubectl-made slice"),
            Duration::from_secs(3),
            || Ok(manual_answers(i)?.filter(|ok| *ok).map(|_| ())),
        ))?;
    }
    kubectl.run(&[
        "patch",
        "endpointslice",
        "manual-1",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/endpoints/0/conditions/ready","value":false}]"#,
    ])?;
    for (i, daemon) in daemons.iter().enumerate() {
        daemon.with_log(poll_until(
            &format!("node {i} to refuse {manual_vip} once its endpoint is not ready"),
            Duration::from_secs(3),
            || Ok(manual_answers(i)?.filter(|ok| !*ok).map(|_| ())),
        ))?;
    }
    kubectl.run(&["delete", "endpointslice", "manual-1"])?;
    kubectl.run(&["delete", "service", "manual"])?;
    let left = kubectl.get_json(&["get", "endpointslices"])?;
    ensure!(
        left["items"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["metadata"]["name"] != "manual-1"),
        "the deleted slice is still listed: {left}"
    );

    // Delete the Service: every node refuses at once.
    kubectl.run(&["delete", "service", "web"])?;
    for (i, daemon) in daemons.iter().enumerate() {
        daemon.with_log(poll_until(
            &format!("node {i} to stop serving {VIP}"),
            Duration::from_secs(3),
            || {
                let results =
                    client::curl_many_results(cluster.client(i), &format!("http://{VIP}/"), 1)?;
                Ok(results[0].is_err().then_some(()))
            },
        ))?;
    }

    // The Services watch saw web added, patched and deleted.
    let shows = |text: &str, event: &str| {
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq([event, "web"]))
    };
    let services_seen = poll_until(
        "kubectl get services -w to show web added, modified and deleted",
        Duration::from_secs(5),
        || {
            let text = std::fs::read_to_string(&services_log)?;
            Ok(["ADDED", "MODIFIED", "DELETED"]
                .iter()
                .all(|e| shows(&text, e))
                .then_some(text))
        },
    );
    drop(services_watch);
    services_seen.with_context(|| std::fs::read_to_string(&services_log).unwrap_or_default())?;

    // The watch saw the pods come and go: `EVENT NAME READY STATUS ...` lines.
    drop(watch);
    let seen = std::fs::read_to_string(&watch_log)?;
    let events: Vec<(String, String)> = seen
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect();
    let count = |event: &str, pod: &ClusterPod| {
        let name = pod.name();
        events
            .iter()
            .filter(|(e, n)| e == event && *n == name)
            .count()
    };
    for pod in &pods {
        // A watch that starts from a list: every pod appears once as ADDED, not repeated.
        ensure!(
            count("ADDED", pod) == 1,
            "kubectl get -w showed {} added {} times:\n{seen}",
            pod.name(),
            count("ADDED", pod)
        );
    }
    ensure!(
        count("DELETED", pods[3]) == 1,
        "kubectl get -w did not show the forced deletion once:\n{seen}"
    );
    ensure!(
        count("MODIFIED", pods[0]) >= 1,
        "kubectl get -w did not show the graceful deletion:\n{seen}"
    );
    Ok(())
}

/// Three nodes of one pod each, the API server, the web Service and its Pods created with
/// kubectl, and a daemon per node, every node's rotation holding every pod.
fn web_cluster() -> Result<(Cluster, ApiServer, Vec<Daemon>)> {
    let mut cluster = Cluster::new(NODES, 1)?;
    cluster.start_pod_servers()?;
    let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let kubectl = api.kubectl().clone();
    kubectl.create_json(&web_service())?;
    for pod in cluster.pods() {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    let daemons = start_daemons(&cluster, &api)?;
    let all: BTreeSet<String> = cluster.pods().map(ClusterPod::name).collect();
    wait_rotation(&cluster, &daemons, &all, Duration::from_secs(10))?;
    Ok((cluster, api, daemons))
}

/// A client on every node connecting to the VIP in a loop, counting successes and failures.
struct ClientLoops {
    stop: Arc<AtomicBool>,
    loops: Vec<std::thread::JoinHandle<Result<(usize, usize)>>>,
}

impl ClientLoops {
    fn start(cluster: &Cluster) -> ClientLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..cluster.node_count())
            .map(|i| {
                let client = cluster.client(i).clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || -> Result<(usize, usize)> {
                    let (mut ok, mut failed) = (0, 0);
                    while !stop.load(Ordering::SeqCst) {
                        for result in
                            client::curl_many_results(&client, &format!("http://{VIP}/"), 5)?
                        {
                            match result {
                                Ok(_) => ok += 1,
                                Err(_) => failed += 1,
                            }
                        }
                    }
                    Ok((ok, failed))
                })
            })
            .collect();
        ClientLoops { stop, loops }
    }

    /// Stops the loops; returns the connections that succeeded and failed, over all nodes.
    fn stop(mut self) -> Result<(usize, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, 0);
        for (i, handle) in std::mem::take(&mut self.loops).into_iter().enumerate() {
            let (ok, failed) = handle.join().expect("a client loop does not panic")?;
            eprintln!("node {i}: {ok} connections succeeded, {failed} failed");
            total = (total.0 + ok, total.1 + failed);
        }
        Ok(total)
    }
}

impl Drop for ClientLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The API server down for a minute: every node keeps serving the last good state with no
/// failed connection, and once it is back a change reaches every node. Then its store is
/// lost (the database removed, the same certificates and token): the daemons relist from a
/// server whose resource versions start again from the beginning, and converge to what it
/// holds now.
#[test]
fn a_minute_without_the_api_server_and_then_a_lost_store() -> Result<()> {
    const OUTAGE: Duration = Duration::from_secs(60);
    let (cluster, mut api, daemons) = web_cluster()?;
    let kubectl = api.kubectl().clone();
    let pods: Vec<&ClusterPod> = cluster.pods().collect();
    let all: BTreeSet<String> = pods.iter().map(|p| p.name()).collect();
    let programmed_before: Vec<Value> = daemons
        .iter()
        .map(Daemon::services_json)
        .collect::<Result<_>>()?;

    let loops = ClientLoops::start(&cluster);
    api.kill()?;
    let down = Instant::now();
    std::thread::sleep(OUTAGE);
    for (i, daemon) in daemons.iter().enumerate() {
        let (code, body) = daemon.healthz()?;
        ensure!(
            code == 200,
            "node {i}'s /healthz answered {code} during the outage (its datapath is synced): {body}"
        );
        let errors = metrics::sum(
            &metrics::parse(&daemon.metrics()?),
            "switchyard_api_watch_errors_total",
            &[],
        );
        ensure!(
            errors > 0.0,
            "node {i} counted no failed watch during the outage"
        );
    }
    api.restart()?;
    eprintln!("the API server was down for {:?}", down.elapsed());
    // Back: nothing changed, so nothing was reprogrammed (no flush and refill) ...
    std::thread::sleep(Duration::from_secs(2));
    for (i, daemon) in daemons.iter().enumerate() {
        ensure!(
            daemon.services_json()? == programmed_before[i],
            "node {i}'s table changed after the API server came back with the same state"
        );
    }
    // ... and a change reaches every node.
    kubectl.run(&[
        "delete",
        "pod",
        &pods[0].name(),
        "--grace-period=0",
        "--force",
    ])?;
    let mut want = all.clone();
    want.remove(&pods[0].name());
    wait_rotation(&cluster, &daemons, &want, Duration::from_secs(10))?;
    let (ok, failed) = loops.stop()?;
    ensure!(ok > 0, "the client loops made no connection");
    ensure!(
        failed == 0,
        "{failed} of {} connections failed around the outage",
        ok + failed
    );

    // The store is lost: the server starts empty with the same credentials, and the objects
    // are written again, one pod fewer.
    api.kill()?;
    let store = api.data_dir().join("store.redb");
    std::fs::remove_file(&store).with_context(|| format!("remove {}", store.display()))?;
    api.restart()?;
    kubectl.create_json(&web_service())?;
    for pod in pods.iter().skip(2) {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    let mut want: BTreeSet<String> = pods.iter().skip(2).map(|p| p.name()).collect();
    let took = wait_rotation(&cluster, &daemons, &want, Duration::from_secs(30))?;
    eprintln!("every node follows the new store {took:?} after the objects were written");
    // And keeps following it.
    kubectl.create_json(&pod_object(&cluster, pods[1]))?;
    want.insert(pods[1].name());
    wait_rotation(&cluster, &daemons, &want, Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn api_server_killed_during_writes_loses_no_acknowledged_write_and_traffic_never_stops()
-> Result<()> {
    let (cluster, mut api, daemons) = web_cluster()?;
    let kubectl = api.kubectl().clone();
    let pods: Vec<&ClusterPod> = cluster.pods().collect();
    let all: BTreeSet<String> = pods.iter().map(|p| p.name()).collect();

    // Clients on every node connect in a loop for the whole test.
    let loops = ClientLoops::start(&cluster);

    // A writer creates Services through kubectl; the ones kubectl saw acknowledged are kept.
    let acknowledged = Arc::new(shared::Acked::default());
    let writing = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let writer = {
        let kubectl = kubectl.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let writing = Arc::clone(&writing);
        let attempts = Arc::clone(&attempts);
        std::thread::spawn(move || {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                n += 1;
                attempts.fetch_add(1, Ordering::SeqCst);
                let name = format!("svc-{n}");
                let service = objects::Service::new(&name)
                    .port(objects::ServicePort::tcp("http", 80, 8080))
                    .to_value();
                if kubectl.create_json(&service).is_ok() {
                    acknowledged.push(name);
                }
            }
        })
    };
    poll_until(
        "some writes to be acknowledged",
        Duration::from_secs(20),
        || Ok((acknowledged.len() >= 5).then_some(())),
    )?;
    api.kill()?;
    let killed_after = acknowledged.len();
    std::thread::sleep(Duration::from_secs(2));
    // Down: traffic keeps flowing on the last good state (checked by the loops), and the
    // daemons count failed watches.
    api.restart()?;
    poll_until("writes to succeed again", Duration::from_secs(20), || {
        Ok((acknowledged.len() > killed_after + 3).then_some(()))
    })?;
    writing.store(false, Ordering::SeqCst);
    writer.join().expect("the writer thread does not panic");

    // Every acknowledged write is there.
    let listed = kubectl.get_json(&["get", "services"])?;
    let names: BTreeSet<String> = listed["items"]
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let acked = acknowledged.all();
    let missing: Vec<&String> = acked.iter().filter(|n| !names.contains(*n)).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing after the crash: {missing:?}",
        missing.len(),
        acked.len()
    );
    eprintln!(
        "{} writes attempted, {} acknowledged ({killed_after} before the kill), all present",
        attempts.load(Ordering::SeqCst),
        acked.len()
    );

    // The daemons reconnected: a change after the restart reaches every node.
    kubectl.run(&[
        "delete",
        "pod",
        &pods[0].name(),
        "--grace-period=0",
        "--force",
    ])?;
    let mut want = all.clone();
    want.remove(&pods[0].name());
    wait_rotation(&cluster, &daemons, &want, Duration::from_secs(10))?;

    let (ok, failed) = loops.stop()?;
    ensure!(ok > 0, "the client loops made no connection");
    ensure!(
        failed == 0,
        "{failed} of {} connections failed while the API server was down",
        ok + failed
    );
    for (i, daemon) in daemons.iter().enumerate() {
        let samples = metrics::parse(&daemon.metrics()?);
        let errors = metrics::sum(&samples, "switchyard_api_watch_errors_total", &[]);
        ensure!(
            errors > 0.0,
            "node {i} never saw its watches fail while the API server was down"
        );
    }
    Ok(())
}

/// The names a writer thread saw acknowledged, read by the test.
mod shared {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<String>>);

    impl Acked {
        pub fn push(&self, name: String) {
            self.0.lock().expect("not poisoned").push(name);
        }
        pub fn len(&self) -> usize {
            self.0.lock().expect("not poisoned").len()
        }
        pub fn all(&self) -> Vec<String> {
            self.0.lock().expect("not poisoned").clone()
        }
    }
}

/// A Python client that keeps one HTTP/1.1 connection to `host:port` open: it makes one
/// request at once, then waits (up to `timeout` seconds) for the file `go` to exist and makes a
/// second request on the same connection. Prints `first ok TIME POD` and `second ok TIME POD`,
/// or `error TIME ERROR` (and exits 1). It never reconnects.
const KEEP_ALIVE_CLIENT: &str = r#"
import os, socket, sys, time
host, port, go, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
buf = b""
def request(s, label):
    global buf
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("connection closed before the answer")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("connection closed in the body")
        rest += chunk
    body, buf = rest[:length], rest[length:]
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError("answer %r" % head[:40])
    print(label, "ok", time.time(), body.decode().strip(), flush=True)
try:
    s = socket.create_connection((host, port), timeout=2)
    s.settimeout(5)
    request(s, "first")
    end = time.monotonic() + timeout
    while not os.path.exists(go):
        if time.monotonic() > end:
            raise OSError("%s did not appear" % go)
        time.sleep(0.02)
    request(s, "second")
    s.close()
except OSError as e:
    print("error", time.time(), type(e).__name__, str(e).replace("\n", " "), flush=True)
    sys.exit(1)
"#;

/// How the running daemon and its successor overlap in an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upgrade {
    /// The successor starts while the old instance runs; the old one gets SIGTERM once it has
    /// handed over.
    StartThenStop,
    /// The old instance gets SIGTERM first and keeps accepting (`--handover-wait`) until the
    /// successor, started after it, takes over.
    StopThenStart,
}

/// In both cases a userspace-mode daemon hands its listeners to the next instance in its
/// node namespace with no connection lost; the handover ends the old instance's wait for a
/// successor at once.
mod userspace_upgrade_hands_the_listeners_over {
    #[test]
    fn start_then_stop() -> anyhow::Result<()> {
        super::userspace_upgrade(super::Upgrade::StartThenStop)
    }

    #[test]
    fn stop_then_start() -> anyhow::Result<()> {
        super::userspace_upgrade(super::Upgrade::StopThenStart)
    }
}

/// How long the old instance waits for a successor after SIGTERM: far longer than a handover
/// takes, so an exit before it is up shows the handover ended the wait.
const OLD_HANDOVER_WAIT: Duration = Duration::from_secs(20);
/// How long a daemon may take to log its side of the handover.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// At least this many loop connections in each phase of the upgrade, or the test cannot tell.
const MIN_PER_PHASE: usize = 10;
const TOOK_OVER: &str = "took over from the previous instance";
const HANDED_OVER: &str = "handed over to the next instance";

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One node, three pods behind the web Service (created with kubectl), the old daemon A and
/// the successor B (the same binary) sharing one admin socket. A client connects to the VIP
/// every 20 ms for the whole upgrade, and one connection opened through A before the
/// upgrade makes a request after the handover. Then B alone serves: a change reaches it, and
/// on its own SIGTERM (no successor) it removes the VIP.
fn userspace_upgrade(how: Upgrade) -> Result<()> {
    let mut cluster = Cluster::new(1, 3)?;
    cluster.start_pod_servers()?;
    let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let kubectl = api.kubectl().clone();
    kubectl.create_json(&web_service())?;
    for pod in cluster.pods() {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    let socket = cluster.scratch_dir().join("admin.sock");
    let socket = socket.to_str().context("scratch path is not UTF-8")?;
    let config = cluster
        .daemon_config(0, Mode::Userspace, &api.kubeconfig())?
        .arg("--admin-socket")
        .arg(socket);
    // A waits long for a successor: its exit well before shows the handover ended the
    // wait. B waits for none, so that its own SIGTERM at the end removes the VIP at once.
    let config_a = DaemonConfig {
        handover_wait: format!("{}s", OLD_HANDOVER_WAIT.as_secs()),
        ..config.clone()
    };
    let mut a = cluster.start_daemon(0, &config_a)?;
    let mut b = None;
    let result = upgrade_steps(&cluster, &kubectl, &mut a, &mut b, &config, how);
    let result = match &b {
        Some(b) => b.with_log(result),
        None => result,
    };
    a.with_log(result)
}

fn upgrade_steps(
    cluster: &Cluster,
    kubectl: &Kubectl,
    a: &mut Daemon,
    b_slot: &mut Option<Daemon>,
    config_b: &DaemonConfig,
    how: Upgrade,
) -> Result<()> {
    let vip_on_lo = "10.96.0.10/32";
    let all: BTreeSet<String> = cluster.pods().map(ClusterPod::name).collect();
    wait_rotation(
        cluster,
        std::slice::from_ref(a),
        &all,
        Duration::from_secs(10),
    )?;
    ensure!(
        cluster
            .node(0)
            .addresses("lo")?
            .iter()
            .any(|x| x == vip_on_lo),
        "A has not put {vip_on_lo} on lo"
    );
    let scratch = cluster.scratch_dir();
    let client = cluster.client(0);

    // Opened through A before the upgrade (no successor exists yet).
    let keep_alive_log = scratch.join("keep-alive.log");
    let go = scratch.join("keep-alive.go");
    let mut keep_alive = (how == Upgrade::StartThenStop)
        .then(|| {
            client.spawn(
                [
                    "python3",
                    "-c",
                    KEEP_ALIVE_CLIENT,
                    VIP,
                    "80",
                    path_str(&go)?,
                    "60",
                ],
                &keep_alive_log,
            )
        })
        .transpose()?;
    if keep_alive.is_some() {
        poll_until(
            "the long-lived connection's first answer",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&keep_alive_log)?;
                ensure!(!text.contains("error"), "long-lived client: {text}");
                Ok(text.contains("first ok").then_some(()))
            },
        )?;
    }

    let loop_log = scratch.join("connect-loop.log");
    let stop = scratch.join("connect-loop.stop");
    let mut connect_loop = client.spawn(
        [
            "python3",
            "-c",
            client::CONNECT_LOOP_CLIENT,
            VIP,
            "80",
            "300",
            "0.02",
            path_str(&stop)?,
        ],
        &loop_log,
    )?;
    std::thread::sleep(Duration::from_secs(1));

    let mut sigterm_at = None;
    if how == Upgrade::StopThenStart {
        sigterm_at = Some((now_epoch(), Instant::now()));
        a.sigterm()?;
        // A keeps accepting while it waits for a successor.
        std::thread::sleep(Duration::from_secs(1));
        ensure!(
            a.try_wait()?.is_none(),
            "A exited within 1 s of SIGTERM although it waits {OLD_HANDOVER_WAIT:?} for a successor"
        );
    }

    let b_start_epoch = now_epoch();
    let b_started = Instant::now();
    let b = b_slot.insert(cluster.start_daemon(0, config_b)?);
    let healthy = b_started.elapsed();
    b.wait_for_log("B to log that it took over", HANDOVER_TIMEOUT, |l| {
        l.contains(TOOK_OVER)
    })?;
    let took_over = b_started.elapsed();
    let handed_over_line =
        a.wait_for_log("A to log that it handed over", HANDOVER_TIMEOUT, |l| {
            l.contains(HANDED_OVER)
        })?;
    let handed_over = b_started.elapsed();
    let logged = log_seconds_of_day(&handed_over_line).map_or_else(
        || "?".to_owned(),
        |at| format!("{:.1} ms", (at - b_start_epoch).rem_euclid(86_400.0) * 1e3),
    );
    eprintln!(
        "{how:?}: after B's start: /healthz 200 in {healthy:?} (maybe A's), B took over in \
         {took_over:?}, A handed over in {handed_over:?} (polled every 50 ms; by A's log \
         timestamp {logged})"
    );

    if let Some(mut keep_alive) = keep_alive.take() {
        // The late request, on the connection A still drains.
        std::fs::write(&go, b"")?;
        let status = keep_alive
            .wait_timeout(Duration::from_secs(10))?
            .context("the long-lived client did not finish")?;
        let text = std::fs::read_to_string(&keep_alive_log)?;
        ensure!(
            status.success(),
            "the long-lived connection through A failed after the handover: {text}"
        );
        let pod = |label: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .map(str::to_owned)
        };
        let (first, second) = (pod("first ok "), pod("second ok "));
        ensure!(
            first.is_some() && first == second,
            "the long-lived connection's two answers: {text}"
        );
    }

    // B alone accepts new connections now, while A drains.
    std::thread::sleep(Duration::from_secs(1));
    let a_exit_epoch = match sigterm_at {
        None => {
            let stopping = Instant::now();
            a.sigterm()?;
            let status = a
                .wait_exit(Duration::from_secs(5))?
                .context("A, handed over, did not exit within 5 s of SIGTERM")?;
            ensure!(status.success(), "A exited {status} after SIGTERM");
            eprintln!("{how:?}: A exited {:?} after SIGTERM", stopping.elapsed());
            now_epoch()
        }
        Some((_, at)) => {
            // Well before the 20 s A would wait for a successor that never comes.
            let deadline = Duration::from_secs(15);
            let status = a
                .wait_exit(deadline.saturating_sub(at.elapsed()))?
                .with_context(|| {
                    format!("A, handed over, still ran {deadline:?} after its SIGTERM")
                })?;
            ensure!(status.success(), "A exited {status} after SIGTERM");
            eprintln!("{how:?}: A exited {:?} after SIGTERM", at.elapsed());
            now_epoch()
        }
    };
    ensure!(
        cluster
            .node(0)
            .addresses("lo")?
            .iter()
            .any(|x| x == vip_on_lo),
        "{vip_on_lo} left lo with A, although B took it over: {:?}",
        cluster.node(0).addresses("lo")?
    );
    std::thread::sleep(Duration::from_secs(1));
    ensure!(b.try_wait()?.is_none(), "B exited: {:?}", b.try_wait()?);

    std::fs::write(&stop, b"")?;
    let status = connect_loop
        .wait_timeout(Duration::from_secs(10))?
        .context("the connecting client did not stop")?;
    let output = std::fs::read_to_string(&loop_log)?;
    ensure!(status.success(), "the connecting client failed: {output}");
    let attempts = client::parse_connect_loop(&output);
    let failed: Vec<&client::ConnectAttempt> = attempts.iter().filter(|c| !c.ok).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} connections failed across the upgrade: {failed:?}",
        failed.len(),
        attempts.len()
    );
    let count = |from: f64, to: f64| attempts.iter().filter(|c| c.at > from && c.at < to).count();
    let phases = match sigterm_at {
        None => vec![
            ("A alone", count(0.0, b_start_epoch)),
            ("A and B", count(b_start_epoch, a_exit_epoch)),
            ("B alone", count(a_exit_epoch, f64::MAX)),
        ],
        Some((term, _)) => vec![
            ("A alone", count(0.0, term)),
            ("A waiting for a successor", count(term, b_start_epoch)),
            ("A and B", count(b_start_epoch, a_exit_epoch)),
            ("B alone", count(a_exit_epoch, f64::MAX)),
        ],
    };
    eprintln!(
        "{how:?}: {} connections, none failed; per phase: {phases:?}",
        attempts.len()
    );
    for (phase, n) in &phases {
        ensure!(
            *n >= MIN_PER_PHASE,
            "only {n} connections while {phase}: too few to tell ({phases:?})"
        );
    }
    let pods: BTreeSet<&str> = attempts.iter().map(|c| c.detail.as_str()).collect();
    ensure!(pods.len() == 3, "connections reached {pods:?}");

    // B programs: a deleted pod leaves its rotation.
    let gone = cluster.pod(0, 0).name();
    kubectl.run(&["delete", "pod", &gone, "--grace-period=0", "--force"])?;
    let mut want = all;
    want.remove(&gone);
    wait_rotation(
        cluster,
        std::slice::from_ref(b),
        &want,
        Duration::from_secs(10),
    )?;

    // No successor for B: it exits 0 and takes the VIP with it.
    let status = b.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "B exited {status} after SIGTERM");
    let left = cluster.node(0).addresses("lo")?;
    ensure!(
        !left.iter().any(|x| x == vip_on_lo),
        "{vip_on_lo} is still on lo after B, with no successor, exited: {left:?}"
    );
    Ok(())
}

/// The time of day (UTC, in seconds) at the start of a daemon log line
/// (`2026-12-03T18:20:56.606444Z  INFO ...`).
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.strip_suffix('Z')?.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
