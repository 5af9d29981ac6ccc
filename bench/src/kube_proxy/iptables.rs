//! The iptables proxier's rules: what `syncProxyRules` feeds to
//! `iptables-restore --noflush --counters` for ClusterIP Services with
//! Cluster traffic policy, no session affinity, `--cluster-cidr` set (so
//! traffic from outside the pod CIDR is marked for masquerade), NodePort
//! addresses left at "all" and localhost NodePorts on (the defaults).
//!
//! - **Full sync**: every chain and rule. kube-proxy writes it at start and
//!   whenever it lost track (a failed restore, a node change).
//! - **Partial sync** (kube-proxy ≥ 1.26, `MinimizeIPTablesRestore`): the
//!   top-level chains in full (`KUBE-SERVICES` is flushed and rewritten with
//!   one rule per Service port every time) plus the `KUBE-SVC-`/`KUBE-SEP-`
//!   chains of the Services that changed. Stale `KUBE-SEP-` chains are left
//!   alone (in a large cluster they are deleted at most once per sync period).
//!
//! The jump rules from the built-in chains (`-A OUTPUT -j KUBE-SERVICES` and
//! the others) are added once, outside the restore, as kube-proxy does with
//! `iptables -I`: [`hooks`].

use std::fmt::Write as _;

use super::{MASQUERADE_MARK, hash_prefix};
use crate::cluster::{Cluster, SERVICE_PORT, ServiceSpec};

/// Above this many endpoints in all, kube-proxy drops the per-endpoint
/// comments (`largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// `KUBE-SVC-<hash>` of a Service port.
pub fn service_chain(spec: &ServiceSpec) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_prefix(&format!("{}tcp", spec.port_name()), 16)
    )
}

/// `KUBE-SEP-<hash>` of endpoint `index` of a Service port.
pub fn endpoint_chain(spec: &ServiceSpec, index: usize) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(
            &format!("{}tcp{}", spec.port_name(), spec.endpoint(index)),
            16
        )
    )
}

/// The jump rules kube-proxy ensures in the built-in chains before its first
/// restore (`iptablesJumpChains` and the kubelet's `KUBE-FIREWALL`), as an
/// `iptables-restore --noflush` input.
pub fn hooks() -> String {
    let filter = [
        (
            "INPUT",
            "-m conntrack --ctstate NEW",
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW",
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "INPUT",
            "",
            "kubernetes health check service ports",
            "KUBE-NODEPORTS",
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW",
            "kubernetes service portals",
            "KUBE-SERVICES",
        ),
        (
            "OUTPUT",
            "-m conntrack --ctstate NEW",
            "kubernetes service portals",
            "KUBE-SERVICES",
        ),
        ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
        (
            "INPUT",
            "-m conntrack --ctstate NEW",
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "OUTPUT",
            "-m conntrack --ctstate NEW",
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW",
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        ("INPUT", "", "", "KUBE-FIREWALL"),
        ("OUTPUT", "", "", "KUBE-FIREWALL"),
    ];
    let nat = [
        ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
        ("PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
        (
            "POSTROUTING",
            "kubernetes postrouting rules",
            "KUBE-POSTROUTING",
        ),
    ];
    let mut out = String::from("*filter\n");
    for chain in FILTER_CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for (builtin, extra, comment, target) in filter {
        let _ = write!(out, "-I {builtin} 1");
        if !extra.is_empty() {
            let _ = write!(out, " {extra}");
        }
        if !comment.is_empty() {
            let _ = write!(out, " -m comment --comment \"{comment}\"");
        }
        let _ = writeln!(out, " -j {target}");
    }
    out.push_str("COMMIT\n*nat\n");
    for chain in NAT_TOP_CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for (builtin, comment, target) in nat {
        let _ = writeln!(
            out,
            "-I {builtin} 1 -m comment --comment \"{comment}\" -j {target}"
        );
    }
    out.push_str("COMMIT\n");
    out
}

const FILTER_CHAINS: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
];

const NAT_TOP_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// Which Services' own chains a sync writes.
#[derive(Clone, Copy, Debug)]
pub enum Sync {
    /// Every Service's chains.
    Full,
    /// Only Service `index`'s chains (the top-level chains are always whole).
    Partial(usize),
}

/// The `iptables-restore` input of one sync of `cluster`.
pub fn restore_input(cluster: &Cluster, sync: Sync) -> String {
    let large = cluster.endpoint_count() > LARGE_CLUSTER_ENDPOINTS;
    // Roughly 200 bytes per rule; a sizeable ruleset is tens of megabytes.
    let mut chains = String::with_capacity(64 * (cluster.services + 8));
    let mut rules = String::with_capacity(match sync {
        Sync::Full => 200 * (cluster.services + cluster.endpoint_count() * 3),
        Sync::Partial(_) => 200 * (cluster.services + 64),
    });
    for chain in NAT_TOP_CHAINS {
        let _ = writeln!(chains, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN"
    );
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"
    );
    rules.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let _ = writeln!(
        rules,
        "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"
    );
    for index in 0..cluster.services {
        let spec = cluster.service(index);
        let svc_chain = service_chain(&spec);
        let name = spec.port_name();
        let cluster_ip = format!(
            "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} --dport {SERVICE_PORT}",
            spec.vip
        );
        if spec.endpoints.is_empty() {
            // Rejected in the filter table instead; the cluster never has such a Service.
            continue;
        }
        let _ = writeln!(rules, "-A KUBE-SERVICES {cluster_ip} -j {svc_chain}");
        let write_chains = match sync {
            Sync::Full => true,
            Sync::Partial(changed) => changed == index,
        };
        if !write_chains {
            continue;
        }
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {svc_chain} {cluster_ip} ! -s {} -j KUBE-MARK-MASQ",
            cluster.cluster_cidr
        );
        let n = spec.endpoints.len();
        let endpoint_chains: Vec<String> = (0..n).map(|e| endpoint_chain(&spec, e)).collect();
        for (e, sep) in endpoint_chains.iter().enumerate() {
            let _ = write!(rules, "-A {svc_chain}");
            if !large {
                let _ = write!(
                    rules,
                    " -m comment --comment \"{name} -> {}\"",
                    spec.endpoint(e)
                );
            }
            if e + 1 < n {
                let _ = write!(
                    rules,
                    " -m statistic --mode random --probability {}",
                    probability(n - e)
                );
            }
            let _ = writeln!(rules, " -j {sep}");
        }
        for (e, sep) in endpoint_chains.iter().enumerate() {
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let comment = if large {
                String::new()
            } else {
                format!(" -m comment --comment {name}")
            };
            let _ = writeln!(
                rules,
                "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ",
                spec.endpoints[e]
            );
            let _ = writeln!(
                rules,
                "-A {sep}{comment} -m tcp -p tcp -j DNAT --to-destination {}",
                spec.endpoint(e)
            );
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    let mut out = String::with_capacity(chains.len() + rules.len() + 1024);
    out.push_str("*filter\n");
    for chain in FILTER_CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
    );
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n*nat\n",
    );
    out.push_str(&chains);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// `fmt.Sprintf("%0.10f", 1.0/float64(n))`.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cluster(services: usize) -> Cluster {
        Cluster::new(
            services,
            10,
            (10..13).map(|o| Ipv4Addr::new(10, 244, 0, o)).collect(),
        )
    }

    #[test]
    fn a_small_cluster_has_kube_proxys_lines_with_comments() {
        let cluster = cluster(3);
        let text = restore_input(&cluster, Sync::Full);
        let web = cluster.service(cluster.measured_index);
        let svc = service_chain(&web);
        let sep0 = endpoint_chain(&web, 0);
        let want = [
            format!(
                "-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j {svc}"
            ),
            format!(
                "-A {svc} -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {svc} -m comment --comment \"default/web:http -> 10.244.0.10:8080\" -m statistic --mode random --probability 0.3333333333 -j {sep0}"
            ),
            format!(
                "-A {svc} -m comment --comment \"default/web:http -> 10.244.0.12:8080\" -j {}",
                endpoint_chain(&web, 2)
            ),
            format!(
                "-A {sep0} -m comment --comment default/web:http -s 10.244.0.10 -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {sep0} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.10:8080"
            ),
        ];
        for line in &want {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        // 3 Services: 2 of 10 endpoints, 1 of 3: every chain declared once.
        assert_eq!(text.matches(":KUBE-SEP-").count(), 23);
        assert_eq!(text.matches("\n-A KUBE-SERVICES ").count(), 4);
        assert!(text.ends_with("-j KUBE-NODEPORTS\nCOMMIT\n"), "{text}");
    }

    #[test]
    fn a_large_cluster_drops_endpoint_comments_and_a_partial_sync_keeps_kube_services_whole() {
        let mut cluster = cluster(200);
        let changed = cluster.changed_index();
        cluster.trimmed = Some(changed);
        let full = restore_input(&cluster, Sync::Full);
        assert!(!full.contains(" -> "), "comments left in a large cluster");
        let partial = restore_input(&cluster, Sync::Partial(changed));
        assert_eq!(partial.matches("\n-A KUBE-SERVICES ").count(), 201);
        assert_eq!(partial.matches(":KUBE-SVC-").count(), 1);
        assert_eq!(partial.matches(":KUBE-SEP-").count(), 9);
        let spec = cluster.service(changed);
        assert!(partial.contains(&format!(":{} - [0:0]", service_chain(&spec))));
    }

    #[test]
    fn hooks_jump_from_the_builtin_chains() {
        let text = hooks();
        assert!(text.contains(
            "-I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(text.contains("-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"));
    }
}
