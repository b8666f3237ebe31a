//! One request through the proxy: drop hop-by-hop headers, pick an endpoint, send
//! over a pooled connection of the downstream's protocol, retry what the policy
//! allows, all within the request timeout, and stream the response back. An HTTP/1
//! upgrade (WebSocket) that the upstream accepts with 101 becomes a byte tunnel
//! between the two upgraded connections. Failures become the proxy's own
//! 400/502/503/504.
//!
//! Retries (services only; inbound traffic has one application to go to), of
//! HTTP/1.1 and HTTP/2 (h2c, gRPC) alike:
//! - a request that was never sent (connect failure, or a fresh connection that
//!   closed before taking it) is retried whatever its method, when `on` has
//!   `connect-failure` (`unsent`);
//! - so is an HTTP/2 request the upstream refused before processing it: a stream
//!   reset with `REFUSED_STREAM`, or above the last stream id of the upstream's
//!   GOAWAY (`refused`; RFC 9113, section 8.7);
//! - one that a meshed endpoint's sidecar answered with its own 502/503 saying its
//!   application could not be reached (`x-weft-error: connect_refused`,
//!   `connect_timeout` or `connect_error`) never reached the application either,
//!   and is retried whatever its method (`app_unreachable`). Only a meshed
//!   endpoint's answer is read that way: a weft sidecar removes `x-weft-error`
//!   from its application's responses, so the header there can only be the
//!   sidecar's own;
//! - one that was sent is retried only when its method is idempotent: on a reset
//!   (`reset`; a meshed endpoint's sidecar answering 502 `upstream_reset`, its
//!   application having reset under the request, counts as one) or a listed 5xx
//!   status (`503`, `gateway-error`);
//! - a request that was sent is sent again from a copy of its body kept as it
//!   streams (at most [`MAX_REPLAY_BODY`]; a gRPC body, which has no length, too),
//!   so a body larger than that is only retried when it was never sent;
//! - each retry takes one from the route's [`RetryBudget`](crate::balance::RetryBudget)
//!   and goes to another endpoint when there is one; none beyond `attempts`, none
//!   past the request timeout (which covers every attempt).
//!
//! Each attempt's outcome feeds the circuit breaker and the P2C latency estimate,
//! including an attempt the request timeout cut short; an endpoint found with
//! nothing listening is ejected at once ([`crate::balance::Balancer::observe_unreachable`]).
//! Each retry is counted in `weft_http_retries_total{reason}`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{Completion, ProxyBody};
use super::pool::{EndpointPool, Lease, SendError, SendOpts};
use super::request_body::{Replay, RequestBody, MAX_REPLAY_BODY};
use super::telemetry::method_label;
use super::trace::SpanStart;
use super::{errors, headers, ConnCtx, HttpEndpoint, HttpVersion, ServiceBalancer, Target};
use crate::error::ErrorReason;
use crate::policy::Policy;

/// Proxies one request; never fails (errors are responses).
pub async fn forward(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = method_label(req.method());
    let form = if headers::is_grpc(req.headers()) {
        errors::ErrorForm::Grpc
    } else {
        errors::ErrorForm::Http
    };
    let upgrade = ctx.version == HttpVersion::Http1 && headers::wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    headers::strip(req.headers_mut(), upgrade);
    if ctx.version == HttpVersion::Http1 {
        // Upstream connections are HTTP/1.1 keep-alive whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
    }
    let mut span = ctx.common.tracing.as_ref().and_then(|tracing| {
        tracing.start(
            &mut req,
            SpanStart {
                direction: ctx.labels.direction_kind,
                method,
                version: ctx.version,
                destination: &ctx.labels.destination_name,
                peer_identity: ctx.caller.as_ref().and_then(|c| c.peer()),
            },
        )
    });
    // Inbound: the service's authorization as it is now (the connection may be
    // older than the last edit).
    if ctx.caller.as_ref().is_some_and(|c| !c.allowed()) {
        return Ok(errors::respond(
            &ctx,
            ErrorReason::Unauthorized,
            form,
            method,
            started,
            span,
        ));
    }
    // The service's balancer as discovery says now (the connection may be older).
    let balancer;
    let (upstream, policy) = match &ctx.target {
        Target::Balanced(follow) => {
            balancer = match follow.balancer() {
                Some(b) => b,
                None => {
                    return Ok(errors::respond(
                        &ctx,
                        ErrorReason::NoEndpoints,
                        form,
                        method,
                        started,
                        span,
                    ))
                }
            };
            (Upstream::Balanced(&balancer), balancer.policy)
        }
        Target::Fixed(pool) => (Upstream::Fixed(pool), ctx.common.policy),
    };
    let timeout = policy.timeout;
    let deadline = started + timeout;
    let mut tried = Tried::default();
    let sent = send(&ctx, upstream, &policy, req, upgrade, deadline, &mut tried);
    let sent = tokio::time::timeout(timeout, sent).await;
    if let Some(span) = span.as_mut() {
        span.sent(tried.endpoint, tried.resends);
    }
    let (mut resp, lease, upstream_tls) = match sent {
        Err(_) => {
            return Ok(errors::respond(
                &ctx,
                ErrorReason::RequestTimeout,
                form,
                method,
                started,
                span,
            ));
        }
        Ok(Err(reason)) => return Ok(errors::respond(&ctx, reason, form, method, started, span)),
        Ok(Ok(r)) => r,
    };
    if let Target::Fixed(_) = ctx.target {
        // A fixed target's response (inbound: the local application): only this
        // sidecar may say why it failed a request, since peers trust the header
        // from a meshed endpoint.
        resp.headers_mut().remove(&errors::X_WEFT_ERROR);
    } else if let (Some(span), Some(reason)) =
        (span.as_mut(), resp.headers().get(&errors::X_WEFT_ERROR))
    {
        // The peer sidecar's own answer: why it failed the request.
        span.weft_error(&String::from_utf8_lossy(reason.as_bytes()));
    }
    if let (Some(span), errors::ErrorForm::Grpc) = (span.as_mut(), form) {
        // A trailers-only answer has its status in the head.
        span.grpc_trailers(resp.headers());
    }
    let upgraded = match downstream_upgrade {
        Some(down) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel(&ctx, down, hyper::upgrade::on(&mut resp));
            true
        }
        _ => false,
    };
    headers::strip(resp.headers_mut(), upgraded);
    if ctx.version == HttpVersion::Http1 && !upgraded && ctx.common.draining.load(Ordering::Relaxed)
    {
        // Draining: the client closes this connection after the response and opens
        // its next one elsewhere (or here, while this proxy still accepts). Closing
        // an idle keep-alive connection instead would race the client's next
        // request on it.
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    if ctx.version == HttpVersion::Http1 {
        // The client's connection keeps its own keep-alive, whatever the upstream's
        // version (hyper still answers an HTTP/1.0 client in HTTP/1.0).
        *resp.version_mut() = Version::HTTP_11;
    }
    let tls = ctx.client_tls || upstream_tls;
    let completion = Completion {
        status: resp.status().as_u16(),
        ctx,
        method,
        started,
        // An upgraded connection is a tunnel now, not a pooled connection.
        lease: if upgraded { None } else { lease },
        tls,
        span,
    };
    Ok(resp.map(|body| ProxyBody::upstream(body, completion)))
}

/// Where a request went: the endpoint of its last attempt, and how many times it
/// was sent again (its span's attributes).
#[derive(Debug, Default)]
struct Tried {
    endpoint: Option<std::net::SocketAddr>,
    resends: u32,
}

/// The response head, the HTTP/1 connection it came on, and whether that
/// connection is mutual TLS (the request's `tls` label).
type Sent = (Response<Incoming>, Option<Lease>, bool);

/// Where one request goes: a service's balancer as discovery says now, or a fixed
/// target's pool.
enum Upstream<'a> {
    Balanced(&'a ServiceBalancer),
    Fixed(&'a Arc<EndpointPool>),
}

/// Sends `req` upstream: once (a fixed target), or through the service's balancer
/// with its retries.
async fn send(
    ctx: &ConnCtx,
    upstream: Upstream<'_>,
    policy: &Policy,
    req: Request<Incoming>,
    upgrade: bool,
    deadline: Instant,
    tried: &mut Tried,
) -> Result<Sent, ErrorReason> {
    let opts = SendOpts {
        version: ctx.version,
        connect_timeout: policy.connect_timeout,
        idle_timeout: policy.idle_timeout,
    };
    let balancer = match upstream {
        Upstream::Balanced(b) => b,
        Upstream::Fixed(pool) => {
            tried.endpoint = Some(pool.addr().0);
            return pool
                .send(
                    req.map(RequestBody::Stream),
                    opts,
                    &|| None,
                    &ctx.common.connector,
                )
                .await
                .map(|(resp, lease)| (resp, lease, pool.secured()))
                .map_err(|e| e.reason);
        }
    };
    balancer.budget.deposit();
    let retry = &policy.retries;
    let (parts, body) = req.into_parts();
    // A copy to send again after a failure that happened once the request was sent
    // (kept as the body streams, up to MAX_REPLAY_BODY): with retries that look at
    // such failures, and while the budget could pay for one. Any method when the
    // upstream may say the request was never processed — a meshed endpoint's
    // sidecar answering that its application never got it, or an HTTP/2
    // upstream refusing the stream — otherwise idempotent ones only.
    let idempotent = is_idempotent(&parts.method);
    let keep_copy = retry.attempts > 0
        && !upgrade
        && ((idempotent && (retry.on.reset || retry.on.statuses != 0))
            || (retry.on.connect_failure
                && (balancer.any_meshed() || ctx.version == HttpVersion::H2)))
        && balancer.budget.has_room();
    let (body, replay) = if keep_copy {
        RequestBody::teed(body)
    } else {
        (RequestBody::Stream(body), None)
    };
    let copy = replay.map(|replay| RetryCopy {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        replay,
    });
    let mut req = Request::from_parts(parts, body);
    let mut left = retry.attempts;
    let mut last: Option<&Arc<HttpEndpoint>> = None;
    loop {
        let pick = balancer.pick(last)?;
        tried.endpoint = Some(pick.endpoint.addr().0);
        let attempt = Attempt {
            balancer,
            endpoint: pick.endpoint,
            probe: pick.probe,
            started: Instant::now(),
            deadline,
            done: false,
        };
        balancer.start(pick.endpoint);
        let (again, why) = match pick
            .endpoint
            .conns
            .send(
                req,
                opts,
                &|| balancer.identity(pick.endpoint),
                &ctx.common.connector,
            )
            .await
        {
            Ok((resp, lease)) => {
                let status = resp.status().as_u16();
                let peer = peer_error(&resp).filter(|_| balancer.is_meshed(pick.endpoint));
                match peer {
                    Some(ErrorReason::ConnectRefused) => attempt.finish_unreachable(),
                    // A peer's gRPC-form error is a failure whatever its status.
                    _ => attempt.finish(status < 500 && peer.is_none()),
                }
                let again = match (&copy, peer) {
                    // The application never saw it: safe whatever the method.
                    (
                        Some(copy),
                        Some(
                            ErrorReason::ConnectRefused
                            | ErrorReason::ConnectTimeout
                            | ErrorReason::ConnectError,
                        ),
                    ) if retry.on.connect_failure => Some((copy, "app_unreachable")),
                    (Some(copy), Some(ErrorReason::UpstreamReset))
                        if idempotent && retry.on.reset =>
                    {
                        Some((copy, "reset"))
                    }
                    (Some(copy), _) if idempotent && retry.on.status(status) => {
                        Some((copy, "status"))
                    }
                    _ => None,
                };
                // The budget is asked before the copy is taken: taking it retires
                // this attempt's body, which must go on if its answer stands.
                match again {
                    Some((copy, why))
                        if left > 0
                            && copy.replay.is_replayable()
                            && balancer.budget.withdraw() =>
                    {
                        match copy.request() {
                            Some(req) => {
                                discard(resp, lease);
                                (req, why)
                            }
                            None => return Ok((resp, lease, pick.endpoint.conns.secured())),
                        }
                    }
                    _ => return Ok((resp, lease, pick.endpoint.conns.secured())),
                }
            }
            Err(SendError {
                reason,
                unsent,
                refused,
            }) => {
                if reason == ErrorReason::NoCertificate {
                    // This proxy cannot dial any meshed endpoint: no fault of this
                    // one, and none other would take the request.
                    attempt.abandon();
                    return Err(reason);
                }
                if reason == ErrorReason::ConnectRefused {
                    attempt.finish_unreachable();
                } else {
                    attempt.finish(false);
                }
                if copy.as_ref().is_some_and(|c| c.replay.client_failed()) {
                    // The client's body broke off: nothing the upstream did.
                    return Err(ErrorReason::ClientBody);
                }
                // What to send again: the request handed back, or the copy.
                let replayable = copy.as_ref().is_some_and(|c| c.replay.is_replayable());
                let again = match unsent {
                    // Never sent: safe whatever the method.
                    Some(unsent) if retry.on.connect_failure => Some((Some(unsent), "unsent")),
                    // Refused by the upstream before any processing: the same.
                    None if replayable && refused && retry.on.connect_failure => {
                        Some((None, "refused"))
                    }
                    None if replayable
                        && idempotent
                        && retry.on.reset
                        && reason == ErrorReason::UpstreamReset =>
                    {
                        Some((None, "reset"))
                    }
                    _ => None,
                };
                match again {
                    Some((unsent, why)) if left > 0 && balancer.budget.withdraw() => {
                        match unsent.or_else(|| copy.as_ref().and_then(RetryCopy::request)) {
                            Some(req) => (req, why),
                            None => return Err(reason),
                        }
                    }
                    _ => return Err(reason),
                }
            }
        };
        tracing::debug!(endpoint = %pick.endpoint.addr(), left, why, "retrying");
        ctx.labels.retry(&ctx.common.instruments, why);
        tried.resends += 1;
        left -= 1;
        req = again;
        last = Some(pick.endpoint);
    }
}

/// Why a weft sidecar failed the request itself, when `resp` is its own 502/503
/// (or, for a gRPC call, its own trailers-only error): its application could not
/// be reached (so never received the request), or reset under it. Trusted only
/// from a meshed endpoint (the caller checks).
fn peer_error(resp: &Response<Incoming>) -> Option<ErrorReason> {
    let own = match resp.status() {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => true,
        StatusCode::OK => resp.headers().contains_key("grpc-status"),
        _ => false,
    };
    if !own {
        return None;
    }
    match resp.headers().get(&errors::X_WEFT_ERROR)?.as_bytes() {
        b"connect_refused" => Some(ErrorReason::ConnectRefused),
        b"connect_timeout" => Some(ErrorReason::ConnectTimeout),
        b"connect_error" => Some(ErrorReason::ConnectError),
        b"upstream_reset" => Some(ErrorReason::UpstreamReset),
        _ => None,
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What a retry sends again.
struct RetryCopy {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    replay: Replay,
}

impl RetryCopy {
    /// The request once more (retiring the previous attempt's body); `None` when
    /// its body can no longer be sent again.
    fn request(&self) -> Option<Request<RequestBody>> {
        let body = self.replay.body()?;
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        Some(r)
    }
}

/// One attempt on one endpoint, reported to the balancer when it ends — also when
/// the request timeout drops it unfinished (a failure: the endpoint was too slow).
struct Attempt<'a> {
    balancer: &'a ServiceBalancer,
    endpoint: &'a Arc<HttpEndpoint>,
    probe: bool,
    started: Instant,
    deadline: Instant,
    done: bool,
}

impl Attempt<'_> {
    fn finish(mut self, ok: bool) {
        self.done = true;
        self.balancer.end(self.endpoint);
        self.balancer
            .observe(self.endpoint, self.probe, ok, self.started.elapsed());
    }

    /// Nothing listens at the endpoint (or behind its sidecar): out at once.
    fn finish_unreachable(mut self) {
        self.done = true;
        self.balancer.end(self.endpoint);
        self.balancer
            .observe_unreachable(self.endpoint, self.probe, self.started.elapsed());
    }

    /// Nothing was tried: no verdict on the endpoint.
    fn abandon(mut self) {
        self.done = true;
        self.balancer.end(self.endpoint);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.balancer.end(self.endpoint);
        // Dropped by the request timeout: a failure. Dropped because the client went
        // away: no verdict on the endpoint.
        if Instant::now() + Duration::from_millis(1) >= self.deadline {
            self.balancer
                .observe(self.endpoint, self.probe, false, self.started.elapsed());
        }
    }
}

/// A response that will be retried: its body is read and thrown away in the
/// background (at most [`MAX_REPLAY_BODY`], for one second) so that its HTTP/1
/// connection can go back to the pool.
fn discard(resp: Response<Incoming>, lease: Option<Lease>) {
    let Some(lease) = lease else { return };
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let read = async {
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.ok()?.data_ref() {
                    n += d.len() as u64;
                    if n > MAX_REPLAY_BODY {
                        return None;
                    }
                }
            }
            Some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(1), read).await {
            lease.release();
        }
    });
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
