//! HTTPS serving: the TLS accept loop, bearer-token authentication, routing of the Kubernetes
//! REST paths to the verbs, and discovery.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::error::ApiError;
use crate::net::{Cidr, Ranges};
use crate::resources::{self, Resource};
use crate::rest::{Api, Part, PatchType, WriteOptions};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Store, prefix};
use crate::{ApiServerConfig, ApiServerError, controller, pki, table, watch as watches};

type Body = BoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 3 * 1024 * 1024;

/// An API server running in this process.
pub struct RunningApiServer {
    local_addr: SocketAddr,
    endpointslice_controller: bool,
    kubeconfig: PathBuf,
    ca_pem: String,
    token: String,
    shutdown: watch::Sender<bool>,
    tasks: TaskTracker,
    api: Arc<Api>,
}

impl std::fmt::Debug for RunningApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApiServer")
            .field("local_addr", &self.local_addr)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl RunningApiServer {
    /// The address it serves on (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// The kubeconfig written for clients (server, CA, token).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }
    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// The bearer token clients must present.
    pub fn token(&self) -> &str {
        &self.token
    }
    /// A handle for in-process writers (the daemon's manifest loader). Drop it before
    /// [`RunningApiServer::shutdown`].
    pub fn handle(&self) -> ApiHandle {
        ApiHandle {
            api: Arc::clone(&self.api),
            derive_slices: self.endpointslice_controller,
        }
    }

    /// Stops accepting, ends every connection, watch and controller, and closes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.tasks.close();
        self.tasks.wait().await;
        // A write already handed to the blocking pool finishes before the database closes.
        for _ in 0..500 {
            if Arc::strong_count(&self.api) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// In-process access to a running API server's objects.
#[derive(Clone)]
pub struct ApiHandle {
    api: Arc<Api>,
    derive_slices: bool,
}

impl std::fmt::Debug for ApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiHandle").finish_non_exhaustive()
    }
}

impl ApiHandle {
    /// Loads objects of manifest folder `folder` (see [`crate::ManifestObject`]): writes
    /// `objects`, deletes `deletes`, and with `full` also every object from the folder that
    /// `objects` does not hold.
    pub async fn apply_manifests(
        &self,
        folder: String,
        objects: Vec<crate::ManifestObject>,
        deletes: Vec<crate::ManifestRef>,
        full: bool,
    ) -> crate::ManifestReport {
        let (api, derive) = (Arc::clone(&self.api), self.derive_slices);
        tokio::task::spawn_blocking(move || {
            api.apply_manifests(&folder, objects, &deletes, full, derive)
        })
        .await
        .unwrap_or_else(|error| crate::ManifestReport {
            errors: vec![format!("applying manifests failed: {error}")],
            ..crate::ManifestReport::default()
        })
    }
}

struct Shared {
    api: Arc<Api>,
    token: String,
    server_address: String,
    bookmark_interval: Duration,
    shutdown: watch::Receiver<bool>,
    tasks: TaskTracker,
}

pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, ApiServerError> {
    let dir = &config.data_dir;
    let dir_err = |source| ApiServerError::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir.join("pki")).map_err(dir_err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    }
    let mut service = Vec::new();
    for r in &config.service_cluster_ip_range {
        let cidr = Cidr::parse(r)?;
        if service.iter().any(|c: &Cidr| c.is_ipv4() == cidr.is_ipv4()) {
            return Err(ApiServerError::ServiceRange {
                range: r.clone(),
                reason: "at most one range per address family",
            });
        }
        service.push(cidr);
    }
    if service.is_empty() {
        return Err(ApiServerError::ServiceRange {
            range: String::new(),
            reason: "at least one range is needed",
        });
    }
    let ranges = Ranges {
        service,
        node_ports: config.service_node_port_range,
    };

    let store_path = dir.join("store.redb");
    let history = config.watch_history;
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, history))
        .await
        .map_err(|e| dir_err(std::io::Error::other(e)))??;
    let api = Arc::new(Api {
        store: Arc::new(store),
        ranges,
    });
    let pki = pki::load_or_create(&dir.join("pki"), config.bind_address)?;
    let token = match &config.token {
        Some(t) => t.clone(),
        None => pki::load_or_create_token(&dir.join("token"))?,
    };
    let listener = TcpListener::bind(config.bind_address)
        .await
        .map_err(|source| ApiServerError::Bind {
            addr: config.bind_address,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ApiServerError::Bind {
            addr: config.bind_address,
            source,
        })?;
    let kubeconfig = dir.join("kubeconfig");
    pki::write_kubeconfig(&kubeconfig, local_addr, &pki.ca_pem, &token)?;

    {
        let api = api.clone();
        tokio::task::spawn_blocking(move || api.ensure_namespaces())
            .await
            .map_err(|e| dir_err(std::io::Error::other(e)))?
            .map_err(|e| dir_err(std::io::Error::other(e.to_string())))?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared {
        api: api.clone(),
        token: token.clone(),
        server_address: local_addr.to_string(),
        bookmark_interval: config.bookmark_interval,
        shutdown: shutdown_rx.clone(),
        tasks: tasks.clone(),
    });
    for (key, uid, left) in api.terminating_pods() {
        schedule_pod_removal(&shared, key, uid, left);
    }
    if config.endpointslice_controller {
        tasks.spawn(controller::run(api.clone(), shutdown_rx.clone()));
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
    tasks.spawn(accept_loop(listener, acceptor, shared));
    info!(%local_addr, kubeconfig = %kubeconfig.display(), "API server serving");
    Ok(RunningApiServer {
        local_addr,
        endpointslice_controller: config.endpointslice_controller,
        kubeconfig,
        ca_pem: pki.ca_pem,
        token,
        shutdown: shutdown_tx,
        tasks,
        api,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut shutdown = shared.shutdown.clone();
        shared.tasks.clone().spawn(async move {
            let serve = async {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    debug!(%peer, error = %e, "connection ended");
                }
            };
            tokio::select! {
                () = serve => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn schedule_pod_removal(shared: &Shared, key: String, uid: String, after: Duration) {
    let api = shared.api.clone();
    let mut shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(after) => {}
            _ = shutdown.changed() => return,
        }
        let result = tokio::task::spawn_blocking(move || api.finish_pod_deletion(&key, &uid)).await;
        if let Ok(Err(e)) = result {
            warn!(error = %e, "removing a deleted pod failed");
        }
    });
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| pki::token_matches(t.trim().as_bytes(), shared.token.as_bytes()))
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if matches!(segs.as_slice(), ["healthz" | "livez" | "readyz"]) {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(resp);
    }
    if !authorized(shared, &req) {
        return Err(ApiError::unauthorized());
    }
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["version"] if get => return ok(resources::version()),
        ["api"] if get => return ok(resources::api_versions(&shared.server_address)),
        ["apis"] if get => return ok(resources::api_group_list()),
        ["api", "v1"] if get => return ok(resources::resource_list("", "v1").unwrap_or_default()),
        ["apis", "discovery.k8s.io"] if get => return ok(resources::api_group("discovery.k8s.io")),
        ["apis", g, v] if get => {
            return resources::resource_list(g, v)
                .map_or_else(|| Err(ApiError::not_found_path()), ok);
        }
        ["openapi", "v3"] if get => return ok(resources::openapi_v3_root()),
        ["openapi", "v3", "api", v] if get => {
            return resources::openapi_v3_doc("", v)
                .map_or_else(|| Err(ApiError::not_found_path()), ok);
        }
        ["openapi", "v3", "apis", g, v] if get => {
            return resources::openapi_v3_doc(g, v)
                .map_or_else(|| Err(ApiError::not_found_path()), ok);
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let find = |plural: &str| resources::find(group, version, plural);
    // (resource, namespace, name, subresource)
    let (res, ns, name, sub): (&'static Resource, Option<&str>, Option<&str>, Option<&str>) =
        match rest {
            ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
                let res = find(plural).ok_or_else(ApiError::not_found_path)?;
                match tail {
                    [] => (res, Some(*ns), None, None),
                    [name] => (res, Some(*ns), Some(*name), None),
                    [name, sub] => (res, Some(*ns), Some(*name), Some(*sub)),
                    _ => return Err(ApiError::not_found_path()),
                }
            }
            [plural, tail @ ..] => {
                let res = find(plural).ok_or_else(ApiError::not_found_path)?;
                match tail {
                    [] => (res, None, None, None),
                    [name] if !res.namespaced => (res, None, Some(*name), None),
                    [name, sub] if !res.namespaced => (res, None, Some(*name), Some(*sub)),
                    _ => return Err(ApiError::not_found_path()),
                }
            }
            [] => return Err(ApiError::not_found_path()),
        };
    let part = match sub {
        None => Part::Main,
        Some("status") if res.status => Part::Status,
        Some(_) => return Err(ApiError::not_found_path()),
    };
    let ns = ns.map(str::to_owned);
    let name = name.map(str::to_owned);
    let query = Query::parse(req.uri().query());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let method = req.method().clone();
    let as_table = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(table::wanted);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let parse_body = |required: bool| -> Result<Value, ApiError> {
        if body.is_empty() {
            return if required {
                Err(ApiError::bad_request("the request has no body"))
            } else {
                Ok(Value::Null)
            };
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
    };
    let api = shared.api.clone();
    let write = WriteOptions {
        strict: query.get("fieldValidation") == Some("Strict"),
        dry_run: query.get("dryRun").is_some_and(|d| !d.is_empty()),
        lazy: false,
    };
    match (method, name) {
        (Method::GET, None) if part == Part::Main => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let pfx = prefix(
                res.plural,
                if res.namespaced { ns.as_deref() } else { None },
            );
            if query.flag("watch") {
                let from = match query.get("resourceVersion") {
                    None | Some("" | "0") => None,
                    Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version {rv:?}"))
                    })?),
                };
                let timeout = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let req = watches::WatchRequest {
                    resource: res,
                    prefix: pfx,
                    from,
                    labels,
                    fields,
                    bookmarks: query.flag("allowWatchBookmarks"),
                    send_initial_events: query.flag("sendInitialEvents"),
                    timeout,
                    bookmark_interval: shared.bookmark_interval,
                    as_table,
                };
                let rx = watches::start(&api.store, req, shared.shutdown.clone(), &shared.tasks);
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(resp);
            }
            let (rv, items) = api.store.list(&pfx);
            let items: Vec<&Value> = items
                .iter()
                .map(AsRef::as_ref)
                .filter(|o| labels.matches(o) && fields.matches(o))
                .collect();
            if let Some(version) = as_table {
                return ok(table::table(res, &items, Some(rv), version));
            }
            ok(json!({
                "kind": res.list_kind(),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            }))
        }
        (Method::GET, Some(name)) => {
            let obj = api.get(res, ns.as_deref(), &name)?;
            match as_table {
                Some(version) if part == Part::Main => {
                    ok(table::table(res, &[&obj], None, version))
                }
                _ => ok(obj),
            }
        }
        (Method::POST, None) if part == Part::Main => {
            let obj = parse_body(true)?;
            let created = blocking(move || api.create(res, ns.as_deref(), obj, write)).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(true)?;
            ok(blocking(move || api.update(res, ns.as_deref(), &name, obj, part, write)).await?)
        }
        (Method::PATCH, Some(name)) => {
            let kind = match content_type.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let patch = parse_body(true)?;
            ok(
                blocking(move || api.patch(res, ns.as_deref(), &name, (kind, &patch), part, write))
                    .await?,
            )
        }
        (Method::DELETE, Some(name)) if part == Part::Main => {
            let opts = parse_body(false)?;
            // kubectl sends dryRun in the DeleteOptions body.
            let dry_run = write.dry_run || opts["dryRun"].as_array().is_some_and(|d| !d.is_empty());
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok())
                .or_else(|| opts["gracePeriodSeconds"].as_i64());
            let pre = (
                opts["preconditions"]["uid"].as_str().map(str::to_owned),
                opts["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_owned),
            );
            let api2 = api.clone();
            let deleted = blocking(move || {
                let opts = WriteOptions { dry_run, ..write };
                api2.delete(res, ns.as_deref(), &name, grace, pre, opts)
            })
            .await?;
            if let Some(after) = deleted.remove_after {
                let meta = &deleted.object["metadata"];
                if let (Some(n), Some(ns), Some(uid)) = (
                    meta["name"].as_str(),
                    meta["namespace"].as_str(),
                    meta["uid"].as_str(),
                ) {
                    let key = crate::store::key(res.plural, ns, n);
                    schedule_pod_removal(shared, key, uid.to_owned(), after);
                }
            }
            ok(deleted.object)
        }
        (Method::DELETE, None) if part == Part::Main => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok());
            let pfx = prefix(
                res.plural,
                if res.namespaced { ns.as_deref() } else { None },
            );
            let (_, items) = api.store.list(&pfx);
            let mut out = Vec::new();
            for item in items
                .iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
            {
                let name = item["metadata"]["name"].as_str().unwrap_or("").to_owned();
                let ns = item["metadata"]["namespace"].as_str().map(str::to_owned);
                let api2 = api.clone();
                match blocking(move || {
                    api2.delete(res, ns.as_deref(), &name, grace, (None, None), write)
                })
                .await
                {
                    Ok(d) => {
                        if let Some(after) = d.remove_after {
                            let meta = &d.object["metadata"];
                            if let (Some(n), Some(ns), Some(uid)) = (
                                meta["name"].as_str(),
                                meta["namespace"].as_str(),
                                meta["uid"].as_str(),
                            ) {
                                schedule_pod_removal(
                                    shared,
                                    crate::store::key(res.plural, ns, n),
                                    uid.to_owned(),
                                    after,
                                );
                            }
                        }
                        out.push(d.object);
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            ok(json!({
                "kind": res.list_kind(),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": api.list_rv().to_string()},
                "items": out,
            }))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the write task failed: {e}")))?
}
