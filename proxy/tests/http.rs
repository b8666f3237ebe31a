//! Tier-1 tests of the L7 path: the proxy in-process on loopback (original
//! destination faked) in front of real hyper and std servers. Protocol detection,
//! per-request round robin over pooled connections, h2c with trailers, upgrades,
//! server-speaks-first traffic, the proxy's own errors, and the HTTP metrics.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::routes::{PortProtocol, RouteTable, ServicePort, ServiceSpec};
use weft_proxy::{BoundProxy, ProxyConfig};
use weft_runtime::prom_text;

mod common;
use common::{eventually, http_get_raw, loopback_config};

const VIP: &str = "10.96.0.10:80";

struct Proxy {
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
}

/// A proxy for service `frontend` whose every captured connection "was headed" to
/// `orig_dst`; `spec`, if any, is the only service it knows.
async fn proxy(orig_dst: SocketAddr, spec: Option<ServiceSpec>) -> Proxy {
    proxy_with(orig_dst, spec, |_| {}).await
}

async fn proxy_with(
    orig_dst: SocketAddr,
    spec: Option<ServiceSpec>,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> Proxy {
    let mut config = loopback_config("frontend");
    tweak(&mut config);
    let p = BoundProxy::bind(config, Arc::new(FixedOrigDst(orig_dst)))
        .await
        .unwrap();
    if let Some(spec) = spec {
        p.routes().store(RouteTable::from_services([spec]));
    }
    let addrs = Proxy {
        outbound: p.outbound_addrs()[0],
        inbound: p.inbound_addrs()[0],
        admin: p.admin_addr().unwrap(),
        metrics: p.metrics_addr().unwrap(),
    };
    tokio::spawn(p.run(std::future::pending()));
    addrs
}

fn backend(endpoints: &[&str], target_port: u16, protocol: PortProtocol) -> ServiceSpec {
    ServiceSpec {
        name: "backend".into(),
        vip: VIP.parse::<SocketAddr>().unwrap().ip(),
        ports: vec![ServicePort {
            port: 80,
            target_port,
            protocol,
        }],
        endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        meshed: Vec::new(),
        identities: Vec::new(),
        withheld: Vec::new(),
        mtls: Default::default(),
        authorization: Vec::new(),
        policy: weft_proxy::policy::Policy::default(),
    }
}

/// An HTTP/1.1 server on `ip` (any port): answers `GET /status/N` with
/// status N, anything else with 200; the body names the server and echoes the
/// request's Host. Returns the port and a count of accepted connections.
async fn h1_server(ip: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    h1_server_on(l)
}

/// Listeners on one port on each of `ips` (any port free on the first). A port
/// free on the first address may be taken on another (by a concurrent test's
/// socket): then another one is tried.
async fn listeners_on_one_port(ips: &[&str]) -> Vec<TcpListener> {
    'port: for _ in 0..100 {
        let first = TcpListener::bind((ips[0].parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port)).await {
                Ok(l) => all.push(l),
                Err(_) => continue 'port,
            }
        }
        return all;
    }
    panic!("no port free on all of {ips:?}");
}

/// [`h1_server`] on a bound listener.
fn h1_server_on(l: TcpListener) -> (u16, Arc<AtomicUsize>) {
    let port = l.local_addr().unwrap().port();
    let me: Arc<str> = Arc::from(l.local_addr().unwrap().ip().to_string());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let me = me.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move {
                        let status = req
                            .uri()
                            .path()
                            .strip_prefix("/status/")
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(200);
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let hop = req.headers().contains_key("x-hop");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut resp = Response::new(Full::new(Bytes::from(format!(
                            "{me} host={host} hop={hop} body={}",
                            body.len()
                        ))));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = server1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, accepted)
}

async fn h1_client(addr: SocketAddr) -> client1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = client1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

async fn get(
    sender: &mut client1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, HeaderMap, String) {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "backend.mesh")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn scrape(p: &Proxy) -> String {
    http_get_raw(p.metrics, "/metrics").await
}

fn requests(text: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom_text::value(text, "weft_http_requests_total", labels)
}

#[tokio::test]
async fn thirty_requests_on_one_connection_land_ten_per_endpoint() {
    let mut listeners = listeners_on_one_port(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let (_, a3) = h1_server_on(listeners.pop().unwrap());
    let (_, a2) = h1_server_on(listeners.pop().unwrap());
    let (port, a1) = h1_server_on(listeners.pop().unwrap());
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
            port,
            PortProtocol::Auto,
        )),
    )
    .await;
    let mut c = h1_client(p.outbound).await;
    let mut served = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let (status, _, body) = get(&mut c, "/").await;
        assert_eq!(status, 200);
        assert!(body.contains("host=backend.mesh"), "Host preserved: {body}");
        *served
            .entry(body.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        [
            ("127.0.0.1".into(), 10),
            ("127.0.0.2".into(), 10),
            ("127.0.0.3".into(), 10)
        ]
    );
    // Each endpoint served its ten over one pooled keep-alive connection.
    for a in [&a1, &a2, &a3] {
        assert_eq!(a.load(Ordering::SeqCst), 1);
    }
    // One client connection, listed as HTTP/1 with its request count.
    let conns = http_get_raw(p.admin, "/connections").await;
    let body = conns.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let live: Vec<&serde_json::Value> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "open")
        .collect();
    assert_eq!(live.len(), 1, "{body}");
    assert_eq!(live[0]["protocol"], "http1");
    assert_eq!(live[0]["requests"], 30);
    assert_eq!(live[0]["service"], "backend");

    eventually("30 requests in the metrics", async || {
        let text = scrape(&p).await;
        requests(
            &text,
            &[
                ("direction", "outbound"),
                ("source_service", "frontend"),
                ("destination_service", "backend"),
                ("method", "GET"),
                ("status_code", "200"),
            ],
        ) == Some(30.0)
            && prom_text::value(
                &text,
                "weft_http_request_duration_seconds_count",
                &[("destination_service", "backend"), ("status_code", "200")],
            ) == Some(30.0)
            && prom_text::value(
                &text,
                "weft_tcp_connections_opened_total",
                &[("destination_service", "backend")],
            ) == Some(1.0)
    })
    .await;
    // A second client connection reuses the pooled ones.
    let mut c2 = h1_client(p.outbound).await;
    for _ in 0..3 {
        assert_eq!(get(&mut c2, "/").await.0, 200);
    }
    for a in [&a1, &a2, &a3] {
        assert_eq!(a.load(Ordering::SeqCst), 1);
    }
    drop(c2);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_bodies_pass() {
    let (port, _) = h1_server("127.0.0.1").await;
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Http)),
    )
    .await;
    let mut c = h1_client(p.outbound).await;
    c.ready().await.unwrap();
    let req = Request::post("/upload")
        .header("host", "backend.mesh")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "127.0.0.1 host=backend.mesh hop=false body=100000"
    );
}

/// An h2c server answering with a body and trailers: `grpc-status: 0` and the
/// request's own trailer echoed back.
async fn h2_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let authority = req.uri().authority().map(|a| a.to_string());
                    let collected = req.into_body().collect().await.unwrap();
                    let echoed = collected
                        .trailers()
                        .and_then(|t| t.get("x-request-trailer"))
                        .cloned()
                        .unwrap_or(HeaderValue::from_static("none"));
                    let body = collected.to_bytes();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("x-echoed-trailer", echoed);
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from(format!(
                            "h2 authority={} body={}",
                            authority.unwrap_or_default(),
                            body.len()
                        )))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(tokio_stream::iter(frames));
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = server2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

type ReqBody = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_passes_trailers_both_ways() {
    let port = h2_server().await;
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    let s = TcpStream::connect(p.outbound).await.unwrap();
    let (mut sender, conn) =
        client2::handshake::<_, _, ReqBody>(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "x-request-trailer",
            HeaderValue::from_str(&format!("t{i}")).unwrap(),
        );
        // The last request carries far more than HTTP/2's initial 64 KiB window:
        // flow control has to be released end to end as the upstream reads.
        let len = if i == 2 { 3 << 20 } else { 5 };
        let frames = vec![
            Ok(Frame::data(Bytes::from(vec![b'x'; len]))),
            Ok(Frame::trailers(trailers)),
        ];
        let req = Request::post("http://backend.mesh/grpc.Svc/Call")
            .header("te", "trailers")
            .body(StreamBody::new(tokio_stream::iter(frames)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-echoed-trailer"], format!("t{i}").as_str());
        assert_eq!(
            String::from_utf8_lossy(&collected.to_bytes()),
            format!("h2 authority=backend.mesh body={len}")
        );
    }
    let conns = http_get_raw(p.admin, "/connections").await;
    assert!(conns.contains("\"protocol\": \"h2\""), "{conns}");
}

#[tokio::test]
async fn a_banner_reaches_a_silent_client_promptly() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(b"220 banner.example ESMTP\r\n").await.unwrap();
                // Then echo, like a line protocol would answer.
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    let started = Instant::now();
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let mut banner = [0u8; 26];
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut banner))
        .await
        .expect("banner did not arrive")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(&banner, b"220 banner.example ESMTP\r\n");
    eprintln!("banner through the proxy after {took:?}");
    c.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO x\r\n");
    let conns = http_get_raw(p.admin, "/connections").await;
    assert!(conns.contains("\"protocol\": \"tcp\""), "{conns}");
}

#[tokio::test]
async fn opaque_bytes_on_a_detected_port_pass_byte_identical() {
    // An echo server behind an `auto` port; the client speaks first with binary.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let mut payload = vec![0x16, 0x03, 0x01];
    payload.extend((0..200_000u32).map(|i| (i % 253) as u8));
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let (_, n) = tokio::join!(send, r.read_to_end(&mut got));
    assert_eq!(n.unwrap(), payload.len());
    assert!(got == payload, "bytes differ");
}

#[tokio::test]
async fn bad_requests_get_400_and_431_and_the_proxy_keeps_serving() {
    let (port, _) = h1_server("127.0.0.1").await;
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Http)),
    )
    .await;
    for garbage in [
        &b"\x16\x03\x01\x00\x05hello\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(p.outbound).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{garbage:?} -> {out:?}");
    }
    let mut s = TcpStream::connect(p.outbound).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    // Unaffected.
    let mut c = h1_client(p.outbound).await;
    assert_eq!(get(&mut c, "/").await.0, 200);
}

#[tokio::test]
async fn unreachable_endpoint_is_502_and_no_endpoints_503() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = unused.local_addr().unwrap().port();
    drop(unused);
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], dead_port, PortProtocol::Auto)),
    )
    .await;
    let mut c = h1_client(p.outbound).await;
    for _ in 0..2 {
        let (status, headers, _) = get(&mut c, "/").await;
        assert_eq!(status, 502);
        assert_eq!(headers["x-weft-error"], "connect_refused");
    }

    let empty = proxy(
        VIP.parse().unwrap(),
        Some(backend(&[], 8080, PortProtocol::Auto)),
    )
    .await;
    let mut c = h1_client(empty.outbound).await;
    let (status, headers, _) = get(&mut c, "/").await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-weft-error"], "no_endpoints");

    for (proxy, status, reason, n) in [
        (&p, "502", "connect_refused", 2.0),
        (&empty, "503", "no_endpoints", 1.0),
    ] {
        eventually("the errors in the metrics", async || {
            let text = scrape(proxy).await;
            requests(&text, &[("status_code", status)]) == Some(n)
                && prom_text::value(
                    &text,
                    "weft_proxy_errors_total",
                    &[
                        ("direction", "outbound"),
                        ("destination_service", "backend"),
                        ("reason", reason),
                    ],
                ) == Some(n)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_per_status_match_what_clients_saw_both_directions() {
    let (port, _) = h1_server("127.0.0.1").await;
    let app: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let out = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    // Inbound: the "app" is the server itself, on its original port.
    let inb = proxy(app, None).await;
    let mut seen = BTreeMap::<(&str, u16), u32>::new();
    for (name, addr) in [("outbound", out.outbound), ("inbound", inb.inbound)] {
        // Two client connections, to see the pool serve both.
        for conn in 0..2 {
            let mut c = h1_client(addr).await;
            for path in ["/", "/status/404", "/status/503", "/", "/status/201"] {
                if conn == 1 && path == "/status/201" {
                    continue;
                }
                let (status, _, _) = get(&mut c, path).await;
                *seen.entry((name, status.as_u16())).or_default() += 1;
            }
        }
    }
    for ((direction, status), n) in seen {
        let p = if direction == "outbound" { &out } else { &inb };
        let dst = if direction == "outbound" {
            "backend"
        } else {
            "frontend"
        };
        let src = if direction == "outbound" {
            "frontend"
        } else {
            "unknown"
        };
        let code = status.to_string();
        eventually("per-status counts", async || {
            let text = scrape(p).await;
            requests(
                &text,
                &[
                    ("direction", direction),
                    ("source_service", src),
                    ("destination_service", dst),
                    ("status_code", &code),
                ],
            ) == Some(f64::from(n))
        })
        .await;
    }
    // The upstream's own 503 is not a proxy error.
    let text = scrape(&out).await;
    assert_eq!(
        prom_text::value(&text, "weft_proxy_errors_total", &[]),
        None,
        "{text}"
    );
}

#[tokio::test]
async fn websocket_style_upgrade_becomes_a_tunnel() {
    // A server that accepts any upgrade and then echoes bytes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let svc = service_fn(|mut req: Request<Incoming>| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on.await.unwrap());
                let mut buf = [0u8; 5];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
                io.shutdown().await.unwrap();
            });
            let resp = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Empty::<Bytes>::new())
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        server1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .with_upgrades()
            .await
            .unwrap();
    });
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    c.write_all(b"ping!").await.unwrap();
    let mut echo = Vec::new();
    c.read_to_end(&mut echo).await.unwrap();
    assert_eq!(echo, b"ping!");
}

#[tokio::test]
async fn an_http10_client_is_answered_in_http10_and_closed() {
    let (port, _) = h1_server("127.0.0.1").await;
    let p = proxy(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Auto)),
    )
    .await;
    let mut s = TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(b"GET /status/201 HTTP/1.0\r\nHost: backend.mesh\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("the proxy did not close an HTTP/1.0 connection")
        .unwrap();
    assert!(out.starts_with("HTTP/1.0 201"), "{out}");
    assert!(out.ends_with("host=backend.mesh hop=false body=0"), "{out}");
}

#[tokio::test]
async fn a_hung_endpoint_is_504_after_the_request_timeout() {
    // Accepts and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = l.accept().await.unwrap();
            held.push(s);
        }
    });
    let mut spec = backend(&["127.0.0.1"], port, PortProtocol::Http);
    // The service's policy sets the timeout (the proxy's flag is the default).
    spec.policy.timeout = Duration::from_millis(300);
    let p = proxy(VIP.parse().unwrap(), Some(spec)).await;
    let mut c = h1_client(p.outbound).await;
    let started = Instant::now();
    let (status, headers, _) = get(&mut c, "/").await;
    assert_eq!(status, 504);
    assert_eq!(headers["x-weft-error"], "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The client connection stays usable.
    assert_eq!(get(&mut c, "/").await.0, 504);
    eventually("the timeouts in the metrics", async || {
        let text = scrape(&p).await;
        requests(&text, &[("status_code", "504")]) == Some(2.0)
            && prom_text::value(
                &text,
                "weft_proxy_errors_total",
                &[("reason", "request_timeout")],
            ) == Some(2.0)
    })
    .await;
}

/// An HTTP/1.1 server on `ip:port` that answers every request with 503 and counts
/// them by method.
fn always_503(l: TcpListener) -> Arc<std::sync::Mutex<BTreeMap<String, u32>>> {
    always(l, StatusCode::SERVICE_UNAVAILABLE, None)
}

/// An HTTP/1.1 server on `ip:port` that answers every request with `status` (and
/// `header`, if any) and counts them by method.
fn always(
    l: TcpListener,
    status: StatusCode,
    header: Option<(&'static str, &'static str)>,
) -> Arc<std::sync::Mutex<BTreeMap<String, u32>>> {
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let counts = counts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counts = counts.clone();
                    async move {
                        *counts
                            .lock()
                            .unwrap()
                            .entry(req.method().to_string())
                            .or_default() += 1;
                        let _ = req.into_body().collect().await;
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
                        *resp.status_mut() = status;
                        if let Some((name, value)) = header {
                            resp.headers_mut()
                                .insert(name, HeaderValue::from_static(value));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = server1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    seen
}

#[tokio::test]
async fn a_503_is_retried_elsewhere_for_a_get_never_for_a_post() {
    let mut listeners = listeners_on_one_port(&["127.0.0.2", "127.0.0.1"]).await;
    let bad = always_503(listeners.pop().unwrap());
    let (port, _) = h1_server_on(listeners.pop().unwrap());
    let mut spec = backend(&["127.0.0.1", "127.0.0.2"], port, PortProtocol::Http);
    spec.policy.circuit_breaker.consecutive_failures = 1000;
    let p = proxy(VIP.parse().unwrap(), Some(spec)).await;
    let mut c = h1_client(p.outbound).await;
    for _ in 0..4 {
        let (status, _, body) = get(&mut c, "/").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("127.0.0.2 "), "{body}");
    }
    let mut posts = BTreeMap::<u16, u32>::new();
    for _ in 0..4 {
        c.ready().await.unwrap();
        let req = Request::post("/")
            .header("host", "backend.mesh")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        *posts.entry(resp.status().as_u16()).or_default() += 1;
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(posts, BTreeMap::from([(200, 2), (503, 2)]));
    let bad = bad.lock().unwrap().clone();
    assert_eq!(bad.get("POST"), Some(&2), "POSTs reached it once each");
    // A retry advances the rotation too, so each GET met the bad one first.
    assert_eq!(
        bad.get("GET"),
        Some(&4),
        "each GET tried there, then retried"
    );
}

/// POSTs through a proxy to `backend` over 127.0.0.1 (answering like a weft sidecar
/// whose application is down: 502, `x-weft-error: connect_refused`) and 127.0.0.2
/// (well); the statuses the client saw, what 127.0.0.1 received, and the metrics.
async fn posts_with_a_dead_app_behind(meshed: &[&str]) -> (BTreeMap<u16, u32>, u32, String) {
    four_requests_with_a_failing_peer(meshed, "POST", "connect_refused").await
}

/// Four `method` requests through a proxy to `backend` over 127.0.0.1 (answering
/// every request like a weft sidecar that failed it: 502, `x-weft-error: why`) and
/// 127.0.0.2 (well); the statuses the client saw, how many 127.0.0.1 received, and
/// the proxy's metrics.
async fn four_requests_with_a_failing_peer(
    meshed: &[&str],
    method: &str,
    why: &'static str,
) -> (BTreeMap<u16, u32>, u32, String) {
    let mut listeners = listeners_on_one_port(&["127.0.0.2", "127.0.0.1"]).await;
    let dead = always(
        listeners.pop().unwrap(),
        StatusCode::BAD_GATEWAY,
        Some(("x-weft-error", why)),
    );
    let (port, _) = h1_server_on(listeners.pop().unwrap());
    let mut spec = backend(&["127.0.0.1", "127.0.0.2"], port, PortProtocol::Http);
    spec.meshed = meshed.iter().map(|a| a.parse().unwrap()).collect();
    let p = proxy(VIP.parse().unwrap(), Some(spec)).await;
    let mut c = h1_client(p.outbound).await;
    let mut statuses = BTreeMap::<u16, u32>::new();
    for _ in 0..4 {
        c.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "backend.mesh")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        *statuses.entry(resp.status().as_u16()).or_default() += 1;
        let _ = resp.into_body().collect().await;
    }
    let received = dead.lock().unwrap().get(method).copied().unwrap_or(0);
    (statuses, received, scrape(&p).await)
}

#[tokio::test]
async fn a_meshed_peer_saying_its_app_never_got_a_post_has_it_sent_elsewhere() {
    let (statuses, at_dead, metrics) = posts_with_a_dead_app_behind(&["127.0.0.1"]).await;
    assert_eq!(statuses, BTreeMap::from([(200, 4)]), "{metrics}");
    assert_eq!(at_dead, 1, "ejected at the first such answer");
    let value = |name, reason| prom_text::value(&metrics, name, &[("reason", reason)]);
    assert_eq!(
        value("weft_http_retries_total", "app_unreachable"),
        Some(1.0)
    );
    assert_eq!(
        value("weft_endpoint_ejections_total", "unreachable"),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_same_answer_from_an_unmeshed_endpoint_is_not_trusted() {
    // An application behind no sidecar could say anything: its POST answer stands.
    let (statuses, at_dead, _) = posts_with_a_dead_app_behind(&[]).await;
    assert_eq!(statuses, BTreeMap::from([(200, 2), (502, 2)]));
    assert_eq!(at_dead, 2);
}

#[tokio::test]
async fn a_meshed_peer_whose_app_reset_has_a_get_retried_not_a_post() {
    // The application received it and died: only an idempotent request goes again.
    let (gets, at_peer, metrics) =
        four_requests_with_a_failing_peer(&["127.0.0.1"], "GET", "upstream_reset").await;
    assert_eq!(gets, BTreeMap::from([(200, 4)]), "{metrics}");
    // A retry advances the rotation too, so each GET met the reset one first.
    assert_eq!(at_peer, 4, "each GET tried there, then retried elsewhere");
    assert_eq!(
        prom_text::value(&metrics, "weft_http_retries_total", &[("reason", "reset")]),
        Some(4.0)
    );
    let (posts, at_peer, _) =
        four_requests_with_a_failing_peer(&["127.0.0.1"], "POST", "upstream_reset").await;
    assert_eq!(posts, BTreeMap::from([(200, 2), (502, 2)]));
    assert_eq!(at_peer, 2);
}

#[tokio::test]
async fn an_apps_own_x_weft_error_does_not_leave_its_pod() {
    // Inbound: only the sidecar may say why a request failed; peers trust it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let _app = always(
        l,
        StatusCode::BAD_GATEWAY,
        Some(("x-weft-error", "connect_refused")),
    );
    let p = proxy(SocketAddr::from(([127, 0, 0, 1], port)), None).await;
    let mut c = h1_client(p.inbound).await;
    let (status, headers, _) = get(&mut c, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(!headers.contains_key("x-weft-error"), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_http1_with_connection_close_and_http2_with_goaway() {
    // Answers after 300 ms, over HTTP/1.1 or h2c (hyper's auto-detection is not
    // needed: the proxy speaks the client's version upstream).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut first = [0u8; 3];
                let _ = s.peek(&mut first).await;
                let svc = service_fn(|_req: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                if &first == b"PRI" {
                    let _ = server2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                } else {
                    let _ = server1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                }
            });
        }
    });
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ProxyConfig::with_ports(0, 0, 0);
    config.outbound_listen = vec![local];
    config.inbound_listen = vec![local];
    config.admin_listen = local;
    config.metrics_listen = local;
    config.drain_grace = Duration::from_secs(5);
    let bound = BoundProxy::bind(config, Arc::new(FixedOrigDst(VIP.parse().unwrap())))
        .await
        .unwrap();
    bound.routes().store(RouteTable::from_services([backend(
        &["127.0.0.1"],
        port,
        PortProtocol::Auto,
    )]));
    let outbound = bound.outbound_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    let mut h1 = h1_client(outbound).await;
    let s = TcpStream::connect(outbound).await.unwrap();
    let (mut h2, conn) =
        client2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(conn);
    // One request in flight on each when the drain begins.
    h1.ready().await.unwrap();
    let r1 = h1.send_request(
        Request::get("/")
            .header("host", "backend.mesh")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    let r2 = h2.send_request(
        Request::get("http://backend.mesh/")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    let requests = tokio::spawn(async move { (r1.await, r2.await) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    stop.send(()).unwrap();
    let (r1, r2) = requests.await.unwrap();
    let r1 = r1.unwrap();
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.headers()["connection"], "close");
    assert_eq!(r2.unwrap().status(), 200);
    // GOAWAY: the h2 connection ends once its stream is done.
    tokio::time::timeout(Duration::from_secs(2), h2_conn)
        .await
        .expect("the h2 connection closes after GOAWAY")
        .unwrap()
        .unwrap();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.abandoned, 0);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

/// Reads one HTTP/1.1 response with a content-length body from `s`; (head, body).
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Between requests an idle HTTP/1 connection is held without hyper (l7::serve),
/// once hyper has waited for a next head for `l7::head_wait::IDLE_PROBE`: it must
/// behave exactly as if hyper held it. Idle for longer than the header timeout, it
/// still answers (the header timeout runs only once a head starts); a request
/// pipelined in part behind the previous one is completed and answered; a head
/// split by a pause is answered; and a client that starts a head and stalls still
/// gets its 408 after the header timeout.
#[tokio::test]
async fn an_idle_connection_handed_back_by_hyper_serves_on_and_keeps_its_limits() {
    let (port, accepted) = h1_server("127.0.0.1").await;
    let header_timeout = Duration::from_secs(1);
    let idle = weft_proxy::l7::head_wait::IDLE_PROBE * 2;
    let p = proxy_with(
        VIP.parse().unwrap(),
        Some(backend(&["127.0.0.1"], port, PortProtocol::Http)),
        |c| c.header_read_timeout = header_timeout,
    )
    .await;
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: backend.mesh\r\n\r\n");

    let mut s = TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(req("/a").as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: still open, still answering.
    tokio::time::sleep(header_timeout + idle).await;
    s.write_all(req("/b").as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));

    // Pipelined: a whole request and the first bytes of the next in one write; the
    // connection goes idle in between (hyper has the partial head buffered).
    let second = req("/status/201");
    let (half, rest) = second.split_at(10);
    s.write_all(format!("{}{half}", req("/c")).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(idle).await;
    s.write_all(rest.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 201"));

    // A head split by a pause shorter than the header timeout, after an idle spell.
    tokio::time::sleep(idle).await;
    let third = req("/status/202");
    let (a, b) = third.split_at(7);
    s.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(idle).await;
    s.write_all(b.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 202"));

    // A head started after an idle spell and never finished: 408, then closed.
    tokio::time::sleep(idle).await;
    s.write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("closed within 5 s")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    // Everything went over one upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The 408 is counted (a slowloris flood shows in the metrics, not only in
    // `/connections`); the idle spells before it are not errors.
    eventually("the 408 counted", async || {
        prom_text::value(
            &scrape(&p).await,
            "weft_proxy_errors_total",
            &[("direction", "outbound"), ("reason", "header_read_timeout")],
        ) == Some(1.0)
    })
    .await;
    let text = scrape(&p).await;
    assert_eq!(
        prom_text::value(&text, "weft_proxy_errors_total", &[]),
        Some(1.0),
        "{text}"
    );
}
