//! The table behind `/connections`: every live connection, plus a bounded history of
//! recently closed ones. Per-connection detail lives here rather than in metric labels,
//! where addresses and ids would explode the series count.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::addr::{ClientAddr, Direction, EndpointAddr, OrigDstAddr};
use crate::error::ConnEnd;

/// Live counters of one connection, updated by the relay (or the HTTP path) as data
/// moves.
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// Bytes read from the application side (the accepted connection).
    pub from_client: AtomicU64,
    /// Bytes written to the application side.
    pub to_client: AtomicU64,
    /// HTTP requests served on the connection (0 for opaque TCP).
    pub requests: AtomicU64,
}

/// What is known about a connection when it is accepted and routed.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub direction: Direction,
    pub client: ClientAddr,
    pub orig_dst: OrigDstAddr,
    /// Shared with the connection's labels: no copy per connection.
    pub service: Arc<str>,
    pub endpoint: Option<EndpointAddr>,
    pub protocol: &'static str,
    /// The hop between sidecars is mutual TLS: the peer sidecar's SPIFFE ID (the
    /// client's inbound, the upstream's for opaque outbound; empty if its
    /// certificate names none). `None`: plaintext, or (outbound HTTP) per request.
    pub tls_peer: Option<Arc<str>>,
}

#[derive(Debug)]
struct LiveConn {
    info: ConnInfo,
    started_wall: SystemTime,
    started: Instant,
    bytes: Arc<ByteCounters>,
}

/// One row of `/connections`.
#[derive(Clone, Debug, Serialize)]
pub struct ConnSnapshot {
    pub id: u64,
    pub state: &'static str,
    pub direction: Direction,
    pub source: ClientAddr,
    pub original_destination: OrigDstAddr,
    pub service: String,
    pub endpoint: Option<EndpointAddr>,
    pub protocol: &'static str,
    /// Whether the hop between sidecars is mutual TLS, and the peer's identity.
    pub tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub requests: u64,
    /// Milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// Live: time since accept. Closed: the connection's whole lifetime.
    pub age_ms: u64,
    /// How a closed connection ended (`eof`, `reset_by_client`, ...); absent while live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// The live table's capacity below which it is never shrunk.
const SHRINK_ABOVE: usize = 1024;

/// A closed connection as the history keeps it: what was known, without a heap
/// allocation of its own. The row's strings are made only when `/connections` is
/// read. A history of strings made at each close put 200 small allocations among
/// a flood's buffers, and each pinned its page after the flood had gone: with it
/// a sidecar kept 2.0 MB more anonymous memory after 11,800 connections, without
/// it 1.1 MB (`floods.rs`).
#[derive(Debug)]
struct ClosedConn {
    id: u64,
    info: ConnInfo,
    start_unix_ms: u64,
    age: Duration,
    bytes_from_client: u64,
    bytes_to_client: u64,
    requests: u64,
    end: ConnEnd,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<u64, LiveConn>,
    /// Room for the whole history from the start, so a close never grows it.
    closed: VecDeque<ClosedConn>,
}

/// Live and recently closed connections of one proxy.
#[derive(Debug)]
pub struct ConnTable {
    next_id: AtomicU64,
    closed_capacity: usize,
    inner: Mutex<Inner>,
}

impl ConnTable {
    /// A table keeping at most `closed_capacity` closed connections.
    pub fn new(closed_capacity: usize) -> Self {
        ConnTable {
            next_id: AtomicU64::new(1),
            closed_capacity,
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                closed: VecDeque::with_capacity(closed_capacity),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (every
        // critical section is a single insert/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new live connection; the returned guard moves it to the closed
    /// history when dropped, with the end recorded by [`ConnGuard::set_end`].
    pub fn open(self: &Arc<Self>, info: ConnInfo) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = Arc::new(ByteCounters::default());
        let live = LiveConn {
            info,
            started_wall: SystemTime::now(),
            started: Instant::now(),
            bytes: bytes.clone(),
        };
        self.lock().live.insert(id, live);
        ConnGuard {
            table: self.clone(),
            id,
            bytes,
            end: None,
        }
    }

    /// Number of live connections.
    pub fn live_count(&self) -> usize {
        self.lock().live.len()
    }

    /// Live connections (oldest first) followed by the closed history (newest first).
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        let inner = self.lock();
        let mut live: Vec<ConnSnapshot> = inner
            .live
            .iter()
            .map(|(id, conn)| live_snapshot(*id, conn))
            .collect();
        live.sort_by_key(|s| s.id);
        live.extend(inner.closed.iter().rev().map(ClosedConn::snapshot));
        live
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ConnInfo)) {
        if let Some(conn) = self.lock().live.get_mut(&id) {
            f(&mut conn.info);
        }
    }

    fn close(&self, id: u64, end: ConnEnd) {
        let mut inner = self.lock();
        if let Some(conn) = inner.live.remove(&id) {
            // A flood leaves the table its high-water capacity, a row's room per
            // connection it ever held at once (about 3 MB after 12,000): given back
            // once it is mostly empty. Each shrink leaves twice the rows there are,
            // so the next one comes only after another fall by four: amortised O(1).
            let capacity = inner.live.capacity();
            if capacity > SHRINK_ABOVE && inner.live.len() < capacity / 8 {
                let keep = inner.live.len() * 2;
                inner.live.shrink_to(keep);
            }
            if self.closed_capacity > 0 {
                if inner.closed.len() == self.closed_capacity {
                    inner.closed.pop_front();
                }
                let closed = ClosedConn {
                    id,
                    start_unix_ms: unix_ms(conn.started_wall),
                    age: conn.started.elapsed(),
                    bytes_from_client: conn.bytes.from_client.load(Ordering::Relaxed),
                    bytes_to_client: conn.bytes.to_client.load(Ordering::Relaxed),
                    requests: conn.bytes.requests.load(Ordering::Relaxed),
                    info: conn.info,
                    end,
                };
                inner.closed.push_back(closed);
            }
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn live_snapshot(id: u64, conn: &LiveConn) -> ConnSnapshot {
    ConnSnapshot {
        id,
        state: "open",
        direction: conn.info.direction,
        source: conn.info.client,
        original_destination: conn.info.orig_dst,
        service: conn.info.service.to_string(),
        endpoint: conn.info.endpoint,
        protocol: conn.info.protocol,
        tls: conn.info.tls_peer.is_some(),
        peer_identity: conn.info.tls_peer.as_deref().map(str::to_owned),
        bytes_from_client: conn.bytes.from_client.load(Ordering::Relaxed),
        bytes_to_client: conn.bytes.to_client.load(Ordering::Relaxed),
        requests: conn.bytes.requests.load(Ordering::Relaxed),
        start_unix_ms: unix_ms(conn.started_wall),
        age_ms: conn.started.elapsed().as_millis() as u64,
        end: None,
    }
}

impl ClosedConn {
    fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            id: self.id,
            state: "closed",
            direction: self.info.direction,
            source: self.info.client,
            original_destination: self.info.orig_dst,
            service: self.info.service.to_string(),
            endpoint: self.info.endpoint,
            protocol: self.info.protocol,
            tls: self.info.tls_peer.is_some(),
            peer_identity: self.info.tls_peer.as_deref().map(str::to_owned),
            bytes_from_client: self.bytes_from_client,
            bytes_to_client: self.bytes_to_client,
            requests: self.requests,
            start_unix_ms: self.start_unix_ms,
            age_ms: self.age.as_millis() as u64,
            end: Some(self.end.to_string()),
        }
    }
}

/// Keeps a connection listed as live; on drop it moves to the closed history.
#[derive(Debug)]
pub struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    bytes: Arc<ByteCounters>,
    end: Option<ConnEnd>,
}

impl ConnGuard {
    /// This connection's id in `/connections`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The live byte counters the relay updates.
    pub fn bytes(&self) -> &Arc<ByteCounters> {
        &self.bytes
    }

    /// Records what protocol detection decided (`tcp`, `http1`, `h2`). Once per
    /// connection, not on the data path.
    pub fn set_protocol(&self, protocol: &'static str) {
        self.table.update(self.id, |info| info.protocol = protocol);
    }

    /// Records that the upstream hop is mutual TLS with the sidecar holding `peer`.
    pub fn set_tls_peer(&self, peer: Arc<str>) {
        self.table
            .update(self.id, |info| info.tls_peer = Some(peer));
    }

    /// Records the endpoint chosen after accept (opaque traffic on a detected port).
    pub fn set_endpoint(&self, endpoint: Option<EndpointAddr>) {
        self.table.update(self.id, |info| info.endpoint = endpoint);
    }

    /// Records how the connection ended; the guard's drop files it.
    pub fn set_end(&mut self, end: ConnEnd) {
        self.end = Some(end);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let end = self.end.take().unwrap_or(ConnEnd::Aborted);
        self.table.close(self.id, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnInfo {
        let a = "10.0.0.1:1234".parse().expect("addr");
        let b = "10.0.0.2:80".parse().expect("addr");
        ConnInfo {
            direction: Direction::Outbound,
            client: ClientAddr(a),
            orig_dst: OrigDstAddr(b),
            service: Arc::from("passthrough"),
            endpoint: Some(EndpointAddr(b)),
            protocol: "tcp",
            tls_peer: None,
        }
    }

    #[test]
    fn closed_history_is_bounded_and_newest_first() {
        let table = Arc::new(ConnTable::new(2));
        for i in 0..3 {
            let mut g = table.open(info());
            g.bytes().from_client.store(i, Ordering::Relaxed);
            g.set_end(ConnEnd::Eof);
        }
        let live = table.open(info());
        let snap = table.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].id, live.id());
        assert_eq!(snap[0].state, "open");
        assert_eq!(snap[1].bytes_from_client, 2);
        assert_eq!(snap[2].bytes_from_client, 1);
        assert_eq!(snap[1].end.as_deref(), Some("eof"));
        assert_eq!(table.live_count(), 1);
    }

    #[test]
    fn a_flood_gives_the_table_room_back_once_gone() {
        let table = Arc::new(ConnTable::new(0));
        let held = table.open(info());
        let flood: Vec<ConnGuard> = (0..12_000).map(|_| table.open(info())).collect();
        assert!(table.lock().live.capacity() >= 12_000);
        drop(flood);
        assert_eq!(table.live_count(), 1);
        let capacity = table.lock().live.capacity();
        assert!(capacity <= 2 * SHRINK_ABOVE, "{capacity}");
        drop(held);
    }
}
