//! What the controller asks of an L7 frontend: plain data with documented defaults.

use std::fmt;
use std::time::Duration;

/// Per-request serving of a TCP frontend (HTTP/1.1, HTTP/2, gRPC).
///
/// Downstream, a plaintext frontend speaks HTTP/1.1 and HTTP/2 with prior knowledge (told
/// apart by the HTTP/2 preface); a frontend with [`L7Spec::tls`] terminates TLS and offers
/// `h2` and `http/1.1` by ALPN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L7Spec {
    /// How requests are sent to the backends.
    pub upstream: UpstreamProtocol,
    /// How a backend is chosen for each request.
    pub balancer: RequestBalancer,
    /// Terminate TLS with this certificate.
    pub tls: Option<TlsCertificate>,
    /// Verification of the backends' certificates when [`UpstreamProtocol::Https`].
    pub upstream_tls: UpstreamTls,
    pub timeouts: Timeouts,
    pub retries: RetryPolicy,
    pub outlier: OutlierPolicy,
    /// Active HTTP health checks of every backend; off when `None`.
    pub health_check: Option<HealthCheck>,
    pub limits: Limits,
}

/// The protocol spoken to backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections (`appProtocol: http`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, one multiplexed connection per backend
    /// (`appProtocol: kubernetes.io/h2c` and `grpc`).
    Http2,
    /// TLS to the backends, HTTP/2 or HTTP/1.1 as ALPN decides (`appProtocol: https`).
    Https,
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "h2c",
            UpstreamProtocol::Https => "https",
        })
    }
}

/// How a backend is chosen for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum RequestBalancer {
    /// Power of two choices over peak-EWMA latency weighted by requests in flight (as
    /// linkerd2-proxy does): two backends are drawn at random and the cheaper one is used.
    #[default]
    PeakEwma,
    RoundRobin,
    /// The backend with the fewest requests in flight; ties broken at random.
    LeastRequest,
    /// Uniformly random.
    Random,
    /// A Maglev table over the backends, keyed by a header's or a cookie's value: the same
    /// value goes to the same backend while it is in the set. Requests without the key are
    /// balanced at random.
    ConsistentHash(HashKey),
}

impl fmt::Display for RequestBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestBalancer::PeakEwma => f.write_str("peak-ewma"),
            RequestBalancer::RoundRobin => f.write_str("round-robin"),
            RequestBalancer::LeastRequest => f.write_str("least-request"),
            RequestBalancer::Random => f.write_str("random"),
            RequestBalancer::ConsistentHash(HashKey::Header(h)) => write!(f, "hash(header {h})"),
            RequestBalancer::ConsistentHash(HashKey::Cookie(c)) => write!(f, "hash(cookie {c})"),
        }
    }
}

/// What a consistent hash is computed over.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// A request header, by name (compared case-insensitively).
    Header(String),
    /// A cookie, by name.
    Cookie(String),
}

/// A certificate chain and its private key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsCertificate")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// How backends' certificates are checked for [`UpstreamProtocol::Https`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates (PEM) that must have signed the backend's certificate. Without them
    /// the connection is encrypted but the backend is not authenticated (pods rarely hold
    /// certificates for their own IPs).
    pub ca_pem: Option<Vec<u8>>,
    /// The name sent in SNI and checked in the certificate; the backend's IP when `None`.
    pub server_name: Option<String>,
}

/// Timeouts up to the response's headers (a streaming response may then last any time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// One attempt: connect, send, and wait for the response's headers. Off when `None`.
    pub per_try: Option<Duration>,
    /// The whole request with all its retries. Off when `None`.
    pub request: Option<Duration>,
}

/// Which failed requests are tried again on another backend.
///
/// A request that never reached a backend (the connect failed, or the pooled connection
/// was closed before the request was written) is always safe to try again; an idempotent
/// request without a body (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`) is also
/// tried again when the backend answers `503`. Retries are limited by a budget, as
/// linkerd2-proxy's: over the last 10 seconds, retries may be at most `budget_percent` of
/// the requests plus `min_retries_per_second` × 10, so retries never multiply the load of a
/// failing service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// Retries of one request at most (0 turns retries off).
    pub max_retries: u32,
    /// Retries as a percentage of requests (default 20).
    pub budget_percent: u32,
    /// Retries per second allowed on top of the percentage, however few requests came
    /// (default 10).
    pub min_retries_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            budget_percent: 20,
            min_retries_per_second: 10,
        }
    }
}

/// Passive outlier detection: a backend that fails too many requests in a row is ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutlierPolicy {
    /// `5xx` responses or connect failures in a row that eject a backend (0 turns ejection
    /// off).
    pub consecutive_failures: u32,
    /// The first ejection lasts this long, the n-th n times as long (at most 10 times).
    pub base_ejection: Duration,
    /// At most this percentage of the backends are ejected at once (at least one, never all).
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// Active health checks: `GET path` on every backend every `interval`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row that take a backend out.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_threshold: u32,
}

impl HealthCheck {
    /// Checks of `path` with the default interval (10 s), timeout (1 s) and thresholds (3, 2).
    pub fn of_path(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// Limits that protect the proxy from clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Request line and headers (HTTP/1.1), header list (HTTP/2). Larger requests get
    /// `431` (HTTP/1.1) or a stream reset (HTTP/2). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Request bodies larger than this get `413`; unlimited when `None`.
    pub max_body_bytes: Option<u64>,
    /// A client connection with no request in flight and no bytes moving for this long is
    /// closed. Default 5 minutes.
    pub idle_timeout: Duration,
    /// An HTTP/1.1 client must send a request's headers within this time. Default 10 s.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            idle_timeout: Duration::from_mins(5),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}
