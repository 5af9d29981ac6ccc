//! `soak client`: runs in the client namespace (and its cgroup, where the node's eBPF programs
//! are attached) and opens fresh TCP connections to the sample Services without pause: at a
//! fixed rate, round-robin over the targets, each one connect, `GET /`, read to the end, close.
//! Every failure is reported with its time and error; every second a tick with the counts.
//!
//! On command it also *probes*: it starts a fresh connection to one Service every millisecond,
//! without waiting for the earlier ones, until one is answered by a given pod server, and
//! reports when that connection was started. That is how the engine sees a change reach the
//! datapath: the connect that reached the new pod was translated after the change was
//! programmed.
//!
//! Commands come as JSON lines on stdin, events go as JSON lines to stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::stats::LogHistogram;
use crate::apiwatch::protocol::monotonic_ns;

/// How the client connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The Services, `VIP:port`.
    pub targets: Vec<SocketAddr>,
    /// New connections per second (the probes come on top).
    pub rate: f64,
    /// A connect not done by then fails.
    pub connect_timeout: Duration,
    /// A whole connection (connect to the end of the answer) not done by then fails.
    pub request_timeout: Duration,
    /// Connections in flight at most; a tick beyond it starts none (counted).
    pub max_in_flight: usize,
}

/// A command to the client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ClientCommand {
    /// Connect to `target` every millisecond until the pod server `name` answers, at most
    /// `limit_ms`.
    Probe {
        /// Echoed in the answers.
        seq: u64,
        /// The Service, `VIP:port`.
        target: SocketAddr,
        /// The pod server's name that the answer must carry.
        name: String,
        /// The longest wait, milliseconds.
        limit_ms: u64,
    },
    /// Stop starting connections, let those in flight finish, report the summary, exit.
    Stop,
}

/// What the client reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Started.
    Ready,
    /// The last second's connections (finished in it).
    Tick {
        /// Now (`CLOCK_MONOTONIC`).
        t_ns: u64,
        /// Answered with `200`.
        ok: u64,
        /// Failed.
        failed: u64,
        /// Not started: too many in flight.
        not_started: u64,
    },
    /// One connection failed.
    Failure(Failure),
    /// A probe is connecting now.
    Waiting {
        /// The command's `seq`.
        seq: u64,
    },
    /// A probe ended.
    Probed {
        /// The command's `seq`.
        seq: u64,
        /// When the first connection answered by the pod was started; `None`: not in time.
        t_ns: Option<u64>,
        /// Connections the probe started.
        attempts: u64,
    },
    /// The end: everything counted.
    Summary(ClientSummary),
}

/// One failed connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failure {
    /// When it was started (`CLOCK_MONOTONIC`).
    pub t_ns: u64,
    /// The same, seconds since the Unix epoch (to find it in the daemon's log).
    pub unix_s: f64,
    /// The Service, `VIP:port`.
    pub target: String,
    /// What went wrong.
    pub error: String,
    /// How long it took to fail, milliseconds.
    pub ms: f64,
    /// Whether a probe started it.
    pub probe: bool,
}

/// One target's connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetCounts {
    /// Answered with `200`.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Answers by pod server name.
    pub answered_by: BTreeMap<String, u64>,
}

/// Everything the client counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientSummary {
    /// Connections answered with `200`.
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Of those, started by probes.
    pub probe_connections: u64,
    /// Ticks that started no connection because too many were in flight.
    pub not_started: u64,
    /// Connect to the end of the answer, every connection that succeeded.
    pub latency: LogHistogram,
    /// Per target (`VIP:port`).
    pub targets: BTreeMap<String, TargetCounts>,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    not_started: AtomicU64,
    probe_connections: AtomicU64,
    /// Latencies and per-target counts: touched once per connection.
    detail: Mutex<(LogHistogram, BTreeMap<String, TargetCounts>)>,
}

fn emit(event: &ClientEvent) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, event).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One connection: connect, `GET /`, read to EOF; the pod server's name on success.
async fn exchange(target: SocketAddr, config: &ClientConfig) -> Result<String, String> {
    let mut stream = match timeout(config.connect_timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(format!("connect: {error}")),
        Err(_) => {
            return Err(format!(
                "connect: no answer within {:?}",
                config.connect_timeout
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {status:?} ({} bytes)", answer.len()));
    }
    Ok(body.trim().to_owned())
}

/// Runs one connection and counts it; returns `(started, name answered)`.
async fn connection(
    target: SocketAddr,
    config: Arc<ClientConfig>,
    counters: Arc<Counters>,
    probe: bool,
) -> (u64, Option<String>) {
    let started_ns = monotonic_ns();
    let unix_s = unix_now();
    let started = Instant::now();
    let result = match timeout(config.request_timeout, exchange(target, &config)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no complete answer within {:?}",
            config.request_timeout
        )),
    };
    let took = started.elapsed();
    if probe {
        counters.probe_connections.fetch_add(1, Ordering::Relaxed);
    }
    let key = target.to_string();
    match result {
        Ok(name) => {
            counters.ok.fetch_add(1, Ordering::Relaxed);
            let mut detail = counters.detail.lock();
            detail.0.record(took.as_micros() as u64);
            let target = detail.1.entry(key).or_default();
            target.ok += 1;
            *target.answered_by.entry(name.clone()).or_default() += 1;
            (started_ns, Some(name))
        }
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters
                .detail
                .lock()
                .1
                .entry(key.clone())
                .or_default()
                .failed += 1;
            emit(&ClientEvent::Failure(Failure {
                t_ns: started_ns,
                unix_s,
                target: key,
                error,
                ms: took.as_secs_f64() * 1e3,
                probe,
            }));
            (started_ns, None)
        }
    }
}

/// Connects every millisecond until `name` answers; `(when the winning connection started,
/// attempts)`.
async fn probe(
    target: SocketAddr,
    name: String,
    limit: Duration,
    config: Arc<ClientConfig>,
    counters: Arc<Counters>,
) -> (Option<u64>, u64) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut inflight = JoinSet::new();
    let mut attempts = 0;
    let mut found: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if found.is_none() && started.elapsed() <= limit => {
                attempts += 1;
                inflight.spawn(connection(target, config.clone(), counters.clone(), true));
            }
            done = inflight.join_next(), if !inflight.is_empty() => {
                if let Some(Ok((t, Some(answered)))) = done
                    && answered == name
                {
                    // The earliest start wins: connections still in flight began later than
                    // this one only if they were started after it.
                    found = Some(found.map_or(t, |f| f.min(t)));
                }
            }
            else => break,
        }
        if found.is_some() && inflight.is_empty() {
            break;
        }
        if found.is_none() && started.elapsed() > limit && inflight.is_empty() {
            break;
        }
    }
    (found, attempts)
}

/// Answers commands from stdin until it closes or says stop.
pub async fn run(config: ClientConfig) -> Result<()> {
    anyhow::ensure!(!config.targets.is_empty(), "no targets");
    anyhow::ensure!(config.rate > 0.0, "the rate must be positive");
    let config = Arc::new(config);
    let counters = Arc::new(Counters::default());
    emit(&ClientEvent::Ready);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut load = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    load.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(MissedTickBehavior::Delay);
    second.tick().await;
    let mut inflight: JoinSet<(u64, Option<String>)> = JoinSet::new();
    let mut probes = JoinSet::new();
    let mut next = 0usize;
    let mut last = (0, 0, 0);
    loop {
        tokio::select! {
            _ = load.tick() => {
                if inflight.len() >= config.max_in_flight {
                    counters.not_started.fetch_add(1, Ordering::Relaxed);
                } else {
                    let target = config.targets[next % config.targets.len()];
                    next = next.wrapping_add(1);
                    inflight.spawn(connection(target, config.clone(), counters.clone(), false));
                }
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            Some(_) = probes.join_next(), if !probes.is_empty() => {}
            _ = second.tick() => {
                let now = (
                    counters.ok.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    counters.not_started.load(Ordering::Relaxed),
                );
                emit(&ClientEvent::Tick {
                    t_ns: monotonic_ns(),
                    ok: now.0 - last.0,
                    failed: now.1 - last.1,
                    not_started: now.2 - last.2,
                });
                last = now;
            }
            line = lines.next_line() => {
                let Some(line) = line.context("read stdin")? else { break };
                match serde_json::from_str::<ClientCommand>(&line) {
                    Ok(ClientCommand::Probe { seq, target, name, limit_ms }) => {
                        emit(&ClientEvent::Waiting { seq });
                        let (config, counters) = (config.clone(), counters.clone());
                        probes.spawn(async move {
                            let (t_ns, attempts) = probe(
                                target,
                                name,
                                Duration::from_millis(limit_ms),
                                config,
                                counters,
                            )
                            .await;
                            emit(&ClientEvent::Probed { seq, t_ns, attempts });
                        });
                    }
                    Ok(ClientCommand::Stop) => break,
                    Err(error) => eprintln!("not a command ({error}): {line}"),
                }
            }
        }
    }
    while inflight.join_next().await.is_some() {}
    while probes.join_next().await.is_some() {}
    let (latency, targets) = counters.detail.lock().clone();
    emit(&ClientEvent::Summary(ClientSummary {
        ok: counters.ok.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        probe_connections: counters.probe_connections.load(Ordering::Relaxed),
        not_started: counters.not_started.load(Ordering::Relaxed),
        latency,
        targets,
    }));
    Ok(())
}

/// The client's seconds and failures, as the driver collected them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Every tick: `(CLOCK_MONOTONIC ns, ok, failed, not started)`.
    pub ticks: Vec<(u64, u64, u64, u64)>,
    /// The first failures (at most [`MAX_FAILURES_KEPT`]).
    pub failures: Vec<Failure>,
    /// Every failure, kept or not.
    pub failures_total: u64,
    /// The final summary (`None`: the client died first).
    pub summary: Option<ClientSummary>,
    /// Lines it printed that were not events.
    pub garbage: Vec<String>,
}

/// Failures kept whole in the record.
pub const MAX_FAILURES_KEPT: usize = 2000;

type ProbeResult = (Option<u64>, u64);

#[derive(Default)]
struct Pending {
    waiting: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Sender<ProbeResult>>,
}

#[derive(Default)]
struct Shared {
    record: ClientRecord,
    probes: BTreeMap<u64, Pending>,
    summary: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The running client, seen from the driver: commands go to its stdin, a task reads its
/// events. Killed by PID when dropped.
pub struct ClientProcess {
    child: tokio::process::Child,
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    shared: Arc<Mutex<Shared>>,
    seq: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl ClientProcess {
    /// Starts `command` (the client, wrapped to run in its namespace and cgroup) with its
    /// stderr going to `stderr_log`, and waits until it says it is ready.
    pub async fn start(
        command: std::process::Command,
        stderr_log: &std::path::Path,
    ) -> Result<Self> {
        let log = std::fs::File::create(stderr_log)
            .with_context(|| format!("create {}", stderr_log.display()))?;
        let mut command = tokio::process::Command::from(command);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().context("start the client")?;
        let stdin = child.stdin.take().context("the client's stdin")?;
        let stdout = child.stdout.take().context("the client's stdout")?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(read_events(stdout, shared.clone(), ready_tx));
        match timeout(Duration::from_secs(30), ready_rx).await {
            Ok(Ok(())) => {}
            _ => anyhow::bail!(
                "the client did not start; its stderr:\n{}",
                std::fs::read_to_string(stderr_log).unwrap_or_default()
            ),
        }
        Ok(Self {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            shared,
            seq: AtomicU64::new(0),
            reader,
        })
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn send(&self, command: &ClientCommand) -> Result<()> {
        let mut line = serde_json::to_vec(command).context("serialize a client command")?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(&line)
            .await
            .context("write to the client")?;
        stdin.flush().await.context("write to the client")
    }

    /// Starts a probe of `target` for the pod server `name`; returns once the client is
    /// connecting, with the receiver of its result.
    pub async fn probe(
        &self,
        target: SocketAddr,
        name: &str,
        limit: Duration,
    ) -> Result<tokio::sync::oneshot::Receiver<ProbeResult>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.shared.lock().probes.insert(
            seq,
            Pending {
                waiting: Some(waiting_tx),
                done: Some(done_tx),
            },
        );
        self.send(&ClientCommand::Probe {
            seq,
            target,
            name: name.to_owned(),
            limit_ms: limit.as_millis() as u64,
        })
        .await?;
        timeout(Duration::from_secs(5), waiting_rx)
            .await
            .context("the client did not start the probe within 5 s")?
            .context("the client went away")?;
        Ok(done_rx)
    }

    /// Failures so far.
    pub fn failures(&self) -> u64 {
        self.shared.lock().record.failures_total
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop, waits up to `limit` for its summary, and returns what it reported.
    pub async fn stop(mut self, limit: Duration) -> ClientRecord {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.lock().summary = Some(tx);
        if self.send(&ClientCommand::Stop).await.is_ok() {
            let _ = timeout(limit, rx).await;
        }
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.reader.abort();
        std::mem::take(&mut self.shared.lock().record)
    }
}

async fn read_events(
    stdout: tokio::process::ChildStdout,
    shared: Arc<Mutex<Shared>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(event) = serde_json::from_str::<ClientEvent>(&line) else {
            let mut s = shared.lock();
            if s.record.garbage.len() < 20 {
                s.record.garbage.push(line);
            }
            continue;
        };
        let mut s = shared.lock();
        match event {
            ClientEvent::Ready => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            ClientEvent::Tick {
                t_ns,
                ok,
                failed,
                not_started,
            } => s.record.ticks.push((t_ns, ok, failed, not_started)),
            ClientEvent::Failure(failure) => {
                s.record.failures_total += 1;
                if s.record.failures.len() < MAX_FAILURES_KEPT {
                    s.record.failures.push(failure);
                }
            }
            ClientEvent::Waiting { seq } => {
                if let Some(tx) = s.probes.get_mut(&seq).and_then(|p| p.waiting.take()) {
                    let _ = tx.send(());
                }
            }
            ClientEvent::Probed {
                seq,
                t_ns,
                attempts,
            } => {
                if let Some(tx) = s.probes.remove(&seq).and_then(|mut p| p.done.take()) {
                    let _ = tx.send((t_ns, attempts));
                }
            }
            ClientEvent::Summary(summary) => {
                s.record.summary = Some(summary);
                if let Some(tx) = s.summary.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}
