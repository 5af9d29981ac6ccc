//! The table kept up to date Service by Service: a change recomputes only the Services it
//! affects, and yields the diff of just their frontends, so work scales with the size of a
//! change, not with the number of Services. Pure, like the model: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::TableDiff;
use crate::model::{Frontend, NodeContext, ServiceTable, Warning, compute_service};
use crate::store::{Affected, ObjectKey, Store};

/// The applied table with, per Service, the frontends it holds.
#[derive(Debug, Default)]
pub struct IncrementalTable {
    table: ServiceTable,
    frontends_of: BTreeMap<ObjectKey, Vec<Frontend>>,
    /// Services left out because `--max-services` was reached, retried (in key order) when
    /// others go.
    refused: BTreeSet<ObjectKey>,
}

impl IncrementalTable {
    pub fn new() -> IncrementalTable {
        IncrementalTable::default()
    }

    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// How many Services hold at least one frontend.
    pub fn services(&self) -> usize {
        self.frontends_of.len()
    }

    /// Recomputes what `affected` names; returns the diff to apply and the warnings per
    /// Service (every recomputed Service appears, with no warnings when it is clean).
    pub fn update(
        &mut self,
        store: &Store,
        node: &NodeContext,
        affected: &Affected,
    ) -> (TableDiff, Vec<(ObjectKey, Vec<Warning>)>) {
        let keys: BTreeSet<ObjectKey> = if affected.all {
            store
                .service_keys()
                .cloned()
                .chain(self.frontends_of.keys().cloned())
                .collect()
        } else {
            affected.services.clone()
        };
        let mut diff = TableDiff::default();
        let mut warnings = Vec::with_capacity(keys.len());
        for key in &keys {
            let w = self.recompute(store, node, key, &mut diff);
            warnings.push((key.clone(), w));
        }
        // Room made by Services that went: those refused before get it, in key order. (At the
        // limit nothing is retried, so a full table costs nothing per change.)
        while self.frontends_of.len() < node.limits.max_services {
            let Some(key) = self.refused.iter().find(|k| !keys.contains(*k)).cloned() else {
                break;
            };
            let w = self.recompute(store, node, &key, &mut diff);
            warnings.push((key, w));
        }
        (diff, warnings)
    }

    /// Recomputes one Service into the table, adding what changed to `diff`.
    pub fn recompute(
        &mut self,
        store: &Store,
        node: &NodeContext,
        key: &ObjectKey,
        diff: &mut TableDiff,
    ) -> Vec<Warning> {
        let mut outcome = compute_service(store, key, node);
        self.refused.remove(key);
        let max = node.limits.max_services;
        if !outcome.entries.is_empty()
            && !self.frontends_of.contains_key(key)
            && self.frontends_of.len() >= max
        {
            self.refused.insert(key.clone());
            outcome.entries.clear();
            outcome.warnings.push(Warning {
                kind: "Service",
                object: key.clone(),
                message: format!(
                    "not programmed: {max} Services already are, the most --max-services allows"
                ),
                invalid: false,
                limit: Some("services"),
            });
        }
        let mut warnings = outcome.warnings;
        let old: Vec<Frontend> = self.frontends_of.remove(key).unwrap_or_default();
        let mut new = Vec::with_capacity(outcome.entries.len());
        for entry in outcome.entries {
            if let Some(warning) = self.table.claimed_by_other(&entry) {
                warnings.push(warning);
                continue;
            }
            new.push(entry.frontend);
            diff.push(self.table.get(&entry.frontend), Some(entry.clone()));
            self.table.insert(entry);
        }
        for frontend in old.iter().filter(|f| !new.contains(f)) {
            diff.push(self.table.get(frontend), None);
            self.table.remove(frontend);
        }
        if !new.is_empty() {
            self.frontends_of.insert(key.clone(), new);
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::compute_table;
    use crate::store::{Kind, Object};

    fn object(value: serde_json::Value) -> Object {
        match value["kind"].as_str() {
            Some("Service") => Object::Service(serde_json::from_value(value).expect("Service")),
            Some("Pod") => Object::Pod(serde_json::from_value(value).expect("Pod")),
            _ => Object::EndpointSlice(serde_json::from_value(value).expect("EndpointSlice")),
        }
    }

    fn web(name: &str, ip: &str) -> Object {
        object(
            json!({"kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
        )
    }

    /// At `--max-services`, a new Service waits with a warning, the programmed ones stay, and
    /// the first one waiting (by key) takes the place of one that goes.
    #[test]
    fn services_beyond_the_limit_wait_for_room() {
        let node = NodeContext {
            limits: crate::model::Limits {
                max_services: 2,
                ..crate::model::Limits::default()
            },
            ..NodeContext::named("node-a")
        };
        let mut store = Store::new();
        let mut table = IncrementalTable::new();
        let apply = |store: &Store, table: &mut IncrementalTable, affected: Affected| {
            let (_, warnings) = table.update(store, &node, &affected);
            warnings
                .into_iter()
                .flat_map(|(_, w)| w)
                .filter_map(|w| w.limit.map(|l| (w.object.name.clone(), l)))
                .collect::<Vec<_>>()
        };
        for (name, ip) in [("c", "10.96.0.3"), ("a", "10.96.0.1"), ("d", "10.96.0.4")] {
            let (affected, _) = store.upsert(web(name, ip));
            apply(&store, &mut table, affected);
        }
        let (affected, _) = store.upsert(web("b", "10.96.0.2"));
        let limited = apply(&store, &mut table, affected);
        assert_eq!(limited, vec![("b".to_owned(), "services")]);
        let programmed: Vec<String> = table
            .table()
            .entries()
            .map(|e| e.service.name.clone())
            .collect();
        assert_eq!(programmed, vec!["a", "c"], "the first two to come stay");
        assert_eq!(table.services(), 2);

        // "c" goes: "b" (first by key of those waiting) takes its place, "d" still waits.
        let (affected, _) = store.delete(Kind::Service, &ObjectKey::new("default", "c"));
        let limited = apply(&store, &mut table, affected);
        assert!(limited.is_empty(), "{limited:?}");
        let programmed: Vec<String> = table
            .table()
            .entries()
            .map(|e| e.service.name.clone())
            .collect();
        assert_eq!(programmed, vec!["a", "b"]);
    }

    /// A deterministic walk of changes: after each one, the incrementally kept table equals the
    /// table computed from scratch, and applying the reported diff to the previous table gives
    /// the new one.
    #[test]
    fn incremental_matches_full_recompute() {
        let node = NodeContext::named("node-a");
        let mut store = Store::new();
        let mut incremental = IncrementalTable::new();
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for step in 0..2_000 {
            let svc = next(8);
            let change = match next(6) {
                0 => object(
                    json!({"kind": "Service", "metadata": {"name": format!("s{svc}"), "namespace": "default"},
                    "spec": {"clusterIP": format!("10.96.0.{}", next(6)), "selector": {"app": format!("a{}", next(3))},
                             "ports": [{"port": 80 + next(2), "targetPort": 8080}]}}),
                ),
                1 => object(
                    json!({"kind": "Pod", "metadata": {"name": format!("p{}", next(10)), "namespace": "default",
                        "labels": {"app": format!("a{}", next(3))}},
                    "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
                    "status": {"podIP": format!("10.244.0.{}", next(10)),
                               "conditions": [{"type": "Ready", "status": if next(2) == 0 { "True" } else { "False" }}]}}),
                ),
                2 => object(json!({"kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": format!("e{}", next(5)), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
                    "ports": [{"port": 9000}],
                    "endpoints": [{"addresses": [format!("10.244.1.{}", next(10))]}]})),
                3 => {
                    let (affected, _) =
                        store.delete(Kind::Service, &ObjectKey::new("default", format!("s{svc}")));
                    check(&store, &mut incremental, &node, &affected, step);
                    continue;
                }
                4 => {
                    let (affected, _) = store.delete(
                        Kind::Pod,
                        &ObjectKey::new("default", format!("p{}", next(10))),
                    );
                    check(&store, &mut incremental, &node, &affected, step);
                    continue;
                }
                _ => {
                    let (affected, _) = store.delete(
                        Kind::EndpointSlice,
                        &ObjectKey::new("default", format!("e{}", next(5))),
                    );
                    check(&store, &mut incremental, &node, &affected, step);
                    continue;
                }
            };
            let (affected, _) = store.upsert(change);
            check(&store, &mut incremental, &node, &affected, step);
        }
    }

    fn check(
        store: &Store,
        incremental: &mut IncrementalTable,
        node: &NodeContext,
        affected: &Affected,
        step: usize,
    ) {
        let before = incremental.table().clone();
        let (diff, _) = incremental.update(store, node, affected);
        let (full, _) = compute_table(store, node);
        let mut applied = before;
        applied.apply(&diff);
        assert_eq!(
            &applied,
            incremental.table(),
            "step {step}: the diff leads to the kept table"
        );
        // Frontends claimed by two Services may be held by either depending on history; compare
        // only when no Service claims another's frontend.
        let contested = full.len() != incremental.table().len()
            || full
                .frontends()
                .zip(incremental.table().frontends())
                .any(|(a, b)| a != b);
        if !contested {
            for entry in full.entries() {
                let kept = incremental
                    .table()
                    .get(&entry.frontend)
                    .expect("same frontends");
                if kept.service == entry.service {
                    assert_eq!(kept, entry, "step {step}");
                }
            }
        }
    }
}
