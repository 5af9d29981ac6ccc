//! North-south traffic on the tc eBPF datapath: three node daemons watch one API server, and a
//! client outside the cluster (on the bridge, in no cgroup) reaches Services through a node's
//! NodePort, an external IP and a load-balancer IP. Covers `externalTrafficPolicy: Local`
//! (client address kept, no answer without a local pod, the health check node port),
//! `loadBalancerSourceRanges`, Maglev's agreement between nodes and its small disruption, and
//! flows that outlive an unrelated change and a daemon restart.
#![allow(clippy::disallowed_types)] // synchronous tests: std's clock and threads are the right ones

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use switchyard_tests::cluster::{ClusterPod, EXTERNAL_IP, EXTERNAL_IP_2};
use switchyard_tests::topology::{POD_HTTP_PORT, POD_UDP_PORT};
use switchyard_tests::{ApiServer, Cluster, Daemon, Mode, client, objects, poll_until};

const NODES: usize = 3;
const NODE_PORT: u16 = 30080;
const LB_IP: &str = "203.0.113.10";
const EXTERNAL_SERVICE_IP: &str = "203.0.113.20";
/// How long a test waits for the nodes to program a change.
const CONVERGE: Duration = Duration::from_secs(10);

/// A cluster of three nodes with `pods_per_node` pods each (servers started), the API server,
/// Node objects with their addresses, and an eBPF-mode daemon on every node.
struct Setup {
    daemons: Vec<Daemon>,
    api: ApiServer,
    cluster: Cluster,
}

impl Setup {
    fn new(pods_per_node: usize) -> Result<Setup> {
        Self::with_args(pods_per_node, &[])
    }

    /// As [`Setup::new`], every daemon with `args` too.
    fn with_args(pods_per_node: usize, args: &[&str]) -> Result<Setup> {
        let mut cluster = Cluster::new(NODES, pods_per_node)?;
        cluster.start_pod_servers()?;
        let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
        for i in 0..NODES {
            api.kubectl().apply_json(&objects::node(
                &cluster.node_name(i),
                &[IpAddr::V4(cluster.node_ip(i))],
            ))?;
        }
        let daemons = (0..NODES)
            .map(|i| {
                let mut config = cluster.daemon_config(i, Mode::Ebpf, &api.kubeconfig())?;
                config
                    .extra_args
                    .extend(args.iter().map(|a| (*a).to_owned()));
                cluster.start_daemon(i, &config)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Setup {
            daemons,
            api,
            cluster,
        })
    }

    /// Creates the Pod object of `pod`, ready, with label `app=<app>`.
    fn pod(&self, pod: &ClusterPod, app: &str) -> Result<()> {
        let value = objects::Pod::new(&pod.name())
            .node(Some(&self.cluster.node_name(pod.node())))
            .ips(&pod.ips())
            .label("app", app)
            .port("http", POD_HTTP_PORT)
            .udp_port("dns", POD_UDP_PORT)
            .to_value();
        self.api.kubectl().apply_json(&value)?;
        Ok(())
    }

    fn apply(&self, value: &Value) -> Result<()> {
        self.api.kubectl().apply_json(value)?;
        Ok(())
    }

    /// What the external client gets for `url` (`Err` with curl's exit code when it does not
    /// answer within a second and a half).
    fn external_get(&self, url: &str) -> Result<std::result::Result<String, i32>> {
        external_get_from(&self.cluster, url, None)
    }

    /// Waits until `url` answers the external client (any pod).
    fn wait_answers(&self, url: &str) -> Result<String> {
        let result = poll_until(&format!("{url} to answer from outside"), CONVERGE, || {
            Ok(self.external_get(url)?.ok())
        });
        self.with_logs(result)
    }

    /// The sum of the counter `name` in node `i`'s metrics.
    fn counter(&self, i: usize, name: &str) -> Result<f64> {
        let metrics = switchyard_tests::metrics::parse(&self.daemons[i].metrics()?);
        Ok(switchyard_tests::metrics::sum(&metrics, name, &[]))
    }

    /// One keep-alive connection from the external client through node 0's NodePort for
    /// `duration`: fails unless every request is answered, and more than `min` of them.
    fn keepalive_through_node0(&self, duration: Duration, min: usize) -> Result<()> {
        let target = format!("{}:{NODE_PORT}", self.cluster.node_ip(0));
        let (answers, failures) = spawn_keepalive(&self.cluster, &target, duration)?
            .join()
            .map_err(|_| anyhow::anyhow!("keep-alive thread panicked"))??;
        ensure!(
            failures == 0 && answers > min,
            "{answers} answers, {failures} failures"
        );
        Ok(())
    }

    /// `result`, with every daemon's log added to an error.
    fn with_logs<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|error| {
            let logs: Vec<String> = self
                .daemons
                .iter()
                .enumerate()
                .map(|(i, d)| format!("--- node {i} ---\n{}", d.log()))
                .collect();
            error.context(logs.join("\n"))
        })
    }
}

fn external_get_from(
    cluster: &Cluster,
    url: &str,
    source: Option<&str>,
) -> Result<std::result::Result<String, i32>> {
    let mut args = vec!["-sS", "--max-time", "1.5", "--connect-timeout", "1.5"];
    if let Some(source) = source {
        args.extend(["--interface", source]);
    }
    args.push(url);
    let out = client::curl(cluster.external(), &args)?;
    Ok(if out.status.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.code.unwrap_or(-1))
    })
}

/// A Service `name` of `type_` selecting `app=<app>`: port 80 to the pods' 8080 (and UDP 53 to
/// 5353), with the node port, and `extra` merged into its spec and object.
fn service(
    name: &str,
    app: &str,
    cluster_ip: &str,
    node_port: u16,
    type_: &str,
    extra: Value,
) -> Value {
    let mut value = objects::Service::new(name)
        .cluster_ips(&[cluster_ip])
        .selector("app", app)
        .port(objects::ServicePort::tcp("http", 80, POD_HTTP_PORT))
        .port(objects::ServicePort::udp("dns", 53, POD_UDP_PORT))
        .to_value();
    value["spec"]["type"] = json!(type_);
    value["spec"]["ports"][0]["nodePort"] = json!(node_port);
    value["spec"]["ports"][1]["nodePort"] = json!(node_port);
    merge(&mut value, extra);
    value
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn lb_status(ip: &str) -> Value {
    json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
}

/// Pods of node 0 and node 1 back the Services; node 2's pod is someone else's, so node 2
/// has no local endpoint.
fn web_pods(setup: &Setup) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..NODES {
        let pod = setup.cluster.pod(i, 0);
        let app = if i == 2 { "other" } else { "web" };
        setup.pod(pod, app)?;
        if i != 2 {
            names.push(pod.name());
        }
    }
    Ok(names)
}

#[test]
fn nodeport_external_and_load_balancer_ips_answer_from_outside() -> Result<()> {
    let setup = Setup::new(1)?;
    let web = web_pods(&setup)?;
    setup.apply(&service(
        "web",
        "web",
        "10.96.0.10",
        NODE_PORT,
        "LoadBalancer",
        merge_all(vec![
            json!({"spec": {"externalIPs": [EXTERNAL_SERVICE_IP]}}),
            lb_status(LB_IP),
        ]),
    ))?;

    // Every node's address answers, node 2 (no local pod) included, with pods of both nodes.
    for i in 0..NODES {
        let url = format!("http://{}:{NODE_PORT}/", setup.cluster.node_ip(i));
        setup.wait_answers(&url)?;
        let mut seen = BTreeMap::new();
        for _ in 0..24 {
            let name = setup
                .external_get(&url)?
                .map_err(|code| anyhow::anyhow!("{url} failed (curl {code})"))?;
            *seen.entry(name).or_insert(0) += 1;
        }
        ensure!(
            seen.keys().all(|n| web.contains(n)),
            "node {i}: answers from pods outside the Service: {seen:?}"
        );
        // Maglev on the flow: different source ports spread over both pods.
        ensure!(seen.len() == 2, "node {i}: 24 flows reached only {seen:?}");
    }
    // What node 0 programmed says so: its NodePort, the external and the load-balancer IP.
    let services = setup.daemons[0].services_json()?;
    let kinds: BTreeMap<String, String> = services
        .as_array()
        .context("services is a list")?
        .iter()
        .map(|v| {
            (
                v["frontend"].as_str().unwrap_or("").to_owned(),
                v["kind"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (frontend, kind) in [
        (format!("192.168.0.10:{NODE_PORT}/TCP"), "NodePort"),
        (format!("{EXTERNAL_SERVICE_IP}:80/TCP"), "ExternalIP"),
        (format!("{LB_IP}:80/TCP"), "LoadBalancer"),
        ("10.96.0.10:80/TCP".to_owned(), "ClusterIP"),
    ] {
        ensure!(
            kinds.get(&frontend).map(String::as_str) == Some(kind),
            "node 0 should list {frontend} as {kind}: {kinds:?}"
        );
    }
    // The external IP and the load balancer's IP, routed to node 1 as an upstream router would.
    setup.cluster.route_external_via(1)?;
    for ip in [EXTERNAL_SERVICE_IP, LB_IP] {
        let name = setup.wait_answers(&format!("http://{ip}/"))?;
        ensure!(web.contains(&name), "{ip} answered {name}");
    }
    // A backend on another node sees the node's address (SNAT); its own node's pod sees the
    // client's (no SNAT needed).
    let url = format!("http://{}:{NODE_PORT}/peer", setup.cluster.node_ip(2));
    let peer = setup
        .external_get(&url)?
        .map_err(|code| anyhow::anyhow!("{url} failed (curl {code})"))?;
    ensure!(
        peer.starts_with(&format!("{}:", setup.cluster.node_ip(2))),
        "through node 2 (no local pod) the pod should see node 2's address, saw {peer}"
    );

    // UDP through the NodePort too.
    let reply = udp_names(
        &setup.cluster,
        &setup.cluster.node_ip(0).to_string(),
        NODE_PORT,
        40000,
        8,
    )?;
    ensure!(
        reply.values().all(|n| web.contains(n)),
        "UDP through the NodePort: {reply:?}"
    );

    // An established flow outlives an unrelated Service change and a daemon restart on its
    // node: one keep-alive connection asks every 50 ms meanwhile.
    let node_url = format!("{}:{NODE_PORT}", setup.cluster.node_ip(0));
    let keepalive = spawn_keepalive(&setup.cluster, &node_url, Duration::from_secs(8))?;
    std::thread::sleep(Duration::from_secs(1));
    setup.apply(&service(
        "unrelated",
        "other",
        "10.96.0.11",
        30090,
        "NodePort",
        json!({}),
    ))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut daemons = setup.daemons;
    daemons[0].kill()?;
    std::thread::sleep(Duration::from_millis(500));
    daemons[0].restart()?;
    let (answers, failures) = keepalive
        .join()
        .map_err(|_| anyhow::anyhow!("keep-alive thread panicked"))??;
    ensure!(
        failures == 0 && answers > 50,
        "the established flow should never fail: {answers} answers, {failures} failures"
    );
    Ok(())
}

fn merge_all(values: Vec<Value>) -> Value {
    let mut out = json!({});
    for v in values {
        merge(&mut out, v);
    }
    out
}

/// One keep-alive HTTP connection from the external client to `target` (`ip:port`), a request
/// every 50 ms for `duration`; the thread returns (answers, failures). Any failure ends it.
fn spawn_keepalive(
    cluster: &Cluster,
    target: &str,
    duration: Duration,
) -> Result<std::thread::JoinHandle<Result<(usize, usize)>>> {
    const SCRIPT: &str = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
end = time.time() + float(sys.argv[2])
s = socket.create_connection((host, int(port)), timeout=2)
answers = 0
failures = 0
while time.time() < end:
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("closed")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            body += s.recv(4096)
        answers += 1
    except Exception as e:
        failures += 1
        print("failure:", e, file=sys.stderr)
        break
    time.sleep(0.05)
print(answers, failures)
"#;
    let ns = cluster.external().clone();
    let target = target.to_owned();
    let seconds = duration.as_secs_f64().to_string();
    Ok(std::thread::spawn(move || {
        let out = client::python(
            &ns,
            SCRIPT,
            &[&target, &seconds],
            duration + Duration::from_secs(10),
        )?;
        let mut parts = out.split_whitespace();
        let answers: usize = parts.next().context("answers")?.parse()?;
        let failures: usize = parts.next().context("failures")?.parse()?;
        Ok((answers, failures))
    }))
}

/// UDP flows from the external client (`192.168.0.200`, source ports `first..first+n`) to
/// `ip:port`: the pod that answered each (`-` for none).
fn udp_names(
    cluster: &Cluster,
    ip: &str,
    port: u16,
    first: u16,
    n: u16,
) -> Result<BTreeMap<u16, String>> {
    const SCRIPT: &str = r#"
import socket, sys
src, dst, port, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for sport in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    s.settimeout(0.5)
    name = "-"
    for attempt in range(4):
        s.sendto(b"ping", (dst, port))
        try:
            data, _ = s.recvfrom(2048)
            name = data.decode().split()[0]
            break
        except socket.timeout:
            pass
    print(sport, name)
    s.close()
"#;
    let out = client::python(
        cluster.external(),
        SCRIPT,
        &[
            &EXTERNAL_IP.to_string(),
            ip,
            &port.to_string(),
            &first.to_string(),
            &n.to_string(),
        ],
        Duration::from_secs(60),
    )?;
    out.lines()
        .map(|line| {
            let (port, name) = line.split_once(' ').context("a port and a name")?;
            Ok((port.parse()?, name.to_owned()))
        })
        .collect()
}

/// The health check node port's answer on node `i`: (status, localEndpoints).
fn health_check(cluster: &Cluster, i: usize, port: u16) -> Result<(u16, u64)> {
    let url = format!("http://{}:{port}/", cluster.node_ip(i));
    let out = client::curl(
        cluster.external(),
        &["-sS", "--max-time", "2", "-w", "\n%{http_code}", &url],
    )?;
    ensure!(out.status.success(), "{url}: curl failed: {}", out.stderr);
    let (body, code) = out.stdout.rsplit_once('\n').context("status line")?;
    let json: Value = serde_json::from_str(body).with_context(|| format!("{url}: {body}"))?;
    let count = json["localEndpoints"].as_u64().context("localEndpoints")?;
    ensure!(
        json["service"]["name"] == "web-local" && json["service"]["namespace"] == "default",
        "{url}: {json}"
    );
    Ok((code.trim().parse()?, count))
}

#[test]
fn local_policy_keeps_the_client_address_and_health_checks_follow_local_pods() -> Result<()> {
    const HEALTH_PORT: u16 = 32081;
    let setup = Setup::new(1)?;
    web_pods(&setup)?;
    setup.apply(&service(
        "web-local",
        "web",
        "10.96.0.12",
        30081,
        "LoadBalancer",
        merge_all(vec![
            json!({"spec": {"externalTrafficPolicy": "Local", "healthCheckNodePort": HEALTH_PORT}}),
            lb_status("203.0.113.12"),
        ]),
    ))?;
    // Nodes 0 and 1 answer with their own pod, which sees the client's own address.
    for i in 0..2 {
        let url = format!("http://{}:30081/peer", setup.cluster.node_ip(i));
        let peer = setup.wait_answers(&url)?;
        ensure!(
            peer.starts_with(&format!("{EXTERNAL_IP}:")),
            "node {i}: the pod should see the client {EXTERNAL_IP}, saw {peer}"
        );
        let name = setup
            .external_get(&format!("http://{}:30081/", setup.cluster.node_ip(i)))?
            .map_err(|code| anyhow::anyhow!("node {i} failed (curl {code})"))?;
        ensure!(
            name == setup.cluster.pod(i, 0).name(),
            "node {i} answered {name}"
        );
    }
    // Node 2 has no local pod: no answer at all.
    let silent = setup.external_get(&format!("http://{}:30081/", setup.cluster.node_ip(2)))?;
    ensure!(silent.is_err(), "node 2 must not answer: {silent:?}");

    // The health check node port: 200 with one local endpoint, 503 with none.
    let wait_health = |i: usize, want: (u16, u64)| {
        setup.with_logs(poll_until(
            &format!("node {i}'s health check to say {want:?}"),
            CONVERGE,
            || Ok((health_check(&setup.cluster, i, HEALTH_PORT).ok() == Some(want)).then_some(())),
        ))
    };
    wait_health(0, (200, 1))?;
    wait_health(1, (200, 1))?;
    wait_health(2, (503, 0))?;

    // The last local pod of node 0 goes: its health check flips to 503 within a second.
    let gone = Instant::now();
    setup.api.kubectl().run(&[
        "delete",
        "pod",
        &setup.cluster.pod(0, 0).name(),
        "--wait=false",
    ])?;
    let flip = setup.with_logs(poll_until(
        "node 0's health check to flip to 503",
        Duration::from_secs(5),
        || Ok((health_check(&setup.cluster, 0, HEALTH_PORT)? == (503, 0)).then(|| gone.elapsed())),
    ))?;
    eprintln!("health check flipped {flip:?} after the pod's deletion");
    ensure!(
        flip < Duration::from_secs(1),
        "the health check took {flip:?} to flip (want < 1 s)"
    );
    wait_health(1, (200, 1))?;
    Ok(())
}

#[test]
fn source_ranges_admit_only_listed_sources() -> Result<()> {
    let setup = Setup::new(1)?;
    web_pods(&setup)?;
    setup.apply(&service(
        "web-ranges",
        "web",
        "10.96.0.13",
        30082,
        "LoadBalancer",
        merge_all(vec![
            json!({"spec": {"loadBalancerSourceRanges": [format!("{EXTERNAL_IP}/32")]}}),
            lb_status(LB_IP),
        ]),
    ))?;
    let url = format!("http://{LB_IP}/");
    setup.wait_answers(&url)?;
    for _ in 0..5 {
        ensure!(
            external_get_from(&setup.cluster, &url, Some(&EXTERNAL_IP.to_string()))?.is_ok(),
            "{EXTERNAL_IP} is in the range and must be answered"
        );
        let outside = external_get_from(&setup.cluster, &url, Some(&EXTERNAL_IP_2.to_string()))?;
        ensure!(
            outside.is_err(),
            "{EXTERNAL_IP_2} is outside the range and must get nothing: {outside:?}"
        );
    }
    // The NodePort of the same Service is not restricted (as in kube-proxy).
    let node_port = format!("http://{}:30082/", setup.cluster.node_ip(0));
    ensure!(
        external_get_from(&setup.cluster, &node_port, Some(&EXTERNAL_IP_2.to_string()))?.is_ok(),
        "the NodePort is open to every source"
    );
    let denied = setup.counter(0, "switchyard_bpf_source_range_denied_total")?;
    ensure!(denied >= 5.0, "denied packets are counted: {denied}");
    Ok(())
}

#[test]
fn maglev_agrees_across_nodes_and_a_removal_moves_a_fair_share() -> Result<()> {
    const FLOWS: u16 = 600;
    const BACKENDS: usize = 10;
    let setup = Setup::new(4)?;
    let pods: Vec<&ClusterPod> = setup.cluster.pods().take(BACKENDS).collect();
    for pod in &pods {
        setup.pod(pod, "web")?;
    }
    setup.apply(&service(
        "web",
        "web",
        "10.96.0.10",
        NODE_PORT,
        "LoadBalancer",
        lb_status(LB_IP),
    ))?;
    let names: Vec<String> = pods.iter().map(|p| p.name()).collect();
    // Wait until every node balances over all ten (so all hold the same table).
    for i in 0..NODES {
        setup.cluster.route_external_via(i)?;
        setup.with_logs(poll_until(
            &format!("node {i} to use all {BACKENDS} backends"),
            CONVERGE,
            || {
                let seen = udp_names(&setup.cluster, LB_IP, 53, 50_000 + 100 * i as u16, 80)?;
                let distinct: std::collections::BTreeSet<&String> = seen.values().collect();
                Ok((distinct.len() == BACKENDS && !seen.values().any(|n| n == "-")).then_some(()))
            },
        ))?;
    }
    // The same flows (source ports) through each node: the same backend for every one.
    let mut maps = Vec::new();
    for i in 0..2 {
        setup.cluster.route_external_via(i)?;
        maps.push(udp_names(&setup.cluster, LB_IP, 53, 20_000, FLOWS)?);
    }
    let disagree = (0..FLOWS)
        .filter(|p| maps[0].get(&(20_000 + p)) != maps[1].get(&(20_000 + p)))
        .count();
    ensure!(
        disagree == 0 && !maps[0].values().any(|n| n == "-"),
        "nodes 0 and 1 disagree on {disagree} of {FLOWS} flows"
    );

    // One of the ten backends goes; node 2, which never saw these flows (no conntrack entry
    // to keep them), chooses through the new table.
    let removed = names[3].clone();
    setup
        .api
        .kubectl()
        .run(&["delete", "pod", &removed, "--wait=false"])?;
    setup.cluster.route_external_via(2)?;
    setup.with_logs(poll_until(
        "node 2 to drop the removed backend",
        CONVERGE,
        || {
            let seen = udp_names(&setup.cluster, LB_IP, 53, 51_000, 60)?;
            Ok((!seen.values().any(|n| *n == removed || n == "-")).then_some(()))
        },
    ))?;
    let after = udp_names(&setup.cluster, LB_IP, 53, 20_000, FLOWS)?;
    let on_removed = maps[0].values().filter(|n| **n == removed).count();
    let moved = (0..FLOWS)
        .filter(|p| maps[0].get(&(20_000 + p)) != after.get(&(20_000 + p)))
        .count();
    let moved_others = moved - on_removed;
    eprintln!(
        "maglev: {FLOWS} flows, {on_removed} on the removed backend, {moved} moved ({:.1}%), \
         {moved_others} of them from backends that stayed",
        100.0 * moved as f64 / f64::from(FLOWS)
    );
    if after.values().any(|n| n == "-" || *n == removed) {
        bail!("flows unanswered or still on the removed backend after the change: {after:?}");
    }
    // A fair share is a tenth; Maglev moves a few more than the removed backend's own.
    ensure!(
        moved as f64 <= f64::from(FLOWS) * 0.15,
        "{moved} of {FLOWS} flows moved (more than 15%)"
    );
    ensure!(
        moved_others as f64 <= f64::from(FLOWS) * 0.05,
        "{moved_others} flows moved between backends that stayed"
    );
    Ok(())
}

#[test]
fn xdp_sends_traffic_to_other_nodes_back_out_from_the_driver() -> Result<()> {
    let setup = Setup::with_args(1, &["--xdp"])?;
    let cluster = &setup.cluster;
    cluster.prepare_xdp()?;
    // The only backend is node 1's pod: through node 0, every packet is SNATed back out.
    setup.pod(cluster.pod(1, 0), "web")?;
    setup.apply(&service(
        "web",
        "web",
        "10.96.0.10",
        NODE_PORT,
        "NodePort",
        json!({}),
    ))?;
    let url = format!("http://{}:{NODE_PORT}/", cluster.node_ip(0));
    setup.wait_answers(&url)?;
    for n in 0..30 {
        let name = setup
            .external_get(&url)?
            .map_err(|code| anyhow::anyhow!("request {n} through XDP failed (curl {code})"))?;
        ensure!(name == cluster.pod(1, 0).name(), "answered by {name}");
    }
    setup.keepalive_through_node0(Duration::from_secs(2), 10)?;
    let tx = setup.counter(0, "switchyard_bpf_xdp_tx_total")?;
    let packets = setup.counter(0, "switchyard_bpf_nodeport_packets_total")?;
    eprintln!("node 0: {tx} of {packets} translated packets sent back out by XDP");
    ensure!(
        tx >= 0.8 * packets && tx > 100.0,
        "XDP should carry the flows through node 0: {tx} of {packets} packets"
    );
    Ok(())
}

#[test]
fn clsact_filters_serve_where_tcx_is_missing_and_are_replaced_at_restart() -> Result<()> {
    let setup = Setup::with_args(1, &["--tc-attach", "clsact"])?;
    web_pods(&setup)?;
    setup.apply(&service(
        "web",
        "web",
        "10.96.0.10",
        NODE_PORT,
        "NodePort",
        json!({}),
    ))?;
    let urls: Vec<String> = (0..NODES)
        .map(|i| format!("http://{}:{NODE_PORT}/", setup.cluster.node_ip(i)))
        .collect();
    for url in &urls {
        setup.wait_answers(url)?;
    }
    let filters = setup
        .cluster
        .node(0)
        .run(["tc", "filter", "show", "dev", "eth0", "ingress"])?;
    ensure!(
        filters.contains("sy_nodeport_ingress"),
        "node 0 should hold the ingress filter: {filters}"
    );
    // A restart replaces the filters: one of each, still serving.
    let mut daemons = setup.daemons;
    daemons[0].kill()?;
    daemons[0].restart()?;
    let filters = setup
        .cluster
        .node(0)
        .run(["tc", "filter", "show", "dev", "eth0", "ingress"])?;
    ensure!(
        filters.matches("sy_nodeport_ingress").count() == 1,
        "exactly one ingress filter after the restart: {filters}"
    );
    let result = poll_until("node 0 to answer after its restart", CONVERGE, || {
        Ok(external_get_from(&setup.cluster, &urls[0], None)?.ok())
    });
    daemons[0].with_log(result)?;
    Ok(())
}

#[test]
fn dsr_lets_the_backend_node_answer_the_client_directly() -> Result<()> {
    let setup = Setup::with_args(1, &["--nodeport-mode", "dsr"])?;
    let cluster = &setup.cluster;
    // The only backend is node 1's pod: through node 0 it is a remote backend.
    setup.pod(cluster.pod(1, 0), "web")?;
    setup.apply(&service(
        "web",
        "web",
        "10.96.0.10",
        NODE_PORT,
        "NodePort",
        json!({}),
    ))?;
    let base = format!("http://{}:{NODE_PORT}", cluster.node_ip(0));
    setup.wait_answers(&format!("{base}/"))?;
    // No SNAT: the pod sees the client itself, and the answers come from the NodePort.
    for n in 0..20 {
        let peer = setup
            .external_get(&format!("{base}/peer"))?
            .map_err(|code| anyhow::anyhow!("request {n} over DSR failed (curl {code})"))?;
        ensure!(
            peer.starts_with(&format!("{EXTERNAL_IP}:")),
            "with DSR the pod should see the client {EXTERNAL_IP}, saw {peer}"
        );
    }
    setup.keepalive_through_node0(Duration::from_secs(2), 10)?;
    // Node 0 sent the SYNs with the option, node 1 took them; UDP still goes through SNAT.
    let dsr = |i: usize| setup.counter(i, "switchyard_bpf_dsr_total");
    ensure!(
        dsr(0)? >= 21.0 && dsr(1)? >= 21.0,
        "DSR counters: node 0 {}, node 1 {}",
        dsr(0)?,
        dsr(1)?
    );
    let udp = udp_names(
        cluster,
        &cluster.node_ip(0).to_string(),
        NODE_PORT,
        41000,
        4,
    )?;
    ensure!(
        udp.values().all(|n| *n == cluster.pod(1, 0).name()),
        "UDP through the NodePort: {udp:?}"
    );
    Ok(())
}
