//! End-to-end tests of L7 ports (per-request balancing), each in both proxy modes: real
//! namespaces, real pod servers speaking HTTP/1.1 and h2c (`pod-server --h2`), the real
//! daemon over a manifest folder, and real clients (curl, h2load, Python's ssl module) in the
//! client namespace.
//!
//! In userspace mode the L7 listener is bound on the VIP; in eBPF mode the socket-level
//! programs send the client's connection to a listener on the node's address, which balances
//! each request over the pods.

#![allow(clippy::disallowed_types)] // synchronous tests: std's clock is the right one

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use switchyard_tests::objects::Pod;
use switchyard_tests::topology::{CLIENT_IP6, NODE_IP4, POD_H2_PORT, test_bin};
use switchyard_tests::{
    Daemon, Manifests, Mode, PodServerConfig, Topology, client, cluster, metrics, poll_until,
};

switchyard_tests::in_both_modes!(
    requests_of_one_connection_spread_over_every_pod,
    failing_pods_are_retried_then_ejected,
    a_slow_request_head_is_cut_off,
    tls_certificate_rotates_under_an_open_connection,
    tls_is_originated_to_pods_that_the_ca_vouches_for,
    grpc_calls_of_one_channel_spread_over_every_pod,
    websocket_upgrades_are_tunnelled,
    at_shutdown_http2_clients_get_goaway_and_requests_in_flight_finish,
    a_terminating_pod_gets_no_new_requests_and_finishes_the_one_in_flight,
    the_retry_budget_caps_retries,
    active_health_checks_take_a_failing_pod_out_and_bring_it_back,
    oversized_requests_get_413_and_431,
    a_header_hash_keeps_each_key_on_one_pod,
    an_ipv6_cluster_ip_is_balanced_per_request,
    a_node_port_is_balanced_per_request,
);

const PICKUP: Duration = Duration::from_secs(10);

/// A ClusterIP Service with one TCP port `port` → the pods' h2 port, with `appProtocol` and
/// `annotations`, selecting `selector`.
fn l7_service(
    name: &str,
    vip: &str,
    port: u16,
    app_protocol: &str,
    selector: (&str, &str),
    annotations: Value,
) -> Value {
    l7_service_to(
        name,
        vip,
        port,
        POD_H2_PORT,
        app_protocol,
        selector,
        annotations,
    )
}

/// Like [`l7_service`], to another target port.
fn l7_service_to(
    name: &str,
    vip: &str,
    port: u16,
    target: u16,
    app_protocol: &str,
    selector: (&str, &str),
    annotations: Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": {selector.0: selector.1},
            "ports": [{"name": "http", "port": port, "targetPort": target,
                       "protocol": "TCP", "appProtocol": app_protocol}],
        },
    })
}

/// Every pod `web-<i>` with label `app=web` (and `extra` labels per pod).
fn write_pods(topo: &Topology, manifests: &Manifests, extra: &[&[(&str, &str)]]) -> Result<()> {
    for index in 0..topo.pods().len() {
        let mut pod = Pod::web(topo, index);
        for (k, v) in extra.get(index).copied().unwrap_or_default() {
            pod = pod.label(k, v);
        }
        manifests.write_objects(&format!("pod-{}.yaml", pod.name()), &[pod.to_value()])?;
    }
    Ok(())
}

/// `n` GETs of `url` by ONE curl process over one connection (no `Connection: close`);
/// returns the bodies and how many connections curl opened.
fn curl_one_connection(
    topo: &Topology,
    url: &str,
    n: usize,
    extra: &[&str],
) -> Result<(Vec<String>, u64)> {
    let mut config = String::new();
    for _ in 0..n {
        let _ = writeln!(config, "url = \"{url}\"");
    }
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-w",
        "~~%{http_code} %{num_connects}\n",
    ];
    argv.extend_from_slice(extra);
    argv.extend(["-K", "-"]);
    let output = topo
        .client()
        .exec_with(&argv, Some(config.as_bytes()), Duration::from_mins(1))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "curl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut bodies = Vec::new();
    let mut connects = 0;
    let mut parts = stdout.split("~~");
    let mut body = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        let (status, rest) = part.split_once('\n').unwrap_or((part, ""));
        let mut fields = status.split_whitespace();
        let code = fields.next().unwrap_or_default();
        ensure!(code == "200", "a request answered {code}: {body}");
        connects += fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        bodies.push(body.trim().to_owned());
        rest.clone_into(&mut body);
    }
    ensure!(
        bodies.len() == n,
        "{} answers for {n} requests",
        bodies.len()
    );
    Ok((bodies, connects))
}

fn check_spread(
    what: &str,
    counts: &BTreeMap<String, usize>,
    total: usize,
    pods: usize,
) -> Result<()> {
    ensure!(counts.len() == pods, "{what}: pods reached: {counts:?}");
    for (pod, n) in counts {
        // 20%..47% of the requests each, as the issue asks for 300 over three.
        ensure!(
            *n * 100 >= total * 20 && *n * 100 <= total * 47,
            "{what}: {pod} got {n} of {total}: {counts:?}"
        );
    }
    Ok(())
}

/// How many times a spread under the default balancer is measured before the test gives
/// up: peak EWMA rightly keeps traffic away from a pod whose last answer was slow until its
/// estimate decays (10 s), and on a shared machine any pod can be descheduled for a while.
/// A balancer that does not spread fails every try.
const LATENCY_AWARE_TRIES: usize = 3;

/// Runs `measure` until the spread it reports (the second of its pair) is right, at most
/// `tries` times; any other error of `measure` ends it at once. The error names every try.
fn spread_within_tries<T>(
    what: &str,
    tries: usize,
    mut measure: impl FnMut() -> Result<(T, Result<()>)>,
) -> Result<T> {
    let mut failures = Vec::new();
    loop {
        let (value, spread) = measure()?;
        match spread {
            Ok(()) => return Ok(value),
            Err(error) => failures.push(format!("{error:#}")),
        }
        ensure!(
            failures.len() < tries,
            "{what}: not spread in {tries} tries: {}",
            failures.join("; ")
        );
    }
}

/// Per pod address: responses of class `code` the backends gave, from the metrics.
fn backend_responses(daemon: &Daemon, service: &str, code: &str) -> Result<BTreeMap<String, f64>> {
    let samples = metrics::parse(&daemon.metrics()?);
    let mut out = BTreeMap::new();
    for s in metrics::samples(&samples, "switchyard_l7_backend_requests_total") {
        if s.label("service") == Some(service) && s.label("code") == Some(code) {
            *out.entry(s.label("backend").unwrap_or_default().to_owned())
                .or_default() += s.value;
        }
    }
    Ok(out)
}

/// 300 requests by h2load on one HTTP/2 connection (ten streams at a time) to `url`: each
/// succeeds, and each of the three pods answers 20%–47% of them (the backends' counts).
fn h2load_spreads(
    topo: &Topology,
    daemon: &Daemon,
    service: &str,
    url: &str,
    extra: &[&str],
) -> Result<()> {
    let counts = h2load_counts(topo, daemon, service, url, extra)?;
    check_spread(&format!("h2load to {url}"), &counts, 300, 3)
}

/// 300 requests by h2load on one HTTP/2 connection (ten streams at a time) to `url`, each
/// of which must succeed: how many each backend answered.
fn h2load_counts(
    topo: &Topology,
    daemon: &Daemon,
    service: &str,
    url: &str,
    extra: &[&str],
) -> Result<BTreeMap<String, usize>> {
    let before = backend_responses(daemon, service, "2xx")?;
    let mut argv = vec!["h2load", "-n", "300", "-c", "1", "-m", "10"];
    argv.extend_from_slice(extra);
    argv.push(url);
    let out = topo
        .client()
        .exec_with(argv, None, Duration::from_mins(1))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("300 succeeded, 0 failed"),
        "h2load did not succeed 300 times:\n{text}"
    );
    ensure!(text.contains("300 2xx"), "h2load status codes:\n{text}");
    let after = backend_responses(daemon, service, "2xx")?;
    Ok(after
        .iter()
        .map(|(b, n)| {
            (
                b.clone(),
                (n - before.get(b).copied().unwrap_or(0.0)) as usize,
            )
        })
        .collect())
}

fn wait_served(topo: &Topology, url: &str, extra: &[&str]) -> Result<()> {
    poll_until(&format!("{url} to be served"), PICKUP, || {
        let code = client::http_code(topo.client(), url, Duration::from_secs(3), extra)?;
        Ok((code == "200").then_some(()))
    })
}

fn requests_of_one_connection_spread_over_every_pod(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_pods(&topo, &manifests, &[])?;
    // The default balancer (peak EWMA) for concurrent requests; round robin for one request
    // at a time, where peak EWMA rightly keeps away from a pod that just answered slowly
    // (until its estimate decays), which on a shared machine can be any of them.
    manifests.write_objects(
        "svc.yaml",
        &[
            l7_service(
                "web-h2",
                "10.96.0.20",
                80,
                "kubernetes.io/h2c",
                ("app", "web"),
                json!({}),
            ),
            l7_service(
                "web-rr",
                "10.96.0.27",
                80,
                "kubernetes.io/h2c",
                ("app", "web"),
                json!({"switchyard.io/l7-balancer": "round-robin"}),
            ),
        ],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let url = "http://10.96.0.27/";
        wait_served(&topo, url, &[])?;
        wait_served(&topo, "http://10.96.0.20/", &[])?;

        // HTTP/1.1 keep-alive: 300 requests, one connection, every pod.
        let (bodies, connects) = curl_one_connection(&topo, url, 300, &[])?;
        ensure!(
            connects == 1,
            "curl opened {connects} connections for 300 keep-alive requests"
        );
        check_spread("HTTP/1.1 keep-alive", &client::tally(&bodies), 300, 3)?;

        // HTTP/2 with prior knowledge, one request per curl: Debian's curl 7.88 cannot reuse
        // an h2c connection (curl/curl#10634, fixed in 8.0), so one connection carrying many
        // requests is h2load's part below.
        let mut bodies = Vec::new();
        for _ in 0..30 {
            let out = client::curl(
                topo.client(),
                &[
                    "-sS",
                    "--http2-prior-knowledge",
                    "--max-time",
                    "5",
                    "-w",
                    "~%{http_version}",
                    url,
                ],
            )?;
            let (body, version) = out.stdout.rsplit_once('~').unwrap_or_default();
            ensure!(version == "2", "curl spoke HTTP/{version}: {}", out.stderr);
            bodies.push(body.trim().to_owned());
        }
        check_spread("HTTP/2", &client::tally(&bodies), 30, 3)?;

        // h2load: one client, one connection, ten streams at a time, the default balancer.
        let url = "http://10.96.0.20/";
        spread_within_tries("h2load, the default balancer", LATENCY_AWARE_TRIES, || {
            let counts = h2load_counts(&topo, &daemon, "default/web-h2:http", url, &[])?;
            Ok((
                (),
                check_spread(&format!("h2load to {url}"), &counts, 300, 3),
            ))
        })?;
        // The request duration histograms count them.
        let samples = metrics::parse(&daemon.metrics()?);
        let timed = metrics::sum(
            &samples,
            "switchyard_l7_request_duration_seconds_count",
            &[("service", "default/web-h2:http")],
        );
        ensure!(timed >= 300.0, "{timed} requests in the duration histogram");
        let under_10s = metrics::sum(
            &samples,
            "switchyard_l7_request_duration_seconds_bucket",
            &[("service", "default/web-h2:http"), ("le", "10")],
        );
        ensure!(
            (under_10s - timed).abs() < 0.5,
            "buckets {under_10s} vs count {timed}"
        );
        Ok(())
    })())
}

fn failing_pods_are_retried_then_ejected(mode: Mode) -> Result<()> {
    // web-0 and web-1 are healthy; web-2 answers 503 to everything; web-3 refuses
    // connections (its server is stopped, its Pod still ready).
    let (mut topo, manifests) = cluster(4)?;
    topo.start_pod_server(2, PodServerConfig::web(2).h2_status(503))?;
    topo.stop_pod_server(3)?;
    write_pods(
        &topo,
        &manifests,
        &[
            &[("a", "y"), ("b", "y")],
            &[("a", "y"), ("b", "y")],
            &[("a", "y")],
            &[("b", "y")],
        ],
    )?;
    manifests.write_objects(
        "svc.yaml",
        &[
            l7_service(
                "unavailable",
                "10.96.0.21",
                80,
                "http",
                ("a", "y"),
                json!({}),
            ),
            l7_service("refused", "10.96.0.22", 80, "http", ("b", "y"), json!({})),
        ],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        for (vip, service) in [
            ("10.96.0.21", "default/unavailable:http"),
            ("10.96.0.22", "default/refused:http"),
        ] {
            let url = format!("http://{vip}/");
            wait_served(&topo, &url, &[])?;
            // Every request succeeds: the failing pod is retried elsewhere, then ejected.
            let results = client::curl_many_results(topo.client(), &url, 60)?;
            let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
            ensure!(
                failed.is_empty(),
                "{service}: the client saw failures: {failed:?}"
            );
            let names = client::tally(
                &results
                    .into_iter()
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>(),
            );
            ensure!(
                names.keys().map(String::as_str).eq(["web-0", "web-1"]),
                "{service}: answers came from {names:?}"
            );
            let samples = metrics::parse(&daemon.metrics()?);
            let retries = metrics::sum(
                &samples,
                "switchyard_l7_retries_total",
                &[("service", service)],
            );
            let ejections = metrics::sum(
                &samples,
                "switchyard_l7_ejections_total",
                &[("service", service)],
            );
            ensure!(retries >= 5.0, "{service}: {retries} retries");
            ensure!(ejections >= 1.0, "{service}: {ejections} ejections");
            let ejected = metrics::sum(
                &samples,
                "switchyard_l7_backend_ejected",
                &[("service", service)],
            );
            ensure!(ejected == 1.0, "{service}: {ejected} backends ejected now");
        }
        Ok(())
    })())
}

const SLOW_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
start = time.time()
head = b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: " + b"a" * 300
for byte in head:
    try:
        s.send(bytes([byte]))
    except OSError:
        print("closed %.2f" % (time.time() - start)); sys.exit(0)
    time.sleep(0.05)
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            print("closed %.2f" % (time.time() - start)); sys.exit(0)
    except BlockingIOError:
        pass
    except OSError:
        print("closed %.2f" % (time.time() - start)); sys.exit(0)
    s.setblocking(True)
print("never closed"); sys.exit(1)
"#;

fn a_slow_request_head_is_cut_off(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(1)?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "slow",
            "10.96.0.23",
            80,
            "http",
            ("app", "web"),
            json!({"switchyard.io/l7-header-timeout": "1s"}),
        )],
    )?;
    let access_log = topo.scratch_dir().join("access.log");
    let config = switchyard_tests::DaemonConfig::for_mode(mode, &topo)?
        .arg("--access-log")
        .arg(&access_log.display().to_string());
    let daemon = topo.start_daemon_with(&manifests, &config)?;
    daemon.with_log((|| {
        wait_served(&topo, "http://10.96.0.23/", &[])?;
        // The access log has a JSON line for the request.
        let line = poll_until("an access log line", PICKUP, || {
            let text = std::fs::read_to_string(&access_log).unwrap_or_default();
            Ok(text
                .lines()
                .find(|l| l.contains("\"status\":200"))
                .map(str::to_owned))
        })?;
        let entry: Value = serde_json::from_str(&line)?;
        ensure!(
            entry["service"] == "default/slow:http",
            "access log: {entry}"
        );
        ensure!(
            entry["method"] == "GET" && entry["path"] == "/",
            "access log: {entry}"
        );
        ensure!(
            entry["backend"]
                .as_str()
                .is_some_and(|b| b.ends_with(":8082")),
            "access log: {entry}"
        );
        let out = client::python(
            topo.client(),
            SLOW_CLIENT,
            &["10.96.0.23", "80"],
            Duration::from_secs(30),
        )?;
        let seconds: f64 = out
            .trim()
            .strip_prefix("closed ")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("slow client: {out}"))?;
        ensure!(
            (0.9..=3.0).contains(&seconds),
            "the slow client was cut after {seconds} s (header timeout 1 s)"
        );
        // A normal client on the same Service is served meanwhile.
        wait_served(&topo, "http://10.96.0.23/", &[])?;
        Ok(())
    })())
}

/// A CA and a certificate for `web.default.svc` signed by it, in PEM.
fn certificate(cn: &str) -> Result<(String, String, String)> {
    certificate_for(cn, "web.default.svc")
}

/// A certificate for `dns` named `cn`, its key, and the test CA that signed it (PEM).
fn certificate_for(cn: &str, dns: &str) -> Result<(String, String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("switchyard test CA {cn}"),
    );
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![dns.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), ca.pem()))
}

fn tls_secret(cert: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "web-tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key},
    })
}

/// The pods' TLS port in the origination test.
const POD_HTTPS_PORT: u16 = 8443;

/// `appProtocol: https`: the proxy speaks TLS to the pods and checks their certificate
/// against the CA of `switchyard.io/upstream-ca-secret` for the name of
/// `switchyard.io/upstream-server-name`; a Service naming another CA gets no answer from
/// them.
fn tls_is_originated_to_pods_that_the_ca_vouches_for(mode: Mode) -> Result<()> {
    let (mut topo, manifests) = cluster(3)?;
    let (cert, key, ca) = certificate_for("pods", "web.pods")?;
    let (_, _, other_ca) = certificate_for("elsewhere", "web.pods")?;
    let dir = topo.scratch_dir();
    let (cert_path, key_path) = (dir.join("pod.crt"), dir.join("pod.key"));
    std::fs::write(&cert_path, &cert)?;
    std::fs::write(&key_path, &key)?;
    for i in 0..3 {
        topo.start_pod_server(
            i,
            PodServerConfig::web(i).https(POD_HTTPS_PORT, &cert_path, &key_path),
        )?;
    }
    write_pods(&topo, &manifests, &[])?;
    let ca_secret = |name: &str, ca: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": &cert, "tls.key": &key, "ca.crt": ca},
        })
    };
    manifests.write_objects(
        "secrets.yaml",
        &[ca_secret("pods-ca", &ca), ca_secret("other-ca", &other_ca)],
    )?;
    let origination = |secret: &str| {
        json!({
            "switchyard.io/upstream-ca-secret": secret,
            "switchyard.io/upstream-server-name": "web.pods",
            "switchyard.io/l7-balancer": "round-robin",
        })
    };
    manifests.write_objects(
        "svc.yaml",
        &[
            l7_service_to(
                "web",
                "10.96.0.25",
                80,
                POD_HTTPS_PORT,
                "https",
                ("app", "web"),
                origination("pods-ca"),
            ),
            l7_service_to(
                "web-untrusted",
                "10.96.0.26",
                80,
                POD_HTTPS_PORT,
                "https",
                ("app", "web"),
                origination("other-ca"),
            ),
        ],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        wait_served(&topo, "http://10.96.0.25/", &[])?;
        let (bodies, _) = curl_one_connection(&topo, "http://10.96.0.25/", 30, &[])?;
        let counts = client::tally(&bodies);
        ensure!(
            counts.len() == 3 && counts.keys().all(|pod| pod.starts_with("web-")),
            "TLS-originated requests by pod: {counts:?}"
        );
        // The pods' certificate is not signed by the other CA: no request reaches them.
        let code = client::http_code(
            topo.client(),
            "http://10.96.0.26/",
            Duration::from_secs(5),
            &[],
        )?;
        ensure!(
            code == "502" || code == "503",
            "a pod the CA does not vouch for answered {code}"
        );
        Ok(())
    })())
}

const TLS_CLIENT: &str = r#"
import os, socket, ssl, sys, time
host, port, ca, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="web.default.svc")
def get():
    s.sendall(b"GET / HTTP/1.1\r\nHost: web.default.svc\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return "connection closed"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
    while len(body) < length:
        body += s.recv(4096)
    pod = body.decode().strip()
    return head.split(b"\r\n")[0].decode() + (" from a pod" if pod.startswith("web-") else " from " + pod)
print("first", get(), flush=True)
deadline = time.time() + 60
while not os.path.exists(flag):
    if time.time() > deadline:
        print("no flag", flush=True); sys.exit(1)
    time.sleep(0.05)
print("second", get(), flush=True)
"#;

fn tls_certificate_rotates_under_an_open_connection(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_pods(&topo, &manifests, &[])?;
    let (cert_a, key_a, ca_a) = certificate("first")?;
    let (cert_b, key_b, ca_b) = certificate("second")?;
    let dir = topo.scratch_dir();
    std::fs::write(dir.join("ca-a.pem"), &ca_a)?;
    std::fs::write(dir.join("ca-b.pem"), &ca_b)?;
    manifests.write_objects("secret.yaml", &[tls_secret(&cert_a, &key_a)])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "web",
            "10.96.0.24",
            443,
            "http",
            ("app", "web"),
            json!({"switchyard.io/tls-secret": "web-tls"}),
        )],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let ca_a_path = dir.join("ca-a.pem").display().to_string();
        let ca_b_path = dir.join("ca-b.pem").display().to_string();
        let url = "https://web.default.svc/";
        let resolve = "web.default.svc:443:10.96.0.24";
        wait_served(&topo, url, &["--cacert", &ca_a_path, "--resolve", resolve])?;

        // A client that keeps its TLS connection open across the rotation.
        let flag = dir.join("rotated");
        let log = dir.join("tls-client.log");
        let mut python = topo.client().spawn(
            [
                "python3",
                "-c",
                TLS_CLIENT,
                "10.96.0.24",
                "443",
                ca_a_path.as_str(),
                &flag.display().to_string(),
            ],
            &log,
        )?;
        python.wait_for_line("first HTTP/1.1 200 OK from a pod", Duration::from_secs(10))?;

        manifests.write_objects("secret.yaml", &[tls_secret(&cert_b, &key_b)])?;
        // New connections get the new certificate...
        wait_served(&topo, url, &["--cacert", &ca_b_path, "--resolve", resolve])?;
        let old = client::curl(
            topo.client(),
            &[
                "-sS",
                "--max-time",
                "3",
                "--cacert",
                &ca_a_path,
                "--resolve",
                resolve,
                url,
            ],
        )?;
        ensure!(
            !old.status.success(),
            "a new connection still got the old certificate"
        );
        // ...and the open one goes on.
        std::fs::write(&flag, b"")?;
        python.wait_for_line("second HTTP/1.1 200 OK from a pod", Duration::from_secs(10))?;
        if python.wait_timeout(Duration::from_secs(5))?.is_none() {
            bail!("the TLS client did not exit: {}", python.log());
        }
        Ok(())
    })())
}

/// Starts `argv` (a tool of this crate, then its arguments) in every pod, each named after
/// its pod; waits until each printed `ready`.
fn start_in_pods(
    topo: &Topology,
    tool: &str,
    args: &[&str],
) -> Result<Vec<switchyard_tests::netns::Process>> {
    let bin = test_bin(tool)?.display().to_string();
    let mut out = Vec::new();
    for index in 0..topo.pods().len() {
        let name = format!("web-{index}");
        let mut argv = vec![bin.as_str(), "server", "--name", name.as_str()];
        argv.extend_from_slice(args);
        let log = topo.scratch_dir().join(format!("{tool}-{index}.log"));
        let mut process = topo.pod(index).ns().spawn(&argv, &log)?;
        process.wait_for_line("ready", Duration::from_secs(10))?;
        out.push(process);
    }
    Ok(out)
}

fn grpc_calls_of_one_channel_spread_over_every_pod(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    let _servers = start_in_pods(&topo, "grpc-echo", &["--listen", "0.0.0.0:9090"])?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[
            l7_service_to(
                "echo",
                "10.96.0.25",
                9090,
                9090,
                "grpc",
                ("app", "web"),
                json!({}),
            ),
            l7_service_to(
                "echo-rr",
                "10.96.0.28",
                9090,
                9090,
                "grpc",
                ("app", "web"),
                json!({"switchyard.io/l7-balancer": "round-robin"}),
            ),
        ],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let bin = test_bin("grpc-echo")?.display().to_string();
        let run = |target: &str, requests: &str, concurrency: &str| -> Result<Value> {
            let out = topo.client().exec_with(
                [
                    bin.as_str(),
                    "client",
                    "--target",
                    target,
                    "--requests",
                    requests,
                    "--concurrency",
                    concurrency,
                    "--stream",
                    "30",
                ],
                None,
                Duration::from_mins(2),
            )?;
            ensure!(
                out.status.success(),
                "grpc-echo client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(serde_json::from_slice(&out.stdout)?)
        };
        // The channel may come up before the first sync reached the datapath: wait for it.
        poll_until("the gRPC Service to answer", PICKUP, || {
            let ready = ["http://10.96.0.25:9090", "http://10.96.0.28:9090"]
                .iter()
                .all(|t| run(t, "1", "1").is_ok_and(|v| v["ok"] == 1));
            Ok(ready.then_some(()))
        })?;
        // One HTTP/2 connection: ten calls in flight with the default balancer, then one call
        // at a time with round robin; both spread over every pod.
        for (target, concurrency) in [
            ("http://10.96.0.25:9090", "10"),
            ("http://10.96.0.28:9090", "1"),
        ] {
            // Round robin spreads at once; the default balancer may need another try.
            let tries = if concurrency == "1" {
                1
            } else {
                LATENCY_AWARE_TRIES
            };
            let what = format!("gRPC, {concurrency} in flight");
            let result = spread_within_tries(&what, tries, || {
                let result = run(target, "300", concurrency)?;
                ensure!(
                    result["ok"] == 300,
                    "gRPC calls failed (concurrency {concurrency}): {result}"
                );
                let counts: BTreeMap<String, usize> = result["pods"]
                    .as_object()
                    .context("pods")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as usize))
                    .collect();
                let spread = check_spread(&what, &counts, 300, 3);
                Ok((result, spread))
            })?;
            // A server stream stays on one pod and arrives whole.
            ensure!(
                result["stream"]["received"] == 30,
                "stream: {}",
                result["stream"]
            );
            ensure!(
                result["stream"]["pods"]
                    .as_object()
                    .is_some_and(|p| p.len() == 1),
                "one stream, one pod: {}",
                result["stream"]
            );
        }
        Ok(())
    })())
}

fn websocket_upgrades_are_tunnelled(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    let _servers = start_in_pods(&topo, "ws-tool", &["--listen", "0.0.0.0:9091"])?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service_to(
            "ws",
            "10.96.0.26",
            80,
            9091,
            "http",
            ("app", "web"),
            json!({}),
        )],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let bin = test_bin("ws-tool")?.display().to_string();
        let answers = poll_until("the WebSocket Service to answer", PICKUP, || {
            let out = topo.client().exec_with(
                [
                    bin.as_str(),
                    "client",
                    "--url",
                    "ws://10.96.0.26/chat",
                    "--messages",
                    "5",
                ],
                None,
                Duration::from_secs(30),
            )?;
            if !out.status.success() {
                return Ok(None);
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            Ok(Some(v["answers"].clone()))
        })?;
        let answers: Vec<String> = answers
            .as_array()
            .context("answers")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        ensure!(answers.len() == 5, "answers: {answers:?}");
        // One connection, one pod: every message of the tunnel reaches the same one.
        let pod = answers[0].split(':').next().unwrap_or_default().to_owned();
        ensure!(pod.starts_with("web-"), "answers: {answers:?}");
        for (i, a) in answers.iter().enumerate() {
            ensure!(
                *a == format!("{pod}:m{i}"),
                "answer {i}: {a:?} ({answers:?})"
            );
        }
        Ok(())
    })())
}

fn at_shutdown_http2_clients_get_goaway_and_requests_in_flight_finish(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "web-h2",
            "10.96.0.29",
            80,
            "kubernetes.io/h2c",
            ("app", "web"),
            json!({}),
        )],
    )?;
    let mut daemon = topo.start_daemon_mode(&manifests, mode)?;
    let result = (|| {
        wait_served(&topo, "http://10.96.0.29/", &[])?;
        // A request that takes 1.5 s, on an HTTP/2 connection (nghttp prints every frame).
        let log = topo.scratch_dir().join("nghttp.log");
        let mut client = topo
            .client()
            .spawn(["nghttp", "-nv", "http://10.96.0.29/slow/1500"], &log)?;
        poll_until("the slow request to be in flight", PICKUP, || {
            let samples = metrics::parse(&daemon.metrics()?);
            let in_flight = metrics::sum(
                &samples,
                "switchyard_l7_backend_requests_in_flight",
                &[("service", "default/web-h2:http")],
            );
            Ok((in_flight >= 1.0).then_some(()))
        })?;
        let status = daemon.terminate(Duration::from_secs(15))?;
        ensure!(
            status.success(),
            "switchyard exited with {status} after SIGTERM"
        );
        if client.wait_timeout(Duration::from_secs(10))?.is_none() {
            bail!("nghttp did not finish: {}", client.log());
        }
        let out = client.log();
        ensure!(
            out.contains("recv GOAWAY frame"),
            "no GOAWAY reached the client:\n{out}"
        );
        ensure!(
            out.contains(":status: 200"),
            "the request in flight did not finish:\n{out}"
        );
        Ok(())
    })();
    daemon.with_log(result)
}

/// Requests in flight on the backend at `ip`, from the metrics.
fn in_flight_on(daemon: &Daemon, service: &str, ip: &str) -> Result<f64> {
    let samples = metrics::parse(&daemon.metrics()?);
    Ok(
        metrics::samples(&samples, "switchyard_l7_backend_requests_in_flight")
            .into_iter()
            .filter(|s| {
                s.label("service") == Some(service)
                    && s.label("backend")
                        .is_some_and(|b| b.starts_with(&format!("{ip}:")))
            })
            .map(|s| s.value)
            .sum(),
    )
}

fn a_terminating_pod_gets_no_new_requests_and_finishes_the_one_in_flight(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(2)?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "drain",
            "10.96.0.30",
            80,
            "kubernetes.io/h2c",
            ("app", "web"),
            json!({"switchyard.io/l7-balancer": "round-robin"}),
        )],
    )?;
    let service = "default/drain:http";
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        wait_served(&topo, "http://10.96.0.30/", &[])?;
        // A request that takes 4 s, on an HTTP/2 connection.
        let log = topo.scratch_dir().join("nghttp.log");
        let mut slow = topo
            .client()
            .spawn(["nghttp", "-nv", "http://10.96.0.30/slow/4000"], &log)?;
        let busy = poll_until("the slow request to be in flight", PICKUP, || {
            for i in 0..2 {
                let ip = topo.pods()[i].ipv4().to_string();
                if in_flight_on(&daemon, service, &ip)? >= 1.0 {
                    return Ok(Some(i));
                }
            }
            Ok(None)
        })?;
        let busy_name = format!("web-{busy}");
        let other_name = format!("web-{}", 1 - busy);
        // Its pod starts terminating (deletionTimestamp set, still running).
        let pod = Pod::web(&topo, busy).terminating(true);
        manifests.write_objects(&format!("pod-{}.yaml", pod.name()), &[pod.to_value()])?;
        // New requests soon go only to the other pod ...
        poll_until("the terminating pod to get no new requests", PICKUP, || {
            let names = client::curl_many(topo.client(), "http://10.96.0.30/", 10)?;
            Ok(names.iter().all(|n| *n == other_name).then_some(()))
        })?;
        let names = client::curl_many(topo.client(), "http://10.96.0.30/", 20)?;
        ensure!(
            names.iter().all(|n| *n == other_name),
            "{busy_name} is terminating, yet answered: {names:?}"
        );
        // ... while the one in flight on it finishes there, unretried.
        if slow.wait_timeout(Duration::from_secs(15))?.is_none() {
            bail!("nghttp did not finish: {}", slow.log());
        }
        let out = slow.log();
        ensure!(
            out.contains(":status: 200") && out.contains(&format!("x-pod: {busy_name}")),
            "the request in flight on {busy_name} did not finish there:\n{out}"
        );
        ensure!(
            in_flight_on(&daemon, service, &topo.pods()[busy].ipv4().to_string())? == 0.0,
            "requests still in flight on {busy_name}"
        );
        Ok(())
    })())
}

fn the_retry_budget_caps_retries(mode: Mode) -> Result<()> {
    // web-1 answers 503 to everything and is never ejected: only the budget (20% of the
    // requests, no per-second allowance) limits the retries it causes.
    let (mut topo, manifests) = cluster(2)?;
    topo.start_pod_server(1, PodServerConfig::web(1).h2_status(503))?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "budget",
            "10.96.0.31",
            80,
            "http",
            ("app", "web"),
            json!({
                "switchyard.io/l7-balancer": "round-robin",
                "switchyard.io/l7-outlier-failures": "0",
                "switchyard.io/l7-retry-budget-percent": "20",
                "switchyard.io/l7-retry-min-per-second": "0",
            }),
        )],
    )?;
    let service = "default/budget:http";
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let url = "http://10.96.0.31/";
        poll_until("the Service to be served", PICKUP, || {
            let code = client::http_code(topo.client(), url, Duration::from_secs(3), &[])?;
            Ok(matches!(code.as_str(), "200" | "503").then_some(()))
        })?;
        // Retries already granted: let the budget's 10 s window pass them by.
        std::thread::sleep(Duration::from_secs(11));
        let before = metrics::parse(&daemon.metrics()?);
        let count = |samples: &[metrics::Sample], name: &str| {
            metrics::sum(samples, name, &[("service", service)])
        };
        let requests_before = count(&before, "switchyard_l7_requests_total");
        let retries_before = count(&before, "switchyard_l7_retries_total");
        let denied_before = count(&before, "switchyard_l7_retries_budget_exhausted_total");
        let n = 100;
        let results = client::curl_many_results(topo.client(), url, n)?;
        let after = metrics::parse(&daemon.metrics()?);
        let requests = count(&after, "switchyard_l7_requests_total") - requests_before;
        let retries = count(&after, "switchyard_l7_retries_total") - retries_before;
        let denied = count(&after, "switchyard_l7_retries_budget_exhausted_total") - denied_before;
        let failed = results.iter().filter(|r| r.is_err()).count();
        let answered = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .cloned()
            .collect::<Vec<_>>();
        ensure!(
            (requests - n as f64).abs() < 0.5,
            "{requests} requests counted for {n} sent"
        );
        // Half the requests meet web-1 first; the budget grants retries to at most 20% of
        // the requests and denies the rest, whose 503 then reaches the client.
        ensure!(
            retries <= 0.2 * requests,
            "{retries} retries for {requests} requests: over the 20% budget"
        );
        ensure!(
            retries >= 10.0,
            "only {retries} retries: the budget went unused"
        );
        ensure!(denied >= 10.0, "only {denied} retries denied");
        ensure!(
            (failed as f64 - denied).abs() < 0.5,
            "{failed} requests failed at the client, {denied} retries were denied"
        );
        ensure!(
            answered.iter().all(|n| n == "web-0"),
            "successes came from {:?}",
            client::tally(&answered)
        );
        Ok(())
    })())
}

fn active_health_checks_take_a_failing_pod_out_and_bring_it_back(mode: Mode) -> Result<()> {
    // web-2 answers 503 to everything, its health check path included. No retries and no
    // ejections: only the health checks keep requests away from it.
    let (mut topo, manifests) = cluster(3)?;
    topo.start_pod_server(2, PodServerConfig::web(2).h2_status(503))?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "checked",
            "10.96.0.32",
            80,
            "http",
            ("app", "web"),
            json!({
                "switchyard.io/l7-balancer": "round-robin",
                "switchyard.io/l7-retries": "0",
                "switchyard.io/l7-outlier-failures": "0",
                "switchyard.io/l7-health-check-path": "/healthz",
                "switchyard.io/l7-health-check-interval": "500ms",
            }),
        )],
    )?;
    let service = "default/checked:http";
    let url = "http://10.96.0.32/";
    let web2 = format!("{}:{POD_H2_PORT}", topo.pods()[2].ipv4());
    // The health verdict for web-2, `None` until the daemon reports one.
    let healthy = |daemon: &Daemon| -> Result<Option<f64>> {
        let samples = metrics::parse(&daemon.metrics()?);
        Ok(metrics::samples(&samples, "switchyard_l7_backend_healthy")
            .into_iter()
            .find(|s| s.label("service") == Some(service) && s.label("backend") == Some(&web2))
            .map(|s| s.value))
    };
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    let result = (|| {
        poll_until("web-2 to fail its health checks", PICKUP, || {
            Ok((healthy(&daemon)? == Some(0.0)).then_some(()))
        })?;
        let results = client::curl_many_results(topo.client(), url, 30)?;
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        ensure!(failed.is_empty(), "requests failed: {failed:?}");
        let names: Vec<String> = results.into_iter().filter_map(Result::ok).collect();
        ensure!(
            client::tally(&names)
                .keys()
                .map(String::as_str)
                .eq(["web-0", "web-1"]),
            "answers while web-2 is unhealthy: {:?}",
            client::tally(&names)
        );
        // web-2 recovers: its checks pass again and it gets its share.
        topo.stop_pod_server(2)?;
        topo.start_pod_server(2, PodServerConfig::web(2))?;
        poll_until("web-2 to pass its health checks", PICKUP, || {
            Ok((healthy(&daemon)? == Some(1.0)).then_some(()))
        })?;
        let names = client::curl_many(topo.client(), url, 30)?;
        let counts = client::tally(&names);
        ensure!(
            counts.get("web-2").copied().unwrap_or(0) >= 5,
            "web-2 passes its checks again, yet the answers were {counts:?}"
        );
        Ok(())
    })();
    daemon.with_log(result)
}

fn oversized_requests_get_413_and_431(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(1)?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "limits",
            "10.96.0.33",
            80,
            "kubernetes.io/h2c",
            ("app", "web"),
            json!({
                "switchyard.io/l7-max-body-bytes": "1000",
                "switchyard.io/l7-max-header-bytes": "16384",
            }),
        )],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let url = "http://10.96.0.33/";
        wait_served(&topo, url, &[])?;
        let code =
            |extra: &[&str]| client::http_code(topo.client(), url, Duration::from_secs(5), extra);
        let body_ok = "b".repeat(900);
        let body_big = "b".repeat(5000);
        let header_ok = format!("X-Big: {}", "h".repeat(8000));
        let header_big = format!("X-Big: {}", "h".repeat(20_000));
        for (what, extra, want) in [
            ("a 900-byte body", vec!["--data", &body_ok], "200"),
            ("a 5000-byte body", vec!["--data", &body_big], "413"),
            ("an 8 KB header", vec!["-H", &header_ok], "200"),
            ("a 20 KB header", vec!["-H", &header_big], "431"),
        ] {
            let got = code(&extra)?;
            ensure!(got == want, "HTTP/1.1 with {what}: {got}, expected {want}");
        }
        // HTTP/2: the body limit answers 413 too; an oversized header block is refused
        // (hyper resets the stream or answers 431), never passed on.
        let h2 = "--http2-prior-knowledge";
        for (what, extra, want) in [
            (
                "a 900-byte body",
                vec![h2, "--data", &body_ok],
                &["200"][..],
            ),
            (
                "a 5000-byte body",
                vec![h2, "--data", &body_big],
                &["413"][..],
            ),
            (
                "a 20 KB header",
                vec![h2, "-H", &header_big],
                &["431", "000"][..],
            ),
        ] {
            let got = code(&extra)?;
            ensure!(
                want.contains(&got.as_str()),
                "HTTP/2 with {what}: {got}, expected one of {want:?}"
            );
        }
        // The Service still serves after all that.
        wait_served(&topo, url, &[h2])?;
        Ok(())
    })())
}

fn a_header_hash_keeps_each_key_on_one_pod(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_pods(&topo, &manifests, &[])?;
    manifests.write_objects(
        "svc.yaml",
        &[l7_service(
            "sticky",
            "10.96.0.34",
            80,
            "http",
            ("app", "web"),
            json!({"switchyard.io/l7-balancer": "header:x-user"}),
        )],
    )?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let url = "http://10.96.0.34/";
        wait_served(&topo, url, &[])?;
        let mut pods_of_keys = BTreeMap::new();
        for key in 0..24 {
            let header = format!("X-User: user-{key}");
            // Five requests on one connection: each is balanced anew, by its header.
            let (names, _) = curl_one_connection(&topo, url, 5, &["-H", &header])?;
            let counts = client::tally(&names);
            ensure!(
                counts.len() == 1,
                "user-{key} reached more than one pod: {counts:?}"
            );
            let pod = counts.into_keys().next().unwrap_or_default();
            *pods_of_keys.entry(pod).or_insert(0) += 1;
        }
        ensure!(
            pods_of_keys.len() == 3,
            "24 keys hashed onto {pods_of_keys:?}: not over all three pods"
        );
        Ok(())
    })())
}

fn an_ipv6_cluster_ip_is_balanced_per_request(mode: Mode) -> Result<()> {
    let (topo, manifests) = cluster(3)?;
    write_pods(&topo, &manifests, &[])?;
    let mut service = l7_service(
        "web6",
        "10.96.0.35",
        80,
        "kubernetes.io/h2c",
        ("app", "web"),
        json!({"switchyard.io/l7-balancer": "round-robin"}),
    );
    service["spec"]["clusterIPs"] = json!(["10.96.0.35", "fd00:96::35"]);
    service["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    service["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    manifests.write_objects("svc.yaml", &[service])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let url = "http://[fd00:96::35]/";
        let h2 = ["--http2-prior-knowledge"];
        wait_served(&topo, url, &h2)?;
        // The requests of one HTTP/2 connection spread over the pods (h2load: Debian's curl
        // cannot reuse an h2c connection, see above). h2load 1.52 would send the address
        // without its brackets as `:authority`, which hyper (pods and proxy alike) refuses.
        h2load_spreads(
            &topo,
            &daemon,
            "default/web6:http",
            url,
            &["-H", ":authority: web6.default.svc"],
        )?;
        // The pods see the client's IPv6 address in the forwarding headers, and the proxy
        // reaching them over IPv6.
        let headers = client::curl_once(topo.client(), "http://[fd00:96::35]/headers")?;
        let client6 = CLIENT_IP6.to_string();
        ensure!(
            headers.contains(&format!("x-forwarded-for: {client6}"))
                && headers.contains(&format!("forwarded: for=\"[{client6}]\"")),
            "forwarding headers for an IPv6 client:\n{headers}"
        );
        let peer = client::curl_once(topo.client(), "http://[fd00:96::35]/peer")?;
        ensure!(
            peer.starts_with("[fd00:244::"),
            "the pod was reached from {peer}, not over IPv6"
        );
        Ok(())
    })())
}

fn a_node_port_is_balanced_per_request(mode: Mode) -> Result<()> {
    // In eBPF mode the tc programs leave an L7 NodePort to the proxy, which listens on the
    // node's address and port; in userspace mode it always did.
    let (topo, manifests) = cluster(3)?;
    write_pods(&topo, &manifests, &[])?;
    let mut service = l7_service(
        "web-np",
        "10.96.0.40",
        80,
        "kubernetes.io/h2c",
        ("app", "web"),
        json!({"switchyard.io/l7-balancer": "round-robin"}),
    );
    service["spec"]["type"] = json!("NodePort");
    service["spec"]["ports"][0]["nodePort"] = json!(30090);
    manifests.write_objects("svc.yaml", &[service])?;
    let daemon = topo.start_daemon_mode(&manifests, mode)?;
    daemon.with_log((|| {
        let node_port = format!("http://{NODE_IP4}:30090/");
        wait_served(&topo, &node_port, &[])?;
        // One HTTP/2 connection to the NodePort: its requests spread over the three pods,
        // as the backends' request counters show (an L4 NodePort would count none).
        h2load_spreads(&topo, &daemon, "default/web-np:http", &node_port, &[])?;
        // The ClusterIP of the same port still is, too.
        h2load_spreads(
            &topo,
            &daemon,
            "default/web-np:http",
            "http://10.96.0.40/",
            &[],
        )
    })())
}
