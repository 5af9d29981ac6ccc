//! The difference between two service tables: the only thing a datapath is ever given.

use crate::model::{Frontend, ServiceEntry, ServiceTable};

/// What changed between the last applied table and the new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDiff {
    /// Frontends that are new.
    pub added: Vec<ServiceEntry>,
    /// Frontends whose entry (backends, algorithm, affinity, ...) changed.
    pub changed: Vec<ServiceEntry>,
    /// Frontends that are gone.
    pub removed: Vec<Frontend>,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// Adds the change from `old` to `new` for one frontend.
    pub fn push(&mut self, old: Option<&ServiceEntry>, new: Option<ServiceEntry>) {
        match (old, new) {
            (None, Some(new)) => self.added.push(new),
            (Some(old), Some(new)) if *old != new => self.changed.push(new),
            (Some(old), None) => self.removed.push(old.frontend),
            _ => {}
        }
    }
}

/// Computes the diff between two whole tables. The controller diffs only the frontends of the
/// Services a change touched; this is for the periodic full check and for tests.
pub fn diff(old: &ServiceTable, new: &ServiceTable) -> TableDiff {
    let mut out = TableDiff::default();
    for entry in new.entries() {
        out.push(old.get(&entry.frontend), Some(entry.clone()));
    }
    for entry in old.entries() {
        if new.get(&entry.frontend).is_none() {
            out.removed.push(entry.frontend);
        }
    }
    out
}

impl ServiceTable {
    /// Applies a diff to this table, so that `old.apply(&diff(&old, &new)) == new`.
    pub fn apply(&mut self, diff: &TableDiff) {
        for frontend in &diff.removed {
            self.remove(frontend);
        }
        for entry in diff.added.iter().chain(&diff.changed) {
            self.insert(entry.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Algorithm, Backend, BackendState, EmptyAction, FrontendKind, Protocol};
    use crate::store::ObjectKey;

    fn entry(vip: &str, port: u16, backends: &[&str]) -> ServiceEntry {
        ServiceEntry {
            frontend: Frontend {
                addr: vip.parse().unwrap(),
                port,
                proto: Protocol::Tcp,
                kind: FrontendKind::ClusterIp,
            },
            service: ObjectKey::new("default", "web"),
            port_name: String::new(),
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: b.parse::<IpAddr>().unwrap(),
                    port: 8080,
                    state: BackendState::Active,
                    node: None,
                    zone: None,
                    local: false,
                })
                .collect(),
            draining: Vec::new(),
            algorithm: Algorithm::Random,
            affinity: None,
            on_empty: EmptyAction::Reject,
            snat: None,
            source_ranges: None,
            health_check_node_port: None,
            l7: None,
        }
    }

    #[test]
    fn diff_cases() {
        // name, old table, new table, then how many added, changed and removed
        type Case = (
            &'static str,
            Vec<ServiceEntry>,
            Vec<ServiceEntry>,
            usize,
            usize,
            usize,
        );
        let a = entry("10.96.0.1", 80, &["10.244.0.1"]);
        let a2 = entry("10.96.0.1", 80, &["10.244.0.1", "10.244.0.2"]);
        let b = entry("10.96.0.2", 80, &["10.244.0.3"]);
        let c = entry("fd00:96::3", 53, &[]);
        let cases: Vec<Case> = vec![
            ("both empty", vec![], vec![], 0, 0, 0),
            (
                "same",
                vec![a.clone(), b.clone()],
                vec![a.clone(), b.clone()],
                0,
                0,
                0,
            ),
            (
                "one added",
                vec![a.clone()],
                vec![a.clone(), b.clone()],
                1,
                0,
                0,
            ),
            (
                "one removed",
                vec![a.clone(), b.clone()],
                vec![b.clone()],
                0,
                0,
                1,
            ),
            (
                "backend added",
                vec![a.clone(), b.clone()],
                vec![a2.clone(), b.clone()],
                0,
                1,
                0,
            ),
            (
                "all at once",
                vec![a.clone(), b.clone()],
                vec![a2.clone(), c.clone()],
                1,
                1,
                1,
            ),
        ];
        for (name, old, new, added, changed, removed) in cases {
            let old: ServiceTable = old.into_iter().collect();
            let new: ServiceTable = new.into_iter().collect();
            let d = diff(&old, &new);
            assert_eq!(
                (d.added.len(), d.changed.len(), d.removed.len()),
                (added, changed, removed),
                "{name}"
            );
            let mut applied = old.clone();
            applied.apply(&d);
            assert_eq!(
                applied, new,
                "{name}: applying the diff gives the new table"
            );
        }
    }
}
