//! What the ADS streams did, for `/v1/status` (`xds`) and the
//! `weft_controller_xds_*` series (ARCHITECTURE.md, Metrics): streams open,
//! responses pushed, ACKs and NACKs per resource type, and the last NACK's reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::resources::Kind;

/// Counters shared by every ADS stream.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicU64,
    opened: AtomicU64,
    /// Per [`Kind`], in [`Kind::ALL`]'s order.
    pushes: [AtomicU64; 3],
    acks: [AtomicU64; 3],
    nacks: [AtomicU64; 3],
    last_nack: Mutex<Option<NackView>>,
}

/// The last NACK, as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NackView {
    /// The client's `node.id`.
    pub node: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The version it rejected (its last good one stays in force).
    pub version: String,
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Per resource type.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerType {
    pub listener: u64,
    pub cluster: u64,
    pub endpoints: u64,
}

/// `/v1/status`'s `xds`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// ADS streams open now.
    pub streams: u64,
    /// Opened since start.
    pub streams_total: u64,
    pub pushes: PerType,
    pub acks: PerType,
    pub nacks: PerType,
    pub last_nack: Option<NackView>,
}

/// Counts an open stream until dropped.
#[derive(Debug)]
pub struct OpenStream(Arc<Stats>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Listener => 0,
        Kind::Cluster => 1,
        Kind::Endpoints => 2,
    }
}

fn per_type(counters: &[AtomicU64; 3]) -> PerType {
    let get = |k| counters[index(k)].load(Ordering::Relaxed);
    PerType {
        listener: get(Kind::Listener),
        cluster: get(Kind::Cluster),
        endpoints: get(Kind::Endpoints),
    }
}

impl Stats {
    /// A stream opened; it counts as open while the guard lives.
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// A response of `kind` was sent.
    pub fn pushed(&self, kind: Kind) {
        self.pushes[index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A client acknowledged a response of `kind`.
    pub fn acked(&self, kind: Kind) {
        self.acks[index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A client rejected a response of `kind`.
    pub fn nacked(&self, node: &str, kind: Kind, version: &str, reason: &str) {
        self.nacks[index(kind)].fetch_add(1, Ordering::Relaxed);
        *self.last_nack.lock().unwrap_or_else(|e| e.into_inner()) = Some(NackView {
            node: node.to_owned(),
            kind: kind.label(),
            version: version.to_owned(),
            reason: reason.to_owned(),
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        });
    }

    /// Streams open now.
    pub fn streams(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// `(kind, pushes, acks, nacks)` for each kind.
    pub fn counts(&self) -> [(Kind, u64, u64, u64); 3] {
        Kind::ALL.map(|k| {
            let i = index(k);
            let get = |c: &[AtomicU64; 3]| c[i].load(Ordering::Relaxed);
            (k, get(&self.pushes), get(&self.acks), get(&self.nacks))
        })
    }

    /// What `/v1/status` shows.
    pub fn view(&self) -> StatsView {
        StatsView {
            streams: self.streams(),
            streams_total: self.opened.load(Ordering::Relaxed),
            pushes: per_type(&self.pushes),
            acks: per_type(&self.acks),
            nacks: per_type(&self.nacks),
            last_nack: self
                .last_nack
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
