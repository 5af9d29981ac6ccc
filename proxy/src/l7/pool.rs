//! Upstream connections of one backend: idle HTTP/1.1 connections waiting to be reused (most
//! recently used first), and one shared HTTP/2 connection that every request multiplexes on.
//! Connections are made by [`super::upstream`]; the pool only keeps them.

use std::time::Duration;

use hyper::client::conn::http1;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::body::UpBody;

pub(crate) type H1Sender = http1::SendRequest<UpBody>;
pub(crate) type H2Sender = super::h2client::H2Conn;

/// Idle HTTP/1.1 connections kept per backend (nginx's `keepalive 64` is the usual setting):
/// enough for a busy node without hoarding backend sockets.
pub(crate) const MAX_IDLE: usize = 64;
/// An idle connection older than this is closed rather than reused (backends often close
/// theirs after 60–120 s, and a reuse that races their close costs a retry).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_mins(1);

struct Idle {
    sender: H1Sender,
    tls: bool,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<(H2Sender, bool)>>,
    /// Held while an HTTP/2 connection is being made, so concurrent requests share it.
    pub(crate) h2_connecting: tokio::sync::Mutex<()>,
    /// Connections tried so far (made or failed), so a request can tell whether one was
    /// being made while it was out.
    connects: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle())
            .field("h2", &self.h2.lock().is_some())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// The most recently used idle HTTP/1.1 connection of the right kind that is still open.
    pub(crate) fn take_h1(&self, tls: bool) -> Option<H1Sender> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            if entry.tls == tls
                && !entry.sender.is_closed()
                && now.saturating_duration_since(entry.since) < IDLE_TIMEOUT
            {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Gives a connection back once its last response has been read whole.
    pub(crate) fn put_h1(&self, sender: H1Sender, tls: bool) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() >= MAX_IDLE {
            // Keep the recent ones: drop the oldest.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            tls,
            since: Instant::now(),
        });
    }

    /// The shared HTTP/2 connection, if it is open and of the right kind.
    pub(crate) fn h2(&self, tls: bool) -> Option<H2Sender> {
        let mut slot = self.h2.lock();
        match slot.as_ref() {
            Some((sender, t)) if *t == tls && !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    pub(crate) fn set_h2(&self, sender: H2Sender, tls: bool) {
        *self.h2.lock() = Some((sender, tls));
    }

    /// Closes idle connections that timed out or were closed by the backend.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.idle.lock().retain(|e| {
            !e.sender.is_closed() && now.saturating_duration_since(e.since) < IDLE_TIMEOUT
        });
        let mut slot = self.h2.lock();
        if slot.as_ref().is_some_and(|(s, _)| s.is_closed()) {
            *slot = None;
        }
    }

    /// Counts a connection tried.
    pub(crate) fn connecting(&self) {
        self.connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections tried so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().len()
    }
}
