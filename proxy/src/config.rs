//! The proxy's configuration, independent of where it came from: `main` builds it from
//! flags and `WEFT_` environment variables, in-process tests build it directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use weft_runtime::otlp::{Destination, OtlpSettings};

use crate::discovery::DiscoveryConfig;

/// Everything a running proxy needs to know.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// This proxy's own service: `source_service` of outbound traffic and
    /// `destination_service` of inbound traffic.
    pub service: String,
    /// Where outbound-captured connections arrive (loopback only: REDIRECT in OUTPUT
    /// and the eBPF connect rewrite both target loopback, and binding wider would make
    /// the proxy an open relay for other pods).
    pub outbound_listen: Vec<SocketAddr>,
    /// Where inbound-captured connections arrive (all addresses: PREROUTING REDIRECT
    /// targets the receiving interface's address).
    pub inbound_listen: Vec<SocketAddr>,
    /// Where peer sidecars open tunnelled connections to this pod's applications
    /// (all addresses: peers dial the pod's address; kept out of inbound capture).
    /// Empty: no tunnel served.
    pub tunnel_listen: Vec<SocketAddr>,
    /// The tunnel port of peer sidecars, through which opaque connections to meshed
    /// endpoints are dialled (the mesh's convention, the one this proxy serves on);
    /// 0: every endpoint is dialled directly.
    pub tunnel_port: u16,
    /// Admin endpoint (`/connections`, `/config`); local only.
    pub admin_listen: SocketAddr,
    /// Metrics and health endpoint (`/metrics`, `/ready`, `/live`).
    pub metrics_listen: SocketAddr,
    /// Upper bound on establishing an upstream connection.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// HTTP: upper bound from a request's arrival to its response head (then 504),
    /// for services whose policy sets no `timeout`, and inbound.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub request_timeout: Duration,
    /// HTTP/1: how long a client has to send a request head (then 408 and close).
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// Opaque TCP: closed after carrying no byte either way for this long, unless
    /// the service's policy sets `idle_timeout`.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub tcp_idle_timeout: Duration,
    /// Opaque TCP: once one direction has ended, closed after the other carried
    /// no byte for this long, unless the service's policy sets it.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub half_close_timeout: Duration,
    /// Idle time before a relayed socket's first keepalive probe (0: no keepalive).
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub tcp_keepalive: Duration,
    /// How long data (and keepalive probes) sent on a relayed socket may go
    /// unacknowledged before the kernel aborts it (`TCP_USER_TIMEOUT`; 0: the
    /// kernel's default, about 15 minutes).
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub tcp_user_timeout: Duration,
    /// How long open connections may keep going after SIGTERM.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub drain_grace: Duration,
    /// With a controller: how long the proxy keeps serving after announcing its
    /// drain, before it stops accepting.
    #[serde(with = "crate::policy::humantime_serde_compat")]
    pub drain_delay: Duration,
    /// Record the `weft_*` traffic series (off only to measure what telemetry costs).
    pub traffic_metrics: bool,
    /// Connections served at once; more are reset and counted as `overload`.
    pub max_connections: u32,
    /// How many closed connections `/connections` remembers.
    pub closed_history: usize,
    /// The controller to take services from; `None`: passthrough only.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "controller_url"
    )]
    pub discovery: Option<DiscoveryConfig>,
    /// The pod this proxy serves (`k8s.pod.name` of its telemetry resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace (`service.namespace` of its telemetry resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Also push metrics over OTLP (ARCHITECTURE.md, Metrics); `None`: no
    /// exporter and nothing running for it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "otlp_target"
    )]
    pub otlp: Option<OtlpSettings>,
    /// Make a span per HTTP request and push them over OTLP (ARCHITECTURE.md,
    /// Traces); `None`: no spans, `traceparent` passes untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces: Option<TraceConfig>,
}

/// Where request spans go, and how many requests that come without a sampling
/// decision are sampled.
#[derive(Debug, Clone, Serialize)]
pub struct TraceConfig {
    #[serde(serialize_with = "destination")]
    pub destination: Destination,
    /// 0 to 1 (`--trace-sample-ratio`).
    pub sample_ratio: f64,
}

/// `/config` shows where spans are pushed and how.
fn destination<S: serde::Serializer>(d: &Destination, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({ "endpoint": d.endpoint, "protocol": d.protocol.as_str() }).serialize(s)
}

/// `/config` shows where metrics are pushed, how and how often.
fn otlp_target<S: serde::Serializer>(o: &Option<OtlpSettings>, s: S) -> Result<S::Ok, S::Error> {
    match o {
        Some(o) => serde_json::json!({
            "endpoint": o.endpoint,
            "protocol": o.protocol.as_str(),
            "interval_ms": u64::try_from(o.interval.as_millis()).unwrap_or(u64::MAX),
        })
        .serialize(s),
        None => s.serialize_none(),
    }
}

fn controller_url<S: serde::Serializer>(
    d: &Option<DiscoveryConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.controller),
        None => s.serialize_none(),
    }
}

impl ProxyConfig {
    /// The defaults of ARCHITECTURE.md, Ports: outbound 15001 on loopback, inbound 15006 on all
    /// addresses, the tunnel 15008 on all addresses (0: none, neither served nor
    /// dialled), admin 127.0.0.1:15000, metrics 0.0.0.0:15020.
    pub fn with_ports(outbound_port: u16, inbound_port: u16, tunnel_port: u16) -> Self {
        ProxyConfig {
            service: "unknown".to_string(),
            outbound_listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), outbound_port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), outbound_port),
            ],
            inbound_listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), inbound_port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), inbound_port),
            ],
            tunnel_listen: if tunnel_port == 0 {
                Vec::new()
            } else {
                vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), tunnel_port),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), tunnel_port),
                ]
            },
            tunnel_port,
            admin_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000),
            metrics_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15020),
            connect_timeout: Duration::from_secs(5),
            request_timeout: crate::policy::REQUEST_TIMEOUT,
            header_read_timeout: crate::l7::serve::HEADER_READ_TIMEOUT,
            tcp_idle_timeout: crate::policy::TCP_IDLE_TIMEOUT,
            half_close_timeout: crate::policy::HALF_CLOSE_TIMEOUT,
            tcp_keepalive: crate::tcp::liveness::KEEPALIVE,
            tcp_user_timeout: Duration::ZERO,
            drain_grace: Duration::from_secs(10),
            drain_delay: Duration::from_secs(3),
            traffic_metrics: true,
            max_connections: 100_000,
            closed_history: 100,
            discovery: None,
            pod: None,
            namespace: None,
            otlp: None,
            traces: None,
        }
    }
}

impl ProxyConfig {
    /// The policy defaults that come from the proxy's own settings.
    pub fn policy_defaults(&self) -> crate::policy::Defaults {
        crate::policy::Defaults {
            timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            tcp_idle_timeout: self.tcp_idle_timeout,
            half_close_timeout: self.half_close_timeout,
        }
    }

    /// The dead-peer options of every relayed socket (a zero setting is off).
    pub fn liveness(&self) -> crate::tcp::liveness::Liveness {
        let set = |d: Duration| (!d.is_zero()).then_some(d);
        crate::tcp::liveness::Liveness {
            keepalive: set(self.tcp_keepalive),
            user_timeout: set(self.tcp_user_timeout),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig::with_ports(15001, 15006, 15008)
    }
}
