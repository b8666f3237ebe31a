//! Tier 2: OTLP metrics export (ARCHITECTURE.md, Metrics) to a real OTLP receiver.
//!
//! No OpenTelemetry Collector is installable here, so the receiver is
//! `tools/otlpkit.py`: PyPI's opentelemetry-proto types served with grpcio
//! (`MetricsService/Export`) and a plain `http.server` (`POST /v1/metrics`),
//! writing every export it decodes as a JSON line. It runs in a pod of its own
//! (`otlp`, no sidecar); the mesh is a client pod `front` (service `frontend`) and
//! a server pod `back` (service `backend`, `statusd.py`), both with sidecars, and
//! the controller in the node namespace.
//!
//! Each test pushes over one protocol: the sidecars through the flags
//! (`--otlp-endpoint http://<otlp pod>:4317|4318 --otlp-protocol ...
//! --otlp-interval 500ms`), the controller through the standard variables only
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_EXPORTER_OTLP_HEADERS`, and `POD_NAME` /
//! `POD_NAMESPACE` as the Deployment sets them). The client makes 30 requests,
//! each on a new connection (18 answered 200, 6 404, 6 500 by the app), and the
//! test asserts that the last export of each sidecar holds exactly those counts
//! per status code in `weft_http_requests` (outbound at the client's, inbound at
//! the server's), that the sidecars' `/metrics` show the same in
//! `weft_http_requests_total`, that every export came over the protocol asked for
//! with the resource attributes the binaries set, and that the controller's
//! series arrive under `service.name` `weft-controller` carrying the header
//! `OTEL_EXPORTER_OTLP_HEADERS` named. A third sidecar (`quiet`), given no
//! endpoint, sends nothing and runs no OTLP thread, where the others run one.
//!
//! Both capture modes (`_iptables` / `_ebpf`): the exporter's connections are the
//! proxy's own (uid 1337), which capture must leave alone in either mode.
//!
//! Network safety: the receiver listens in its pod's namespace and everything sent
//! to it crosses only the mesh's bridge; the client's requests are a fixed list;
//! the receiver exits by itself after 120 s; the mesh removes every namespace,
//! process and file when dropped, also on panic.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use weft_e2e::otlp_receiver::OtlpReceiver;
use weft_e2e::{python3, tool, wait_until, Controller, Mesh, Mode, ProcSpec, Sidecar};
use weft_runtime::prom_text;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The header the controller is told to send (`OTEL_EXPORTER_OTLP_HEADERS`).
const HEADER: (&str, &str) = ("x-weft-test", "otlp-e2e");
/// The controller's pod, as a Deployment's downward API would name it.
const CONTROLLER_POD: &str = "weft-controller-7d4b9c-x2x9q";
const CONTROLLER_NAMESPACE: &str = "weft-system";
/// The controller's `weft_controller_subscribed_proxies` once every sidecar
/// (front, back, quiet) watches it.
const SUBSCRIBED: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// As `--otlp-protocol` and `OTEL_EXPORTER_OTLP_PROTOCOL` spell it.
    fn flag(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// What the receiver writes as `transport`.
    fn transport(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        }
    }
}

#[test]
fn otlp_grpc_counts_equal_the_clients_and_prometheus_iptables() -> Result<()> {
    export_counts(Protocol::Grpc, Mode::Iptables)
}

#[test]
fn otlp_grpc_counts_equal_the_clients_and_prometheus_ebpf() -> Result<()> {
    export_counts(Protocol::Grpc, Mode::Ebpf)
}

#[test]
fn otlp_http_protobuf_counts_equal_the_clients_and_prometheus_iptables() -> Result<()> {
    export_counts(Protocol::HttpProtobuf, Mode::Iptables)
}

#[test]
fn otlp_http_protobuf_counts_equal_the_clients_and_prometheus_ebpf() -> Result<()> {
    export_counts(Protocol::HttpProtobuf, Mode::Ebpf)
}

fn statusd() -> String {
    tool("statusd.py")
}

/// Counts per (direction, status code).
type Counts = BTreeMap<(String, String), u64>;

fn export_counts(protocol: Protocol, mode: Mode) -> Result<()> {
    let py = python3().to_string_lossy().into_owned();
    let mesh = Mesh::new()?;
    let front = mode.add_pod(&mesh, "front")?;
    let back = mode.add_pod(&mesh, "back")?;
    let receiver_pod = mesh.add_pod("otlp")?;

    // The receiver, in its own pod.
    let receiver = OtlpReceiver::start(&mesh, &receiver_pod)?;
    let exports = receiver.exports.clone();
    let endpoint = receiver.endpoint(protocol.flag());

    // The server app, then the controller and the sidecars.
    let _server =
        back.spawn(ProcSpec::new([py.as_str(), &statusd(), "serve", "8080"]).name("statusd"))?;
    back.pod()
        .wait_listening("127.0.0.1:8080".parse()?, SECS(10))?;
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{}]\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80, protocol: http }}]\n    endpoints: [{}]\n",
            back.pod().ipv4(),
            front.pod().ipv4(),
        ),
    )?;
    let headers = format!("{}={}", HEADER.0, HEADER.1);
    let controller = Controller::start_with_env(
        &mesh,
        &file,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.flag()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
            ("POD_NAME", CONTROLLER_POD),
            ("POD_NAMESPACE", CONTROLLER_NAMESPACE),
        ],
    )?;
    let proxy_args = [
        "--controller",
        controller.url(),
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        protocol.flag(),
        "--otlp-interval",
        "500ms",
    ];
    front.pod().add_route("10.96.0.0/16")?;
    let sf = front.sidecar_with(&[], "frontend", &proxy_args)?;
    let sb = back.sidecar_with(&[], "backend", &proxy_args)?;
    // A sidecar told nothing about OTLP: it must push nothing and run nothing for it.
    let quiet = mode.add_pod(&mesh, "quiet")?;
    let sq = quiet.sidecar_with(&[], "quiet", &["--controller", controller.url()])?;

    // The traffic: 30 requests, each on a new connection. No two 500s in a row
    // (no circuit breaking), no status a proxy retries: one request each.
    let statuses = [200, 404, 200, 500, 200];
    let plan: Vec<String> = (0..30)
        .map(|i| format!("http://10.96.0.10/status/{}", statuses[i % statuses.len()]))
        .collect();
    let plan_file = mesh.run_dir().join("plan.txt");
    std::fs::write(&plan_file, plan.join("\n"))?;
    let out = front.run_ok(
        [
            py.as_str(),
            &statusd(),
            "client",
            &plan_file.to_string_lossy(),
        ],
        None,
        SECS(120),
    )?;
    let mut client: BTreeMap<String, u64> = BTreeMap::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)?;
        *client.entry(v["status"].to_string()).or_default() += 1;
    }
    eprintln!(
        "otlp ({}, {}): the client got {client:?}",
        protocol.flag(),
        mode.name()
    );
    assert_eq!(client.values().sum::<u64>(), 30, "{out}");
    assert_eq!(client.get("200"), Some(&18));
    assert_eq!(client.get("404"), Some(&6));
    assert_eq!(client.get("500"), Some(&6));
    let expect = |direction: &str| -> Counts {
        client
            .iter()
            .map(|(code, n)| ((direction.to_owned(), code.clone()), *n))
            .collect()
    };

    // The receiver's last export of each sidecar holds every request (cumulative
    // counts: the last export has the totals).
    let mut received = BTreeMap::new();
    wait_until(SECS(30), Duration::from_millis(250), || {
        received = [("front", "outbound"), ("back", "inbound")]
            .iter()
            .map(|(pod, dir)| (pod.to_string(), last_requests(&exports, pod, dir)))
            .collect();
        received["front"] == expect("outbound") && received["back"] == expect("inbound")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the receiver's last counts {received:?}, the client's {client:?}\nreceiver log:\n{}\nfront's proxy:\n{}",
            receiver.proc.logs(),
            weft_e2e::logs::tail(&sf.proxy().logs(), 30)
        )
    });

    // /metrics (Prometheus) shows the same counts.
    let scraped: BTreeMap<String, Counts> = [("front", &sf, "outbound"), ("back", &sb, "inbound")]
        .iter()
        .map(|(pod, sidecar, dir)| Ok((pod.to_string(), scraped_requests(sidecar, dir)?)))
        .collect::<Result<_>>()?;
    eprintln!(
        "otlp ({}, {}): requests per (direction, status): client {client:?}\n  received over OTLP {received:?}\n  /metrics {scraped:?}",
        protocol.flag(),
        mode.name()
    );
    assert_eq!(scraped, received, "/metrics vs what the receiver got");

    // Every export came over the protocol asked for; the resources are the ones
    // the binaries describe themselves with.
    let lines = read_exports(&exports)?;
    assert!(
        lines.iter().all(|l| l["transport"] == protocol.transport()),
        "an export over another transport than {}",
        protocol.transport()
    );
    for (pod, service) in [("front", "frontend"), ("back", "backend")] {
        let attrs = last_resource(&lines, "weft-proxy", pod)
            .with_context(|| format!("no export from {pod}'s sidecar"))?;
        assert_eq!(attrs["service.namespace"], "default", "{attrs}");
        assert_eq!(attrs["weft.service"], service, "{attrs}");
        assert_eq!(attrs["service.instance.id"], pod, "{attrs}");
    }

    // No endpoint, no cost: the quiet sidecar sent nothing and has no OTLP
    // thread; the others have theirs.
    assert!(
        last_resource(&lines, "weft-proxy", "quiet").is_none(),
        "an export from a sidecar without an OTLP endpoint"
    );
    assert_eq!(otlp_threads(sq.proxy().pid()), 0, "quiet's proxy");
    assert_eq!(otlp_threads(sf.proxy().pid()), 1, "front's proxy");
    assert_eq!(otlp_threads(controller.proc().pid()), 1, "the controller");

    // The controller's series arrive too, from its environment alone, with the
    // header it was told to send; a gauge it exports equals its /metrics.
    let mut subscribed = None;
    wait_until(SECS(20), Duration::from_millis(250), || {
        subscribed = read_exports(&exports).ok().and_then(|lines| {
            last_value(&lines, "weft-controller", CONTROLLER_POD, "weft_controller_subscribed_proxies")
        });
        subscribed == Some(SUBSCRIBED)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the controller's weft_controller_subscribed_proxies over OTLP: {subscribed:?}\n{}",
            weft_e2e::logs::tail(&controller.proc().logs(), 30)
        )
    });
    let lines = read_exports(&exports)?;
    let attrs = last_resource(&lines, "weft-controller", CONTROLLER_POD).context("controller")?;
    assert_eq!(attrs["service.namespace"], CONTROLLER_NAMESPACE, "{attrs}");
    assert_eq!(attrs["k8s.namespace.name"], CONTROLLER_NAMESPACE, "{attrs}");
    let from_controller: Vec<&Value> = lines
        .iter()
        .filter(|l| resources(l).any(|r| r["attributes"]["service.name"] == "weft-controller"))
        .collect();
    assert!(
        from_controller
            .iter()
            .all(|l| l["headers"][HEADER.0] == HEADER.1),
        "the controller's exports lack {HEADER:?}: {:?}",
        from_controller.first().map(|l| &l["headers"])
    );
    let (code, page) = mesh.node().http_get(controller.http_addr(), "/metrics")?;
    assert_eq!(code, 200);
    assert_eq!(
        prom_text::value(&page, "weft_controller_subscribed_proxies", &[]),
        Some(SUBSCRIBED)
    );
    eprintln!(
        "otlp ({}, {}): {} exports received, {} from the controller (service.name weft-controller, header {}={})",
        protocol.flag(),
        mode.name(),
        lines.len(),
        from_controller.len(),
        HEADER.0,
        HEADER.1
    );
    Ok(())
}

/// Threads of process `pid` named `weft-otlp` (the OTLP exporter's).
fn otlp_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "weft-otlp")
        .count()
}

fn read_exports(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("read the receiver's file"),
    };
    // A line being written is left for the next read.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn resources(line: &Value) -> impl Iterator<Item = &Value> {
    line["resources"].as_array().into_iter().flatten()
}

/// The resource export lines carry for `service` (`service.name`) in `pod`.
fn is_of(resource: &Value, service: &str, pod: &str) -> bool {
    resource["attributes"]["service.name"] == service
        && resource["attributes"]["k8s.pod.name"] == pod
}

/// The attributes of the last resource received from `service` in `pod`.
fn last_resource<'a>(lines: &'a [Value], service: &str, pod: &str) -> Option<&'a Value> {
    lines
        .iter()
        .rev()
        .flat_map(resources)
        .find(|r| is_of(r, service, pod))
        .map(|r| &r["attributes"])
}

/// The points of `metric` in the last export from `service` in `pod` that has it.
fn last_points<'a>(
    lines: &'a [Value],
    service: &str,
    pod: &str,
    metric: &str,
) -> Option<&'a Vec<Value>> {
    lines
        .iter()
        .rev()
        .flat_map(resources)
        .filter(|r| is_of(r, service, pod))
        .flat_map(|r| r["metrics"].as_array().into_iter().flatten())
        .find(|m| m["name"] == metric)
        .and_then(|m| {
            // Counters go as cumulative sums (the SDK's default temporality).
            if m["kind"] == "sum" {
                assert_eq!(m["temporality"], "cumulative", "{m}");
            }
            m["points"].as_array()
        })
}

/// The last value of a series without attributes.
fn last_value(lines: &[Value], service: &str, pod: &str, metric: &str) -> Option<f64> {
    last_points(lines, service, pod, metric)?
        .iter()
        .find(|p| p["attributes"].as_object().is_some_and(|a| a.is_empty()))
        .and_then(|p| p["value"].as_f64())
}

/// A label value as a string (attributes may be strings or numbers).
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Requests in `direction` per status code in the last export of `pod`'s sidecar.
/// The OTLP name is the instrument's, `weft_http_requests` (a monotonic sum);
/// Prometheus shows it as `weft_http_requests_total`.
fn last_requests(exports: &Path, pod: &str, direction: &str) -> Counts {
    let lines = read_exports(exports).unwrap_or_default();
    let mut counts = Counts::new();
    for p in last_points(&lines, "weft-proxy", pod, "weft_http_requests")
        .into_iter()
        .flatten()
    {
        let attrs = &p["attributes"];
        if attrs["direction"] != direction {
            continue;
        }
        *counts
            .entry((direction.to_owned(), text(&attrs["status_code"])))
            .or_default() += p["value"].as_u64().unwrap_or(0);
    }
    counts
}

/// The same from the sidecar's `/metrics`.
fn scraped_requests(sidecar: &Sidecar, direction: &str) -> Result<Counts> {
    let page = sidecar.metrics()?;
    let mut counts = Counts::new();
    for s in prom_text::parse(&page) {
        if s.name != "weft_http_requests_total" {
            continue;
        }
        let label = |k: &str| {
            s.labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        if label("direction").as_deref() != Some(direction) {
            continue;
        }
        let Some(code) = label("status_code") else {
            bail!("a sample without status_code: {s:?}");
        };
        *counts.entry((direction.to_owned(), code)).or_default() += s.value as u64;
    }
    Ok(counts)
}
