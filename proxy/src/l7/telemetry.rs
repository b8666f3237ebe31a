//! The per-request series of ARCHITECTURE.md, Metrics: `weft_http_requests_total` and
//! `weft_http_request_duration_seconds`, plus the proxy-made errors counted in
//! `weft_proxy_errors_total`.
//!
//! Label values are built once per connection as reference-counted strings, so a
//! request clones pointers, never strings; the method label is one of the standard
//! methods or `other`, and the status code is an integer attribute — the label set
//! stays bounded whatever clients send.
//!
//! A request's measurements go through handles bound to its label set
//! (OpenTelemetry's bound instruments), kept per edge for the few method, status
//! and tls combinations its requests have: an unbound measurement hashes and
//! compares its whole attribute set in the SDK's map each time, which a perf
//! profile of the HTTP/1.1 max load put at about 6% of the proxy's user time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use crate::addr::Direction;
use crate::error::ErrorReason;
use crate::metrics::tls_label;

/// Bucket bounds (seconds) of the request duration histogram: 0.5 ms to 30 s, dense
/// where a sidecar's latency lives.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0,
];

/// Handles of the HTTP instruments (cheap to clone: each is a reference).
#[derive(Clone, Debug)]
pub struct HttpInstruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    errors: Counter<u64>,
    retries: Counter<u64>,
    /// False: nothing is recorded (`--no-traffic-metrics`).
    enabled: bool,
}

impl HttpInstruments {
    /// Builds the HTTP instruments on `meter`; `errors` is the proxy's
    /// `weft_proxy_errors` counter; with `enabled` false nothing is recorded.
    pub fn new(meter: &Meter, errors: Counter<u64>, enabled: bool) -> Self {
        HttpInstruments {
            requests: meter
                .u64_counter("weft_http_requests")
                .with_description("HTTP requests proxied, by status code the client saw")
                .build(),
            duration: meter
                .f64_histogram("weft_http_request_duration_seconds")
                .with_description(
                    "Time from a request's arrival to the end of its response, in seconds",
                )
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            errors,
            retries: meter
                .u64_counter("weft_http_retries")
                .with_description(
                    "Request attempts sent again to another endpoint, by why the last one failed",
                )
                .build(),
            enabled,
        }
    }
}

/// Combinations of method, status and tls bound per edge at most; a request of
/// another combination is recorded unbound (same series, the SDK's lookup).
const MAX_BOUND_PER_EDGE: usize = 16;

/// What identifies a request's series within its edge: method, status, tls.
type BoundKey = (&'static str, u16, bool);

/// The instruments bound to one request series.
#[derive(Debug)]
struct Bound {
    key: BoundKey,
    duration: BoundHistogram<f64>,
    requests: BoundCounter<u64>,
}

/// The labels one edge's requests share (every connection of the edge holds it).
#[derive(Debug)]
pub struct RequestLabels {
    /// Which side of the pod the requests cross (the kind of their spans).
    pub direction_kind: Direction,
    /// The destination service's name (`peer.service` of client spans).
    pub destination_name: Arc<str>,
    direction: KeyValue,
    source: KeyValue,
    destination: KeyValue,
    /// The series this edge's requests were recorded in so far, bound.
    bound: Mutex<Vec<Bound>>,
}

impl RequestLabels {
    pub fn new(direction: Direction, source: &Arc<str>, destination: &Arc<str>) -> Self {
        RequestLabels {
            direction_kind: direction,
            destination_name: destination.clone(),
            direction: KeyValue::new("direction", direction.as_str()),
            source: KeyValue::new("source_service", source.clone()),
            destination: KeyValue::new("destination_service", destination.clone()),
            bound: Mutex::new(Vec::new()),
        }
    }

    /// A finished request: `status` is what the client got, `tls` whether its hop
    /// between sidecars was mutual TLS.
    pub fn record(
        &self,
        instruments: &HttpInstruments,
        method: &'static str,
        status: u16,
        elapsed: Duration,
        tls: bool,
    ) {
        if !instruments.enabled {
            return;
        }
        let key = (method, status, tls);
        let secs = elapsed.as_secs_f64();
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = bound.iter().find(|b| b.key == key) {
            b.duration.record(secs);
            b.requests.add(1);
            return;
        }
        let status = KeyValue::new("status_code", i64::from(status));
        let edge = [
            self.direction.clone(),
            self.source.clone(),
            self.destination.clone(),
            status,
            tls_label(tls),
        ];
        let [d, s, t, c, tls] = edge.clone();
        let request = [d, s, t, KeyValue::new("method", method), c, tls];
        if bound.len() < MAX_BOUND_PER_EDGE {
            let b = Bound {
                key,
                duration: instruments.duration.bind(&edge),
                requests: instruments.requests.bind(&request),
            };
            b.duration.record(secs);
            b.requests.add(1);
            bound.push(b);
        } else {
            drop(bound);
            instruments.duration.record(secs, &edge);
            instruments.requests.add(1, &request);
        }
    }

    /// A request is sent again after its attempt failed for `reason` (the words of
    /// [`crate::l7::forward`]'s retry rules: `unsent`, `refused`,
    /// `app_unreachable`, `reset`, `status`).
    pub fn retry(&self, instruments: &HttpInstruments, reason: &'static str) {
        if !instruments.enabled {
            return;
        }
        instruments.retries.add(
            1,
            &[
                self.direction.clone(),
                self.destination.clone(),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// A response the proxy made itself.
    pub fn error(&self, instruments: &HttpInstruments, reason: ErrorReason) {
        if !instruments.enabled {
            return;
        }
        instruments.errors.add(
            1,
            &[
                self.direction.clone(),
                self.destination.clone(),
                KeyValue::new("reason", reason.as_str()),
            ],
        );
    }
}

/// The `method` label: a standard method, or `other` (clients choose methods, and
/// label values must stay bounded).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use weft_runtime::prom_text::value;

    /// A proxy's metrics (traffic series on or off) and the edge client → backend.
    fn edge(enabled: bool) -> (Metrics, HttpInstruments, RequestLabels) {
        let metrics = Metrics::new("client", enabled).expect("metrics");
        let instruments =
            HttpInstruments::new(&metrics.meter(), metrics.errors_counter().clone(), enabled);
        let labels = RequestLabels::new(Direction::Outbound, &"client".into(), &"backend".into());
        (metrics, instruments, labels)
    }

    /// Bound handles and the unbound path past [`MAX_BOUND_PER_EDGE`] count in the
    /// same series, each request once.
    #[test]
    fn requests_are_counted_once_each_bound_or_not() {
        let (metrics, instruments, labels) = edge(true);
        let ms = Duration::from_millis(3);
        // More combinations than are bound, each recorded three times (bound ones:
        // once while binding, twice through the handles).
        let statuses: Vec<u16> = (0..MAX_BOUND_PER_EDGE as u16 + 4)
            .map(|i| 200 + i)
            .collect();
        for _ in 0..3 {
            for &status in &statuses {
                labels.record(&instruments, "GET", status, ms, false);
            }
            labels.record(&instruments, "POST", 200, ms, true);
        }
        assert_eq!(labels.bound.lock().expect("lock").len(), MAX_BOUND_PER_EDGE);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for &status in &statuses {
            let code = status.to_string();
            let series = [
                ("direction", "outbound"),
                ("destination_service", "backend"),
                ("status_code", code.as_str()),
                ("tls", "false"),
            ];
            let mut request = series.to_vec();
            request.push(("method", "GET"));
            assert_eq!(
                value(&text, "weft_http_requests_total", &request),
                Some(3.0),
                "{code}"
            );
            let histogram = "weft_http_request_duration_seconds_count";
            assert_eq!(value(&text, histogram, &series), Some(3.0), "{code}");
        }
        let post = [("method", "POST"), ("tls", "true")];
        assert_eq!(value(&text, "weft_http_requests_total", &post), Some(3.0));
        assert_eq!(
            value(&text, "weft_http_requests_total", &[]),
            Some(3.0 * statuses.len() as f64 + 3.0)
        );
    }

    #[test]
    fn nothing_is_recorded_when_traffic_metrics_are_off() {
        let (metrics, instruments, labels) = edge(false);
        labels.record(&instruments, "GET", 200, Duration::from_millis(1), false);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert_eq!(value(&text, "weft_http_requests_total", &[]), None);
    }
}
