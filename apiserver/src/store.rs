//! Durable storage: every object as JSON in redb, the resourceVersion counter beside them, an
//! in-memory copy for reads, and a bounded history of changes for watches.
//!
//! A write is acknowledged only after its redb transaction commits with immediate durability
//! (fsync), so it survives a crash. The counter is stored in the same transaction, so
//! resourceVersions keep increasing across restarts. The history is in memory only: after a
//! restart a watch from an older resourceVersion gets 410 Expired and relists, as with a real
//! API server whose watch cache was reset.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::ApiServerError;
use crate::error::ApiError;

const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";

/// The storage key of an object: `plural/namespace/name` (namespace empty when cluster-scoped).
pub fn key(plural: &str, namespace: &str, name: &str) -> String {
    format!("{plural}/{namespace}/{name}")
}

/// The prefix of every key of `plural` (in `namespace`, if given).
pub fn prefix(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{plural}/{ns}/"),
        None => format!("{plural}/"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: String,
    pub kind: EventType,
    /// The object after the change (for a deletion: the last state, with the deletion's
    /// resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, if any.
    pub prev: Option<Arc<Value>>,
}

/// Changes queued for each subscriber (watch, controller) before a slow one lags.
const EVENT_BUFFER: usize = 4096;

/// How a transaction is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Durable when the call returns (an fsync): what every client write gets.
    Durable,
    /// Visible at once but durable only with the next durable commit or [`Store::flush`]: for
    /// bulk writes of objects that are written again after a crash (a manifest folder).
    Lazy,
    /// Not committed at all.
    DryRun,
}

/// A change a transaction asks for.
#[derive(Debug)]
pub enum Change {
    Put { key: String, object: Value },
    Delete { key: String },
}

/// Objects written (`Some`) or deleted (`None`) earlier in the same transaction.
pub type Overlay = BTreeMap<String, Option<Arc<Value>>>;

/// Read access inside a transaction; with an overlay, what the transaction already wrote.
pub struct View<'a> {
    objects: &'a BTreeMap<String, Arc<Value>>,
    allocations: &'a Allocations,
    overlay: Option<&'a Overlay>,
}

const SERVICES_PREFIX: &str = "services/";

fn service_ips(service: &Value) -> impl Iterator<Item = IpAddr> + '_ {
    service["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse().ok())
}

fn service_node_ports(service: &Value) -> impl Iterator<Item = u64> + '_ {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
}

/// The ClusterIPs and NodePorts Services hold, by the key of the Service holding each: what
/// allocation checks against, without reading every Service.
#[derive(Default)]
pub struct Allocations {
    ips: HashMap<IpAddr, String>,
    node_ports: HashMap<u64, String>,
}

impl Allocations {
    fn add(&mut self, key: &str, service: &Value) {
        for ip in service_ips(service) {
            self.ips.insert(ip, key.to_owned());
        }
        for port in service_node_ports(service) {
            self.node_ports.insert(port, key.to_owned());
        }
    }

    fn remove(&mut self, key: &str, service: &Value) {
        for ip in service_ips(service) {
            if self.ips.get(&ip).is_some_and(|k| k == key) {
                self.ips.remove(&ip);
            }
        }
        for port in service_node_ports(service) {
            if self.node_ports.get(&port).is_some_and(|k| k == key) {
                self.node_ports.remove(&port);
            }
        }
    }

    /// Updates the index for a change of the object at `key`.
    fn change(&mut self, key: &str, before: Option<&Value>, after: Option<&Value>) {
        if !key.starts_with(SERVICES_PREFIX) {
            return;
        }
        if let Some(before) = before {
            self.remove(key, before);
        }
        if let Some(after) = after {
            self.add(key, after);
        }
    }
}

impl<'a> View<'a> {
    pub fn get(&self, key: &str) -> Option<&Arc<Value>> {
        if let Some(written) = self.overlay.and_then(|o| o.get(key)) {
            return written.as_ref();
        }
        self.objects.get(key)
    }
    pub fn list(&self, prefix: &str) -> impl Iterator<Item = (&String, &Arc<Value>)> {
        let overlay = self.overlay;
        let base = {
            let prefix = prefix.to_owned();
            self.objects
                .range(prefix.clone()..)
                .take_while(move |(k, _)| k.starts_with(&prefix))
                .filter(move |(k, _)| overlay.is_none_or(|o| !o.contains_key(*k)))
        };
        let written = {
            let prefix = prefix.to_owned();
            overlay.into_iter().flat_map(move |o| {
                let prefix = prefix.clone();
                o.range(prefix.clone()..)
                    .take_while(move |(k, _)| k.starts_with(&prefix))
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            })
        };
        base.chain(written)
    }
    /// This view with `overlay` (the transaction's own writes so far) on top.
    pub fn with_overlay<'b>(&self, overlay: &'b Overlay) -> View<'b>
    where
        'a: 'b,
    {
        View {
            objects: self.objects,
            allocations: self.allocations,
            overlay: Some(overlay),
        }
    }

    /// Whether a Service other than `except` (a key) holds ClusterIP `ip`.
    pub fn ip_in_use(&self, ip: IpAddr, except: &str) -> bool {
        self.in_use(self.allocations.ips.get(&ip), except, |s| {
            service_ips(s).any(|i| i == ip)
        })
    }

    /// Whether a Service other than `except` (a key) holds NodePort `port`.
    pub fn node_port_in_use(&self, port: u64, except: &str) -> bool {
        self.in_use(self.allocations.node_ports.get(&port), except, |s| {
            service_node_ports(s).any(|p| p == port)
        })
    }

    fn in_use(&self, owner: Option<&String>, except: &str, holds: impl Fn(&Value) -> bool) -> bool {
        let overlay = self.overlay;
        let rewritten = |k: &str| overlay.is_some_and(|o| o.contains_key(k));
        // The committed owner, unless this transaction rewrote it...
        if owner.is_some_and(|k| k != except && !rewritten(k)) {
            return true;
        }
        // ...and the Services this transaction wrote.
        overlay.is_some_and(|o| {
            o.range(SERVICES_PREFIX.to_owned()..)
                .take_while(|(k, _)| k.starts_with(SERVICES_PREFIX))
                .any(|(k, v)| k != except && v.as_deref().is_some_and(&holds))
        })
    }
}

/// Where a watch starts.
pub struct Subscription {
    /// The current state (only when the watch starts from "now").
    pub initial: Vec<Arc<Value>>,
    /// Changes after the requested resourceVersion that are already committed.
    pub backlog: Vec<Arc<Event>>,
    pub rv: u64,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

/// The requested resourceVersion is older than the history kept, or newer than the store (a
/// client that watched a store since lost): either way the client must list again.
#[derive(Debug)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
    pub newest: u64,
}

struct Inner {
    db: Database,
    objects: BTreeMap<String, Arc<Value>>,
    allocations: Allocations,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Every change after this resourceVersion is in `history`.
    floor: u64,
    history_len: usize,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

pub fn object_rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path, history_len: usize) -> Result<Self, ApiServerError> {
        Self::open_with(path, history_len, EVENT_BUFFER)
    }

    /// [`Store::open`] with `buffer` changes queued for each subscriber before a slow one lags.
    pub fn open_with(
        path: &Path,
        history_len: usize,
        buffer: usize,
    ) -> Result<Self, ApiServerError> {
        let db_err = |source: redb::Error| ApiServerError::Database {
            path: path.to_owned(),
            source,
        };
        let db = Database::create(path).map_err(|e| db_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
        let mut rv = 0;
        let mut objects = BTreeMap::new();
        {
            let meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
            if let Some(v) = meta.get(RV_KEY).map_err(|e| db_err(e.into()))? {
                rv = v.value();
            }
            let table = txn.open_table(OBJECTS).map_err(|e| db_err(e.into()))?;
            for entry in table.iter().map_err(|e| db_err(e.into()))? {
                let (k, v) = entry.map_err(|e| db_err(e.into()))?;
                let object: Value = serde_json::from_slice(v.value()).map_err(|source| {
                    ApiServerError::StoredObject {
                        key: k.value().to_owned(),
                        source,
                    }
                })?;
                rv = rv.max(object_rv(&object));
                objects.insert(k.value().to_owned(), Arc::new(object));
            }
        }
        txn.commit().map_err(|e| db_err(e.into()))?;
        let (events, _) = broadcast::channel(buffer.max(1));
        let mut allocations = Allocations::default();
        for (key, object) in objects.range(SERVICES_PREFIX.to_owned()..) {
            if !key.starts_with(SERVICES_PREFIX) {
                break;
            }
            allocations.add(key, object);
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                db,
                objects,
                allocations,
                rv,
                history: VecDeque::new(),
                floor: rv,
                history_len: history_len.max(1),
            }),
            events,
        })
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.inner.lock().objects.get(key).cloned()
    }

    /// Every object under `prefix`, and the resourceVersion the list is consistent at.
    pub fn list(&self, prefix: &str) -> (u64, Vec<Arc<Value>>) {
        let inner = self.inner.lock();
        let view = View {
            objects: &inner.objects,
            allocations: &inner.allocations,
            overlay: None,
        };
        let items = view.list(prefix).map(|(_, v)| v.clone()).collect();
        (inner.rv, items)
    }

    /// Every change from now on (the controller).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Starts a watch: from `from` (a resourceVersion) or, with `None`, from the current state
    /// of the objects under `prefix`.
    pub fn subscribe(&self, prefix: &str, from: Option<u64>) -> Result<Subscription, Expired> {
        let inner = self.inner.lock();
        let rx = self.events.subscribe();
        match from {
            None => {
                let view = View {
                    objects: &inner.objects,
                    allocations: &inner.allocations,
                    overlay: None,
                };
                Ok(Subscription {
                    initial: view.list(prefix).map(|(_, v)| v.clone()).collect(),
                    backlog: Vec::new(),
                    rv: inner.rv,
                    rx,
                })
            }
            Some(rv) if rv < inner.floor || rv > inner.rv => Err(Expired {
                requested: rv,
                oldest: inner.floor,
                newest: inner.rv,
            }),
            Some(rv) => Ok(Subscription {
                initial: Vec::new(),
                backlog: inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.key.starts_with(prefix))
                    .cloned()
                    .collect(),
                rv: inner.rv,
                rx,
            }),
        }
    }

    /// Makes every lazy commit so far durable.
    pub fn flush(&self) -> Result<(), ApiError> {
        let inner = self.inner.lock();
        let txn = inner.db.begin_write().map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Runs `f` against the current objects and commits the changes it returns, atomically and
    /// durably; returns the stored objects (for a deletion, the deleted one). Blocking: call it
    /// from `spawn_blocking`.
    pub fn transact<F>(&self, f: F) -> Result<Vec<Arc<Value>>, ApiError>
    where
        F: FnOnce(&View<'_>) -> Result<Vec<Change>, ApiError>,
    {
        self.transact_with(Commit::Durable, f)
    }

    /// [`Store::transact`] with the given kind of commit: with [`Commit::DryRun`] everything but
    /// the commit (the objects returned are what would have been stored or deleted).
    pub fn transact_with<F>(&self, commit: Commit, f: F) -> Result<Vec<Arc<Value>>, ApiError>
    where
        F: FnOnce(&View<'_>) -> Result<Vec<Change>, ApiError>,
    {
        let dry_run = commit == Commit::DryRun;
        let mut inner = self.inner.lock();
        let changes = f(&View {
            objects: &inner.objects,
            allocations: &inner.allocations,
            overlay: None,
        })?;
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        if dry_run {
            return Ok(changes
                .into_iter()
                .filter_map(|c| match c {
                    Change::Put { object, .. } => Some(Arc::new(object)),
                    Change::Delete { key } => inner.objects.get(&key).cloned(),
                })
                .collect());
        }
        let mut rv = inner.rv;
        let mut events = Vec::with_capacity(changes.len());
        let mut txn = inner.db.begin_write().map_err(redb::Error::from)?;
        if commit == Commit::Lazy {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| ApiError::internal(format!("lazy commit: {e}")))?;
        }
        {
            let mut table = txn.open_table(OBJECTS).map_err(redb::Error::from)?;
            for change in changes {
                match change {
                    Change::Put { key, mut object } => {
                        rv += 1;
                        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                        let bytes = serde_json::to_vec(&object)
                            .map_err(|e| ApiError::internal(format!("encoding {key}: {e}")))?;
                        table
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(redb::Error::from)?;
                        let prev = inner.objects.get(&key).cloned();
                        let kind = if prev.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        };
                        events.push(Event {
                            rv,
                            key,
                            kind,
                            object: Arc::new(object),
                            prev,
                        });
                    }
                    Change::Delete { key } => {
                        let Some(prev) = inner.objects.get(&key).cloned() else {
                            continue;
                        };
                        rv += 1;
                        table.remove(key.as_str()).map_err(redb::Error::from)?;
                        let mut object = (*prev).clone();
                        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                        events.push(Event {
                            rv,
                            key,
                            kind: EventType::Deleted,
                            object: Arc::new(object),
                            prev: Some(prev),
                        });
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            meta.insert(RV_KEY, rv).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;

        inner.rv = rv;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match event.kind {
                EventType::Deleted => {
                    inner.objects.remove(&event.key);
                    inner
                        .allocations
                        .change(&event.key, event.prev.as_deref(), None);
                }
                _ => {
                    inner
                        .objects
                        .insert(event.key.clone(), event.object.clone());
                    inner.allocations.change(
                        &event.key,
                        event.prev.as_deref(),
                        Some(&event.object),
                    );
                }
            }
            out.push(event.object.clone());
            let event = Arc::new(event);
            inner.history.push_back(event.clone());
            while inner.history.len() > inner.history_len {
                if let Some(old) = inner.history.pop_front() {
                    inner.floor = old.rv;
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(event);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn put(key: &str, name: &str) -> Change {
        Change::Put {
            key: key.to_owned(),
            object: json!({"metadata": {"name": name}}),
        }
    }

    #[test]
    fn resource_versions_increase_across_reopen_and_history_expires() {
        let dir = tempdir();
        let path = dir.0.join("db.redb");
        {
            let store = Store::open(&path, 2).unwrap();
            let out = store.transact(|_| Ok(vec![put("pods/a/x", "x")])).unwrap();
            assert_eq!(object_rv(&out[0]), 1);
            store
                .transact(|_| Ok(vec![put("pods/a/y", "y"), put("pods/b/z", "z")]))
                .unwrap();
            store
                .transact(|_| {
                    Ok(vec![Change::Delete {
                        key: "pods/a/x".to_owned(),
                    }])
                })
                .unwrap();
            assert_eq!(store.resource_version(), 4);
            // History holds the last two changes (3 and 4): from 2 is fine, from 1 is too old.
            let sub = store.subscribe("pods/", Some(2)).unwrap();
            assert_eq!(sub.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(), [3, 4]);
            let sub = store.subscribe("pods/a/", Some(2)).unwrap();
            assert_eq!(sub.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(), [4]);
            assert_eq!(sub.backlog[0].kind, EventType::Deleted);
            assert!(store.subscribe("pods/", Some(1)).is_err());
        }
        let store = Store::open(&path, 2).unwrap();
        // The deletion's resourceVersion survived even though no object carries it.
        assert_eq!(store.resource_version(), 4);
        let (_, items) = store.list("pods/a/");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "y");
        assert!(store.subscribe("pods/", Some(3)).is_err());
        assert!(store.subscribe("pods/", Some(4)).is_ok());
        // A resourceVersion this store never reached (a client of a store since lost).
        let ahead = store.subscribe("pods/", Some(40)).map(|_| ()).unwrap_err();
        assert_eq!((ahead.requested, ahead.newest), (40, 4));
        let out = store.transact(|_| Ok(vec![put("pods/a/x", "x")])).unwrap();
        assert_eq!(object_rv(&out[0]), 5);
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let dir = tempdir();
        let store = Store::open(&dir.0.join("db.redb"), 10).unwrap();
        let err = store
            .transact(|_| Err(ApiError::bad_request("no")))
            .unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(store.resource_version(), 0);
    }

    pub(crate) struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    pub(crate) fn tempdir() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "switchyard-apiserver-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}
