//! `h2kit h2c-load`: an open-loop h2c client as an application's HTTP/2 client
//! behaves: prior-knowledge HTTP/2 over [`CONNECTIONS`] long-lived connections,
//! requests spread over them round robin and multiplexed; a connection that closed
//! is made again by the next request that needs it. Half GETs, half POSTs with a
//! 100-byte body; each carries `x-req-id`. A request succeeds with a status below
//! 500; a failed answer records the proxy's `x-weft-error`, if any.

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Map, Value};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::load::{method_of, open_loop, Outcome, Schedule, CONNECTIONS, POST_BODY};

type Sender = SendRequest<Full<Bytes>>;

/// Runs the load against `url` (`http://HOST:PORT/PATH`).
pub async fn load(url: &str, schedule: Schedule) -> Result<Value, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let authority = if uri.port().is_some() {
        authority
    } else {
        format!("{authority}:80")
    };
    let conns = Arc::new(Conns {
        authority,
        slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
    });
    Ok(open_loop(schedule, |id, i| {
        let (conns, uri) = (conns.clone(), uri.clone());
        async move { one(&conns, (i as usize) % CONNECTIONS, uri, id).await }
    })
    .await)
}

/// The load's connections, each made on first use and again after it closed.
struct Conns {
    authority: String,
    slots: Vec<Mutex<Option<Sender>>>,
}

impl Conns {
    /// Connection `k`, open (made now if it is not).
    async fn get(&self, k: usize) -> Result<Sender, String> {
        let mut slot = self.slots[k].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

async fn one(conns: &Conns, k: usize, uri: Uri, id: u64) -> Outcome {
    match send(conns, k, uri, id).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Error(e),
    }
}

async fn send(conns: &Conns, k: usize, uri: Uri, id: u64) -> Result<Outcome, String> {
    let mut sender = conns.get(k).await?;
    let (method, body) = match method_of(id) {
        "POST" => (Method::POST, Bytes::from(vec![b'x'; POST_BODY])),
        _ => (Method::GET, Bytes::new()),
    };
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-req-id", id)
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let weft_error = resp.headers().get("x-weft-error").cloned();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    let mut detail = Map::new();
    if let Some(e) = weft_error {
        detail.insert(
            "weft_error".into(),
            String::from_utf8_lossy(e.as_bytes()).into(),
        );
    }
    Ok(Outcome::Answer {
        status: status.into(),
        ok: status < 500,
        detail,
    })
}
