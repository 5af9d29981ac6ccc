//! Patches: JSON merge patch (RFC 7386), strategic merge patch for the served kinds (lists
//! merged by their Kubernetes patch merge keys, `$patch` directives, `$deleteFromPrimitiveList`,
//! `$setElementOrder`, `$retainKeys`) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// RFC 7386: objects merge key by key, `null` deletes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// How a list at a path merges in a strategic merge patch.
enum ListStrategy {
    /// Elements are matched by this key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set (finalizers).
    Set,
    /// Replaced whole (the default).
    Replace,
}

/// The patch merge keys of the served kinds, by field path (list indices left out); from the
/// `patchStrategy`/`patchMergeKey` tags of the Kubernetes types.
#[allow(
    clippy::match_same_arms,
    reason = "one arm per field reads as the table of the Kubernetes tags"
)]
fn list_strategy(path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeKey, Replace, Set};
    let last = path.last().copied().unwrap_or_default();
    let parent = if path.len() >= 2 {
        path[path.len() - 2]
    } else {
        ""
    };
    match (parent, last) {
        ("metadata", "ownerReferences") => MergeKey("uid"),
        ("metadata", "finalizers") => Set,
        ("spec", "containers" | "initContainers" | "ephemeralContainers") => MergeKey("name"),
        ("spec", "volumes" | "imagePullSecrets") => MergeKey("name"),
        ("spec", "hostAliases") => MergeKey("ip"),
        ("spec", "podCIDRs") => Set,
        ("containers" | "initContainers" | "ephemeralContainers", "env") => MergeKey("name"),
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => {
            MergeKey("containerPort")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "volumeMounts") => {
            MergeKey("mountPath")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "volumeDevices") => {
            MergeKey("devicePath")
        }
        ("spec", "ports") if path.first() == Some(&"spec") && path.len() == 2 => MergeKey("port"),
        ("status", "conditions") => MergeKey("type"),
        ("status", "addresses") => MergeKey("type"),
        ("status", "podIPs" | "hostIPs") => MergeKey("ip"),
        _ => Replace,
    }
}

/// Applies a strategic merge patch.
pub fn strategic(target: &mut Value, patch: &Value) -> Result<(), String> {
    strategic_at(target, patch, &mut Vec::new())
}

fn strategic_at<'p>(
    target: &mut Value,
    patch: &'p Value,
    path: &mut Vec<&'p str>,
) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            strip_directives(&mut Value::Object(p.clone()));
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.as_str());
        match v {
            Value::Array(items) => {
                let current = t.entry(k.clone()).or_insert(Value::Null);
                merge_list(current, items, path)?;
            }
            Value::Object(_) => {
                strategic_at(t.entry(k.clone()).or_insert(Value::Null), v, path)?;
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

fn merge_list<'p>(
    current: &mut Value,
    items: &'p [Value],
    path: &mut Vec<&'p str>,
) -> Result<(), String> {
    // A `{"$patch": "replace"}` element replaces the whole list with the other elements.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let mut list: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        list.iter_mut().for_each(strip_directives);
        *current = Value::Array(list);
        return Ok(());
    }
    match list_strategy(path) {
        ListStrategy::Replace => {
            let mut list = items.to_vec();
            list.iter_mut().for_each(strip_directives);
            *current = Value::Array(list);
        }
        ListStrategy::Set => {
            let mut list = current.as_array().cloned().unwrap_or_default();
            for i in items {
                if !list.contains(i) {
                    list.push(i.clone());
                }
            }
            *current = Value::Array(list);
        }
        ListStrategy::MergeKey(key) => {
            let mut list = current.as_array().cloned().unwrap_or_default();
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    ));
                };
                let pos = list.iter().position(|e| e.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        list.remove(pos);
                    }
                    continue;
                }
                if let Some(pos) = pos {
                    strategic_at(&mut list[pos], item, path)?
                } else {
                    let mut fresh = Value::Null;
                    strategic_at(&mut fresh, item, path)?;
                    list.push(fresh);
                }
            }
            *current = Value::Array(list);
        }
    }
    Ok(())
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("operation without \"op\"")?;
        let path = op["path"].as_str().ok_or("operation without \"path\"")?;
        match kind {
            "add" => add(target, path, op["value"].clone())?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move without \"from\"")?;
                let v = remove(target, from)?;
                add(target, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy without \"from\"")?;
                let v = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("no value at {from}"))?;
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index in {path}"))?
            };
            if i > a.len() {
                return Err(format!("index out of range in {path}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("no parent for {path}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(|| format!("no value at {path}")),
        Some(Value::Array(a)) => {
            let i = last
                .parse::<usize>()
                .map_err(|_| format!("bad index in {path}"))?;
            if i >= a.len() {
                return Err(format!("index out of range in {path}"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("no value at {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        for (target, patch, want) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!([1, 2]), json!({"a": "b"}), json!({"a": "b"})),
        ] {
            let mut t = target;
            merge(&mut t, &patch);
            assert_eq!(t, want);
        }
    }

    #[test]
    fn strategic_merges_containers_by_name_and_ports_by_key() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ]}, "metadata": {"finalizers": ["f1"]}});
        strategic(
            &mut pod,
            &json!({
                "metadata": {"finalizers": ["f2"]},
                "spec": {"containers": [
                    {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "c:1"},
                ],
                "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}]}
            }),
        )
        .unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "c", "image": "c:1"},
            ]}, "metadata": {"finalizers": ["f1", "f2"]}})
        );

        let mut svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}],
                                       "selector": {"app": "web", "tier": "x"}}});
        strategic(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}], "selector": {"tier": null}}}),
        )
        .unwrap();
        assert_eq!(
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}], "selector": {"app": "web"}}})
        );
        // Lists without a merge key are replaced, and $patch: replace replaces a map.
        let mut slice = json!({"endpoints": [{"addresses": ["10.0.0.1"]}], "m": {"a": 1, "b": 2}});
        strategic(
            &mut slice,
            &json!({"endpoints": [{"addresses": ["10.0.0.2"]}], "m": {"$patch": "replace", "c": 3}}),
        )
        .unwrap();
        assert_eq!(
            slice,
            json!({"endpoints": [{"addresses": ["10.0.0.2"]}], "m": {"c": 3}})
        );
        // $deleteFromPrimitiveList and $retainKeys.
        let mut obj = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"x": 1, "y": 2}});
        strategic(
            &mut obj,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
                    "spec": {"$retainKeys": ["x", "z"], "z": 3}}),
        )
        .unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"x": 1, "z": 3}})
        );
        // A merge-keyed element without its key is an error.
        assert!(strategic(&mut obj, &json!({"spec": {"containers": [{"image": "x"}]}})).is_err());
    }

    #[test]
    fn json_patch_operations() {
        let mut v = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/list/0", "value": 9},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/1", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"metadata": {"labels": {"b": "2"}}, "list": [9, 2, 3]})
        );
        assert!(
            json_patch(
                &mut v,
                &json!([{"op": "test", "path": "/list/0", "value": 1}])
            )
            .is_err()
        );
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
