//! Responses the proxy makes itself: 502 when the upstream could not be reached or
//! failed under the request, 503 when the service has no endpoints or every one is
//! ejected by the circuit breaker, 504 when the request timed out, 400 when the
//! client's body broke off while the proxy read it for a retry. Each names its reason in `x-weft-error` (the same word as the
//! `reason` label) and is counted in `weft_proxy_errors_total`; the request is also
//! counted with the status the client saw, like any other.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::body::{Completion, ProxyBody};
use super::ConnCtx;
use crate::error::ErrorReason;

/// The header naming why the proxy answered itself.
pub static X_WEFT_ERROR: HeaderName = HeaderName::from_static("x-weft-error");

/// The status a proxy-made error is answered with.
pub fn status_of(reason: ErrorReason) -> StatusCode {
    match reason {
        ErrorReason::NoEndpoints | ErrorReason::Overload | ErrorReason::AllEjected => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorReason::ClientBody => StatusCode::BAD_REQUEST,
        ErrorReason::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        // Connect failures (refused, timed out, unreachable), resets, bad responses.
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The proxy's own answer to a request it could not forward, counted.
pub fn respond(
    ctx: &Arc<ConnCtx>,
    reason: ErrorReason,
    method: &'static str,
    started: Instant,
) -> Response<ProxyBody> {
    ctx.labels.error(&ctx.common.instruments, reason);
    let status = status_of(reason);
    let body = ProxyBody::fixed(
        Bytes::from_static(reason.as_str().as_bytes()),
        Completion {
            ctx: ctx.clone(),
            method,
            status: status.as_u16(),
            started,
            lease: None,
        },
    );
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        X_WEFT_ERROR.clone(),
        HeaderValue::from_static(reason.as_str()),
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}
