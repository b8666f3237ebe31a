//! Request spans (ARCHITECTURE.md, Traces): with a trace export configured, each
//! HTTP request gets a span on each side of the proxy it crosses — a server span
//! where it enters a pod (inbound), a client span where it leaves one (outbound) —
//! joined to the W3C `traceparent` it arrived with, and the request goes on
//! carrying this span's context instead, so the next hop's span is its child.
//!
//! The sampling decision is the caller's when its `traceparent` has one (the SDK's
//! parent-based sampler); a request without one is decided here at the configured
//! ratio, and forwarded with a `traceparent` saying so either way, so the sidecars
//! behind keep that decision and a trace is whole or absent. An unsampled request
//! keeps no span: it costs the ids and the header, nothing is queued. Without a
//! trace export nothing of this runs and `traceparent` passes untouched.
//!
//! Attributes follow the OpenTelemetry HTTP semantic conventions (stable):
//! `http.request.method`, `http.response.status_code`, `url.scheme`, `url.path`
//! (server) or `url.full` (client; neither carries the query, which may hold
//! secrets), `server.address` and `server.port` (the request's authority),
//! `network.protocol.version`, `error.type` on a failure; on client spans also
//! `network.peer.address` / `network.peer.port` (the endpoint picked) and
//! `http.request.resend_count` (the proxy's retries); plus `peer.service` (the
//! destination service, client spans), `weft.peer.identity` (the caller's SPIFFE
//! ID under mutual TLS, server spans) and `weft.error`: the `x-weft-error` reason
//! of a response a sidecar made itself. A gRPC call adds `rpc.system` and
//! `rpc.grpc.status_code` (from its trailers), its status deciding the error as
//! the RPC conventions say.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use super::HttpVersion;
use crate::addr::Direction;

/// Makes the spans of one proxy's requests.
#[derive(Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// What the start of a request's span needs to know of it besides its head.
#[derive(Debug, Clone, Copy)]
pub struct SpanStart<'a> {
    pub direction: Direction,
    /// The method label (a standard method, or `other`).
    pub method: &'static str,
    pub version: HttpVersion,
    /// The destination service (`peer.service` of a client span).
    pub destination: &'a str,
    /// The caller's verified identity, under mutual TLS (server spans).
    pub peer_identity: Option<&'a str>,
}

/// The recording span of one sampled request, ended when its response is done.
#[derive(Debug)]
pub struct RequestSpan {
    // Boxed: a response body carries an `Option<RequestSpan>`, which must stay
    // small for the requests that are not sampled.
    span: Box<Span>,
    client: bool,
    /// `error.type` is set already.
    error_type: bool,
    /// A gRPC call's status code, once its trailers (or trailers-only head) said.
    grpc_status: Option<i64>,
}

impl Tracing {
    pub fn new(tracer: SdkTracer) -> Self {
        Tracing {
            tracer,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Starts the span of `req`, a child of the context its headers carry, and
    /// puts this span's context in its headers for the next hop. `None` when the
    /// request is not sampled (its headers then say so).
    pub fn start<B>(&self, req: &mut Request<B>, start: SpanStart<'_>) -> Option<RequestSpan> {
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &Headers(req.headers()));
        let client = start.direction == Direction::Outbound;
        // Semantic conventions: `{method}` without a route template, `HTTP` for a
        // method outside the standard ones.
        let name = match start.method {
            "other" => "HTTP",
            m => m,
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(if client {
                SpanKind::Client
            } else {
                SpanKind::Server
            })
            .start_with_context(&self.tracer, &parent);
        let next = Context::new().with_remote_span_context(span.span_context().clone());
        self.propagator
            .inject_context(&next, &mut HeadersMut(req.headers_mut()));
        if !span.is_recording() {
            return None;
        }
        // Only a sampled request pays for its attributes (the sampler reads none).
        span.set_attributes(if client {
            client_attributes(req, &start)
        } else {
            server_attributes(req, &start)
        });
        Some(RequestSpan {
            span: Box::new(span),
            client,
            error_type: false,
            grpc_status: None,
        })
    }
}

impl RequestSpan {
    /// The endpoint the request went to last, and how many times it was sent again
    /// (client spans: a server span's peer is its client, not the application).
    pub fn sent(&mut self, endpoint: Option<SocketAddr>, resends: u32) {
        if !self.client {
            return;
        }
        if let Some(addr) = endpoint {
            self.span
                .set_attribute(KeyValue::new("network.peer.address", addr.ip().to_string()));
            self.span
                .set_attribute(KeyValue::new("network.peer.port", i64::from(addr.port())));
        }
        if resends > 0 {
            self.span.set_attribute(KeyValue::new(
                "http.request.resend_count",
                i64::from(resends),
            ));
        }
    }

    /// A sidecar made the response itself, for `reason` (`x-weft-error`): this
    /// proxy, or (client spans) the peer's.
    pub fn weft_error(&mut self, reason: &str) {
        self.span
            .set_attribute(KeyValue::new("weft.error", reason.to_owned()));
        self.span
            .set_attribute(KeyValue::new("error.type", reason.to_owned()));
        self.error_type = true;
    }

    /// A gRPC call's status, from its trailers or a trailers-only head (`headers`
    /// without `grpc-status`: nothing to say yet).
    pub fn grpc_trailers(&mut self, headers: &HeaderMap) {
        let code = headers
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(code) = code {
            self.grpc_status(code);
        }
    }

    /// A gRPC call's status code.
    pub fn grpc_status(&mut self, code: i64) {
        self.grpc_status = Some(code);
        self.span.set_attribute(KeyValue::new("rpc.system", "grpc"));
        self.span
            .set_attribute(KeyValue::new("rpc.grpc.status_code", code));
    }

    /// Ends the span with the status the client got (`clean`: the response ended
    /// normally); 5xx is an error on both sides, 4xx on the client's.
    pub fn end(mut self, status: u16, clean: bool) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        let failed = status >= 500 || (self.client && status >= 400);
        if failed {
            self.span.set_status(Status::error(""));
            if !self.error_type {
                self.span
                    .set_attribute(KeyValue::new("error.type", status.to_string()));
            }
        } else if !clean {
            // The response broke off after its head.
            self.span.set_status(Status::error(""));
            self.span
                .set_attribute(KeyValue::new("error.type", "response_incomplete"));
        } else if let Some(code) = self.grpc_status.filter(|c| grpc_failed(*c, self.client)) {
            self.span.set_status(Status::error(""));
            if !self.error_type {
                self.span
                    .set_attribute(KeyValue::new("error.type", code.to_string()));
            }
        }
        self.span.end_with_timestamp(SystemTime::now());
    }
}

const GRPC_STATUS: &str = "grpc-status";

/// Whether a gRPC status code is a failure of the span (the semantic
/// conventions: any non-OK code on a client span; on a server span only those
/// that say the server failed — UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS).
fn grpc_failed(code: i64, client: bool) -> bool {
    if client {
        code != 0
    } else {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    }
}

/// Attributes both kinds share.
fn common_attributes<B>(req: &Request<B>, start: &SpanStart<'_>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(9);
    attributes.push(KeyValue::new(
        "http.request.method",
        match start.method {
            "other" => "_OTHER",
            m => m,
        },
    ));
    if start.method == "other" {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            req.method().as_str().to_owned(),
        ));
    }
    attributes.push(KeyValue::new("url.scheme", "http"));
    attributes.push(KeyValue::new(
        "network.protocol.version",
        match start.version {
            HttpVersion::Http1 => "1.1",
            HttpVersion::H2 => "2",
        },
    ));
    if let Some((host, port)) = authority(req) {
        attributes.push(KeyValue::new("server.address", host));
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    attributes
}

fn server_attributes<B>(req: &Request<B>, start: &SpanStart<'_>) -> Vec<KeyValue> {
    let mut attributes = common_attributes(req, start);
    attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
    if let Some(id) = start.peer_identity {
        attributes.push(KeyValue::new("weft.peer.identity", id.to_owned()));
    }
    attributes
}

fn client_attributes<B>(req: &Request<B>, start: &SpanStart<'_>) -> Vec<KeyValue> {
    let mut attributes = common_attributes(req, start);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or(start.destination);
    attributes.push(KeyValue::new(
        "url.full",
        format!("http://{host}{}", req.uri().path()),
    ));
    attributes.push(KeyValue::new("peer.service", start.destination.to_owned()));
    attributes
}

/// The host and port the request names (its URI's authority, else `Host`).
fn authority<B>(req: &Request<B>) -> Option<(String, u16)> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req.headers().get(HOST)?.to_str().ok()?.parse().ok()?,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_owned(), authority.port_u16().unwrap_or(80)))
}

/// The propagator's view of a request's headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn grpc_codes_fail_a_client_span_always_a_server_span_when_the_server_failed() {
        assert!(!grpc_failed(0, true) && !grpc_failed(0, false));
        assert!(grpc_failed(5, true), "NOT_FOUND, seen by the caller");
        assert!(!grpc_failed(5, false), "NOT_FOUND is the caller's problem");
        assert!(grpc_failed(14, false) && grpc_failed(14, true));
    }

    #[test]
    fn the_authority_comes_from_the_uri_else_the_host_header() {
        assert_eq!(
            authority(&req("/x", Some("backend:8080"))),
            Some(("backend".into(), 8080))
        );
        assert_eq!(
            authority(&req("/x", Some("backend"))),
            Some(("backend".into(), 80))
        );
        assert_eq!(
            authority(&req("http://[fd00::1]:81/x", None)),
            Some(("fd00::1".into(), 81))
        );
        assert_eq!(authority(&req("/x", None)), None);
    }
}
