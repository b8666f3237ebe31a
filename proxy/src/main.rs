//! The `weft-proxy` binary: flags and environment to [`ProxyConfig`], runtime set-up,
//! signal handling. Everything else lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weft_proxy::discovery::DiscoveryConfig;
use weft_proxy::orig_dst::KernelOrigDst;
use weft_proxy::{BoundProxy, ProxyConfig};
use weft_runtime::signals::shutdown_signal;

/// weft's transparent sidecar proxy. Run it as the proxy uid (1337) that weft-init
/// excludes from capture; it needs no privilege.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, args_override_self = true)]
struct Args {
    /// This pod's service name: the source of its outbound traffic and the destination
    /// of its inbound traffic in metrics.
    #[arg(long, env = "WEFT_SERVICE", default_value = "unknown")]
    service: String,
    /// The controller's discovery URL (e.g. http://10.211.0.1:15010). Without it the
    /// proxy forwards every connection to its original destination (passthrough).
    #[arg(long, env = "WEFT_CONTROLLER")]
    controller: Option<String>,
    /// An id for the controller's logs (e.g. the pod name).
    #[arg(long, env = "WEFT_PROXY_ID", default_value = "")]
    proxy_id: String,
    /// The pod's name: `k8s.pod.name` in the metrics' resource (OTLP, and /metrics'
    /// target_info) [default: --proxy-id, which the local mesh sets to the pod's
    /// name].
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The pod's namespace: `service.namespace` in the metrics' resource
    /// [default: `default`].
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    #[command(flatten)]
    otlp: weft_runtime::otlp::OtlpArgs,
    /// With an OTLP endpoint, the share (0 to 1) of HTTP requests arriving without
    /// a sampling decision (no `traceparent`) that get spans; a request whose
    /// `traceparent` says sampled always does, one that says not sampled never
    /// [default: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, then 0.01].
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATIO")]
    trace_sample_ratio: Option<f64>,
    /// A file holding this proxy's credential for the controller (a bearer token:
    /// one of the controller's --api-tokens, or on Kubernetes the pod's projected
    /// ServiceAccount token). Read again on every (re)connect, so a rotated token
    /// is picked up.
    #[arg(long, env = "WEFT_CONTROLLER_TOKEN_FILE", requires = "controller")]
    controller_token_file: Option<std::path::PathBuf>,
    /// Keep a workload certificate: a key made here, signed by the controller's CA
    /// (its --ca-dir) for this pod's identity, renewed at 70% of its lifetime;
    /// shown on the admin /identity; with it, this sidecar takes and makes mutual
    /// TLS with its peers (ARCHITECTURE.md, Mutual TLS).
    #[arg(long, env = "WEFT_IDENTITY", requires = "controller")]
    identity: bool,
    /// A discovery update that would leave more services than this is rejected
    /// (the controller shows why; the previous routes stay): discovery state is
    /// bounded.
    #[arg(long, env = "WEFT_MAX_SERVICES", default_value_t = weft_proxy::discovery::DEFAULT_MAX_SERVICES)]
    max_services: usize,
    /// Port of the outbound capture listener (bound on 127.0.0.1 and ::1).
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// Port of the inbound capture listener (bound on 0.0.0.0 and ::).
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// Port of the tunnel listener (bound on 0.0.0.0 and ::), through which peer
    /// sidecars reach this pod's applications, and the port opaque connections to
    /// meshed endpoints are dialled on; 0: no tunnel, neither served nor dialled.
    #[arg(long, env = "WEFT_TUNNEL_PORT", default_value_t = 15008)]
    tunnel_port: u16,
    /// Admin endpoint: /connections, /config.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15000")]
    admin_listen: SocketAddr,
    /// Metrics and health endpoint: /metrics, /ready, /live.
    #[arg(long, env = "WEFT_METRICS_LISTEN", default_value = "0.0.0.0:15020")]
    metrics_listen: SocketAddr,
    /// Upper bound on connecting to an upstream (e.g. 500ms, 5s).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// HTTP: upper bound from a request's arrival to its response head; then 504.
    #[arg(long, env = "WEFT_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// HTTP/1: how long a client has to send a request head; then 408 and close.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// Opaque TCP: close a connection that carried no byte either way for this
    /// long (a service's policy `idle_timeout` overrides it).
    #[arg(long, env = "WEFT_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    tcp_idle_timeout: Duration,
    /// Opaque TCP: once one direction has ended, close the connection after the
    /// other carried no byte for this long (a service's policy overrides it).
    #[arg(long, env = "WEFT_HALF_CLOSE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    half_close_timeout: Duration,
    /// Idle time before the first keepalive probe on every relayed socket (client
    /// and upstream), so that a peer gone without a FIN is noticed (probes then
    /// every 10 s, or at this pace when shorter; 3 unanswered: gone); 0: none.
    #[arg(long, env = "WEFT_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    tcp_keepalive: Duration,
    /// How long sent data (and keepalive probes) may go unacknowledged on a relayed
    /// socket before it is aborted (TCP_USER_TIMEOUT); 0 (the default): the
    /// kernel's ~15 minutes. Linux also aborts on a zero window held this long, so a
    /// reader that pauses longer loses its connection.
    #[arg(long, env = "WEFT_TCP_USER_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    tcp_user_timeout: Duration,
    /// After SIGTERM, how long open connections may keep going before the proxy exits.
    #[arg(long, env = "WEFT_DRAIN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// With a controller: after SIGTERM, the proxy first tells the controller it is
    /// draining (its endpoints are withdrawn at once) and keeps serving this long,
    /// HTTP/1 responses saying `Connection: close`, so that peers stop choosing it
    /// before it stops accepting; then the drain grace begins. 0 skips it.
    #[arg(long, env = "WEFT_DRAIN_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// Record no weft_* traffic series (connections, bytes, requests, errors; process
    /// metrics stay). Only for measuring what telemetry costs: a mesh without them
    /// is blind.
    #[arg(long, env = "WEFT_NO_TRAFFIC_METRICS")]
    no_traffic_metrics: bool,
    /// Connections served at once; further ones are reset and counted as overload.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: u32,
    /// Closed connections remembered by /connections.
    #[arg(long, env = "WEFT_CLOSED_HISTORY", default_value_t = 100)]
    closed_history: usize,
    /// Worker threads of the data-path runtime (1: a current-thread runtime).
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Log filter: `target=level` directives and a default level, e.g. info or
    /// info,weft_proxy=debug.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<ProxyConfig> {
        let mut config =
            ProxyConfig::with_ports(self.outbound_port, self.inbound_port, self.tunnel_port);
        config.service = self.service;
        config.admin_listen = self.admin_listen;
        config.metrics_listen = self.metrics_listen;
        config.connect_timeout = self.connect_timeout;
        config.request_timeout = self.request_timeout;
        config.header_read_timeout = self.header_read_timeout;
        config.tcp_idle_timeout = self.tcp_idle_timeout;
        config.half_close_timeout = self.half_close_timeout;
        config.tcp_keepalive = self.tcp_keepalive;
        config.tcp_user_timeout = self.tcp_user_timeout;
        config.drain_grace = self.drain_grace;
        config.drain_delay = self.drain_delay;
        config.traffic_metrics = !self.no_traffic_metrics;
        config.max_connections = self.max_connections;
        config.closed_history = self.closed_history;
        config.otlp = self.otlp.resolve()?;
        if let Some(destination) = self.otlp.resolve_traces()? {
            let sample_ratio = weft_runtime::traces::sample_ratio(self.trace_sample_ratio, |k| {
                std::env::var(k).ok()
            })?;
            config.traces = Some(weft_proxy::config::TraceConfig {
                destination,
                sample_ratio,
            });
        }
        config.pod = self
            .pod_name
            .filter(|p| !p.is_empty())
            .or_else(|| Some(self.proxy_id.clone()).filter(|p| !p.is_empty()));
        config.namespace = self.pod_namespace.filter(|n| !n.is_empty());
        config.discovery = self.controller.map(|controller| DiscoveryConfig {
            controller,
            service: config.service.clone(),
            proxy_id: self.proxy_id,
            token_file: self.controller_token_file,
            max_services: self.max_services,
            identity: self.identity,
        });
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    weft_runtime::logging::init(&args.log)
        .with_context(|| format!("bad --log filter {:?}", args.log))?;
    raise_fd_limit();
    // One worker: a current-thread runtime, as linkerd2-proxy runs on one core.
    // Every task then runs on this thread, with none of the multi-thread
    // scheduler's cross-thread wakeups.
    let runtime = match args.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
    }
    .context("building the runtime")?;
    let config = args.into_config()?;
    runtime.block_on(async move {
        let proxy = BoundProxy::bind(config, Arc::new(KernelOrigDst)).await?;
        tracing::info!(
            uid = nix::unistd::getuid().as_raw(),
            outbound = ?proxy.outbound_addrs(),
            inbound = ?proxy.inbound_addrs(),
            tunnel = ?proxy.tunnel_addrs(),
            admin = %proxy.admin_addr()?,
            metrics = %proxy.metrics_addr()?,
            "weft-proxy serving"
        );
        let outcome = proxy.run(shutdown_signal()).await;
        if outcome.abandoned > 0 {
            tracing::warn!(
                abandoned = outcome.abandoned,
                "grace period over; closing remaining connections"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        anyhow::Ok(())
    })?;
    // Abandoned connections are cut when the runtime drops.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Each proxied connection holds two descriptors; the default soft limit of 1024
/// would cap a sidecar at ~500 connections, so take the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
