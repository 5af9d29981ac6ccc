//! HTTP/2 to backends, on the `h2` crate itself rather than hyper's client.
//!
//! hyper's HTTP/2 client hands each request over a channel to the connection's task, which
//! spawns one more task per request to wait for the response and send it back over another
//! channel. A proxy pays for that on every request. Here the request's own task opens the
//! stream and awaits the response headers; the connection's task only moves frames. A request
//! body that is not whole at once is pumped by a task of its own (it may outlive the response
//! headers: gRPC streams both ways), as hyper does.
//!
//! The connection answers what the pool needs: whether it can still take requests. It pings
//! the backend while streams are open (30 s without an answer to a PING within 10 s closes it,
//! as the hyper client was configured), never while idle: gRPC servers count pings on idle
//! connections as abuse and close them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Builder, SendRequest};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tracing::debug;

use super::body::{BoxError, UpBody};
use crate::stats::ActiveGuard;

/// Flow-control windows and limits, as hyper's client defaults (the spec's 64 KiB windows
/// throttle a backend on a fast network).
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams the proxy may open before the backend's SETTINGS say how many it allows (the
/// spec's recommended minimum, so no backend refuses them).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// How often a connection with open streams is pinged, and how long an answer may take (a
/// second each in unit tests, so that a test can wait for them).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 30 });
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// What the connection's tasks and its request handles share.
#[derive(Default)]
struct Shared {
    /// Set when the connection can take no new stream.
    closed: AtomicBool,
    /// Responses not yet read whole: keepalive pings only while there are some.
    open: AtomicUsize,
}

/// One HTTP/2 connection to a backend. Clones share it.
#[derive(Clone)]
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A failed request, and the request itself when it never left the proxy.
pub(crate) struct H2SendError {
    pub(crate) request: Option<Request<UpBody>>,
    pub(crate) error: h2::Error,
}

impl H2Conn {
    /// The HTTP/2 handshake on `io`; the connection's tasks are spawned, and `active` is
    /// dropped when it ends.
    pub(crate) async fn handshake<T>(
        io: T,
        backend: std::net::SocketAddr,
        active: ActiveGuard,
    ) -> Result<H2Conn, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (send, mut connection) = Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<T, Bytes>(io)
            .await?;
        let shared = Arc::new(Shared::default());
        // Told when the backend stopped answering pings: the driver drops the connection.
        // (A oneshot rather than a `Notify`: the driver polls it at every wakeup, and a
        // `Notify` takes a lock each time.)
        let (dead, unanswered) = oneshot::channel();
        if let Some(ping_pong) = connection.ping_pong() {
            tokio::spawn(keepalive(ping_pong, Arc::clone(&shared), backend, dead));
        }
        let driver = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(error) = ended {
                        debug!(%backend, %error, "HTTP/2 upstream connection ended");
                    }
                }
                Ok(()) = unanswered => {
                    debug!(%backend, "HTTP/2 upstream connection closed: no answer to a PING");
                }
            }
            driver.closed.store(true, Ordering::Release);
            drop(active);
        });
        Ok(H2Conn { send, shared })
    }

    /// Whether the connection can no longer take requests (ended, or the backend said
    /// GOAWAY).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `req` and waits for the response's headers. A request that fails before its
    /// stream is opened comes back whole.
    pub(crate) async fn send(self, req: Request<UpBody>) -> Result<Response<H2Body>, H2SendError> {
        let mut send = match self.send.ready().await {
            Ok(send) => send,
            Err(error) => {
                // Gone, or the backend said GOAWAY: no stream will open here again.
                self.shared.closed.store(true, Ordering::Release);
                return Err(H2SendError {
                    request: Some(req),
                    error,
                });
            }
        };
        let (head, body) = req.into_parts();
        let mut head = Request::from_parts(head, ());
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || defines_payload(head.method()))
            && !head.headers().contains_key(header::CONTENT_LENGTH)
        {
            head.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let end_of_stream = body.is_end_stream();
        let (response, stream) = match send.send_request(head, end_of_stream) {
            Ok(sent) => sent,
            Err(error) => {
                if error.is_go_away() || error.is_io() {
                    self.shared.closed.store(true, Ordering::Release);
                }
                return Err(H2SendError {
                    request: None,
                    error,
                });
            }
        };
        let open = OpenStream::new(&self.shared);
        let cancel = if end_of_stream {
            None
        } else {
            pump(body, stream).await
        };
        let mut cancel = CancelOnDrop(cancel);
        let result = response.await;
        cancel.disarm();
        let response = result.map_err(|error| H2SendError {
            request: None,
            error,
        })?;
        let remaining = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(response.map(|recv| H2Body {
            recv,
            data_done: false,
            remaining,
            _open: open,
        }))
    }
}

/// Methods whose request body has a meaning (an empty one is sent with `content-length: 0`).
fn defines_payload(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

/// Pings while responses are open; tells the driver when a ping goes unanswered.
async fn keepalive(
    mut ping_pong: PingPong,
    shared: Arc<Shared>,
    backend: std::net::SocketAddr,
    dead: oneshot::Sender<()>,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
        KEEPALIVE_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if shared.open.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                debug!(%backend, %error, "HTTP/2 upstream ping failed");
                return;
            }
            Err(_) => {
                let _ = dead.send(());
                return;
            }
        }
    }
}

/// Counts a response as open until its body is dropped.
struct OpenStream(Arc<Shared>);

impl OpenStream {
    fn new(shared: &Arc<Shared>) -> OpenStream {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(Arc::clone(shared))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resets the request's stream if the wait for its response is abandoned (the client went
/// away, a timeout fired) while its body is still being pumped.
struct CancelOnDrop(Option<oneshot::Sender<()>>);

impl CancelOnDrop {
    /// The response came (or failed): the pump carries on, or ends, on its own.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// Starts sending a request body: what is at hand right away is sent from here; if the body
/// is still coming, a task pumps the rest, and the sender returned cancels it.
async fn pump(body: UpBody, stream: SendStream<Bytes>) -> Option<oneshot::Sender<()>> {
    let mut pump = Pump {
        body,
        stream,
        held: None,
        cancel: None,
    };
    let done =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pump).poll(cx).is_ready())).await;
    if done {
        return None;
    }
    let (cancel, cancelled) = oneshot::channel();
    pump.cancel = Some(cancelled);
    tokio::spawn(pump);
    Some(cancel)
}

/// Moves a request body into its stream, within the backend's flow-control window.
struct Pump {
    body: UpBody,
    stream: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window to send it (and whether it ends it).
    held: Option<(Bytes, bool)>,
    cancel: Option<oneshot::Receiver<()>>,
}

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(cancelled) = this.cancel.as_mut() {
            match Pin::new(cancelled).poll(cx) {
                Poll::Ready(Ok(())) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                // Disarmed: the response came, the body goes on.
                Poll::Ready(Err(_)) => this.cancel = None,
                Poll::Pending => {}
            }
        }
        match this.step(cx) {
            Poll::Ready(Err(error)) => {
                debug!(%error, "request body to an HTTP/2 backend ended early");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Pump {
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            // Woken, too, if the backend resets the stream while the body is slow.
            if let Poll::Ready(reason) = self.stream.poll_reset(cx)? {
                return Poll::Ready(Err(h2::Error::from(reason).into()));
            }
            if let Some((_, end)) = &self.held {
                let end = *end;
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("the backend closed the stream".into())),
                    }
                }
                if let Some((data, _)) = self.held.take() {
                    self.stream.send_data(data, end)?;
                }
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is read before any window is claimed: a claim held while the
            // client is slow could starve the connection's other streams.
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        if data.is_empty() {
                            self.stream.send_data(data, end)?;
                            if end {
                                return Poll::Ready(Ok(()));
                            }
                        } else {
                            // One byte claimed: h2 raises the claim to what is buffered.
                            self.stream.reserve_capacity(1);
                            self.held = Some((data, end));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            self.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(error)) => {
                    self.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(error));
                }
                None => {
                    self.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response body from an HTTP/2 backend: DATA frames, then trailers (gRPC's status).
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// `content-length` less what came, when the backend sent one.
    remaining: Option<u64>,
    _open: OpenStream,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read: the backend may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = this.remaining.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) after a whole response: the backend needs no more of
                // the request (RFC 9113, 8.1), not a failure.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
