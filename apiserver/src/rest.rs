//! The object semantics behind the REST verbs, independent of HTTP: create, update (main
//! resource or status), patch and delete, each one store transaction.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::error::{ApiError, Cause};
use crate::net::Ranges;
use crate::patch;
use crate::resources::{self, NAMESPACES, PODS, Resource, SERVICES};
use crate::store::{Change, Commit, Store, View, key, prefix};
use crate::time;
use crate::validation;

/// Which part of an object a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

/// How a write is done: `fieldValidation=Strict` refuses unknown fields, `dryRun=All` does
/// everything but store the result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub strict: bool,
    pub dry_run: bool,
    /// Commit lazily ([`Commit::Lazy`]): for bulk writes that are repeated after a crash.
    pub lazy: bool,
}

impl WriteOptions {
    fn commit(self) -> Commit {
        if self.dry_run {
            Commit::DryRun
        } else if self.lazy {
            Commit::Lazy
        } else {
            Commit::Durable
        }
    }
}

/// The result of a delete: the object as returned to the client, and, for a graceful Pod
/// deletion, when it is to be removed.
pub struct Deleted {
    pub object: Value,
    pub remove_after: Option<Duration>,
}

pub struct Api {
    pub store: Arc<Store>,
    pub ranges: Ranges,
}

pub fn random_suffix(n: usize) -> String {
    // The alphabet Kubernetes uses for generated names (no vowels, no confusable digits).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

pub fn uid() -> String {
    let r: u128 = fastrand::u128(..);
    let h = format!("{r:032x}");
    // A version-4 layout, as Kubernetes' UIDs are.
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Whether two objects differ in more than their resourceVersion.
fn same_but_version(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

impl Api {
    /// Checks a body and returns it without the fields its type does not know (the real server
    /// drops them too), or refuses them under `fieldValidation=Strict`.
    fn check_body(res: &Resource, obj: &Value, strict: bool) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(kind) = obj.get("kind").and_then(Value::as_str)
            && kind != res.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({kind}) does not match the kind of the request ({})",
                res.kind
            )));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != res.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
        let (unknown, known) = typed_check(res, obj)?;
        if strict && !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        if unknown.is_empty() {
            return Ok(obj.clone());
        }
        Ok(known)
    }

    /// [`Api::check_body`] for a manifest object (unknown fields dropped).
    pub(crate) fn check_manifest_body(res: &Resource, obj: &Value) -> Result<Value, ApiError> {
        Self::check_body(res, obj, false)
    }

    /// Defaults, validation and allocation for the object about to be stored.
    fn admit(
        &self,
        res: &Resource,
        view: &View<'_>,
        key: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        validation::apply_defaults(res, obj);
        let mut causes = validation::validate(res, obj, old);
        if causes.is_empty() && res.plural == SERVICES.plural {
            causes = validation::allocate_service(view, key, obj, old, &self.ranges);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(res.group, res.kind, name_of(obj), causes))
        }
    }

    pub fn create(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        obj: Value,
        opts: WriteOptions,
    ) -> Result<Value, ApiError> {
        let (k, ns, name, obj) = Self::prepare_create(res, ns, &obj, opts)?;
        let out = self.store.transact_with(opts.commit(), |view| {
            self.create_in(view, res, &k, &ns, &name, obj)
        })?;
        first(out)
    }

    /// The part of a create done before its transaction: the body checked, the name (or a
    /// generated one), namespace, uid and timestamps set. Returns the key, namespace, name and
    /// object.
    pub(crate) fn prepare_create(
        res: &'static Resource,
        ns: Option<&str>,
        obj: &Value,
        opts: WriteOptions,
    ) -> Result<(String, String, String, Value), ApiError> {
        let mut obj = Self::check_body(res, obj, opts.strict)?;
        obj["kind"] = json!(res.kind);
        obj["apiVersion"] = json!(res.api_version());
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            match meta["generateName"].as_str() {
                Some(base) if !base.is_empty() => {
                    meta["name"] = json!(format!("{base}{}", random_suffix(5)));
                }
                _ => {
                    return Err(ApiError::invalid(
                        res.group,
                        res.kind,
                        "",
                        vec![Cause::required("metadata.name")],
                    )
                    .with_message(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        res.kind
                    )));
                }
            }
        }
        let name = meta["name"].as_str().unwrap_or("").to_owned();
        if !validation::valid_name(res, &name) {
            return Err(ApiError::invalid(
                res.group,
                res.kind,
                &name,
                vec![Cause::invalid(
                    "metadata.name",
                    format!("Invalid value: {name:?}: {}", validation::name_message(res)),
                )],
            ));
        }
        let ns = if res.namespaced {
            let ns = ns.unwrap_or("default");
            match meta["namespace"].as_str() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => meta["namespace"] = json!(ns),
            }
            ns.to_owned()
        } else {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        if let Some(m) = meta.as_object_mut() {
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.remove(k);
            }
        }
        meta["uid"] = json!(uid());
        meta["creationTimestamp"] = json!(time::format(time::now()));
        if res.plural != resources::SECRETS.plural && res.plural != NAMESPACES.plural {
            meta["generation"] = json!(1);
        }
        let k = key(res.plural, &ns, &name);
        Ok((k, ns, name, obj))
    }

    /// The part of a create done in its transaction: it must not exist, its namespace must,
    /// and admission (defaults, validation, allocation) passes. Returns the change to store.
    pub(crate) fn create_in(
        &self,
        view: &View<'_>,
        res: &'static Resource,
        k: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Vec<Change>, ApiError> {
        if view.get(k).is_some() {
            return Err(ApiError::already_exists(res.group, res.plural, name));
        }
        if res.namespaced && view.get(&key(NAMESPACES.plural, "", ns)).is_none() {
            return Err(ApiError::not_found("", NAMESPACES.plural, ns));
        }
        if res.namespaced
            && view
                .get(&key(NAMESPACES.plural, "", ns))
                .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null())
        {
            return Err(ApiError::forbidden(
                res.group,
                res.plural,
                name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        self.admit(res, view, k, &mut obj, None)?;
        Ok(vec![Change::Put {
            key: k.to_owned(),
            object: obj,
        }])
    }

    /// Builds the object to store from the stored one and what the client sent, for the part
    /// the client writes.
    fn merge_update(res: &Resource, old: &Value, mut new: Value, part: Part) -> Value {
        if part == Part::Status {
            let mut out = old.clone();
            out["status"] = new["status"].take();
            return out;
        }
        new["kind"] = json!(res.kind);
        new["apiVersion"] = json!(res.api_version());
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        // The main resource does not write status for kinds that have a status subresource.
        if res.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if old.get("spec") != new.get("spec")
            && let Some(g) = old["metadata"]["generation"].as_i64()
        {
            new["metadata"]["generation"] = json!(g + 1);
        }
        new
    }

    /// Stores `new` over the object at `k`, as an update of `part`, checking a resourceVersion
    /// precondition when `new` carries one. A write that changes nothing stores nothing.
    pub(crate) fn write_over(
        &self,
        res: &'static Resource,
        view: &View<'_>,
        k: &str,
        name: &str,
        new: Value,
        part: Part,
    ) -> Result<Vec<Change>, ApiError> {
        let old = view
            .get(k)
            .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))?;
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(res.group, res.plural, name));
        }
        if let Some(uid) = new["metadata"]["uid"].as_str()
            && !uid.is_empty()
            && uid != old["metadata"]["uid"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(res.group, res.plural, name));
        }
        let mut obj = Self::merge_update(res, old, new, part);
        self.admit(res, view, k, &mut obj, Some(old))?;
        if same_but_version(&obj, old) {
            return Ok(Vec::new());
        }
        // An object waiting only for its finalizers goes once they are gone.
        if !obj["metadata"]["deletionTimestamp"].is_null()
            && res.plural != PODS.plural
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            return Ok(delete_changes(res, view, k, name));
        }
        Ok(vec![Change::Put {
            key: k.to_owned(),
            object: obj,
        }])
    }

    fn item_key(res: &Resource, ns: Option<&str>, name: &str) -> String {
        key(
            res.plural,
            if res.namespaced {
                ns.unwrap_or("default")
            } else {
                ""
            },
            name,
        )
    }

    pub fn update(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        new: Value,
        part: Part,
        opts: WriteOptions,
    ) -> Result<Value, ApiError> {
        let new = Self::check_body(res, &new, opts.strict)?;
        if let Some(n) = new["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if let (Some(ns), Some(given)) = (ns, new["metadata"]["namespace"].as_str())
            && res.namespaced
            && !given.is_empty()
            && given != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let k = Self::item_key(res, ns, name);
        let out = self.store.transact_with(opts.commit(), |view| {
            self.write_over(res, view, &k, name, new, part)
        })?;
        self.current_or(out, &k, res, name)
    }

    fn current_or(
        &self,
        out: Vec<Arc<Value>>,
        k: &str,
        res: &Resource,
        name: &str,
    ) -> Result<Value, ApiError> {
        match out.into_iter().next() {
            Some(v) => Ok((*v).clone()),
            // Nothing changed: the stored object is the answer.
            None => self
                .store
                .get(k)
                .map(|v| (*v).clone())
                .ok_or_else(|| ApiError::not_found(res.group, res.plural, name)),
        }
    }

    pub fn patch(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        (kind, body): (PatchType, &Value),
        part: Part,
        opts: WriteOptions,
    ) -> Result<Value, ApiError> {
        let k = Self::item_key(res, ns, name);
        let out = self.store.transact_with(opts.commit(), |view| {
            let old = view
                .get(&k)
                .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))?;
            let mut new = (**old).clone();
            let result = match kind {
                PatchType::Merge => {
                    if body.is_object() {
                        patch::merge(&mut new, body);
                        Ok(())
                    } else {
                        Err("a merge patch must be a JSON object".to_owned())
                    }
                }
                PatchType::Strategic => {
                    if body.is_object() {
                        patch::strategic(&mut new, body)
                    } else {
                        Err("a strategic merge patch must be a JSON object".to_owned())
                    }
                }
                PatchType::Json => patch::json_patch(&mut new, body),
            };
            result.map_err(|e| {
                let mut err = ApiError::bad_request(e);
                if kind == PatchType::Json {
                    err.code = 422;
                    err.reason = "Invalid";
                }
                err
            })?;
            // A patch that names no resourceVersion is unconditional.
            if body["metadata"]["resourceVersion"].is_null() {
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            }
            let new = Self::check_body(res, &new, opts.strict)?;
            if new["metadata"]["name"] != old["metadata"]["name"] {
                return Err(ApiError::bad_request("metadata.name may not be patched"));
            }
            self.write_over(res, view, &k, name, new, part)
        })?;
        self.current_or(out, &k, res, name)
    }

    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&Self::item_key(res, ns, name))
            .map(|v| (*v).clone())
            .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))
    }

    /// Deletes an object. A Pod is deleted gracefully: its deletionTimestamp is set and it is
    /// removed after its grace period (unless the period is 0 or the Pod has finished). An
    /// object with finalizers waits for them. A Namespace takes its contents with it.
    pub fn delete(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        grace: Option<i64>,
        precondition: (Option<String>, Option<String>),
        opts: WriteOptions,
    ) -> Result<Deleted, ApiError> {
        let dry_run = opts.dry_run;
        let k = Self::item_key(res, ns, name);
        let mut remove_after = None;
        let out = self.store.transact_with(opts.commit(), |view| {
            let old = view
                .get(&k)
                .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))?;
            let meta = &old["metadata"];
            if let Some(uid) = &precondition.0
                && meta["uid"].as_str() != Some(uid.as_str())
            {
                return Err(ApiError::conflict(res.group, res.plural, name));
            }
            if let Some(rv) = &precondition.1
                && meta["resourceVersion"].as_str() != Some(rv.as_str())
            {
                return Err(ApiError::conflict(res.group, res.plural, name));
            }
            let has_finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty())
                && res.plural != NAMESPACES.plural;
            if res.plural == PODS.plural {
                let finished = matches!(
                    old["status"]["phase"].as_str(),
                    Some("Succeeded" | "Failed")
                );
                let period = grace
                    .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
                    .max(0);
                let now = time::now();
                // An earlier, longer grace period is shortened, never lengthened.
                let deadline = now + Duration::from_secs(period as u64);
                let deadline = match meta["deletionTimestamp"].as_str().and_then(time::parse) {
                    Some(prev) if prev <= deadline => prev,
                    _ => deadline,
                };
                if (period > 0 && !finished) || has_finalizers {
                    let mut obj = (**old).clone();
                    obj["metadata"]["deletionTimestamp"] = json!(time::format(deadline));
                    let remaining = deadline.duration_since(now).unwrap_or_default();
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(remaining.as_secs());
                    remove_after = Some(remaining);
                    if same_but_version(&obj, old) {
                        return Ok(Vec::new());
                    }
                    return Ok(vec![Change::Put {
                        key: k.clone(),
                        object: obj,
                    }]);
                }
            } else if has_finalizers {
                let mut obj = (**old).clone();
                if obj["metadata"]["deletionTimestamp"].is_null() {
                    obj["metadata"]["deletionTimestamp"] = json!(time::format(time::now()));
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    return Ok(vec![Change::Put {
                        key: k.clone(),
                        object: obj,
                    }]);
                }
                return Ok(Vec::new());
            }
            Ok(delete_changes(res, view, &k, name))
        })?;
        let object = match out.into_iter().next() {
            Some(v) => (*v).clone(),
            None => self.get(res, ns, name)?,
        };
        Ok(Deleted {
            object,
            remove_after: remove_after.filter(|_| !dry_run),
        })
    }

    /// Removes a gracefully deleted Pod once its grace period is over (if it is still the same
    /// Pod, still terminating, and its finalizers are gone).
    pub fn finish_pod_deletion(&self, k: &str, uid: &str) -> Result<(), ApiError> {
        self.store.transact(|view| {
            let Some(pod) = view.get(k) else {
                return Ok(Vec::new());
            };
            let meta = &pod["metadata"];
            let due = meta["deletionTimestamp"]
                .as_str()
                .and_then(time::parse)
                .is_some_and(|t| t <= time::now() + Duration::from_millis(999));
            if meta["uid"].as_str() != Some(uid)
                || !due
                || meta["finalizers"].as_array().is_some_and(|f| !f.is_empty())
            {
                return Ok(Vec::new());
            }
            Ok(vec![Change::Delete { key: k.to_owned() }])
        })?;
        Ok(())
    }

    /// Pods waiting for their grace period: (key, uid, time left).
    pub fn terminating_pods(&self) -> Vec<(String, String, Duration)> {
        let (_, pods) = self.store.list(&prefix(PODS.plural, None));
        let now = SystemTime::now();
        pods.iter()
            .filter_map(|p| {
                let meta = &p["metadata"];
                let t = meta["deletionTimestamp"].as_str().and_then(time::parse)?;
                let k = key(
                    PODS.plural,
                    meta["namespace"].as_str()?,
                    meta["name"].as_str()?,
                );
                Some((
                    k,
                    meta["uid"].as_str()?.to_owned(),
                    t.duration_since(now).unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Makes the namespaces every cluster starts with.
    pub fn ensure_namespaces(&self) -> Result<(), ApiError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            match self.create(
                &NAMESPACES,
                None,
                json!({"metadata": {"name": ns}}),
                WriteOptions::default(),
            ) {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn list_rv(&self) -> u64 {
        self.store.resource_version()
    }
}

/// The changes that remove an object (and, for a Namespace, everything in it).
pub(crate) fn delete_changes(res: &Resource, view: &View<'_>, k: &str, name: &str) -> Vec<Change> {
    let mut changes = Vec::new();
    if res.plural == NAMESPACES.plural {
        for r in resources::ALL.into_iter().filter(|r| r.namespaced) {
            let p = prefix(r.plural, Some(name));
            changes.extend(
                view.list(&p)
                    .map(|(k, _)| Change::Delete { key: k.clone() }),
            );
        }
    }
    changes.push(Change::Delete { key: k.to_owned() });
    changes
}

fn first(out: Vec<Arc<Value>>) -> Result<Value, ApiError> {
    out.into_iter()
        .next()
        .map(|v| (*v).clone())
        .ok_or_else(|| ApiError::internal("the write stored nothing"))
}

/// Decodes the object into its Kubernetes type, so a malformed body (a string where a number
/// goes, bad base64 in a Secret) is refused the way the real server refuses it. Returns the
/// fields the type does not know (what `fieldValidation=Strict` refuses).
fn typed_check(res: &Resource, obj: &Value) -> Result<(Vec<String>, Value), ApiError> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
        res: &Resource,
        obj: &Value,
    ) -> Result<(Vec<String>, Value), ApiError> {
        let mut v = obj.clone();
        // k8s-openapi insists on these; the server fills them in.
        v["kind"] = json!(res.kind);
        v["apiVersion"] = json!(res.api_version());
        if res.plural == resources::ENDPOINTSLICES.plural && v["addressType"].is_null() {
            v["addressType"] = json!("");
        }
        let typed: T = serde_json::from_value(v.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                res.kind, res.version, res.kind
            ))
        })?;
        let mut known = serde_json::to_value(&typed).unwrap_or_default();
        let mut unknown = Vec::new();
        unknown_fields(&v, &known, &mut String::new(), &mut unknown);
        if obj["addressType"].is_null()
            && let Some(m) = known.as_object_mut()
        {
            m.remove("addressType");
        }
        Ok((unknown, known))
    }
    match res.plural {
        "namespaces" => check::<core::Namespace>(res, obj),
        "nodes" => check::<core::Node>(res, obj),
        "pods" => check::<core::Pod>(res, obj),
        "services" => check::<core::Service>(res, obj),
        "secrets" => check::<core::Secret>(res, obj),
        "endpointslices" => check::<discovery::EndpointSlice>(res, obj),
        _ => Ok((Vec::new(), obj.clone())),
    }
}

/// The paths in `given` that a round trip through the typed object dropped.
fn unknown_fields(given: &Value, known: &Value, path: &mut String, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, v) in g {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match k.get(key) {
                    None if !v.is_null() => out.push(path.clone()),
                    Some(kv) => unknown_fields(v, kv, path, out),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                unknown_fields(gv, kv, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_by_round_trip() {
        let pod = json!({"metadata": {"name": "p", "labels": {"any": "x"}, "nmae": "typo"},
                         "spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "x"}],
                                  "nodeName": null}});
        let (unknown, known) = typed_check(&PODS, &pod).unwrap();
        assert_eq!(unknown, ["metadata.nmae", "spec.containers[0].imagePolicy"]);
        assert!(known["metadata"].get("nmae").is_none());
        assert_eq!(known["metadata"]["labels"]["any"], "x");
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}], "selector": {"a": "b"}}});
        assert!(typed_check(&SERVICES, &svc).unwrap().0.is_empty());
    }
}
