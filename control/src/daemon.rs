//! Wiring of the daemon: the datapath, the controller, the sources, the HTTP endpoints and the
//! signals, from one [`DaemonConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::cli::ProxyMode;
use crate::controller::{CheckNow, Controller, ControllerConfig, Health};
use crate::datapath::ebpf::{EbpfConfig, EbpfDatapath};
use crate::datapath::l7::{L7Config, WithL7, WithL7Status};
use crate::datapath::userspace::{self, UserspaceConfig, UserspaceDatapath};
use crate::datapath::{Datapath, Status};
use crate::healthcheck::WithHealthChecks;
use crate::http::{self, AdminState, Endpoints};
use crate::metrics::Metrics;
use crate::model::{NodeContext, NodePortAddresses};
use crate::source::cluster::{self, ClusterConfig, ClusterConnection, ClusterError};
use crate::source::manifests::{self, ManifestConfig};
use switchyard_apiserver::{ApiServerConfig, RunningApiServer};

/// Everything `switchyard run` was told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    /// Which of the node's addresses serve NodePorts.
    pub nodeport_addresses: NodePortAddresses,
    /// `--max-services`, `--max-service-ports`, `--max-service-backends`.
    pub limits: crate::model::Limits,
    /// Where Services and their endpoints come from.
    pub source: Source,
    pub metrics_bind_address: SocketAddr,
    pub healthz_bind_address: SocketAddr,
    /// The admin socket (`switchyard repair`); none when `None`.
    pub admin_socket: Option<PathBuf>,
    pub sync_period: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long a daemon holding listeners keeps accepting while a successor
    /// may take them over (`--handover-wait`).
    pub handover_wait: Duration,
    /// Which datapath serves Service traffic.
    pub mode: ProxyMode,
    pub userspace: UserspaceConfig,
    pub ebpf: EbpfConfig,
    /// eBPF mode's L7 listeners.
    pub l7: L7Config,
    /// Where L7 requests are logged (`-` for stdout); off when `None`.
    pub access_log: Option<PathBuf>,
    pub watch_secrets: bool,
}

/// Where the daemon reads Services and their endpoints: always an API server's watches.
#[derive(Clone, Debug)]
pub enum Source {
    /// A cluster's API server.
    Cluster {
        connection: ClusterConnection,
        derive_endpoint_slices: bool,
    },
    /// The embedded API server, started in this process, with a manifest folder loaded into
    /// it and followed.
    Embedded {
        apiserver: ApiServerConfig,
        manifests: Option<PathBuf>,
    },
}

/// A source ready to run: the client to watch with, and the embedded API server (with the
/// manifest folder to load into it) if it is ours to run.
struct Feed {
    client: kube::Client,
    cluster: ClusterConfig,
    server: Option<RunningApiServer>,
    manifests: Option<PathBuf>,
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
    Admin(#[from] admin::BindError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot start the embedded API server: {0}")]
    ApiServer(#[from] switchyard_apiserver::ApiServerError),
    #[error(
        "cannot start the embedded API server while the running switchyard serves it ({0}): \
         send that one SIGTERM first (it keeps serving for --handover-wait while this one \
         takes over), or run the API server apart (switchyard apiserver, --kubeconfig)"
    )]
    ApiServerTaken(#[source] switchyard_apiserver::ApiServerError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the access log and starts its writer.
async fn access_log(
    path: &std::path::Path,
) -> Result<switchyard_proxy::l7::AccessLog, DaemonError> {
    if path.as_os_str() == "-" {
        return Ok(switchyard_proxy::l7::AccessLog::spawn(tokio::io::stdout()));
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|source| DaemonError::AccessLog {
            path: path.to_owned(),
            source,
        })?;
    Ok(switchyard_proxy::l7::AccessLog::spawn(file))
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and cleans up.
pub async fn run(mut config: DaemonConfig) -> Result<(), DaemonError> {
    // Before anything binds: an instance answering on the admin socket is the one this one
    // takes over from (its socket is replaced by ours below).
    let predecessor = match &config.admin_socket {
        Some(path) => admin::Predecessor::find(path).await,
        None => None,
    };
    if predecessor.is_some() {
        tracing::info!(
            "a running switchyard answers on the admin socket: this instance takes over its \
             listeners once it has programmed its first view"
        );
    }
    allow_queued_connections_to_move();
    if let Some(path) = &config.access_log {
        let log = access_log(path).await?;
        config.userspace.proxy.access_log = Some(log.clone());
        config.l7.proxy.access_log = Some(log);
    }
    let cluster = ClusterConfig {
        node_name: config.node_name.clone(),
        derive_endpoint_slices: false,
        watch_secrets: config.watch_secrets,
    };
    let feed = match &config.source {
        Source::Cluster {
            connection,
            derive_endpoint_slices,
        } => Feed {
            client: connection.client().await?,
            cluster: ClusterConfig {
                derive_endpoint_slices: *derive_endpoint_slices,
                ..cluster
            },
            server: None,
            manifests: None,
        },
        Source::Embedded {
            apiserver,
            manifests,
        } => {
            if let Some(dir) = manifests
                && !dir.is_dir()
            {
                return Err(crate::source::SourceError::NotADirectory(dir.clone()).into());
            }
            let server = match switchyard_apiserver::start(apiserver.clone()).await {
                Ok(server) => server,
                Err(error) if predecessor.is_some() => {
                    return Err(DaemonError::ApiServerTaken(error));
                }
                Err(error) => return Err(error.into()),
            };
            tracing::info!(
                address = %server.local_addr(),
                kubeconfig = %server.kubeconfig_path().display(),
                "embedded API server serving; kubectl --kubeconfig {}",
                server.kubeconfig_path().display()
            );
            let connection = ClusterConnection {
                kubeconfig: Some(server.kubeconfig_path().to_owned()),
                master: None,
            };
            Feed {
                client: connection.client().await?,
                cluster,
                server: Some(server),
                manifests: manifests.clone(),
            }
        }
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
        let kernel: Status = datapath.status();
        let datapath = WithL7::new(datapath, config.l7.clone());
        let status: Status = Arc::new(WithL7Status {
            inner: kernel,
            proxy: datapath.proxy(),
        });
        let datapath = WithHealthChecks::new(datapath, HEALTH_CHECK_BIND);
        serve(config, feed, predecessor, datapath, status, "ebpf").await
    } else {
        let datapath = UserspaceDatapath::new(config.userspace.clone()).await?;
        let status: Status = Arc::new(userspace::UserspaceStatus(datapath.proxy()));
        let datapath = WithHealthChecks::new(datapath, HEALTH_CHECK_BIND);
        serve(config, feed, predecessor, datapath, status, "userspace").await
    }
}

/// Where the health check node ports of `externalTrafficPolicy: Local` Services listen: every
/// IPv4 address of the node, as kube-proxy's.
const HEALTH_CHECK_BIND: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Sets `net.ipv4.tcp_migrate_req` in the node's network namespace, so that the connections
/// queued on a listener this instance closes at a handover move to the successor's listener
/// instead of being reset (Linux 5.14 and later).
fn allow_queued_connections_to_move() {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(SYSCTL) {
        Ok(value) if value.trim() == "1" => {}
        Ok(_) => match std::fs::write(SYSCTL, "1") {
            Ok(()) => tracing::info!(
                "set net.ipv4.tcp_migrate_req=1: connections queued on a closed listener move \
                 to the next instance's"
            ),
            Err(error) => tracing::warn!(
                %error,
                "cannot set net.ipv4.tcp_migrate_req=1: at a handover to the next instance, \
                 connections not yet accepted may be reset"
            ),
        },
        Err(error) => tracing::info!(
            %error,
            "this kernel has no net.ipv4.tcp_migrate_req: at a handover to the next instance, \
             connections not yet accepted may be reset"
        ),
    }
}

/// Runs the controller over `datapath` with the sources, endpoints and signals.
async fn serve<D: Datapath>(
    config: DaemonConfig,
    feed: Feed,
    predecessor: Option<admin::Predecessor>,
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

    let listen =
        |what, addr| http::bind(addr).map_err(|source| DaemonError::Listen { what, addr, source });
    let metrics_listener = listen("metrics address", config.metrics_bind_address)?;
    let healthz_listener = listen("healthz address", config.healthz_bind_address)?;
    let admin_listener = config
        .admin_socket
        .as_deref()
        .map(admin::bind)
        .transpose()?;

    // `terminate`: SIGTERM or SIGINT came. `stop`: programming stops (at `terminate`, or when
    // a successor takes over). `http` ends the metrics and healthz servers once the listeners
    // are closed, `exit` the admin socket at the very end.
    let terminate = CancellationToken::new();
    let stop = CancellationToken::new();
    let http = CancellationToken::new();
    let exit = CancellationToken::new();
    tokio::spawn(http::serve(
        metrics_listener,
        Endpoints::Metrics,
        Arc::clone(&state),
        http.clone(),
    ));
    tokio::spawn(http::serve(
        healthz_listener,
        Endpoints::Health,
        state,
        http.clone(),
    ));

    // Checks of the datapath asked for between the periodic ones, and a successor's handover.
    let (checks, checks_rx) = mpsc::channel(4);
    let (handovers, mut handovers_rx) = mpsc::channel(1);
    let admin_server = admin_listener.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            admin::Requests {
                checks: checks.clone(),
                handovers,
            },
            exit.clone(),
        ))
    });
    let check_after_takeover = checks.clone();
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(DaemonError::Signals)?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::info!("SIGHUP received: checking the datapath now");
            // A full queue already holds a check that has not started: nothing is lost.
            let _ = checks.try_send(CheckNow { reply: None });
        }
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DaemonError::Signals)?;
    let on_signal = terminate.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("SIGINT received"),
        }
        on_signal.cancel();
    });

    let (events, receiver) = mpsc::channel(1024);
    let Feed {
        client,
        cluster,
        server,
        manifests,
    } = feed;
    let loader = match (&server, manifests) {
        (Some(server), Some(dir)) => {
            let (loaded, on_loaded) = tokio::sync::oneshot::channel();
            let loader = tokio::spawn(manifests::load_into(
                ManifestConfig {
                    dir,
                    rescan_period: config.sync_period,
                },
                server.handle(),
                Arc::clone(&metrics),
                stop.clone(),
                loaded,
            ));
            // The first view holds the whole folder.
            tokio::select! {
                result = on_loaded => if result.is_err() {
                    stop.cancel();
                    return match loader.await {
                        Ok(Err(error)) => Err(error.into()),
                        _ => Ok(()),
                    };
                },
                () = terminate.cancelled() => stop.cancel(),
            }
            Some(loader)
        }
        _ => None,
    };
    let source_metrics = Arc::clone(&metrics);
    let source_cancel = stop.clone();
    let source = tokio::spawn(async move {
        cluster::run(client, cluster, events, source_metrics, source_cancel).await;
    });

    tracing::info!(
        node = %config.node_name,
        source = %describe(&config.source),
        metrics = %config.metrics_bind_address,
        healthz = %config.healthz_bind_address,
        admin = %config.admin_socket.as_deref().map_or_else(|| "off".into(), |p| p.display().to_string()),
        mode = proxy_mode,
        "switchyard started"
    );
    let mut controller = Controller::new(
        ControllerConfig {
            node: NodeContext {
                name: config.node_name.clone(),
                nodeport_addresses: config.nodeport_addresses.clone(),
                limits: config.limits,
            },
            sync_period: config.sync_period,
        },
        datapath,
        metrics,
        health,
    );
    let (programmed, on_programmed) = tokio::sync::oneshot::channel();
    controller.notify_programmed(programmed);
    if let Some(predecessor) = predecessor {
        let stopped = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = on_programmed => if result.is_err() { return },
                () = stopped.cancelled() => return,
            }
            let started = tokio::time::Instant::now();
            match predecessor.hand_over().await {
                Ok(()) => {
                    tracing::info!(
                        took = ?started.elapsed(),
                        "took over from the previous instance: it closed its listeners"
                    );
                    // Frontends it still held when this one bound (an instance without
                    // SO_REUSEPORT): bound now rather than at the next periodic check.
                    let _ = check_after_takeover.try_send(CheckNow { reply: None });
                }
                Err(error) => tracing::warn!(
                    %error,
                    "cannot take over from the previous instance; it keeps its listeners \
                     until it stops"
                ),
            }
        });
    }

    // Program until SIGTERM, or until a successor takes over.
    let mut successor = None;
    let mut run = std::pin::pin!(controller.run(receiver, checks_rx, stop.clone()));
    let mut datapath = loop {
        tokio::select! {
            datapath = &mut run => break datapath,
            () = terminate.cancelled(), if !stop.is_cancelled() => stop.cancel(),
            Some(handover) = handovers_rx.recv(), if successor.is_none() => {
                tracing::info!("the next instance has bound its listeners and asks to take over");
                successor = Some(handover);
                stop.cancel();
            }
        }
    };
    let _ = source.await;
    let loaded = match loader {
        Some(loader) => loader.await.unwrap_or(Ok(())),
        None => Ok(()),
    };
    // The embedded API server goes first: a successor started now can start its own.
    if let Some(server) = server {
        server.shutdown().await;
    }
    if successor.is_none() && datapath.listens() && !config.handover_wait.is_zero() {
        tracing::info!(
            wait = ?config.handover_wait,
            "stopping: still accepting connections while the next instance may take over"
        );
        tokio::select! {
            handover = handovers_rx.recv() => successor = handover,
            () = tokio::time::sleep(config.handover_wait) => {}
        }
    }
    // One handover only: a later one is refused.
    drop(handovers_rx);
    datapath.close_listeners().await;
    http.cancel();
    let handed_over = successor.is_some();
    if let Some(handover) = successor {
        let _ = handover.reply.send(());
        tracing::info!(
            "handed over to the next instance: listeners closed, VIPs left to it, open \
             connections finishing"
        );
    }
    tracing::info!(grace = ?config.shutdown_grace, "draining open connections");
    datapath.shutdown(config.shutdown_grace, handed_over).await;
    if handed_over && !terminate.is_cancelled() {
        // Exiting now would have a supervisor start this instance again, which would take the
        // node back from its successor.
        tracing::info!("drained; waiting for SIGTERM to exit");
        terminate.cancelled().await;
    }
    exit.cancel();
    if let Some(admin_server) = admin_server {
        // The successor's handover answer is written before the process goes.
        let _ = admin_server.await;
    }
    loaded?;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// The source, for the start line.
fn describe(source: &Source) -> String {
    match source {
        Source::Embedded {
            manifests: Some(dir),
            ..
        } => format!("embedded API server, manifests {}", dir.display()),
        Source::Embedded { .. } => "embedded API server".to_owned(),
        Source::Cluster { connection, .. } => match (&connection.kubeconfig, &connection.master) {
            (Some(path), _) => format!("API server of kubeconfig {}", path.display()),
            (None, Some(master)) => format!("API server {master}"),
            (None, None) => "API server (in-cluster)".to_owned(),
        },
    }
}
