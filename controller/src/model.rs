//! The mesh model: services (VIP, ports, endpoints, policy) and workloads, as validated
//! types. Field-level rules (address syntax, port ranges, name syntax, replicas >= 1)
//! are enforced by the types themselves when deserializing; rules across fields and
//! entries (unique VIP:port, workloads referring to existing services, ...) by
//! [`Mesh::validate`], whose errors say where ([`Locus`]) so a source can name the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};

use serde::{Deserialize, Serialize};

/// The whole mesh: every service, and the workloads the local mesh runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// Services by name (required, so that a file that lost it is not an empty mesh).
    pub services: BTreeMap<Name, Service>,
    /// Workloads by name (used by the local mesh, `weftctl up`).
    #[serde(default)]
    pub workloads: BTreeMap<Name, Workload>,
}

/// A service or workload name: DNS labels (1 to 63 of `[a-z0-9-]`, starting and
/// ending with a letter or digit) joined by dots, at most 253 characters. Kubernetes
/// services are named `<name>.<namespace>`; a workload's name is one label (the
/// mesh file checks that: it becomes a pod and namespace name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(format!(
                "invalid name {s:?}: use 1 to 63 of [a-z0-9-], starting and ending with a letter or digit (dots may join such labels)"
            ));
        }
        Ok(Name(s))
    }
}

impl TryFrom<&str> for Name {
    type Error = String;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Name::try_from(s.to_owned())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service: the VIP apps dial, its ports, the endpoints behind it, its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The virtual IP (IPv4 or IPv6) apps dial.
    pub vip: IpAddr,
    /// The ports served on the VIP.
    pub ports: Vec<Port>,
    /// Endpoint addresses; each port's `target_port` applies.
    #[serde(default)]
    pub endpoints: Vec<IpAddr>,
    /// Per-service policy (timeouts, retries, breaker, lb: later).
    #[serde(default)]
    pub policy: Policy,
    /// Mutual TLS between sidecars for this service's endpoints.
    #[serde(default, skip_serializing_if = "MtlsMode::is_default")]
    pub mtls: MtlsMode,
    /// Who may call the service's endpoints, per port: a port some entry names
    /// takes only the callers its entries allow (ARCHITECTURE.md, Authorization).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<Authorization>,
}

/// One authorization entry: the callers allowed on a port of the service (or on
/// every port, without `port`). A port with entries refuses every other caller,
/// plaintext ones included; `allow: []` refuses all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// A port of the service (its `port`, not the target port); unset: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<NonZeroU16>,
    /// The callers allowed: any one of them matching the caller's mutual TLS
    /// identity lets it in.
    pub allow: Vec<Source>,
}

/// A caller an authorization entry allows, by its sidecar's workload identity.
/// Written as a map with one key (`- service: frontend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SourceSpec", into = "SourceSpec")]
pub enum Source {
    /// One SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`).
    Identity(String),
    /// The identities discovery names on the service's endpoints (the sidecars
    /// that serve it).
    Service(Name),
    /// Every identity of a namespace (`.../ns/<namespace>/...`; the local mesh's
    /// workloads are in `local`).
    Namespace(Name),
}

/// A [`Source`] as written: exactly one of the keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<Name>,
}

impl TryFrom<SourceSpec> for Source {
    type Error = String;

    fn try_from(s: SourceSpec) -> Result<Self, Self::Error> {
        match (s.identity, s.service, s.namespace) {
            (Some(id), None, None) => Ok(Source::Identity(id)),
            (None, Some(name), None) => Ok(Source::Service(name)),
            (None, None, Some(ns)) => Ok(Source::Namespace(ns)),
            _ => Err("a source names exactly one of identity, service or namespace".to_owned()),
        }
    }
}

impl From<Source> for SourceSpec {
    fn from(s: Source) -> Self {
        let mut spec = SourceSpec {
            identity: None,
            service: None,
            namespace: None,
        };
        match s {
            Source::Identity(id) => spec.identity = Some(id),
            Source::Service(name) => spec.service = Some(name),
            Source::Namespace(ns) => spec.namespace = Some(ns),
        }
        spec
    }
}

impl Source {
    /// What is wrong with it: an identity that is no SPIFFE ID (`spiffe://`, a
    /// trust domain and a path, printable ASCII, at most 2,048 bytes), or a
    /// namespace that is not one DNS label.
    pub fn problem(&self) -> Option<String> {
        match self {
            Source::Identity(id) => {
                let ok = id.len() <= 2048
                    && id.strip_prefix("spiffe://").is_some_and(|rest| {
                        rest.split_once('/')
                            .is_some_and(|(domain, path)| !domain.is_empty() && !path.is_empty())
                            && rest.bytes().all(|b| b.is_ascii_graphic())
                    });
                (!ok).then(|| {
                    format!("identity {id:?} is no SPIFFE ID (spiffe://<trust-domain>/<path>)")
                })
            }
            Source::Namespace(ns) if ns.as_str().contains('.') => {
                Some(format!("namespace {:?} is not one label", ns.as_str()))
            }
            Source::Service(_) | Source::Namespace(_) => None,
        }
    }
}

/// How a service's endpoints take traffic from other sidecars (ARCHITECTURE.md,
/// Mutual TLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mutual TLS from peers that hold a certificate, plaintext from the rest.
    #[default]
    Permissive,
    /// Mutual TLS only: plaintext is refused (reset).
    Strict,
    /// Plaintext: clients do not secure connections to the service's endpoints.
    Disabled,
}

impl MtlsMode {
    fn is_default(&self) -> bool {
        *self == MtlsMode::default()
    }
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PortSpec")]
pub struct Port {
    /// The port on the VIP, 1..=65535.
    pub port: NonZeroU16,
    /// The port on the endpoints, 1..=65535 (defaults to `port`).
    pub target_port: NonZeroU16,
    /// How the proxy treats the traffic.
    pub protocol: Protocol,
}

/// The port as written in the mesh file (`target_port` optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    port: NonZeroU16,
    target_port: Option<NonZeroU16>,
    #[serde(default)]
    protocol: Protocol,
}

impl From<PortSpec> for Port {
    fn from(p: PortSpec) -> Self {
        Port {
            port: p.port,
            target_port: p.target_port.unwrap_or(p.port),
            protocol: p.protocol,
        }
    }
}

/// How the proxy treats a port's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1 and HTTP/2, else TCP.
    #[default]
    Auto,
    /// HTTP.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// Per-service policy. For now the controller's own part of it, the active health
/// check; timeouts, retries, breaker and lb (the proxy's part) come with the L7 work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How the controller checks this service's endpoints. Unset: the controller's
    /// flags decide (by default only registered endpoints are checked, by TCP
    /// connect); set: every endpoint of the service is checked with these settings,
    /// each unset field taking the controller's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPolicy>,
    // The proxies' part (ARCHITECTURE.md, Data-plane defaults), carried as the
    // discovery API's `Policy`.
    // Unset fields take the proxy's defaults: timeout 15s, connect_timeout 5s,
    // idle_timeout 300s (HTTP; opaque TCP 1h unless set), half_close_timeout 60s;
    // retries 2 on connect-failure, reset and 503 within 20% +
    // 10/s; breaker after 5 consecutive failures, 10s growing to 300s, at most 50%
    // of the endpoints; lb round_robin.
    /// The whole request, from arrival to response head, retries included.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
    /// Establishing one upstream connection.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<std::time::Duration>,
    /// How long a connection may stay idle: a pooled upstream or a client's
    /// keep-alive HTTP connection between requests, and (when set) an opaque TCP
    /// connection that carries no byte either way.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<std::time::Duration>,
    /// Opaque TCP: once one direction has ended, how long the other may carry no
    /// byte before the connection is closed.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub half_close_timeout: Option<std::time::Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LoadBalancer>,
}

/// `policy.retries`: retries happen only for idempotent methods or when the request
/// was never sent, and never beyond the budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (0 turns retries off), at most [`MAX_RETRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Retries add at most this percentage of the requests (0..=100) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
    /// ... plus this many per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// What is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOn>>,
}

/// The most retries a request may get.
pub const MAX_RETRIES: u32 = 10;

/// One `retries.on` condition: `connect-failure`, `reset`, `gateway-error` (a 502,
/// 503 or 504 from the endpoint), or a 5xx status code written as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RetryOnSpec", into = "String")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    GatewayError,
    Status(u16),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RetryOnSpec {
    Code(u64),
    Word(String),
}

impl TryFrom<RetryOnSpec> for RetryOn {
    type Error = String;

    fn try_from(s: RetryOnSpec) -> Result<Self, String> {
        let code = |c: u64| match u16::try_from(c) {
            Ok(c @ 500..=599) => Ok(RetryOn::Status(c)),
            _ => Err(format!(
                "retry on status {c}: only 5xx statuses are retried"
            )),
        };
        match s {
            RetryOnSpec::Code(c) => code(c),
            RetryOnSpec::Word(w) => match w.as_str() {
                "connect-failure" => Ok(RetryOn::ConnectFailure),
                "reset" => Ok(RetryOn::Reset),
                "gateway-error" => Ok(RetryOn::GatewayError),
                other => match other.parse::<u64>() {
                    Ok(c) => code(c),
                    Err(_) => Err(format!(
                        "unknown retry condition {other:?}: use connect-failure, reset, gateway-error or a 5xx status"
                    )),
                },
            },
        }
    }
}

impl From<RetryOn> for String {
    fn from(r: RetryOn) -> String {
        match r {
            RetryOn::ConnectFailure => "connect-failure".into(),
            RetryOn::Reset => "reset".into(),
            RetryOn::GatewayError => "gateway-error".into(),
            RetryOn::Status(c) => c.to_string(),
        }
    }
}

/// `policy.circuit_breaker`: consecutive failures eject an endpoint for a growing
/// backoff; one probe request when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Consecutive failures that eject an endpoint (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<NonZeroU32>,
    /// The first ejection's length; the n-th lasts n times as long.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection: Option<std::time::Duration>,
    /// The longest ejection.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection: Option<std::time::Duration>,
    /// At most this percentage (0..=100) of the endpoints is ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// `policy.lb`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Round robin per request (per connection for opaque TCP).
    #[default]
    RoundRobin,
    /// Power of two choices over peak-EWMA latency.
    P2cEwma,
}

impl Policy {
    /// What is wrong with its L7 part: a zero duration, a percentage over 100, too many
    /// retries, an empty `on` list, a base ejection longer than the maximum.
    pub fn l7_problem(&self) -> Option<String> {
        for (what, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("half_close_timeout", self.half_close_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Some(format!("{what} must be more than 0"));
            }
        }
        if let Some(r) = &self.retries {
            if r.attempts.is_some_and(|a| a > MAX_RETRIES) {
                return Some(format!("retries: attempts is at most {MAX_RETRIES}"));
            }
            if r.budget_percent.is_some_and(|p| p > 100) {
                return Some("retries: budget_percent is at most 100".into());
            }
            if r.on.as_ref().is_some_and(Vec::is_empty) {
                return Some("retries: `on` is empty; turn retries off with attempts: 0".into());
            }
        }
        if let Some(b) = &self.circuit_breaker {
            if b.max_ejection_percent.is_some_and(|p| p > 100) {
                return Some("circuit_breaker: max_ejection_percent is at most 100".into());
            }
            if b.base_ejection.is_some_and(|d| d.is_zero()) {
                return Some("circuit_breaker: base_ejection must be more than 0".into());
            }
            if let (Some(base), Some(max)) = (b.base_ejection, b.max_ejection) {
                if base > max {
                    return Some(format!(
                        "circuit_breaker: base_ejection {} is longer than max_ejection {}",
                        humantime::format_duration(base),
                        humantime::format_duration(max)
                    ));
                }
            }
        }
        None
    }
}

/// A service's active health check, as written under `policy.health_check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckPolicy {
    /// `false` turns checks off for this service (its endpoints are always served).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time between two checks of one endpoint (e.g. `2s`, `500ms`).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<std::time::Duration>,
    /// How long one check may take.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
    /// Consecutive failures that withdraw an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<NonZeroU32>,
    /// Consecutive successes that bring a withdrawn endpoint back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<NonZeroU32>,
    /// The port checked; default: the endpoint's registered port, else the
    /// service's first target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<NonZeroU16>,
    /// Check with `GET <http_path>` (a 2xx passes) instead of a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
}

fn yes() -> bool {
    true
}

/// `Option<Duration>` written as a humantime string (`250ms`, `2s`, `1m`).
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("duration {text:?}: {e}"))),
        }
    }
}

/// Where an endpoint (or a service) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The mesh file.
    File,
    /// The registration API.
    Registry,
    /// Kubernetes Services and EndpointSlices.
    Kubernetes,
}

impl SourceKind {
    /// `file`, `registry` or `kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Registry => "registry",
            SourceKind::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint registered over the API: it joins a service another source defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The service it serves.
    pub service: Name,
    /// Its address.
    pub address: IpAddr,
    /// The port it serves on: one of the service's target ports (checked when
    /// registering); the health check uses it. `None`: the service's target ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<NonZeroU16>,
    /// Relative weight, 1..=1000 (default 1). Stored and shown; proxies balance
    /// evenly until the discovery API carries weights.
    #[serde(default = "one_u32")]
    pub weight: NonZeroU32,
    /// Free-form labels (e.g. zone, version), shown with the endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn one_u32() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// The largest weight a registration may have.
pub const MAX_WEIGHT: u32 = 1000;
/// The most labels a registration may have.
pub const MAX_LABELS: usize = 32;

impl Registration {
    /// Checks what the types alone do not: a usable address, the weight's range,
    /// label syntax (keys: 1 to 63 of `[A-Za-z0-9._/-]`, starting with a letter or
    /// digit; values: at most 63 of `[A-Za-z0-9._-]`; at most 32).
    pub fn validate(&self) -> Result<(), String> {
        if !usable(self.address) {
            return Err(format!(
                "address {} is not a usable unicast address",
                self.address
            ));
        }
        if self.weight.get() > MAX_WEIGHT {
            return Err(format!(
                "weight {} is out of range 1..={MAX_WEIGHT}",
                self.weight
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "{} labels: at most {MAX_LABELS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.starts_with(|c: char| c.is_ascii_alphanumeric())
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
            if !key_ok {
                return Err(format!(
                    "label key {k:?}: use 1 to 63 of [A-Za-z0-9._/-], starting with a letter or digit"
                ));
            }
            let value_ok = v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !value_ok {
                return Err(format!(
                    "label {k}: value {v:?}: use at most 63 of [A-Za-z0-9._-]"
                ));
            }
        }
        Ok(())
    }
}

/// A workload the local mesh runs: replicas of a command, endpoints of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The service the replicas serve.
    pub service: Name,
    /// How many replicas, >= 1.
    #[serde(default = "one")]
    pub replicas: NonZeroU32,
    /// The command each replica runs.
    pub command: String,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// Where in the mesh a validation error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locus {
    /// A service's field (`vip`, `ports`, `endpoints`, ...).
    ServiceField(Name, &'static str),
    /// The `index`-th port of a service.
    Port(Name, usize),
    /// The `index`-th endpoint of a service.
    Endpoint(Name, usize),
    /// A workload's field.
    WorkloadField(Name, &'static str),
}

/// A rule across fields or entries that the mesh breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where.
    pub locus: Locus,
    /// What is wrong.
    pub message: String,
}

impl Mesh {
    /// Checks the rules the types alone do not: the VIP is a usable unicast address;
    /// each VIP:port belongs to one service and one port entry; a service's endpoints
    /// are distinct, usable addresses; a workload refers to an existing service and
    /// has a command. Returns every broken rule, in mesh order.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut err = |locus, message: String| errors.push(ValidationError { locus, message });
        let mut vip_ports: BTreeMap<(IpAddr, u16), &Name> = BTreeMap::new();
        for (name, svc) in &self.services {
            if !usable(svc.vip) {
                err(
                    Locus::ServiceField(name.clone(), "vip"),
                    format!(
                        "service {name}: vip {} is not a usable unicast address",
                        svc.vip
                    ),
                );
            }
            if svc.ports.is_empty() {
                err(
                    Locus::ServiceField(name.clone(), "ports"),
                    format!("service {name}: needs at least one port"),
                );
            }
            for (i, p) in svc.ports.iter().enumerate() {
                match vip_ports.get(&(svc.vip, p.port.get())) {
                    Some(other) => err(
                        Locus::Port(name.clone(), i),
                        format!(
                            "service {name}: {} is already used by service {other}",
                            std::net::SocketAddr::new(svc.vip, p.port.get())
                        ),
                    ),
                    None => {
                        vip_ports.insert((svc.vip, p.port.get()), name);
                    }
                }
            }
            if let Some(hc) = &svc.policy.health_check {
                if let Some(problem) = hc.problem() {
                    err(
                        Locus::ServiceField(name.clone(), "policy"),
                        format!("service {name}: health_check: {problem}"),
                    );
                }
            }
            if let Some(problem) = svc.policy.l7_problem() {
                err(
                    Locus::ServiceField(name.clone(), "policy"),
                    format!("service {name}: policy: {problem}"),
                );
            }
            for problem in svc.authorization_problems() {
                err(
                    Locus::ServiceField(name.clone(), "authorization"),
                    format!("service {name}: authorization: {problem}"),
                );
            }
            let mut seen = BTreeSet::new();
            for (i, ep) in svc.endpoints.iter().enumerate() {
                if !usable(*ep) {
                    err(
                        Locus::Endpoint(name.clone(), i),
                        format!("service {name}: endpoint {ep} is not a usable unicast address"),
                    );
                } else if !seen.insert(*ep) {
                    err(
                        Locus::Endpoint(name.clone(), i),
                        format!("service {name}: endpoint {ep} is listed twice"),
                    );
                }
            }
        }
        for (name, w) in &self.workloads {
            if !self.services.contains_key(&w.service) {
                err(
                    Locus::WorkloadField(name.clone(), "service"),
                    format!("workload {name}: no service named {:?}", w.service.as_str()),
                );
            }
            if w.command.trim().is_empty() {
                err(
                    Locus::WorkloadField(name.clone(), "command"),
                    format!("workload {name}: command is empty"),
                );
            }
        }
        errors
    }
}

impl Service {
    /// What is wrong with its authorization entries: a port the service does not
    /// have, a malformed source.
    pub(crate) fn authorization_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for entry in &self.authorization {
            if let Some(port) = entry.port {
                if !self.ports.iter().any(|p| p.port == port) {
                    problems.push(format!("port {port} is not one of the service's ports"));
                }
            }
            problems.extend(entry.allow.iter().filter_map(Source::problem));
        }
        problems
    }
}

/// The shortest health-check interval accepted.
pub const MIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl HealthCheckPolicy {
    /// What is wrong with it on its own (the controller's defaults are checked
    /// against it when it is used): an interval under 100 ms, a zero timeout or one
    /// longer than the interval, an `http_path` not starting with `/` or holding
    /// spaces or control characters.
    pub fn problem(&self) -> Option<String> {
        if let Some(i) = self.interval {
            if i < MIN_CHECK_INTERVAL {
                return Some(format!(
                    "interval {} is under {}",
                    humantime::format_duration(i),
                    humantime::format_duration(MIN_CHECK_INTERVAL)
                ));
            }
        }
        if let Some(t) = self.timeout {
            if t.is_zero() {
                return Some("timeout must be more than 0".to_owned());
            }
            if let Some(i) = self.interval {
                if t > i {
                    return Some(format!(
                        "timeout {} is longer than the interval {}",
                        humantime::format_duration(t),
                        humantime::format_duration(i)
                    ));
                }
            }
        }
        if let Some(p) = &self.http_path {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Some(format!(
                    "http_path {p:?} must start with / and hold no spaces"
                ));
            }
        }
        None
    }
}

/// Not unspecified, multicast or broadcast.
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "backend", "api-v2", "0", &"a".repeat(63), "web.shop"] {
            assert!(Name::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Backend",
            "a_b",
            "a..b",
            ".a",
            "a.",
            "a.-b",
            &"a".repeat(64),
            &format!("{}.b", "a".repeat(64)),
        ] {
            assert!(Name::try_from(bad).is_err(), "{bad}");
        }
    }
}
