//! The subscribed proxies: for each discovery stream, what it was sent and what the
//! proxy says it applied (its Acks) or rejected, for `/v1/status` (per proxy) and
//! `/metrics` (totals).
//!
//! A proxy counts as subscribed once it has applied a snapshot: before that it has
//! no routes. A `Watch` stream cannot acknowledge; what it is sent counts as applied
//! (`acknowledging: false` says so).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;

/// Who a stream is, as it introduced itself.
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    pub proxy_id: String,
    pub service: String,
    pub peer: Option<SocketAddr>,
    /// The credential it subscribed with (see [`crate::auth::Caller`]).
    pub caller: String,
    /// It answers updates with Acks (`Subscribe`), or not (`Watch`).
    pub acknowledging: bool,
}

#[derive(Debug)]
struct Record {
    info: ProxyInfo,
    connected_at: SystemTime,
    /// The newest version sent.
    sent: Option<u64>,
    /// The newest version applied.
    applied: Option<u64>,
    /// The oldest version sent and not applied yet, and when it was sent.
    pending: Option<(u64, Instant)>,
    /// The last rejection, while no later version has been applied.
    rejected: Option<Rejection>,
}

/// An update a proxy rejected.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub version: u64,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// One proxy in `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyView {
    pub proxy_id: String,
    pub service: String,
    pub address: Option<String>,
    pub caller: String,
    pub acknowledging: bool,
    /// RFC 3339.
    pub connected_at: String,
    pub sent_version: Option<u64>,
    pub applied_version: Option<u64>,
    /// Versions between what it applied and the current one.
    pub lag_versions: u64,
    /// How long the oldest version it has not applied has been sent to it.
    pub lag_ms: Option<u64>,
    pub rejected: Option<Rejection>,
}

/// Totals for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Streams open.
    pub connected: usize,
    /// Proxies that applied a snapshot.
    pub synced: usize,
    /// Synced proxies at the current version.
    pub current: usize,
    /// Proxies whose last answer is a rejection.
    pub rejecting: usize,
    /// The longest an unapplied version has been waiting, in seconds.
    pub max_lag_seconds: f64,
}

/// The proxies' table.
#[derive(Debug, Default)]
pub struct Proxies {
    next_id: AtomicU64,
    table: Mutex<BTreeMap<u64, Record>>,
    acks: AtomicU64,
    nacks: AtomicU64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Proxies {
    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Record>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stream; it leaves the table when the handle is dropped.
    pub fn join(self: &Arc<Self>, info: ProxyInfo) -> ProxyHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.table().insert(
            id,
            Record {
                info,
                connected_at: SystemTime::now(),
                sent: None,
                applied: None,
                pending: None,
                rejected: None,
            },
        );
        ProxyHandle {
            proxies: self.clone(),
            id,
        }
    }

    /// Proxies that applied a snapshot.
    pub fn synced(&self) -> usize {
        self.table()
            .values()
            .filter(|r| r.applied.is_some())
            .count()
    }

    /// Updates applied and rejected since start, by the proxies' Acks.
    pub fn acks(&self) -> (u64, u64) {
        (
            self.acks.load(Ordering::Relaxed),
            self.nacks.load(Ordering::Relaxed),
        )
    }

    /// Totals against the `current` version.
    pub fn totals(&self, current: u64) -> Totals {
        let now = Instant::now();
        let table = self.table();
        let mut t = Totals {
            connected: table.len(),
            ..Totals::default()
        };
        for r in table.values() {
            t.synced += usize::from(r.applied.is_some());
            t.current += usize::from(r.applied == Some(current));
            t.rejecting += usize::from(r.rejected.is_some());
            if let Some((_, since)) = r.pending {
                t.max_lag_seconds = t
                    .max_lag_seconds
                    .max(now.duration_since(since).as_secs_f64());
            }
        }
        t
    }

    /// Every stream, oldest first, against the `current` version.
    pub fn view(&self, current: u64) -> Vec<ProxyView> {
        let now = Instant::now();
        self.table()
            .values()
            .map(|r| ProxyView {
                proxy_id: r.info.proxy_id.clone(),
                service: r.info.service.clone(),
                address: r.info.peer.map(|p| p.ip().to_canonical().to_string()),
                caller: r.info.caller.clone(),
                acknowledging: r.info.acknowledging,
                connected_at: rfc3339(r.connected_at),
                sent_version: r.sent,
                applied_version: r.applied,
                lag_versions: current.saturating_sub(r.applied.unwrap_or(0)),
                lag_ms: r.pending.map(|(_, since)| {
                    u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX)
                }),
                rejected: r.rejected.clone(),
            })
            .collect()
    }
}

/// One stream's entry in the table.
#[derive(Debug)]
pub struct ProxyHandle {
    proxies: Arc<Proxies>,
    id: u64,
}

impl ProxyHandle {
    fn with(&self, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.proxies.table().get_mut(&self.id) {
            f(r);
        }
    }

    /// `version` was sent. (To a stream that does not acknowledge: applied.)
    pub fn sent(&self, version: u64) {
        self.with(|r| {
            r.sent = Some(version);
            if r.info.acknowledging {
                r.pending.get_or_insert((version, Instant::now()));
            } else {
                r.applied = Some(version);
            }
        });
    }

    /// The proxy applied `version` (`error` empty), or rejected it.
    pub fn acked(&self, version: u64, error: &str) {
        let counter = if error.is_empty() {
            &self.proxies.acks
        } else {
            &self.proxies.nacks
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.with(|r| {
            if error.is_empty() {
                r.applied = Some(r.applied.map_or(version, |a| a.max(version)));
                if r.rejected.as_ref().is_some_and(|x| x.version <= version) {
                    r.rejected = None;
                }
            } else {
                r.rejected = Some(Rejection {
                    version,
                    reason: error.to_owned(),
                    at: rfc3339(SystemTime::now()),
                });
            }
            // Answered (either way): the proxy is no longer working on it. A later
            // version sent meanwhile is pending from now.
            match (r.pending, r.sent) {
                (Some((p, _)), Some(sent)) if p <= version && sent > version => {
                    r.pending = Some((sent, Instant::now()))
                }
                (Some((p, _)), _) if p <= version => r.pending = None,
                _ => {}
            }
        });
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.proxies.table().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(acknowledging: bool) -> ProxyInfo {
        ProxyInfo {
            proxy_id: "p".into(),
            service: "s".into(),
            peer: None,
            caller: "token \"p\"".into(),
            acknowledging,
        }
    }

    #[test]
    fn a_proxy_counts_once_it_applied_a_snapshot() {
        let proxies = Arc::new(Proxies::default());
        let p = proxies.join(info(true));
        assert_eq!(proxies.synced(), 0);
        p.sent(3);
        assert_eq!(proxies.synced(), 0, "sent is not applied");
        assert!(proxies.view(3)[0].lag_ms.is_some());
        p.acked(3, "");
        assert_eq!(proxies.synced(), 1);
        let t = proxies.totals(3);
        assert_eq!(
            (t.connected, t.synced, t.current, t.rejecting),
            (1, 1, 1, 0)
        );
        // Rejected: still synced (at 3), shown rejecting, behind.
        p.sent(4);
        p.acked(4, "too many services");
        let v = &proxies.view(4)[0];
        assert_eq!((v.applied_version, v.lag_versions), (Some(3), 1));
        assert_eq!(v.rejected.as_ref().unwrap().reason, "too many services");
        assert_eq!(v.lag_ms, None, "answered");
        // A later version applied clears it.
        p.sent(5);
        p.acked(5, "");
        assert!(proxies.view(5)[0].rejected.is_none());
        assert_eq!(proxies.acks(), (2, 1));
        drop(p);
        assert_eq!(proxies.totals(5).connected, 0);
    }

    #[test]
    fn a_watch_stream_counts_what_it_was_sent() {
        let proxies = Arc::new(Proxies::default());
        let p = proxies.join(info(false));
        p.sent(1);
        assert_eq!(proxies.synced(), 1);
        assert_eq!(proxies.view(1)[0].lag_ms, None);
    }

    #[test]
    fn a_version_sent_while_another_was_pending_is_pending_after_its_ack() {
        let proxies = Arc::new(Proxies::default());
        let p = proxies.join(info(true));
        p.sent(1);
        p.sent(2);
        p.acked(1, "");
        assert_eq!(proxies.view(2)[0].lag_versions, 1);
        assert!(proxies.view(2)[0].lag_ms.is_some());
        p.acked(2, "");
        assert_eq!(proxies.view(2)[0].lag_ms, None);
    }
}
