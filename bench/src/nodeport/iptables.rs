//! kube-proxy's iptables rules for one NodePort Service
//! (`externalTrafficPolicy: Cluster`, one endpoint, `--cluster-cidr` set),
//! as its proxier's `syncProxyRules` writes them (Kubernetes 1.31+,
//! `pkg/proxy/iptables/proxier.go`): the nat table's `KUBE-SERVICES` ends
//! with the jump to `KUBE-NODEPORTS` for local destinations, the node port
//! leads to `KUBE-EXT-<hash>`, which marks the packet for masquerade and
//! goes on to the cluster-policy chain `KUBE-SVC-<hash>` and its endpoint's
//! `KUBE-SEP-<hash>` (DNAT); `KUBE-POSTROUTING` masquerades what is marked.
//! The filter table holds kube-proxy's fixed forwarding rules.
//!
//! The jumps from the built-in chains are kube-proxy's own
//! ([`crate::kube_proxy::iptables::hooks`]), loaded first.

use std::fmt::Write as _;

use super::service::NodePortService;
use crate::kube_proxy::{MASQUERADE_MARK, hash_prefix};

/// `KUBE-SVC-<hash>`: the Service port's cluster-policy chain.
pub fn service_chain(svc: &NodePortService) -> String {
    format!("KUBE-SVC-{}", port_hash(svc))
}

/// `KUBE-EXT-<hash>`: the Service port's external-traffic chain (same hash).
pub fn external_chain(svc: &NodePortService) -> String {
    format!("KUBE-EXT-{}", port_hash(svc))
}

/// `KUBE-SEP-<hash>` of the endpoint.
pub fn endpoint_chain(svc: &NodePortService) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(
            &format!("{}tcp{}", svc.port_name_string(), svc.endpoint),
            16
        )
    )
}

fn port_hash(svc: &NodePortService) -> String {
    hash_prefix(&format!("{}tcp", svc.port_name_string()), 16)
}

/// The `iptables-restore --noflush` input of a full sync with `svc` as the
/// only Service; `cluster_cidr` is kube-proxy's `--cluster-cidr`.
pub fn restore_input(svc: &NodePortService, cluster_cidr: &str) -> String {
    let name = svc.port_name_string();
    let svc_chain = service_chain(svc);
    let ext_chain = external_chain(svc);
    let sep_chain = endpoint_chain(svc);
    let mark = MASQUERADE_MARK;
    let mut out = String::with_capacity(4096);
    out.push_str(
        "*filter\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n\
         :KUBE-FIREWALL - [0:0]\n\
         -A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
    );
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n",
    );
    for chain in [&svc_chain, &ext_chain, &sep_chain] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}");
    out.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}");
    let cluster_ip = format!(
        "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} --dport {}",
        svc.cluster_ip, svc.port
    );
    let _ = writeln!(out, "-A KUBE-SERVICES {cluster_ip} -j {svc_chain}");
    let _ = writeln!(
        out,
        "-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {} -j {ext_chain}",
        svc.node_port
    );
    let _ = writeln!(
        out,
        "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(out, "-A {ext_chain} -j {svc_chain}");
    let _ = writeln!(
        out,
        "-A {svc_chain} {cluster_ip} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(
        out,
        "-A {svc_chain} -m comment --comment \"{name} -> {}\" -j {sep_chain}",
        svc.endpoint
    );
    let _ = writeln!(
        out,
        "-A {sep_chain} -m comment --comment {name} -s {} -j KUBE-MARK-MASQ",
        svc.endpoint.ip()
    );
    let _ = writeln!(
        out,
        "-A {sep_chain} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {}",
        svc.endpoint
    );
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         COMMIT\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_nodeport_reaches_the_endpoint_through_ext_svc_and_sep_chains() {
        let svc = NodePortService::web(Ipv4Addr::new(10, 244, 1, 10), "web-1-0", "node-1");
        let text = restore_input(&svc, "10.244.0.0/16");
        let (svc_chain, ext, sep) = (
            service_chain(&svc),
            external_chain(&svc),
            endpoint_chain(&svc),
        );
        assert_eq!(svc_chain["KUBE-SVC-".len()..], ext["KUBE-EXT-".len()..]);
        let want = [
            format!(
                "-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -j {ext}"
            ),
            format!(
                "-A {ext} -m comment --comment \"masquerade traffic for default/web:http external destinations\" -j KUBE-MARK-MASQ"
            ),
            format!("-A {ext} -j {svc_chain}"),
            format!(
                "-A {svc_chain} -m comment --comment \"default/web:http -> 10.244.1.10:8080\" -j {sep}"
            ),
            format!(
                "-A {sep} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.10:8080"
            ),
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_owned(),
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".to_owned(),
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_owned(),
        ];
        for line in &want {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // Every chain a rule jumps to is declared in the nat table.
        for chain in [&svc_chain, &ext, &sep] {
            assert_eq!(text.matches(&format!(":{chain} - [0:0]")).count(), 1);
        }
        assert!(text.ends_with("-j KUBE-NODEPORTS\nCOMMIT\n"), "{text}");
    }

    #[test]
    fn chain_names_follow_kube_proxys_hash_of_the_port_name() {
        // kube-proxy's own vector: ns1/svc1:p80 over TCP.
        assert_eq!(hash_prefix("ns1/svc1:p80tcp", 16), "XPGD46QRK7WJZT7O");
        let svc = NodePortService::web(Ipv4Addr::new(10, 244, 1, 10), "web-1-0", "node-1");
        assert_eq!(
            service_chain(&svc),
            format!("KUBE-SVC-{}", hash_prefix("default/web:httptcp", 16))
        );
    }
}
