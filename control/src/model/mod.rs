//! The Service model: a pure function from Kubernetes objects and this node's identity to the
//! node's [`ServiceTable`].
//!
//! It follows the semantics kube-proxy follows (see the README's "Service semantics" section):
//! which Services are skipped, how ports and endpoints are matched, which endpoint conditions are
//! used, session affinity and `internalTrafficPolicy`. It does no I/O and keeps no state: the
//! same objects always give the same table, which is what makes it testable by tables of cases.

mod derive;
mod l7;
mod topology;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::store::{ObjectKey, Store};

pub use derive::{derive_endpoint_slices, selects};
pub use l7::*;
pub use validate::{
    ValidationError, validate_endpoint_slice, validate_node, validate_pod, validate_service,
};

/// Label that marks a Service headless (set by some controllers in addition to `clusterIP: None`).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label that hands a Service to another proxy; kube-proxy and switchyard skip it.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on an `EndpointSlice` naming the Service it belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Node label carrying the node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Annotation choosing the balancing algorithm of a Service.
pub const ANNOTATION_LB_ALGORITHM: &str = "switchyard.io/lb-algorithm";
/// The older way to give `loadBalancerSourceRanges` (comma-separated CIDRs); the field wins.
pub const ANNOTATION_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`, as in Kubernetes (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_hours(3);

/// The transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// What kind of Service address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum FrontendKind {
    /// A `clusterIP`: balanced for clients on the node (socket level in eBPF mode).
    ClusterIp,
    /// A `nodePort` on one of the node's addresses.
    NodePort,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl FrontendKind {
    /// Whether traffic to it arrives from outside the node (north-south): NodePorts, external
    /// and load-balancer IPs, served on the packet path and governed by
    /// `externalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }

    /// The name in status views: `ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer`.
    pub fn name(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A Service address on this node: the key of the [`ServiceTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub kind: FrontendKind,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

/// Whether a backend takes new connections normally or only as the terminating fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum BackendState {
    Active,
    Terminating,
}

/// One endpoint address and port that a frontend balances over.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub state: BackendState,
    pub node: Option<String>,
    pub zone: Option<String>,
    /// Whether the endpoint is on this node (its `nodeName` is this node's name): north-south
    /// traffic reaches a local backend without SNAT.
    pub local: bool,
}

/// How a frontend picks a backend for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    Random,
    RoundRobin,
    LeastConnections,
    /// Consistent selection through a Maglev table (eBPF datapath; the userspace datapath
    /// falls back to random).
    Maglev,
}

impl Algorithm {
    /// Parses the value of the `switchyard.io/lb-algorithm` annotation.
    pub fn parse(value: &str) -> Option<Algorithm> {
        match value.trim().to_ascii_lowercase().as_str() {
            "random" => Some(Algorithm::Random),
            "round-robin" | "roundrobin" | "rr" => Some(Algorithm::RoundRobin),
            "least-connections" | "leastconn" | "least-conn" => Some(Algorithm::LeastConnections),
            "maglev" => Some(Algorithm::Maglev),
            _ => None,
        }
    }
}

/// What a frontend does when it has no usable backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyAction {
    /// Refuse at once (TCP reset / ICMP unreachable), as kube-proxy's REJECT for Services
    /// without endpoints.
    Reject,
    /// Drop, as kube-proxy does for `internalTrafficPolicy: Local` with no local endpoint.
    Drop,
}

/// Everything a datapath needs to serve one frontend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceEntry {
    pub frontend: Frontend,
    /// The Service this frontend belongs to.
    pub service: ObjectKey,
    /// The Service port's name (empty for a single unnamed port).
    pub port_name: String,
    /// The backends to use, sorted; already narrowed by endpoint conditions and traffic policy.
    pub backends: Vec<Backend>,
    /// Endpoints that still exist but are terminating and not used for new connections: their
    /// open connections are left to finish (a datapath closes sockets only to endpoints that
    /// are gone).
    pub draining: Vec<Backend>,
    pub algorithm: Algorithm,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity: Option<Duration>,
    pub on_empty: EmptyAction,
    /// North-south frontends with `externalTrafficPolicy: Cluster`: the node address that
    /// traffic to a backend on another node is sent from (SNAT), so that replies come back
    /// through this node. `None` for ClusterIPs and `externalTrafficPolicy: Local`.
    pub snat: Option<IpAddr>,
    /// LoadBalancer frontends of a Service with `loadBalancerSourceRanges`: the ranges of the
    /// frontend's family that may connect; `Some(empty)` admits no one.
    pub source_ranges: Option<Vec<IpNet>>,
    /// North-south frontends of a LoadBalancer Service with `externalTrafficPolicy: Local`:
    /// its `healthCheckNodePort`, where switchyard answers load balancers' health checks.
    pub health_check_node_port: Option<u16>,
    /// Served per request (HTTP) rather than per connection; see [`L7Entry`].
    pub l7: Option<L7Entry>,
}

/// How an L7 port is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Entry {
    pub spec: switchyard_proxy::l7::L7Spec,
    /// The node's address of the frontend's family (its first `InternalIP`), where the eBPF
    /// datapath's L7 listener can be reached from the node's pods.
    pub node_address: Option<IpAddr>,
}

impl serde::Serialize for L7Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A summary: never the certificate's key.
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("L7Entry", 3)?;
        out.serialize_field("upstream", &self.spec.upstream.to_string())?;
        out.serialize_field("balancer", &self.spec.balancer.to_string())?;
        out.serialize_field("tls", &self.spec.tls.is_some())?;
        out.end()
    }
}

impl ServiceEntry {
    /// The name used in metrics and status: `namespace/name:port`.
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            self.service.to_string()
        } else {
            format!("{}:{}", self.service, self.port_name)
        }
    }
}

/// The node's whole desired state: every frontend with its entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    entries: BTreeMap<Frontend, ServiceEntry>,
}

impl ServiceTable {
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, frontend: &Frontend) -> Option<&ServiceEntry> {
        self.entries.get(frontend)
    }

    pub fn entries(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.entries.values()
    }

    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.entries.keys()
    }

    /// Inserts an entry, replacing any entry for the same frontend.
    pub fn insert(&mut self, entry: ServiceEntry) -> Option<ServiceEntry> {
        self.entries.insert(entry.frontend, entry)
    }

    pub fn remove(&mut self, frontend: &Frontend) -> Option<ServiceEntry> {
        self.entries.remove(frontend)
    }

    /// The warning for `entry` when another Service already holds its frontend (the first
    /// one keeps it: the API server would never have allowed the second).
    pub fn claimed_by_other(&self, entry: &ServiceEntry) -> Option<Warning> {
        let owner = &self.get(&entry.frontend)?.service;
        (*owner != entry.service).then(|| Warning {
            kind: "Service",
            object: entry.service.clone(),
            message: format!(
                "frontend {} is already served by service {owner}; skipped",
                entry.frontend
            ),
            invalid: true,
            limit: None,
        })
    }
}

impl FromIterator<ServiceEntry> for ServiceTable {
    fn from_iter<I: IntoIterator<Item = ServiceEntry>>(iter: I) -> Self {
        let mut table = ServiceTable::new();
        for entry in iter {
            table.insert(entry);
        }
        table
    }
}

/// Who this node is: what the model needs to know beyond the objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    /// Which of the node's addresses serve NodePorts (`--nodeport-addresses`).
    pub nodeport_addresses: NodePortAddresses,
    pub limits: Limits,
}

impl NodeContext {
    /// A node of this name whose NodePorts are on all of its addresses, with the default
    /// limits.
    pub fn named(name: impl Into<String>) -> NodeContext {
        NodeContext {
            name: name.into(),
            nodeport_addresses: NodePortAddresses::All,
            limits: Limits::default(),
        }
    }
}

/// How much one node programs (`--max-services`, `--max-service-ports`,
/// `--max-service-backends`): what goes beyond is left out with a warning naming the object
/// and the flag, and counted in `switchyard_limit_reached_total`, never dropped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Services with frontends; a Service beyond it is not programmed until one goes.
    pub max_services: usize,
    /// Ports of one Service; a Service with more is not programmed at all.
    pub max_service_ports: usize,
    /// Backends of one frontend; beyond it the first ones (ready first, then by address)
    /// are kept.
    pub max_service_backends: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_services: 100_000,
            max_service_ports: 1_000,
            max_service_backends: 10_000,
        }
    }
}

/// Which of the node's addresses (its Node object's `status.addresses`) serve NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every `InternalIP` and `ExternalIP` (the default).
    #[default]
    All,
    /// The first `InternalIP` of each family (kube-proxy's `--nodeport-addresses primary`).
    Primary,
    /// The addresses within these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// Parses `--nodeport-addresses`: `primary`, or comma-separated CIDRs; empty means all.
    pub fn parse(value: &str) -> Result<NodePortAddresses, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(NodePortAddresses::All);
        }
        if value.eq_ignore_ascii_case("primary") {
            return Ok(NodePortAddresses::Primary);
        }
        value
            .split(',')
            .map(|c| {
                c.trim().parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                    format!(
                        "{:?} is not a CIDR (want `primary` or CIDRs such as 192.168.0.0/24)",
                        c.trim()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(NodePortAddresses::Cidrs)
    }
}

/// The Node's addresses of type `InternalIP` and `ExternalIP`, internal ones first, parsed and
/// without duplicates.
fn node_ips(node: &Node) -> Vec<(bool, IpAddr)> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<(bool, IpAddr)> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| {
            let internal = match a.type_.as_str() {
                "InternalIP" => true,
                "ExternalIP" => false,
                _ => return None,
            };
            Some((internal, a.address.trim().parse::<IpAddr>().ok()?))
        })
        .filter(|(_, ip)| seen.insert(*ip))
        .collect();
    out.sort_by_key(|(internal, _)| !*internal);
    out
}

/// The node addresses that serve NodePorts, as `--nodeport-addresses` narrows them.
pub fn nodeport_addresses(node: Option<&Node>, filter: &NodePortAddresses) -> Vec<IpAddr> {
    let Some(node) = node else {
        return Vec::new();
    };
    let ips = node_ips(node);
    match filter {
        NodePortAddresses::All => ips.into_iter().map(|(_, ip)| ip).collect(),
        NodePortAddresses::Primary => [true, false]
            .into_iter()
            .filter_map(|v4| {
                ips.iter()
                    .find(|(internal, ip)| *internal && ip.is_ipv4() == v4)
                    .map(|(_, ip)| *ip)
            })
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => ips
            .into_iter()
            .map(|(_, ip)| ip)
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .collect(),
    }
}

/// The address north-south traffic to another node's backend is sent from: the node's first
/// `InternalIP` of the family, else its first `ExternalIP`.
pub fn snat_address(node: Option<&Node>, ipv4: bool) -> Option<IpAddr> {
    node_ips(node?)
        .into_iter()
        .map(|(_, ip)| ip)
        .find(|ip| ip.is_ipv4() == ipv4)
}

/// Why part of a Service was not programmed; each becomes one log line and a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `Service`, `EndpointSlice`, `Pod` or `Node`.
    pub kind: &'static str,
    pub object: ObjectKey,
    pub message: String,
    /// Whether the object itself is invalid (counted in `switchyard_invalid_objects_total`),
    /// rather than valid but using something switchyard does not support.
    pub invalid: bool,
    /// The limit the object ran into (`services`, `service-ports`, `service-backends`),
    /// counted in `switchyard_limit_reached_total`.
    pub limit: Option<&'static str>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.kind.to_ascii_lowercase(),
            self.object,
            self.message
        )
    }
}

/// The result of computing one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOutcome {
    pub entries: Vec<ServiceEntry>,
    pub warnings: Vec<Warning>,
}

/// Computes the whole table from scratch. The controller uses [`compute_service`] per changed
/// Service instead; this is the reference both are tested against.
pub fn compute_table(store: &Store, node: &NodeContext) -> (ServiceTable, Vec<Warning>) {
    let mut table = ServiceTable::new();
    let mut warnings = Vec::new();
    for key in store.service_keys() {
        let outcome = compute_service(store, key, node);
        warnings.extend(outcome.warnings);
        for entry in outcome.entries {
            insert_unclaimed(&mut table, entry, &mut warnings);
        }
    }
    (table, warnings)
}

/// Inserts an entry unless another Service already holds its frontend; the first Service (by
/// namespace/name) keeps it, as the API server would never have allowed the second.
pub fn insert_unclaimed(
    table: &mut ServiceTable,
    entry: ServiceEntry,
    warnings: &mut Vec<Warning>,
) {
    match table.claimed_by_other(&entry) {
        Some(warning) => warnings.push(warning),
        None => {
            table.insert(entry);
        }
    }
}

/// Computes the frontends of one Service from the store.
pub fn compute_service(store: &Store, key: &ObjectKey, node: &NodeContext) -> ServiceOutcome {
    let mut outcome = ServiceOutcome::default();
    let Some(service) = store.service(key) else {
        return outcome;
    };
    let warn = |outcome: &mut ServiceOutcome, message: String, invalid: bool| {
        outcome.warnings.push(Warning {
            kind: "Service",
            object: key.clone(),
            message,
            invalid,
            limit: None,
        });
    };
    let limited = |outcome: &mut ServiceOutcome, message: String, limit: &'static str| {
        outcome.warnings.push(Warning {
            kind: "Service",
            object: key.clone(),
            message,
            invalid: false,
            limit: Some(limit),
        });
    };
    if let Err(error) = validate_service(service) {
        warn(&mut outcome, error.to_string(), true);
        return outcome;
    }
    if !is_proxied(service) {
        return outcome;
    }
    let Some(spec) = service.spec.as_ref() else {
        return outcome;
    };
    let ports = spec.ports.as_ref().map_or(0, Vec::len);
    if ports > node.limits.max_service_ports {
        limited(
            &mut outcome,
            format!(
                "has {ports} ports, more than --max-service-ports {}; not programmed",
                node.limits.max_service_ports
            ),
            "service-ports",
        );
        return outcome;
    }
    let vips = cluster_ips(service);
    if vips.is_empty() {
        warn(
            &mut outcome,
            "has no clusterIP; the manifest source does not allocate addresses, set spec.clusterIP"
                .to_owned(),
            false,
        );
        return outcome;
    }

    let algorithm = match service.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_LB_ALGORITHM)) {
        None => Algorithm::Random,
        Some(value) => Algorithm::parse(value).unwrap_or_else(|| {
            warn(
                &mut outcome,
                format!(
                    "annotation {ANNOTATION_LB_ALGORITHM}: unknown algorithm {value:?} (want random, round-robin or least-connections); using random"
                ),
                false,
            );
            Algorithm::Random
        }),
    };
    let affinity = session_affinity(service);
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let this_node = store.node(&node.name);
    let here = topology::Here {
        node: &node.name,
        zone: this_node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(LABEL_ZONE))
            .map(String::as_str),
    };
    let addresses = external_addresses(service, this_node, node, &mut |m| {
        warn(&mut outcome, m, false);
    });
    let source_ranges = source_ranges(service);
    let health_check_node_port = (spec.type_.as_deref() == Some("LoadBalancer") && external_local)
        .then(|| {
            spec.health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
        })
        .flatten()
        .filter(|p| *p != 0);

    // Explicit EndpointSlices win; without any, derive them from Pods when the Service has a
    // selector, as the EndpointSlice controller would.
    let explicit = store.slices_for_service(key);
    let derived;
    let slices: Vec<&EndpointSlice> = if explicit.is_empty() {
        let mut slices =
            derive_endpoint_slices(service, store.pods_in_namespace(&key.namespace), |n| {
                store.node(n)
            });
        // The hints Kubernetes' EndpointSlice controller would write.
        switchyard_apiserver::hints::set_hints(
            service,
            slices
                .iter_mut()
                .flat_map(|s| s.endpoints.iter_mut().flatten()),
            || switchyard_apiserver::hints::zone_weights(store.nodes()),
        );
        derived = slices;
        derived.iter().collect()
    } else {
        explicit
    };
    for slice in &slices {
        if let Err(error) = validate_endpoint_slice(slice) {
            outcome.warnings.push(Warning {
                kind: "EndpointSlice",
                object: ObjectKey::of(&slice.metadata),
                message: error.to_string(),
                invalid: true,
                limit: None,
            });
        }
    }
    let slices: Vec<&EndpointSlice> = slices
        .into_iter()
        .filter(|s| validate_endpoint_slice(s).is_ok())
        .collect();

    // A Service address may be listed twice (an external IP that is also the load balancer's):
    // the first kind keeps it.
    let mut taken: BTreeSet<(IpAddr, u16, Protocol)> = BTreeSet::new();
    let max_backends = node.limits.max_service_backends;
    let mut over_backends: Option<usize> = None;
    // The backends in use and those draining are bounded each.
    let mut cap = |(mut used, mut draining): (Vec<Backend>, Vec<Backend>)| {
        let most = used.len().max(draining.len());
        if most > max_backends {
            over_backends = Some(over_backends.unwrap_or(0).max(most));
            used.truncate(max_backends);
            draining.truncate(max_backends);
        }
        (used, draining)
    };
    for port in spec.ports.iter().flatten() {
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                warn(
                    &mut outcome,
                    format!(
                        "port {}: protocol {other} is not supported by switchyard; port skipped",
                        port_label(port)
                    ),
                    false,
                );
                continue;
            }
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            continue; // validate_service rejected this already
        };
        let l7 = if proto == Protocol::Tcp {
            match l7::l7_spec(service, key, port, store, &mut |m| {
                warn(
                    &mut outcome,
                    format!("port {}: {m}", port_label(port)),
                    false,
                );
            }) {
                Ok(spec) => spec,
                Err(message) => {
                    warn(
                        &mut outcome,
                        format!("port {}: {message}", port_label(port)),
                        false,
                    );
                    continue;
                }
            }
        } else {
            None
        };
        let node_port = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        for ipv4 in [true, false] {
            if !vips.iter().any(|v| v.is_ipv4() == ipv4) {
                continue; // not one of the Service's families
            }
            let candidates = endpoints_for_port(&slices, port, proto, ipv4);
            let mut frontends: Vec<(IpAddr, u16, FrontendKind)> = vips
                .iter()
                .filter(|v| v.is_ipv4() == ipv4)
                .map(|v| (*v, service_port, FrontendKind::ClusterIp))
                .collect();
            for (addr, kind) in addresses.iter().filter(|(a, _)| a.is_ipv4() == ipv4) {
                let port_of_kind = if *kind == FrontendKind::NodePort {
                    match node_port {
                        Some(p) => p,
                        None => continue,
                    }
                } else {
                    service_port
                };
                frontends.push((*addr, port_of_kind, *kind));
            }
            let internal = cap(select_backends(candidates.clone(), &here, internal_local));
            let external = frontends
                .iter()
                .any(|(_, _, k)| k.is_external())
                .then(|| cap(select_backends(candidates, &here, external_local)));
            for (addr, frontend_port, kind) in frontends {
                if !taken.insert((addr, frontend_port, proto)) {
                    continue;
                }
                let is_external = kind.is_external();
                let local = if is_external {
                    external_local
                } else {
                    internal_local
                };
                let (backends, draining) = if is_external {
                    external.clone().unwrap_or_default()
                } else {
                    internal.clone()
                };
                outcome.entries.push(ServiceEntry {
                    frontend: Frontend {
                        addr,
                        port: frontend_port,
                        proto,
                        kind,
                    },
                    service: key.clone(),
                    port_name: port.name.clone().unwrap_or_default(),
                    backends,
                    draining,
                    // North-south traffic may arrive at any node: every node must choose the
                    // same backend for a flow, so it is always balanced through Maglev.
                    algorithm: if is_external {
                        Algorithm::Maglev
                    } else {
                        algorithm
                    },
                    affinity,
                    on_empty: if local {
                        EmptyAction::Drop
                    } else {
                        EmptyAction::Reject
                    },
                    snat: (is_external && !external_local)
                        .then(|| snat_address(this_node, ipv4))
                        .flatten(),
                    source_ranges: (kind == FrontendKind::LoadBalancer)
                        .then(|| {
                            source_ranges.as_ref().map(|ranges| {
                                ranges
                                    .iter()
                                    .filter(|r| r.addr().is_ipv4() == ipv4)
                                    .copied()
                                    .collect()
                            })
                        })
                        .flatten(),
                    health_check_node_port: health_check_node_port.filter(|_| is_external),
                    l7: l7.clone().map(|spec| L7Entry {
                        spec,
                        node_address: snat_address(this_node, ipv4),
                    }),
                });
            }
        }
    }
    if let Some(total) = over_backends {
        limited(
            &mut outcome,
            format!(
                "has {total} backends on a frontend, more than --max-service-backends {max_backends}; the first {max_backends} (ready first, then by address) are used"
            ),
            "service-backends",
        );
    }
    outcome
}

/// The Service's north-south addresses with their kind: the node's NodePort addresses (for
/// NodePort and LoadBalancer Services), `externalIPs`, and the load balancer's ingress IPs
/// (LoadBalancer Services; those with `ipMode: Proxy` are the load balancer's to handle).
fn external_addresses(
    service: &Service,
    this_node: Option<&Node>,
    node: &NodeContext,
    warn: &mut dyn FnMut(String),
) -> Vec<(IpAddr, FrontendKind)> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let mut out = Vec::new();
    if matches!(kind, "NodePort" | "LoadBalancer") {
        let has_node_ports = spec.ports.iter().flatten().any(|p| p.node_port.is_some());
        let addresses = nodeport_addresses(this_node, &node.nodeport_addresses);
        if has_node_ports && addresses.is_empty() {
            warn(format!(
                "node {} has no address for NodePorts (status.addresses, narrowed by --nodeport-addresses); NodePorts not served",
                node.name
            ));
        }
        if has_node_ports {
            out.extend(addresses.into_iter().map(|a| (a, FrontendKind::NodePort)));
        }
    }
    // validate_service rejected unparsable ones already.
    out.extend(
        spec.external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .map(|ip| (ip, FrontendKind::ExternalIp)),
    );
    if kind == "LoadBalancer" {
        out.extend(
            service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()?.trim().parse::<IpAddr>().ok())
                .map(|ip| (ip, FrontendKind::LoadBalancer)),
        );
    }
    out
}

/// `loadBalancerSourceRanges`, or the older annotation when the field is empty; `None` when
/// neither is set (everyone may connect). validate_service rejected unparsable ranges.
fn source_ranges(service: &Service) -> Option<Vec<IpNet>> {
    let field: Vec<&str> = service
        .spec
        .iter()
        .flat_map(|s| s.load_balancer_source_ranges.iter().flatten())
        .map(String::as_str)
        .collect();
    let listed: Vec<&str> = if field.is_empty() {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SOURCE_RANGES))
            .map(|v| v.split(',').filter(|c| !c.trim().is_empty()).collect())
            .unwrap_or_default()
    } else {
        field
    };
    if listed.is_empty() {
        return None;
    }
    Some(
        listed
            .into_iter()
            .filter_map(|c| c.trim().parse::<IpNet>().ok())
            .map(|n| n.trunc())
            .collect(),
    )
}

/// Whether switchyard serves this Service at all: not headless, not an `ExternalName`, not
/// handed to another proxy by `service.kubernetes.io/service-proxy-name`.
pub fn is_proxied(service: &Service) -> bool {
    let labels = service.metadata.labels.as_ref();
    if labels
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
    {
        return false;
    }
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    !matches!(spec.cluster_ip.as_deref(), Some("None"))
}

/// The Service's cluster IPs: `clusterIPs` when set, else `clusterIP`; unparsable ones dropped
/// (validation reports them).
pub fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let mut seen = BTreeSet::new();
    listed
        .into_iter()
        .filter(|s| !s.is_empty() && *s != "None")
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| seen.insert(*ip))
        .collect()
}

fn session_affinity(service: &Service) -> Option<Duration> {
    let spec = service.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let seconds = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0);
    Some(seconds.map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs))
}

pub(crate) fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?} ({})", port.port),
        _ => port.port.to_string(),
    }
}

/// An endpoint address with its conditions, as kube-proxy reads them from a slice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    addr: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    zone: Option<String>,
    /// `hints.forZones` and `hints.forNodes` (empty: no hint), sorted.
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Every endpoint of the slices that serves this Service port: the slice port whose name
/// equals the Service port's name and whose protocol matches, in the frontend's family.
fn endpoints_for_port(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    proto: Protocol,
    ipv4: bool,
) -> Vec<Candidate> {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_proto = proto.to_string();
    let want_type = if ipv4 { "IPv4" } else { "IPv6" };
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type != want_type {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && p.protocol.as_deref().unwrap_or("TCP") == want_proto
        }) else {
            continue;
        };
        let Some(target_port) = target
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            out.extend(candidates_of(endpoint, target_port, ipv4));
        }
    }
    out.sort();
    // The same address can appear in two slices while one is being replaced; keep the first
    // (after sorting, the one with the best conditions is not guaranteed, so prefer ready).
    out.dedup_by(|later, earlier| {
        if later.addr == earlier.addr && later.port == earlier.port {
            earlier.ready |= later.ready;
            earlier.serving |= later.serving;
            earlier.terminating &= later.terminating;
            true
        } else {
            false
        }
    });
    out
}

fn candidates_of(endpoint: &Endpoint, port: u16, ipv4: bool) -> Vec<Candidate> {
    let conditions = endpoint.conditions.as_ref();
    // Kubernetes' defaults: ready unset means ready; serving unset means "same as ready";
    // terminating unset means not terminating.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let hints = endpoint.hints.as_ref();
    let mut zone_hints: Vec<String> = hints
        .and_then(|h| h.for_zones.as_ref())
        .map(|z| z.iter().map(|z| z.name.clone()).collect())
        .unwrap_or_default();
    zone_hints.sort();
    let mut node_hints: Vec<String> = hints
        .and_then(|h| h.for_nodes.as_ref())
        .map(|n| n.iter().map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    node_hints.sort();
    // kube-proxy uses only the first address of an endpoint.
    endpoint
        .addresses
        .first()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|a| a.is_ipv4() == ipv4)
        .map(|addr| Candidate {
            addr,
            port,
            ready,
            serving,
            terminating,
            node: endpoint.node_name.clone(),
            zone: endpoint.zone.clone(),
            zone_hints,
            node_hints,
        })
        .into_iter()
        .collect()
}

/// kube-proxy's endpoint categorisation: ready endpoints, narrowed by the endpoints' topology
/// hints (see [`topology`]); when there are none, the ones that are serving and terminating.
/// With `local` (`internalTrafficPolicy` or `externalTrafficPolicy: Local`), only endpoints on
/// this node count, hints are not looked at, and the same fallback applies among them.
fn select_backends(
    candidates: Vec<Candidate>,
    here: &topology::Here<'_>,
    local: bool,
) -> (Vec<Backend>, Vec<Backend>) {
    let this_node = here.node;
    let candidates: Vec<Candidate> = if local {
        candidates
            .into_iter()
            .filter(|c| c.node.as_deref() == Some(this_node))
            .collect()
    } else {
        candidates
    };
    let mode = if local {
        topology::Mode::All
    } else {
        topology::mode(&candidates, here)
    };
    // A mode other than `All` is chosen only when a ready endpoint is hinted for here.
    let any_ready = candidates.iter().any(|c| c.ready);
    let backend = |c: Candidate| Backend {
        addr: c.addr,
        port: c.port,
        state: if c.ready {
            BackendState::Active
        } else {
            BackendState::Terminating
        },
        local: c.node.as_deref() == Some(this_node),
        node: c.node,
        zone: c.zone,
    };
    let mut used = Vec::new();
    let mut draining = Vec::new();
    for c in candidates {
        let usable = if any_ready {
            c.ready && mode.admits(&c, here)
        } else {
            c.serving && c.terminating
        };
        if usable {
            used.push(backend(c));
        } else if c.terminating {
            draining.push(backend(c));
        }
    }
    (used, draining)
}
