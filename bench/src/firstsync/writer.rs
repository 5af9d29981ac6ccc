//! Filling the API server before the measurement: every Service of the cluster
//! ([`crate::cluster::Cluster`]) as a selectorless Service and its EndpointSlice
//! ([`crate::cluster::manifests`]), written through `kube` as a client would, from a thread
//! that has entered the network namespace the API server listens in; then the stored
//! objects counted back.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_tests::Netns;

use crate::cluster::{self, Cluster};

/// How many times a write that failed for a reason other than the request itself (a 4xx)
/// is tried.
const TRIES: usize = 5;

/// What the API server holds once the writes are done.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    /// Services in the namespace before the writes (the API server's own, if any).
    pub services_before: usize,
    /// Services written.
    pub services_written: usize,
    /// EndpointSlices written.
    pub slices_written: usize,
    /// Writes retried after a transient failure.
    pub retries: usize,
    /// Seconds the writes took.
    pub took_s: f64,
    /// Services listed afterwards (all namespaces).
    pub services: usize,
    /// EndpointSlices listed afterwards (all namespaces).
    pub slices: usize,
    /// Of those, the slices with exactly the cluster's endpoints per Service, all ready.
    pub slices_complete: usize,
    /// Endpoints over every slice listed.
    pub endpoints: usize,
}

/// Creates `object`, trying again after failures that are not the request's fault; an
/// object that already exists after a retry (a create whose answer was lost) counts as
/// created. Returns the retries made.
async fn create<K>(api: &Api<K>, object: Value, retries: &AtomicUsize) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let typed: K = serde_json::from_value(object).with_context(|| format!("build {name}"))?;
    let mut tried = 0;
    loop {
        tried += 1;
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && tried > 1 => return Ok(()),
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                bail!("create {name}: {status:?}")
            }
            Err(error) if tried >= TRIES => bail!("create {name}: {error}"),
            Err(_) => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Writes `cluster` to the API server of `kubeconfig` (reached from namespace `net`),
/// `concurrency` requests in flight, each Service before its slice, and counts what is
/// stored afterwards.
pub fn write(
    net: &Netns,
    kubeconfig: &Path,
    cluster: &Cluster,
    concurrency: usize,
) -> Result<Stored> {
    crate::in_netns(net, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the writer's runtime")?
            .block_on(write_async(kubeconfig, cluster, concurrency))
    })
}

fn is_complete(slice: &EndpointSlice, per_service: usize) -> bool {
    let endpoints = slice.endpoints.as_deref().unwrap_or_default();
    endpoints.len() == per_service
        && endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
}

#[allow(
    clippy::disallowed_types,
    reason = "times the whole write on the writer's own thread; nothing to pause"
)]
async fn write_async(kubeconfig: &Path, cluster: &Cluster, concurrency: usize) -> Result<Stored> {
    let client = crate::apiwatch::writer::client(kubeconfig).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), cluster::NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), cluster::NAMESPACE);
    let mut stored = Stored {
        services_before: services
            .list(&ListParams::default())
            .await
            .context("list the Services before writing")?
            .items
            .len(),
        ..Stored::default()
    };
    let retries = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let mut writes = futures::stream::iter(cluster.all())
        .map(|spec| {
            let (services, slices, retries) = (&services, &slices, &retries);
            async move {
                let [service, slice] = cluster::manifests(&spec);
                create(services, service, retries).await?;
                create(slices, slice, retries).await
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(done) = writes.next().await {
        done?;
        stored.services_written += 1;
        stored.slices_written += 1;
        if stored.services_written.is_multiple_of(2000) {
            eprintln!(
                "  written {} Services and their slices ({:.1} s)",
                stored.services_written,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(writes);
    stored.took_s = started.elapsed().as_secs_f64();
    stored.retries = retries.load(Ordering::Relaxed);
    let all_services: Api<Service> = Api::all(client.clone());
    let all_slices: Api<EndpointSlice> = Api::all(client);
    stored.services = all_services
        .list(&ListParams::default())
        .await
        .context("list the Services")?
        .items
        .len();
    let listed = all_slices
        .list(&ListParams::default())
        .await
        .context("list the EndpointSlices")?
        .items;
    stored.slices = listed.len();
    stored.slices_complete = listed
        .iter()
        .filter(|s| is_complete(s, cluster.endpoints_per_service))
        .count();
    stored.endpoints = listed
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum();
    Ok(stored)
}
