//! Reading Prometheus text exposition (what `/metrics` serves).

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (for a histogram: `x_bucket`, `x_sum`, `x_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Parses every sample in `text`, skipping comments and lines it cannot
/// read.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The samples named exactly `name`.
pub fn samples<'a>(all: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    all.iter().filter(|s| s.name == name).collect()
}

/// The sum of the samples named `name` whose labels include every pair in
/// `labels`.
pub fn sum(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = if let Some(open) = line.find('{') {
        let close = find_label_end(line, open)?;
        (
            &line[..open],
            parse_labels(&line[open + 1..close])?,
            &line[close + 1..],
        )
    } else {
        let (name, rest) = line.split_once(char::is_whitespace)?;
        (name, BTreeMap::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn find_label_end(line: &str, open: usize) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::{parse, sum};

    #[test]
    fn reads_labels_and_values() {
        let text = "# HELP x a counter\n# TYPE x counter\n\
                    x{service=\"default/web:http\",backend=\"10.244.0.10:8080\"} 3\n\
                    x{service=\"default/web:http\",backend=\"10.244.0.11:8080\"} 4\n\
                    y_bucket{le=\"+Inf\"} 2\ny_sum 0.5\nz{a=\"q\\\"uote,}\"} 1e3\n";
        let all = parse(text);
        assert_eq!(all.len(), 5);
        assert!((sum(&all, "x", &[("service", "default/web:http")]) - 7.0).abs() < f64::EPSILON);
        assert_eq!(all[2].label("le"), Some("+Inf"));
        assert_eq!(all[4].label("a"), Some("q\"uote,}"));
        assert!((all[4].value - 1000.0).abs() < f64::EPSILON);
    }
}
