//! The open-loop h2c load of the fault tests, the HTTP/2 twin of
//! `tools/faultload.py`: `h2c-faultload URL RATE SECONDS FIRST_ID`. Requests leave
//! at RATE per second whatever the answers do, over two long-lived HTTP/2
//! (prior-knowledge) connections as an h2 client keeps them (a connection that
//! fails is replaced); every other one is a POST with a 100-byte body; each carries
//! `x-req-id: N`. Each has a 10 s timeout; RATE x SECONDS requests, then it exits.
//! Prints one JSON line: {"sent", "succeeded", "failed", "statuses", "failures"}; a
//! request succeeds with a response below 500.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::Mutex as AsyncMutex;

const CONNECTIONS: usize = 2;

/// Responses by status, and the failures.
type Results = (BTreeMap<u16, u64>, Vec<Value>);
const TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 connection, made again when it failed.
struct Conn {
    authority: String,
    sender: AsyncMutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Conn {
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds, first_id] = args.as_slice() else {
        eprintln!("usage: h2c-faultload URL RATE SECONDS FIRST_ID");
        std::process::exit(2);
    };
    let uri: hyper::Uri = url.parse().expect("URL");
    let rate: f64 = rate.parse().expect("RATE");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let first_id: u64 = first_id.parse().expect("FIRST_ID");
    let authority = uri.authority().expect("URL with a host").to_string();
    let conns: Arc<Vec<Conn>> = Arc::new(
        (0..CONNECTIONS)
            .map(|_| Conn {
                authority: authority.clone(),
                sender: AsyncMutex::new(None),
            })
            .collect(),
    );
    let results: Arc<Mutex<Results>> = Arc::default();
    let total = (rate * seconds) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let (conns, results, uri) = (conns.clone(), results.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let id = first_id + i;
            let post = i % 2 == 1;
            let method = if post { Method::POST } else { Method::GET };
            let body = if post { Bytes::from(vec![b'x'; 100]) } else { Bytes::new() };
            let req = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header("x-req-id", id.to_string())
                .body(Full::new(body))
                .expect("request");
            let conn = &conns[(i as usize) % CONNECTIONS];
            let outcome = tokio::time::timeout(TIMEOUT, async {
                let mut sender = conn.sender().await?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                let status = resp.status().as_u16();
                let weft_error = resp
                    .headers()
                    .get("x-weft-error")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?;
                Ok::<_, String>((status, weft_error))
            })
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
            let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok((status, weft_error)) => {
                    *r.0.entry(status).or_default() += 1;
                    if status >= 500 {
                        r.1.push(json!({"id": id, "method": method.as_str(), "status": status, "weft_error": weft_error}));
                    }
                }
                Err(e) => r.1.push(json!({"id": id, "method": method.as_str(), "error": e})),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (statuses, mut failures) =
        std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    failures.sort_by_key(|f| f["id"].as_u64());
    println!(
        "{}",
        json!({
            "sent": total,
            "succeeded": total - failures.len() as u64,
            "failed": failures.len(),
            "statuses": statuses,
            "failures": failures,
        })
    );
}
