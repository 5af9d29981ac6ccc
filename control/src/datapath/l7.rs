//! L7 ports in eBPF mode: the socket-level programs balance connections, not requests, so a
//! ClusterIP port served per request gets a listener of `switchyard-proxy` on the node, and
//! the kernel sends every connection to that ClusterIP to the listener, which balances each
//! request over the real endpoints.
//!
//! The listener is on the node's address (reachable from the node's pods and from processes
//! on the node), on a port of `--l7-ports` chosen by a hash of the frontend, so that a
//! restarted daemon finds the same one.
//!
//! An L7 NodePort is not given to the tc programs at all: the proxy listens on the node
//! address and node port itself, as in userspace mode, so a connection from outside reaches
//! it with its client address and is balanced per request too. External and load-balancer
//! IPs stay L4 on the tc programs (they are not the node's addresses to listen on).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proxy as proxy;

use super::userspace::{spec_of, views};
use super::{Applied, Datapath, DatapathCounter, Drift, FrontendView, Status, StatusSource};
use crate::diff::TableDiff;
use crate::model::{
    Algorithm, Backend, BackendState, Frontend, FrontendKind, Protocol, ServiceEntry, ServiceTable,
};

/// Where L7 listeners go.
#[derive(Clone, Debug)]
pub struct L7Config {
    /// The listeners' address per family; the node's `InternalIP` when unset.
    pub addresses: Vec<IpAddr>,
    /// The ports listeners may take.
    pub ports: RangeInclusive<u16>,
    pub proxy: proxy::ProxyConfig,
}

/// The default `--l7-ports`: below the NodePort range and the kernel's ephemeral ports.
pub const DEFAULT_PORTS: RangeInclusive<u16> = 15_100..=15_999;

/// Parses `--l7-ports` (`first-last`).
pub fn parse_ports(value: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = value
        .split_once('-')
        .ok_or_else(|| format!("{value:?} is not a port range such as 15100-15999"))?;
    let first: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let last: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if first == 0 || first > last {
        return Err(format!("{value:?}: want first-last with 0 < first <= last"));
    }
    Ok(first..=last)
}

/// A datapath whose L7 ClusterIP ports are served by a proxy listener on the node.
pub struct WithL7<D> {
    inner: D,
    proxy: Arc<proxy::Proxy>,
    config: L7Config,
    /// The listener of every frontend served per request: for a ClusterIP one on
    /// `--l7-ports`, for a NodePort its own address.
    listeners: BTreeMap<Frontend, SocketAddr>,
}

/// How a frontend reaches switchyard in eBPF mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The kernel balances its connections.
    Kernel,
    /// A ClusterIP port served per request: the kernel sends its connections to a listener.
    Redirected,
    /// A NodePort served per request: the proxy listens on it; the kernel leaves it alone.
    Bound,
}

fn route(entry: &ServiceEntry) -> Route {
    if entry.l7.is_none() || entry.frontend.proto != Protocol::Tcp {
        return Route::Kernel;
    }
    match entry.frontend.kind {
        FrontendKind::ClusterIp => Route::Redirected,
        FrontendKind::NodePort => Route::Bound,
        _ => Route::Kernel,
    }
}

/// A stable hash of the frontend, for its listener port.
fn frontend_hash(frontend: &Frontend) -> u64 {
    let name = format!("{}:{}", frontend.addr, frontend.port);
    switchyard_proxy::maglev::hash(name.as_bytes())
}

/// What the kernel is told for an L7 frontend: its one backend is the listener.
fn kernel_entry(entry: &ServiceEntry, listener: SocketAddr) -> ServiceEntry {
    let mut kernel = entry.clone();
    kernel.backends = if entry.backends.is_empty() {
        // No endpoints: the kernel refuses, as for any Service without them.
        Vec::new()
    } else {
        vec![Backend {
            addr: listener.ip(),
            port: listener.port(),
            state: BackendState::Active,
            node: None,
            zone: None,
            local: true,
        }]
    };
    kernel.draining = Vec::new();
    kernel.algorithm = Algorithm::Random;
    // Affinity is per request now (a consistent hash, if asked for).
    kernel.affinity = None;
    kernel
}

impl<D: Datapath> WithL7<D> {
    pub fn new(inner: D, config: L7Config) -> WithL7<D> {
        WithL7 {
            inner,
            proxy: Arc::new(proxy::Proxy::new(config.proxy.clone())),
            config,
            listeners: BTreeMap::new(),
        }
    }

    /// The proxy, for the status views.
    pub fn proxy(&self) -> Arc<proxy::Proxy> {
        Arc::clone(&self.proxy)
    }

    fn listen_ip(&self, entry: &ServiceEntry) -> Option<IpAddr> {
        let v4 = entry.frontend.addr.is_ipv4();
        self.config
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == v4)
            .or_else(|| entry.l7.as_ref()?.node_address)
    }

    /// The frontend's listener: a NodePort's own address; for a ClusterIP the one it has if
    /// its address still fits, else a free port found from the frontend's hash.
    fn listener_for(&self, entry: &ServiceEntry) -> Result<SocketAddr, String> {
        if route(entry) == Route::Bound {
            return Ok(SocketAddr::new(entry.frontend.addr, entry.frontend.port));
        }
        let ip = self.listen_ip(entry).ok_or_else(|| {
            "no node address for the L7 listener (the Node has no InternalIP of this family; set --l7-address)".to_owned()
        })?;
        if let Some(current) = self.listeners.get(&entry.frontend)
            && current.ip() == ip
        {
            return Ok(*current);
        }
        let used: BTreeSet<u16> = self
            .listeners
            .values()
            .filter(|l| self.config.ports.contains(&l.port()))
            .filter(|l| l.ip() == ip)
            .map(SocketAddr::port)
            .collect();
        let (first, last) = (*self.config.ports.start(), *self.config.ports.end());
        let size = u64::from(last - first) + 1;
        let start = frontend_hash(&entry.frontend) % size;
        (0..size)
            .map(|k| first + ((start + k) % size) as u16)
            .find(|p| !used.contains(p))
            .map(|p| SocketAddr::new(ip, p))
            .ok_or_else(|| {
                format!("every port of --l7-ports {first}-{last} is taken by another L7 frontend")
            })
    }

    /// Starts or updates the frontend's listener; returns the kernel's entry for it, none for
    /// a NodePort the proxy listens on.
    async fn serve(&mut self, entry: &ServiceEntry) -> Result<Option<ServiceEntry>, String> {
        let listener = self.listener_for(entry)?;
        if let Some(old) = self.listeners.get(&entry.frontend).copied()
            && old != listener
        {
            self.proxy.remove(old, proxy::Proto::Tcp).await;
            self.listeners.remove(&entry.frontend);
        }
        match self
            .proxy
            .upsert(listener, proxy::Proto::Tcp, spec_of(entry))
            .await
        {
            Ok(()) => {}
            // The backends changed; only the certificate did not: the kernel may point here.
            Err(proxy::ProxyError::Tls { .. }) => {}
            Err(error) => return Err(error.to_string()),
        }
        self.listeners.insert(entry.frontend, listener);
        Ok((route(entry) == Route::Redirected).then(|| kernel_entry(entry, listener)))
    }

    /// Whether the kernel holds an entry for `frontend` now: every frontend but a NodePort
    /// the proxy listens on.
    fn in_kernel(&self, frontend: &Frontend) -> bool {
        self.listeners
            .get(frontend)
            .is_none_or(|l| *l != SocketAddr::new(frontend.addr, frontend.port))
    }

    async fn release(&mut self, frontend: &Frontend) {
        if let Some(listener) = self.listeners.remove(frontend) {
            self.proxy.remove(listener, proxy::Proto::Tcp).await;
        }
    }
}

impl<D: Datapath> Datapath for WithL7<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn apply(&mut self, diff: &TableDiff) -> Applied {
        let mut kernel = TableDiff::default();
        let mut failed = Vec::new();
        let mut release = Vec::new();
        for (entries, changed) in [(&diff.added, false), (&diff.changed, true)] {
            for entry in entries {
                let frontend = entry.frontend;
                // Whether the kernel has it now: a change may move it in or out.
                let was_in_kernel = changed && self.in_kernel(&frontend);
                if route(entry) == Route::Kernel {
                    if self.listeners.contains_key(&frontend) {
                        release.push(frontend);
                    }
                    if was_in_kernel {
                        kernel.changed.push(entry.clone());
                    } else {
                        kernel.added.push(entry.clone());
                    }
                    continue;
                }
                // Make before break: the listener serves before the kernel points at it, or
                // lets go of a NodePort it balanced until now.
                match self.serve(entry).await {
                    Ok(Some(k)) if was_in_kernel => kernel.changed.push(k),
                    Ok(Some(k)) => kernel.added.push(k),
                    Ok(None) if was_in_kernel => kernel.removed.push(frontend),
                    Ok(None) => {}
                    Err(e) => failed.push((frontend, e)),
                }
            }
        }
        for frontend in &diff.removed {
            if self.in_kernel(frontend) {
                kernel.removed.push(*frontend);
            }
            if self.listeners.contains_key(frontend) {
                release.push(*frontend);
            }
        }
        let mut applied = self.inner.apply(&kernel).await;
        // The kernel no longer points at these listeners.
        for frontend in release {
            self.release(&frontend).await;
        }
        applied.failed.extend(failed);
        applied
    }

    async fn verify(&mut self, want: &ServiceTable) -> Drift {
        let mut repaired = Vec::new();
        let serving: BTreeSet<SocketAddr> = self
            .proxy
            .status()
            .into_iter()
            .filter(|s| s.listening || s.backends.is_empty())
            .map(|s| s.frontend)
            .collect();
        let mut kernel = ServiceTable::new();
        for entry in want.entries() {
            let route = route(entry);
            if route == Route::Kernel {
                kernel.insert(entry.clone());
                continue;
            }
            let known = self.listeners.get(&entry.frontend).copied();
            let healthy = known.is_some_and(|l| serving.contains(&l));
            match (healthy, known) {
                (true, Some(listener)) => {
                    if route == Route::Redirected {
                        kernel.insert(kernel_entry(entry, listener));
                    }
                }
                _ => match self.serve(entry).await {
                    Ok(k) => {
                        repaired.push(format!("L7 listener of {} started", entry.frontend));
                        if let Some(k) = k {
                            kernel.insert(k);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(frontend = %entry.frontend, %error, "cannot start the L7 listener");
                    }
                },
            }
        }
        let stale: Vec<Frontend> = self
            .listeners
            .keys()
            .filter(|f| want.get(f).is_none_or(|e| route(e) == Route::Kernel))
            .copied()
            .collect();
        let mut drift = self.inner.verify(&kernel).await;
        for frontend in stale {
            self.release(&frontend).await;
            repaired.push(format!("stale L7 listener of {frontend} closed"));
        }
        drift.repaired.extend(repaired);
        drift
    }

    fn listens(&self) -> bool {
        self.inner.listens() || self.proxy.has_frontends()
    }

    async fn close_listeners(&mut self) {
        self.inner.close_listeners().await;
        self.proxy.close_listeners().await;
    }

    async fn shutdown(&mut self, grace: Duration, handed_over: bool) {
        // The kernel keeps its maps (nothing is flushed); the listeners drain: HTTP/2 clients
        // get GOAWAY, requests in flight finish.
        self.inner.shutdown(grace, handed_over).await;
        let open = self.proxy.shutdown(grace).await;
        if open > 0 {
            tracing::warn!(
                open,
                "grace period over; closing the L7 connections still open"
            );
        }
        self.listeners.clear();
    }
}

/// The status of a datapath with L7 listeners: the datapath's frontends, then the listeners'
/// (their backends are the Service's endpoints, with request counters).
pub struct WithL7Status {
    pub inner: Status,
    pub proxy: Arc<proxy::Proxy>,
}

impl StatusSource for WithL7Status {
    fn frontends(&self) -> Vec<FrontendView> {
        let mut out = self.inner.frontends();
        out.extend(views(&self.proxy).into_iter().map(|mut v| {
            v.kind = "L7".to_owned();
            v
        }));
        out
    }

    fn counts_connections(&self) -> bool {
        self.inner.counts_connections()
    }

    fn counters(&self) -> Vec<DatapathCounter> {
        self.inner.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_ports("15100-15999").unwrap(), 15_100..=15_999);
        assert_eq!(parse_ports(" 7 - 7 ").unwrap(), 7..=7);
        for bad in ["", "15100", "0-10", "10-9", "a-b", "1-70000"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kernel_sees_the_listener_as_the_only_backend() {
        let entry = ServiceEntry {
            frontend: Frontend {
                addr: "10.96.0.10".parse().unwrap(),
                port: 80,
                proto: Protocol::Tcp,
                kind: FrontendKind::ClusterIp,
            },
            service: crate::store::ObjectKey::new("default", "web"),
            port_name: String::new(),
            backends: vec![Backend {
                addr: "10.244.1.5".parse().unwrap(),
                port: 8080,
                state: BackendState::Active,
                node: Some("n1".into()),
                zone: None,
                local: false,
            }],
            draining: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            affinity: Some(Duration::from_secs(10)),
            on_empty: crate::model::EmptyAction::Reject,
            snat: None,
            source_ranges: None,
            health_check_node_port: None,
            l7: Some(crate::model::L7Entry {
                spec: switchyard_proxy::l7::L7Spec::default(),
                node_address: Some("10.0.0.1".parse().unwrap()),
            }),
        };
        assert_eq!(route(&entry), Route::Redirected);
        let listener: SocketAddr = "10.0.0.1:15123".parse().unwrap();
        let kernel = kernel_entry(&entry, listener);
        assert_eq!(kernel.backends.len(), 1);
        assert_eq!(
            SocketAddr::new(kernel.backends[0].addr, kernel.backends[0].port),
            listener
        );
        assert_eq!(kernel.affinity, None);
        let mut empty = entry.clone();
        empty.backends.clear();
        assert!(
            kernel_entry(&empty, listener).backends.is_empty(),
            "no endpoints: refused"
        );
        let mut nodeport = entry.clone();
        nodeport.frontend.kind = FrontendKind::NodePort;
        assert_eq!(route(&nodeport), Route::Bound, "the proxy listens on it");
        let mut external = entry.clone();
        external.frontend.kind = FrontendKind::ExternalIp;
        assert_eq!(route(&external), Route::Kernel, "stays on the tc programs");
        let mut l4 = entry;
        l4.l7 = None;
        assert_eq!(route(&l4), Route::Kernel);
    }
}
