//! Measurements, not checks: run with `cargo test -p switchyard-apiserver --test measure --
//! --ignored --nocapture`. Prints write throughput (every write fsynced) and how long the
//! EndpointSlice controller takes to catch up with a burst of Pods.

mod common;

use std::time::Duration;

use common::{Server, eventually};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints numbers"]
async fn write_throughput_and_controller_catch_up() -> anyhow::Result<()> {
    const SERVICES: usize = 100;
    const PODS_PER_SERVICE: usize = 10;
    const CLIENTS: usize = 4;
    let mut s = Server::start("measure").await?;
    let c = s.client.clone();

    let started = tokio::time::Instant::now();
    for i in 0..SERVICES {
        c.post(
            "/api/v1/namespaces/default/services",
            &json!({"metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"port": 80}]}}),
        )
        .await?;
    }
    let sequential = started.elapsed();

    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for n in (w..SERVICES * PODS_PER_SERVICE).step_by(CLIENTS) {
                let (svc, k) = (n / PODS_PER_SERVICE, n % PODS_PER_SERVICE);
                let ip = format!("10.244.{}.{}", n / 250, n % 250 + 1);
                let r = c
                    .post(
                        "/api/v1/namespaces/default/pods",
                        &json!({"metadata": {"name": format!("pod-{svc}-{k}"), "labels": {"app": format!("app-{svc}")}},
                                "spec": {"containers": [{"name": "c", "image": "i"}]},
                                "status": {"phase": "Running", "podIP": ip,
                                           "conditions": [{"type": "Ready", "status": "True"}]}}),
                    )
                    .await?;
                anyhow::ensure!(r.status == 201, "{}", r.body);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let concurrent = started.elapsed();
    let total = SERVICES * PODS_PER_SERVICE;
    eventually(Duration::from_secs(120), || {
        let c = c.clone();
        async move {
            let r = c
                .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
                .await?;
            let n: usize = r.body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
                .sum();
            Ok((n == total).then_some(()))
        }
    })
    .await?;
    let converged = started.elapsed();
    eprintln!(
        "measure: {SERVICES} Services created one after another in {sequential:?} ({:.0}/s); \
         {total} Pods from {CLIENTS} clients in {concurrent:?} ({:.0}/s); \
         all {total} endpoints in slices {converged:?} after the first Pod",
        SERVICES as f64 / sequential.as_secs_f64(),
        total as f64 / concurrent.as_secs_f64(),
    );
    s.stop().await;
    Ok(())
}
