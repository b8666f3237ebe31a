//! Ties the pieces together: the first good configuration from a [`Source`], then the
//! gRPC and HTTP servers and the reload loop, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::error::ConfigError;
use crate::grpc::DiscoveryService;
use crate::http::Api;
use crate::metrics::Metrics;
use crate::source::{FileSource, Source, DEFAULT_POLL_INTERVAL};
use crate::state::State;

/// What the controller is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mesh file.
    pub config: PathBuf,
    /// How often the mesh file is checked for changes.
    pub poll_interval: Duration,
}

impl Options {
    /// Options for the mesh file at `config`, with defaults.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// A controller with a good first configuration, ready to serve.
#[derive(Debug)]
pub struct Controller<S = FileSource> {
    source: S,
    state: Arc<State>,
}

impl Controller<FileSource> {
    /// Loads the mesh file. Fails, with file:line, when it is missing or bad: there is
    /// nothing good to serve yet.
    pub async fn load(options: &Options) -> Result<Self, ConfigError> {
        Controller::from_source(FileSource::new(&options.config, options.poll_interval)).await
    }
}

impl<S: Source + 'static> Controller<S> {
    /// Takes the first state from `source`, which must be good.
    pub async fn from_source(mut source: S) -> Result<Self, ConfigError> {
        let mesh = source.next().await?;
        tracing::info!(
            source = %source.describe(),
            services = mesh.services.len(),
            workloads = mesh.workloads.len(),
            "configuration loaded"
        );
        let state = Arc::new(State::new(source.describe(), mesh));
        Ok(Controller { source, state })
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves discovery on `grpc` and the HTTP API on `http`, reloading from the
    /// source, until `shutdown` resolves.
    pub async fn serve(
        self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Controller { mut source, state } = self;
        let metrics = Arc::new(Metrics::new(state.clone()).context("metrics")?);
        let grpc_addr: SocketAddr = grpc.local_addr().context("gRPC listener address")?;
        let http_addr: SocketAddr = http.local_addr().context("HTTP listener address")?;
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "weft-controller serving");

        let reload_state = state.clone();
        let reload = tokio::spawn(async move {
            loop {
                match source.next().await {
                    Ok(mesh) => match reload_state.apply(mesh) {
                        Some(version) => tracing::info!(version, "configuration reloaded"),
                        None => tracing::info!("configuration reloaded; no change"),
                    },
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "bad configuration; still serving the last good one"
                        );
                        reload_state.record_error(e);
                    }
                }
            }
        });

        let closed = state.closed();
        let grpc_server = tonic::transport::Server::builder()
            .add_service(DiscoveryService::new(state.clone()).into_server())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc),
                closed,
            );
        let api = Api {
            state: state.clone(),
            metrics,
        };
        let http_server = crate::http::serve(http, api, state.closed());
        let grpc_task = tokio::spawn(grpc_server);
        let http_task = tokio::spawn(http_server);

        shutdown.await;
        tracing::info!("shutting down");
        reload.abort();
        state.close();
        let grpc_result = grpc_task.await.context("gRPC server task")?;
        http_task.await.context("HTTP server task")?;
        grpc_result.context("gRPC server")?;
        Ok(())
    }
}
