//! A small block-style YAML writer for `serde_json::Value`, so generated
//! manifests look like the ones people write (and the daemon's YAML reader,
//! not only its JSON path, is exercised).

use std::fmt::Write;

use serde_json::Value;

/// Renders `value` as one YAML document (no `---`).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_seq(items, 0, &mut out),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

/// Renders `values` as a multi-document YAML file, each starting `---`.
pub fn to_documents(values: &[Value]) -> String {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        out.push_str(&to_yaml(value));
    }
    out
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        // A JSON string literal is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
        && !key.starts_with(['-', '.']);
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn write_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (key, value) in map {
        let _ = write!(out, "{:indent$}{}:", "", key_text(key));
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map(inner, indent + 2, out);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(items, indent, out);
            }
            scalar => {
                let _ = writeln!(out, " {}", scalar_text(scalar));
            }
        }
    }
}

fn write_seq(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        if is_block(item) {
            // Render the item two deeper, then put the dash into the first
            // line's indentation: `- key: value`.
            let mut inner = String::new();
            match item {
                Value::Object(map) => write_map(map, indent + 2, &mut inner),
                Value::Array(seq) => write_seq(seq, indent + 2, &mut inner),
                _ => unreachable!("is_block holds only for maps and sequences"),
            }
            let _ = write!(out, "{:indent$}- ", "");
            out.push_str(&inner[indent + 2..]);
        } else {
            let _ = writeln!(out, "{:indent$}- {}", "", scalar_text(item));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::to_yaml;

    #[test]
    fn block_style() {
        let value = json!({
            "apiVersion": "v1",
            "metadata": {"labels": {"app": "web"}, "name": "web"},
            "spec": {"ips": ["a", "b"], "ports": [{"name": "http", "port": 80}], "selector": {}},
        });
        assert_eq!(
            to_yaml(&value),
            "apiVersion: \"v1\"\nmetadata:\n  labels:\n    app: \"web\"\n  name: \"web\"\n\
             spec:\n  ips:\n  - \"a\"\n  - \"b\"\n  ports:\n  - name: \"http\"\n    port: 80\n  selector: {}\n"
        );
    }

    #[test]
    fn nested_sequences() {
        let value = json!({"a": [[1, 2], {"b": [{"c": true}]}]});
        assert_eq!(to_yaml(&value), "a:\n- - 1\n  - 2\n- b:\n  - c: true\n");
    }
}
