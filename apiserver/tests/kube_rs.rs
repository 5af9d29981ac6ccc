//! kube-rs (the Rust client a switchyard daemon would use) against the server: typed CRUD,
//! patches, API errors, and the runtime's watcher (paged list-then-watch and streaming lists)
//! following the EndpointSlice controller.

mod common;

use std::time::Duration;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use serde_json::json;

const T: Duration = Duration::from_secs(15);

fn pod(name: &str, ip: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))?)
}

async fn endpoints_reach(
    stream: &mut (impl futures::Stream<Item = Result<EndpointSlice, watcher::Error>> + Unpin),
    want: usize,
) -> anyhow::Result<()> {
    tokio::time::timeout(T, async {
        while let Some(slice) = stream.try_next().await? {
            if slice.endpoints.as_ref().map_or(0, Vec::len) == want {
                return Ok(());
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_client_and_watcher() -> anyhow::Result<()> {
    let mut s = Server::start("kubers").await?;
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(s.kubeconfig())?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    let version = client.apiserver_version().await?;
    assert_eq!(version.major, "1");

    // Both watcher modes, started before anything exists.
    let selector = "kubernetes.io/service-name=web";
    let mut paged = watcher(slices.clone(), watcher::Config::default().labels(selector))
        .applied_objects()
        .boxed();
    let mut streaming = watcher(
        slices.clone(),
        watcher::Config::default()
            .labels(selector)
            .streaming_lists(),
    )
    .applied_objects()
    .boxed();

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let created = services.create(&PostParams::default(), &svc).await?;
    let ip = created.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    assert_eq!(ip.as_deref(), Some("10.96.0.1"));
    for (name, ip) in [("web-1", "10.244.0.1"), ("web-2", "10.244.0.2")] {
        pods.create(&PostParams::default(), &pod(name, ip)?).await?;
    }
    endpoints_reach(&mut paged, 2).await?;
    endpoints_reach(&mut streaming, 2).await?;

    // Patches of both kinds kube-rs sends.
    let patched = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}})),
        )
        .await?;
    assert_eq!(patched.metadata.labels.unwrap()["a"], "1");
    let patched = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})),
        )
        .await?;
    let ports = patched.spec.unwrap().ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090))
    );

    // Errors arrive as typed API errors.
    match pods.get("missing").await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match services.create(&PostParams::default(), &svc).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    // A Pod going away shrinks the slice, in both watchers.
    pods.delete(
        "web-2",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    endpoints_reach(&mut paged, 1).await?;
    endpoints_reach(&mut streaming, 1).await?;
    let listed = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(listed.items.len(), 1);
    s.stop().await;
    Ok(())
}
