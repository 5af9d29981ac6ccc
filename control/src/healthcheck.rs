//! The `healthCheckNodePort` server: for a `LoadBalancer` Service with
//! `externalTrafficPolicy: Local`, every node answers HTTP on the Service's health check port
//! so that the cloud load balancer sends traffic only to nodes that have a ready endpoint of
//! the Service.
//!
//! It answers as kube-proxy's `pkg/proxy/healthcheck` does: any method and any path gets 200
//! when the node has ready local endpoints for the Service and 503 otherwise, with the count in
//! the JSON body and in `X-Load-Balancing-Endpoint-Weight`. Its input is the controller's
//! [`TableDiff`]: the count of a Service is the number of distinct addresses of local, active
//! backends over all of the Service's entries that carry the port. It never looks at the
//! datapath: the answer says what the table wants, not what a datapath has programmed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::diff::TableDiff;
use crate::model::{BackendState, Frontend, ServiceEntry};
use crate::store::ObjectKey;

/// The header kube-proxy sets to the local endpoint count, which some load balancers use as
/// the node's weight.
const ENDPOINT_WEIGHT: HeaderName = HeaderName::from_static("x-load-balancing-endpoint-weight");

/// How long a client may take to send its request headers: the port is open on every node
/// address, so a client that never finishes must not hold a connection for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves every health check port of the table, one listener per port.
pub struct HealthCheckServer {
    bind_ip: IpAddr,
    /// Which port each frontend with a health check port claims, to find it again when the
    /// frontend is removed or changed.
    frontends: HashMap<Frontend, u16>,
    ports: BTreeMap<u16, Port>,
    /// Orders claims, so that the first Service to claim a port keeps it.
    next_seq: u64,
    /// Parent of every listener's token: dropping the server stops its listeners.
    cancel: CancellationToken,
}

/// One health check port: who owns it, what it answers and its listener, if bound.
struct Port {
    owner: ObjectKey,
    claims: BTreeMap<Frontend, Claim>,
    report: Arc<ArcSwap<Report>>,
    listener: Option<Listener>,
    /// Whether the bind failure was logged since the last success.
    bind_warned: bool,
    /// Other Services that claim the port and were logged as refused.
    rivals_warned: BTreeSet<ObjectKey>,
}

/// One frontend's claim on a port.
struct Claim {
    service: ObjectKey,
    seq: u64,
    /// Addresses of the frontend's local, active backends.
    local: BTreeSet<IpAddr>,
}

/// The answer of one port, rendered once per change and shared with every request.
struct Report {
    status: StatusCode,
    weight: HeaderValue,
    body: Bytes,
}

struct Listener {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl HealthCheckServer {
    /// A server that binds its listeners to `bind_ip` (`0.0.0.0` or `::` on a node,
    /// `127.0.0.1` in tests). `::` is bound as given; with Linux's default
    /// `net.ipv6.bindv6only=0` it accepts IPv4 too.
    pub fn new(bind_ip: IpAddr) -> HealthCheckServer {
        HealthCheckServer {
            bind_ip,
            frontends: HashMap::new(),
            ports: BTreeMap::new(),
            next_seq: 0,
            cancel: CancellationToken::new(),
        }
    }

    /// Applies one diff: updates the counts (the next request sees them) and opens and closes
    /// listeners. A port that cannot be bound is logged once and tried again on every apply
    /// until it binds.
    pub async fn apply(&mut self, diff: &TableDiff) {
        let mut dirty = BTreeSet::new();
        for frontend in &diff.removed {
            if let Some((port, _)) = self.unclaim(frontend) {
                dirty.insert(port);
            }
        }
        for entry in diff.added.iter().chain(&diff.changed) {
            let old = self.unclaim(&entry.frontend);
            dirty.extend(old.as_ref().map(|(port, _)| *port));
            if let Some(port) = entry.health_check_node_port {
                // A frontend that keeps its Service and port keeps its place in the queue.
                let seq = match old {
                    Some((old_port, old)) if old_port == port && old.service == entry.service => {
                        old.seq
                    }
                    _ => {
                        self.next_seq += 1;
                        self.next_seq
                    }
                };
                self.claim(port, entry, seq);
                dirty.insert(port);
            }
        }
        for port in dirty {
            self.refresh(port).await;
        }
        self.bind_missing().await;
    }

    /// The ports listened on now, sorted.
    pub fn ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(_, p)| p.listener.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// Closes every listener and forgets every claim: the server is as new afterwards.
    pub async fn shutdown(&mut self) {
        self.frontends.clear();
        for (port, state) in std::mem::take(&mut self.ports) {
            if let Some(listener) = state.listener {
                close(port, listener).await;
            }
        }
    }

    /// Removes the frontend's claim, if it has one; returns its port and the claim.
    fn unclaim(&mut self, frontend: &Frontend) -> Option<(u16, Claim)> {
        let port = self.frontends.remove(frontend)?;
        let claim = self.ports.get_mut(&port)?.claims.remove(frontend)?;
        Some((port, claim))
    }

    fn claim(&mut self, port: u16, entry: &ServiceEntry, seq: u64) {
        let local = entry
            .backends
            .iter()
            .filter(|b| b.local && b.state == BackendState::Active)
            .map(|b| b.addr)
            .collect();
        let state = self.ports.entry(port).or_insert_with(|| Port {
            owner: entry.service.clone(),
            claims: BTreeMap::new(),
            report: Arc::new(ArcSwap::from_pointee(Report::new(&entry.service, 0))),
            listener: None,
            bind_warned: false,
            rivals_warned: BTreeSet::new(),
        });
        state.claims.insert(
            entry.frontend,
            Claim {
                service: entry.service.clone(),
                seq,
                local,
            },
        );
        self.frontends.insert(entry.frontend, port);
    }

    /// Recomputes a port after its claims changed: closes it when none is left, hands it to
    /// the earliest other claimant when its owner is gone, and publishes the new answer.
    async fn refresh(&mut self, port: u16) {
        let Some(state) = self.ports.get_mut(&port) else {
            return;
        };
        if state.claims.is_empty() {
            if let Some(state) = self.ports.remove(&port)
                && let Some(listener) = state.listener
            {
                close(port, listener).await;
            }
            return;
        }
        if !state.claims.values().any(|c| c.service == state.owner)
            && let Some(first) = state.claims.values().min_by_key(|c| c.seq)
        {
            tracing::info!(
                port,
                from = %state.owner,
                to = %first.service,
                "health check port changes hands",
            );
            state.owner = first.service.clone();
        }
        let rivals: BTreeSet<&ObjectKey> = state
            .claims
            .values()
            .map(|c| &c.service)
            .filter(|s| **s != state.owner)
            .collect();
        for rival in &rivals {
            if !state.rivals_warned.contains(*rival) {
                tracing::warn!(
                    port,
                    service = %rival,
                    owner = %state.owner,
                    "health check node port {port} of service {rival} is already served for \
                     service {}; not served for {rival}",
                    state.owner,
                );
                state.rivals_warned.insert((*rival).clone());
            }
        }
        state.rivals_warned.retain(|s| rivals.contains(s));
        let local: BTreeSet<IpAddr> = state
            .claims
            .values()
            .filter(|c| c.service == state.owner)
            .flat_map(|c| c.local.iter().copied())
            .collect();
        state
            .report
            .store(Arc::new(Report::new(&state.owner, local.len())));
    }

    /// Binds every port that has no listener yet.
    async fn bind_missing(&mut self) {
        for (port, state) in &mut self.ports {
            if state.listener.is_some() {
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, *port);
            match crate::http::bind(addr) {
                Ok(listener) => {
                    tracing::debug!(%addr, service = %state.owner, "health check port open");
                    state.bind_warned = false;
                    let cancel = self.cancel.child_token();
                    let task =
                        tokio::spawn(serve(listener, Arc::clone(&state.report), cancel.clone()));
                    state.listener = Some(Listener { cancel, task });
                }
                Err(error) if !state.bind_warned => {
                    tracing::warn!(
                        %addr,
                        service = %state.owner,
                        %error,
                        "cannot open health check node port {addr} of service {}; retrying \
                         on the next update",
                        state.owner,
                    );
                    state.bind_warned = true;
                }
                Err(_) => {}
            }
        }
    }
}

impl Drop for HealthCheckServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Report {
    fn new(service: &ObjectKey, count: usize) -> Report {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            service: Name<'a>,
            local_endpoints: usize,
            service_proxy_healthy: bool,
        }
        #[derive(serde::Serialize)]
        struct Name<'a> {
            namespace: &'a str,
            name: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            service: Name {
                namespace: &service.namespace,
                name: &service.name,
            },
            local_endpoints: count,
            service_proxy_healthy: true,
        })
        .expect("a struct of strings, a number and a bool always serializes");
        Report {
            status: if count == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            weight: HeaderValue::from(count),
            body: body.into(),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(ENDPOINT_WEIGHT, self.weight.clone());
        response
    }
}

/// Stops a listener and waits for its task, so that the port is free when this returns.
async fn close(port: u16, listener: Listener) {
    listener.cancel.cancel();
    if let Err(error) = listener.task.await {
        tracing::debug!(port, %error, "health check listener task failed");
    }
    tracing::debug!(port, "health check port closed");
}

/// Serves HTTP/1.1 on the listener until cancelled; open connections end with it.
async fn serve(listener: TcpListener, report: Arc<ArcSwap<Report>>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "health check accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let report = Arc::clone(&report);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            // kube-proxy answers every method and path alike.
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(report.load().response()))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = cancel.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "health check connection failed");
                    }
                }
            }
        });
    }
}

/// A datapath that also answers the health check node ports of the frontends it programs:
/// every diff reaches the datapath first, then the health check server.
pub struct WithHealthChecks<D> {
    inner: D,
    server: HealthCheckServer,
}

impl<D> WithHealthChecks<D> {
    /// `inner`, with health check listeners bound to `bind_ip`.
    pub fn new(inner: D, bind_ip: IpAddr) -> WithHealthChecks<D> {
        WithHealthChecks {
            inner,
            server: HealthCheckServer::new(bind_ip),
        }
    }
}

impl<D: crate::datapath::Datapath> crate::datapath::Datapath for WithHealthChecks<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn apply(&mut self, diff: &TableDiff) -> crate::datapath::Applied {
        let applied = self.inner.apply(diff).await;
        self.server.apply(diff).await;
        applied
    }

    async fn verify(&mut self, want: &crate::model::ServiceTable) -> crate::datapath::Drift {
        let drift = self.inner.verify(want).await;
        // Retries ports that could not be bound.
        self.server.apply(&TableDiff::default()).await;
        drift
    }

    fn listens(&self) -> bool {
        self.inner.listens() || !self.server.ports().is_empty()
    }

    async fn close_listeners(&mut self) {
        self.server.shutdown().await;
        self.inner.close_listeners().await;
    }

    async fn shutdown(&mut self, grace: std::time::Duration, handed_over: bool) {
        self.server.shutdown().await;
        self.inner.shutdown(grace, handed_over).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::Ipv4Addr;

    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::model::{Algorithm, Backend, EmptyAction, FrontendKind, Protocol};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A backend: address, whether ready (else terminating), whether on this node.
    type B = (&'static str, bool, bool);

    fn entry(
        service: &str,
        frontend: (&str, u16, FrontendKind),
        health_check_node_port: Option<u16>,
        backends: &[B],
    ) -> ServiceEntry {
        ServiceEntry {
            frontend: Frontend {
                addr: frontend.0.parse().unwrap(),
                port: frontend.1,
                proto: Protocol::Tcp,
                kind: frontend.2,
            },
            service: ObjectKey::new("shop", service),
            port_name: String::new(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, &(addr, ready, local))| Backend {
                    addr: addr.parse().unwrap(),
                    port: 8080 + i as u16,
                    state: if ready {
                        BackendState::Active
                    } else {
                        BackendState::Terminating
                    },
                    node: Some(if local { "here" } else { "there" }.to_owned()),
                    zone: None,
                    local,
                })
                .collect(),
            draining: Vec::new(),
            algorithm: Algorithm::Random,
            affinity: None,
            on_empty: EmptyAction::Drop,
            snat: None,
            source_ranges: None,
            health_check_node_port,
            l7: None,
        }
    }

    fn lb(service: &str, port: Option<u16>, backends: &[B]) -> ServiceEntry {
        entry(
            service,
            ("203.0.113.10", 80, FrontendKind::LoadBalancer),
            port,
            backends,
        )
    }

    fn added(entries: Vec<ServiceEntry>) -> TableDiff {
        TableDiff {
            added: entries,
            ..TableDiff::default()
        }
    }

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    async fn get(port: u16, path: &str) -> io::Result<Answer> {
        let mut stream = TcpStream::connect((LOCALHOST, port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    fn body(service: &str, count: usize) -> String {
        format!(
            r#"{{"service":{{"namespace":"shop","name":"{service}"}},"localEndpoints":{count},"serviceProxyHealthy":true}}"#
        )
    }

    /// Collects what `tracing` logs on this thread while the guard lives.
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&logs));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn count_in(logs: &Mutex<Vec<u8>>, needle: &str) -> usize {
        String::from_utf8_lossy(&logs.lock())
            .matches(needle)
            .count()
    }

    #[tokio::test]
    async fn local_ready_endpoints_answer_200_with_their_count() {
        let port = free_port();
        let mut server = HealthCheckServer::new(LOCALHOST);
        server
            .apply(&added(vec![
                lb(
                    "web",
                    Some(port),
                    &[
                        ("10.244.0.5", true, true),
                        // The same pod on a second port counts once.
                        ("10.244.0.5", true, true),
                        ("10.244.0.6", true, true),
                        ("10.244.1.7", true, false),
                        ("10.244.0.8", false, true),
                    ],
                ),
                // The NodePort of the same Service: its local pods count too, once.
                entry(
                    "web",
                    ("192.168.1.10", 30080, FrontendKind::NodePort),
                    Some(port),
                    &[("10.244.0.5", true, true), ("10.244.0.9", true, true)],
                ),
                // The ClusterIP carries no health check port: its backends do not count.
                entry(
                    "web",
                    ("10.96.0.10", 80, FrontendKind::ClusterIp),
                    None,
                    &[("10.244.0.10", true, true)],
                ),
            ]))
            .await;
        assert_eq!(server.ports(), vec![port]);
        for path in ["/", "/healthz", "/any/path?x=1"] {
            let answer = get(port, path).await.unwrap();
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("content-type"), Some("application/json"));
            assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(answer.header("x-load-balancing-endpoint-weight"), Some("3"));
            assert_eq!(answer.body, body("web", 3), "{path}");
        }
        server.shutdown().await;
    }

    #[tokio::test]
    async fn no_local_ready_endpoint_answers_503() {
        let cases: &[(&str, &[B])] = &[
            ("no backends", &[]),
            (
                "only remote",
                &[("10.244.1.7", true, false), ("10.244.2.7", true, false)],
            ),
            (
                "only terminating",
                &[("10.244.0.5", false, true), ("10.244.0.6", false, true)],
            ),
            (
                "remote ready and local terminating",
                &[("10.244.1.7", true, false), ("10.244.0.5", false, true)],
            ),
        ];
        for (name, backends) in cases {
            let port = free_port();
            let mut server = HealthCheckServer::new(LOCALHOST);
            server
                .apply(&added(vec![lb("web", Some(port), backends)]))
                .await;
            let answer = get(port, "/").await.unwrap();
            assert_eq!(answer.status, 503, "{name}");
            assert_eq!(
                answer.header("x-load-balancing-endpoint-weight"),
                Some("0"),
                "{name}"
            );
            assert_eq!(answer.header("content-type"), Some("application/json"));
            assert_eq!(answer.body, body("web", 0), "{name}");
            server.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_changed_entry_flips_the_answer() {
        let port = free_port();
        let mut server = HealthCheckServer::new(LOCALHOST);
        server
            .apply(&added(vec![lb(
                "web",
                Some(port),
                &[("10.244.0.5", true, true)],
            )]))
            .await;
        assert_eq!(get(port, "/").await.unwrap().status, 200);

        let terminating = TableDiff {
            changed: vec![lb("web", Some(port), &[("10.244.0.5", false, true)])],
            ..TableDiff::default()
        };
        server.apply(&terminating).await;
        let answer = get(port, "/").await.unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, body("web", 0));

        let ready_again = TableDiff {
            changed: vec![lb(
                "web",
                Some(port),
                &[("10.244.0.5", true, true), ("10.244.0.6", true, true)],
            )],
            ..TableDiff::default()
        };
        server.apply(&ready_again).await;
        let answer = get(port, "/").await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, body("web", 2));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn the_listener_closes_with_the_last_entry_of_its_port() {
        let port = free_port();
        let mut server = HealthCheckServer::new(LOCALHOST);
        let load_balancer = lb("web", Some(port), &[("10.244.0.5", true, true)]);
        let node_port = entry(
            "web",
            ("192.168.1.10", 30080, FrontendKind::NodePort),
            Some(port),
            &[("10.244.0.6", true, true)],
        );
        server
            .apply(&added(vec![load_balancer.clone(), node_port.clone()]))
            .await;
        assert_eq!(get(port, "/").await.unwrap().body, body("web", 2));

        let remove = |e: &ServiceEntry| TableDiff {
            removed: vec![e.frontend],
            ..TableDiff::default()
        };
        server.apply(&remove(&load_balancer)).await;
        assert_eq!(server.ports(), vec![port]);
        assert_eq!(get(port, "/").await.unwrap().body, body("web", 1));

        server.apply(&remove(&node_port)).await;
        assert_eq!(server.ports(), Vec::<u16>::new());
        let refused = get(port, "/").await.err().expect("the port is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_frontend_that_drops_or_moves_its_port_moves_the_listener() {
        let (first, second) = (free_port(), free_port());
        let mut server = HealthCheckServer::new(LOCALHOST);
        server
            .apply(&added(vec![lb(
                "web",
                Some(first),
                &[("10.244.0.5", true, true)],
            )]))
            .await;
        assert_eq!(server.ports(), vec![first]);

        let moved = TableDiff {
            changed: vec![lb("web", Some(second), &[("10.244.0.5", true, true)])],
            ..TableDiff::default()
        };
        server.apply(&moved).await;
        assert_eq!(server.ports(), vec![second]);
        assert_eq!(get(second, "/").await.unwrap().body, body("web", 1));
        let refused = get(first, "/").await.err().expect("the old port is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

        // externalTrafficPolicy back to Cluster: the entry stays, the port goes.
        let dropped = TableDiff {
            changed: vec![lb("web", None, &[("10.244.0.5", true, true)])],
            ..TableDiff::default()
        };
        server.apply(&dropped).await;
        assert_eq!(server.ports(), Vec::<u16>::new());
        assert!(get(second, "/").await.is_err());
    }

    #[tokio::test]
    async fn the_first_service_on_a_port_keeps_it() {
        let (logs, _guard) = capture_logs();
        let port = free_port();
        let mut server = HealthCheckServer::new(LOCALHOST);
        let web = lb("web", Some(port), &[("10.244.0.5", true, true)]);
        let api = entry(
            "api",
            ("203.0.113.11", 80, FrontendKind::LoadBalancer),
            Some(port),
            &[("10.244.0.6", true, true), ("10.244.0.7", true, true)],
        );
        server.apply(&added(vec![web.clone()])).await;
        server.apply(&added(vec![api.clone()])).await;
        let answer = get(port, "/").await.unwrap();
        assert_eq!(answer.body, body("web", 1), "web came first");
        assert_eq!(count_in(&logs, "is already served"), 1);

        // Further changes to either Service neither move the port nor log again.
        let mut api_changed = api.clone();
        api_changed.backends.pop();
        server
            .apply(&TableDiff {
                changed: vec![api_changed, web.clone()],
                ..TableDiff::default()
            })
            .await;
        assert_eq!(get(port, "/").await.unwrap().body, body("web", 1));
        assert_eq!(count_in(&logs, "is already served"), 1);

        // When web is gone, the port is api's, on the same listener.
        server
            .apply(&TableDiff {
                removed: vec![web.frontend],
                ..TableDiff::default()
            })
            .await;
        assert_eq!(server.ports(), vec![port]);
        assert_eq!(get(port, "/").await.unwrap().body, body("api", 1));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_port_in_use_is_logged_once_and_retried() {
        let (logs, _guard) = capture_logs();
        let blocker = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = blocker.local_addr().unwrap().port();
        let mut server = HealthCheckServer::new(LOCALHOST);
        server
            .apply(&added(vec![lb(
                "web",
                Some(port),
                &[("10.244.0.5", true, true)],
            )]))
            .await;
        assert_eq!(server.ports(), Vec::<u16>::new());
        server.apply(&TableDiff::default()).await;
        assert_eq!(server.ports(), Vec::<u16>::new());
        assert_eq!(count_in(&logs, "cannot open health check node port"), 1);

        drop(blocker);
        server.apply(&TableDiff::default()).await;
        assert_eq!(server.ports(), vec![port]);
        let answer = get(port, "/").await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, body("web", 1));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_every_listener() {
        let (first, second) = (free_port(), free_port());
        let mut server = HealthCheckServer::new(LOCALHOST);
        server
            .apply(&added(vec![
                lb("web", Some(first), &[("10.244.0.5", true, true)]),
                entry(
                    "api",
                    ("203.0.113.11", 80, FrontendKind::LoadBalancer),
                    Some(second),
                    &[],
                ),
            ]))
            .await;
        let mut both = vec![first, second];
        both.sort_unstable();
        assert_eq!(server.ports(), both);
        assert_eq!(get(second, "/").await.unwrap().body, body("api", 0));

        server.shutdown().await;
        assert_eq!(server.ports(), Vec::<u16>::new());
        for port in [first, second] {
            let refused = get(port, "/").await.err().expect("closed");
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        }
    }
}
