//! The demo of `cargo xtask run`: a node with three pods and a client, in network namespaces
//! of its own, switchyard on `examples/demo/`, and real clients showing the balancing.
//!
//! Everything lives in namespaces the demo creates (the client has no route out of them) and
//! is removed when the demo ends, also on Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use switchyard_tests::{DaemonConfig, Manifests, Topology, client};

use crate::step;

/// Runs the demo in a child process with the release binaries named in its environment, so
/// the topology library finds them.
pub fn run(exe: &Path, root: &Path, once: bool, userspace: bool) -> Result<()> {
    let mut command = Command::new(exe);
    command
        .arg("__demo")
        .env("SWITCHYARD_BIN", root.join("target/release/switchyard"))
        .env("POD_SERVER_BIN", root.join("target/release/pod-server"))
        .env("SWITCHYARD_DEMO_ROOT", root);
    if once {
        command.env("SWITCHYARD_DEMO_ONCE", "1");
    }
    if userspace {
        command.env("SWITCHYARD_DEMO_USERSPACE", "1");
    }
    let status = command.status().context("cannot start the demo")?;
    if !status.success() {
        bail!("the demo failed");
    }
    Ok(())
}

fn bar(counts: &BTreeMap<String, usize>, total: usize) {
    for (pod, n) in counts {
        let width = n * 40 / total.max(1);
        println!("    {pod:<8} {n:>4}  {}", "#".repeat(width));
    }
}

/// The demo itself (the hidden `__demo` command).
pub fn inner() -> Result<()> {
    let root =
        std::env::var_os("SWITCHYARD_DEMO_ROOT").context("run the demo with `cargo xtask run`")?;
    let once = std::env::var_os("SWITCHYARD_DEMO_ONCE").is_some();
    let userspace = std::env::var_os("SWITCHYARD_DEMO_USERSPACE").is_some();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot handle Ctrl-C")?;

    step("creating the demo topology: a node, three pods and a client, in network namespaces");
    let mut topo = Topology::new(3)?;
    topo.start_pod_servers()?;
    for pod in topo.pods() {
        println!(
            "    pod {} at {} and {}",
            pod.server_name().unwrap_or("?"),
            pod.ipv4(),
            pod.ipv6()
        );
    }

    step(if userspace {
        "starting switchyard on examples/demo/ (userspace mode)"
    } else {
        "starting switchyard on examples/demo/ (eBPF mode: its programs attach to the client's cgroup only)"
    });
    let manifests = Manifests::new_in(topo.scratch_dir())?;
    let examples = Path::new(&root).join("examples/demo");
    let mut web_yaml = String::new();
    for entry in
        std::fs::read_dir(&examples).with_context(|| format!("read {}", examples.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path)?;
        if name == "web.yaml" {
            web_yaml.clone_from(&text);
        }
        manifests.write(&name, &text)?;
        println!("    {}", path.display());
    }
    let daemon = if userspace {
        topo.start_daemon(&manifests)?
    } else {
        match topo.start_daemon_with(&manifests, &DaemonConfig::ebpf(&topo)?) {
            Ok(daemon) => daemon,
            Err(error) => {
                println!("    the eBPF datapath cannot run here ({error:#}); using userspace mode");
                topo.start_daemon(&manifests)?
            }
        }
    };
    println!(
        "    daemon pid {}, log {}",
        daemon.pid(),
        daemon.log_path().display()
    );

    let client = topo.client();
    step(
        "300 HTTP requests, each a new connection, from the client to web's ClusterIP 10.96.0.10:80",
    );
    let names = client::curl_many(client, "http://10.96.0.10/", 300)?;
    bar(&client::tally(&names), names.len());

    step("the same Service over IPv6: http://[fd00:96::10]/");
    let names = client::curl_many(client, "http://[fd00:96::10]/", 30)?;
    bar(&client::tally(&names), names.len());

    step("UDP: 30 datagrams from fresh source ports to 10.96.0.10:53 (replies come from the VIP)");
    let target: SocketAddr = "10.96.0.10:53".parse()?;
    let replies = client::udp_requests(client, target, "hello", 30)?;
    let mut udp = BTreeMap::new();
    for reply in replies.iter().flatten() {
        *udp.entry(format!("{} (from {})", reply.pod(), reply.from))
            .or_insert(0) += 1;
    }
    bar(&udp, replies.len());

    step("sessionAffinity: ClientIP: 30 requests to sticky (10.96.0.11) all reach one pod");
    let names = client::curl_many(client, "http://10.96.0.11/", 30)?;
    bar(&client::tally(&names), names.len());

    step("web-2 turns not-ready (its manifest is edited); it leaves the rotation at once");
    let edited = replace_nth(&web_yaml, "status: \"True\"", "status: \"False\"", 3)
        .context("examples/demo/web.yaml no longer has three Ready conditions")?;
    manifests.write("web.yaml", &edited)?;
    std::thread::sleep(Duration::from_millis(500));
    let names = client::curl_many(client, "http://10.96.0.10/", 60)?;
    bar(&client::tally(&names), names.len());

    step("`switchyard services`: what the daemon has programmed");
    let out = daemon.cli(&["services"])?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    if let Some(kubeconfig) = daemon.embedded_kubeconfig() {
        let kubeconfig = kubeconfig.display().to_string();
        let kubectl = |args: &[&str]| -> Result<String> {
            let mut argv = vec!["kubectl", "--kubeconfig", kubeconfig.as_str()];
            argv.extend_from_slice(args);
            topo.node().run(argv)
        };
        step(
            "kubectl against the daemon's embedded API server (the manifests were loaded into it)",
        );
        println!("    $ kubectl --kubeconfig {kubeconfig} get services,endpointslices");
        for line in kubectl(&["get", "services,endpointslices"])?.lines() {
            println!("    {line}");
        }
        step(
            "a Service created with kubectl (no manifest) is served at once: 10.96.0.12 -> app=web",
        );
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "made-with-kubectl", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.12", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        });
        let file = manifests
            .path()
            .parent()
            .unwrap_or(manifests.path())
            .join("made-with-kubectl.json");
        std::fs::write(&file, service.to_string())?;
        let file = file.display().to_string();
        println!(
            "    {}",
            kubectl(&["create", "--validate=false", "-f", &file])?.trim()
        );
        let names = switchyard_tests::poll_until(
            "the new Service to answer",
            Duration::from_secs(5),
            || Ok(client::curl_many(client, "http://10.96.0.12/", 30).ok()),
        )?;
        bar(&client::tally(&names), names.len());
    }

    step("a few of its metrics (kube-proxy's names and switchyard's own)");
    let metrics = daemon.metrics()?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count")
            || l.starts_with("kubeproxy_network_programming_duration_seconds_count")
            || l.starts_with("switchyard_service_connections_total")
            || l.starts_with("switchyard_bpf_translations_total")
    }) {
        println!("    {line}");
    }

    if !once {
        step("the demo is up; press Ctrl-C to stop it and remove everything");
        println!(
            "    try: ip netns exec {} curl http://10.96.0.10/",
            client.name()
        );
        println!(
            "    try: ip netns exec {} {} services",
            topo.node().name(),
            switchyard_tests::daemon::switchyard_bin()?.display()
        );
        println!(
            "    edit the manifests in {} and watch the daemon follow",
            manifests.path().display()
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    step("cleaning up: stopping switchyard and the pods, deleting the namespaces");
    drop(daemon);
    drop(topo);
    Ok(())
}

fn replace_nth(text: &str, from: &str, to: &str, n: usize) -> Option<String> {
    let (index, _) = text.match_indices(from).nth(n - 1)?;
    Some(format!(
        "{}{to}{}",
        &text[..index],
        &text[index + from.len()..]
    ))
}
