//! Per-request load balancing, the circuit breaker and the retry budget, and the
//! registry that finds a route's balancer.
//!
//! A [`Balancer`] belongs to one [`ServiceRoute`] (one VIP:port at one version of its
//! endpoint set and policy) and holds the [`EndpointPool`] of each endpoint. Nothing
//! on the request path takes a lock: a pick is a few atomic loads (and one
//! increment for round robin), an outcome a few atomic stores.
//!
//! - **Round robin** (default): one shared counter.
//! - **P2C over peak-EWMA** (`lb: p2c_ewma`): two endpoints drawn at random (a
//!   per-thread xorshift), the one with the lower cost wins, cost = latency estimate
//!   × (requests in flight + 1). The estimate jumps up to a slower sample at once
//!   (peak) and decays towards newer samples — and towards 0 while unused — with a
//!   10 s time constant, so a slow endpoint is avoided quickly and retried later.
//! - **Circuit breaker** (state in the endpoint's pool, shared by every route
//!   through it): `consecutive_failures` failures in a row (connect failure, reset,
//!   timeout, a 5xx) eject the endpoint for `base_ejection` × the number of its
//!   ejections (at most `max_ejection`), unless that would take more than
//!   `max_ejection_percent` of the route's endpoints out. When the ejection ends,
//!   one request is let through as a probe: success puts the endpoint back (and
//!   resets its backoff), failure ejects it again for longer. With every endpoint
//!   out, requests fail at once with 503 `all_endpoints_ejected`.
//! - **Retry budget** ([`RetryBudget`]): retries ≤ `budget_percent` % of the
//!   requests + `min_per_second`, over a sliding one-second window.
//!
//! The registry is consulted once per connection: balancers are kept while their
//! route is alive, and pools are shared by endpoint address, so a route whose
//! endpoint set changed keeps the warm connections — and breaker state — of the
//! endpoints it kept.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::pool::EndpointPool;
use crate::addr::EndpointAddr;
use crate::metrics::ErrorReason;
use crate::policy::{Lb, Policy};
use crate::routes::ServiceRoute;

/// Inbound pools (one per local application address) kept at most; past this, the
/// ones no connection uses are dropped.
const MAX_INBOUND_POOLS: usize = 1024;
/// Time constant of the peak-EWMA decay.
const EWMA_DECAY_NS: f64 = 10e9;
/// The latency an endpoint without samples is assumed to have.
const EWMA_DEFAULT_NS: f64 = 1e6;

/// Milliseconds / nanoseconds since the first call (a monotonic clock that fits in
/// an atomic).
fn since_epoch() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

fn now_ms() -> u64 {
    // Never 0, which means "not ejected".
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX) + 1
}

/// One endpoint's breaker and latency state, kept in its pool.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Ejections since it last served well: the backoff multiplier.
    ejections: AtomicU32,
    /// `now_ms` until which it is ejected (or, once past, until which a probe
    /// holds it); 0: in service.
    ejected_until: AtomicU64,
    /// Peak-EWMA latency in ns (`f64` bits; 0: no sample yet), and when updated.
    ewma_ns: AtomicU64,
    ewma_at_ns: AtomicU64,
    pending: AtomicU32,
}

/// Whether an endpoint can take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    No,
    /// Its ejection is over: one request may go as a probe.
    ProbeDue(u64),
}

impl Health {
    fn admit(&self, now: u64) -> Admit {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => Admit::Yes,
            until if now < until => Admit::No,
            until => Admit::ProbeDue(until),
        }
    }

    /// Claims the probe of an endpoint whose ejection ended (`seen` is the ejection
    /// end read by [`Health::admit`]); `hold` keeps others away while it runs.
    fn claim_probe(&self, seen: u64, now: u64, hold: Duration) -> bool {
        let until = now + u64::try_from(hold.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn is_out(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the endpoint is ejected now (for `/routes` and tests).
    pub fn ejected(&self) -> bool {
        self.admit(now_ms()) != Admit::Yes
    }

    /// Cost for P2C: decayed peak-EWMA latency × (in flight + 1).
    fn cost(&self, now_ns: u64) -> f64 {
        let bits = self.ewma_ns.load(Ordering::Relaxed);
        let ewma = if bits == 0 {
            EWMA_DEFAULT_NS
        } else {
            let age = now_ns.saturating_sub(self.ewma_at_ns.load(Ordering::Relaxed)) as f64;
            f64::from_bits(bits) * (-age / EWMA_DECAY_NS).exp()
        };
        ewma * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    fn observe_latency(&self, latency: Duration, now_ns: u64) {
        let sample = latency.as_nanos() as f64;
        let bits = self.ewma_ns.load(Ordering::Relaxed);
        let next = if bits == 0 {
            sample
        } else {
            let old = f64::from_bits(bits);
            if sample > old {
                sample
            } else {
                let age = now_ns.saturating_sub(self.ewma_at_ns.load(Ordering::Relaxed)) as f64;
                let w = (-age / EWMA_DECAY_NS).exp();
                old * w + sample * (1.0 - w)
            }
        };
        // Races between two updates lose one sample: an estimate, not a ledger.
        self.ewma_ns
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.ewma_at_ns.store(now_ns, Ordering::Relaxed);
    }
}

/// A one-second sliding window: retries ≤ `percent` % of requests + `min_per_second`.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    /// The second (of `now_ms`) the `cur` counters belong to.
    second: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            second: AtomicU64::new(0),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Moves the window to `now` (ms); returns the weight of the previous second.
    fn roll(&self, now: u64) -> f64 {
        let sec = now / 1000;
        let seen = self.second.load(Ordering::Acquire);
        if sec != seen
            && self
                .second
                .compare_exchange(seen, sec, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let (r, t) = if sec == seen + 1 {
                (
                    self.requests[0].swap(0, Ordering::AcqRel),
                    self.retries[0].swap(0, Ordering::AcqRel),
                )
            } else {
                self.requests[0].store(0, Ordering::Release);
                self.retries[0].store(0, Ordering::Release);
                (0, 0)
            };
            self.requests[1].store(r, Ordering::Release);
            self.retries[1].store(t, Ordering::Release);
        }
        1.0 - (now % 1000) as f64 / 1000.0
    }

    /// A request arrived (retries are not requests).
    pub fn deposit(&self) {
        self.roll(now_ms());
        self.requests[0].fetch_add(1, Ordering::Relaxed);
    }

    fn allowed_and_used(&self) -> (f64, f64) {
        let w = self.roll(now_ms());
        let req = self.requests[0].load(Ordering::Relaxed) as f64
            + w * self.requests[1].load(Ordering::Relaxed) as f64;
        let used = self.retries[0].load(Ordering::Relaxed) as f64
            + w * self.retries[1].load(Ordering::Relaxed) as f64;
        let allowed = f64::from(self.min_per_second) + req * f64::from(self.percent) / 100.0;
        (allowed, used)
    }

    /// Whether a retry would fit now (nothing taken).
    pub fn has_room(&self) -> bool {
        let (allowed, used) = self.allowed_and_used();
        used + 1.0 <= allowed
    }

    /// Takes one retry from the budget, if it has room.
    pub fn withdraw(&self) -> bool {
        let (allowed, used) = self.allowed_and_used();
        if used + 1.0 > allowed {
            return false;
        }
        self.retries[0].fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// An endpoint chosen for one attempt.
#[derive(Debug)]
pub struct Pick<'a> {
    pub pool: &'a Arc<EndpointPool>,
    /// The attempt is the probe after an ejection.
    pub probe: bool,
}

/// Per-request balancing over one route's endpoints, with its policy.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Box<[Arc<EndpointPool>]>,
    next: AtomicUsize,
    pub policy: Policy,
    pub budget: RetryBudget,
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

impl Balancer {
    pub fn new(endpoints: Box<[Arc<EndpointPool>]>, policy: Policy) -> Self {
        Balancer {
            endpoints,
            next: AtomicUsize::new(0),
            budget: RetryBudget::new(policy.retries.budget_percent, policy.retries.min_per_second),
            policy,
        }
    }

    /// The endpoint for the next attempt; `avoid` (the one that just failed) is
    /// taken only when nothing else can be. Errors: no endpoints, or all ejected.
    pub fn pick(&self, avoid: Option<&Arc<EndpointPool>>) -> Result<Pick<'_>, ErrorReason> {
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
            let pool = &self.endpoints[(start + k) % n];
            if avoid.is_some_and(|a| Arc::ptr_eq(a, pool)) {
                fallback = Some(pool);
                continue;
            }
            if let Some(p) = self.admit(pool, now) {
                return Ok(p);
            }
        }
        fallback
            .and_then(|pool| self.admit(pool, now))
            .ok_or(ErrorReason::AllEjected)
    }

    fn admit<'a>(&self, pool: &'a Arc<EndpointPool>, now: u64) -> Option<Pick<'a>> {
        match pool.health.admit(now) {
            Admit::Yes => Some(Pick { pool, probe: false }),
            Admit::No => None,
            Admit::ProbeDue(seen) => pool
                .health
                .claim_probe(seen, now, self.policy.timeout)
                .then_some(Pick { pool, probe: true }),
        }
    }

    /// Two distinct endpoints at random; the cheaper one that is in service (or a
    /// probe that is due). `None`: neither can take it (the caller scans).
    fn pick_p2c(&self, now: u64, avoid: Option<&Arc<EndpointPool>>) -> Option<Pick<'_>> {
        let n = self.endpoints.len() as u64;
        let r = random();
        let a = (r % n) as usize;
        let b = ((a as u64 + 1 + (r >> 32) % (n - 1)) % n) as usize;
        let ok = |i: usize| {
            let pool = &self.endpoints[i];
            !avoid.is_some_and(|x| Arc::ptr_eq(x, pool))
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
            .find_map(|(_, pool)| self.admit(pool, now))
    }

    /// The outcome of an attempt on `pool`: `ok` (a response that is not 5xx) or
    /// not (connect failure, reset, timeout, 5xx), after `latency`.
    pub fn observe(&self, pool: &EndpointPool, probe: bool, ok: bool, latency: Duration) {
        let h = &pool.health;
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
                tracing::info!(endpoint = %pool.addr(), "endpoint back in service");
            }
            return;
        }
        let bp = &self.policy.circuit_breaker;
        let failures = h.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if probe {
            self.eject(pool);
        } else if failures >= bp.consecutive_failures && !h.is_out() {
            let n = self.endpoints.len() as u64;
            let out = self.endpoints.iter().filter(|p| p.health.is_out()).count() as u64;
            if (out + 1) * 100 <= u64::from(bp.max_ejection_percent) * n {
                self.eject(pool);
            }
        }
    }

    fn eject(&self, pool: &EndpointPool) {
        let h = &pool.health;
        let bp = &self.policy.circuit_breaker;
        let k = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let d = bp.base_ejection.saturating_mul(k).min(bp.max_ejection);
        h.consecutive_failures.store(0, Ordering::Relaxed);
        h.ejected_until.store(
            now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2),
            Ordering::Release,
        );
        tracing::info!(endpoint = %pool.addr(), ejection = k, duration = %humantime::format_duration(d), "endpoint ejected");
    }

    /// An attempt starts on `pool` (P2C counts requests in flight).
    pub fn start(&self, pool: &EndpointPool) {
        if self.policy.lb == Lb::P2cEwma {
            pool.health.pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An attempt started with [`Balancer::start`] ended.
    pub fn end(&self, pool: &EndpointPool) {
        if self.policy.lb == Lb::P2cEwma {
            pool.health.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The route's endpoints.
    pub fn endpoints(&self) -> &[Arc<EndpointPool>] {
        &self.endpoints
    }
}

/// A balancer and (weakly) the route it belongs to.
type RouteBalancer = (Weak<ServiceRoute>, Arc<Balancer>);

/// Balancers by route, pools by endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    /// Keyed by the route's address; the `Weak` tells whether that route still lives
    /// (a live allocation cannot share its address with another).
    balancers: Mutex<HashMap<usize, RouteBalancer>>,
    pools: Mutex<HashMap<EndpointAddr, Weak<EndpointPool>>>,
    inbound: Mutex<HashMap<EndpointAddr, Arc<EndpointPool>>>,
}

impl Registry {
    /// The balancer of `route`, made on first use.
    pub fn balancer(&self, route: &Arc<ServiceRoute>) -> Arc<Balancer> {
        let key = Arc::as_ptr(route) as usize;
        let mut balancers = lock(&self.balancers);
        if let Some((alive, b)) = balancers.get(&key) {
            if alive.strong_count() > 0 {
                return b.clone();
            }
        }
        // A new route (or a new version of one): forget balancers of routes gone.
        balancers.retain(|_, (alive, _)| alive.strong_count() > 0);
        let endpoints = {
            let mut pools = lock(&self.pools);
            pools.retain(|_, p| p.strong_count() > 0);
            route
                .endpoints()
                .map(|addr| shared_pool(&mut pools, addr))
                .collect()
        };
        let b = Arc::new(Balancer::new(endpoints, route.policy));
        balancers.insert(key, (Arc::downgrade(route), b.clone()));
        b
    }

    /// The pool of a local application address (inbound traffic).
    pub fn inbound(&self, addr: EndpointAddr) -> Arc<EndpointPool> {
        let mut inbound = lock(&self.inbound);
        if let Some(p) = inbound.get(&addr) {
            return p.clone();
        }
        if inbound.len() >= MAX_INBOUND_POOLS {
            inbound.retain(|_, p| Arc::strong_count(p) > 1);
        }
        let p = Arc::new(EndpointPool::new(addr));
        inbound.insert(addr, p.clone());
        p
    }
}

fn shared_pool(
    pools: &mut HashMap<EndpointAddr, Weak<EndpointPool>>,
    addr: EndpointAddr,
) -> Arc<EndpointPool> {
    if let Some(p) = pools.get(&addr).and_then(Weak::upgrade) {
        return p;
    }
    let p = Arc::new(EndpointPool::new(addr));
    pools.insert(addr, Arc::downgrade(&p));
    p
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OrigDstAddr;
    use crate::routes::{PortProtocol, Resolved, RouteTable, ServicePort, ServiceSpec};

    fn route(table: &RouteTable) -> Arc<ServiceRoute> {
        match table.resolve(OrigDstAddr("10.96.0.1:80".parse().expect("addr"))) {
            Resolved::Service(r) => r,
            Resolved::Passthrough => panic!("no route"),
        }
    }

    fn table_with(endpoints: &[&str], policy: Policy) -> RouteTable {
        RouteTable::from_services([ServiceSpec {
            name: "b".into(),
            vip: "10.96.0.1".parse().expect("vip"),
            ports: vec![ServicePort {
                port: 80,
                target_port: 8080,
                protocol: PortProtocol::Auto,
            }],
            endpoints: endpoints.iter().map(|e| e.parse().expect("ip")).collect(),
            policy,
        }])
    }

    fn table(endpoints: &[&str]) -> RouteTable {
        table_with(endpoints, Policy::default())
    }

    fn name(p: &Pick<'_>) -> String {
        p.pool.addr().to_string()
    }

    #[test]
    fn round_robin_per_pick_and_pools_shared_across_versions() {
        let reg = Registry::default();
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
        let reg = Registry::default();
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
        let reg = Registry::default();
        let t = table_with(&["10.0.0.1", "10.0.0.2"], breaker_policy(1, 10_000, 100));
        let b = reg.balancer(&route(&t));
        for p in b.endpoints.iter() {
            b.observe(p, false, false, Duration::from_millis(1));
        }
        assert_eq!(b.pick(None).err(), Some(ErrorReason::AllEjected));
    }

    #[test]
    fn avoid_skips_the_failed_endpoint_unless_alone() {
        let reg = Registry::default();
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
        let reg = Registry::default();
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
    fn the_budget_allows_percent_plus_minimum() {
        let budget = RetryBudget::new(20, 5);
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        // 5 + 20 % of 100, give or take the window's weight at a second boundary.
        assert!((20..=25).contains(&granted), "{granted}");
        assert!(!budget.has_room());
        let none = RetryBudget::new(0, 0);
        none.deposit();
        assert!(!none.withdraw());
    }
}
