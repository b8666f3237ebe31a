//! weft-controller in a mesh's node namespace (10.211.0.1), where every pod reaches
//! it: started on a mesh file with the mesh's token file (see [`crate::credentials`])
//! and waited for until its API answers `/ready`; [`Controller::api`] calls its API
//! as the operator.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{wait_until, weft_bin, Mesh, PodProc, ProcSpec};

/// The controller's discovery (gRPC) port (ARCHITECTURE.md, Ports).
pub const GRPC_PORT: u16 = 15010;
/// The controller's HTTP API port.
pub const HTTP_PORT: u16 = 15014;

/// How long a starting controller gets to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running controller; the mesh stops it when dropped.
#[derive(Debug, Clone)]
pub struct Controller {
    proc: PodProc,
    node: crate::Pod,
    http: SocketAddr,
    grpc_url: String,
    operator_token: String,
}

impl Controller {
    /// Starts `weft-controller --config FILE ARGS...` in the node namespace (default
    /// listeners: 0.0.0.0:15010 and :15014) and waits until `/ready` answers 200;
    /// fails with its log otherwise.
    pub fn start(mesh: &Mesh, file: &Path, args: &[&str]) -> Result<Controller> {
        Controller::start_with_env(mesh, file, args, &[])
    }

    /// [`Controller::start`] with environment variables set for it (e.g.
    /// `KUBECONFIG`, which only the environment gives a Kubernetes client).
    pub fn start_with_env(
        mesh: &Mesh,
        file: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Controller> {
        let node = mesh.node();
        let bin = weft_bin("weft-controller").to_string_lossy().into_owned();
        let config = file.to_string_lossy().into_owned();
        let tokens = mesh
            .credentials()
            .token_file()
            .to_string_lossy()
            .into_owned();
        let mut argv = vec![bin.as_str(), "--config", config.as_str()];
        if !args
            .iter()
            .any(|a| a.starts_with("--api-tokens") || a.starts_with("--api-auth"))
        {
            argv.extend(["--api-tokens", tokens.as_str()]);
        }
        argv.extend_from_slice(args);
        let mut spec = ProcSpec::new(argv).name("weft-controller");
        for (key, value) in env {
            spec = spec.env(key, value);
        }
        let proc = node.spawn(spec)?;
        let http = SocketAddr::new(node.ipv4().into(), HTTP_PORT);
        wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
            matches!(node.http_get(http, "/ready"), Ok((200, _)))
        })
        .with_context(|| format!("weft-controller never became ready:\n{}", proc.logs()))?;
        Ok(Controller {
            proc,
            node: node.clone(),
            http,
            grpc_url: format!("http://{}:{GRPC_PORT}", node.ipv4()),
            operator_token: mesh.credentials().operator_token(),
        })
    }

    /// `METHOD path` on the HTTP API as the operator (with a JSON body if given):
    /// status and body.
    pub fn api(&self, method: &str, path: &str, json_body: Option<&str>) -> Result<(u16, String)> {
        self.api_as(Some(&self.operator_token), method, path, json_body)
    }

    /// [`Controller::api`] with `token` (or no credential at all).
    pub fn api_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        json_body: Option<&str>,
    ) -> Result<(u16, String)> {
        let stream = self.node.tcp_connect_blocking(self.http)?;
        let auth = token.map(crate::credentials::bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        crate::http::request_with(
            stream,
            method,
            &self.http.to_string(),
            path,
            &headers,
            json_body,
        )
        .with_context(|| format!("{method} http://{}{path}", self.http))
    }

    /// `GET path` on the HTTP API as the operator, a 200 answer parsed as JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = self.api("GET", path, None)?;
        anyhow::ensure!(status == 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("{path} did not answer JSON"))
    }

    /// The process.
    pub fn proc(&self) -> &PodProc {
        &self.proc
    }

    /// The HTTP API's address (`/v1/...`, `/metrics`, `/ready`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The discovery URL proxies take as `--controller`.
    pub fn url(&self) -> &str {
        &self.grpc_url
    }
}
