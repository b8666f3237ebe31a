//! Tier-1 tests of the discovery client against an in-process gRPC controller that
//! speaks the real API: /ready waits for the first snapshot, updates re-route new
//! connections, and the last known routes keep serving while the controller is gone
//! until a restarted controller's snapshot replaces them. Along the way, the admin
//! `/routes` and the `weft_discovery_*` metrics report what was applied.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use weft_api::discovery::{
    DrainRequest, DrainResponse, Endpoint, MeshUpdate, Protocol, Service, ServicePort, WatchRequest,
};
use weft_api::{Discovery, DiscoveryServer};
use weft_proxy::discovery::DiscoveryConfig;
use weft_proxy::orig_dst::FixedOrigDst;
use weft_proxy::{BoundProxy, ProxyConfig};
use weft_runtime::prom_text;

mod common;
use common::{eventually_within, http_get, loopback_config};

type UpdateStream = Pin<Box<dyn Stream<Item = Result<MeshUpdate, Status>> + Send>>;

/// A controller whose every subscriber gets `snapshot`, then whatever the test
/// pushes on the returned channel.
struct FakeController {
    snapshot: MeshUpdate,
    subscribers: mpsc::UnboundedSender<mpsc::Sender<Result<MeshUpdate, Status>>>,
    /// Every drain announcement received.
    drains: mpsc::UnboundedSender<DrainRequest>,
}

#[tonic::async_trait]
impl Discovery for FakeController {
    type WatchStream = UpdateStream;
    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<UpdateStream>, Status> {
        assert_eq!(req.get_ref().service, "frontend");
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(self.snapshot.clone())).await.unwrap();
        let _ = self.subscribers.send(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    // An older controller: no acknowledged stream, so the proxy falls back to Watch.
    type SubscribeStream = UpdateStream;
    async fn subscribe(
        &self,
        _: Request<tonic::Streaming<weft_api::discovery::SubscribeRequest>>,
    ) -> Result<Response<UpdateStream>, Status> {
        Err(Status::unimplemented("no Subscribe here"))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainResponse>, Status> {
        let _ = self.drains.send(req.into_inner());
        Ok(Response::new(DrainResponse {}))
    }
}

async fn start_controller(
    listener: TcpListener,
    snapshot: MeshUpdate,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<mpsc::Sender<Result<MeshUpdate, Status>>>,
    mpsc::UnboundedReceiver<DrainRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (drains, drained) = mpsc::unbounded_channel();
    let svc = DiscoveryServer::new(FakeController {
        snapshot,
        subscribers: tx,
        drains,
    });
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (task, rx, drained)
}

fn backend(endpoint: &str, port: u16, version: u64) -> MeshUpdate {
    MeshUpdate {
        epoch: 1,
        more: false,
        trust_bundle_pem: String::new(),
        full_snapshot: true,
        services: vec![Service {
            name: "backend".into(),
            vip: "10.96.0.10".into(),
            ports: vec![ServicePort {
                port: 80,
                target_port: port.into(),
                protocol: Protocol::Tcp.into(),
            }],
            endpoints: vec![Endpoint {
                address: endpoint.into(),
                name: String::new(),
                meshed: false,
                identity: String::new(),
            }],
            policy: None,
            withheld: vec![],
            mtls: Default::default(),
            authorization: Vec::new(),
        }],
        removed: vec![],
        version,
    }
}

/// A `frontend` proxy on loopback subscribed to the controller at `ctl_addr`, whose
/// captured connections all "were headed" to the `backend` VIP.
async fn frontend_proxy(
    ctl_addr: SocketAddr,
    proxy_id: &str,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> BoundProxy {
    let mut config = loopback_config("frontend");
    config.discovery = Some(DiscoveryConfig {
        identity: false,
        controller: format!("http://{ctl_addr}"),
        service: "frontend".into(),
        proxy_id: proxy_id.into(),
        token_file: None,
        max_services: weft_proxy::discovery::DEFAULT_MAX_SERVICES,
    });
    tweak(&mut config);
    let vip = "10.96.0.10:80".parse().unwrap();
    BoundProxy::bind(config, Arc::new(FixedOrigDst(vip)))
        .await
        .unwrap()
}

async fn named_server(ip: &str, port: u16) -> u16 {
    let l = TcpListener::bind(format!("{ip}:{port}")).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let me = ip.to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(me.as_bytes()).await;
        }
    });
    port
}

async fn who(outbound: SocketAddr) -> String {
    let mut c = TcpStream::connect(outbound).await.unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s).await;
    s
}

async fn get(addr: SocketAddr, path: &str) -> u16 {
    http_get(addr, path).await.0
}

/// The admin `/routes` document.
async fn routes(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/routes").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A metric's value on `/metrics` (summed over label sets), if exported.
async fn metric(metrics: SocketAddr, name: &str) -> Option<f64> {
    prom_text::value(&http_get(metrics, "/metrics").await.1, name, &[])
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The endpoints `/routes` lists for `vip_port`.
fn endpoints_of(doc: &serde_json::Value, vip_port: &str) -> Vec<String> {
    doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["routes"].as_array().unwrap())
        .filter(|r| r["vip_port"] == vip_port)
        .flat_map(|r| r["endpoints"].as_array().unwrap())
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn follows_the_controller_and_survives_its_absence() {
    let port = common::port_free_on(&["127.0.0.1", "127.0.0.2"]);
    named_server("127.0.0.1", port).await;
    named_server("127.0.0.2", port).await;
    let ctl_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ctl_addr = ctl_listener.local_addr().unwrap();

    let proxy = frontend_proxy(ctl_addr, "test", |_| {}).await;
    let outbound = proxy.outbound_addrs()[0];
    let metrics = proxy.metrics_addr().unwrap();
    let admin = proxy.admin_addr().unwrap();
    tokio::spawn(proxy.run(std::future::pending()));

    // No controller yet: not ready, and the VIP is passthrough (nothing listens there).
    assert_eq!(get(metrics, "/ready").await, 503);
    assert_eq!(get(metrics, "/ready/proxy").await, 503);
    assert_eq!(get(metrics, "/live").await, 200);
    let doc = routes(admin).await;
    let d = &doc["discovery"];
    assert_eq!(d["controller"], format!("http://{ctl_addr}"), "{doc}");
    assert_eq!(
        (
            &d["connected"],
            &d["synced"],
            &d["version"],
            &d["updates_applied"]
        ),
        (
            &false.into(),
            &false.into(),
            &serde_json::Value::Null,
            &0.into()
        ),
        "{doc}"
    );
    assert_eq!(doc["services"], serde_json::json!([]), "{doc}");
    assert_eq!(metric(metrics, "weft_discovery_connected").await, Some(0.0));
    assert_eq!(
        metric(metrics, "weft_discovery_updates_total").await,
        Some(0.0)
    );

    let before_v1 = unix_ms();
    let (ctl, mut subs, _drains) =
        start_controller(ctl_listener, backend("127.0.0.1", port, 1)).await;
    eventually_within(
        "ready after the first snapshot",
        Duration::from_secs(5),
        async || get(metrics, "/ready").await == 200,
    )
    .await;
    // No app port to check: this host is no endpoint of the proxy's service.
    assert_eq!(get(metrics, "/ready/proxy").await, 200);
    assert_eq!(who(outbound).await, "127.0.0.1");
    let doc = routes(admin).await;
    let d = &doc["discovery"];
    assert_eq!(
        (
            &d["connected"],
            &d["synced"],
            &d["version"],
            &d["updates_applied"]
        ),
        (&true.into(), &true.into(), &1.into(), &1.into()),
        "{doc}"
    );
    let applied_v1 = d["applied_at_unix_ms"].as_u64().unwrap();
    assert!((before_v1..=unix_ms()).contains(&applied_v1), "{doc}");
    assert_eq!(doc["services"][0]["name"], "backend", "{doc}");
    assert_eq!(doc["services"][0]["routes"][0]["protocol"], "tcp", "{doc}");
    assert_eq!(
        endpoints_of(&doc, "10.96.0.10:80"),
        [format!("127.0.0.1:{port}")]
    );
    assert_eq!(metric(metrics, "weft_discovery_connected").await, Some(1.0));
    assert_eq!(
        metric(metrics, "weft_discovery_updates_total").await,
        Some(1.0)
    );

    // An incremental update re-routes new connections.
    let sub = subs.recv().await.unwrap();
    let mut moved = backend("127.0.0.2", port, 2);
    moved.full_snapshot = false;
    sub.send(Ok(moved)).await.unwrap();
    eventually_within("the update to apply", Duration::from_secs(5), async || {
        who(outbound).await == "127.0.0.2"
    })
    .await;
    let doc = routes(admin).await;
    assert_eq!(doc["discovery"]["version"], 2, "{doc}");
    assert_eq!(doc["discovery"]["updates_applied"], 2, "{doc}");
    let applied_v2 = doc["discovery"]["applied_at_unix_ms"].as_u64().unwrap();
    assert!(applied_v2 >= applied_v1, "{doc}");
    assert_eq!(
        endpoints_of(&doc, "10.96.0.10:80"),
        [format!("127.0.0.2:{port}")]
    );
    assert_eq!(
        metric(metrics, "weft_discovery_updates_total").await,
        Some(2.0)
    );

    // Controller gone: the last known routes keep serving, readiness stays.
    ctl.abort();
    let _ = ctl.await;
    drop(sub);
    for _ in 0..3 {
        assert_eq!(who(outbound).await, "127.0.0.2");
    }
    assert_eq!(get(metrics, "/ready").await, 200);
    eventually_within(
        "the disconnection reported",
        Duration::from_secs(5),
        async || metric(metrics, "weft_discovery_connected").await == Some(0.0),
    )
    .await;
    let doc = routes(admin).await;
    let d = &doc["discovery"];
    assert_eq!(
        (&d["connected"], &d["synced"]),
        (&false.into(), &true.into())
    );
    assert!(d["last_error"].is_string(), "{doc}");
    assert_eq!(d["version"], 2, "the last known version is kept: {doc}");
    assert_eq!(d["applied_at_unix_ms"], applied_v2, "{doc}");
    assert_eq!(
        endpoints_of(&doc, "10.96.0.10:80"),
        [format!("127.0.0.2:{port}")]
    );

    // A restarted controller with a changed state: its snapshot replaces ours.
    let listener = TcpListener::bind(ctl_addr).await.unwrap();
    let (_ctl2, _subs2, _drains2) = start_controller(listener, backend("127.0.0.1", port, 1)).await;
    eventually_within(
        "the new controller's snapshot",
        Duration::from_secs(5),
        async || who(outbound).await == "127.0.0.1",
    )
    .await;
    let doc = routes(admin).await;
    let d = &doc["discovery"];
    assert_eq!(
        (&d["connected"], &d["version"], &d["updates_applied"]),
        (&true.into(), &1.into(), &3.into()),
        "{doc}"
    );
    assert_eq!(metric(metrics, "weft_discovery_connected").await, Some(1.0));
    assert_eq!(
        metric(metrics, "weft_discovery_updates_total").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn without_a_controller_routes_shows_an_empty_table_and_no_discovery_metrics() {
    // The service name `with_ports` gives.
    let config = loopback_config("unknown");
    let vip = "10.96.0.10:80".parse().unwrap();
    let proxy = BoundProxy::bind(config, Arc::new(FixedOrigDst(vip)))
        .await
        .unwrap();
    let (admin, metrics) = (proxy.admin_addr().unwrap(), proxy.metrics_addr().unwrap());
    tokio::spawn(proxy.run(std::future::pending()));

    let doc = routes(admin).await;
    assert_eq!(
        doc,
        serde_json::json!({
            "discovery": {
                "controller": null,
                "connected": false,
                "synced": true,
                "epoch": null,
                "version": null,
                "applied_at_unix_ms": null,
                "updates_applied": 0,
                "updates_rejected": 0,
                "last_error": null,
                "last_rejection": null,
            },
            "services": [],
        })
    );
    let text = http_get(metrics, "/metrics").await.1;
    assert!(!text.contains("weft_discovery_"), "{text}");
}

#[tokio::test]
async fn a_draining_proxy_tells_the_controller_and_keeps_serving_through_the_delay() {
    let port = named_server("127.0.0.1", 0).await;
    let ctl_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ctl_addr = ctl_listener.local_addr().unwrap();
    let (_ctl, _subs, mut drains) =
        start_controller(ctl_listener, backend("127.0.0.1", port, 1)).await;

    let proxy = frontend_proxy(ctl_addr, "draining-test", |c| {
        c.drain_delay = Duration::from_millis(600)
    })
    .await;
    let outbound = proxy.outbound_addrs()[0];
    let metrics = proxy.metrics_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(proxy.run(async {
        let _ = stopped.await;
    }));
    eventually_within("ready", Duration::from_secs(5), async || {
        get(metrics, "/ready").await == 200
    })
    .await;
    assert_eq!(who(outbound).await, "127.0.0.1");

    stop.send(()).unwrap();
    let told = tokio::time::timeout(Duration::from_secs(2), drains.recv())
        .await
        .expect("the controller is told at once")
        .expect("a drain request");
    assert_eq!(told.proxy_id, "draining-test");
    // Announced: not ready, but still accepting and carrying connections.
    assert_eq!(get(metrics, "/ready").await, 503);
    assert_eq!(get(metrics, "/ready/proxy").await, 503);
    assert_eq!(who(outbound).await, "127.0.0.1");
    assert!(!run.is_finished(), "still in the drain delay");

    let outcome = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("drained after the delay")
        .unwrap();
    assert_eq!(outcome.abandoned, 0);
    assert!(
        TcpStream::connect(outbound).await.is_err(),
        "no longer accepting"
    );
}
