//! Topology-aware routing as kube-proxy does it: the EndpointSlice controller writes hints
//! into each endpoint (`hints.forZones` for `trafficDistribution: PreferClose`/`PreferSameZone`
//! and `service.kubernetes.io/topology-mode: Auto`, `hints.forNodes` too for `PreferSameNode`),
//! and each node keeps the ready endpoints hinted for it, falling back to all of them whenever
//! a hint is missing or none is for it. The decision reads only the hints, never the Service,
//! so slices written by any controller (Kubernetes', switchyard's API server's, or the ones
//! the model derives from Pods) behave alike.

use super::Candidate;

/// Where the frontend is served: this node and its zone (`topology.kubernetes.io/zone` of
/// its Node, if it has one).
#[derive(Clone, Copy, Debug)]
pub(super) struct Here<'a> {
    pub node: &'a str,
    pub zone: Option<&'a str>,
}

/// Which ready endpoints a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// All of them (no usable hints).
    All,
    /// Those hinted for this node.
    SameNode,
    /// Those hinted for this node's zone.
    SameZone,
}

/// kube-proxy's choice: the node's own endpoints when every ready endpoint has a node hint
/// and one is for this node; else the zone's when every ready endpoint has a zone hint and
/// one is for this node's zone; else all. Endpoints that are not ready do not count.
pub(super) fn mode(candidates: &[Candidate], here: &Here<'_>) -> Mode {
    let ready = || candidates.iter().filter(|c| c.ready);
    if ready().next().is_none() {
        return Mode::All;
    }
    let all_have = |hints: fn(&Candidate) -> &[String]| ready().all(|c| !hints(c).is_empty());
    let one_for = |hints: fn(&Candidate) -> &[String], name: &str| {
        ready().any(|c| hints(c).iter().any(|h| h == name))
    };
    let node_hints: fn(&Candidate) -> &[String] = |c| &c.node_hints;
    let zone_hints: fn(&Candidate) -> &[String] = |c| &c.zone_hints;
    if all_have(node_hints) && one_for(node_hints, here.node) {
        return Mode::SameNode;
    }
    if let Some(zone) = here.zone
        && all_have(zone_hints)
        && one_for(zone_hints, zone)
    {
        return Mode::SameZone;
    }
    Mode::All
}

impl Mode {
    /// Whether a ready endpoint is used here in this mode.
    pub(super) fn admits(self, candidate: &Candidate, here: &Here<'_>) -> bool {
        match self {
            Mode::All => true,
            Mode::SameNode => candidate.node_hints.iter().any(|h| h == here.node),
            Mode::SameZone => here
                .zone
                .is_some_and(|zone| candidate.zone_hints.iter().any(|h| h == zone)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint: ready or not, with its zone and node hints.
    fn endpoint(n: u8, ready: bool, zones: &[&str], nodes: &[&str]) -> Candidate {
        Candidate {
            addr: std::net::IpAddr::from([10, 244, 0, n]),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            node: None,
            zone: None,
            zone_hints: zones.iter().map(|z| (*z).to_owned()).collect(),
            node_hints: nodes.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    const HERE: Here<'static> = Here {
        node: "node-1",
        zone: Some("zone-a"),
    };

    /// Each case: the endpoints, where the node is, the mode kube-proxy would pick and the
    /// endpoints (by number) it then uses among the ready ones.
    #[test]
    fn the_mode_and_the_endpoints_used_follow_kube_proxy() {
        let no_zone = Here {
            node: "node-1",
            zone: None,
        };
        /// Name, endpoints, where, the mode, the endpoints used.
        type Case<'a> = (&'a str, Vec<Candidate>, Here<'a>, Mode, Vec<u8>);
        let cases: Vec<Case<'_>> = vec![
            ("no endpoints", vec![], HERE, Mode::All, vec![]),
            (
                "no hints",
                vec![endpoint(1, true, &[], &[]), endpoint(2, true, &[], &[])],
                HERE,
                Mode::All,
                vec![1, 2],
            ),
            (
                "zone hints, one for this zone",
                vec![
                    endpoint(1, true, &["zone-a"], &[]),
                    endpoint(2, true, &["zone-b"], &[]),
                    endpoint(3, true, &["zone-a"], &[]),
                ],
                HERE,
                Mode::SameZone,
                vec![1, 3],
            ),
            (
                "a ready endpoint lacks a zone hint: all",
                vec![
                    endpoint(1, true, &["zone-a"], &[]),
                    endpoint(2, true, &[], &[]),
                ],
                HERE,
                Mode::All,
                vec![1, 2],
            ),
            (
                "an endpoint that is not ready and lacks a hint does not count",
                vec![
                    endpoint(1, true, &["zone-a"], &[]),
                    endpoint(2, true, &["zone-b"], &[]),
                    endpoint(3, false, &[], &[]),
                ],
                HERE,
                Mode::SameZone,
                vec![1],
            ),
            (
                "no ready endpoint for this zone: all",
                vec![
                    endpoint(1, false, &["zone-a"], &[]),
                    endpoint(2, true, &["zone-b"], &[]),
                ],
                HERE,
                Mode::All,
                vec![2],
            ),
            (
                "the node has no zone label: all",
                vec![
                    endpoint(1, true, &["zone-a"], &[]),
                    endpoint(2, true, &["zone-b"], &[]),
                ],
                no_zone,
                Mode::All,
                vec![1, 2],
            ),
            (
                "an endpoint hinted for two zones",
                vec![
                    endpoint(1, true, &["zone-a", "zone-b"], &[]),
                    endpoint(2, true, &["zone-b"], &[]),
                ],
                HERE,
                Mode::SameZone,
                vec![1],
            ),
            (
                "node hints, one for this node",
                vec![
                    endpoint(1, true, &["zone-a"], &["node-1"]),
                    endpoint(2, true, &["zone-a"], &["node-2"]),
                ],
                HERE,
                Mode::SameNode,
                vec![1],
            ),
            (
                "node hints, none for this node: the zone rule",
                vec![
                    endpoint(1, true, &["zone-a"], &["node-2"]),
                    endpoint(2, true, &["zone-b"], &["node-3"]),
                ],
                HERE,
                Mode::SameZone,
                vec![1],
            ),
            (
                "node hints, none for this node nor its zone: all",
                vec![
                    endpoint(1, true, &["zone-b"], &["node-2"]),
                    endpoint(2, true, &["zone-b"], &["node-3"]),
                ],
                HERE,
                Mode::All,
                vec![1, 2],
            ),
            (
                "the endpoint of this node is not ready: the zone rule",
                vec![
                    endpoint(1, false, &["zone-a"], &["node-1"]),
                    endpoint(2, true, &["zone-a"], &["node-2"]),
                    endpoint(3, true, &["zone-b"], &["node-3"]),
                ],
                HERE,
                Mode::SameZone,
                vec![2],
            ),
            (
                "a ready endpoint lacks a node hint: the zone rule",
                vec![
                    endpoint(1, true, &["zone-a"], &["node-1"]),
                    endpoint(2, true, &["zone-a"], &[]),
                ],
                HERE,
                Mode::SameZone,
                vec![1, 2],
            ),
        ];
        for (name, candidates, here, want_mode, want_used) in cases {
            let got = mode(&candidates, &here);
            assert_eq!(got, want_mode, "{name}");
            let used: Vec<u8> = candidates
                .iter()
                .filter(|c| c.ready && got.admits(c, &here))
                .map(|c| match c.addr {
                    std::net::IpAddr::V4(v4) => v4.octets()[3],
                    std::net::IpAddr::V6(_) => unreachable!(),
                })
                .collect();
            assert_eq!(used, want_used, "{name}");
        }
    }
}
