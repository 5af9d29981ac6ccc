//! UDP frontends: one socket on the frontend address, a flow per client
//! address with its own connected socket to the chosen backend, and replies
//! sent back through the frontend socket so they come from the VIP.
//!
//! The flow table belongs to the frontend's receive task alone, so it needs
//! no lock. A frontend bound to an unspecified address (`0.0.0.0`) replies
//! with whatever source address the kernel's routing picks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::balance::{AFFINITY_SWEEP, BackendSet, Balancer};
use crate::spec::ProxyConfig;
use crate::stats::{ActiveGuard, BackendStats};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Serves datagrams on `socket` until `cancel` fires, then drops every flow
/// and waits until no task holds the frontend socket any more, so the port is
/// free when this returns.
pub(crate) async fn serve(
    socket: UdpSocket,
    frontend: SocketAddr,
    balancer: Arc<Balancer>,
    config: Arc<ProxyConfig>,
    cancel: CancellationToken,
) {
    let mut relay = Relay {
        socket: Arc::new(socket),
        frontend,
        balancer,
        config,
        epoch: Instant::now(),
        flows: HashMap::new(),
        replies: JoinSet::new(),
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut expiry = tokio::time::interval(expiry_period(relay.config.udp_idle_timeout));
    expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(AFFINITY_SWEEP);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(_) = relay.replies.join_next(), if !relay.replies.is_empty() => {}
            _ = expiry.tick() => relay.expire(),
            _ = sweep.tick() => relay.balancer.sweep(Instant::now()),
            received = relay.socket.recv_from(&mut buf) => match received {
                Ok((n, client)) => relay.forward(&buf[..n], client),
                Err(error) => debug!(%frontend, %error, "UDP receive failed"),
            },
        }
    }
    relay.flows.clear();
    relay.replies.shutdown().await;
    trace!(%frontend, "UDP frontend stopped");
}

/// Flows are checked for idleness this often: a flow lives between
/// `udp_idle_timeout` and `udp_idle_timeout` + this.
fn expiry_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

struct Relay {
    socket: Arc<UdpSocket>,
    frontend: SocketAddr,
    balancer: Arc<Balancer>,
    config: Arc<ProxyConfig>,
    /// Flow activity is kept as milliseconds since this instant, in an atomic.
    epoch: Instant,
    flows: HashMap<SocketAddr, Flow>,
    replies: JoinSet<()>,
}

impl Relay {
    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    /// Sends one client datagram to the client's backend, opening a flow if needed.
    fn forward(&mut self, datagram: &[u8], client: SocketAddr) {
        let set = self.balancer.current();
        let mut failed = None;
        if let Entry::Occupied(mut entry) = self.flows.entry(client) {
            let flow = entry.get_mut();
            if flow.shared.failed.load(Ordering::Relaxed) {
                flow.guard.stats().connect_failed();
                failed = Some(flow.backend);
                entry.remove();
            } else if flow.generation != set.generation {
                if set.contains(flow.backend) {
                    flow.generation = set.generation;
                } else {
                    // The backend left the set: this client moves on.
                    entry.remove();
                }
            }
        }
        let now_ms = self.now_ms();
        let flow = match self.flows.entry(client) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let Some(flow) = open_flow(
                    client,
                    &set,
                    failed,
                    &self.socket,
                    self.frontend,
                    &self.balancer,
                    &self.config,
                    &mut self.replies,
                    self.epoch,
                    now_ms,
                ) else {
                    trace!(frontend = %self.frontend, %client, "no UDP backend, datagram discarded");
                    return;
                };
                entry.insert(flow)
            }
        };
        // Never wait on a backend here: one slow backend must not stall the
        // frontend. UDP may drop; so do we when a send buffer is full. The
        // send is a plain syscall rather than `try_send`, which would report
        // `WouldBlock` on a new socket until the reactor first saw it writable.
        match socket2::SockRef::from(flow.socket.as_ref()).send(datagram) {
            Ok(n) => {
                flow.guard.stats().add_sent(n);
                flow.shared.last_activity.store(now_ms, Ordering::Relaxed);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                trace!(frontend = %self.frontend, %client, backend = %flow.backend, "backend send buffer full, datagram dropped");
            }
            Err(error) => {
                debug!(frontend = %self.frontend, %client, backend = %flow.backend, %error, "UDP send to backend failed");
                flow.shared.failed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Forgets flows idle for `udp_idle_timeout`.
    fn expire(&mut self) {
        let now_ms = self.now_ms();
        let idle_ms = self.config.udp_idle_timeout.as_millis() as u64;
        let (balancer, epoch) = (&self.balancer, self.epoch);
        self.flows.retain(|client, flow| {
            let last = flow.shared.last_activity.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) < idle_ms {
                return true;
            }
            balancer.touch(
                client.ip(),
                flow.backend,
                epoch + Duration::from_millis(last),
            );
            false
        });
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, all borrowed from Relay"
)]
fn open_flow(
    client: SocketAddr,
    set: &BackendSet,
    failed: Option<SocketAddr>,
    frontend_socket: &Arc<UdpSocket>,
    frontend: SocketAddr,
    balancer: &Balancer,
    config: &ProxyConfig,
    replies: &mut JoinSet<()>,
    epoch: Instant,
    now_ms: u64,
) -> Option<Flow> {
    let attempts = config.connect_attempts.max(1);
    let mut tried: Vec<SocketAddr> = failed.into_iter().collect();
    for _ in 0..attempts {
        let backend = balancer.pick(set, client.ip(), &tried, Instant::now())?;
        tried.push(backend.addr);
        let socket = match backend_socket(backend.addr) {
            Ok(socket) => Arc::new(socket),
            Err(error) => {
                backend.stats.connect_failed();
                debug!(%frontend, %client, backend = %backend.addr, %error, "UDP backend socket failed");
                continue;
            }
        };
        let shared = Arc::new(FlowShared {
            last_activity: AtomicU64::new(now_ms),
            failed: AtomicBool::new(false),
        });
        let task = replies.spawn(relay_replies(
            Arc::clone(&socket),
            Arc::clone(frontend_socket),
            client,
            backend.addr,
            Arc::clone(&shared),
            Arc::clone(&backend.stats),
            epoch,
        ));
        trace!(%frontend, %client, backend = %backend.addr, "UDP flow opened");
        return Some(Flow {
            backend: backend.addr,
            socket,
            generation: set.generation,
            shared,
            task,
            guard: ActiveGuard::new(Arc::clone(&backend.stats)),
        });
    }
    None
}

/// An unconnected socket on an ephemeral port, then connected to the backend
/// so the kernel filters replies from anyone else.
fn backend_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match backend {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(backend)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Relays backend replies to the client from the frontend socket, until the
/// flow is dropped (which aborts this task) or the backend reports an error.
async fn relay_replies(
    backend_socket: Arc<UdpSocket>,
    frontend_socket: Arc<UdpSocket>,
    client: SocketAddr,
    backend: SocketAddr,
    shared: Arc<FlowShared>,
    stats: Arc<BackendStats>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match backend_socket.recv(&mut buf).await {
            Ok(n) => {
                stats.add_received(n);
                let now_ms = Instant::now().duration_since(epoch).as_millis() as u64;
                shared.last_activity.store(now_ms, Ordering::Relaxed);
                if let Err(error) = frontend_socket.send_to(&buf[..n], client).await {
                    debug!(%client, %backend, %error, "UDP reply to client failed");
                }
            }
            Err(error) => {
                // An ICMP error (port or host unreachable): the next datagram
                // of this client opens a flow to another backend.
                debug!(%client, %backend, %error, "UDP backend unreachable");
                shared.failed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// State of a flow shared with its reply task.
struct FlowShared {
    last_activity: AtomicU64,
    failed: AtomicBool,
}

struct Flow {
    backend: SocketAddr,
    socket: Arc<UdpSocket>,
    /// Snapshot generation in which `backend` was last known to be in the set.
    generation: u64,
    shared: Arc<FlowShared>,
    task: AbortHandle,
    guard: ActiveGuard,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use tokio::net::UdpSocket;

    use super::expiry_period;
    use crate::testing::*;
    use crate::{BackendStatus, EmptyAction, Proto, Proxy, ProxyConfig, ServiceSpec};

    async fn proxy_with(config: ProxyConfig, frontend: SocketAddr, spec: ServiceSpec) -> Proxy {
        let proxy = Proxy::new(config);
        proxy.upsert(frontend, Proto::Udp, spec).await.unwrap();
        proxy
    }

    fn backend_status(proxy: &Proxy, backend: SocketAddr) -> BackendStatus {
        proxy
            .status()
            .into_iter()
            .flat_map(|f| f.backends)
            .find(|b| b.addr == backend)
            .expect("backend in status")
    }

    async fn client(ip: &str) -> UdpSocket {
        UdpSocket::bind((ip, 0)).await.unwrap()
    }

    /// Sends `msg` to `to` and returns the reply and where it came from.
    async fn ask(socket: &UdpSocket, to: SocketAddr, msg: &str) -> (String, SocketAddr) {
        socket.send_to(msg.as_bytes(), to).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (n, from) = step(socket.recv_from(&mut buf)).await.unwrap().unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    }

    /// Sends `msg` until a reply comes (the first datagrams may be lost on purpose).
    async fn ask_until_answered(socket: &UdpSocket, to: SocketAddr, msg: &str) -> String {
        let mut buf = vec![0u8; 65_535];
        for _ in 0..50 {
            socket.send_to(msg.as_bytes(), to).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
            {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no UDP reply from {to}");
    }

    /// A connected client sees the ICMP port unreachable as a refused receive.
    async fn assert_port_unreachable(frontend: SocketAddr) {
        let socket = client("127.0.0.1").await;
        socket.connect(frontend).await.unwrap();
        socket.send(b"anyone?").await.unwrap();
        let mut buf = [0u8; 64];
        let err = step(socket.recv(&mut buf)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn expiry_period_is_bounded() {
        assert_eq!(
            expiry_period(Duration::from_secs(30)),
            Duration::from_secs(5)
        );
        assert_eq!(
            expiry_period(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(expiry_period(Duration::ZERO), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn replies_come_from_the_frontend_address() {
        let a = udp_echo_backend("a").await;
        let frontend = free_port(Ipv4Addr::new(127, 0, 0, 4));
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[a])).await;

        let c = client("127.0.0.1").await;
        let (reply, from) = ask(&c, frontend, "hello").await;
        assert_eq!(reply, "a:hello");
        assert_eq!(from, frontend);

        let status = backend_status(&proxy, a);
        assert_eq!(status.connections_total, 1);
        assert_eq!(status.connections_active, 1);
        assert_eq!(status.bytes_sent, 5);
        assert_eq!(status.bytes_received, 7);
    }

    #[tokio::test]
    async fn ipv6_frontend_round_trip() {
        let a = udp_echo_backend("a").await;
        let frontend = free_port(Ipv6Addr::LOCALHOST);
        let _proxy = proxy_with(ProxyConfig::default(), frontend, service(&[a])).await;
        let c = client("::1").await;
        let (reply, from) = ask(&c, frontend, "six").await;
        assert_eq!((reply.as_str(), from), ("a:six", frontend));
    }

    #[tokio::test]
    async fn each_client_is_a_flow_that_sticks_to_its_backend() {
        let a = udp_echo_backend("a").await;
        let b = udp_echo_backend("b").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[a, b])).await;

        let one = client("127.0.0.1").await;
        let two = client("127.0.0.1").await;
        assert_eq!(ask(&one, frontend, "1").await.0, "a:1");
        assert_eq!(ask(&two, frontend, "2").await.0, "b:2");
        // Round robin picks per flow, not per datagram.
        assert_eq!(ask(&one, frontend, "3").await.0, "a:3");
        assert_eq!(ask(&two, frontend, "4").await.0, "b:4");
        assert_eq!(backend_status(&proxy, a).connections_total, 1);
        assert_eq!(backend_status(&proxy, b).connections_total, 1);
    }

    #[tokio::test]
    async fn flow_moves_when_its_backend_leaves() {
        let a = udp_echo_backend("a").await;
        let b = udp_echo_backend("b").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[a, b])).await;

        let c = client("127.0.0.1").await;
        assert_eq!(ask(&c, frontend, "x").await.0, "a:x");
        proxy
            .upsert(frontend, Proto::Udp, service(&[b]))
            .await
            .unwrap();
        assert_eq!(ask(&c, frontend, "y").await.0, "b:y");
        assert_eq!(backend_status(&proxy, b).connections_active, 1);
    }

    #[tokio::test]
    async fn idle_flows_expire() {
        let a = udp_echo_backend("a").await;
        let frontend = frontend_v4();
        let config = ProxyConfig {
            udp_idle_timeout: Duration::from_millis(200),
            ..ProxyConfig::default()
        };
        let proxy = proxy_with(config, frontend, service(&[a])).await;

        let c = client("127.0.0.1").await;
        assert_eq!(ask(&c, frontend, "x").await.0, "a:x");
        assert_eq!(backend_status(&proxy, a).connections_active, 1);
        eventually(|| async { backend_status(&proxy, a).connections_active == 0 }).await;

        assert_eq!(ask(&c, frontend, "y").await.0, "a:y");
        let status = backend_status(&proxy, a);
        assert_eq!(
            (status.connections_total, status.connections_active),
            (2, 1)
        );
    }

    #[tokio::test]
    async fn unreachable_backend_is_replaced_for_the_next_datagram() {
        let dead = frontend_v4();
        let alive = udp_echo_backend("alive").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[dead, alive])).await;

        let c = client("127.0.0.1").await;
        assert_eq!(ask_until_answered(&c, frontend, "x").await, "alive:x");
        assert!(backend_status(&proxy, dead).connect_failures >= 1);
        assert_eq!(backend_status(&proxy, dead).connections_active, 0);
    }

    #[tokio::test]
    async fn reject_with_no_backends_unbinds_then_rebinds() {
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[])).await;
        assert!(!proxy.status()[0].listening);
        assert_port_unreachable(frontend).await;

        let a = udp_echo_backend("a").await;
        proxy
            .upsert(frontend, Proto::Udp, service(&[a]))
            .await
            .unwrap();
        let c = client("127.0.0.1").await;
        assert_eq!(ask(&c, frontend, "x").await.0, "a:x");

        // Emptied: the socket goes away at once. Reply tasks hold it too, so
        // an unreachable port also proves every flow is gone.
        proxy
            .upsert(frontend, Proto::Udp, service(&[]))
            .await
            .unwrap();
        assert_port_unreachable(frontend).await;
    }

    #[tokio::test]
    async fn drop_with_no_backends_discards_silently() {
        let frontend = frontend_v4();
        let mut spec = service(&[]);
        spec.on_empty = EmptyAction::Drop;
        let proxy = proxy_with(ProxyConfig::default(), frontend, spec).await;
        assert!(proxy.status()[0].listening);

        let c = client("127.0.0.1").await;
        c.connect(frontend).await.unwrap();
        c.send(b"void").await.unwrap();
        let mut buf = [0u8; 64];
        // Neither a reply nor an ICMP error arrives.
        let outcome = tokio::time::timeout(Duration::from_millis(200), c.recv(&mut buf)).await;
        assert!(outcome.is_err(), "{outcome:?}");
    }

    #[tokio::test]
    async fn remove_frees_the_port() {
        let a = udp_echo_backend("a").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[a])).await;
        let c = client("127.0.0.1").await;
        assert_eq!(ask(&c, frontend, "x").await.0, "a:x");

        proxy.remove(frontend, Proto::Udp).await;
        assert_port_unreachable(frontend).await;
        assert!(proxy.status().is_empty());
    }

    #[tokio::test]
    async fn tcp_and_udp_share_a_port() {
        let tcp = echo_backend("t").await;
        let udp = udp_echo_backend("u").await;
        let frontend = frontend_v4();
        let proxy = proxy_with(ProxyConfig::default(), frontend, service(&[udp])).await;
        proxy
            .upsert(frontend, Proto::Tcp, service(&[tcp]))
            .await
            .unwrap();
        let c = client("127.0.0.1").await;
        assert_eq!(ask(&c, frontend, "d").await.0, "u:d");
        assert_eq!(round_trip(frontend, "s").await.unwrap(), "t:s");
        let protos: Vec<_> = proxy.status().iter().map(|s| s.proto).collect();
        assert_eq!(protos, [Proto::Tcp, Proto::Udp]);
    }
}
