//! The load generator: closed-loop HTTP/1.1 clients against one or more
//! addresses, for a bounded time and a bounded number of requests.
//!
//! Two scenarios, both against `pod-server` (directly or through a proxy):
//!
//! - [`Scenario::Cps`]: `workers` tasks each loop over connect, one
//!   `GET /` with `Connection: close`, read to EOF, close. Every request is
//!   a new TCP connection, so this counts connections per second a proxy can
//!   accept, balance, open upstream and tear down.
//! - [`Scenario::Bulk`]: `workers` connections each download
//!   `/bytes/<body_bytes>` with `Connection: close`, again and again; this
//!   counts the bytes a proxy can relay per second.
//!
//! Only what completes inside the window counts: a request still running at
//! the deadline is abandoned and not counted; bulk bytes count as they
//! arrive, up to the deadline. Targets are used round-robin, one global
//! counter for all workers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// The longest window the load generator accepts: a run always stops.
pub const MAX_DURATION: Duration = Duration::from_mins(10);

/// Pause after a failed request, so a dead target is not hammered in a
/// tight loop (the errors are still counted).
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Read buffer per connection for the bulk scenario: large reads keep the
/// client's own cost per byte low.
const BULK_READ_BUFFER: usize = 256 * 1024;

/// Read buffer per connection for the connection scenario (the answer is a
/// few hundred bytes).
const CPS_READ_BUFFER: usize = 4 * 1024;

/// What is measured.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// New connections per second (one short request each).
    Cps,
    /// Bytes per second over a few long downloads.
    Bulk,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cps => "cps",
            Self::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of the load generator.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// What to measure.
    pub scenario: Scenario,
    /// Where to connect, round-robin.
    pub targets: Vec<SocketAddr>,
    /// Concurrent workers (each has at most one connection open).
    pub workers: usize,
    /// The measurement window.
    pub duration: Duration,
    /// Body size of one bulk download.
    pub body_bytes: u64,
    /// At most this many requests (downloads, for bulk) are started, over
    /// all workers.
    pub max_requests: u64,
    /// A request (cps) or a read (bulk) taking longer than this is an error.
    pub timeout: Duration,
}

/// Latency of the completed requests of a connection run, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Latency {
    /// Percentiles of `samples` (sorted in place); `None` when empty.
    pub fn of(samples: &mut [u32]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() - 1) as f64 * q).round() as usize;
            u64::from(samples[index])
        };
        Some(Self {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: at(1.0),
        })
    }
}

/// What one run measured; the load generator prints it as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// What was measured.
    pub scenario: Scenario,
    /// Where it connected.
    pub targets: Vec<SocketAddr>,
    /// Concurrent workers.
    pub workers: usize,
    /// The measurement window, in seconds.
    pub duration_s: f64,
    /// Requests (cps) or downloads (bulk) completed inside the window.
    pub completed: u64,
    /// Requests that failed inside the window.
    pub errors: u64,
    /// Failures by kind (`connect: Connection refused (os error 111)`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    /// Bytes received inside the window (response heads included).
    pub bytes: u64,
    /// `completed / duration_s`.
    pub completed_per_s: f64,
    /// `bytes / duration_s / 1e6`.
    pub mb_per_s: f64,
    /// Latency of the completed requests (cps only).
    pub latency: Option<Latency>,
    /// Whether the request cap stopped the run before the deadline.
    pub capped: bool,
}

/// Why one request failed.
#[derive(Debug)]
enum RequestError {
    Connect(std::io::Error),
    Write(std::io::Error),
    Read(std::io::Error),
    Status(String),
    Empty,
    Short { want: u64 },
    Timeout,
}

impl RequestError {
    /// A stable label for counting failures by kind.
    fn kind(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect: {e}"),
            Self::Write(e) => format!("write: {e}"),
            Self::Read(e) => format!("read: {e}"),
            Self::Status(line) => format!("status: {line}"),
            Self::Empty => "empty response".to_owned(),
            // Grouped by the size asked for, not by where it was cut.
            Self::Short { want } => format!("short response (wanted {want} bytes)"),
            Self::Timeout => "timeout".to_owned(),
        }
    }
}

/// What one worker counted.
#[derive(Debug, Default)]
struct Tally {
    completed: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    bytes: u64,
    latencies_us: Vec<u32>,
    capped: bool,
}

impl Tally {
    fn error(&mut self, error: &RequestError) {
        self.errors += 1;
        *self.error_kinds.entry(error.kind()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.completed += other.completed;
        self.errors += other.errors;
        for (kind, n) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += n;
        }
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
        self.capped |= other.capped;
    }
}

/// State shared by the workers of one run.
#[derive(Debug)]
struct Shared {
    targets: Vec<SocketAddr>,
    next_target: AtomicUsize,
    started: AtomicU64,
    max_requests: u64,
    deadline: Instant,
}

impl Shared {
    fn next_target(&self) -> SocketAddr {
        let index = self.next_target.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        self.targets[index]
    }

    /// Claims one request from the cap; `false` once it is spent.
    fn claim(&self) -> bool {
        self.started.fetch_add(1, Ordering::Relaxed) < self.max_requests
    }
}

/// Runs `config` to its end and returns what it measured.
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!config.targets.is_empty(), "no target to connect to");
    anyhow::ensure!(config.workers > 0, "at least one worker is needed");
    anyhow::ensure!(
        config.duration <= MAX_DURATION,
        "duration {:?} is longer than the limit of {MAX_DURATION:?}",
        config.duration
    );
    let start = Instant::now();
    let shared = Arc::new(Shared {
        targets: config.targets.clone(),
        next_target: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        max_requests: config.max_requests,
        deadline: start + config.duration,
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.workers {
        let shared = shared.clone();
        let config = config.clone();
        match config.scenario {
            Scenario::Cps => workers.spawn(cps_worker(shared, config.timeout)),
            Scenario::Bulk => workers.spawn(bulk_worker(shared, config.body_bytes, config.timeout)),
        };
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        total.merge(tally?);
    }
    // Whatever finished early (the cap) is measured over the time it took.
    let elapsed = Instant::now().min(shared.deadline) - start;
    let duration_s = elapsed.as_secs_f64().max(f64::EPSILON);
    let latency = match config.scenario {
        Scenario::Cps => Latency::of(&mut total.latencies_us),
        Scenario::Bulk => None,
    };
    Ok(LoadResult {
        scenario: config.scenario,
        targets: config.targets.clone(),
        workers: config.workers,
        duration_s,
        completed: total.completed,
        errors: total.errors,
        error_kinds: total.error_kinds,
        bytes: total.bytes,
        completed_per_s: total.completed as f64 / duration_s,
        mb_per_s: total.bytes as f64 / duration_s / 1e6,
        latency,
        capped: total.capped,
    })
}

const CPS_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

async fn cps_worker(shared: Arc<Shared>, timeout: Duration) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; CPS_READ_BUFFER];
    loop {
        let now = Instant::now();
        if now >= shared.deadline {
            break;
        }
        if !shared.claim() {
            tally.capped = true;
            break;
        }
        let target = shared.next_target();
        let limit = shared.deadline.min(now + timeout);
        let outcome = timeout_at(limit, cps_request(target, &mut buf)).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(bytes)) => {
                tally.completed += 1;
                tally.bytes += bytes;
                let micros = (done - now).as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            // Cut off by the end of the window: neither a success nor a failure.
            _ if done >= shared.deadline => break,
            Ok(Err(error)) => {
                tally.error(&error);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
            Err(_) => tally.error(&RequestError::Timeout),
        }
    }
    tally
}

/// One request on a new connection; returns the bytes received.
async fn cps_request(target: SocketAddr, buf: &mut [u8]) -> Result<u64, RequestError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(RequestError::Connect)?;
    stream.set_nodelay(true).map_err(RequestError::Connect)?;
    stream
        .write_all(CPS_REQUEST)
        .await
        .map_err(RequestError::Write)?;
    let mut total: u64 = 0;
    let mut head = [0u8; 12];
    let mut head_len = 0;
    loop {
        let n = stream.read(buf).await.map_err(RequestError::Read)?;
        if n == 0 {
            break;
        }
        if head_len < head.len() {
            let take = n.min(head.len() - head_len);
            head[head_len..head_len + take].copy_from_slice(&buf[..take]);
            head_len += take;
        }
        total += n as u64;
    }
    check_status(&head[..head_len])?;
    Ok(total)
}

fn check_status(head: &[u8]) -> Result<(), RequestError> {
    if head.is_empty() {
        return Err(RequestError::Empty);
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(RequestError::Status(
            String::from_utf8_lossy(head).trim().to_owned(),
        ))
    }
}

async fn bulk_worker(shared: Arc<Shared>, body_bytes: u64, timeout: Duration) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; BULK_READ_BUFFER];
    let request =
        format!("GET /bytes/{body_bytes} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    loop {
        if Instant::now() >= shared.deadline {
            break;
        }
        if !shared.claim() {
            tally.capped = true;
            break;
        }
        let target = shared.next_target();
        match bulk_download(
            &shared,
            target,
            request.as_bytes(),
            body_bytes,
            timeout,
            &mut buf,
            &mut tally,
        )
        .await
        {
            Ok(true) => tally.completed += 1,
            Ok(false) => break,
            Err(error) => {
                if Instant::now() >= shared.deadline {
                    break;
                }
                tally.error(&error);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    tally
}

/// One download; counts bytes into `tally` as they arrive. `Ok(false)` when
/// the window closed first.
async fn bulk_download(
    shared: &Shared,
    target: SocketAddr,
    request: &[u8],
    body_bytes: u64,
    timeout: Duration,
    buf: &mut [u8],
    tally: &mut Tally,
) -> Result<bool, RequestError> {
    let within = |now: Instant| shared.deadline.min(now + timeout);
    let Ok(connected) = timeout_at(within(Instant::now()), TcpStream::connect(target)).await else {
        return if Instant::now() >= shared.deadline {
            Ok(false)
        } else {
            Err(RequestError::Timeout)
        };
    };
    let mut stream = connected.map_err(RequestError::Connect)?;
    stream
        .write_all(request)
        .await
        .map_err(RequestError::Write)?;
    let mut received: u64 = 0;
    let mut head = [0u8; 12];
    let mut head_len = 0;
    loop {
        let Ok(read) = timeout_at(within(Instant::now()), stream.read(buf)).await else {
            return if Instant::now() >= shared.deadline {
                Ok(false)
            } else {
                Err(RequestError::Timeout)
            };
        };
        let n = read.map_err(RequestError::Read)?;
        if n == 0 {
            break;
        }
        if head_len < head.len() {
            let take = n.min(head.len() - head_len);
            head[head_len..head_len + take].copy_from_slice(&buf[..take]);
            head_len += take;
        }
        received += n as u64;
        tally.bytes += n as u64;
    }
    check_status(&head[..head_len])?;
    // The head is ~150 bytes; anything less than the body is a cut transfer.
    if received < body_bytes {
        return Err(RequestError::Short { want: body_bytes });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_pick_ranked_samples() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        let latency = Latency::of(&mut samples).expect("samples");
        assert_eq!(latency.p50_us, 51);
        assert_eq!(latency.p90_us, 90);
        assert_eq!(latency.p99_us, 99);
        assert_eq!(latency.max_us, 100);
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn only_a_200_status_passes() {
        assert!(check_status(b"HTTP/1.1 200").is_ok());
        assert!(matches!(
            check_status(b"HTTP/1.1 503"),
            Err(RequestError::Status(_))
        ));
        assert!(matches!(check_status(b""), Err(RequestError::Empty)));
    }
}
