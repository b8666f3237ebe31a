//! The mesh file: YAML parsed with `serde_norway` into a [`Mesh`], then validated.
//! Every error names the line: syntax and type errors carry the parser's position;
//! for rules checked after parsing, the offending key is located in the text.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::model::{Locus, Mesh, Name, Service, Workload};

/// Reads and parses the mesh file at `path`.
pub fn load(path: &Path) -> Result<Mesh, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
    parse(&origin, &text)
}

/// Parses and validates mesh-file `text`; `origin` names the file in errors. When
/// several rules are broken, the error is the first by line and says how many more.
pub fn parse(origin: &str, text: &str) -> Result<Mesh, ConfigError> {
    let blank = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if blank {
        // Never read as an empty mesh: a half-written file must not withdraw every
        // service. An empty mesh is written `services: {}`.
        return Err(ConfigError {
            origin: origin.to_owned(),
            line: Some(1),
            column: None,
            message: "the file is empty: expected a mapping with `services:`".to_owned(),
        });
    }
    if let Some(line) = flow_too_deep(text) {
        return Err(ConfigError {
            origin: origin.to_owned(),
            line: Some(line),
            column: None,
            message: format!(
                "more than {MAX_FLOW_DEPTH} levels of [ ] and {{ }} nested: not a mesh file"
            ),
        });
    }
    let doc: MeshDoc = serde_norway::from_str(text).map_err(|e| yaml_error(origin, text, &e))?;
    let mesh = doc.into_mesh(origin, text)?;
    let errors = mesh.validate();
    let mut located: Vec<ConfigError> = errors
        .into_iter()
        .map(|e| ConfigError {
            origin: origin.to_owned(),
            line: locate(text, &path_of(&e.locus)),
            column: None,
            message: e.message,
        })
        .collect();
    if located.is_empty() {
        return Ok(mesh);
    }
    located.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    let more = located.len() - 1;
    let mut first = located.swap_remove(0);
    if more > 0 {
        first.message = format!(
            "{} (and {more} more error{})",
            first.message,
            if more == 1 { "" } else { "s" }
        );
    }
    Err(first)
}

/// The deepest nesting of flow collections (`[ ]`, `{ }`) read. The YAML parser's
/// time grows with the square of that depth (40 KB of `[` took seconds, a
/// megabyte would take an hour), and the deserializer refuses more than 128 levels
/// anyway, but only after the parser is done.
const MAX_FLOW_DEPTH: usize = 128;

/// The line where flow nesting first exceeds [`MAX_FLOW_DEPTH`]. Every bracket
/// counts, even one in a scalar or a comment: a real mesh file is nowhere near.
fn flow_too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1;
    for b in text.bytes() {
        match b {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The file as written: names still plain strings, so that a bad name's error can
/// name its line (the parser positions map-key errors at the start of the map).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshDoc {
    #[serde(deserialize_with = "unique_keys_not_null")]
    services: BTreeMap<String, Service>,
    #[serde(default, deserialize_with = "unique_keys")]
    workloads: BTreeMap<String, Workload>,
}

/// A map whose keys must be distinct (YAML forbids duplicates; a plain map would keep
/// the last silently).
pub(crate) fn unique_keys<'de, D, T>(de: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = BTreeMap<String, T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping of names")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate name {key:?}")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    de.deserialize_map(V(std::marker::PhantomData))
}

/// Like [`unique_keys`], but a key with no value (`services:` alone, as a
/// half-written or truncated file reads) is an error: read as an empty map it
/// would withdraw every service.
fn unique_keys_not_null<'de, D, T>(de: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Unique<T>(BTreeMap<String, T>);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Unique<T> {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            unique_keys(de).map(Unique)
        }
    }
    match Option::<Unique<T>>::deserialize(de)? {
        Some(Unique(map)) => Ok(map),
        None => Err(serde::de::Error::custom(
            "has no value; a mesh without services is written `services: {}`",
        )),
    }
}

impl MeshDoc {
    fn into_mesh(self, origin: &str, text: &str) -> Result<Mesh, ConfigError> {
        fn named<T>(
            section: &str,
            entries: BTreeMap<String, T>,
            origin: &str,
            text: &str,
        ) -> Result<BTreeMap<Name, T>, ConfigError> {
            entries
                .into_iter()
                .map(|(raw, v)| match Name::try_from(raw.as_str()) {
                    // A workload's name becomes its pods' (and their namespaces')
                    // names: one label.
                    Ok(_) if section == "workloads" && raw.contains('.') => Err(ConfigError {
                        origin: origin.to_owned(),
                        line: locate(text, &[Step::Key(section), Step::Key(&raw)]),
                        column: None,
                        message: format!(
                            "{section}: invalid name {raw:?}: a workload name has no dots"
                        ),
                    }),
                    Ok(name) => Ok((name, v)),
                    Err(message) => Err(ConfigError {
                        origin: origin.to_owned(),
                        line: locate(text, &[Step::Key(section), Step::Key(&raw)]),
                        column: None,
                        message: format!("{section}: {message}"),
                    }),
                })
                .collect()
        }
        Ok(Mesh {
            services: named("services", self.services, origin, text)?,
            workloads: named("workloads", self.workloads, origin, text)?,
        })
    }
}

pub(crate) fn yaml_error(origin: &str, text: &str, e: &serde_norway::Error) -> ConfigError {
    let mut message = e.to_string();
    let loc = e.location();
    let mut line = loc.as_ref().map(|l| l.line());
    let mut column = loc.as_ref().map(|l| l.column());
    // The parser appends "at line L column C" where it stopped, and for some errors
    // a second position where the construct began ("..., while parsing a flow
    // sequence at line 7 column 12"). The earliest is where the mistake is (an
    // unclosed `[` is found only on a later line): it becomes the error's position
    // and leaves the message; a later one stays in the text.
    let positions = positions_in(&message);
    if let Some(first) = positions.iter().min_by_key(|p| (p.line, p.column)) {
        (line, column) = (Some(first.line), Some(first.column));
        message.replace_range(first.span.clone(), "");
    }
    if let (Some(l), Some(c)) = (line, column) {
        let (l, c) = editor_position(text, l, c);
        (line, column) = (Some(l), Some(c));
    }
    // The parser places a duplicate at the start of its map: find the second one.
    if let Some((section, key)) = message.split_once(": duplicate name ") {
        let key = key.trim_matches('"');
        if let Some(l) = locate(text, &[Step::Key(section), Step::Again(key)]) {
            (line, column) = (Some(l), None);
        }
    }
    ConfigError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// The parser's (1-based) `line` and `column` as an editor shows them. The parser
/// counts lines as YAML 1.1 does, where NEL (U+0085), LS (U+2028) and PS (U+2029)
/// end a line too; editors, and the rest of this module, end lines at LF, CR and
/// CRLF only. Without this, a file holding those characters got errors naming
/// lines it does not have (found by the meshfile fuzz target).
fn editor_position(text: &str, line: usize, column: usize) -> (usize, usize) {
    let (mut yaml_line, mut editor_line) = (1, 1);
    // Character offsets of the current editor line's start and of the text read.
    let (mut editor_start, mut at) = (0, 0);
    let mut chars = text.chars().peekable();
    while yaml_line < line {
        let Some(c) = chars.next() else { break };
        at += 1;
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                    at += 1;
                }
                yaml_line += 1;
                editor_line += 1;
                editor_start = at;
            }
            '\u{85}' | '\u{2028}' | '\u{2029}' => yaml_line += 1,
            _ => {}
        }
    }
    (editor_line, column + (at - editor_start))
}

/// A position the YAML parser wrote into its message: " at line L column C".
#[derive(Debug, Clone, PartialEq, Eq)]
struct MessagePosition {
    span: std::ops::Range<usize>,
    line: usize,
    column: usize,
}

fn positions_in(message: &str) -> Vec<MessagePosition> {
    const AT: &str = " at line ";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = message[from..].find(AT).map(|i| i + from) {
        from = i + AT.len();
        let rest = &message[from..];
        let line_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Some(after_line) = rest[line_digits..].strip_prefix(" column ") else {
            continue;
        };
        let col_digits = after_line.bytes().take_while(u8::is_ascii_digit).count();
        let (Ok(line), Ok(column)) = (
            rest[..line_digits].parse(),
            after_line[..col_digits].parse(),
        ) else {
            continue;
        };
        let end = from + line_digits + " column ".len() + col_digits;
        out.push(MessagePosition {
            span: i..end,
            line,
            column,
        });
    }
    out
}

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    /// The second occurrence of a key (a duplicate).
    Again(&'a str),
    Index(usize),
}

fn path_of(locus: &Locus) -> Vec<Step<'_>> {
    use Step::{Index, Key};
    match locus {
        Locus::ServiceField(n, f) => vec![Key("services"), Key(n.as_str()), Key(f)],
        Locus::Port(n, i) => vec![Key("services"), Key(n.as_str()), Key("ports"), Index(*i)],
        Locus::Endpoint(n, i) => {
            vec![
                Key("services"),
                Key(n.as_str()),
                Key("endpoints"),
                Index(*i),
            ]
        }
        Locus::WorkloadField(n, f) => vec![Key("workloads"), Key(n.as_str()), Key(f)],
    }
}

/// A significant (not blank, not comment-only) line.
struct Line<'a> {
    /// 1-based line number.
    no: usize,
    indent: usize,
    body: &'a str,
}

/// The 1-based line of the deepest prefix of `path` found in block-style YAML `text`.
/// Flow-style values (`{...}`, `[...]`) are not entered: the line of the key holding
/// them is returned instead, which still points at the right place.
pub(crate) fn locate(text: &str, path: &[Step<'_>]) -> Option<usize> {
    let lines: Vec<Line<'_>> = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let body = raw.trim_start_matches(' ');
            let body_trim = body.trim_end();
            if body_trim.is_empty() || body_trim.starts_with('#') || body_trim == "---" {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: raw.len() - body.len(),
                body: body_trim,
            })
        })
        .collect();
    let mut range = 0..lines.len();
    let mut found = None;
    for step in path {
        let Some(first) = lines.get(range.start).filter(|_| !range.is_empty()) else {
            break;
        };
        let level = first.indent;
        let hit = match step {
            Step::Key(k) | Step::Again(k) => range
                .clone()
                .filter(|&i| {
                    lines[i].indent == level && key_of(lines[i].body).is_some_and(|key| key == *k)
                })
                .nth(usize::from(matches!(step, Step::Again(_)))),
            Step::Index(n) => range
                .clone()
                .filter(|&i| lines[i].indent == level && is_item(lines[i].body))
                .nth(*n),
        };
        let Some(i) = hit else { break };
        found = Some(lines[i].no);
        // The value's lines: deeper than this one, or sequence items at the same
        // indentation (YAML allows `key:\n- item`).
        let end = (i + 1..range.end)
            .find(|&j| {
                lines[j].indent < level || (lines[j].indent == level && !is_item(lines[j].body))
            })
            .unwrap_or(range.end);
        range = i + 1..end;
    }
    found
}

fn is_item(body: &str) -> bool {
    body == "-" || body.starts_with("- ")
}

/// The key of a `key: value` line, unquoted.
fn key_of(body: &str) -> Option<&str> {
    let end = body
        .match_indices(':')
        .map(|(i, _)| i)
        .find(|&i| body[i + 1..].is_empty() || body[i + 1..].starts_with([' ', '\t']))?;
    let key = body[..end].trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Name, Protocol};

    const GOOD: &str = "\
# the demo mesh
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080, protocol: auto }
      - port: 9090
        protocol: tcp
    endpoints: [10.211.0.3, 10.211.0.4]
    policy: {}
  frontend:
    vip: fd00:96::20
    ports:
    - { port: 80, target_port: 8080, protocol: http }
    endpoints:
      - fd00:211::5
workloads:
  backend: { service: backend, replicas: 3, command: \"python3 -m http.server 8080\" }
  web:
    service: frontend
    command: ./web
";

    #[test]
    fn unicode_line_separators_do_not_shift_error_lines() {
        // YAML 1.1 ends lines at NEL, LS and PS as well; editors do not. The error
        // names the line an editor shows (fuzz/regressions/meshfile/
        // unicode_line_separators: the parser said line 5 of a 3-line file).
        for sep in ['\u{85}', '\u{2028}', '\u{2029}'] {
            let text = format!("# one{sep}# still one\nservices:\n  a: {{ vip: [\n");
            let e = err(&text);
            assert_eq!(e.line, Some(3), "{sep:?}: {e}");
        }
    }

    #[test]
    fn deep_flow_nesting_is_refused_at_once() {
        // Found by the meshfile fuzz target's deep-nesting seed (fuzz/corpus/
        // meshfile/deep_flow): 20,000 nested `[` took seconds in the YAML parser.
        let deep = format!("services: {}{}\n", "[".repeat(500_000), "]".repeat(500_000));
        let started = std::time::Instant::now();
        let e = err(&deep);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("nested"), "{}", e.message);
        let unclosed = format!("services:\n  a: {}\n", "{a: ".repeat(200));
        assert_eq!(err(&unclosed).line, Some(2));
        // As deep as the deserializer goes is still read (and refused by type).
        let ok_depth = format!("services: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(!err(&ok_depth).message.contains("nested"));
    }

    fn err(text: &str) -> ConfigError {
        match parse("mesh.yaml", text) {
            Ok(m) => panic!("accepted: {m:?}"),
            Err(e) => e,
        }
    }

    fn name(s: &str) -> Name {
        Name::try_from(s).expect("valid name")
    }

    #[test]
    fn parses_the_example() {
        let mesh = parse("mesh.yaml", GOOD).expect("valid");
        let backend = &mesh.services[&name("backend")];
        assert_eq!(backend.vip.to_string(), "10.96.0.10");
        assert_eq!(backend.ports.len(), 2);
        assert_eq!(backend.ports[0].port.get(), 80);
        assert_eq!(backend.ports[0].target_port.get(), 8080);
        assert_eq!(backend.ports[1].target_port.get(), 9090, "defaults to port");
        assert_eq!(backend.ports[1].protocol, Protocol::Tcp);
        assert_eq!(backend.endpoints.len(), 2);
        let frontend = &mesh.services[&name("frontend")];
        assert!(frontend.vip.is_ipv6());
        assert_eq!(frontend.ports[0].protocol, Protocol::Http);
        assert_eq!(mesh.workloads[&name("backend")].replicas.get(), 3);
        assert_eq!(mesh.workloads[&name("web")].replicas.get(), 1, "default");
    }

    /// GOOD with line `no` (1-based) replaced.
    fn with_line(no: usize, new: &str) -> String {
        GOOD.lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == no { new } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn syntax_and_type_errors_name_the_line() {
        let cases = [
            (4, "    vip: 10.96.0.300", "vip"),
            (4, "    vip: [oops", ""),
            (6, "      - { port: 0, target_port: 8080 }", "nonzero"),
            (6, "      - { port: 70000, target_port: 8080 }", ""),
            (
                6,
                "      - { port: 80, target_port: 8080, protocol: udp }",
                "udp",
            ),
            (7, "      - prot: 9090", "prot"),
            (
                9,
                "    endpoints: [10.211.0.3, banana]",
                "endpoints[1]: invalid IP",
            ),
            (11, "  Frontend:", "Frontend"),
            (10, "    policy: { retries: 3 }", "retries"),
            (
                18,
                "  backend: { service: backend, replicas: 0, command: x }",
                "nonzero",
            ),
        ];
        for (line, text, needle) in cases {
            let e = err(&with_line(line, text));
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
            assert!(!e.message.contains("at line"), "{e}");
            assert!(
                e.to_string().starts_with(&format!("mesh.yaml:{line}:")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_unclosed_bracket_is_reported_where_it_opens() {
        let text = "services:\n  b:\n    vip: 10.96.0.10\n    ports: [{ port: 80 }]\n    endpoints: [10.211.0.3, 10.211.0.5\n";
        let e = err(text);
        assert_eq!((e.line, e.column), (Some(5), Some(16)), "{e}");
        assert!(e.message.contains("flow sequence"), "{e}");
        assert!(e.message.contains("at line 6 column 1"), "{e}");
        assert!(e.to_string().starts_with("mesh.yaml:5:16: "), "{e}");
    }

    #[test]
    fn parser_positions_are_found_in_messages() {
        let m = "did not find expected ',' or ']' at line 8 column 1, while parsing a flow sequence at line 7 column 12";
        let p = positions_in(m);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].line, p[0].column), (8, 1));
        assert_eq!((p[1].line, p[1].column), (7, 12));
        assert_eq!(&m[p[1].span.clone()], " at line 7 column 12");
        assert!(positions_in("vip: at line x column 3").is_empty());
    }

    #[test]
    fn semantic_errors_name_the_line() {
        let cases = [
            // frontend's port 80 on backend's VIP.
            (
                12,
                "    vip: 10.96.0.10",
                14,
                "already used by service backend",
            ),
            // A port listed twice in one service.
            (7, "      - port: 80", 7, "already used by service backend"),
            (4, "    vip: 0.0.0.0", 4, "not a usable"),
            (
                16,
                "      - fd00:211::5\n      - fd00:211::5",
                17,
                "listed twice",
            ),
            (20, "    service: nope", 20, "no service named \"nope\""),
            (21, "    command: \"  \"", 21, "command is empty"),
            (18, "  backend: { service: ghost, command: x }", 18, "ghost"),
        ];
        for (line, text, want, needle) in cases {
            let e = err(&with_line(line, text));
            assert_eq!(e.line, Some(want), "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    const POLICY: &str = "    policy:
      timeout: 5s
      connect_timeout: 1s
      idle_timeout: 300s
      retries: { attempts: 2, budget_percent: 20, min_per_second: 10, on: [connect-failure, reset, 503, gateway-error] }
      circuit_breaker: { consecutive_failures: 5, base_ejection: 10s, max_ejection_percent: 50 }
      lb: p2c_ewma
      half_close_timeout: 20s";

    #[test]
    fn l7_policy_parses_with_defaults_left_unset() {
        use crate::model::{LoadBalancer, RetryOn};
        use std::time::Duration;
        let mesh = parse("m", &GOOD.replace("    policy: {}", POLICY)).expect("valid");
        let p = &mesh.services[&name("backend")].policy;
        assert_eq!(p.timeout, Some(Duration::from_secs(5)));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(p.half_close_timeout, Some(Duration::from_secs(20)));
        let r = p.retries.as_ref().expect("retries");
        assert_eq!(
            (r.attempts, r.budget_percent, r.min_per_second),
            (Some(2), Some(20), Some(10))
        );
        assert_eq!(
            r.on.as_deref(),
            Some(
                &[
                    RetryOn::ConnectFailure,
                    RetryOn::Reset,
                    RetryOn::Status(503),
                    RetryOn::GatewayError
                ][..]
            )
        );
        let b = p.circuit_breaker.as_ref().expect("breaker");
        assert_eq!(b.base_ejection, Some(Duration::from_secs(10)));
        assert_eq!(b.max_ejection, None, "unset: the proxy's default");
        assert_eq!(p.lb, Some(LoadBalancer::P2cEwma));
        let frontend = &mesh.services[&name("frontend")].policy;
        assert_eq!(*frontend, Default::default());
    }

    #[test]
    fn bad_l7_policy_names_the_line() {
        let with = GOOD.replace("    policy: {}", POLICY);
        let cases = [
            ("timeout: 5s", "timeout: soon", 11, "duration"),
            (
                "timeout: 5s",
                "timeout: 0s",
                10,
                "timeout must be more than 0",
            ),
            (
                "on: [connect-failure",
                "on: [404, connect-failure",
                14,
                "5xx",
            ),
            (
                "on: [connect-failure",
                "on: [teapot, connect-failure",
                14,
                "teapot",
            ),
            (
                "budget_percent: 20",
                "budget_percent: 150",
                10,
                "at most 100",
            ),
            ("attempts: 2", "attempts: 50", 10, "at most 10"),
            (
                "max_ejection_percent: 50",
                "max_ejection_percent: 101",
                10,
                "at most 100",
            ),
            (
                "base_ejection: 10s",
                "base_ejection: 10s, max_ejection: 1s",
                10,
                "longer than",
            ),
            ("lb: p2c_ewma", "lb: random", 16, "random"),
            (
                "idle_timeout: 300s",
                "idle_timeout: 300s\n      retry: {}",
                14,
                "retry",
            ),
        ];
        for (from, to, line, needle) in cases {
            let e = err(&with.replace(from, to));
            assert_eq!(e.line, Some(line), "{to}: {e}");
            assert!(e.message.contains(needle), "{to}: {e}");
        }
        let e = err(&with.replace("on: [connect-failure, reset, 503, gateway-error]", "on: []"));
        assert!(e.message.contains("attempts: 0"), "{e}");
    }

    #[test]
    fn a_service_without_ports_names_its_ports_line() {
        let doc = GOOD.replace(
            "    ports:\n    - { port: 80, target_port: 8080, protocol: http }",
            "    ports: []",
        );
        let e = err(&doc);
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("at least one port"), "{e}");
    }

    #[test]
    fn dotted_service_names_but_not_workload_names() {
        let m = parse(
            "m",
            "services:\n  web.shop: { vip: 10.0.0.1, ports: [{ port: 80 }] }\n",
        )
        .expect("a dotted service name");
        assert!(m.services.contains_key(&name("web.shop")));
        let e = err("services:\n  a: { vip: 10.0.0.1, ports: [{ port: 80 }] }\nworkloads:\n  w.x: { service: a, command: x }\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("no dots"), "{e}");
    }

    #[test]
    fn duplicate_keys() {
        let doc = format!("{GOOD}  web:\n    service: frontend\n    command: ./other\n");
        let e = err(&doc);
        assert_eq!(e.line, Some(22), "{e}");
    }

    #[test]
    fn several_errors_report_the_first_and_count() {
        let doc = with_line(20, "    service: nope").replace("vip: 0.0.0.0", "");
        let doc = doc.replacen("vip: 10.96.0.10", "vip: 0.0.0.0", 1);
        let e = err(&doc);
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.ends_with("(and 1 more error)"), "{e}");
    }

    #[test]
    fn empty_and_missing_files() {
        for blank in ["", "\n# nothing\n", "---\n"] {
            let e = err(blank);
            assert!(e.message.contains("empty"), "{e}");
            assert_eq!(e.line, Some(1));
        }
        let e = err("workloads: {}\n");
        assert!(e.message.contains("missing field `services`"), "{e}");
        // `services:` with nothing after it (a truncated file) is no empty mesh.
        let e = err("services:\n");
        assert!(e.message.contains("services: {}"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
        let e = load(Path::new("/nonexistent/weft/mesh.yaml")).expect_err("missing");
        assert_eq!(e.line, None);
        assert!(e
            .to_string()
            .starts_with("/nonexistent/weft/mesh.yaml: cannot read"));
        assert_eq!(
            parse("m", "services: {}\n").expect("empty mesh"),
            Mesh::default()
        );
    }

    #[test]
    fn locate_handles_quotes_and_same_indent_sequences() {
        let text = "services:\n  \"a\":\n    ports:\n    - x\n    - y\n    vip: 1\n";
        use Step::{Index, Key};
        assert_eq!(
            locate(text, &[Key("services"), Key("a"), Key("ports"), Index(1)]),
            Some(5)
        );
        assert_eq!(
            locate(text, &[Key("services"), Key("a"), Key("vip")]),
            Some(6)
        );
        assert_eq!(locate(text, &[Key("services"), Key("b")]), Some(1));
        assert_eq!(locate(text, &[Key("workloads")]), None);
    }

    #[test]
    fn authorization_entries_are_read_and_checked() {
        let text = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }, { port: 5432 }]
    authorization:
      - port: 80
        allow:
          - service: frontend
          - identity: spiffe://weft.local/ns/tools/sa/ops
      - allow: [{ namespace: admin }]
";
        let mesh = parse("mesh.yaml", text).expect("valid");
        let entries = &mesh.services[&name("backend")].authorization;
        use crate::model::Source;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].port.map(|p| p.get()), Some(80));
        assert_eq!(
            entries[0].allow,
            [
                Source::Service(name("frontend")),
                Source::Identity("spiffe://weft.local/ns/tools/sa/ops".to_owned()),
            ]
        );
        assert_eq!(entries[1].port, None);
        assert_eq!(entries[1].allow, [Source::Namespace(name("admin"))]);
        // A port the service lacks, an identity that is no SPIFFE ID, an unknown
        // kind of source: refused, naming the line.
        for (line, bad, says) in [
            (6, "      - port: 81", "port 81"),
            (9, "          - identity: ops", "SPIFFE"),
            (9, "          - address: 10.0.0.1", "address"),
            (8, "          - { service: a, namespace: b }", "exactly one"),
        ] {
            let text = text
                .lines()
                .enumerate()
                .map(|(i, l)| if i + 1 == line { bad } else { l })
                .collect::<Vec<_>>()
                .join("\n");
            let e = err(&text);
            assert!(e.message.contains(says), "{bad}: {e}");
            // A type error names the entry's line; a rule across fields the
            // `authorization` key's.
            assert!(e.line.is_some_and(|l| l == line || l == 5), "{bad}: {e}");
        }
    }
}
