//! Prometheus metrics: kube-proxy's names where they apply, so existing dashboards keep
//! working, and switchyard's own per-service and per-backend counters, read from the datapath
//! at scrape time.

use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::datapath::Status;

/// Every metric the controller updates.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub sync_last_timestamp: prometheus::Gauge,
    pub network_programming: Histogram,
    pub service_changes: IntCounter,
    pub endpoint_changes: IntCounter,
    pub invalid_objects: IntCounterVec,
    pub unsupported: IntCounterVec,
    pub limit_reached: IntCounterVec,
    pub datapath_errors: IntCounter,
    pub map_full: IntCounterVec,
    pub repairs: IntCounter,
    pub watch_errors: IntCounterVec,
    pub services: IntGauge,
    pub frontends: IntGauge,
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("constant bucket layout is valid")
}

impl Metrics {
    /// Creates and registers every metric. `status` gives the datapath's live per-frontend
    /// state and counters at scrape time.
    pub fn new(status: Status) -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kubeproxy_sync_proxy_rules_duration_seconds",
                    "SyncProxyRules latency in seconds",
                )
                .buckets(exponential(0.000_1, 2.0, 18)),
            )
            .expect("valid metric"),
            sync_last_timestamp: prometheus::Gauge::new(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            )
            .expect("valid metric"),
            network_programming: Histogram::with_opts(
                HistogramOpts::new(
                    "kubeproxy_network_programming_duration_seconds",
                    "In Cluster Network Programming Latency in seconds",
                )
                .buckets(exponential(0.001, 2.0, 20)),
            )
            .expect("valid metric"),
            service_changes: IntCounter::new(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )
            .expect("valid metric"),
            endpoint_changes: IntCounter::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )
            .expect("valid metric"),
            invalid_objects: IntCounterVec::new(
                Opts::new(
                    "switchyard_invalid_objects_total",
                    "Objects rejected as invalid (and skipped), by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            unsupported: IntCounterVec::new(
                Opts::new(
                    "switchyard_unsupported_total",
                    "Valid objects using something switchyard does not support (skipped in part), by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            limit_reached: IntCounterVec::new(
                Opts::new(
                    "switchyard_limit_reached_total",
                    "Services left out in whole or in part by a --max-* limit, by limit",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            datapath_errors: IntCounter::new(
                "switchyard_datapath_errors_total",
                "Frontends the datapath failed to program",
            )
            .expect("valid metric"),
            map_full: IntCounterVec::new(
                Opts::new(
                    "switchyard_bpf_map_full_total",
                    "Writes refused because a kernel map was full (the Service is not programmed; the others keep working)",
                ),
                &["map"],
            )
            .expect("valid metric"),
            repairs: IntCounter::new(
                "switchyard_datapath_repairs_total",
                "Differences between the wanted and the programmed datapath state that were repaired",
            )
            .expect("valid metric"),
            watch_errors: IntCounterVec::new(
                Opts::new(
                    "switchyard_api_watch_errors_total",
                    "Failed lists and watches of the API server (each retried with backoff; the datapath keeps its state), by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            services: IntGauge::new("switchyard_services", "Services programmed")
                .expect("valid metric"),
            frontends: IntGauge::new("switchyard_frontends", "Frontends programmed")
                .expect("valid metric"),
            registry,
        };
        let r = &metrics.registry;
        let register = |c: Box<dyn Collector>| r.register(c).expect("metric names are unique");
        register(Box::new(metrics.sync_duration.clone()));
        register(Box::new(metrics.sync_last_timestamp.clone()));
        register(Box::new(metrics.network_programming.clone()));
        register(Box::new(metrics.service_changes.clone()));
        register(Box::new(metrics.endpoint_changes.clone()));
        register(Box::new(metrics.invalid_objects.clone()));
        register(Box::new(metrics.unsupported.clone()));
        register(Box::new(metrics.limit_reached.clone()));
        register(Box::new(metrics.datapath_errors.clone()));
        register(Box::new(metrics.map_full.clone()));
        register(Box::new(metrics.repairs.clone()));
        register(Box::new(metrics.watch_errors.clone()));
        register(Box::new(metrics.services.clone()));
        register(Box::new(metrics.frontends.clone()));
        register(Box::new(DatapathCollector::new(status)));
        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        metrics
    }

    /// Counts one object rejected as invalid.
    pub fn invalid_object(&self, kind: &str) {
        self.invalid_objects.with_label_values(&[kind]).inc();
    }

    /// Records one finished sync.
    pub fn observe_sync(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.sync_last_timestamp.set(now.as_secs_f64());
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Per-service and per-backend counters, built from the datapath's live state at each scrape,
/// so a removed backend's series disappear with it.
struct DatapathCollector {
    status: Status,
    descs: Vec<Desc>,
}

const SERVICE_LABELS: &[&str] = &["service", "frontend"];
const BACKEND_LABELS: &[&str] = &["service", "frontend", "backend"];

struct Families {
    service_total: IntCounterVec,
    service_active: IntGaugeVec,
    backend_total: IntCounterVec,
    backend_active: IntGaugeVec,
    backend_bytes: IntCounterVec,
    backend_failures: IntCounterVec,
    backends: IntGaugeVec,
}

impl Families {
    fn new() -> Families {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        Families {
            service_total: counter(
                "switchyard_service_connections_total",
                "Connections (TCP) and flows (UDP) accepted by a frontend",
                SERVICE_LABELS,
            ),
            service_active: gauge(
                "switchyard_service_connections_active",
                "Connections and flows open on a frontend",
                SERVICE_LABELS,
            ),
            backend_total: counter(
                "switchyard_backend_connections_total",
                "Connections and flows sent to a backend",
                BACKEND_LABELS,
            ),
            backend_active: gauge(
                "switchyard_backend_connections_active",
                "Connections and flows open to a backend",
                BACKEND_LABELS,
            ),
            backend_bytes: counter(
                "switchyard_backend_bytes_total",
                "Bytes relayed to (direction=sent) and from (direction=received) a backend",
                &["service", "frontend", "backend", "direction"],
            ),
            backend_failures: counter(
                "switchyard_backend_connect_failures_total",
                "Failed connects to a backend (each retried on another backend)",
                BACKEND_LABELS,
            ),
            backends: gauge(
                "switchyard_service_backends",
                "Backends of a frontend, by state",
                &["service", "frontend", "state"],
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 7] {
        [
            &self.service_total,
            &self.service_active,
            &self.backend_total,
            &self.backend_active,
            &self.backend_bytes,
            &self.backend_failures,
            &self.backends,
        ]
    }
}

impl DatapathCollector {
    fn new(status: Status) -> DatapathCollector {
        let mut descs: Vec<Desc> = Families::new()
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        descs.extend(
            L7Families::new()
                .collectors()
                .iter()
                .flat_map(|c| c.desc().into_iter().cloned()),
        );
        descs.extend(L7_HISTOGRAMS.iter().filter_map(|(name, help, labels)| {
            Desc::new(
                (*name).to_owned(),
                (*help).to_owned(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                std::collections::HashMap::new(),
            )
            .ok()
        }));
        DatapathCollector { status, descs }
    }
}

/// Request metrics of L7 frontends: what clients saw (the frontend's), and what each backend
/// answered (every attempt, retries included).
struct L7Families {
    requests: IntCounterVec,
    backend_requests: IntCounterVec,
    retries: IntCounterVec,
    retries_denied: IntCounterVec,
    ejections: IntCounterVec,
    ejected: IntGaugeVec,
    in_flight: IntGaugeVec,
    healthy: IntGaugeVec,
}

const L7_HISTOGRAMS: [(&str, &str, &[&str]); 2] = [
    (
        "switchyard_l7_request_duration_seconds",
        "Time from a request's headers to its response's headers, as the client saw it",
        SERVICE_LABELS,
    ),
    (
        "switchyard_l7_backend_request_duration_seconds",
        "Time from sending a request to a backend to its response's headers, per attempt",
        BACKEND_LABELS,
    ),
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl L7Families {
    fn new() -> L7Families {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        L7Families {
            requests: counter(
                "switchyard_l7_requests_total",
                "Requests answered by an L7 frontend, by status class (the proxy's own answers included)",
                &["service", "frontend", "code"],
            ),
            backend_requests: counter(
                "switchyard_l7_backend_requests_total",
                "Requests sent to a backend, by the class of its answer (code=failed: no answer)",
                &["service", "frontend", "backend", "code"],
            ),
            retries: counter(
                "switchyard_l7_retries_total",
                "Requests sent again to another backend",
                SERVICE_LABELS,
            ),
            retries_denied: counter(
                "switchyard_l7_retries_budget_exhausted_total",
                "Retries the retry budget refused",
                SERVICE_LABELS,
            ),
            ejections: counter(
                "switchyard_l7_ejections_total",
                "Backends ejected by outlier detection",
                SERVICE_LABELS,
            ),
            ejected: gauge(
                "switchyard_l7_backend_ejected",
                "1 while outlier detection keeps the backend out",
                BACKEND_LABELS,
            ),
            in_flight: gauge(
                "switchyard_l7_backend_requests_in_flight",
                "Requests to the backend not finished yet",
                BACKEND_LABELS,
            ),
            healthy: gauge(
                "switchyard_l7_backend_healthy",
                "The active health check's verdict (1 while checks are off)",
                BACKEND_LABELS,
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 8] {
        [
            &self.requests,
            &self.backend_requests,
            &self.retries,
            &self.retries_denied,
            &self.ejections,
            &self.ejected,
            &self.in_flight,
            &self.healthy,
        ]
    }
}

/// A Prometheus histogram from non-cumulative bucket counts.
fn histogram(
    labels: &[(&str, &str)],
    requests: &crate::datapath::RequestsView,
) -> prometheus::proto::Metric {
    use prometheus::proto;
    let mut cumulative = 0;
    let buckets = switchyard_proxy::l7::LATENCY_BUCKETS
        .iter()
        .zip(requests.latency_buckets.iter().chain(std::iter::repeat(&0)))
        .map(|(bound, n)| {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_sample_count(requests.latency_count);
    h.set_sample_sum(requests.latency_sum_seconds);
    h.set_bucket(buckets);
    let mut m = proto::Metric::from_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*k).to_owned());
                pair.set_value((*v).to_owned());
                pair
            })
            .collect(),
    );
    m.set_histogram(h);
    m
}

fn histogram_family(index: usize, metrics: Vec<prometheus::proto::Metric>) -> MetricFamily {
    let (name, help, _) = L7_HISTOGRAMS[index];
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
    family.set_metric(metrics);
    family
}

fn collect_l7(views: &[crate::datapath::FrontendView]) -> Vec<MetricFamily> {
    let f = L7Families::new();
    let (mut frontend_histograms, mut backend_histograms) = (Vec::new(), Vec::new());
    for view in views {
        let Some(l7) = &view.l7 else { continue };
        let (s, fr) = (view.service.as_str(), view.frontend.as_str());
        for (class, n) in CLASSES.iter().zip(l7.requests.by_class) {
            if n > 0 {
                f.requests.with_label_values(&[s, fr, class]).inc_by(n);
            }
        }
        f.retries.with_label_values(&[s, fr]).inc_by(l7.retries);
        f.retries_denied
            .with_label_values(&[s, fr])
            .inc_by(l7.retries_denied);
        f.ejections.with_label_values(&[s, fr]).inc_by(l7.ejections);
        frontend_histograms.push(histogram(&[("service", s), ("frontend", fr)], &l7.requests));
        for b in &view.backends {
            let Some(bl7) = &b.l7 else { continue };
            let be = b.backend.as_str();
            for (class, n) in CLASSES.iter().zip(bl7.requests.by_class) {
                if n > 0 {
                    f.backend_requests
                        .with_label_values(&[s, fr, be, class])
                        .inc_by(n);
                }
            }
            if bl7.requests.failed > 0 {
                f.backend_requests
                    .with_label_values(&[s, fr, be, "failed"])
                    .inc_by(bl7.requests.failed);
            }
            f.ejected
                .with_label_values(&[s, fr, be])
                .set(i64::from(bl7.ejected));
            f.healthy
                .with_label_values(&[s, fr, be])
                .set(i64::from(bl7.healthy));
            f.in_flight
                .with_label_values(&[s, fr, be])
                .set(i64::try_from(bl7.in_flight).unwrap_or(i64::MAX));
            backend_histograms.push(histogram(
                &[("service", s), ("frontend", fr), ("backend", be)],
                &bl7.requests,
            ));
        }
    }
    let mut families: Vec<MetricFamily> = f.collectors().iter().flat_map(|c| c.collect()).collect();
    if !frontend_histograms.is_empty() {
        families.push(histogram_family(0, frontend_histograms));
    }
    if !backend_histograms.is_empty() {
        families.push(histogram_family(1, backend_histograms));
    }
    families
}

impl Collector for DatapathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = Families::new();
        let counted = self.status.counts_connections();
        let views = self.status.frontends();
        for view in &views {
            let frontend = view.frontend.clone();
            let service = [view.service.as_str(), frontend.as_str()];
            let mut active = 0;
            let (mut ready, mut terminating) = (0, 0);
            for b in &view.backends {
                if b.state == "terminating" {
                    terminating += 1;
                } else {
                    ready += 1;
                }
                if !counted {
                    continue;
                }
                let labels = [view.service.as_str(), frontend.as_str(), b.backend.as_str()];
                f.backend_total
                    .with_label_values(&labels)
                    .inc_by(b.connections_total);
                f.backend_active
                    .with_label_values(&labels)
                    .set(i64::try_from(b.connections_active).unwrap_or(i64::MAX));
                f.backend_failures
                    .with_label_values(&labels)
                    .inc_by(b.connect_failures);
                let [s, fr, be] = labels;
                f.backend_bytes
                    .with_label_values(&[s, fr, be, "sent"])
                    .inc_by(b.bytes_sent);
                f.backend_bytes
                    .with_label_values(&[s, fr, be, "received"])
                    .inc_by(b.bytes_received);
                active += b.connections_active;
            }
            let [s, fr] = service;
            f.backends.with_label_values(&[s, fr, "active"]).set(ready);
            f.backends
                .with_label_values(&[s, fr, "terminating"])
                .set(terminating);
            if !counted {
                continue;
            }
            f.service_total
                .with_label_values(&service)
                .inc_by(view.connections_total);
            f.service_active
                .with_label_values(&service)
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
        let mut families: Vec<MetricFamily> =
            f.collectors().iter().flat_map(|c| c.collect()).collect();
        families.extend(collect_l7(&views));
        for counter in self.status.counters() {
            match IntCounter::new(counter.name, counter.help) {
                Ok(c) => {
                    c.inc_by(counter.value);
                    families.extend(c.collect());
                }
                Err(error) => tracing::warn!(name = counter.name, %error, "bad datapath counter"),
            }
        }
        families
    }
}
