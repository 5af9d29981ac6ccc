//! The userspace datapath: each frontend is a listener of `switchyard-proxy` bound to the VIP,
//! and each VIP an address on a local interface of the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proxy as proxy;

use super::vip::{VipError, VipManager};
use super::{Applied, BackendView, Datapath, Drift, FrontendView};
use crate::diff::TableDiff;
use crate::model::{
    Algorithm, BackendState, EmptyAction, Frontend, FrontendKind, Protocol, ServiceEntry,
    ServiceTable,
};

/// Configuration of the userspace datapath.
#[derive(Clone, Debug)]
pub struct UserspaceConfig {
    /// The interface that holds the VIPs.
    pub vip_interface: String,
    pub proxy: proxy::ProxyConfig,
}

/// Frontends served by `switchyard-proxy`.
pub struct UserspaceDatapath {
    proxy: Arc<proxy::Proxy>,
    vips: VipManager,
    /// What was programmed successfully; a frontend that failed is absent and retried by
    /// [`Datapath::verify`].
    programmed: BTreeMap<Frontend, ServiceEntry>,
}

fn socket_addr(frontend: &Frontend) -> SocketAddr {
    SocketAddr::new(frontend.addr, frontend.port)
}

fn proto(p: Protocol) -> proxy::Proto {
    match p {
        Protocol::Tcp => proxy::Proto::Tcp,
        Protocol::Udp => proxy::Proto::Udp,
    }
}

/// What the proxy serves for `entry`: its backends, balancing and, for an L7 port, its HTTP
/// settings.
pub(crate) fn spec_of(entry: &ServiceEntry) -> proxy::ServiceSpec {
    proxy::ServiceSpec {
        name: entry.display_name(),
        backends: entry
            .backends
            .iter()
            .map(|b| proxy::BackendSpec {
                addr: SocketAddr::new(b.addr, b.port),
                terminating: b.state == BackendState::Terminating,
            })
            .collect(),
        algorithm: match entry.algorithm {
            // Maglev is an eBPF-datapath table; per-connection userspace balancing uses random.
            Algorithm::Random | Algorithm::Maglev => proxy::Algorithm::Random,
            Algorithm::RoundRobin => proxy::Algorithm::RoundRobin,
            Algorithm::LeastConnections => proxy::Algorithm::LeastConnections,
        },
        affinity: entry.affinity,
        on_empty: match entry.on_empty {
            EmptyAction::Reject => proxy::EmptyAction::Reject,
            EmptyAction::Drop => proxy::EmptyAction::Drop,
        },
        l7: entry
            .l7
            .as_ref()
            .filter(|_| entry.frontend.proto == Protocol::Tcp)
            .map(|l7| l7.spec.clone()),
    }
}

impl UserspaceDatapath {
    pub async fn new(config: UserspaceConfig) -> Result<UserspaceDatapath, VipError> {
        Ok(UserspaceDatapath {
            proxy: Arc::new(proxy::Proxy::new(config.proxy)),
            vips: VipManager::new(&config.vip_interface).await?,
            programmed: BTreeMap::new(),
        })
    }

    /// The proxy, for the status views.
    pub fn proxy(&self) -> Arc<proxy::Proxy> {
        Arc::clone(&self.proxy)
    }

    async fn add(&mut self, entry: &ServiceEntry) -> Result<(), String> {
        let frontend = entry.frontend;
        // A NodePort's address is the node's own: it is bound, never added.
        let owns_vip = frontend.kind != FrontendKind::NodePort;
        if owns_vip {
            self.vips
                .acquire(frontend.addr)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Err(error) = self
            .proxy
            .upsert(
                socket_addr(&frontend),
                proto(frontend.proto),
                spec_of(entry),
            )
            .await
        {
            if owns_vip && let Err(e) = self.vips.release(frontend.addr).await {
                tracing::warn!(error = %e, "cannot remove VIP after a failed bind");
            }
            return Err(error.to_string());
        }
        self.programmed.insert(frontend, entry.clone());
        Ok(())
    }

    async fn change(&mut self, entry: &ServiceEntry) -> Result<(), String> {
        if !self.programmed.contains_key(&entry.frontend) {
            return self.add(entry).await;
        }
        let frontend = entry.frontend;
        self.proxy
            .upsert(
                socket_addr(&frontend),
                proto(frontend.proto),
                spec_of(entry),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.programmed.insert(frontend, entry.clone());
        Ok(())
    }

    async fn remove(&mut self, frontend: &Frontend) {
        if self.programmed.remove(frontend).is_none() {
            return;
        }
        self.proxy
            .remove(socket_addr(frontend), proto(frontend.proto))
            .await;
        if frontend.kind != FrontendKind::NodePort
            && let Err(error) = self.vips.release(frontend.addr).await
        {
            tracing::warn!(%error, "cannot remove VIP");
        }
    }
}

impl Datapath for UserspaceDatapath {
    fn name(&self) -> &'static str {
        "userspace"
    }

    async fn apply(&mut self, diff: &TableDiff) -> Applied {
        let mut applied = Applied::default();
        // Make before break: new and changed frontends first, removals last.
        for entry in &diff.added {
            match self.add(entry).await {
                Ok(()) => applied.programmed += 1,
                Err(e) => applied.failed.push((entry.frontend, e)),
            }
        }
        for entry in &diff.changed {
            match self.change(entry).await {
                Ok(()) => applied.programmed += 1,
                Err(e) => applied.failed.push((entry.frontend, e)),
            }
        }
        for frontend in &diff.removed {
            self.remove(frontend).await;
            applied.programmed += 1;
        }
        applied
    }

    async fn verify(&mut self, want: &ServiceTable) -> Drift {
        let mut drift = Drift::default();
        // Frontends the proxy lost or never got (a failed bind is retried here).
        let serving: std::collections::BTreeSet<(SocketAddr, proxy::Proto)> = self
            .proxy
            .status()
            .into_iter()
            .map(|s| (s.frontend, s.proto))
            .collect();
        for entry in want.entries() {
            let known = self.programmed.get(&entry.frontend);
            let in_proxy =
                serving.contains(&(socket_addr(&entry.frontend), proto(entry.frontend.proto)));
            if known == Some(entry) && in_proxy {
                continue;
            }
            let result = if known.is_some() {
                self.change(entry).await
            } else {
                self.add(entry).await
            };
            match result {
                Ok(()) => drift
                    .repaired
                    .push(format!("frontend {} reprogrammed", entry.frontend)),
                Err(e) => {
                    tracing::warn!(frontend = %entry.frontend, error = %e, "cannot program frontend");
                }
            }
        }
        let extra: Vec<Frontend> = self
            .programmed
            .keys()
            .filter(|f| want.get(f).is_none())
            .copied()
            .collect();
        for frontend in extra {
            self.remove(&frontend).await;
            drift
                .repaired
                .push(format!("stale frontend {frontend} removed"));
        }
        match self.vips.repair().await {
            Ok(addrs) => drift.repaired.extend(addrs.into_iter().map(|a| {
                format!(
                    "VIP {a} was missing from {} and was added back",
                    self.vips.interface()
                )
            })),
            Err(error) => tracing::warn!(%error, "cannot check VIPs"),
        }
        drift
    }

    fn listens(&self) -> bool {
        self.proxy.has_frontends()
    }

    async fn close_listeners(&mut self) {
        self.proxy.close_listeners().await;
    }

    async fn shutdown(&mut self, grace: Duration, handed_over: bool) {
        let open = self.proxy.shutdown(grace).await;
        if open > 0 {
            tracing::warn!(
                open,
                "grace period over; closing the connections still open"
            );
        }
        if handed_over {
            tracing::info!("leaving the VIPs to the next instance");
            self.vips.forget_all();
        } else {
            self.vips.release_all().await;
        }
        self.programmed.clear();
    }
}

/// The status of the userspace datapath: the proxy's live frontends and counters.
pub struct UserspaceStatus(pub Arc<proxy::Proxy>);

impl super::StatusSource for UserspaceStatus {
    fn frontends(&self) -> Vec<FrontendView> {
        views(&self.0)
    }
}

/// The live views of the proxy's frontends.
pub fn views(proxy: &proxy::Proxy) -> Vec<FrontendView> {
    let mut out: Vec<FrontendView> = proxy
        .status()
        .into_iter()
        .map(|s| FrontendView {
            kind: String::new(),
            frontend: match s.frontend {
                SocketAddr::V4(a) => format!("{a}/{}", s.proto),
                SocketAddr::V6(a) => format!("{a}/{}", s.proto),
            },
            service: s.name,
            algorithm: match s.algorithm {
                proxy::Algorithm::Random => "random",
                proxy::Algorithm::RoundRobin => "round-robin",
                proxy::Algorithm::LeastConnections => "least-connections",
            }
            .to_owned(),
            affinity_seconds: s.affinity.map(|d| d.as_secs()),
            listening: s.listening,
            connections_total: s.connections_total,
            l7: s.l7.map(|l7| super::L7View {
                upstream: l7.upstream,
                balancer: l7.balancer,
                tls: l7.tls,
                requests: (&l7.requests).into(),
                retries: l7.retries,
                retries_denied: l7.retries_denied,
                ejections: l7.ejections,
            }),
            backends: s
                .backends
                .into_iter()
                .map(|b| BackendView {
                    backend: b.addr.to_string(),
                    state: if b.terminating {
                        "terminating"
                    } else {
                        "active"
                    }
                    .to_owned(),
                    connections_total: b.connections_total,
                    connections_active: b.connections_active,
                    bytes_sent: b.bytes_sent,
                    bytes_received: b.bytes_received,
                    connect_failures: b.connect_failures,
                    l7: b.l7.map(|l7| super::BackendL7View {
                        requests: (&l7.requests).into(),
                        in_flight: l7.in_flight,
                        ewma_micros: l7.ewma_micros,
                        ejected: l7.ejected,
                        ejections_total: l7.ejections_total,
                        healthy: l7.healthy,
                    }),
                })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| {
        a.service
            .cmp(&b.service)
            .then_with(|| a.frontend.cmp(&b.frontend))
    });
    out
}
