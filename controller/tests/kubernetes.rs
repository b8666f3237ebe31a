//! In-process: the Kubernetes source's mapping and cache, fed recorded API server
//! responses — a ServiceList and an EndpointSliceList as `GET /api/v1/services` and
//! `GET /apis/discovery.k8s.io/v1/endpointslices` return them, then watch events
//! (`{"type": "MODIFIED", "object": ...}`) for an endpoint's readiness change and a
//! Service's deletion — and what a subscribed proxy receives through the real
//! controller (merge, state, gRPC). No API server runs here; `KubernetesSource`
//! feeds kube's watcher events into the same `Cache` this test feeds.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_api::discovery::{MeshUpdate, Protocol as PbProtocol, WatchRequest};
use weft_api::DiscoveryClient;
use weft_controller::error::ConfigError;
use weft_controller::health::Defaults;
use weft_controller::kubernetes::{map, Cache};
use weft_controller::model::{Protocol, SourceKind};
use weft_controller::source::{Contribution, DynSource, Source};
use weft_controller::Controller;

const IN_TIME: Duration = Duration::from_secs(2);

/// `GET /api/v1/services` (trimmed of managedFields), as a 1.30 API server answers.
fn service_list() -> Value {
    json!({
      "kind": "ServiceList", "apiVersion": "v1",
      "metadata": { "resourceVersion": "48213" },
      "items": [
        {
          "metadata": { "name": "web", "namespace": "shop", "uid": "9b1c", "resourceVersion": "47001",
                        "labels": { "app": "web" } },
          "spec": {
            "ports": [
              { "name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80, "targetPort": "http" },
              { "name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090 },
              { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53 }
            ],
            "selector": { "app": "web" },
            "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
            "type": "ClusterIP", "sessionAffinity": "None",
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "internalTrafficPolicy": "Cluster"
          },
          "status": { "loadBalancer": {} }
        },
        {
          "metadata": { "name": "db", "namespace": "shop", "uid": "1d2e", "resourceVersion": "47100",
                        "annotations": { "weft.dev/mtls": "strict",
                                         "weft.dev/authorization": "[{port: 5432, allow: [{service: web.shop}]}]" } },
          "spec": {
            "ports": [ { "protocol": "TCP", "port": 5432, "targetPort": 5432 } ],
            "selector": { "app": "db" },
            "clusterIP": "fd00:96::30", "clusterIPs": ["fd00:96::30"],
            "type": "ClusterIP", "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"
          },
          "status": { "loadBalancer": {} }
        },
        {
          "metadata": { "name": "web-headless", "namespace": "shop", "uid": "77aa" },
          "spec": {
            "ports": [ { "name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080 } ],
            "selector": { "app": "web" }, "clusterIP": "None", "clusterIPs": ["None"], "type": "ClusterIP"
          },
          "status": { "loadBalancer": {} }
        },
        {
          "metadata": { "name": "upstream", "namespace": "shop", "uid": "88bb" },
          "spec": { "type": "ExternalName", "externalName": "api.example.org" },
          "status": { "loadBalancer": {} }
        },
        {
          "metadata": { "name": "kube-dns", "namespace": "kube-system", "uid": "99cc" },
          "spec": {
            "ports": [
              { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53 },
              { "name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53 }
            ],
            "selector": { "k8s-app": "kube-dns" }, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP"
          },
          "status": { "loadBalancer": {} }
        }
      ]
    })
}

fn web_v4_slice(ready_5: bool, ready_7: bool) -> Value {
    json!({
      "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
      "metadata": {
        "name": "web-x7k2p", "generateName": "web-", "namespace": "shop", "uid": "e1",
        "resourceVersion": "48001",
        "labels": { "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "kubernetes.io/service-name": "web" },
        "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "9b1c",
                              "controller": true, "blockOwnerDeletion": true }]
      },
      "addressType": "IPv4",
      "endpoints": [
        { "addresses": ["10.244.1.5"], "conditions": { "ready": ready_5, "serving": ready_5, "terminating": false },
          "nodeName": "node-1", "zone": "a", "targetRef": { "kind": "Pod", "namespace": "shop", "name": "web-5f7-abcde", "uid": "p1" } },
        { "addresses": ["10.244.2.7"], "conditions": { "ready": ready_7, "serving": ready_7, "terminating": false },
          "nodeName": "node-2", "targetRef": { "kind": "Pod", "namespace": "shop", "name": "web-5f7-fghij", "uid": "p2" } },
        { "addresses": ["10.244.3.9"], "conditions": {},
          "nodeName": "node-3", "targetRef": { "kind": "Pod", "namespace": "shop", "name": "web-5f7-klmno", "uid": "p3" } }
      ],
      "ports": [
        { "name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http" },
        { "name": "metrics", "protocol": "TCP", "port": 9090 },
        { "name": "dns", "protocol": "UDP", "port": 53 }
      ]
    })
}

/// `GET /apis/discovery.k8s.io/v1/endpointslices`.
fn slice_list() -> Value {
    json!({
      "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
      "metadata": { "resourceVersion": "48213" },
      "items": [
        web_v4_slice(true, false),
        {
          "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
          "metadata": { "name": "web-v6-q9w8e", "namespace": "shop", "uid": "e2",
                        "labels": { "kubernetes.io/service-name": "web" } },
          "addressType": "IPv6",
          "endpoints": [ { "addresses": ["fd00:244::105"], "conditions": { "ready": true } } ],
          "ports": [ { "name": "http", "protocol": "TCP", "port": 8080 }, { "name": "metrics", "protocol": "TCP", "port": 9090 } ]
        },
        {
          "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
          "metadata": { "name": "db-a1b2c", "namespace": "shop", "uid": "e3",
                        "labels": { "kubernetes.io/service-name": "db" } },
          "addressType": "IPv6",
          "endpoints": [ { "addresses": ["fd00:244::7"], "conditions": { "ready": true } } ],
          "ports": [ { "name": "", "protocol": "TCP", "port": 5432 } ]
        },
        {
          "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
          "metadata": { "name": "kube-dns-zzz", "namespace": "kube-system", "uid": "e4",
                        "labels": { "kubernetes.io/service-name": "kube-dns" } },
          "addressType": "IPv4",
          "endpoints": [ { "addresses": ["10.244.0.2"], "conditions": { "ready": true } } ],
          "ports": [ { "name": "dns-tcp", "protocol": "TCP", "port": 53 }, { "name": "dns", "protocol": "UDP", "port": 53 } ]
        }
      ]
    })
}

fn items<K: serde::de::DeserializeOwned>(list: &Value) -> Vec<K> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| serde_json::from_value(i.clone()).expect("a real-shaped object"))
        .collect()
}

/// A watch line as the API server streams it, as kube's watcher hands it on.
fn watch_event<K: serde::de::DeserializeOwned>(line: &str) -> Event<K> {
    let v: Value = serde_json::from_str(line).expect("json line");
    let object = serde_json::from_value(v["object"].clone()).expect("object");
    match v["type"].as_str() {
        Some("ADDED" | "MODIFIED") => Event::Apply(object),
        Some("DELETED") => Event::Delete(object),
        other => panic!("event type {other:?}"),
    }
}

/// The initial list, as kube's watcher delivers it.
fn listed(cache: &mut Cache) {
    cache.services.apply(Event::Init);
    for s in items::<K8sService>(&service_list()) {
        cache.services.apply(Event::InitApply(s));
    }
    cache.services.apply(Event::InitDone);
    cache.slices.apply(Event::Init);
    for s in items::<EndpointSlice>(&slice_list()) {
        cache.slices.apply(Event::InitApply(s));
    }
    cache.slices.apply(Event::InitDone);
}

fn name(s: &str) -> weft_controller::model::Name {
    weft_controller::model::Name::try_from(s).expect("name")
}

#[test]
fn services_and_slices_map_to_the_mesh() {
    let services: Vec<K8sService> = items(&service_list());
    let slices: Vec<EndpointSlice> = items(&slice_list());
    let mapped = map(&services, &slices);
    let m = &mapped.contribution.services;
    let keys: Vec<&str> = m.keys().map(|n| n.as_str()).collect();
    assert_eq!(keys, ["db.shop", "kube-dns.kube-system", "web.shop"]);

    let web = &m[&name("web.shop")];
    assert_eq!(web.vip.to_string(), "10.96.0.20", "the primary ClusterIP");
    let ports: Vec<(u16, u16, Protocol)> = web
        .ports
        .iter()
        .map(|p| (p.port.get(), p.target_port.get(), p.protocol))
        .collect();
    assert_eq!(
        ports,
        [(80, 8080, Protocol::Http), (9090, 9090, Protocol::Auto)],
        "named target port resolved from the slice; UDP dropped"
    );
    let eps: Vec<String> = web.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        eps,
        ["10.244.1.5", "10.244.3.9"],
        "ready (or unset) IPv4 only: not the unready one, not the IPv6 slice"
    );
    let not_ready: Vec<String> = mapped.contribution.not_ready[&name("web.shop")]
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(not_ready, ["10.244.2.7"], "known, not served");
    assert_eq!(mapped.contribution.not_ready.len(), 1, "only web has one");

    let db = &m[&name("db.shop")];
    assert!(db.vip.is_ipv6());
    assert_eq!(
        (db.ports[0].port.get(), db.ports[0].target_port.get()),
        (5432, 5432)
    );
    assert_eq!(
        db.endpoints,
        vec!["fd00:244::7".parse::<std::net::IpAddr>().expect("ip")]
    );
    // Its annotations: strict mutual TLS, port 5432 for `web.shop` only.
    assert_eq!(db.mtls, weft_controller::model::MtlsMode::Strict);
    assert_eq!(db.authorization.len(), 1);
    assert_eq!(db.authorization[0].port.map(|p| p.get()), Some(5432));
    assert_eq!(
        db.authorization[0].allow,
        [weft_controller::model::Source::Service(name("web.shop"))]
    );
    assert!(mapped.warnings.is_empty(), "{:?}", mapped.warnings);

    let dns = &m[&name("kube-dns.kube-system")];
    assert_eq!(dns.ports.len(), 1, "the TCP port only");
    let skipped = mapped.skipped.join("\n");
    assert!(skipped.contains("shop/web-headless: headless"), "{skipped}");
    assert!(skipped.contains("shop/upstream: ExternalName"), "{skipped}");
    assert!(mapped.contribution.registrations.is_empty());
}

#[test]
fn the_cache_follows_watch_events_and_relists() {
    let mut cache = Cache::default();
    assert!(!cache.is_ready());
    listed(&mut cache);
    assert!(cache.is_ready());
    assert_eq!(cache.map().contribution.services.len(), 3);

    // 10.244.2.7 becomes ready, 10.244.1.5 stops being ready.
    let line = json!({ "type": "MODIFIED", "object": web_v4_slice(false, true) }).to_string();
    assert!(cache.slices.apply(watch_event(&line)));
    let web = &cache.map().contribution.services[&name("web.shop")];
    let eps: Vec<String> = web.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(eps, ["10.244.2.7", "10.244.3.9"]);

    // 10.244.3.9's pod terminates: the kubelet keeps it `serving` while it drains,
    // but not `ready`: no new traffic, still web's pod.
    let mut slice = web_v4_slice(false, true);
    slice["endpoints"][2]["conditions"] =
        json!({ "ready": false, "serving": true, "terminating": true });
    let line = json!({ "type": "MODIFIED", "object": slice }).to_string();
    assert!(cache.slices.apply(watch_event(&line)));
    let mapped = cache.map().contribution;
    let eps: Vec<String> = mapped.services[&name("web.shop")]
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(eps, ["10.244.2.7"]);
    let not_ready: Vec<String> = mapped.not_ready[&name("web.shop")]
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(not_ready, ["10.244.1.5", "10.244.3.9"]);

    // A re-list after a broken watch forgets what was deleted meanwhile.
    cache.services.apply(Event::Init);
    for s in items::<K8sService>(&service_list())
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() != Some("db"))
    {
        cache.services.apply(Event::InitApply(s));
    }
    assert!(
        cache
            .map()
            .contribution
            .services
            .contains_key(&name("db.shop")),
        "until InitDone"
    );
    cache.services.apply(Event::InitDone);
    assert!(!cache
        .map()
        .contribution
        .services
        .contains_key(&name("db.shop")));
}

/// A source fed by the test: each contribution sent is its next state.
struct Fed {
    rx: mpsc::Receiver<Contribution>,
}

impl Source for Fed {
    fn describe(&self) -> String {
        "kubernetes (recorded)".to_owned()
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Kubernetes
    }
    async fn next(&mut self) -> Result<Contribution, ConfigError> {
        match self.rx.recv().await {
            Some(c) => Ok(c),
            None => std::future::pending().await,
        }
    }
}

async fn message(stream: &mut tonic::Streaming<MeshUpdate>) -> MeshUpdate {
    tokio::time::timeout(IN_TIME, stream.message())
        .await
        .expect("in time")
        .expect("stream ok")
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_proxy_gets_the_cluster_and_follows_its_changes() {
    let mut cache = Cache::default();
    listed(&mut cache);
    let (tx, rx) = mpsc::channel(4);
    tx.send(cache.map().contribution).await.expect("send");
    let sources: Vec<Box<dyn DynSource>> = vec![Box::new(Fed { rx })];
    let controller = Controller::from_sources(sources, None, Defaults::default())
        .await
        .expect("first state");
    let grpc_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = grpc_l.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.serve(grpc_l, http_l, async {
        let _ = stopped.await;
    }));
    let mut client = DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let mut stream = client
        .watch(WatchRequest {
            service: "web.shop".into(),
            proxy_id: "web-5f7-abcde".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    let snap = message(&mut stream).await;
    assert!(snap.full_snapshot);
    let by_name: BTreeMap<&str, &weft_api::discovery::Service> =
        snap.services.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["db.shop", "kube-dns.kube-system", "web.shop"]
    );
    let web = by_name["web.shop"];
    assert_eq!(web.vip, "10.96.0.20");
    assert_eq!((web.ports[0].port, web.ports[0].target_port), (80, 8080));
    assert_eq!(web.ports[0].protocol(), PbProtocol::Http);
    let eps: Vec<&str> = web.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(eps, ["10.244.1.5", "10.244.3.9"]);
    assert_eq!(
        web.withheld,
        ["10.244.2.7"],
        "the pod not ready yet: web's, not served"
    );
    assert_eq!(by_name["db.shop"].endpoints[0].address, "fd00:244::7");

    // Readiness changes: only web, with its new endpoints.
    let line = json!({ "type": "MODIFIED", "object": web_v4_slice(false, true) }).to_string();
    cache.slices.apply(watch_event(&line));
    tx.send(cache.map().contribution).await.expect("send");
    let update = message(&mut stream).await;
    assert!(!update.full_snapshot);
    assert_eq!(update.services.len(), 1);
    let eps: Vec<&str> = update.services[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(
        (update.services[0].name.as_str(), eps),
        ("web.shop", vec!["10.244.2.7", "10.244.3.9"])
    );
    assert_eq!(update.services[0].withheld, ["10.244.1.5"]);

    // The db Service is deleted: removed by name.
    let db = &service_list()["items"][1];
    let line = json!({ "type": "DELETED", "object": db }).to_string();
    cache.services.apply(watch_event(&line));
    tx.send(cache.map().contribution).await.expect("send");
    let update = message(&mut stream).await;
    assert!(update.services.is_empty());
    assert_eq!(update.removed, ["db.shop"]);

    stop.send(()).expect("stop");
    tokio::time::timeout(IN_TIME, task)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve ok");
}

/// Without an in-cluster configuration or a kubeconfig, `--kubernetes` is an error
/// at start (nothing is dialled).
#[test]
fn without_a_cluster_configuration_the_binary_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "services: {}\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args([
            "--kubernetes",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&mesh)
        .env_clear()
        .env("HOME", dir.path())
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kubernetes: no API client"), "{stderr}");
}
