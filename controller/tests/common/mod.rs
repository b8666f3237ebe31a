//! Shared by the controller's in-process tests: a controller on loopback over a
//! temporary mesh file, edits made the way editors and tools make them (write a
//! temporary file, rename it over the mesh file), and plain GETs on the HTTP API.
#![allow(dead_code)] // each test crate uses its own subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_controller::{Controller, Options};

/// How long anything the controller does may take in these tests.
pub const IN_TIME: Duration = Duration::from_secs(2);

/// Replaces `path` atomically: write a temporary file beside it, rename it over.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// `GET path` on the HTTP API: status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, "").await
}

/// `method path` with `body` on the HTTP API: status code and body.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let answer = request_as(addr, None, method, path, body).await;
    (answer.code, answer.body)
}

/// An answer: status, head (lowercased) and body.
pub struct Answer {
    pub code: u16,
    pub head: String,
    pub body: String,
}

/// `method path` with `body`, and `Authorization: Bearer token` when given.
pub async fn request_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut conn = TcpStream::connect(addr).await.expect("connect http");
    conn.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("headers end");
    Answer {
        code: head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .expect("status code"),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// `GET path` on the HTTP API, which must answer 200, as JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = get(addr, path).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json body")
}

/// A controller serving in the background.
pub struct Running {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts a controller on loopback over a mesh file holding `text`, polled every
/// 50 ms.
pub async fn start(text: &str) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, text).expect("write mesh");
    start_in(dir, |o| o).await
}

/// Starts a controller on loopback over `dir/mesh.yaml` (which must exist), polled
/// every 50 ms, with options changed by `tune`.
pub async fn start_in(dir: tempfile::TempDir, tune: impl FnOnce(Options) -> Options) -> Running {
    let path = dir.path().join("mesh.yaml");
    let options = tune(Options {
        poll_interval: Duration::from_millis(50),
        ..Options::new(path.clone())
    });
    let controller = Controller::load(&options).await.expect("valid mesh");
    let grpc_l = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let http_l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let grpc = grpc_l.local_addr().expect("addr");
    let http = http_l.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.serve(grpc_l, http_l, async {
        let _ = stopped.await;
    }));
    Running {
        dir,
        path,
        grpc,
        http,
        stop,
        task,
    }
}

impl Running {
    /// Stops the controller and waits for it; returns its directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.stop.send(()).expect("stop");
        tokio::time::timeout(IN_TIME, self.task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("serve ok");
        self.dir
    }
}
