//! One request through the proxy: pick an endpoint (round robin per request), drop
//! hop-by-hop headers, send over a pooled connection of the downstream's protocol
//! within the request timeout, and stream the response back. An HTTP/1 upgrade
//! (WebSocket) that the upstream accepts with 101 becomes a byte tunnel between the
//! two upgraded connections. Failures become the proxy's own 502/503/504.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{Completion, ProxyBody};
use super::telemetry::method_label;
use super::{errors, headers, ConnCtx, HttpVersion};
use crate::metrics::ErrorReason;

/// Default upper bound on a request, from its arrival to the response head
/// (connecting included), until per-service policy sets it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Proxies one request; never fails (errors are responses).
pub async fn forward(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = method_label(req.method());
    let Some(pool) = ctx.target.pick() else {
        return Ok(errors::respond(
            &ctx,
            ErrorReason::NoEndpoints,
            method,
            started,
        ));
    };
    let upgrade = ctx.version == HttpVersion::Http1 && headers::wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    headers::strip(req.headers_mut(), upgrade);
    if ctx.version == HttpVersion::Http1 {
        // Upstream connections are HTTP/1.1 keep-alive whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
    }
    let sent = tokio::time::timeout(
        ctx.request_timeout,
        pool.send(req, ctx.version, &ctx.connector),
    );
    let (mut resp, lease) = match sent.await {
        Err(_) => {
            return Ok(errors::respond(
                &ctx,
                ErrorReason::RequestTimeout,
                method,
                started,
            ));
        }
        Ok(Err(reason)) => return Ok(errors::respond(&ctx, reason, method, started)),
        Ok(Ok(r)) => r,
    };
    let upgraded = match downstream_upgrade {
        Some(down) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel(&ctx, down, hyper::upgrade::on(&mut resp));
            true
        }
        _ => false,
    };
    headers::strip(resp.headers_mut(), upgraded);
    if ctx.version == HttpVersion::Http1 {
        // The client's connection keeps its own keep-alive, whatever the upstream's
        // version (hyper still answers an HTTP/1.0 client in HTTP/1.0).
        *resp.version_mut() = Version::HTTP_11;
    }
    let completion = Completion {
        status: resp.status().as_u16(),
        ctx,
        method,
        started,
        // An upgraded connection is a tunnel now, not a pooled connection.
        lease: if upgraded { None } else { lease },
    };
    Ok(resp.map(|body| ProxyBody::upstream(body, completion)))
}

/// Copies bytes between the upgraded client and upstream connections once both
/// upgrades complete; the connection's task waits for it before closing.
fn tunnel(ctx: &ConnCtx, down: OnUpgrade, up: OnUpgrade) {
    let task = tokio::spawn(async move {
        match tokio::join!(down, up) {
            (Ok(down), Ok(up)) => {
                let mut down = TokioIo::new(down);
                let mut up = TokioIo::new(up);
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            (down, up) => {
                tracing::debug!(down = ?down.err(), up = ?up.err(), "upgrade failed");
            }
        }
    });
    ctx.add_tunnel(task);
}
