//! The service topology and per-edge golden signals, computed from the proxies'
//! Prometheus pages the way PromQL would: an edge is a (source service,
//! destination service) pair seen by the calling side's proxy (`direction =
//! "outbound"`), plus callers without a sidecar as the serving side saw them
//! (`direction = "inbound"`, `source_service = "unknown"`). Rates and latency
//! quantiles come from the difference of two scrapes.
//!
//! Shared by `weftctl top` / `graph` and the controller's mesh page (`ui`): one
//! computation, so the terminal and the page never disagree.

use std::collections::BTreeMap;

use weft_runtime::prom_text::Sample;

const REQUESTS: &str = "weft_http_requests_total";
const DURATION_BUCKET: &str = "weft_http_request_duration_seconds_bucket";
const CONNECTIONS: &str = "weft_tcp_connections_opened_total";

/// Source and destination service.
pub type Edge = (String, String);

/// Cumulative counters of one edge, summed over every proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeTotals {
    pub requests: f64,
    /// Requests answered with a 5xx (by the app or by the proxy).
    pub failures: f64,
    pub connections: f64,
    /// Requests and connections whose hop between sidecars was mutual TLS
    /// (`tls="true"`).
    pub secured_requests: f64,
    pub secured_connections: f64,
    /// Latency histogram: upper bound (seconds) → cumulative count.
    pub buckets: BTreeMap<Bound, f64>,
}

/// A histogram bucket bound that orders like a number (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn label<'a>(s: &'a Sample, key: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The edge a sample belongs to, if it counts for the topology (see the module doc).
fn edge_of(s: &Sample) -> Option<Edge> {
    let source = label(s, "source_service")?;
    let destination = label(s, "destination_service")?;
    let counts = match label(s, "direction")? {
        "outbound" => true,
        "inbound" => source == "unknown",
        _ => false,
    };
    counts.then(|| (source.to_owned(), destination.to_owned()))
}

/// Sums the samples of every proxy's page into per-edge totals.
pub fn totals(pages: &[Vec<Sample>]) -> BTreeMap<Edge, EdgeTotals> {
    let mut out: BTreeMap<Edge, EdgeTotals> = BTreeMap::new();
    for s in pages.iter().flatten() {
        let Some(edge) = edge_of(s) else { continue };
        let t = out.entry(edge).or_default();
        let secured = label(s, "tls") == Some("true");
        match s.name.as_str() {
            REQUESTS => {
                t.requests += s.value;
                if secured {
                    t.secured_requests += s.value;
                }
                if label(s, "status_code").is_some_and(|c| c.starts_with('5')) {
                    t.failures += s.value;
                }
            }
            DURATION_BUCKET => {
                let le = match label(s, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *t.buckets.entry(Bound(le)).or_default() += s.value;
            }
            CONNECTIONS => {
                t.connections += s.value;
                if secured {
                    t.secured_connections += s.value;
                }
            }
            _ => {}
        }
    }
    out
}

/// One row of `weftctl top`: what happened on an edge between two scrapes.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeStats {
    pub requests_per_s: f64,
    /// Share of requests that did not fail; `None` without requests.
    pub success: Option<f64>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub connections_per_s: f64,
    /// Share of the requests (of the connections, on an edge without HTTP) that
    /// went under mutual TLS; `None` without either.
    pub mtls: Option<f64>,
}

/// The stats of every edge seen in `after`, over `seconds` since `before`.
pub fn stats(
    before: &BTreeMap<Edge, EdgeTotals>,
    after: &BTreeMap<Edge, EdgeTotals>,
    seconds: f64,
) -> BTreeMap<Edge, EdgeStats> {
    let empty = EdgeTotals::default();
    after
        .iter()
        .map(|(edge, now)| {
            let then = before.get(edge).unwrap_or(&empty);
            // A proxy restart resets its counters: never show a negative rate.
            let delta = |a: f64, b: f64| (a - b).max(0.0);
            let requests = delta(now.requests, then.requests);
            let failures = delta(now.failures, then.failures);
            let connections = delta(now.connections, then.connections);
            let mtls = if requests > 0.0 {
                Some(delta(now.secured_requests, then.secured_requests) / requests)
            } else if connections > 0.0 {
                Some(delta(now.secured_connections, then.secured_connections) / connections)
            } else {
                None
            };
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .map(|(le, n)| {
                    (
                        le.0,
                        delta(*n, then.buckets.get(le).copied().unwrap_or(0.0)),
                    )
                })
                .collect();
            let per_s = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
            let stats = EdgeStats {
                requests_per_s: per_s(requests),
                success: (requests > 0.0).then(|| 1.0 - failures / requests),
                p50_s: quantile(0.5, &buckets),
                p99_s: quantile(0.99, &buckets),
                connections_per_s: per_s(connections),
                mtls,
            };
            (edge.clone(), stats)
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram (`(upper bound, count)` sorted by
/// bound, the last `+Inf`), interpolated linearly inside the bucket the way
/// PromQL's `histogram_quantile` does. `None` when it holds no observation.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: that bound is all we know.
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Per destination service: the totals of every edge into it (what the service
/// was asked, by everyone), for its own golden signals.
pub fn by_destination(edges: &BTreeMap<Edge, EdgeTotals>) -> BTreeMap<String, EdgeTotals> {
    let mut out: BTreeMap<String, EdgeTotals> = BTreeMap::new();
    for ((_, destination), t) in edges {
        let sum = out.entry(destination.clone()).or_default();
        sum.requests += t.requests;
        sum.failures += t.failures;
        sum.connections += t.connections;
        sum.secured_requests += t.secured_requests;
        sum.secured_connections += t.secured_connections;
        for (le, n) in &t.buckets {
            *sum.buckets.entry(*le).or_default() += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(text: &str) -> Vec<Sample> {
        weft_runtime::prom_text::parse(text)
    }

    const FRONTEND: &str = r#"
weft_http_requests_total{destination_service="backend",direction="outbound",method="GET",source_service="frontend",status_code="200",tls="true"} 90
weft_http_requests_total{destination_service="backend",direction="outbound",method="GET",source_service="frontend",status_code="503",tls="false"} 10
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="200",le="0.005"} 50
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="200",le="0.01"} 90
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="200",le="+Inf"} 90
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="503",le="0.005"} 10
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="503",le="0.01"} 10
weft_http_request_duration_seconds_bucket{destination_service="backend",direction="outbound",source_service="frontend",status_code="503",le="+Inf"} 10
weft_tcp_connections_opened_total{destination_service="backend",direction="outbound",source_service="frontend"} 4
weft_tcp_connections_opened_total{destination_service="passthrough",direction="outbound",source_service="frontend"} 2
"#;
    const BACKEND: &str = r#"
weft_http_requests_total{destination_service="backend",direction="inbound",method="GET",source_service="frontend",status_code="200"} 90
weft_tcp_connections_opened_total{destination_service="backend",direction="inbound",source_service="unknown"} 3
"#;

    #[test]
    fn edges_come_from_the_calling_side_and_unmeshed_callers() {
        let t = totals(&[page(FRONTEND), page(BACKEND)]);
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("frontend".to_owned(), "backend".to_owned()),
                ("frontend".to_owned(), "passthrough".to_owned()),
                ("unknown".to_owned(), "backend".to_owned()),
            ]
        );
        let fb = &t[&("frontend".to_owned(), "backend".to_owned())];
        assert_eq!(
            (fb.requests, fb.failures, fb.connections),
            (100.0, 10.0, 4.0)
        );
        assert_eq!(fb.buckets[&Bound(0.005)], 60.0);
        assert_eq!(fb.buckets[&Bound(f64::INFINITY)], 100.0);
    }

    #[test]
    fn stats_are_differences_over_time() {
        let before = totals(&[page(FRONTEND)]);
        let doubled: String = FRONTEND
            .lines()
            .map(|l| match l.rsplit_once(' ') {
                Some((k, v)) => format!("{k} {}\n", v.parse::<f64>().unwrap() * 2.0),
                None => "\n".to_owned(),
            })
            .collect();
        let after = totals(&[page(&doubled)]);
        let s = &stats(&before, &after, 10.0)[&("frontend".to_owned(), "backend".to_owned())];
        assert_eq!(s.requests_per_s, 10.0);
        assert_eq!(s.success, Some(0.9));
        assert_eq!(s.connections_per_s, 0.4);
        assert_eq!(s.mtls, Some(0.9), "90 of 100 requests under mutual TLS");
        // 60 of 100 new requests are <= 5 ms: the median is inside that bucket.
        let p50 = s.p50_s.unwrap();
        assert!((p50 - 0.005 * 50.0 / 60.0).abs() < 1e-9, "{p50}");
        let p99 = s.p99_s.unwrap();
        assert!(p99 > 0.005 && p99 <= 0.01, "{p99}");
        // Nothing new: no rate, no success rate, no latency.
        let idle = &stats(&after, &after, 10.0)[&("frontend".to_owned(), "backend".to_owned())];
        assert_eq!(
            (idle.requests_per_s, idle.success, idle.p50_s, idle.mtls),
            (0.0, None, None, None)
        );
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        let b = [(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        assert!((quantile(0.75, &b).unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        // Everything above the last finite bound: that bound.
        assert_eq!(
            quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 5.0)]),
            Some(0.1)
        );
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn a_service_sums_the_edges_into_it() {
        let t = totals(&[page(FRONTEND), page(BACKEND)]);
        let by = by_destination(&t);
        assert_eq!(by["backend"].requests, 100.0);
        assert_eq!(
            by["backend"].connections, 7.0,
            "4 from frontend, 3 unmeshed"
        );
        assert_eq!(by["backend"].buckets[&Bound(f64::INFINITY)], 100.0);
        assert_eq!(by["passthrough"].connections, 2.0);
    }
}
