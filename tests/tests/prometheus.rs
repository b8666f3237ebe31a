//! The observability kit under `deploy/observability/` against a real Prometheus.
//!
//! - `promtool_accepts_the_configs_the_rules_and_their_unit_tests`: `promtool check
//!   config` (both scrape configs), `check rules`, `test rules`; and every alert in
//!   `alerts.yml` has a firing case and a quiet case in `alerts_test.yml`.
//! - `a_real_prometheus_sees_what_the_clients_did`: a mesh (controller in the node
//!   namespace, a client pod, two backend pods serving `statusd.py`) with Debian's
//!   `prometheus` in the node namespace scraping every proxy and the controller
//!   every second, using `prometheus-local.yml` and `alerts.yml` as shipped (only
//!   intervals shortened, targets filled in). After a known traffic pattern it checks
//!   through the HTTP API that (a) every PromQL expression of the dashboards and the
//!   rules — extracted from the files, none listed here — returns data; (b) request
//!   counts per status code, both directions, equal what the client did; (c) the
//!   latency histograms bound what the client measured. Before (a), a service
//!   whose endpoints have no application behind their sidecars makes the retry and
//!   ejection series (and their withdrawal) appear. Also: `promtool check
//!   metrics` on every `/metrics` page, the process metrics, and the alerts that the
//!   traffic should make pending.
//!
//! Network safety: Prometheus listens on the node's 10.211.0.1 inside the mesh's node
//! namespace; its storage is in the mesh's run directory; the mesh stops every
//! process and removes namespaces and the directory when dropped, also on panic.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use weft_e2e::Controller;
use weft_e2e::{python3, wait_until, Mesh, Pod, PodProc, ProcSpec, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const PROMETHEUS_PORT: u16 = 9090;
/// What `$__rate_interval` (and friends) become: the whole test fits in it.
const GRAFANA_INTERVAL: &str = "1m";

fn observability_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

fn statusd() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools/statusd.py")
        .to_string_lossy()
        .into_owned()
}

/// A program from Debian's `prometheus` package; fails (never skips) without it.
fn prometheus_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found: install Debian's prometheus package (`apt-get install --no-install-recommends prometheus`; `cargo xtask test` does it)"
    );
}

/// Runs `promtool ARGS` in `dir` (stdin from `input`); returns (success, output).
fn promtool(dir: &Path, args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(text) = input {
            stdin.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn promtool_ok(dir: &Path, args: &[&str]) {
    let (ok, out) = promtool(dir, args, None);
    assert!(ok, "promtool {}:\n{out}", args.join(" "));
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_accepts_the_configs_the_rules_and_their_unit_tests() {
    let dir = observability_dir();
    promtool_ok(&dir, &["check", "config", "prometheus-local.yml"]);
    check_kubernetes_config(&dir);
    promtool_ok(&dir, &["check", "rules", "alerts.yml"]);
    promtool_ok(&dir, &["test", "rules", "alerts_test.yml"]);

    // Every alert has a case where it fires and one where it stays quiet.
    let rules = read_yaml(&dir.join("alerts.yml"));
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    let tests = read_yaml(&dir.join("alerts_test.yml"));
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().unwrap() {
        for t in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = t["alertname"].as_str().unwrap().to_string();
            match t["exp_alerts"].as_array() {
                Some(a) if !a.is_empty() => firing.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    for alert in &alerts {
        assert!(firing.contains(alert), "no firing case for {alert}");
        assert!(quiet.contains(alert), "no quiet case for {alert}");
    }
    eprintln!(
        "promtool: {} alerts, each with a firing and a quiet case",
        alerts.len()
    );
}

/// `promtool check config prometheus-kubernetes.yml`. Debian builds Prometheus
/// without Kubernetes service discovery, so its promtool rejects
/// `kubernetes_sd_configs`; then the same file with each of those blocks swapped for
/// a `file_sd_configs` block is checked instead (global settings, rule files and
/// every relabelling rule still are), and the test says so on stderr.
fn check_kubernetes_config(dir: &Path) {
    let (ok, out) = promtool(dir, &["check", "config", "prometheus-kubernetes.yml"], None);
    if ok {
        return;
    }
    assert!(
        out.contains("field kubernetes_sd_configs not found"),
        "promtool check config prometheus-kubernetes.yml:\n{out}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(dir.join("prometheus-kubernetes.yml")).unwrap();
    let swapped = text
        .replace("kubernetes_sd_configs:", "file_sd_configs:")
        .replace("- role: pod", "- files: [k8s-stand-in.json]")
        .replace("- role: endpoints", "- files: [k8s-stand-in.json]");
    assert!(
        !swapped.contains("role:"),
        "a kubernetes_sd_configs block this test cannot stand in for:\n{swapped}"
    );
    std::fs::write(tmp.path().join("prometheus-kubernetes.yml"), swapped).unwrap();
    std::fs::write(tmp.path().join("k8s-stand-in.json"), "[]").unwrap();
    std::fs::copy(dir.join("alerts.yml"), tmp.path().join("alerts.yml")).unwrap();
    promtool_ok(
        tmp.path(),
        &["check", "config", "prometheus-kubernetes.yml"],
    );
    eprintln!(
        "NOTE: this promtool (Debian's) has no Kubernetes service discovery: \
         prometheus-kubernetes.yml was checked with its kubernetes_sd_configs \
         swapped for file_sd_configs (relabelling, globals and rules checked; the \
         SD blocks themselves not)"
    );
}

// ---------------------------------------------------------------------------
// The Prometheus-backed test.

/// The Prometheus HTTP API, reached from the node namespace.
struct Prometheus<'a> {
    node: &'a Pod,
    addr: SocketAddr,
    proc: PodProc,
}

impl Prometheus<'_> {
    /// `GET path` → the `data` of a successful API answer.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.node.http_get(self.addr, path)?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        if status != 200 || v["status"] != "success" {
            bail!("{path}: {status} {body}");
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the samples of the result (a scalar is one sample).
    fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", urlencode(expr)))
            .with_context(|| format!("query {expr}"))?;
        let rows = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => bail!("query {expr}: unexpected result type {other:?}"),
        };
        rows.iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value: f64 = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("query {expr}: sample {r}"))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The one value of a query that must return exactly one sample.
    fn scalar(&self, expr: &str) -> Result<f64> {
        let s = self.query(expr)?;
        match s.as_slice() {
            [one] => Ok(one.value),
            _ => bail!("{expr}: {} samples, expected 1: {s:?}", s.len()),
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request the client made.
#[derive(Debug)]
struct ClientRequest {
    service: &'static str,
    status: u16,
    seconds: f64,
}

#[test]
fn a_real_prometheus_sees_what_the_clients_did() {
    let mesh = Mesh::new().unwrap();
    let front = mesh.add_pod("front").unwrap();
    let backs: Vec<Pod> = (0..2)
        .map(|i| mesh.add_pod(&format!("back{i}")).unwrap())
        .collect();
    let _servers: Vec<PodProc> = backs
        .iter()
        .map(|b| {
            let p = b
                .spawn(
                    ProcSpec::new([
                        python3().to_string_lossy().as_ref(),
                        &statusd(),
                        "serve",
                        "8080",
                    ])
                    .name("statusd"),
                )
                .unwrap();
            b.wait_listening("127.0.0.1:8080".parse().unwrap(), SECS(10))
                .unwrap();
            p
        })
        .collect();

    // backend: two endpoints; frontend: the client's pod (so the backends name their
    // caller); empty: a service without endpoints (the proxies answer 503).
    let endpoints: Vec<String> = backs.iter().map(|b| b.ipv4().to_string()).collect();
    let mesh_file = format!(
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{}]\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80, protocol: http }}]\n    endpoints: [{}]\n  empty:\n    vip: 10.96.0.30\n    ports: [{{ port: 80, protocol: http }}]\n    endpoints: []\n",
        endpoints.join(", "),
        front.ipv4(),
    );
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(&file, mesh_file).unwrap();
    let controller = Controller::start(&mesh, &file, &[]).unwrap();
    let controller_http = controller.http_addr();

    let discovery = ["--controller", controller.url()];
    front.add_route("10.96.0.0/16").unwrap();
    let sf = Sidecar::start_with(&front, &[], "frontend", &discovery).unwrap();
    let sbs: Vec<Sidecar> = backs
        .iter()
        .map(|b| Sidecar::start_with(b, &[], "backend", &discovery).unwrap())
        .collect();

    let prom = start_prometheus(&mesh, &front, &backs);
    wait_until(SECS(30), Duration::from_millis(250), || {
        prom.query("up")
            .is_ok_and(|up| up.len() == 4 && up.iter().all(|s| s.value == 1.0))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: targets not all up: {:?}\n{}",
            prom.query("up"),
            prom.proc.logs()
        )
    });

    // The traffic: 60 requests to backend — 36 answered 200, 12 404, 12 500, with
    // server-side delays spread over four histogram buckets — and 6 to `empty`.
    // No two 500s in a row reach one endpoint (no circuit breaking), and no status
    // the proxies retry (503, resets) is asked for, so every request is one request.
    let statuses = [200, 404, 200, 500, 200];
    let delays_ms = [35, 70, 35, 160, 35, 0, 35];
    let mut plan = Vec::new();
    for i in 0..60 {
        plan.push(format!(
            "http://10.96.0.10/status/{}?delay_ms={}",
            statuses[i % statuses.len()],
            delays_ms[i % delays_ms.len()]
        ));
        if i % 10 == 9 {
            plan.push("http://10.96.0.30/status/200".to_string());
        }
    }
    let plan_file = mesh.run_dir().join("plan.txt");
    std::fs::write(&plan_file, plan.join("\n")).unwrap();
    let out = front
        .run_ok(
            [
                python3().to_string_lossy().as_ref(),
                statusd().as_str(),
                "client",
                plan_file.to_str().unwrap(),
            ],
            None,
            SECS(180),
        )
        .unwrap();
    let client: Vec<ClientRequest> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let url = v["url"].as_str().unwrap();
            ClientRequest {
                service: if url.contains("10.96.0.30") {
                    "empty"
                } else {
                    "backend"
                },
                status: u16::try_from(v["status"].as_u64().unwrap()).unwrap(),
                seconds: v["seconds"].as_f64().unwrap(),
            }
        })
        .collect();
    assert_eq!(client.len(), plan.len());

    // What the client did, per (service, status).
    let mut did = BTreeMap::<(String, String), f64>::new();
    for r in &client {
        *did.entry((r.service.to_string(), r.status.to_string()))
            .or_default() += 1.0;
    }
    eprintln!("client: {did:?}");
    assert_eq!(did.get(&("backend".into(), "200".into())), Some(&36.0));
    assert_eq!(did.get(&("backend".into(), "404".into())), Some(&12.0));
    assert_eq!(did.get(&("backend".into(), "500".into())), Some(&12.0));
    assert_eq!(did.get(&("empty".into(), "503".into())), Some(&6.0));

    // Prometheus has caught up when it holds every request in both directions; a
    // few more scrapes after that give every rate() two samples or more.
    let expected_total = client.len() + client.iter().filter(|r| r.service == "backend").count();
    wait_until(SECS(30), Duration::from_millis(250), || {
        prom.scalar(r#"sum(weft_http_requests_total{source_service="frontend"})"#)
            .is_ok_and(|v| v == expected_total as f64)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: Prometheus has {:?}, the client made {expected_total}",
            prom.query(r#"sum(weft_http_requests_total{source_service="frontend"})"#)
        )
    });
    std::thread::sleep(SECS(3));

    // (b) Counts per status code, both directions, are what the client did.
    let seen = prom
        .query(r#"sum by (direction, destination_service, status_code) (weft_http_requests_total{source_service="frontend"})"#)
        .unwrap();
    let mut by_direction = BTreeMap::<(String, String, String), f64>::new();
    for s in &seen {
        by_direction.insert(
            (
                s.label("direction").into(),
                s.label("destination_service").into(),
                s.label("status_code").into(),
            ),
            s.value,
        );
    }
    let mut expected = BTreeMap::new();
    for ((service, status), n) in &did {
        expected.insert(
            ("outbound".to_string(), service.clone(), status.clone()),
            *n,
        );
        // Requests to `empty` never leave the client's proxy.
        if service == "backend" {
            expected.insert(("inbound".to_string(), service.clone(), status.clone()), *n);
        }
    }
    assert_eq!(by_direction, expected, "Prometheus vs the client");
    eprintln!(
        "(b) requests per direction/service/status in Prometheus = the client's: {by_direction:?}"
    );
    // The inbound side is split over the two backends, round robin.
    let per_pod = prom
        .query(r#"sum by (pod) (weft_http_requests_total{direction="inbound"})"#)
        .unwrap();
    assert_eq!(per_pod.len(), 2, "{per_pod:?}");
    assert!(per_pod.iter().all(|s| s.value == 30.0), "{per_pod:?}");
    assert_eq!(
        prom.scalar(
            r#"sum(weft_proxy_errors_total{reason="no_endpoints",destination_service="empty"})"#
        )
        .unwrap(),
        6.0
    );

    // (c) The latency histograms bound what the client measured.
    check_latency(&prom, &client);

    // Replica trouble, for the retry and ejection series the rules read: a service
    // `flaky` appears whose two endpoints are the backend pods at a port where no
    // application listens. Their sidecars answer `connect_refused`; the client's
    // sidecar retries elsewhere and ejects the first at once. Sent before the
    // controller's first health checks withdraw them, and after the exact counts
    // above were checked.
    let flaky = format!(
        "  flaky:\n    vip: 10.96.0.40\n    ports: [{{ port: 80, target_port: 9099, protocol: http }}]\n    endpoints: [{}]\n",
        endpoints.join(", ")
    );
    let tmp = mesh.run_dir().join("mesh.yaml.tmp");
    std::fs::write(
        &tmp,
        format!("{}{flaky}", std::fs::read_to_string(&file).unwrap()),
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let hit_flaky = || {
        let url = "http://10.96.0.40/";
        let curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "2", url];
        let _ = front.run(curl, None, SECS(5));
    };
    wait_until(SECS(10), Duration::from_millis(50), || {
        sf.metric("weft_http_retries_total", &[("reason", "app_unreachable")])
            .is_ok_and(|n| n > 0.0)
            || {
                hit_flaky();
                false
            }
    })
    .unwrap_or_else(|e| panic!("no retry of flaky: {e}\n{}", sf.metrics().unwrap()));
    assert!(
        sf.metric(
            "weft_endpoint_ejections_total",
            &[("reason", "unreachable")]
        )
        .unwrap()
            >= 1.0,
        "{}",
        sf.metrics().unwrap()
    );
    // Retries go on over several scrapes, so that their rate is not 0/0.
    wait_until(SECS(15), Duration::from_millis(100), || {
        hit_flaky();
        prom.scalar("sum(rate(weft_http_retries_total[5m]))")
            .is_ok_and(|v| v > 0.0)
            && prom
                .scalar("sum(weft_endpoint_ejections_total)")
                .is_ok_and(|v| v >= 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}: Prometheus has no retry rate"));
    // The controller, checking them through their sidecars' /app-health, withdraws
    // both: `flaky` has no endpoint left (WeftServiceAllEndpointsWithdrawn).
    wait_until(SECS(30), Duration::from_millis(250), || {
        prom.scalar(r#"sum(weft_controller_endpoints_withdrawn{service="flaky"})"#)
            .is_ok_and(|v| v == 2.0)
            && prom
                .scalar(r#"sum(weft_controller_endpoints{service="flaky"})"#)
                .is_ok_and(|v| v == 0.0)
    })
    .unwrap_or_else(|e| panic!("{e}: flaky's endpoints never withdrawn"));

    // (a) Every expression of the dashboards and the rules returns data.
    check_dashboards(&prom);
    check_rules(&prom);

    // The process metrics of every proxy and the controller, with sane values.
    for (job, n) in [("weft-proxy", 3), ("weft-controller", 1)] {
        let rss = prom
            .query(&format!(r#"process_resident_memory_bytes{{job="{job}"}}"#))
            .unwrap();
        assert_eq!(rss.len(), n, "{rss:?}");
        for s in &rss {
            assert!((1e6..2e9).contains(&s.value), "{job} RSS {s:?}");
        }
        let fds = prom
            .query(&format!(
                r#"process_open_fds{{job="{job}"}} / process_max_fds{{job="{job}"}}"#
            ))
            .unwrap();
        assert_eq!(fds.len(), n, "{fds:?}");
        assert!(
            fds.iter().all(|s| s.value > 0.0 && s.value < 1.0),
            "{fds:?}"
        );
        let cpu = prom
            .query(&format!(r#"process_cpu_seconds_total{{job="{job}"}}"#))
            .unwrap();
        assert!(cpu.iter().all(|s| s.value > 0.0), "{cpu:?}");
        eprintln!(
            "{job}: RSS {:?} MiB, CPU {:?} s",
            rss.iter()
                .map(|s| (s.value / 1048576.0 * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            cpu.iter().map(|s| s.value).collect::<Vec<_>>()
        );
    }

    // Every /metrics page passes `promtool check metrics`.
    let mut pages: Vec<(String, String)> = std::iter::once(&sf)
        .chain(&sbs)
        .map(|s| (s.pod().name().to_string(), s.metrics().unwrap()))
        .collect();
    let (status, body) = mesh.node().http_get(controller_http, "/metrics").unwrap();
    assert_eq!(status, 200);
    pages.push(("controller".into(), body));
    for (name, page) in &pages {
        let (ok, out) = promtool(mesh.run_dir(), &["check", "metrics"], Some(page));
        assert!(ok, "promtool check metrics, {name}:\n{out}");
    }
    eprintln!("promtool check metrics: {} pages clean", pages.len());
}

/// Writes a configuration from `prometheus-local.yml` and `alerts.yml` as shipped
/// (intervals shortened to 1 s, the file_sd targets listing this mesh) into the run
/// directory and starts Prometheus on the node's address inside the node namespace.
fn start_prometheus<'a>(mesh: &'a Mesh, front: &Pod, backs: &[Pod]) -> Prometheus<'a> {
    let src = observability_dir();
    let dir = mesh.run_dir().join("prometheus");
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    let mut config = std::fs::read_to_string(src.join("prometheus-local.yml")).unwrap();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s"),
        ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ("evaluation_interval: 5s", "evaluation_interval: 1s"),
    ] {
        assert!(
            config.contains(from),
            "prometheus-local.yml has no {from:?}"
        );
        config = config.replace(from, to);
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(src.join("alerts.yml"), dir.join("alerts.yml")).unwrap();
    let proxies: Vec<Value> = std::iter::once(front)
        .chain(backs)
        .map(|p| serde_json::json!({"targets": [format!("{}:15020", p.ipv4())], "labels": {"pod": p.name()}}))
        .collect();
    std::fs::write(
        dir.join("targets/weft-proxies.json"),
        serde_json::to_string_pretty(&proxies).unwrap(),
    )
    .unwrap();
    let node_ip = mesh.node().ipv4();
    std::fs::write(
        dir.join("targets/weft-controller.json"),
        serde_json::json!([{"targets": [format!("{node_ip}:15014")]}]).to_string(),
    )
    .unwrap();

    let addr = SocketAddr::new(node_ip.into(), PROMETHEUS_PORT);
    let proc = mesh
        .node()
        .spawn(
            ProcSpec::new([
                prometheus_tool("prometheus").to_string_lossy().into_owned(),
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--storage.tsdb.retention.time=1h".into(),
            ])
            .name("prometheus"),
        )
        .unwrap();
    let prom = Prometheus {
        node: mesh.node(),
        addr,
        proc,
    };
    wait_until(SECS(30), Duration::from_millis(200), || {
        matches!(prom.node.http_get(addr, "/-/ready"), Ok((200, _)))
    })
    .unwrap_or_else(|e| panic!("prometheus not ready: {e}\n{}", prom.proc.logs()));
    prom
}

/// (c): outbound latency is measured inside the client's measurement, inbound inside
/// the outbound one, so at every bucket bound the histograms count at least as many
/// requests as the client saw at or under it (exact). The client's own overhead is
/// small, so its max and median fall in or one bucket above the histograms' (the
/// one-bucket slack is for that overhead).
fn check_latency(prom: &Prometheus<'_>, client: &[ClientRequest]) {
    let mut secs: Vec<f64> = client
        .iter()
        .filter(|r| r.service == "backend")
        .map(|r| r.seconds)
        .collect();
    secs.sort_by(f64::total_cmp);
    let n = secs.len() as f64;
    let client_max = *secs.last().unwrap();
    let client_p50 = secs[secs.len() / 2 - 1]; // the lower median: (n/2)-th of n
    let buckets = |direction: &str| -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = prom
            .query(&format!(r#"sum by (le) (weft_http_request_duration_seconds_bucket{{direction="{direction}",destination_service="backend"}})"#))
            .unwrap()
            .iter()
            .map(|s| (s.label("le").parse::<f64>().unwrap(), s.value))
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    };
    let outbound = buckets("outbound");
    let inbound = buckets("inbound");
    assert_eq!(outbound.last().unwrap(), &(f64::INFINITY, n));
    assert_eq!(inbound.last().unwrap(), &(f64::INFINITY, n));
    for (i, &(le, count)) in outbound.iter().enumerate() {
        let by_client = secs.iter().filter(|&&s| s <= le).count() as f64;
        assert!(
            count >= by_client,
            "le={le}: outbound histogram {count} < client {by_client}"
        );
        assert_eq!(inbound[i].0, le);
        assert!(
            inbound[i].1 >= count,
            "le={le}: inbound {} < outbound {count}",
            inbound[i].1
        );
    }
    let bounds: Vec<f64> = outbound.iter().map(|b| b.0).collect();
    // The bucket (lower, upper] holding a value, by index of its upper bound.
    let bucket_of = |v: f64| bounds.iter().position(|&b| v <= b).unwrap();
    let lower = |i: usize| if i == 0 { 0.0 } else { bounds[i - 1] };
    // The histogram's max lies in its highest non-empty bucket.
    let top = outbound.iter().position(|&(_, c)| c == n).unwrap();
    assert!(
        client_max > lower(top),
        "client max {client_max} under the histogram's top bucket ({}, {}]",
        lower(top),
        bounds[top]
    );
    assert!(
        bucket_of(client_max) <= top + 1,
        "client max {client_max} more than one bucket above the histogram's top bucket ({}, {}]",
        lower(top),
        bounds[top]
    );
    let h50 = prom
        .scalar(r#"histogram_quantile(0.5, sum by (le) (weft_http_request_duration_seconds_bucket{direction="outbound",destination_service="backend"}))"#)
        .unwrap();
    let c50 = bucket_of(client_p50);
    assert!(
        h50 <= bounds[c50],
        "histogram p50 {h50} above the client's p50 bucket ({}, {}]",
        lower(c50),
        bounds[c50]
    );
    assert!(
        h50 > lower(c50.saturating_sub(1)),
        "histogram p50 {h50} more than one bucket under the client's p50 {client_p50}"
    );
    let h99 = prom
        .scalar(r#"histogram_quantile(0.99, sum by (le) (weft_http_request_duration_seconds_bucket{direction="inbound",destination_service="backend"}))"#)
        .unwrap();
    eprintln!(
        "(c) client: p50 {:.1} ms, max {:.1} ms; outbound histogram: p50 {:.1} ms, top bucket ({}, {}] s; inbound p99 {:.1} ms; outbound buckets {outbound:?}, inbound {inbound:?}",
        client_p50 * 1e3,
        client_max * 1e3,
        h50 * 1e3,
        lower(top),
        bounds[top],
        h99 * 1e3
    );
}

/// A dashboard expression with where it came from.
#[derive(Debug)]
struct Expr {
    from: String,
    expr: String,
}

/// Every `expr` of every panel (rows included), with the panel's title.
fn collect_exprs(v: &Value, title: &str, file: &str, out: &mut Vec<Expr>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(Expr {
                    from: format!("{file}: {title}"),
                    expr: e.clone(),
                });
            }
            for (k, child) in m {
                // Variable queries are resolved separately.
                if k != "templating" {
                    collect_exprs(child, title, file, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, title, file, out)),
        _ => {}
    }
}

/// `label_values(SELECTOR, LABEL)` or `label_values(LABEL)`.
fn parse_label_values(q: &str) -> Option<(Option<String>, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((sel, label)) => Some((Some(sel.trim().to_string()), label.trim().to_string())),
        None => Some((None, inner.trim().to_string())),
    }
}

/// Replaces `$name`, `${name}`, `${name:fmt}` and `[[name]]` for each variable.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut out = expr.to_string();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value);
        let with_fmt = format!("${{{name}:");
        while let Some(start) = out.find(&with_fmt) {
            let end = start + out[start..].find('}').unwrap();
            out.replace_range(start..=end, value);
        }
        // `$name` not followed by an identifier character.
        let bare = format!("${name}");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&bare) {
            let after = &rest[i + bare.len()..];
            result.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                result.push_str(&bare);
            } else {
                result.push_str(value);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// At least one sample, and not all of them NaN.
fn assert_data(prom: &Prometheus<'_>, from: &str, expr: &str) -> usize {
    let samples = prom.query(expr).unwrap_or_else(|e| panic!("{from}: {e:#}"));
    assert!(!samples.is_empty(), "{from}: no data for\n{expr}");
    assert!(
        samples.iter().any(|s| !s.value.is_nan()),
        "{from}: only NaN for\n{expr}\n{samples:?}"
    );
    samples.len()
}

/// (a), dashboards: every panel query returns data, with `$__rate_interval` and
/// friends set to [`GRAFANA_INTERVAL`] and each dashboard variable resolved through
/// the API from its own `label_values` query (which must find values), then set as
/// Grafana's default "All" would set it (`allValue`) — a regex that still needs the
/// label to exist and be non-empty.
fn check_dashboards(prom: &Prometheus<'_>) {
    let dir = observability_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut total = 0;
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut vars = vec![
            ("__rate_interval".to_string(), GRAFANA_INTERVAL.to_string()),
            ("__interval".to_string(), GRAFANA_INTERVAL.to_string()),
            ("__range".to_string(), GRAFANA_INTERVAL.to_string()),
        ];
        for var in dash["templating"]["list"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_string();
            match var["type"].as_str() {
                Some("datasource") => continue,
                Some("query") => {}
                other => panic!("{file}: variable {name} of type {other:?}: teach this test"),
            }
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap();
            let (selector, label) = parse_label_values(q)
                .unwrap_or_else(|| panic!("{file}: variable {name}: not label_values(): {q}"));
            let mut path = format!("/api/v1/label/{label}/values");
            if let Some(sel) = selector {
                path.push_str(&format!("?match[]={}", urlencode(&sel)));
            }
            let values: Vec<String> = prom
                .api(&path)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert!(
                !values.is_empty(),
                "{file}: variable {name} ({q}) has no values"
            );
            let value = if var["includeAll"] == true {
                var["allValue"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| values.join("|"))
            } else {
                values[0].clone()
            };
            eprintln!("{file}: ${name} = {value} (values {values:?})");
            vars.push((name, value));
        }
        let mut exprs = Vec::new();
        collect_exprs(&dash["panels"], "", &file, &mut exprs);
        assert!(!exprs.is_empty(), "{file}: no expressions");
        for e in &exprs {
            let expr = substitute(&e.expr, &vars);
            for (name, _) in &vars {
                assert!(
                    !expr.contains(&format!("${name}")),
                    "{}: ${name} left in {expr}",
                    e.from
                );
            }
            let n = assert_data(prom, &e.from, &expr);
            total += 1;
            if std::env::var_os("WEFT_SHOW_EXPRS").is_some() {
                eprintln!("  {} → {n} series", e.from);
            }
        }
    }
    eprintln!(
        "(a) {total} dashboard expressions in {} files return data",
        files.len()
    );
}

/// (a), rules: every rule is evaluated by the Prometheus under test without error;
/// every recording rule returns data; every alert expression evaluates, and its
/// signal (the expression without its threshold comparisons) returns data, as does
/// the argument of every `absent()`. Alerts the traffic must set off are pending.
fn check_rules(prom: &Prometheus<'_>) {
    let rules = read_yaml(&observability_dir().join("alerts.yml"));
    let mut checked = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap().trim();
            if let Some(name) = rule["record"].as_str() {
                assert_data(prom, name, expr);
            } else {
                let name = rule["alert"].as_str().unwrap();
                prom.query(expr).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                let signal = strip_thresholds(expr);
                assert_ne!(signal, expr, "{name}: no threshold found in {expr}");
                assert_data(prom, &format!("{name} (signal)"), &signal);
                for arg in absent_args(expr) {
                    assert_data(prom, &format!("{name} (absent argument)"), &arg);
                }
            }
            checked += 1;
        }
    }
    // The Prometheus under test loaded the same rules and evaluates them cleanly.
    wait_until(SECS(10), Duration::from_millis(250), || {
        let data = prom.api("/api/v1/rules").unwrap();
        data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .all(|r| r["health"] == "ok")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: rules unhealthy: {}",
            prom.api("/api/v1/rules").unwrap()
        )
    });
    // 20 % of backend's requests fail with 500, all of empty's with 503: their
    // alerts are pending (each has a `for`); nothing is down.
    let alerts = prom.api("/api/v1/alerts").unwrap();
    let active: BTreeSet<(String, String)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["labels"]["destination_service"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    for want in [
        ("WeftServiceHighErrorRate", "backend"),
        ("WeftServiceHighErrorRate", "empty"),
        ("WeftServiceAllEndpointsEjected", "empty"),
        // `flaky` (labelled `service`, not `destination_service`).
        ("WeftServiceAllEndpointsWithdrawn", ""),
    ] {
        assert!(
            active.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not active: {active:?}"
        );
    }
    for quiet in [
        "WeftProxyDown",
        "WeftControllerDown",
        "WeftConfigReloadFailing",
        "WeftServiceHighLatencyP99",
        "WeftProxyDiscoveryDisconnected",
    ] {
        assert!(
            !active.iter().any(|(a, _)| a == quiet),
            "{quiet} active: {active:?}"
        );
    }
    eprintln!("(a) {checked} rules: signals return data, all healthy; active alerts {active:?}");
}

/// The expression without its threshold comparisons at the top level (a comparison
/// operator, optionally `bool`, then a number): `a / b > 0.05` → `a / b`,
/// `x == 0 or absent(y)` → `x or absent(y)`. Strings, and everything inside
/// brackets, are left alone.
fn strip_thresholds(expr: &str) -> String {
    let b = expr.as_bytes();
    let mut out = String::new();
    let (mut i, mut depth, mut last) = (0, 0i32, 0);
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b'=' | b'!' | b'>' | b'<' if depth == 0 => {
                let op_len = if b.get(i + 1) == Some(&b'=') { 2 } else { 1 };
                // A lone `=` or `!` is no comparison (`=~`, `!~` live in braces).
                if op_len == 1 && matches!(b[i], b'=' | b'!') {
                    i += 1;
                    continue;
                }
                let mut j = i + op_len;
                let skip_ws = |mut j: usize| {
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    j
                };
                j = skip_ws(j);
                if expr[j..].starts_with("bool") {
                    j = skip_ws(j + 4);
                }
                let num_start = j;
                while j < b.len() && (b[j].is_ascii_digit() || b"+-.eE".contains(&b[j])) {
                    j += 1;
                }
                if j > num_start && expr[num_start..j].parse::<f64>().is_ok() {
                    out.push_str(expr[last..i].trim_end());
                    out.push(' ');
                    last = skip_ws(j);
                    i = last;
                    continue;
                }
                i += op_len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&expr[last..]);
    out.trim().to_string()
}

/// The arguments of every `absent(...)` in `expr`.
fn absent_args(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("absent(") {
        let body = &rest[i + "absent(".len()..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find_map(|(k, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(k)
            })
            .unwrap();
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

#[test]
fn thresholds_are_stripped_at_the_top_level_only() {
    assert_eq!(strip_thresholds("a / b > 0.05"), "a / b");
    assert_eq!(
        strip_thresholds(r#"up{job="x"} == 0 or absent(up{job="x"})"#),
        r#"up{job="x"} or absent(up{job="x"})"#
    );
    assert_eq!(
        strip_thresholds("a == 0\n  and on (s) b > 0"),
        "a and on (s) b"
    );
    assert_eq!(
        strip_thresholds(r#"sum(rate(x{code!="5.."}[5m])) >= bool 1e3"#),
        r#"sum(rate(x{code!="5.."}[5m]))"#
    );
    assert_eq!(strip_thresholds("a > b"), "a > b");
    assert_eq!(
        absent_args("x or absent(up{a=\"b\"}) or absent(z)"),
        ["up{a=\"b\"}", "z"]
    );
    assert_eq!(
        substitute(
            "rate(x{s=~\"$service\",t=\"${service}\"}[$__rate_interval]) $1 $services",
            &[
                ("__rate_interval".into(), "1m".into()),
                ("service".into(), ".+".into()),
            ]
        ),
        "rate(x{s=~\".+\",t=\".+\"}[1m]) $1 $services"
    );
}
