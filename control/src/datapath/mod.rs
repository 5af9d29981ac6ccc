//! Datapaths: where a [`TableDiff`] becomes kernel or proxy state. Each adapter turns the diff
//! into calls of a lower crate's plain API (`switchyard-proxy` for userspace).

pub mod ebpf;
pub mod l7;
mod stale;
pub mod userspace;
pub mod vip;

use std::future::Future;

use crate::diff::TableDiff;
use crate::model::{Frontend, ServiceTable};

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Frontends programmed (added, changed or removed).
    pub programmed: usize,
    /// Frontends that could not be programmed, with why; retried at the next sync.
    pub failed: Vec<(Frontend, String)>,
    /// Kernel maps that were full (one entry per failed write), for the metric.
    pub full_maps: Vec<&'static str>,
}

/// Differences found between the wanted state and the datapath's, and repaired.
#[derive(Debug, Default)]
pub struct Drift {
    pub repaired: Vec<String>,
}

/// A datapath that the controller programs with diffs.
pub trait Datapath: Send + 'static {
    /// The name in logs and `/proxyMode`.
    fn name(&self) -> &'static str;

    /// Programs a diff. Make-before-break: what is added is ready before what is removed goes.
    fn apply(&mut self, diff: &TableDiff) -> impl Future<Output = Applied> + Send;

    /// Compares the datapath's state with the wanted table and repairs any difference with the
    /// smallest change.
    fn verify(&mut self, want: &ServiceTable) -> impl Future<Output = Drift> + Send;

    /// Whether it holds listening sockets, which a successor instance can take over (all are
    /// bound with `SO_REUSEPORT`): the userspace proxy's, the L7 listeners, health check ports.
    fn listens(&self) -> bool {
        false
    }

    /// Closes every listening socket at once and leaves open connections to finish: the first
    /// step of a shutdown, or of a handover to a successor that has bound the same addresses
    /// (the kernel moves the connections queued on a closed listener to its).
    fn close_listeners(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Stops serving: closes the listeners, drains open connections for up to `grace`, then
    /// removes what the datapath added to the node, unless it was `handed_over` to a successor
    /// that uses it now (the VIPs).
    fn shutdown(
        &mut self,
        grace: std::time::Duration,
        handed_over: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// What the HTTP endpoints and metrics read from a running datapath.
pub trait StatusSource: Send + Sync {
    /// Every frontend as the datapath holds it now.
    fn frontends(&self) -> Vec<FrontendView>;

    /// Whether the frontends' connection and byte counts are real (the userspace proxy counts;
    /// the kernel's socket-level balancing does not), so that metrics export only real ones.
    fn counts_connections(&self) -> bool {
        true
    }

    /// Counters the datapath keeps itself (the kernel's, in eBPF mode).
    fn counters(&self) -> Vec<DatapathCounter> {
        Vec::new()
    }
}

/// A shared handle on a datapath's status.
pub type Status = std::sync::Arc<dyn StatusSource>;

/// A counter kept by the datapath, exported as a Prometheus counter.
#[derive(Clone, Debug)]
pub struct DatapathCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// The live state of one frontend, for `/services`, `switchyard services` and metrics.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FrontendView {
    /// `10.96.0.10:80/TCP`
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer` (empty where the datapath does
    /// not know it).
    #[serde(default)]
    pub kind: String,
    /// `namespace/name:port`
    pub service: String,
    pub algorithm: String,
    pub affinity_seconds: Option<u64>,
    /// Whether the frontend is accepting (false while it refuses for lack of backends).
    pub listening: bool,
    /// Connections and flows ever accepted, including to backends that have left.
    pub connections_total: u64,
    /// Request counters of a frontend served per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7View>,
    pub backends: Vec<BackendView>,
}

/// Requests of an L7 frontend, as its clients saw them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct L7View {
    /// `http1`, `h2c` or `https`: what is spoken to backends.
    pub upstream: String,
    pub balancer: String,
    /// TLS is terminated.
    pub tls: bool,
    pub requests: RequestsView,
    pub retries: u64,
    /// Retries the budget refused.
    pub retries_denied: u64,
    pub ejections: u64,
}

/// Request outcomes and latency (request headers to response headers).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RequestsView {
    /// Responses with status 1xx..5xx.
    pub by_class: [u64; 5],
    /// Requests that got no response (connect failure, reset, timeout).
    pub failed: u64,
    /// Observations per bucket of [`switchyard_proxy::l7::LATENCY_BUCKETS`] (not cumulative).
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

impl From<&switchyard_proxy::l7::RequestCounts> for RequestsView {
    fn from(c: &switchyard_proxy::l7::RequestCounts) -> Self {
        RequestsView {
            by_class: c.by_class,
            failed: c.failed,
            latency_buckets: c.latency.buckets.to_vec(),
            latency_count: c.latency.count,
            latency_sum_seconds: c.latency.sum_nanos as f64 / 1e9,
        }
    }
}

/// The per-request state of one backend of an L7 frontend.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackendL7View {
    pub requests: RequestsView,
    pub in_flight: u64,
    /// The peak-EWMA latency estimate, in microseconds.
    pub ewma_micros: u64,
    /// Ejected by outlier detection right now.
    pub ejected: bool,
    pub ejections_total: u64,
    /// The active health check's verdict (true while checks are off).
    pub healthy: bool,
}

/// The live state of one backend of a frontend.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackendView {
    /// `10.244.0.11:8080`
    pub backend: String,
    /// `active` or `terminating`
    pub state: String,
    pub connections_total: u64,
    pub connections_active: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connect_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<BackendL7View>,
}
