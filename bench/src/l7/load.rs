//! The two loads, run by real HTTP benchmarking tools in the client
//! namespace: `wrk` for HTTP/1.1 keep-alive and `h2load` for HTTP/2 over
//! cleartext with prior knowledge, and the parsing of what they print.
//!
//! Both are closed loops with a fixed number of requests in flight (the same
//! number, by default, for both tools), so a faster proxy shows as more
//! requests per second and a lower latency at once.
//!
//! `wrk` prints percentiles only as rounded text; a small Lua script's
//! `done` hook prints them exactly, with the error counts, as one JSON line
//! (a script with no `request`/`response` hooks keeps wrk's fast path).
//! `h2load` prints no percentiles at all: it writes every request's latency
//! to `--log-file`, and the percentiles are computed from that.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::Netns;

/// Which protocol the client speaks to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// HTTP/1.1 with keep-alive, by `wrk`.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, by `h2load`.
    H2c,
}

impl Scenario {
    /// Both, in the order of a round.
    pub const ALL: [Scenario; 2] = [Scenario::Http1, Scenario::H2c];

    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
        }
    }

    /// The tool that drives it.
    pub fn tool(self) -> &'static str {
        match self {
            Self::Http1 => "wrk",
            Self::H2c => "h2load",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How hard the tools push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadShape {
    /// `wrk -c`: kept-alive HTTP/1.1 connections, one request in flight each.
    pub wrk_connections: usize,
    /// `h2load -c`: HTTP/2 connections.
    pub h2_connections: usize,
    /// `h2load -m`: streams in flight per HTTP/2 connection.
    pub h2_streams: usize,
    /// The CPU both tools run on (`taskset`), one thread each (`-t 1`).
    pub cpu: usize,
    /// `wrk --timeout`: a request without an answer for this long counts as
    /// a timeout.
    pub timeout: Duration,
}

/// Latency percentiles of the requests of one run, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest request.
    pub max_us: f64,
    /// The mean.
    pub mean_us: f64,
}

/// What one run of a tool measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadResult {
    /// `wrk` or `h2load`.
    pub tool: String,
    /// The window the tool measured, seconds.
    pub duration_s: f64,
    /// Responses with a 2xx status inside the window.
    pub ok: u64,
    /// `ok` per second: the figure the tables show.
    pub ok_per_s: f64,
    /// What the tool itself reports as requests per second (all
    /// responses, whatever their status).
    pub tool_rps: f64,
    /// Requests that failed, summed over `error_kinds`.
    pub errors: u64,
    /// Failures by kind (`connect`, `read`, `timeout`, `status`, ...), only
    /// the kinds that occurred.
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency of the requests of the window.
    pub latency: Latency,
}

/// The Lua script given to `wrk -s`: prints one line `L7RESULT {json}`.
pub const WRK_SCRIPT: &str = r#"-- Written by switchyard-bench (l7): exact percentiles and error counts.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'L7RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"#;

const WRK_MARKER: &str = "L7RESULT ";

/// Runs one load against `target` from `client` for `duration` (whole
/// seconds for `wrk`) and returns what it measured. `scratch` holds the
/// wrk script and, for the time of the run, h2load's request log.
pub fn run(
    client: &Netns,
    scenario: Scenario,
    shape: &LoadShape,
    target: SocketAddr,
    duration: Duration,
    scratch: &Path,
) -> Result<LoadResult> {
    let url = format!("http://{target}/");
    let cpu = shape.cpu.to_string();
    match scenario {
        Scenario::Http1 => {
            let script = scratch.join("l7-wrk.lua");
            if !script.is_file() {
                std::fs::write(&script, WRK_SCRIPT)
                    .with_context(|| format!("write {}", script.display()))?;
            }
            let argv: Vec<String> = vec![
                "taskset".into(),
                "-c".into(),
                cpu,
                "wrk".into(),
                "-t1".into(),
                format!("-c{}", shape.wrk_connections),
                format!("-d{}s", whole_seconds(duration)),
                "--latency".into(),
                "--timeout".into(),
                format!("{}s", whole_seconds(shape.timeout)),
                "-s".into(),
                script.to_string_lossy().into_owned(),
                url,
            ];
            let stdout = run_tool(client, &argv, duration)?;
            parse_wrk(&stdout)
        }
        Scenario::H2c => {
            let log = scratch.join("l7-h2load.log");
            let _ = std::fs::remove_file(&log);
            let argv: Vec<String> = vec![
                "taskset".into(),
                "-c".into(),
                cpu,
                "h2load".into(),
                "-t1".into(),
                format!("-c{}", shape.h2_connections),
                format!("-m{}", shape.h2_streams),
                "-D".into(),
                format!("{}ms", duration.as_millis()),
                format!("--log-file={}", log.display()),
                url,
            ];
            let result = run_tool(client, &argv, duration).and_then(|stdout| {
                let text = std::fs::read_to_string(&log)
                    .with_context(|| format!("read h2load's request log {}", log.display()))?;
                parse_h2load(&stdout, &text)
            });
            let _ = std::fs::remove_file(&log);
            result
        }
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

/// Runs `argv` in `client`, failing unless it exits 0; returns its stdout.
fn run_tool(client: &Netns, argv: &[String], duration: Duration) -> Result<String> {
    // The tools stop themselves at the deadline; this only catches a hang.
    let output = client.exec_with(argv, None, duration + Duration::from_mins(1))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

#[derive(Deserialize)]
struct WrkLine {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// Parses what `wrk` printed with [`WRK_SCRIPT`].
pub fn parse_wrk(stdout: &str) -> Result<LoadResult> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(WRK_MARKER))
        .with_context(|| format!("wrk printed no {WRK_MARKER:?} line: {stdout}"))?;
    let wrk: WrkLine =
        serde_json::from_str(line).with_context(|| format!("wrk's result line: {line}"))?;
    let duration_s = wrk.duration_us as f64 / 1e6;
    if duration_s <= 0.0 {
        bail!("wrk measured no time: {stdout}");
    }
    let mut error_kinds = BTreeMap::new();
    for (kind, n) in [
        ("connect", wrk.connect),
        ("read", wrk.read),
        ("write", wrk.write),
        ("status", wrk.status),
        ("timeout", wrk.timeout),
    ] {
        if n > 0 {
            error_kinds.insert(kind.to_owned(), n);
        }
    }
    // `summary.requests` counts every response, `errors.status` those
    // outside 2xx and 3xx; the backends never redirect.
    let ok = wrk.requests.saturating_sub(wrk.status);
    Ok(LoadResult {
        tool: "wrk".to_owned(),
        duration_s,
        ok,
        ok_per_s: ok as f64 / duration_s,
        tool_rps: wrk.requests as f64 / duration_s,
        errors: error_kinds.values().sum(),
        error_kinds,
        latency: Latency {
            p50_us: wrk.p50,
            p90_us: wrk.p90,
            p99_us: wrk.p99,
            p999_us: wrk.p999,
            max_us: wrk.max,
            mean_us: wrk.mean,
        },
    })
}

/// The counts of h2load's `requests:` line.
#[derive(Debug, Default, PartialEq, Eq)]
struct H2loadRequests {
    done: u64,
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
}

/// Parses h2load's summary (`finished in 10.00s, 123.45 req/s, ...`,
/// `requests: ...`, `status codes: N 2xx, ...`) and its request log (one
/// line per request: start time µs, status, latency µs, tab-separated).
pub fn parse_h2load(stdout: &str, log: &str) -> Result<LoadResult> {
    let finished = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("finished in "))
        .with_context(|| format!("h2load printed no `finished in` line: {stdout}"))?;
    let mut parts = finished.split(',').map(str::trim);
    let duration_s = parts
        .next()
        .and_then(parse_seconds)
        .with_context(|| format!("h2load's duration in {finished:?}"))?;
    let tool_rps: f64 = parts
        .next()
        .and_then(|rps| rps.strip_suffix(" req/s"))
        .and_then(|rps| rps.trim().parse().ok())
        .with_context(|| format!("h2load's req/s in {finished:?}"))?;
    let requests = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests: "))
        .map(parse_h2load_requests)
        .with_context(|| format!("h2load printed no `requests:` line: {stdout}"))?;
    let status_2xx = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("status codes: "))
        .and_then(|codes| {
            codes
                .split(',')
                .find_map(|code| code.trim().strip_suffix(" 2xx"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .with_context(|| format!("h2load printed no 2xx count: {stdout}"))?;
    if duration_s <= 0.0 {
        bail!("h2load measured no time: {stdout}");
    }
    let mut latencies: Vec<f64> = Vec::with_capacity(log.len() / 24);
    for line in log.lines() {
        let mut fields = line.split('\t');
        let (Some(_start), Some(_status), Some(latency)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Ok(latency) = latency.trim().parse::<f64>() {
            latencies.push(latency);
        }
    }
    if latencies.is_empty() {
        bail!("h2load's request log is empty");
    }
    let mut error_kinds = BTreeMap::new();
    for (kind, n) in [
        ("failed", requests.failed),
        ("errored", requests.errored),
        ("timeout", requests.timeout),
        ("status", requests.succeeded.saturating_sub(status_2xx)),
    ] {
        if n > 0 {
            error_kinds.insert(kind.to_owned(), n);
        }
    }
    Ok(LoadResult {
        tool: "h2load".to_owned(),
        duration_s,
        ok: status_2xx,
        ok_per_s: status_2xx as f64 / duration_s,
        tool_rps,
        errors: error_kinds.values().sum(),
        error_kinds,
        latency: latency_of(&mut latencies),
    })
}

/// `10.00s`, `523.45ms`, `1m2.5s` is not printed by h2load for runs this short.
fn parse_seconds(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|ms| ms / 1000.0);
    }
    text.strip_suffix('s')?.parse().ok()
}

fn parse_h2load_requests(line: &str) -> H2loadRequests {
    let mut requests = H2loadRequests::default();
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match kind {
            "done" => requests.done = n,
            "succeeded" => requests.succeeded = n,
            "failed" => requests.failed = n,
            "errored" => requests.errored = n,
            "timeout" => requests.timeout = n,
            _ => {}
        }
    }
    requests
}

/// The percentiles of `values` (sorted in place): nearest rank, as wrk's
/// histogram reports them.
fn latency_of(values: &mut [f64]) -> Latency {
    values.sort_by(f64::total_cmp);
    let rank = |q: f64| -> f64 {
        let n = values.len();
        // Less a hair, so that 0.99 × 100 is rank 99 whatever the rounding.
        let index = ((q * n as f64 - 1e-9).ceil() as usize).clamp(1, n) - 1;
        values[index]
    };
    Latency {
        p50_us: rank(0.50),
        p90_us: rank(0.90),
        p99_us: rank(0.99),
        p999_us: rank(0.999),
        max_us: values.last().copied().unwrap_or_default(),
        mean_us: values.iter().sum::<f64>() / values.len() as f64,
    }
}

/// A tool the benchmark runs, and the Debian package that has it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    /// The program.
    pub program: &'static str,
    /// Its Debian package.
    pub package: &'static str,
}

/// Every program the L7 run starts besides its own.
pub const TOOLS: [Tool; 7] = [
    Tool {
        program: "wrk",
        package: "wrk",
    },
    Tool {
        program: "h2load",
        package: "nghttp2-client",
    },
    Tool {
        program: "nghttp",
        package: "nghttp2-client",
    },
    Tool {
        program: "nginx",
        package: "nginx-light",
    },
    Tool {
        program: "haproxy",
        package: "haproxy",
    },
    Tool {
        program: "curl",
        package: "curl",
    },
    Tool {
        program: "taskset",
        package: "util-linux",
    },
];

/// Where `program` is on `$PATH` (or `/usr/sbin`, `/sbin`: nginx lives in
/// `/usr/sbin`, which a non-login shell of some users lacks).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails, naming every missing program and the Debian packages to install,
/// unless all of [`TOOLS`] are there.
pub fn require_tools() -> Result<()> {
    let missing: Vec<Tool> = TOOLS
        .iter()
        .copied()
        .filter(|tool| find_program(tool.program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<String> = missing
        .iter()
        .map(|tool| format!("{} (Debian package {})", tool.program, tool.package))
        .collect();
    let packages: Vec<&str> = missing.iter().map(|tool| tool.package).collect();
    bail!(
        "missing: {}; install with `apt-get update && apt-get install -y {}`",
        programs.join(", "),
        packages.join(" ")
    )
}

#[cfg(test)]
mod tests;
