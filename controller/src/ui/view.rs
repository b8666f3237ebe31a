//! What `GET /ui/api/mesh` answers: the served services with their endpoints and
//! pods, the edges with their golden signals now, each service's signals over the
//! gatherer's window (one point per round), the pods' sidecars and connections,
//! and the recent bad configurations. Computed from the gatherer's ring at each
//! request with the same [`crate::edges`] code `weftctl top` runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::gather::{Gatherer, PodView, Round};
use crate::edges::{self, EdgeStats};
use crate::state::State;

/// Edges' "now" is the change over this many rounds (about 10 s at the default
/// 2 s), steadier than one interval's.
const RATE_ROUNDS: usize = 5;

/// One edge: cumulative counts (what the proxies' counters say) and its signals
/// over the last rounds.
#[derive(Debug, Serialize)]
struct EdgeView {
    source: String,
    destination: String,
    requests: f64,
    failures: f64,
    connections: f64,
    #[serde(flatten)]
    now: Signals,
}

/// Golden signals over a span of time.
#[derive(Debug, Serialize, PartialEq)]
struct Signals {
    rate_per_s: f64,
    /// Share of requests not answered 5xx; `None` without requests.
    success: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    connections_per_s: f64,
}

impl From<&EdgeStats> for Signals {
    fn from(s: &EdgeStats) -> Self {
        Signals {
            rate_per_s: s.requests_per_s,
            success: s.success,
            p50_ms: s.p50_s.map(|v| v * 1e3),
            p99_ms: s.p99_s.map(|v| v * 1e3),
            connections_per_s: s.connections_per_s,
        }
    }
}

/// A service's signals over the window: parallel arrays, one entry per round.
#[derive(Debug, Default, Serialize)]
struct Series {
    t_ms: Vec<u64>,
    rate_per_s: Vec<f64>,
    success: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
}

fn seconds_between(a: &Round, b: &Round) -> f64 {
    b.at_ms.saturating_sub(a.at_ms) as f64 / 1e3
}

fn edges_now(rounds: &[Round]) -> Vec<EdgeView> {
    let Some(last) = rounds.last() else {
        return Vec::new();
    };
    let first = &rounds[rounds.len().saturating_sub(RATE_ROUNDS + 1)];
    let stats = edges::stats(&first.edges, &last.edges, seconds_between(first, last));
    last.edges
        .iter()
        .map(|((source, destination), t)| EdgeView {
            source: source.clone(),
            destination: destination.clone(),
            requests: t.requests,
            failures: t.failures,
            connections: t.connections,
            now: stats
                .get(&(source.clone(), destination.clone()))
                .map_or_else(
                    || Signals {
                        rate_per_s: 0.0,
                        success: None,
                        p50_ms: None,
                        p99_ms: None,
                        connections_per_s: 0.0,
                    },
                    Signals::from,
                ),
        })
        .collect()
}

/// Per destination service, its signals between each two consecutive rounds.
fn series(rounds: &[Round]) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for pair in rounds.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let b = edges::by_destination(&before.edges);
        let a = edges::by_destination(&after.edges);
        let keyed = |m: BTreeMap<String, edges::EdgeTotals>| {
            m.into_iter()
                .map(|(k, v)| ((k, String::new()), v))
                .collect::<BTreeMap<_, _>>()
        };
        let stats = edges::stats(&keyed(b), &keyed(a), seconds_between(before, after));
        for ((service, _), s) in stats {
            let series = out.entry(service).or_default();
            // A service first seen late starts its line there.
            series.t_ms.push(after.at_ms);
            series.rate_per_s.push(s.requests_per_s);
            series.success.push(s.success);
            series.p99_ms.push(s.p99_s.map(|v| v * 1e3));
        }
    }
    out
}

fn services(state: &State, pods: &[PodView], series: &mut BTreeMap<String, Series>) -> Vec<Value> {
    let snap = state.snapshot();
    let pod_at: BTreeMap<&str, &PodView> = pods.iter().map(|p| (p.address.as_str(), p)).collect();
    let endpoint = |ip: &std::net::IpAddr, served: bool| {
        let address = ip.to_string();
        let pod = pod_at.get(address.as_str()).map(|p| p.pod.clone());
        json!({ "address": address, "served": served, "pod": pod })
    };
    let mut names: BTreeSet<String> = series.keys().cloned().collect();
    names.extend(snap.mesh.services.keys().map(|n| n.as_str().to_owned()));
    names
        .into_iter()
        .map(|name| {
            let defined = snap.mesh.services.iter().find(|(n, _)| n.as_str() == name);
            let signals = series.remove(&name).unwrap_or_default();
            match defined {
                Some((n, s)) => {
                    let mut endpoints: Vec<Value> =
                        s.endpoints.iter().map(|ip| endpoint(ip, true)).collect();
                    if let Some(withheld) = snap.withheld.get(n) {
                        endpoints.extend(withheld.iter().map(|ip| endpoint(ip, false)));
                    }
                    let ports: Vec<Value> = s
                        .ports
                        .iter()
                        .map(|p| json!({ "port": p.port, "target_port": p.target_port }))
                        .collect();
                    json!({
                        "name": name,
                        "defined": true,
                        "vip": s.vip.to_string(),
                        "ports": ports,
                        "endpoints": endpoints,
                        "signals": signals,
                    })
                }
                // `unknown` (callers without a sidecar), `passthrough` (no
                // service's VIP): seen in the metrics, in no source.
                None => json!({
                    "name": name,
                    "defined": false,
                    "endpoints": [],
                    "signals": signals,
                }),
            }
        })
        .collect()
}

/// The whole answer of `/ui/api/mesh`.
pub fn mesh(state: &State, gatherer: &Gatherer) -> Value {
    let (rounds, pods) = gatherer.snapshot();
    let mut series = series(&rounds);
    let settings = gatherer.settings();
    let mut bad_edits = state.recent_errors();
    bad_edits.reverse();
    json!({
        "version": state.snapshot().version,
        "interval_ms": settings.interval.as_millis(),
        "window_s": settings.window.as_secs(),
        "gathered_at_ms": rounds.last().map(|r| r.at_ms),
        "services": services(state, &pods, &mut series),
        "edges": edges_now(&rounds),
        "pods": pods,
        "bad_edits": bad_edits,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round(at_ms: u64, requests: f64) -> Round {
        let page = format!(
            "weft_http_requests_total{{destination_service=\"backend\",direction=\"outbound\",source_service=\"frontend\",status_code=\"200\"}} {requests}\n\
             weft_http_request_duration_seconds_bucket{{destination_service=\"backend\",direction=\"outbound\",source_service=\"frontend\",status_code=\"200\",le=\"0.01\"}} {requests}\n\
             weft_http_request_duration_seconds_bucket{{destination_service=\"backend\",direction=\"outbound\",source_service=\"frontend\",status_code=\"200\",le=\"+Inf\"}} {requests}\n"
        );
        Round {
            at_ms,
            edges: edges::totals(&[weft_runtime::prom_text::parse(&page)]),
        }
    }

    #[test]
    fn edges_carry_their_count_and_recent_rate() {
        let rounds: Vec<Round> = (0..10).map(|i| round(i * 2000, (i * 20) as f64)).collect();
        let edges = edges_now(&rounds);
        assert_eq!(edges.len(), 1);
        let e = &edges[0];
        assert_eq!(
            (e.source.as_str(), e.destination.as_str()),
            ("frontend", "backend")
        );
        assert_eq!(e.requests, 180.0, "the cumulative count");
        assert_eq!(e.now.rate_per_s, 10.0, "20 per 2 s");
        assert_eq!(e.now.success, Some(1.0));
        assert!(e.now.p99_ms.unwrap() <= 10.0);
        assert!(edges_now(&[]).is_empty());
    }

    #[test]
    fn a_service_has_one_point_per_round_after_the_first() {
        let rounds: Vec<Round> = (0..4).map(|i| round(i * 1000, (i * i) as f64)).collect();
        let s = &series(&rounds)["backend"];
        assert_eq!(s.t_ms, [1000, 2000, 3000]);
        assert_eq!(s.rate_per_s, [1.0, 3.0, 5.0]);
        assert_eq!(s.success, [Some(1.0); 3]);
    }
}
