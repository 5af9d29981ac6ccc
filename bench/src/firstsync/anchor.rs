//! The anchor: kube-proxy's first full sync of the same cluster, as rule text loaded from
//! empty. kube-proxy's iptables shape ([`crate::kube_proxy::iptables`]) with
//! `iptables-legacy-restore` and `iptables-nft-restore`, its nftables shape
//! ([`crate::kube_proxy::nftables`]) with `nft -f`, each try in a fresh namespace of its own
//! with no traffic, timed from spawning the loader to its exit ([`crate::rule_loader`]);
//! the text is rendered beforehand, so kube-proxy's own work (the informers, computing and
//! writing the text) is not counted.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_tests::Netns;

use crate::cluster::Cluster;
use crate::kube_proxy::{iptables, nftables};
use crate::rule_loader::{self, Backend};

/// One loader's full loads from empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Load {
    /// The loader.
    pub backend: Backend,
    /// Size of the rule text, bytes.
    pub bytes: usize,
    /// Lines of the rule text (about one rule, chain or element each).
    pub lines: usize,
    /// Seconds per try that finished.
    pub tries_s: Vec<f64>,
    /// Set when a try was killed at the time limit: that limit, seconds.
    pub killed_after_s: Option<f64>,
    /// Why a try failed otherwise.
    pub failure: Option<String>,
}

impl Load {
    /// The median of the finished tries, seconds.
    pub fn median_s(&self) -> Option<f64> {
        crate::report::median(&self.tries_s)
    }
}

/// How the anchor runs.
#[derive(Clone, Debug)]
pub struct AnchorConfig {
    /// Loaders, in order.
    pub backends: Vec<Backend>,
    /// Tries per loader (each in a fresh namespace).
    pub tries: usize,
    /// A try slower than this stops the loader's tries after it.
    pub enough: Duration,
    /// A load slower than this is killed.
    pub timeout: Duration,
    /// The CPU the loader runs on.
    pub cpu: usize,
}

fn tag(backend: Backend) -> &'static str {
    match backend {
        Backend::IptablesLegacy => "ipt-legacy",
        Backend::IptablesNft => "ipt-nft",
        Backend::Nftables => "nft",
    }
}

/// Loads `cluster` with every loader of `config`, in namespaces named after `prefix`.
pub fn run(config: &AnchorConfig, prefix: &str, cluster: &Cluster) -> Vec<Load> {
    let iptables_text = iptables::restore_input(cluster, iptables::Sync::Full);
    let hooks = iptables::hooks();
    let nft_text = nftables::transaction(cluster, &nftables::Sync::Initial);
    let mut loads = Vec::new();
    for &backend in &config.backends {
        let text = match backend {
            Backend::IptablesLegacy | Backend::IptablesNft => &iptables_text,
            Backend::Nftables => &nft_text,
        };
        let mut load = Load {
            backend,
            bytes: text.len(),
            lines: text.lines().count(),
            tries_s: Vec::new(),
            killed_after_s: None,
            failure: None,
        };
        for attempt in 0..config.tries {
            let name = format!("{prefix}-kp-{}{attempt}", tag(backend));
            let ns = match Netns::create(&name) {
                Ok(ns) => ns,
                Err(error) => {
                    load.failure = Some(format!("{error:#}"));
                    break;
                }
            };
            let loaded = rule_loader::in_netns(&ns, config.cpu, config.timeout, |loader| {
                // kube-proxy's jumps from the built-in chains exist before its first sync.
                if backend != Backend::Nftables {
                    loader.load(backend, &hooks)?;
                }
                loader.load(backend, text)
            });
            // The namespace goes with its rules before the next try.
            drop(ns);
            match loaded {
                Ok(took) => {
                    eprintln!(
                        "  {} from empty: {:.2} s ({} bytes)",
                        backend.as_str(),
                        took.as_secs_f64(),
                        text.len()
                    );
                    load.tries_s.push(took.as_secs_f64());
                    if took >= config.enough {
                        break;
                    }
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    eprintln!("  {}: {message}", backend.as_str());
                    if message.contains("killed after") {
                        load.killed_after_s = Some(config.timeout.as_secs_f64());
                    } else {
                        load.failure = Some(message);
                    }
                    break;
                }
            }
        }
        loads.push(load);
    }
    loads
}
