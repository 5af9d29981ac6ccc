//! `apiwatch probe`: runs in a client namespace (and its cgroup, where the
//! node's eBPF programs are attached) and reports when connecting to the
//! measured Service first succeeds, or first fails.
//!
//! Waiting for "open", it starts a fresh non-blocking connect every
//! `interval` without waiting for the earlier ones, so a connect that is
//! slow to fail never delays the one that would succeed; waiting for
//! "closed", it connects one at a time until a connect fails.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::protocol::{Awaited, ProbeCommand, ProbeEvent, monotonic_ns};

/// How a probe connects.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// The Service address.
    pub target: SocketAddr,
    /// The pause between connects.
    pub interval: Duration,
    /// A connect that has not completed by then counts as failed.
    pub attempt_timeout: Duration,
    /// The longest wait for one command.
    pub wait_limit: Duration,
}

fn emit(event: &ProbeEvent) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, event)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn connects(target: SocketAddr, attempt_timeout: Duration) -> (u64, bool) {
    let ok = matches!(
        timeout(attempt_timeout, TcpStream::connect(target)).await,
        Ok(Ok(_))
    );
    (monotonic_ns(), ok)
}

async fn wait_open(config: &ProbeConfig) -> (Option<u64>, u64) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut inflight = JoinSet::new();
    let mut attempts = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if started.elapsed() > config.wait_limit {
                    return (None, attempts);
                }
                attempts += 1;
                inflight.spawn(connects(config.target, config.attempt_timeout));
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok((t, true)) = done {
                    inflight.abort_all();
                    return (Some(t), attempts);
                }
            }
        }
    }
}

async fn wait_closed(config: &ProbeConfig) -> (Option<u64>, u64) {
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() <= config.wait_limit {
        attempts += 1;
        let (t, ok) = connects(config.target, config.attempt_timeout).await;
        if !ok {
            return (Some(t), attempts);
        }
        tokio::time::sleep(config.interval).await;
    }
    (None, attempts)
}

/// Answers commands from stdin until it closes.
pub async fn run(config: ProbeConfig) -> Result<()> {
    emit(&ProbeEvent::Ready)?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("read stdin")? {
        let command: ProbeCommand =
            serde_json::from_str(&line).with_context(|| format!("not a command: {line}"))?;
        emit(&ProbeEvent::Waiting { seq: command.seq })?;
        let (t_ns, attempts) = match command.wait {
            Awaited::Open => wait_open(&config).await,
            Awaited::Closed => wait_closed(&config).await,
        };
        emit(&ProbeEvent::Reached {
            seq: command.seq,
            wait: command.wait,
            t_ns,
            attempts,
        })?;
    }
    Ok(())
}
