//! Tier 2: request spans over OTLP (ARCHITECTURE.md, Traces), received by a real
//! OTLP receiver (`tools/otlpkit.py`: PyPI's opentelemetry-proto with grpcio and a
//! plain `http.server`, in a pod of its own).
//!
//! The mesh: a client pod `client` without a sidecar (curl), `front` (service
//! `frontend`, sidecar, `statusd.py relay`: an app that calls another service and
//! passes on the W3C trace headers) and `back` (service `backend`, sidecar,
//! `statusd.py serve`). `front`'s sidecar samples none of the requests that come
//! without a decision (`--trace-sample-ratio 0`), `back`'s all of them (`1`), so
//! the requests below tell joining, propagation and both ratios apart:
//!
//! 1. `traceparent` sampled (T1) to front, relayed to the backend: one trace T1 of
//!    three spans — front's server span (child of the client's span), front's
//!    client span (its child), back's server span (the client span's child) —
//!    with the HTTP attributes, the endpoint picked and `peer.service`.
//! 2. `traceparent` not sampled (T2): no span anywhere.
//! 3. no `traceparent`, to front: front decides "not sampled" and says so
//!    downstream, so back (ratio 1) keeps that decision: no span.
//! 4. `traceparent` sampled (T4) to front, relayed to a service without
//!    endpoints: front's client span carries `weft.error: no_endpoints` and the 503,
//!    its server span the 503 the relay answered.
//! 5. no `traceparent`, straight to back: back starts a trace of its own (ratio 1),
//!    one root server span.
//! 6. a gRPC call from a pod `caller` (sidecar, ratio 1; `h2kit grpc-load`) to
//!    back's gRPC server (`h2kit serve`): caller's client span and back's server
//!    span, both with `rpc.grpc.status_code` 0 from the trailers.
//! 7. a gRPC call from `caller` to the service without endpoints: caller's sidecar
//!    answers trailers-only UNAVAILABLE, its client span says 14, `no_endpoints`
//!    and error, over HTTP status 200.
//!
//! Exactly those 3 + 2 + 1 + 2 + 1 spans arrive, each from the sidecar expected (the
//! resource's `k8s.pod.name`). Unsampled requests go first: a proxy's span queue is
//! FIFO, so once the sampled ones have arrived a stray span would have too.
//!
//! The sidecars hold certificates from the mesh CA, so front's hop to back is
//! mutual TLS and back's server span names its caller (`weft.peer.identity`).
//!
//! One test per OTLP transport, in a different capture mode each (the exporter's
//! connections are the proxy's own, uid 1337, which capture leaves alone).
//!
//! Network safety: everything stays on the mesh's bridge between namespaces the
//! test made; the client makes five requests; the receiver exits by itself after
//! 120 s; the mesh removes every namespace and process when dropped.
#![allow(clippy::unwrap_used)]

// Only its `wait_for_identities` is used here.
#[allow(dead_code)]
mod secure;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;
use weft_e2e::otlp_receiver::OtlpReceiver;
use weft_e2e::{python3, tool, wait_until, Controller, Mesh, Mode, ProcSpec};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const BACKEND_VIP: &str = "10.96.0.10";
/// A service with no endpoints.
const GHOST_VIP: &str = "10.96.0.30";
/// The gRPC port of backend and ghost.
const GRPC_PORT: u16 = 82;
/// The h2kit tool binary (`src/bin/h2kit`), built with the tests.
const H2KIT: &str = env!("CARGO_BIN_EXE_h2kit");
/// The client's own span ids, as its `traceparent` names them.
const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const T4: &str = "5c2e8d3a9f0b4e7c8d1a2b3c4d5e6f70";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const FRONT_ID: &str = "spiffe://weft.local/ns/local/sa/frontend";
const BACK_ID: &str = "spiffe://weft.local/ns/local/sa/backend";

#[test]
fn request_spans_join_propagate_and_sample_over_otlp_grpc_iptables() -> Result<()> {
    spans("grpc", Mode::Iptables)
}

#[test]
fn request_spans_join_propagate_and_sample_over_otlp_http_ebpf() -> Result<()> {
    spans("http/protobuf", Mode::Ebpf)
}

/// A span as the receiver wrote it, with the pod whose sidecar sent it.
#[derive(Debug, Clone)]
struct Received {
    pod: String,
    span: Value,
}

impl Received {
    fn id(&self) -> &str {
        self.span["span_id"].as_str().unwrap()
    }
    fn parent(&self) -> &str {
        self.span["parent_span_id"].as_str().unwrap()
    }
    fn attr(&self, key: &str) -> &Value {
        &self.span["attributes"][key]
    }
}

fn spans(protocol: &str, mode: Mode) -> Result<()> {
    let py = python3().to_string_lossy().into_owned();
    let statusd = tool("statusd.py");
    let mesh = Mesh::new()?;
    let front = mode.add_pod(&mesh, "front")?;
    let back = mode.add_pod(&mesh, "back")?;
    let client = mesh.add_pod("client")?;
    let caller = mode.add_pod(&mesh, "caller")?;
    let receiver_pod = mesh.add_pod("otlp")?;

    let receiver = OtlpReceiver::start(&mesh, &receiver_pod)?;
    let exports = receiver.exports.clone();
    let endpoint = receiver.endpoint(protocol);

    let _backend =
        back.spawn(ProcSpec::new([py.as_str(), &statusd, "serve", "8080"]).name("statusd"))?;
    let _relay =
        front.spawn(ProcSpec::new([py.as_str(), &statusd, "relay", "8080"]).name("relay"))?;
    let grpc_log = mesh.run_dir().join("grpc-received.log");
    let _grpc_server = back.spawn(
        ProcSpec::new([
            H2KIT,
            "serve",
            "8081",
            "8082",
            "back",
            &grpc_log.to_string_lossy(),
        ])
        .name("h2kit"),
    )?;
    for (pod, port) in [(&front, 8080), (&back, 8080), (&back, 8082)] {
        pod.pod()
            .wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), SECS(10))?;
    }
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  backend:\n    vip: {BACKEND_VIP}\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}, {{ port: {GRPC_PORT}, target_port: 8082, protocol: http }}]\n    endpoints: [{}]\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{}]\n  ghost:\n    vip: {GHOST_VIP}\n    ports: [{{ port: 80, protocol: http }}, {{ port: {GRPC_PORT}, protocol: http }}]\n    endpoints: []\n",
            back.pod().ipv4(),
            front.pod().ipv4(),
        ),
    )?;
    // With the mesh CA: the hop between the sidecars is mutual TLS, and back's
    // server spans name the caller's identity.
    let ca = mesh.run_dir().join("ca").to_string_lossy().into_owned();
    let controller = Controller::start(&mesh, &file, &["--ca-dir", &ca])?;
    let args = |ratio: &'static str| {
        [
            "--identity",
            "--controller",
            controller.url(),
            "--otlp-endpoint",
            endpoint.as_str(),
            "--otlp-protocol",
            protocol,
            "--trace-sample-ratio",
            ratio,
        ]
        .map(str::to_owned)
    };
    front.pod().add_route("10.96.0.0/16")?;
    caller.pod().add_route("10.96.0.0/16")?;
    let front_args = args("0");
    let back_args = args("1");
    let _sf = front.sidecar_with(&[], "frontend", &front_args.each_ref().map(String::as_str))?;
    let _sb = back.sidecar_with(&[], "backend", &back_args.each_ref().map(String::as_str))?;
    let _sc = caller.sidecar_with(&[], "caller", &back_args.each_ref().map(String::as_str))?;
    // front dials back under mutual TLS once it knows back's identity.
    for pod in [&front, &caller] {
        secure::wait_for_identities(pod, &[back.pod().ipv4().into()], BACK_ID);
    }

    let front_url = |path: &str| format!("http://{}:8080{path}", front.pod().ipv4());
    let get = |url: &str, traceparent: Option<String>| -> Result<String> {
        let mut argv = vec![
            "curl".to_owned(),
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        if let Some(tp) = traceparent {
            argv.extend(["-H".into(), format!("traceparent: {tp}")]);
        }
        argv.push(url.to_owned());
        client.run_ok(argv, None, SECS(20))
    };
    let relayed = format!("/call/{BACKEND_VIP}/status/200");
    // Unsampled first (see the module docs).
    assert_eq!(
        get(
            &front_url(&relayed),
            Some(format!("00-{T2}-{CLIENT_SPAN}-00"))
        )?,
        "200"
    );
    assert_eq!(get(&front_url(&relayed), None)?, "200");
    assert_eq!(
        get(
            &front_url(&relayed),
            Some(format!("00-{T1}-{CLIENT_SPAN}-01"))
        )?,
        "200"
    );
    assert_eq!(
        get(
            &front_url(&format!("/call/{GHOST_VIP}/x")),
            Some(format!("00-{T4}-{CLIENT_SPAN}-01"))
        )?,
        "503"
    );
    assert_eq!(
        get(
            &format!("http://{}:8080/status/200", back.pod().ipv4()),
            None
        )?,
        "200"
    );

    // 6 and 7: one gRPC call each (1 call/s for 1 s).
    let grpc = |vip: &str| -> Result<Value> {
        let out = caller.run(
            [
                H2KIT,
                "grpc-load",
                &format!("http://{vip}:{GRPC_PORT}"),
                "1",
                "1",
                "1",
            ],
            None,
            SECS(30),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| format!("grpc-load said {stdout:?}"))
    };
    let ok = grpc(BACKEND_VIP)?;
    assert_eq!(
        (ok["sent"].as_u64(), ok["succeeded"].as_u64()),
        (Some(1), Some(1)),
        "{ok}"
    );
    let unavailable = grpc(GHOST_VIP)?;
    assert_eq!(
        (unavailable["sent"].as_u64(), unavailable["failed"].as_u64()),
        (Some(1), Some(1)),
        "{unavailable}"
    );

    // Exported in batches every 5 s (OTEL_BSP_SCHEDULE_DELAY's default).
    let mut got = Vec::new();
    wait_until(SECS(30), Duration::from_millis(250), || {
        got = received(&exports, protocol);
        got.len() >= 9
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: spans received {got:#?}\nreceiver:\n{}",
            receiver.proc.logs()
        )
    });
    for s in &got {
        eprintln!(
            "traces ({protocol}, {}): {} {} {} trace {} span {} parent {:?} {}",
            mode.name(),
            s.pod,
            s.span["kind"],
            s.span["name"],
            s.span["trace_id"],
            s.id(),
            s.parent(),
            s.span["attributes"]
        );
    }
    assert_eq!(
        got.len(),
        9,
        "exactly the sampled requests' spans: {got:#?}"
    );
    let of = |trace: &str| -> Vec<&Received> {
        got.iter().filter(|s| s.span["trace_id"] == trace).collect()
    };
    let find = |spans: &[&Received], pod: &str, kind: &str| -> Received {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.pod == pod && s.span["kind"] == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} span from {pod}: {spans:#?}");
        (*found[0]).clone()
    };

    // 1: one trace across both sidecars, parented hop by hop.
    let t1 = of(T1);
    assert_eq!(t1.len(), 3, "{t1:#?}");
    let fs = find(&t1, "front", "server");
    let fc = find(&t1, "front", "client");
    let bs = find(&t1, "back", "server");
    assert_eq!(
        fs.parent(),
        CLIENT_SPAN,
        "front's server span joins the client's"
    );
    assert_eq!(
        fc.parent(),
        fs.id(),
        "the app passed front's server span on"
    );
    assert_eq!(
        bs.parent(),
        fc.id(),
        "back's server span is front's client span's child"
    );
    for s in [&fs, &fc, &bs] {
        assert_eq!(s.span["name"], "GET");
        assert_eq!(s.attr("http.request.method"), "GET");
        assert_eq!(s.attr("http.response.status_code"), 200);
        assert_eq!(s.span["status"], "unset");
        assert!(s.attr("weft.error").is_null(), "{s:?}");
    }
    assert_eq!(fs.attr("url.path"), relayed.as_str());
    assert_eq!(fs.attr("server.port"), 8080);
    assert!(
        fs.attr("network.peer.address").is_null(),
        "a server span's peer is its client, not the app: {fs:?}"
    );
    assert_eq!(fc.attr("peer.service"), "backend");
    assert_eq!(fc.attr("server.address"), BACKEND_VIP);
    assert_eq!(
        fc.attr("url.full").as_str(),
        Some(format!("http://{BACKEND_VIP}/status/200").as_str())
    );
    assert_eq!(
        fc.attr("network.peer.address").as_str(),
        Some(back.pod().ipv4().to_string().as_str()),
        "the endpoint picked"
    );
    assert_eq!(fc.attr("network.peer.port"), 8080);
    assert!(fc.attr("http.request.resend_count").is_null(), "no retry");
    assert_eq!(bs.attr("url.path"), "/status/200");
    assert_eq!(
        bs.attr("weft.peer.identity"),
        FRONT_ID,
        "the caller, under mTLS"
    );
    assert!(
        fs.attr("weft.peer.identity").is_null(),
        "the client has no sidecar"
    );

    // 2 and 3: nothing (checked by the count); 4: the proxy's own 503, named.
    assert!(of(T2).is_empty());
    let t4 = of(T4);
    assert_eq!(t4.len(), 2, "{t4:#?}");
    let fs4 = find(&t4, "front", "server");
    let fc4 = find(&t4, "front", "client");
    assert_eq!(fc4.parent(), fs4.id());
    assert_eq!(fc4.attr("weft.error"), "no_endpoints");
    assert_eq!(fc4.attr("error.type"), "no_endpoints");
    assert_eq!(fc4.attr("http.response.status_code"), 503);
    assert_eq!(fc4.attr("peer.service"), "ghost");
    assert_eq!(fc4.span["status"], "error");
    assert_eq!(fs4.attr("http.response.status_code"), 503);
    assert_eq!(fs4.attr("error.type"), "503");
    assert_eq!(fs4.span["status"], "error");

    // 5: back's own trace, a root span.
    let own: Vec<&Received> = got
        .iter()
        .filter(|s| ![T1, T2, T4].contains(&s.span["trace_id"].as_str().unwrap()))
        .filter(|s| s.attr("rpc.system").is_null())
        .collect();
    assert_eq!(own.len(), 1, "{own:#?}");
    assert_eq!(own[0].pod, "back");
    assert_eq!(own[0].span["kind"], "server");
    assert_eq!(own[0].parent(), "", "a root span");

    // 6 and 7: gRPC, the status from the trailers (or the trailers-only head).
    let calls: Vec<&Received> = got
        .iter()
        .filter(|s| s.attr("rpc.system") == "grpc")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let cc = calls
        .iter()
        .find(|s| s.pod == "caller" && s.attr("peer.service") == "backend")
        .expect("caller's client span to backend");
    let sc = calls
        .iter()
        .find(|s| s.pod == "back")
        .expect("back's server span of the call");
    assert_eq!(sc.parent(), cc.id());
    assert_eq!(sc.span["trace_id"], cc.span["trace_id"]);
    for s in [cc, sc] {
        assert_eq!(s.span["name"], "POST");
        assert_eq!(s.attr("rpc.grpc.status_code"), 0, "{s:?}");
        assert_eq!(s.attr("http.response.status_code"), 200);
        assert_eq!(s.span["status"], "unset");
    }
    assert_eq!(
        sc.attr("weft.peer.identity"),
        "spiffe://weft.local/ns/local/sa/caller"
    );
    let cu = calls
        .iter()
        .find(|s| s.pod == "caller" && s.attr("peer.service") == "ghost")
        .expect("caller's client span to ghost");
    assert_eq!(cu.attr("rpc.grpc.status_code"), 14, "UNAVAILABLE: {cu:?}");
    assert_eq!(cu.attr("weft.error"), "no_endpoints");
    assert_eq!(cu.attr("http.response.status_code"), 200);
    assert_eq!(cu.span["status"], "error");
    eprintln!(
        "traces ({protocol}, {}): 9 spans in 5 traces as expected; the unsampled requests made none",
        mode.name()
    );
    Ok(())
}

/// The spans received so far over `protocol`, with the pod that sent each.
fn received(exports: &Path, protocol: &str) -> Vec<Received> {
    let transport = if protocol == "grpc" { "grpc" } else { "http" };
    let text = std::fs::read_to_string(exports).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // a line being written
        };
        if v["signal"] != "traces" {
            continue;
        }
        assert_eq!(v["transport"], transport, "spans over another transport");
        for r in v["resources"].as_array().into_iter().flatten() {
            let pod = r["attributes"]["k8s.pod.name"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            assert_eq!(r["attributes"]["service.name"], "weft-proxy", "{r}");
            for span in r["spans"].as_array().into_iter().flatten() {
                out.push(Received {
                    pod: pod.clone(),
                    span: span.clone(),
                });
            }
        }
    }
    out
}
