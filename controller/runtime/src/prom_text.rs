//! Reading samples back out of the Prometheus text exposition, for tooling and tests
//! that look at a proxy's `/metrics` (label order there is the exporter's, not ours).

/// One sample line: metric name, labels in the order given, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses every sample line of `text`; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The value of the sample named `name` whose labels include all of `want`, summed
/// over every such sample (so a subset of labels aggregates like PromQL's `sum`).
/// `None` when no sample matches.
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_matching_a_label_subset() {
        let text = "# HELP x y\nreq_total{a=\"1\",b=\"q\\\"\"} 2\nreq_total{a=\"1\",b=\"z\"} 3\nreq_total{a=\"2\"} 7\nup 1\n";
        assert_eq!(value(text, "req_total", &[("a", "1")]), Some(5.0));
        assert_eq!(value(text, "req_total", &[("b", "q\"")]), Some(2.0));
        assert_eq!(value(text, "req_total", &[("a", "3")]), None);
        assert_eq!(value(text, "up", &[]), Some(1.0));
    }
}
