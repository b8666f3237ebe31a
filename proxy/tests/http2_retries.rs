//! Tier-1 tests of what HTTP/2 (h2c, gRPC) requests need from the proxy when an
//! endpoint fails them without processing them, with the proxy in-process on
//! loopback (original destination faked) in front of real hyper and h2 servers:
//!
//! - a gRPC-shaped request (a body of unknown length) that a meshed peer's sidecar
//!   answers `502 connect_refused`, or `grpc-status: 14` with that
//!   `x-weft-error` (its gRPC form), is sent to another endpoint with its whole
//!   body;
//! - a gRPC call the proxy cannot forward gets a trailers-only `grpc-status: 14`
//!   (HTTP 200) naming the reason, not an HTTP 502 a gRPC client cannot read;
//! - a stream the upstream refuses (`REFUSED_STREAM`) is sent elsewhere, POST or
//!   not, since it was never processed;
//! - a body kept for a retry ends on its last frame upstream, not with one more
//!   empty DATA frame (an h2 upstream closes a connection that brings it more
//!   than 100 of those).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Body;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2 as client2;
use hyper::server::conn::http2 as server2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::routes::{PortProtocol, RouteTable, ServicePort, ServiceSpec};
use weft_proxy::BoundProxy;
use weft_runtime::prom_text;

mod common;
use common::{http_get_raw, loopback_config};

const VIP: &str = "10.96.0.10:80";

/// A request body of frames the client yields one by one: of unknown length, like
/// a gRPC client's.
type FramedBody =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn framed(parts: &[&'static [u8]]) -> FramedBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p))))
        .collect();
    StreamBody::new(tokio_stream::iter(frames))
}

/// A proxy for `frontend` whose every outbound connection "was headed" to `VIP`,
/// `backend`'s VIP, with `backend` on `endpoints` (`meshed` among them), port
/// `port`; its outbound address and metrics address.
async fn proxy(endpoints: &[&str], meshed: &[&str], port: u16) -> (SocketAddr, SocketAddr) {
    let spec = ServiceSpec {
        name: "backend".into(),
        vip: VIP.parse::<SocketAddr>().unwrap().ip(),
        ports: vec![ServicePort {
            port: 80,
            target_port: port,
            protocol: PortProtocol::Http,
        }],
        endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        meshed: meshed.iter().map(|e| e.parse().unwrap()).collect(),
        identities: Vec::new(),
        withheld: Vec::new(),
        mtls: Default::default(),
        authorization: Vec::new(),
        policy: weft_proxy::policy::Policy::default(),
    };
    let p = BoundProxy::bind(
        loopback_config("frontend"),
        Arc::new(FixedOrigDst(VIP.parse().unwrap())),
    )
    .await
    .unwrap();
    p.routes().store(RouteTable::from_services([spec]));
    let addrs = (p.outbound_addrs()[0], p.metrics_addr().unwrap());
    tokio::spawn(p.run(std::future::pending()));
    addrs
}

/// What an h2c upstream saw: requests by method, connections accepted.
#[derive(Default)]
struct Seen {
    requests: Mutex<BTreeMap<String, u32>>,
    connections: AtomicUsize,
}

impl Seen {
    fn requests(&self, method: &str) -> u32 {
        self.requests
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

/// An h2c server on `ip:port` (0: any) answering every request, once its body is
/// read, with `status` (and `header`, if any) and `"<ip> body=<length>"`.
async fn h2_upstream(
    ip: &str,
    port: u16,
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
) -> (u16, Arc<Seen>) {
    let l = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port))
        .await
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let me: Arc<str> = Arc::from(ip);
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let (counts, me) = (counts.clone(), me.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (counts, me) = (counts.clone(), me.clone());
                async move {
                    *counts
                        .requests
                        .lock()
                        .unwrap()
                        .entry(req.method().to_string())
                        .or_default() += 1;
                    // An error answered without reading the body, and with none:
                    // a sidecar's own trailers-only gRPC error.
                    let text = if status == StatusCode::OK && !headers.is_empty() {
                        Bytes::new()
                    } else {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Bytes::from(format!("{me} body={}", body.len()))
                    };
                    let mut resp = Response::new(Full::new(text));
                    *resp.status_mut() = status;
                    for (name, value) in headers {
                        resp.headers_mut()
                            .insert(*name, HeaderValue::from_static(value));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = server2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

/// An h2c server on `ip:port` that refuses every stream (`RST_STREAM
/// REFUSED_STREAM`) without looking at it; counts them.
async fn h2_refusing(ip: &str, port: u16) -> Arc<AtomicUsize> {
    let l = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port))
        .await
        .unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    refused
}

/// An h2c client connection to `addr`.
async fn h2_client(addr: SocketAddr) -> client2::SendRequest<FramedBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    // A message and its end are two writes: not held back for an ACK.
    s.set_nodelay(true).unwrap();
    let (sender, conn) = client2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `POST /grpc.Svc/Call` with `body`; status and response body.
async fn post(sender: &mut client2::SendRequest<FramedBody>, body: FramedBody) -> (u16, String) {
    sender.ready().await.unwrap();
    let req = Request::post("http://backend.mesh/grpc.Svc/Call")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn metric(metrics: SocketAddr, name: &str, reason: &str) -> Option<f64> {
    let text = http_get_raw(metrics, "/metrics").await;
    prom_text::value(&text, name, &[("reason", reason)])
}

/// A meshed peer (127.0.0.1) answers every request with `status` and `headers`,
/// its sidecar's word that its app is gone; 127.0.0.2 is well. Each gRPC-shaped
/// POST goes to the well one with its whole body, and the peer is ejected at its
/// first such answer.
async fn a_peer_whose_app_is_down_is_left_for_another(
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
) {
    let port = common::port_free_on(&["127.0.0.1", "127.0.0.2"]);
    let (_, good) = h2_upstream("127.0.0.2", port, StatusCode::OK, &[]).await;
    let (_, dead) = h2_upstream("127.0.0.1", port, status, headers).await;
    let (outbound, metrics) = proxy(&["127.0.0.1", "127.0.0.2"], &["127.0.0.1"], port).await;
    let mut c = h2_client(outbound).await;
    for _ in 0..4 {
        // No length: a copy can only be kept while the body streams.
        let (status, body) = post(&mut c, framed(&[b"hello ", b"grpc"])).await;
        assert_eq!((status, body.as_str()), (200, "127.0.0.2 body=10"));
    }
    assert_eq!(dead.requests("POST"), 1, "ejected at the first such answer");
    assert_eq!(good.requests("POST"), 4);
    assert_eq!(
        metric(metrics, "weft_http_retries_total", "app_unreachable").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_grpc_request_whose_peer_app_is_down_goes_elsewhere_with_its_body() {
    a_peer_whose_app_is_down_is_left_for_another(
        StatusCode::BAD_GATEWAY,
        &[("x-weft-error", "connect_refused")],
    )
    .await;
}

#[tokio::test]
async fn a_grpc_request_a_peer_fails_in_grpc_form_goes_elsewhere() {
    // As a meshed sidecar answers a gRPC call its app refused: trailers-only.
    a_peer_whose_app_is_down_is_left_for_another(
        StatusCode::OK,
        &[
            ("grpc-status", "14"),
            ("grpc-message", "connect_refused"),
            ("x-weft-error", "connect_refused"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_grpc_call_the_proxy_cannot_forward_gets_a_grpc_status() {
    // Nothing listens on the only endpoint's port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (outbound, _) = proxy(&["127.0.0.1"], &[], port).await;
    let mut c = h2_client(outbound).await;
    c.ready().await.unwrap();
    let req = Request::post("http://backend.mesh/grpc.Svc/Call")
        .header("content-type", "application/grpc")
        .body(framed(&[b"payload"]))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    // Trailers-only: the status in the headers, and the stream already ended.
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "14");
    assert_eq!(h["grpc-message"], "connect_refused");
    assert_eq!(h["x-weft-error"], "connect_refused");
    assert!(resp.body().is_end_stream());
    // A plain h2c request to the same place still gets the HTTP error.
    c.ready().await.unwrap();
    let plain = Request::post("http://backend.mesh/upload")
        .body(framed(&[b"payload"]))
        .unwrap();
    let resp = c.send_request(plain).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-weft-error"], "connect_refused");
}

#[tokio::test]
async fn a_stream_the_upstream_refused_goes_elsewhere_whatever_its_method() {
    let (port, good) = h2_upstream("127.0.0.2", 0, StatusCode::OK, &[]).await;
    let refused = h2_refusing("127.0.0.1", port).await;
    // Neither endpoint is meshed: a refused stream needs no sidecar's word.
    let (outbound, metrics) = proxy(&["127.0.0.1", "127.0.0.2"], &[], port).await;
    let mut c = h2_client(outbound).await;
    for _ in 0..4 {
        let (status, body) = post(&mut c, framed(&[b"payload"])).await;
        assert_eq!((status, body.as_str()), (200, "127.0.0.2 body=7"));
    }
    // A retry advances the rotation too, so each POST met the refusing one first.
    assert_eq!(refused.load(Ordering::SeqCst), 4);
    assert_eq!(good.requests("POST"), 4);
    assert_eq!(
        metric(metrics, "weft_http_retries_total", "refused").await,
        Some(4.0)
    );
}

#[tokio::test]
async fn grpc_calls_end_on_their_last_frame_and_keep_the_upstream_connection() {
    // A meshed endpoint: every request body is kept for a retry as it streams.
    let (port, upstream) = h2_upstream("127.0.0.1", 0, StatusCode::OK, &[]).await;
    let (outbound, _) = proxy(&["127.0.0.1"], &["127.0.0.1"], port).await;
    let mut c = h2_client(outbound).await;
    // Each body a message, then its end (hyper, like tonic, sends an empty
    // END_STREAM frame after it). Were the end passed on as one more empty DATA
    // frame without END_STREAM, the upstream would close the pooled connection at
    // the 101st.
    for _ in 0..150 {
        let (status, body) = post(&mut c, framed(&[b"msg"])).await;
        assert_eq!((status, body.as_str()), (200, "127.0.0.1 body=3"));
    }
    assert_eq!(upstream.requests("POST"), 150);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection, never closed by the upstream"
    );
}
