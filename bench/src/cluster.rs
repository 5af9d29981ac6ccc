//! The synthetic cluster the socket-LB benchmark programs: `services`
//! ClusterIP Services of one TCP port each, every one with
//! `endpoints_per_service` endpoints, and among them one measured Service
//! whose endpoints are the real pods.
//!
//! Every target is given the same cluster: switchyard as manifests (a
//! selectorless Service and its `EndpointSlice` per Service), kube-proxy's
//! iptables and nftables shapes as rule text rendered from it
//! ([`crate::kube_proxy`]). The fake endpoints are never connected to.

use std::net::Ipv4Addr;

use serde_json::Value;
use switchyard_tests::objects;

/// The measured Service's cluster IP, as in the userspace comparison.
pub const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Every Service's port.
pub const SERVICE_PORT: u16 = 80;
/// Every endpoint's port (what `pod-server` listens on).
pub const TARGET_PORT: u16 = switchyard_tests::topology::POD_HTTP_PORT;
/// The Service port's name (`ns/name:http` in kube-proxy's names).
pub const PORT_NAME: &str = "http";
/// The namespace of every Service.
pub const NAMESPACE: &str = "default";
/// The measured Service's name.
pub const MEASURED_NAME: &str = "web";
/// The cluster's pod CIDR by default, as kube-proxy's `--cluster-cidr`: it
/// decides whose connections kube-proxy masquerades (`! -s CIDR -j
/// KUBE-MARK-MASQ`). It holds the real pods (`10.244.0.0/24`), the fake
/// endpoints (`10.225.0.0` upward) and the benchmark's clients (`10.0.*`), so
/// the clients are treated as pods talking to a Service: not masqueraded.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.0.0.0/8";
/// A cluster CIDR that holds every pod but not the clients: kube-proxy then
/// masquerades them, as it does for a node's own (host-network) processes.
pub const HOST_CLIENTS_CLUSTER_CIDR: &str = "10.224.0.0/11";

/// Whether `cidr` (`a.b.c.d/n`) holds `ip`; `false` for a malformed CIDR.
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    if len > 32 {
        return false;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(net) & mask == u32::from(ip) & mask
}
/// The Service CIDR (kube-proxy's nftables mode drops traffic to unallocated
/// addresses in it).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// At most this many Services fit the address plan.
pub const MAX_SERVICES: usize = 60_000;

/// One Service port and its endpoints, as every target sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name (in namespace [`NAMESPACE`]).
    pub name: String,
    /// Its cluster IP.
    pub vip: Ipv4Addr,
    /// Its endpoints' addresses (all on [`TARGET_PORT`]).
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServiceSpec {
    /// kube-proxy's `ServicePortName` string: `default/svc-1:http`.
    pub fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:{PORT_NAME}", self.name)
    }

    /// `ip:port` of endpoint `index`.
    pub fn endpoint(&self, index: usize) -> String {
        format!("{}:{TARGET_PORT}", self.endpoints[index])
    }
}

/// `services` Services with `endpoints_per_service` endpoints each; Service
/// `measured_index` is the measured one, with the real pods as endpoints.
/// `trimmed`, when set, is a Service whose last endpoint is gone: the
/// one-endpoint change of the control-plane measurement flips it.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// How many Services.
    pub services: usize,
    /// Endpoints of every Service but the measured one.
    pub endpoints_per_service: usize,
    /// The real pods, the measured Service's endpoints.
    pub pods: Vec<Ipv4Addr>,
    /// Where the measured Service sits in the order of Services (kube-proxy's
    /// iptables `KUBE-SERVICES` chain is matched top to bottom, so the
    /// position matters there; the middle is what a random order gives on
    /// average).
    pub measured_index: usize,
    /// The Service whose last endpoint is currently removed, if any.
    pub trimmed: Option<usize>,
    /// kube-proxy's `--cluster-cidr` (see [`DEFAULT_CLUSTER_CIDR`]).
    pub cluster_cidr: String,
}

impl Cluster {
    /// `services` Services of `endpoints_per_service` endpoints, the measured
    /// one (served by `pods`) in the middle.
    pub fn new(services: usize, endpoints_per_service: usize, pods: Vec<Ipv4Addr>) -> Self {
        assert!(
            (1..=MAX_SERVICES).contains(&services),
            "1 to {MAX_SERVICES} Services fit the address plan"
        );
        Self {
            services,
            endpoints_per_service,
            pods,
            measured_index: services / 2,
            trimmed: None,
            cluster_cidr: DEFAULT_CLUSTER_CIDR.to_owned(),
        }
    }

    /// Service `index` (`0..services`).
    pub fn service(&self, index: usize) -> ServiceSpec {
        let mut spec = if index == self.measured_index {
            ServiceSpec {
                name: MEASURED_NAME.to_owned(),
                vip: MEASURED_VIP,
                endpoints: self.pods.clone(),
            }
        } else {
            ServiceSpec {
                name: format!("svc-{index}"),
                vip: filler_vip(index),
                endpoints: (0..self.endpoints_per_service)
                    .map(|e| fake_endpoint(index * self.endpoints_per_service + e))
                    .collect(),
            }
        };
        if self.trimmed == Some(index) {
            spec.endpoints.pop();
        }
        spec
    }

    /// Every Service, in order.
    pub fn all(&self) -> impl Iterator<Item = ServiceSpec> + '_ {
        (0..self.services).map(|index| self.service(index))
    }

    /// The index of a Service that is not the measured one, for changes.
    pub fn changed_index(&self) -> usize {
        if self.measured_index == 0 {
            self.services - 1
        } else {
            0
        }
        .min(self.services - 1)
    }

    /// Total endpoints over all Services.
    pub fn endpoint_count(&self) -> usize {
        self.all().map(|s| s.endpoints.len()).sum()
    }
}

/// `10.96.1.1` upward, 250 per third octet: never `10.96.0.10`.
fn filler_vip(index: usize) -> Ipv4Addr {
    let third = u8::try_from(1 + index / 250).expect("MAX_SERVICES fits the third octet");
    let fourth = u8::try_from(index % 250 + 1).expect("below 251");
    Ipv4Addr::new(10, 96, third, fourth)
}

/// Fake endpoint `k`: `10.225.0.1` upward, unique per endpoint, inside the
/// cluster CIDR and far from the real pods.
fn fake_endpoint(k: usize) -> Ipv4Addr {
    let n = u32::try_from(k).expect("endpoint index fits 32 bits") + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 225, 0, 0)) + n)
}

/// The manifests of Service `spec`: a selectorless Service and its
/// `EndpointSlice`, as the EndpointSlice controller would write it.
pub fn manifests(spec: &ServiceSpec) -> [Value; 2] {
    let service = objects::Service::new(&spec.name)
        .cluster_ips(&[&spec.vip.to_string()])
        .port(objects::ServicePort::tcp(
            PORT_NAME,
            SERVICE_PORT,
            TARGET_PORT,
        ))
        .to_value();
    let mut slice = objects::EndpointSlice::new(&format!("{}-abcde", spec.name), &spec.name).port(
        PORT_NAME,
        TARGET_PORT,
        "TCP",
    );
    for addr in &spec.endpoints {
        slice = slice.endpoint(objects::Endpoint::new(std::net::IpAddr::V4(*addr)));
    }
    [service, slice.to_value()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        (10..13).map(|o| Ipv4Addr::new(10, 244, 0, o)).collect()
    }

    #[test]
    fn addresses_are_unique_and_the_measured_service_uses_the_pods() {
        let cluster = Cluster::new(50_000, 10, pods());
        let mut vips = std::collections::BTreeSet::new();
        let mut endpoints = std::collections::BTreeSet::new();
        for spec in cluster.all() {
            assert!(vips.insert(spec.vip), "duplicate VIP {}", spec.vip);
            if spec.name != MEASURED_NAME {
                for ep in &spec.endpoints {
                    assert!(endpoints.insert(*ep), "duplicate endpoint {ep}");
                }
            }
        }
        let measured = cluster.service(cluster.measured_index);
        assert_eq!(measured.vip, MEASURED_VIP);
        assert_eq!(measured.endpoints, pods());
        assert_eq!(cluster.endpoint_count(), 49_999 * 10 + 3);
        assert_eq!(fake_endpoint(0), Ipv4Addr::new(10, 225, 0, 1));
        assert_eq!(fake_endpoint(499_999), Ipv4Addr::new(10, 232, 161, 32));
    }

    #[test]
    fn cluster_cidrs_hold_the_pods_and_only_the_default_holds_the_clients() {
        let client = Ipv4Addr::new(10, 0, 2, 2);
        let pod = Ipv4Addr::new(10, 244, 0, 10);
        assert!(cidr_contains(DEFAULT_CLUSTER_CIDR, client));
        assert!(cidr_contains(DEFAULT_CLUSTER_CIDR, pod));
        assert!(!cidr_contains(HOST_CLIENTS_CLUSTER_CIDR, client));
        assert!(cidr_contains(HOST_CLIENTS_CLUSTER_CIDR, pod));
        assert!(cidr_contains(
            HOST_CLIENTS_CLUSTER_CIDR,
            fake_endpoint(499_999)
        ));
        assert!(!cidr_contains(HOST_CLIENTS_CLUSTER_CIDR, MEASURED_VIP));
        assert!(!cidr_contains("nonsense", client));
    }

    #[test]
    fn trimming_drops_the_last_endpoint_of_one_service() {
        let mut cluster = Cluster::new(10, 10, pods());
        let index = cluster.changed_index();
        assert_ne!(index, cluster.measured_index);
        let before = cluster.service(index);
        cluster.trimmed = Some(index);
        let after = cluster.service(index);
        assert_eq!(after.endpoints, before.endpoints[..9]);
        assert_eq!(cluster.service(index + 1).endpoints.len(), 10);
    }
}

/// `--bpf-max-*` flags that size a daemon's eBPF maps for `frontends` frontends and `backends`
/// distinct backends (as many slots), as an operator would: each with a quarter to spare,
/// rounded up to a power of two, and passed only where that exceeds the daemon's default
/// (65,536 frontends, 262,144 backends, 1,048,576 slots).
pub fn bpf_map_args(frontends: usize, backends: usize) -> Vec<String> {
    [
        ("--bpf-max-frontends", frontends, 65_536),
        ("--bpf-max-backends", backends, 262_144),
        ("--bpf-max-slots", backends, 1_048_576),
    ]
    .into_iter()
    .filter_map(|(flag, n, default)| {
        let size = (n + n / 4).next_power_of_two();
        (size > default).then(|| format!("{flag}={size}"))
    })
    .collect()
}

#[cfg(test)]
mod map_args_tests {
    use super::bpf_map_args;

    #[test]
    fn only_maps_beyond_the_defaults_are_sized() {
        assert!(bpf_map_args(10_000, 100_000).is_empty());
        assert_eq!(
            bpf_map_args(50_000, 499_993),
            ["--bpf-max-backends=1048576"]
        );
        assert_eq!(
            bpf_map_args(100_000, 1_000_000),
            [
                "--bpf-max-frontends=131072",
                "--bpf-max-backends=2097152",
                "--bpf-max-slots=2097152"
            ]
        );
    }
}
