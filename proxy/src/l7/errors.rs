//! Responses the proxy makes itself: 502 when the upstream could not be reached or
//! failed under the request, 503 when the service has no endpoints or every one is
//! ejected by the circuit breaker, 504 when the request timed out, 400 when the
//! client's body broke off while the proxy read it for a retry, 403 when the
//! caller may not reach the service ([`crate::authz`]). Each names its
//! reason in `x-weft-error` (the same word as the `reason` label) and is counted in
//! `weft_proxy_errors_total`; the request is also counted with the status the
//! client saw, like any other.
//!
//! A gRPC call gets the error as gRPC speaks it, since a gRPC client reads only
//! `grpc-status` (an HTTP 502 becomes a transport error whose cause is lost): a
//! trailers-only response, HTTP 200 with `grpc-status` 14 (`UNAVAILABLE`: nothing
//! answered, try again), 4 (`DEADLINE_EXCEEDED`) for the request timeout, 13
//! (`INTERNAL`) for a broken request body, or 7 (`PERMISSION_DENIED`) for a
//! caller refused by authorization, `grpc-message` the reason, and the same
//! `x-weft-error`; the mapping Envoy and Linkerd use for HTTP errors.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::{Completion, ProxyBody};
use super::trace::RequestSpan;
use super::ConnCtx;
use crate::error::ErrorReason;

/// The header naming why the proxy answered itself.
pub static X_WEFT_ERROR: HeaderName = HeaderName::from_static("x-weft-error");

/// The status a proxy-made error is answered with.
pub fn status_of(reason: ErrorReason) -> StatusCode {
    match reason {
        ErrorReason::NoEndpoints
        | ErrorReason::Overload
        | ErrorReason::AllEjected
        | ErrorReason::NoCertificate => StatusCode::SERVICE_UNAVAILABLE,
        ErrorReason::ClientBody => StatusCode::BAD_REQUEST,
        ErrorReason::Unauthorized => StatusCode::FORBIDDEN,
        ErrorReason::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        // Connect failures (refused, timed out, unreachable), resets, bad responses.
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The `grpc-status` a gRPC call gets for a proxy-made error: the code, and as
/// the header spells it.
fn grpc_status_of(reason: ErrorReason) -> (i64, &'static str) {
    match status_of(reason) {
        StatusCode::GATEWAY_TIMEOUT => (4, "4"),
        StatusCode::BAD_REQUEST => (13, "13"),
        StatusCode::FORBIDDEN => (7, "7"),
        _ => (14, "14"),
    }
}

/// How the client asked: the form the proxy's error takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorForm {
    /// An HTTP status with the reason as a plain-text body.
    Http,
    /// A gRPC trailers-only response.
    Grpc,
}

/// The proxy's own answer to a request it could not forward, counted.
pub fn respond(
    ctx: &Arc<ConnCtx>,
    reason: ErrorReason,
    form: ErrorForm,
    method: &'static str,
    started: Instant,
    mut span: Option<RequestSpan>,
) -> Response<ProxyBody> {
    ctx.labels.error(&ctx.common.instruments, reason);
    if let Some(span) = span.as_mut() {
        span.weft_error(reason.as_str());
        if form == ErrorForm::Grpc {
            span.grpc_status(grpc_status_of(reason).0);
        }
    }
    let (status, body) = match form {
        ErrorForm::Http => (status_of(reason), reason.as_str().as_bytes()),
        ErrorForm::Grpc => (StatusCode::OK, &b""[..]),
    };
    let body = ProxyBody::fixed(
        Bytes::from_static(body),
        Completion {
            ctx: ctx.clone(),
            method,
            status: status.as_u16(),
            started,
            lease: None,
            tls: ctx.client_tls,
            span,
        },
    );
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        X_WEFT_ERROR.clone(),
        HeaderValue::from_static(reason.as_str()),
    );
    match form {
        ErrorForm::Http => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        ErrorForm::Grpc => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(
                GRPC_STATUS.clone(),
                HeaderValue::from_static(grpc_status_of(reason).1),
            );
            headers.insert(
                GRPC_MESSAGE.clone(),
                HeaderValue::from_static(reason.as_str()),
            );
        }
    }
    resp
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
