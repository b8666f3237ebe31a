//! Tier-1 tests: a real proxy in-process on loopback, with the original destination
//! faked (no capture installed, no privilege needed).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::{BoundProxy, DrainOutcome, ProxyConfig};
use weft_runtime::prom_text;

mod common;
use common::{eventually, http_get, loopback_config};

struct Running {
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<DrainOutcome>,
}

async fn start_proxy(target: SocketAddr, grace: Duration) -> Running {
    start_proxy_with(target, grace, |_| {}).await
}

async fn start_proxy_with(
    target: SocketAddr,
    grace: Duration,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> Running {
    let mut config = loopback_config("client-svc");
    config.drain_grace = grace;
    tweak(&mut config);
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(target)))
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel();
    let running = Running {
        outbound: proxy.outbound_addrs()[0],
        inbound: proxy.inbound_addrs()[0],
        admin: proxy.admin_addr().unwrap(),
        metrics: proxy.metrics_addr().unwrap(),
        stop: Some(tx),
        done: tokio::spawn(proxy.run(async {
            let _ = rx.await;
        })),
    };
    running
}

/// A server that echoes everything until EOF, then closes.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn relays_bytes_and_reports_connection_and_metrics() {
    let upstream = echo_server().await;
    let p = start_proxy(upstream, Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(send, recv);
    assert_eq!(n.unwrap(), payload.len());
    assert!(got == payload, "echoed bytes differ");
    drop(c);

    eventually("the closed connection in /connections", async || {
        let (status, body) = http_get(p.admin, "/connections").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let conns = v["connections"].as_array().unwrap().clone();
        conns.len() == 1
            && conns[0]["state"] == "closed"
            && conns[0]["direction"] == "outbound"
            && conns[0]["original_destination"] == upstream.to_string()
            && conns[0]["bytes_from_client"] == 1_000_000
            && conns[0]["bytes_to_client"] == 1_000_000
            && conns[0]["end"] == "eof"
    })
    .await;
    let (status, metrics) = http_get(p.metrics, "/metrics").await;
    assert_eq!(status, 200);
    let edge = [
        ("direction", "outbound"),
        ("source_service", "client-svc"),
        ("destination_service", "passthrough"),
    ];
    for (series, want) in [
        ("weft_tcp_connections_opened_total", 1.0),
        ("weft_tcp_connections_closed_total", 1.0),
        ("weft_tcp_received_bytes_total", 1e6),
        ("weft_tcp_sent_bytes_total", 1e6),
    ] {
        assert_eq!(
            prom_text::value(&metrics, series, &edge),
            Some(want),
            "{series} in\n{metrics}"
        );
    }
    let active = [edge[0], edge[2]];
    assert_eq!(
        prom_text::value(&metrics, "weft_tcp_active_connections", &active),
        Some(0.0)
    );
    assert_eq!(http_get(p.metrics, "/ready").await.0, 200);
    assert_eq!(http_get(p.metrics, "/live").await.0, 200);
}

/// `--no-traffic-metrics` (for measuring what telemetry costs): traffic flows and
/// shows in /connections, no weft_* traffic series is recorded, process metrics stay.
#[tokio::test]
async fn without_traffic_metrics_nothing_is_recorded_but_traffic_flows() {
    let upstream = echo_server().await;
    let p = start_proxy_with(upstream, Duration::from_secs(5), |c| {
        c.traffic_metrics = false;
    })
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping");
    let admin = p.admin;
    eventually("the connection in /connections", async || {
        http_get(admin, "/connections")
            .await
            .1
            .contains("\"closed\"")
    })
    .await;
    let (status, page) = http_get(p.metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(!page.contains("weft_tcp_"), "{page}");
    assert!(page.contains("process_resident_memory_bytes"), "{page}");
}

#[tokio::test]
async fn half_close_lets_the_reply_through() {
    // The server reads until the client's EOF, then answers and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let p = start_proxy(upstream, Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(p.inbound).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 5 bytes");
}

#[tokio::test]
async fn upstream_reset_reaches_the_client_as_a_reset() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.readable().await.unwrap();
        let _ = s.try_read(&mut buf);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let p = start_proxy(upstream, Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = Vec::new();
    let err = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .expect("client hung instead of seeing the reset")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refused_upstream_resets_client_and_counts_error() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = unused.local_addr().unwrap();
    drop(unused);
    let p = start_proxy(upstream, Duration::from_secs(5)).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .expect("client hung");
    assert!(res.is_err(), "expected a reset, got {res:?}");
    let (_, metrics) = http_get(p.metrics, "/metrics").await;
    let reason = [("direction", "outbound"), ("reason", "connect_refused")];
    assert_eq!(
        prom_text::value(&metrics, "weft_proxy_errors_total", &reason),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_to_the_listener_itself_is_refused_as_a_loop() {
    // Fake capture that says every connection was headed to the proxy's own inbound
    // listener: forwarding would dial ourselves forever.
    let placeholder = "127.0.0.1:9".parse().unwrap();
    let p = start_proxy(placeholder, Duration::from_secs(5)).await;
    drop(p);
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ProxyConfig::with_ports(0, 0, 0);
    let l = std::net::TcpListener::bind(local).unwrap();
    let fixed_port = l.local_addr().unwrap();
    drop(l);
    config.outbound_listen = vec![fixed_port];
    config.inbound_listen = vec![local];
    config.admin_listen = local;
    config.metrics_listen = local;
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(fixed_port)))
        .await
        .unwrap();
    let metrics = proxy.metrics_addr().unwrap();
    tokio::spawn(proxy.run(std::future::pending()));
    let mut c = TcpStream::connect(fixed_port).await.unwrap();
    let mut buf = Vec::new();
    assert!(c.read_to_end(&mut buf).await.is_err());
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        prom_text::value(&text, "weft_proxy_errors_total", &[("reason", "loop")]),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn drain_finishes_open_connections_and_stops_accepting() {
    let upstream = echo_server().await;
    let mut p = start_proxy(upstream, Duration::from_secs(10)).await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).await.unwrap();

    p.stop.take().unwrap().send(()).unwrap();
    eventually("/ready to turn 503", async || {
        http_get(p.metrics, "/ready").await.0 == 503
    })
    .await;
    // New connections are no longer accepted...
    let refused = TcpStream::connect(p.outbound).await;
    assert!(refused.is_err(), "listener still accepting during drain");
    // ...while the open one keeps working until it ends.
    c.write_all(b"during").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    // The drain does not end while the connection is open (given a while to do so
    // wrongly: its connection permit released early, it would end at once).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut p.done)
            .await
            .is_err(),
        "the drain ended with a connection still open"
    );
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), &mut p.done)
        .await
        .expect("drain did not end after the last connection closed")
        .unwrap();
    assert_eq!(outcome, DrainOutcome { abandoned: 0 });
}

#[tokio::test]
async fn drain_gives_up_after_the_grace_period() {
    let upstream = echo_server().await;
    let mut p = start_proxy(upstream, Duration::from_millis(200)).await;
    let _idle = TcpStream::connect(p.outbound).await.unwrap();
    eventually("the connection to be live", async || {
        http_get(p.admin, "/connections")
            .await
            .1
            .contains("\"open\"")
    })
    .await;
    p.stop.take().unwrap().send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), &mut p.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, DrainOutcome { abandoned: 1 });
}

/// The end `/connections` shows for the proxy's only connection, once closed.
async fn closed_end(admin: SocketAddr) -> String {
    let mut end = String::new();
    eventually("the closed connection in /connections", async || {
        let (_, body) = http_get(admin, "/connections").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let conns = v["connections"].as_array().unwrap().clone();
        match conns.as_slice() {
            [c] if c["state"] == "closed" => {
                end = c["end"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        }
    })
    .await;
    end
}

/// `weft_proxy_errors_total` for outbound passthrough with `reason`.
async fn errors_counted(metrics: SocketAddr, reason: &str) -> Option<f64> {
    let (_, page) = http_get(metrics, "/metrics").await;
    let labels = [
        ("direction", "outbound"),
        ("destination_service", "passthrough"),
        ("reason", reason),
    ];
    prom_text::value(&page, "weft_proxy_errors_total", &labels)
}

/// A server that accepts and then neither reads nor writes nor closes, until the
/// test ends; what it saw last (EOF, a reset) it sends on `seen`.
async fn silent_server() -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Read only to learn how the proxy left: never answer, never close.
        let mut buf = Vec::new();
        let seen = match s.read_to_end(&mut buf).await {
            Ok(_) => "eof".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        };
        let _ = tx.send(seen).await;
        std::future::pending::<()>().await;
    });
    (addr, rx)
}

#[tokio::test]
async fn an_idle_opaque_connection_is_closed_after_the_idle_timeout_and_counted() {
    let (upstream, mut seen) = silent_server().await;
    let p = start_proxy_with(upstream, Duration::from_secs(5), |c| {
        c.tcp_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    // Nothing more either way: the proxy resets both sides.
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("the idle connection was never closed");
    assert!(res.is_err(), "expected a reset, got {res:?}");
    assert_eq!(seen.recv().await.unwrap(), "ConnectionReset");
    assert_eq!(closed_end(p.admin).await, "idle_timeout");
    assert_eq!(
        errors_counted(p.metrics, "tcp_idle_timeout").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_half_closed_connection_whose_peer_never_finishes_is_closed_and_counted() {
    let (upstream, mut seen) = silent_server().await;
    let p = start_proxy_with(upstream, Duration::from_secs(5), |c| {
        c.half_close_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    // The server saw the half-close, then the reset when the bound fired.
    assert_eq!(seen.recv().await.unwrap(), "eof");
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("the half-closed connection was never closed");
    assert!(res.is_err(), "expected a reset, got {res:?}");
    assert_eq!(closed_end(p.admin).await, "half_close_timeout");
    assert_eq!(
        errors_counted(p.metrics, "half_close_timeout").await,
        Some(1.0)
    );
    assert_eq!(errors_counted(p.metrics, "tcp_idle_timeout").await, None);
}

#[tokio::test]
async fn a_half_closed_connection_lives_while_bytes_flow() {
    // After the client's half-close the server streams for several half-close
    // timeouts, a chunk at a time, then closes: nothing is cut.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        for _ in 0..12 {
            s.write_all(&[7u8; 100]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.shutdown().await.unwrap();
    });
    let p = start_proxy_with(upstream, Duration::from_secs(5), |c| {
        c.half_close_timeout = Duration::from_millis(300);
        c.tcp_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = TcpStream::connect(p.outbound).await.unwrap();
    c.write_all(b"download").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 1200);
    assert_eq!(closed_end(p.admin).await, "eof");
    assert_eq!(errors_counted(p.metrics, "half_close_timeout").await, None);
}
