//! The routing table: which service an original destination (VIP:port) belongs to
//! and its endpoints (choosing among them is [`crate::balance`]'s job); and which
//! service a peer address belongs to (the inbound `source_service`).
//!
//! The table is replaced as a whole on every discovery update (readers take an `Arc`
//! snapshot, so a connection routes against one consistent state), but the entry of
//! a service the update did not touch is carried over as the same route, so it keeps
//! its balancer (round-robin position, breaker state) and unrelated changes do not
//! disturb the rotation.
//!
//! [`Routes`] also remembers which discovery version its table is and when this proxy
//! applied it, stored together with the table so that `/routes` never shows a table
//! with another version's number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::addr::{EndpointAddr, OrigDstAddr};
use crate::authz::Authorization;
use crate::policy::Policy;

/// How the proxy treats traffic to a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// Detect from the first bytes: HTTP is proxied per request, anything else
    /// relayed as TCP.
    Auto,
    /// HTTP: proxied per request, without waiting to detect anything but the version.
    Http,
    /// Opaque TCP.
    Tcp,
}

impl PortProtocol {
    /// The name used in the mesh file and on `/routes`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Auto => "auto",
            PortProtocol::Http => "http",
            PortProtocol::Tcp => "tcp",
        }
    }
}

/// How a service's endpoints take traffic from other sidecars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mutual TLS from peers holding a certificate, plaintext from the rest.
    #[default]
    Permissive,
    /// Mutual TLS only: the service's sidecars refuse plaintext (reset, counted
    /// `plaintext_refused`).
    Strict,
    /// Plaintext: clients do not secure connections to the service's endpoints.
    Disabled,
}

/// One port of a service as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
    pub protocol: PortProtocol,
}

/// A service as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<IpAddr>,
    /// The endpoints a weft sidecar serves (discovery marks them): their sidecar's
    /// own error answers (`x-weft-error`) can be trusted, see [`crate::l7::forward`].
    pub meshed: Vec<IpAddr>,
    /// The SPIFFE ID each meshed endpoint's sidecar holds a certificate for, where
    /// discovery names one: what mutual TLS to it expects.
    pub identities: Vec<(IpAddr, Arc<str>)>,
    /// Known endpoints not served now (withdrawn or draining): never balanced to,
    /// but still this service's pods, for the peer → service map.
    pub withheld: Vec<IpAddr>,
    /// Timeouts, retries, breaker and lb, defaults applied.
    pub policy: Policy,
    /// Mutual TLS to and at the service's endpoints.
    pub mtls: MtlsMode,
    /// Who may call the service's endpoints ([`crate::authz`]).
    pub authorization: Vec<Authorization>,
}

/// Where one VIP:port leads. Its endpoints are picked by the route's balancer
/// ([`crate::balance`]), found by the route's identity: a route kept across updates
/// keeps its balancer.
#[derive(Debug)]
pub struct ServiceRoute {
    pub service: Arc<str>,
    pub target_port: u16,
    pub protocol: PortProtocol,
    pub policy: Policy,
    endpoints: Vec<IpAddr>,
    meshed: Vec<IpAddr>,
    identities: Vec<(IpAddr, Arc<str>)>,
}

impl ServiceRoute {
    /// Every endpoint, target port applied (the balancer keeps each).
    pub fn endpoints(&self) -> impl ExactSizeIterator<Item = EndpointAddr> + '_ {
        self.endpoints
            .iter()
            .map(|ip| EndpointAddr(SocketAddr::new(*ip, self.target_port)))
    }

    /// Whether a weft sidecar serves `ip` (see [`ServiceSpec::meshed`]).
    pub fn is_meshed(&self, ip: IpAddr) -> bool {
        self.meshed.contains(&ip)
    }

    /// The SPIFFE ID the sidecar at `ip` is known by (see
    /// [`ServiceSpec::identities`]).
    pub fn identity(&self, ip: IpAddr) -> Option<&Arc<str>> {
        self.identities
            .iter()
            .find_map(|(at, id)| (*at == ip).then_some(id))
    }
}

/// What an original destination resolves to.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A known service port.
    Service(Arc<ServiceRoute>),
    /// Not a service: forward to the original destination as-is.
    Passthrough,
}

/// One service of a table: what discovery said, and its routes. Shared between
/// successive tables while unchanged, so an update copies pointers, not services.
#[derive(Debug)]
struct ServiceEntry {
    spec: ServiceSpec,
    name: Arc<str>,
    routes: Vec<Arc<ServiceRoute>>,
}

impl ServiceEntry {
    fn new(spec: ServiceSpec) -> Arc<Self> {
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let routes = routes_of(&spec, &name);
        Arc::new(ServiceEntry { spec, name, routes })
    }

    /// Each VIP:port (canonical, as the index keys it) with its route.
    fn vip_ports(&self) -> impl Iterator<Item = (SocketAddr, &Arc<ServiceRoute>)> + '_ {
        (self.spec.ports.iter().zip(&self.routes))
            .map(|(port, route)| (canonical(SocketAddr::new(self.spec.vip, port.port)), route))
    }
}

/// One consistent state of the mesh, as this proxy knows it.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: HashMap<Arc<str>, Arc<ServiceEntry>>,
    by_vip_port: HashMap<SocketAddr, Arc<ServiceRoute>>,
    by_endpoint_ip: HashMap<IpAddr, Arc<str>>,
    /// How many times the services list each address (endpoints and withheld):
    /// an address a changed service let go of is searched for among the others
    /// only when some still list it, which is rare (see [`RouteTable::patch`]).
    endpoint_holders: HashMap<IpAddr, u32>,
}

impl RouteTable {
    /// A table with exactly `services`.
    pub fn from_services(services: impl IntoIterator<Item = ServiceSpec>) -> Self {
        RouteTable::default().updated(true, services, std::iter::empty::<String>())
    }

    /// The table after an update: with `full`, `upserted` is the whole mesh;
    /// otherwise `upserted` services are added or replaced and `removed` dropped.
    pub fn updated(
        &self,
        full: bool,
        upserted: impl IntoIterator<Item = ServiceSpec>,
        removed: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> RouteTable {
        // An unchanged service keeps its entry (its routes, and so their balancers).
        let entry_of = |spec: ServiceSpec| match self.services.get(spec.name.as_str()) {
            Some(old) if old.spec == spec => old.clone(),
            _ => ServiceEntry::new(spec),
        };
        if full {
            let services = upserted
                .into_iter()
                .map(|spec| {
                    let entry = entry_of(spec);
                    (entry.name.clone(), entry)
                })
                .collect();
            return RouteTable::indexed(services);
        }
        let mut table = RouteTable {
            services: self.services.clone(),
            by_vip_port: self.by_vip_port.clone(),
            by_endpoint_ip: self.by_endpoint_ip.clone(),
            endpoint_holders: self.endpoint_holders.clone(),
        };
        table.patch(upserted, removed);
        table
    }

    /// The number of services after an incremental update of `upserted` and
    /// `removed` names (checked before [`RouteTable::patch`], which cannot undo).
    pub fn count_after<'a>(
        &self,
        upserted: impl IntoIterator<Item = &'a str>,
        removed: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let upserted: std::collections::HashSet<&str> = upserted.into_iter().collect();
        let gone = removed
            .into_iter()
            .filter(|name| self.services.contains_key(*name) && !upserted.contains(name))
            .collect::<std::collections::HashSet<&str>>()
            .len();
        let new = upserted
            .iter()
            .filter(|name| !self.services.contains_key(**name))
            .count();
        self.services.len() - gone + new
    }

    /// Applies an incremental update to this table: `upserted` services added or
    /// replaced, `removed` dropped. The indexes are patched, not rebuilt: what the
    /// changed services held is taken out, what they hold now put in. Rebuilding
    /// them whole cost every proxy about 11,000 hash inserts per one-service edit
    /// of a 1,000-service mesh (issue 17's profile).
    pub fn patch(
        &mut self,
        upserted: impl IntoIterator<Item = ServiceSpec>,
        removed: impl IntoIterator<Item = impl AsRef<str>>,
    ) {
        // Entries made against the table as it was: an unchanged service keeps
        // its entry (its routes, and so their balancers).
        let entries: Vec<Arc<ServiceEntry>> = upserted
            .into_iter()
            .map(|spec| match self.services.get(spec.name.as_str()) {
                Some(old) if old.spec == spec => old.clone(),
                _ => ServiceEntry::new(spec),
            })
            .collect();
        let mut gone = Vec::new();
        let mut added = Vec::new();
        for name in removed {
            gone.extend(self.services.remove(name.as_ref()));
        }
        for entry in entries {
            match self.services.insert(entry.name.clone(), entry.clone()) {
                Some(old) if Arc::ptr_eq(&old, &entry) => continue,
                // A service named twice in this update: the first entry was never
                // indexed, nothing of it to take out.
                Some(old) if added.iter().any(|a| Arc::ptr_eq(a, &old)) => {}
                Some(old) => gone.push(old),
                None => {}
            }
            added.push(entry);
        }
        let (mut vacated_ports, mut vacated_ips) = (Vec::new(), Vec::new());
        for old in &gone {
            for (key, route) in old.vip_ports() {
                if self
                    .by_vip_port
                    .get(&key)
                    .is_some_and(|r| Arc::ptr_eq(r, route))
                {
                    self.by_vip_port.remove(&key);
                    vacated_ports.push(key);
                }
            }
            for ip in old.spec.endpoints.iter().chain(&old.spec.withheld) {
                let key = ip.to_canonical();
                self.let_go(key);
                if self.by_endpoint_ip.get(&key) == Some(&old.name) {
                    self.by_endpoint_ip.remove(&key);
                    vacated_ips.push(key);
                }
            }
        }
        // A service named twice in one update: only the last entry stands.
        added.retain(|e| {
            self.services
                .get(&e.name)
                .is_some_and(|now| Arc::ptr_eq(now, e))
        });
        self.index(&added);
        // A key a changed service let go of may still be another service's (rare:
        // addresses are shared only by misconfiguration, or by a pod that moved):
        // found by a search among all the services, as a whole rebuild would. Most
        // such keys are taken again by the changed services themselves, and need
        // none. An address taken again only as a withheld one is searched for a
        // service that serves it, which comes first. The keys left are searched
        // for together, in one pass over the services: an endpoint removed from
        // each of 100 services of a 1,000-service mesh was 100 passes, the most
        // of what such an update cost every proxy (issue 17's profile).
        let mut orphan_ports: HashSet<SocketAddr> = vacated_ports
            .into_iter()
            .filter(|key| !self.by_vip_port.contains_key(key))
            .collect();
        for e in self.services.values() {
            if orphan_ports.is_empty() {
                break;
            }
            for (key, route) in e.vip_ports() {
                if orphan_ports.remove(&key) {
                    self.by_vip_port.insert(key, route.clone());
                }
            }
        }
        let serves = |ips: &[IpAddr], key: IpAddr| ips.iter().any(|ip| ip.to_canonical() == key);
        // Only an address some service still lists can have another owner: the
        // usual vacated address (an endpoint gone) is listed by none, and costs no
        // search (it was a pass over every service's endpoints per update, the
        // first of what an update cost every proxy, issue 17's profile).
        let mut unserved: HashSet<IpAddr> = vacated_ips
            .into_iter()
            .filter(|key| self.endpoint_holders.contains_key(key))
            .filter(|key| match self.by_endpoint_ip.get(key) {
                Some(name) => !self
                    .services
                    .get(name)
                    .is_some_and(|e| serves(&e.spec.endpoints, *key)),
                None => true,
            })
            .collect();
        // First a service that serves the address ...
        for e in self.services.values() {
            if unserved.is_empty() {
                break;
            }
            for ip in &e.spec.endpoints {
                let key = ip.to_canonical();
                if unserved.remove(&key) {
                    self.by_endpoint_ip.insert(key, e.name.clone());
                }
            }
        }
        // ... else, for an address no service holds now, one that withholds it.
        unserved.retain(|key| !self.by_endpoint_ip.contains_key(key));
        for e in self.services.values() {
            if unserved.is_empty() {
                break;
            }
            for ip in &e.spec.withheld {
                let key = ip.to_canonical();
                if unserved.remove(&key) {
                    self.by_endpoint_ip.insert(key, e.name.clone());
                }
            }
        }
    }

    /// A table of `services` with its indexes built whole.
    fn indexed(services: HashMap<Arc<str>, Arc<ServiceEntry>>) -> RouteTable {
        // Sized once, from shared names, and keyed canonical as lookups are (an
        // IPv4-mapped address is its IPv4 one).
        let ports = services.values().map(|e| e.spec.ports.len()).sum();
        let addresses = services
            .values()
            .map(|e| e.spec.endpoints.len() + e.spec.withheld.len())
            .sum();
        let mut table = RouteTable {
            by_vip_port: HashMap::with_capacity(ports),
            by_endpoint_ip: HashMap::with_capacity(addresses),
            endpoint_holders: HashMap::with_capacity(addresses),
            services: HashMap::new(),
        };
        let entries: Vec<Arc<ServiceEntry>> = services.values().cloned().collect();
        table.index(&entries);
        table.services = services;
        table
    }

    /// Puts `entries` into the indexes: their VIP:ports and endpoints over what is
    /// there, then their withheld endpoints where no service has that address (a
    /// withheld endpoint is still its service's pod, unless another service
    /// serves that address).
    fn index(&mut self, entries: &[Arc<ServiceEntry>]) {
        for e in entries {
            for (key, route) in e.vip_ports() {
                self.by_vip_port.insert(key, route.clone());
            }
            for ip in &e.spec.endpoints {
                self.by_endpoint_ip
                    .insert(ip.to_canonical(), e.name.clone());
            }
            for ip in e.spec.endpoints.iter().chain(&e.spec.withheld) {
                *self.endpoint_holders.entry(ip.to_canonical()).or_insert(0) += 1;
            }
        }
        for e in entries {
            for ip in &e.spec.withheld {
                self.by_endpoint_ip
                    .entry(ip.to_canonical())
                    .or_insert_with(|| e.name.clone());
            }
        }
    }

    /// One listing of address `key` is gone (a changed or removed service's).
    fn let_go(&mut self, key: IpAddr) {
        if let Some(n) = self.endpoint_holders.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.endpoint_holders.remove(&key);
            }
        }
    }

    /// Where a connection to `orig_dst` goes.
    pub fn resolve(&self, orig_dst: OrigDstAddr) -> Resolved {
        match self.by_vip_port.get(&canonical(orig_dst.0)) {
            Some(route) => Resolved::Service(route.clone()),
            None => Resolved::Passthrough,
        }
    }

    /// The service whose endpoint has address `ip`, if any.
    pub fn service_of_peer(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.by_endpoint_ip.get(&ip.to_canonical()).cloned()
    }

    /// The declared protocol of `service`'s port whose target port is `target_port`
    /// (inbound traffic arrives on target ports); `None` when not declared.
    pub fn target_port_protocol(&self, service: &str, target_port: u16) -> Option<PortProtocol> {
        let spec = &self.services.get(service)?.spec;
        spec.ports
            .iter()
            .find(|p| p.target_port == target_port)
            .map(|p| p.protocol)
    }

    /// How `service`'s endpoints take traffic from other sidecars (permissive for
    /// a service discovery does not know).
    pub fn mtls_mode(&self, service: &str) -> MtlsMode {
        self.services
            .get(service)
            .map_or(MtlsMode::default(), |e| e.spec.mtls)
    }

    /// The service named `name`, as discovery described it.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name).map(|e| &e.spec)
    }

    /// Number of services known.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The table for display (`/routes`): services by name, each VIP:port with its
    /// endpoints at the target port.
    pub fn view(&self) -> Vec<ServiceView<'_>> {
        let mut out: Vec<ServiceView<'_>> = self
            .services
            .values()
            .map(|e| &e.spec)
            .map(|spec| ServiceView {
                name: &spec.name,
                policy: spec.policy,
                mtls: spec.mtls,
                authorization: &spec.authorization,
                routes: spec
                    .ports
                    .iter()
                    .map(|p| RouteView {
                        vip_port: SocketAddr::new(spec.vip, p.port),
                        protocol: p.protocol.as_str(),
                        endpoints: spec
                            .endpoints
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, p.target_port))
                            .collect(),
                    })
                    .collect(),
                meshed: &spec.meshed,
                identities: spec
                    .identities
                    .iter()
                    .map(|(ip, id)| (*ip, &**id))
                    .collect(),
            })
            .collect();
        out.sort_unstable_by(|a, b| a.name.cmp(b.name));
        out
    }
}

/// One service as `/routes` shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView<'a> {
    pub name: &'a str,
    pub policy: Policy,
    pub mtls: MtlsMode,
    /// Who may call its endpoints; left out when everyone may.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub authorization: &'a [Authorization],
    pub routes: Vec<RouteView>,
    /// The endpoints a weft sidecar serves (opaque TCP reaches them through its
    /// tunnel); left out when none is.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub meshed: &'a [IpAddr],
    /// Each meshed endpoint's SPIFFE ID, where discovery names one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: BTreeMap<IpAddr, &'a str>,
}

/// One VIP:port of a service and where it leads.
#[derive(Debug, Serialize)]
pub struct RouteView {
    pub vip_port: SocketAddr,
    pub protocol: &'static str,
    /// Endpoint addresses with the target port applied.
    pub endpoints: Vec<SocketAddr>,
}

fn routes_of(spec: &ServiceSpec, service: &Arc<str>) -> Vec<Arc<ServiceRoute>> {
    spec.ports
        .iter()
        .map(|p| {
            Arc::new(ServiceRoute {
                service: service.clone(),
                target_port: p.target_port,
                protocol: p.protocol,
                policy: spec.policy,
                endpoints: spec.endpoints.clone(),
                meshed: spec.meshed.clone(),
                // Disabled: no identity to demand, so clients dial plaintext.
                identities: match spec.mtls {
                    MtlsMode::Disabled => Vec::new(),
                    MtlsMode::Permissive | MtlsMode::Strict => spec.identities.clone(),
                },
            })
        })
        .collect()
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Which discovery version a table is, and when this proxy applied that version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The controller's epoch (its start): versions count up within one.
    pub epoch: u64,
    /// The controller's mesh version.
    pub version: u64,
    /// When this proxy first applied that version (milliseconds since the Unix epoch;
    /// wall clock, so it compares with the time a change was made elsewhere).
    pub applied_at_unix_ms: u64,
}

impl Applied {
    /// Discovery's `version` (of `epoch`), applied now — or when it first was:
    /// the time is kept when `current` is that version already (a reconnect
    /// re-sends the current version as a snapshot).
    fn stamp(current: Option<Applied>, epoch: u64, version: u64) -> Applied {
        match current {
            Some(a) if a.version == version && a.epoch == epoch => a,
            _ => Applied {
                epoch,
                version,
                applied_at_unix_ms: unix_ms_now(),
            },
        }
    }
}

/// The proxy's current table, swapped atomically by discovery.
#[derive(Debug, Default)]
pub struct Routes {
    current: RwLock<Current>,
    /// Bumped on every store: lets a connection tell cheaply whether the table it
    /// routed by is still current ([`crate::balance::Follow`]).
    generation: AtomicU64,
}

/// The table and its version, replaced together.
#[derive(Debug, Default)]
struct Current {
    table: Arc<RouteTable>,
    applied: Option<Applied>,
}

impl Routes {
    /// How many tables have been stored.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current table.
    pub fn load(&self) -> Arc<RouteTable> {
        self.read().table.clone()
    }

    /// The current table and the discovery version it is (`None` when it did not
    /// come from discovery).
    pub fn load_applied(&self) -> (Arc<RouteTable>, Option<Applied>) {
        let current = self.read();
        (current.table.clone(), current.applied)
    }

    /// Replaces the current table with one that did not come from discovery.
    pub fn store(&self, table: RouteTable) {
        *self.write() = Current {
            table: Arc::new(table),
            applied: None,
        };
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Replaces the current table with discovery's `version` (of `epoch`) of it. The
    /// applied time is kept when the version is the one already applied (a reconnect
    /// re-sends the current version as a snapshot), so it stays the time that
    /// version arrived; a restarted controller's versions are of another epoch.
    pub fn store_version(&self, table: RouteTable, epoch: u64, version: u64) -> Applied {
        let mut current = self.write();
        let applied = Applied::stamp(current.applied, epoch, version);
        *current = Current {
            table: Arc::new(table),
            applied: Some(applied),
        };
        drop(current);
        self.generation.fetch_add(1, Ordering::Release);
        applied
    }

    /// Applies discovery's incremental `version` (of `epoch`) to the current
    /// table (see [`RouteTable::patch`]): in place when nothing else holds it —
    /// the usual case, as a connection holds it only while it is routed — so an
    /// update costs what it changes, not the size of the mesh; on a copy
    /// otherwise. Connections routing meanwhile wait for the lock.
    pub fn patch_version(
        &self,
        upserted: Vec<ServiceSpec>,
        removed: impl IntoIterator<Item = impl AsRef<str>>,
        epoch: u64,
        version: u64,
    ) -> Applied {
        let mut current = self.write();
        match Arc::get_mut(&mut current.table) {
            Some(table) => table.patch(upserted, removed),
            None => {
                let next = current.table.updated(false, upserted, removed);
                current.table = Arc::new(next);
            }
        }
        let applied = Applied::stamp(current.applied, epoch, version);
        current.applied = Some(applied);
        drop(current);
        self.generation.fetch_add(1, Ordering::Release);
        applied
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unit tests' service: `name` at `vip`, port 80 → 8080 (`auto`), `endpoints`, the
/// default policy.
#[cfg(test)]
pub(crate) fn test_spec(name: &str, vip: &str, endpoints: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        vip: vip.parse().expect("vip"),
        ports: vec![ServicePort {
            port: 80,
            target_port: 8080,
            protocol: PortProtocol::Auto,
        }],
        endpoints: endpoints.iter().map(|e| e.parse().expect("ip")).collect(),
        meshed: Vec::new(),
        identities: Vec::new(),
        withheld: Vec::new(),
        policy: Policy::default(),
        mtls: MtlsMode::Permissive,
        authorization: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_spec as spec;

    #[test]
    fn a_withheld_endpoint_is_still_its_services_pod_but_never_an_endpoint() {
        let mut front = spec("frontend", "10.96.0.2", &[]);
        front.withheld = vec!["10.0.0.9".parse().expect("ip")];
        let mut back = spec("backend", "10.96.0.1", &["10.0.0.1"]);
        // Withheld by one service, served by another: the serving one names it.
        back.withheld = vec!["10.0.0.1".parse().expect("ip")];
        let t = RouteTable::from_services([front, back]);
        let ip = |a: &str| a.parse().expect("ip");
        assert_eq!(
            t.service_of_peer(ip("10.0.0.9")).as_deref(),
            Some("frontend")
        );
        assert_eq!(
            t.service_of_peer(ip("10.0.0.1")).as_deref(),
            Some("backend")
        );
        let Resolved::Service(route) =
            t.resolve(OrigDstAddr("10.96.0.2:80".parse().expect("addr")))
        else {
            panic!("no route")
        };
        assert_eq!(route.endpoints().count(), 0, "never balanced to");
    }

    /// The rule a table's indexes keep, checked against its services: every
    /// VIP:port and address someone has is indexed, to one of the services that
    /// has it (an endpoint before a withheld one), and nothing else is.
    fn assert_indexes_follow_the_services(t: &RouteTable) {
        let entries: Vec<&Arc<ServiceEntry>> = t.services.values().collect();
        let mut ports = 0;
        for e in &entries {
            for (key, _) in e.vip_ports() {
                let route = t.by_vip_port.get(&key).expect("every VIP:port indexed");
                assert!(entries.iter().any(|o| o
                    .vip_ports()
                    .any(|(k, r)| k == key && Arc::ptr_eq(r, route))));
                ports += 1;
            }
        }
        assert!(t.by_vip_port.len() <= ports);
        for (ip, name) in &t.by_endpoint_ip {
            let has = |ips: &[IpAddr]| ips.iter().any(|a| a.to_canonical() == *ip);
            let serving: Vec<&str> = (entries.iter())
                .filter(|e| has(&e.spec.endpoints))
                .map(|e| &*e.name)
                .collect();
            let holding: Vec<&str> = (entries.iter())
                .filter(|e| has(&e.spec.withheld))
                .map(|e| &*e.name)
                .collect();
            let owners = if serving.is_empty() { holding } else { serving };
            assert!(
                owners.contains(&&**name),
                "{ip} -> {name}, owners {owners:?}"
            );
        }
        let mut holders: HashMap<IpAddr, u32> = HashMap::new();
        for e in &entries {
            for ip in e.spec.endpoints.iter().chain(&e.spec.withheld) {
                assert!(
                    t.by_endpoint_ip.contains_key(&ip.to_canonical()),
                    "{ip} indexed"
                );
                *holders.entry(ip.to_canonical()).or_insert(0) += 1;
            }
        }
        assert_eq!(t.endpoint_holders, holders, "every listing counted, once");
    }

    #[test]
    fn incremental_updates_keep_the_indexes_a_rebuild_would_make() {
        // Services drawn from small pools of VIPs and addresses, so that they
        // share some (a pod that moved, a misconfiguration), edited, replaced and
        // removed in turn; after each update the patched indexes follow the rule,
        // and hold what a table built whole from the same services holds.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut t = RouteTable::default();
        let in_place = Routes::default();
        for step in 0..400 {
            let mut upserted = Vec::new();
            let mut removed = Vec::new();
            for _ in 0..=next(3) {
                let name = format!("s{}", next(12));
                if next(5) == 0 {
                    removed.push(name);
                    continue;
                }
                let vip = format!("10.96.0.{}", next(16));
                let endpoints: Vec<String> = (0..next(4))
                    .map(|_| format!("10.0.0.{}", next(24)))
                    .collect();
                let refs: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                let mut s = spec(&name, &vip, &refs);
                s.withheld = (0..next(3))
                    .map(|_| format!("10.0.0.{}", next(24)).parse().expect("ip"))
                    .collect();
                upserted.push(s);
            }
            // A name both removed and upserted is upserted (a service named twice
            // is kept: the last one stands).
            removed.retain(|r| !upserted.iter().any(|s| &s.name == r));
            let full = step == 0;
            let count = t.count_after(
                upserted.iter().map(|s| s.name.as_str()),
                removed.iter().map(String::as_str),
            );
            // The same update in place, on the table `Routes` holds.
            if full {
                in_place.store_version(t.updated(true, upserted.clone(), removed.iter()), 1, step);
            } else {
                in_place.patch_version(upserted.clone(), removed.iter(), 1, step);
            }
            t = t.updated(full, upserted, removed.iter());
            assert_indexes_follow_the_services(&t);
            if !full {
                assert_eq!(count, t.service_count(), "step {step}");
            }
            // (Either may name another of an address's owners: both follow the rule.)
            let patched = in_place.load();
            assert_indexes_follow_the_services(&patched);
            let names = |t: &RouteTable| {
                let mut n: Vec<Arc<str>> = t.services.keys().cloned().collect();
                n.sort();
                n
            };
            assert_eq!(names(&patched), names(&t), "step {step}");
            let whole = RouteTable::from_services(t.services.values().map(|e| e.spec.clone()));
            let keys = |m: &HashMap<IpAddr, Arc<str>>| {
                let mut k: Vec<IpAddr> = m.keys().copied().collect();
                k.sort();
                k
            };
            assert_eq!(
                keys(&t.by_endpoint_ip),
                keys(&whole.by_endpoint_ip),
                "step {step}"
            );
            let mut ports: Vec<SocketAddr> = t.by_vip_port.keys().copied().collect();
            let mut whole_ports: Vec<SocketAddr> = whole.by_vip_port.keys().copied().collect();
            ports.sort();
            whole_ports.sort();
            assert_eq!(ports, whole_ports, "step {step}");
        }
    }

    #[test]
    fn view_lists_services_by_name_with_target_ports() {
        let t = RouteTable::from_services([
            spec("b", "fd00:96::2", &["fd00:211::3"]),
            ServiceSpec {
                meshed: vec!["10.0.0.2".parse().expect("ip")],
                identities: vec![(
                    "10.0.0.2".parse().expect("ip"),
                    Arc::from("spiffe://weft.local/ns/local/sa/a"),
                )],
                ..spec("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"])
            },
        ]);
        let mut json = serde_json::to_value(t.view()).expect("serializable");
        for service in json.as_array_mut().expect("list") {
            let service = service.as_object_mut().expect("object");
            let policy = service.remove("policy");
            assert_eq!(policy.expect("policy")["lb"], "round_robin");
            assert_eq!(service.remove("mtls").expect("mtls"), "permissive");
        }
        assert_eq!(
            json,
            serde_json::json!([
                { "name": "a", "routes": [{
                    "vip_port": "10.96.0.1:80",
                    "protocol": "auto",
                    "endpoints": ["10.0.0.1:8080", "10.0.0.2:8080"],
                }], "meshed": ["10.0.0.2"],
                  "identities": { "10.0.0.2": "spiffe://weft.local/ns/local/sa/a" }},
                { "name": "b", "routes": [{
                    "vip_port": "[fd00:96::2]:80",
                    "protocol": "auto",
                    "endpoints": ["[fd00:211::3]:8080"],
                }]},
            ])
        );
    }

    #[test]
    fn applied_time_belongs_to_the_version() {
        let routes = Routes::default();
        assert_eq!(routes.load_applied().1, None);
        let v1 = routes.store_version(RouteTable::default(), 7, 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        // The same version again (a reconnect's snapshot): same applied time.
        assert_eq!(routes.store_version(RouteTable::default(), 7, 1), v1);
        let v2 = routes.store_version(RouteTable::default(), 7, 2);
        assert!(v2.applied_at_unix_ms > v1.applied_at_unix_ms);
        assert_eq!(routes.load_applied().1, Some(v2));
        // A restarted controller's version 2 is another state.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let other = routes.store_version(RouteTable::default(), 8, 2);
        assert!(other.applied_at_unix_ms > v2.applied_at_unix_ms);
        routes.store(RouteTable::default());
        assert_eq!(routes.load_applied().1, None, "a table not from discovery");
    }
}
