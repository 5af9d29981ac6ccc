//! What the controller asks the proxy to serve: plain data, validated nowhere
//! else than at the point of use.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// How a backend is chosen for a new connection (TCP) or flow (UDP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Uniformly random among the usable backends.
    #[default]
    Random,
    /// Each new connection goes to the next backend in order.
    RoundRobin,
    /// The backend with the fewest open (or opening) connections; ties broken at random.
    LeastConnections,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Random => "Random",
            Algorithm::RoundRobin => "RoundRobin",
            Algorithm::LeastConnections => "LeastConnections",
        })
    }
}

/// What a frontend does while it has no backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EmptyAction {
    /// Hold no socket, so the kernel refuses: TCP clients get a RST at once,
    /// UDP clients an ICMP port unreachable.
    #[default]
    Reject,
    /// Keep the socket. TCP connections are accepted and reset at once
    /// (`SO_LINGER` 0); UDP datagrams are discarded silently. A truly silent
    /// TCP drop (no SYN-ACK) needs a packet filter, which this crate never touches.
    Drop,
}

impl fmt::Display for EmptyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EmptyAction::Reject => "Reject",
            EmptyAction::Drop => "Drop",
        })
    }
}

/// One backend endpoint of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// The endpoint is shutting down. Terminating backends only receive new
    /// connections when no backend in the set is ready (as kube-proxy does);
    /// their open connections are never touched.
    pub terminating: bool,
}

impl BackendSpec {
    /// A ready (not terminating) backend.
    pub fn ready(addr: SocketAddr) -> Self {
        Self {
            addr,
            terminating: false,
        }
    }
}

/// Everything the proxy needs to serve one frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Display name, e.g. `default/web:http`, used in status and logs.
    pub name: String,
    /// The usable backends, already chosen by the controller. Duplicate
    /// addresses are collapsed into one backend.
    pub backends: Vec<BackendSpec>,
    pub algorithm: Algorithm,
    /// `ClientIP` session affinity timeout: a client IP that connected
    /// within this time goes back to the same backend, whatever the algorithm.
    pub affinity: Option<Duration>,
    pub on_empty: EmptyAction,
    /// Serve HTTP per request instead of relaying bytes (TCP frontends only).
    pub l7: Option<crate::l7::L7Spec>,
}

/// Tuning shared by every frontend of a [`crate::Proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long to wait for a backend to accept a TCP connection.
    pub connect_timeout: Duration,
    /// How many different backends to try for one TCP connection (or UDP
    /// flow) before giving up; 0 counts as 1.
    pub connect_attempts: usize,
    /// A UDP flow with no traffic in either direction for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// Listen backlog of TCP frontends.
    pub tcp_backlog: u32,
    /// Where L7 frontends write their access log (one JSON object per request); off when
    /// `None`.
    pub access_log: Option<crate::l7::AccessLog>,
    /// Threads of their own that serve L7 client connections, each a current-thread
    /// runtime (connections are dealt to them in turn); 0 serves them on the runtime of the
    /// caller instead. Started with the first L7 frontend.
    pub l7_threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            udp_idle_timeout: Duration::from_secs(30),
            tcp_backlog: 4096,
            access_log: None,
            l7_threads: 0,
        }
    }
}
