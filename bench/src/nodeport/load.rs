//! The loads put on each target, each run as a process of its own in the
//! external client's namespace, pinned with `taskset` to the load CPU:
//! `loadgen --scenario cps` for new connections (one request each), and
//! this program's hidden `keepalive` subcommand for requests on kept-alive
//! connections ([`super::keepalive`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::Netns;

use super::RunConfig;
use super::keepalive::KeepAliveResult;
use crate::loadgen::{Latency, LoadResult};

/// One kind of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Load {
    /// A new TCP connection per request (connect, `GET /`, read to EOF,
    /// close), `in_flight` at a time: the rate counts connections per
    /// second, the latency is that of a whole connection.
    Connections {
        /// Concurrent connections.
        in_flight: usize,
    },
    /// `GET /` again and again on `connections` kept-alive connections,
    /// one request in flight on each: the latency of a request on a flow
    /// that already exists.
    KeepAlive {
        /// Concurrent connections.
        connections: usize,
    },
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connections { in_flight } => write!(f, "new connections x{in_flight}"),
            Self::KeepAlive { connections } => write!(f, "keep-alive x{connections}"),
        }
    }
}

/// What one load run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RunResult {
    /// `loadgen`'s result.
    Connections(LoadResult),
    /// The keep-alive probe's result.
    KeepAlive(KeepAliveResult),
}

impl RunResult {
    /// Connections (or requests, kept alive) completed per second.
    pub fn rate(&self) -> f64 {
        match self {
            Self::Connections(r) => r.completed_per_s,
            Self::KeepAlive(r) => r.requests_per_s,
        }
    }

    /// Latency of what completed.
    pub fn latency(&self) -> Option<&Latency> {
        match self {
            Self::Connections(r) => r.latency.as_ref(),
            Self::KeepAlive(r) => r.latency.as_ref(),
        }
    }

    /// Failed requests.
    pub fn errors(&self) -> u64 {
        match self {
            Self::Connections(r) => r.errors,
            Self::KeepAlive(r) => r.errors,
        }
    }

    /// Failed requests by kind.
    pub fn error_kinds(&self) -> Vec<(String, u64)> {
        let kinds = match self {
            Self::Connections(r) => &r.error_kinds,
            Self::KeepAlive(r) => &r.error_kinds,
        };
        kinds.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }
}

/// Runs `load` against `target` from `ns` for `duration`; `expect` is the
/// pod name every kept-alive answer must carry.
pub fn run(
    config: &RunConfig,
    ns: &Netns,
    load: Load,
    target: SocketAddr,
    duration: Duration,
    expect: &str,
) -> Result<RunResult> {
    let mut argv: Vec<String> = vec!["taskset".into(), "-c".into(), config.load_cpu.to_string()];
    let millis = format!("{}ms", duration.as_millis());
    match load {
        Load::Connections { in_flight } => argv.extend([
            config.loadgen.to_string_lossy().into_owned(),
            "--scenario".into(),
            "cps".into(),
            "--workers".into(),
            in_flight.to_string(),
            "--duration".into(),
            millis,
            "--max-requests".into(),
            config.max_requests.to_string(),
            "--target".into(),
            target.to_string(),
        ]),
        Load::KeepAlive { connections } => argv.extend([
            config.exe.to_string_lossy().into_owned(),
            "keepalive".into(),
            "--target".into(),
            target.to_string(),
            "--connections".into(),
            connections.to_string(),
            "--duration".into(),
            millis,
            "--expect".into(),
            expect.to_owned(),
        ]),
    }
    let output = ns.exec_with(&argv, None, duration + Duration::from_mins(1))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            argv[3],
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let printed = || String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(match load {
        Load::Connections { .. } => RunResult::Connections(
            serde_json::from_slice(&output.stdout)
                .with_context(|| format!("loadgen printed no result: {}", printed()))?,
        ),
        Load::KeepAlive { .. } => RunResult::KeepAlive(
            serde_json::from_slice(&output.stdout)
                .with_context(|| format!("keepalive printed no result: {}", printed()))?,
        ),
    })
}
