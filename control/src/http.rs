//! The daemon's HTTP endpoints: `/metrics`, `/services` and `/proxyMode` on the metrics
//! address; `/healthz` and `/livez` on the healthz address, with kube-proxy's meaning and body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::controller::Health;
use crate::datapath::Status;
use crate::metrics::Metrics;

/// What the endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub status: Status,
    pub proxy_mode: &'static str,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`, `/services`, `/proxyMode` (and `/healthz`, `/livez` for convenience).
    Metrics,
    /// `/healthz`, `/livez`.
    Health,
}

/// Binds the address at once, so a bad flag fails the start. With `SO_REUSEPORT`, as every
/// listener of the daemon: the next instance binds the same address while this one runs and
/// takes it over (see `switchyard_proxy::socket`). Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves HTTP/1.1 on the listener until cancelled.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    state: Arc<AdminState>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, endpoints, &request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection failed");
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn route(
    state: &AdminState,
    endpoints: Endpoints,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match (endpoints, request.uri().path()) {
        (_, "/healthz") => health(state, true),
        (_, "/livez") => health(state, false),
        (Endpoints::Metrics, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (Endpoints::Metrics, "/services") => {
            let views = state.status.frontends();
            match serde_json::to_vec_pretty(&views) {
                Ok(body) => respond(StatusCode::OK, "application/json", body),
                Err(error) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot encode services: {error}\n"),
                ),
            }
        }
        (Endpoints::Metrics, "/proxyMode") => {
            respond(StatusCode::OK, "text/plain", state.proxy_mode)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// kube-proxy's health body: `lastUpdated`, `currentTime` and, for `/healthz`, `nodeEligible`.
/// 200 when the datapath was synced within twice the sync period, 503 otherwise.
fn health(state: &AdminState, with_node: bool) -> Response<Full<Bytes>> {
    let healthy = state.health.is_healthy();
    let last = state.health.last_sync().map_or_else(String::new, |t| {
        humantime::format_rfc3339_millis(t).to_string()
    });
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut body = serde_json::json!({"lastUpdated": last, "currentTime": now});
    if with_node {
        body["nodeEligible"] = serde_json::Value::Bool(true);
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, "application/json", body.to_string())
}
