//! A service's L7 policy as the proxy applies it: timeouts, retries and their
//! budget, the circuit breaker, the load-balancing algorithm — every field resolved
//! (the defaults below fill whatever the mesh file left unset), so the request path
//! reads plain values.
//!
//! Defaults (ARCHITECTURE.md, Data-plane defaults; chosen to match what an operator
//! of Linkerd or Istio expects): request timeout 15 s (or `--request-timeout`), connect timeout 5 s (or
//! `--connect-timeout`), idle timeout 300 s; 2 retries on connect failure, reset and
//! 503, within 20 % of the requests + 10/s; an endpoint ejected after 5 consecutive
//! failures for 10 s × the number of its ejections, at most 300 s, with at most 50 %
//! of a service's endpoints ejected at once; round robin.

use std::time::Duration;

use serde::Serialize;
use weft_api::discovery as api;

/// Which load-balancing algorithm a service uses (for its opaque TCP connections and
/// its HTTP requests alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lb {
    #[default]
    RoundRobin,
    /// Power of two choices over peak-EWMA latency × in-flight requests.
    P2cEwma,
}

/// What a retry is allowed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// The connection could not be made (the request was never sent: any method).
    pub connect_failure: bool,
    /// The connection failed under the request (idempotent methods only).
    pub reset: bool,
    /// Bit `n` set: retry a response with status `500 + n` (idempotent only).
    pub statuses: u128,
}

impl RetryOn {
    /// Whether a response status is retried.
    pub fn status(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.statuses & (1u128 << (status - 500)) != 0
    }

    fn add(&mut self, word: &str) -> Result<(), String> {
        match word {
            "connect-failure" => self.connect_failure = true,
            "reset" => self.reset = true,
            "gateway-error" => {
                for s in [502, 503, 504] {
                    self.statuses |= 1 << (s - 500);
                }
            }
            other => match other.parse::<u16>() {
                Ok(s @ 500..=599) => self.statuses |= 1 << (s - 500),
                _ => return Err(format!("unknown retry condition {other:?}")),
            },
        }
        Ok(())
    }
}

/// `retries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub budget_percent: u32,
    pub min_per_second: u32,
    pub on: RetryOn,
}

/// `circuit_breaker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerPolicy {
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde_compat")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// One service's policy, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Opaque TCP's idle timeout: the policy's `idle_timeout` when it sets one,
    /// else [`TCP_IDLE_TIMEOUT`].
    #[serde(with = "humantime_serde_compat")]
    pub tcp_idle_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub half_close_timeout: Duration,
    pub retries: RetryPolicy,
    pub circuit_breaker: BreakerPolicy,
    pub lb: Lb,
}

/// The defaults that depend on the proxy's flags.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub half_close_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeout: REQUEST_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            tcp_idle_timeout: TCP_IDLE_TIMEOUT,
            half_close_timeout: HALF_CLOSE_TIMEOUT,
        }
    }
}

/// Default upper bound on a request, from its arrival to the response head
/// (connecting and retries included), when no policy sets it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Opaque TCP's idle timeout when no policy sets one: long, as Envoy's tcp_proxy
/// (1 h), since pooled database connections idle for minutes.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Opaque TCP: how long a half-closed connection may carry no byte.
pub const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const RETRY_ATTEMPTS: u32 = 2;
pub const RETRY_BUDGET_PERCENT: u32 = 20;
pub const RETRY_MIN_PER_SECOND: u32 = 10;
pub const CONSECUTIVE_FAILURES: u32 = 5;
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
pub const MAX_EJECTION_PERCENT: u32 = 50;
/// The most retries a request gets, whatever the wire says.
const MAX_RETRIES: u32 = 10;

impl Default for RetryOn {
    fn default() -> Self {
        let mut on = RetryOn {
            connect_failure: true,
            reset: true,
            statuses: 0,
        };
        on.statuses |= 1 << 3; // 503
        on
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::defaults(Defaults::default())
    }
}

impl Policy {
    /// Every default (no policy written).
    pub fn defaults(d: Defaults) -> Self {
        Policy {
            timeout: d.timeout,
            connect_timeout: d.connect_timeout,
            idle_timeout: IDLE_TIMEOUT,
            tcp_idle_timeout: d.tcp_idle_timeout,
            half_close_timeout: d.half_close_timeout,
            retries: RetryPolicy {
                attempts: RETRY_ATTEMPTS,
                budget_percent: RETRY_BUDGET_PERCENT,
                min_per_second: RETRY_MIN_PER_SECOND,
                on: RetryOn::default(),
            },
            circuit_breaker: BreakerPolicy {
                consecutive_failures: CONSECUTIVE_FAILURES,
                base_ejection: BASE_EJECTION,
                max_ejection: MAX_EJECTION,
                max_ejection_percent: MAX_EJECTION_PERCENT,
            },
            lb: Lb::RoundRobin,
        }
    }

    /// The policy of a discovery `Policy` message, defaults filling what it leaves
    /// unset; values out of range are clamped (the controller validated them, but a
    /// proxy never trusts the wire blindly) and unknown retry conditions ignored.
    pub fn from_proto(p: Option<&api::Policy>, d: Defaults) -> Self {
        let mut out = Policy::defaults(d);
        let Some(p) = p else { return out };
        let dur = |ms: Option<u64>, default: Duration| {
            ms.filter(|ms| *ms > 0)
                .map_or(default, Duration::from_millis)
        };
        out.timeout = dur(p.timeout_ms, out.timeout);
        out.connect_timeout = dur(p.connect_timeout_ms, out.connect_timeout);
        out.idle_timeout = dur(p.idle_timeout_ms, out.idle_timeout);
        out.tcp_idle_timeout = dur(p.idle_timeout_ms, out.tcp_idle_timeout);
        out.half_close_timeout = dur(p.half_close_timeout_ms, out.half_close_timeout);
        if let Some(r) = &p.retries {
            let rp = &mut out.retries;
            rp.attempts = r.attempts.unwrap_or(rp.attempts).min(MAX_RETRIES);
            rp.budget_percent = r.budget_percent.unwrap_or(rp.budget_percent).min(100);
            rp.min_per_second = r.min_per_second.unwrap_or(rp.min_per_second);
            if !r.on.is_empty() {
                let mut on = RetryOn {
                    connect_failure: false,
                    reset: false,
                    statuses: 0,
                };
                for word in &r.on {
                    if let Err(why) = on.add(word) {
                        tracing::warn!(why, "ignoring a retry condition from discovery");
                    }
                }
                rp.on = on;
            }
        }
        if let Some(b) = &p.circuit_breaker {
            let bp = &mut out.circuit_breaker;
            bp.consecutive_failures = b
                .consecutive_failures
                .filter(|n| *n > 0)
                .unwrap_or(bp.consecutive_failures);
            bp.base_ejection = dur(b.base_ejection_ms, bp.base_ejection);
            bp.max_ejection =
                dur(b.max_ejection_ms, bp.max_ejection.max(bp.base_ejection)).max(bp.base_ejection);
            bp.max_ejection_percent = b
                .max_ejection_percent
                .unwrap_or(bp.max_ejection_percent)
                .min(100);
        }
        out.lb = match api::LoadBalancer::try_from(p.lb) {
            Ok(api::LoadBalancer::P2cEwma) => Lb::P2cEwma,
            _ => Lb::RoundRobin,
        };
        out
    }
}

/// Serializes durations as humantime strings ("5s") in `/config`.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_defaults() {
        let d = Defaults::default();
        assert_eq!(Policy::from_proto(None, d), Policy::defaults(d));
        let p = Policy::from_proto(Some(&api::Policy::default()), d);
        assert_eq!(p, Policy::defaults(d));
        assert!(p.retries.on.connect_failure && p.retries.on.reset);
        assert!(p.retries.on.status(503) && !p.retries.on.status(502));
    }

    #[test]
    fn written_fields_win_and_are_clamped() {
        let wire = api::Policy {
            timeout_ms: Some(500),
            connect_timeout_ms: Some(0),
            idle_timeout_ms: None,
            half_close_timeout_ms: None,
            retries: Some(api::RetryPolicy {
                attempts: Some(99),
                budget_percent: Some(300),
                min_per_second: Some(3),
                on: vec!["gateway-error".into(), "bogus".into()],
            }),
            circuit_breaker: Some(api::CircuitBreaker {
                consecutive_failures: Some(3),
                base_ejection_ms: Some(2000),
                max_ejection_percent: Some(100),
                max_ejection_ms: Some(1000),
            }),
            lb: api::LoadBalancer::P2cEwma as i32,
        };
        let p = Policy::from_proto(Some(&wire), Defaults::default());
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.connect_timeout, Duration::from_secs(5), "0 is unset");
        assert_eq!(p.retries.attempts, MAX_RETRIES);
        assert_eq!(p.retries.budget_percent, 100);
        let on = p.retries.on;
        assert!(!on.connect_failure && !on.reset);
        assert!(on.status(502) && on.status(503) && on.status(504) && !on.status(500));
        let b = p.circuit_breaker;
        assert_eq!(b.consecutive_failures, 3);
        assert_eq!(b.base_ejection, Duration::from_secs(2));
        assert_eq!(
            b.max_ejection,
            Duration::from_secs(2),
            "never under the base"
        );
        assert_eq!(p.lb, Lb::P2cEwma);
    }
}
