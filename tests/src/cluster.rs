//! Several nodes on one bridge, each with its pods and a client, plus the
//! API server the nodes' daemons watch and `kubectl` to feed it.
//!
//! ```text
//!                         network ns <prefix>-net (no forwarding)
//!                         br0 192.168.0.1/24, fd00:192::1/64
//!                         API server on 192.168.0.1:6443, kubectl
//!                          │ node0             │ node1        ... (bridge ports)
//!  node ns <prefix>-node0  │                   │  node ns <prefix>-node1
//!  eth0 192.168.0.10/24 ───┘                   └─ eth0 192.168.0.11/24
//!       fd00:192::10/64                             fd00:192::11/64
//!  client 10.0.0.1/24   ─── client ns <prefix>-c0   client 10.0.1.1/24 ─── <prefix>-c1
//!         fd00:10::1/64      eth0 10.0.0.2/24              fd00:10:1::1/64  eth0 10.0.1.2/24
//!                                 fd00:10::2/64                                  fd00:10:1::2/64
//!  pod<j> 10.244.0.1/32 ─── pod ns <prefix>-n0p<j>  pod<j> 10.244.1.1/32 ─── <prefix>-n1p<j>
//!         fd00:244::1/128    eth0 10.244.0.<10+j>/24       fd00:244:1::1/128  eth0 10.244.1.<10+j>/24
//!                                 fd00:244::<10+j>/64                             fd00:244:1::<10+j>/64
//!                            default via the node                            default via the node
//!  route 10.244.1.0/24, 10.0.1.0/24 via 192.168.0.11  route 10.244.0.0/24, 10.0.0.0/24 via 192.168.0.10
//!        fd00:244:1::/64, fd00:10:1::/64 via fd00:192::11  (and the IPv6 equivalents)
//! ```
//!
//! An external client (`<prefix>-ext`, [`Cluster::external`]) sits on the
//! bridge as a host outside the cluster: `192.168.0.200` and `.201`
//! ([`EXTERNAL_IP`], [`EXTERNAL_IP_2`]), in no cgroup, so what it sends
//! reaches a node as packets from outside; it routes external and
//! load-balancer IPs ([`EXTERNAL_SERVICE_CIDR`], `203.0.113.0/24`) via one
//! node ([`Cluster::route_external_via`], node 0 at first) and has no other
//! route.
//!
//! Node `i` is `node-<i>` in manifests ([`Cluster::node_name`]); its bridge
//! address is `192.168.0.<10+i>` (`fd00:192::<10+i>`), its pod CIDR
//! `10.244.<i>.0/24` (`fd00:244:<i>::/64`), its client link `10.0.<i>.0/24`
//! (`fd00:10:<i>::/64`). IPv6 groups that carry a number (the node index,
//! `10+i`, `10+j`) are written in hex digits that read as the decimal
//! number, as [`crate::topology`] does: pod 0 of node 0 is `fd00:244::10`.
//! Node 0 has the very addresses of the single-node [`crate::Topology`].
//!
//! Each node routes the other nodes' pod and client CIDRs via their bridge
//! address, so a client on node `i` reaches a pod on node `k` through both
//! nodes, and the reply comes straight back the same way (no NAT needed).
//! The network namespace only bridges (layer 2) and talks to the nodes'
//! `192.168.0.x` addresses: it has no route to pods or clients and does not
//! forward.
//!
//! A client's only routes beyond its own link are the Service CIDRs
//! (`10.96.0.0/16`, `fd00:96::/108`) and the pod ranges of the whole cluster
//! (`10.244.0.0/16`, `fd00:244::/32`), via its node. No namespace has a
//! default route except the pods (whose default leads to their node and
//! stops there), and no link leads to the host: every veth pair is created
//! inside a test namespace with its peer moved straight into another, so no
//! interface ever exists in the machine's own namespace.
//!
//! Each client runs in a cgroup of its own ([`Netns::cgroup`]), for the eBPF
//! datapath of its node; node `i`'s daemon pins under
//! [`Cluster::bpf_pin_path`]`(i)`, and the cluster runs `switchyard
//! cleanup` for every node before it removes the cgroups.
//!
//! ```no_run
//! use switchyard_tests::{ApiServer, Cluster, Kubectl, Mode, client};
//! # fn main() -> anyhow::Result<()> {
//! let mut cluster = Cluster::new(2, 1)?;
//! cluster.start_pod_servers()?;
//! let api = ApiServer::start(cluster.net(), cluster.scratch_dir())?;
//! let kubectl = Kubectl::new(cluster.net(), api.kubeconfig())?;
//! kubectl.run(&["get", "namespaces"])?;
//! let config = cluster.daemon_config(0, Mode::Userspace, &api.kubeconfig())?;
//! let daemon = cluster.start_daemon(0, &config)?;
//! let pod = cluster.pod(1, 0);
//! let name = client::curl_once(cluster.client(0), &format!("http://{}:8080/", pod.ipv4()))?;
//! # drop(daemon); drop(api); Ok(()) }
//! ```

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;

use crate::daemon::{BPFFS, Daemon, DaemonConfig, EbpfPaths, Mode, cleanup_ebpf, switchyard_bin};
use crate::netns::{Netns, Process, require_root, unique_prefix};
use crate::poll::poll_until;
use crate::scratch::ScratchDir;
use crate::topology::{POD_HTTP_PORT, PodLink, PodServer, PodServerConfig, link_pod};

/// The bridge's address in the network namespace (IPv4): where the API
/// server listens.
pub const BRIDGE_IP4: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// The bridge's address in the network namespace (IPv6).
pub const BRIDGE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0, 0, 0, 0, 0, 1);
/// The external client's address on the bridge: a host outside the cluster.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 200);
/// The external client's second address (`curl --interface` picks it), for a
/// source outside a Service's `loadBalancerSourceRanges`.
pub const EXTERNAL_IP_2: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 201);
/// Where the external client sends external and load-balancer IPs: via a
/// node ([`Cluster::route_external_via`]), as an upstream router would.
pub const EXTERNAL_SERVICE_CIDR: &str = "203.0.113.0/24";
/// Where [`ApiServer`] serves HTTPS.
pub const API_SERVER_ADDR: &str = "192.168.0.1:6443";
/// The Service CIDRs the API server allocates cluster IPs from (the clients
/// route exactly these to their node).
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16,fd00:96::/108";
/// At most this many nodes fit the address plan (`192.168.0.10` ... `.254`).
pub const MAX_NODES: usize = 245;
/// At most this many pods per node fit the address plan (`10.244.<i>.10`
/// ... `.254`).
pub const MAX_PODS_PER_NODE: usize = 245;
/// How long [`ApiServer::start`] and [`ApiServer::restart`] wait for the
/// server to answer.
pub const API_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `kubectl` run may take before it is killed.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);

/// `n` as an IPv6 group whose hex digits read as the decimal number
/// (`10` becomes `0x10`), as the address plan writes numbers.
fn decimal_group(n: usize) -> Result<u16> {
    u16::from_str_radix(&n.to_string(), 16).with_context(|| format!("{n} does not fit a group"))
}

/// The name node `node` has in manifests (`spec.nodeName`,
/// `--hostname-override`): `node-<node>`.
fn node_name(node: usize) -> String {
    format!("node-{node}")
}

/// The node's address on the bridge (IPv4), `192.168.0.<10+node>`.
fn node_ip4(node: usize) -> Result<Ipv4Addr> {
    let octet = u8::try_from(10 + node).context("node index out of range")?;
    Ok(Ipv4Addr::new(192, 168, 0, octet))
}

/// The node's address on the bridge (IPv6), `fd00:192::<10+node>`.
fn node_ip6(node: usize) -> Result<Ipv6Addr> {
    Ok(Ipv6Addr::new(
        0xfd00,
        0x192,
        0,
        0,
        0,
        0,
        0,
        decimal_group(10 + node)?,
    ))
}

/// The third group of node `node`'s IPv6 pod and client prefixes.
fn node_group(node: usize) -> Result<u16> {
    decimal_group(node)
}

/// One pod of a [`Cluster`]: its namespace, addresses and (once started)
/// its server.
#[derive(Debug)]
pub struct ClusterPod {
    node: usize,
    index: usize,
    ns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    server: PodServer,
}

impl ClusterPod {
    /// The node it runs on (0-based).
    pub fn node(&self) -> usize {
        self.node
    }

    /// Its position on its node (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its name for manifests, `web-<node>-<index>`; also the name
    /// [`Cluster::start_pod_servers`] gives its server.
    pub fn name(&self) -> String {
        format!("web-{}-{}", self.node, self.index)
    }

    /// Its namespace (`<prefix>-n<node>p<index>`).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its IPv4 address, `10.244.<node>.<10+index>`.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Its IPv6 address, `fd00:244:<node>::<10+index>` (numbers written in
    /// hex digits that read as decimal).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Both its addresses, IPv4 first, for manifests.
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }

    /// The name of its veth end in the node namespace (`pod<index>`).
    pub fn node_link(&self) -> String {
        format!("pod{}", self.index)
    }

    /// The name its server answers with, once started.
    pub fn server_name(&self) -> Option<&str> {
        self.server.name()
    }

    /// Its server process, once started.
    pub fn server(&mut self) -> Option<&mut Process> {
        self.server.process()
    }
}

/// Nodes on one bridge, each with pods and a client (see the module docs
/// for the address plan). Dropping it removes any eBPF state left on each
/// client's cgroup and under each node's pin folder (`switchyard cleanup`),
/// stops the pod servers and deletes every namespace and cgroup.
///
/// The [`ApiServer`] is a guard of its own (started in [`Cluster::net`]);
/// drop it, and every [`Daemon`], before the cluster.
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    pods_per_node: usize,
    /// Per node: whether an eBPF-mode daemon was started there.
    ebpf_used: Vec<AtomicBool>,
    // Field order is drop order: processes first, namespaces, then files.
    pods: Vec<Vec<ClusterPod>>,
    clients: Vec<Netns>,
    external: Netns,
    nodes: Vec<Netns>,
    net: Netns,
    scratch: ScratchDir,
}

impl Cluster {
    /// Builds the network namespace with its bridge, `nodes` node
    /// namespaces, `pods_per_node` pods and one client on each, with the
    /// addresses and routes of the module docs. Each client's processes run
    /// in a cgroup of its own.
    pub fn new(nodes: usize, pods_per_node: usize) -> Result<Self> {
        require_root()?;
        ensure!(nodes >= 1, "a cluster needs at least one node");
        ensure!(
            nodes <= MAX_NODES,
            "at most {MAX_NODES} nodes fit the address plan"
        );
        ensure!(
            pods_per_node <= MAX_PODS_PER_NODE,
            "at most {MAX_PODS_PER_NODE} pods per node fit the address plan"
        );
        let prefix = unique_prefix();
        let scratch = ScratchDir::new(&prefix)?;
        let net = Netns::create(&format!("{prefix}-net"))?;
        let external = Netns::create(&format!("{prefix}-ext"))?;
        // From here on the guard removes what exists so far, also on error.
        let mut cluster = Self {
            prefix: prefix.clone(),
            pods_per_node,
            ebpf_used: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            pods: Vec::with_capacity(nodes),
            clients: Vec::with_capacity(nodes),
            external,
            nodes: Vec::with_capacity(nodes),
            net,
            scratch,
        };
        cluster.configure_net()?;
        cluster.link_external()?;
        for i in 0..nodes {
            let node = Netns::create(&format!("{prefix}-node{i}"))?;
            cluster.nodes.push(node);
            cluster.link_node(i)?;
            let client = Netns::create_in_cgroup(&format!("{prefix}-c{i}"))?;
            cluster.clients.push(client);
            cluster.link_client(i)?;
            cluster.pods.push(Vec::with_capacity(pods_per_node));
            for j in 0..pods_per_node {
                let ns = Netns::create(&format!("{prefix}-n{i}p{j}"))?;
                let octet = u8::try_from(10 + j).context("pod index out of range")?;
                let node_octet = u8::try_from(i).context("node index out of range")?;
                let pod = ClusterPod {
                    node: i,
                    index: j,
                    ns,
                    ipv4: Ipv4Addr::new(10, 244, node_octet, octet),
                    ipv6: Ipv6Addr::new(
                        0xfd00,
                        0x244,
                        node_group(i)?,
                        0,
                        0,
                        0,
                        0,
                        decimal_group(10 + j)?,
                    ),
                    server: PodServer::default(),
                };
                cluster.pods[i].push(pod);
                cluster.link_pod(i, j)?;
            }
        }
        for i in 0..nodes {
            cluster.route_other_nodes(i)?;
        }
        cluster.route_external_via(0)?;
        Ok(cluster)
    }

    /// The external client: on the bridge with [`EXTERNAL_IP`] and
    /// [`EXTERNAL_IP_2`], in no cgroup of the eBPF datapath, so everything it
    /// sends reaches the nodes as packets from outside.
    fn link_external(&self) -> Result<()> {
        let net = &self.net;
        net.run([
            "ip",
            "link",
            "add",
            "ext",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.external.name(),
        ])?;
        net.run(["ip", "link", "set", "ext", "master", "br0"])?;
        net.run(["ip", "link", "set", "ext", "up"])?;
        let ext = &self.external;
        for ip in [EXTERNAL_IP, EXTERNAL_IP_2] {
            ext.run(["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        ext.run(["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Routes [`EXTERNAL_SERVICE_CIDR`] from the external client via node
    /// `i` (replacing the route there was).
    pub fn route_external_via(&self, i: usize) -> Result<()> {
        self.external.run([
            "ip",
            "route",
            "replace",
            EXTERNAL_SERVICE_CIDR,
            "via",
            &node_ip4(i)?.to_string(),
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// Makes the bridge carry XDP traffic as real NICs do, for tests of
    /// `--xdp`: veth leaves TCP and UDP checksums to the receiver
    /// (`CHECKSUM_PARTIAL`), which a frame sent back out by XDP no longer
    /// has, so the external client and the pods compute them (`ethtool -K
    /// eth0 tx off`); and a veth only delivers what XDP sends back out
    /// (`XDP_TX`) to a peer with an XDP program of its own, so every bridge
    /// port gets one that passes everything (compiled with clang-19 into the
    /// scratch folder).
    pub fn prepare_xdp(&self) -> Result<()> {
        const PASS: &str = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
            SEC(\"xdp\") int pass(struct xdp_md *ctx) { return XDP_PASS; }\n\
            char LICENSE[] SEC(\"license\") = \"GPL\";\n";
        let source = self.scratch.join("xdp_pass.c");
        let object = self.scratch.join("xdp_pass.o");
        std::fs::write(&source, PASS).with_context(|| format!("write {}", source.display()))?;
        let status = std::process::Command::new("clang-19")
            .args([
                "-target",
                "bpf",
                "-O2",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status()
            .context("run clang-19 for the bridge ports' XDP program")?;
        ensure!(status.success(), "clang-19 failed on {}", source.display());
        let object = object
            .to_str()
            .context("scratch path is not UTF-8")?
            .to_owned();
        self.external.run(["ethtool", "-K", "eth0", "tx", "off"])?;
        for pod in self.pods() {
            pod.ns.run(["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let ports = (0..self.nodes.len())
            .map(|i| format!("node{i}"))
            .chain(std::iter::once("ext".to_owned()));
        for port in ports {
            self.net.run([
                "ip", "link", "set", "dev", &port, "xdpdrv", "obj", &object, "sec", "xdp",
            ])?;
        }
        Ok(())
    }

    /// The external client's namespace (see [`EXTERNAL_IP`]).
    pub fn external(&self) -> &Netns {
        &self.external
    }

    fn configure_net(&self) -> Result<()> {
        let net = &self.net;
        net.sysctl("net.ipv4.ip_forward", "0")?;
        net.sysctl("net.ipv6.conf.all.forwarding", "0")?;
        // No spanning tree (ports forward at once) and no multicast
        // snooping (neighbour discovery floods, with no querier around).
        net.run([
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        net.run(["ip", "addr", "add", "192.168.0.1/24", "dev", "br0"])?;
        net.run(["ip", "addr", "add", "fd00:192::1/64", "dev", "br0", "nodad"])?;
        net.run(["ip", "link", "set", "br0", "up"])?;
        Ok(())
    }

    fn link_node(&self, i: usize) -> Result<()> {
        let net = &self.net;
        let node = &self.nodes[i];
        let port = format!("node{i}");
        net.run([
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.name(),
        ])?;
        net.run(["ip", "link", "set", &port, "master", "br0"])?;
        net.run(["ip", "link", "set", &port, "up"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        node.run([
            "ip",
            "addr",
            "add",
            &format!("{}/24", node_ip4(i)?),
            "dev",
            "eth0",
        ])?;
        node.run([
            "ip",
            "addr",
            "add",
            &format!("{}/64", node_ip6(i)?),
            "dev",
            "eth0",
            "nodad",
        ])?;
        node.run(["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn link_client(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let client = &self.clients[i];
        let group = format!("{:x}", node_group(i)?);
        let (node4, client4) = (format!("10.0.{i}.1"), format!("10.0.{i}.2"));
        let (node6, client6) = (format!("fd00:10:{group}::1"), format!("fd00:10:{group}::2"));
        node.run([
            "ip",
            "link",
            "add",
            "client",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            client.name(),
        ])?;
        node.run(["ip", "addr", "add", &format!("{node4}/24"), "dev", "client"])?;
        node.run([
            "ip",
            "addr",
            "add",
            &format!("{node6}/64"),
            "dev",
            "client",
            "nodad",
        ])?;
        node.run(["ip", "link", "set", "client", "up"])?;
        client.run(["ip", "addr", "add", &format!("{client4}/24"), "dev", "eth0"])?;
        client.run([
            "ip",
            "addr",
            "add",
            &format!("{client6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        client.run(["ip", "link", "set", "eth0", "up"])?;
        // The client's only routes: Service CIDRs and the cluster's pod
        // ranges, via its node. Never a default route.
        for (cidr, via) in [
            ("10.96.0.0/16", &node4),
            ("10.244.0.0/16", &node4),
            ("fd00:96::/108", &node6),
            ("fd00:244::/32", &node6),
        ] {
            client.run(["ip", "route", "add", cidr, "via", via, "dev", "eth0"])?;
        }
        Ok(())
    }

    fn link_pod(&self, i: usize, j: usize) -> Result<()> {
        let pod = &self.pods[i][j];
        let octet = u8::try_from(i).context("node index out of range")?;
        link_pod(&PodLink {
            node: &self.nodes[i],
            pod: &pod.ns,
            link: &pod.node_link(),
            ipv4: pod.ipv4,
            ipv6: pod.ipv6,
            gateway4: Ipv4Addr::new(10, 244, octet, 1),
            gateway6: Ipv6Addr::new(0xfd00, 0x244, node_group(i)?, 0, 0, 0, 0, 1),
        })
    }

    /// On node `i`: every other node's pod and client CIDRs via that node's
    /// bridge address.
    fn route_other_nodes(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        for k in (0..self.nodes.len()).filter(|&k| k != i) {
            let via4 = node_ip4(k)?.to_string();
            let via6 = node_ip6(k)?.to_string();
            let group = format!("{:x}", node_group(k)?);
            for (cidr, via) in [
                (format!("10.244.{k}.0/24"), &via4),
                (format!("10.0.{k}.0/24"), &via4),
                (format!("fd00:244:{group}::/64"), &via6),
                (format!("fd00:10:{group}::/64"), &via6),
            ] {
                node.run(["ip", "route", "add", &cidr, "via", via, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// The name prefix of this cluster's namespaces (`sy<pid>x<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The folder for this cluster's logs, the API server's data and the
    /// daemons' (empty) manifest folders.
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// How many nodes it has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many pods each node has.
    pub fn pods_per_node(&self) -> usize {
        self.pods_per_node
    }

    /// The network namespace: the bridge, the API server and kubectl.
    pub fn net(&self) -> &Netns {
        &self.net
    }

    /// Node `i`'s namespace.
    ///
    /// # Panics
    /// If there is no such node (a bug in the test).
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// Node `i`'s client namespace (in a cgroup of its own).
    ///
    /// # Panics
    /// If there is no such node (a bug in the test).
    pub fn client(&self, i: usize) -> &Netns {
        &self.clients[i]
    }

    /// Pod `j` of node `i`.
    ///
    /// # Panics
    /// If there is no such pod (a bug in the test).
    pub fn pod(&self, i: usize, j: usize) -> &ClusterPod {
        &self.pods[i][j]
    }

    /// Pod `j` of node `i`, mutably (to reach its server).
    ///
    /// # Panics
    /// If there is no such pod (a bug in the test).
    pub fn pod_mut(&mut self, i: usize, j: usize) -> &mut ClusterPod {
        &mut self.pods[i][j]
    }

    /// The pods of node `i`.
    ///
    /// # Panics
    /// If there is no such node (a bug in the test).
    pub fn pods_on(&self, i: usize) -> &[ClusterPod] {
        &self.pods[i]
    }

    /// Every pod, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &ClusterPod> {
        self.pods.iter().flatten()
    }

    /// The name node `i` has in manifests and in `--hostname-override`:
    /// `node-<i>`.
    pub fn node_name(&self, i: usize) -> String {
        node_name(i)
    }

    /// Node `i`'s address on the bridge, `192.168.0.<10+i>`.
    ///
    /// # Panics
    /// If `i` is beyond the address plan (a bug in the test).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        node_ip4(i).expect("node index within the address plan")
    }

    /// Node `i`'s IPv6 address on the bridge, `fd00:192::<10+i>`.
    ///
    /// # Panics
    /// If `i` is beyond the address plan (a bug in the test).
    pub fn node_ip6(&self, i: usize) -> Ipv6Addr {
        node_ip6(i).expect("node index within the address plan")
    }

    /// Node `i`'s client's address, `10.0.<i>.2`.
    ///
    /// # Panics
    /// If `i` is beyond the address plan (a bug in the test).
    pub fn client_ip(&self, i: usize) -> Ipv4Addr {
        let octet = u8::try_from(i).expect("node index within the address plan");
        Ipv4Addr::new(10, 0, octet, 2)
    }

    /// Starts `pod-server` in every pod, named after the pod
    /// ([`ClusterPod::name`], `web-<node>-<index>`), HTTP on 8080 and UDP on
    /// 5353, and waits for each to be ready.
    pub fn start_pod_servers(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            for j in 0..self.pods_per_node {
                let config = PodServerConfig::web(j).name(&self.pods[i][j].name());
                self.start_pod_server(i, j, config)?;
            }
        }
        Ok(())
    }

    /// Starts `pod-server` in pod `j` of node `i` as `config` (stopping the
    /// one already there) and waits until it is ready.
    pub fn start_pod_server(&mut self, i: usize, j: usize, config: PodServerConfig) -> Result<()> {
        let log = self.scratch.join(&format!("n{i}p{j}-{}.log", config.name));
        let pod = self
            .pods
            .get_mut(i)
            .and_then(|pods| pods.get_mut(j))
            .with_context(|| format!("no pod {j} on node {i}"))?;
        pod.server.start(&pod.ns, config, &log)
    }

    /// Stops the server in pod `j` of node `i` (SIGTERM, then SIGKILL).
    pub fn stop_pod_server(&mut self, i: usize, j: usize) -> Result<()> {
        let pod = self
            .pods
            .get_mut(i)
            .and_then(|pods| pods.get_mut(j))
            .with_context(|| format!("no pod {j} on node {i}"))?;
        pod.server.stop()
    }

    /// The URL of pod `j` of node `i`'s HTTP server over IPv4
    /// (`http://10.244.<i>.<10+j>:8080/`).
    pub fn pod_url(&self, i: usize, j: usize) -> String {
        format!("http://{}:{POD_HTTP_PORT}/", self.pod(i, j).ipv4())
    }

    /// The bpffs folder node `i`'s eBPF-mode daemon pins into:
    /// `/sys/fs/bpf/<prefix>-node<i>`.
    pub fn bpf_pin_path(&self, i: usize) -> PathBuf {
        Path::new(BPFFS).join(format!("{}-node{i}", self.prefix))
    }

    /// The configuration of node `i`'s daemon in `mode`, watching the API
    /// server of `kubeconfig`: `--hostname-override node-<i>`, metrics on
    /// `127.0.0.1:10249`, health on `0.0.0.0:10256` (both inside the node
    /// namespace); in eBPF mode attached to client `i`'s cgroup, pinned
    /// under [`Cluster::bpf_pin_path`]`(i)`, with the tc programs on `eth0`
    /// (`--devices eth0`).
    pub fn daemon_config(&self, i: usize, mode: Mode, kubeconfig: &Path) -> Result<DaemonConfig> {
        ensure!(i < self.nodes.len(), "no node {i}");
        let ebpf = match mode {
            Mode::Userspace => None,
            Mode::Ebpf => Some(EbpfPaths {
                cgroup: self.clients[i]
                    .cgroup()
                    .context("the client has no cgroup to attach to")?
                    .to_path_buf(),
                pin_path: self.bpf_pin_path(i),
            }),
        };
        // In eBPF mode the tc programs serve north-south traffic on the
        // node's bridge link.
        let extra_args = match mode {
            Mode::Ebpf => vec!["--devices".to_owned(), "eth0".to_owned()],
            Mode::Userspace => Vec::new(),
        };
        Ok(DaemonConfig {
            hostname: node_name(i),
            proxy_mode: mode.flag().to_owned(),
            extra_args,
            ebpf,
            metrics_bind: "127.0.0.1:10249".to_owned(),
            healthz_bind: "0.0.0.0:10256".to_owned(),
            kubeconfig: Some(kubeconfig.to_path_buf()),
            ..DaemonConfig::default()
        })
    }

    /// Starts the daemon of node `i` with `config` (see
    /// [`Cluster::daemon_config`]), logging into `<scratch>/node<i>/`, and
    /// waits until `/healthz` answers 200. It gets an empty manifest folder
    /// (`<scratch>/node<i>/manifests`), unused when `config.kubeconfig` is
    /// set.
    pub fn start_daemon(&self, i: usize, config: &DaemonConfig) -> Result<Daemon> {
        let node = self.nodes.get(i).with_context(|| format!("no node {i}"))?;
        let log_dir = self.scratch.join(&format!("node{i}"));
        let manifests = log_dir.join("manifests");
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("create {}", manifests.display()))?;
        if config.ebpf.is_some() {
            self.ebpf_used[i].store(true, Ordering::SeqCst);
        }
        Daemon::start(node, &manifests, &log_dir, config)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Before the fields go (the clients' cgroups with them): a cgroup is
        // never removed with programs of ours still attached or pinned.
        for (i, client) in self.clients.iter().enumerate() {
            let pins = self.bpf_pin_path(i);
            if (self.ebpf_used[i].load(Ordering::SeqCst) || pins.exists())
                && let Some(cgroup) = client.cgroup()
                && let Err(error) = cleanup_ebpf(&pins, cgroup)
            {
                eprintln!("{error:#}");
            }
        }
    }
}

/// Finds `kubectl` on `PATH` (the Debian package `kubernetes-client`
/// installs it as `/usr/bin/kubectl`); fails with a clear message if it is
/// missing. This library never installs it: `cargo xtask` does.
pub fn ensure_kubectl() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    bail!(
        "kubectl not found on PATH: install it (Debian package `kubernetes-client`, \
         e.g. `apt-get install kubernetes-client`, which `cargo xtask` does)"
    )
}

/// The embedded API server (`switchyard apiserver`) running in a
/// namespace, killed by PID on drop (SIGTERM, then SIGKILL). Its data
/// (database, certificates, token, kubeconfig) lives in
/// `<scratch>/apiserver`, so a [`ApiServer::restart`] finds the same
/// objects and credentials.
#[derive(Debug)]
pub struct ApiServer {
    process: Process,
    bin: PathBuf,
    ns: Netns,
    data_dir: PathBuf,
    log_dir: PathBuf,
    kubectl: Kubectl,
}

impl ApiServer {
    /// Starts `switchyard apiserver --data-dir <scratch>/apiserver
    /// --bind-address 192.168.0.1:6443 --service-cluster-ip-range
    /// 10.96.0.0/16,fd00:96::/108` in `net` (through `nsenter --net`),
    /// logging to `<scratch>/apiserver.log`, and waits until its kubeconfig
    /// exists and `kubectl get --raw /version` succeeds with it.
    pub fn start(net: &Netns, scratch: &Path) -> Result<Self> {
        let bin = switchyard_bin()?;
        let data_dir = scratch.join("apiserver");
        let kubectl = Kubectl::new(net, data_dir.join("kubeconfig"))?;
        let process = Self::spawn(&bin, net, &data_dir, scratch)?;
        // From here on the guard stops the process, also when it never
        // gets ready.
        let mut server = Self {
            process,
            bin,
            ns: net.clone(),
            data_dir,
            log_dir: scratch.to_path_buf(),
            kubectl,
        };
        server.wait_ready(API_SERVER_READY_TIMEOUT)?;
        Ok(server)
    }

    fn spawn(bin: &Path, ns: &Netns, data_dir: &Path, log_dir: &Path) -> Result<Process> {
        let mut log = log_dir.join("apiserver.log");
        let mut n = 1;
        while log.exists() {
            log = log_dir.join(format!("apiserver-{n}.log"));
            n += 1;
        }
        let argv: Vec<OsString> = vec![
            bin.into(),
            "apiserver".into(),
            "--data-dir".into(),
            data_dir.into(),
            "--bind-address".into(),
            API_SERVER_ADDR.into(),
            "--service-cluster-ip-range".into(),
            SERVICE_CLUSTER_IP_RANGE.into(),
        ];
        ns.spawn_nsenter(&argv, &log)
    }

    /// Waits until the kubeconfig exists and `kubectl get --raw /version`
    /// answers; fails with the log if the server exits or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let mut exited = None;
        let kubeconfig = self.kubeconfig();
        let result = poll_until("the API server to answer /version", timeout, || {
            if let Some(status) = self.process.try_wait()? {
                exited = Some(status);
                return Ok(Some(()));
            }
            if !kubeconfig.is_file() {
                return Ok(None);
            }
            self.kubectl.run(&["get", "--raw", "/version"])?;
            Ok(Some(()))
        });
        if let Some(status) = exited {
            bail!(
                "switchyard apiserver exited ({status}) before it was ready\n--- apiserver log ---\n{}",
                self.log()
            );
        }
        if let Err(error) = result {
            bail!("{error:#}\n--- apiserver log ---\n{}", self.log());
        }
        Ok(())
    }

    /// The kubeconfig it wrote (`<scratch>/apiserver/kubeconfig`): server
    /// `https://192.168.0.1:6443`, its CA and an admin token.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// Its data folder (`<scratch>/apiserver`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The address it serves HTTPS on (`192.168.0.1:6443`).
    pub fn address(&self) -> &'static str {
        API_SERVER_ADDR
    }

    /// A `kubectl` in the namespace it runs in, with its kubeconfig.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// Sends SIGKILL and waits for the process to be gone: nothing of its
    /// own shutdown runs (an outage, as seen by the daemons).
    pub fn kill(&mut self) -> Result<()> {
        self.process.signal(Signal::SIGKILL)?;
        self.process
            .wait_timeout(Duration::from_secs(10))?
            .context("switchyard apiserver did not die of SIGKILL within 10 s")?;
        Ok(())
    }

    /// Starts it again with the same data folder and address (a new log
    /// file) and waits until it answers. A server still running is stopped
    /// first (SIGTERM, then SIGKILL).
    pub fn restart(&mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(5))?;
        self.process = Self::spawn(&self.bin, &self.ns, &self.data_dir, &self.log_dir)?;
        self.wait_ready(API_SERVER_READY_TIMEOUT)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its current log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Everything the current process has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `kubectl` run inside a namespace with a given kubeconfig. Its discovery
/// cache goes next to the kubeconfig (`<folder>/kubectl-cache`), never to
/// `~/.kube`.
#[derive(Clone, Debug)]
pub struct Kubectl {
    bin: PathBuf,
    ns: Netns,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    /// `kubectl --kubeconfig KUBECONFIG` in `ns`; fails if kubectl is not
    /// installed ([`ensure_kubectl`]). The kubeconfig need not exist yet.
    pub fn new(ns: &Netns, kubeconfig: PathBuf) -> Result<Self> {
        let bin = ensure_kubectl()?;
        let cache_dir = kubeconfig
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("kubectl-cache");
        Ok(Self {
            bin,
            ns: ns.clone(),
            kubeconfig,
            cache_dir,
        })
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn argv(&self, args: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            self.bin.clone().into(),
            "--kubeconfig".into(),
            self.kubeconfig.clone().into(),
            "--cache-dir".into(),
            self.cache_dir.clone().into(),
        ];
        argv.extend(args.iter().map(OsString::from));
        argv
    }

    fn run_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let output = self.ns.exec_with(self.argv(args), stdin, KUBECTL_TIMEOUT)?;
        if !output.status.success() {
            bail!(
                "in netns {}: `kubectl {}` failed ({}): {}",
                self.ns.name(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `kubectl ARGS...` and returns its stdout; fails, with its
    /// stderr in the error, unless it exits 0 (killed after 30 s).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_stdin(args, None)
    }

    /// Runs `kubectl ARGS... -o json` and parses what it prints.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`kubectl {}` is not JSON: {out}", all.join(" ")))
    }

    /// `kubectl apply --validate=false -f -` with `object` (one object or
    /// a `List`) on stdin; returns what kubectl printed.
    ///
    /// Client-side validation is off because it needs the server's `OpenAPI`
    /// schema (`/openapi/v2`), which the embedded API server does not serve;
    /// the server still validates what it stores.
    pub fn apply_json(&self, object: &serde_json::Value) -> Result<String> {
        let body = serde_json::to_vec(object).context("serialize the object")?;
        self.run_stdin(&["apply", "--validate=false", "-f", "-"], Some(&body))
    }

    /// `kubectl create --validate=false -f -` with `object` on stdin
    /// (validation as in [`Kubectl::apply_json`]); fails if it exists.
    pub fn create_json(&self, object: &serde_json::Value) -> Result<String> {
        let body = serde_json::to_vec(object).context("serialize the object")?;
        self.run_stdin(&["create", "--validate=false", "-f", "-"], Some(&body))
    }

    /// Starts `kubectl ARGS...` (e.g. `get services -w`) with its output
    /// going to `log`; the guard kills it by PID on drop.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Result<Process> {
        self.ns.spawn(self.argv(args), log)
    }
}
