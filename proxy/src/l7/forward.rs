//! One request, from the client's headers to the backend's response: limits, the headers a
//! proxy must remove and add, the choice of a backend, retries within the budget, timeouts,
//! outlier accounting, `Upgrade` tunnels, metrics and the access log.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, info};

use super::access_log::{Entry, rfc3339_now};
use super::body::{ProxyBody, UpBody};
use super::pick::pick;
use super::upstream::{self, SendError, UpstreamError};
use super::{Conn, L7Spec};
use crate::balance::BackendSet;

/// Backends one request may try at most (the first attempt and its retries).
const MAX_ATTEMPTS: usize = 8;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Hop-by-hop headers removed whatever `Connection` says; [`strip_hop_by_hop`] handles
/// `Connection`, `TE` and `Upgrade` on their own.
static ALWAYS_REMOVED: [HeaderName; 3] = [
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Why the proxy answered a request itself.
#[derive(Debug)]
enum Failure {
    NoBackend,
    Upstream(UpstreamError),
    Timeout(Duration),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Upstream(e) if e.is_connect() => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Upstream(_) => StatusCode::BAD_GATEWAY,
            Failure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::NoBackend => "no backend available".to_owned(),
            Failure::Upstream(e) if e.is_connect() => "no backend could be reached".to_owned(),
            Failure::Upstream(_) => "the backend failed to answer".to_owned(),
            Failure::Timeout(d) => format!("no answer from the backends within {d:?}"),
        }
    }
}

fn local(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(format!("switchyard: {message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request that can be sent again as it was: an idempotent method and no body.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn of(req: &Request<UpBody>) -> Option<Template> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        (idempotent && req.body().is_end_stream()).then(|| Template {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<UpBody> {
        let mut req = Request::new(UpBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Serves one request of a client connection.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let request_guard = conn.activity.request(req.version() == Version::HTTP_2);
    let ctx = &conn.frontend;
    let router = &ctx.router;
    let set = ctx.balancer.snapshot();
    let Some(spec) = set.l7.clone() else {
        // The frontend turned L4 under this connection.
        return Ok(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "this frontend no longer serves HTTP",
        ));
    };
    router.budget.deposit(started);

    if let Some(max) = spec.limits.max_body_bytes
        && req.body().size_hint().lower() > max
    {
        discard(req.into_body()).await;
        let response = local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        router
            .counters
            .response(response.status().as_u16(), started.elapsed());
        return Ok(response);
    }

    let upgrade = is_upgrade(&req);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let log = ctx.config.access_log.as_ref().map(|_| LogFields::of(&req));
    let (mut parts, body) = req.into_parts();
    prepare_request_headers(&mut parts.headers, &conn, upgrade);
    let req = Request::from_parts(parts, UpBody::new(body, spec.limits.max_body_bytes));

    // Boxed: the retry loop's state is most of a request's future, which hyper moves whole
    // (into its slot of the connection for HTTP/1.1, into a box per stream for HTTP/2).
    let tries = Box::pin(attempts(req, &set, &spec, &conn, upgrade, started));
    let outcome = match spec.timeouts.request {
        Some(limit) => tokio::time::timeout(limit, tries).await.unwrap_or(Outcome {
            result: Err(Failure::Timeout(limit)),
            backend: None,
            retries: 0,
            answered: None,
        }),
        None => tries.await,
    };

    let retries = outcome.retries;
    let backend = outcome.backend;
    let response = match outcome.result {
        Ok(Sent {
            mut response,
            reuse,
            in_flight,
        }) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_side) = on_upgrade
            {
                let backend_side = hyper::upgrade::on(&mut response);
                tunnel(client_side, backend_side, conn.client);
                let mut switched = Response::new(ProxyBody::empty());
                *switched.status_mut() = response.status();
                *switched.headers_mut() = response.headers().clone();
                switched
            } else {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(
                    parts,
                    ProxyBody::upstream(body, reuse, Some(in_flight)).with_request(request_guard),
                )
            }
        }
        Err(failure) => {
            if !matches!(failure, Failure::NoBackend) {
                debug!(frontend = %ctx.addr, error = ?failure, "request failed");
            }
            local(failure.status(), &failure.message())
        }
    };
    // A backend's answer was timed when it came; reading the clock again would only add the
    // few instructions since.
    let elapsed = outcome
        .answered
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    router
        .counters
        .response(response.status().as_u16(), elapsed);
    if let (Some(out), Some(fields)) = (ctx.config.access_log.as_ref(), log) {
        out.write(&Entry {
            time: rfc3339_now(),
            service: &set.name,
            frontend: ctx.addr.to_string(),
            client: conn.client.to_string(),
            method: fields.method.as_str(),
            authority: &fields.authority,
            path: &fields.path,
            protocol: fields.protocol,
            status: response.status().as_u16(),
            backend: backend.map(|b| b.to_string()).unwrap_or_default(),
            retries,
            duration_ms: elapsed.as_secs_f64() * 1e3,
        });
    }
    Ok(response)
}

/// A refused body up to this size is read and dropped before the answer goes out.
const DISCARDED_BYTES: u64 = 256 * 1024;
/// ... for at most this long.
const DISCARD_TIME: Duration = Duration::from_secs(1);

/// Reads and drops a refused request's body when it is small enough, so that the client gets
/// the answer on a clean stream: HTTP/2 would otherwise reset a stream whose body is still
/// coming once the answer is out (`RST_STREAM(NO_ERROR)`, which RFC 9113 allows but curl
/// before 8 reports as a failure).
async fn discard(mut body: Incoming) {
    if body.size_hint().lower() > DISCARDED_BYTES {
        return;
    }
    let mut read = 0u64;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DISCARDED_BYTES {
                return;
            }
        }
    })
    .await;
}

/// Copies the request line's fields for the access log before the request moves on.
struct LogFields {
    method: Method,
    authority: String,
    path: String,
    protocol: &'static str,
}

impl LogFields {
    fn of(req: &Request<Incoming>) -> LogFields {
        LogFields {
            method: req.method().clone(),
            authority: authority_of(req.uri(), req.headers()).unwrap_or_default(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
        }
    }
}

struct Sent {
    response: Response<super::body::FromBackend>,
    reuse: Option<super::body::Reuse>,
    in_flight: super::endpoint::InFlight,
}

struct Outcome {
    result: Result<Sent, Failure>,
    backend: Option<SocketAddr>,
    retries: u32,
    /// When the answer passed on came from its backend.
    answered: Option<Instant>,
}

/// Tries backends until one answers, within the retry policy and budget.
async fn attempts(
    req: Request<UpBody>,
    set: &BackendSet,
    spec: &L7Spec,
    conn: &Conn,
    upgrade: bool,
    started: Instant,
) -> Outcome {
    let router = &conn.frontend.router;
    let upstream = router.upstream();
    let template = if spec.retries.max_retries > 0 && !upgrade {
        Template::of(&req)
    } else {
        None
    };
    let max_attempts = (spec.retries.max_retries as usize + 1).min(MAX_ATTEMPTS);
    let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS];
    let mut attempt = 0;
    let mut pending = Some(req);
    let mut last = Failure::NoBackend;
    let mut retries = 0;
    let mut backend_addr = None;
    // A 503 kept while a retry looks for another backend: the answer if none is left.
    let mut held: Option<(Sent, SocketAddr, Instant)> = None;
    loop {
        // The first attempt starts with the request.
        let now = if attempt == 0 {
            started
        } else {
            Instant::now()
        };
        let headers = match (&pending, &template) {
            (Some(r), _) => r.headers(),
            (None, Some(t)) => &t.headers,
            (None, None) => break,
        };
        let Some(backend) = pick(
            set,
            &spec.balancer,
            &router.next,
            headers,
            &tried[..attempt],
            now,
        ) else {
            break;
        };
        tried[attempt] = backend.addr;
        attempt += 1;
        backend_addr = Some(backend.addr);
        let Some(req) = pending
            .take()
            .or_else(|| template.as_ref().map(Template::request))
        else {
            break;
        };
        let endpoint = Arc::clone(&backend.l7);
        let in_flight = endpoint.start();
        let connects = endpoint.pool.connects();
        // Each call awaited where it is made: a future first bound to a variable is copied
        // whole again into the await, and these are large.
        let sent = match (upgrade, spec.timeouts.per_try) {
            (false, None) => {
                Some(upstream::send(&upstream, backend.addr, &endpoint, &backend.stats, req).await)
            }
            (false, Some(limit)) => tokio::time::timeout(
                limit,
                upstream::send(&upstream, backend.addr, &endpoint, &backend.stats, req),
            )
            .await
            .ok(),
            (true, per_try) => {
                let tunnel = Box::pin(upstream::send_upgrade(
                    &upstream,
                    backend.addr,
                    &backend.stats,
                    req,
                ));
                let answered = match per_try {
                    Some(limit) => tokio::time::timeout(limit, tunnel).await.ok(),
                    None => Some(tunnel.await),
                };
                match answered {
                    Some(Ok(response)) => Some(Ok((response, None))),
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                }
            }
        };
        let Some(result) = sent else {
            endpoint.counters.failed();
            outlier_failure(set, spec, backend, conn);
            last = Failure::Timeout(spec.timeouts.per_try.unwrap_or_default());
            break;
        };
        let answered = Instant::now();
        let took = answered.saturating_duration_since(now);
        let may_retry = attempt < max_attempts;
        match result {
            Ok((response, reuse)) => {
                let status = response.status();
                endpoint.counters.response(status.as_u16(), took);
                // The estimate is the backend's answering time, as linkerd2-proxy measures
                // it: a request that waited for a connection to it to be made (its own or
                // another's) says how long connecting took, and a slow first connect would
                // otherwise keep the backend's estimate high for the decay time.
                if endpoint.pool.connects() == connects {
                    endpoint.observe(took, answered);
                }
                if status.is_server_error() {
                    outlier_failure(set, spec, backend, conn);
                } else {
                    endpoint.succeeded(answered);
                }
                let sent = Sent {
                    response,
                    reuse,
                    in_flight,
                };
                if status == StatusCode::SERVICE_UNAVAILABLE
                    && template.is_some()
                    && may_retry
                    && retry_allowed(conn, spec)
                {
                    retries += 1;
                    held = Some((sent, backend.addr, answered));
                    continue;
                }
                return Outcome {
                    result: Ok(sent),
                    backend: backend_addr,
                    retries,
                    answered: Some(answered),
                };
            }
            Err(SendError::NotSent(req, error)) => {
                endpoint.counters.failed();
                if error.is_connect() {
                    outlier_failure(set, spec, backend, conn);
                }
                last = Failure::Upstream(error);
                pending = Some(req);
                if may_retry && retry_allowed(conn, spec) {
                    retries += 1;
                    continue;
                }
                break;
            }
            Err(SendError::Sent(error)) => {
                endpoint.counters.failed();
                outlier_failure(set, spec, backend, conn);
                last = Failure::Upstream(error);
                break;
            }
        }
    }
    match held {
        // A backend's own 503 says more than the proxy's error about the retry that failed.
        Some((sent, addr, answered)) => Outcome {
            result: Ok(sent),
            backend: Some(addr),
            retries,
            answered: Some(answered),
        },
        _ => Outcome {
            result: Err(last),
            backend: backend_addr,
            retries,
            answered: None,
        },
    }
}

fn retry_allowed(conn: &Conn, spec: &L7Spec) -> bool {
    let router = &conn.frontend.router;
    if router.budget.withdraw(&spec.retries, Instant::now()) {
        router
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    } else {
        router
            .retries_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        false
    }
}

/// Counts a failure of `backend` and ejects it when it crossed the threshold and the
/// frontend may still eject one more backend.
fn outlier_failure(
    set: &BackendSet,
    spec: &L7Spec,
    backend: &crate::balance::Backend,
    conn: &Conn,
) {
    if !backend.l7.failed(&spec.outlier) {
        return;
    }
    let now = Instant::now();
    let total = set.eligible_len();
    let ejected = set.eligible().filter(|b| b.l7.is_ejected(now)).count();
    let allowed = (total * spec.outlier.max_ejection_percent as usize / 100).max(1);
    if total < 2 || ejected >= allowed || ejected + 1 >= total {
        return;
    }
    let length = backend.l7.eject(&spec.outlier, now);
    conn.frontend
        .router
        .ejections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(service = %set.name, backend = %backend.addr, ?length, "backend ejected after consecutive failures");
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the headers that belong to one hop (RFC 9110 §7.6.1); with `upgrade`, keeps the
/// `Connection: upgrade` and `Upgrade` pair.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over a few names, not a lookup for each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        // gRPC needs it, and it is the one `TE` value HTTP/2 allows.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    for name in &ALWAYS_REMOVED {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// A header [`strip_hop_by_hop`] removes or rewrites (`Connection` names the others).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::UPGRADE
        || ALWAYS_REMOVED.contains(name)
}

/// A client's elements of `X-Forwarded-For` and `Forwarded` (RFC 7239), and the scheme it
/// spoke: made once per connection, so a request without these headers only clones them.
#[derive(Debug)]
pub(crate) struct ForwardedFor {
    xff: HeaderValue,
    forwarded: HeaderValue,
    proto: HeaderValue,
}

impl ForwardedFor {
    pub(crate) fn new(client: SocketAddr, tls: bool) -> ForwardedFor {
        let ip = client.ip();
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let proto = if tls { "https" } else { "http" };
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let value =
            |s: String| HeaderValue::from_str(&s).expect("an address is a valid header value");
        ForwardedFor {
            xff: value(ip.to_string()),
            forwarded: value(format!("for={node};proto={proto}")),
            proto: HeaderValue::from_static(proto),
        }
    }
}

fn prepare_request_headers(headers: &mut HeaderMap, conn: &Conn, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    let f = &conn.forwarded;
    append(headers, &X_FORWARDED_FOR, &f.xff);
    append(headers, &FORWARDED, &f.forwarded);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, f.proto.clone());
    }
}

/// Appends `value` to a list-valued header, as one comma-separated line.
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let joined = match headers.get(name) {
        Some(existing) if !existing.is_empty() => {
            let mut bytes = Vec::with_capacity(existing.len() + 2 + value.len());
            bytes.extend_from_slice(existing.as_bytes());
            bytes.extend_from_slice(b", ");
            bytes.extend_from_slice(value.as_bytes());
            HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| value.clone())
        }
        _ => value.clone(),
    };
    headers.insert(name, joined);
}

/// The request's authority: the URI's (HTTP/2, absolute-form), else the `Host` header.
pub(crate) fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// Joins the client's and the backend's upgraded connections once both are ready.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade, peer: SocketAddr) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(error) => {
                debug!(client = %peer, %error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            debug!(client = %peer, %error, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'static str, &'static str)];

    fn map(pairs: Pairs<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    fn stripped(pairs: Pairs<'_>, upgrade: bool) -> Vec<(String, String)> {
        let mut headers = map(pairs);
        strip_hop_by_hop(&mut headers, upgrade);
        let mut left: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        left.sort();
        left
    }

    fn owned(pairs: Pairs<'_>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_case_by_case() {
        let cases: [(&str, Pairs<'_>, bool, Pairs<'_>); 7] = [
            (
                "none to strip: untouched",
                &[("host", "web"), ("accept", "*/*"), ("x-a", "1")],
                false,
                &[("host", "web"), ("accept", "*/*"), ("x-a", "1")],
            ),
            (
                "Connection and the headers it names",
                &[
                    ("connection", "close, x-secret"),
                    ("x-secret", "s"),
                    ("x-kept", "k"),
                ],
                false,
                &[("x-kept", "k")],
            ),
            (
                "keep-alive, proxy-connection and transfer-encoding without Connection",
                &[
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                    ("x-kept", "k"),
                ],
                false,
                &[("x-kept", "k")],
            ),
            (
                "TE: trailers stays (gRPC), alone",
                &[("te", "gzip, trailers"), ("x-kept", "k")],
                false,
                &[("te", "trailers"), ("x-kept", "k")],
            ),
            ("TE without trailers goes", &[("te", "gzip")], false, &[]),
            (
                "an Upgrade outside an upgrade goes",
                &[("upgrade", "websocket"), ("x-kept", "k")],
                false,
                &[("x-kept", "k")],
            ),
            (
                "an upgrade keeps Upgrade and says Connection: upgrade",
                &[
                    ("connection", "Upgrade, x-secret"),
                    ("upgrade", "websocket"),
                    ("x-secret", "s"),
                ],
                true,
                &[("connection", "upgrade"), ("upgrade", "websocket")],
            ),
        ];
        for (name, input, upgrade, expected) in cases {
            assert_eq!(stripped(input, upgrade), owned(expected), "{name}");
        }
        // Each one alone is seen by the one-pass check, not only beside the others.
        for name in &ALWAYS_REMOVED {
            let mut headers = map(&[("x-kept", "k")]);
            headers.insert(name, HeaderValue::from_static("v"));
            strip_hop_by_hop(&mut headers, false);
            assert!(!headers.contains_key(name), "{name} alone is removed");
            assert!(headers.contains_key("x-kept"));
        }
    }
}
