//! In-process: the controller on loopback with a temporary mesh file, a real tonic
//! client, and edits made the way editors and tools make them (write a temporary file,
//! rename it over the mesh file).

use std::time::Duration;

use weft_api::discovery::{
    subscribe_request, Ack, MeshUpdate, Protocol, SubscribeRequest, WatchRequest,
};
use weft_api::DiscoveryClient;
use weft_controller::{Controller, Options};

mod common;
use common::{get_json, replace, start, IN_TIME};

const V1: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080, protocol: auto }
    endpoints: [10.211.0.3, 10.211.0.4]
    policy: {}
  frontend:
    vip: 10.96.0.20
    ports:
      - { port: 80, target_port: 8080, protocol: http }
    endpoints: [10.211.0.5]
workloads:
  backend: { service: backend, replicas: 3, command: \"python3 -m http.server 8080\" }
";

/// backend changed (an endpoint more), frontend removed, db added.
const V2: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080, protocol: auto }
    endpoints: [10.211.0.3, 10.211.0.4, 10.211.0.6]
  db:
    vip: fd00:96::30
    ports:
      - { port: 5432, protocol: tcp }
    endpoints: [fd00:211::7]
";

/// V2 with db's VIP broken on line 8.
const BAD: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080, protocol: auto }
    endpoints: [10.211.0.3, 10.211.0.4, 10.211.0.6]
  db:
    vip: fd00:96::zz
    ports:
      - { port: 5432, protocol: tcp }
    endpoints: [fd00:211::7]
";

/// V2 with db's endpoint changed; backend as in V2.
const V3: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080, protocol: auto }
    endpoints: [10.211.0.3, 10.211.0.4, 10.211.0.6]
  db:
    vip: fd00:96::30
    ports:
      - { port: 5432, protocol: tcp }
    endpoints: [fd00:211::8]
";

fn names(update: &MeshUpdate) -> Vec<&str> {
    let mut n: Vec<&str> = update.services.iter().map(|s| s.name.as_str()).collect();
    n.sort_unstable();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_updates_and_bad_edits_are_held_back() {
    let c = start(V1).await;
    let mut client = DiscoveryClient::connect(format!("http://{}", c.grpc))
        .await
        .expect("connect grpc");
    let mut stream = client
        .watch(WatchRequest {
            service: "frontend".into(),
            proxy_id: "test-1".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    // 1. The full snapshot.
    let snap = tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("snapshot in time")
        .expect("stream ok")
        .expect("a message");
    assert!(snap.full_snapshot);
    assert_eq!(snap.version, 1);
    assert_eq!(names(&snap), ["backend", "frontend"]);
    let backend = snap
        .services
        .iter()
        .find(|s| s.name == "backend")
        .expect("backend");
    assert_eq!(backend.vip, "10.96.0.10");
    assert_eq!(backend.ports[0].port, 80);
    assert_eq!(backend.ports[0].target_port, 8080);
    assert_eq!(backend.ports[0].protocol(), Protocol::Auto);
    let eps: Vec<&str> = backend
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(eps, ["10.211.0.3", "10.211.0.4"]);
    let status = get_json(c.http, "/v1/status").await;
    assert_eq!(status["subscribers"], 1, "{status}");
    assert_eq!(status["version"], 1, "{status}");

    // 2. A valid edit: only the changed and added services, and the removed name.
    replace(&c.path, V2);
    let update = tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("update in time")
        .expect("stream ok")
        .expect("a message");
    assert!(!update.full_snapshot);
    assert_eq!(update.version, 2);
    assert_eq!(names(&update), ["backend", "db"]);
    assert_eq!(update.removed, ["frontend"]);
    let db = update.services.iter().find(|s| s.name == "db").expect("db");
    assert_eq!(db.vip, "fd00:96::30");
    assert_eq!(db.ports[0].target_port, 5432, "defaults to port");
    assert_eq!(db.ports[0].protocol(), Protocol::Tcp);

    // 3. A malformed edit: reported with file:line, nothing pushed, V2 still served.
    replace(&c.path, BAD);
    let deadline = tokio::time::Instant::now() + IN_TIME;
    let status = loop {
        let status = get_json(c.http, "/v1/status").await;
        if !status["current_error"].is_null() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let err = &status["current_error"];
    let want = format!("{}:8:", c.path.display());
    assert!(
        err["display"].as_str().expect("display").starts_with(&want),
        "{status}"
    );
    assert_eq!(err["line"], 8, "{status}");
    assert_eq!(err["origin"], c.path.display().to_string(), "{status}");
    assert!(
        err["message"].as_str().expect("message").contains("vip"),
        "{status}"
    );
    assert_eq!(status["version"], 2, "{status}");
    assert_eq!(status["reload_errors_total"], 1, "{status}");
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(quiet.is_err(), "pushed after a bad edit: {quiet:?}");
    let services = get_json(c.http, "/v1/services").await;
    assert_eq!(services["version"], 2, "{services}");
    assert_eq!(
        services["services"]["db"]["vip"], "fd00:96::30",
        "{services}"
    );

    // 4. Fixed: the update brings only what changed since V2.
    replace(&c.path, V3);
    let update = tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("update in time")
        .expect("stream ok")
        .expect("a message");
    assert!(!update.full_snapshot);
    assert_eq!(update.version, 3);
    assert_eq!(names(&update), ["db"]);
    assert!(update.removed.is_empty());
    assert_eq!(update.services[0].endpoints[0].address, "fd00:211::8");
    let status = get_json(c.http, "/v1/status").await;
    assert!(status["current_error"].is_null(), "{status}");
    assert_eq!(status["last_error"]["line"], 8, "{status}");

    // A second subscriber gets the current state as a full snapshot.
    let mut second = client
        .watch(WatchRequest {
            service: "backend".into(),
            proxy_id: "test-2".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snap = second.message().await.expect("ok").expect("a message");
    assert!(snap.full_snapshot);
    assert_eq!((snap.version, names(&snap)), (3, vec!["backend", "db"]));

    // 5. Shutdown ends the streams and the servers.
    c.stop.send(()).expect("stop");
    let ended = tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("stream ends in time");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    tokio::time::timeout(IN_TIME, c.task)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("serve ok");
    drop(c.dir);
}

#[tokio::test]
async fn an_invalid_file_at_start_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, BAD).expect("write");
    let err = Controller::load(&Options::new(&path))
        .await
        .expect_err("invalid");
    assert_eq!(err.line, Some(8), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:8:", path.display())),
        "{err}"
    );
}

#[test]
fn the_binary_exits_non_zero_on_an_invalid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, BAD).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .arg("--config")
        .arg(&path)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--api-auth",
            "off",
        ])
        .output()
        .expect("run weft-controller");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:8:", path.display())),
        "{stderr}"
    );
}

/// A `Subscribe` stream: the watch request, then the test's Acks.
async fn subscribe(
    grpc: std::net::SocketAddr,
    proxy_id: &str,
) -> (
    tokio::sync::mpsc::Sender<SubscribeRequest>,
    tonic::Streaming<MeshUpdate>,
) {
    let mut client = DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(SubscribeRequest {
        kind: Some(subscribe_request::Kind::Watch(WatchRequest {
            service: "frontend".into(),
            proxy_id: proxy_id.into(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue watch");
    let updates = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    (tx, updates)
}

fn ack(update: &MeshUpdate, error: &str) -> SubscribeRequest {
    SubscribeRequest {
        kind: Some(subscribe_request::Kind::Ack(Ack {
            epoch: update.epoch,
            version: update.version,
            error: error.into(),
        })),
    }
}

/// The entry of `/v1/status`'s `proxies` for `proxy_id`.
async fn proxy_status(c: &common::Running, proxy_id: &str) -> serde_json::Value {
    let status = get_json(c.http, "/v1/status").await;
    status["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .find(|p| p["proxy_id"] == proxy_id)
        .cloned()
        .unwrap_or_else(|| panic!("no {proxy_id} in {status}"))
}

async fn eventually(
    c: &common::Running,
    proxy_id: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + IN_TIME;
    loop {
        let p = proxy_status(c, proxy_id).await;
        if check(&p) {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_count_subscribers_and_show_rejections() {
    let c = start(V1).await;
    let (acks, mut updates) = subscribe(c.grpc, "p1").await;
    let snapshot = tokio::time::timeout(IN_TIME, updates.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("snapshot");
    let status = get_json(c.http, "/v1/status").await;
    assert_eq!(snapshot.epoch, status["epoch"].as_u64().expect("epoch"));
    assert!(snapshot.epoch > 1_700_000_000_000, "an epoch in ms");
    // Sent, not applied: not a subscriber yet.
    let p = proxy_status(&c, "p1").await;
    assert_eq!(p["sent_version"], snapshot.version);
    assert!(p["applied_version"].is_null(), "{p}");
    assert_eq!(status["subscribers"], 0);
    acks.send(ack(&snapshot, "")).await.expect("ack");
    let p = eventually(&c, "p1", |p| p["applied_version"] == snapshot.version).await;
    assert_eq!(p["lag_versions"], 0);
    assert_eq!(get_json(c.http, "/v1/status").await["subscribers"], 1);

    // An update the proxy rejects: shown with the reason, still at the old version.
    replace(&c.path, V2);
    let update = tokio::time::timeout(IN_TIME, updates.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("update");
    acks.send(ack(&update, "service \"db\": bad vip"))
        .await
        .expect("nack");
    let p = eventually(&c, "p1", |p| !p["rejected"].is_null()).await;
    assert_eq!(p["rejected"]["version"], update.version);
    assert_eq!(p["rejected"]["reason"], "service \"db\": bad vip");
    assert_eq!(p["applied_version"], snapshot.version);
    assert_eq!(p["lag_versions"], update.version - snapshot.version);
    let metrics = common::get(c.http, "/metrics").await.1;
    let counted = |result| {
        weft_runtime::prom_text::value(
            &metrics,
            "weft_controller_acks_total",
            &[("result", result)],
        )
    };
    assert_eq!(counted("applied"), Some(1.0), "{metrics}");
    assert_eq!(counted("rejected"), Some(1.0), "{metrics}");
    // An Ack of another epoch (a previous controller's state) changes nothing.
    let mut stale = update.clone();
    stale.epoch -= 1;
    acks.send(ack(&stale, "")).await.expect("stale ack");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        proxy_status(&c, "p1").await["applied_version"],
        snapshot.version
    );
    // Applied after all: clears the rejection.
    acks.send(ack(&update, "")).await.expect("ack");
    let p = eventually(&c, "p1", |p| p["applied_version"] == update.version).await;
    assert!(p["rejected"].is_null(), "{p}");

    // Gone: not counted.
    drop((acks, updates));
    let deadline = tokio::time::Instant::now() + IN_TIME;
    while get_json(c.http, "/v1/status").await["subscribers"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.stop().await;
}
