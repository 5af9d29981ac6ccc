//! The ways a client reaches the measured Service, each from a client
//! namespace of its own, so that a connection only ever meets the rules of
//! the target it measures.
//!
//! ```text
//!  client ns per target                      node ns                 pod ns ×3
//!  direct      10.0.1.2  ── pod IPs ───────► forwards ──────────────► pod-server :8080
//!  ebpf        10.0.0.2  ── VIP, connect() rewritten by switchyard's
//!              (the topology's client, in its own cgroup) cgroup programs
//!  ipt-legacy  10.0.2.2  ── VIP, DNAT by kube-proxy's iptables rules (legacy)
//!  ipt-nft     10.0.3.2  ── VIP, DNAT by the same rules (iptables-nft)
//!  nftables    10.0.4.2  ── VIP, DNAT by kube-proxy's nftables rules
//! ```
//!
//! kube-proxy hooks the nat table's OUTPUT chain for connections made on the
//! node itself, so its rules are loaded in the client's namespace, where the
//! `connect()` happens, as on a node whose processes talk to Services.

use std::net::Ipv4Addr;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use switchyard_tests::{Netns, Topology};

use crate::rule_loader::Backend;

/// One way to reach the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The pod addresses, round-robin in the client: no Service at all.
    Direct,
    /// switchyard `--proxy-mode ebpf`: socket-level load balancing.
    SwitchyardEbpf,
    /// kube-proxy's iptables rules, loaded with iptables-legacy.
    IptablesLegacy,
    /// kube-proxy's iptables rules, loaded with iptables-nft.
    IptablesNft,
    /// kube-proxy's nftables rules.
    Nftables,
}

impl Target {
    /// Every target, in the order of a round.
    pub const ALL: [Target; 5] = [
        Target::Direct,
        Target::SwitchyardEbpf,
        Target::IptablesLegacy,
        Target::IptablesNft,
        Target::Nftables,
    ];

    /// The name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::SwitchyardEbpf => "switchyard-ebpf",
            Self::IptablesLegacy => "kube-proxy-iptables-legacy",
            Self::IptablesNft => "kube-proxy-iptables-nft",
            Self::Nftables => "kube-proxy-nftables",
        }
    }

    /// Parses [`Target::as_str`].
    pub fn parse(name: &str) -> Option<Target> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The program that loads its rules, for the kube-proxy shapes.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Self::IptablesLegacy => Some(Backend::IptablesLegacy),
            Self::IptablesNft => Some(Backend::IptablesNft),
            Self::Nftables => Some(Backend::Nftables),
            Self::Direct | Self::SwitchyardEbpf => None,
        }
    }

    /// The third octet of its client link (`10.0.<n>.0/24`); the eBPF
    /// target uses the topology's own client (`10.0.0.2`).
    fn link(self) -> u8 {
        match self {
            Self::SwitchyardEbpf => 0,
            Self::Direct => 1,
            Self::IptablesLegacy => 2,
            Self::IptablesNft => 3,
            Self::Nftables => 4,
        }
    }
}

/// A client namespace of one target, linked to the node by a veth pair of
/// its own. Deleting the namespace (on drop) deletes the pair.
#[derive(Debug)]
pub struct ClientNs {
    /// The namespace.
    pub ns: Netns,
    /// Its address.
    pub addr: Ipv4Addr,
}

impl ClientNs {
    /// Creates the client namespace of `target` (not the eBPF one: that is
    /// the topology's client) with routes to the Service CIDR and the pods
    /// via the node, and nothing else.
    pub fn create(topo: &Topology, target: Target) -> Result<Self> {
        let n = target.link();
        anyhow::ensure!(n > 0, "the eBPF target uses the topology's client");
        let ns = Netns::create(&format!("{}-{}", topo.prefix(), target.as_str()))?;
        let node = topo.node();
        let link = format!("c{n}");
        node.run([
            "ip",
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.run(["ip", "addr", "add", &format!("10.0.{n}.1/24"), "dev", &link])?;
        node.run(["ip", "link", "set", &link, "up"])?;
        let addr = Ipv4Addr::new(10, 0, n, 2);
        ns.run(["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.run(["ip", "link", "set", "eth0", "up"])?;
        let via = format!("10.0.{n}.1");
        for cidr in [crate::cluster::SERVICE_CIDR, "10.244.0.0/24"] {
            ns.run(["ip", "route", "add", cidr, "via", &via, "dev", "eth0"])?;
        }
        Ok(Self { ns, addr })
    }
}
