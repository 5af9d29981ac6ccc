//! The command line: `switchyard run` (the daemon) and `switchyard services` (what a running
//! daemon has programmed). Flags keep kube-proxy's names where kube-proxy has the same flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::daemon::{DaemonConfig, Source};
use crate::datapath::ebpf::{Devices, EbpfConfig};
use crate::datapath::userspace::UserspaceConfig;
use crate::model::NodePortAddresses;
use crate::source::cluster::ClusterConnection;

/// switchyard: a Kubernetes service proxy (a kube-proxy replacement).
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon.
    Run(Box<RunArgs>),
    /// Show the frontends, backends and connection counts of a running daemon.
    Services(ServicesArgs),
    /// Check a running daemon's datapath against the wanted state now and repair any
    /// difference (as the periodic check does every --sync-period; SIGHUP does the same).
    Repair(RepairArgs),
    /// Remove everything switchyard pinned or attached for the eBPF datapath (programs,
    /// links, maps), e.g. after uninstalling it from a node.
    Cleanup(CleanupArgs),
    /// Run the embedded Kubernetes-compatible API server alone, for several node daemons and
    /// kubectl to share; its kubeconfig is written to `<data-dir>/kubeconfig`.
    Apiserver(ApiserverArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApiserverArgs {
    /// Where the database, certificates, token and kubeconfig live.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/switchyard/apiserver"
    )]
    pub data_dir: PathBuf,

    /// The address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub bind_address: SocketAddr,

    /// Service CIDRs ClusterIPs are allocated from, at most one per family.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.96.0.0/16,fd00:96::/108"
    )]
    pub service_cluster_ip_range: Vec<String>,

    /// The NodePort range, inclusive.
    #[arg(long, default_value = "30000-32767", value_parser = port_range)]
    pub service_node_port_range: (u16, u16),

    /// Log verbosity as in kube-proxy: 0-1 info, 2-3 debug, 4+ trace (`RUST_LOG` overrides).
    #[arg(long = "v", short = 'v', default_value_t = 0, value_name = "LEVEL")]
    pub verbosity: u8,
}

fn port_range(value: &str) -> Result<(u16, u16), String> {
    let (low, high) = value
        .split_once('-')
        .ok_or_else(|| format!("{value:?}: write the range as LOW-HIGH, e.g. 30000-32767"))?;
    let parse = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    let (low, high) = (parse(low)?, parse(high)?);
    if low == 0 || low > high {
        return Err(format!("{value:?}: need 1 <= LOW <= HIGH"));
    }
    Ok((low, high))
}

impl ApiserverArgs {
    /// The API server's configuration from the flags.
    pub fn config(&self) -> switchyard_apiserver::ApiServerConfig {
        switchyard_apiserver::ApiServerConfig {
            data_dir: self.data_dir.clone(),
            bind_address: self.bind_address,
            service_cluster_ip_range: self.service_cluster_ip_range.clone(),
            service_node_port_range: self.service_node_port_range,
            ..switchyard_apiserver::ApiServerConfig::default()
        }
    }
}

/// How switchyard serves Service traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// eBPF where the kernel allows it, otherwise userspace; the choice is logged at start.
    Auto,
    /// Socket-level load balancing in the kernel: cgroup programs rewrite `connect()` and
    /// `sendmsg()` to a backend.
    Ebpf,
    /// A userspace L4 proxy: each VIP is added to a local interface and each VIP:port bound.
    Userspace,
}

/// How north-south flows reach another node's backend (`--nodeport-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NodePortMode {
    Snat,
    Dsr,
}

/// How the tc programs attach (`--tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcAttach {
    Auto,
    Clsact,
}

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn maglev_table_size(value: &str) -> Result<u32, String> {
    let size: u32 = value.parse().map_err(|e| format!("{value:?}: {e}"))?;
    if crate::maglev::TABLE_SIZES.contains(&size) {
        Ok(size)
    } else {
        Err(format!(
            "{size} is not one of the table sizes {:?}",
            crate::maglev::TABLE_SIZES
        ))
    }
}

fn nodeport_addresses(value: &str) -> Result<NodePortAddresses, String> {
    NodePortAddresses::parse(value)
}

fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (write e.g. 500ms, 30s, 5m)"))
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Folder of Kubernetes manifests (*.yaml, *.yml, *.json; multi-document YAML) loaded into
    /// the embedded API server and followed: a changed file updates its objects, a removed
    /// file or document deletes them.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "master"])]
    pub manifests: Option<PathBuf>,

    /// Embedded API server (used when no --kubeconfig, --master or in-cluster environment is
    /// given): where its database, certificates, token and kubeconfig (`DIR/kubeconfig`) live.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/switchyard")]
    pub data_dir: PathBuf,

    /// Embedded API server: the address it serves HTTPS on, for kubectl and other clients.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:6443")]
    pub apiserver_bind_address: SocketAddr,

    /// Embedded API server: Service CIDRs ClusterIPs are allocated from, at most one per
    /// family.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR[,CIDR]",
        default_value = "10.96.0.0/16,fd00:96::/108"
    )]
    pub service_cluster_ip_range: Vec<String>,

    /// Watch the API server of this kubeconfig (its current context).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The API server's URL; overrides the kubeconfig's server (as kube-proxy's `--master`).
    /// Alone, it is used without credentials.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Also watch Pods and derive EndpointSlices for Services with a selector that have none
    /// (for API servers without an EndpointSlice controller).
    #[arg(long)]
    pub derive_endpoint_slices: bool,

    /// This node's name, as in its Node object (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// Which of the node's addresses (its Node object's `status.addresses`, InternalIP and
    /// ExternalIP) serve NodePorts: `primary` (the first InternalIP of each family), or
    /// comma-separated CIDRs the addresses must be in. Default: all of them.
    #[arg(long, value_name = "primary|CIDR[,CIDR]", default_value = "", hide_default_value = true, value_parser = nodeport_addresses)]
    pub nodeport_addresses: NodePortAddresses,

    /// Which datapath serves Service traffic.
    #[arg(long, value_enum, default_value = "auto")]
    pub proxy_mode: ProxyMode,

    /// The cgroup v2 whose processes' connections are balanced in eBPF mode (default: the
    /// node's cgroup v2 root).
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,

    /// bpffs folder where the eBPF maps and program links are pinned; a restarted daemon
    /// reopens them. Give each daemon on one machine its own.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PIN_PATH)]
    pub bpf_pin_path: PathBuf,

    /// In eBPF mode, close sockets still connected to a backend that is gone, so that clients
    /// reconnect to a live one (sockets to terminating backends are left alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub close_stale_sockets: bool,

    /// eBPF mode: the most frontends (VIP, port, protocol) the kernel map holds. A full map
    /// is an error in the log and `switchyard_bpf_map_full_total`; programmed Services keep
    /// working. Pinned maps keep their size until `switchyard cleanup`.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_max_frontends: u32,

    /// eBPF mode: the most distinct backends (address, port).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_max_backends: u32,

    /// eBPF mode: the most backend slots, summed over all frontends.
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_max_slots: u32,

    /// eBPF mode: the node's external interfaces, where tc programs serve NodePorts, external
    /// IPs and load-balancer IPs (comma-separated). Default: the interfaces that hold the
    /// node's addresses (its Node object's, as NodePorts and SNAT use them), found when the
    /// Node is known. `none` serves north-south traffic with the socket-level programs only
    /// (clients on the node).
    #[arg(long, value_name = "IFACE[,IFACE]|none", value_delimiter = ',')]
    pub devices: Vec<String>,

    /// eBPF mode: also serve north-south traffic in XDP on `--devices`, ahead of tc: a
    /// translated packet that leaves through the interface it arrived on (a backend on another
    /// node, a reply to its client) is sent back out from the driver; everything else falls
    /// through to the tc programs. Native XDP where the driver has it, generic otherwise.
    #[arg(long)]
    pub xdp: bool,

    /// eBPF mode: how the tc programs attach: `auto` (pinned TCX links on Linux 6.6 and
    /// later, clsact filters on older kernels) or `clsact` (filters on the interfaces' clsact
    /// qdisc, replaced at each start; `switchyard cleanup --devices` removes them).
    #[arg(long, value_enum, default_value = "auto")]
    pub tc_attach: TcAttach,

    /// eBPF mode: how north-south TCP flows reach a backend on another node: `snat` (from
    /// this node's address, replies come back through it) or `dsr` (direct server return: the
    /// flow's SYN carries an IP option naming the frontend, and the backend's node sends the
    /// replies straight to the client from the frontend's address). UDP always uses SNAT.
    /// Every node must run switchyard with the tc programs for DSR.
    #[arg(long, value_enum, default_value = "snat")]
    pub nodeport_mode: NodePortMode,

    /// eBPF mode: the smallest Maglev table of a north-south frontend (one of 251, 509, 1021,
    /// 2039, 4093, 8191, 16381, 32749, 65521, 131071). A frontend gets the smallest of these
    /// with at least 100 entries per backend. Every node must use the same value, so that all
    /// of them choose the same backend for a flow.
    #[arg(long, default_value_t = crate::maglev::DEFAULT_TABLE_SIZE, value_parser = maglev_table_size)]
    pub maglev_table_size: u32,

    /// eBPF mode: the most north-south flows tracked (LRU; each flow also holds a reply
    /// entry).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_max_conntrack: u32,

    /// Address of /metrics, /services and /proxyMode.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,

    /// Address of /healthz and /livez.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,

    /// The most Services programmed; one beyond it is left out, with a warning naming it and
    /// `switchyard_limit_reached_total{limit="services"}`, until another goes.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_services: u32,

    /// The most ports of one Service; a Service with more is left out whole, with a warning.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_service_ports: u32,

    /// The most backends of one frontend; beyond it the first (ready first, then by address)
    /// are used, with a warning.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_service_backends: u32,

    /// Keep every capability the process started with, instead of dropping all but those the
    /// proxy mode needs (see the README's "Least privilege"); for debugging only.
    #[arg(long)]
    pub keep_capabilities: bool,

    /// The admin socket (a Unix socket, mode 0600) that `switchyard repair` talks to; an empty
    /// value turns it off.
    #[arg(long, value_name = "PATH", default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,

    /// How often the datapath is checked against the wanted state and repaired; /healthz fails
    /// when no sync happened within twice this period.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub sync_period: Duration,

    /// How long open connections may drain after SIGTERM (or a handover to the next
    /// instance) before switchyard exits.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub shutdown_grace_period: Duration,

    /// After SIGTERM, how long switchyard keeps accepting new connections on its listeners
    /// (userspace proxy, L7, health check ports) while the next instance may start and take
    /// them over; then it closes them and drains. 0 closes them at once. Not needed when the
    /// next instance starts first: it takes over at its first sync.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub handover_wait: Duration,

    /// Interface that holds the Service VIPs in userspace mode.
    #[arg(long, default_value = "lo", value_name = "IFACE")]
    pub vip_interface: String,

    /// Timeout of a TCP connect to a backend; a failed connect is retried on another backend.
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub backend_connect_timeout: Duration,

    /// How many backends one TCP connection tries before it is reset.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub backend_connect_attempts: u16,

    /// A UDP flow without traffic for this long is forgotten.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub udp_idle_timeout: Duration,

    /// eBPF mode: the address of the node-local L7 listeners that ClusterIP connections of
    /// L7 ports are sent to, one per family (default: the Node's first InternalIP).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub l7_address: Vec<std::net::IpAddr>,

    /// eBPF mode: the ports L7 listeners may take.
    #[arg(long, value_name = "FIRST-LAST", default_value = "15100-15999", value_parser = crate::datapath::l7::parse_ports)]
    pub l7_ports: std::ops::RangeInclusive<u16>,

    /// Threads that serve L7 client connections, each with a single-threaded runtime of
    /// its own (connections are dealt to them in turn); `0` serves them on the daemon's
    /// main runtime. Default: as many as the CPUs the daemon may run on.
    #[arg(long, value_name = "N")]
    pub l7_threads: Option<usize>,

    /// Write an access log of L7 requests (one JSON object per line) to this file, or `-`
    /// for standard output. Off by default.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,

    /// Watch `kubernetes.io/tls` Secrets for the TLS annotations of L7 Services (needs
    /// list/watch on Secrets; without it TLS frontends are skipped).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub watch_secrets: bool,

    /// Log verbosity as in kube-proxy: 0-1 info, 2-3 debug, 4+ trace (`RUST_LOG` overrides).
    #[arg(long = "v", short = 'v', default_value_t = 0, value_name = "LEVEL")]
    pub verbosity: u8,

    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Where the eBPF datapath pins its state by default.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/switchyard";

/// The node's cgroup v2 root: `/sys/fs/cgroup` on a unified hierarchy, else the v2 mount of
/// a hybrid one.
pub fn default_cgroup_path() -> PathBuf {
    let unified = PathBuf::from("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        unified
    } else {
        unified.join("unified")
    }
}

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// The bpffs folder the daemon pinned to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PIN_PATH)]
    pub bpf_pin_path: PathBuf,

    /// The cgroup the daemon attached to (default: the node's cgroup v2 root).
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,

    /// Interfaces to remove switchyard's clsact filters from (after `--tc-attach clsact`;
    /// pinned TCX and XDP links are removed without this).
    #[arg(long, value_name = "IFACE[,IFACE]", value_delimiter = ',')]
    pub devices: Vec<String>,
}

/// How `switchyard services` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    /// The daemon's metrics address.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_address: SocketAddr,

    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The daemon's admin socket.
    #[arg(long, value_name = "PATH", default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,

    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

impl RunArgs {
    /// The daemon's configuration from the flags.
    pub fn daemon_config(&self) -> DaemonConfig {
        let node_name = self.hostname_override.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".to_owned())
        });
        DaemonConfig {
            node_name: node_name.trim().to_ascii_lowercase(),
            nodeport_addresses: self.nodeport_addresses.clone(),
            limits: crate::model::Limits {
                max_services: self.max_services as usize,
                max_service_ports: self.max_service_ports as usize,
                max_service_backends: self.max_service_backends as usize,
            },
            source: {
                let connection = ClusterConnection {
                    kubeconfig: self.kubeconfig.clone(),
                    master: self.master.clone(),
                };
                if connection.is_configured() {
                    Source::Cluster {
                        connection,
                        derive_endpoint_slices: self.derive_endpoint_slices,
                    }
                } else {
                    Source::Embedded {
                        apiserver: switchyard_apiserver::ApiServerConfig {
                            data_dir: self.data_dir.clone(),
                            bind_address: self.apiserver_bind_address,
                            service_cluster_ip_range: self.service_cluster_ip_range.clone(),
                            ..switchyard_apiserver::ApiServerConfig::default()
                        },
                        manifests: self.manifests.clone(),
                    }
                }
            },
            metrics_bind_address: self.metrics_bind_address,
            healthz_bind_address: self.healthz_bind_address,
            admin_socket: (!self.admin_socket.as_os_str().is_empty())
                .then(|| self.admin_socket.clone()),
            sync_period: self.sync_period,
            shutdown_grace: self.shutdown_grace_period,
            handover_wait: self.handover_wait,
            mode: self.proxy_mode,
            l7: crate::datapath::l7::L7Config {
                addresses: self.l7_address.clone(),
                ports: self.l7_ports.clone(),
                proxy: self.proxy_config(),
            },
            access_log: self.access_log.clone(),
            watch_secrets: self.watch_secrets,
            ebpf: EbpfConfig {
                socket_lb: switchyard_ebpf::SocketLbConfig {
                    pin_path: self.bpf_pin_path.clone(),
                    cgroup_path: self.cgroup_path.clone().unwrap_or_else(default_cgroup_path),
                    max_frontends: self.bpf_max_frontends,
                    max_backends: self.bpf_max_backends,
                    max_slots: self.bpf_max_slots,
                    max_conntrack: self.bpf_max_conntrack,
                    ..switchyard_ebpf::SocketLbConfig::default()
                },
                close_stale_sockets: self.close_stale_sockets,
                devices: Devices::from_flag(&self.devices),
                xdp: self.xdp,
                dsr: self.nodeport_mode == NodePortMode::Dsr,
                tc_mode: match self.tc_attach {
                    TcAttach::Auto => switchyard_ebpf::TcMode::Auto,
                    TcAttach::Clsact => switchyard_ebpf::TcMode::Clsact,
                },
                maglev_table_size: self.maglev_table_size,
            },
            userspace: UserspaceConfig {
                vip_interface: self.vip_interface.clone(),
                proxy: self.proxy_config(),
            },
        }
    }

    fn proxy_config(&self) -> switchyard_proxy::ProxyConfig {
        switchyard_proxy::ProxyConfig {
            connect_timeout: self.backend_connect_timeout,
            connect_attempts: usize::from(self.backend_connect_attempts),
            udp_idle_timeout: self.udp_idle_timeout,
            l7_threads: self.l7_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            ..switchyard_proxy::ProxyConfig::default()
        }
    }
}
