//! The per-request series of ARCHITECTURE.md, Metrics: `weft_http_requests_total` and
//! `weft_http_request_duration_seconds`, plus the proxy-made errors counted in
//! `weft_proxy_errors_total`.
//!
//! Label values are built once per connection as reference-counted strings, so a
//! request clones pointers, never strings; the method label is one of the standard
//! methods or `other`, and the status code is an integer attribute — the label set
//! stays bounded whatever clients send.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use opentelemetry::metrics::{Counter, Histogram, Meter};
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

/// The labels one connection's requests share.
#[derive(Debug)]
pub struct RequestLabels {
    /// Which side of the pod the requests cross (the kind of their spans).
    pub direction_kind: Direction,
    /// The destination service's name (`peer.service` of client spans).
    pub destination_name: Arc<str>,
    direction: KeyValue,
    source: KeyValue,
    destination: KeyValue,
}

impl RequestLabels {
    pub fn new(direction: Direction, source: &Arc<str>, destination: &Arc<str>) -> Self {
        RequestLabels {
            direction_kind: direction,
            destination_name: destination.clone(),
            direction: KeyValue::new("direction", direction.as_str()),
            source: KeyValue::new("source_service", source.clone()),
            destination: KeyValue::new("destination_service", destination.clone()),
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
        let status = KeyValue::new("status_code", i64::from(status));
        let edge = [
            self.direction.clone(),
            self.source.clone(),
            self.destination.clone(),
            status,
            tls_label(tls),
        ];
        instruments.duration.record(elapsed.as_secs_f64(), &edge);
        let [d, s, t, c, tls] = edge;
        instruments
            .requests
            .add(1, &[d, s, t, KeyValue::new("method", method), c, tls]);
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
