//! The test topology on its own, without switchyard: pods answer, the
//! client reaches them through the node, nothing routes out, and every
//! namespace and process is gone after the guards drop.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use switchyard_tests::{Topology, client};

#[test]
fn client_reaches_every_pod_directly_over_both_families() -> Result<()> {
    let mut topo = Topology::new(2)?;
    topo.start_pod_servers()?;
    for pod in topo.pods() {
        let name = pod.server_name().unwrap_or_default().to_owned();
        let v4 = client::curl_once(topo.client(), &format!("http://{}:8080/", pod.ipv4()))?;
        ensure!(v4 == name, "pod {} over IPv4 answered {v4:?}", pod.index());
        let v6 = client::curl_once(topo.client(), &format!("http://[{}]:8080/", pod.ipv6()))?;
        ensure!(v6 == name, "pod {} over IPv6 answered {v6:?}", pod.index());

        let target = SocketAddr::new(pod.ipv4().into(), 5353);
        let reply = client::udp_request(topo.client(), target, "hello")?;
        ensure!(
            reply.payload == format!("{name} hello"),
            "UDP echo: {reply:?}"
        );
        ensure!(reply.from == target, "UDP reply came from {}", reply.from);
        let target6 = SocketAddr::new(pod.ipv6().into(), 5353);
        let reply6 = client::udp_request(topo.client(), target6, "hi")?;
        ensure!(reply6.pod() == name, "UDP echo over IPv6: {reply6:?}");
    }
    Ok(())
}

#[test]
fn pod_server_keeps_alive_and_serves_bulk_bodies() -> Result<()> {
    let mut topo = Topology::new(1)?;
    topo.start_pod_servers()?;
    let url = format!("http://{}:8080/", topo.pod(0).ipv4());
    // Two requests on one curl run without `Connection: close` share one
    // connection: the second needs no new connect.
    let out = client::curl(
        topo.client(),
        &[
            "-sS",
            "-w",
            "%{num_connects} %{size_download}\n",
            &url,
            &url,
        ],
    )?;
    ensure!(out.status.success(), "curl failed: {}", out.stderr);
    ensure!(
        out.stdout == "web-0\n1 6\nweb-0\n0 6\n",
        "keep-alive: {:?}",
        out.stdout
    );
    // `Connection: close` is honoured: the second request reconnects.
    let out = client::curl(
        topo.client(),
        &[
            "-sS",
            "-H",
            "Connection: close",
            "-w",
            "%{num_connects}\n",
            &url,
            &url,
        ],
    )?;
    ensure!(
        out.stdout == "web-0\n1\nweb-0\n1\n",
        "close: {:?}",
        out.stdout
    );
    let out = client::curl(
        topo.client(),
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{url}bytes/3000000"),
        ],
    )?;
    ensure!(out.stdout == "3000000", "bulk body: {:?}", out.stdout);
    let peer = client::curl_once(topo.client(), &format!("{url}peer"))?;
    ensure!(
        peer.starts_with("10.0.0.2:"),
        "peer seen by the pod: {peer}"
    );
    Ok(())
}

#[test]
fn curl_many_reports_each_request() -> Result<()> {
    let mut topo = Topology::new(1)?;
    topo.start_pod_servers()?;
    let ip = topo.pod(0).ipv4();
    let ok = client::curl_many(topo.client(), &format!("http://{ip}:8080/"), 5)?;
    ensure!(ok == vec!["web-0"; 5], "bodies: {ok:?}");
    let refused = client::curl_many_results(topo.client(), &format!("http://{ip}:9/"), 3)?;
    ensure!(
        refused == vec![Err("curl exit 7, HTTP 0".to_owned()); 3],
        "refused: {refused:?}"
    );
    ensure!(
        client::curl_many(topo.client(), &format!("http://{ip}:9/"), 2).is_err(),
        "curl_many must fail when a request fails"
    );
    Ok(())
}

#[test]
fn no_namespace_routes_out_of_the_test() -> Result<()> {
    let topo = Topology::new(1)?;
    for ns in [topo.client(), topo.node()] {
        let routes4 = ns.run(["ip", "-4", "route", "show", "default"])?;
        let routes6 = ns.run(["ip", "-6", "route", "show", "default"])?;
        ensure!(
            routes4.trim().is_empty() && routes6.trim().is_empty(),
            "{} has a default route: {routes4} {routes6}",
            ns.name()
        );
    }
    // The node's only links are to the test's own namespaces.
    let links = topo.node().run(["ip", "-o", "link", "show"])?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    ensure!(names == ["lo", "client", "pod0"], "node links: {names:?}");
    // An address outside the test is unreachable from the client.
    let out = client::curl(
        topo.client(),
        &["-sS", "--connect-timeout", "2", "http://192.0.2.1/"],
    )?;
    ensure!(out.code == Some(7), "curl to TEST-NET-1: {out:?}");
    Ok(())
}

#[test]
fn guards_remove_namespaces_and_processes() -> Result<()> {
    let (names, pids) = {
        let mut topo = Topology::new(2)?;
        topo.start_pod_servers()?;
        let names: Vec<String> = [topo.node(), topo.client()]
            .into_iter()
            .chain(topo.pods().iter().map(switchyard_tests::PodNs::ns))
            .map(|ns| ns.name().to_owned())
            .collect();
        let pids: Vec<u32> = (0..2)
            .filter_map(|i| topo.pod_mut(i).server().map(|p| p.pid()))
            .collect();
        ensure!(pids.len() == 2, "servers not running");
        (names, pids)
    };
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for name in &names {
        ensure!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} survived"
        );
    }
    for pid in pids {
        ensure!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pod-server {pid} survived"
        );
    }
    Ok(())
}
