//! What the proxy's in-process tests share: a configuration with every listener on
//! loopback at a free port, waiting (bounded) for something the proxy records just
//! after the client sees it, and a raw `GET` of the proxy's own endpoints.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use weft_proxy::ProxyConfig;

/// A configuration for `service` whose listeners (outbound, inbound, admin, metrics)
/// are all on 127.0.0.1 at ports the kernel picks.
pub fn loopback_config(service: &str) -> ProxyConfig {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ProxyConfig::with_ports(0, 0, 0);
    config.service = service.into();
    config.outbound_listen = vec![local];
    config.inbound_listen = vec![local];
    config.admin_listen = local;
    config.metrics_listen = local;
    config
}

/// Waits up to 2 s until `f` holds; proxies record a connection's close just after
/// the client sees it.
pub async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_within(what, Duration::from_secs(2), f).await
}

/// Waits up to `limit` until `f` holds, checking every 10 ms.
pub async fn eventually_within(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let tries = limit.as_millis() / 10;
    for _ in 0..tries {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The whole answer (head and body) to `GET path` on a fresh connection to `addr`.
pub async fn http_get_raw(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Status code and body of `GET path` on a fresh connection to `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let out = http_get_raw(addr, path).await;
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A port free on every one of `ips` (loopback addresses) right now: taken on all
/// at once, then let go for the caller to bind. A port free on one address may be
/// taken on another (a concurrent test's socket): then another one is tried.
pub fn port_free_on(ips: &[&str]) -> u16 {
    'port: for _ in 0..100 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut held = vec![first];
        for ip in &ips[1..] {
            match std::net::TcpListener::bind((*ip, port)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'port,
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}
