//! One node, its pods and a client, as network namespaces joined by veth
//! pairs.
//!
//! ```text
//!  client ns                 node ns                        pod ns (one per pod)
//!  eth0 10.0.0.2/24  ───  client 10.0.0.1/24
//!       fd00:10::2/64            fd00:10::1/64
//!                            pod<i> 10.244.0.1/32     ───  eth0 10.244.0.<10+i>/24
//!                                   fd00:244::1/128             fd00:244::<10+i>/64
//!                            (route 10.244.0.<10+i>/32 dev pod<i>)   default via the node
//! ```
//!
//! The client's only routes beyond its own link are the Service CIDRs
//! (`10.96.0.0/16`, `fd00:96::/108`) and the pod CIDR (`10.244.0.0/24`,
//! `fd00:244::/64`), all via the node. The node has no default route and no
//! link out of the test, so nothing a test sends can leave the machine; the
//! pods' default routes lead to the node and stop there. The node forwards
//! (so the client can reach pods directly). In userspace mode Service
//! traffic needs no forwarding, since switchyard makes each VIP a local
//! address on the node; in eBPF mode the client's `connect()` is rewritten
//! to a pod before routing, so that traffic takes the pod route (the
//! Service route is then unused).
//!
//! The client's processes run in a cgroup of their own
//! ([`Netns::cgroup`]): an eBPF-mode daemon attaches there, and pins under
//! [`Topology::bpf_pin_path`]; the topology cleans both up before it
//! removes the cgroup.
//!
//! All interface names live inside the test's namespaces (veth pairs are
//! created in the node namespace with the peer placed straight into the pod
//! or client namespace), so they can never clash with the machine's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::daemon::{BPFFS, Daemon, DaemonConfig, Mode};
use crate::manifests::Manifests;
use crate::netns::{Netns, Process, require_root, unique_prefix};
use crate::scratch::ScratchDir;

/// The node's address on every pod link (IPv4): the pods' gateway.
pub const NODE_POD_GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's address on every pod link (IPv6): the pods' gateway.
pub const NODE_POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
/// The node's address on the client link (IPv4).
pub const NODE_IP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The node's address on the client link (IPv6).
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
/// The client's address (IPv4).
pub const CLIENT_IP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The client's address (IPv6).
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 2);
/// The name the node has in manifests (`spec.nodeName`, `--hostname-override`).
pub const NODE_NAME: &str = "node-0";
/// The HTTP port every pod server listens on by default.
pub const POD_HTTP_PORT: u16 = 8080;
/// The TCP port every pod server serves HTTP/1.1 and h2c on (hyper) by default.
pub const POD_H2_PORT: u16 = 8082;
/// The UDP port every pod server echoes on by default.
pub const POD_UDP_PORT: u16 = 5353;
/// At most this many pods fit the address plan (`10.244.0.10` ... `.254`).
pub const MAX_PODS: usize = 245;

/// What one `pod-server` serves.
#[derive(Clone, Debug)]
pub struct PodServerConfig {
    /// The name it answers with.
    pub name: String,
    /// TCP ports it serves HTTP on, on both `0.0.0.0` and `[::]`.
    pub http_ports: Vec<u16>,
    /// UDP ports it echoes on, on both `0.0.0.0` and `[::]`.
    pub udp_ports: Vec<u16>,
    /// TCP ports it serves HTTP/1.1 and h2c on (hyper), on both `0.0.0.0` and `[::]`.
    pub h2_ports: Vec<u16>,
    /// The status its h2 listener answers with (200 unless set).
    pub h2_status: Option<u16>,
    /// A port it serves the h2 listener's answers on behind TLS, with this certificate
    /// chain and key (PEM files).
    pub https: Option<(u16, PathBuf, PathBuf)>,
}

impl PodServerConfig {
    /// `web-<index>`, HTTP on 8080, HTTP/1.1 and h2c on 8082, UDP on 5353.
    pub fn web(index: usize) -> Self {
        Self {
            name: format!("web-{index}"),
            http_ports: vec![POD_HTTP_PORT],
            udp_ports: vec![POD_UDP_PORT],
            h2_ports: vec![POD_H2_PORT],
            h2_status: None,
            https: None,
        }
    }

    /// Also serves the h2 answers behind TLS on `port`, with the PEM files `cert` and `key`.
    #[must_use]
    pub fn https(mut self, port: u16, cert: &Path, key: &Path) -> Self {
        self.https = Some((port, cert.to_owned(), key.to_owned()));
        self
    }

    /// Makes the h2 listener answer every request with `status` (a failing pod).
    #[must_use]
    pub fn h2_status(mut self, status: u16) -> Self {
        self.h2_status = Some(status);
        self
    }

    /// Renames the server.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Replaces the HTTP ports.
    #[must_use]
    pub fn http_ports(mut self, ports: &[u16]) -> Self {
        self.http_ports = ports.to_vec();
        self
    }

    /// Replaces the UDP ports.
    #[must_use]
    pub fn udp_ports(mut self, ports: &[u16]) -> Self {
        self.udp_ports = ports.to_vec();
        self
    }
}

/// One pod: its namespace, addresses and (once started) its server.
#[derive(Debug)]
pub struct PodNs {
    index: usize,
    ns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    node_link: String,
    server: PodServer,
}

impl PodNs {
    /// Its position in the topology (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its IPv4 address, `10.244.0.<10+index>`.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Its IPv6 address, `fd00:244::<10+index>` (the suffix written in hex
    /// digits that read as the decimal number, e.g. `fd00:244::10`).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The name of its veth end in the node namespace (`pod<index>`).
    pub fn node_link(&self) -> &str {
        &self.node_link
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

/// A pod's `pod-server`, once started: what it serves and its process.
#[derive(Debug, Default)]
pub(crate) struct PodServer(Option<(PodServerConfig, Process)>);

impl PodServer {
    /// Starts `pod-server` in `ns` as `config`, logging to `log` (stopping the one already
    /// there), and waits until it is ready.
    pub(crate) fn start(&mut self, ns: &Netns, config: PodServerConfig, log: &Path) -> Result<()> {
        let bin = pod_server_bin()?;
        self.0 = None;
        let mut argv: Vec<String> = vec![
            bin.to_string_lossy().into_owned(),
            "--name".into(),
            config.name.clone(),
        ];
        for port in &config.http_ports {
            argv.extend(["--http".into(), format!("0.0.0.0:{port}")]);
            argv.extend(["--http".into(), format!("[::]:{port}")]);
        }
        for port in &config.udp_ports {
            argv.extend(["--udp".into(), format!("0.0.0.0:{port}")]);
            argv.extend(["--udp".into(), format!("[::]:{port}")]);
        }
        for port in &config.h2_ports {
            argv.extend(["--h2".into(), format!("0.0.0.0:{port}")]);
            argv.extend(["--h2".into(), format!("[::]:{port}")]);
        }
        if let Some(status) = config.h2_status {
            argv.extend(["--h2-status".into(), status.to_string()]);
        }
        if let Some((port, cert, key)) = &config.https {
            argv.extend(["--https".into(), format!("0.0.0.0:{port}")]);
            argv.extend(["--https".into(), format!("[::]:{port}")]);
            argv.extend(["--tls-cert".into(), cert.display().to_string()]);
            argv.extend(["--tls-key".into(), key.display().to_string()]);
        }
        let mut process = ns.spawn(&argv, log)?;
        process.wait_for_line("ready", Duration::from_secs(10))?;
        self.0 = Some((config, process));
        Ok(())
    }

    /// Stops it (SIGTERM, then SIGKILL), if it runs.
    pub(crate) fn stop(&mut self) -> Result<()> {
        if let Some((_, mut process)) = self.0.take() {
            process.terminate(Duration::from_secs(2))?;
        }
        Ok(())
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|(config, _)| config.name.as_str())
    }

    pub(crate) fn process(&mut self) -> Option<&mut Process> {
        self.0.as_mut().map(|(_, process)| process)
    }
}

/// A node namespace with pods and a client around it. Dropping it removes
/// any eBPF state left on the client's cgroup and under the topology's pin
/// folder (`switchyard cleanup`), stops the pod servers and deletes every
/// namespace and the cgroup.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// Whether an eBPF-mode daemon was started here (then its state must be
    /// cleaned up before the client's cgroup goes).
    ebpf_used: AtomicBool,
    // Field order is drop order: processes first, namespaces, then files.
    pods: Vec<PodNs>,
    client: Netns,
    node: Netns,
    scratch: ScratchDir,
}

impl Topology {
    /// Builds the node, `pods` pod namespaces and the client, with the
    /// addresses and routes described in the module docs. The client
    /// namespace's processes run in a cgroup of their own.
    pub fn new(pods: usize) -> Result<Self> {
        require_root()?;
        ensure!(
            pods <= MAX_PODS,
            "at most {MAX_PODS} pods fit the address plan"
        );
        let prefix = unique_prefix();
        let scratch = ScratchDir::new(&prefix)?;
        let node = Netns::create(&format!("{prefix}-node"))?;
        let client = Netns::create_in_cgroup(&format!("{prefix}-client"))?;
        let mut topo = Self {
            prefix: prefix.clone(),
            ebpf_used: AtomicBool::new(false),
            pods: Vec::with_capacity(pods),
            client,
            node,
            scratch,
        };
        topo.configure_node()?;
        topo.link_client()?;
        for index in 0..pods {
            let ns = Netns::create(&format!("{prefix}-pod{index}"))?;
            let octet = u8::try_from(10 + index).context("pod index out of range")?;
            // `fd00:244::10` for pod 0: the group is hex, written as decimal.
            let group = u16::from_str_radix(&(10 + index).to_string(), 16)
                .context("pod index out of range")?;
            let pod = PodNs {
                index,
                ns,
                ipv4: Ipv4Addr::new(10, 244, 0, octet),
                ipv6: Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, group),
                node_link: format!("pod{index}"),
                server: PodServer::default(),
            };
            topo.link_pod(&pod)?;
            topo.pods.push(pod);
        }
        Ok(topo)
    }

    fn configure_node(&self) -> Result<()> {
        let node = &self.node;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        Ok(())
    }

    fn link_client(&self) -> Result<()> {
        let node = &self.node;
        let client = &self.client;
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
        node.run(["ip", "addr", "add", "10.0.0.1/24", "dev", "client"])?;
        node.run([
            "ip",
            "addr",
            "add",
            "fd00:10::1/64",
            "dev",
            "client",
            "nodad",
        ])?;
        node.run(["ip", "link", "set", "client", "up"])?;
        client.run(["ip", "addr", "add", "10.0.0.2/24", "dev", "eth0"])?;
        client.run(["ip", "addr", "add", "fd00:10::2/64", "dev", "eth0", "nodad"])?;
        client.run(["ip", "link", "set", "eth0", "up"])?;
        // The client's only routes: Service CIDRs and the pod CIDR, via the
        // node. Never a default route.
        for (cidr, via) in [
            ("10.96.0.0/16", "10.0.0.1"),
            ("10.244.0.0/24", "10.0.0.1"),
            ("fd00:96::/108", "fd00:10::1"),
            ("fd00:244::/64", "fd00:10::1"),
        ] {
            client.run(["ip", "route", "add", cidr, "via", via, "dev", "eth0"])?;
        }
        Ok(())
    }

    fn link_pod(&self, pod: &PodNs) -> Result<()> {
        link_pod(&PodLink {
            node: &self.node,
            pod: &pod.ns,
            link: &pod.node_link,
            ipv4: pod.ipv4,
            ipv6: pod.ipv6,
            gateway4: NODE_POD_GATEWAY4,
            gateway6: NODE_POD_GATEWAY6,
        })
    }

    /// The name prefix of this topology's namespaces (`sy<pid>x<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The folder for this topology's logs (and, by convention, manifests).
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The node namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The client namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// Pod `index`.
    ///
    /// # Panics
    /// If there is no such pod (a bug in the test).
    pub fn pod(&self, index: usize) -> &PodNs {
        &self.pods[index]
    }

    /// Pod `index`, mutably (to reach its server).
    ///
    /// # Panics
    /// If there is no such pod (a bug in the test).
    pub fn pod_mut(&mut self, index: usize) -> &mut PodNs {
        &mut self.pods[index]
    }

    /// All pods.
    pub fn pods(&self) -> &[PodNs] {
        &self.pods
    }

    /// Starts `pod-server` in every pod as [`PodServerConfig::web`] (names
    /// `web-0`, `web-1`, ...; HTTP 8080, UDP 5353) and waits for each to be
    /// ready.
    pub fn start_pod_servers(&mut self) -> Result<()> {
        for index in 0..self.pods.len() {
            self.start_pod_server(index, PodServerConfig::web(index))?;
        }
        Ok(())
    }

    /// Starts `pod-server` in pod `index` as `config` (stopping the one
    /// already there) and waits until it is ready.
    pub fn start_pod_server(&mut self, index: usize, config: PodServerConfig) -> Result<()> {
        let log = self
            .scratch
            .join(&format!("pod{index}-{}.log", config.name));
        let pod = self
            .pods
            .get_mut(index)
            .with_context(|| format!("no pod {index}"))?;
        pod.server.start(&pod.ns, config, &log)
    }

    /// Stops the server in pod `index` (SIGTERM, then SIGKILL).
    pub fn stop_pod_server(&mut self, index: usize) -> Result<()> {
        let pod = self
            .pods
            .get_mut(index)
            .with_context(|| format!("no pod {index}"))?;
        pod.server.stop()
    }

    /// Starts the switchyard daemon in the node namespace over `manifests`
    /// with the default [`DaemonConfig`] (userspace proxy), logging into this
    /// topology's scratch folder, and waits until `/healthz` answers 200.
    pub fn start_daemon(&self, manifests: &Manifests) -> Result<Daemon> {
        self.start_daemon_with(manifests, &DaemonConfig::default())
    }

    /// Like [`Topology::start_daemon`], in `mode` ([`DaemonConfig::for_mode`]:
    /// in eBPF mode attached to the client's cgroup, pinned under
    /// [`Topology::bpf_pin_path`]).
    pub fn start_daemon_mode(&self, manifests: &Manifests, mode: Mode) -> Result<Daemon> {
        self.start_daemon_with(manifests, &DaemonConfig::for_mode(mode, self)?)
    }

    /// Like [`Topology::start_daemon`], with `config`.
    pub fn start_daemon_with(
        &self,
        manifests: &Manifests,
        config: &DaemonConfig,
    ) -> Result<Daemon> {
        if config.ebpf.is_some() {
            self.ebpf_used.store(true, Ordering::SeqCst);
        }
        Daemon::start(&self.node, manifests.path(), self.scratch.path(), config)
    }

    /// The bpffs folder an eBPF-mode daemon of this topology pins into:
    /// `/sys/fs/bpf/<prefix>`.
    pub fn bpf_pin_path(&self) -> PathBuf {
        Path::new(BPFFS).join(&self.prefix)
    }

    /// Makes `ip` a local address of the node (on its `lo`) and starts a
    /// `pod-server` named `name` there, serving HTTP on `ip:port`; returns
    /// its guard once it is ready. A test uses it to see whether a client's
    /// connect to a Service address was translated: a connect that is not
    /// reaches this server, one that is reaches a pod. The node's own
    /// processes are outside the client's cgroup, so nothing translates
    /// this server's traffic.
    pub fn serve_on_node(&self, ip: IpAddr, port: u16, name: &str) -> Result<Process> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let address = format!("{ip}/{prefix}");
        if !self.node.addresses("lo")?.contains(&address) {
            self.node
                .run(["ip", "addr", "add", &address, "dev", "lo", "nodad"])?;
        }
        let bin = pod_server_bin()?;
        let log = self.scratch.join(&format!("node-{name}.log"));
        let mut process = self.node.spawn(
            [
                bin.to_string_lossy().into_owned(),
                "--name".into(),
                name.into(),
                "--http".into(),
                SocketAddr::new(ip, port).to_string(),
            ],
            &log,
        )?;
        process.wait_for_line("ready", Duration::from_secs(10))?;
        Ok(process)
    }

    /// All addresses of pod `index` (IPv4 first), for manifests.
    pub fn pod_ips(&self, index: usize) -> Vec<IpAddr> {
        let pod = self.pod(index);
        vec![IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Before the fields go (the client's cgroup with them): a cgroup is
        // never removed with programs of ours still attached or pinned.
        let pins = self.bpf_pin_path();
        if (self.ebpf_used.load(Ordering::SeqCst) || pins.exists())
            && let Some(cgroup) = self.client.cgroup()
            && let Err(error) = crate::daemon::cleanup_ebpf(&pins, cgroup)
        {
            eprintln!("{error:#}");
        }
    }
}

/// Finds the `pod-server` binary: `$POD_SERVER_BIN`, else next to the
/// running test or bench executable (`target/<profile>/`), else
/// `<workspace>/target/debug/pod-server`.
pub fn pod_server_bin() -> Result<PathBuf> {
    test_bin("pod-server")
}

/// A binary of this crate (`pod-server`, `grpc-echo`, `ws-tool`): `$<NAME>_BIN` (upper case,
/// `-` as `_`), else beside the running test or bench executable, else `target/debug/`.
pub fn test_bin(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test and bench executables live in target/<profile>/deps/.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(crate::workspace_dir().join("target/debug").join(name));
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "{name} binary not found (looked at {candidates:?}): run `cargo build -p switchyard-tests` or set {var}"
    )
}

/// A pod's link to its node.
pub(crate) struct PodLink<'a> {
    pub node: &'a Netns,
    pub pod: &'a Netns,
    /// The veth end's name in the node namespace.
    pub link: &'a str,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's addresses on every pod link: the pods' gateways.
    pub gateway4: Ipv4Addr,
    pub gateway6: Ipv6Addr,
}

/// Makes a pod's link: a veth pair created in the node namespace with its peer (`eth0`) placed
/// straight into the pod's, so no interface ever exists in the host namespace; the node end
/// holds the gateway addresses (/32, /128) and a host route to each pod address; the pod gets
/// its addresses (/24, /64) and default routes via the gateways, which lead only to the node.
pub(crate) fn link_pod(l: &PodLink<'_>) -> Result<()> {
    let (node, ns, link) = (l.node, l.pod, l.link);
    let (gateway4, gateway6) = (l.gateway4.to_string(), l.gateway6.to_string());
    let (ipv4, ipv6) = (l.ipv4.to_string(), l.ipv6.to_string());
    node.run([
        "ip",
        "link",
        "add",
        link,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    node.run(["ip", "addr", "add", &format!("{gateway4}/32"), "dev", link])?;
    node.run([
        "ip",
        "addr",
        "add",
        &format!("{gateway6}/128"),
        "dev",
        link,
        "nodad",
    ])?;
    node.run(["ip", "link", "set", link, "up"])?;
    node.run([
        "ip",
        "route",
        "add",
        &format!("{ipv4}/32"),
        "dev",
        link,
        "src",
        &gateway4,
    ])?;
    node.run([
        "ip",
        "-6",
        "route",
        "add",
        &format!("{ipv6}/128"),
        "dev",
        link,
        "src",
        &gateway6,
    ])?;
    ns.run(["ip", "addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
    ns.run([
        "ip",
        "addr",
        "add",
        &format!("{ipv6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.run(["ip", "link", "set", "eth0", "up"])?;
    ns.run([
        "ip", "route", "add", "default", "via", &gateway4, "dev", "eth0",
    ])?;
    ns.run([
        "ip", "-6", "route", "add", "default", "via", &gateway6, "dev", "eth0",
    ])?;
    Ok(())
}
