//! Builders for the Kubernetes objects the daemon reads from manifests:
//! Service v1, Pod v1, `discovery.k8s.io/v1` `EndpointSlice`, Node v1.
//!
//! Each builder renders to a `serde_json::Value` (write it with
//! [`Manifests::write_objects`](crate::Manifests::write_objects), which turns
//! it into block YAML). A test that needs an odd object edits the value.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::topology::{NODE_NAME, POD_HTTP_PORT, POD_UDP_PORT, Topology};

/// The namespace every builder uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The Node label that puts it in a zone (the zone topology hints name).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A container port on a [`Pod`].
#[derive(Clone, Debug)]
pub struct ContainerPort {
    /// Its name (what a named `targetPort` refers to).
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

/// A v1 Pod with a status, as the kubelet would report it.
#[derive(Clone, Debug)]
pub struct Pod {
    name: String,
    namespace: String,
    node_name: Option<String>,
    ips: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
    ready: bool,
    phase: String,
    terminating: bool,
    ports: Vec<ContainerPort>,
}

impl Pod {
    /// A running, ready pod on `node-0` with no labels, ports or addresses.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            node_name: Some(NODE_NAME.to_owned()),
            ips: Vec::new(),
            labels: BTreeMap::new(),
            ready: true,
            phase: "Running".to_owned(),
            terminating: false,
            ports: Vec::new(),
        }
    }

    /// Pod `index` of `topo` as the default servers run it: named
    /// `web-<index>`, label `app=web`, both of its addresses, ports
    /// `http` 8080/TCP and `dns` 5353/UDP.
    pub fn web(topo: &Topology, index: usize) -> Self {
        Self::new(&format!("web-{index}"))
            .ips(&topo.pod_ips(index))
            .label("app", "web")
            .port("http", POD_HTTP_PORT)
            .udp_port("dns", POD_UDP_PORT)
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// Sets `spec.nodeName` (`None` for an unscheduled pod).
    #[must_use]
    pub fn node(mut self, node: Option<&str>) -> Self {
        self.node_name = node.map(str::to_owned);
        self
    }

    /// Sets `status.podIP` (the first) and `status.podIPs`.
    #[must_use]
    pub fn ips(mut self, ips: &[IpAddr]) -> Self {
        self.ips = ips.to_vec();
        self
    }

    /// Adds (or replaces) a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Removes every label.
    #[must_use]
    pub fn without_labels(mut self) -> Self {
        self.labels.clear();
        self
    }

    /// Sets the `Ready` condition.
    #[must_use]
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Sets `status.phase` (`Running` by default).
    #[must_use]
    pub fn phase(mut self, phase: &str) -> Self {
        phase.clone_into(&mut self.phase);
        self
    }

    /// Marks the pod as being deleted (`metadata.deletionTimestamp`).
    #[must_use]
    pub fn terminating(mut self, terminating: bool) -> Self {
        self.terminating = terminating;
        self
    }

    /// Replaces the container ports with none.
    #[must_use]
    pub fn without_ports(mut self) -> Self {
        self.ports.clear();
        self
    }

    /// Adds a named TCP container port.
    #[must_use]
    pub fn port(mut self, name: &str, port: u16) -> Self {
        self.ports.push(ContainerPort {
            name: Some(name.to_owned()),
            port,
            protocol: "TCP".to_owned(),
        });
        self
    }

    /// Adds a named UDP container port.
    #[must_use]
    pub fn udp_port(mut self, name: &str, port: u16) -> Self {
        self.ports.push(ContainerPort {
            name: Some(name.to_owned()),
            port,
            protocol: "UDP".to_owned(),
        });
        self
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders the object.
    pub fn to_value(&self) -> Value {
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": format!("uid-pod-{}-{}", self.namespace, self.name),
        });
        if !self.labels.is_empty() {
            metadata["labels"] = json!(self.labels);
        }
        if self.terminating {
            metadata["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"containerPort": p.port, "protocol": p.protocol});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                port
            })
            .collect();
        let mut container = json!({"name": "server", "image": "pod-server"});
        if !ports.is_empty() {
            container["ports"] = json!(ports);
        }
        let mut spec = json!({"containers": [container]});
        if let Some(node) = &self.node_name {
            spec["nodeName"] = json!(node);
        }
        let ready = if self.ready { "True" } else { "False" };
        let mut status = json!({
            "phase": self.phase,
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": ready},
            ],
        });
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first.to_string());
            status["podIPs"] = json!(
                self.ips
                    .iter()
                    .map(|ip| json!({"ip": ip.to_string()}))
                    .collect::<Vec<_>>()
            );
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        })
    }
}

/// A Service's `targetPort`.
#[derive(Clone, Debug)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

/// A port of a [`Service`].
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// Its name (`None` only for a single-port Service).
    pub name: Option<String>,
    /// The Service port.
    pub port: u16,
    /// Where it goes on the pods.
    pub target: TargetPort,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

impl ServicePort {
    /// A named TCP port with a numeric target.
    pub fn tcp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: Some(name.to_owned()),
            port,
            target: TargetPort::Number(target),
            protocol: "TCP".to_owned(),
        }
    }

    /// A named UDP port with a numeric target.
    pub fn udp(name: &str, port: u16, target: u16) -> Self {
        Self {
            protocol: "UDP".to_owned(),
            ..Self::tcp(name, port, target)
        }
    }

    /// A named TCP port whose target is a container port name.
    pub fn tcp_named(name: &str, port: u16, target: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            port,
            target: TargetPort::Name(target.to_owned()),
            protocol: "TCP".to_owned(),
        }
    }

    fn to_value(&self) -> Value {
        let target = match &self.target {
            TargetPort::Number(n) => json!(n),
            TargetPort::Name(name) => json!(name),
        };
        let mut port = json!({"port": self.port, "targetPort": target, "protocol": self.protocol});
        if let Some(name) = &self.name {
            port["name"] = json!(name);
        }
        port
    }
}

/// A v1 Service of type `ClusterIP` with explicit cluster IPs.
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    namespace: String,
    cluster_ips: Vec<String>,
    selector: Option<BTreeMap<String, String>>,
    ports: Vec<ServicePort>,
    affinity: SessionAffinity,
    internal_traffic_policy: Option<String>,
    traffic_distribution: Option<String>,
}

/// A Service's `sessionAffinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    /// `None`: every connection is balanced anew.
    None,
    /// `ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds` if set.
    ClientIp {
        /// The affinity timeout; Kubernetes defaults it to 10800.
        timeout_seconds: Option<u32>,
    },
}

impl Service {
    /// A Service with no cluster IP, selector or ports yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            cluster_ips: Vec::new(),
            selector: None,
            ports: Vec::new(),
            affinity: SessionAffinity::None,
            internal_traffic_policy: None,
            traffic_distribution: None,
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// Sets `clusterIP` (the first) and `clusterIPs`; `ipFamilies` follow
    /// the addresses, and `ipFamilyPolicy` is `RequireDualStack` for two.
    #[must_use]
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.cluster_ips = ips.iter().map(|ip| (*ip).to_owned()).collect();
        self
    }

    /// Adds a selector term (a Service without one has its endpoints
    /// managed by hand, through `EndpointSlice`s).
    #[must_use]
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a port.
    #[must_use]
    pub fn port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` if given.
    #[must_use]
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<u32>) -> Self {
        self.affinity = SessionAffinity::ClientIp { timeout_seconds };
        self
    }

    /// Sets `internalTrafficPolicy` (`Cluster` or `Local`).
    #[must_use]
    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.internal_traffic_policy = Some(policy.to_owned());
        self
    }

    /// Sets `trafficDistribution` (`PreferClose`, `PreferSameZone` or `PreferSameNode`):
    /// the `EndpointSlice` controller then writes topology hints into the endpoints.
    #[must_use]
    pub fn traffic_distribution(mut self, distribution: &str) -> Self {
        self.traffic_distribution = Some(distribution.to_owned());
        self
    }

    /// The Service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders the object.
    pub fn to_value(&self) -> Value {
        let mut spec = json!({
            "type": "ClusterIP",
            "ports": self.ports.iter().map(ServicePort::to_value).collect::<Vec<_>>(),
        });
        if let Some(first) = self.cluster_ips.first() {
            spec["clusterIP"] = json!(first);
            spec["clusterIPs"] = json!(self.cluster_ips);
            let families: Vec<&str> = self
                .cluster_ips
                .iter()
                .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
                .collect();
            spec["ipFamilies"] = json!(families);
            spec["ipFamilyPolicy"] = json!(if families.len() > 1 {
                "RequireDualStack"
            } else {
                "SingleStack"
            });
        }
        if let Some(selector) = &self.selector {
            spec["selector"] = json!(selector);
        }
        if let Some(policy) = &self.internal_traffic_policy {
            spec["internalTrafficPolicy"] = json!(policy);
        }
        if let Some(distribution) = &self.traffic_distribution {
            spec["trafficDistribution"] = json!(distribution);
        }
        match self.affinity {
            SessionAffinity::None => spec["sessionAffinity"] = json!("None"),
            SessionAffinity::ClientIp { timeout_seconds } => {
                spec["sessionAffinity"] = json!("ClientIP");
                if let Some(seconds) = timeout_seconds {
                    spec["sessionAffinityConfig"] =
                        json!({"clientIP": {"timeoutSeconds": seconds}});
                }
            }
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": format!("uid-svc-{}-{}", self.namespace, self.name),
            },
            "spec": spec,
        })
    }
}

/// One endpoint of an [`EndpointSlice`].
#[derive(Clone, Debug)]
pub struct Endpoint {
    addresses: Vec<IpAddr>,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<String>,
    pod: Option<String>,
}

impl Endpoint {
    /// A ready, serving endpoint on `node-0`.
    pub fn new(address: IpAddr) -> Self {
        Self {
            addresses: vec![address],
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some(NODE_NAME.to_owned()),
            pod: None,
        }
    }

    /// Sets the three conditions.
    #[must_use]
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = ready;
        self.serving = serving;
        self.terminating = terminating;
        self
    }

    /// Sets `targetRef` to pod `name`.
    #[must_use]
    pub fn pod(mut self, name: &str) -> Self {
        self.pod = Some(name.to_owned());
        self
    }

    /// Sets `nodeName`.
    #[must_use]
    pub fn node(mut self, node: Option<&str>) -> Self {
        self.node_name = node.map(str::to_owned);
        self
    }

    fn to_value(&self, namespace: &str) -> Value {
        let mut endpoint = json!({
            "addresses": self.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "conditions": {
                "ready": self.ready,
                "serving": self.serving,
                "terminating": self.terminating,
            },
        });
        if let Some(node) = &self.node_name {
            endpoint["nodeName"] = json!(node);
        }
        if let Some(pod) = &self.pod {
            endpoint["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": namespace});
        }
        endpoint
    }
}

/// A `discovery.k8s.io/v1` `EndpointSlice`, labelled with its Service.
#[derive(Clone, Debug)]
pub struct EndpointSlice {
    name: String,
    namespace: String,
    service: String,
    address_type: String,
    ports: Vec<ContainerPort>,
    endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// An empty IPv4 slice `name` for Service `service`.
    pub fn new(name: &str, service: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            service: service.to_owned(),
            address_type: "IPv4".to_owned(),
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// Sets `addressType` (`IPv4` or `IPv6`).
    #[must_use]
    pub fn address_type(mut self, address_type: &str) -> Self {
        address_type.clone_into(&mut self.address_type);
        self
    }

    /// Adds a port (its name matches the Service port's name).
    #[must_use]
    pub fn port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports.push(ContainerPort {
            name: Some(name.to_owned()),
            port,
            protocol: protocol.to_owned(),
        });
        self
    }

    /// Adds an endpoint.
    #[must_use]
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Renders the object.
    pub fn to_value(&self) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    "kubernetes.io/service-name": self.service,
                    "endpointslice.kubernetes.io/managed-by": "switchyard-tests",
                },
            },
            "addressType": self.address_type,
            "endpoints": self.endpoints.iter().map(|e| e.to_value(&self.namespace)).collect::<Vec<_>>(),
            "ports": self.ports.iter().map(|p| {
                let mut port = json!({"port": p.port, "protocol": p.protocol});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                port
            }).collect::<Vec<_>>(),
        })
    }
}

/// A v1 Node with its `InternalIP` addresses.
pub fn node(name: &str, internal_ips: &[IpAddr]) -> Value {
    let mut addresses: Vec<Value> = internal_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
        },
        "status": {"addresses": addresses},
    })
}

/// A v1 Node as [`node`] makes it, in zone `zone` ([`ZONE_LABEL`]).
pub fn node_in_zone(name: &str, internal_ips: &[IpAddr], zone: &str) -> Value {
    let mut value = node(name, internal_ips);
    value["metadata"]["labels"][ZONE_LABEL] = json!(zone);
    value
}
