//! Choosing an endpoint for a connection (opaque TCP) or a request (HTTP): one
//! picker for both, so the circuit breaker and P2C see every use of an endpoint.
//!
//! A [`Balancer`] belongs to one [`ServiceRoute`](crate::routes::ServiceRoute) (one
//! VIP:port at one version of its endpoint set and policy) and holds each
//! [`Endpoint`]: its address, its [`Health`] and what the protocol keeps per
//! endpoint (`C`: for HTTP the connection pool; this module does not know it, so
//! that the L4 and L7 paths both depend on it and it on neither). Nothing on the
//! pick path takes a lock: a pick is a few atomic loads (and one increment for round
//! robin), an outcome a few atomic stores.
//!
//! - **Round robin** (default): one shared counter per route.
//! - **P2C over peak-EWMA** (`lb: p2c_ewma`): two endpoints drawn at random (a
//!   per-thread xorshift), the one with the lower cost wins, cost = latency estimate
//!   × (attempts in flight + 1). The estimate jumps up to a slower sample at once
//!   (peak) and decays towards newer samples — and towards 0 while unused — with a
//!   10 s time constant, so a slow endpoint is avoided quickly and retried later.
//! - **Circuit breaker** (state in [`breaker`], shared by every route through the
//!   endpoint): `consecutive_failures` failures in a row (connect failure, reset,
//!   timeout, a 5xx) eject the endpoint for `base_ejection` × the number of its
//!   ejections (at most `max_ejection`), unless that would take more than
//!   `max_ejection_percent` of the route's endpoints out. When the ejection ends,
//!   one attempt is let through as a probe: success puts the endpoint back (and
//!   resets its backoff), failure ejects it again for longer. With every endpoint
//!   out, picks fail at once with `all_endpoints_ejected`.
//! - **Unreachable endpoints leave at once** ([`Balancer::observe_unreachable`]): a
//!   refused connect, or a peer sidecar answering that its application is not
//!   listening, ejects the endpoint on the first occurrence, and
//!   `max_ejection_percent` does not hold it in rotation while another endpoint is
//!   in service (Envoy's panic threshold is the model: only with none left in
//!   service is traffic spread over endpoints known to be down). Ejections are
//!   counted in `weft_endpoint_ejections_total{destination_service, reason}`.
//! - [`budget`]: the retry budget; [`registry`]: finding a route's balancer;
//!   [`follow`]: a long-lived connection's balancer, kept current.

pub mod breaker;
pub mod budget;
pub mod follow;
pub mod registry;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Counter;
use opentelemetry::KeyValue;

use crate::addr::EndpointAddr;
use crate::error::ErrorReason;
use crate::policy::{Lb, Policy};
pub use breaker::Health;
use breaker::{now_ms, since_epoch, Admit};
pub use budget::RetryBudget;
pub use follow::Follow;
pub use registry::Registry;

/// What a protocol keeps per endpoint besides its health (HTTP: the pool of
/// connections); made when the registry first meets the endpoint.
pub trait Conns: std::fmt::Debug + Send + Sync + 'static {
    fn new(addr: EndpointAddr) -> Self;
}

/// Nothing per endpoint (tests, and a proxy that only relays TCP).
impl Conns for () {
    fn new(_: EndpointAddr) -> Self {}
}

/// One endpoint of a route: where it is, how it is doing, and its connections.
#[derive(Debug)]
pub struct Endpoint<C> {
    addr: EndpointAddr,
    /// Breaker and latency state.
    pub health: Health,
    /// What the protocol keeps for it (HTTP: the connection pool).
    pub conns: C,
}

impl<C: Conns> Endpoint<C> {
    pub fn new(addr: EndpointAddr) -> Self {
        Endpoint {
            addr,
            health: Health::default(),
            conns: C::new(addr),
        }
    }
}

impl<C> Endpoint<C> {
    /// The endpoint's address.
    pub fn addr(&self) -> EndpointAddr {
        self.addr
    }
}

/// An endpoint chosen for one attempt.
#[derive(Debug)]
pub struct Pick<'a, C> {
    pub endpoint: &'a Arc<Endpoint<C>>,
    /// The attempt is the probe after an ejection.
    pub probe: bool,
}

/// Balancing over one route's endpoints, with its policy.
#[derive(Debug)]
pub struct Balancer<C> {
    endpoints: Box<[Arc<Endpoint<C>>]>,
    /// The endpoints a weft sidecar serves ([`crate::routes::ServiceSpec::meshed`]),
    /// with the SPIFFE ID its certificate names where discovery gives one.
    meshed: Box<[(IpAddr, Option<Arc<str>>)]>,
    next: AtomicUsize,
    pub policy: Policy,
    pub budget: RetryBudget,
    ejections: Ejections,
    /// Whether the route's servers were last seen to speak first.
    server_first: AtomicBool,
    /// Every endpoint is a sidecar discovery names an identity for (asked per
    /// connection, for its `tls` label: worked out once).
    all_identified: bool,
}

/// Where a route's ejections are counted: `weft_endpoint_ejections_total`, labelled
/// with the route's service. Empty in unit tests.
#[derive(Clone, Debug, Default)]
pub struct Ejections(Option<(Counter<u64>, KeyValue)>);

impl Ejections {
    /// Counts into `counter` under `destination_service = service`.
    pub fn new(counter: Counter<u64>, service: Arc<str>) -> Self {
        Ejections(Some((
            counter,
            KeyValue::new("destination_service", service),
        )))
    }

    fn count(&self, reason: &'static str) {
        if let Some((counter, service)) = &self.0 {
            counter.add(1, &[service.clone(), KeyValue::new("reason", reason)]);
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A per-thread xorshift64*: P2C needs cheap, not cryptographic, randomness.
fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            x = (since_epoch().as_nanos() as u64) | 1;
            x ^= (r as *const Cell<u64> as u64).rotate_left(32);
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl<C> Balancer<C> {
    pub fn new(
        endpoints: Box<[Arc<Endpoint<C>>]>,
        meshed: Box<[(IpAddr, Option<Arc<str>>)]>,
        policy: Policy,
        ejections: Ejections,
    ) -> Self {
        let all_identified = meshed.len() == endpoints.len()
            && !meshed.is_empty()
            && meshed.iter().all(|(_, id)| id.is_some());
        Balancer {
            endpoints,
            meshed,
            all_identified,
            next: AtomicUsize::new(0),
            budget: RetryBudget::new(policy.retries.budget_percent, policy.retries.min_per_second),
            policy,
            ejections,
            server_first: AtomicBool::new(false),
        }
    }

    /// Whether the route's last connection whose client was silent at first had a
    /// server that spoke first (a banner), so that the next silent client's
    /// upstream is worth dialling early ([`crate::detect::SPECULATE_AFTER_KNOWN`]).
    /// Kept for the route's life: a new version of the route learns again.
    pub fn server_first(&self) -> bool {
        self.server_first.load(Ordering::Relaxed)
    }

    /// Records what detection saw of a silent client's connection: the server
    /// spoke first, or the client went on to speak HTTP.
    pub fn note_server_first(&self, server_first: bool) {
        // Read first: a port whose answer does not change is not written per
        // connection (the line is shared by every connection's pick).
        if self.server_first() != server_first {
            self.server_first.store(server_first, Ordering::Relaxed);
        }
    }

    /// Whether a weft sidecar serves any of the route's endpoints.
    pub fn any_meshed(&self) -> bool {
        !self.meshed.is_empty()
    }

    /// Whether every endpoint is a sidecar discovery names an identity for: all
    /// are dialled under mutual TLS (while this proxy holds a certificate).
    pub fn all_identified(&self) -> bool {
        self.all_identified
    }

    /// Whether a weft sidecar serves `endpoint`, so that its own error answers can be
    /// trusted. Consulted on failures only.
    pub fn is_meshed(&self, endpoint: &Endpoint<C>) -> bool {
        let ip = endpoint.addr().0.ip();
        self.meshed.iter().any(|(m, _)| *m == ip)
    }

    /// The SPIFFE ID `endpoint`'s sidecar holds a certificate for, which mutual
    /// TLS demands of it (`None`: not meshed, or no identity known).
    pub fn identity(&self, endpoint: &Endpoint<C>) -> Option<&Arc<str>> {
        let ip = endpoint.addr().0.ip();
        self.meshed
            .iter()
            .find(|(m, _)| *m == ip)
            .and_then(|(_, id)| id.as_ref())
    }

    /// The endpoint for the next attempt; `avoid` (the one that just failed) is
    /// taken only when nothing else can be. Errors: no endpoints, or all ejected.
    pub fn pick(&self, avoid: Option<&Arc<Endpoint<C>>>) -> Result<Pick<'_, C>, ErrorReason> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(ErrorReason::NoEndpoints);
        }
        let now = now_ms();
        if self.policy.lb == Lb::P2cEwma && n > 1 {
            if let Some(p) = self.pick_p2c(now, avoid) {
                return Ok(p);
            }
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let endpoint = &self.endpoints[(start + k) % n];
            if avoid.is_some_and(|a| Arc::ptr_eq(a, endpoint)) {
                fallback = Some(endpoint);
                continue;
            }
            if let Some(p) = self.admit(endpoint, now) {
                return Ok(p);
            }
        }
        fallback
            .and_then(|endpoint| self.admit(endpoint, now))
            .ok_or(ErrorReason::AllEjected)
    }

    fn admit<'a>(&self, endpoint: &'a Arc<Endpoint<C>>, now: u64) -> Option<Pick<'a, C>> {
        match endpoint.health.admit(now) {
            Admit::Yes => Some(Pick {
                endpoint,
                probe: false,
            }),
            Admit::No => None,
            Admit::ProbeDue(seen) => endpoint
                .health
                .claim_probe(seen, now, self.policy.timeout)
                .then_some(Pick {
                    endpoint,
                    probe: true,
                }),
        }
    }

    /// Two distinct endpoints at random; the cheaper one that is in service (or a
    /// probe that is due). `None`: neither can take it (the caller scans).
    fn pick_p2c(&self, now: u64, avoid: Option<&Arc<Endpoint<C>>>) -> Option<Pick<'_, C>> {
        let n = self.endpoints.len() as u64;
        let r = random();
        let a = (r % n) as usize;
        let b = ((a as u64 + 1 + (r >> 32) % (n - 1)) % n) as usize;
        let ok = |i: usize| {
            let endpoint = &self.endpoints[i];
            !avoid.is_some_and(|x| Arc::ptr_eq(x, endpoint))
        };
        let (pa, pb) = (&self.endpoints[a], &self.endpoints[b]);
        let now_ns = since_epoch().as_nanos() as u64;
        let mut order = [(a, pa), (b, pb)];
        if pb.health.cost(now_ns) < pa.health.cost(now_ns) {
            order.swap(0, 1);
        }
        order
            .into_iter()
            .filter(|(i, _)| ok(*i))
            .find_map(|(_, endpoint)| self.admit(endpoint, now))
    }

    /// The outcome of an attempt on `endpoint`: `ok` (a response that is not 5xx) or
    /// not (connect failure, reset, timeout, 5xx), after `latency`.
    pub fn observe(&self, endpoint: &Endpoint<C>, probe: bool, ok: bool, latency: Duration) {
        let h = &endpoint.health;
        if self.policy.lb == Lb::P2cEwma {
            h.observe_latency(latency, since_epoch().as_nanos() as u64);
        }
        if ok {
            if h.consecutive_failures.load(Ordering::Relaxed) != 0 {
                h.consecutive_failures.store(0, Ordering::Relaxed);
            }
            if probe || h.is_out() {
                h.ejected_until.store(0, Ordering::Release);
                h.ejections.store(0, Ordering::Relaxed);
                tracing::info!(endpoint = %endpoint.addr(), "endpoint back in service");
            }
            return;
        }
        let bp = &self.policy.circuit_breaker;
        let failures = h.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if probe {
            self.eject(endpoint, "failures");
        } else if failures >= bp.consecutive_failures && !h.is_out() {
            let n = self.endpoints.len() as u64;
            let out = self.endpoints.iter().filter(|p| p.health.is_out()).count() as u64;
            if (out + 1) * 100 <= u64::from(bp.max_ejection_percent) * n {
                self.eject(endpoint, "failures");
            }
        }
    }

    /// An attempt on `endpoint` found nothing listening: its connect was refused, or
    /// its sidecar answered that the application is unreachable. The endpoint is
    /// ejected at once when another one is in service (whatever
    /// `max_ejection_percent` says: a dead endpoint is worth nothing in rotation);
    /// with none other in service it counts as an ordinary failure.
    pub fn observe_unreachable(&self, endpoint: &Endpoint<C>, probe: bool, latency: Duration) {
        let h = &endpoint.health;
        let others_in_service = self
            .endpoints
            .iter()
            .any(|p| !std::ptr::eq(&**p, endpoint) && !p.health.is_out());
        if probe || !others_in_service || h.is_out() {
            self.observe(endpoint, probe, false, latency);
            return;
        }
        if self.policy.lb == Lb::P2cEwma {
            h.observe_latency(latency, since_epoch().as_nanos() as u64);
        }
        self.eject(endpoint, "unreachable");
    }

    fn eject(&self, endpoint: &Endpoint<C>, reason: &'static str) {
        self.ejections.count(reason);
        let h = &endpoint.health;
        let bp = &self.policy.circuit_breaker;
        let k = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let d = bp.base_ejection.saturating_mul(k).min(bp.max_ejection);
        h.consecutive_failures.store(0, Ordering::Relaxed);
        h.ejected_until.store(
            now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2),
            Ordering::Release,
        );
        tracing::info!(endpoint = %endpoint.addr(), ejection = k, duration = %humantime::format_duration(d), "endpoint ejected");
    }

    /// An attempt starts on `endpoint` (P2C counts requests in flight).
    pub fn start(&self, endpoint: &Endpoint<C>) {
        if self.policy.lb == Lb::P2cEwma {
            endpoint.health.pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An attempt started with [`Balancer::start`] ended.
    pub fn end(&self, endpoint: &Endpoint<C>) {
        if self.policy.lb == Lb::P2cEwma {
            endpoint.health.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The route's endpoints.
    pub fn endpoints(&self) -> &[Arc<Endpoint<C>>] {
        &self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OrigDstAddr;
    use crate::routes::ServiceRoute;
    use crate::routes::{test_spec, Resolved, RouteTable, ServiceSpec};
    use std::collections::HashMap;

    fn route(table: &RouteTable) -> Arc<ServiceRoute> {
        match table.resolve(OrigDstAddr("10.96.0.1:80".parse().expect("addr"))) {
            Resolved::Service(r) => r,
            Resolved::Passthrough => panic!("no route"),
        }
    }

    fn table_with(endpoints: &[&str], policy: Policy) -> RouteTable {
        RouteTable::from_services([ServiceSpec {
            policy,
            ..test_spec("b", "10.96.0.1", endpoints)
        }])
    }

    fn table(endpoints: &[&str]) -> RouteTable {
        table_with(endpoints, Policy::default())
    }

    fn name(p: &Pick<'_, ()>) -> String {
        p.endpoint.addr().to_string()
    }

    #[test]
    fn round_robin_per_pick_and_pools_shared_across_versions() {
        let reg = Registry::<()>::default();
        let t1 = table(&["10.0.0.1", "10.0.0.2"]);
        let b1 = reg.balancer(&route(&t1));
        assert!(Arc::ptr_eq(&b1, &reg.balancer(&route(&t1))));
        let picks: Vec<String> = (0..4)
            .map(|_| name(&b1.pick(None).expect("endpoint")))
            .collect();
        assert_eq!(
            picks,
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.1:8080",
                "10.0.0.2:8080"
            ]
        );
        let t2 = table(&["10.0.0.2", "10.0.0.3"]);
        let b2 = reg.balancer(&route(&t2));
        assert!(!Arc::ptr_eq(&b1, &b2));
        let kept = b1.endpoints[1].clone();
        assert!(
            Arc::ptr_eq(&kept, &b2.endpoints[0]),
            "10.0.0.2's pool is shared"
        );
        assert_eq!(
            reg.balancer(&route(&table(&[]))).pick(None).err(),
            Some(ErrorReason::NoEndpoints)
        );
    }

    fn breaker_policy(failures: u32, base_ms: u64, max_percent: u32) -> Policy {
        let mut p = Policy::default();
        p.circuit_breaker.consecutive_failures = failures;
        p.circuit_breaker.base_ejection = Duration::from_millis(base_ms);
        p.circuit_breaker.max_ejection_percent = max_percent;
        p.timeout = Duration::from_millis(200);
        p
    }

    #[test]
    fn consecutive_failures_eject_then_one_probe_brings_it_back() {
        let reg = Registry::<()>::default();
        let t = table_with(&["10.0.0.1", "10.0.0.2"], breaker_policy(3, 100, 50));
        let b = reg.balancer(&route(&t));
        let bad = b.endpoints[0].clone();
        let ms = Duration::from_millis(1);
        // A success in between resets the count.
        for ok in [false, false, true, false, false] {
            b.observe(&bad, false, ok, ms);
        }
        assert!(!bad.health.ejected());
        b.observe(&bad, false, false, ms);
        assert!(bad.health.ejected());
        // Ejected: every pick goes to the other one.
        for _ in 0..6 {
            assert_eq!(name(&b.pick(None).expect("pick")), "10.0.0.2:8080");
        }
        // The other cannot be ejected too (50 %): its failures only count.
        let good = b.endpoints[1].clone();
        for _ in 0..5 {
            b.observe(&good, false, false, ms);
        }
        assert!(!good.health.ejected());
        b.observe(&good, false, true, ms);
        std::thread::sleep(Duration::from_millis(120));
        // The ejection is over: exactly one probe goes to it.
        let picks: Vec<(String, bool)> = (0..4)
            .map(|_| {
                let p = b.pick(None).expect("pick");
                (name(&p), p.probe)
            })
            .collect();
        let probes: Vec<_> = picks.iter().filter(|(_, probe)| *probe).collect();
        assert_eq!(probes.len(), 1, "{picks:?}");
        assert_eq!(probes[0].0, "10.0.0.1:8080");
        // The probe fails: out again, for twice as long.
        b.observe(&bad, true, false, ms);
        assert!(bad.health.ejected());
        std::thread::sleep(Duration::from_millis(120));
        assert!(bad.health.ejected(), "second ejection is 200 ms");
        std::thread::sleep(Duration::from_millis(100));
        let probe = (0..2)
            .map(|_| b.pick(None).expect("pick"))
            .find(|p| p.probe)
            .expect("a probe");
        assert_eq!(name(&probe), "10.0.0.1:8080");
        b.observe(&bad, true, true, ms);
        assert!(!bad.health.ejected());
        assert_eq!(bad.health.ejections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn all_ejected_fails_fast() {
        let reg = Registry::<()>::default();
        let t = table_with(&["10.0.0.1", "10.0.0.2"], breaker_policy(1, 10_000, 100));
        let b = reg.balancer(&route(&t));
        for p in b.endpoints.iter() {
            b.observe(p, false, false, Duration::from_millis(1));
        }
        assert_eq!(b.pick(None).err(), Some(ErrorReason::AllEjected));
    }

    #[test]
    fn avoid_skips_the_failed_endpoint_unless_alone() {
        let reg = Registry::<()>::default();
        let t = table(&["10.0.0.1", "10.0.0.2"]);
        let b = reg.balancer(&route(&t));
        let first = b.endpoints[0].clone();
        for _ in 0..4 {
            assert_eq!(name(&b.pick(Some(&first)).expect("pick")), "10.0.0.2:8080");
        }
        let t1 = table(&["10.0.0.1"]);
        let b1 = reg.balancer(&route(&t1));
        let only = b1.endpoints[0].clone();
        assert_eq!(name(&b1.pick(Some(&only)).expect("pick")), "10.0.0.1:8080");
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let reg = Registry::<()>::default();
        let p = Policy {
            lb: Lb::P2cEwma,
            ..Policy::default()
        };
        let t = table_with(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], p);
        let b = reg.balancer(&route(&t));
        let slow = b.endpoints[0].clone();
        b.observe(&slow, false, true, Duration::from_millis(50));
        for fast in &b.endpoints[1..] {
            b.observe(fast, false, true, Duration::from_micros(500));
        }
        let mut counts = HashMap::<String, u32>::new();
        for _ in 0..300 {
            *counts
                .entry(name(&b.pick(None).expect("pick")))
                .or_default() += 1;
        }
        // The slow one never wins a draw (the two drawn are distinct); each fast one
        // wins its draws against it (the older sample has decayed a hair more, so
        // between the two fast ones the first is cheaper).
        assert_eq!(counts.get("10.0.0.1:8080"), None, "{counts:?}");
        assert!(counts.values().all(|c| *c > 50), "{counts:?}");
        // Requests in flight raise the cost: a busy fast endpoint loses to a free one.
        let busy = &b.endpoints[1];
        for _ in 0..200 {
            b.start(busy);
        }
        let picks: Vec<String> = (0..50)
            .map(|_| name(&b.pick(None).expect("pick")))
            .collect();
        assert!(picks.iter().all(|p| p != "10.0.0.2:8080"), "{picks:?}");
    }

    #[test]
    fn unreachable_endpoints_leave_at_once_while_another_serves() {
        // At most a third ejected, and 5 failures needed: neither holds a dead one.
        let reg = Registry::<()>::default();
        let t = table_with(
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            breaker_policy(5, 10_000, 34),
        );
        let b = reg.balancer(&route(&t));
        let [e1, e2, e3] = [0, 1, 2].map(|i| b.endpoints[i].clone());
        let ms = Duration::from_millis(1);
        b.observe_unreachable(&e1, false, ms);
        assert!(e1.health.ejected(), "out on the first refusal");
        b.observe_unreachable(&e2, false, ms);
        assert!(
            e2.health.ejected(),
            "past max_ejection_percent: 10.0.0.3 serves"
        );
        b.observe_unreachable(&e3, false, ms);
        assert!(
            !e3.health.ejected(),
            "the last one in service stays (an ordinary failure)"
        );
        assert_eq!(name(&b.pick(None).expect("pick")), "10.0.0.3:8080");
    }

    #[test]
    fn a_followed_balancer_tracks_the_routing_table() {
        let routes = Arc::new(crate::routes::Routes::default());
        let reg = Arc::new(Registry::<()>::default());
        let orig_dst = OrigDstAddr("10.96.0.1:80".parse().expect("addr"));
        routes.store(table(&["10.0.0.1"]));
        let generation = routes.generation();
        let first = reg.balancer(&route(&routes.load()));
        let follow = Follow::new(
            routes.clone(),
            reg.clone(),
            orig_dst,
            generation,
            first.clone(),
        );
        let now = follow.balancer().expect("a service");
        assert!(Arc::ptr_eq(&now, &first), "unchanged table: same balancer");
        routes.store(table(&["10.0.0.2", "10.0.0.3"]));
        let now = follow.balancer().expect("a service");
        assert_eq!(
            now.endpoints()
                .iter()
                .map(|e| e.addr().to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.2:8080", "10.0.0.3:8080"],
            "the endpoints discovery says now"
        );
        routes.store(RouteTable::default());
        assert!(follow.balancer().is_none(), "the service is gone");
    }
}
