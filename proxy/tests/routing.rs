//! Tier-1 tests of service routing: an original destination that is a service VIP
//! goes round robin over the service's endpoints (target port applied); a service
//! without endpoints is refused at once and counted.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::routes::{PortProtocol, RouteTable, ServicePort, ServiceSpec};
use weft_proxy::BoundProxy;
use weft_runtime::prom_text;

mod common;
use common::loopback_config;

/// A server on `ip:port` answering every connection with its own address.
async fn named_server(ip: &str, port: u16) -> u16 {
    let l = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port))
        .await
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let me = ip.to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let me = me.clone();
            tokio::spawn(async move {
                let _ = s.write_all(me.as_bytes()).await;
            });
        }
    });
    port
}

async fn proxy_to(vip: SocketAddr, spec: ServiceSpec) -> (SocketAddr, SocketAddr) {
    let config = loopback_config("frontend");
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(vip)))
        .await
        .unwrap();
    proxy.routes().store(RouteTable::from_services([spec]));
    let addrs = (proxy.outbound_addrs()[0], proxy.metrics_addr().unwrap());
    tokio::spawn(proxy.run(std::future::pending()));
    addrs
}

fn backend(endpoints: &[&str], target_port: u16) -> ServiceSpec {
    ServiceSpec {
        name: "backend".into(),
        vip: "10.96.0.10".parse().unwrap(),
        ports: vec![ServicePort {
            port: 80,
            target_port,
            protocol: PortProtocol::Tcp,
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

#[tokio::test]
async fn nine_connections_land_three_per_endpoint() {
    let port = named_server("127.0.0.1", 0).await;
    named_server("127.0.0.2", port).await;
    named_server("127.0.0.3", port).await;
    let vip = "10.96.0.10:80".parse().unwrap();
    let (outbound, metrics) =
        proxy_to(vip, backend(&["127.0.0.1", "127.0.0.2", "127.0.0.3"], port)).await;
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..9 {
        let mut c = TcpStream::connect(outbound).await.unwrap();
        let mut who = String::new();
        c.read_to_string(&mut who).await.unwrap();
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        [
            ("127.0.0.1".into(), 3),
            ("127.0.0.2".into(), 3),
            ("127.0.0.3".into(), 3)
        ]
    );
    let text = scrape(metrics).await;
    let edge = [
        ("source_service", "frontend"),
        ("destination_service", "backend"),
    ];
    assert_eq!(
        prom_text::value(&text, "weft_tcp_connections_opened_total", &edge),
        Some(9.0)
    );
}

#[tokio::test]
async fn a_service_without_endpoints_is_refused_and_counted() {
    let vip = "10.96.0.10:80".parse().unwrap();
    let (outbound, metrics) = proxy_to(vip, backend(&[], 8080)).await;
    let mut c = TcpStream::connect(outbound).await.unwrap();
    let mut buf = Vec::new();
    assert!(c.read_to_end(&mut buf).await.is_err(), "expected a reset");
    let text = scrape(metrics).await;
    let want = [
        ("destination_service", "backend"),
        ("reason", "no_endpoints"),
    ];
    assert_eq!(
        prom_text::value(&text, "weft_proxy_errors_total", &want),
        Some(1.0),
        "{text}"
    );
}

async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
