//! The OTLP receiver of the telemetry tests (`otlp.rs`, `traces.rs`):
//! `tools/otlpkit.py` (PyPI's opentelemetry-proto with grpcio, and a plain
//! `http.server`) in a pod of its own, writing each export it decodes as a JSON
//! line to a file in the mesh's run directory. It exits by itself after 120 s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use weft_localmesh::{Mesh, Pod, PodProc, ProcSpec};

use crate::{pyenv, tool};

/// OTLP's own ports: gRPC and HTTP/protobuf.
pub const GRPC_PORT: u16 = 4317;
pub const HTTP_PORT: u16 = 4318;

/// A running receiver.
#[derive(Debug)]
pub struct OtlpReceiver {
    pub proc: PodProc,
    /// Where the exports are written, one JSON object a line.
    pub exports: PathBuf,
    /// Its pod's address.
    pub ip: std::net::Ipv4Addr,
}

impl OtlpReceiver {
    /// Starts the receiver in `pod` (one without a sidecar) and waits until both
    /// its ports listen.
    pub fn start(mesh: &Mesh, pod: &Pod) -> Result<OtlpReceiver> {
        let python = pyenv::otlp_python()?.to_string_lossy().into_owned();
        let exports = mesh.run_dir().join("otlp-exports.jsonl");
        let proc = pod.spawn(
            ProcSpec::new([
                python.as_str(),
                tool("otlpkit.py").as_str(),
                "serve",
                "--grpc-port",
                &GRPC_PORT.to_string(),
                "--http-port",
                &HTTP_PORT.to_string(),
                "--out",
                &exports.to_string_lossy(),
                "--duration",
                "120",
            ])
            .name("otlpkit"),
        )?;
        for port in [GRPC_PORT, HTTP_PORT] {
            mesh.node()
                .wait_listening(
                    SocketAddr::new(pod.ipv4().into(), port),
                    Duration::from_secs(20),
                )
                .with_context(|| format!("the receiver never listened:\n{}", proc.logs()))?;
        }
        Ok(OtlpReceiver {
            proc,
            exports,
            ip: pod.ipv4(),
        })
    }

    /// Its endpoint for `protocol` (`grpc` or `http/protobuf`), as
    /// `--otlp-endpoint` takes it.
    pub fn endpoint(&self, protocol: &str) -> String {
        let port = if protocol == "grpc" {
            GRPC_PORT
        } else {
            HTTP_PORT
        };
        format!("http://{}:{port}", self.ip)
    }
}
