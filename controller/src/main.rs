//! `weft-controller`: flags, logging, listeners and signal handling. Everything else
//! lives in the library.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use weft_controller::auth::limits::LimitConfig;
use weft_controller::auth::AuthConfig;
use weft_controller::ca::CaConfig;
use weft_controller::health::{Defaults, Scope};
use weft_controller::inject::InjectConfig;
use weft_controller::metrics::Telemetry;
use weft_controller::registry::Caps;
use weft_controller::ui::Settings as UiSettings;
use weft_controller::webhook::Webhook;
use weft_controller::{Controller, Keepalive, Options};
use weft_runtime::signals::shutdown_signal;

/// weft's control plane: serves the mesh file's services, and endpoints registered
/// over its API, to the proxies; checks endpoints' health.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    otlp: weft_runtime::otlp::OtlpArgs,
    /// The controller's pod name: `k8s.pod.name` in the metrics' resource (OTLP,
    /// and /metrics' target_info) [default: none, the attribute is left out].
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The controller's namespace: `service.namespace` in the metrics' resource
    /// [default: `default`].
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// The YAML mesh file (watched and reloaded on change).
    #[arg(long, env = "WEFT_CONFIG")]
    config: PathBuf,
    /// Discovery API (gRPC) listen address.
    #[arg(long, env = "WEFT_GRPC_LISTEN", default_value = "0.0.0.0:15010")]
    grpc_listen: SocketAddr,
    /// HTTP API listen address (/v1/services, /v1/status, /metrics, /ready, /live).
    #[arg(long, env = "WEFT_HTTP_LISTEN", default_value = "0.0.0.0:15014")]
    http_listen: SocketAddr,
    /// How often the mesh file is read for changes where inotify is unavailable
    /// (elsewhere inotify reports them at once).
    #[arg(long, env = "WEFT_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Directory where registered endpoints are persisted (registry.json). Without
    /// it the registration API refuses changes: they would not survive a restart.
    #[arg(long, env = "WEFT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Also serve the cluster's Services and EndpointSlices (in-cluster config, or
    /// KUBECONFIG / ~/.kube/config). Service NAME in namespace NS is NAME.NS.
    #[arg(long, env = "WEFT_KUBERNETES", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    kubernetes: bool,
    /// Which endpoints are health-checked when their service's policy does not say:
    /// off, registered (registered endpoints only) or all.
    #[arg(long, env = "WEFT_HEALTH_CHECKS", default_value = "registered")]
    health_checks: Scope,
    /// Default time between two checks of one endpoint.
    #[arg(long, env = "WEFT_HEALTH_INTERVAL", default_value = "5s", value_parser = interval)]
    health_interval: Duration,
    /// Default time one check may take.
    #[arg(long, env = "WEFT_HEALTH_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// Default consecutive failures that withdraw an endpoint.
    #[arg(long, env = "WEFT_HEALTH_UNHEALTHY_THRESHOLD", default_value = "2")]
    health_unhealthy_threshold: NonZeroU32,
    /// Default consecutive passes that bring a withdrawn endpoint back.
    #[arg(long, env = "WEFT_HEALTH_HEALTHY_THRESHOLD", default_value = "2")]
    health_healthy_threshold: NonZeroU32,
    /// The sidecars' metrics and health port: meshed endpoints are checked with
    /// `GET <endpoint>:<port>/app-health/<app port>`.
    #[arg(long, env = "WEFT_SIDECAR_HEALTH_PORT", default_value_t = weft_controller::health::SIDECAR_HEALTH_PORT)]
    sidecar_health_port: u16,
    /// Serve the mutating admission webhook (sidecar injection, HTTPS) here, e.g.
    /// 0.0.0.0:15017. Needs --webhook-cert and --webhook-key.
    #[arg(long, env = "WEFT_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM).
    #[arg(long, env = "WEFT_WEBHOOK_CERT", requires = "webhook_listen")]
    webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WEFT_WEBHOOK_KEY", requires = "webhook_listen")]
    webhook_key: Option<PathBuf>,
    /// The image injected pods run weft-init and weft-proxy from.
    #[arg(long, env = "WEFT_INJECT_IMAGE", default_value_t = InjectConfig::default().image)]
    inject_image: String,
    /// The discovery URL injected proxies dial.
    #[arg(long, env = "WEFT_INJECT_CONTROLLER", default_value_t = InjectConfig::default().controller_url)]
    inject_controller: String,
    /// imagePullPolicy of the injected containers.
    #[arg(long, env = "WEFT_INJECT_PULL_POLICY", default_value = "IfNotPresent")]
    inject_pull_policy: String,
    /// The OTLP collector injected sidecars push metrics and request spans to
    /// (http://host:port; a pod's weft.dev/otlp-endpoint annotation overrides it,
    /// `none` opts out). Without it sidecars export nothing over OTLP.
    #[arg(long, env = "WEFT_INJECT_OTLP_ENDPOINT")]
    inject_otlp_endpoint: Option<String>,
    /// grpc or http/protobuf, for --inject-otlp-endpoint [default: weft-proxy's,
    /// http/protobuf].
    #[arg(
        long,
        env = "WEFT_INJECT_OTLP_PROTOCOL",
        requires = "inject_otlp_endpoint"
    )]
    inject_otlp_protocol: Option<String>,
    /// The share (0 to 1) of requests without a sampling decision that injected
    /// sidecars trace (a pod's weft.dev/trace-sample-ratio overrides it)
    /// [default: weft-proxy's, 0.01].
    #[arg(
        long,
        env = "WEFT_INJECT_TRACE_SAMPLE_RATIO",
        requires = "inject_otlp_endpoint"
    )]
    inject_trace_sample_ratio: Option<f64>,
    /// Bearer tokens API callers may present, with the services each may register
    /// into (YAML; followed on change). See ARCHITECTURE.md, Who may call what.
    #[arg(long, env = "WEFT_API_TOKENS")]
    api_tokens: Option<PathBuf>,
    /// `required`: every API call but /metrics, /ready and /live needs a credential
    /// (a token of --api-tokens, or with --kubernetes a ServiceAccount token).
    /// `off`: anyone who reaches the controller may change the mesh (a lab only).
    #[arg(long, env = "WEFT_API_AUTH", default_value = "required")]
    api_auth: AuthMode,
    /// The audience ServiceAccount tokens must be issued for (with --kubernetes).
    #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = weft_controller::auth::review::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Registration API writes per second one caller may make, sustained.
    #[arg(long, env = "WEFT_API_WRITE_RATE", default_value_t = LimitConfig::default().write_rate, value_parser = positive_rate)]
    api_write_rate: f64,
    /// Writes one caller may make at once after being quiet.
    #[arg(long, env = "WEFT_API_WRITE_BURST", default_value_t = LimitConfig::default().write_burst)]
    api_write_burst: NonZeroU32,
    /// Discovery Watches one caller (token, or ServiceAccount and pod) may hold open.
    #[arg(long, env = "WEFT_MAX_WATCHES_PER_CALLER", default_value_t = LimitConfig::default().watches_per_caller)]
    max_watches_per_caller: NonZeroU32,
    /// The mesh CA's directory (its key `ca.key` and root `ca.pem`, made on first
    /// start when empty): with it the controller signs workload certificates over
    /// the `Certificates` gRPC service, for callers whose credential names an
    /// identity.
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// The trust domain of the workloads' SPIFFE IDs.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "weft.local")]
    trust_domain: String,
    /// A workload certificate's lifetime (and the longest a proxy may ask for).
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = cert_lifetime)]
    cert_lifetime: Duration,
    /// Discovery connections: an HTTP/2 PING after this long without a frame (and
    /// the first TCP keepalive probe), so a subscriber that vanished without
    /// closing is noticed and its Watch ended; 0: off.
    #[arg(long, env = "WEFT_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    grpc_keepalive_interval: Duration,
    /// How long a discovery PING's acknowledgement (and each TCP keepalive probe)
    /// may take before the connection is closed.
    #[arg(long, env = "WEFT_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    grpc_keepalive_timeout: Duration,
    /// Registrations the registry takes in all.
    #[arg(long, env = "WEFT_MAX_REGISTRATIONS", default_value_t = Caps::default().total)]
    max_registrations: usize,
    /// Registered endpoints one service takes.
    #[arg(long, env = "WEFT_MAX_ENDPOINTS_PER_SERVICE", default_value_t = Caps::default().per_service)]
    max_endpoints_per_service: usize,
    /// The mesh page (`/ui/`): the proxies' metrics port, where it reads their
    /// `/metrics` and `/ready` at each subscribed proxy's address.
    #[arg(long, env = "WEFT_UI_PROXY_METRICS_PORT", default_value_t = UiSettings::default().metrics_port)]
    ui_proxy_metrics_port: u16,
    /// The mesh page: the proxies' admin port, where it reads their
    /// `/connections` (only where the proxies' --admin-listen is reachable from
    /// the controller, as in the local mesh; else the page says so).
    #[arg(long, env = "WEFT_UI_PROXY_ADMIN_PORT", default_value_t = UiSettings::default().admin_port)]
    ui_proxy_admin_port: u16,
    /// The mesh page: how often the proxies are read (its resolution).
    #[arg(long, env = "WEFT_UI_INTERVAL", default_value = "2s", value_parser = interval)]
    ui_interval: Duration,
    /// The mesh page: read the proxies even while nobody has the page open (by
    /// default they are read only within 10 minutes of the page's data being
    /// asked for, so a closed page costs the proxies nothing).
    #[arg(long, env = "WEFT_UI_ALWAYS_GATHER")]
    ui_always_gather: bool,
    /// Log filter: `target=level` directives and a default level, e.g. info or
    /// info,weft_controller=debug.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthMode {
    Required,
    Off,
}

fn cert_lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < weft_controller::ca::MIN_LIFETIME || d > weft_controller::ca::MAX_LIFETIME {
        return Err(format!(
            "between {} and {}",
            humantime::format_duration(weft_controller::ca::MIN_LIFETIME),
            humantime::format_duration(weft_controller::ca::MAX_LIFETIME)
        ));
    }
    Ok(d)
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("a number of writes per second above 0".to_owned()),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("0: a timeout must be longer".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < weft_controller::model::MIN_CHECK_INTERVAL {
        return Err("under 100ms".to_owned());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weft-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    weft_runtime::logging::init(&args.log)
        .with_context(|| format!("bad --log filter {:?}", args.log))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let telemetry = Telemetry {
        pod: args.pod_name.clone().filter(|p| !p.is_empty()),
        namespace: args.pod_namespace.clone().filter(|n| !n.is_empty()),
        otlp: args.otlp.resolve()?,
    };
    runtime.block_on(async move {
        if args.health_timeout.is_zero() || args.health_timeout > args.health_interval {
            anyhow::bail!("--health-timeout must be more than 0 and at most --health-interval");
        }
        if args.state_dir.is_none() {
            tracing::info!("no --state-dir: the registration API refuses changes");
        }
        if args.api_auth == AuthMode::Off {
            tracing::warn!("--api-auth off: anyone who reaches the controller may change the mesh");
        }
        let with_ca = args.ca_dir.is_some();
        let options = Options {
            auth: AuthConfig {
                required: args.api_auth == AuthMode::Required,
                tokens: args.api_tokens,
                audience: args.token_audience.clone(),
                limits: LimitConfig {
                    write_rate: args.api_write_rate,
                    write_burst: args.api_write_burst,
                    watches_per_caller: args.max_watches_per_caller,
                },
            },
            caps: Caps {
                total: args.max_registrations,
                per_service: args.max_endpoints_per_service,
            },
            ca: args.ca_dir.map(|dir| CaConfig {
                dir,
                trust_domain: args.trust_domain.clone(),
                lifetime: args.cert_lifetime,
            }),
            ui: UiSettings {
                metrics_port: args.ui_proxy_metrics_port,
                admin_port: args.ui_proxy_admin_port,
                interval: args.ui_interval,
                // A round's reads end before the next round starts.
                timeout: args.ui_interval.min(UiSettings::default().timeout),
                always: args.ui_always_gather,
                ..UiSettings::default()
            },
            keepalive: Keepalive {
                interval: (!args.grpc_keepalive_interval.is_zero())
                    .then_some(args.grpc_keepalive_interval),
                timeout: args.grpc_keepalive_timeout,
            },
            config: args.config,
            poll_interval: args.poll_interval,
            state_dir: args.state_dir,
            kubernetes: args.kubernetes,
            health: Defaults {
                scope: args.health_checks,
                interval: args.health_interval,
                timeout: args.health_timeout,
                unhealthy_threshold: args.health_unhealthy_threshold,
                healthy_threshold: args.health_healthy_threshold,
                sidecar_health_port: args.sidecar_health_port,
            },
        };
        let mut controller = Controller::load(&options).await?.with_telemetry(telemetry);
        if let (Some(addr), Some(cert), Some(key)) =
            (args.webhook_listen, &args.webhook_cert, &args.webhook_key)
        {
            let inject = InjectConfig {
                image: args.inject_image,
                controller_url: args.inject_controller,
                pull_policy: args.inject_pull_policy,
                token_audience: args.token_audience,
                identity: with_ca,
                telemetry: sidecar_telemetry(
                    args.inject_otlp_endpoint,
                    args.inject_otlp_protocol,
                    args.inject_trace_sample_ratio,
                )?,
            };
            let webhook = Webhook::from_pem_files(cert, key, inject)?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            controller = controller.with_webhook(listener, webhook);
        }
        let grpc = TcpListener::bind(args.grpc_listen)
            .await
            .with_context(|| format!("binding {}", args.grpc_listen))?;
        let http = TcpListener::bind(args.http_listen)
            .await
            .with_context(|| format!("binding {}", args.http_listen))?;
        controller.serve(grpc, http, shutdown_signal()).await
    })
}

/// The `--inject-otlp-*` flags, checked as weft-proxy would check them: a bad one
/// stops the controller rather than every injected sidecar.
fn sidecar_telemetry(
    endpoint: Option<String>,
    protocol: Option<String>,
    ratio: Option<f64>,
) -> anyhow::Result<weft_controller::inject::SidecarTelemetry> {
    if let Some(url) = &endpoint {
        weft_runtime::otlp::check_url(url, "--inject-otlp-endpoint").map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = &protocol {
        weft_runtime::otlp::Protocol::parse(p, "--inject-otlp-protocol")?;
    }
    if let Some(r) = ratio.filter(|r| !(0.0..=1.0).contains(r)) {
        anyhow::bail!("--inject-trace-sample-ratio: {r} is not a ratio from 0 to 1");
    }
    Ok(weft_controller::inject::SidecarTelemetry {
        otlp_endpoint: endpoint,
        otlp_protocol: protocol,
        trace_sample_ratio: ratio,
    })
}
