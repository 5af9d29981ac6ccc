//! End-to-end tests of the switchyard daemon, each scenario in both proxy
//! modes: each test builds its own node, pods and client as network
//! namespaces, runs real pod servers and the real binary over a folder of
//! manifests, and sends real traffic from the client to Service VIPs.
//!
//! Every scenario is a function taking the [`Mode`]; [`in_both_modes!`]
//! turns it into a module with two tests, `<scenario>::userspace` and
//! `<scenario>::ebpf`. A few promises differ by nature between the modes
//! (userspace puts VIPs on `lo` and removes them at exit; eBPF puts no VIP
//! anywhere and leaves its datapath serving when it exits): those scenarios
//! assert each mode's own meaning.
//!
//! Tests need root and the `switchyard` binary (`cargo build -p
//! switchyard-control`, or `SWITCHYARD_BIN`). They run in parallel: every
//! topology has its own namespaces, cgroup and pin folder.

#![allow(clippy::disallowed_types)] // synchronous tests: std's clock is the right one

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use switchyard_tests::objects::{Endpoint, EndpointSlice, Pod, Service, ServicePort};
use switchyard_tests::topology::{CLIENT_IP4, CLIENT_IP6};
use switchyard_tests::{
    Daemon, Manifests, Mode, PodServerConfig, Topology, client, cluster, metrics, poll_until,
};

switchyard_tests::in_both_modes!(
    even_spread_over_ready_pods,
    relabelled_pod_leaves_rotation_within_a_second,
    unready_pod_leaves_rotation_within_a_second,
    terminating_endpoints_serve_until_one_is_ready,
    service_without_endpoints_refuses_at_once,
    client_ip_affinity_pins_one_pod,
    named_target_port_resolves_per_pod,
    udp_service_answers_from_the_vip_and_spreads_flows,
    dual_stack_service_serves_both_families,
    malformed_manifests_are_skipped_alone,
    metrics_and_cli_describe_the_service,
    deleted_service_frees_its_vip,
    sigterm_exits_zero,
    manifest_objects_follow_the_folder_and_kubectl_objects_stay,
    capabilities_are_dropped_but_those_the_mode_needs,
    bad_objects_are_each_skipped_with_one_warning,
);

/// The daemon promises file changes reach the datapath within 200 ms; the
/// tests wait far longer before calling it a failure.
const PICKUP: Duration = Duration::from_secs(5);

const WEB_VIP: &str = "10.96.0.10";
const WEB_URL: &str = "http://10.96.0.10:80/";

/// Each pod's manifest in a file of its own, `pod-web-<i>.yaml`.
fn write_web_pods(topo: &Topology, manifests: &Manifests) -> Result<()> {
    for index in 0..topo.pods().len() {
        write_pod(manifests, &Pod::web(topo, index))?;
    }
    Ok(())
}

fn write_pod(manifests: &Manifests, pod: &Pod) -> Result<()> {
    manifests.write_objects(&format!("pod-{}.yaml", pod.name()), &[pod.to_value()])
}

/// Service `web`: `10.96.0.10:80` → selector `app=web`, port 8080.
fn web_service() -> Service {
    Service::new("web")
        .cluster_ips(&[WEB_VIP])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080))
}

/// Polls until a request to `url` from the client succeeds.
fn wait_served(topo: &Topology, url: &str) -> Result<String> {
    poll_until(&format!("{url} to be served"), PICKUP, || {
        Ok(client::curl_many_results(topo.client(), url, 1)?
            .remove(0)
            .ok())
    })
}

/// Polls until `pods` are the only pods that answer a batch of 20
/// requests, then returns.
fn wait_only(topo: &Topology, url: &str, pods: &[&str]) -> Result<()> {
    poll_until(&format!("only {pods:?} to answer {url}"), PICKUP, || {
        let names = client::curl_many(topo.client(), url, 20)?;
        Ok(names
            .iter()
            .all(|n| pods.contains(&n.as_str()))
            .then_some(()))
    })
}

/// Checks where the Service addresses live on the node: in userspace mode
/// each of `vips` (`10.96.0.10/32`, `fd00:96::20/128`) is on `lo`; in eBPF
/// mode no Service address is on `lo` at all (translation happens at
/// `connect()`, before routing).
fn check_vips_on_lo(topo: &Topology, mode: Mode, vips: &[&str]) -> Result<()> {
    let addresses = topo.node().addresses("lo")?;
    match mode {
        Mode::Userspace => {
            for vip in vips {
                ensure!(
                    addresses.iter().any(|a| a == vip),
                    "userspace mode: {vip} is not on the node's lo: {addresses:?}"
                );
            }
        }
        Mode::Ebpf => {
            let service_addresses: Vec<&String> = addresses
                .iter()
                .filter(|a| a.starts_with("10.96.") || a.starts_with("fd00:96:"))
                .collect();
            ensure!(
                service_addresses.is_empty(),
                "eBPF mode added Service addresses to the node's lo: {service_addresses:?}"
            );
        }
    }
    Ok(())
}

fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::sum(&metrics::parse(text), name, labels)
}

fn even_spread_over_ready_pods(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        // /healthz said synced: the Service must answer now, not later.
        let first = client::curl_once(topo.client(), WEB_URL)
            .context("first request after /healthz answered 200")?;
        ensure!(first.starts_with("web-"), "first answer {first:?}");
        check_vips_on_lo(&topo, mode, &["10.96.0.10/32"])?;

        let names = client::curl_many(topo.client(), WEB_URL, 300)?;
        let counts = client::tally(&names);
        ensure!(
            counts
                .keys()
                .map(String::as_str)
                .eq(["web-0", "web-1", "web-2"]),
            "pods reached: {counts:?}"
        );
        for (pod, count) in &counts {
            // 20%..47% of 300.
            ensure!(
                (60..=141).contains(count),
                "{pod} got {count} of 300 requests: {counts:?}"
            );
        }
        Ok(())
    })())
}

/// Sends 60 requests and checks that all three pods answer (so a later
/// check that one pod is gone means something).
fn all_three_in_rotation(topo: &Topology) -> Result<()> {
    let counts = client::tally(&client::curl_many(topo.client(), WEB_URL, 60)?);
    ensure!(counts.len() == 3, "before the change: {counts:?}");
    Ok(())
}

/// Sleeps 1 s after a change, then sends 60 requests: all must succeed and
/// none may reach `gone`.
fn left_rotation_within_a_second(topo: &Topology, gone: &str) -> Result<()> {
    std::thread::sleep(Duration::from_secs(1));
    let names = client::curl_many(topo.client(), WEB_URL, 60)?;
    let counts = client::tally(&names);
    ensure!(
        !counts.contains_key(gone),
        "{gone} still answered 1 s after the change: {counts:?}"
    );
    ensure!(counts.len() == 2, "the other pods: {counts:?}");
    Ok(())
}

fn relabelled_pod_leaves_rotation_within_a_second(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        all_three_in_rotation(&topo)?;
        write_pod(&manifests, &Pod::web(&topo, 2).label("app", "other"))?;
        left_rotation_within_a_second(&topo, "web-2")?;
        // Labelled back, it returns.
        write_pod(&manifests, &Pod::web(&topo, 2))?;
        poll_until("web-2 to come back", PICKUP, || {
            let names = client::curl_many(topo.client(), WEB_URL, 20)?;
            Ok(names.iter().any(|n| n == "web-2").then_some(()))
        })
    })())
}

fn unready_pod_leaves_rotation_within_a_second(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        all_three_in_rotation(&topo)?;
        write_pod(&manifests, &Pod::web(&topo, 1).ready(false))?;
        left_rotation_within_a_second(&topo, "web-1")?;
        write_pod(&manifests, &Pod::web(&topo, 1))?;
        poll_until("web-1 to come back once ready", PICKUP, || {
            let names = client::curl_many(topo.client(), WEB_URL, 20)?;
            Ok(names.iter().any(|n| n == "web-1").then_some(()))
        })
    })())
}

/// An explicit slice for the selectorless Service `web`, with `endpoints`
/// given as (pod index, ready, serving, terminating).
fn web_slice(topo: &Topology, endpoints: &[(usize, bool, bool, bool)]) -> Value {
    let mut slice = EndpointSlice::new("web-manual", "web").port("http", 8080, "TCP");
    for &(index, ready, serving, terminating) in endpoints {
        slice = slice.endpoint(
            Endpoint::new(IpAddr::V4(topo.pod(index).ipv4()))
                .conditions(ready, serving, terminating)
                .pod(&format!("web-{index}")),
        );
    }
    slice.to_value()
}

fn terminating_endpoints_serve_until_one_is_ready(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let service = Service::new("web")
        .cluster_ips(&[WEB_VIP])
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    // web-0 and web-1 are terminating but still serving; web-2 is
    // terminating and no longer serving: never a candidate.
    manifests.write_objects(
        "slice-web.yaml",
        &[web_slice(
            &topo,
            &[
                (0, false, true, true),
                (1, false, true, true),
                (2, false, false, true),
            ],
        )],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        wait_served(&topo, WEB_URL)?;
        let counts = client::tally(&client::curl_many(topo.client(), WEB_URL, 60)?);
        ensure!(
            counts.keys().map(String::as_str).eq(["web-0", "web-1"]),
            "with every endpoint terminating, the serving ones answer: {counts:?}"
        );

        // One ready endpoint: only it is used.
        manifests.write_objects(
            "slice-web.yaml",
            &[web_slice(
                &topo,
                &[
                    (0, true, true, false),
                    (1, false, true, true),
                    (2, false, false, true),
                ],
            )],
        )?;
        wait_only(&topo, WEB_URL, &["web-0"])?;
        let counts = client::tally(&client::curl_many(topo.client(), WEB_URL, 60)?);
        ensure!(
            counts.keys().map(String::as_str).eq(["web-0"]),
            "with one ready endpoint, only it answers: {counts:?}"
        );
        Ok(())
    })())
}

fn service_without_endpoints_refuses_at_once(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    let empty = Service::new("empty")
        .cluster_ips(&["10.96.0.30"])
        .selector("tier", "backend")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc.yaml", &[web_service().to_value(), empty.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        // The daemon has synced both Services: one of them answers.
        wait_served(&topo, WEB_URL)?;
        let out = client::curl(
            topo.client(),
            &["-sS", "--connect-timeout", "5", "http://10.96.0.30:80/"],
        )?;
        ensure!(
            out.code == Some(7),
            "a Service without endpoints must refuse the connection (curl exit 7), got {:?}: {}",
            out.code,
            out.stderr.trim()
        );
        ensure!(
            out.elapsed < Duration::from_secs(2),
            "refusal took {:?}: that is a timeout, not a refusal",
            out.elapsed
        );
        // The same Service serves as soon as it has an endpoint.
        write_pod(&manifests, &Pod::web(&topo, 0).label("tier", "backend"))?;
        let name = wait_served(&topo, "http://10.96.0.30:80/")?;
        ensure!(name == "web-0", "answered by {name}");
        Ok(())
    })())
}

fn client_ip_affinity_pins_one_pod(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects(
        "svc-web.yaml",
        &[web_service().client_ip_affinity(Some(10800)).to_value()],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let names = client::curl_many(topo.client(), WEB_URL, 50)?;
        let counts = client::tally(&names);
        ensure!(
            counts.len() == 1,
            "sessionAffinity ClientIP: 50 requests reached {counts:?}"
        );
        Ok(())
    })())
}

fn named_target_port_resolves_per_pod(mode: Mode) -> Result<()> {
    let (mut topo, manifests) = cluster(2)?;
    // web-1 serves on 8081 only, and names that port `http`.
    topo.start_pod_server(1, PodServerConfig::web(1).http_ports(&[8081]))?;
    write_pod(&manifests, &Pod::web(&topo, 0))?;
    write_pod(
        &manifests,
        &Pod::web(&topo, 1).without_ports().port("http", 8081),
    )?;
    let service = Service::new("web")
        .cluster_ips(&[WEB_VIP])
        .selector("app", "web")
        .port(ServicePort::tcp_named("http", 80, "http"));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let counts = client::tally(&client::curl_many(topo.client(), WEB_URL, 60)?);
        ensure!(
            counts.keys().map(String::as_str).eq(["web-0", "web-1"]),
            "targetPort http must reach web-0 on 8080 and web-1 on 8081: {counts:?}"
        );
        Ok(())
    })())
}

fn udp_service_answers_from_the_vip_and_spreads_flows(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    let service = Service::new("dns")
        .cluster_ips(&[WEB_VIP])
        .selector("app", "web")
        .port(ServicePort::udp("dns", 53, 5353));
    manifests.write_objects("svc-dns.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 53);
        // Each exchange from a fresh socket, so a fresh source port.
        let replies = client::udp_requests(topo.client(), vip, "ping", 20)?;
        let mut pods = BTreeSet::new();
        for (i, reply) in replies.iter().enumerate() {
            let reply = reply
                .as_ref()
                .map_err(|e| anyhow::anyhow!("exchange {i}: {e}"))?;
            ensure!(
                reply.from == vip,
                "exchange {i}: the reply came from {} instead of the VIP",
                reply.from
            );
            ensure!(
                reply.payload == format!("{} ping", reply.pod()) && reply.pod().starts_with("web-"),
                "exchange {i}: reply {:?}",
                reply.payload
            );
            pods.insert(reply.pod().to_owned());
        }
        ensure!(
            pods.len() > 1,
            "20 flows from different source ports all went to {pods:?}"
        );
        check_vips_on_lo(&topo, mode, &["10.96.0.10/32"])
    })())
}

fn dual_stack_service_serves_both_families(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    let service = Service::new("web")
        .cluster_ips(&["10.96.0.20", "fd00:96::20"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-web.yaml", &[service.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let v6 = client::tally(&client::curl_many(
            topo.client(),
            "http://[fd00:96::20]:80/",
            30,
        )?);
        ensure!(v6.len() >= 2, "IPv6 ClusterIP spread: {v6:?}");
        let v4 = client::tally(&client::curl_many(
            topo.client(),
            "http://10.96.0.20:80/",
            30,
        )?);
        ensure!(v4.len() >= 2, "IPv4 ClusterIP spread: {v4:?}");
        // Each family's ClusterIP goes to that family's pod addresses: the
        // userspace proxy connects from the node's pod-side address; in eBPF
        // mode the client's own socket reaches the pod, from its address.
        let (from6, from4) = match mode {
            Mode::Userspace => ("[fd00:244::".to_owned(), "10.244.0.".to_owned()),
            Mode::Ebpf => (format!("[{CLIENT_IP6}]:"), format!("{CLIENT_IP4}:")),
        };
        let peer6 = client::curl_once(topo.client(), "http://[fd00:96::20]:80/peer")?;
        ensure!(
            peer6.starts_with(&from6),
            "the IPv6 ClusterIP reached a pod from {peer6}, expected {from6}..."
        );
        let peer4 = client::curl_once(topo.client(), "http://10.96.0.20:80/peer")?;
        ensure!(
            peer4.starts_with(&from4),
            "the IPv4 ClusterIP reached a pod from {peer4}, expected {from4}..."
        );
        check_vips_on_lo(&topo, mode, &["10.96.0.20/32", "fd00:96::20/128"])
    })())
}

fn malformed_manifests_are_skipped_alone(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let mut daemon = topo.start_daemon_mode(&manifests, mode)?;
    let result = (|| {
        wait_served(&topo, WEB_URL)?;
        manifests.write(
            "broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: [broken\n",
        )?;
        // Document 1 is a good Service; document 2 has port 70000.
        let good = Service::new("web2")
            .cluster_ips(&["10.96.0.11"])
            .selector("app", "web")
            .port(ServicePort::tcp("http", 80, 8080));
        let mut bad = Service::new("bad")
            .cluster_ips(&["10.96.0.12"])
            .selector("app", "web")
            .port(ServicePort::tcp("http", 80, 8080))
            .to_value();
        bad["spec"]["ports"][0]["port"] = serde_json::json!(70000);
        manifests.write_objects("badport.yaml", &[good.to_value(), bad])?;

        let broken_path = manifests.file("broken.yaml").display().to_string();
        let line = daemon.wait_for_log("a log line naming broken.yaml", PICKUP, |l| {
            l.contains(&broken_path) && l.contains("document 1")
        })?;
        eprintln!("broken YAML logged as: {line}");
        let badport_path = manifests.file("badport.yaml").display().to_string();
        let line = daemon.wait_for_log("a log line naming badport.yaml", PICKUP, |l| {
            l.contains(&badport_path) && l.contains("document 2")
        })?;
        eprintln!("port 70000 logged as: {line}");

        // The good document of the same file is served; the bad one is not.
        let name = wait_served(&topo, "http://10.96.0.11:80/")?;
        ensure!(name.starts_with("web-"), "web2 answered {name:?}");
        let out = client::curl(
            topo.client(),
            &["-sS", "--connect-timeout", "2", "http://10.96.0.12:80/"],
        )?;
        ensure!(!out.status.success(), "the invalid Service was served");

        // The running Service still works, and so does the daemon.
        let names = client::curl_many(topo.client(), WEB_URL, 30)?;
        ensure!(
            client::tally(&names).len() == 2,
            "web after bad files: {names:?}"
        );
        ensure!(daemon.try_wait()?.is_none(), "the daemon exited");
        let (code, _) = daemon.healthz()?;
        ensure!(code == 200, "/healthz answered {code} after bad files");
        let text = daemon.metrics()?;
        let invalid = sample_sum(&text, "switchyard_invalid_objects_total", &[]);
        ensure!(
            invalid > 0.0,
            "switchyard_invalid_objects_total is {invalid}"
        );
        Ok(())
    })();
    daemon.with_log(result)
}

fn metrics_and_cli_describe_the_service(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        client::curl_many(topo.client(), WEB_URL, 30)?;
        let pod_ips: Vec<String> = topo.pods().iter().map(|p| p.ipv4().to_string()).collect();

        let text = match mode {
            // The proxy counts every connection it carries.
            Mode::Userspace => poll_until("30 backend connections counted", PICKUP, || {
                let text = daemon.metrics()?;
                let count = sample_sum(
                    &text,
                    "switchyard_backend_connections_total",
                    &[("service", "default/web:http")],
                );
                Ok((count >= 30.0).then_some(text))
            })?,
            // The kernel does not count per backend, but counts every
            // connect it translated.
            Mode::Ebpf => poll_until("30 translations counted", PICKUP, || {
                let text = daemon.metrics()?;
                let count = sample_sum(&text, "switchyard_bpf_translations_total", &[]);
                Ok((count >= 30.0).then_some(text))
            })?,
        };
        let all = metrics::parse(&text);
        ensure!(
            all.iter().any(|s| s
                .name
                .starts_with("kubeproxy_sync_proxy_rules_duration_seconds")),
            "no kubeproxy_sync_proxy_rules_duration_seconds in /metrics"
        );
        let sync_count = metrics::sum(
            &all,
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            &[],
        );
        ensure!(sync_count >= 1.0, "sync duration count is {sync_count}");
        if mode == Mode::Userspace {
            let backends: BTreeSet<&str> =
                metrics::samples(&all, "switchyard_backend_connections_total")
                    .into_iter()
                    .filter(|s| s.label("service") == Some("default/web:http"))
                    .filter_map(|s| s.label("backend"))
                    .collect();
            for ip in &pod_ips {
                ensure!(
                    backends.iter().any(|b| b.contains(ip.as_str())),
                    "no backend label for {ip}: {backends:?}"
                );
            }
        }
        let active = metrics::sum(
            &all,
            "switchyard_service_backends",
            &[("service", "default/web:http"), ("state", "active")],
        );
        ensure!(
            (active - 3.0).abs() < f64::EPSILON,
            "switchyard_service_backends{{state=active}} is {active}, expected 3"
        );

        ensure!(
            daemon.proxy_mode_endpoint()? == mode.flag(),
            "/proxyMode does not say {mode}"
        );
        let table = daemon.cli(&["services"])?;
        let stdout = String::from_utf8_lossy(&table.stdout);
        ensure!(
            table.status.success(),
            "switchyard services failed: {}",
            String::from_utf8_lossy(&table.stderr)
        );
        ensure!(
            stdout.lines().next() == Some(&format!("proxy mode: {mode}")),
            "`switchyard services` does not start with `proxy mode: {mode}`:\n{stdout}"
        );
        ensure!(
            stdout.contains("10.96.0.10:80"),
            "`switchyard services` does not show the frontend:\n{stdout}"
        );
        for ip in &pod_ips {
            ensure!(
                stdout.contains(&format!("{ip}:8080")),
                "`switchyard services` does not show backend {ip}:8080:\n{stdout}"
            );
        }

        let admin = daemon.services_json()?.to_string();
        ensure!(
            admin.contains(WEB_VIP),
            "/services on the metrics address does not list the frontend: {admin}"
        );

        let value = daemon.services_cli_json()?;
        let web = value
            .as_array()
            .context("services --output json is a list")?
            .iter()
            .find(|f| f["frontend"] == "10.96.0.10:80/TCP")
            .with_context(|| format!("the JSON does not list the frontend: {value}"))?;
        let listed: BTreeSet<&str> = web["backends"]
            .as_array()
            .context("backends is a list")?
            .iter()
            .filter_map(|b| b["backend"].as_str())
            .collect();
        let expected: BTreeSet<String> = pod_ips.iter().map(|ip| format!("{ip}:8080")).collect();
        ensure!(
            listed
                .iter()
                .copied()
                .eq(expected.iter().map(String::as_str)),
            "the JSON lists backends {listed:?}, expected {expected:?}"
        );
        Ok(())
    })())
}

/// Whether `frontend` (`10.96.0.10:80/TCP`) is in the daemon's `/services`.
fn lists_frontend(daemon: &Daemon, frontend: &str) -> Result<bool> {
    Ok(daemon
        .services_json()?
        .as_array()
        .context("/services is a list")?
        .iter()
        .any(|f| f["frontend"] == frontend))
}

/// A deleted Service stops being served and the other one is untouched. In
/// userspace mode its VIP leaves `lo`. In eBPF mode its frontend leaves the
/// kernel's maps, and a connect to its address is no longer translated: it
/// reaches a server the test put on the node at that very address, which no
/// connect reached while the Service existed.
fn deleted_service_frees_its_vip(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let other = Service::new("other")
        .cluster_ips(&["10.96.0.11"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-other.yaml", &[other.to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        wait_served(&topo, WEB_URL)?;
        let _untranslated = match mode {
            Mode::Userspace => None,
            Mode::Ebpf => {
                let server = topo.serve_on_node(
                    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                    80,
                    "untranslated",
                )?;
                let names = client::curl_many(topo.client(), WEB_URL, 20)?;
                ensure!(
                    names.iter().all(|n| n.starts_with("web-")),
                    "while the Service exists every connect is translated: {names:?}"
                );
                Some(server)
            }
        };
        manifests.remove("svc-web.yaml")?;
        match mode {
            Mode::Userspace => {
                poll_until("10.96.0.10 to leave lo", PICKUP, || {
                    let addresses = topo.node().addresses("lo")?;
                    Ok((!addresses.iter().any(|a| a == "10.96.0.10/32")).then_some(()))
                })?;
                let out = client::curl(topo.client(), &["-sS", "--connect-timeout", "2", WEB_URL])?;
                ensure!(
                    !out.status.success(),
                    "the deleted Service still answered: {}",
                    out.stdout
                );
            }
            Mode::Ebpf => {
                poll_until("10.96.0.10:80 to leave /services", PICKUP, || {
                    Ok((!lists_frontend(&daemon, "10.96.0.10:80/TCP")?).then_some(()))
                })?;
                let table = daemon.services_cli_json()?.to_string();
                ensure!(
                    !table.contains("10.96.0.10:"),
                    "`switchyard services` still lists the deleted frontend: {table}"
                );
                let names = client::curl_many(topo.client(), WEB_URL, 10)?;
                ensure!(
                    names.iter().all(|n| n == "untranslated"),
                    "a connect to the deleted Service's address was still translated: {names:?}"
                );
            }
        }
        // The other Service is untouched.
        let names = client::curl_many(topo.client(), "http://10.96.0.11:80/", 20)?;
        ensure!(client::tally(&names).len() == 2, "other Service: {names:?}");
        Ok(())
    })())
}

/// SIGTERM makes the daemon exit 0 in both modes. In userspace mode its
/// VIPs leave `lo` with it. In eBPF mode nothing is flushed: the programs
/// stay attached and the maps pinned, so traffic keeps flowing, balanced,
/// with no daemon at all, until `switchyard cleanup` removes the datapath
/// (after which a connect is no longer translated).
fn sigterm_exits_zero(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    let dual = Service::new("web6")
        .cluster_ips(&["10.96.0.20", "fd00:96::20"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc.yaml", &[web_service().to_value(), dual.to_value()])?;
    let mut daemon = topo.start_daemon_mode(&manifests, mode)?;
    let vips = ["10.96.0.10/32", "10.96.0.20/32", "fd00:96::20/128"];
    let result = (|| {
        wait_served(&topo, WEB_URL)?;
        check_vips_on_lo(&topo, mode, &vips)?;
        let started = Instant::now();
        let status = daemon.terminate(Duration::from_secs(15))?;
        ensure!(
            status.success(),
            "switchyard exited with {status} after SIGTERM (in {:?})",
            started.elapsed()
        );
        match mode {
            Mode::Userspace => {
                let after = topo.node().addresses("lo")?;
                for vip in vips {
                    ensure!(
                        !after.iter().any(|a| a == vip),
                        "{vip} is still on lo after exit: {after:?}"
                    );
                }
            }
            Mode::Ebpf => sigterm_leaves_the_ebpf_datapath(&topo, &mut daemon)?,
        }
        Ok(())
    })();
    daemon.with_log(result)
}

/// After the eBPF daemon's exit: still serving, still attached; then gone
/// with `switchyard cleanup`.
fn sigterm_leaves_the_ebpf_datapath(topo: &Topology, daemon: &mut Daemon) -> Result<()> {
    let paths = daemon.ebpf_paths().context("eBPF mode has paths")?.clone();
    for url in [WEB_URL, "http://10.96.0.20:80/", "http://[fd00:96::20]:80/"] {
        let counts = client::tally(&client::curl_many(topo.client(), url, 30)?);
        ensure!(
            counts.len() == 2,
            "with the daemon gone, {url} must still be balanced over both pods: {counts:?}"
        );
    }
    check_vips_on_lo(topo, Mode::Ebpf, &[])?;
    for pin in ["sy_frontends", "sy_backends", "link_sy_connect4"] {
        ensure!(
            paths.pin_path.join(pin).exists(),
            "{pin} is no longer pinned in {} after SIGTERM",
            paths.pin_path.display()
        );
    }
    let attached = attached_programs(&paths.cgroup)?;
    ensure!(
        attached.contains("sy_connect4") && attached.contains("sy_sendmsg6"),
        "the programs are no longer attached to the client's cgroup after SIGTERM:\n{attached}"
    );

    let _untranslated =
        topo.serve_on_node(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80, "untranslated")?;
    // Still the pods while the datapath is in place.
    let names = client::curl_many(topo.client(), WEB_URL, 10)?;
    ensure!(
        names.iter().all(|n| n.starts_with("web-")),
        "before cleanup: {names:?}"
    );
    daemon.cleanup_ebpf()?;
    ensure!(
        !paths.pin_path.exists(),
        "{} survived switchyard cleanup",
        paths.pin_path.display()
    );
    let attached = attached_programs(&paths.cgroup)?;
    ensure!(
        !attached.contains("sy_"),
        "programs still attached to the client's cgroup after cleanup:\n{attached}"
    );
    let names = client::curl_many(topo.client(), WEB_URL, 10)?;
    ensure!(
        names.iter().all(|n| n == "untranslated"),
        "after cleanup a connect to the VIP is no longer translated: {names:?}"
    );
    Ok(())
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

/// The manifest folder is loaded into the daemon's embedded API server: its objects carry the
/// folder's annotation and follow the folder (live and across a restart), while an object
/// created with kubectl through the same API server stays.
fn manifest_objects_follow_the_folder_and_kubectl_objects_stay(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let extra = Service::new("extra")
        .cluster_ips(&["10.96.0.30"])
        .selector("app", "web")
        .port(ServicePort::tcp("http", 80, 8080));
    manifests.write_objects("svc-extra.yaml", &[extra.to_value()])?;
    let mut daemon = topo.start_daemon_mode(&manifests, mode)?;
    let kubeconfig = daemon
        .embedded_kubeconfig()
        .context("the daemon runs an embedded API server")?;
    let kubectl = switchyard_tests::Kubectl::new(topo.node(), kubeconfig)?;
    let result = (|| {
        wait_served(&topo, WEB_URL)?;
        wait_served(&topo, "http://10.96.0.30/")?;
        let from_folder = kubectl.get_json(&["get", "service", "extra"])?;
        ensure!(
            from_folder["metadata"]["annotations"]["switchyard.io/manifests"].is_string(),
            "a manifest's object names its folder: {from_folder}"
        );
        // An object of another client, through the same API server.
        kubectl.create_json(
            &Service::new("by-kubectl")
                .cluster_ips(&["10.96.0.40"])
                .selector("app", "web")
                .port(ServicePort::tcp("http", 80, 8080))
                .to_value(),
        )?;
        wait_served(&topo, "http://10.96.0.40/")?;

        // Live: a removed file deletes its object.
        manifests.remove("pod-web-1.yaml")?;
        wait_only(&topo, WEB_URL, &["web-0"])?;
        poll_until("Pod web-1 to be deleted", PICKUP, || {
            Ok(kubectl.run(&["get", "pod", "web-1"]).is_err().then_some(()))
        })?;

        // Across a restart: a file removed while the daemon was down deletes its objects.
        let status = daemon.terminate(Duration::from_secs(15))?;
        ensure!(status.success(), "switchyard exited with {status}");
        manifests.remove("svc-extra.yaml")?;
        daemon.restart()?;
        wait_served(&topo, WEB_URL)?;
        ensure!(
            kubectl.run(&["get", "service", "extra"]).is_err(),
            "Service extra outlived its file"
        );
        poll_until("10.96.0.30 to refuse", PICKUP, || {
            Ok(
                client::curl_many_results(topo.client(), "http://10.96.0.30/", 1)?
                    .remove(0)
                    .is_err()
                    .then_some(()),
            )
        })?;
        // ...and the kubectl-made Service is still there and served.
        kubectl.get_json(&["get", "service", "by-kubectl"])?;
        wait_served(&topo, "http://10.96.0.40/")?;
        Ok(())
    })();
    daemon.with_log(result)
}

/// Userspace mode: a VIP removed from `lo` by hand is put back by
/// `switchyard repair` before it returns, and by the periodic check within
/// one period when nobody asks; both are counted and logged.
#[test]
fn userspace_vip_removed_by_hand_is_repaired() -> Result<()> {
    const PERIOD: Duration = Duration::from_secs(4);
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let config = switchyard_tests::DaemonConfig {
        sync_period: format!("{}s", PERIOD.as_secs()),
        ..switchyard_tests::DaemonConfig::for_mode(Mode::Userspace, &topo)?
    };
    let daemon = topo.start_daemon_with(&manifests, &config)?;
    daemon.with_log((|| {
        wait_served(&topo, WEB_URL)?;
        let on_lo = || -> Result<bool> {
            Ok(topo
                .node()
                .addresses("lo")?
                .iter()
                .any(|a| a == "10.96.0.10/32"))
        };
        let remove = || -> Result<()> {
            topo.node()
                .run(["ip", "addr", "del", "10.96.0.10/32", "dev", "lo"])?;
            ensure!(!on_lo()?, "10.96.0.10 still on lo after `ip addr del`");
            Ok(())
        };

        remove()?;
        let repaired = daemon.repair()?;
        ensure!(
            repaired.iter().any(|r| r.contains("10.96.0.10")),
            "the repair does not name the VIP: {repaired:?}"
        );
        ensure!(
            on_lo()?,
            "10.96.0.10 not back on lo after `switchyard repair`"
        );
        client::curl_many(topo.client(), WEB_URL, 3)?;

        remove()?;
        let removed = Instant::now();
        poll_until(
            "the periodic check to put 10.96.0.10 back",
            PERIOD * 2,
            || Ok(on_lo()?.then_some(())),
        )?;
        eprintln!(
            "the periodic check put the VIP back {:?} after it was removed (period {PERIOD:?})",
            removed.elapsed()
        );
        client::curl_many(topo.client(), WEB_URL, 3)?;
        let counted = sample_sum(&daemon.metrics()?, "switchyard_datapath_repairs_total", &[]);
        ensure!(
            counted >= 2.0,
            "switchyard_datapath_repairs_total is {counted} after two repairs"
        );
        Ok(())
    })())
}

/// The capability sets of process `pid` (`CapEff`, `CapPrm`, ... of
/// `/proc/PID/status`), each as the capability numbers it holds.
fn capability_sets(pid: u32) -> Result<std::collections::BTreeMap<String, BTreeSet<u32>>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut sets = std::collections::BTreeMap::new();
    for line in status.lines() {
        let Some((name, hex)) = line.split_once(':') else {
            continue;
        };
        if !name.starts_with("Cap") {
            continue;
        }
        let bits = u64::from_str_radix(hex.trim(), 16)
            .with_context(|| format!("{name} of /proc/{pid}/status: {hex}"))?;
        sets.insert(
            name.to_owned(),
            (0..64).filter(|b| bits & (1 << b) != 0).collect(),
        );
    }
    Ok(sets)
}

/// The daemon runs with the capabilities its mode needs and no other, in
/// every set (the bounding set too, so nothing it execs regains one), and
/// serves all the same.
fn capabilities_are_dropped_but_those_the_mode_needs(mode: Mode) -> Result<()> {
    // linux/capability.h
    const NET_BIND_SERVICE: u32 = 10;
    const NET_ADMIN: u32 = 12;
    const SYS_PTRACE: u32 = 19;
    const SYS_ADMIN: u32 = 21;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        wait_served(&topo, WEB_URL)?;
        let want: BTreeSet<u32> = match mode {
            Mode::Userspace => [NET_BIND_SERVICE, NET_ADMIN].into(),
            // With --close-stale-sockets (the default), which opens pods' namespaces.
            Mode::Ebpf => [
                NET_BIND_SERVICE,
                NET_ADMIN,
                SYS_PTRACE,
                SYS_ADMIN,
                PERFMON,
                BPF,
            ]
            .into(),
        };
        let sets = capability_sets(daemon.pid())?;
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            ensure!(
                sets.get(set) == Some(&want),
                "{set} of the daemon is {:?}, want {want:?}",
                sets.get(set)
            );
        }
        for set in ["CapInh", "CapAmb"] {
            ensure!(
                sets.get(set).is_some_and(BTreeSet::is_empty),
                "{set} of the daemon is {:?}, want none",
                sets.get(set)
            );
        }
        // Still working with only those: a change is programmed, a repair made.
        let names = client::curl_many(topo.client(), WEB_URL, 20)?;
        ensure!(
            client::tally(&names).len() == 2,
            "both pods serve: {names:?}"
        );
        daemon.repair()?;
        ensure!(
            daemon
                .log()
                .contains("capabilities dropped but those needed"),
            "the daemon did not log what it kept"
        );
        Ok(())
    })())
}

/// Issue 7's list of bad input, written while a good Service serves: each
/// object is skipped with warnings that name it (counted once, not at every
/// resync), the metrics count them, and the good Service, the daemon and
/// `/healthz` are unaffected.
fn bad_objects_are_each_skipped_with_one_warning(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_web_pods(&topo, &manifests)?;
    manifests.write_objects("svc-web.yaml", &[web_service().to_value()])?;
    let daemon = topo.start_daemon_with(
        &manifests,
        &switchyard_tests::DaemonConfig {
            // Resyncs during the test, to show a warning is not repeated.
            sync_period: "2s".to_owned(),
            ..switchyard_tests::DaemonConfig::for_mode(mode, &topo)?
        },
    )?;
    daemon.with_log((|| {
        wait_served(&topo, WEB_URL)?;
        let bad_service = |name: &str, ip: &str, edit: &dyn Fn(&mut Value)| {
            let mut value = Service::new(name)
                .cluster_ips(&[ip])
                .selector("app", "web")
                .port(ServicePort::tcp("http", 80, 8080))
                .to_value();
            edit(&mut value);
            value
        };
        let ports: Vec<Value> = (1..=10_000)
            .map(|p| serde_json::json!({"name": format!("p{p}"), "port": p, "targetPort": 8080}))
            .collect();
        let bad: Vec<(&str, Value)> = vec![
            (
                "bad-ip",
                bad_service("bad-ip", "10.96.0.21", &|v| {
                    v["spec"]["clusterIP"] = "10.96.0.300".into();
                    v["spec"]["clusterIPs"] = serde_json::json!(["10.96.0.300"]);
                }),
            ),
            (
                "port-zero",
                bad_service("port-zero", "10.96.0.22", &|v| {
                    v["spec"]["ports"][0]["port"] = 0.into();
                }),
            ),
            (
                "port-70000",
                bad_service("port-70000", "10.96.0.23", &|v| {
                    v["spec"]["ports"][0]["port"] = 70_000.into();
                }),
            ),
            (
                "many-ports",
                bad_service("many-ports", "10.96.0.24", &|v| {
                    v["spec"]["ports"] = Value::Array(ports.clone());
                }),
            ),
            (
                "dup-ports",
                bad_service("dup-ports", "10.96.0.25", &|v| {
                    v["spec"]["ports"] = serde_json::json!([
                    {"name": "a", "port": 80, "targetPort": 8080},
                    {"name": "b", "port": 80, "targetPort": 8081}]);
                }),
            ),
            (
                "quic",
                bad_service("quic", "10.96.0.26", &|v| {
                    v["spec"]["ports"][0]["protocol"] = "QUIC".into();
                }),
            ),
            (
                "huge-selector",
                bad_service("huge-selector", "10.96.0.27", &|v| {
                    v["spec"]["selector"] = serde_json::json!({"app": "x".repeat(65_536)});
                }),
            ),
            (
                "orphan-slice",
                EndpointSlice::new("orphan-slice", "no-such-service")
                    .port("http", 8080, "TCP")
                    .endpoint(Endpoint::new("10.244.0.10".parse()?))
                    .to_value(),
            ),
            (
                "wrong-family",
                EndpointSlice::new("wrong-family", "web")
                    .address_type("IPv4")
                    .port("http", 8080, "TCP")
                    .endpoint(Endpoint::new("fd00::10".parse()?))
                    .to_value(),
            ),
        ];
        for (name, value) in &bad {
            manifests.write_objects(&format!("bad-{name}.yaml"), std::slice::from_ref(value))?;
        }
        // Each bad object's name is in a warning (skipped, refused or rejected).
        let warned = |name: &str| -> Result<Vec<String>> {
            Ok(daemon
                .log()
                .lines()
                .filter(|l| l.contains("WARN") && l.contains(name))
                .map(str::to_owned)
                .collect())
        };
        let expect_warned: Vec<&str> = bad.iter().map(|(n, _)| *n).collect();
        poll_until("a warning naming each bad object", PICKUP, || {
            for name in &expect_warned {
                if warned(name)?.is_empty() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        // Two resyncs later, still one warning each.
        std::thread::sleep(Duration::from_secs(5));
        for name in &expect_warned {
            let lines = warned(name)?;
            eprintln!("{name}: {}", lines.join(" | "));
            ensure!(
                lines.len() == 1,
                "{name}: {} warnings, want one: {lines:#?}",
                lines.len()
            );
        }
        // None of them is served; the good Service is, over both pods.
        for ip in 21..=27 {
            let url = format!("http://10.96.0.{ip}:80/");
            let out = client::curl(topo.client(), &["-sS", "--connect-timeout", "1", &url])?;
            ensure!(!out.status.success(), "{url} answered: {}", out.stdout);
        }
        let names = client::curl_many(topo.client(), WEB_URL, 20)?;
        ensure!(
            client::tally(&names).len() == 2,
            "web after the bad objects: {names:?}"
        );
        let (code, _) = daemon.healthz()?;
        ensure!(code == 200, "/healthz answered {code}");
        let text = daemon.metrics()?;
        let counted = sample_sum(&text, "switchyard_invalid_objects_total", &[])
            + sample_sum(&text, "switchyard_limit_reached_total", &[])
            + sample_sum(&text, "switchyard_unsupported_total", &[]);
        ensure!(
            counted >= expect_warned.len() as f64,
            "{counted} counted for {} bad objects:\n{text}",
            expect_warned.len()
        );
        Ok(())
    })())
}
