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
use crate::source::manifests::{self, ManifestConfig};

/// Everything `switchyard run` was told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    pub manifests: PathBuf,
    pub metrics_bind_address: SocketAddr,
    pub healthz_bind_address: SocketAddr,
    pub sync_period: Duration,
    pub shutdown_grace: Duration,
    /// Which datapath serves Service traffic.
    pub mode: ProxyMode,
    pub userspace: UserspaceConfig,
    pub ebpf: EbpfConfig,
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
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and cleans up.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    if !config.manifests.is_dir() {
        return Err(crate::source::SourceError::NotADirectory(config.manifests.clone()).into());
    }
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
        serve(config, datapath, status, "ebpf").await
    } else {
        let datapath = UserspaceDatapath::new(config.userspace.clone()).await?;
        let status: Status = Arc::new(userspace::UserspaceStatus(datapath.proxy()));
        serve(config, datapath, status, "userspace").await
    }
}

/// Runs the controller over `datapath` with the sources, endpoints and signals.
async fn serve<D: Datapath>(
    config: DaemonConfig,
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
    let source_config = ManifestConfig {
        dir: config.manifests.clone(),
        rescan_period: config.sync_period,
    };
    let (source_metrics, source_cancel) = (Arc::clone(&metrics), cancel.clone());
    let source = tokio::spawn(async move {
        let result =
            manifests::run(source_config, events, source_metrics, source_cancel.clone()).await;
        if result.is_err() {
            source_cancel.cancel(); // nothing can reach the datapath any more: stop
        }
        result
    });

    tracing::info!(
        node = %config.node_name,
        manifests = %config.manifests.display(),
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
