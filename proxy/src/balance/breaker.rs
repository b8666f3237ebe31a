//! One endpoint's health: the circuit breaker's state (consecutive failures,
//! ejections and their backoff, the probe after an ejection) and the peak-EWMA
//! latency estimate P2C reads. Kept per endpoint and shared by every route (and
//! every connection, TCP or HTTP) that reaches it; all atomics, so reading and
//! updating it takes no lock.
//!
//! The breaker's rules (when to eject, for how long, how many at once) are applied by
//! [`super::Balancer::observe`], which knows the route's policy and its endpoints.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time constant of the peak-EWMA decay.
const EWMA_DECAY_NS: f64 = 10e9;
/// The latency an endpoint without samples is assumed to have.
const EWMA_DEFAULT_NS: f64 = 1e6;

/// Milliseconds / nanoseconds since the first call (a monotonic clock that fits in
/// an atomic).
pub(super) fn since_epoch() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

pub(super) fn now_ms() -> u64 {
    // Never 0, which means "not ejected".
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX) + 1
}

/// One endpoint's breaker and latency state.
#[derive(Debug, Default)]
pub struct Health {
    pub(super) consecutive_failures: AtomicU32,
    /// Ejections since it last served well: the backoff multiplier.
    pub(super) ejections: AtomicU32,
    /// `now_ms` until which it is ejected (or, once past, until which a probe
    /// holds it); 0: in service.
    pub(super) ejected_until: AtomicU64,
    /// Peak-EWMA latency in ns (`f64` bits; 0: no sample yet), and when updated.
    ewma_ns: AtomicU64,
    ewma_at_ns: AtomicU64,
    pub(super) pending: AtomicU32,
}

/// Whether an endpoint can take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Yes,
    No,
    /// Its ejection is over: one request may go as a probe.
    ProbeDue(u64),
}

impl Health {
    pub(super) fn admit(&self, now: u64) -> Admit {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => Admit::Yes,
            until if now < until => Admit::No,
            until => Admit::ProbeDue(until),
        }
    }

    /// Claims the probe of an endpoint whose ejection ended (`seen` is the ejection
    /// end read by [`Health::admit`]); `hold` keeps others away while it runs.
    pub(super) fn claim_probe(&self, seen: u64, now: u64, hold: Duration) -> bool {
        let until = now + u64::try_from(hold.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(super) fn is_out(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the endpoint is ejected now (for `/routes` and tests).
    pub fn ejected(&self) -> bool {
        self.admit(now_ms()) != Admit::Yes
    }

    /// Cost for P2C: decayed peak-EWMA latency × (in flight + 1).
    pub(super) fn cost(&self, now_ns: u64) -> f64 {
        let bits = self.ewma_ns.load(Ordering::Relaxed);
        let ewma = if bits == 0 {
            EWMA_DEFAULT_NS
        } else {
            let age = now_ns.saturating_sub(self.ewma_at_ns.load(Ordering::Relaxed)) as f64;
            f64::from_bits(bits) * (-age / EWMA_DECAY_NS).exp()
        };
        ewma * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    pub(super) fn observe_latency(&self, latency: Duration, now_ns: u64) {
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
