//! The gatherer behind the mesh page: every `interval`, each subscribed proxy's
//! `/metrics` and `/ready` (metrics port) and `/connections` (admin port), read
//! concurrently, each bounded by `timeout`. What it keeps is bounded too: the
//! edges' cumulative totals of the last `window` (one round per interval, a ring),
//! and per pod its latest answers. Rates, success and latency are computed from
//! the ring when the page asks ([`super::view`]).
//!
//! Which proxies: the discovery streams of [`crate::proxies`], by the address
//! each stream comes from — the pod's address (ARCHITECTURE.md, The mesh page).
//!
//! When: only while someone looks. Reading every proxy every 2 s is a steady
//! load on the controller and the proxies that nobody needs while the page is
//! closed, so rounds run while the page's data was asked for within the last
//! `window` (a first ask after a quiet spell starts a round at once), or always
//! with `always` (the local mesh, whose page should show its traffic from the
//! start).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use weft_runtime::prom_text::{self, Sample};

use super::fetch;
use crate::edges::{self, Edge, EdgeTotals};
use crate::state::State;

/// Where and how often the gatherer reads the proxies.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between two rounds (and so the page's resolution).
    pub interval: Duration,
    /// How much history the ring keeps.
    pub window: Duration,
    /// Each GET's deadline (connect, request and body).
    pub timeout: Duration,
    /// The proxies' `/metrics` and `/ready` port (their `--metrics-listen`).
    pub metrics_port: u16,
    /// The proxies' admin port (`/connections`; their `--admin-listen`).
    pub admin_port: u16,
    /// At most this many proxies are read per round (the page is for looking at a
    /// mesh, not for monitoring a fleet: Prometheus is).
    pub max_proxies: usize,
    /// Per pod, at most this many connections are kept (live first).
    pub max_connections: usize,
    /// Gather even while nobody looks at the page.
    pub always: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(2),
            window: Duration::from_secs(600),
            timeout: Duration::from_secs(1),
            metrics_port: 15020,
            admin_port: 15000,
            max_proxies: 200,
            max_connections: 100,
            always: false,
        }
    }
}

impl Settings {
    /// Rounds the ring holds.
    pub fn rounds(&self) -> usize {
        let step = self.interval.as_millis().max(1);
        usize::try_from(self.window.as_millis() / step)
            .unwrap_or(usize::MAX)
            .max(2)
    }
}

/// The edges' totals at one round.
#[derive(Debug, Clone)]
pub struct Round {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub edges: BTreeMap<Edge, EdgeTotals>,
}

/// One pod's sidecar as last read.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    /// The proxy's id (the pod's name in the local mesh and under Kubernetes).
    pub pod: String,
    pub service: String,
    pub address: String,
    /// `/ready` answered 200; `None` when it did not answer at all.
    pub ready: Option<bool>,
    /// `/ready`'s body (why not ready), or why it could not be asked.
    pub ready_detail: String,
    /// `/connections`' list (live first, then recently closed), or why not.
    pub connections: Option<Vec<Value>>,
    pub connections_error: Option<String>,
    /// Why `/metrics` could not be read, if it could not.
    pub metrics_error: Option<String>,
    /// When this was read (ms since the Unix epoch).
    pub read_at_ms: u64,
}

/// A proxy's last good metrics page, counted in the totals while fresh.
#[derive(Debug)]
struct Page {
    samples: Vec<Sample>,
    at: Instant,
}

#[derive(Debug, Default)]
struct Gathered {
    rounds: VecDeque<Round>,
    pods: Vec<PodView>,
    pages: HashMap<IpAddr, Page>,
}

/// Reads the proxies every interval; the page's data source.
#[derive(Debug)]
pub struct Gatherer {
    settings: Settings,
    state: Arc<State>,
    gathered: Mutex<Gathered>,
    /// When the page's data was last asked for.
    viewed: Mutex<Option<Instant>>,
    /// Wakes the loop for a round when the page is opened after a quiet spell.
    opened: tokio::sync::Notify,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Gatherer {
    pub fn new(settings: Settings, state: Arc<State>) -> Self {
        Gatherer {
            settings,
            state,
            gathered: Mutex::default(),
            viewed: Mutex::new(None),
            opened: tokio::sync::Notify::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn gathered(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ring (oldest first) and the pods, as of the last round.
    pub fn snapshot(&self) -> (Vec<Round>, Vec<PodView>) {
        let g = self.gathered();
        (g.rounds.iter().cloned().collect(), g.pods.clone())
    }

    /// The page's data is being asked for: rounds run for `window` from now (at
    /// once, when they had stopped).
    pub fn viewed(&self) {
        let was_active = self.active();
        *self.viewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if !was_active {
            self.opened.notify_one();
        }
    }

    /// Whether rounds run now (see the module docs).
    pub fn active(&self) -> bool {
        self.settings.always
            || self
                .viewed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < self.settings.window)
    }

    /// A round every interval while [`Gatherer::active`], until the controller
    /// closes.
    pub async fn run(self: Arc<Self>) {
        let mut closed = std::pin::pin!(self.state.closed());
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut closed => return,
                _ = tick.tick() => {
                    if self.active() {
                        self.round().await;
                    }
                }
                () = self.opened.notified() => {
                    self.round().await;
                    tick.reset();
                }
            }
        }
    }

    /// The subscribed proxies, one per pod address (a reconnecting proxy may
    /// hold two streams for a moment), at most `max_proxies`.
    fn targets(&self) -> Vec<(IpAddr, String, String)> {
        let version = self.state.snapshot().version;
        let mut by_address: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
        for p in self.state.proxies().view(version) {
            let Some(ip) = p.address.as_deref().and_then(|a| a.parse().ok()) else {
                continue;
            };
            by_address.insert(ip, (p.proxy_id, p.service));
        }
        by_address
            .into_iter()
            .take(self.settings.max_proxies)
            .map(|(ip, (id, service))| (ip, id, service))
            .collect()
    }

    /// Reads every proxy once and records the round.
    pub async fn round(&self) {
        let mut reads = JoinSet::new();
        for (ip, pod, service) in self.targets() {
            let s = self.settings.clone();
            reads.spawn(async move { read_pod(&s, ip, pod, service).await });
        }
        let mut pods = Vec::new();
        let mut fresh_pages = Vec::new();
        while let Some(done) = reads.join_next().await {
            let Ok((view, page)) = done else { continue };
            if let Some(samples) = page {
                fresh_pages.push((view.address.clone(), samples));
            }
            pods.push(view);
        }
        pods.sort_by(|a, b| (&a.service, &a.pod).cmp(&(&b.service, &b.pod)));
        let now = Instant::now();
        let mut g = self.gathered();
        for (address, samples) in fresh_pages {
            if let Ok(ip) = address.parse() {
                g.pages.insert(ip, Page { samples, at: now });
            }
        }
        // A proxy that missed a round still counts with its last page (its
        // counters did not go away); one silent for long is gone.
        let stale = self.settings.interval * 5 + self.settings.timeout;
        g.pages.retain(|_, p| now.duration_since(p.at) <= stale);
        let pages: Vec<Vec<Sample>> = g.pages.values().map(|p| p.samples.clone()).collect();
        let round = Round {
            at_ms: unix_ms(),
            edges: edges::totals(&pages),
        };
        if g.rounds.len() >= self.settings.rounds() {
            g.rounds.pop_front();
        }
        g.rounds.push_back(round);
        g.pods = pods;
    }
}

/// One proxy's three answers, read at once.
async fn read_pod(
    s: &Settings,
    ip: IpAddr,
    pod: String,
    service: String,
) -> (PodView, Option<Vec<Sample>>) {
    let metrics_at = SocketAddr::new(ip, s.metrics_port);
    let admin_at = SocketAddr::new(ip, s.admin_port);
    let (metrics, ready, conns) = tokio::join!(
        fetch::get(metrics_at, "/metrics", s.timeout),
        fetch::get(metrics_at, "/ready", s.timeout),
        fetch::get(admin_at, "/connections", s.timeout),
    );
    let (page, metrics_error) = match metrics {
        Ok((200, body)) => (Some(prom_text::parse(&body)), None),
        Ok((code, _)) => (None, Some(format!("/metrics answered {code}"))),
        Err(e) => (None, Some(e)),
    };
    let (ready, ready_detail) = match ready {
        Ok((code, body)) => (Some(code == 200), body.trim().to_owned()),
        Err(e) => (None, e),
    };
    let (connections, connections_error) = match conns {
        Ok((200, body)) => match connections_of(&body, s.max_connections) {
            Some(list) => (Some(list), None),
            None => (None, Some("/connections did not answer its JSON".to_owned())),
        },
        Ok((code, _)) => (None, Some(format!("/connections answered {code}"))),
        Err(e) => (
            None,
            Some(format!(
                "admin port {}: {e} (the proxy's --admin-listen must be reachable from the controller)",
                s.admin_port
            )),
        ),
    };
    let view = PodView {
        pod,
        service,
        address: ip.to_string(),
        ready,
        ready_detail,
        connections,
        connections_error,
        metrics_error,
        read_at_ms: unix_ms(),
    };
    (view, page)
}

/// The `connections` list of a `/connections` answer, live ones first, cut to `max`.
fn connections_of(body: &str, max: usize) -> Option<Vec<Value>> {
    let mut v: Value = serde_json::from_str(body).ok()?;
    let mut list = match v.get_mut("connections")?.take() {
        Value::Array(list) => list,
        _ => return None,
    };
    list.sort_by_key(|c| c.get("state").and_then(Value::as_str) != Some("open"));
    list.truncate(max);
    Some(list)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn live_connections_come_first_and_the_list_is_bounded() {
        let body = r#"{"connections":[{"id":1,"state":"closed"},{"id":2,"state":"open"},{"id":3,"state":"closed"},{"id":4,"state":"open"}]}"#;
        let list = connections_of(body, 3).unwrap();
        let ids: Vec<u64> = list.iter().map(|c| c["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [2, 4, 1]);
        assert!(connections_of("[]", 3).is_none());
    }

    #[test]
    fn the_ring_spans_the_window() {
        let s = Settings::default();
        assert_eq!(s.rounds(), 300, "10 minutes at 2 s");
        let tiny = Settings {
            window: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(tiny.rounds(), 2, "a rate needs two rounds");
    }
}
