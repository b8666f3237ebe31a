//! The `Discovery` gRPC service: on `Watch`, a full snapshot, then incremental
//! updates (changed services whole, removed names) whenever the mesh changes.
//!
//! Each subscriber remembers the mesh it last sent and, on a change, sends the diff
//! from that to the current mesh. The `watch` channel coalesces changes, so a slow
//! subscriber is never dropped and never sent stale intermediate states: it gets one
//! update that brings it from what it has to what is current.
//!
//! Subscribers that need the same update (all of them, after an edit) share it
//! encoded: it is made, split and encoded once ([`UpdateCache`]), and each stream
//! sends the same bytes ([`EncodedMeshUpdate`]) instead of a copy of its own.
//!
//! Both calls need a credential (`authorization: Bearer TOKEN` metadata, see
//! [`crate::auth`]): without one a caller gets `UNAUTHENTICATED` and no topology;
//! one caller's open Watches are capped (`RESOURCE_EXHAUSTED`).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use weft_api::discovery as pb;
use weft_api::encoded::server::discovery_server as server;
use weft_api::encoded::EncodedMeshUpdate;

use crate::auth::{Api, Auth, Caller, Denial};
use crate::model::{Name, Protocol, Service};
use crate::proxies::ProxyInfo;
use crate::state::{diff_snapshots, Snapshot, State};

/// The discovery service over the controller's [`State`].
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    state: Arc<State>,
    auth: Arc<Auth>,
    updates: Arc<UpdateCache>,
    /// With a CA: the trust domain in which subscribing sidecars are named (their
    /// SPIFFE IDs become their endpoints' `identity`).
    trust_domain: Option<String>,
    /// With a CA: the trust bundle every snapshot carries.
    trust_bundle: Option<Arc<str>>,
}

/// Updates already made, by (from, to) version and form: subscribers that need the
/// same one (all of them, after an edit; every new one, for a snapshot) share one
/// diff, one conversion and one encoding instead of making their own. A 100-service
/// edit to 200 proxies used to make 200 copies and 200 encodings of it, all alive at
/// once.
#[derive(Debug, Default)]
struct UpdateCache {
    recent: std::sync::Mutex<std::collections::VecDeque<(UpdateKey, Arc<Prepared>)>>,
}

/// An update's (from, to) versions (a snapshot's is (0, to)), and whether it goes
/// in parts (`Subscribe`) or whole (`Watch`).
type UpdateKey = (u64, u64, bool);

/// An update ready to send: its messages encoded, shared by every stream sending it.
#[derive(Debug)]
struct Prepared {
    /// The messages, in order: one, or a snapshot's parts.
    messages: Vec<EncodedMeshUpdate>,
    /// Services it upserts and names it removes (nothing to send when both are 0).
    upserted: usize,
    removed: usize,
}

impl Prepared {
    /// `update` as it is sent, whole or (`in_parts`) in parts.
    fn new(update: &pb::MeshUpdate, in_parts: bool) -> Self {
        Prepared {
            messages: messages(update, in_parts)
                .iter()
                .map(EncodedMeshUpdate::new)
                .collect(),
            upserted: update.services.len(),
            removed: update.removed.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.upserted == 0 && self.removed == 0
    }
}

/// Updates kept: a few versions' worth (subscribers that lag further make theirs).
const CACHED_UPDATES: usize = 8;

/// Services per message of a snapshot sent in parts (on `Subscribe`). A stream's
/// encoding buffer keeps the size of the largest message it sent: whole snapshots
/// (about 300 KB at 1,000 services) made every subscriber cost that much for good.
const SNAPSHOT_PART: usize = 64;

/// `update` as the messages to send: whole, or (`in_parts`) a snapshot in parts of
/// [`SNAPSHOT_PART`] services, every part but the last marked `more`.
fn messages(update: &pb::MeshUpdate, in_parts: bool) -> Vec<pb::MeshUpdate> {
    if !in_parts || update.services.len() <= SNAPSHOT_PART {
        return vec![update.clone()];
    }
    let parts: Vec<&[pb::Service]> = update.services.chunks(SNAPSHOT_PART).collect();
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, services)| pb::MeshUpdate {
            full_snapshot: update.full_snapshot && i == 0,
            services: services.to_vec(),
            removed: if i == 0 {
                update.removed.clone()
            } else {
                Vec::new()
            },
            version: update.version,
            epoch: update.epoch,
            more: i < last,
            trust_bundle_pem: if i == 0 {
                update.trust_bundle_pem.clone()
            } else {
                String::new()
            },
        })
        .collect()
}

/// Sends `update`'s messages on `tx`; `false` when the stream is gone. Each is a
/// reference to the shared encoding, not a copy.
async fn send(tx: &mpsc::Sender<Result<EncodedMeshUpdate, Status>>, update: &Prepared) -> bool {
    for message in &update.messages {
        if tx.send(Ok(message.clone())).await.is_err() {
            return false;
        }
    }
    true
}

impl UpdateCache {
    /// The update from `from` to `to` (in parts when `in_parts`), made by `make`
    /// and prepared unless already done.
    fn get_or_make(
        &self,
        (from, to, in_parts): UpdateKey,
        make: impl FnOnce() -> pb::MeshUpdate,
    ) -> Arc<Prepared> {
        let key = (from, to, in_parts);
        let lock = || self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, u)) = lock().iter().find(|(k, _)| *k == key) {
            return u.clone();
        }
        // Made outside the lock; two subscribers may both make it, once.
        let made = Arc::new(Prepared::new(&make(), in_parts));
        let mut recent = lock();
        if !recent.iter().any(|(k, _)| *k == key) {
            if recent.len() == CACHED_UPDATES {
                recent.pop_front();
            }
            recent.push_back((key, made.clone()));
        }
        made
    }
}

impl DiscoveryService {
    /// Serves `state` to the callers `auth` lets in.
    pub fn new(state: Arc<State>, auth: Arc<Auth>) -> Self {
        DiscoveryService {
            state,
            auth,
            updates: Arc::default(),
            trust_domain: None,
            trust_bundle: None,
        }
    }

    /// Names each subscribing sidecar's endpoints with the SPIFFE ID its credential
    /// entitles it to in `trust_domain` (the controller's CA's), and sends
    /// `trust_bundle` with every snapshot.
    pub fn with_identities(mut self, ca: Option<(String, Arc<str>)>) -> Self {
        (self.trust_domain, self.trust_bundle) = ca.unzip();
        self
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        caller(&self.auth, request).await
    }

    /// Starts the stream of updates to a proxy: a snapshot, then the changes; with
    /// `acks` (a `Subscribe`), the proxy's Acks are read alongside and recorded.
    fn open_stream(
        &self,
        caller: Caller,
        peer: Option<std::net::SocketAddr>,
        req: pb::WatchRequest,
        acks: Option<tonic::Streaming<pb::SubscribeRequest>>,
    ) -> Result<UpdateStream, Status> {
        let slot = self
            .auth
            .open_watch(&caller)
            .map_err(|denial| self.refuse(peer, &denial))?;
        let mut addresses: Vec<IpAddr> = req
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .chain(peer.map(|p| p.ip().to_canonical()))
            .filter(|ip: &IpAddr| !ip.is_loopback() && !ip.is_unspecified())
            .collect();
        addresses.sort();
        addresses.dedup();
        let (tx, rx) = mpsc::channel(1);
        // Marked meshed before the first snapshot is taken, so that it already says so.
        if req.draining {
            // A draining sidecar that reconnects (to a controller that restarted,
            // perhaps): still drained — its own address only, as `Drain` does, so
            // that no credential can withdraw other pods' endpoints this way.
            let own = drainable(peer.map(|p| p.ip().to_canonical()), &req.addresses);
            self.state.drain(&own);
        }
        // Named only for a sidecar that takes mutual TLS: a client demanding TLS of
        // one without a certificate could not reach it.
        let identity = self
            .trust_domain
            .as_deref()
            .filter(|_| req.mtls)
            .and_then(|domain| {
                let id = crate::ca::identity_of(&caller, domain).ok()?;
                Some(Arc::<str>::from(id.to_string()))
            });
        let sidecar = self.state.sidecar(addresses, identity, req.draining);
        let mut updates = self.state.subscribe();
        let proxy = self.state.proxies().join(ProxyInfo {
            proxy_id: req.proxy_id.clone(),
            service: req.service.clone(),
            peer,
            caller: caller.to_string(),
            acknowledging: acks.is_some(),
        });
        let closed = self.state.closed();
        let state = self.state.clone();
        let cache = self.updates.clone();
        let trust_bundle = self.trust_bundle.clone();
        let epoch = state.epoch();
        let in_parts = acks.is_some();
        tracing::info!(service = %req.service, proxy_id = %req.proxy_id, ?peer, %caller, acknowledging = acks.is_some(), "proxy subscribed");
        tokio::spawn(async move {
            let _slot = slot;
            let _sidecar = sidecar;
            tokio::pin!(closed);
            let mut acks = acks;
            let mut sent = updates.borrow_and_update().clone();
            let snapshot = cache.get_or_make((0, sent.version, in_parts), || {
                full_snapshot(&sent, epoch, trust_bundle.as_deref())
            });
            if !send(&tx, &snapshot).await {
                return;
            }
            proxy.sent(sent.version);
            state.record_push();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = &mut closed => break,
                    changed = updates.changed() => if changed.is_err() { break },
                    ack = next_ack(&mut acks) => {
                        match ack {
                            Ok(Some(ack)) if ack.epoch == epoch => {
                                if !ack.error.is_empty() {
                                    tracing::warn!(proxy_id = %req.proxy_id, version = ack.version, reason = %ack.error, "proxy rejected an update");
                                }
                                proxy.acked(ack.version, &ack.error);
                            }
                            // An Ack for another controller's state: not ours.
                            Ok(Some(_)) => {}
                            // The proxy closed its side: it is gone.
                            Ok(None) | Err(_) => break,
                        }
                        continue;
                    }
                }
                let current = updates.borrow_and_update().clone();
                let update = cache.get_or_make((sent.version, current.version, in_parts), || {
                    let delta = diff_snapshots(&sent, &current);
                    pb::MeshUpdate {
                        full_snapshot: false,
                        services: delta
                            .upserted
                            .iter()
                            .map(|(n, s)| to_proto(n, s, &current))
                            .collect(),
                        removed: delta.removed.iter().map(Name::to_string).collect(),
                        version: current.version,
                        epoch,
                        more: false,
                        // Only snapshots carry it: it changes with the controller.
                        trust_bundle_pem: String::new(),
                    }
                });
                if !update.is_empty() {
                    tracing::debug!(
                        service = %req.service,
                        version = current.version,
                        upserted = update.upserted,
                        removed = update.removed,
                        "sending update"
                    );
                    if !send(&tx, &update).await {
                        break;
                    }
                    proxy.sent(current.version);
                    state.record_push();
                }
                sent = current;
            }
            tracing::info!(service = %req.service, proxy_id = %req.proxy_id, "proxy unsubscribed");
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn refuse(&self, peer: Option<std::net::SocketAddr>, denial: &Denial) -> Status {
        refuse(&self.auth, peer, denial)
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> server::DiscoveryServer<Self> {
        server::DiscoveryServer::new(self)
    }
}

/// The caller of a gRPC `request` (its `authorization` metadata), or the status
/// refusing it (counted and logged): for every gRPC service of the controller.
pub(crate) async fn caller<T>(auth: &Auth, request: &Request<T>) -> Result<Caller, Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes());
    auth.authenticate(authorization)
        .await
        .map_err(|denial| refuse(auth, request.remote_addr(), &denial))
}

/// The gRPC status for `denial`, counted and logged.
pub(crate) fn refuse(auth: &Auth, peer: Option<std::net::SocketAddr>, denial: &Denial) -> Status {
    auth.denied(Api::Grpc, peer, denial);
    match denial {
        Denial::Missing | Denial::Bad(_) => Status::unauthenticated(denial.message()),
        Denial::OutOfScope { .. } => Status::permission_denied(denial.message()),
        _ => Status::resource_exhausted(denial.message()),
    }
}

fn authorization_to_proto(entry: &crate::model::Authorization) -> pb::Authorization {
    use crate::model::Source;
    use pb::source::Kind;
    pb::Authorization {
        port: entry.port.map_or(0, |p| p.get().into()),
        allow: entry
            .allow
            .iter()
            .map(|source| pb::Source {
                kind: Some(match source {
                    Source::Identity(id) => Kind::Identity(id.clone()),
                    Source::Service(name) => Kind::Service(name.to_string()),
                    Source::Namespace(ns) => Kind::Namespace(ns.to_string()),
                }),
            })
            .collect(),
    }
}

/// A service in the API's terms at `snap`: its served endpoints (marked meshed as
/// `snap` says) and the known ones it withholds.
pub fn to_proto(name: &Name, svc: &Service, snap: &Snapshot) -> pb::Service {
    let meshed = &snap.meshed;
    pb::Service {
        name: name.to_string(),
        vip: svc.vip.to_string(),
        ports: svc
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                port: p.port.get().into(),
                target_port: p.target_port.get().into(),
                protocol: match p.protocol {
                    Protocol::Auto => pb::Protocol::Auto,
                    Protocol::Http => pb::Protocol::Http,
                    Protocol::Tcp => pb::Protocol::Tcp,
                } as i32,
            })
            .collect(),
        endpoints: svc
            .endpoints
            .iter()
            .map(|ip| pb::Endpoint {
                address: ip.to_string(),
                name: String::new(),
                meshed: meshed.contains(ip),
                identity: snap
                    .identities
                    .get(ip)
                    .map_or_else(String::new, |id| id.to_string()),
            })
            .collect(),
        policy: Some(policy_to_proto(&svc.policy)),
        mtls: match svc.mtls {
            crate::model::MtlsMode::Permissive => pb::MtlsMode::MtlsPermissive,
            crate::model::MtlsMode::Strict => pb::MtlsMode::MtlsStrict,
            crate::model::MtlsMode::Disabled => pb::MtlsMode::MtlsDisabled,
        } as i32,
        authorization: svc
            .authorization
            .iter()
            .map(authorization_to_proto)
            .collect(),
        withheld: snap
            .withheld
            .get(name)
            .into_iter()
            .flatten()
            .map(IpAddr::to_string)
            .collect(),
    }
}

/// The proxies' part of a service's policy; unset fields stay unset (the proxy's
/// defaults apply).
fn policy_to_proto(p: &crate::model::Policy) -> pb::Policy {
    use crate::model::LoadBalancer;
    let ms = |d: Option<std::time::Duration>| {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    pb::Policy {
        timeout_ms: ms(p.timeout),
        connect_timeout_ms: ms(p.connect_timeout),
        idle_timeout_ms: ms(p.idle_timeout),
        half_close_timeout_ms: ms(p.half_close_timeout),
        retries: p.retries.as_ref().map(|r| pb::RetryPolicy {
            attempts: r.attempts,
            budget_percent: r.budget_percent,
            min_per_second: r.min_per_second,
            on: r.on.iter().flatten().map(|c| String::from(*c)).collect(),
        }),
        circuit_breaker: p.circuit_breaker.as_ref().map(|b| pb::CircuitBreaker {
            consecutive_failures: b.consecutive_failures.map(|n| n.get()),
            base_ejection_ms: ms(b.base_ejection),
            max_ejection_percent: b.max_ejection_percent,
            max_ejection_ms: ms(b.max_ejection),
        }),
        lb: match p.lb.unwrap_or_default() {
            LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
            LoadBalancer::P2cEwma => pb::LoadBalancer::P2cEwma,
        } as i32,
    }
}

fn full_snapshot(snap: &Snapshot, epoch: u64, trust_bundle: Option<&str>) -> pb::MeshUpdate {
    pb::MeshUpdate {
        trust_bundle_pem: trust_bundle.unwrap_or_default().to_owned(),
        epoch,
        full_snapshot: true,
        services: snap
            .mesh
            .services
            .iter()
            .map(|(n, s)| to_proto(n, s, snap))
            .collect(),
        removed: Vec::new(),
        more: false,
        version: snap.version,
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<EncodedMeshUpdate, Status>> + Send>>;

/// The addresses a caller at `peer` may drain: its own only; one on the
/// controller's host (loopback) names them (`named`).
fn drainable(peer: Option<IpAddr>, named: &[String]) -> Vec<IpAddr> {
    match peer {
        Some(ip) if !ip.is_loopback() => vec![ip],
        _ => named.iter().filter_map(|a| a.parse().ok()).collect(),
    }
}

/// A `Subscribe` stream's first request (the `watch`) must come within this.
const FIRST_REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The next Ack of a `Subscribe` stream; never resolves for a `Watch` (no acks),
/// and skips requests that are not Acks.
async fn next_ack(
    acks: &mut Option<tonic::Streaming<pb::SubscribeRequest>>,
) -> Result<Option<pb::Ack>, Status> {
    let Some(requests) = acks else {
        return std::future::pending().await;
    };
    loop {
        match requests.message().await? {
            None => return Ok(None),
            Some(pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Ack(ack)),
            }) => return Ok(Some(ack)),
            Some(_) => continue,
        }
    }
}

#[tonic::async_trait]
impl server::Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        let caller = self.caller(&request).await?;
        let stream = self.open_stream(caller, peer, request.into_inner(), None)?;
        Ok(Response::new(stream))
    }

    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let caller = self.caller(&request).await?;
        let mut requests = request.into_inner();
        let first = tokio::time::timeout(FIRST_REQUEST_WITHIN, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no watch request within 10 s"))??;
        let watch = match first.and_then(|r| r.kind) {
            Some(pb::subscribe_request::Kind::Watch(w)) => w,
            _ => {
                return Err(Status::invalid_argument(
                    "the first request must be `watch`",
                ))
            }
        };
        let stream = self.open_stream(caller, peer, watch, Some(requests))?;
        Ok(Response::new(stream))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let caller = self.caller(&request).await?;
        let peer = request.remote_addr().map(|p| p.ip().to_canonical());
        let req = request.into_inner();
        let addresses = drainable(peer, &req.addresses);
        if addresses.is_empty() {
            return Err(Status::invalid_argument("no address to drain"));
        }
        tracing::info!(proxy_id = %req.proxy_id, ?addresses, %caller, "sidecar draining");
        self.state.drain(&addresses);
        Ok(Response::new(pb::DrainResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn update(services: usize) -> pb::MeshUpdate {
        pb::MeshUpdate {
            full_snapshot: true,
            services: (0..services)
                .map(|i| pb::Service {
                    name: format!("s{i}"),
                    ..pb::Service::default()
                })
                .collect(),
            removed: vec!["gone".into()],
            version: 7,
            epoch: 9,
            more: false,
            trust_bundle_pem: "BUNDLE".into(),
        }
    }

    #[test]
    fn a_caller_drains_its_own_address_unless_on_loopback() {
        let named = vec!["10.0.0.9".to_owned(), "fd00::9".to_owned()];
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(drainable(Some(ip("10.0.0.5")), &named), [ip("10.0.0.5")]);
        assert_eq!(
            drainable(Some(ip("127.0.0.1")), &named),
            [ip("10.0.0.9"), ip("fd00::9")]
        );
    }

    #[test]
    fn a_large_snapshot_goes_in_parts_on_subscribe_only() {
        let u = update(SNAPSHOT_PART * 2 + 1);
        assert_eq!(messages(&u, false), vec![u.clone()], "Watch: whole");
        let parts = messages(&u, true);
        assert_eq!(parts.len(), 3);
        let flags: Vec<(bool, bool)> = parts.iter().map(|p| (p.full_snapshot, p.more)).collect();
        assert_eq!(flags, [(true, true), (false, true), (false, false)]);
        assert!(parts.iter().all(|p| (p.version, p.epoch) == (7, 9)));
        let names: Vec<&str> = parts
            .iter()
            .flat_map(|p| &p.services)
            .map(|s| s.name.as_str())
            .collect();
        let want: Vec<String> = (0..SNAPSHOT_PART * 2 + 1)
            .map(|i| format!("s{i}"))
            .collect();
        assert_eq!(names, want);
        assert_eq!(parts[0].removed, ["gone"]);
        assert!(parts[1].removed.is_empty());
        assert_eq!(
            parts[0].trust_bundle_pem, "BUNDLE",
            "the first part carries it"
        );
        assert!(parts[1].trust_bundle_pem.is_empty());
        // Small: one message.
        assert_eq!(messages(&update(3), true).len(), 1);
    }

    #[test]
    fn a_prepared_update_sends_the_encoding_of_each_message() {
        use prost::Message as _;
        let u = update(SNAPSHOT_PART + 1);
        for in_parts in [false, true] {
            let prepared = Prepared::new(&u, in_parts);
            let sent: Vec<pb::MeshUpdate> = prepared
                .messages
                .iter()
                .map(|m| pb::MeshUpdate::decode(m.as_bytes().clone()).unwrap())
                .collect();
            assert_eq!(sent, messages(&u, in_parts), "in parts: {in_parts}");
            assert_eq!(
                (prepared.upserted, prepared.removed),
                (SNAPSHOT_PART + 1, 1)
            );
        }
        assert!(Prepared::new(&pb::MeshUpdate::default(), true).is_empty());
    }

    #[test]
    fn subscribers_share_one_prepared_update_per_step_and_form() {
        let cache = UpdateCache::default();
        let mut made = 0;
        let mut get = |key| {
            cache.get_or_make(key, || {
                made += 1;
                update(1)
            })
        };
        let a = get((1, 2, true));
        let b = get((1, 2, true));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.messages[0].as_bytes().as_ptr(),
            b.messages[0].as_bytes().as_ptr(),
            "the same bytes"
        );
        get((1, 2, false));
        assert_eq!(made, 2, "whole and in parts are made apart, each once");
    }
}
