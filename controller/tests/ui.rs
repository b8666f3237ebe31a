//! In-process: the mesh page (`/ui/`). Its assets are open and name nothing
//! outside the controller; its data (`/ui/api/mesh`) wants a valid token, as
//! `/v1/status` does, and lists a bad edit of the mesh file with its line. Then the
//! gathering: a discovery subscriber at 127.0.0.1 is read on the ports the
//! controller is told (a stand-in proxy serving `/metrics` and `/ready`), its edge
//! counted from its metrics page, its readiness and the reason given, and its
//! unreachable admin port said so rather than hidden. Nobody looking, nobody is
//! read: the proxies are read only once the page's data is asked for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use weft_api::discovery::{MeshUpdate, WatchRequest};
use weft_api::DiscoveryClient;
use weft_controller::auth::AuthConfig;
use weft_controller::ui::Settings;
use weft_controller::Options;

mod common;
use common::{replace, request_as as call, start_in, IN_TIME};

const MESH: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports:
      - { port: 80, target_port: 8080 }
";
const READER: &str = "0123456789abcdef0123456789abcdef-reader01";

async fn mesh_data(http: SocketAddr, token: Option<&str>) -> serde_json::Value {
    let answer = call(http, token, "GET", "/ui/api/mesh", "").await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_open_its_data_wants_a_token_and_lists_bad_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!("tokens:\n  viewer:\n    token: {READER}\n    register: []\n"),
    )
    .expect("write tokens");
    let c = start_in(dir, |o| Options {
        auth: AuthConfig::tokens(o.config.with_file_name("tokens.yaml")),
        ..o
    })
    .await;

    let page = call(c.http, None, "GET", "/ui/", "").await;
    assert_eq!(page.code, 200);
    assert!(page.head.contains("text/html"), "{}", page.head);
    assert!(
        page.head
            .contains("content-security-policy: default-src 'self'"),
        "{}",
        page.head
    );
    assert!(
        page.body.contains("<script src=\"app.js\">"),
        "{}",
        page.body
    );
    let script = call(c.http, None, "GET", "/ui/app.js", "").await;
    assert_eq!(script.code, 200);
    assert!(script.head.contains("text/javascript"), "{}", script.head);
    assert!(script.body.contains("api/mesh"));
    let bare = call(c.http, None, "GET", "/ui", "").await;
    assert_eq!(bare.code, 301);
    assert!(bare.head.contains("location: /ui/"), "{}", bare.head);

    // The data: a read like /v1/status.
    for token in [None, Some("not-a-token")] {
        let refused = call(c.http, token, "GET", "/ui/api/mesh", "").await;
        assert_eq!(refused.code, 401, "{token:?}: {}", refused.body);
    }
    let data = mesh_data(c.http, Some(READER)).await;
    assert_eq!(data["services"][0]["name"], "backend", "{data:#}");
    assert_eq!(data["services"][0]["vip"], "10.96.0.10");
    assert_eq!(data["bad_edits"], serde_json::json!([]));
    let write = call(c.http, Some(READER), "POST", "/ui/api/mesh", "").await;
    assert_eq!(write.code, 405, "{}", write.body);
    let unknown = call(c.http, Some(READER), "GET", "/ui/nothing", "").await;
    assert_eq!(unknown.code, 404);

    // A bad edit at line 3: listed with its line, and kept once fixed.
    replace(&c.path, &MESH.replace("10.96.0.10", "10.96.0.300"));
    let deadline = tokio::time::Instant::now() + IN_TIME;
    let edits = loop {
        let data = mesh_data(c.http, Some(READER)).await;
        if data["bad_edits"].as_array().is_some_and(|e| !e.is_empty()) {
            break data["bad_edits"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no bad edit listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(edits[0]["line"], 3, "{edits:#}");
    assert!(
        edits[0]["message"]
            .as_str()
            .expect("message")
            .contains("vip"),
        "{edits:#}"
    );
    replace(&c.path, MESH);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = mesh_data(c.http, Some(READER)).await;
    assert_eq!(data["bad_edits"].as_array().map(Vec::len), Some(1));
    c.stop().await;
}

/// A stand-in for a proxy's metrics port: `/metrics` with one edge, `/ready`
/// refusing with a reason.
async fn stand_in_proxy(listener: TcpListener) {
    stand_in_proxy_counting(listener, Arc::default()).await;
}

/// [`stand_in_proxy`], counting the requests it gets in `hits`.
async fn stand_in_proxy_counting(listener: TcpListener, hits: Arc<AtomicUsize>) {
    const METRICS: &str = "weft_http_requests_total{destination_service=\"backend\",direction=\"outbound\",method=\"GET\",source_service=\"frontend\",status_code=\"200\"} 90\n\
weft_http_requests_total{destination_service=\"backend\",direction=\"outbound\",method=\"GET\",source_service=\"frontend\",status_code=\"503\"} 10\n";
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        hits.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", METRICS),
                "/ready" => (
                    "503 Service Unavailable",
                    "app port 8000: connection refused",
                ),
                _ => ("404 Not Found", ""),
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        });
    }
}

/// A discovery subscriber as a proxy `frontend-0` would be (at 127.0.0.1), past
/// its snapshot; the stream keeps it subscribed.
async fn subscribe_as_frontend_0(grpc: SocketAddr) -> tonic::Streaming<MeshUpdate> {
    let mut client = DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    let mut stream = client
        .watch(WatchRequest {
            service: "frontend".into(),
            proxy_id: "frontend-0".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    stream
        .message()
        .await
        .expect("snapshot")
        .expect("a message");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscribed_proxy_is_read_at_its_address() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_port = proxy.local_addr().expect("addr").port();
    tokio::spawn(stand_in_proxy(proxy));
    // An admin port nothing listens on: bound, then let go.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_port = closed.local_addr().expect("addr").port();
    drop(closed);

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    let c = start_in(dir, |o| Options {
        ui: Settings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            metrics_port,
            admin_port,
            ..Settings::default()
        },
        ..o
    })
    .await;
    let stream = subscribe_as_frontend_0(c.grpc).await;

    let deadline = tokio::time::Instant::now() + IN_TIME;
    let data = loop {
        let data = mesh_data(c.http, None).await;
        let counted = data["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["requests"] == 100.0));
        // Signals need two rounds (a rate is a difference).
        let drawn = data["services"].as_array().is_some_and(|services| {
            services.iter().any(|s| {
                s["name"] == "backend"
                    && s["signals"]["t_ms"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty())
            })
        });
        if counted && drawn && data["pods"].as_array().is_some_and(|p| !p.is_empty()) {
            break data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never gathered: {data:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edge = &data["edges"][0];
    assert_eq!(
        (&edge["source"], &edge["destination"]),
        (&"frontend".into(), &"backend".into())
    );
    assert_eq!(edge["failures"], 10.0, "{edge}");
    let pod = &data["pods"][0];
    assert_eq!(pod["pod"], "frontend-0");
    assert_eq!(pod["address"], "127.0.0.1");
    assert_eq!(pod["ready"], false);
    assert_eq!(pod["ready_detail"], "app port 8000: connection refused");
    assert!(pod["connections"].is_null(), "{pod}");
    let why = pod["connections_error"].as_str().expect("a reason");
    assert!(why.contains(&format!("admin port {admin_port}")), "{why}");
    // The backend service's points: one per round, with requests in the first.
    let backend = data["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "backend")
        .expect("backend");
    assert!(
        backend["signals"]["t_ms"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{backend}"
    );
    drop(stream);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxies_are_read_only_once_someone_looks() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_port = proxy.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(stand_in_proxy_counting(proxy, hits.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    let c = start_in(dir, |o| Options {
        ui: Settings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
            metrics_port,
            admin_port: metrics_port,
            ..Settings::default()
        },
        ..o
    })
    .await;
    let stream = subscribe_as_frontend_0(c.grpc).await;
    // Ten rounds' time with the page closed: not one read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hits.load(Ordering::Relaxed), 0, "read with nobody looking");
    // Opened: read at once, and again each round.
    let _ = mesh_data(c.http, None).await;
    let deadline = tokio::time::Instant::now() + IN_TIME;
    while hits.load(Ordering::Relaxed) < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} reads once the page was opened",
            hits.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    c.stop().await;
}
