//! The discovery client: subscribes to the controller's `Subscribe` stream (its
//! `Watch` where the controller has no `Subscribe`) and keeps the routing table
//! current, answering each update with an Ack: applied, or rejected with the reason
//! (an invalid service, or more services than `--max-services`), in which case the
//! previous table stays whole. The controller being away never stops the data path:
//! the last known table stays in force while the client reconnects with backoff.
//!
//! What the client has done is kept in a [`DiscoveryStatus`] (connected, updates
//! applied, last error) for `/routes` and the `weft_discovery_*` metrics; the version
//! and time of the applied table are kept with the table itself ([`Routes`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use weft_api::discovery::{
    self as api, subscribe_request, Ack, DrainRequest, MeshUpdate, SubscribeRequest, WatchRequest,
};
use weft_api::DiscoveryClient;

use crate::authz::{Authorization, Source};
use crate::identity::IdentityStatus;
use crate::policy::{Defaults, Policy};
use crate::routes::{Applied, MtlsMode, PortProtocol, Routes, ServicePort, ServiceSpec};

/// Where to subscribe and as whom.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The controller's gRPC URL, e.g. `http://10.211.0.1:15010`.
    pub controller: String,
    /// This proxy's service (sent so the controller can log and count subscribers).
    pub service: String,
    /// A free-form id for the controller's logs, e.g. the pod name.
    pub proxy_id: String,
    /// The file holding this proxy's bearer token for the controller; read on every
    /// (re)connect. `None`: calls carry no credential (a controller that requires
    /// one refuses them, and `/routes` says so).
    pub token_file: Option<std::path::PathBuf>,
    /// An update that would leave more services than this is rejected: the
    /// proxy's discovery state is bounded.
    pub max_services: usize,
    /// Also keep a workload certificate from the controller's CA
    /// ([`crate::identity`]).
    pub identity: bool,
}

/// The default of [`DiscoveryConfig::max_services`].
pub const DEFAULT_MAX_SERVICES: usize = 20_000;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Connecting to the controller (TCP and HTTP/2 handshake) gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An HTTP/2 ping on the discovery connection this often, also while idle ...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... and no answer within this means the controller is gone.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the discovery client has done, updated as it goes; read by `/routes` and by
/// the metrics' observable instruments (so nothing is counted twice).
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    connected: AtomicBool,
    updates_applied: AtomicU64,
    updates_rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_rejection: Mutex<Option<String>>,
}

impl DiscoveryStatus {
    /// Whether a Watch stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Updates (snapshots included) applied since the proxy started.
    pub fn updates_applied(&self) -> u64 {
        self.updates_applied.load(Ordering::Relaxed)
    }

    /// Why the last subscription failed or ended, if one did. Kept after a successful
    /// reconnect (it is history; [`DiscoveryStatus::connected`] is the present).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// Updates rejected since the proxy started.
    pub fn updates_rejected(&self) -> u64 {
        self.updates_rejected.load(Ordering::Relaxed)
    }

    /// Why the last rejected update was rejected (history, like the last error).
    pub fn last_rejection(&self) -> Option<String> {
        self.last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn rejected(&self, why: String) {
        self.updates_rejected.fetch_add(1, Ordering::Relaxed);
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// The `discovery` object of `/routes`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The controller's URL; `None` without discovery (everything is passthrough).
    pub controller: Option<String>,
    pub connected: bool,
    /// The first snapshot has been applied (always true without discovery).
    pub synced: bool,
    /// The controller's epoch and mesh version the routes are at.
    pub epoch: Option<u64>,
    pub version: Option<u64>,
    /// When that version was applied (ms since the Unix epoch).
    pub applied_at_unix_ms: Option<u64>,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    pub last_error: Option<String>,
    pub last_rejection: Option<String>,
}

impl StatusReport {
    /// The report for a proxy subscribed to `controller` (or not subscribed at all).
    pub fn new(
        controller: Option<&str>,
        status: &DiscoveryStatus,
        synced: bool,
        applied: Option<Applied>,
    ) -> Self {
        StatusReport {
            controller: controller.map(str::to_owned),
            connected: status.connected(),
            synced,
            epoch: applied.map(|a| a.epoch),
            version: applied.map(|a| a.version),
            applied_at_unix_ms: applied.map(|a| a.applied_at_unix_ms),
            updates_applied: status.updates_applied(),
            updates_rejected: status.updates_rejected(),
            last_error: status.last_error(),
            last_rejection: status.last_rejection(),
        }
    }
}

/// What discovery keeps up to date.
#[derive(Debug)]
pub struct Targets {
    pub routes: Arc<Routes>,
    /// Turns true with the first snapshot.
    pub synced: Arc<AtomicBool>,
    pub status: Arc<DiscoveryStatus>,
    /// Takes the trust bundle a snapshot carries.
    pub identity: Arc<IdentityStatus>,
}

/// Runs forever: subscribe, apply updates, and on any failure wait (doubling from
/// 100 ms up to 5 s) and subscribe again. `synced` turns true with the first
/// snapshot and stays true (the last known state keeps serving).
pub async fn run(
    config: DiscoveryConfig,
    targets: Targets,
    defaults: Defaults,
    draining: Arc<AtomicBool>,
) {
    let status = targets.status.clone();
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = watch_once(
            &config,
            &targets,
            &mut backoff,
            defaults,
            draining.load(Ordering::SeqCst),
        )
        .await;
        status.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => {
                status.set_error("the controller ended the stream".into());
                tracing::warn!(controller = %config.controller, "discovery stream ended; reconnecting")
            }
            Err(e) => {
                let why = describe(&e);
                tracing::warn!(controller = %config.controller, error = %why, retry_in = ?backoff, "discovery unavailable; keeping the last known routes");
                status.set_error(why);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The proxy's credential (`authorization: Bearer TOKEN`), read from its token
/// file: `None` without one; an error when the file cannot be read or holds no
/// token. Read once per (re)connect, so a rotated token is picked up.
pub(crate) fn credential(config: &DiscoveryConfig) -> Result<Option<AuthValue>, tonic::Status> {
    let Some(path) = &config.token_file else {
        return Ok(None);
    };
    // Not the controller's refusal but this proxy's own problem: another code, so
    // that `describe` does not blame the controller.
    let problem = |why: String| {
        tonic::Status::failed_precondition(format!(
            "controller token file {}: {why}",
            path.display()
        ))
    };
    let token = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(problem("no token in it".to_owned()));
    }
    format!("Bearer {token}")
        .parse()
        .map(Some)
        .map_err(|_| problem("not a token (characters a header cannot carry)".to_owned()))
}

type AuthValue = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `message` as a request carrying `credential`, if any.
pub(crate) fn authorized<T>(message: T, credential: Option<&AuthValue>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = credential {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// What `/routes` and the log say of a failed subscription: a refused credential
/// is named as such, with what to do.
fn describe(e: &tonic::Status) -> String {
    match e.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => format!(
            "the controller refused this proxy (no routes until it accepts): {} (see --controller-token-file)",
            e.message()
        ),
        _ => e.message().to_owned(),
    }
}

/// The controller's address with the timeouts that turn a controller that is gone
/// without a word (a host that died, a network that drops packets, a port that
/// accepts but never answers) into an error and a reconnect, instead of a stream
/// that waits forever: a bounded connect, and HTTP/2 pings on the open stream.
pub(crate) fn controller_endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("controller URL {url:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

async fn watch_once(
    config: &DiscoveryConfig,
    targets: &Targets,
    backoff: &mut Duration,
    defaults: Defaults,
    draining: bool,
) -> Result<(), tonic::Status> {
    let Targets {
        routes,
        synced,
        status,
        identity,
    } = targets;
    let watch = WatchRequest {
        service: config.service.clone(),
        proxy_id: config.proxy_id.clone(),
        addresses: pod_addresses(),
        draining,
        mtls: config.identity,
    };
    // Read first: a token file it cannot read is known before connecting.
    let credential = credential(config)?;
    let channel = controller_endpoint(&config.controller)?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
    let mut client = DiscoveryClient::new(channel);
    // Acks go up the same stream; the channel holds what the reader has not sent.
    let (acks, requests) = tokio::sync::mpsc::channel::<SubscribeRequest>(16);
    let first = SubscribeRequest {
        kind: Some(subscribe_request::Kind::Watch(watch.clone())),
    };
    let _ = acks.try_send(first);
    let subscribe = authorized(
        tokio_stream::wrappers::ReceiverStream::new(requests),
        credential.as_ref(),
    );
    let (mut stream, acknowledging) = match client.subscribe(subscribe).await {
        Ok(s) => (s.into_inner(), true),
        // A controller without `Subscribe`: `Watch`, unacknowledged.
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            let request = authorized(watch, credential.as_ref());
            (client.watch(request).await?.into_inner(), false)
        }
        Err(e) => return Err(e),
    };
    status.connected.store(true, Ordering::Relaxed);
    let mut parts = Parts::default();
    while let Some(message) = stream.message().await? {
        let Some((update, overflow)) = parts.add(message, config.max_services) else {
            continue;
        };
        let answer = match overflow {
            Some(why) => Err(why),
            // The bundle first: an update whose bundle cannot be read changes
            // nothing.
            None => identity
                .trust(&update.trust_bundle_pem)
                .and_then(|()| apply(routes, &update, defaults, config.max_services)),
        };
        *backoff = BACKOFF_MIN;
        let error = match answer {
            Ok(_) => {
                status.updates_applied.fetch_add(1, Ordering::Relaxed);
                if update.full_snapshot && !synced.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        services = routes.load().service_count(),
                        version = update.version,
                        "first discovery snapshot applied"
                    );
                } else {
                    tracing::debug!(
                        version = update.version,
                        full = update.full_snapshot,
                        "discovery update applied"
                    );
                }
                String::new()
            }
            Err(why) => {
                tracing::warn!(version = update.version, %why, "discovery update rejected; the previous routes stay");
                status.rejected(why.clone());
                why
            }
        };
        if acknowledging {
            let ack = SubscribeRequest {
                kind: Some(subscribe_request::Kind::Ack(Ack {
                    epoch: update.epoch,
                    version: update.version,
                    error,
                })),
            };
            if acks.send(ack).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// An update arriving in parts (`more`: a large snapshot), gathered until its last.
#[derive(Debug, Default)]
struct Parts {
    pending: Option<MeshUpdate>,
    /// Its parts held more services than the proxy takes; the rest were dropped.
    overflow: bool,
}

impl Parts {
    /// Adds `message`: the whole update once its last part is in, with why it is
    /// rejected already when its parts held more than `max_services` services (so
    /// gathering is bounded too); `None` while parts are missing.
    fn add(
        &mut self,
        message: MeshUpdate,
        max_services: usize,
    ) -> Option<(MeshUpdate, Option<String>)> {
        let more = message.more;
        let whole = match self.pending.take() {
            None => message,
            Some(mut pending) => {
                if !self.overflow {
                    pending.services.extend(message.services);
                    pending.removed.extend(message.removed);
                }
                pending.version = message.version;
                pending.epoch = message.epoch;
                pending.more = message.more;
                pending
            }
        };
        if whole.services.len() > max_services && !self.overflow {
            self.overflow = true;
        }
        if more {
            self.pending = Some(whole);
            return None;
        }
        let overflow = std::mem::take(&mut self.overflow).then(|| {
            format!("the update holds more than {max_services} services; this proxy takes at most {max_services} (--max-services)")
        });
        Some((whole, overflow))
    }
}

/// Tells the controller this sidecar is draining, so that it withdraws the
/// endpoints at the pod's address before the sidecar stops accepting. Bounded by
/// `timeout`; an error means nobody was told.
pub async fn announce_drain(config: &DiscoveryConfig, timeout: Duration) -> Result<(), String> {
    let call = async {
        let credential = credential(config).map_err(|e| e.message().to_owned())?;
        let request = authorized(
            DrainRequest {
                proxy_id: config.proxy_id.clone(),
                addresses: pod_addresses(),
            },
            credential.as_ref(),
        );
        let channel = controller_endpoint(&config.controller)
            .map_err(|e| e.message().to_owned())?
            .connect()
            .await
            .map_err(|e| error_chain(&e))?;
        DiscoveryClient::new(channel)
            .drain(request)
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// The pod's own addresses (every interface's but loopback and link-local), which
/// the controller marks meshed: endpoints there are served through this sidecar.
pub fn pod_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<String> = addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip: std::net::IpAddr = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
                (_, Some(v6)) => std::net::IpAddr::V6(v6.ip()),
                _ => return None,
            };
            let link_local =
                matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            (!ip.is_loopback() && !link_local).then(|| ip.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `error: cause: cause ...` (tonic's transport error alone says only "transport
/// error"; the cause says what an operator can act on, e.g. connection refused).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Applies one update to the routing table, recording its version; or rejects it
/// whole, saying why, and leaves the table as it was: a service it cannot read (the
/// controller validated it, but a proxy never trusts the wire blindly), or a table
/// of more than `max_services` services.
pub fn apply(
    routes: &Routes,
    update: &MeshUpdate,
    defaults: Defaults,
    max_services: usize,
) -> Result<Applied, String> {
    let specs = update
        .services
        .iter()
        .map(|s| spec_of(s, defaults).map_err(|why| format!("service {:?}: {why}", s.name)))
        .collect::<Result<Vec<_>, String>>()?;
    let too_many = |count: usize| {
        format!(
            "the update makes {count} services; this proxy takes at most {max_services} (--max-services)"
        )
    };
    if update.full_snapshot {
        let next = routes
            .load()
            .updated(true, specs, std::iter::empty::<&str>());
        if next.service_count() > max_services {
            return Err(too_many(next.service_count()));
        }
        return Ok(routes.store_version(next, update.epoch, update.version));
    }
    // Checked first: the update is applied in place, and a rejected one must
    // leave the table as it was.
    let count = routes.load().count_after(
        specs.iter().map(|s| s.name.as_str()),
        update.removed.iter().map(String::as_str),
    );
    if count > max_services {
        return Err(too_many(count));
    }
    Ok(routes.patch_version(specs, update.removed.iter(), update.epoch, update.version))
}

/// The routing view of a discovery service; the controller validated it, but a
/// proxy never trusts the wire blindly.
fn spec_of(s: &api::Service, defaults: Defaults) -> Result<ServiceSpec, String> {
    let vip: IpAddr = s.vip.parse().map_err(|_| format!("bad vip {:?}", s.vip))?;
    let port = |p: u32| u16::try_from(p).ok().filter(|p| *p != 0);
    let ports = s
        .ports
        .iter()
        .map(|p| {
            Ok(ServicePort {
                port: port(p.port).ok_or_else(|| format!("bad port {}", p.port))?,
                target_port: port(p.target_port)
                    .ok_or_else(|| format!("bad target port {}", p.target_port))?,
                protocol: match api::Protocol::try_from(p.protocol) {
                    Ok(api::Protocol::Http) => PortProtocol::Http,
                    Ok(api::Protocol::Tcp) => PortProtocol::Tcp,
                    _ => PortProtocol::Auto,
                },
            })
        })
        .collect::<Result<_, String>>()?;
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    let mut meshed = Vec::new();
    let mut identities = Vec::new();
    for e in &s.endpoints {
        let ip: IpAddr = e
            .address
            .parse()
            .map_err(|_| format!("bad endpoint {:?}", e.address))?;
        endpoints.push(ip);
        if e.meshed {
            meshed.push(ip);
        }
        if !e.identity.is_empty() {
            if !e.meshed || !is_spiffe_id(&e.identity) {
                return Err(format!(
                    "endpoint {ip}: bad identity {:?} (a meshed endpoint's spiffe:// ID)",
                    e.identity
                ));
            }
            identities.push((ip, Arc::from(e.identity.as_str())));
        }
    }
    let withheld = s
        .withheld
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|_| format!("bad withheld endpoint {a:?}"))
        })
        .collect::<Result<_, String>>()?;
    Ok(ServiceSpec {
        name: s.name.clone(),
        vip,
        ports,
        endpoints,
        meshed,
        identities,
        withheld,
        policy: Policy::from_proto(s.policy.as_ref(), defaults),
        mtls: match api::MtlsMode::try_from(s.mtls) {
            Ok(api::MtlsMode::MtlsStrict) => MtlsMode::Strict,
            Ok(api::MtlsMode::MtlsDisabled) => MtlsMode::Disabled,
            // Unknown values (a newer controller) are taken as the default.
            _ => MtlsMode::Permissive,
        },
        authorization: s
            .authorization
            .iter()
            .map(authorization_of)
            .collect::<Result<_, String>>()?,
    })
}

/// An authorization entry as discovery sends it; a port out of range or an
/// identity that is no SPIFFE ID rejects the update.
fn authorization_of(a: &api::Authorization) -> Result<Authorization, String> {
    use api::source::Kind;
    let port = match a.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| format!("authorization: bad port {p}"))?),
    };
    let allow = a
        .allow
        .iter()
        .map(|s| match &s.kind {
            Some(Kind::Identity(id)) if is_spiffe_id(id) => {
                Ok(Source::Identity(id.as_str().into()))
            }
            Some(Kind::Identity(id)) => Err(format!("authorization: bad identity {id:?}")),
            Some(Kind::Service(name)) => Ok(Source::Service(name.as_str().into())),
            Some(Kind::Namespace(ns)) => Ok(Source::Namespace(ns.as_str().into())),
            None => Ok(Source::Unknown),
        })
        .collect::<Result<_, String>>()?;
    Ok(Authorization { port, allow })
}

/// A SPIFFE ID as the controller's CA writes one: `spiffe://` and a path, within the
/// 2,048 bytes the SPIFFE standard allows, printable ASCII only (it is shown in
/// `/routes` and compared with a certificate's URI SAN).
fn is_spiffe_id(id: &str) -> bool {
    id.len() <= 2048
        && id
            .strip_prefix("spiffe://")
            .is_some_and(|rest| rest.contains('/') && rest.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn part(names: &[&str], full: bool, more: bool) -> MeshUpdate {
        MeshUpdate {
            full_snapshot: full,
            services: names
                .iter()
                .map(|n| api::Service {
                    name: (*n).to_owned(),
                    ..api::Service::default()
                })
                .collect(),
            removed: Vec::new(),
            version: 4,
            epoch: 1,
            more,
            trust_bundle_pem: String::new(),
        }
    }

    #[test]
    fn endpoint_identities_are_kept_for_meshed_endpoints_and_checked() {
        let endpoint = |address: &str, meshed: bool, identity: &str| api::Endpoint {
            address: address.to_owned(),
            name: String::new(),
            meshed,
            identity: identity.to_owned(),
        };
        let service = |endpoints| api::Service {
            name: "web".to_owned(),
            vip: "10.96.0.3".to_owned(),
            endpoints,
            ..api::Service::default()
        };
        let id = "spiffe://weft.local/ns/local/sa/web";
        let spec = spec_of(
            &service(vec![
                endpoint("10.0.0.1", true, id),
                endpoint("10.0.0.2", true, ""),
                endpoint("10.0.0.3", false, ""),
            ]),
            Defaults::default(),
        )
        .unwrap();
        assert_eq!(
            spec.identities,
            [("10.0.0.1".parse().unwrap(), Arc::from(id))]
        );
        // Refused (the update is rejected, with why): a name that is no SPIFFE ID,
        // or one given to an endpoint no sidecar serves.
        for (meshed, bad) in [
            (true, "web"),
            (true, "spiffe://weft.local"),
            (true, "spiffe://weft.local/ns/local/sa/we b"),
            (false, id),
        ] {
            let e = spec_of(
                &service(vec![endpoint("10.0.0.1", meshed, bad)]),
                Defaults::default(),
            )
            .unwrap_err();
            assert!(e.contains("bad identity"), "{bad}: {e}");
        }
    }

    #[test]
    fn parts_add_up_to_one_update_and_stay_bounded() {
        let mut parts = Parts::default();
        assert!(parts.add(part(&["a", "b"], true, true), 10).is_none());
        assert!(parts.add(part(&["c"], false, true), 10).is_none());
        let (whole, overflow) = parts.add(part(&["d"], false, false), 10).unwrap();
        assert!(whole.full_snapshot && !whole.more && overflow.is_none());
        let names: Vec<&str> = whole.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        // A whole message is whole at once.
        let (one, _) = parts.add(part(&["x"], false, false), 10).unwrap();
        assert_eq!(one.services.len(), 1);
        // Past the bound: gathering stops and the update is rejected with why.
        assert!(parts.add(part(&["a", "b", "c"], true, true), 2).is_none());
        assert!(parts.add(part(&["d", "e"], false, true), 2).is_none());
        let (whole, overflow) = parts.add(part(&["f"], false, false), 2).unwrap();
        assert!(whole.services.len() <= 3, "{}", whole.services.len());
        assert!(overflow.unwrap().contains("--max-services"));
        // And the next update starts afresh.
        let (_, overflow) = parts.add(part(&["a"], true, false), 2).unwrap();
        assert!(overflow.is_none());
    }
}
