//! Deriving `EndpointSlices` from Pods, the way Kubernetes' `EndpointSlice` controller does, for
//! sources that deliver Pods but no slices (the manifest folder).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{LABEL_SERVICE_NAME, LABEL_ZONE};

/// A Service port resolved on one Pod: (port name, protocol, number).
type ResolvedPort = (String, String, i32);

/// Whether the Service's selector picks the Pod. A Service without a selector (or with an
/// empty one) selects nothing: its endpoints are managed by hand.
pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if selector.is_empty() {
        return false;
    }
    if service.metadata.namespace.as_deref().unwrap_or("default")
        != pod.metadata.namespace.as_deref().unwrap_or("default")
    {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
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

/// Resolves a Service port's targetPort on one Pod: a number as is (the Service port when
/// unset), a name through the Pod's container ports of the same protocol.
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

/// The slices the `EndpointSlice` controller would write for this Service: one per address family
/// and set of resolved ports (Pods that resolve a named port differently land in different
/// slices), with ready, serving and terminating taken from the Pod, and node and zone from the
/// Pod's node.
pub fn derive_endpoint_slices<'a, F>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
    node: F,
) -> Vec<EndpointSlice>
where
    F: Fn(&str) -> Option<&'a Node>,
{
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());

    // (address type, resolved ports) -> endpoints
    let mut groups: BTreeMap<(&'static str, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if !selects(service, pod) {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let ports: Vec<(String, String, i32)> = spec
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
        let zone = node_name
            .as_deref()
            .and_then(&node)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(LABEL_ZONE))
            .cloned();
        for ip in pod_ips(pod) {
            let address_type = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
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
                    target_ref: None,
                    ..Endpoint::default()
                });
        }
    }

    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((address_type, ports), endpoints))| EndpointSlice {
            address_type: address_type.to_owned(),
            endpoints: Some(endpoints),
            metadata: ObjectMeta {
                name: Some(format!("{service_name}-derived-{i}")),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(
                    LABEL_SERVICE_NAME.to_owned(),
                    service_name.clone(),
                )])),
                ..ObjectMeta::default()
            },
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, protocol, port)| EndpointPort {
                        name: Some(name),
                        protocol: Some(protocol),
                        port: Some(port),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect()
}
