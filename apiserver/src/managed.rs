//! Objects owned by a manifest folder: the node daemon loads `--manifests DIR` into the
//! embedded API server through [`Api::apply_manifests`], in process.
//!
//! Every object written this way carries the annotation [`ANNOTATION_MANIFESTS`] (the folder).
//! A full apply (the folder as read at start) deletes every annotated object the folder no
//! longer defines, so the folder's objects follow the folder across restarts, while objects
//! other clients created through the API are never touched. Writes are committed lazily and
//! made durable once at the end of a batch: the folder is the source of truth and is applied
//! again after a crash, and a batch of 100,000 objects costs one fsync, not 100,000.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::{ENDPOINTSLICES, NAMESPACES, NODES, PODS, Resource, SECRETS, SERVICES};
use crate::rest::{Api, Part, WriteOptions, delete_changes};
use crate::store::{Change, Commit, Overlay, View, key, prefix};

/// The annotation naming the manifest folder an object came from.
pub const ANNOTATION_MANIFESTS: &str = "switchyard.io/manifests";

/// One object of a manifest folder, as JSON with `apiVersion` and `kind`.
#[derive(Clone, Debug)]
pub struct ManifestObject(pub Value);

/// An object a manifest folder no longer defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRef {
    /// `Service`, `EndpointSlice`, `Pod` or `Node`.
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct ManifestReport {
    /// Objects created or changed.
    pub written: usize,
    /// Objects deleted (named, or pruned by a full apply).
    pub deleted: usize,
    /// Objects the API server refused, with why (`Kind namespace/name: message`).
    pub errors: Vec<String>,
}

/// The kinds a manifest folder may define.
const KINDS: [&Resource; 5] = [&SERVICES, &ENDPOINTSLICES, &PODS, &NODES, &SECRETS];

fn resource_of_kind(kind: &str) -> Option<&'static Resource> {
    KINDS.into_iter().find(|r| r.kind == kind)
}

/// Fields the API server allocated that a manifest normally leaves out: an update from the
/// manifest keeps them, as `kubectl apply` does.
fn keep_allocated(old: &Value, new: &mut Value) {
    let (old_spec, Some(new_spec)) = (&old["spec"], new["spec"].as_object_mut()) else {
        return;
    };
    let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_str() == Some(""));
    if unset(new_spec.get("clusterIP")) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if unset(new_spec.get(field)) && !old_spec[field].is_null() {
                new_spec.insert(field.to_owned(), old_spec[field].clone());
            }
        }
    }
    if unset(new_spec.get("healthCheckNodePort")) && !old_spec["healthCheckNodePort"].is_null() {
        new_spec.insert(
            "healthCheckNodePort".to_owned(),
            old_spec["healthCheckNodePort"].clone(),
        );
    }
    let Some(ports) = new_spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    let old_ports = old_spec["ports"].as_array().cloned().unwrap_or_default();
    for port in ports {
        if !port["nodePort"].is_null() {
            continue;
        }
        let protocol = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_owned();
        if let Some(old) = old_ports
            .iter()
            .find(|o| o["port"] == port["port"] && protocol(o) == protocol(port))
            && !old["nodePort"].is_null()
        {
            port["nodePort"] = old["nodePort"].clone();
        }
    }
}

/// Objects per transaction: large enough that a big folder costs few commits, small enough
/// that a watcher's event queue keeps up.
const CHUNK: usize = 512;

/// One object to write, resolved.
struct Prepared {
    res: &'static Resource,
    ns: Option<String>,
    name: String,
    key: String,
    described: String,
    object: Value,
}

/// What a manifest says about a Pod's deletion, applied over what the server keeps: with no
/// kubelet, a manifest's `deletionTimestamp` is the truth (the Pod stays terminating as long
/// as the file says so).
fn set_deletion(object: &mut Value, from: &Value) {
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match from["metadata"].get(field) {
            Some(v) if !v.is_null() => object["metadata"][field] = v.clone(),
            _ => {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
}

impl Api {
    /// Writes the objects of manifest folder `folder` and deletes those in `deletes` (only if
    /// they came from the folder). With `full`, `objects` is the whole folder: every object
    /// that came from it and is not in `objects` is deleted. An object the API server refuses
    /// is reported and skipped; the others are written. With `derive_slices` (the
    /// EndpointSlice controller runs), a full apply also derives the slices before it returns.
    /// Blocking: call it from `spawn_blocking`.
    pub fn apply_manifests(
        &self,
        folder: &str,
        objects: Vec<ManifestObject>,
        deletes: &[ManifestRef],
        full: bool,
        derive_slices: bool,
    ) -> ManifestReport {
        let mut report = ManifestReport::default();
        let mut keep = HashSet::new();
        let mut prepared = Vec::with_capacity(objects.len());
        for ManifestObject(mut object) in objects {
            let kind = object["kind"].as_str().unwrap_or("").to_owned();
            let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let Some(res) = resource_of_kind(&kind) else {
                report.errors.push(format!(
                    "{kind} {name}: not a kind a manifest folder may define"
                ));
                continue;
            };
            let ns = res.namespaced.then(|| {
                object["metadata"]["namespace"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default")
                    .to_owned()
            });
            let described = match &ns {
                Some(ns) => format!("{kind} {ns}/{name}"),
                None => format!("{kind} {name}"),
            };
            let key = key(res.plural, ns.as_deref().unwrap_or(""), &name);
            keep.insert(key.clone());
            if !object["metadata"]["annotations"].is_object() {
                object["metadata"]["annotations"] = json!({});
            }
            object["metadata"]["annotations"][ANNOTATION_MANIFESTS] = json!(folder);
            prepared.push(Prepared {
                res,
                ns,
                name,
                key,
                described,
                object,
            });
        }
        let mut gone: Vec<(&'static Resource, String, String)> = deletes
            .iter()
            .filter_map(|d| {
                let res = resource_of_kind(&d.kind)?;
                let ns = if res.namespaced {
                    d.namespace.as_str()
                } else {
                    ""
                };
                Some((res, key(res.plural, ns, &d.name), d.name.clone()))
            })
            .collect();
        if full {
            for res in KINDS {
                let (_, stored) = self.store.list(&prefix(res.plural, None));
                for object in stored {
                    let meta = &object["metadata"];
                    if meta["annotations"][ANNOTATION_MANIFESTS] != folder {
                        continue;
                    }
                    let ns = meta["namespace"].as_str().unwrap_or("");
                    let name = meta["name"].as_str().unwrap_or("");
                    gone.push((res, key(res.plural, ns, name), name.to_owned()));
                }
            }
        }
        gone.retain(|(_, k, _)| !keep.contains(k));

        let mut prepared = prepared.into_iter().peekable();
        let mut gone = gone.into_iter().peekable();
        while prepared.peek().is_some() || gone.peek().is_some() {
            let writes: Vec<Prepared> = prepared.by_ref().take(CHUNK).collect();
            let deletes: Vec<_> = if writes.len() < CHUNK {
                gone.by_ref().take(CHUNK - writes.len()).collect()
            } else {
                Vec::new()
            };
            let mut errors = Vec::new();
            let mut deleted = 0;
            let result = self.store.transact_with(Commit::Lazy, |view| {
                let mut overlay = Overlay::new();
                for item in writes {
                    let described = item.described.clone();
                    if let Err(error) = self.manifest_changes(view, &mut overlay, item) {
                        errors.push(format!("{described}: {}", error.message()));
                    }
                }
                for (res, k, name) in deletes {
                    let current = view.with_overlay(&overlay);
                    let ours = current.get(&k).is_some_and(|o| {
                        o["metadata"]["annotations"][ANNOTATION_MANIFESTS] == folder
                    });
                    if ours {
                        let changes = delete_changes(res, &current, &k, &name);
                        for change in changes {
                            if let Change::Delete { key } = change {
                                overlay.insert(key, None);
                            }
                        }
                        deleted += 1;
                    }
                }
                Ok(overlay
                    .into_iter()
                    .map(|(key, object)| match object {
                        Some(object) => Change::Put {
                            key,
                            object: Arc::unwrap_or_clone(object),
                        },
                        None => Change::Delete { key },
                    })
                    .collect())
            });
            match result {
                Ok(stored) => {
                    report.written += stored.len().saturating_sub(deleted);
                    report.deleted += deleted;
                }
                Err(error) => report.errors.push(format!(
                    "cannot store manifest objects: {}",
                    error.message()
                )),
            }
            report.errors.extend(errors);
        }
        // The first view a watcher lists holds the slices derived from the folder's Pods.
        if full
            && derive_slices
            && let Err(error) = crate::controller::reconcile_everything(self)
        {
            report
                .errors
                .push(format!("cannot derive EndpointSlices: {}", error.message()));
        }
        if let Err(error) = self.store.flush() {
            report.errors.push(format!(
                "cannot make the writes durable: {}",
                error.message()
            ));
        }
        report
    }

    /// Adds to `overlay` what storing one manifest object takes: its namespace if missing, and
    /// the object created, or replaced (main part, then status) keeping what the server
    /// allocated. Nothing is added when it is refused.
    fn manifest_changes(
        &self,
        view: &View<'_>,
        overlay: &mut Overlay,
        item: Prepared,
    ) -> Result<(), ApiError> {
        // What the overlay held before, for each key this object touches: restored on error.
        let mut undo: Vec<(String, Option<Option<Arc<Value>>>)> = Vec::new();
        let result = self.stage_manifest(view, overlay, &mut undo, item);
        if result.is_err() {
            for (key, before) in undo.into_iter().rev() {
                match before {
                    Some(value) => overlay.insert(key, value),
                    None => overlay.remove(&key),
                };
            }
        }
        result
    }

    fn stage_manifest(
        &self,
        view: &View<'_>,
        overlay: &mut Overlay,
        undo: &mut Vec<(String, Option<Option<Arc<Value>>>)>,
        item: Prepared,
    ) -> Result<(), ApiError> {
        let Prepared {
            res,
            ns,
            name,
            key: k,
            object,
            ..
        } = item;
        let opts = WriteOptions::default();
        let stage = |overlay: &mut Overlay,
                     undo: &mut Vec<(String, Option<Option<Arc<Value>>>)>,
                     changes: Vec<Change>| {
            for change in changes {
                let (key, value) = match change {
                    Change::Put { key, object } => (key, Some(Arc::new(object))),
                    Change::Delete { key } => (key, None),
                };
                let before = overlay.insert(key.clone(), value);
                undo.push((key, before));
            }
        };
        if let Some(ns) = &ns
            && view
                .with_overlay(overlay)
                .get(&key(NAMESPACES.plural, "", ns))
                .is_none()
        {
            let body = json!({"metadata": {"name": ns}});
            let (nk, _, n, obj) = Self::prepare_create(&NAMESPACES, None, &body, opts)?;
            let changes =
                self.create_in(&view.with_overlay(overlay), &NAMESPACES, &nk, "", &n, obj)?;
            stage(overlay, undo, changes);
        }
        let existing = view.with_overlay(overlay).get(&k).cloned();
        match existing {
            None => {
                let (k, ns, name, obj) = Self::prepare_create(res, ns.as_deref(), &object, opts)?;
                let changes =
                    self.create_in(&view.with_overlay(overlay), res, &k, &ns, &name, obj)?;
                stage(overlay, undo, changes);
            }
            Some(old) => {
                let mut new = object.clone();
                keep_allocated(&old, &mut new);
                if let Some(meta) = new["metadata"].as_object_mut() {
                    meta.remove("resourceVersion");
                    meta.remove("uid");
                }
                let new = Self::check_manifest_body(res, &new)?;
                let changes = self.write_over(
                    res,
                    &view.with_overlay(overlay),
                    &k,
                    &name,
                    new.clone(),
                    Part::Main,
                )?;
                stage(overlay, undo, changes);
                if res.status && new.get("status").is_some() {
                    let changes = self.write_over(
                        res,
                        &view.with_overlay(overlay),
                        &k,
                        &name,
                        new,
                        Part::Status,
                    )?;
                    stage(overlay, undo, changes);
                }
            }
        }
        if res.plural == PODS.plural
            && let Some(current) = view.with_overlay(overlay).get(&k).cloned()
        {
            let mut changed = (*current).clone();
            set_deletion(&mut changed, &object);
            if changed != *current {
                stage(
                    overlay,
                    undo,
                    vec![Change::Put {
                        key: k.clone(),
                        object: changed,
                    }],
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_what_the_server_allocated() {
        let old = json!({"spec": {
            "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "healthCheckNodePort": 31000,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}});
        let mut new = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 443}]}});
        keep_allocated(&old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.96.0.7"]));
        assert_eq!(new["spec"]["healthCheckNodePort"], 31000);
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30053);
        assert!(new["spec"]["ports"][2]["nodePort"].is_null());

        // What the manifest sets wins.
        let mut new =
            json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30100}]}});
        keep_allocated(&old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.9");
        assert!(new["spec"]["clusterIPs"].is_null());
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30100);
    }
}
