//! Tier-1 tests of the tunnel (ARCHITECTURE.md, Packet path: the tunnel): proxies on
//! loopback addresses, a client proxy whose opaque connections to a meshed
//! service's endpoints are dialled through the server proxies' tunnel listeners.
//! The endpoints' addresses are 127.0.0.2 and 127.0.0.3; only 127.0.0.3's
//! application listens.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::routes::{PortProtocol, RouteTable, ServicePort, ServiceSpec};
use weft_proxy::BoundProxy;
use weft_runtime::prom_text;

mod common;
use common::{eventually, http_get, loopback_config};

const VIP: &str = "10.96.0.10:80";

/// A server proxy of `backend` whose tunnel listens on `ip:tunnel_port`: (metrics,
/// admin).
async fn server_proxy(ip: &str, tunnel_port: u16) -> (SocketAddr, SocketAddr) {
    let mut config = loopback_config("backend");
    config.tunnel_listen = vec![SocketAddr::new(ip.parse().unwrap(), tunnel_port)];
    config.tunnel_port = tunnel_port;
    // Its capture listeners see nothing here.
    let unused = "127.0.0.1:9".parse().unwrap();
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(unused)))
        .await
        .unwrap();
    let addrs = (proxy.metrics_addr().unwrap(), proxy.admin_addr().unwrap());
    tokio::spawn(proxy.run(std::future::pending()));
    addrs
}

/// A client proxy routing [`VIP`] to `backend` (both endpoints meshed, target port
/// `app_port`, declared `protocol`), dialling tunnels on `tunnel_port`: (outbound,
/// metrics).
async fn client_proxy(
    tunnel_port: u16,
    app_port: u16,
    protocol: PortProtocol,
) -> (SocketAddr, SocketAddr) {
    let mut config = loopback_config("frontend");
    config.tunnel_port = tunnel_port;
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(VIP.parse().unwrap())))
        .await
        .unwrap();
    let endpoints: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
    proxy
        .routes()
        .store(RouteTable::from_services([ServiceSpec {
            name: "backend".into(),
            vip: "10.96.0.10".parse().unwrap(),
            ports: vec![ServicePort {
                port: 80,
                target_port: app_port,
                protocol,
            }],
            meshed: endpoints.clone(),
            identities: Vec::new(),
            endpoints,
            withheld: Vec::new(),
            mtls: Default::default(),
            authorization: Vec::new(),
            policy: weft_proxy::policy::Policy::default(),
        }]));
    let addrs = (proxy.outbound_addrs()[0], proxy.metrics_addr().unwrap());
    tokio::spawn(proxy.run(std::future::pending()));
    addrs
}

/// 127.0.0.3's application: writes `banner` (if any) on accept, then echoes.
async fn app(banner: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn metrics(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom_text::value(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_dead_apps_refusal_sends_the_connection_to_another_endpoint() {
    let app_port = app(b"").await;
    let tunnel_port = common::port_free_on(&["127.0.0.2", "127.0.0.3"]);
    let (dead_metrics, _) = server_proxy("127.0.0.2", tunnel_port).await;
    let (live_metrics, live_admin) = server_proxy("127.0.0.3", tunnel_port).await;
    let (outbound, client_metrics) = client_proxy(tunnel_port, app_port, PortProtocol::Tcp).await;

    // Round robin tries 127.0.0.2 first: its sidecar answers that nothing listens.
    let mut c = TcpStream::connect(outbound).await.unwrap();
    c.write_all(b"hello\n").await.unwrap();
    let mut echo = [0u8; 6];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello\n");
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();

    let text = metrics(client_metrics).await;
    let service = ("destination_service", "backend");
    assert_eq!(
        metric(
            &text,
            "weft_tcp_connect_retries_total",
            &[service, ("reason", "app_unreachable")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "weft_endpoint_ejections_total",
            &[service, ("reason", "unreachable")]
        ),
        1.0,
        "{text}"
    );
    // The dead replica's sidecar counted an inbound connection its app refused, as
    // for a redirected one.
    let text = metrics(dead_metrics).await;
    let inbound = ("direction", "inbound");
    assert_eq!(
        metric(
            &text,
            "weft_proxy_errors_total",
            &[inbound, ("reason", "connect_refused")]
        ),
        1.0,
        "{text}"
    );
    // The live one: an inbound connection to its app's port, bytes counted, in
    // `/connections` as a redirected one is.
    let want = format!("127.0.0.3:{app_port}");
    let mut row = Value::Null;
    eventually("the tunnelled connection closed", async || {
        let (_, body) = http_get(live_admin, "/connections").await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        row = doc["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["original_destination"] == want.as_str())
            .cloned()
            .unwrap_or(Value::Null);
        row["state"] == "closed"
    })
    .await;
    assert_eq!(row["direction"], "inbound", "{row}");
    assert_eq!(row["protocol"], "tcp", "{row}");
    assert_eq!(row["end"], "eof", "{row}");
    assert_eq!(
        (&row["bytes_from_client"], &row["bytes_to_client"]),
        (&Value::from(6), &Value::from(6)),
        "the answer is not the app's bytes: {row}"
    );
    let text = metrics(live_metrics).await;
    for name in [
        "weft_tcp_connections_opened_total",
        "weft_tcp_connections_closed_total",
    ] {
        assert_eq!(metric(&text, name, &[inbound]), 1.0, "{name}: {text}");
    }
    assert_eq!(
        metric(&text, "weft_tcp_received_bytes_total", &[inbound]),
        6.0
    );
}

#[tokio::test]
async fn a_banner_comes_through_the_tunnel_to_a_silent_client() {
    let app_port = app(b"220 ready\r\n").await;
    let tunnel_port = common::port_free_on(&["127.0.0.2", "127.0.0.3"]);
    server_proxy("127.0.0.2", tunnel_port).await;
    server_proxy("127.0.0.3", tunnel_port).await;
    // `auto`: the client says nothing, so the upstream is dialled speculatively and
    // the banner makes the connection opaque.
    let (outbound, _) = client_proxy(tunnel_port, app_port, PortProtocol::Auto).await;
    let mut c = TcpStream::connect(outbound).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut banner))
        .await
        .expect("the banner came")
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    c.write_all(b"QUIT\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"QUIT\r\n");
}

#[tokio::test]
async fn garbage_on_the_tunnel_port_is_closed_and_counted() {
    let tunnel_port = common::port_free_on(&["127.0.0.2", "127.0.0.3"]);
    let (metrics_addr, _) = server_proxy("127.0.0.2", tunnel_port).await;
    let mut c = TcpStream::connect(("127.0.0.2", tunnel_port))
        .await
        .unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // A reset (the request was left unread) or an end of stream: nothing answered.
    let _ = c.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
    let mut text = String::new();
    eventually("the refusal counted", async || {
        text = metrics(metrics_addr).await;
        metric(
            &text,
            "weft_proxy_errors_total",
            &[("direction", "inbound"), ("reason", "bad_tunnel_preface")],
        ) == 1.0
    })
    .await;
}
