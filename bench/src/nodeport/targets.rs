//! The ways the external client reaches the pod on node 1, as a list: a run
//! measures the targets named on the command line, in that order, each round.
//! Adding a datapath is one entry in [`CATALOG`] (and its name in
//! [`DEFAULT_TARGETS`] if every run should measure it), as `switchyard-xdp`
//! is: switchyard's daemon with `--xdp` added, on a bridge prepared for XDP
//! ([`Target::needs_xdp_bridge`]).
//!
//! Only one target is ever set up at a time: [`set_up`] starts switchyard
//! or loads kube-proxy's rules into node 0, [`tear_down`] stops the daemon
//! and removes its eBPF state (`switchyard cleanup`) or flushes the rules,
//! and then checks that the node port no longer answers, so no target ever
//! measures another's leftovers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use switchyard_tests::{Daemon, Mode, Netns, client, metrics, poll_until};

use super::iptables;
use super::{ENTRY_NODE, POD_NODE, Scene};
use crate::cpu;
use crate::kube_proxy;
use crate::rule_loader::{self, Backend};

/// What carries a target's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No Service: the pod's own address, routed from the client via the
    /// pod's node (the anchor).
    Direct,
    /// switchyard's daemon in eBPF mode on node 0 (`--devices eth0`, as the
    /// test cluster starts it), with `extra_args` added.
    Switchyard {
        /// Flags added to `switchyard run`.
        extra_args: &'static [&'static str],
        /// Also run switchyard (with the same flags) on node 1, the backend's node, which
        /// direct server return needs: the pod then sees the client itself.
        backend_node: bool,
    },
    /// kube-proxy's iptables rules for the Service, loaded into node 0 by
    /// `backend` (never nftables: this shape is iptables').
    KubeProxyIptables(Backend),
}

/// One way to reach the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The name on the command line and in reports.
    pub name: &'static str,
    /// One line for the report.
    pub summary: &'static str,
    /// What carries it.
    pub kind: Kind,
    /// Whether it needs the bridge prepared for XDP
    /// ([`switchyard_tests::Cluster::prepare_xdp`]: checksums computed by the
    /// client and the pods, an XDP program on every bridge port). That
    /// changes the path of every target, so a run that measures such a
    /// target prepares the bridge for all of them.
    pub needs_xdp_bridge: bool,
}

/// Every target this benchmark knows.
pub const CATALOG: &[Target] = &[
    Target {
        name: "direct",
        summary: "the pod's address 10.244.1.10:8080, routed via node 1 (no Service, no NAT; the anchor)",
        kind: Kind::Direct,
        needs_xdp_bridge: false,
    },
    Target {
        name: "switchyard-tc",
        summary: "switchyard --proxy-mode ebpf --devices eth0 on node 0: tc programs on eth0 (Maglev, conntrack map, SNAT to 192.168.0.10, FIB redirect)",
        kind: Kind::Switchyard {
            extra_args: &[],
            backend_node: false,
        },
        needs_xdp_bridge: false,
    },
    Target {
        name: "switchyard-xdp",
        summary: "switchyard --proxy-mode ebpf --devices eth0 --xdp on node 0: the same translation in XDP on eth0, the rewritten packets sent back out from the driver (XDP_TX), the rest left to tc",
        kind: Kind::Switchyard {
            extra_args: &["--xdp"],
            backend_node: false,
        },
        needs_xdp_bridge: true,
    },
    Target {
        name: "switchyard-dsr",
        summary: "switchyard --proxy-mode ebpf --devices eth0 --nodeport-mode dsr on nodes 0 and 1: node 0 translates the destination only and marks the SYN with the frontend (an IP option); node 1 sends the pod's replies straight to the client",
        kind: Kind::Switchyard {
            extra_args: &["--nodeport-mode", "dsr"],
            backend_node: true,
        },
        needs_xdp_bridge: false,
    },
    Target {
        name: "kube-proxy-iptables",
        summary: "kube-proxy's iptables NodePort rules (KUBE-NODEPORTS -> KUBE-EXT (mark) -> KUBE-SVC -> KUBE-SEP DNAT, MASQUERADE in POSTROUTING) in node 0, loaded with iptables-legacy-restore",
        kind: Kind::KubeProxyIptables(Backend::IptablesLegacy),
        needs_xdp_bridge: false,
    },
    Target {
        name: "kube-proxy-iptables-nft",
        summary: "the same kube-proxy rules loaded with iptables-nft-restore (nf_tables)",
        kind: Kind::KubeProxyIptables(Backend::IptablesNft),
        needs_xdp_bridge: false,
    },
];

/// The targets of a run unless `--targets` says otherwise.
pub const DEFAULT_TARGETS: &[&str] = &[
    "direct",
    "switchyard-tc",
    "switchyard-dsr",
    "kube-proxy-iptables",
];

/// The catalog entry called `name`.
pub fn find(name: &str) -> Option<Target> {
    CATALOG.iter().copied().find(|t| t.name == name)
}

/// How a target was set up, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetupInfo {
    /// Seconds from the start of the set-up to the first right answer.
    pub ready_s: Option<f64>,
    /// Seconds `iptables-restore` took (kube-proxy targets).
    pub rules_load_s: Option<f64>,
    /// Bytes of rules loaded (kube-proxy targets).
    pub rule_bytes: Option<usize>,
}

/// What a correct answer through a target looks like, and what it was.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Validation {
    /// The URL asked.
    pub url: String,
    /// The pod names 5 fresh connections got.
    pub answered: Vec<String>,
    /// The client address the pod saw (`/peer`).
    pub peer: String,
    /// The address the pod should see: the node's for the NodePort (SNAT or
    /// MASQUERADE), the client's own for direct.
    pub expected_peer: IpAddr,
}

/// A target while it is set up. Dropping it tears it down, best effort;
/// [`tear_down`] does so and says what went wrong.
#[derive(Debug)]
pub enum Active {
    /// Nothing to run.
    Direct,
    /// The daemon on node 0 (and on node 1, for DSR).
    Switchyard(Box<Daemon>, Option<Box<Daemon>>),
    /// The rules in node 0.
    KubeProxy(Rules),
}

impl Active {
    /// The daemon's PID, for a switchyard target.
    pub fn daemon_pid(&self) -> Option<u32> {
        match self {
            Self::Switchyard(daemon, _) => Some(daemon.pid()),
            _ => None,
        }
    }

    /// Fails if the daemon has exited on its own.
    pub fn check_running(&mut self) -> Result<()> {
        if let Self::Switchyard(daemon, _) = self
            && let Some(status) = daemon.try_wait()?
        {
            bail!(
                "switchyard exited ({status}); its log ends:\n{}",
                daemon.log_tail(40)
            );
        }
        Ok(())
    }
}

/// kube-proxy's rules in a node, flushed on drop unless [`Rules::remove`]d.
#[derive(Debug)]
pub struct Rules {
    node: Netns,
    backend: Backend,
    removed: bool,
}

/// The iptables commands of `backend` (`iptables-legacy`, `-save`).
fn iptables_commands(backend: Backend) -> Result<(&'static str, &'static str)> {
    match backend {
        Backend::IptablesLegacy => Ok(("iptables-legacy", "iptables-legacy-save")),
        Backend::IptablesNft => Ok(("iptables-nft", "iptables-nft-save")),
        Backend::Nftables => bail!("the NodePort shape is written for iptables, not nftables"),
    }
}

impl Rules {
    /// Flushes the nat and filter tables and deletes their chains (nothing
    /// else writes iptables rules in node 0), then checks that no `KUBE-`
    /// chain is left.
    pub fn remove(&mut self) -> Result<()> {
        let (cli, save) = iptables_commands(self.backend)?;
        for table in ["nat", "filter"] {
            self.node.run([cli, "-w", "5", "-t", table, "-F"])?;
            self.node.run([cli, "-w", "5", "-t", table, "-X"])?;
        }
        self.removed = true;
        let left = self.node.run([save])?;
        ensure!(
            !left.contains("KUBE-"),
            "kube-proxy's chains are still in node 0 after the flush:\n{left}"
        );
        Ok(())
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        if !self.removed
            && let Err(error) = self.remove()
        {
            eprintln!("flushing kube-proxy's rules in node 0: {error:#}");
        }
    }
}

/// Where the client connects for `target`.
pub fn address(scene: &Scene<'_>, target: Target) -> SocketAddr {
    match target.kind {
        Kind::Direct => scene.service.endpoint,
        Kind::Switchyard { .. } | Kind::KubeProxyIptables(_) => SocketAddr::new(
            IpAddr::V4(scene.cluster.node_ip(ENTRY_NODE)),
            scene.service.node_port,
        ),
    }
}

/// The client address the pod must see through `target`.
fn expected_peer(scene: &Scene<'_>, target: Target) -> IpAddr {
    match target.kind {
        Kind::Direct
        | Kind::Switchyard {
            backend_node: true, ..
        } => IpAddr::V4(switchyard_tests::cluster::EXTERNAL_IP),
        Kind::Switchyard { .. } | Kind::KubeProxyIptables(_) => {
            IpAddr::V4(scene.cluster.node_ip(ENTRY_NODE))
        }
    }
}

fn url(scene: &Scene<'_>, target: Target, path: &str) -> String {
    format!("http://{}{path}", address(scene, target))
}

/// One GET from the external client: the body, or curl's complaint.
fn external_get(scene: &Scene<'_>, url: &str, timeout: &str) -> Result<Result<String, String>> {
    let out = client::curl(
        scene.cluster.external(),
        &[
            "-sS",
            "--max-time",
            timeout,
            "--connect-timeout",
            timeout,
            url,
        ],
    )?;
    Ok(if out.status.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(format!(
            "curl exit {}: {}",
            out.code.unwrap_or(-1),
            out.stderr.trim()
        ))
    })
}

/// Fails unless nothing answers on the node port of node 0: run before any
/// target is set up and after each is torn down.
pub fn ensure_closed(scene: &Scene<'_>, after: &str) -> Result<()> {
    let url = format!(
        "http://{}:{}/",
        scene.cluster.node_ip(ENTRY_NODE),
        scene.service.node_port
    );
    if let Ok(body) = external_get(scene, &url, "1")? {
        bail!("{url} still answers ({body:?}) {after}: the next target would measure it");
    }
    Ok(())
}

/// Sets `target` up and waits until the external client gets the right
/// pod through it.
#[allow(
    clippy::disallowed_types,
    reason = "synchronous orchestration, no runtime: std's clock is the right one"
)]
pub fn set_up(scene: &Scene<'_>, target: Target) -> Result<(Active, SetupInfo)> {
    let start = std::time::Instant::now();
    let mut info = SetupInfo::default();
    let active = match target.kind {
        Kind::Direct => Active::Direct,
        Kind::Switchyard {
            extra_args,
            backend_node,
        } => {
            let backend = if backend_node {
                let mut config =
                    scene
                        .cluster
                        .daemon_config(POD_NODE, Mode::Ebpf, &scene.kubeconfig)?;
                config
                    .extra_args
                    .extend(extra_args.iter().map(|a| (*a).to_owned()));
                Some(Box::new(cpu::with_cpu(scene.config.proxy_cpu, || {
                    scene.cluster.start_daemon(POD_NODE, &config)
                })?))
            } else {
                None
            };
            let mut config =
                scene
                    .cluster
                    .daemon_config(ENTRY_NODE, Mode::Ebpf, &scene.kubeconfig)?;
            config
                .extra_args
                .extend(extra_args.iter().map(|a| (*a).to_owned()));
            // Started from a thread pinned to the proxy CPU: the daemon and
            // its runtime stay off the load CPU.
            let daemon = cpu::with_cpu(scene.config.proxy_cpu, || {
                scene.cluster.start_daemon(ENTRY_NODE, &config)
            })?;
            let mut active = Active::Switchyard(Box::new(daemon), backend);
            if let Err(error) = wait_answers(scene, target, &mut active) {
                let Active::Switchyard(daemon, _) = &active else {
                    unreachable!("set up as switchyard just above")
                };
                return Err(error.context(switchyard_diagnostics(scene, daemon)));
            }
            active
        }
        Kind::KubeProxyIptables(backend) => {
            iptables_commands(backend)?;
            let node = scene.cluster.node(ENTRY_NODE).clone();
            let text = iptables::restore_input(&scene.service, &scene.config.cluster_cidr);
            let hooks = kube_proxy::iptables::hooks();
            // From here on the guard flushes whatever got loaded.
            let rules = Rules {
                node: node.clone(),
                backend,
                removed: false,
            };
            let took = rule_loader::in_netns(
                &node,
                scene.config.proxy_cpu,
                Duration::from_secs(30),
                |loader| {
                    loader.load(backend, &hooks)?;
                    loader.load(backend, &text)
                },
            )?;
            info.rules_load_s = Some(took.as_secs_f64());
            info.rule_bytes = Some(text.len());
            let mut active = Active::KubeProxy(rules);
            wait_answers(scene, target, &mut active).with_context(|| {
                format!(
                    "the rules loaded into node 0:\n{}",
                    node.run([iptables_commands(backend).map_or("iptables-save", |c| c.1)])
                        .unwrap_or_else(|e| format!("{e:#}"))
                )
            })?;
            active
        }
    };
    info.ready_s = Some(start.elapsed().as_secs_f64());
    Ok((active, info))
}

/// Polls until `target` answers with the pod's name.
fn wait_answers(scene: &Scene<'_>, target: Target, active: &mut Active) -> Result<()> {
    let url = url(scene, target, "/");
    let want = &scene.service.pod_name;
    let mut last = String::from("no attempt");
    let result = poll_until(
        &format!("{url} to answer {want:?} from the external client"),
        scene.config.ready_timeout,
        || {
            active.check_running()?;
            match external_get(scene, &url, "1")? {
                Ok(body) if &body == want => Ok(Some(())),
                Ok(body) => {
                    last = format!("answered {body:?}");
                    Ok(None)
                }
                Err(error) => {
                    last = error;
                    Ok(None)
                }
            }
        },
    );
    result.with_context(|| format!("last attempt: {last}"))
}

/// Everything that helps to see why switchyard's node port does not answer.
fn switchyard_diagnostics(scene: &Scene<'_>, daemon: &Daemon) -> String {
    let node = scene.cluster.node(ENTRY_NODE);
    let tc = node
        .exec(["bpftool", "net", "show", "dev", "eth0"])
        .map_or_else(
            |e| format!("{e:#}"),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let services = daemon.services_json().map_or_else(
        |e| format!("{e:#}"),
        |v| serde_json::to_string(&v).unwrap_or_default(),
    );
    let problems: Vec<String> = problem_lines(&daemon.log());
    format!(
        "switchyard on node 0 (log {}):\n--- bpftool net show dev eth0 (node 0) ---\n{tc}\n--- /services ---\n{services}\n--- warnings and errors ---\n{}\n--- last log lines ---\n{}",
        daemon.log_path().display(),
        problems.join("\n"),
        daemon.log_tail(40)
    )
}

/// The daemon's warnings, errors and panics (the first 40).
pub fn problem_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .take(40)
        .map(str::to_owned)
        .collect()
}

/// Checks, with fresh connections from the external client, that `target`
/// reaches the pod on node 1 (its name, 5 times) and that the pod sees the
/// client address the target implies.
pub fn validate(scene: &Scene<'_>, target: Target) -> Result<Validation> {
    let url = url(scene, target, "/");
    let answered = client::curl_many(scene.cluster.external(), &url, 5)
        .with_context(|| format!("{}: GET {url} from the external client", target.name))?;
    let want = &scene.service.pod_name;
    ensure!(
        answered.iter().all(|name| name == want),
        "{}: GET {url} answered {answered:?}, not the pod on node 1 ({want})",
        target.name
    );
    let peer_url = self::url(scene, target, "/peer");
    let peer = client::curl_once(scene.cluster.external(), &peer_url)
        .with_context(|| format!("{}: GET {peer_url}", target.name))?;
    let expected_peer = expected_peer(scene, target);
    let seen: Option<IpAddr> = peer
        .parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical());
    ensure!(
        seen == Some(expected_peer),
        "{}: the pod saw the client as {peer}, not {expected_peer}: the traffic did not take the path this target stands for",
        target.name
    );
    Ok(Validation {
        url,
        answered,
        peer,
        expected_peer,
    })
}

/// What tearing a target down found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TearDownInfo {
    /// CPU time (user + system) the daemon used over its whole life, seconds.
    pub daemon_cpu_s: Option<f64>,
    /// The daemon's warnings and errors.
    pub daemon_problems: Vec<String>,
    /// Packets the tc or XDP programs translated over the daemon's life
    /// (`switchyard_bpf_nodeport_packets_total`).
    pub nodeport_packets: Option<f64>,
    /// Of those, the ones XDP sent back out (`switchyard_bpf_xdp_tx_total`).
    pub xdp_tx_packets: Option<f64>,
}

/// Stops the daemon and removes its eBPF state, or flushes the rules; then
/// checks that the node port no longer answers.
pub fn tear_down(scene: &Scene<'_>, target: Target, active: Active) -> Result<TearDownInfo> {
    let mut info = TearDownInfo::default();
    match active {
        Active::Direct => {}
        Active::Switchyard(mut daemon, backend) => {
            if let Some(mut backend) = backend {
                backend.terminate(Duration::from_secs(5))?;
                backend.cleanup_ebpf()?;
            }
            info.daemon_cpu_s = cpu::clock_ticks()
                .and_then(|ticks| cpu::process_time(daemon.pid(), ticks))
                .ok()
                .map(|t| t.as_secs_f64());
            info.daemon_problems = problem_lines(&daemon.log());
            if let Ok(text) = daemon.metrics() {
                let samples = metrics::parse(&text);
                let count = |name: &str| {
                    (!metrics::samples(&samples, name).is_empty())
                        .then(|| metrics::sum(&samples, name, &[]))
                };
                info.nodeport_packets = count("switchyard_bpf_nodeport_packets_total");
                info.xdp_tx_packets = count("switchyard_bpf_xdp_tx_total");
            }
            daemon.terminate(Duration::from_secs(5))?;
            daemon.cleanup_ebpf()?;
            // This bpftool (7.1) lists XDP programs but not TCX links; the
            // node port answering no more (below) is what shows those gone.
            let node = scene.cluster.node(ENTRY_NODE);
            let tc = node.run(["bpftool", "net", "show", "dev", "eth0"])?;
            ensure!(
                !tc.contains("sy_") && !tc.contains("driver id") && !tc.contains("generic id"),
                "switchyard's programs are still attached in node 0 after `switchyard cleanup`:\n{tc}"
            );
        }
        Active::KubeProxy(mut rules) => rules.remove()?,
    }
    ensure_closed(scene, &format!("after {} was torn down", target.name))?;
    Ok(info)
}
