//! The controller's state: the served mesh and its version, the diff between two
//! meshes, the merged catalog behind it, and the status shown on the HTTP API (and
//! exported as metrics). Subscribers follow the current snapshot through a
//! `tokio::sync::watch` channel.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::error::ConfigError;
use crate::merge::Catalog;
use crate::model::{Mesh, Name, Service};
use crate::proxies::Proxies;

/// One version of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Monotonic, starting at 1 with the first good configuration.
    pub version: u64,
    /// The mesh at this version.
    pub mesh: Arc<Mesh>,
    /// Endpoint addresses served through a sidecar: those of subscribed proxies, and
    /// those that were while they have stayed endpoints (a draining or restarting
    /// sidecar still fronts its pod). See [`State::sidecar`].
    pub meshed: Arc<BTreeSet<IpAddr>>,
    /// The SPIFFE ID of the sidecar at a meshed address, where its credential
    /// names one and the controller has a CA (the identity a client-side proxy
    /// expects of it under mutual TLS). Kept, as `meshed` is, while the address
    /// stays an endpoint.
    pub identities: Arc<BTreeMap<IpAddr, Arc<str>>>,
    /// Per service, its known endpoints that are not served (withdrawn or
    /// draining): still its pods, for the proxies' peer → service map.
    pub withheld: Arc<BTreeMap<Name, Vec<IpAddr>>>,
}

/// What changed in the services between two meshes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Services added or changed, whole.
    pub upserted: Vec<(Name, Service)>,
    /// Names of services that are gone.
    pub removed: Vec<Name>,
}

impl Delta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// The services added or changed, and the names removed, from `old` to `new`.
/// Workloads are not part of the discovery API and do not appear.
pub fn diff(old: &Mesh, new: &Mesh) -> Delta {
    let upserted = new
        .services
        .iter()
        .filter(|(name, svc)| old.services.get(*name) != Some(*svc))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let removed = old
        .services
        .keys()
        .filter(|name| !new.services.contains_key(*name))
        .cloned()
        .collect();
    Delta { upserted, removed }
}

/// [`diff`] of the services, plus the services whose endpoints became meshed or
/// stopped being so (the discovery API carries that per endpoint).
pub fn diff_snapshots(old: &Snapshot, new: &Snapshot) -> Delta {
    let mut delta = diff(&old.mesh, &new.mesh);
    if old.meshed == new.meshed && old.withheld == new.withheld && old.identities == new.identities
    {
        return delta;
    }
    for (name, svc) in &new.mesh.services {
        let flipped = svc.endpoints.iter().any(|ip| {
            old.meshed.contains(ip) != new.meshed.contains(ip)
                || old.identities.get(ip) != new.identities.get(ip)
        }) || old.withheld.get(name) != new.withheld.get(name);
        if flipped && !delta.upserted.iter().any(|(n, _)| n == name) {
            delta.upserted.push((name.clone(), svc.clone()));
        }
    }
    delta
}

/// An error with when it was seen.
#[derive(Debug, Clone, Serialize)]
pub struct TimedError {
    /// The error.
    #[serde(flatten)]
    pub error: ConfigError,
    /// `origin:line:column: message`.
    pub display: String,
    /// When it was seen (RFC 3339).
    pub at: String,
}

/// One source of truth in `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// What it is (`file /etc/weft/mesh.yaml`, `registry /var/lib/weft/registry.json`).
    pub name: String,
    /// Its current problem: the last good state it gave is being served.
    pub current_error: Option<TimedError>,
}

/// What `/v1/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The sources of truth, comma-separated.
    pub source: String,
    /// Each source and its current problem, in priority order.
    pub sources: Vec<SourceStatus>,
    /// Definitions from different sources that clash (the first source's is served).
    pub conflicts: Vec<String>,
    /// Version of the mesh being served.
    pub version: u64,
    /// Services in the mesh being served.
    pub services: usize,
    /// When a good configuration was last loaded (RFC 3339).
    pub last_reload: String,
    /// Good states read from the sources (each source's first included, and
    /// unchanged reloads).
    pub reloads_total: u64,
    /// Bad configurations seen.
    pub reload_errors_total: u64,
    /// A source's current problem (the first source's, when several have one): set
    /// while the configuration on disk is bad (the last good one is being served),
    /// cleared by the next good one.
    pub current_error: Option<TimedError>,
    /// The most recent bad configuration ever seen.
    pub last_error: Option<TimedError>,
    /// Proxies subscribed to the discovery API that applied a snapshot.
    pub subscribers: usize,
    /// This controller's epoch (its start, ms since the Unix epoch): versions count
    /// up within it.
    pub epoch: u64,
}

/// The current mesh, its subscribers and the status.
#[derive(Debug)]
pub struct State {
    snapshot: watch::Sender<Arc<Snapshot>>,
    catalog: Mutex<Arc<Catalog>>,
    closing: watch::Sender<bool>,
    status: Mutex<Status>,
    proxies: Arc<Proxies>,
    /// What the ADS streams (proxyless gRPC clients) did.
    xds: Arc<crate::xds::Stats>,
    epoch: u64,
    pushes: AtomicU64,
    /// Subscribed proxies per pod address (a pod's proxy may hold two streams for a
    /// moment while it reconnects).
    sidecars: Mutex<HashMap<IpAddr, Sidecars>>,
    /// Addresses whose sidecar is draining: their endpoints are withdrawn. See
    /// [`State::drain`].
    draining: Mutex<BTreeSet<IpAddr>>,
    /// Wakes the merge loop when `draining` changed.
    drain_changed: Notify,
    /// The last [`RECENT_ERRORS`] bad configurations, oldest first (the mesh
    /// page's "bad edits"; `/v1/status` keeps only the current and the last one).
    recent_errors: Mutex<VecDeque<TimedError>>,
}

/// How many bad configurations [`State::recent_errors`] keeps.
pub const RECENT_ERRORS: usize = 20;

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl State {
    /// Starts at version 1 serving `mesh`, the merge of the first good state of each
    /// of `sources` (named as in [`SourceStatus::name`]).
    pub fn new(sources: Vec<String>, mesh: Mesh) -> Self {
        let services = mesh.services.len();
        let epoch = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let reloads = u64::try_from(sources.len()).unwrap_or(u64::MAX);
        State {
            snapshot: watch::Sender::new(Arc::new(Snapshot {
                version: 1,
                mesh: Arc::new(mesh),
                meshed: Arc::default(),
                identities: Arc::default(),
                withheld: Arc::default(),
            })),
            catalog: Mutex::new(Arc::new(Catalog::default())),
            closing: watch::Sender::new(false),
            status: Mutex::new(Status {
                source: sources.join(", "),
                sources: sources
                    .into_iter()
                    .map(|name| SourceStatus {
                        name,
                        current_error: None,
                    })
                    .collect(),
                conflicts: Vec::new(),
                version: 1,
                services,
                last_reload: now(),
                reloads_total: reloads,
                reload_errors_total: 0,
                current_error: None,
                last_error: None,
                subscribers: 0,
                epoch,
            }),
            proxies: Arc::default(),
            xds: Arc::default(),
            epoch,
            pushes: AtomicU64::new(0),
            sidecars: Mutex::new(HashMap::new()),
            draining: Mutex::new(BTreeSet::new()),
            drain_changed: Notify::new(),
            recent_errors: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }

    fn status_mut(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A good state from source number `source`: clears its current error.
    pub fn record_good(&self, source: usize) {
        let mut status = self.status_mut();
        status.last_reload = now();
        status.reloads_total += 1;
        if let Some(s) = status.sources.get_mut(source) {
            s.current_error = None;
        }
        status.current_error = status.sources.iter().find_map(|s| s.current_error.clone());
    }

    /// The mesh to serve: becomes the next version if it differs from the current
    /// one. Returns the new version, or `None` when nothing changed.
    pub fn publish(&self, mesh: Mesh) -> Option<u64> {
        self.publish_with(Some(mesh))
    }

    /// Publishes `mesh` (or the current mesh again, with `None`) with the meshed
    /// addresses recomputed; a new version when either changed.
    fn publish_with(&self, mesh: Option<Mesh>) -> Option<u64> {
        let (live, live_identities): (BTreeSet<IpAddr>, BTreeMap<IpAddr, Arc<str>>) = {
            let sidecars = self.sidecars_mut();
            let identities = sidecars
                .iter()
                .filter_map(|(ip, s)| Some((*ip, s.identity.clone()?)))
                .collect();
            (sidecars.keys().copied().collect(), identities)
        };
        // Every known endpoint, served or not: one withdrawn by its health checks
        // stays meshed (and so checked through its sidecar) until it comes back.
        let catalog = self.catalog();
        let known: BTreeSet<IpAddr> = catalog.endpoints().map(|(_, _, e)| e.address).collect();
        let mut status = self.status_mut();
        let mut version = None;
        self.snapshot.send_if_modified(|snap| {
            let mesh = match mesh {
                Some(m) if *snap.mesh != m => Arc::new(m),
                _ => snap.mesh.clone(),
            };
            let endpoints: BTreeSet<IpAddr> = mesh
                .services
                .values()
                .flat_map(|s| s.endpoints.iter().copied())
                .chain(known.iter().copied())
                .collect();
            // Only endpoints' addresses: a sidecar whose pod serves nothing (a
            // client) changes no service, so it makes no new version.
            let meshed: BTreeSet<IpAddr> = live
                .iter()
                .chain(snap.meshed.iter())
                .filter(|ip| endpoints.contains(ip))
                .copied()
                .collect();
            // A live sidecar's identity, else the one last known at a still meshed
            // address (its sidecar restarting keeps the name it will come back with).
            let identities: BTreeMap<IpAddr, Arc<str>> = meshed
                .iter()
                .filter_map(|ip| {
                    let id = live_identities
                        .get(ip)
                        .or_else(|| snap.identities.get(ip))?;
                    Some((*ip, id.clone()))
                })
                .collect();
            let withheld: BTreeMap<Name, Vec<IpAddr>> = catalog
                .services
                .iter()
                .filter_map(|(name, entry)| {
                    let served = mesh.services.get(name).map(|s| &s.endpoints);
                    let out: Vec<IpAddr> = entry
                        .endpoints
                        .iter()
                        .map(|e| e.address)
                        .filter(|ip| !served.is_some_and(|s| s.contains(ip)))
                        .collect();
                    (!out.is_empty()).then(|| (name.clone(), out))
                })
                .collect();
            if Arc::ptr_eq(&mesh, &snap.mesh)
                && meshed == *snap.meshed
                && identities == *snap.identities
                && withheld == *snap.withheld
            {
                return false;
            }
            let v = snap.version + 1;
            status.services = mesh.services.len();
            status.version = v;
            *snap = Arc::new(Snapshot {
                version: v,
                mesh,
                meshed: Arc::new(meshed),
                identities: Arc::new(identities),
                withheld: Arc::new(withheld),
            });
            version = Some(v);
            true
        });
        version
    }

    fn sidecars_mut(&self) -> MutexGuard<'_, HashMap<IpAddr, Sidecars>> {
        self.sidecars.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn draining_mut(&self) -> MutexGuard<'_, BTreeSet<IpAddr>> {
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sidecar at `addresses` is draining (its pod is going away): endpoints
    /// there are withdrawn by the merge loop at once, before the sidecar stops
    /// accepting, and stay so until a sidecar subscribes there again without
    /// draining, or the address is no endpoint any more.
    pub fn drain(&self, addresses: &[IpAddr]) {
        let added = {
            let mut draining = self.draining_mut();
            addresses
                .iter()
                .fold(false, |added, a| draining.insert(*a) | added)
        };
        if added {
            tracing::info!(?addresses, "sidecar draining: its endpoints are withdrawn");
            self.drain_changed.notify_one();
        }
    }

    /// The addresses whose sidecar is draining.
    pub fn draining(&self) -> BTreeSet<IpAddr> {
        self.draining_mut().clone()
    }

    /// Forgets drained addresses that `is_endpoint` no longer names.
    pub fn prune_draining(&self, is_endpoint: impl Fn(&IpAddr) -> bool) {
        self.draining_mut().retain(|a| is_endpoint(a));
    }

    /// Resolves when the draining addresses changed since the last call.
    pub async fn drain_changed(&self) {
        self.drain_changed.notified().await
    }

    /// A proxy serving the pod at `addresses` subscribed: endpoints there are meshed
    /// from the next version on, for as long as the guard lives (and after, while
    /// they stay endpoints). Unless it says it is `draining`, it is a new sidecar: an
    /// address drained before is served again.
    ///
    /// `identity`: the SPIFFE ID its credential entitles it to (see
    /// [`Snapshot::identities`]).
    pub fn sidecar(
        self: &Arc<Self>,
        addresses: Vec<IpAddr>,
        identity: Option<Arc<str>>,
        draining: bool,
    ) -> SidecarGuard {
        if !draining {
            let removed = {
                let mut drained = self.draining_mut();
                addresses
                    .iter()
                    .fold(false, |removed, a| drained.remove(a) | removed)
            };
            if removed {
                tracing::info!(
                    ?addresses,
                    "a sidecar subscribed at drained addresses: served again"
                );
                self.drain_changed.notify_one();
            }
        }
        {
            let mut sidecars = self.sidecars_mut();
            for a in &addresses {
                let at = sidecars.entry(*a).or_default();
                at.subscribed += 1;
                // The newest subscriber names the address (a restarted sidecar's
                // new stream may open before the old one is noticed gone).
                if identity.is_some() {
                    at.identity = identity.clone();
                }
            }
        }
        if let Some(v) = self.publish_with(None) {
            tracing::debug!(?addresses, version = v, "sidecar addresses now meshed");
        }
        SidecarGuard {
            state: self.clone(),
            addresses,
        }
    }

    /// A bad configuration from source number `source`: recorded; the current mesh
    /// stays.
    pub fn record_error(&self, source: usize, error: ConfigError) {
        let timed = TimedError {
            display: error.to_string(),
            error,
            at: now(),
        };
        let mut status = self.status_mut();
        status.reload_errors_total += 1;
        if let Some(s) = status.sources.get_mut(source) {
            s.current_error = Some(timed.clone());
        }
        status.current_error = status.sources.iter().find_map(|s| s.current_error.clone());
        status.last_error = Some(timed.clone());
        drop(status);
        let mut recent = self.recent_errors.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(timed);
    }

    /// The last [`RECENT_ERRORS`] bad configurations any source gave, oldest first.
    pub fn recent_errors(&self) -> Vec<TimedError> {
        let recent = self.recent_errors.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    /// The merged catalog behind the served mesh (every endpoint, before health
    /// checks), and its conflicts into the status.
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        self.status_mut().conflicts = catalog.conflicts.clone();
        *self.catalog.lock().unwrap_or_else(|e| e.into_inner()) = catalog;
    }

    /// The merged catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Follows the current snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// The subscribed proxies: what each was sent and applied.
    pub fn proxies(&self) -> &Arc<Proxies> {
        &self.proxies
    }

    /// What the ADS streams did (see [`crate::xds`]).
    pub fn xds(&self) -> &Arc<crate::xds::Stats> {
        &self.xds
    }

    /// This controller's epoch: its start, ms since the Unix epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Proxies subscribed now that applied a snapshot.
    pub fn subscribers(&self) -> usize {
        self.proxies.synced()
    }

    /// Counts one update (snapshot or incremental) sent to a proxy.
    pub fn record_push(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Updates sent to proxies since start.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    /// The status, for `/v1/status`.
    pub fn status(&self) -> Status {
        let mut status = self.status_mut().clone();
        status.subscribers = self.subscribers();
        status
    }

    /// Tells subscribers to finish (shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`State::close`] has been called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            // An error means the sender is gone, which is closing too.
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }
}

/// Keeps a sidecar's addresses live; see [`State::sidecar`].
#[derive(Debug)]
pub struct SidecarGuard {
    state: Arc<State>,
    addresses: Vec<IpAddr>,
}

/// The sidecars subscribed at one address.
#[derive(Debug, Default)]
struct Sidecars {
    subscribed: usize,
    identity: Option<Arc<str>>,
}

impl Drop for SidecarGuard {
    fn drop(&mut self) {
        {
            let mut sidecars = self.state.sidecars_mut();
            for a in &self.addresses {
                if let Some(at) = sidecars.get_mut(a) {
                    at.subscribed -= 1;
                    if at.subscribed == 0 {
                        sidecars.remove(a);
                    }
                }
            }
        }
        self.state.publish_with(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meshfile::parse;

    fn mesh(text: &str) -> Mesh {
        parse("m", text).expect("valid")
    }

    fn names(d: &Delta) -> (Vec<&str>, Vec<&str>) {
        (
            d.upserted.iter().map(|(n, _)| n.as_str()).collect(),
            d.removed.iter().map(Name::as_str).collect(),
        )
    }

    const BASE: &str = "services:
  a: { vip: 10.0.0.1, ports: [{ port: 80 }], endpoints: [10.1.0.1] }
  b: { vip: 10.0.0.2, ports: [{ port: 80 }], endpoints: [10.1.0.2] }
  c: { vip: 10.0.0.3, ports: [{ port: 80 }] }
";

    #[test]
    fn diff_lists_changed_added_and_removed_services_only() {
        let old = mesh(BASE);
        assert!(diff(&old, &old).is_empty());
        let new = mesh(
            "services:
  a: { vip: 10.0.0.1, ports: [{ port: 80 }], endpoints: [10.1.0.1] }
  b: { vip: 10.0.0.2, ports: [{ port: 80 }], endpoints: [10.1.0.2, 10.1.0.9] }
  d: { vip: 10.0.0.4, ports: [{ port: 80, protocol: http }] }
",
        );
        let d = diff(&old, &new);
        assert_eq!(names(&d), (vec!["b", "d"], vec!["c"]));
        assert_eq!(d.upserted[0].1.endpoints.len(), 2, "whole service");
        assert_eq!(names(&diff(&new, &old)), (vec!["b", "c"], vec!["d"]));
        assert_eq!(names(&diff(&Mesh::default(), &old)).0, vec!["a", "b", "c"]);
        assert_eq!(names(&diff(&old, &Mesh::default())).1, vec!["a", "b", "c"]);
    }

    #[test]
    fn workload_changes_are_not_service_changes() {
        let old = mesh(BASE);
        let new = mesh(&format!(
            "{BASE}workloads:\n  w: {{ service: a, command: x }}\n"
        ));
        assert!(diff(&old, &new).is_empty());
    }

    #[test]
    fn recent_errors_are_bounded_oldest_out_first() {
        let state = State::new(vec!["file m".into()], mesh(BASE));
        for i in 0..=RECENT_ERRORS {
            state.record_error(0, ConfigError::new("m", format!("bad {i}")));
        }
        let recent = state.recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS, "bounded");
        assert_eq!(recent[0].display, "m: bad 1", "the oldest went first");
        assert_eq!(
            recent[RECENT_ERRORS - 1].display,
            format!("m: bad {RECENT_ERRORS}")
        );
    }

    #[test]
    fn versions_errors_and_subscribers() {
        let state = Arc::new(State::new(
            vec!["file m".into(), "other".into()],
            mesh(BASE),
        ));
        assert_eq!(state.snapshot().version, 1);
        state.record_good(0);
        assert_eq!(state.publish(mesh(BASE)), None, "unchanged");
        assert_eq!(state.snapshot().version, 1);
        state.record_error(1, ConfigError::new("o", "worse"));
        state.record_error(0, ConfigError::new("m", "bad"));
        let s = state.status();
        assert_eq!(s.reload_errors_total, 2);
        assert_eq!(
            s.current_error.as_ref().map(|e| e.display.as_str()),
            Some("m: bad"),
            "the first source's"
        );
        state.record_good(0);
        assert_eq!(state.publish(Mesh::default()), Some(2));
        let s = state.status();
        assert_eq!(
            s.current_error.as_ref().map(|e| e.display.as_str()),
            Some("o: worse"),
            "the other source is still bad"
        );
        state.record_good(1);
        let recent: Vec<String> = state
            .recent_errors()
            .into_iter()
            .map(|e| e.display)
            .collect();
        assert_eq!(recent, ["o: worse", "m: bad"], "kept after they were fixed");
        let s = state.status();
        assert!(s.current_error.is_none());
        assert!(s.last_error.is_some());
        assert_eq!((s.version, s.services, s.reloads_total), (2, 0, 5));
        let g = state.proxies().join(crate::proxies::ProxyInfo {
            proxy_id: "p".into(),
            service: "s".into(),
            peer: None,
            caller: "anyone".into(),
            acknowledging: true,
        });
        assert_eq!(
            state.status().subscribers,
            0,
            "not before it applied a snapshot"
        );
        g.sent(2);
        g.acked(2, "");
        assert_eq!(state.status().subscribers, 1);
        drop(g);
        assert_eq!(state.status().subscribers, 0);
    }

    #[tokio::test]
    async fn sidecar_addresses_are_meshed_while_subscribed_and_while_endpoints() {
        let state = Arc::new(State::new(vec!["m".into()], mesh(BASE)));
        let ip = |a: &str| -> IpAddr { a.parse().expect("ip") };
        let v1 = state.snapshot();
        let guard = state.sidecar(vec![ip("10.1.0.1"), ip("10.9.9.9")], None, false);
        let v2 = state.snapshot();
        assert_eq!(v2.version, v1.version + 1);
        assert!(v2.meshed.contains(&ip("10.1.0.1")));
        let d = diff_snapshots(&v1, &v2);
        assert_eq!(
            d.upserted
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>(),
            ["a"],
            "only the service whose endpoint became meshed"
        );
        drop(guard);
        let v3 = state.snapshot();
        assert!(
            v3.meshed.contains(&ip("10.1.0.1")),
            "still an endpoint: stays meshed"
        );
        assert!(
            !v3.meshed.contains(&ip("10.9.9.9")),
            "no endpoint: forgotten"
        );
        assert_eq!(state.publish(Mesh::default()), Some(v3.version + 1));
        assert!(state.snapshot().meshed.is_empty(), "no longer an endpoint");
    }

    #[tokio::test]
    async fn a_sidecar_names_its_endpoints_while_they_stay_meshed() {
        let state = Arc::new(State::new(vec!["m".into()], mesh(BASE)));
        let ip = |a: &str| -> IpAddr { a.parse().expect("ip") };
        let id = |s: &str| Some(Arc::<str>::from(s));
        let v1 = state.snapshot();
        let first = state.sidecar(vec![ip("10.1.0.1")], id("spiffe://t/ns/local/sa/a"), false);
        let v2 = state.snapshot();
        assert_eq!(
            v2.identities.get(&ip("10.1.0.1")).map(|s| &**s),
            Some("spiffe://t/ns/local/sa/a")
        );
        // Its sidecar gone, the address is still meshed, and still named.
        drop(first);
        let v3 = state.snapshot();
        assert_eq!(v3.identities, v2.identities);
        // A new sidecar there under another name renames it: a new version, and
        // the service is sent again.
        let _second = state.sidecar(vec![ip("10.1.0.1")], id("spiffe://t/ns/local/sa/b"), false);
        let v4 = state.snapshot();
        assert_eq!(
            v4.identities.get(&ip("10.1.0.1")).map(|s| &**s),
            Some("spiffe://t/ns/local/sa/b")
        );
        assert_eq!(diff_snapshots(&v3, &v4).upserted.len(), 1);
        assert!(v1.identities.is_empty());
        // No longer an endpoint: forgotten with its meshing.
        state.publish(Mesh::default());
        assert!(state.snapshot().identities.is_empty());
    }

    #[tokio::test]
    async fn a_drained_address_stays_drained_until_a_new_sidecar_subscribes_there() {
        let state = Arc::new(State::new(vec!["m".into()], mesh(BASE)));
        let ip = |a: &str| -> IpAddr { a.parse().expect("ip") };
        state.drain(&[ip("10.1.0.1")]);
        tokio::time::timeout(std::time::Duration::from_secs(1), state.drain_changed())
            .await
            .expect("the merge loop is woken");
        assert!(state.draining().contains(&ip("10.1.0.1")));
        let draining_again = state.sidecar(vec![ip("10.1.0.1")], None, true);
        assert!(
            state.draining().contains(&ip("10.1.0.1")),
            "the draining sidecar reconnecting keeps it drained"
        );
        drop(draining_again);
        let _new = state.sidecar(vec![ip("10.1.0.1")], None, false);
        assert!(
            state.draining().is_empty(),
            "a new sidecar there: served again"
        );
        state.drain(&[ip("10.1.0.1"), ip("10.9.9.9")]);
        state.prune_draining(|a| *a == ip("10.1.0.1"));
        assert_eq!(
            state.draining().into_iter().collect::<Vec<_>>(),
            [ip("10.1.0.1")],
            "an address that is no endpoint is forgotten"
        );
    }
}
