//! switchyard's userspace L4 data path.
//!
//! This crate owns the frontend sockets (TCP listeners and UDP sockets on
//! Service VIPs and ports), the choice of a backend for every new TCP
//! connection or UDP flow (random, round robin, least connections, `ClientIP`
//! affinity), the relaying of bytes and datagrams, and the per-backend
//! counters behind [`Proxy::status`].
//!
//! It never speaks to Kubernetes, never decides which endpoints are usable
//! (the controller hands it the backends to use), never adds addresses to
//! interfaces and never touches packet filters or routes. It only ever binds
//! the frontends it is given, with `IP_FREEBIND` so that the controller may
//! add the VIP to `lo` after asking for the frontend.
//!
//! Updates never disturb other frontends or open connections: a backend set
//! is published as an immutable snapshot, read without a lock by new
//! connections; connections that already chose a backend keep it until they end.

#![forbid(unsafe_code)]

mod balance;
pub mod l7;
pub mod maglev;
pub mod socket;
mod spec;
mod stats;
mod tcp;
mod udp;

#[cfg(test)]
mod testing;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::Balancer;

pub use crate::spec::{Algorithm, BackendSpec, EmptyAction, Proto, ProxyConfig, ServiceSpec};
pub use crate::stats::{BackendStatus, FrontendStatus};

/// Why a frontend could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The frontend socket could not be created or bound. A new frontend is
    /// then not created; an existing one keeps its new backend set but is not
    /// listening until an `upsert` binds it.
    #[error("{proto} frontend {frontend}: cannot bind: {source}")]
    Bind {
        frontend: SocketAddr,
        proto: Proto,
        source: io::Error,
    },
    /// Port 0 would bind an ephemeral port, never the Service port.
    #[error("{proto} frontend {frontend}: port 0 is not a frontend port")]
    InvalidFrontend { frontend: SocketAddr, proto: Proto },
    /// L7 serving is for TCP frontends only.
    #[error("{proto} frontend {frontend}: HTTP is served on TCP frontends only")]
    L7OverUdp { frontend: SocketAddr, proto: Proto },
    /// The frontend's TLS certificate or CA could not be used. The frontend serves its new
    /// backends but keeps the certificate it had, if any.
    #[error("{proto} frontend {frontend}: {source}")]
    Tls {
        frontend: SocketAddr,
        proto: Proto,
        source: l7::TlsError,
    },
    /// [`Proxy::shutdown`] was called; no frontend is served any more.
    #[error("{proto} frontend {frontend}: the proxy is shut down")]
    ShutDown { frontend: SocketAddr, proto: Proto },
}

/// The data path. Cheap to clone and share: every method takes `&self`.
///
/// Must be used inside a tokio runtime. Dropping the last handle stops every
/// listener (open TCP connections still finish); call [`Proxy::shutdown`] to
/// wait for them.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<ProxyConfig>,
    /// Serializes `upsert`, `remove` and `shutdown`, which await socket
    /// closes; holds whether the proxy is shut down.
    control: tokio::sync::Mutex<bool>,
    frontends: RwLock<BTreeMap<(SocketAddr, Proto), Arc<Frontend>>>,
    /// Every TCP connection task, for `shutdown`.
    connections: TaskTracker,
    /// Parent of every frontend's token: fires when the last `Proxy` is dropped.
    root: CancellationToken,
    /// The threads serving L7 connections (`ProxyConfig::l7_threads`), once an L7 frontend
    /// started them (`None` in it after they could not be started).
    l7_workers: std::sync::OnceLock<Option<Arc<l7::Workers>>>,
}

impl Inner {
    /// The L7 threads, started on first use; `None` to serve on the caller's runtime.
    fn l7_workers(&self) -> Option<Arc<l7::Workers>> {
        let threads = self.config.l7_threads;
        if threads == 0 {
            return None;
        }
        self.l7_workers
            .get_or_init(|| match l7::Workers::start(threads) {
                Ok(workers) => {
                    info!(threads, "L7 threads started");
                    Some(Arc::new(workers))
                }
                Err(error) => {
                    warn!(threads, %error, "cannot start the L7 threads; serving L7 connections on the main runtime");
                    None
                }
            })
            .clone()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

#[derive(Debug)]
struct Frontend {
    addr: SocketAddr,
    proto: Proto,
    balancer: Arc<Balancer>,
    /// Per-request state of an L7 frontend (unused while it is L4).
    router: Arc<l7::Router>,
    /// The task holding the socket, if any. Changed only under `Inner::control`.
    serving: Mutex<Option<Serving>>,
}

#[derive(Debug)]
struct Serving {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Serves HTTP (rather than relaying bytes).
    l7: bool,
}

impl Frontend {
    fn listening(&self) -> bool {
        self.serving
            .lock()
            .as_ref()
            .is_some_and(|s| !s.task.is_finished())
    }

    /// Binds the socket and starts serving, unless it already does.
    fn start(&self, inner: &Inner) -> Result<(), ProxyError> {
        let (config, connections, root) = (&inner.config, &inner.connections, &inner.root);
        let mut serving = self.serving.lock();
        let l7 = self.balancer.snapshot().l7.is_some();
        if serving
            .as_ref()
            .is_some_and(|s| !s.task.is_finished() && s.l7 == l7)
        {
            return Ok(());
        }
        let bind_error = |source| {
            warn!(frontend = %self.addr, proto = %self.proto, error = %source, "cannot bind frontend");
            ProxyError::Bind {
                frontend: self.addr,
                proto: self.proto,
                source,
            }
        };
        let cancel = root.child_token();
        let balancer = Arc::clone(&self.balancer);
        let task = match self.proto {
            Proto::Tcp if l7 => {
                let listener =
                    socket::tcp_listener(self.addr, config.tcp_backlog).map_err(bind_error)?;
                let ctx = Arc::new(l7::FrontendCtx {
                    addr: self.addr,
                    balancer,
                    router: Arc::clone(&self.router),
                    config: Arc::clone(config),
                    workers: inner.l7_workers(),
                });
                tokio::spawn(l7::serve(
                    listener,
                    ctx,
                    connections.clone(),
                    cancel.clone(),
                ))
            }
            Proto::Tcp => {
                let listener =
                    socket::tcp_listener(self.addr, config.tcp_backlog).map_err(bind_error)?;
                tokio::spawn(tcp::serve(
                    listener,
                    self.addr,
                    balancer,
                    Arc::clone(config),
                    connections.clone(),
                    cancel.clone(),
                ))
            }
            Proto::Udp => {
                let socket = socket::udp_socket(self.addr).map_err(bind_error)?;
                tokio::spawn(udp::serve(
                    socket,
                    self.addr,
                    balancer,
                    Arc::clone(config),
                    cancel.clone(),
                ))
            }
        };
        debug!(frontend = %self.addr, proto = %self.proto, l7, "frontend listening");
        *serving = Some(Serving { cancel, task, l7 });
        Ok(())
    }

    /// Closes the socket; returns once it is closed.
    async fn stop(&self) {
        let Some(serving) = self.serving.lock().take() else {
            return;
        };
        serving.cancel.cancel();
        if let Err(error) = serving.task.await {
            warn!(frontend = %self.addr, proto = %self.proto, %error, "frontend task failed");
        }
        debug!(frontend = %self.addr, proto = %self.proto, "frontend closed");
    }

    /// Whether the socket is served in the other mode (L4/L7) than `spec` asks.
    fn mode_differs(&self, wants_l7: bool) -> bool {
        self.serving
            .lock()
            .as_ref()
            .is_some_and(|s| s.l7 != wants_l7)
    }

    fn status(&self) -> FrontendStatus {
        let set = self.balancer.snapshot();
        let now = tokio::time::Instant::now();
        FrontendStatus {
            frontend: self.addr,
            proto: self.proto,
            name: set.name.clone(),
            algorithm: set.algorithm,
            affinity: set.affinity,
            listening: self.listening(),
            connections_total: self.balancer.connections_total(&set),
            l7: set.l7.as_ref().map(|spec| self.router.status(spec)),
            backends: set
                .backends
                .iter()
                .map(|b| {
                    let mut status = b.stats.status(b.addr, b.terminating);
                    status.l7 = set.l7.is_some().then(|| b.l7.status(now));
                    status
                })
                .collect(),
        }
    }
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                control: tokio::sync::Mutex::new(false),
                frontends: RwLock::new(BTreeMap::new()),
                connections: TaskTracker::new(),
                root: CancellationToken::new(),
                l7_workers: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Creates the frontend, or updates it in place. Never disturbs other
    /// frontends or open connections.
    ///
    /// With no backends and [`EmptyAction::Reject`] the socket is closed by
    /// the time this returns; it is bound again once backends come back.
    /// On a bind error a new frontend is not created (see [`ProxyError::Bind`]).
    pub async fn upsert(
        &self,
        frontend: SocketAddr,
        proto: Proto,
        spec: ServiceSpec,
    ) -> Result<(), ProxyError> {
        if frontend.port() == 0 {
            return Err(ProxyError::InvalidFrontend { frontend, proto });
        }
        if proto == Proto::Udp && spec.l7.is_some() {
            return Err(ProxyError::L7OverUdp { frontend, proto });
        }
        let shut_down = self.inner.control.lock().await;
        if *shut_down {
            return Err(ProxyError::ShutDown { frontend, proto });
        }
        let key = (frontend, proto);
        let existing = self.inner.frontends.read().get(&key).cloned();
        let created = existing.is_none();
        let fe = existing.unwrap_or_else(|| {
            let fe = Arc::new(Frontend {
                addr: frontend,
                proto,
                balancer: Arc::new(Balancer::new()),
                router: Arc::new(l7::Router::new(self.inner.config.connect_timeout)),
                serving: Mutex::new(None),
            });
            self.inner.frontends.write().insert(key, Arc::clone(&fe));
            fe
        });
        let backends = spec.backends.len();
        let wants_socket = !spec.backends.is_empty() || spec.on_empty == EmptyAction::Drop;
        let wants_l7 = spec.l7.is_some();
        // TLS first: a bad certificate keeps the old one, but the backends still change.
        let tls_error = spec.l7.as_ref().and_then(|l7| {
            fe.router
                .configure(l7, self.inner.config.connect_timeout)
                .err()
        });
        if let Some(error) = &tls_error {
            warn!(%frontend, %proto, %error, "TLS settings not applied; the frontend keeps its previous certificate");
        }
        if fe.mode_differs(wants_l7) {
            // Switching between relaying bytes and serving HTTP needs a new accept loop;
            // open connections finish in the mode they started in.
            fe.stop().await;
        }
        // Publish before binding, so the first connection already sees the backends.
        fe.balancer.publish(spec);
        if wants_socket {
            let started = fe.start(&self.inner);
            if let Err(error) = started {
                if created {
                    self.inner.frontends.write().remove(&key);
                }
                return Err(error);
            }
        } else {
            fe.stop().await;
        }
        debug!(%frontend, %proto, backends, listening = wants_socket, "frontend updated");
        match tls_error {
            Some(source) => Err(ProxyError::Tls {
                frontend,
                proto,
                source,
            }),
            None => Ok(()),
        }
    }

    /// Stops serving the frontend: stops accepting at once (the socket is
    /// closed when this returns); open TCP connections are left to finish.
    /// UDP flows end with the socket.
    pub async fn remove(&self, frontend: SocketAddr, proto: Proto) {
        let _control = self.inner.control.lock().await;
        let removed = self.inner.frontends.write().remove(&(frontend, proto));
        if let Some(fe) = removed {
            fe.stop().await;
            debug!(%frontend, %proto, "frontend removed");
        }
    }

    /// Live view of every frontend, ordered by address and protocol.
    pub fn status(&self) -> Vec<FrontendStatus> {
        self.inner
            .frontends
            .read()
            .values()
            .map(|fe| fe.status())
            .collect()
    }

    /// Closes every listener and UDP socket at once (a successor bound to the same
    /// addresses gets the connections queued on them) and forgets the frontends; open
    /// TCP connections are left to finish. Later calls to [`Proxy::upsert`] fail with
    /// [`ProxyError::ShutDown`].
    pub async fn close_listeners(&self) {
        let mut shut_down = self.inner.control.lock().await;
        *shut_down = true;
        let frontends = std::mem::take(&mut *self.inner.frontends.write());
        for fe in frontends.values() {
            fe.stop().await;
        }
    }

    /// Whether any frontend is held (a socket a successor would take over).
    pub fn has_frontends(&self) -> bool {
        !self.inner.frontends.read().is_empty()
    }

    /// Stops every listener, then waits up to `grace` for open TCP connections
    /// to finish. Returns how many were still open (they are not cut). Later
    /// calls to [`Proxy::upsert`] fail with [`ProxyError::ShutDown`].
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.close_listeners().await;
        let connections = &self.inner.connections;
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            info!(
                open = connections.len(),
                ?grace,
                "shutdown grace period over"
            );
        }
        connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn proxy_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Proxy>();
    }

    #[test]
    fn control_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let proxy = Proxy::new(ProxyConfig::default());
        let frontend: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_send(&proxy.upsert(frontend, Proto::Tcp, ServiceSpec::default()));
        assert_send(&proxy.remove(frontend, Proto::Tcp));
        assert_send(&proxy.shutdown(Duration::ZERO));
    }

    #[test]
    fn displays() {
        assert_eq!(Proto::Tcp.to_string(), "TCP");
        assert_eq!(Proto::Udp.to_string(), "UDP");
        assert_eq!(Algorithm::default(), Algorithm::Random);
        let config = ProxyConfig::default();
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.connect_attempts, 3);
        assert_eq!(config.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!(config.tcp_backlog, 4096);
    }

    #[tokio::test]
    async fn port_zero_is_rejected() {
        let proxy = Proxy::new(ProxyConfig::default());
        let err = proxy
            .upsert("127.0.0.1:0".parse().unwrap(), Proto::Tcp, service(&[]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::InvalidFrontend { .. }));
        assert!(proxy.status().is_empty());
    }

    #[tokio::test]
    async fn bind_error_names_the_frontend_and_creates_nothing() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let frontend = holder.local_addr().unwrap();
        let backend = echo_backend("a").await;
        let proxy = Proxy::new(ProxyConfig::default());

        let err = proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Bind { .. }));
        assert!(err.to_string().contains(&frontend.to_string()), "{err}");
        assert!(proxy.status().is_empty());

        drop(holder);
        proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap();
        assert!(proxy.status()[0].listening);
        assert_eq!(round_trip(frontend, "x").await.unwrap(), "a:x");
    }

    #[tokio::test]
    async fn rebind_error_keeps_the_frontend_not_listening() {
        let frontend = frontend_v4();
        let backend = echo_backend("a").await;
        let proxy = Proxy::new(ProxyConfig::default());
        proxy
            .upsert(frontend, Proto::Tcp, service(&[]))
            .await
            .unwrap();
        let holder = std::net::TcpListener::bind(frontend).unwrap();

        let err = proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Bind { .. }));
        let status = proxy.status();
        assert_eq!(status.len(), 1);
        assert!(!status[0].listening);
        assert_eq!(status[0].backends.len(), 1, "new backend set published");

        drop(holder);
        proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap();
        assert!(proxy.status()[0].listening);
        assert_eq!(round_trip(frontend, "x").await.unwrap(), "a:x");
    }

    #[tokio::test]
    async fn upsert_after_shutdown_fails() {
        let proxy = Proxy::new(ProxyConfig::default());
        assert_eq!(proxy.shutdown(Duration::from_millis(10)).await, 0);
        let err = proxy
            .upsert(frontend_v4(), Proto::Tcp, service(&[]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::ShutDown { .. }));
    }

    #[tokio::test]
    async fn shutdown_closes_listeners_and_counts_open_connections() {
        let backend = echo_backend("a").await;
        let frontend = frontend_v4();
        let proxy = Proxy::new(ProxyConfig::default());
        proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap();
        let mut open = LineClient::connect(frontend).await.unwrap();
        assert_eq!(open.ask("hi").await.unwrap(), "a:hi");

        assert_eq!(proxy.shutdown(Duration::from_millis(100)).await, 1);
        assert!(proxy.status().is_empty());
        assert_refused(frontend).await;
        // The open connection was not cut.
        assert_eq!(open.ask("still").await.unwrap(), "a:still");
        drop(open);
        assert_eq!(proxy.shutdown(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_sockets() {
        let backend = echo_backend("a").await;
        let frontend = frontend_v4();
        let proxy = Proxy::new(ProxyConfig::default());
        proxy
            .upsert(frontend, Proto::Tcp, service(&[backend]))
            .await
            .unwrap();
        drop(proxy);
        eventually(|| async { std::net::TcpListener::bind(frontend).is_ok() }).await;
    }
}
