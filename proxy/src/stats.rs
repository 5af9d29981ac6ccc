//! Per-backend counters, updated lock-free on the data path, and the status
//! types the admin endpoint and metrics read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::spec::{Algorithm, Proto};

/// Live view of one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendStatus {
    pub frontend: SocketAddr,
    pub proto: Proto,
    pub name: String,
    pub algorithm: Algorithm,
    pub affinity: Option<Duration>,
    /// The frontend holds its socket (false while rejecting with no backends,
    /// or after a bind failure).
    pub listening: bool,
    /// Connections and flows ever accepted, including those sent to backends that have left.
    pub connections_total: u64,
    /// Request counters of an L7 frontend.
    pub l7: Option<crate::l7::L7Status>,
    pub backends: Vec<BackendStatus>,
}

/// Live counters of one backend of a frontend. Counters survive backend-set
/// updates for as long as the backend stays in the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub terminating: bool,
    /// TCP connections established, or UDP flows created, to this backend.
    pub connections_total: u64,
    /// TCP connections or UDP flows open right now.
    pub connections_active: u64,
    /// Bytes sent to the backend.
    pub bytes_sent: u64,
    /// Bytes received from the backend.
    pub bytes_received: u64,
    /// TCP connects that were refused or timed out, and UDP flows whose
    /// backend socket could not be set up or reported port unreachable.
    pub connect_failures: u64,
    /// Requests, latency and outlier state, for a backend of an L7 frontend.
    pub l7: Option<crate::l7::EndpointStatus>,
}

/// Counters of one backend. Shared (`Arc`) by the backend-set snapshots that
/// contain the backend and by every connection to it.
#[derive(Debug, Default)]
pub(crate) struct BackendStats {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    /// Connects in progress: not shown, but counted as load by least-connections
    /// so that a burst of new connections does not all land on one backend.
    connecting: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connect_failures: AtomicU64,
}

impl BackendStats {
    /// Load as seen by least-connections.
    pub(crate) fn load(&self) -> u64 {
        self.connections_active.load(Ordering::Relaxed) + self.connecting.load(Ordering::Relaxed)
    }

    pub(crate) fn add_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self, addr: SocketAddr, terminating: bool) -> BackendStatus {
        BackendStatus {
            addr,
            terminating,
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_active: self.connections_active.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            l7: None,
        }
    }
}

/// A connect in progress to a backend; counts as load until dropped or
/// turned into an [`ActiveGuard`].
#[derive(Debug)]
pub(crate) struct ConnectingGuard(Arc<BackendStats>);

impl ConnectingGuard {
    pub(crate) fn new(stats: Arc<BackendStats>) -> Self {
        stats.connecting.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }

    /// The connect was refused or timed out.
    pub(crate) fn failed(self) {
        self.0.connect_failed();
    }

    /// The connect succeeded: count the connection as established.
    pub(crate) fn established(self) -> ActiveGuard {
        // Active first, then drop `self` (which decrements `connecting`), so the
        // load seen by least-connections never dips in between.
        ActiveGuard::new(Arc::clone(&self.0))
    }
}

impl Drop for ConnectingGuard {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open connection (or UDP flow) to a backend; decrements
/// `connections_active` however the connection ends.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<BackendStats>);

impl ActiveGuard {
    pub(crate) fn new(stats: Arc<BackendStats>) -> Self {
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }

    pub(crate) fn stats(&self) -> &Arc<BackendStats> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 80))
    }

    #[test]
    fn guards_count_load_and_active_on_every_exit() {
        let stats = Arc::new(BackendStats::default());
        let connecting = ConnectingGuard::new(Arc::clone(&stats));
        assert_eq!(stats.load(), 1);
        assert_eq!(stats.status(addr(), false).connections_active, 0);
        drop(connecting);
        assert_eq!(stats.load(), 0);

        let active = ConnectingGuard::new(Arc::clone(&stats)).established();
        assert_eq!(stats.load(), 1);
        assert_eq!(stats.status(addr(), false).connections_active, 1);
        drop(active);
        let status = stats.status(addr(), false);
        assert_eq!(status.connections_active, 0);
        assert_eq!(status.connections_total, 1);
        assert_eq!(stats.load(), 0);
    }

    #[test]
    fn status_reports_counters() {
        let stats = BackendStats::default();
        stats.add_sent(5);
        stats.add_received(7);
        stats.connect_failed();
        let status = stats.status(addr(), true);
        assert_eq!(
            status,
            BackendStatus {
                addr: addr(),
                terminating: true,
                connections_total: 0,
                connections_active: 0,
                bytes_sent: 5,
                bytes_received: 7,
                connect_failures: 1,
                l7: None,
            }
        );
    }
}
