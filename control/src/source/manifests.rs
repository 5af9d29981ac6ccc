//! The manifest folder source: every `*.yaml`, `*.yml` and `*.json` file in a folder, read as
//! the manifests a user would `kubectl apply`, and watched for changes. [`load_into`] loads the
//! folder into the embedded API server and keeps it there as the folder changes (the daemon
//! then watches the API server like any cluster's).
//!
//! A document that does not parse or is not valid is rejected with one log line naming the
//! file, the document and the field; the objects the file held before stay in force, so a bad
//! edit never loses a working Service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SourceEvent;
use crate::metrics::Metrics;
use crate::model::{validate_endpoint_slice, validate_node, validate_pod, validate_service};
use crate::store::{Kind, Object, ObjectKey};

/// How long to wait after a file event for more events of the same edit.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// One document that was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {index}: {message}")]
pub struct DocumentError {
    pub file: String,
    /// 1-based position of the document in its file.
    pub index: usize,
    /// The object's kind when it could be read, for the metric.
    pub kind: Option<Kind>,
    pub message: String,
}

/// Whether the source reads this file: a manifest by its extension, not a hidden or editor
/// temporary file.
pub fn is_manifest(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Parses every document of a manifest file. Valid objects are returned even when other
/// documents of the file are rejected.
pub fn parse_manifest(file: &str, text: &str) -> (Vec<Object>, Vec<DocumentError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match serde_json::Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                errors.push(DocumentError {
                    file: file.to_owned(),
                    index,
                    kind: None,
                    message: format!("does not parse: {error}"),
                });
                // The YAML stream cannot be followed past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        // `kind: List` (as `kubectl get -o yaml` writes) holds its objects in `items`.
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                match parse_object(item) {
                    Ok(object) => objects.push(object),
                    Err((kind, message)) => errors.push(DocumentError {
                        file: file.to_owned(),
                        index,
                        kind,
                        message: format!("items[{i}]: {message}"),
                    }),
                }
            }
            continue;
        }
        match parse_object(value) {
            Ok(object) => objects.push(object),
            Err((kind, message)) => errors.push(DocumentError {
                file: file.to_owned(),
                index,
                kind,
                message,
            }),
        }
    }
    (objects, errors)
}

/// Reads one object: its kind from `apiVersion` and `kind`, its fields into the k8s-openapi
/// type (the error names the field), then switchyard's validation.
fn parse_object(value: serde_json::Value) -> Result<Object, (Option<Kind>, String)> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let kind_name = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>")
        .to_owned();
    let kind = match (api_version, kind_name) {
        ("v1", "Service") => Kind::Service,
        ("v1", "Pod") => Kind::Pod,
        ("v1", "Node") => Kind::Node,
        ("v1", "Secret") => Kind::Secret,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        ("", _) | (_, "") => {
            return Err((None, "apiVersion and kind are required".to_owned()));
        }
        (api_version, kind) => {
            return Err((
                None,
                format!(
                    "{api_version} {kind} {name}: unsupported kind (switchyard reads v1 Service, Pod, Node, Secret and discovery.k8s.io/v1 EndpointSlice)"
                ),
            ));
        }
    };
    let context = |message: String| (Some(kind), format!("{kind} {name}: {message}"));
    let typed = |value| -> Result<Object, (Option<Kind>, String)> {
        fn read<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                }
            })
        }
        Ok(match kind {
            Kind::Service => Object::Service(read(value).map_err(context)?),
            Kind::Pod => Object::Pod(read(value).map_err(context)?),
            Kind::Node => Object::Node(read(value).map_err(context)?),
            Kind::EndpointSlice => Object::EndpointSlice(read(value).map_err(context)?),
            Kind::Secret => Object::Secret(read(value).map_err(context)?),
        })
    };
    let object = typed(value)?;
    let checked = match &object {
        Object::Service(o) => validate_service(o),
        Object::Pod(o) => validate_pod(o),
        Object::Node(o) => validate_node(o),
        Object::EndpointSlice(o) => validate_endpoint_slice(o),
        Object::Secret(_) => Ok(()),
    };
    checked.map_err(|e| context(e.to_string()))?;
    Ok(object)
}

type Id = (Kind, ObjectKey);

/// What the folder holds, file by file, and the merged view last sent to the controller.
#[derive(Debug, Default)]
pub struct ManifestState {
    files: BTreeMap<PathBuf, BTreeMap<Id, Object>>,
    sent: BTreeMap<Id, Object>,
    /// A hash of each file's text as last read: a file read again unchanged (the periodic
    /// rescan) changes nothing and is not reported again.
    read: BTreeMap<PathBuf, u64>,
}

/// The objects to add or replace and to delete after a change of files.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub upserts: Vec<Object>,
    pub deletes: Vec<(Kind, ObjectKey)>,
    pub errors: Vec<DocumentError>,
}

impl ManifestState {
    /// Updates one file from its new text (`None`: the file is gone) and returns what changed.
    pub fn update(&mut self, path: &Path, text: Option<&str>) -> Changes {
        let mut changes = Changes::default();
        match text {
            Some(text) => {
                let hash = {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    text.hash(&mut hasher);
                    hasher.finish()
                };
                if self.read.insert(path.to_owned(), hash) == Some(hash) {
                    return changes;
                }
            }
            None => {
                self.read.remove(path);
            }
        }
        let old: BTreeMap<Id, Object> = self.files.remove(path).unwrap_or_default();
        let new = match text {
            None => BTreeMap::new(),
            Some(text) => {
                let (objects, errors) = parse_manifest(&path.display().to_string(), text);
                let mut new: BTreeMap<Id, Object> = BTreeMap::new();
                for object in objects {
                    new.insert((object.kind(), object.key()), object);
                }
                if !errors.is_empty() {
                    // Keep the last good version of every object this file held that the
                    // valid part of the new text does not define: a broken document may be
                    // exactly the one that defined it.
                    for (id, object) in &old {
                        new.entry(id.clone()).or_insert_with(|| object.clone());
                    }
                }
                changes.errors = errors;
                new
            }
        };
        let touched: BTreeSet<Id> = old.keys().chain(new.keys()).cloned().collect();
        if !new.is_empty() {
            self.files.insert(path.to_owned(), new);
        }
        for id in touched {
            // The first file in path order that defines an object wins.
            let winner = self.files.values().find_map(|objects| objects.get(&id));
            match (winner, self.sent.get(&id)) {
                (Some(object), Some(sent)) if object == sent => {}
                (Some(object), _) => {
                    self.sent.insert(id, object.clone());
                    changes.upserts.push(object.clone());
                }
                (None, Some(_)) => {
                    self.sent.remove(&id);
                    changes.deletes.push(id);
                }
                (None, None) => {}
            }
        }
        changes
    }

    /// The files currently known.
    pub fn known_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys()
    }
}

/// Configuration of the manifest source.
#[derive(Clone, Debug)]
pub struct ManifestConfig {
    pub dir: PathBuf,
    /// A full rescan of the folder on this period catches any missed file event.
    pub rescan_period: Duration,
}

/// Reads the folder, sends its objects, then follows its changes until cancelled.
pub async fn run(
    config: ManifestConfig,
    events: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), super::SourceError> {
    let dir = config.dir.clone();
    if !dir.is_dir() {
        return Err(super::SourceError::NotADirectory(dir));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|e| super::SourceError::Watch(dir.clone(), e))?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| super::SourceError::Watch(dir.clone(), e))?;

    let mut state = ManifestState::default();
    let observed = Instant::now();
    let changes = rescan(&mut state, &dir).await;
    send(&events, &metrics, changes, observed).await;
    if events.send(SourceEvent::Synced).await.is_err() {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), files = state.files.len(), "manifest folder read");

    let mut rescan_timer = tokio::time::interval(config.rescan_period);
    rescan_timer.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = rescan_timer.tick() => {
                let observed = Instant::now();
                let changes = rescan(&mut state, &dir).await;
                send(&events, &metrics, changes, observed).await;
            }
            event = rx.recv() => {
                let Some(event) = event else { return Ok(()) };
                let observed = Instant::now();
                let mut paths = BTreeSet::new();
                let mut full = collect_paths(event, &mut paths);
                // Gather the rest of this edit (editors and atomic writes make several events).
                let deadline = tokio::time::sleep(DEBOUNCE);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        more = rx.recv() => match more {
                            Some(event) => full |= collect_paths(event, &mut paths),
                            None => break,
                        },
                    }
                }
                let changes = if full {
                    rescan(&mut state, &dir).await
                } else {
                    let mut changes = Changes::default();
                    for path in paths.into_iter().filter(|p| is_manifest(p)) {
                        merge(&mut changes, reload(&mut state, &path).await);
                    }
                    changes
                };
                send(&events, &metrics, changes, observed).await;
            }
        }
    }
}

/// Loads the folder into the embedded API server and follows it until cancelled: the first
/// complete read replaces every object that came from the folder before (so the folder's
/// objects follow it across restarts), then each change writes or deletes what it touched.
/// `loaded` fires once the first read is in the API server. Objects the API server refuses are
/// logged, one line each, and counted in `switchyard_invalid_objects_total`.
pub async fn load_into(
    config: ManifestConfig,
    api: switchyard_apiserver::ApiHandle,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    loaded: tokio::sync::oneshot::Sender<()>,
) -> Result<(), super::SourceError> {
    let folder = std::fs::canonicalize(&config.dir)
        .unwrap_or_else(|_| config.dir.clone())
        .display()
        .to_string();
    let (events, mut changes) = mpsc::channel(16);
    let reader = tokio::spawn(run(config, events, Arc::clone(&metrics), cancel));
    let mut initial = Vec::new();
    let mut loaded = Some(loaded);
    while let Some(event) = changes.recv().await {
        let (upserts, deletes, full) = match event {
            // Part of the first read (which deletes nothing): held until it is complete.
            SourceEvent::Changes { upserts, .. } if loaded.is_some() => {
                initial.extend(upserts);
                continue;
            }
            SourceEvent::Changes {
                upserts, deletes, ..
            } => (upserts, deletes, false),
            SourceEvent::Synced => (std::mem::take(&mut initial), Vec::new(), true),
            SourceEvent::Relisting(_) | SourceEvent::Relisted(_) => continue,
        };
        let objects = upserts.iter().filter_map(to_manifest_object).collect();
        let deletes = deletes
            .into_iter()
            .map(|(kind, key)| switchyard_apiserver::ManifestRef {
                kind: kind.as_str().to_owned(),
                namespace: key.namespace,
                name: key.name,
            })
            .collect();
        let report = api
            .apply_manifests(folder.clone(), objects, deletes, full)
            .await;
        for error in &report.errors {
            tracing::warn!("the API server refused a manifest object: {error}; skipped");
            let kind = error.split(' ').next().unwrap_or("Unknown");
            metrics.invalid_object(match kind {
                "Service" | "EndpointSlice" | "Pod" | "Node" | "Secret" => kind,
                _ => "Unknown",
            });
        }
        if full {
            tracing::info!(
                written = report.written,
                deleted = report.deleted,
                refused = report.errors.len(),
                "manifest folder loaded into the API server"
            );
            if let Some(loaded) = loaded.take() {
                let _ = loaded.send(());
            }
        } else {
            tracing::debug!(
                written = report.written,
                deleted = report.deleted,
                "manifest change written to the API server"
            );
        }
    }
    reader.await.unwrap_or(Ok(()))
}

fn to_manifest_object(object: &Object) -> Option<switchyard_apiserver::ManifestObject> {
    let value = match object {
        Object::Service(o) => serde_json::to_value(o),
        Object::EndpointSlice(o) => serde_json::to_value(o),
        Object::Pod(o) => serde_json::to_value(o),
        Object::Node(o) => serde_json::to_value(o),
        Object::Secret(o) => serde_json::to_value(o),
    };
    match value {
        Ok(value) => Some(switchyard_apiserver::ManifestObject(value)),
        Err(error) => {
            tracing::warn!(object = %object.describe(), %error, "cannot encode a manifest object; skipped");
            None
        }
    }
}

/// Adds an event's paths; returns true when the whole folder must be rescanned.
fn collect_paths(event: notify::Result<notify::Event>, paths: &mut BTreeSet<PathBuf>) -> bool {
    match event {
        Ok(event) => {
            if event.need_rescan() {
                return true;
            }
            // Opening or reading a file is no change; without this, the source's own reads of
            // a file (inotify reports opens) would trigger the next reload, forever.
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return false;
            }
            paths.extend(event.paths);
            false
        }
        Err(error) => {
            tracing::warn!(%error, "manifest folder watch error; rescanning");
            true
        }
    }
}

fn merge(into: &mut Changes, from: Changes) {
    into.upserts.extend(from.upserts);
    into.deletes.extend(from.deletes);
    into.errors.extend(from.errors);
}

async fn reload(state: &mut ManifestState, path: &Path) -> Changes {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => state.update(path, Some(&text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => state.update(path, None),
        Err(error) => {
            // Unreadable (permissions, not UTF-8): keep what the file held.
            Changes {
                errors: vec![DocumentError {
                    file: path.display().to_string(),
                    index: 0,
                    kind: None,
                    message: format!("cannot be read: {error}"),
                }],
                ..Changes::default()
            }
        }
    }
}

async fn rescan(state: &mut ManifestState, dir: &Path) -> Changes {
    let mut present = BTreeSet::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                if is_manifest(&path) && path.is_file() {
                    present.insert(path);
                }
            }
        }
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list the manifest folder; keeping the last good state");
            return Changes::default();
        }
    }
    let gone: Vec<PathBuf> = state
        .known_files()
        .filter(|p| !present.contains(*p))
        .cloned()
        .collect();
    let mut changes = Changes::default();
    for path in present.iter().chain(&gone) {
        merge(&mut changes, reload(state, path).await);
    }
    changes
}

async fn send(
    events: &mpsc::Sender<SourceEvent>,
    metrics: &Metrics,
    changes: Changes,
    observed: Instant,
) {
    for error in &changes.errors {
        tracing::warn!("rejected manifest: {error}; the last good state stays in force");
        metrics.invalid_object(error.kind.map_or("Unknown", Kind::as_str));
    }
    if changes.upserts.is_empty() && changes.deletes.is_empty() {
        return;
    }
    let _ = events
        .send(SourceEvent::Changes {
            upserts: changes.upserts,
            deletes: changes.deletes,
            observed,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";

    #[test]
    fn parse_cases() {
        let cases: Vec<(&str, String, usize, Vec<&str>)> = vec![
            ("one service", SERVICE.to_owned(), 1, vec![]),
            (
                "multi-document with an empty one",
                format!("{SERVICE}---\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n"),
                2,
                vec![],
            ),
            (
                "json list",
                r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}]}"#.to_owned(),
                1,
                vec![],
            ),
            (
                "port out of range names the field",
                SERVICE.replace("port: 80", "port: 70000"),
                0,
                vec!["f.yaml: document 1: Service web: spec.ports[0].port: 70000 is out of range 1-65535"],
            ),
            (
                "wrong type names the field",
                SERVICE.replace("port: 80", "port: eighty"),
                0,
                vec!["f.yaml: document 1: Service web: spec.ports[0].port: invalid type"],
            ),
            (
                "bad IP",
                SERVICE.replace("10.96.0.10", "10.96.0.999"),
                0,
                vec!["document 1: Service web: spec.clusterIP: \"10.96.0.999\" is not a valid IP address"],
            ),
            (
                "unknown kind, the rest still read",
                format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\n{SERVICE}"),
                1,
                vec!["document 1: apps/v1 Deployment d: unsupported kind"],
            ),
            (
                "broken YAML in the second document",
                format!("{SERVICE}---\nkind: [unclosed\n"),
                1,
                vec!["document 2: does not parse"],
            ),
            (
                "no kind",
                "metadata: {name: x}\n".to_owned(),
                0,
                vec!["document 1: apiVersion and kind are required"],
            ),
            (
                "duplicate port names",
                SERVICE.replace("ports: [{port: 80}]", "ports: [{name: a, port: 80}, {name: a, port: 81}]"),
                0,
                vec!["spec.ports[1].name: duplicate port name \"a\""],
            ),
        ];
        for (name, text, objects, errors) in cases {
            let (parsed, errs) = parse_manifest("f.yaml", &text);
            assert_eq!(parsed.len(), objects, "{name}: {errs:?}");
            assert_eq!(errs.len(), errors.len(), "{name}: {errs:?}");
            for (err, want) in errs.iter().zip(errors) {
                assert!(err.to_string().contains(want), "{name}: {err}");
            }
        }
    }

    #[test]
    fn bad_edits_keep_the_last_good_state() {
        let mut state = ManifestState::default();
        let path = Path::new("/m/web.yaml");
        let first = state.update(path, Some(SERVICE));
        assert_eq!((first.upserts.len(), first.deletes.len()), (1, 0));

        // Unchanged text: nothing to send.
        assert_eq!(state.update(path, Some(SERVICE)), Changes::default());

        // A broken edit: error reported, the Service is kept, nothing is deleted.
        let broken = state.update(path, Some("kind: [unclosed"));
        assert_eq!(
            (
                broken.upserts.len(),
                broken.deletes.len(),
                broken.errors.len()
            ),
            (0, 0, 1)
        );
        // Read again unchanged (the periodic rescan): reported once, not at every rescan.
        assert_eq!(
            state.update(path, Some("kind: [unclosed")),
            Changes::default()
        );

        // An invalid edit of the same object: also kept.
        let invalid = state.update(path, Some(&SERVICE.replace("port: 80", "port: 0")));
        assert_eq!(
            (
                invalid.upserts.len(),
                invalid.deletes.len(),
                invalid.errors.len()
            ),
            (0, 0, 1)
        );

        // A good edit replaces it.
        let fixed = state.update(path, Some(&SERVICE.replace("port: 80", "port: 81")));
        assert_eq!((fixed.upserts.len(), fixed.deletes.len()), (1, 0));

        // Removing the file deletes its objects.
        let removed = state.update(path, None);
        assert_eq!((removed.upserts.len(), removed.deletes.len()), (0, 1));
        // Put back as it was: read anew.
        let back = state.update(path, Some(&SERVICE.replace("port: 80", "port: 81")));
        assert_eq!((back.upserts.len(), back.deletes.len()), (1, 0));
    }

    #[test]
    fn an_object_in_two_files_follows_the_first() {
        let mut state = ManifestState::default();
        let a = Path::new("/m/a.yaml");
        let b = Path::new("/m/b.yaml");
        state.update(b, Some(&SERVICE.replace("port: 80", "port: 82")));
        let changes = state.update(a, Some(SERVICE));
        assert_eq!(changes.upserts.len(), 1, "a.yaml comes first and wins");
        let changes = state.update(a, None);
        assert_eq!(changes.upserts.len(), 1, "b.yaml's version comes back");
        assert!(changes.deletes.is_empty());
    }

    #[test]
    fn which_files_are_read() {
        for (path, want) in [
            ("/m/a.yaml", true),
            ("/m/a.yml", true),
            ("/m/a.json", true),
            ("/m/.a.yaml", false),
            ("/m/a.yaml~", false),
            ("/m/a.txt", false),
        ] {
            assert_eq!(is_manifest(Path::new(path)), want, "{path}");
        }
    }
}
