//! Tier 2: proxyless gRPC through the controller's ADS (ARCHITECTURE.md, xDS for
//! proxyless gRPC). No sidecar anywhere: three replica pods run a grpcio server
//! that answers with its pod's name (`tools/xdskit.py serve`), and a client pod
//! runs gRPC's own xDS client (`xdskit.py client`, grpcio from PyPI in
//! [`weft_e2e::pyenv`]) on `xds:///backend`, with a bootstrap naming the
//! controller (`10.211.0.1:15010`, plaintext) and a read-only token in its node
//! metadata. The client makes one call at a time; gRPC's round robin spreads them
//! over the three endpoints the controller's EDS names. Then one replica leaves the
//! mesh file (its server keeps running, so only the controller's push can take it
//! out of the client's balancer) and no call started more than 1 s after the write
//! may land on it.
//!
//! The same through the Kubernetes source: `backend` in namespace `shop`
//! (`xds:///backend.shop`) from recorded Service and EndpointSlice lists served by
//! the fake API server ([`weft_e2e::fakekube`]); the replica leaves as a pod does
//! when it is deleted, its slice endpoint `ready: false, terminating: true`
//! (withheld, so not served), its server still running.
//!
//! Nothing is captured, so there is one capture mode: the tests have no
//! `_iptables` / `_ebpf` variants. Traffic stays on the mesh's bridge, as in every
//! tier-2 test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weft_e2e::controller::GRPC_PORT;
use weft_e2e::fakekube::FakeKube;
use weft_e2e::{pyenv, tool, Controller, Mesh, Pod, PodProc, ProcSpec};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The replicas' gRPC port (the service's port and target port).
const PORT: u16 = 50051;
/// The issue's bound: calls that land on a removed replica this long after the
/// replica left the service (the mesh file rewritten, the slice updated) must be
/// none. A behaviour bound (the push reaches the client), not a performance figure.
const REMOVAL_BOUND: Duration = Duration::from_secs(1);
/// Calls counted while all three replicas serve (a sequential client under round
/// robin gives each a third).
const SPREAD_CALLS: usize = 90;
/// How long the client keeps calling after the removal.
const AFTER_REMOVAL: Duration = Duration::from_secs(3);

fn mesh_yaml(endpoints: &[&Pod]) -> String {
    let list: Vec<String> = endpoints.iter().map(|p| p.ipv4().to_string()).collect();
    format!(
        "# weft mesh file (xds test)\nservices:\n  backend:\n    vip: 10.96.0.50\n    ports:\n      - {{ port: {PORT}, target_port: {PORT}, protocol: http }}\n    endpoints: [{}]\n",
        list.join(", ")
    )
}

/// Where the controller learns `backend` from, and how a replica leaves it.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The mesh file: `backend`; a replica leaves when the file is rewritten
    /// without it.
    MeshFile,
    /// Kubernetes: `backend.shop`; a replica leaves when its EndpointSlice
    /// endpoint turns terminating.
    Kubernetes,
}

/// A running controller with `backend` defined by a [`Source`].
struct Backend {
    source: Source,
    controller: Controller,
    file: std::path::PathBuf,
    kube: Option<FakeKube>,
    /// The service's name in the mesh (and the xDS target's host).
    name: &'static str,
}

impl Backend {
    fn start(mesh: &Mesh, source: Source, replicas: &[Pod]) -> Result<Backend> {
        let file = mesh.run_dir().join("mesh.yaml");
        let all: Vec<&Pod> = replicas.iter().collect();
        match source {
            Source::MeshFile => {
                std::fs::write(&file, mesh_yaml(&all))?;
                let controller = Controller::start(mesh, &file, &[])?;
                Ok(Backend {
                    source,
                    controller,
                    file,
                    kube: None,
                    name: "backend",
                })
            }
            Source::Kubernetes => {
                std::fs::write(&file, "services: {}\n")?;
                let ready = vec![true; replicas.len()];
                let kube = FakeKube::start(mesh, &service_list(), &slice_list(replicas, &ready))?;
                let kubeconfig = kube.kubeconfig().to_string_lossy().into_owned();
                let controller = Controller::start_with_env(
                    mesh,
                    &file,
                    &["--kubernetes"],
                    &[("KUBECONFIG", kubeconfig.as_str())],
                )?;
                Ok(Backend {
                    source,
                    controller,
                    file,
                    kube: Some(kube),
                    name: "backend.shop",
                })
            }
        }
    }

    /// Takes the last of `replicas` out of the service, its server left running.
    fn remove_last(&self, replicas: &[Pod]) -> Result<()> {
        let kept: Vec<&Pod> = replicas[..replicas.len() - 1].iter().collect();
        match (self.source, &self.kube) {
            (Source::MeshFile, _) => replace(&self.file, &mesh_yaml(&kept)),
            (Source::Kubernetes, Some(kube)) => {
                let mut ready = vec![true; replicas.len()];
                ready[replicas.len() - 1] = false;
                kube.put_slice(&backend_slice(replicas, &ready))?;
            }
            (Source::Kubernetes, None) => bail!("no fake API server"),
        }
        Ok(())
    }
}

/// `GET /api/v1/services` of a 1.30 API server: `backend` in `shop`, one gRPC port.
fn service_list() -> Value {
    json!({
      "kind": "ServiceList", "apiVersion": "v1",
      "metadata": { "resourceVersion": "7310" },
      "items": [{
        "metadata": {
          "name": "backend", "namespace": "shop", "uid": "5b0e7d2c-31f4-4a8e-9c6d-2f1a0b9e8d7c",
          "resourceVersion": "7201", "creationTimestamp": "2025-03-02T09:14:21Z",
          "labels": { "app": "backend" }
        },
        "spec": {
          "ports": [{ "name": "grpc", "protocol": "TCP", "appProtocol": "grpc",
                      "port": PORT, "targetPort": "grpc" }],
          "selector": { "app": "backend" },
          "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
          "type": "ClusterIP", "sessionAffinity": "None",
          "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
          "internalTrafficPolicy": "Cluster"
        },
        "status": { "loadBalancer": {} }
      }]
    })
}

/// `backend`'s EndpointSlice: replica `i` ready when `ready[i]`, else terminating
/// (deleted, still serving while it drains).
fn backend_slice(replicas: &[Pod], ready: &[bool]) -> Value {
    let endpoints: Vec<Value> = replicas
        .iter()
        .zip(ready)
        .enumerate()
        .map(|(i, (pod, &ready))| {
            json!({
              "addresses": [pod.ipv4().to_string()],
              "conditions": { "ready": ready, "serving": true, "terminating": !ready },
              "nodeName": "node-1",
              "targetRef": { "kind": "Pod", "namespace": "shop",
                             "name": format!("backend-5c7d9f6b8-{}", ["q4xzt", "h8vnm", "w2kpd"][i % 3]) }
            })
        })
        .collect();
    json!({
      "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
      "metadata": {
        "name": "backend-r9m4s", "generateName": "backend-", "namespace": "shop",
        "uid": "a7c3e1f9-6b2d-4e8a-9f0c-1d2e3f4a5b6c", "resourceVersion": "7288",
        "labels": {
          "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
          "kubernetes.io/service-name": "backend"
        },
        "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": "backend",
                              "uid": "5b0e7d2c-31f4-4a8e-9c6d-2f1a0b9e8d7c",
                              "controller": true, "blockOwnerDeletion": true }]
      },
      "addressType": "IPv4",
      "endpoints": endpoints,
      "ports": [{ "name": "grpc", "protocol": "TCP", "appProtocol": "grpc", "port": PORT }]
    })
}

/// `GET /apis/discovery.k8s.io/v1/endpointslices`: `backend`'s slice.
fn slice_list(replicas: &[Pod], ready: &[bool]) -> Value {
    json!({
      "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
      "metadata": { "resourceVersion": "7310" },
      "items": [backend_slice(replicas, ready)]
    })
}

/// Replaces `path` as editors do: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One call the client made.
#[derive(Debug, Clone)]
struct Call {
    /// When it started (Unix seconds).
    at: f64,
    /// The replica that answered, or the gRPC status of a failure.
    outcome: Result<String, String>,
}

fn calls(client: &PodProc) -> Vec<Call> {
    client
        .logs()
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let at: f64 = words.next()?.parse().ok()?;
            let outcome = match (words.next()?, words.next()?) {
                ("ok", name) => Ok(name.to_owned()),
                ("err", code) => Err(code.to_owned()),
                _ => return None,
            };
            Some(Call { at, outcome })
        })
        .collect()
}

fn per_replica<'a>(calls: impl IntoIterator<Item = &'a Call>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for call in calls {
        let key = match &call.outcome {
            Ok(name) => name.clone(),
            Err(code) => format!("error {code}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The calls, once `done` says they are enough; fails with the client's log after
/// `timeout`.
fn wait_calls(
    client: &PodProc,
    timeout: Duration,
    done: impl Fn(&[Call]) -> bool,
) -> Result<Vec<Call>> {
    let start = Instant::now();
    loop {
        let got = calls(client);
        if done(&got) {
            return Ok(got);
        }
        if start.elapsed() > timeout {
            bail!(
                "the client's calls never got there ({} so far: {:?}); its log:\n{}",
                got.len(),
                per_replica(&got),
                weft_e2e::logs::tail(&client.logs(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn controller_metric(mesh: &Mesh, ctl: &Controller, name: &str) -> Result<String> {
    let (code, body) = mesh.node().http_get(ctl.http_addr(), "/metrics")?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn proxyless_grpc_balances_over_the_mesh_and_follows_the_mesh_file() -> Result<()> {
    proxyless(Source::MeshFile)
}

#[test]
fn proxyless_grpc_follows_kubernetes_endpoint_slices() -> Result<()> {
    proxyless(Source::Kubernetes)
}

fn proxyless(source: Source) -> Result<()> {
    let python = pyenv::grpc_python()?;
    let python = python.to_string_lossy().into_owned();
    let xdskit = tool("xdskit.py");
    let mesh = Mesh::new()?;
    let replicas: Vec<Pod> = (0..3)
        .map(|i| mesh.add_pod(&format!("backend-{i}")))
        .collect::<Result<_>>()?;
    let client_pod = mesh.add_pod("client")?;

    let backend = Backend::start(&mesh, source, &replicas)?;
    let ctl = &backend.controller;

    for pod in &replicas {
        let name = pod.name().to_owned();
        pod.spawn(
            ProcSpec::new([
                python.as_str(),
                xdskit.as_str(),
                "serve",
                "--name",
                &name,
                "--port",
                &PORT.to_string(),
            ])
            .name("grpc-server"),
        )?;
        client_pod.wait_listening(SocketAddr::new(pod.ipv4().into(), PORT), SECS(20))?;
    }

    // The bootstrap gRPC's xDS client reads: the controller over plaintext, and a
    // read-only token (no service to register into) in the node's metadata, since
    // it sends no call credentials on a plaintext channel.
    let token_file = mesh.credentials().issue("xds-client", &[], None)?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let bootstrap = mesh.run_dir().join("xds-bootstrap.json");
    let controller_addr = format!("{}:{GRPC_PORT}", mesh.node().ipv4());
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": controller_addr,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {
                "id": "xds-client-0",
                "metadata": {"weft.dev/token": token},
            },
        })
        .to_string(),
    )?;
    let client = client_pod.spawn(
        ProcSpec::new([
            python.as_str(),
            xdskit.as_str(),
            "client",
            "--target",
            &format!("xds:///{}", backend.name),
            "--interval",
            "0.01",
            "--duration",
            "40",
        ])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .name("grpc-client"),
    )?;

    // All three serve: wait until each has answered, then count the next calls.
    let names: Vec<String> = replicas.iter().map(|p| p.name().to_owned()).collect();
    let all_seen = |calls: &[Call]| {
        names
            .iter()
            .all(|n| calls.iter().any(|c| c.outcome.as_ref() == Ok(n)))
    };
    let warm = wait_calls(&client, SECS(30), all_seen)?;
    let from = warm.len();
    let got = wait_calls(&client, SECS(20), |c| c.len() >= from + SPREAD_CALLS)?;
    let spread = per_replica(&got[from..from + SPREAD_CALLS]);
    eprintln!("xds ({source:?}): {SPREAD_CALLS} calls over three replicas: {spread:?}");
    for name in &names {
        let n = spread.get(name).copied().unwrap_or(0);
        assert!(
            n >= SPREAD_CALLS / 6,
            "{name} served {n} of {SPREAD_CALLS} calls: {spread:?}"
        );
    }
    assert!(
        spread.keys().all(|k| !k.starts_with("error")),
        "calls failed while all replicas served: {spread:?}"
    );
    let streams = controller_metric(&mesh, ctl, "weft_controller_xds_streams")?;
    assert!(streams.ends_with(" 1"), "one ADS stream open: {streams:?}");

    // backend-2 leaves the service; its server keeps running.
    let removed = &names[2];
    backend.remove_last(&replicas)?;
    let written = unix_now();
    let until = written + AFTER_REMOVAL.as_secs_f64();
    let got = wait_calls(&client, AFTER_REMOVAL + SECS(10), |c| {
        c.last().is_some_and(|c| c.at > until)
    })?;
    let bound = written + REMOVAL_BOUND.as_secs_f64();
    let after: Vec<&Call> = got
        .iter()
        .filter(|c| c.at > bound && c.at <= until)
        .collect();
    let within: Vec<&Call> = got
        .iter()
        .filter(|c| c.at > written && c.at <= bound)
        .collect();
    let last_on_removed = got
        .iter()
        .filter(|c| c.at > written && c.outcome.as_ref() == Ok(removed))
        .map(|c| c.at - written)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let after_counts = per_replica(after.iter().copied());
    eprintln!(
        "xds ({source:?}): after removing {removed}: first {} ms {:?}; from {} ms to {} ms {:?}; last call on {removed} at {}",
        REMOVAL_BOUND.as_millis(),
        per_replica(within.iter().copied()),
        REMOVAL_BOUND.as_millis(),
        AFTER_REMOVAL.as_millis(),
        after_counts,
        last_on_removed.map_or_else(|| "none after the write".to_owned(), |t| format!("+{:.0} ms", t * 1000.0)),
    );
    assert_eq!(
        after_counts.get(removed).copied().unwrap_or(0),
        0,
        "calls landed on {removed} more than {REMOVAL_BOUND:?} after it left the service: {after_counts:?}"
    );
    for name in &names[..2] {
        assert!(
            after_counts.get(name).copied().unwrap_or(0) > 0,
            "{name} served nothing after the removal: {after_counts:?}"
        );
    }
    assert!(
        after_counts.keys().all(|k| !k.starts_with("error")),
        "calls failed after the removal: {after_counts:?}"
    );

    // The controller counted the stream and its pushes (the removal was an EDS push).
    let status = ctl.get_json("/v1/status").context("status")?;
    let xds = &status["xds"];
    eprintln!("xds ({source:?}): controller status {xds}");
    assert_eq!(xds["streams"], 1, "{xds}");
    assert!(
        xds["pushes"]["endpoints"].as_u64().unwrap_or(0) >= 2,
        "{xds}"
    );
    assert_eq!(xds["nacks"]["listener"], 0, "{xds}");
    assert_eq!(xds["nacks"]["cluster"], 0, "{xds}");
    assert_eq!(xds["nacks"]["endpoints"], 0, "{xds}");
    Ok(())
}
