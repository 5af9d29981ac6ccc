//! The L7 data path: HTTP/1.1, HTTP/2 and gRPC served per request.
//!
//! A TCP frontend whose [`crate::ServiceSpec::l7`] is set accepts connections here instead
//! of relaying bytes. Each connection is served by hyper (HTTP/1.1, or HTTP/2 with prior
//! knowledge, told apart by the preface; by ALPN behind TLS), and every request is balanced
//! on its own over the frontend's backends, so the many requests of one long-lived HTTP/2 or
//! gRPC connection spread over all of them; a connection's HTTP/2 streams run in its own
//! task ([`streams`]). Upstream connections are pooled per backend ([`pool`]): HTTP/1.1 on
//! hyper's client, HTTP/2 on the `h2` crate itself ([`h2client`]). Around each request:
//! retries within a budget, per-try and overall timeouts, passive outlier ejection, optional
//! active health checks, `X-Forwarded-For`/`Forwarded`, limits on headers, bodies and idle
//! time, and `Upgrade` (WebSocket) tunnels.

mod access_log;
mod body;
pub(crate) mod endpoint;
mod forward;
mod h2client;
#[cfg(test)]
mod h2client_tests;
mod health;
mod pick;
mod pool;
pub(crate) mod spec;
mod streams;
mod tls;
mod upstream;
mod workers;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

pub use access_log::AccessLog;
pub use endpoint::{EndpointStatus, LATENCY_BUCKETS, LatencyHistogram, RequestCounts};
pub use spec::{
    HashKey, HealthCheck, L7Spec, Limits, OutlierPolicy, RequestBalancer, RetryPolicy, Timeouts,
    TlsCertificate, UpstreamProtocol, UpstreamTls,
};
pub use tls::TlsError;

use crate::balance::Balancer;
use crate::spec::ProxyConfig;
use tls::CertSlot;
use upstream::Upstream;
pub(crate) use workers::Workers;

/// How often idle upstream connections are swept.
const POOL_SWEEP: Duration = Duration::from_secs(10);
/// Seconds of history the retry budget looks at.
const BUDGET_WINDOW: usize = 10;

/// The L7 state of a frontend that outlives its backend-set snapshots: the certificate it
/// serves, how it reaches backends, the round-robin position, the retry budget and its
/// counters.
#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) certs: Arc<CertSlot>,
    server_tls: ArcSwapOption<rustls::ServerConfig>,
    upstream: ArcSwap<Upstream>,
    pub(crate) next: AtomicUsize,
    budget: RetryBudget,
    pub(crate) counters: endpoint::Counters,
    retries: AtomicU64,
    retries_denied: AtomicU64,
    ejections: AtomicU64,
}

/// Counters of an L7 frontend, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L7Status {
    pub upstream: String,
    pub balancer: String,
    pub tls: bool,
    /// Every request's outcome as the client saw it (answers of the proxy itself included).
    pub requests: RequestCounts,
    pub retries: u64,
    /// Retries the budget refused.
    pub retries_denied: u64,
    pub ejections: u64,
}

impl Router {
    pub(crate) fn new(connect_timeout: Duration) -> Router {
        Router {
            certs: Arc::new(CertSlot::default()),
            server_tls: ArcSwapOption::empty(),
            upstream: ArcSwap::from_pointee(Upstream {
                protocol: UpstreamProtocol::Http1,
                tls: None,
                connect_timeout,
            }),
            next: AtomicUsize::new(0),
            budget: RetryBudget::default(),
            counters: endpoint::Counters::default(),
            retries: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// Takes the TLS settings of `spec`. On error nothing changes: the frontend keeps the
    /// certificate it had (a bad Secret never takes a working frontend down).
    pub(crate) fn configure(
        &self,
        spec: &L7Spec,
        connect_timeout: Duration,
    ) -> Result<(), TlsError> {
        let cert = spec.tls.as_ref().map(tls::certified_key).transpose()?;
        let client = (spec.upstream == UpstreamProtocol::Https)
            .then(|| tls::ClientTls::new(&spec.upstream_tls))
            .transpose()?;
        if cert.is_some() && self.server_tls.load().is_none() {
            self.server_tls
                .store(Some(tls::server_config(Arc::clone(&self.certs))?));
        }
        self.certs.store(cert);
        self.upstream.store(Arc::new(Upstream {
            protocol: spec.upstream,
            tls: client,
            connect_timeout,
        }));
        Ok(())
    }

    pub(crate) fn upstream(&self) -> Arc<Upstream> {
        self.upstream.load_full()
    }

    pub(crate) fn status(&self, spec: &L7Spec) -> L7Status {
        L7Status {
            upstream: spec.upstream.to_string(),
            balancer: spec.balancer.to_string(),
            tls: spec.tls.is_some(),
            requests: self.counters.snapshot(),
            retries: self.retries.load(Ordering::Relaxed),
            retries_denied: self.retries_denied.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }
}

/// Requests and retries per second over the last [`BUDGET_WINDOW`] seconds.
#[derive(Debug, Default)]
struct RetryBudget {
    slots: Mutex<[(u64, u32, u32); BUDGET_WINDOW]>,
}

impl RetryBudget {
    fn second(now: Instant) -> u64 {
        endpoint::stamp(now) / 1_000_000_000
    }

    fn deposit(&self, now: Instant) {
        let second = Self::second(now);
        let mut slots = self.slots.lock();
        let slot = &mut slots[second as usize % BUDGET_WINDOW];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    /// Takes a retry from the budget, if it has one.
    fn withdraw(&self, policy: &RetryPolicy, now: Instant) -> bool {
        let second = Self::second(now);
        let mut slots = self.slots.lock();
        let (mut requests, mut retries) = (0u64, 0u64);
        for (s, req, ret) in slots.iter() {
            if second.saturating_sub(*s) < BUDGET_WINDOW as u64 {
                requests += u64::from(*req);
                retries += u64::from(*ret);
            }
        }
        let allowed = requests * u64::from(policy.budget_percent) / 100
            + u64::from(policy.min_retries_per_second) * BUDGET_WINDOW as u64;
        if retries >= allowed {
            return false;
        }
        let slot = &mut slots[second as usize % BUDGET_WINDOW];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot.2 = slot.2.saturating_add(1);
        true
    }
}

/// What every connection of a frontend shares.
#[derive(Debug)]
pub(crate) struct FrontendCtx {
    pub(crate) addr: SocketAddr,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) router: Arc<Router>,
    pub(crate) config: Arc<ProxyConfig>,
    /// Where client connections are served; the runtime of `serve` when `None`.
    pub(crate) workers: Option<Arc<Workers>>,
}

/// Accepts connections on `listener` until `cancel` fires; then every open connection is
/// shut down gracefully (HTTP/2 clients get `GOAWAY`, requests in flight finish).
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<FrontendCtx>,
    connections: TaskTracker,
    cancel: CancellationToken,
) {
    let frontend = ctx.addr;
    let health = tokio::spawn(health::run(Arc::clone(&ctx), cancel.clone()));
    let mut sweep = tokio::time::interval(POOL_SWEEP);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            accepted = crate::tcp::accept(&listener, frontend, &cancel) => match accepted {
                Some((stream, client)) => {
                    let ctx = Arc::clone(&ctx);
                    match ctx.workers.clone() {
                        None => {
                            connections.spawn(serve_connection(stream, client, ctx, cancel.clone()));
                        }
                        Some(workers) => hand_over(stream, client, ctx, &workers, &connections, &cancel),
                    }
                }
                None => break,
            },
            _ = sweep.tick() => {
                for b in &ctx.balancer.snapshot().backends {
                    b.l7.pool.sweep();
                }
            }
        }
    }
    health.abort();
    trace!(%frontend, "L7 frontend stopped accepting");
}

/// Serves an accepted connection on the next L7 thread: the socket leaves this runtime's
/// reactor for that thread's.
fn hand_over(
    stream: TcpStream,
    client: SocketAddr,
    ctx: Arc<FrontendCtx>,
    workers: &Workers,
    connections: &TaskTracker,
    cancel: &CancellationToken,
) {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            debug!(frontend = %ctx.addr, %client, %error, "cannot hand the connection to an L7 thread");
            return;
        }
    };
    let cancel = cancel.clone();
    connections.spawn_on(
        async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(stream, client, ctx, cancel).await,
                Err(error) => {
                    debug!(frontend = %ctx.addr, %client, %error, "cannot register the connection on its L7 thread");
                }
            }
        },
        workers.next(),
    );
}

/// What a client connection's watchdog needs to know, kept without reading the clock on the
/// data path: whether bytes moved since it last looked, whether bytes were read while no
/// request was in flight (a request head being read), how many requests started and how many
/// are in flight. The watchdog turns these into times at each of its ticks.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    moved: AtomicBool,
    read_while_idle: AtomicBool,
    requests: AtomicU64,
    in_flight: AtomicU32,
    /// HTTP/2: streams come and go at any time, only the first request's head is timed.
    multiplexed: AtomicBool,
}

impl Activity {
    fn io(&self, read: bool) {
        self.moved.store(true, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Relaxed) == 0 {
            self.read_while_idle.store(true, Ordering::Relaxed);
        }
    }

    /// A request's head is complete; it is in flight until the guard drops.
    pub(crate) fn request(self: &Arc<Self>, http2: bool) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.read_while_idle.store(false, Ordering::Relaxed);
        if http2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        RequestGuard(Arc::clone(self))
    }
}

/// The watchdog's view of one connection, updated at each tick.
struct Watch {
    last_io: Instant,
    /// When the head of a request not yet complete was first seen (the accept, for the first).
    head_since: Option<Instant>,
    requests: u64,
}

/// What the watchdog decided.
enum Verdict {
    Keep,
    /// The request head took too long: close at once.
    SlowHead,
    /// Nothing in flight and nothing moving: close gracefully.
    Idle,
}

impl Watch {
    fn new(now: Instant) -> Watch {
        Watch {
            last_io: now,
            head_since: Some(now),
            requests: 0,
        }
    }

    fn tick(&mut self, activity: &Activity, limits: &Limits, now: Instant) -> Verdict {
        if activity.moved.swap(false, Ordering::Relaxed) {
            self.last_io = now;
        }
        let requests = activity.requests.load(Ordering::Relaxed);
        if requests != self.requests {
            self.requests = requests;
            self.head_since = None;
        }
        let idle = activity.in_flight.load(Ordering::Relaxed) == 0;
        if idle && !activity.multiplexed.load(Ordering::Relaxed) {
            if activity.read_while_idle.load(Ordering::Relaxed) {
                let since = *self.head_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= limits.header_read_timeout {
                    return Verdict::SlowHead;
                }
            } else if requests > 0 {
                self.head_since = None;
            } else if let Some(since) = self.head_since
                && now.saturating_duration_since(since) >= limits.header_read_timeout
            {
                // A new connection that never sent its first request.
                return Verdict::SlowHead;
            }
        }
        if idle && now.saturating_duration_since(self.last_io) >= limits.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A request in flight on a client connection.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved.store(true, Ordering::Relaxed);
    }
}

/// A client stream that reports its reads and writes to the connection's [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.io(true);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) frontend: Arc<FrontendCtx>,
    pub(crate) client: SocketAddr,
    pub(crate) activity: Arc<Activity>,
    /// This client's `X-Forwarded-For` and `Forwarded` elements, made once per connection.
    pub(crate) forwarded: forward::ForwardedFor,
}

impl Conn {
    fn new(
        frontend: Arc<FrontendCtx>,
        client: SocketAddr,
        tls: bool,
        activity: Arc<Activity>,
    ) -> Conn {
        Conn {
            forwarded: forward::ForwardedFor::new(client, tls),
            frontend,
            client,
            activity,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Versions {
    Detect,
    Http1,
    Http2,
}

async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    ctx: Arc<FrontendCtx>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(spec) = ctx.balancer.snapshot().l7.clone() else {
        return;
    };
    let limits = spec.limits;
    let activity = Arc::new(Activity::default());
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let server_tls = spec
        .tls
        .as_ref()
        .and_then(|_| ctx.router.server_tls.load_full());
    match server_tls {
        None => {
            let conn = Arc::new(Conn::new(ctx, client, false, activity));
            serve_http(io, Versions::Detect, conn, &limits, &cancel).await;
        }
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
            let stream = match tokio::time::timeout(limits.header_read_timeout, accept).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    debug!(frontend = %ctx.addr, %client, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(frontend = %ctx.addr, %client, "TLS handshake timed out");
                    return;
                }
            };
            let versions = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Versions::Http2
            } else {
                Versions::Http1
            };
            let conn = Arc::new(Conn::new(ctx, client, true, activity));
            serve_http(stream, versions, conn, &limits, &cancel).await;
        }
    }
}

async fn serve_http<I>(
    io: I,
    versions: Versions,
    conn: Arc<Conn>,
    limits: &Limits,
    cancel: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // HTTP/2 streams run in this task (see `streams`), not in a task each.
    let mut streams = streams::Streams::default();
    let mut builder = auto::Builder::new(streams.executor());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header timeout is the watchdog's (hyper's would also cut idle keep-alive).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_mins(1))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = match versions {
        Versions::Detect => builder,
        Versions::Http1 => builder.http1_only(),
        Versions::Http2 => builder.http2_only(),
    };
    let activity = Arc::clone(&conn.activity);
    let frontend = conn.frontend.addr;
    let client = conn.client;
    let service = hyper::service::service_fn(move |req| forward::handle(req, Arc::clone(&conn)));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let tick = (limits.header_read_timeout / 4)
        .min(limits.idle_timeout / 4)
        .max(Duration::from_millis(50));
    let mut watch = Watch::new(Instant::now());
    let mut draining = false;
    // Made once: the connection's task wakes for every request, and a timer or a
    // cancellation waiter made anew each time would cost more than the request's parsing.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let watchdog = tokio::time::sleep(tick);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            biased;
            result = std::future::poll_fn(|cx| streams.poll_connection(served.as_mut(), cx)) => {
                if let Err(error) = result {
                    debug!(%frontend, %client, %error, "client connection ended with an error");
                }
                return;
            }
            () = &mut cancelled, if !draining => {
                served.as_mut().graceful_shutdown();
                draining = true;
            }
            () = &mut watchdog, if !draining => {
                let now = Instant::now();
                watchdog.as_mut().reset(now + tick);
                match watch.tick(&activity, limits, now) {
                    Verdict::Keep => {}
                    Verdict::SlowHead => {
                        debug!(%frontend, %client, "request head not complete within the header timeout; closing");
                        return;
                    }
                    Verdict::Idle => {
                        debug!(%frontend, %client, "client connection idle; closing");
                        served.as_mut().graceful_shutdown();
                        draining = true;
                    }
                }
            }
        }
    }
}
