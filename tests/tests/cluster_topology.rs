//! The multi-node topology on its own, without a switchyard daemon: clients
//! reach pods on other nodes through the bridge, the API server answers in
//! the network namespace and from the nodes, nothing routes out, and every
//! namespace and cgroup is gone after the guards drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};
use switchyard_tests::{ApiServer, Cluster, Kubectl, Mode, client, objects, poll_until};

fn netns_list() -> Result<Vec<String>> {
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[test]
fn clients_reach_pods_on_other_nodes_and_nothing_routes_out() -> Result<()> {
    let mut cluster = Cluster::new(3, 1)?;
    cluster.start_pod_servers()?;
    for (from, to) in [(0, 1), (0, 2), (2, 0), (1, 1)] {
        let pod = cluster.pod(to, 0);
        let v4 = client::curl_once(
            cluster.client(from),
            &format!("http://{}:8080/", pod.ipv4()),
        )?;
        ensure!(
            v4 == pod.name(),
            "client {from} to the pod on node {to} over IPv4 got {v4:?}"
        );
        let v6 = client::curl_once(
            cluster.client(from),
            &format!("http://[{}]:8080/", pod.ipv6()),
        )?;
        ensure!(
            v6 == pod.name(),
            "client {from} to the pod on node {to} over IPv6 got {v6:?}"
        );
    }
    // No NAT anywhere: the pod on node 1 sees client 0's own address.
    let peer = client::curl_once(cluster.client(0), &format!("{}peer", cluster.pod_url(1, 0)))?;
    ensure!(
        peer.starts_with("10.0.0.2:"),
        "peer seen by the pod on node 1: {peer}"
    );

    let mut no_default = vec![cluster.net()];
    no_default.extend((0..3).map(|i| cluster.node(i)));
    no_default.extend((0..3).map(|i| cluster.client(i)));
    for ns in no_default {
        let routes4 = ns.run(["ip", "-4", "route", "show", "default"])?;
        let routes6 = ns.run(["ip", "-6", "route", "show", "default"])?;
        ensure!(
            routes4.trim().is_empty() && routes6.trim().is_empty(),
            "{} has a default route: {routes4} {routes6}",
            ns.name()
        );
    }
    // The network namespace knows only the bridge's subnet.
    let routes = cluster.net().run(["ip", "-4", "route", "show"])?;
    ensure!(
        routes.lines().count() == 1 && routes.starts_with("192.168.0.0/24 dev br0"),
        "routes in the network namespace: {routes}"
    );
    // A node's links lead only to the test's own namespaces.
    let links = cluster.node(1).run(["ip", "-o", "link", "show"])?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    ensure!(
        names == ["lo", "eth0", "client", "pod0"],
        "node links: {names:?}"
    );
    // An address outside the test is unreachable from a client and a node.
    for ns in [cluster.client(0), cluster.node(0)] {
        let out = client::curl(ns, &["-sS", "--connect-timeout", "2", "http://192.0.2.1/"])?;
        ensure!(
            out.code == Some(7),
            "curl to TEST-NET-1 from {}: {out:?}",
            ns.name()
        );
    }
    Ok(())
}

#[test]
fn api_server_answers_in_the_network_namespace_and_from_nodes() -> Result<()> {
    let cluster = Cluster::new(2, 0)?;
    let mut api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    let kubectl = Kubectl::new(cluster.net(), api.kubeconfig())?;
    let namespaces = kubectl.run(&["get", "namespaces", "-o", "name"])?;
    ensure!(
        namespaces.lines().any(|l| l.trim() == "namespace/default"),
        "kubectl get namespaces: {namespaces}"
    );
    // A node reaches the server through the bridge, with the same kubeconfig.
    let from_node = Kubectl::new(cluster.node(1), api.kubeconfig())?;
    let version: serde_json::Value =
        serde_json::from_str(&from_node.run(&["get", "--raw", "/version"])?)?;
    ensure!(version["major"] == "1", "/version from node 1: {version}");
    let out = client::curl(
        cluster.node(1),
        &[
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://192.168.0.1:6443/version",
        ],
    )?;
    ensure!(
        out.status.success() && out.stdout.starts_with(['2', '4']),
        "curl -k from node 1: {out:?}"
    );

    // Objects and credentials survive a kill and restart.
    kubectl.create_json(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "survivor"},
    }))?;
    let pid = api.pid();
    api.kill()?;
    ensure!(
        kubectl.run(&["get", "--raw", "/version"]).is_err(),
        "the API server answered after SIGKILL"
    );
    api.restart()?;
    ensure!(api.pid() != pid, "restart kept the old process");
    let survivor = kubectl.get_json(&["get", "namespace", "survivor"])?;
    ensure!(
        survivor["metadata"]["name"] == "survivor",
        "namespace after restart: {survivor}"
    );
    Ok(())
}

#[test]
fn guards_remove_namespaces_cgroups_and_processes() -> Result<()> {
    let (names, cgroups, pids, scratch): (Vec<String>, Vec<PathBuf>, Vec<u32>, PathBuf) = {
        let mut cluster = Cluster::new(2, 1)?;
        cluster.start_pod_servers()?;
        let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
        let mut names = vec![cluster.net().name().to_owned()];
        let mut cgroups = Vec::new();
        for i in 0..2 {
            names.push(cluster.node(i).name().to_owned());
            names.push(cluster.client(i).name().to_owned());
            names.push(cluster.pod(i, 0).ns().name().to_owned());
            let cgroup = cluster
                .client(i)
                .cgroup()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            ensure!(cgroup.is_dir(), "client {i} has no cgroup: {cgroup:?}");
            cgroups.push(cgroup);
        }
        let listed = netns_list()?;
        for name in &names {
            ensure!(listed.contains(name), "namespace {name} was never made");
        }
        let mut pids = vec![api.pid()];
        for i in 0..2 {
            pids.extend(cluster.pod_mut(i, 0).server().map(|p| p.pid()));
        }
        ensure!(pids.len() == 3, "servers not running: {pids:?}");
        (names, cgroups, pids, cluster.scratch_dir().to_path_buf())
    };
    let listed = netns_list()?;
    for name in &names {
        ensure!(!listed.contains(name), "namespace {name} survived");
    }
    for cgroup in &cgroups {
        ensure!(!cgroup.exists(), "cgroup {} survived", cgroup.display());
    }
    for pid in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    ensure!(!scratch.exists(), "{} survived", scratch.display());
    Ok(())
}

#[test]
fn daemons_on_every_node_serve_a_service_from_the_api_server() -> Result<()> {
    let mut cluster = Cluster::new(2, 1)?;
    cluster.start_pod_servers()?;
    let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
    // One Service whose only endpoint is the pod on node 1: node 0's client
    // reaches it across the bridge.
    let backend = cluster.pod(1, 0);
    api.kubectl().apply_json(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            objects::Service::new("web")
                .cluster_ips(&["10.96.0.10"])
                .selector("app", "web")
                .port(objects::ServicePort::tcp("http", 80, 8080))
                .to_value(),
            objects::EndpointSlice::new("web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint(
                    objects::Endpoint::new(backend.ipv4().into())
                        .pod(&backend.name())
                        .node(Some(&cluster.node_name(1))),
                )
                .to_value(),
        ],
    }))?;
    let expected = backend.name();
    let mut daemons = Vec::new();
    for (i, mode) in [(0, Mode::Userspace), (1, Mode::Ebpf)] {
        let config = cluster.daemon_config(i, mode, &api.kubeconfig())?;
        ensure!(config.hostname == format!("node-{i}"), "{config:?}");
        let daemon = cluster.start_daemon(i, &config)?;
        ensure!(
            daemon.proxy_mode_endpoint()? == mode.flag(),
            "node {i} is not in {mode} mode"
        );
        let name = daemon.with_log(poll_until(
            "the Service to answer",
            Duration::from_secs(10),
            || {
                Ok(client::curl_once(cluster.client(i), "http://10.96.0.10/")
                    .ok()
                    .filter(|name| *name == expected))
            },
        ))?;
        ensure!(name == expected, "client {i} got {name:?}");
        daemons.push(daemon);
    }
    ensure!(cluster.bpf_pin_path(1).exists(), "node 1 pinned nothing");
    drop(daemons);
    ensure!(
        !cluster.bpf_pin_path(1).exists(),
        "node 1's pins survived its daemon"
    );
    Ok(())
}
