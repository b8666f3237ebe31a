//! Per-caller limits: a token bucket on writes to the registration API, and a count
//! of each caller's open discovery Watches.
//!
//! A caller is keyed by its identity (token name; ServiceAccount and, for a
//! pod-bound token, pod), never by address: many callers may share one (NAT, the
//! node), and one caller may move. Both tables are bounded: the bucket table forgets
//! callers whose bucket has refilled (they are as if new), and a Watch count leaves
//! the table when it falls to zero.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// Writes per second one caller may make, sustained ...
    pub write_rate: f64,
    /// ... and at once after being quiet.
    pub write_burst: NonZeroU32,
    /// Discovery Watches one caller may hold open at once.
    pub watches_per_caller: NonZeroU32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            write_rate: 10.0,
            write_burst: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            watches_per_caller: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Buckets kept at most before the full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per caller.
#[derive(Debug)]
pub struct WriteRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl WriteRate {
    /// `rate` per second with bursts of `burst`.
    pub fn new(rate: f64, burst: NonZeroU32) -> Self {
        WriteRate {
            rate: rate.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.get()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one write from `caller`'s bucket at `now`; `Err(wait)` when it is empty,
    /// with how long until the next write is allowed.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

fn refilled(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// Each caller's open Watches.
#[derive(Debug, Default)]
pub struct Watches {
    open: Mutex<HashMap<String, u32>>,
}

/// One open Watch; the count goes down when it is dropped.
#[derive(Debug)]
pub struct WatchSlot {
    watches: Arc<Watches>,
    caller: String,
}

impl Watches {
    /// Counts a Watch for `caller` unless it already holds `max`; `Err(n)`: it
    /// holds `n`.
    pub fn open(self: &Arc<Self>, caller: &str, max: NonZeroU32) -> Result<WatchSlot, u32> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(caller.to_owned()).or_insert(0);
        if *n >= max.get() {
            return Err(*n);
        }
        *n += 1;
        Ok(WatchSlot {
            watches: self.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Callers with a Watch open (for tests and status).
    pub fn callers(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = WriteRate::new(10.0, NonZeroU32::new(5).unwrap());
        let t0 = Instant::now();
        for _ in 0..5 {
            limit.take("a", t0).unwrap();
        }
        let wait = limit.take("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another caller has its own bucket.
        limit.take("b", t0).unwrap();
        // 100 ms later, one more.
        let t1 = t0 + Duration::from_millis(100);
        limit.take("a", t1).unwrap();
        assert!(limit.take("a", t1).is_err());
    }

    #[test]
    fn the_bucket_table_stays_bounded() {
        let limit = WriteRate::new(1000.0, NonZeroU32::new(1).unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS + 10 {
            limit
                .take(&i.to_string(), t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(limit.buckets.lock().unwrap().len() < MAX_BUCKETS);
    }

    #[test]
    fn watches_are_counted_per_caller_and_released() {
        let watches = Arc::new(Watches::default());
        let max = NonZeroU32::new(2).unwrap();
        let a1 = watches.open("a", max).unwrap();
        let _a2 = watches.open("a", max).unwrap();
        assert_eq!(watches.open("a", max).unwrap_err(), 2);
        let _b = watches.open("b", max).unwrap();
        drop(a1);
        let _a3 = watches.open("a", max).unwrap();
        drop((_a2, _a3, _b));
        assert_eq!(watches.callers(), 0);
    }
}
