//! Sending a request to one backend: reusing a pooled connection or making one (TCP, then
//! TLS when the frontend originates it, then the HTTP/1.1 or HTTP/2 handshake), and telling
//! apart a request that never reached the backend (safe to try elsewhere) from one that did.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::{BoxError, FromBackend, Reuse, UpBody};
use super::endpoint::Endpoint;
use super::h2client::H2Conn;
use super::pool::{H1Sender, H2Sender};
use super::spec::UpstreamProtocol;
use crate::stats::{BackendStats, ConnectingGuard};

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("connect to {0}: timed out after {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(SocketAddr, BoxError),
    #[error("request to {0}: {1}")]
    Http(SocketAddr, BoxError),
}

impl UpstreamError {
    /// A failure to reach the backend at all (it counts against the backend and is what
    /// idempotent retries on "connect errors" mean).
    pub(crate) fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Http(..))
    }
}

/// A failed send.
#[allow(
    clippy::large_enum_variant,
    reason = "only on the failure path, where boxing would cost as much"
)]
pub(crate) enum SendError {
    /// The request never left the proxy; here it is back, whole.
    NotSent(Request<UpBody>, UpstreamError),
    /// The request, or part of it, may have reached the backend.
    Sent(UpstreamError),
}

/// How to reach a frontend's backends; rebuilt when the frontend's spec changes.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) tls: Option<super::tls::ClientTls>,
    pub(crate) connect_timeout: Duration,
}

enum Fresh {
    H1(H1Sender),
    H2(H2Sender),
}

/// Sends `req` to the backend at `addr` on a pooled connection or a new one. An HTTP/1.1
/// response comes with the connection to give back once its body is read.
pub(crate) async fn send(
    upstream: &Upstream,
    addr: SocketAddr,
    endpoint: &Arc<Endpoint>,
    stats: &Arc<BackendStats>,
    mut req: Request<UpBody>,
) -> Result<(Response<FromBackend>, Option<Reuse>), SendError> {
    let tls = upstream.tls.is_some();
    let pool = &endpoint.pool;
    let h2_first = upstream.protocol != UpstreamProtocol::Http1;
    if h2_first && let Some(sender) = pool.h2(tls) {
        for_http2(&mut req, addr, tls);
        req = match h2_sent(addr, sender.send(req).await) {
            Ok(r) => return Ok((r, None)),
            Err(SendError::NotSent(req, _)) => req,
            Err(e) => return Err(e),
        };
    }
    if upstream.protocol != UpstreamProtocol::Http2 {
        // Reuse idle connections; one the backend closed in the meantime is skipped.
        while let Some(mut sender) = pool.take_h1(tls) {
            if sender.ready().await.is_err() {
                continue;
            }
            req = match send_h1(sender, addr, endpoint, tls, req).await {
                Ok(sent) => return Ok(sent),
                Err(SendError::NotSent(req, _)) => req,
                Err(e) => return Err(e),
            };
        }
    }
    // Boxed: making a connection is rare, and its futures (connect, TLS, handshake) would
    // otherwise make every request's future larger, and every move of it longer.
    Box::pin(send_on_new(upstream, addr, endpoint, stats, req)).await
}

/// Sends `req` on a new connection to `addr`.
async fn send_on_new(
    upstream: &Upstream,
    addr: SocketAddr,
    endpoint: &Arc<Endpoint>,
    stats: &Arc<BackendStats>,
    req: Request<UpBody>,
) -> Result<(Response<FromBackend>, Option<Reuse>), SendError> {
    let tls = upstream.tls.is_some();
    let pool = &endpoint.pool;
    let h2_first = upstream.protocol != UpstreamProtocol::Http1;
    // A new connection. HTTP/2 ones are made one at a time, so that a burst of requests
    // shares the first instead of opening one each.
    let connecting = if h2_first {
        let guard = pool.h2_connecting.lock().await;
        if let Some(sender) = pool.h2(tls) {
            return send_h2(sender, addr, tls, req).await.map(|r| (r, None));
        }
        Some(guard)
    } else {
        None
    };
    let connected = connect(upstream, addr, stats, false).await;
    pool.connecting();
    match connected {
        Err(e) => Err(SendError::NotSent(req, e)),
        Ok(Fresh::H2(sender)) => {
            pool.set_h2(sender.clone(), tls);
            drop(connecting);
            send_h2(sender, addr, tls, req).await.map(|r| (r, None))
        }
        Ok(Fresh::H1(sender)) => send_h1(sender, addr, endpoint, tls, req).await,
    }
}

async fn send_h1(
    mut sender: H1Sender,
    addr: SocketAddr,
    endpoint: &Arc<Endpoint>,
    tls: bool,
    mut req: Request<UpBody>,
) -> Result<(Response<FromBackend>, Option<Reuse>), SendError> {
    for_http1(&mut req);
    match sender.try_send_request(req).await {
        Ok(response) => Ok((
            response.map(FromBackend::H1),
            Some(Reuse {
                endpoint: Arc::clone(endpoint),
                sender,
                tls,
            }),
        )),
        Err(mut e) => match e.take_message() {
            Some(req) => Err(SendError::NotSent(
                req,
                UpstreamError::Http(addr, e.into_error().into()),
            )),
            None => Err(SendError::Sent(UpstreamError::Http(
                addr,
                e.into_error().into(),
            ))),
        },
    }
}

async fn send_h2(
    sender: H2Sender,
    addr: SocketAddr,
    tls: bool,
    mut req: Request<UpBody>,
) -> Result<Response<FromBackend>, SendError> {
    for_http2(&mut req, addr, tls);
    h2_sent(addr, sender.send(req).await)
}

/// What an HTTP/2 send came to, in the terms of [`send`].
#[allow(
    clippy::result_large_err,
    reason = "the error hands the request back whole, as `send`'s does"
)]
fn h2_sent(
    addr: SocketAddr,
    sent: Result<Response<super::h2client::H2Body>, super::h2client::H2SendError>,
) -> Result<Response<FromBackend>, SendError> {
    match sent {
        Ok(response) => Ok(response.map(FromBackend::H2)),
        Err(e) => {
            let error = UpstreamError::Http(addr, e.error.into());
            Err(match e.request {
                Some(req) => SendError::NotSent(req, error),
                None => SendError::Sent(error),
            })
        }
    }
}

/// An HTTP/1.1 request: origin-form target, the authority in `Host`.
fn for_http1(req: &mut Request<UpBody>) {
    *req.version_mut() = Version::HTTP_11;
    if let Some(authority) = req.uri().authority().cloned() {
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
    }
}

/// An HTTP/2 request: scheme and authority in the target (from `Host` if the client sent
/// HTTP/1.1), no `Host` header.
fn for_http2(req: &mut Request<UpBody>, addr: SocketAddr, tls: bool) {
    *req.version_mut() = Version::HTTP_2;
    let host = req.headers_mut().remove(header::HOST);
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if parts.authority.is_none() {
        parts.authority = host
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| Authority::try_from(addr.to_string()).ok());
    }
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A TCP connection to `addr`, with its connect counted in the backend's stats.
pub(crate) async fn tcp(
    addr: SocketAddr,
    timeout: Duration,
    stats: &Arc<BackendStats>,
) -> Result<(TcpStream, crate::stats::ActiveGuard), UpstreamError> {
    let connecting = ConnectingGuard::new(Arc::clone(stats));
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok((stream, connecting.established()))
        }
        Ok(Err(e)) => {
            connecting.failed();
            Err(UpstreamError::Connect(addr, e))
        }
        Err(_) => {
            connecting.failed();
            Err(UpstreamError::ConnectTimeout(addr, timeout))
        }
    }
}

/// A new connection to `addr`, its HTTP handshake done and its driver spawned. With
/// `upgrades`, an HTTP/1.1 connection can be taken over by a `101 Switching Protocols`.
async fn connect(
    upstream: &Upstream,
    addr: SocketAddr,
    stats: &Arc<BackendStats>,
    upgrades: bool,
) -> Result<Fresh, UpstreamError> {
    let (stream, active) = tcp(addr, upstream.connect_timeout, stats).await?;
    match &upstream.tls {
        None => {
            let h2 = upstream.protocol == UpstreamProtocol::Http2 && !upgrades;
            handshake(stream, addr, h2, upgrades, active).await
        }
        Some(tls) => {
            let stream = tls
                .connect(addr, stream, !upgrades)
                .await
                .map_err(|e| UpstreamError::Tls(addr, e))?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            handshake(stream, addr, h2, upgrades, active).await
        }
    }
}

async fn handshake<T>(
    io: T,
    addr: SocketAddr,
    h2: bool,
    upgrades: bool,
    active: crate::stats::ActiveGuard,
) -> Result<Fresh, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    if h2 {
        let conn = H2Conn::handshake(io, addr, active)
            .await
            .map_err(|e| UpstreamError::Handshake(addr, e.into()))?;
        return Ok(Fresh::H2(conn));
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Handshake(addr, e.into()))?;
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(error) = ended {
            debug!(backend = %addr, %error, "HTTP/1.1 upstream connection ended");
        }
        drop(active);
    });
    Ok(Fresh::H1(sender))
}

/// Sends an `Upgrade` request on a connection of its own (never pooled: once upgraded it
/// belongs to the tunnel).
pub(crate) async fn send_upgrade(
    upstream: &Upstream,
    addr: SocketAddr,
    stats: &Arc<BackendStats>,
    req: Request<UpBody>,
) -> Result<Response<FromBackend>, SendError> {
    match connect(upstream, addr, stats, true).await {
        Err(e) => Err(SendError::NotSent(req, e)),
        Ok(Fresh::H1(mut sender)) => {
            let mut req = req;
            for_http1(&mut req);
            sender
                .send_request(req)
                .await
                .map(|r| r.map(FromBackend::H1))
                .map_err(|e| SendError::Sent(UpstreamError::Http(addr, e.into())))
        }
        Ok(Fresh::H2(_)) => unreachable!("upgrade connections are made HTTP/1.1"),
    }
}
