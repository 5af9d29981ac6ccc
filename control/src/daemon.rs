//! Wiring of the daemon: the datapath, the controller, the sources, the HTTP endpoints and the
//! signals, from one [`DaemonConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::ProxyMode;
use crate::controller::{Controller, ControllerConfig, Health};
use crate::datapath::ebpf::{EbpfConfig, EbpfDatapath};
use crate::datapath::userspace::{self, UserspaceConfig, UserspaceDatapath};
use crate::datapath::{Datapath, Status};
use crate::http::{self, AdminState, Endpoints};
use crate::metrics::Metrics;
use crate::model::NodeContext;
use crate::source::cluster::{self, ClusterConfig, ClusterConnection, ClusterError};
use crate::source::manifests::{self, ManifestConfig};

/// Everything `switchyard run` was told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    /// Where Services and their endpoints come from.
    pub source: Source,
    pub metrics_bind_address: SocketAddr,
    pub healthz_bind_address: SocketAddr,
    pub sync_period: Duration,
    pub shutdown_grace: Duration,
    /// Which datapath serves Service traffic.
    pub mode: ProxyMode,
    pub userspace: UserspaceConfig,
    pub ebpf: EbpfConfig,
}

/// Where the daemon reads Services and their endpoints.
#[derive(Clone, Debug)]
pub enum Source {
    /// A folder of manifests, watched.
    Manifests(PathBuf),
    /// An API server's watches.
    Cluster {
        connection: ClusterConnection,
        derive_endpoint_slices: bool,
    },
}

/// A source ready to run.
enum Feed {
    Manifests(PathBuf),
    Cluster(kube::Client, ClusterConfig),
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up the userspace datapath: {0}")]
    Datapath(#[from] crate::datapath::vip::VipError),
    #[error("cannot set up the eBPF datapath: {0}")]
    Ebpf(#[from] switchyard_ebpf::EbpfError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and cleans up.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let feed = match &config.source {
        Source::Manifests(dir) => {
            if !dir.is_dir() {
                return Err(crate::source::SourceError::NotADirectory(dir.clone()).into());
            }
            Feed::Manifests(dir.clone())
        }
        Source::Cluster {
            connection,
            derive_endpoint_slices,
        } => Feed::Cluster(
            connection.client().await?,
            ClusterConfig {
                node_name: config.node_name.clone(),
                derive_endpoint_slices: *derive_endpoint_slices,
            },
        ),
    };
    let mode = match config.mode {
        ProxyMode::Auto => match switchyard_ebpf::probe() {
            Ok(()) => {
                tracing::info!(
                    "proxy mode auto: this kernel runs switchyard's eBPF programs; using ebpf"
                );
                ProxyMode::Ebpf
            }
            Err(error) => {
                tracing::warn!(%error, "proxy mode auto: eBPF is not available; using userspace");
                ProxyMode::Userspace
            }
        },
        mode => mode,
    };
    if mode == ProxyMode::Ebpf {
        let datapath = EbpfDatapath::new(&config.ebpf)?;
        let status: Status = datapath.status();
        serve(config, feed, datapath, status, "ebpf").await
    } else {
        let datapath = UserspaceDatapath::new(config.userspace.clone()).await?;
        let status: Status = Arc::new(userspace::UserspaceStatus(datapath.proxy()));
        serve(config, feed, datapath, status, "userspace").await
    }
}

/// Runs the controller over `datapath` with the sources, endpoints and signals.
async fn serve<D: Datapath>(
    config: DaemonConfig,
    feed: Feed,
    datapath: D,
    status: Status,
    proxy_mode: &'static str,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new(Arc::clone(&status)));
    let health = Arc::new(Health::new(config.sync_period));
    let state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        status,
        proxy_mode,
    });

    let listen = |what, addr| async move {
        http::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { what, addr, source })
    };
    let metrics_listener = listen("metrics address", config.metrics_bind_address).await?;
    let healthz_listener = listen("healthz address", config.healthz_bind_address).await?;

    let cancel = CancellationToken::new();
    tokio::spawn(http::serve(
        metrics_listener,
        Endpoints::Metrics,
        Arc::clone(&state),
        cancel.clone(),
    ));
    tokio::spawn(http::serve(
        healthz_listener,
        Endpoints::Health,
        state,
        cancel.clone(),
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Signals)?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("SIGINT received"),
        }
        on_signal.cancel();
    });

    let (events, receiver) = mpsc::channel(1024);
    let (source_metrics, source_cancel) = (Arc::clone(&metrics), cancel.clone());
    let source = match feed {
        Feed::Cluster(client, cluster) => tokio::spawn(async move {
            cluster::run(client, cluster, events, source_metrics, source_cancel).await;
            Ok(())
        }),
        Feed::Manifests(dir) => {
            let source_config = ManifestConfig {
                dir,
                rescan_period: config.sync_period,
            };
            tokio::spawn(async move {
                let result =
                    manifests::run(source_config, events, source_metrics, source_cancel.clone())
                        .await;
                if result.is_err() {
                    source_cancel.cancel(); // nothing can reach the datapath any more: stop
                }
                result
            })
        }
    };

    tracing::info!(
        node = %config.node_name,
        source = %describe(&config.source),
        metrics = %config.metrics_bind_address,
        healthz = %config.healthz_bind_address,
        mode = proxy_mode,
        "switchyard started"
    );
    let controller = Controller::new(
        ControllerConfig {
            node: NodeContext {
                name: config.node_name.clone(),
            },
            sync_period: config.sync_period,
            shutdown_grace: config.shutdown_grace,
        },
        datapath,
        metrics,
        health,
    );
    controller.run(receiver, cancel.clone()).await;
    cancel.cancel();
    if let Ok(Err(error)) = source.await {
        return Err(error.into());
    }
    tracing::info!("switchyard stopped");
    Ok(())
}

/// The source, for the start line.
fn describe(source: &Source) -> String {
    match source {
        Source::Manifests(dir) => format!("manifests {}", dir.display()),
        Source::Cluster { connection, .. } => match (&connection.kubeconfig, &connection.master) {
            (Some(path), _) => format!("API server of kubeconfig {}", path.display()),
            (None, Some(master)) => format!("API server {master}"),
            (None, None) => "API server (in-cluster)".to_owned(),
        },
    }
}
