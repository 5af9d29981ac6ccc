//! The bodies the proxy moves: requests to backends ([`UpBody`]) and responses to clients
//! ([`ProxyBody`]). A response body also carries what must happen when it ends: the request
//! stops counting as in flight, and an HTTP/1.1 connection goes back to its pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::endpoint::{Endpoint, InFlight};
use super::h2client::H2Body;
use super::pool::H1Sender;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body was larger than the frontend allows.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub(crate) struct BodyTooLarge(pub(crate) u64);

/// A request body on its way to a backend.
#[derive(Debug)]
pub(crate) enum UpBody {
    Empty,
    Incoming {
        body: Incoming,
        /// Bytes still allowed, when the frontend limits bodies.
        remaining: Option<u64>,
        limit: u64,
    },
}

impl UpBody {
    pub(crate) fn new(body: Incoming, limit: Option<u64>) -> UpBody {
        if body.is_end_stream() {
            return UpBody::Empty;
        }
        UpBody::Incoming {
            body,
            remaining: limit,
            limit: limit.unwrap_or(0),
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Incoming {
                body,
                remaining,
                limit,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(left), Some(data)) = (remaining.as_mut(), frame.data_ref()) {
                        let n = data.len() as u64;
                        if n > *left {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                        *left -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Incoming { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Incoming { body, .. } => body.size_hint(),
        }
    }
}

/// A response body as a backend sends it.
pub(crate) enum FromBackend {
    /// From an HTTP/1.1 connection (hyper's client).
    H1(Incoming),
    /// From an HTTP/2 stream.
    H2(H2Body),
}

impl Body for FromBackend {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FromBackend::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            FromBackend::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FromBackend::H1(body) => body.is_end_stream(),
            FromBackend::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FromBackend::H1(body) => body.size_hint(),
            FromBackend::H2(body) => body.size_hint(),
        }
    }
}

/// An HTTP/1.1 connection to give back to its pool once the response has been read whole.
pub(crate) struct Reuse {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) sender: H1Sender,
    pub(crate) tls: bool,
}

/// A response body on its way to the client.
pub(crate) struct ProxyBody {
    kind: Kind,
    reuse: Option<Reuse>,
    /// Dropped with the body: the request is no longer in flight to its backend...
    _in_flight: Option<InFlight>,
    /// ...nor on its client connection.
    _request: Option<super::RequestGuard>,
}

enum Kind {
    Upstream(FromBackend),
    Local(Option<Bytes>),
}

impl ProxyBody {
    /// A body the proxy answers itself.
    pub(crate) fn local(text: impl Into<Bytes>) -> ProxyBody {
        let bytes: Bytes = text.into();
        ProxyBody {
            kind: Kind::Local((!bytes.is_empty()).then_some(bytes)),
            reuse: None,
            _in_flight: None,
            _request: None,
        }
    }

    /// Keeps the client connection's request counted until the body ends.
    #[allow(
        clippy::used_underscore_binding,
        reason = "the field is a guard: it is only ever set and dropped"
    )]
    pub(crate) fn with_request(mut self, guard: super::RequestGuard) -> ProxyBody {
        self._request = Some(guard);
        self
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::local(Bytes::new())
    }

    /// A backend's body; `reuse` goes back to the pool when it ends.
    pub(crate) fn upstream(
        body: FromBackend,
        reuse: Option<Reuse>,
        in_flight: Option<InFlight>,
    ) -> ProxyBody {
        let mut body = ProxyBody {
            kind: Kind::Upstream(body),
            reuse,
            _in_flight: in_flight,
            _request: None,
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        // `reuse` first: asking an HTTP/2 stream whether it ended takes its connection's lock.
        if self.reuse.is_some()
            && let Kind::Upstream(incoming) = &self.kind
            && incoming.is_end_stream()
            && let Some(reuse) = self.reuse.take()
        {
            reuse.endpoint.pool.put_h1(reuse.sender, reuse.tls);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(incoming) => {
                let polled = Pin::new(incoming).poll_frame(cx);
                match &polled {
                    Poll::Ready(None | Some(Ok(_))) => this.release_if_done(),
                    // A broken body leaves the connection unusable: never pool it.
                    Poll::Ready(Some(Err(_))) => this.reuse = None,
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(bytes) => bytes.is_none(),
            Kind::Upstream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Upstream(incoming) => incoming.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body hyper never polled (a `HEAD`, a `204`) may still be whole.
        self.release_if_done();
    }
}

/// Reads a whole body, for health checks and tests.
pub(crate) async fn collect(body: FromBackend) -> Result<Bytes, BoxError> {
    Ok(body.collect().await?.to_bytes())
}
