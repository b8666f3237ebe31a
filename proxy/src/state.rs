//! What every task of one running proxy shares: its configuration, tables and
//! instruments, the balancers and the dialer, and the drain signals. Built once by
//! [`crate::server`]; read by the per-connection pipeline ([`crate::connection`])
//! and the admin endpoints ([`crate::admin`]), which therefore need not know each
//! other.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use weft_runtime::traces::TraceExport;

use crate::config::ProxyConfig;
use crate::conntable::ConnTable;
use crate::discovery::DiscoveryStatus;
use crate::l7::telemetry::HttpInstruments;
use crate::l7::{Registry, L7};
use crate::metrics::{Metrics, MetricsError};
use crate::orig_dst::OrigDstSource;
use crate::readiness::AppCheck;
use crate::routes::Routes;
use crate::tcp::connect::Connector;
use crate::tcp::relay::RelayLimits;

/// State shared by every task of one proxy.
pub struct Shared {
    pub config: ProxyConfig,
    pub metrics: Metrics,
    /// The request spans' export, with one configured: held for the L7 path's
    /// tracer, which sends to it; dropped with the proxy, it sends the last spans.
    _trace_export: Option<TraceExport>,
    pub conns: Arc<ConnTable>,
    pub orig_dst: Arc<dyn OrigDstSource>,
    /// Services and endpoints from discovery; empty (all passthrough) without one.
    pub routes: Arc<Routes>,
    /// Dials every upstream and knows the proxy's own upstream sockets (a captured
    /// connection coming *from* one of them is the proxy's traffic looping back).
    pub connector: Connector,
    /// The services' balancers, used by opaque connections and HTTP requests alike.
    pub balancers: Arc<Registry>,
    /// Inbound pools and instruments of the HTTP path.
    pub l7: L7,
    /// One permit per connection in service; drain waits until all are back.
    pub permits: Arc<Semaphore>,
    pub draining: Arc<AtomicBool>,
    /// Turns true when the drain begins (HTTP connections stop keep-alive, GOAWAY).
    pub stop: watch::Sender<bool>,
    /// This proxy's service name, shared by every connection's labels.
    pub own_service: Arc<str>,
    /// Whether the first discovery snapshot arrived (always true without discovery).
    pub synced: Arc<AtomicBool>,
    /// What discovery has done, for `/routes` (idle without discovery).
    pub discovery: Arc<DiscoveryStatus>,
    /// The workload certificate, for `/identity` (empty without `--identity`).
    pub identity: Arc<crate::identity::IdentityStatus>,
    /// The last check of the app's ports, for `/ready`.
    pub app_check: AppCheck,
    /// The proxy's own ports, which the tunnel does not reach.
    pub own_ports: Vec<u16>,
    /// The time bounds of opaque connections that no service's policy covers
    /// (passthrough, inbound): the proxy's defaults.
    pub tcp_limits: RelayLimits,
}

impl Shared {
    /// The state of a proxy running `config`, recovering original destinations
    /// with `orig_dst`, its listeners bound on `own_ports`.
    pub fn new(
        config: ProxyConfig,
        orig_dst: Arc<dyn OrigDstSource>,
        own_ports: Vec<u16>,
    ) -> Result<Self, MetricsError> {
        let metrics = Metrics::with_resource(
            &config.service,
            config.traffic_metrics,
            config.namespace.as_deref(),
            config.pod.as_deref(),
            config.otlp.as_ref(),
        )?;
        let discovery = Arc::new(DiscoveryStatus::default());
        if config.discovery.is_some() {
            metrics.observe_discovery(discovery.clone());
        }
        let identity = Arc::new(crate::identity::IdentityStatus::new(
            config.discovery.as_ref().is_some_and(|d| d.identity),
        ));
        let connector = Connector::new(config.tunnel_port)
            .with_liveness(config.liveness())
            .with_tls(identity.tls().clone());
        let instruments = HttpInstruments::new(
            &metrics.meter(),
            metrics.errors_counter().clone(),
            metrics.traffic_enabled(),
        );
        let traces = match &config.traces {
            Some(t) => Some(
                TraceExport::start(
                    &t.destination,
                    crate::metrics::resource(
                        &config.service,
                        config.namespace.as_deref(),
                        config.pod.as_deref(),
                    ),
                    t.sample_ratio,
                )
                .map_err(|e| MetricsError::Exporter(e.to_string()))?,
            ),
            None => None,
        };
        let tracing = traces
            .as_ref()
            .map(|t| crate::l7::trace::Tracing::new(t.tracer("weft-proxy")));
        let draining = Arc::new(AtomicBool::new(false));
        let l7 = L7::new(
            draining.clone(),
            connector.clone(),
            instruments,
            config.policy_defaults(),
            config.header_read_timeout,
            tracing,
        );
        let balancers = Arc::new(Registry::counting_ejections(metrics.ejections_counter()));
        Ok(Shared {
            own_service: Arc::from(config.service.as_str()),
            conns: Arc::new(ConnTable::new(config.closed_history)),
            permits: Arc::new(Semaphore::new(config.max_connections as usize)),
            synced: Arc::new(AtomicBool::new(config.discovery.is_none())),
            metrics,
            _trace_export: traces,
            orig_dst,
            routes: Arc::new(Routes::default()),
            connector,
            balancers,
            l7,
            draining,
            stop: watch::channel(false).0,
            discovery,
            identity,
            app_check: AppCheck::default(),
            own_ports,
            tcp_limits: RelayLimits {
                idle: config.tcp_idle_timeout,
                half_close: config.half_close_timeout,
            },
            config,
        })
    }
}
