//! A fake Kubernetes API server for the controller's Kubernetes source, in a mesh's
//! node namespace: `tests/tools/fakekube.py` serves recorded Service and
//! EndpointSlice lists on the node's loopback over plain HTTP (as `kubectl proxy`
//! does), and streams the watch events a test makes with [`FakeKube::put_slice`].
//! The controller reaches it through the kubeconfig [`FakeKube::kubeconfig`]
//! writes (`server: http://127.0.0.1:8001`): kube-rs accepts `http://` servers.
//! Nothing leaves the node namespace; the mesh stops the server when dropped, and
//! it exits by itself after [`LIFETIME`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{python3, tool, Mesh, Pod, PodProc, ProcSpec};

/// Where it listens, in the node namespace (`kubectl proxy`'s port).
pub const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8001);
/// How long it runs at most.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// The fake API server of one mesh.
#[derive(Debug)]
pub struct FakeKube {
    node: Pod,
    proc: PodProc,
    kubeconfig: PathBuf,
}

impl FakeKube {
    /// Starts it in `mesh`'s node namespace serving `services` (a ServiceList) and
    /// `slices` (an EndpointSliceList), and writes a kubeconfig naming it; waits
    /// until it listens.
    pub fn start(mesh: &Mesh, services: &Value, slices: &Value) -> Result<FakeKube> {
        let dir = mesh.run_dir();
        let write = |name: &str, v: &Value| -> Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, serde_json::to_vec_pretty(v)?)
                .with_context(|| format!("write {}", path.display()))?;
            Ok(path.to_string_lossy().into_owned())
        };
        let services = write("kube-services.json", services)?;
        let slices = write("kube-endpointslices.json", slices)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(ADDR))
            .with_context(|| format!("write {}", kubeconfig.display()))?;
        let node = mesh.node().clone();
        let proc = node.spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                tool("fakekube.py").as_str(),
                &ADDR.port().to_string(),
                &services,
                &slices,
                &LIFETIME.as_secs().to_string(),
            ])
            .name("fakekube"),
        )?;
        node.wait_listening(ADDR, Duration::from_secs(10))
            .with_context(|| format!("fakekube never listened:\n{}", proc.logs()))?;
        Ok(FakeKube {
            node,
            proc,
            kubeconfig,
        })
    }

    /// The kubeconfig to give the controller (`KUBECONFIG`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes `slice` (an EndpointSlice) as the API would: stored, and sent to
    /// the slice watches as ADDED or MODIFIED. Returns its new resourceVersion.
    pub fn put_slice(&self, slice: &Value) -> Result<u64> {
        let body = serde_json::to_string(slice)?;
        let stream = self.node.tcp_connect_blocking(ADDR)?;
        let (status, answer) = crate::http::request(
            stream,
            "PUT",
            &ADDR.to_string(),
            "/fake/endpointslices",
            Some(&body),
        )?;
        if status != 200 {
            bail!("PUT /fake/endpointslices answered {status}: {answer}");
        }
        let v: Value = serde_json::from_str(&answer).context("fakekube's answer")?;
        v["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .with_context(|| format!("no resourceVersion in {answer}"))
    }

    /// What it logged (one line per request and per watch event sent).
    pub fn logs(&self) -> String {
        self.proc.logs()
    }
}

/// A kubeconfig with one cluster at `http://ADDR` and no credentials.
fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fakekube
  cluster:
    server: http://{addr}
users:
- name: fakekube
  user: {{}}
contexts:
- name: fakekube
  context:
    cluster: fakekube
    user: fakekube
current-context: fakekube
"
    )
}
