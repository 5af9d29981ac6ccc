//! The model at scale: computing the table for 10,000 Services x 10 endpoints, and applying a
//! one-endpoint change at that size (store update, recompute of the affected Service, diff).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use switchyard_control::incremental::IncrementalTable;
use switchyard_control::model::{NodeContext, compute_table};
use switchyard_control::store::{Affected, Object, Store};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn service(i: usize) -> Object {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .expect("bench Service");
    Object::Service(svc)
}

fn slice(i: usize, ready_last: bool) -> Object {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let ready = e + 1 < ENDPOINTS || ready_last;
            json!({"addresses": [format!("10.{}.{}.{}", 128 + i / 65_536 % 64, i / 256 % 256, (i * ENDPOINTS + e) % 250 + 1)],
                   "nodeName": format!("node-{}", e % 3),
                   "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect();
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("bench EndpointSlice");
    Object::EndpointSlice(s)
}

fn store() -> Store {
    let mut store = Store::new();
    for i in 0..SERVICES {
        store.upsert(service(i));
        store.upsert(slice(i, true));
    }
    store
}

fn bench(c: &mut Criterion) {
    let node = NodeContext::named("node-0");
    let base = store();
    let mut group = c.benchmark_group("model_10k_services_x10_endpoints");
    group.sample_size(10);
    group.bench_function("compute_table", |b| {
        b.iter(|| black_box(compute_table(black_box(&base), &node)));
    });
    group.bench_function("incremental_initial_sync", |b| {
        b.iter(|| {
            let mut table = IncrementalTable::new();
            let all = Affected {
                all: true,
                ..Affected::default()
            };
            black_box(table.update(&base, &node, &all))
        });
    });
    group.finish();

    let mut group = c.benchmark_group("one_endpoint_change_at_10k_services");
    let mut store = base.clone();
    let mut table = IncrementalTable::new();
    table.update(
        &store,
        &node,
        &Affected {
            all: true,
            ..Affected::default()
        },
    );
    let versions = [slice(SERVICES / 2, false), slice(SERVICES / 2, true)];
    let mut flip = 1; // the first iteration writes versions[0], which differs from the base
    group.bench_function("store_update_recompute_diff", |b| {
        b.iter(|| {
            flip ^= 1;
            let (affected, _) = store.upsert(versions[flip].clone());
            let (diff, _) = table.update(&store, &node, &affected);
            assert_eq!(diff.changed.len(), 1, "each iteration is one real change");
            black_box(diff)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
