//! Fault 3 of issue 13 through the Kubernetes source: a rolling restart of `web`'s
//! three replicas as the EndpointSlice updates a cluster makes, under the same
//! open-loop load as `faults.rs` (its fleet, `fleet/`).
//!
//! The real controller runs with `--kubernetes` and a kubeconfig naming a fake API
//! server in the mesh's node namespace (`weft_e2e::fakekube`: plain HTTP on the
//! node's loopback; kube-rs takes an `http://` server). It serves a recorded
//! ServiceList and EndpointSliceList (1.30 shapes, pod addresses filled in from the
//! local mesh's pods) and streams the slice updates this test makes, in the order
//! the EndpointSlice controller publishes them during a rollout:
//!
//! 1. the new pod's endpoint appears not ready (`ready: false, serving: false`)
//!    while its sidecar runs and its app does not yet (the sidecar's `/ready`, the
//!    kubelet's readiness probe, says so), then ready once the app is up;
//! 2. the old pod is deleted: its endpoint stays in the slice with `ready: false,
//!    serving: true, terminating: true` while it drains, and no new request may
//!    reach it from then on;
//! 3. its sidecar drains (SIGTERM), its app stops, and the endpoint leaves the slice.
//!
//! Every failure the clients see must be one an application received; the test
//! prints the same rows as `faults.rs`. Both capture modes (`_iptables`, `_ebpf`).

#![allow(clippy::unwrap_used)]

mod fleet;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fleet::{report, serial, Fleet, MS, ROLLING_LOAD_SECONDS, SECS};
use serde_json::{json, Value};
use weft_e2e::{wait_until, Mode};

/// `GET /api/v1/services`, trimmed of managedFields, as a 1.30 API server answers:
/// `web` in `shop` (ClusterIP `fleet::VIP`, named target ports: HTTP/1.1, h2c,
/// gRPC and a TCP echo, the last three with their `appProtocol`) and the cluster's DNS, which no
/// pod here calls.
fn service_list() -> Value {
    json!({
      "kind": "ServiceList", "apiVersion": "v1",
      "metadata": { "resourceVersion": "52004" },
      "items": [
        {
          "metadata": {
            "name": "web", "namespace": "shop", "uid": "3f6c1a52-8d0e-4b7a-9a43-5d2e7c1b9f10",
            "resourceVersion": "51873", "creationTimestamp": "2025-03-02T09:14:21Z",
            "labels": { "app": "web" }
          },
          "spec": {
            "ports": [
              { "name": "http", "protocol": "TCP", "port": fleet::HTTP1_VIP_PORT, "targetPort": "http" },
              { "name": "h2c", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c",
                "port": fleet::H2C_VIP_PORT, "targetPort": "h2c" },
              { "name": "grpc", "protocol": "TCP", "appProtocol": "grpc",
                "port": fleet::GRPC_VIP_PORT, "targetPort": "grpc" },
              { "name": "echo", "protocol": "TCP", "appProtocol": "tcp",
                "port": fleet::TCP_VIP_PORT, "targetPort": "echo" }
            ],
            "selector": { "app": "web" },
            "clusterIP": fleet::VIP, "clusterIPs": [fleet::VIP],
            "type": "ClusterIP", "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster"
          },
          "status": { "loadBalancer": {} }
        },
        {
          "metadata": {
            "name": "kube-dns", "namespace": "kube-system", "uid": "b1e0d2f4-1c3a-4e5b-8f60-7a9b0c1d2e3f",
            "resourceVersion": "231", "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS" }
          },
          "spec": {
            "ports": [
              { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53 },
              { "name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53 },
              { "name": "metrics", "protocol": "TCP", "port": 9153, "targetPort": 9153 }
            ],
            "selector": { "k8s-app": "kube-dns" },
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"
          },
          "status": { "loadBalancer": {} }
        }
      ]
    })
}

/// One pod of `web` as its EndpointSlice lists it.
#[derive(Debug, Clone)]
struct Endpoint {
    replica: usize,
    /// The pod's name: its ReplicaSet's (old `6d5f8b7c9`, new `7b9d4c6f8`) plus a
    /// suffix.
    pod: String,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Endpoint {
    /// A pod of the old ReplicaSet, ready.
    fn old(replica: usize) -> Endpoint {
        Endpoint {
            replica,
            pod: format!("web-6d5f8b7c9-{}", ["x2kqp", "m8ztd", "c4hwn"][replica % 3]),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A pod of the new ReplicaSet, running but not ready yet.
    fn starting(replica: usize) -> Endpoint {
        Endpoint {
            replica,
            pod: format!("web-7b9d4c6f8-{}", ["r5vjl", "t7bqs", "h2fxm"][replica % 3]),
            ready: false,
            serving: false,
            terminating: false,
        }
    }
}

/// `web`'s EndpointSlice (IPv4) listing `endpoints`, whose pods have addresses
/// `ips[replica]`.
fn web_slice(ips: &[Ipv4Addr], endpoints: &[Endpoint]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
              "addresses": [ips[e.replica].to_string()],
              "conditions": { "ready": e.ready, "serving": e.serving, "terminating": e.terminating },
              "nodeName": format!("node-{}", e.replica % 2 + 1),
              "targetRef": { "kind": "Pod", "namespace": "shop", "name": e.pod,
                             "uid": format!("0d4c{:04x}-6a1e-4f8b-b2c3-9e8d7f6a5b4c", e.replica) }
            })
        })
        .collect();
    json!({
      "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
      "metadata": {
        "name": "web-x7k2p", "generateName": "web-", "namespace": "shop",
        "uid": "8e2b4d6f-0a1c-4e3b-9d5f-7c6b5a4d3e2f", "resourceVersion": "51902",
        "creationTimestamp": "2025-03-02T09:14:21Z",
        "labels": {
          "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
          "kubernetes.io/service-name": "web",
          "app": "web"
        },
        "annotations": { "endpoints.kubernetes.io/last-change-trigger-time": "2025-03-02T09:15:02Z" },
        "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": "web",
                              "uid": "3f6c1a52-8d0e-4b7a-9a43-5d2e7c1b9f10",
                              "controller": true, "blockOwnerDeletion": true }]
      },
      "addressType": "IPv4",
      "endpoints": eps,
      "ports": [
        { "name": "http", "protocol": "TCP", "port": fleet::APP_PORT },
        { "name": "h2c", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c", "port": fleet::H2C_PORT },
        { "name": "grpc", "protocol": "TCP", "appProtocol": "grpc", "port": fleet::GRPC_PORT },
        { "name": "echo", "protocol": "TCP", "appProtocol": "tcp", "port": fleet::TCP_PORT }
      ]
    })
}

/// `GET /apis/discovery.k8s.io/v1/endpointslices`: `web`'s slice and the DNS's.
fn slice_list(ips: &[Ipv4Addr], endpoints: &[Endpoint]) -> Value {
    json!({
      "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
      "metadata": { "resourceVersion": "52004" },
      "items": [
        web_slice(ips, endpoints),
        {
          "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
          "metadata": {
            "name": "kube-dns-6xq2v", "generateName": "kube-dns-", "namespace": "kube-system",
            "uid": "c0d1e2f3-a4b5-4c6d-8e7f-901a2b3c4d5e", "resourceVersion": "412",
            "labels": { "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                        "kubernetes.io/service-name": "kube-dns" }
          },
          "addressType": "IPv4",
          "endpoints": [
            { "addresses": ["10.244.0.3"], "conditions": { "ready": true, "serving": true, "terminating": false },
              "nodeName": "node-1", "targetRef": { "kind": "Pod", "namespace": "kube-system", "name": "coredns-7db6d8ff4d-4q8xz" } }
          ],
          "ports": [
            { "name": "dns-tcp", "protocol": "TCP", "port": 53 },
            { "name": "dns", "protocol": "UDP", "port": 53 },
            { "name": "metrics", "protocol": "TCP", "port": 9153 }
          ]
        }
      ]
    })
}

/// The controller's record of replica `i`'s endpoint of `web.shop`, if it knows it.
fn controller_endpoint(fleet: &Fleet, i: usize) -> Option<Value> {
    let ip = fleet.replicas[i].pod.ipv4().to_string();
    fleet.controller_services()["endpoints"]["web.shop"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == ip.as_str())
        .cloned()
}

/// How one old replica left: how long its terminating endpoint took to leave the
/// frontend's routes, and the requests its app received in the half second after.
#[derive(Debug)]
struct Leaving {
    replica: usize,
    dropped_after: Duration,
    received_after_dropped: usize,
}

/// The rollout, as the slices tell it, one replica at a time.
fn roll(f: &mut Fleet, leaving: &mut Vec<Leaving>) {
    let ips: Vec<Ipv4Addr> = f.replicas.iter().map(|r| r.pod.ipv4()).collect();
    let mut endpoints: Vec<Endpoint> = (0..3).map(Endpoint::old).collect();
    let publish = |f: &Fleet, endpoints: &[Endpoint]| {
        f.kube().put_slice(&web_slice(&ips, endpoints)).unwrap();
    };
    let routed = |f: &Fleet, i: usize| f.front_endpoints().contains(&f.endpoint(i));
    std::thread::sleep(SECS(1));
    for (old, new) in [(0, 3), (1, 4), (2, 5)] {
        // The new pod has its address and its sidecar (the app container waits
        // for the sidecar's startup probe): the slice lists it, not ready.
        f.start_sidecar(new);
        endpoints.push(Endpoint::starting(new));
        publish(f, &endpoints);
        wait_until(SECS(5), MS(20), || {
            controller_endpoint(f, new).is_some_and(|e| e["ready"] == false)
        })
        .unwrap_or_else(|e| panic!("the starting pod never known: {e}\n{}", f.logs()));
        assert!(!routed(f, new), "a pod that is not ready got traffic");
        // Its sidecar knows its pod is one of web.shop's, not ready: its `/ready`
        // (the kubelet's readiness probe) waits for the app, then passes.
        let mut ready = (0, String::new());
        wait_until(SECS(5), MS(50), || {
            ready = f.sidecar_get(new, "/ready");
            ready.0 == 503
        })
        .unwrap_or_else(|e| panic!("/ready stayed {ready:?} without an app: {e}"));
        assert_eq!(
            ready.1,
            format!("app port {}: connect_refused", fleet::APP_PORT)
        );
        f.start_app(new);
        wait_until(SECS(5), MS(50), || {
            ready = f.sidecar_get(new, "/ready");
            ready.0 == 200
        })
        .unwrap_or_else(|e| panic!("/ready stayed {ready:?} with the app up: {e}"));

        // Its readiness probe passes.
        if let Some(e) = endpoints.iter_mut().find(|e| e.replica == new) {
            (e.ready, e.serving) = (true, true);
        }
        publish(f, &endpoints);
        wait_until(SECS(5), MS(20), || routed(f, new))
            .unwrap_or_else(|e| panic!("the new pod never routed to: {e}\n{}", f.logs()));

        // The old pod is deleted: terminating, still serving while it drains.
        if let Some(e) = endpoints.iter_mut().find(|e| e.replica == old) {
            (e.ready, e.serving, e.terminating) = (false, true, true);
        }
        let terminated = Instant::now();
        publish(f, &endpoints);
        wait_until(SECS(5), MS(10), || !routed(f, old))
            .unwrap_or_else(|e| panic!("the terminating pod still routed to: {e}\n{}", f.logs()));
        let dropped_after = terminated.elapsed();
        // Requests already on their way when the routes changed may still land.
        std::thread::sleep(MS(100));
        let before = f.received_by(old);
        std::thread::sleep(MS(500));
        leaving.push(Leaving {
            replica: old,
            dropped_after,
            received_after_dropped: f.received_by(old) - before,
        });

        // The kubelet stops it: the sidecar drains (announcing it), the app ends,
        // and the endpoint leaves the slice.
        f.drain_sidecar(old);
        f.kill_app(old);
        endpoints.retain(|e| e.replica != old);
        publish(f, &endpoints);
    }
}

fn rolling_restart_through_kubernetes(mode: Mode) {
    let _serial = serial();
    let initial: Vec<Endpoint> = (0..3).map(Endpoint::old).collect();
    let mut fleet = Fleet::kubernetes(mode, 6, 3, &|ips| {
        (service_list(), slice_list(ips, &initial))
    });
    let doc = fleet.controller_services();
    assert_eq!(doc["defined_by"]["web.shop"], "kubernetes", "{doc}");
    assert_eq!(
        doc["services"]["web.shop"]["vip"],
        fleet::VIP,
        "the ClusterIP is the VIP: {doc}"
    );

    let mut leaving = Vec::new();
    let mut rolled = Duration::ZERO;
    let outcomes = fleet.under_load(ROLLING_LOAD_SECONDS, |f| {
        let started = Instant::now();
        roll(f, &mut leaving);
        rolled = started.elapsed();
    });
    report("rolling restart (kubernetes)", mode, &outcomes, &fleet);
    for l in &leaving {
        println!(
            "{mode}: web{} terminating -> out of the frontend's routes after {:?}; requests its app received after that: {}",
            l.replica + 1,
            l.dropped_after,
            l.received_after_dropped
        );
    }
    println!("{mode}: the rollout took {rolled:?} of the {ROLLING_LOAD_SECONDS} s load");
    assert!(
        rolled < SECS(ROLLING_LOAD_SECONDS),
        "the rollout ({rolled:?}) outlasted the load: part of it was not under load"
    );
    assert!(
        leaving.iter().all(|l| l.received_after_dropped == 0),
        "a terminating pod got new requests: {leaving:?}"
    );
    // The rollout is complete: the new pods are web.shop's endpoints, the old ones
    // are gone.
    let mut served = fleet.front_endpoints();
    served.sort();
    let mut expected: Vec<String> = (3..6).map(|i| fleet.endpoint(i)).collect();
    expected.sort();
    assert_eq!(served, expected);
    for old in 0..3 {
        assert!(
            controller_endpoint(&fleet, old).is_none(),
            "web{} still known",
            old + 1
        );
    }
}

#[test]
fn a_rolling_restart_through_kubernetes_fails_no_request_iptables() {
    rolling_restart_through_kubernetes(Mode::Iptables);
}

#[test]
fn a_rolling_restart_through_kubernetes_fails_no_request_ebpf() {
    rolling_restart_through_kubernetes(Mode::Ebpf);
}
