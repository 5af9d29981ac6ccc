//! TCP frontends: the accept loop, connecting to a backend with retries, and
//! the byte relay between client and backend.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

use crate::balance::{AFFINITY_SWEEP, Balancer};
use crate::spec::ProxyConfig;
use crate::stats::{ActiveGuard, ConnectingGuard};

/// Relay buffer per direction and connection.
const RELAY_BUFFER: usize = 16 * 1024;

/// Pause after an accept error caused by resource exhaustion (`EMFILE`…), so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `cancel` fires. Connection tasks
/// are spawned on `connections` and outlive the loop.
pub(crate) async fn serve(
    listener: TcpListener,
    frontend: SocketAddr,
    balancer: Arc<Balancer>,
    config: Arc<ProxyConfig>,
    connections: TaskTracker,
    cancel: CancellationToken,
) {
    let mut sweep = tokio::time::interval(AFFINITY_SWEEP);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            accepted = accept(&listener, frontend, &cancel) => match accepted {
                Some((client, peer)) => {
                    connections.spawn(serve_connection(
                        client,
                        peer,
                        frontend,
                        Arc::clone(&balancer),
                        Arc::clone(&config),
                    ));
                }
                None => break,
            },
            _ = sweep.tick() => balancer.sweep(Instant::now()),
        }
    }
    trace!(%frontend, "TCP frontend stopped accepting");
}

/// The next connection of `listener`; `None` once `cancel` fires. Accept errors are logged
/// and, when they come from resource exhaustion, waited out.
pub(crate) async fn accept(
    listener: &TcpListener,
    frontend: SocketAddr,
    cancel: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(error) => {
                    debug!(%frontend, %error, "TCP accept failed");
                    if is_resource_exhaustion(&error) {
                        tokio::select! {
                            () = cancel.cancelled() => return None,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                }
            },
        }
    }
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying at once would fail the same way.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

async fn serve_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    frontend: SocketAddr,
    balancer: Arc<Balancer>,
    config: Arc<ProxyConfig>,
) {
    if let Err(error) = client.set_nodelay(true) {
        trace!(%frontend, %peer, %error, "TCP_NODELAY on client");
    }
    let Some((stream, backend_addr, active)) = connect(peer, frontend, &balancer, &config).await
    else {
        reset(&client);
        return;
    };
    let mut backend = Counted {
        inner: stream,
        guard: active,
    };
    match tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut backend,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    {
        Ok((sent, received)) => {
            trace!(%frontend, %peer, backend = %backend_addr, sent, received, "TCP connection done");
        }
        Err(error) => {
            // One side failed: reset the other too rather than let it see a clean close.
            debug!(%frontend, %peer, backend = %backend_addr, %error, "TCP relay failed");
            reset(&client);
            reset(&backend.inner);
        }
    }
    balancer.touch(peer.ip(), backend_addr, Instant::now());
}

/// Connects to a backend, trying up to `connect_attempts` different ones.
async fn connect(
    peer: SocketAddr,
    frontend: SocketAddr,
    balancer: &Balancer,
    config: &ProxyConfig,
) -> Option<(TcpStream, SocketAddr, ActiveGuard)> {
    let attempts = config.connect_attempts.max(1);
    let mut tried = Vec::with_capacity(attempts);
    while tried.len() < attempts {
        // Pick from the latest snapshot on every attempt: a backend removed
        // meanwhile is not tried.
        let (addr, connecting) = {
            let set = balancer.snapshot();
            let Some(backend) = balancer.pick(&set, peer.ip(), &tried, Instant::now()) else {
                if tried.is_empty() {
                    debug!(%frontend, service = %set.name, %peer, "no backend, resetting client");
                }
                break;
            };
            (
                backend.addr,
                ConnectingGuard::new(Arc::clone(&backend.stats)),
            )
        };
        tried.push(addr);
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    trace!(%frontend, backend = %addr, %error, "TCP_NODELAY on backend");
                }
                return Some((stream, addr, connecting.established()));
            }
            Ok(Err(error)) => {
                connecting.failed();
                debug!(%frontend, %peer, backend = %addr, %error, "backend connect failed");
            }
            Err(_) => {
                connecting.failed();
                debug!(%frontend, %peer, backend = %addr, timeout = ?config.connect_timeout, "backend connect timed out");
            }
        }
    }
    if !tried.is_empty() {
        debug!(%frontend, %peer, attempts = tried.len(), "every backend connect failed, resetting client");
    }
    None
}

/// Closes with a RST instead of a FIN once the stream is dropped.
fn reset(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        trace!(%error, "SO_LINGER 0");
    }
}

/// The backend side of a connection: counts bytes as they pass, so status is
/// live for long connections, and holds the connection's active guard.
struct Counted<S> {
    inner: S,
    guard: ActiveGuard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.guard
                .stats()
                .add_received(buf.filled().len().saturating_sub(before));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.guard.stats().add_sent(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.guard.stats().add_sent(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::testing::*;
    use crate::{BackendStatus, EmptyAction, Proto, Proxy, ProxyConfig, ServiceSpec};

    async fn proxy_with(frontend: SocketAddr, spec: ServiceSpec) -> Proxy {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.upsert(frontend, Proto::Tcp, spec).await.unwrap();
        proxy
    }

    fn backend_status(proxy: &Proxy, backend: SocketAddr) -> Option<BackendStatus> {
        proxy
            .status()
            .into_iter()
            .flat_map(|f| f.backends)
            .find(|b| b.addr == backend)
    }

    /// Reads until EOF or error; returns the error kind, if any.
    async fn read_outcome(stream: &mut TcpStream) -> Result<usize, std::io::ErrorKind> {
        let mut buf = Vec::new();
        match step(stream.read_to_end(&mut buf)).await.unwrap() {
            Ok(n) => Ok(n),
            Err(e) => Err(e.kind()),
        }
    }

    #[tokio::test]
    async fn round_robin_spreads_over_two_backends() {
        let a = echo_backend("a").await;
        let b = echo_backend("b").await;
        let frontend = free_port(Ipv4Addr::new(127, 0, 0, 2));
        let proxy = proxy_with(frontend, service(&[a, b])).await;

        let mut answers = Vec::new();
        for i in 0..4 {
            answers.push(round_trip(frontend, &format!("m{i}")).await.unwrap());
        }
        assert_eq!(answers, ["a:m0", "b:m1", "a:m2", "b:m3"]);
        eventually(|| async {
            let status = proxy.status();
            status[0].backends.iter().all(|b| b.connections_total == 2)
        })
        .await;
    }

    #[tokio::test]
    async fn ipv6_frontend_proxies_to_ipv4_backend() {
        let a = echo_backend("a").await;
        let frontend = free_port(Ipv6Addr::LOCALHOST);
        let _proxy = proxy_with(frontend, service(&[a])).await;
        assert_eq!(round_trip(frontend, "six").await.unwrap(), "a:six");
    }

    #[tokio::test]
    async fn refused_backend_is_retried_on_another() {
        let dead = dead_backend();
        let alive = echo_backend("alive").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&[dead, alive])).await;

        for i in 0..4 {
            let answer = round_trip(frontend, &format!("r{i}")).await.unwrap();
            assert_eq!(answer, format!("alive:r{i}"));
        }
        let dead_status = backend_status(&proxy, dead).unwrap();
        assert!(dead_status.connect_failures >= 2, "{dead_status:?}");
        assert_eq!(dead_status.connections_total, 0);
        assert_eq!(dead_status.connections_active, 0);
        let alive_status = backend_status(&proxy, alive).unwrap();
        assert_eq!(alive_status.connect_failures, 0);
    }

    #[tokio::test]
    async fn client_is_reset_when_every_attempt_fails() {
        let dead = [dead_backend(), dead_backend()];
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&dead)).await;

        let mut client = step(TcpStream::connect(frontend)).await.unwrap().unwrap();
        assert_eq!(
            read_outcome(&mut client).await,
            Err(std::io::ErrorKind::ConnectionReset)
        );
        let failures: u64 = dead
            .iter()
            .map(|&d| backend_status(&proxy, d).unwrap().connect_failures)
            .sum();
        assert_eq!(failures, 2, "each backend tried once");
    }

    #[tokio::test]
    async fn connect_attempts_bound_the_retries() {
        let dead: Vec<_> = (0..5).map(|_| dead_backend()).collect();
        let frontend = frontend_v4();
        let proxy = Proxy::new(ProxyConfig {
            connect_attempts: 2,
            ..ProxyConfig::default()
        });
        proxy
            .upsert(frontend, Proto::Tcp, service(&dead))
            .await
            .unwrap();
        let mut client = step(TcpStream::connect(frontend)).await.unwrap().unwrap();
        assert!(read_outcome(&mut client).await.is_err());
        let failures: u64 = proxy.status()[0]
            .backends
            .iter()
            .map(|b| b.connect_failures)
            .sum();
        assert_eq!(failures, 2);
    }

    #[tokio::test]
    async fn reject_with_no_backends_refuses_then_rebinds() {
        let frontend = free_port(Ipv4Addr::new(127, 0, 0, 3));
        let proxy = proxy_with(frontend, service(&[])).await;
        assert_refused(frontend).await;
        assert!(!proxy.status()[0].listening);

        let a = echo_backend("a").await;
        proxy
            .upsert(frontend, Proto::Tcp, service(&[a]))
            .await
            .unwrap();
        assert!(proxy.status()[0].listening);
        assert_eq!(round_trip(frontend, "back").await.unwrap(), "a:back");

        // Emptied again: the socket goes away at once, the open connection stays.
        let mut open = LineClient::connect(frontend).await.unwrap();
        // Answered means accepted: still in the backlog, it would be reset.
        assert_eq!(open.ask("before").await.unwrap(), "a:before");
        proxy
            .upsert(frontend, Proto::Tcp, service(&[]))
            .await
            .unwrap();
        assert_refused(frontend).await;
        assert_eq!(open.ask("open").await.unwrap(), "a:open");
    }

    #[tokio::test]
    async fn drop_with_no_backends_accepts_and_resets() {
        let frontend = frontend_v4();
        let mut spec = service(&[]);
        spec.on_empty = EmptyAction::Drop;
        let proxy = proxy_with(frontend, spec).await;
        assert!(proxy.status()[0].listening);

        let mut client = step(TcpStream::connect(frontend)).await.unwrap().unwrap();
        assert_eq!(
            read_outcome(&mut client).await,
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn removed_backend_gets_no_new_connections_but_keeps_open_ones() {
        let a = echo_backend("a").await;
        let b = echo_backend("b").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&[a, b])).await;

        let mut on_a = LineClient::connect(frontend).await.unwrap();
        assert_eq!(on_a.ask("first").await.unwrap(), "a:first");

        proxy
            .upsert(frontend, Proto::Tcp, service(&[b]))
            .await
            .unwrap();
        for i in 0..4 {
            assert_eq!(
                round_trip(frontend, &format!("n{i}")).await.unwrap(),
                format!("b:n{i}")
            );
        }
        assert_eq!(on_a.ask("still").await.unwrap(), "a:still");
        assert!(backend_status(&proxy, a).is_none());
        let total = proxy
            .status()
            .into_iter()
            .find(|s| s.frontend == frontend)
            .map(|s| s.connections_total);
        assert_eq!(total, Some(5), "the frontend's total keeps a's connection");
    }

    #[tokio::test]
    async fn stats_survive_an_update_and_algorithm_change_applies() {
        let a = echo_backend("a").await;
        let b = echo_backend("b").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&[a])).await;
        let _held = {
            let mut c = LineClient::connect(frontend).await.unwrap();
            assert_eq!(c.ask("x").await.unwrap(), "a:x");
            c
        };

        // a keeps one connection open; least connections now sends new ones to b.
        let mut spec = service(&[a, b]);
        spec.algorithm = crate::Algorithm::LeastConnections;
        proxy.upsert(frontend, Proto::Tcp, spec).await.unwrap();
        let a_status = backend_status(&proxy, a).unwrap();
        assert_eq!(
            (a_status.connections_total, a_status.connections_active),
            (1, 1)
        );
        let mut on_b = LineClient::connect(frontend).await.unwrap();
        assert_eq!(on_b.ask("y").await.unwrap(), "b:y");
    }

    #[tokio::test]
    async fn half_close_still_delivers_the_reply() {
        let backend = collect_backend("c").await;
        let frontend = frontend_v4();
        let _proxy = proxy_with(frontend, service(&[backend])).await;

        let mut client = step(TcpStream::connect(frontend)).await.unwrap().unwrap();
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = String::new();
        step(client.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "c:request");
    }

    #[tokio::test]
    async fn status_counts_bytes_live_and_connections() {
        let a = echo_backend("a").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&[a])).await;

        let mut client = LineClient::connect(frontend).await.unwrap();
        assert_eq!(client.ask("ping").await.unwrap(), "a:ping");
        // Still open: counters already moved.
        let status = proxy.status();
        assert_eq!(status[0].name, "default/web:http");
        assert_eq!(status[0].frontend, frontend);
        let backend = &status[0].backends[0];
        assert_eq!(backend.connections_total, 1);
        assert_eq!(backend.connections_active, 1);
        assert_eq!(backend.bytes_sent, "ping\n".len() as u64);
        assert_eq!(backend.bytes_received, "a:ping\n".len() as u64);

        drop(client);
        eventually(|| async { backend_status(&proxy, a).unwrap().connections_active == 0 }).await;
        assert_eq!(backend_status(&proxy, a).unwrap().connections_total, 1);
    }

    #[tokio::test]
    async fn remove_stops_accepting_but_open_connections_finish() {
        let a = echo_backend("a").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(frontend, service(&[a])).await;
        let mut open = LineClient::connect(frontend).await.unwrap();
        assert_eq!(open.ask("1").await.unwrap(), "a:1");

        proxy.remove(frontend, Proto::Tcp).await;
        assert_refused(frontend).await;
        assert!(proxy.status().is_empty());
        assert_eq!(open.ask("2").await.unwrap(), "a:2");
    }

    #[tokio::test]
    async fn other_frontends_are_not_disturbed() {
        let a = echo_backend("a").await;
        let b = echo_backend("b").await;
        let one = frontend_v4();
        let two = frontend_v4();
        let proxy = proxy_with(one, service(&[a])).await;
        proxy.upsert(two, Proto::Tcp, service(&[b])).await.unwrap();
        let mut open = LineClient::connect(two).await.unwrap();
        assert_eq!(open.ask("x").await.unwrap(), "b:x");

        proxy.remove(one, Proto::Tcp).await;
        proxy.upsert(one, Proto::Tcp, service(&[a])).await.unwrap();
        assert_eq!(open.ask("y").await.unwrap(), "b:y");
        assert_eq!(round_trip(one, "z").await.unwrap(), "a:z");
        let frontends: HashSet<_> = proxy.status().into_iter().map(|s| s.frontend).collect();
        assert_eq!(frontends, HashSet::from([one, two]));
    }

    #[tokio::test]
    async fn affinity_keeps_a_client_on_one_backend() {
        let a = echo_backend("a").await;
        let b = echo_backend("b").await;
        let frontend = frontend_v4();
        let mut spec = service(&[a, b]);
        spec.affinity = Some(Duration::from_mins(1));
        let _proxy = proxy_with(frontend, spec).await;
        let first = round_trip(frontend, "s").await.unwrap();
        for _ in 0..4 {
            assert_eq!(round_trip(frontend, "s").await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn connect_timeout_moves_to_the_next_backend() {
        // A listener with a full backlog that is never accepted from makes
        // the kernel drop further SYNs: connects to it hang.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let stuck: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&stuck.into());
            fillers.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let direct =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(stuck)).await;
        assert!(direct.is_err(), "precondition: connects to {stuck} hang");

        let alive = echo_backend("alive").await;
        let frontend = frontend_v4();
        let proxy = Proxy::new(ProxyConfig {
            connect_timeout: Duration::from_millis(200),
            ..ProxyConfig::default()
        });
        proxy
            .upsert(frontend, Proto::Tcp, service(&[stuck, alive]))
            .await
            .unwrap();
        assert_eq!(round_trip(frontend, "t").await.unwrap(), "alive:t");
        assert_eq!(backend_status(&proxy, stuck).unwrap().connect_failures, 1);
    }
}
