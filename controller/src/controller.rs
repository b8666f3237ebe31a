//! Ties the pieces together: the first good state of every [`DynSource`] (the mesh
//! file, the registry when there is a state directory, ...), merged into the served
//! mesh; then the gRPC and HTTP servers (and the admission webhook when configured),
//! the merge loop that follows the sources and the health checks, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::review::Reviewer;
use crate::auth::{Auth, AuthConfig};
use crate::ca::{Ca, CaConfig, CertificateService};
use crate::error::ConfigError;
use crate::grpc::DiscoveryService;
use crate::health::{self, Checker, HealthTable};
use crate::http::Api;
use crate::kubernetes::KubernetesSource;
use crate::merge::{merge, Catalog};
use crate::metrics::{Metrics, Telemetry};
use crate::model::SourceKind;
use crate::registry::{Caps, Registry};
use crate::source::{Contribution, DynSource, FileSource, DEFAULT_POLL_INTERVAL};
use crate::state::State;
use crate::ui::Ui;
use crate::webhook::Webhook;
use crate::xds::AdsService;

/// What the controller is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mesh file.
    pub config: PathBuf,
    /// How often the mesh file is read for changes where inotify is unavailable
    /// (elsewhere inotify reports them at once).
    pub poll_interval: Duration,
    /// Where registrations are persisted; `None`: the registration API refuses
    /// changes (`503`), since they could not survive a restart.
    pub state_dir: Option<PathBuf>,
    /// Health-check defaults.
    pub health: health::Defaults,
    /// Also follow Kubernetes Services and EndpointSlices (in-cluster config or
    /// kubeconfig); ServiceAccount tokens are then checked with TokenReviews.
    pub kubernetes: bool,
    /// Who may call the APIs.
    pub auth: AuthConfig,
    /// How many registrations the registry takes.
    pub caps: Caps,
    /// The mesh CA, served as the `Certificates` gRPC service (`--ca-dir`).
    pub ca: Option<CaConfig>,
    /// How the discovery server notices subscribers that vanished.
    pub keepalive: Keepalive,
    /// How the mesh page reads the proxies.
    pub ui: crate::ui::Settings,
}

/// How the discovery (gRPC) server notices a peer that vanished without closing
/// (its node lost, a partition: no FIN, no RST). Without it such a Watch, its
/// task, its buffers and its slot under `--max-watches-per-caller` stay until a
/// push finds the peer gone, which on a quiet mesh is never. An HTTP/2 PING goes
/// out after `interval` without a frame and the connection is closed when its
/// acknowledgement has not come within `timeout`; TCP keepalive (first probe after
/// `interval`, then every `timeout`, 3 probes) also covers a connection that never
/// got as far as HTTP/2. Istio's discovery server uses the same figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before a PING (and the first TCP keepalive probe); `None`: off.
    pub interval: Option<Duration>,
    /// How long a PING's acknowledgement (and each TCP probe) may take.
    pub timeout: Duration,
}

/// TCP keepalive probes unanswered before the kernel gives a peer up.
const KEEPALIVE_PROBES: u32 = 3;

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Some(Duration::from_secs(30)),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Options for the mesh file at `config`, with defaults.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            state_dir: None,
            health: health::Defaults::default(),
            kubernetes: false,
            auth: AuthConfig::off(),
            caps: Caps::default(),
            ca: None,
            keepalive: Keepalive::default(),
            ui: crate::ui::Settings::default(),
        }
    }
}

/// A controller with a good first state from every source, ready to serve.
#[derive(Debug)]
pub struct Controller {
    sources: Vec<Box<dyn DynSource>>,
    /// Each source's kind and latest good contribution, in source order.
    parts: Vec<(SourceKind, Contribution)>,
    catalog: Arc<Catalog>,
    state: Arc<State>,
    registry: Option<Arc<Registry>>,
    health: Arc<HealthTable>,
    defaults: health::Defaults,
    webhook: Option<(TcpListener, Webhook)>,
    auth: Arc<Auth>,
    ca: Option<(Arc<Ca>, CaConfig)>,
    keepalive: Keepalive,
    telemetry: Telemetry,
    ui: crate::ui::Settings,
}

impl Controller {
    /// Loads the mesh file, with a state directory the registry, and with
    /// `kubernetes` the cluster's Services (in that priority order), and the API
    /// credentials. Fails, with file:line, when the mesh file or the token file is
    /// missing or bad, when the registry cannot be read (there is nothing good to
    /// serve yet), and when authentication is required with no way to pass it.
    pub async fn load(options: &Options) -> Result<Self, ConfigError> {
        let mut auth = Auth::new(&options.auth)?;
        let mut sources: Vec<Box<dyn DynSource>> = vec![Box::new(FileSource::new(
            &options.config,
            options.poll_interval,
        ))];
        let registry = match &options.state_dir {
            Some(dir) => {
                let registry = Registry::open(dir).map_err(|e| e.to_config_error())?;
                let registry = Arc::new(registry.with_caps(options.caps));
                sources.push(Box::new(registry.source()));
                Some(registry)
            }
            None => None,
        };
        if options.kubernetes {
            tracing::info!("waiting for the first lists of Services and EndpointSlices");
            let client = KubernetesSource::client().await?;
            let source = KubernetesSource::watch(client.clone());
            let reviewer = Reviewer::new(client, options.auth.audience.clone());
            auth = auth.with_kubernetes(reviewer, source.registrants());
            sources.push(Box::new(source));
        }
        if !auth.has_source() {
            return Err(ConfigError::new(
                "authentication",
                "no way to authenticate API callers: give --api-tokens FILE (or --kubernetes), or --api-auth off to let anyone change the mesh",
            ));
        }
        let ca = match &options.ca {
            Some(config) => {
                crate::ca::check_trust_domain(&config.trust_domain)
                    .map_err(|e| ConfigError::new("--trust-domain", e.to_string()))?;
                let ca = Ca::load_or_create(&config.dir, &config.trust_domain)
                    .map_err(|e| ConfigError::new("--ca-dir", e.to_string()))?;
                tracing::info!(dir = %config.dir.display(), trust_domain = %config.trust_domain, "mesh CA loaded");
                Some((Arc::new(ca), config.clone()))
            }
            None => None,
        };
        let controller =
            Controller::from_sources(sources, registry, options.health.clone()).await?;
        Ok(controller
            .with_auth(auth)
            .with_ca(ca)
            .with_keepalive(options.keepalive)
            .with_ui(options.ui.clone()))
    }

    /// Takes the first state from each of `sources` (in priority order: the first
    /// defines a service whose name or VIP:port a later one repeats), which must be
    /// good. `registry`, when given, is the store behind one of them and what the
    /// registration API changes.
    pub async fn from_sources(
        mut sources: Vec<Box<dyn DynSource>>,
        registry: Option<Arc<Registry>>,
        defaults: health::Defaults,
    ) -> Result<Self, ConfigError> {
        let mut parts = Vec::with_capacity(sources.len());
        for source in &mut sources {
            let first = source.next_boxed().await?;
            tracing::info!(
                source = %source.describe(),
                services = first.services.len(),
                registrations = first.registrations.len(),
                "configuration loaded"
            );
            parts.push((source.kind(), first));
        }
        let catalog = Arc::new(merge(parts.iter().map(|(k, c)| (*k, c))));
        for conflict in &catalog.conflicts {
            tracing::warn!("{conflict}");
        }
        let names = sources.iter().map(|s| s.describe()).collect();
        let state = Arc::new(State::new(names, catalog.served(|_, _| false)));
        state.set_catalog(catalog.clone());
        Ok(Controller {
            sources,
            parts,
            catalog,
            state,
            registry,
            health: Arc::new(HealthTable::default()),
            defaults,
            webhook: None,
            auth: Arc::new(Auth::new(&AuthConfig::off())?),
            ca: None,
            keepalive: Keepalive::default(),
            telemetry: Telemetry::default(),
            ui: crate::ui::Settings::default(),
        })
    }

    /// Authenticates API callers with `auth` (by default: anyone may call).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Serves `ca` as the `Certificates` gRPC service too (beside discovery).
    pub fn with_ca(mut self, ca: Option<(Arc<Ca>, CaConfig)>) -> Self {
        self.ca = ca;
        self
    }

    /// Notices vanished discovery peers as `keepalive` says (by default
    /// [`Keepalive::default`]).
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Reads the proxies for the mesh page as `ui` says (by default
    /// [`crate::ui::Settings::default`]).
    pub fn with_ui(mut self, ui: crate::ui::Settings) -> Self {
        self.ui = ui;
        self
    }

    /// Describes the controller's metrics with `telemetry` (its pod and namespace)
    /// and pushes them over OTLP too when it says so.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Serves the admission webhook on `listener` too.
    pub fn with_webhook(mut self, listener: TcpListener, webhook: Webhook) -> Self {
        self.webhook = Some((listener, webhook));
        self
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves discovery on `grpc` and the HTTP API on `http`, following the sources
    /// and the health checks, until `shutdown` resolves.
    pub async fn serve(
        self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Controller {
            sources,
            parts,
            catalog,
            state,
            registry,
            health,
            defaults,
            webhook,
            auth,
            ca,
            keepalive,
            telemetry,
            ui,
        } = self;
        let metrics = Arc::new(
            Metrics::with_telemetry(state.clone(), health.clone(), auth.clone(), &telemetry)
                .context("metrics")?,
        );
        let token_file = tokio::spawn(auth.clone().follow_token_file(state.closed()));
        let grpc_addr: SocketAddr = grpc.local_addr().context("gRPC listener address")?;
        let http_addr: SocketAddr = http.local_addr().context("HTTP listener address")?;
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "weft-controller serving");

        let (tx, rx) = mpsc::channel(16);
        let mut readers = Vec::new();
        for (i, mut source) in sources.into_iter().enumerate() {
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                loop {
                    let next = source.next_boxed().await;
                    if tx.send((i, next)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        let merger = tokio::spawn(merge_loop(
            rx,
            parts,
            catalog,
            state.clone(),
            health.clone(),
            defaults,
        ));

        let closed = state.closed();
        let grpc_server =
            tonic::transport::Server::builder()
                .http2_keepalive_interval(keepalive.interval)
                .http2_keepalive_timeout(Some(keepalive.timeout))
                .add_service(
                    DiscoveryService::new(state.clone(), auth.clone())
                        .with_identities(ca.as_ref().map(|(ca, c)| {
                            (c.trust_domain.clone(), Arc::from(ca.trust_bundle_pem()))
                        }))
                        .into_server(),
                )
                .add_service(AdsService::new(state.clone(), auth.clone()).into_server())
                .add_optional_service(ca.map(|(ca, config)| {
                    CertificateService::new(ca, auth.clone(), &config).into_server()
                }))
                .serve_with_incoming_shutdown(incoming(grpc, keepalive), closed);
        let ui = Arc::new(Ui::new(state.clone(), ui));
        // Ends by itself when the state closes.
        let gatherer = tokio::spawn(ui.gatherer().run());
        let api = Api {
            state: state.clone(),
            metrics,
            registry,
            health,
            auth,
            ui,
        };
        let http_server = crate::http::serve(http, api, state.closed());
        let grpc_task = tokio::spawn(grpc_server);
        let http_task = tokio::spawn(http_server);
        let webhook_task = webhook.map(|(listener, webhook)| {
            tokio::spawn(crate::webhook::serve(listener, webhook, state.closed()))
        });
        // Each Watch and API connection holds a task or more: once a wave of them
        // (a thousand subscribers, gone) has receded, the allocator's free pages
        // go back to the kernel (weft_runtime::memory).
        let runtime = tokio::runtime::Handle::current();
        let reclaim = tokio::spawn(weft_runtime::memory::reclaim_after_waves(
            move || runtime.metrics().num_alive_tasks(),
            || {},
        ));

        shutdown.await;
        tracing::info!("shutting down");
        for reader in &readers {
            reader.abort();
        }
        merger.abort();
        reclaim.abort();
        state.close();
        token_file.abort();
        gatherer.abort();
        let grpc_result = grpc_task.await.context("gRPC server task")?;
        http_task.await.context("HTTP server task")?;
        if let Some(task) = webhook_task {
            task.await.context("webhook server task")?;
        }
        grpc_result.context("gRPC server")?;
        Ok(())
    }
}

/// The discovery listener's connections, with TCP keepalive as `keepalive` says.
fn incoming(listener: TcpListener, keepalive: Keepalive) -> tonic::transport::server::TcpIncoming {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    match keepalive.interval {
        Some(interval) => incoming
            .with_keepalive(Some(interval))
            .with_keepalive_interval(Some(keepalive.timeout))
            .with_keepalive_retries(Some(KEEPALIVE_PROBES)),
        None => incoming,
    }
}

/// Follows the sources (their states arrive on `rx`) and the health checks: merges,
/// withdraws what fails its checks, publishes the result.
async fn merge_loop(
    mut rx: mpsc::Receiver<(usize, Result<Contribution, ConfigError>)>,
    mut parts: Vec<(SourceKind, Contribution)>,
    mut catalog: Arc<Catalog>,
    state: Arc<State>,
    health: Arc<HealthTable>,
    defaults: health::Defaults,
) {
    let mut checker = Checker::new(health.clone());
    // Meshed endpoints are checked through their sidecars: follow which they are.
    let mut snapshots = state.subscribe();
    let mut meshed = snapshots.borrow_and_update().meshed.clone();
    checker.set(health::probes(&catalog, &defaults, &meshed));
    loop {
        let why = tokio::select! {
            got = rx.recv() => {
                let Some((i, next)) = got else { return };
                match next {
                    Ok(contribution) => {
                        state.record_good(i);
                        let Some(part) = parts.get_mut(i) else { continue };
                        if part.1 == contribution {
                            tracing::info!(source = %part.0, "configuration reloaded; no change");
                            continue;
                        }
                        part.1 = contribution;
                        catalog = Arc::new(merge(parts.iter().map(|(k, c)| (*k, c))));
                        for conflict in &catalog.conflicts {
                            tracing::warn!("{conflict}");
                        }
                        state.set_catalog(catalog.clone());
                        checker.set(health::probes(&catalog, &defaults, &meshed));
                        "configuration reloaded"
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "bad configuration; still serving the last good one"
                        );
                        state.record_error(i, e);
                        continue;
                    }
                }
            }
            () = health.changed() => "endpoint health changed",
            () = state.drain_changed() => "a sidecar's draining changed",
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = snapshots.borrow_and_update().meshed.clone();
                if now != meshed {
                    meshed = now;
                    checker.set(health::probes(&catalog, &defaults, &meshed));
                }
                continue;
            }
        };
        state.prune_draining(|ip| catalog.endpoints().any(|(_, _, e)| e.address == *ip));
        let draining = state.draining();
        let served =
            catalog.served(|name, ip| health.is_withdrawn(name, ip) || draining.contains(&ip));
        match state.publish(served) {
            Some(version) => tracing::info!(version, "{why}"),
            None => tracing::info!("{why}; no change"),
        }
    }
}
