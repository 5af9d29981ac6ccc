//! Which Service ports are served per request (L7), and with which settings: the port's
//! `appProtocol`, switchyard's `switchyard.io/l7*` annotations, and the `kubernetes.io/tls`
//! Secrets named for TLS. Every value that cannot be used is reported with the annotation's
//! name and replaced by its default; a Secret that is missing or unusable skips the port
//! (serving plaintext where TLS was asked for would be worse than not serving).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use switchyard_proxy::l7::{
    HashKey, HealthCheck, L7Spec, RequestBalancer, TlsCertificate, UpstreamProtocol,
};

use super::{ANNOTATION_LB_ALGORITHM, Algorithm};
use crate::store::{ObjectKey, Store};

/// `"true"` serves every TCP port of the Service per request; `"false"` keeps every port L4
/// whatever its `appProtocol`.
pub const ANNOTATION_L7: &str = "switchyard.io/l7";
/// `peak-ewma` (default), `round-robin`, `least-request`, `random`, `header:<name>` or
/// `cookie:<name>` (a consistent hash on that header's or cookie's value).
pub const ANNOTATION_L7_BALANCER: &str = "switchyard.io/l7-balancer";
/// Whole-request timeout up to the response headers, with retries (default: none).
pub const ANNOTATION_L7_TIMEOUT: &str = "switchyard.io/l7-timeout";
/// Timeout of one attempt (default: none).
pub const ANNOTATION_L7_PER_TRY_TIMEOUT: &str = "switchyard.io/l7-per-try-timeout";
/// Retries of one request at most (default 2; 0 turns retries off).
pub const ANNOTATION_L7_RETRIES: &str = "switchyard.io/l7-retries";
/// Retries as a percentage of requests over 10 s (default 20).
pub const ANNOTATION_L7_RETRY_BUDGET: &str = "switchyard.io/l7-retry-budget-percent";
/// Retries per second always allowed (default 10).
pub const ANNOTATION_L7_RETRY_MIN: &str = "switchyard.io/l7-retry-min-per-second";
/// Consecutive 5xx or connect failures that eject a backend (default 5; 0 turns it off).
pub const ANNOTATION_L7_OUTLIER_FAILURES: &str = "switchyard.io/l7-outlier-failures";
/// How long the first ejection lasts (default 30s).
pub const ANNOTATION_L7_OUTLIER_EJECTION: &str = "switchyard.io/l7-outlier-ejection";
/// At most this percentage of backends ejected at once (default 50).
pub const ANNOTATION_L7_OUTLIER_MAX_PERCENT: &str = "switchyard.io/l7-outlier-max-ejection-percent";
/// Path of active health checks (default: no active checks).
pub const ANNOTATION_L7_HEALTH_PATH: &str = "switchyard.io/l7-health-check-path";
/// Interval of active health checks (default 10s).
pub const ANNOTATION_L7_HEALTH_INTERVAL: &str = "switchyard.io/l7-health-check-interval";
/// Largest request head (default 65536 bytes).
pub const ANNOTATION_L7_MAX_HEADER_BYTES: &str = "switchyard.io/l7-max-header-bytes";
/// Largest request body (default: unlimited).
pub const ANNOTATION_L7_MAX_BODY_BYTES: &str = "switchyard.io/l7-max-body-bytes";
/// Client connection idle timeout (default 5m).
pub const ANNOTATION_L7_IDLE_TIMEOUT: &str = "switchyard.io/l7-idle-timeout";
/// Time a client has to send a request's head (default 10s).
pub const ANNOTATION_L7_HEADER_TIMEOUT: &str = "switchyard.io/l7-header-timeout";
/// A `kubernetes.io/tls` Secret in the Service's namespace: TLS is terminated with its
/// `tls.crt` and `tls.key`.
pub const ANNOTATION_TLS_SECRET: &str = "switchyard.io/tls-secret";
/// A `kubernetes.io/tls` Secret whose `ca.crt` must have signed the backends' certificates
/// (`appProtocol: https`); without it backends are not authenticated.
pub const ANNOTATION_UPSTREAM_CA_SECRET: &str = "switchyard.io/upstream-ca-secret";
/// The name checked in backends' certificates and sent in SNI (default: the backend's IP).
pub const ANNOTATION_UPSTREAM_SERVER_NAME: &str = "switchyard.io/upstream-server-name";

/// The names of the Secrets a Service's annotations refer to.
pub fn secrets_named(service: &Service) -> impl Iterator<Item = &str> {
    let annotations = service.metadata.annotations.as_ref();
    [ANNOTATION_TLS_SECRET, ANNOTATION_UPSTREAM_CA_SECRET]
        .into_iter()
        .filter_map(move |a| annotations?.get(a).map(|v| v.trim()))
        .filter(|v| !v.is_empty())
}

/// The protocol to speak to backends for an `appProtocol`, when it is one switchyard serves
/// per request.
fn upstream_for(app_protocol: &str) -> Option<UpstreamProtocol> {
    match app_protocol.trim().to_ascii_lowercase().as_str() {
        "http" | "http1" | "http/1.1" => Some(UpstreamProtocol::Http1),
        "kubernetes.io/h2c" | "h2c" | "grpc" => Some(UpstreamProtocol::Http2),
        "https" => Some(UpstreamProtocol::Https),
        _ => None,
    }
}

/// Whether and how a TCP port is served per request. `Err` skips the port with the message.
pub(super) fn l7_spec(
    service: &Service,
    key: &ObjectKey,
    port: &ServicePort,
    store: &Store,
    warn: &mut dyn FnMut(String),
) -> Result<Option<L7Spec>, String> {
    let empty = BTreeMap::new();
    let annotations = service.metadata.annotations.as_ref().unwrap_or(&empty);
    let forced = match annotations
        .get(ANNOTATION_L7)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => None,
        Some(v) if v == "true" => Some(true),
        Some(v) if v == "false" => Some(false),
        Some(v) => {
            warn(format!(
                "annotation {ANNOTATION_L7}: {v:?} is not true or false; ignored"
            ));
            None
        }
    };
    let from_app_protocol = port.app_protocol.as_deref().and_then(upstream_for);
    let upstream = match (forced, from_app_protocol) {
        (Some(false), _) | (None, None) => return Ok(None),
        (_, Some(upstream)) => upstream,
        (Some(true), None) => UpstreamProtocol::Http1,
    };
    let mut spec = L7Spec {
        upstream,
        ..L7Spec::default()
    };
    let mut reader = Reader { annotations, warn };
    spec.balancer = reader.balancer();
    spec.timeouts.request = reader.duration(ANNOTATION_L7_TIMEOUT, None);
    spec.timeouts.per_try = reader.duration(ANNOTATION_L7_PER_TRY_TIMEOUT, None);
    spec.retries.max_retries = reader.number(ANNOTATION_L7_RETRIES, spec.retries.max_retries, 7);
    spec.retries.budget_percent =
        reader.number(ANNOTATION_L7_RETRY_BUDGET, spec.retries.budget_percent, 100);
    spec.retries.min_retries_per_second = reader.number(
        ANNOTATION_L7_RETRY_MIN,
        spec.retries.min_retries_per_second,
        100_000,
    );
    spec.outlier.consecutive_failures = reader.number(
        ANNOTATION_L7_OUTLIER_FAILURES,
        spec.outlier.consecutive_failures,
        1_000,
    );
    spec.outlier.base_ejection = reader
        .duration(
            ANNOTATION_L7_OUTLIER_EJECTION,
            Some(spec.outlier.base_ejection),
        )
        .unwrap_or(spec.outlier.base_ejection);
    spec.outlier.max_ejection_percent = reader.number(
        ANNOTATION_L7_OUTLIER_MAX_PERCENT,
        spec.outlier.max_ejection_percent,
        100,
    );
    if let Some(path) = annotations.get(ANNOTATION_L7_HEALTH_PATH) {
        let path = path.trim();
        if path.starts_with('/') && path.parse::<hyper::Uri>().is_ok() {
            let mut check = HealthCheck::of_path(path);
            check.interval = reader
                .duration(ANNOTATION_L7_HEALTH_INTERVAL, Some(check.interval))
                .unwrap_or(check.interval);
            check.timeout = check.timeout.min(check.interval);
            spec.health_check = Some(check);
        } else {
            (reader.warn)(format!(
                "annotation {ANNOTATION_L7_HEALTH_PATH}: {path:?} is not a path such as /healthz; no active health checks"
            ));
        }
    }
    let limits = &mut spec.limits;
    limits.max_header_bytes = reader.number(
        ANNOTATION_L7_MAX_HEADER_BYTES,
        limits.max_header_bytes,
        16 << 20,
    );
    limits.max_body_bytes = annotations
        .contains_key(ANNOTATION_L7_MAX_BODY_BYTES)
        .then(|| reader.number(ANNOTATION_L7_MAX_BODY_BYTES, u64::MAX, u64::MAX))
        .filter(|n| *n != u64::MAX);
    limits.idle_timeout = reader
        .duration(ANNOTATION_L7_IDLE_TIMEOUT, Some(limits.idle_timeout))
        .unwrap_or(limits.idle_timeout);
    limits.header_read_timeout = reader
        .duration(
            ANNOTATION_L7_HEADER_TIMEOUT,
            Some(limits.header_read_timeout),
        )
        .unwrap_or(limits.header_read_timeout);

    if let Some(name) = annotations.get(ANNOTATION_TLS_SECRET).map(|v| v.trim()) {
        let secret = tls_secret(store, key, name, ANNOTATION_TLS_SECRET)?;
        let (Some(cert), Some(key_pem)) = (data(secret, "tls.crt"), data(secret, "tls.key")) else {
            return Err(format!(
                "annotation {ANNOTATION_TLS_SECRET}: secret {}/{name} has no tls.crt and tls.key; port skipped",
                key.namespace
            ));
        };
        spec.tls = Some(TlsCertificate {
            cert_pem: cert,
            key_pem,
        });
    }
    if let Some(name) = annotations
        .get(ANNOTATION_UPSTREAM_CA_SECRET)
        .map(|v| v.trim())
    {
        let secret = tls_secret(store, key, name, ANNOTATION_UPSTREAM_CA_SECRET)?;
        let Some(ca) = data(secret, "ca.crt") else {
            return Err(format!(
                "annotation {ANNOTATION_UPSTREAM_CA_SECRET}: secret {}/{name} has no ca.crt; port skipped",
                key.namespace
            ));
        };
        spec.upstream_tls.ca_pem = Some(ca);
    }
    spec.upstream_tls.server_name = annotations
        .get(ANNOTATION_UPSTREAM_SERVER_NAME)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    Ok(Some(spec))
}

fn tls_secret<'a>(
    store: &'a Store,
    service: &ObjectKey,
    name: &str,
    annotation: &str,
) -> Result<&'a Secret, String> {
    let secret = store
        .secret(&ObjectKey::new(&service.namespace, name))
        .ok_or_else(|| {
            format!(
                "annotation {annotation}: secret {}/{name} not found (switchyard reads kubernetes.io/tls Secrets); port skipped until it exists",
                service.namespace
            )
        })?;
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "annotation {annotation}: secret {}/{name} is not of type kubernetes.io/tls; port skipped",
            service.namespace
        ));
    }
    Ok(secret)
}

fn data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .filter(|b| !b.is_empty())
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    warn: &'a mut dyn FnMut(String),
}

impl Reader<'_> {
    fn balancer(&mut self) -> RequestBalancer {
        if let Some(value) = self.annotations.get(ANNOTATION_L7_BALANCER) {
            let value = value.trim();
            let parsed = match value.split_once(':') {
                Some(("header", name)) if !name.trim().is_empty() => {
                    Some(RequestBalancer::ConsistentHash(HashKey::Header(
                        name.trim().to_ascii_lowercase(),
                    )))
                }
                Some(("cookie", name)) if !name.trim().is_empty() => Some(
                    RequestBalancer::ConsistentHash(HashKey::Cookie(name.trim().to_owned())),
                ),
                Some(_) => None,
                None => match value.to_ascii_lowercase().as_str() {
                    "peak-ewma" | "p2c" | "ewma" => Some(RequestBalancer::PeakEwma),
                    "round-robin" | "rr" => Some(RequestBalancer::RoundRobin),
                    "least-request" | "least-requests" => Some(RequestBalancer::LeastRequest),
                    "random" => Some(RequestBalancer::Random),
                    _ => None,
                },
            };
            if let Some(balancer) = parsed {
                return balancer;
            }
            (self.warn)(format!(
                "annotation {ANNOTATION_L7_BALANCER}: {value:?} is not peak-ewma, round-robin, least-request, random, header:<name> or cookie:<name>; using peak-ewma"
            ));
            return RequestBalancer::PeakEwma;
        }
        // The L4 annotation, where it has a per-request meaning.
        match self
            .annotations
            .get(ANNOTATION_LB_ALGORITHM)
            .and_then(|v| Algorithm::parse(v))
        {
            Some(Algorithm::RoundRobin) => RequestBalancer::RoundRobin,
            Some(Algorithm::LeastConnections) => RequestBalancer::LeastRequest,
            Some(Algorithm::Random) => RequestBalancer::Random,
            Some(Algorithm::Maglev) | None => RequestBalancer::PeakEwma,
        }
    }

    /// A duration such as `30s` or `1m30s`; `0` turns a timeout off (`None`).
    fn duration(&mut self, annotation: &str, default: Option<Duration>) -> Option<Duration> {
        let value = self.annotations.get(annotation)?.trim();
        if value == "0" {
            return None;
        }
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                (self.warn)(format!(
                    "annotation {annotation}: {value:?} is not a duration such as 30s or 1m; using {}",
                    default.map_or_else(
                        || "none".to_owned(),
                        |d| humantime::format_duration(d).to_string()
                    )
                ));
                default
            }
        }
    }

    fn number<T>(&mut self, annotation: &str, default: T, max: T) -> T
    where
        T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        let Some(value) = self.annotations.get(annotation) else {
            return default;
        };
        match value.trim().parse::<T>() {
            Ok(n) if n <= max => n,
            _ => {
                (self.warn)(format!(
                    "annotation {annotation}: {value:?} is not a whole number up to {max}; using the default"
                ));
                default
            }
        }
    }
}
