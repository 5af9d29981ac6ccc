//! switchyard's embedded Kubernetes-compatible API server, for single-machine use.
//!
//! It owns: durable storage of namespaces, nodes, pods, services, endpointslices and secrets
//! (redb, with resourceVersions that keep increasing across restarts), the REST verbs kubectl
//! and client-go use (get, list, watch, create, update, patch, delete), discovery, `ClusterIP` and
//! `NodePort` allocation, validation with Kubernetes-style `Status` errors, graceful Pod deletion
//! and the `EndpointSlice` controller. It serves HTTPS with a self-signed CA made on first start
//! and bearer-token authentication, and writes a kubeconfig for clients.
//!
//! It never does what the node daemon does: no scheduling, no kubelet, no packet path.
//!
//! Embedding it (the daemon, or `switchyard apiserver`):
//!
//! ```no_run
//! # async fn f() -> Result<(), switchyard_apiserver::ApiServerError> {
//! use switchyard_apiserver::ApiServerConfig;
//! let config = ApiServerConfig {
//!     data_dir: "/var/lib/switchyard/apiserver".into(),
//!     ..ApiServerConfig::default()
//! };
//! let server = switchyard_apiserver::start(config).await?;
//! println!("kubectl --kubeconfig {}", server.kubeconfig_path().display());
//! // ... later:
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Files in `data_dir`: `store.redb` (every object), `pki/ca.crt` and `pki/ca.key` (the CA,
//! made once), `token` (made once unless the config gives one), `kubeconfig` (rewritten on
//! every start, since the port may change).
//!
//! Where it differs from a real API server, on purpose: a Pod's `status` given at creation is
//! kept (there is no kubelet to report it, so a user or test sets it); watch history lives in
//! memory, so after a restart a watch from an older resourceVersion gets 410 Expired and the
//! client relists; `fieldValidation=Warn` is treated like `Ignore`; there is no admission
//! chain, RBAC (one token is all-powerful), protobuf, server-side apply, `limit`/`continue`
//! paging (a list is returned whole) or garbage collector beyond Namespace contents and the
//! controller's own slices.
#![forbid(unsafe_code)]

mod controller;
mod error;
pub mod hints;
mod managed;
mod net;
mod patch;
mod pki;
mod resources;
mod rest;
mod selector;
mod server;
mod store;
mod table;
mod time;
mod validation;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use error::ApiServerError;
pub use managed::{ANNOTATION_MANIFESTS, ManifestObject, ManifestRef, ManifestReport};
pub use server::{ApiHandle, RunningApiServer};

/// How the API server is run. Built once (from the CLI) and passed down. (`Debug` leaves the
/// token out, so a logged config gives nothing away.)
#[derive(Clone)]
pub struct ApiServerConfig {
    /// Where the database, the PKI (CA, serving certificate), the token and the kubeconfig live.
    pub data_dir: PathBuf,
    /// The address to serve on; port 0 picks an ephemeral port (see
    /// [`RunningApiServer::local_addr`]).
    pub bind_address: SocketAddr,
    /// Service CIDRs, at most one per address family (`10.96.0.0/16`, `fd00:96::/108`); the
    /// first is the primary family.
    pub service_cluster_ip_range: Vec<String>,
    /// The `NodePort` range, inclusive.
    pub service_node_port_range: (u16, u16),
    /// The bearer token clients must present; `None` makes one on first start (kept in
    /// `data_dir/token`).
    pub token: Option<String>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How many recent changes are kept for watches that resume from a resourceVersion; a
    /// watch from before the oldest kept change gets 410 Expired.
    pub watch_history: usize,
    /// Whether the `EndpointSlice` controller runs.
    pub endpointslice_controller: bool,
}

impl std::fmt::Debug for ApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerConfig")
            .field("data_dir", &self.data_dir)
            .field("bind_address", &self.bind_address)
            .field("service_cluster_ip_range", &self.service_cluster_ip_range)
            .field("service_node_port_range", &self.service_node_port_range)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("bookmark_interval", &self.bookmark_interval)
            .field("watch_history", &self.watch_history)
            .field("endpointslice_controller", &self.endpointslice_controller)
            .finish()
    }
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/switchyard/apiserver"),
            bind_address: SocketAddr::from(([127, 0, 0, 1], 6443)),
            service_cluster_ip_range: vec!["10.96.0.0/16".to_owned(), "fd00:96::/108".to_owned()],
            service_node_port_range: (30000, 32767),
            token: None,
            bookmark_interval: Duration::from_mins(1),
            watch_history: 10_000,
            endpointslice_controller: true,
        }
    }
}

/// Runs the API server until `shutdown` completes.
pub async fn run(
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiServerError> {
    let running = start(config).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}

/// Starts the API server in this process and returns once it accepts connections.
pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, ApiServerError> {
    server::start(config).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_leaves_the_token_out() {
        let config = super::ApiServerConfig {
            token: Some("s3cret".to_owned()),
            ..super::ApiServerConfig::default()
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("s3cret") && text.contains("<redacted>"),
            "{text}"
        );
    }
}
