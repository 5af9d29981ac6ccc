//! The `EndpointSlice` controller: keeps, for every Service with a selector, the slices that list
//! the addresses of the Pods it selects, as Kubernetes' own controller does (at most 100
//! endpoints a slice, one slice family per address type and set of resolved ports, the
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by` labels, an owner
//! reference to the Service, the `endpoints.kubernetes.io/last-change-trigger-time` annotation).
//!
//! It reacts to the store's changes: a Service change reconciles that Service, a Pod change the
//! Services in its namespace that select it (before or after), a Node change (zones) every
//! Service, the deletion of a managed slice its Service. A reconcile is one store transaction
//! that writes only what differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::error::ApiError;
use crate::resources::{ENDPOINTSLICES, NODES, PODS, SERVICES};
use crate::rest::Api;
use crate::store::{Change, EventType, View, key, prefix};
use crate::time;

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
use crate::hints::LABEL_ZONE;
/// As kube-controller-manager's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// How long the controller lets changes gather before it reconciles them.
const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// One slice the controller wants.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSlice {
    pub address_type: &'static str,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Whether the Service's (non-empty) selector picks these labels.
pub fn selects(service: &Service, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector(service).is_some_and(|sel| {
        sel.iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    })
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

/// A Service port's targetPort on one Pod: a number as is (the port when unset), a name
/// through the Pod's container ports of the same protocol.
fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

fn primary_family(service: &Service) -> &'static str {
    let spec = service.spec.as_ref();
    let family = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .map(String::as_str);
    match family {
        Some("IPv6") => "IPv6",
        _ => "IPv4",
    }
}

/// The slices for a Service: Pods it selects (not finished, with an address) grouped by address
/// type and resolved ports, at most [`MAX_ENDPOINTS_PER_SLICE`] a slice; one empty slice when
/// there is no endpoint at all. Deterministic: endpoints are sorted by address.
pub fn desired_slices<'a>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
    zone_of: impl Fn(&str) -> Option<String>,
) -> Vec<DesiredSlice> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    if selector(service).is_none() || spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let families: Vec<&str> = spec
        .ip_families
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    type Ports = Vec<(String, String, i32)>;
    let mut groups: BTreeMap<(&'static str, Ports), Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if !selects(service, pod.metadata.labels.as_ref())
            || pod.metadata.namespace != service.metadata.namespace
        {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let ports: Ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                resolve_target_port(p, pod).map(|n| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                        n,
                    )
                })
            })
            .collect();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_ready(pod);
        // A terminating Pod is never ready unless the Service publishes not-ready addresses.
        let ready = publish_not_ready || (serving && !terminating);
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node_name.as_deref().and_then(&zone_of);
        for ip in pod_ips(pod) {
            let address_type = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            // A single-stack Service lists only its family's addresses.
            if !families.is_empty() && !families.contains(&address_type) {
                continue;
            }
            groups
                .entry((address_type, ports.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: node_name.clone(),
                    zone: zone.clone(),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_owned()),
                        namespace: pod.metadata.namespace.clone(),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                });
        }
    }
    let mut out = Vec::new();
    for ((address_type, ports), mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, protocol, port)| EndpointPort {
                name: Some(name),
                protocol: Some(protocol),
                port: Some(port),
                app_protocol: None,
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(DesiredSlice {
                address_type,
                ports: ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    if out.is_empty() {
        out.push(DesiredSlice {
            address_type: primary_family(service),
            ports: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    out
}

/// What the controller looks Pods, slices and Services up by, kept up to date from the store's
/// events (rebuilt when it misses some), so a change costs what it touches, not a scan of its
/// namespace.
#[derive(Default)]
pub(crate) struct Index {
    /// (namespace, label key, label value) -> names of the Pods with that label.
    pods: HashMap<(String, String, String), BTreeSet<String>>,
    /// (namespace, Service name) -> names of the slices managed for it.
    slices: HashMap<(String, String), BTreeSet<String>>,
    /// (namespace, key, value) -> names of the Services whose selector's first pair it is.
    services: HashMap<(String, String, String), BTreeSet<String>>,
}

fn labels_of(object: &Value) -> impl Iterator<Item = (&str, &str)> {
    object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

fn first_selector_pair(service: &Value) -> Option<(&str, &str)> {
    let (k, v) = service["spec"]["selector"].as_object()?.iter().next()?;
    Some((k.as_str(), v.as_str()?))
}

impl Index {
    /// The index of everything in the store now.
    pub(crate) fn build(api: &Api) -> Index {
        let mut index = Index::default();
        for plural in [PODS.plural, ENDPOINTSLICES.plural, SERVICES.plural] {
            let (_, objects) = api.store.list(&prefix(plural, None));
            for object in objects {
                index.add(plural, &object);
            }
        }
        index
    }

    /// Follows one change of the store (idempotent; events must come in order).
    pub(crate) fn apply(&mut self, event: &crate::store::Event) {
        let plural = event.key.split('/').next().unwrap_or("");
        if let Some(prev) = &event.prev {
            self.remove(plural, prev);
        }
        if event.kind != EventType::Deleted {
            self.add(plural, &event.object);
        }
    }

    fn entries(plural: &str, object: &Value) -> Vec<(u8, (String, String, String), String)> {
        let meta = &object["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("").to_owned();
        let name = meta["name"].as_str().unwrap_or("").to_owned();
        match plural {
            "pods" => labels_of(object)
                .map(|(k, v)| (0, (ns.clone(), k.to_owned(), v.to_owned()), name.clone()))
                .collect(),
            "endpointslices" => {
                let labels = &meta["labels"];
                match labels[LABEL_SERVICE_NAME].as_str() {
                    Some(service) if labels[LABEL_MANAGED_BY] == MANAGED_BY => {
                        vec![(1, (ns, service.to_owned(), String::new()), name)]
                    }
                    _ => Vec::new(),
                }
            }
            "services" => first_selector_pair(object)
                .map(|(k, v)| (2, (ns, k.to_owned(), v.to_owned()), name))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn add(&mut self, plural: &str, object: &Value) {
        for (which, (ns, a, b), name) in Self::entries(plural, object) {
            match which {
                0 => self.pods.entry((ns, a, b)).or_default().insert(name),
                1 => self.slices.entry((ns, a)).or_default().insert(name),
                _ => self.services.entry((ns, a, b)).or_default().insert(name),
            };
        }
    }

    fn remove(&mut self, plural: &str, object: &Value) {
        for (which, (ns, a, b), name) in Self::entries(plural, object) {
            match which {
                0 => remove_from(&mut self.pods, (ns, a, b), &name),
                1 => remove_from(&mut self.slices, (ns, a), &name),
                _ => remove_from(&mut self.services, (ns, a, b), &name),
            }
        }
    }

    /// Services in `ns` that may select a Pod with these labels (their selector's first pair
    /// is among them); the caller checks the whole selector.
    fn services_for_labels<'a>(
        &'a self,
        ns: &'a str,
        labels: impl Iterator<Item = (&'a str, &'a str)> + 'a,
    ) -> impl Iterator<Item = &'a String> + 'a {
        labels.flat_map(move |(k, v)| {
            self.services
                .get(&(ns.to_owned(), k.to_owned(), v.to_owned()))
                .into_iter()
                .flatten()
        })
    }
}

fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<String>>,
    key: K,
    name: &str,
) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(name);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

/// A namespace's view through the index, for one reconcile pass.
struct Lookup<'a, 'v> {
    view: &'a View<'v>,
    index: &'a Index,
    ns: &'a str,
}

impl Lookup<'_, '_> {
    /// The managed slices of Service `name`, as (key, object).
    fn slices(&self, name: &str) -> Vec<(String, Arc<Value>)> {
        self.index
            .slices
            .get(&(self.ns.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|slice| {
                let k = key(ENDPOINTSLICES.plural, self.ns, slice);
                let object = self.view.get(&k)?.clone();
                let labels = &object["metadata"]["labels"];
                (labels[LABEL_MANAGED_BY] == MANAGED_BY && labels[LABEL_SERVICE_NAME] == name)
                    .then_some((k, object))
            })
            .collect()
    }

    /// The Pods the selector picks: the smallest candidate set of one of its pairs, filtered
    /// by all of them.
    fn selected(&self, selector: &BTreeMap<String, String>) -> Vec<Pod> {
        let empty = BTreeSet::new();
        let Some(candidates) = selector
            .iter()
            .map(|(k, v)| {
                self.index
                    .pods
                    .get(&(self.ns.to_owned(), k.clone(), v.clone()))
                    .unwrap_or(&empty)
            })
            .min_by_key(|c| c.len())
        else {
            return Vec::new();
        };
        candidates
            .iter()
            .filter_map(|name| self.view.get(&key(PODS.plural, self.ns, name)))
            .filter(|p| {
                let labels = &p["metadata"]["labels"];
                selector
                    .iter()
                    .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
            })
            .filter_map(|p| serde_json::from_value((**p).clone()).ok())
            .collect()
    }
}

/// The store changes that bring the Service's slices to what they should be.
fn reconcile(
    view: &View<'_>,
    index: &Lookup<'_, '_>,
    ns: &str,
    name: &str,
    trigger: &str,
) -> Vec<Change> {
    let existing: Vec<(String, Arc<Value>)> = index.slices(name);
    let service_value = view.get(&key(SERVICES.plural, ns, name));
    let service: Option<Service> =
        service_value.and_then(|v| serde_json::from_value((**v).clone()).ok());
    let desired = match &service {
        Some(svc) => {
            let pods = selector(svc)
                .map(|sel| index.selected(sel))
                .unwrap_or_default();
            let zone_of = |node: &str| {
                view.get(&key(NODES.plural, "", node))
                    .and_then(|n| n["metadata"]["labels"][LABEL_ZONE].as_str())
                    .map(str::to_owned)
            };
            let mut desired = desired_slices(svc, &pods, zone_of);
            crate::hints::set_hints(
                svc,
                desired.iter_mut().flat_map(|d| d.endpoints.iter_mut()),
                || {
                    let nodes: Vec<k8s_openapi::api::core::v1::Node> = view
                        .list(&prefix(NODES.plural, None))
                        .filter_map(|(_, n)| serde_json::from_value((**n).clone()).ok())
                        .collect();
                    crate::hints::zone_weights(&nodes)
                },
            );
            desired
        }
        None => Vec::new(),
    };

    // Pair desired slices with existing ones of the same address type (same ports first), so
    // a change rewrites slices in place rather than replacing them.
    let mut free: Vec<(String, Arc<Value>)> = existing;
    let mut changes = Vec::new();
    let mut pending = Vec::new();
    for d in &desired {
        let ports = serde_json::to_value(&d.ports).unwrap_or_default();
        let pick = free
            .iter()
            .position(|(_, s)| s["addressType"] == d.address_type && s["ports"] == ports)
            .or_else(|| {
                free.iter()
                    .position(|(_, s)| s["addressType"] == d.address_type)
            });
        match pick {
            Some(i) => {
                let (k, current) = free.remove(i);
                pending.push((Some((k, current)), d));
            }
            None => pending.push((None, d)),
        }
    }
    let Some(svc_value) = service_value else {
        return free
            .into_iter()
            .map(|(k, _)| Change::Delete { key: k })
            .collect();
    };
    let mut labels = svc_value["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.to_owned(), json!(name));
    labels.insert(LABEL_MANAGED_BY.to_owned(), json!(MANAGED_BY));
    let owner = json!([{
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "uid": svc_value["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (current, d) in pending {
        let endpoints = serde_json::to_value(&d.endpoints).unwrap_or_default();
        let ports = serde_json::to_value(&d.ports).unwrap_or_default();
        let labels = Value::Object(labels.clone());
        if let Some((k, cur)) = current {
            if cur["addressType"] == d.address_type
                && cur["endpoints"] == endpoints
                && cur["ports"] == ports
                && cur["metadata"]["labels"] == labels
                && cur["metadata"]["ownerReferences"] == owner
            {
                continue;
            }
            let mut obj = (*cur).clone();
            obj["endpoints"] = endpoints;
            obj["ports"] = ports;
            obj["metadata"]["labels"] = labels;
            obj["metadata"]["ownerReferences"] = owner.clone();
            obj["metadata"]["annotations"][ANNOTATION_TRIGGER_TIME] = json!(trigger);
            if let Some(g) = obj["metadata"]["generation"].as_i64() {
                obj["metadata"]["generation"] = json!(g + 1);
            }
            changes.push(Change::Put {
                key: k,
                object: obj,
            });
        } else {
            let (slice_name, k) = loop {
                let n = format!("{name}-{}", crate::rest::random_suffix(5));
                let k = key(ENDPOINTSLICES.plural, ns, &n);
                if view.get(&k).is_none() && taken.insert(k.clone()) {
                    break (n, k);
                }
            };
            let obj = json!({
                "kind": ENDPOINTSLICES.kind,
                "apiVersion": ENDPOINTSLICES.api_version(),
                "metadata": {
                    "name": slice_name,
                    "generateName": format!("{name}-"),
                    "namespace": ns,
                    "uid": crate::rest::uid(),
                    "creationTimestamp": trigger,
                    "generation": 1,
                    "labels": labels,
                    "annotations": {ANNOTATION_TRIGGER_TIME: trigger},
                    "ownerReferences": owner,
                },
                "addressType": d.address_type,
                "endpoints": endpoints,
                "ports": ports,
            });
            changes.push(Change::Put {
                key: k,
                object: obj,
            });
        }
    }
    changes.extend(free.into_iter().map(|(k, _)| Change::Delete { key: k }));
    changes
}

/// The Services a change concerns, as (namespace, name); `None` means every Service.
fn affected(
    api: &Api,
    index: &Index,
    event: &crate::store::Event,
) -> Option<Vec<(String, String)>> {
    let mut parts = event.key.splitn(3, '/');
    let (plural, ns, name) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    match plural {
        "services" => Some(vec![(ns.to_owned(), name.to_owned())]),
        "pods" => {
            let matches = |svc: &Value, pod: Option<&Value>| {
                let Some(pod) = pod else { return false };
                let labels = &pod["metadata"]["labels"];
                svc["spec"]["type"] != "ExternalName"
                    && svc["spec"]["selector"].as_object().is_some_and(|sel| {
                        !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
            };
            // Candidates from the index (by the pod's labels, before and after), then checked.
            let candidates: BTreeSet<&String> = index
                .services_for_labels(ns, labels_of(&event.object))
                .chain(
                    event
                        .prev
                        .iter()
                        .flat_map(|prev| index.services_for_labels(ns, labels_of(prev))),
                )
                .collect();
            Some(
                candidates
                    .into_iter()
                    .filter(|svc| {
                        api.store
                            .get(&key(SERVICES.plural, ns, svc))
                            .is_some_and(|s| {
                                matches(&s, Some(&event.object))
                                    || matches(&s, event.prev.as_deref())
                            })
                    })
                    .map(|svc| (ns.to_owned(), svc.clone()))
                    .collect(),
            )
        }
        "nodes" => None,
        "endpointslices" if event.kind == EventType::Deleted => {
            let labels = &event.object["metadata"]["labels"];
            if labels[LABEL_MANAGED_BY] != MANAGED_BY {
                return Some(Vec::new());
            }
            Some(
                labels[LABEL_SERVICE_NAME]
                    .as_str()
                    .map(|s| vec![(ns.to_owned(), s.to_owned())])
                    .unwrap_or_default(),
            )
        }
        _ => Some(Vec::new()),
    }
}

fn all_services(api: &Api) -> BTreeSet<(String, String)> {
    let (_, services) = api.store.list(&prefix(SERVICES.plural, None));
    let (_, slices) = api.store.list(&prefix(ENDPOINTSLICES.plural, None));
    let named = |m: &Value, name: Option<&str>| -> Option<(String, String)> {
        Some((m["namespace"].as_str()?.to_owned(), name?.to_owned()))
    };
    let mut out: BTreeSet<(String, String)> = services
        .iter()
        .filter_map(|s| named(&s["metadata"], s["metadata"]["name"].as_str()))
        .collect();
    // Slices whose Service is gone are reconciled (away) too.
    out.extend(
        slices
            .iter()
            .map(|s| &s["metadata"])
            .filter(|m| m["labels"][LABEL_MANAGED_BY] == MANAGED_BY)
            .filter_map(|m| named(m, m["labels"][LABEL_SERVICE_NAME].as_str())),
    );
    out
}

/// Reconciles the slices of `dirty`; `since` is when the oldest change behind them happened,
/// written to the slices' trigger-time annotation (kube-proxy measures its network
/// programming latency from it).
async fn reconcile_all(
    api: &Arc<Api>,
    index: &Arc<Mutex<Index>>,
    dirty: BTreeSet<(String, String)>,
    since: SystemTime,
) {
    let (api, index) = (api.clone(), index.clone());
    let result =
        tokio::task::spawn_blocking(move || reconcile_services(&api, &index.lock(), dirty, since))
            .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "endpointslice controller: writing slices failed"),
        Err(e) => warn!(error = %e, "endpointslice controller: task failed"),
    }
}

/// Reconciles the slices of `dirty` now, one transaction (one fsync) per namespace. Blocking.
fn reconcile_services(
    api: &Api,
    index: &Index,
    dirty: BTreeSet<(String, String)>,
    since: SystemTime,
) -> Result<(), ApiError> {
    let trigger = time::format_nanos(since);
    let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ns, name) in dirty {
        by_namespace.entry(ns).or_default().push(name);
    }
    for (ns, names) in by_namespace {
        api.store.transact(|view| {
            let lookup = Lookup {
                view,
                index,
                ns: &ns,
            };
            Ok(names
                .iter()
                .flat_map(|name| reconcile(view, &lookup, &ns, name, &trigger))
                .collect())
        })?;
    }
    Ok(())
}

/// Brings every Service's slices up to date now, in the caller's thread (the controller would
/// do the same a moment later): a writer that needs the slices to exist when it returns, such
/// as the daemon's first load of its manifest folder, calls this. Blocking.
pub fn reconcile_everything(api: &Api) -> Result<(), ApiError> {
    let index = Index::build(api);
    reconcile_services(api, &index, all_services(api), time::now())
}

/// Runs until shutdown.
pub async fn run(api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
    let mut rx = api.store.subscribe_all();
    // Built after subscribing: a change in between is in both, and applying it again is
    // harmless.
    let index = Arc::new(Mutex::new(Index::build(&api)));
    reconcile_all(&api, &index, all_services(&api), time::now()).await;
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.changed() => return,
        };
        let since = time::now();
        let mut dirty = BTreeSet::new();
        let (mut everything, mut lagged) = (false, false);
        let mut note = |r: Result<Arc<crate::store::Event>, broadcast::error::RecvError>| match r {
            Ok(event) => {
                let mut index = index.lock();
                index.apply(&event);
                match affected(&api, &index, &event) {
                    Some(list) => dirty.extend(list),
                    None => everything = true,
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
            Err(broadcast::error::RecvError::Closed) => {}
        };
        note(first);
        // Let a burst gather (a little latency for far fewer transactions, each of them an
        // fsync), then take everything queued, so the burst is one pass.
        tokio::select! {
            () = tokio::time::sleep(BATCH_DELAY) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            match rx.try_recv() {
                Ok(e) => note(Ok(e)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    note(Err(broadcast::error::RecvError::Lagged(n)));
                }
                Err(_) => break,
            }
        }
        if lagged {
            // Events were missed: the index is rebuilt from the store.
            *index.lock() = Index::build(&api);
        }
        if lagged || everything {
            dirty = all_services(&api);
        }
        if !dirty.is_empty() {
            reconcile_all(&api, &index, dirty, since).await;
        }
    }
}

#[cfg(test)]
mod tests;
