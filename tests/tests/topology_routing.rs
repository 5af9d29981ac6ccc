//! Topology-aware routing end to end, as kube-proxy does it: three nodes in two zones
//! (`node-0` and `node-1` in `zone-a`, `node-2` in `zone-b`), two pods each, the external API
//! server (`switchyard apiserver`, whose `EndpointSlice` controller writes the hints) and a
//! daemon on `node-0` and on `node-2`. A `trafficDistribution: PreferClose` Service keeps each
//! node's connections in its own zone, falls back to every ready endpoint when none in the
//! zone is ready, and comes back once they are; `PreferSameNode` keeps them on the node; and
//! `internalTrafficPolicy: Local` wins over `PreferClose`. The pods' servers keep running
//! throughout, so a pod left out of a rotation was left out by the daemon, not by a refused
//! connection.
#![allow(clippy::disallowed_types)] // synchronous tests: std's clock and locks are the right ones

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use switchyard_tests::cluster::ClusterPod;
use switchyard_tests::{ApiServer, Cluster, Daemon, Kubectl, Mode, client, objects, poll_until};

const NODES: usize = 3;
const PODS_PER_NODE: usize = 2;
/// Node `i`'s zone.
const ZONES: [&str; NODES] = ["zone-a", "zone-a", "zone-b"];
/// The nodes that run a daemon (and whose clients connect): one in each zone.
const DAEMON_NODES: [usize; 2] = [0, 2];
/// `PreferClose`.
const CLOSE_VIP: &str = "10.96.0.10";
/// `PreferSameNode`.
const SAME_NODE_VIP: &str = "10.96.0.11";
/// `PreferClose` and `internalTrafficPolicy: Local`.
const LOCAL_VIP: &str = "10.96.0.12";
/// Fresh connections per look at a rotation: one of four pods is missed with
/// P < 4·(3/4)^60 ≈ 1e-7, and a rotation of all six avoids the two zone-b pods with
/// P = (2/3)^60 ≈ 3e-11.
const CONNECTIONS: usize = 60;
/// How long a change may take to reach a node's datapath (polled, not slept).
const CONVERGE: Duration = Duration::from_secs(15);

switchyard_tests::in_both_modes!(traffic_distribution_keeps_traffic_in_the_zone);

/// The Pod object of `pod`: on its node, ready, label `app=web`, port `http` 8080.
fn pod_object(cluster: &Cluster, pod: &ClusterPod) -> Value {
    objects::Pod::new(&pod.name())
        .node(Some(&cluster.node_name(pod.node())))
        .ips(&pod.ips())
        .label("app", "web")
        .port("http", 8080)
        .to_value()
}

/// A single-stack `ClusterIP` Service selecting `app=web`, port 80 to 8080.
fn web_service(name: &str, vip: &str) -> objects::Service {
    objects::Service::new(name)
        .cluster_ips(&[vip])
        .selector("app", "web")
        .port(objects::ServicePort::tcp("http", 80, 8080))
}

/// The names of the pods on the nodes `nodes`.
fn pods_on(cluster: &Cluster, nodes: &[usize]) -> BTreeSet<String> {
    nodes
        .iter()
        .flat_map(|&i| cluster.pods_on(i))
        .map(ClusterPod::name)
        .collect()
}

/// The nodes in `zone`.
fn nodes_in(zone: &str) -> Vec<usize> {
    (0..NODES).filter(|&i| ZONES[i] == zone).collect()
}

/// The `EndpointSlice`s of `service`, as kubectl lists them.
fn slices(kubectl: &Kubectl, service: &str) -> Result<Value> {
    kubectl.get_json(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={service}"),
    ])
}

/// Sets pod `name`'s `Ready` and `ContainersReady` conditions through its status
/// subresource, as the kubelet reports a failing readiness probe (its server keeps running).
fn set_ready(kubectl: &Kubectl, name: &str, ready: bool) -> Result<()> {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"conditions": [
        {"type": "Ready", "status": status},
        {"type": "ContainersReady", "status": status},
    ]}});
    kubectl.run(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])?;
    Ok(())
}

/// What is wrong with the hints of one endpoint of a slice, if anything: `forZones` must
/// name exactly its node's zone, and with `same_node` `forNodes` exactly its node.
fn hint_problem(cluster: &Cluster, endpoint: &Value, same_node: bool) -> Option<String> {
    let node = endpoint["nodeName"].as_str()?;
    let Some(i) = (0..NODES).find(|&i| cluster.node_name(i) == node) else {
        return Some(format!("endpoint on an unknown node: {endpoint}"));
    };
    let hints = &endpoint["hints"];
    if hints["forZones"] != json!([{"name": ZONES[i]}]) {
        return Some(format!(
            "endpoint on {node} (zone {}) without forZones [{}]: {endpoint}",
            ZONES[i], ZONES[i]
        ));
    }
    if same_node && hints["forNodes"] != json!([{"name": node}]) {
        return Some(format!(
            "endpoint on {node} without forNodes [{node}]: {endpoint}"
        ));
    }
    None
}

/// Waits until the API server's controller has hinted every endpoint of `service` (one per
/// pod) for its own zone, and with `same_node` for its own node; returns the slices.
fn wait_hints(
    cluster: &Cluster,
    kubectl: &Kubectl,
    service: &str,
    same_node: bool,
) -> Result<Value> {
    let mut last = (Value::Null, String::new());
    let waited = poll_until(
        &format!("the EndpointSlices of {service} to carry topology hints"),
        CONVERGE,
        || {
            let listed = slices(kubectl, service)?;
            let endpoints: Vec<&Value> = listed["items"]
                .as_array()
                .context("a list")?
                .iter()
                .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                .collect();
            let problem = if endpoints.len() == NODES * PODS_PER_NODE {
                endpoints
                    .iter()
                    .find_map(|e| hint_problem(cluster, e, same_node))
            } else {
                Some(format!(
                    "{} endpoints, expected {}",
                    endpoints.len(),
                    NODES * PODS_PER_NODE
                ))
            };
            let done = problem.is_none();
            last = (listed, problem.unwrap_or_default());
            Ok(done.then(|| last.0.clone()))
        },
    );
    waited.with_context(|| {
        format!(
            "last problem: {}\nkubectl get endpointslices: {}",
            last.1, last.0
        )
    })
}

/// One node's daemon and the client that connects through it.
struct Node<'a> {
    mode: Mode,
    index: usize,
    daemon: &'a Daemon,
}

/// Waits until the pods answering [`CONNECTIONS`] fresh connections to `vip` from node
/// `node`'s client are exactly `want` (each at least once, nothing else), then checks that
/// one more round of connections all succeed and reach only `want`: a rotation that still
/// flaps fails. The error carries what the client saw last, `service`'s slices and the
/// daemon's log.
fn expect_reaches(
    cluster: &Cluster,
    kubectl: &Kubectl,
    node: &Node<'_>,
    (service, vip): (&str, &str),
    want: &BTreeSet<String>,
    why: &str,
) -> Result<()> {
    let url = format!("http://{vip}/");
    let ns = cluster.client(node.index);
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    let result = poll_until(
        &format!(
            "node {}'s client to reach exactly {want:?} through {service} ({why})",
            node.index
        ),
        CONVERGE,
        || {
            last = client::tally(&client::curl_many(ns, &url, CONNECTIONS)?);
            Ok(last.keys().eq(want.iter()).then_some(()))
        },
    )
    .and_then(|()| {
        let results = client::curl_many_results(ns, &url, CONNECTIONS)?;
        let failed = results.iter().filter(|r| r.is_err()).count();
        let names: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        last = client::tally(&names);
        ensure!(
            failed == 0,
            "{failed} of {CONNECTIONS} connections to {service} failed after it converged ({why})"
        );
        if let Some(stray) = last.keys().find(|name| !want.contains(*name)) {
            bail!(
                "node {}'s client reached {stray} through {service} after the rotation had \
                 converged to {want:?} ({why})",
                node.index
            );
        }
        eprintln!(
            "{}: node {}, {service} ({why}): {last:?}",
            node.mode, node.index
        );
        Ok(())
    });
    let result = result.with_context(|| {
        let listed = slices(kubectl, service).map_or_else(|e| format!("{e:#}"), |v| v.to_string());
        format!("last tally {last:?}\nkubectl get endpointslices: {listed}")
    });
    node.daemon.with_log(result)
}

fn traffic_distribution_keeps_traffic_in_the_zone(mode: Mode) -> Result<()> {
    let mut cluster = Cluster::new(NODES, PODS_PER_NODE)?;
    cluster.start_pod_servers()?;
    let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let kubectl = api.kubectl();
    for (i, zone) in ZONES.iter().enumerate() {
        kubectl.apply_json(&objects::node_in_zone(
            &cluster.node_name(i),
            &[IpAddr::V4(cluster.node_ip(i))],
            zone,
        ))?;
    }
    for pod in cluster.pods() {
        kubectl.create_json(&pod_object(&cluster, pod))?;
    }
    kubectl.create_json(
        &web_service("web-close", CLOSE_VIP)
            .traffic_distribution("PreferClose")
            .to_value(),
    )?;
    let daemons = DAEMON_NODES
        .iter()
        .map(|&i| {
            let config = cluster.daemon_config(i, mode, &api.kubeconfig())?;
            cluster.start_daemon(i, &config)
        })
        .collect::<Result<Vec<Daemon>>>()?;
    let nodes: Vec<Node<'_>> = DAEMON_NODES
        .iter()
        .zip(&daemons)
        .map(|(&index, daemon)| Node {
            mode,
            index,
            daemon,
        })
        .collect();
    let (near, far) = (&nodes[0], &nodes[1]);
    let zone_a = pods_on(&cluster, &nodes_in("zone-a"));
    let zone_b = pods_on(&cluster, &nodes_in("zone-b"));
    let close = ("web-close", CLOSE_VIP);

    // PreferClose: the controller hints every endpoint for its zone, and each node keeps to
    // its own zone's pods.
    wait_hints(&cluster, kubectl, close.0, false)?;
    expect_reaches(
        &cluster,
        kubectl,
        near,
        close,
        &zone_a,
        "PreferClose, zone-a",
    )?;
    expect_reaches(
        &cluster,
        kubectl,
        far,
        close,
        &zone_b,
        "PreferClose, zone-b",
    )?;

    // Every zone-a pod fails its readiness probe: no ready endpoint is hinted for zone-a, so
    // node-0 falls back to every ready endpoint (zone-b's); node-2 is unaffected.
    for name in &zone_a {
        set_ready(kubectl, name, false)?;
    }
    expect_reaches(
        &cluster,
        kubectl,
        near,
        close,
        &zone_b,
        "zone-a not ready, fallback to all ready endpoints",
    )?;
    expect_reaches(
        &cluster,
        kubectl,
        far,
        close,
        &zone_b,
        "zone-a not ready, zone-b keeps its own",
    )?;

    // Ready again: back to the zone.
    for name in &zone_a {
        set_ready(kubectl, name, true)?;
    }
    expect_reaches(
        &cluster,
        kubectl,
        near,
        close,
        &zone_a,
        "zone-a ready again",
    )?;

    // PreferSameNode: hinted for the node (and its zone); each node keeps to its own pods.
    kubectl.create_json(
        &web_service("web-node", SAME_NODE_VIP)
            .traffic_distribution("PreferSameNode")
            .to_value(),
    )?;
    let same_node = ("web-node", SAME_NODE_VIP);
    wait_hints(&cluster, kubectl, same_node.0, true)?;
    for node in &nodes {
        expect_reaches(
            &cluster,
            kubectl,
            node,
            same_node,
            &pods_on(&cluster, &[node.index]),
            "PreferSameNode",
        )?;
    }

    // internalTrafficPolicy: Local wins over PreferClose: node-0's own pods, not its zone's.
    kubectl.create_json(
        &web_service("web-local", LOCAL_VIP)
            .traffic_distribution("PreferClose")
            .internal_traffic_policy("Local")
            .to_value(),
    )?;
    let local = ("web-local", LOCAL_VIP);
    wait_hints(&cluster, kubectl, local.0, false)?;
    for node in &nodes {
        expect_reaches(
            &cluster,
            kubectl,
            node,
            local,
            &pods_on(&cluster, &[node.index]),
            "internalTrafficPolicy Local and PreferClose",
        )?;
    }
    Ok(())
}
