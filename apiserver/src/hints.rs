//! Topology hints, as Kubernetes' EndpointSlice controller writes them into `endpoints[].hints`
//! for the proxies on each node to read (KEP-2433, KEP-4444, KEP-3015):
//! - `spec.trafficDistribution: PreferClose` or `PreferSameZone`: every endpoint is hinted for
//!   its own zone (`forZones`);
//! - `PreferSameNode`: for its own node (`forNodes`) and its own zone;
//! - the annotation `service.kubernetes.io/topology-mode: Auto` (or the older
//!   `service.kubernetes.io/topology-aware-hints: auto`), which wins over
//!   `trafficDistribution`: every endpoint is hinted for its own zone when each zone's share of
//!   the endpoints is within 20% of its share of the nodes' CPU (allocatable, or one per node
//!   when a node does not say). Otherwise no hints are written, so every node uses every
//!   endpoint. (Kubernetes would instead hint some endpoints of a zone with too many for the
//!   zones with too few; that part is not done here.)
//!
//! An endpoint without a zone (its node has no `topology.kubernetes.io/zone` label) gets no
//! zone hint, which makes the proxies fall back to all endpoints, as in Kubernetes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, ForNode, ForZone};

pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// How far a zone's share of endpoints may be from its share of CPU for `Auto` to hint.
const OVERLOAD: f64 = 0.2;

/// Which hints a Service's endpoints get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hinting {
    None,
    /// Own zone.
    Zone,
    /// Own node and own zone.
    Node,
    /// Own zone, when the zones' endpoints are in proportion to their CPU.
    Auto,
}

/// What the Service asks for.
pub fn hinting(service: &Service) -> Hinting {
    let annotations = service.metadata.annotations.as_ref();
    let mode = annotations
        .and_then(|a| a.get(ANNOTATION_TOPOLOGY_MODE))
        .or_else(|| annotations.and_then(|a| a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS)));
    if mode.is_some_and(|m| m.eq_ignore_ascii_case("auto")) {
        return Hinting::Auto;
    }
    match service
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
    {
        Some("PreferClose" | "PreferSameZone") => Hinting::Zone,
        Some("PreferSameNode") => Hinting::Node,
        _ => Hinting::None,
    }
}

/// A node's weight for `Auto`: its allocatable CPU in millicores, if it says.
pub fn cpu_millis(node: &Node) -> Option<f64> {
    let quantity = node.status.as_ref()?.allocatable.as_ref()?.get("cpu")?;
    let text = quantity.0.trim();
    match text.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().ok(),
        None => text.parse::<f64>().ok().map(|cores| cores * 1000.0),
    }
    .filter(|v| v.is_finite() && *v > 0.0)
}

/// Each zone's weight from the nodes: their summed CPU, or their count when any node does not
/// say its CPU. Nodes without a zone are left out.
pub fn zone_weights<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<String, f64> {
    let zoned: Vec<(&str, Option<f64>)> = nodes
        .into_iter()
        .filter_map(|n| {
            let zone = n.metadata.labels.as_ref()?.get(LABEL_ZONE)?;
            Some((zone.as_str(), cpu_millis(n)))
        })
        .collect();
    let by_cpu = zoned.iter().all(|(_, cpu)| cpu.is_some());
    let mut weights = BTreeMap::new();
    for (zone, cpu) in zoned {
        let weight = if by_cpu { cpu.unwrap_or(1.0) } else { 1.0 };
        *weights.entry(zone.to_owned()).or_insert(0.0) += weight;
    }
    weights
}

/// Writes (or clears) the hints of a Service's endpoints, all of its slices together.
/// `zone_weights` is asked only for `Auto`.
pub fn set_hints<'a>(
    service: &Service,
    endpoints: impl IntoIterator<Item = &'a mut Endpoint>,
    zone_weights: impl FnOnce() -> BTreeMap<String, f64>,
) {
    let hinting = hinting(service);
    let mut endpoints: Vec<&mut Endpoint> = endpoints.into_iter().collect();
    let hinting = if hinting == Hinting::Auto && !proportional(&endpoints, &zone_weights()) {
        Hinting::None
    } else {
        hinting
    };
    for endpoint in &mut endpoints {
        let for_zones = match hinting {
            Hinting::None => None,
            _ => endpoint.zone.clone().map(|name| vec![ForZone { name }]),
        };
        let for_nodes = match hinting {
            Hinting::Node => endpoint
                .node_name
                .clone()
                .map(|name| vec![ForNode { name }]),
            _ => None,
        };
        endpoint.hints = (for_zones.is_some() || for_nodes.is_some()).then_some(EndpointHints {
            for_nodes,
            for_zones,
        });
    }
}

/// Whether every zone's share of the ready endpoints is within [`OVERLOAD`] of its share of
/// the weight, every ready endpoint has a zone, and there are at least as many as zones.
fn proportional(endpoints: &[&mut Endpoint], weights: &BTreeMap<String, f64>) -> bool {
    let total_weight: f64 = weights.values().sum();
    if weights.is_empty() || total_weight <= 0.0 {
        return false;
    }
    let ready = endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
    let mut per_zone: BTreeMap<&str, f64> = BTreeMap::new();
    let mut total = 0.0;
    for endpoint in ready {
        let Some(zone) = endpoint.zone.as_deref() else {
            return false;
        };
        if !weights.contains_key(zone) {
            return false; // a zone no node is in
        }
        *per_zone.entry(zone).or_insert(0.0) += 1.0;
        total += 1.0;
    }
    if total < weights.len() as f64 {
        return false;
    }
    weights.iter().all(|(zone, weight)| {
        let expected = total * weight / total_weight;
        let got = per_zone.get(zone.as_str()).copied().unwrap_or(0.0);
        (got - expected).abs() <= expected * OVERLOAD
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value, annotations: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    fn endpoint(zone: Option<&str>, node: &str, ready: bool) -> Endpoint {
        serde_json::from_value(json!({
            "addresses": ["10.244.0.1"],
            "conditions": {"ready": ready},
            "nodeName": node,
            "zone": zone,
        }))
        .unwrap()
    }

    fn hints_of(endpoints: &[Endpoint]) -> Vec<(Vec<String>, Vec<String>)> {
        endpoints
            .iter()
            .map(|e| {
                let h = e.hints.clone().unwrap_or_default();
                (
                    h.for_zones
                        .unwrap_or_default()
                        .into_iter()
                        .map(|z| z.name)
                        .collect(),
                    h.for_nodes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|n| n.name)
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn which_hinting_a_service_asks_for() {
        let none = json!({});
        for (spec, annotations, want) in [
            (json!({}), none.clone(), Hinting::None),
            (
                json!({"trafficDistribution": "PreferClose"}),
                none.clone(),
                Hinting::Zone,
            ),
            (
                json!({"trafficDistribution": "PreferSameZone"}),
                none.clone(),
                Hinting::Zone,
            ),
            (
                json!({"trafficDistribution": "PreferSameNode"}),
                none.clone(),
                Hinting::Node,
            ),
            (
                json!({"trafficDistribution": "Elsewhere"}),
                none.clone(),
                Hinting::None,
            ),
            (
                json!({"trafficDistribution": "PreferSameNode"}),
                json!({ANNOTATION_TOPOLOGY_MODE: "Auto"}),
                Hinting::Auto,
            ),
            (
                json!({}),
                json!({ANNOTATION_TOPOLOGY_AWARE_HINTS: "auto"}),
                Hinting::Auto,
            ),
            (
                json!({"trafficDistribution": "PreferClose"}),
                json!({ANNOTATION_TOPOLOGY_MODE: "Disabled"}),
                Hinting::Zone,
            ),
        ] {
            assert_eq!(
                hinting(&service(spec.clone(), annotations.clone())),
                want,
                "{spec} {annotations}"
            );
        }
    }

    #[test]
    fn prefer_close_hints_each_endpoint_for_its_zone() {
        let svc = service(json!({"trafficDistribution": "PreferClose"}), json!({}));
        let mut endpoints = vec![
            endpoint(Some("a"), "n1", true),
            endpoint(Some("b"), "n3", false),
            endpoint(None, "n4", true),
        ];
        set_hints(&svc, &mut endpoints, || unreachable!("not Auto"));
        assert_eq!(
            hints_of(&endpoints),
            vec![
                (vec!["a".into()], vec![]),
                (vec!["b".into()], vec![]),
                (vec![], vec![])
            ]
        );
        // The Service stops asking: the hints go.
        set_hints(
            &service(json!({}), json!({})),
            &mut endpoints,
            || unreachable!(),
        );
        assert!(endpoints.iter().all(|e| e.hints.is_none()));
    }

    #[test]
    fn prefer_same_node_hints_node_and_zone() {
        let svc = service(json!({"trafficDistribution": "PreferSameNode"}), json!({}));
        let mut endpoints = vec![endpoint(Some("a"), "n1", true)];
        set_hints(&svc, &mut endpoints, BTreeMap::new);
        assert_eq!(
            hints_of(&endpoints),
            vec![(vec!["a".into()], vec!["n1".into()])]
        );
    }

    #[test]
    fn auto_hints_only_endpoints_in_proportion_to_the_zones() {
        let svc = service(json!({}), json!({ANNOTATION_TOPOLOGY_MODE: "Auto"}));
        let weights = || BTreeMap::from([("a".to_owned(), 2000.0), ("b".to_owned(), 2000.0)]);
        let mut balanced = vec![
            endpoint(Some("a"), "n1", true),
            endpoint(Some("a"), "n1", true),
            endpoint(Some("b"), "n2", true),
            endpoint(Some("b"), "n2", true),
            endpoint(Some("b"), "n2", false),
        ];
        set_hints(&svc, &mut balanced, weights);
        assert!(balanced.iter().all(|e| e.hints.is_some()), "balanced");
        for (name, mut endpoints) in [
            (
                "three to one",
                vec![
                    endpoint(Some("a"), "n1", true),
                    endpoint(Some("a"), "n1", true),
                    endpoint(Some("a"), "n1", true),
                    endpoint(Some("b"), "n2", true),
                ],
            ),
            (
                "fewer endpoints than zones",
                vec![endpoint(Some("a"), "n1", true)],
            ),
            (
                "an endpoint without a zone",
                vec![
                    endpoint(Some("a"), "n1", true),
                    endpoint(Some("b"), "n2", true),
                    endpoint(None, "n3", true),
                ],
            ),
            (
                "a zone no node is in",
                vec![
                    endpoint(Some("a"), "n1", true),
                    endpoint(Some("c"), "n2", true),
                ],
            ),
        ] {
            set_hints(&svc, &mut endpoints, weights);
            assert!(endpoints.iter().all(|e| e.hints.is_none()), "{name}");
        }
    }

    #[test]
    fn zone_weights_use_cpu_when_every_node_says() {
        let node = |name: &str, zone: Option<&str>, cpu: Option<&str>| -> Node {
            let mut labels = serde_json::Map::new();
            if let Some(zone) = zone {
                labels.insert(LABEL_ZONE.into(), json!(zone));
            }
            let mut status = json!({});
            if let Some(cpu) = cpu {
                status = json!({"allocatable": {"cpu": cpu}});
            }
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": status,
            }))
            .unwrap()
        };
        let nodes = [
            node("n1", Some("a"), Some("4")),
            node("n2", Some("a"), Some("500m")),
            node("n3", Some("b"), Some("2")),
            node("n4", None, Some("8")),
        ];
        assert_eq!(
            zone_weights(&nodes),
            BTreeMap::from([("a".to_owned(), 4500.0), ("b".to_owned(), 2000.0)])
        );
        let counted = [
            node("n1", Some("a"), Some("4")),
            node("n2", Some("b"), None),
        ];
        assert_eq!(
            zone_weights(&counted),
            BTreeMap::from([("a".to_owned(), 1.0), ("b".to_owned(), 1.0)])
        );
    }
}
