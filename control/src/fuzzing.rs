//! The bodies of the fuzz targets in `fuzz/` (run by `cargo xtask fuzz`), here so that the
//! committed corpora are also replayed by the unit tests on every build, with the stable
//! toolchain. Each function takes arbitrary bytes and panics only on a broken property.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::incremental::IncrementalTable;
use crate::model::{BackendState, NodeContext, compute_table};
use crate::source::manifests::parse_manifest;
use crate::store::{Kind, Object, ObjectKey, Store};

/// Manifest parsing: any bytes, as a file's text, never panic; every object returned is one
/// the model accepts as parsed.
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (objects, errors) = parse_manifest("fuzz.yaml", &text);
    for error in &errors {
        // An error always names the file and its document.
        let text = error.to_string();
        assert!(text.starts_with("fuzz.yaml"), "{text}");
    }
    let mut store = Store::new();
    for object in objects {
        store.upsert(object);
    }
    let _ = compute_table(&store, &NodeContext::named("node-a"));
}

/// Reads choices off the input; past its end every choice is 0.
struct Choices<'a> {
    data: &'a [u8],
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    fn pick<'v, T>(&mut self, values: &'v [T]) -> &'v T {
        &values[usize::from(self.byte()) % values.len()]
    }

    fn flag(&mut self) -> Option<bool> {
        *self.pick(&[None, Some(true), Some(false)])
    }

    fn done(&self) -> bool {
        self.data.is_empty()
    }
}

const SERVICE_IPS: &[&str] = &[
    "10.96.0.10",
    "10.96.0.11",
    "fd00:96::10",
    "None",
    "",
    "10.96.0.300",
];
const ENDPOINT_IPS: &[&str] = &[
    "10.244.0.11",
    "10.244.0.12",
    "10.244.0.13",
    "fd00:244::11",
    "fd00:244::12",
    "not-an-ip",
];
const PORTS: &[i64] = &[80, 81, 8080, 0, 70_000, 53];
const PROTOCOLS: &[Option<&str>] = &[None, Some("TCP"), Some("UDP"), Some("SCTP"), Some("QUIC")];
const NAMES: &[&str] = &["", "http", "dns", "metrics"];

fn service(c: &mut Choices<'_>) -> Value {
    let name = format!("s{}", c.byte() % 4);
    let ports: Vec<Value> = (0..c.byte() % 4)
        .map(|_| {
            let mut port = json!({"port": c.pick(PORTS), "targetPort": c.pick(PORTS)});
            if let Some(protocol) = c.pick(PROTOCOLS) {
                port["protocol"] = json!(protocol);
            }
            port["name"] = json!(c.pick(NAMES));
            if c.byte().is_multiple_of(3) {
                port["nodePort"] = json!(30_000 + i64::from(c.byte()));
            }
            port
        })
        .collect();
    let mut spec = json!({
        "clusterIP": c.pick(SERVICE_IPS),
        "ports": ports,
        "type": c.pick(&["ClusterIP", "NodePort", "LoadBalancer"]),
    });
    if c.byte().is_multiple_of(2) {
        spec["internalTrafficPolicy"] = json!(c.pick(&["Cluster", "Local"]));
    }
    if c.byte().is_multiple_of(2) {
        spec["externalTrafficPolicy"] = json!(c.pick(&["Cluster", "Local"]));
    }
    if c.byte().is_multiple_of(4) {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(c: &mut Choices<'_>) -> Value {
    let endpoints: Vec<Value> = (0..c.byte() % 5)
        .map(|_| {
            let mut conditions = serde_json::Map::new();
            for key in ["ready", "serving", "terminating"] {
                if let Some(value) = c.flag() {
                    conditions.insert(key.to_owned(), json!(value));
                }
            }
            json!({
                "addresses": [c.pick(ENDPOINT_IPS)],
                "conditions": conditions,
                "nodeName": c.pick(&["node-a", "node-b"]),
            })
        })
        .collect();
    let ports: Vec<Value> = (0..c.byte() % 3)
        .map(|_| {
            let mut port = json!({"port": c.pick(PORTS), "name": c.pick(NAMES)});
            if let Some(protocol) = c.pick(PROTOCOLS) {
                port["protocol"] = json!(protocol);
            }
            port
        })
        .collect();
    json!({
        "metadata": {
            "name": format!("e{}", c.byte() % 6),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("s{}", c.byte() % 4)},
        },
        "addressType": c.pick(&["IPv4", "IPv6", "FQDN"]),
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// The Service model over arbitrary sequences of Services and EndpointSlices written and
/// deleted: it never panics; after every change the incrementally kept table equals the one
/// computed from scratch (when no two Services claim one frontend) and the diff leads to it;
/// and every backend of a frontend is an endpoint of its Service that is ready, or serving
/// when none is ready.
pub fn model(data: &[u8]) {
    let node = NodeContext::named("node-a");
    let mut store = Store::new();
    let mut incremental = IncrementalTable::new();
    let mut c = Choices { data };
    let mut steps = 0;
    while !c.done() && steps < 64 {
        steps += 1;
        let affected = match c.byte() % 4 {
            0 => match serde_json::from_value(service(&mut c)) {
                Ok(service) => store.upsert(Object::Service(service)).0,
                Err(_) => continue,
            },
            1 => match serde_json::from_value(slice(&mut c)) {
                Ok(slice) => store.upsert(Object::EndpointSlice(slice)).0,
                Err(_) => continue,
            },
            2 => {
                let key = ObjectKey::new("default", format!("s{}", c.byte() % 4));
                store.delete(Kind::Service, &key).0
            }
            _ => {
                let key = ObjectKey::new("default", format!("e{}", c.byte() % 6));
                store.delete(Kind::EndpointSlice, &key).0
            }
        };
        let before = incremental.table().clone();
        let (diff, _) = incremental.update(&store, &node, &affected);
        let mut applied = before;
        applied.apply(&diff);
        assert_eq!(
            &applied,
            incremental.table(),
            "the diff leads to the kept table"
        );
        let (full, _) = compute_table(&store, &node);
        let contested = full.len() != incremental.table().len()
            || full
                .entries()
                .zip(incremental.table().entries())
                .any(|(a, b)| a.frontend != b.frontend || a.service != b.service);
        if !contested {
            assert_eq!(
                &full,
                incremental.table(),
                "incremental equals from scratch"
            );
        }
        check_backends(&store, incremental.table());
    }
}

/// Every backend is an endpoint of its Service's slices, of the right family, ready (when
/// active) or serving (when terminating, used only while no endpoint is ready).
fn check_backends(store: &Store, table: &crate::model::ServiceTable) {
    for entry in table.entries() {
        let slices = store.slices_for_service(&entry.service);
        let conditions_of = |addr: IpAddr| {
            slices
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| {
                    e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) == Some(addr)
                })
                .map(|e| {
                    let c = e.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                    (ready, serving)
                })
                .collect::<Vec<_>>()
        };
        for backend in &entry.backends {
            assert_eq!(
                backend.addr.is_ipv4(),
                entry.frontend.addr.is_ipv4(),
                "{}: backend {} of the other family",
                entry.frontend,
                backend.addr
            );
            let seen = conditions_of(backend.addr);
            assert!(
                !seen.is_empty(),
                "{}: backend {} is no endpoint of {}",
                entry.frontend,
                backend.addr,
                entry.service
            );
            let ok = match backend.state {
                BackendState::Active => seen.iter().any(|(ready, _)| *ready),
                BackendState::Terminating => seen.iter().any(|(_, serving)| *serving),
            };
            assert!(
                ok,
                "{}: backend {} is {:?} but its endpoint is {seen:?} (ready, serving)",
                entry.frontend, backend.addr, backend.state
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Replays every input of a committed corpus (`fuzz/corpus/<target>/`).
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut inputs = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).expect("a corpus file reads");
                run(&data);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn manifest_corpus_replays() {
        replay("manifest", manifest);
    }

    #[test]
    fn model_corpus_replays() {
        replay("model", model);
    }

    #[test]
    fn model_sees_some_structure() {
        // A hand-made input: a Service s0 on 10.96.0.10:80, then its slice with a ready
        // endpoint, then one that is terminating.
        model(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0]);
        model(b"");
        model(&[255; 300]);
    }
}
