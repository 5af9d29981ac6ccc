//! Request latency on kept-alive connections: `connections` HTTP/1.1
//! connections each send `GET /` and wait for the whole answer, again and
//! again, for a bounded time. The load generator ([`crate::loadgen`]) opens
//! a connection per request; this measures what a packet costs on a flow
//! that already exists (the datapath's conntrack hit), not its setup.
//!
//! Run inside the client's namespace as the hidden `keepalive` subcommand
//! of the `nodeport` binary; it prints a [`KeepAliveResult`] as JSON.
//!
//! Each connection's first request is not counted (the connection and its
//! NAT state are being made). Only requests that complete inside the window
//! count; an answer from another pod than `expect` counts as an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::loadgen::Latency;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Pause after a failed request, so a dead target is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The longest window accepted: a run always stops.
pub const MAX_DURATION: Duration = Duration::from_mins(10);

/// One run of the probe.
#[derive(Clone, Debug)]
pub struct KeepAliveConfig {
    /// Where to connect.
    pub target: SocketAddr,
    /// Concurrent connections, one request in flight on each.
    pub connections: usize,
    /// The measurement window.
    pub duration: Duration,
    /// A request slower than this is an error (and its connection is
    /// replaced).
    pub timeout: Duration,
    /// The body every answer must carry (the pod's name), if checked.
    pub expect: Option<String>,
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeepAliveResult {
    /// Where it connected.
    pub target: SocketAddr,
    /// Concurrent connections.
    pub connections: usize,
    /// The window, seconds.
    pub duration_s: f64,
    /// Requests answered inside the window (first ones excluded).
    pub completed: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Connections opened (more than `connections` means some broke).
    pub connects: u64,
    /// `completed / duration_s`.
    pub requests_per_s: f64,
    /// Latency of the completed requests, microseconds.
    pub latency: Option<Latency>,
}

#[derive(Debug, Default)]
struct Tally {
    completed: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    connects: u64,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, kind: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind).or_default() += 1;
    }
}

/// Runs `config` to its end.
pub async fn run(config: &KeepAliveConfig) -> anyhow::Result<KeepAliveResult> {
    anyhow::ensure!(config.connections > 0, "at least one connection is needed");
    anyhow::ensure!(
        config.duration <= MAX_DURATION,
        "duration {:?} is longer than the limit of {MAX_DURATION:?}",
        config.duration
    );
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.connections {
        tasks.spawn(worker(config.clone(), deadline));
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        total.completed += tally.completed;
        total.errors += tally.errors;
        total.connects += tally.connects;
        for (kind, n) in tally.error_kinds {
            *total.error_kinds.entry(kind).or_default() += n;
        }
        total.latencies_us.extend(tally.latencies_us);
    }
    let duration_s = config.duration.as_secs_f64().max(f64::EPSILON);
    Ok(KeepAliveResult {
        target: config.target,
        connections: config.connections,
        duration_s,
        completed: total.completed,
        errors: total.errors,
        error_kinds: total.error_kinds,
        connects: total.connects,
        requests_per_s: total.completed as f64 / duration_s,
        latency: Latency::of(&mut total.latencies_us),
    })
}

async fn worker(config: KeepAliveConfig, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Conn::default();
    let expect = config.expect.as_ref().map(|name| format!("{name}\n"));
    // A few samples per millisecond at most: reserved once.
    tally.latencies_us.reserve(64 * 1024);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let limit = deadline.min(now + config.timeout);
        let fresh = conn.stream.is_none();
        if fresh {
            match timeout_at(limit, TcpStream::connect(config.target)).await {
                Ok(Ok(stream)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tally.error(format!("connect: {error}"));
                        continue;
                    }
                    tally.connects += 1;
                    conn.stream = Some(stream);
                    conn.buf.clear();
                }
                Ok(Err(error)) => {
                    tally.error(format!("connect: {error}"));
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                }
                Err(_) if Instant::now() >= deadline => break,
                Err(_) => {
                    tally.error("connect: timeout".to_owned());
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let outcome = timeout_at(limit, conn.request()).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(body)) => {
                if expect
                    .as_deref()
                    .is_some_and(|want| want.as_bytes() != body)
                {
                    let got = String::from_utf8_lossy(body).trim().to_owned();
                    tally.error(format!("answered by {got:?}"));
                } else if !fresh {
                    tally.completed += 1;
                    let micros = (done - sent).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                conn.consume();
            }
            _ if done >= deadline => break,
            Ok(Err(kind)) => {
                tally.error(kind);
                conn.stream = None;
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
            Err(_) => {
                tally.error("timeout".to_owned());
                conn.stream = None;
            }
        }
    }
    tally
}

/// One kept-alive connection and what it has read but not consumed.
#[derive(Debug, Default)]
struct Conn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` that make up the last answer.
    answer_len: usize,
}

impl Conn {
    /// Sends one request and reads its whole answer; returns the body.
    async fn request(&mut self) -> Result<&[u8], String> {
        let stream = self.stream.as_mut().ok_or("no connection")?;
        stream
            .write_all(REQUEST)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((head_len, body_len)) = parse_answer(&self.buf)?
                && self.buf.len() >= head_len + body_len
            {
                self.answer_len = head_len + body_len;
                return Ok(&self.buf[head_len..head_len + body_len]);
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the peer".to_owned());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Drops the last answer from the buffer.
    fn consume(&mut self) {
        self.buf.drain(..self.answer_len.min(self.buf.len()));
        self.answer_len = 0;
    }
}

/// `(head length, body length)` once a whole head is buffered; an error for
/// anything but a `200` with a `Content-Length`.
fn parse_answer(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {status}"));
    }
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .ok_or("no Content-Length")?
        .map_err(|_| "bad Content-Length".to_owned())?;
    Ok(Some((end + 4, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_whole_once_head_and_body_are_buffered() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Pod: web-1-0\r\n\r\nweb-1-0\n";
        assert_eq!(parse_answer(&answer[..20]), Ok(None));
        let head_len = answer.len() - 8;
        assert_eq!(parse_answer(answer), Ok(Some((head_len, 8))));
        assert!(parse_answer(b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn it_counts_kept_alive_requests_but_not_the_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let mut served = 0;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                served += 1;
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npod\n";
                if stream.write_all(answer).await.is_err() {
                    break;
                }
            }
            served
        });
        let config = KeepAliveConfig {
            target,
            connections: 1,
            duration: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            expect: Some("pod".to_owned()),
        };
        let result = run(&config).await.expect("run");
        let served: u64 = server.await.expect("server");
        assert_eq!(result.connects, 1);
        assert_eq!(result.errors, 0, "{:?}", result.error_kinds);
        assert!(result.completed > 0);
        // The first request, and at most one cut off by the deadline, are not counted.
        assert!(
            served == result.completed + 1 || served == result.completed + 2,
            "served {served}, counted {}",
            result.completed
        );
    }
}
