//! Pooled connections to one endpoint, shared by every downstream connection that
//! balances onto it.
//!
//! - HTTP/1.1: a LIFO list of idle keep-alive connections. A connection is taken out
//!   for one request and put back when that request's response body has ended (see
//!   [`Lease`]), so the list holds only connections free for a new request; a closed
//!   one is dropped when met. At most [`MAX_IDLE_H1`] are kept.
//! - HTTP/2 (h2c prior knowledge): one multiplexed connection, whose handle is cloned
//!   per request; replaced when it closes.
//!
//! A request that a pooled connection did not accept (it closed between being
//! pooled and being used: the upstream's idle timeout, or an HTTP/2 upstream's
//! GOAWAY) is sent again on a fresh connection — it was never written, so this is
//! safe for any method. A request that was never sent for any other reason (the
//! connection could not be made) is handed back in [`SendError::unsent`], so the
//! caller may try another endpoint. An HTTP/2 request the upstream refused after
//! it was sent — `REFUSED_STREAM`, or a stream above the last one a GOAWAY says
//! the upstream processes — was never processed either (RFC 9113, section 8.7):
//! [`SendError::refused`] says so, so the caller may send its copy elsewhere.
//! An idle HTTP/1 connection older than the policy's idle timeout is closed when
//! met instead of being used.
//!
//! A pool is what the balancer keeps per endpoint for HTTP ([`Conns`]): the
//! endpoint's health lives beside it in [`crate::balance::Endpoint`], shared with
//! the TCP path. Inbound traffic (one local application address) has pools of its
//! own in [`InboundPools`], outside any balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::request_body::RequestBody;
use super::HttpVersion;
use crate::addr::EndpointAddr;
use crate::balance::Conns;
use crate::error::ErrorReason;
use crate::tcp::connect::{Connector, Upstream};

/// Idle HTTP/1 connections kept per endpoint.
pub const MAX_IDLE_H1: usize = 256;

/// Idle HTTP/1 connections kept per endpoint once a load has ended
/// ([`EndpointPool::shed_idle`]).
pub const KEEP_IDLE_H1_AFTER_LOAD: usize = 2;

type H1 = http1::SendRequest<RequestBody>;
type H2 = http2::SendRequest<RequestBody>;

/// The pooled connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: EndpointAddr,
    /// Idle connections and when each was returned.
    h1_idle: Mutex<Vec<(H1, Instant)>>,
    h2: Mutex<Option<H2>>,
    /// Whether the last connection made was mutual TLS: the `tls` label of the
    /// requests it carries. Pooled connections keep the security they were made
    /// with, so this is exact but while a peer gains or loses an identity.
    secured: AtomicBool,
}

/// The balancer keeps a pool per endpoint (made empty; dialled on first request).
impl Conns for Arc<EndpointPool> {
    fn new(addr: EndpointAddr) -> Self {
        Arc::new(EndpointPool::new(addr))
    }
}

/// Inbound pools (one per local application address) kept at most; past this, the
/// ones no connection uses are dropped.
const MAX_INBOUND_POOLS: usize = 1024;

/// The pools of local application addresses (inbound traffic).
#[derive(Debug, Default)]
pub struct InboundPools {
    pools: Mutex<HashMap<EndpointAddr, Arc<EndpointPool>>>,
}

impl InboundPools {
    /// Calls `f` with each pool.
    pub fn each(&self, mut f: impl FnMut(&EndpointPool)) {
        for pool in lock(&self.pools).values() {
            f(pool);
        }
    }

    /// The pool of a local application address.
    pub fn get(&self, addr: EndpointAddr) -> Arc<EndpointPool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(&addr) {
            return p.clone();
        }
        if pools.len() >= MAX_INBOUND_POOLS {
            pools.retain(|_, p| Arc::strong_count(p) > 1);
        }
        let p = Arc::new(EndpointPool::new(addr));
        pools.insert(addr, p.clone());
        p
    }
}

/// Names the identity a new connection to an endpoint demands of its sidecar
/// (`None`: plaintext); asked per connection made, not per request.
pub type PeerIdentity<'a> = &'a (dyn Fn() -> Option<&'a Arc<str>> + Sync);

/// Why a request could not be sent, and the request itself when it never left.
#[derive(Debug)]
pub struct SendError {
    pub reason: ErrorReason,
    pub unsent: Option<Request<RequestBody>>,
    /// Sent, but refused by the upstream before any processing (HTTP/2).
    pub refused: bool,
}

impl SendError {
    /// `req` could not be sent at all (no connection could be made).
    fn never_sent(reason: ErrorReason, req: Request<RequestBody>) -> Self {
        SendError {
            reason,
            unsent: Some(req),
            refused: false,
        }
    }
}

/// How to reach the endpoint for one request.
#[derive(Clone, Copy, Debug)]
pub struct SendOpts {
    pub version: HttpVersion,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// An HTTP/1 connection lent to one request; [`Lease::release`] returns it to the
/// pool once the response has been read to its end.
#[derive(Debug)]
pub struct Lease {
    sender: H1,
    pool: Arc<EndpointPool>,
}

impl Lease {
    /// Returns the connection to its pool (dropped instead when it closed or the
    /// pool is full).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.pool.h1_idle);
        if idle.len() < MAX_IDLE_H1 {
            idle.push((self.sender, Instant::now()));
        }
    }
}

impl EndpointPool {
    /// Whether its connections are mutual TLS (see the field).
    pub fn secured(&self) -> bool {
        self.secured.load(Ordering::Relaxed)
    }

    pub fn new(addr: EndpointAddr) -> Self {
        EndpointPool {
            addr,
            h1_idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            secured: AtomicBool::new(false),
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> EndpointAddr {
        self.addr
    }

    /// Closes the idle HTTP/1 connections but the `keep` most recently returned.
    /// After a load of 32 concurrent requests, the pool holds 32 idle connections
    /// for minutes, each with hyper's read and write buffers: memory the next
    /// burst can make again for the price of a connect. Returns how many closed.
    pub fn shed_idle(&self, keep: usize) -> usize {
        let mut idle = lock(&self.h1_idle);
        let shed = idle.len().saturating_sub(keep);
        // Oldest first: the most recently returned stay (as `take_h1` prefers them).
        idle.drain(..shed);
        if idle.capacity() > 2 * keep.max(1) {
            idle.shrink_to(keep);
        }
        shed
    }

    /// Sends `req` over a pooled (or new) connection of `version`; returns the
    /// response head and, for HTTP/1, the lease to release when the body has ended.
    ///
    /// `peer`: the identity of the endpoint's sidecar, when discovery names one,
    /// asked only when a connection is made: it is made under mutual TLS demanding
    /// it (when this proxy holds a certificate). Pooled connections are kept as
    /// they were made.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        opts: SendOpts,
        peer: PeerIdentity<'_>,
        connector: &Connector,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        match opts.version {
            HttpVersion::Http1 => self.send_h1(req, opts, peer, connector).await,
            HttpVersion::H2 => self
                .send_h2(req, opts, peer, connector)
                .await
                .map(|r| (r, None)),
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        opts: SendOpts,
        peer: PeerIdentity<'_>,
        connector: &Connector,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        loop {
            let pooled = self.take_h1(opts.idle_timeout);
            let is_pooled = pooled.is_some();
            let mut sender = match pooled {
                Some(s) => s,
                // Boxed: dialling (and a TLS handshake) is the rare path; inline, its
                // state would make every request's future larger, copied as it moves.
                None => {
                    match Box::pin(self.connect_h1(connector, opts.connect_timeout, peer)).await {
                        Ok(s) => s,
                        Err(reason) => return Err(SendError::never_sent(reason, req)),
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender,
                        pool: self.clone(),
                    };
                    return Ok((resp, Some(lease)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if is_pooled => req = unsent,
                    unsent => {
                        return Err(SendError {
                            reason: send_error(e.error()),
                            unsent,
                            refused: false,
                        })
                    }
                },
            }
        }
    }

    async fn send_h2(
        &self,
        mut req: Request<RequestBody>,
        opts: SendOpts,
        peer: PeerIdentity<'_>,
        connector: &Connector,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let shared = self.h2_handle();
            let is_pooled = shared.is_some();
            let mut sender = match shared {
                Some(s) => s,
                // Boxed, as in `send_h1`.
                None => {
                    match Box::pin(self.connect_h2(connector, opts.connect_timeout, peer)).await {
                        Ok(s) => s,
                        Err(reason) => return Err(SendError::never_sent(reason, req)),
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if is_pooled => {
                        self.forget_h2(&sender);
                        req = unsent;
                    }
                    unsent => {
                        return Err(SendError {
                            reason: send_error(e.error()),
                            refused: unsent.is_none() && refused_stream(e.error()),
                            unsent,
                        })
                    }
                },
            }
        }
    }

    /// The most recently returned connection that is ready for a request. One that
    /// is not ready yet (still sending the body of a request whose response came
    /// early, or about to close) is left for later rather than waited for: waiting
    /// could hold this request behind another client's upload.
    fn take_h1(&self, idle_timeout: Duration) -> Option<H1> {
        let mut idle = lock(&self.h1_idle);
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        idle.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < idle_timeout);
        let i = idle.iter().rposition(|(s, _)| s.is_ready())?;
        Some(idle.remove(i).0)
    }

    async fn connect_h1(
        &self,
        connector: &Connector,
        timeout: Duration,
        peer: PeerIdentity<'_>,
    ) -> Result<H1, ErrorReason> {
        // Asked first: without a certificate, a peer that expects mutual TLS is
        // not dialled at all.
        let tls = connector.tls_for(peer())?;
        let Upstream { stream, own } = connector
            .connect(self.addr, timeout)
            .await?
            .secure(tls)
            .await?;
        self.secured.store(stream.is_tls(), Ordering::Relaxed);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                tracing::debug!(endpoint = %self.addr, error = %e, "HTTP/1 handshake");
                ErrorReason::ConnectError
            })?;
        let endpoint = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/1 connection");
            }
            drop(own);
        });
        Ok(sender)
    }

    fn h2_handle(&self) -> Option<H2> {
        let slot = lock(&self.h2);
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget_h2(&self, dead: &H2) {
        let mut slot = lock(&self.h2);
        if slot.as_ref().is_some_and(|s| s.is_closed()) || dead.is_closed() {
            *slot = None;
        }
    }

    async fn connect_h2(
        &self,
        connector: &Connector,
        timeout: Duration,
        peer: PeerIdentity<'_>,
    ) -> Result<H2, ErrorReason> {
        // Asked first: without a certificate, a peer that expects mutual TLS is
        // not dialled at all.
        let tls = connector.tls_for(peer())?;
        let Upstream { stream, own } = connector
            .connect(self.addr, timeout)
            .await?
            .secure(tls)
            .await?;
        self.secured.store(stream.is_tls(), Ordering::Relaxed);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                tracing::debug!(endpoint = %self.addr, error = %e, "HTTP/2 handshake");
                ErrorReason::ConnectError
            })?;
        let endpoint = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = ?e, "upstream HTTP/2 connection");
            }
            drop(own);
        });
        let mut slot = lock(&self.h2);
        // Two requests may have dialled at once; the first to finish is shared, the
        // other connection serves its one request and closes when idle.
        if slot.as_ref().is_none_or(|s| s.is_closed()) {
            *slot = Some(sender.clone());
        }
        Ok(sender)
    }
}

/// Why sending failed, as a reason label: a malformed response, or the connection
/// failing under the request.
fn send_error(e: &hyper::Error) -> ErrorReason {
    tracing::debug!(error = ?e, "upstream request failed");
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ErrorReason::BadUpstreamResponse
    } else {
        ErrorReason::UpstreamReset
    }
}

/// Whether an HTTP/2 upstream refused the request's stream without processing
/// it: reset with `REFUSED_STREAM`, or failed by the upstream's GOAWAY because its
/// id is above the GOAWAY's last stream id (h2 reports exactly those streams as a
/// remote GOAWAY error; the ones at or below it go on, or fail as resets or I/O
/// errors).
fn refused_stream(e: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()) else {
        return false;
    };
    h2.is_remote()
        && (h2.is_go_away() || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shedding_closes_the_idle_connections_but_the_most_recent() {
        let pool = EndpointPool::new(EndpointAddr("10.0.0.1:80".parse().expect("addr")));
        // Five idle HTTP/1 connections, each over an in-memory pipe whose far end
        // is held open (nothing closes them but the pool).
        let mut conns = Vec::new();
        for _ in 0..5 {
            let (near, far) = tokio::io::duplex(1024);
            let (sender, conn) = http1::Builder::new()
                .handshake::<_, RequestBody>(TokioIo::new(near))
                .await
                .expect("handshake");
            conns.push((tokio::spawn(conn), far));
            lock(&pool.h1_idle).push((sender, Instant::now()));
        }
        assert_eq!(pool.shed_idle(2), 3);
        assert_eq!(lock(&pool.h1_idle).len(), 2);
        // The three oldest close (their connection tasks end), the two newest stay.
        for (task, _far) in conns.drain(..3) {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("closed once shed")
                .expect("task")
                .expect("a clean close");
        }
        tokio::task::yield_now().await;
        assert!(conns.iter().all(|(task, _)| !task.is_finished()));
        assert_eq!(pool.shed_idle(2), 0, "nothing more to shed");
    }
}
