//! In-process: the registration API on the controller's HTTP port, with a real tonic
//! subscriber standing in for a proxy. Registered endpoints join the mesh file's
//! service and reach the subscriber; invalid requests get a 4xx with a reason and
//! change nothing (not even the file on disk); registrations survive a restart;
//! deregistered ones are gone. Then the health checks: a registered endpoint whose
//! server stops is withdrawn from the subscriber and comes back when it listens again.
//! Every address is on loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use weft_api::discovery::{MeshUpdate, WatchRequest};
use weft_api::DiscoveryClient;
use weft_controller::health::{Defaults, Scope};

mod common;
use common::{get, get_json, request, start, start_in, IN_TIME};

const MESH: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080 }
    endpoints: [127.0.0.2]
  other:
    vip: 10.96.0.11
    ports:
      - { port: 80 }
";

type Updates = tonic::Streaming<MeshUpdate>;

async fn subscribe(grpc: SocketAddr) -> Updates {
    let mut client = DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    client
        .watch(WatchRequest {
            service: "frontend".into(),
            proxy_id: "test".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The endpoints of `backend` in the next update that lists backend.
async fn next_backend(updates: &mut Updates) -> BTreeSet<String> {
    loop {
        let u = tokio::time::timeout(IN_TIME, updates.message())
            .await
            .expect("an update in time")
            .expect("stream ok")
            .expect("a message");
        if let Some(b) = u.services.iter().find(|s| s.name == "backend") {
            return b.endpoints.iter().map(|e| e.address.clone()).collect();
        }
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn put(c: &common::Running, ip: &str, body: &str) -> (u16, Value) {
    let (code, text) = request(
        c.http,
        "PUT",
        &format!("/v1/services/backend/endpoints/{ip}"),
        body,
    )
    .await;
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn mesh_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_join_services_survive_restarts_and_bad_requests_change_nothing() {
    let quiet = |o: weft_controller::Options| weft_controller::Options {
        state_dir: Some(o.config.with_file_name("state")),
        health: Defaults {
            scope: Scope::Off,
            ..Defaults::default()
        },
        ..o
    };
    let c = start_in(mesh_dir(), quiet).await;
    let mut updates = subscribe(c.grpc).await;
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.2"]));

    // Two registrations, one with details; the second PUT of the same is a no-op.
    let (code, body) = put(&c, "127.0.0.3", "").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["outcome"], "created", "{body}");
    assert_eq!(
        next_backend(&mut updates).await,
        set(&["127.0.0.2", "127.0.0.3"])
    );
    let details = r#"{"port": 8080, "weight": 3, "labels": {"zone": "eu-1", "version": "v2"}}"#;
    assert_eq!(put(&c, "::1", details).await.0, 201);
    assert_eq!(
        next_backend(&mut updates).await,
        set(&["127.0.0.2", "127.0.0.3", "::1"])
    );
    let (code, body) = put(&c, "%3A%3A1", details).await;
    assert_eq!((code, &body["outcome"]), (200, &Value::from("unchanged")));

    // Bad requests: a 4xx with a reason each, and nothing changes.
    let file = c.dir.path().join("state/registry.json");
    let on_disk = std::fs::read(&file).expect("registry file");
    let bad: &[(&str, &str, &str, u16, &str)] = &[
        ("PUT", "Backend", "127.0.0.9", 400, "invalid name"),
        ("PUT", "backend", "banana", 400, "not an IPv4 or IPv6"),
        (
            "PUT",
            "backend",
            "127.0.0.9:8080",
            400,
            "give the port in the body",
        ),
        ("PUT", "backend", "0.0.0.0", 400, "not a usable"),
        ("PUT", "backend", "ff02::1", 400, "not a usable"),
        ("PUT", "backend", "127.0.0.9", 400, "body"),
        ("PUT", "ghost", "127.0.0.9", 404, "no service named ghost"),
        ("POST", "backend", "127.0.0.9", 405, "PUT"),
        ("DELETE", "backend", "127.0.0.9", 404, "not registered"),
        ("DELETE", "backend", "127.0.0.2", 404, "comes from: file"),
    ];
    for (i, (method, svc, ip, want, needle)) in bad.iter().enumerate() {
        // The sixth has a malformed body; the others none.
        let body = if i == 5 { "{\"port\": " } else { "" };
        let path = format!("/v1/services/{svc}/endpoints/{ip}");
        let (code, text) = request(c.http, method, &path, body).await;
        assert_eq!(code, *want, "{method} {path}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    let bodies: &[(&str, u16, &str)] = &[
        (r#"{"port": 0}"#, 400, "nonzero"),
        (r#"{"port": 70000}"#, 400, "70000"),
        (r#"{"port": 9090}"#, 422, "target port(s) [8080]"),
        (r#"{"weight": 0}"#, 400, "nonzero"),
        (r#"{"weight": 1001}"#, 400, "weight 1001"),
        (r#"{"labels": {"bad key": "x"}}"#, 400, "label key"),
        (r#"{"labels": {"k": "sp ace"}}"#, 400, "value"),
        (r#"{"colour": "blue"}"#, 400, "unknown field"),
        (r#"["port", 80]"#, 400, "body"),
    ];
    for (body, want, needle) in bodies {
        let (code, answer) = put(&c, "127.0.0.9", body).await;
        assert_eq!(code, *want, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body}: {answer}"
        );
    }
    let huge = format!(r#"{{"labels": {{"k": "{}"}}}}"#, "x".repeat(70_000));
    assert_eq!(put(&c, "127.0.0.9", &huge).await.0, 413);
    assert_eq!(
        std::fs::read(&file).expect("registry file"),
        on_disk,
        "file unchanged"
    );
    let quiet_stream = tokio::time::timeout(Duration::from_millis(300), updates.message()).await;
    assert!(
        quiet_stream.is_err(),
        "pushed after bad requests: {quiet_stream:?}"
    );

    // The listing: served services as before, and every endpoint with its origin.
    let all = get_json(c.http, "/v1/services").await;
    assert_eq!(
        all["services"]["backend"]["endpoints"],
        serde_json::json!(["127.0.0.2", "127.0.0.3", "::1"]),
        "{all}"
    );
    let eps = all["endpoints"]["backend"].as_array().expect("endpoints");
    assert_eq!(eps[0]["sources"], serde_json::json!(["file"]), "{all}");
    assert_eq!(eps[1]["sources"], serde_json::json!(["registry"]), "{all}");
    assert_eq!(eps[2]["weight"], 3, "{all}");
    assert_eq!(eps[2]["labels"]["zone"], "eu-1", "{all}");
    assert_eq!(eps[2]["port"], 8080, "{all}");
    assert!(
        eps.iter()
            .all(|e| e["health"] == "unchecked" && e["served"] == true),
        "{all}"
    );
    assert_eq!(all["defined_by"]["backend"], "file", "{all}");
    let one = get_json(c.http, "/v1/services/backend").await;
    assert_eq!(one["endpoints"], all["endpoints"]["backend"], "{one}");
    assert_eq!(get(c.http, "/v1/services/ghost").await.0, 404);

    // Deregistration.
    let (code, _) = request(
        c.http,
        "DELETE",
        "/v1/services/backend/endpoints/127.0.0.3",
        "",
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.2", "::1"]));

    // A restart (the state directory kept) serves the registrations from the start.
    drop(updates);
    let dir = c.stop().await;
    let c = start_in(dir, quiet).await;
    let mut updates = subscribe(c.grpc).await;
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.2", "::1"]));
    let status = get_json(c.http, "/v1/status").await;
    assert_eq!(status["version"], 1, "{status}");
    assert_eq!(
        status["sources"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    c.stop().await;
}

#[tokio::test]
async fn without_a_state_directory_changes_are_refused() {
    let c = start(MESH).await;
    let (code, body) = put(&c, "127.0.0.3", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--state-dir")),
        "{body}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_withdrawn_and_come_back() {
    // Two registered endpoints on one port, 127.0.0.3 and 127.0.0.4.
    let a = TcpListener::bind("127.0.0.3:0").await.expect("bind");
    let port = a.local_addr().expect("addr").port();
    let b = TcpListener::bind(("127.0.0.4", port)).await.expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!("services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: {port} }}]\n"),
    )
    .expect("write");
    let interval = Duration::from_millis(200);
    let c = start_in(dir, |o| weft_controller::Options {
        state_dir: Some(o.config.with_file_name("state")),
        health: Defaults {
            scope: Scope::Registered,
            interval,
            timeout: Duration::from_millis(100),
            unhealthy_threshold: NonZeroU32::new(2).expect("nonzero"),
            healthy_threshold: NonZeroU32::MIN,
            ..Defaults::default()
        },
        ..o
    })
    .await;
    let mut updates = subscribe(c.grpc).await;
    assert!(next_backend(&mut updates).await.is_empty());
    assert_eq!(put(&c, "127.0.0.3", "").await.0, 201);
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.3"]));
    assert_eq!(put(&c, "127.0.0.4", "").await.0, 201);
    assert_eq!(
        next_backend(&mut updates).await,
        set(&["127.0.0.3", "127.0.0.4"])
    );

    // b stops listening: withdrawn within 3 intervals (2 failures + scheduling).
    drop(b);
    let stopped = tokio::time::Instant::now();
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.3"]));
    let took = stopped.elapsed();
    assert!(
        took <= interval * 3 + Duration::from_millis(500),
        "withdrawn after {took:?}"
    );
    let all = get_json(c.http, "/v1/services").await;
    let eps = all["endpoints"]["backend"].as_array().expect("endpoints");
    assert_eq!(
        (&eps[0]["health"], &eps[0]["served"]),
        (&"healthy".into(), &true.into()),
        "{all}"
    );
    assert_eq!(
        (&eps[1]["health"], &eps[1]["served"]),
        (&"unhealthy".into(), &false.into()),
        "{all}"
    );
    assert!(
        eps[1]["check"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{all}"
    );
    let (_, page) = get(c.http, "/metrics").await;
    assert!(
        page.contains("weft_controller_endpoints_checked{service=\"backend\"} 2"),
        "{page}"
    );
    assert!(!page.contains("127.0.0.4"), "no address is a label: {page}");
    assert!(
        page.contains("weft_controller_endpoints_withdrawn{service=\"backend\"} 1"),
        "{page}"
    );

    // It listens again: back after one pass.
    let _b = TcpListener::bind(("127.0.0.4", port))
        .await
        .expect("rebind");
    assert_eq!(
        next_backend(&mut updates).await,
        set(&["127.0.0.3", "127.0.0.4"])
    );
    drop(a);
    assert_eq!(next_backend(&mut updates).await, set(&["127.0.0.4"]));
    drop(updates);
    c.stop().await;
}
