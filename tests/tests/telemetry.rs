//! Tier 2: telemetry an operator can trust (issue 6, must-shows 4–6), in both
//! capture modes where the capture matters.
//!
//! - `weftctl_conns_shows_a_live_connection_growing_then_its_final_totals_*`: the
//!   real `weftctl` (`up`, `exec`, `conns --json`, `conns`) on a local mesh where a
//!   client pod holds one long-lived TCP connection to a server that streams slowly.
//!   While it runs, two `conns --json` reads on both pods show it open with byte
//!   counts strictly growing; after it ends it is closed, its final totals equal what
//!   the client says it sent and received, and the table shows the row both times.
//! - `a_thousand_source_ports_add_no_series_*`: a client binding a new source port
//!   for every connection makes 1,000 HTTP requests (200/404/500, a service without
//!   endpoints, a passthrough destination) mixed with TCP connections (echoed, and
//!   refused by a dead port). The set of series on the client's and the server's
//!   `/metrics` after the first 10 connections is identical to the set after all of
//!   them, no label value looks like an address or a port, and both pages pass
//!   `promtool check metrics` (mixed HTTP + TCP traffic with errors; the controller's
//!   page and HTTP-only proxy pages are checked by `prometheus.rs`).
//! - `metrics_page_size_with_50_services`: measures (prints, asserts nothing about
//!   the size) the `/metrics` page of a proxy that sent traffic to 50 HTTP services,
//!   and of a server proxy behind them.
//!
//! Network safety: every connection stays inside namespaces these tests create; loads
//! are bounded (a fixed number of connections made one after another); the mesh or
//! `weftctl down` removes everything, also on panic.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_e2e::weftctl::WeftctlUp as Up;
use weft_e2e::{
    python3, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec, Sidecar,
};
use weft_runtime::prom_text;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn py() -> String {
    python3().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Must-show 4: `weftctl conns` on a live, long-lived connection.

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server streams `CHUNKS` chunks of `CHUNK` bytes, `GAP_MS` apart (~6 s).
const CHUNK: u64 = 4096;
const CHUNKS: u64 = 60;
const GAP_MS: u64 = 100;
const STREAM_VIP: &str = "10.96.0.40";
const ASK: &str = "hello-weft";

#[test]
fn weftctl_conns_shows_a_live_connection_growing_then_its_final_totals_iptables() {
    conns_live_then_closed(Mode::Iptables);
}

#[test]
fn weftctl_conns_shows_a_live_connection_growing_then_its_final_totals_ebpf() {
    conns_live_then_closed(Mode::Ebpf);
}

fn conns_live_then_closed(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let tcpkit = tool("tcpkit.py");
    std::fs::write(
        &file,
        format!(
            "services:\n  stream:\n    vip: {STREAM_VIP}\n    ports: [{{ port: 9000, protocol: tcp }}]\n  client:\n    vip: 10.96.0.41\n    ports: [{{ port: 80, target_port: 8000 }}]\nworkloads:\n  stream:\n    service: stream\n    command: exec {py} {tcpkit} serve-trickle 9000 {CHUNK} {CHUNKS} {GAP_MS}\n  client:\n    service: client\n    command: exec {py} -m http.server 8000\n",
            py = py()
        ),
    )
    .unwrap();
    let up = Up::start_ready(&file, mode.name());
    let dst = format!("{STREAM_VIP}:9000");

    // The client app: one connection to `stream` by name, held until the server
    // has sent everything.
    let mut client = Reaped(
        up.command(&[
            "exec",
            "client-0",
            "--",
            &py(),
            &tcpkit,
            "ask",
            "stream",
            "9000",
            ASK,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );

    // Live: the client's outbound row and the server's inbound row, read twice.
    let mut first = None;
    wait_until(SECS(10), MS(100), || {
        first = up
            .conns_to("client-0", &dst)
            .into_iter()
            .find(|c| c["bytes_to_client"].as_u64().unwrap_or(0) > 0);
        first.is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: no live connection to {dst}:\n{}", up.output()));
    let first = first.unwrap();
    let id = first["id"].clone();
    // The endpoint the client's proxy dialled is the original destination the
    // server's proxy sees.
    let server_dst = first["endpoint"].as_str().unwrap().to_owned();
    let server_first = one_conn(&up.conns_to("stream-0", &server_dst), "stream-0");
    std::thread::sleep(MS(800));
    let second = up
        .conns_to("client-0", &dst)
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("connection {id} vanished"));
    let server_second = one_conn(&up.conns_to("stream-0", &server_dst), "stream-0");
    for (side, a, b) in [
        ("client-0", &first, &second),
        ("stream-0", &server_first, &server_second),
    ] {
        eprintln!("{side} live: {a}\n{side} live, 800 ms later: {b}");
        for c in [a, b] {
            assert_eq!(c["state"], "open", "{side}: {c}");
            assert!(c.get("end").is_none(), "{side}: {c}");
            assert_eq!(c["protocol"], "tcp", "{side}: {c}");
            assert_eq!(c["service"], "stream", "{side}: {c}");
            assert_eq!(c["bytes_from_client"], ASK.len() + 1, "{side}: {c}");
        }
        assert_eq!(a["id"], b["id"], "{side}");
        let (x, y) = (bytes_to(a), bytes_to(b));
        assert!(
            x < y && y < CHUNK * CHUNKS,
            "{side}: bytes to the client should grow while it runs: {x} then {y}"
        );
        assert!(
            b["age_ms"].as_u64().unwrap() > a["age_ms"].as_u64().unwrap(),
            "{side}"
        );
    }
    let table = up.weftctl_ok(&["conns", "client-0"]);
    eprintln!("weftctl conns client-0 (live):\n{table}");
    let row = table_row(&table, &id);
    for want in [
        "outbound",
        "open",
        dst.as_str(),
        "stream",
        &format!("{server_dst} (stream-0)"),
    ] {
        assert!(row.contains(want), "{want:?} missing from row {row:?}");
    }

    // Done: the client's own count of what it sent and received.
    let status = wait_child(&mut client.0, SECS(30));
    let mut out = String::new();
    client
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "client failed: {out}");
    let (sent, received) = parse_sent_received(&out);
    assert_eq!(
        (sent, received),
        (ASK.len() as u64 + 1, CHUNK * CHUNKS),
        "{out}"
    );

    // Closed: final totals equal what the client did, on both sides.
    for (pod, dst) in [
        ("client-0", dst.as_str()),
        ("stream-0", server_dst.as_str()),
    ] {
        let mut rows = Vec::new();
        wait_until(SECS(10), MS(100), || {
            rows = up.conns_to(pod, dst);
            rows.len() == 1 && rows[0]["state"] == "closed"
        })
        .unwrap_or_else(|e| panic!("{e}: {pod}: {rows:?}"));
        let c = &rows[0];
        eprintln!("{pod} closed: {c}");
        assert_eq!(c["bytes_from_client"], sent, "{pod}: {c}");
        assert_eq!(c["bytes_to_client"], received, "{pod}: {c}");
        assert!(c["end"].is_string(), "{pod}: no end reason: {c}");
        assert!(
            c["age_ms"].as_u64().unwrap() >= (CHUNKS - 1) * GAP_MS,
            "{pod}: the whole lifetime: {c}"
        );
    }
    let table = up.weftctl_ok(&["conns", "client-0"]);
    eprintln!("weftctl conns client-0 (closed):\n{table}");
    let row = table_row(&table, &id);
    for want in [
        "closed".to_string(),
        dst.clone(),
        format!(" {sent} "),
        format!(" {received} "),
    ] {
        assert!(row.contains(&want), "{want:?} missing from row {row:?}");
    }
    let down = up.weftctl_ok(&["down"]);
    assert!(down.contains("is down"), "{down}");
}

fn bytes_to(c: &Value) -> u64 {
    c["bytes_to_client"].as_u64().unwrap()
}

fn one_conn(rows: &[Value], pod: &str) -> Value {
    assert_eq!(rows.len(), 1, "{pod}: {rows:?}");
    rows[0].clone()
}

/// The table row whose ID column is `id`.
fn table_row(table: &str, id: &Value) -> String {
    let id = id.to_string();
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no row {id} in\n{table}"))
        .to_owned()
}

fn parse_sent_received(out: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    (field("sent="), field("received="))
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process still running after {timeout:?}"
        );
        std::thread::sleep(MS(50));
    }
}

// ---------------------------------------------------------------------------
// Must-shows 5 and 6: bounded series, and promtool on a page after mixed traffic.

/// Each connection of the sweep binds source port `BASE_PORT + i` (under the
/// ephemeral range, where the proxies' own sockets live).
const BASE_PORT: u16 = 20000;
const HTTP_REQUESTS: usize = 1000;
const FIRST: usize = 10;

/// A controller serving `file`'s text, and its HTTP address (in the node). Health
/// checks are off: the `dead` service's endpoint must stay served, so that its
/// refused connections make the same series from the first to the last (checked,
/// it would be withdrawn and answered `no_endpoints` part way).
fn start_controller(mesh: &Mesh, text: &str) -> (PodProc, String) {
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(&file, text).unwrap();
    let controller = Controller::start(mesh, &file, &["--health-checks", "off"]).unwrap();
    (controller.proc().clone(), controller.url().to_owned())
}

fn spawn_listening(pod: &ModePod, argv: &[&str], name: &str, port: u16) -> PodProc {
    let p = pod.spawn(ProcSpec::new(argv).name(name)).unwrap();
    pod.wait_listening(SocketAddr::new([127, 0, 0, 1].into(), port), SECS(10))
        .unwrap_or_else(|e| panic!("{e}: {}", p.logs()));
    p
}

#[test]
fn a_thousand_source_ports_add_no_series_iptables() {
    source_ports_add_no_series(Mode::Iptables);
}

#[test]
fn a_thousand_source_ports_add_no_series_ebpf() {
    source_ports_add_no_series(Mode::Ebpf);
}

fn source_ports_add_no_series(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let front = mode.add_pod(&mesh, "front").unwrap();
    let back = mode.add_pod(&mesh, "back").unwrap();
    let (py, statusd, tcpkit) = (py(), tool("statusd.py"), tool("tcpkit.py"));
    let _http = spawn_listening(&back, &[&py, &statusd, "serve", "8080"], "statusd", 8080);
    let _echo = spawn_listening(&back, &[&py, &tcpkit, "serve-echo", "7000"], "echo", 7000);

    // backend (HTTP) and echo (TCP) on the back pod; dead: a TCP port nobody
    // listens on; empty: no endpoints (the client's proxy answers 503).
    let b = back.ipv4();
    let mesh_file = format!(
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{b}]\n  echo:\n    vip: 10.96.0.11\n    ports: [{{ port: 7000, protocol: tcp }}]\n    endpoints: [{b}]\n  dead:\n    vip: 10.96.0.12\n    ports: [{{ port: 7001, protocol: tcp }}]\n    endpoints: [{b}]\n  empty:\n    vip: 10.96.0.30\n    ports: [{{ port: 80, protocol: http }}]\n    endpoints: []\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n",
        front.ipv4()
    );
    let (_controller, url) = start_controller(&mesh, &mesh_file);
    front.add_route("10.96.0.0/16").unwrap();
    let discovery = ["--controller", url.as_str()];
    let sf = front.sidecar_with(&[], "frontend", &discovery).unwrap();
    let sb = back.sidecar_with(&[], "backend", &discovery).unwrap();

    // The plan, a cycle of ten connections repeated until it holds 1,000 HTTP
    // requests: 7 HTTP (200, 404, 200, 500, 503 from `empty`, a passthrough 200
    // straight to the pod, 200) and 3 TCP (two echoed, one to the dead port). No two
    // 500s in a row (no circuit breaking), nothing the proxies retry.
    let cycle = [
        "http 10.96.0.10 80 /status/200".to_string(),
        "tcp 10.96.0.11 7000".into(),
        "http 10.96.0.10 80 /status/404".into(),
        "http 10.96.0.10 80 /status/200".into(),
        "tcp 10.96.0.11 7000".into(),
        "http 10.96.0.10 80 /status/500".into(),
        "http 10.96.0.30 80 /status/200".into(),
        "tcp 10.96.0.12 7001".into(),
        format!("http {b} 8080 /status/200"),
        "http 10.96.0.10 80 /status/200".into(),
    ];
    let mut plan = Vec::new();
    while plan
        .iter()
        .filter(|l: &&String| l.starts_with("http"))
        .count()
        < HTTP_REQUESTS
    {
        plan.push(cycle[plan.len() % cycle.len()].clone());
    }
    let total = plan.len();

    let sweep = |lines: &[String], base: usize| -> Value {
        let file = mesh.run_dir().join(format!("sweep-{base}.txt"));
        std::fs::write(&file, lines.join("\n")).unwrap();
        let port = (usize::from(BASE_PORT) + base).to_string();
        let out = front
            .run_ok(
                [
                    py.as_str(),
                    &tool("portsweep.py"),
                    &port,
                    file.to_str().unwrap(),
                ],
                None,
                SECS(300),
            )
            .unwrap();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    // Settled: every connection closed, except HTTP keep-alive connections between
    // requests (the back sidecar holds the front sidecar's pooled upstream
    // connections until the idle timeout; the sweep waits for each response).
    let settled = |s: &Sidecar| {
        wait_until(SECS(10), MS(50), || {
            s.connections().unwrap().iter().all(|c| {
                c["state"] == "closed" || matches!(c["protocol"].as_str(), Some("http1" | "h2"))
            })
        })
        .unwrap_or_else(|e| panic!("{e}: {} still has open connections", s.pod().name()));
    };
    let opened_outbound = |s: &Sidecar| {
        s.metric(
            "weft_tcp_connections_opened_total",
            &[("direction", "outbound")],
        )
        .unwrap()
    };

    let first = sweep(&plan[..FIRST], 0);
    eprintln!("first {FIRST} connections: {first}");
    settled(&sf);
    settled(&sb);
    let pages_10 = [sf.metrics().unwrap(), sb.metrics().unwrap()];
    let opened_10 = opened_outbound(&sf);

    let rest = sweep(&plan[FIRST..], FIRST);
    eprintln!("next {} connections: {rest}", total - FIRST);
    settled(&sf);
    settled(&sb);
    let pages_all = [sf.metrics().unwrap(), sb.metrics().unwrap()];
    let opened_all = opened_outbound(&sf);

    // The client did what the plan says, each connection from a port of its own.
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap() as usize;
    let status = |v: &Value, s: &str| v["http"][s].as_u64().unwrap_or(0) as usize;
    assert_eq!(count(&first, "ports") + count(&rest, "ports"), total);
    let n_http = |s: &str| status(&first, s) + status(&rest, s);
    assert_eq!(
        n_http("200") + n_http("404") + n_http("500") + n_http("503"),
        HTTP_REQUESTS,
        "{first} {rest}"
    );
    let planned = |needle: &str| plan.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(n_http("404"), planned("/status/404"), "{first} {rest}");
    assert_eq!(n_http("500"), planned("/status/500"), "{first} {rest}");
    assert_eq!(n_http("503"), planned("10.96.0.30"), "{first} {rest}");
    assert_eq!(
        count(&first, "http_failed") + count(&rest, "http_failed"),
        0
    );
    let echoed = count(&first, "tcp_echoed") + count(&rest, "tcp_echoed");
    assert_eq!(echoed, planned("tcp 10.96.0.11"), "{first} {rest}");
    // ... and the client's proxy counted every one of them.
    assert_eq!(opened_10, FIRST as f64);
    assert_eq!(opened_all, total as f64);

    let pods_ips: Vec<String> = [front.ipv4(), back.ipv4()]
        .iter()
        .map(ToString::to_string)
        .collect();
    for (i, name) in ["front (client)", "back (server)"].iter().enumerate() {
        let before = series(&pages_10[i]);
        let after = series(&pages_all[i]);
        let added: Vec<_> = after.difference(&before).collect();
        let gone: Vec<_> = before.difference(&after).collect();
        assert!(
            added.is_empty() && gone.is_empty(),
            "{name}: series after {FIRST} connections != after {total}:\n added {added:#?}\n gone {gone:#?}"
        );
        let families = per_family(&pages_all[i]);
        assert_eq!(per_family(&pages_10[i]), families, "{name}");
        eprintln!(
            "{name}: {} series in {} families after {FIRST} connections and after {total} \
             ({HTTP_REQUESTS} HTTP requests), {} bytes; per family: {families:?}",
            after.len(),
            families.len(),
            pages_all[i].len()
        );
        check_bounded_labels(name, &pages_all[i], &pods_ips, total);
        promtool_check_metrics(name, &pages_all[i]);
    }
    // The traffic reached every kind of series this test means to exercise.
    let client = &pages_all[0];
    for (metric, labels) in [
        (
            "weft_http_requests_total",
            vec![("destination_service", "backend"), ("status_code", "500")],
        ),
        // A destination that is no service is relayed at L4 (no protocol known).
        (
            "weft_tcp_connections_opened_total",
            vec![("destination_service", "passthrough")],
        ),
        (
            "weft_proxy_errors_total",
            vec![("destination_service", "empty"), ("reason", "no_endpoints")],
        ),
        (
            "weft_tcp_connections_opened_total",
            vec![("destination_service", "echo")],
        ),
        (
            "weft_tcp_connections_opened_total",
            vec![("destination_service", "dead")],
        ),
    ] {
        assert!(
            prom_text::value(client, metric, &labels).is_some_and(|v| v > 0.0),
            "client: no {metric}{labels:?}"
        );
    }
    let server_errors = prom_text::value(&pages_all[1], "weft_proxy_errors_total", &[]);
    eprintln!("server proxy errors (the dead port): {server_errors:?}");
}

/// Every series of a page: the metric name with its sorted labels.
fn series(page: &str) -> BTreeSet<String> {
    prom_text::parse(page)
        .into_iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{}{{{}}}", s.name, labels.join(","))
        })
        .collect()
}

/// Sample lines per metric family (`# TYPE` name; `_bucket`, `_sum`, `_count`,
/// `_total` folded into it).
fn per_family(page: &str) -> BTreeMap<String, usize> {
    let families: Vec<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut out = BTreeMap::new();
    for s in prom_text::parse(page) {
        let family = families
            .iter()
            .filter(|f| s.name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
            .unwrap_or_else(|| s.name.clone());
        *out.entry(family).or_default() += 1;
    }
    out
}

/// No label is named like a per-connection attribute, and no label value is an
/// address, contains a pod's address, or is a number that could be a port (the
/// only numbers allowed are HTTP status codes and histogram bounds).
fn check_bounded_labels(name: &str, page: &str, pod_ips: &[String], connections: usize) {
    const PER_CONNECTION: [&str; 12] = [
        "port",
        "source_port",
        "peer",
        "address",
        "addr",
        "ip",
        "source",
        "client",
        "endpoint",
        "connection",
        "connection_id",
        "path",
    ];
    let ports = usize::from(BASE_PORT)..usize::from(BASE_PORT) + connections;
    let mut values = BTreeMap::<String, BTreeSet<String>>::new();
    for s in prom_text::parse(page) {
        for (k, v) in &s.labels {
            values.entry(k.clone()).or_default().insert(v.clone());
            let what = format!("{name}: {}{{{k}={v:?}}}", s.name);
            assert!(!PER_CONNECTION.contains(&k.as_str()), "label name: {what}");
            assert!(v.parse::<IpAddr>().is_err(), "an address: {what}");
            assert!(v.parse::<SocketAddr>().is_err(), "an address: {what}");
            for ip in pod_ips {
                assert!(!v.contains(ip.as_str()), "a pod address: {what}");
            }
            assert!(
                !looks_like_ipv4(v),
                "something like an IPv4 address: {what}"
            );
            if k == "le" {
                assert!(
                    v == "+Inf" || v.parse::<f64>().is_ok(),
                    "histogram bound: {what}"
                );
            } else if let Ok(n) = v.parse::<u64>() {
                assert!(
                    k == "status_code" && (100..600).contains(&n),
                    "a number that is no status code: {what}"
                );
                assert!(!ports.contains(&(n as usize)), "a source port: {what}");
            }
        }
    }
    eprintln!("{name}: label values: {values:?}");
}

/// Four dot-separated groups of digits anywhere in the value.
fn looks_like_ipv4(v: &str) -> bool {
    v.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() >= 4 && parts.iter().filter(|p| !p.is_empty()).count() >= 4
        })
}

fn promtool_check_metrics(name: &str, page: &str) {
    let promtool = [
        "/usr/bin/promtool",
        "/usr/local/bin/promtool",
        "/bin/promtool",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .expect("promtool not found: install Debian's prometheus package (`cargo xtask test` does it)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics, {name}:\n{text}"
    );
    eprintln!(
        "{name}: promtool check metrics passes{}",
        if text.trim().is_empty() {
            String::new()
        } else {
            format!(" (lint notes: {})", text.trim())
        }
    );
}

// ---------------------------------------------------------------------------
// The closing note's measurement: /metrics of a proxy talking to 50 services.

const SERVICES: usize = 50;
const REQUESTS_PER_SERVICE: usize = 4;

#[test]
fn metrics_page_size_with_50_services() {
    let mesh = Mesh::new().unwrap();
    let mode = Mode::Iptables;
    let front = mode.add_pod(&mesh, "front").unwrap();
    let backs: Vec<ModePod> = (0..2)
        .map(|i| mode.add_pod(&mesh, &format!("back{i}")).unwrap())
        .collect();
    let py = py();
    let statusd = tool("statusd.py");
    let _servers: Vec<PodProc> = backs
        .iter()
        .map(|b| spawn_listening(b, &[&py, &statusd, "serve", "8080"], "statusd", 8080))
        .collect();
    let endpoints: Vec<String> = backs.iter().map(|b| b.ipv4().to_string()).collect();
    let mut text = format!(
        "services:\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n",
        front.ipv4()
    );
    for i in 0..SERVICES {
        text.push_str(&format!(
            "  svc{i:02}:\n    vip: 10.96.1.{}\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{}]\n",
            i + 1,
            endpoints.join(", ")
        ));
    }
    let (controller, url) = start_controller(&mesh, &text);
    front.add_route("10.96.0.0/16").unwrap();
    let discovery = ["--controller", url.as_str()];
    let sf = front.sidecar_with(&[], "frontend", &discovery).unwrap();
    let sbs: Vec<Sidecar> = backs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.sidecar_with(&[], &format!("svc{i:02}"), &discovery)
                .unwrap()
        })
        .collect();
    let _ = &controller;

    // Per service: 3 × 200 and 1 × 404, each on a new connection.
    let mut plan = Vec::new();
    for k in 0..REQUESTS_PER_SERVICE {
        for i in 0..SERVICES {
            let status = if k == 3 { 404 } else { 200 };
            plan.push(format!("http://10.96.1.{}/status/{status}", i + 1));
        }
    }
    let plan_file = mesh.run_dir().join("plan.txt");
    std::fs::write(&plan_file, plan.join("\n")).unwrap();
    let out = front
        .run_ok(
            [
                py.as_str(),
                statusd.as_str(),
                "client",
                plan_file.to_str().unwrap(),
            ],
            None,
            SECS(300),
        )
        .unwrap();
    let ok = out
        .lines()
        .filter(|l| l.contains("\"status\": 200"))
        .count();
    assert_eq!(out.lines().count(), plan.len(), "{out}");
    eprintln!(
        "{} requests to {SERVICES} services: {ok} answered 200",
        plan.len()
    );
    wait_until(SECS(10), MS(50), || {
        sf.connections()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "closed")
    })
    .unwrap();

    let measure = |name: &str, page: &str| {
        let samples = prom_text::parse(page);
        let families = per_family(page);
        let http: usize = families
            .iter()
            .filter(|(f, _)| f.starts_with("weft_http"))
            .map(|(_, n)| n)
            .sum();
        let tcp: usize = families
            .iter()
            .filter(|(f, _)| f.starts_with("weft_tcp"))
            .map(|(_, n)| n)
            .sum();
        eprintln!(
            "MEASURE /metrics of {name}: {} bytes, {} series ({} families; weft_http_*: {http}, weft_tcp_*: {tcp}), {:.0} bytes/series; per family: {families:?}",
            page.len(),
            samples.len(),
            families.len(),
            page.len() as f64 / samples.len() as f64
        );
        promtool_check_metrics(name, page);
    };
    measure(
        &format!("the client proxy ({SERVICES} destination services)"),
        &sf.metrics().unwrap(),
    );
    for sb in &sbs {
        measure(
            &format!("a server proxy ({})", sb.pod().name()),
            &sb.metrics().unwrap(),
        );
    }
}
