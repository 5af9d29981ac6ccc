//! Real clients run inside a namespace: `curl` for HTTP, `python3` for UDP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// What one `curl` run did.
#[derive(Debug)]
pub struct CurlOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its exit code (`7`: could not connect; `28`: timed out).
    pub code: Option<i32>,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `curl ARGS...` in `ns` (killed after 60 s) and reports how it went,
/// whatever its exit status.
pub fn curl(ns: &Netns, args: &[&str]) -> Result<CurlOutput> {
    let start = Instant::now();
    let mut argv = vec!["curl"];
    argv.extend_from_slice(args);
    let output = ns.exec_with(&argv, None, Duration::from_mins(1))?;
    Ok(CurlOutput {
        status: output.status,
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}

/// The status code of one request for `url` from `ns` by curl, with `extra` options before
/// the URL: `000` when no answer came within `max_time`.
pub fn http_code(ns: &Netns, url: &str, max_time: Duration, extra: &[&str]) -> Result<String> {
    let max_time = format!("{}", max_time.as_secs_f64());
    let mut argv = vec![
        "-sS",
        "--max-time",
        &max_time,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    argv.extend_from_slice(extra);
    argv.push(url);
    Ok(curl(ns, &argv)?.stdout.trim().to_owned())
}

/// One HTTP GET of `url` from `ns` on a fresh connection; returns the body
/// without its trailing newline (for a pod server: the pod's name). Fails
/// unless curl succeeds with status 200.
pub fn curl_once(ns: &Netns, url: &str) -> Result<String> {
    let mut names = curl_many(ns, url, 1)?;
    Ok(names.remove(0))
}

/// `n` HTTP GETs of `url` from `ns` in ONE curl process, each on a new
/// connection (`Connection: close`), so each is balanced anew. Returns the
/// bodies (pod names) in order; fails, saying what went wrong, unless every
/// request got a 200. Stops at the first failure, so a broken Service fails
/// in seconds rather than after `n` connect timeouts.
pub fn curl_many(ns: &Netns, url: &str, n: usize) -> Result<Vec<String>> {
    let results = run_curl_many(ns, url, n, true)?;
    if let Some(Err(error)) = results.last() {
        bail!(
            "request {} of {n} to {url} failed ({error}) after {} succeeded",
            results.len(),
            results.len() - 1
        );
    }
    Ok(results.into_iter().filter_map(Result::ok).collect())
}

/// Like [`curl_many`], but makes all `n` requests whatever happens and
/// reports each: `Ok(body)` for a 200, else `Err("curl exit E, HTTP H")`.
pub fn curl_many_results(ns: &Netns, url: &str, n: usize) -> Result<Vec<Result<String, String>>> {
    run_curl_many(ns, url, n, false)
}

/// With `fail_early`, curl stops at the first failed request, so fewer than
/// `n` results may come back (the last one then an error).
fn run_curl_many(
    ns: &Netns,
    url: &str,
    n: usize,
    fail_early: bool,
) -> Result<Vec<Result<String, String>>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // URLs go through a config file on stdin: no command-line length limit.
    let mut config = String::new();
    for _ in 0..n {
        let _ = writeln!(config, "url = \"{url}\"");
    }
    let mut argv = vec![
        "curl",
        "-sS",
        "--connect-timeout",
        "3",
        "--max-time",
        "5",
        "-H",
        "Connection: close",
        // Not `@...`: a leading `@` makes curl read the format from a file.
        "-w",
        "~~%{exitcode} %{http_code}\n",
        "-K",
        "-",
    ];
    if fail_early {
        argv.push("--fail-early");
    }
    let timeout = Duration::from_secs(10 + 5 * n as u64);
    let output = ns.exec_with(argv, Some(config.as_bytes()), timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut parts = stdout.split("~~");
    let mut body = parts.next().unwrap_or_default().to_owned();
    let mut results = Vec::with_capacity(n);
    for part in parts {
        let (status, rest) = part.split_once('\n').unwrap_or((part, ""));
        let mut fields = status.split_whitespace();
        let exit: i32 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(-1);
        let http: u16 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        results.push(if exit == 0 && http == 200 {
            Ok(body.trim_end_matches('\n').to_owned())
        } else {
            Err(format!("curl exit {exit}, HTTP {http}"))
        });
        rest.clone_into(&mut body);
    }
    let stopped_early = fail_early && results.last().is_some_and(Result::is_err);
    if results.len() != n && !stopped_early {
        bail!(
            "curl reported {} transfers, expected {n} ({}); stderr: {}",
            results.len(),
            output.status,
            stderr.trim()
        );
    }
    Ok(results)
}

/// How many times each name occurs.
pub fn tally<S: AsRef<str>>(names: &[S]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.as_ref().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// A UDP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpReply {
    /// Where it came from (for a Service: its VIP and port).
    pub from: SocketAddr,
    /// Its payload, as text.
    pub payload: String,
}

impl UdpReply {
    /// For a pod server's echo (`NAME payload`): the pod's name.
    pub fn pod(&self) -> &str {
        self.payload.split(' ').next().unwrap_or_default()
    }
}

const UDP_CLIENT: &str = r#"
import socket, sys
host, port, count, payload, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode(), float(sys.argv[5])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for _ in range(count):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(payload, (host, port))
        data, peer = s.recvfrom(65535)
        text = data.decode("utf-8", "replace").replace("\\", "\\\\").replace("\n", "\\n")
        print("ok", peer[0], peer[1], text, flush=True)
    except Exception as e:
        print("err", type(e).__name__, str(e).replace("\n", " "), flush=True)
    finally:
        s.close()
"#;

/// Sends `payload` to `target` from `ns` in one datagram and waits up to
/// 2 s for the reply.
pub fn udp_request(ns: &Netns, target: SocketAddr, payload: &str) -> Result<UdpReply> {
    udp_requests(ns, target, payload, 1)?
        .remove(0)
        .map_err(|error| anyhow::anyhow!("UDP {target}: {error}"))
}

/// `n` UDP exchanges with `target` from `ns`, in one `python3` process,
/// each from a fresh socket (so a fresh source port); each waits up to 2 s
/// for its reply. Returns each reply, or the error (`timeout ...`).
pub fn udp_requests(
    ns: &Netns,
    target: SocketAddr,
    payload: &str,
    n: usize,
) -> Result<Vec<Result<UdpReply, String>>> {
    let host = target.ip().to_string();
    let port = target.port().to_string();
    let count = n.to_string();
    let output = ns.exec_with(
        [
            "python3", "-c", UDP_CLIENT, &host, &port, &count, payload, "2",
        ],
        None,
        Duration::from_secs(10 + 3 * n as u64),
    )?;
    if !output.status.success() {
        bail!(
            "python3 UDP client failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut results = Vec::with_capacity(n);
    for line in stdout.lines() {
        let mut fields = line.splitn(4, ' ');
        match fields.next() {
            Some("ok") => {
                let ip = fields.next().context("no peer address")?;
                let port = fields.next().context("no peer port")?;
                let text = fields.next().unwrap_or_default();
                let ip: std::net::IpAddr = ip
                    .split('%')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("bad peer address in {line:?}"))?;
                let payload = text.replace("\\n", "\n").replace("\\\\", "\\");
                results.push(Ok(UdpReply {
                    from: SocketAddr::new(ip, port.parse()?),
                    payload,
                }));
            }
            Some("err") => results.push(Err(line[4..].to_owned())),
            _ => bail!("unexpected line from the UDP client: {line:?}"),
        }
    }
    if results.len() != n {
        bail!(
            "UDP client reported {} exchanges, expected {n}: {stdout}",
            results.len()
        );
    }
    Ok(results)
}

/// Runs the Python program `script` with `args` in `ns` (killed after
/// `timeout`) and returns its stdout; fails, with its stderr, unless it
/// exits 0.
pub fn python(ns: &Netns, script: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut argv = vec!["python3", "-c", script];
    argv.extend_from_slice(args);
    let output = ns.exec_with(&argv, None, timeout)?;
    if !output.status.success() {
        bail!(
            "python3 failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Python program that opens a new TCP connection to `host:port` every `pause` seconds
/// for `duration` seconds, one `GET /` each, and prints `ok TIME POD` or `error TIME ERROR`
/// per connection (`TIME` in seconds since the epoch). Arguments: `host port duration
/// pause [stop_file]`; with `stop_file` it also stops as soon as that file exists, so a test
/// can run it for as long as a sequence of unknown length takes. Parse its output with
/// [`parse_connect_loop`].
pub const CONNECT_LOOP_CLIENT: &str = r#"
import os, socket, sys, time
host, port, duration, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
stop = sys.argv[5] if len(sys.argv) > 5 else None
end = time.monotonic() + duration
while time.monotonic() < end and not (stop and os.path.exists(stop)):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.settimeout(2)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError("answer %r" % head[:40])
        print("ok", time.time(), body.decode().strip(), flush=True)
    except OSError as e:
        print("error", time.time(), type(e).__name__, str(e).replace("\n", " "), flush=True)
    time.sleep(pause)
"#;

/// One connection [`CONNECT_LOOP_CLIENT`] made.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectAttempt {
    /// Whether it got a `200`.
    pub ok: bool,
    /// When it ended, in seconds since the epoch.
    pub at: f64,
    /// The pod that answered, or the error.
    pub detail: String,
}

/// The connections in [`CONNECT_LOOP_CLIENT`]'s output, in order (lines it did not finish
/// writing are skipped).
pub fn parse_connect_loop(output: &str) -> Vec<ConnectAttempt> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            let ok = fields.next()? == "ok";
            let at = fields.next()?.parse().ok()?;
            Some(ConnectAttempt {
                ok,
                at,
                detail: fields.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}
