//! The store: the latest version of every object the sources delivered, indexed the way the
//! model reads them (slices by Service, pods by namespace). Every change reports which Services
//! it can affect, so the controller recomputes only those.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::LABEL_SERVICE_NAME;

/// `namespace/name` of an object (namespace empty for cluster-scoped kinds such as Node).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object; a namespaced object without a namespace is in `default`, as
    /// `kubectl apply` would put it.
    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn cluster_scoped(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: String::new(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The kinds of object switchyard reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    /// Only `kubernetes.io/tls` Secrets named by a Service's TLS annotations are used.
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Secret => "Secret",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a kind switchyard reads.
#[allow(clippy::large_enum_variant)] // moved a few times per change, never kept in bulk
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    Node(Node),
    Secret(Secret),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::Secret(_) => Kind::Secret,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(o) => ObjectKey::of(&o.metadata),
            Object::EndpointSlice(o) => ObjectKey::of(&o.metadata),
            Object::Pod(o) => ObjectKey::of(&o.metadata),
            Object::Node(o) => ObjectKey::cluster_scoped(&o.metadata),
            Object::Secret(o) => ObjectKey::of(&o.metadata),
        }
    }

    /// `Kind namespace/name`, for log lines.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind(), self.key())
    }
}

/// Which Services a change can affect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    pub services: BTreeSet<ObjectKey>,
    /// A Node changed: derived endpoints (zones) of every Service may change.
    pub all: bool,
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        self.services.extend(other.services);
        self.all |= other.all;
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }
}

/// Counts of what a change was, for kube-proxy's change counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub services: u64,
    pub endpoints: u64,
}

/// Every object the sources delivered, latest version only.
#[derive(Clone, Debug, Default)]
pub struct Store {
    services: BTreeMap<ObjectKey, Service>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    pods: BTreeMap<ObjectKey, Pod>,
    nodes: BTreeMap<String, Node>,
    secrets: BTreeMap<ObjectKey, Secret>,
}

fn service_of_slice(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ObjectKey::new(
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name.clone(),
    ))
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// Whether the store holds this EndpointSlice.
    pub fn has_slice(&self, key: &ObjectKey) -> bool {
        self.slices.contains_key(key)
    }

    pub fn services_len(&self) -> usize {
        self.services.len()
    }

    /// The `EndpointSlices` labelled with this Service's name, in its namespace.
    pub fn slices_for_service(&self, key: &ObjectKey) -> Vec<&EndpointSlice> {
        self.slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect()
    }

    pub fn pods_in_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        let start = ObjectKey::new(namespace, "");
        let namespace = namespace.to_owned();
        self.pods
            .range(start..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| p)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every Node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn secret(&self, key: &ObjectKey) -> Option<&Secret> {
        self.secrets.get(key)
    }

    /// Adds or replaces an object; returns the Services it can affect.
    pub fn upsert(&mut self, object: Object) -> (Affected, ChangeCounts) {
        let key = object.key();
        let mut affected = Affected::default();
        let mut counts = ChangeCounts::default();
        match object {
            Object::Service(service) => {
                counts.services = 1;
                affected.services.insert(key.clone());
                self.services.insert(key, service);
            }
            Object::EndpointSlice(slice) => {
                counts.endpoints = 1;
                if let Some(old) = self.remove_slice(&key) {
                    affected.services.insert(old);
                }
                if let Some(owner) = service_of_slice(&slice) {
                    self.slices_by_service
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.clone());
                    affected.services.insert(owner);
                }
                self.slices.insert(key, slice);
            }
            Object::Pod(pod) => {
                counts.endpoints = 1;
                let old = self.pods.insert(key.clone(), pod);
                affected.services =
                    self.services_selecting(&key.namespace, old.as_ref(), self.pods.get(&key));
            }
            Object::Node(node) => {
                affected.all = true;
                self.nodes.insert(key.name, node);
            }
            Object::Secret(secret) => {
                affected.services = self.services_naming_secret(&key);
                self.secrets.insert(key, secret);
            }
        }
        (affected, counts)
    }

    /// Removes an object; returns the Services it can affect.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> (Affected, ChangeCounts) {
        let mut affected = Affected::default();
        let mut counts = ChangeCounts::default();
        match kind {
            Kind::Service => {
                if self.services.remove(key).is_some() {
                    counts.services = 1;
                    affected.services.insert(key.clone());
                }
            }
            Kind::EndpointSlice => {
                if self.slices.contains_key(key) {
                    counts.endpoints = 1;
                }
                if let Some(owner) = self.remove_slice(key) {
                    affected.services.insert(owner);
                }
                self.slices.remove(key);
            }
            Kind::Pod => {
                if let Some(old) = self.pods.remove(key) {
                    counts.endpoints = 1;
                    affected.services = self.services_selecting(&key.namespace, Some(&old), None);
                }
            }
            Kind::Node => {
                if self.nodes.remove(&key.name).is_some() {
                    affected.all = true;
                }
            }
            Kind::Secret => {
                if self.secrets.remove(key).is_some() {
                    affected.services = self.services_naming_secret(key);
                }
            }
        }
        (affected, counts)
    }

    /// Unlinks a slice from its Service's index; returns that Service.
    fn remove_slice(&mut self, key: &ObjectKey) -> Option<ObjectKey> {
        let owner = service_of_slice(self.slices.get(key)?)?;
        if let Some(set) = self.slices_by_service.get_mut(&owner) {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
        Some(owner)
    }

    /// Services in the Secret's namespace whose annotations name it.
    fn services_naming_secret(&self, secret: &ObjectKey) -> BTreeSet<ObjectKey> {
        let start = ObjectKey::new(&secret.namespace, "");
        self.services
            .range(start..)
            .take_while(|(k, _)| k.namespace == secret.namespace)
            .filter(|(_, svc)| crate::model::secrets_named(svc).any(|name| name == secret.name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Services in the namespace whose selector matches the pod before or after the change.
    fn services_selecting(
        &self,
        namespace: &str,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> BTreeSet<ObjectKey> {
        let start = ObjectKey::new(namespace, "");
        self.services
            .range(start..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter(|(_, svc)| {
                [old, new]
                    .into_iter()
                    .flatten()
                    .any(|pod| crate::model::selects(svc, pod))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}
