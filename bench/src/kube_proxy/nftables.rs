//! The nftables proxier's rules (kube-proxy ≥ 1.31): the transactions its
//! `syncProxyRules` hands to `nft -f`, for ClusterIP Services with Cluster
//! traffic policy, no session affinity, `--cluster-cidr` set, NodePort
//! addresses left at "all".
//!
//! Everything lives in table `ip kube-proxy`. A packet to a ClusterIP goes
//! `nat-output` → `services` → one lookup in the verdict map `service-ips`
//! (`ip daddr . meta l4proto . th dport vmap @service-ips`) → the Service's
//! chain, which picks an endpoint with `numgen random mod N vmap { ... }` →
//! the endpoint's chain (`dnat to`).
//!
//! - **Full sync**: the table's base setup (`setupNFTables`: base chains
//!   added and flushed, the sets and maps flushed), then every Service's and
//!   endpoint's chain added, flushed and filled, and every element added.
//! - **Partial sync**: only the chains of the Services that changed (added,
//!   flushed, filled); map elements that did not change are not rewritten;
//!   an endpoint chain no longer used is flushed (kube-proxy deletes it in a
//!   later sync).

use std::fmt::Write as _;

use super::{MASQUERADE_MARK, hash_prefix};
use crate::cluster::{Cluster, NAMESPACE, PORT_NAME, SERVICE_CIDR, ServiceSpec};

/// The table kube-proxy owns.
pub const TABLE: &str = "ip kube-proxy";

fn chain_base(name: &str) -> String {
    format!("{}-{name}", hash_prefix(name, 8))
}

/// `service-<hash>-default/svc-1/tcp/http`.
pub fn service_chain(spec: &ServiceSpec) -> String {
    format!(
        "service-{}",
        chain_base(&format!("{NAMESPACE}/{}/tcp/{PORT_NAME}", spec.name))
    )
}

/// `endpoint-<hash>-default/svc-1/tcp/http__10.225.0.1/8080`.
pub fn endpoint_chain(spec: &ServiceSpec, index: usize) -> String {
    format!(
        "endpoint-{}",
        chain_base(&format!(
            "{NAMESPACE}/{}/tcp/{PORT_NAME}__{}",
            spec.name,
            spec.endpoint(index).replace(':', "/")
        ))
    )
}

/// Which Services' chains a sync writes.
#[derive(Clone, Debug)]
pub enum Sync {
    /// The first sync of a fresh kube-proxy: base setup (with the one-time
    /// add-and-delete of the base chains) and everything.
    Initial,
    /// A later full sync: base setup and everything.
    Full,
    /// Only Service `index`'s chains. `stale` names the endpoint of that
    /// Service that just left (its chain is flushed), if one did.
    Partial {
        /// The Service that changed.
        index: usize,
        /// The endpoint chain to flush.
        stale: Option<String>,
    },
}

/// kube-proxy's base chains. It names the priorities `dstnat-10`,
/// `dstnat+10`, `dstnat` and `srcnat`; nft 1.0.6 accepts those names on the
/// prerouting and postrouting hooks only, so they are written as the numbers
/// they stand for (dstnat is -100, srcnat 100), which is what the kernel
/// stores either way.
const BASE_CHAINS: [(&str, &str, &str, &str); 8] = [
    ("filter-prerouting", "filter", "prerouting", "-110"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

fn ensure_chain(out: &mut String, created: &mut Vec<&'static str>, chain: &'static str) {
    if created.contains(&chain) {
        return;
    }
    created.push(chain);
    let _ = writeln!(
        out,
        "add chain {TABLE} {chain}\nflush chain {TABLE} {chain}"
    );
}

/// `setupNFTables`: the table, its base chains, top-level chains, sets and
/// maps, with the sets and maps flushed.
fn setup(out: &mut String, initial: bool) {
    let _ = writeln!(
        out,
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    );
    if initial {
        for (name, ..) in BASE_CHAINS {
            let _ = writeln!(out, "add chain {TABLE} {name}\ndelete chain {TABLE} {name}");
        }
    }
    for (name, kind, hook, priority) in BASE_CHAINS {
        let _ = writeln!(
            out,
            "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}\nflush chain {TABLE} {name}"
        );
    }
    let mut created = Vec::new();
    for (dst, src, extra) in JUMP_CHAINS {
        ensure_chain(out, &mut created, dst);
        let _ = writeln!(out, "add rule {TABLE} {src} {extra}jump {dst}");
    }
    for chain in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        ensure_chain(out, &mut created, chain);
    }
    let _ = writeln!(
        out,
        "add rule {TABLE} mark-for-masquerade mark set mark or {MASQUERADE_MARK}\n\
         add rule {TABLE} masquerading mark and {MASQUERADE_MARK} == 0 return\n\
         add rule {TABLE} masquerading mark set mark xor {MASQUERADE_MARK}\n\
         add rule {TABLE} masquerading masquerade fully-random\n\
         add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {TABLE} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         delete set {TABLE} nodeport-ips\n\
         add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}\n\
         flush chain {TABLE} reject-chain\n\
         add rule {TABLE} reject-chain reject\n\
         add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule {TABLE} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    );
    ensure_chain(out, &mut created, "firewall-check");
    let _ = writeln!(
        out,
        "add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
         flush set {TABLE} cluster-ips\n\
         flush map {TABLE} service-ips\n\
         flush map {TABLE} firewall-ips\n\
         flush map {TABLE} no-endpoint-services\n\
         flush map {TABLE} no-endpoint-nodeports\n\
         flush map {TABLE} service-nodeports"
    );
}

/// The chains of one Service: its own (masquerade mark for traffic from
/// outside the pod CIDR, then the random pick) and one per endpoint.
fn service_chains(out: &mut String, spec: &ServiceSpec, cluster_cidr: &str) {
    let svc = service_chain(spec);
    let endpoints: Vec<String> = (0..spec.endpoints.len())
        .map(|e| endpoint_chain(spec, e))
        .collect();
    for chain in &endpoints {
        let _ = writeln!(
            out,
            "add chain {TABLE} {chain}\nflush chain {TABLE} {chain}"
        );
    }
    let _ = writeln!(out, "add chain {TABLE} {svc}\nflush chain {TABLE} {svc}");
    let _ = writeln!(
        out,
        "add rule {TABLE} {svc} ip daddr {} tcp dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
        spec.vip,
        crate::cluster::SERVICE_PORT
    );
    let _ = write!(
        out,
        "add rule {TABLE} {svc} numgen random mod {} vmap {{ ",
        endpoints.len()
    );
    for (e, chain) in endpoints.iter().enumerate() {
        let sep = if e + 1 < endpoints.len() { " , " } else { " " };
        let _ = write!(out, "{e} : goto {chain}{sep}");
    }
    out.push_str("}\n");
    for (e, chain) in endpoints.iter().enumerate() {
        let _ = writeln!(
            out,
            "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade\n\
             add rule {TABLE} {chain} meta l4proto tcp dnat to {}",
            spec.endpoints[e],
            spec.endpoint(e)
        );
    }
}

fn elements(out: &mut String, spec: &ServiceSpec) {
    let _ = writeln!(
        out,
        "add element {TABLE} cluster-ips {{ {} }}\n\
         add element {TABLE} service-ips {{ {} . tcp . {} : goto {} }}",
        spec.vip,
        spec.vip,
        crate::cluster::SERVICE_PORT,
        service_chain(spec)
    );
}

/// The `nft -f` input of one sync of `cluster`.
pub fn transaction(cluster: &Cluster, sync: &Sync) -> String {
    let mut out = String::with_capacity(match sync {
        Sync::Partial { .. } => 8 * 1024,
        _ => 400 * (cluster.services + cluster.endpoint_count() * 2),
    });
    match sync {
        Sync::Initial | Sync::Full => {
            setup(&mut out, matches!(sync, Sync::Initial));
            for spec in cluster.all() {
                if !spec.endpoints.is_empty() {
                    service_chains(&mut out, &spec, &cluster.cluster_cidr);
                    elements(&mut out, &spec);
                }
            }
        }
        Sync::Partial { index, stale } => {
            service_chains(&mut out, &cluster.service(*index), &cluster.cluster_cidr);
            if let Some(chain) = stale {
                let _ = writeln!(out, "flush chain {TABLE} {chain}");
            }
        }
    }
    out
}

/// Removes everything kube-proxy made (`CleanupLeftovers`).
pub fn cleanup() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn service_and_endpoint_chains_are_named_and_filled_like_kube_proxys() {
        let cluster = Cluster::new(
            3,
            10,
            (10..13).map(|o| Ipv4Addr::new(10, 244, 0, o)).collect(),
        );
        let text = transaction(&cluster, &Sync::Initial);
        let web = cluster.service(cluster.measured_index);
        let svc = service_chain(&web);
        assert!(svc.starts_with("service-") && svc.ends_with("-default/web/tcp/http"));
        let ep0 = endpoint_chain(&web, 0);
        assert!(
            ep0.ends_with("-default/web/tcp/http__10.244.0.10/8080"),
            "{ep0}"
        );
        for line in [
            format!(
                "add rule ip kube-proxy {svc} ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade"
            ),
            format!(
                "add rule ip kube-proxy {svc} numgen random mod 3 vmap {{ 0 : goto {ep0} , 1 : goto {} , 2 : goto {} }}",
                endpoint_chain(&web, 1),
                endpoint_chain(&web, 2)
            ),
            format!("add rule ip kube-proxy {ep0} meta l4proto tcp dnat to 10.244.0.10:8080"),
            format!(
                "add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}"
            ),
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips"
                .to_owned(),
            "add rule ip kube-proxy nat-output jump services".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn a_partial_sync_rewrites_one_service_and_flushes_the_stale_endpoint() {
        let mut cluster = Cluster::new(
            100,
            10,
            (10..13).map(|o| Ipv4Addr::new(10, 244, 0, o)).collect(),
        );
        let index = cluster.changed_index();
        let stale = endpoint_chain(&cluster.service(index), 9);
        cluster.trimmed = Some(index);
        let text = transaction(
            &cluster,
            &Sync::Partial {
                index,
                stale: Some(stale.clone()),
            },
        );
        assert_eq!(text.matches("add chain").count(), 10);
        assert!(text.contains("numgen random mod 9 vmap"));
        assert!(text.ends_with(&format!("flush chain ip kube-proxy {stale}\n")));
        assert!(!text.contains("add element"));
    }
}
