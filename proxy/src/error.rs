//! Why the proxy failed something itself, and how a connection ended: the words the
//! `reason` label of `weft_proxy_errors_total`, the `x-weft-error` header and the
//! `end` column of `/connections` show. One enum for every path (TCP, HTTP, accept),
//! so a reason is spelled once.

use std::fmt;
use std::io;

/// Why the proxy failed a connection or request itself (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// The original destination could not be recovered.
    NoOrigDst,
    /// The connection reached the proxy without having been redirected to it, or the
    /// proxy's own upstream connection came back to it.
    Loop,
    /// The upstream refused the connection.
    ConnectRefused,
    /// The upstream did not answer within the connect timeout.
    ConnectTimeout,
    /// Any other connect error (unreachable, ...).
    ConnectError,
    /// The proxy is at its connection limit.
    Overload,
    /// The destination is a service with no endpoints.
    NoEndpoints,
    /// HTTP: the upstream connection failed under a request (reset, closed early).
    UpstreamReset,
    /// HTTP: the upstream's response could not be parsed.
    BadUpstreamResponse,
    /// HTTP: no response head within the request timeout.
    RequestTimeout,
    /// Every endpoint of the service is ejected by the circuit breaker.
    AllEjected,
    /// HTTP: the client failed while sending a request body the proxy was reading.
    ClientBody,
    /// A connection to the tunnel port sent no valid preface (or asked for a port
    /// the tunnel does not reach).
    BadTunnelPreface,
    /// Opaque TCP: no byte either way for the idle timeout; closed by the proxy.
    TcpIdleTimeout,
    /// Opaque TCP: half-closed, and no byte for the half-close timeout; closed by
    /// the proxy.
    HalfCloseTimeout,
    /// Opaque TCP: the kernel gave a peer up (`ETIMEDOUT`: keepalive probes or the
    /// user timeout went unanswered): it vanished without a FIN or RST.
    PeerUnresponsive,
    /// HTTP/1: a client started a request head and did not finish it within the
    /// header-read timeout (a slow or slowloris client); told 408 and closed.
    HeaderReadTimeout,
    /// A mutual TLS handshake between sidecars failed: the peer's certificate is
    /// not from the mesh CA or not for the identity discovery names, or the peer
    /// broke off.
    TlsHandshake,
    /// Plaintext (or a TLS that is no peer sidecar's) on the inbound or tunnel port
    /// of a service in `mtls: strict`: reset.
    PlaintextRefused,
    /// The caller may not reach this port of the service (its authorization
    /// entries allow no such identity): 403 per HTTP request, a reset for TCP.
    Unauthorized,
    /// This proxy runs `--identity` but holds no valid certificate (none issued
    /// yet, or it expired): it does not dial a peer that expects mutual TLS.
    NoCertificate,
}

impl ErrorReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::NoOrigDst => "no_original_destination",
            ErrorReason::Loop => "loop",
            ErrorReason::ConnectRefused => "connect_refused",
            ErrorReason::ConnectTimeout => "connect_timeout",
            ErrorReason::ConnectError => "connect_error",
            ErrorReason::Overload => "overload",
            ErrorReason::NoEndpoints => "no_endpoints",
            ErrorReason::UpstreamReset => "upstream_reset",
            ErrorReason::BadUpstreamResponse => "bad_upstream_response",
            ErrorReason::RequestTimeout => "request_timeout",
            ErrorReason::AllEjected => "all_endpoints_ejected",
            ErrorReason::ClientBody => "client_body_error",
            ErrorReason::BadTunnelPreface => "bad_tunnel_preface",
            ErrorReason::TcpIdleTimeout => "tcp_idle_timeout",
            ErrorReason::HalfCloseTimeout => "half_close_timeout",
            ErrorReason::PeerUnresponsive => "peer_unresponsive",
            ErrorReason::HeaderReadTimeout => "header_read_timeout",
            ErrorReason::TlsHandshake => "tls_handshake",
            ErrorReason::PlaintextRefused => "plaintext_refused",
            ErrorReason::Unauthorized => "unauthorized",
            ErrorReason::NoCertificate => "no_certificate",
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The accepted (application) side.
    Client,
    /// The side the proxy dialled.
    Upstream,
}

/// How a connection ended, shown in `/connections` (its `Display` is the stable
/// word or phrase tests and operators read there).
#[derive(Debug)]
pub enum ConnEnd {
    /// Both directions reached end-of-stream (TCP), or the client closed (HTTP).
    Eof,
    /// A socket failed (typically a reset); the other side was reset too.
    Failed { side: Side, error: io::Error },
    /// The proxy failed the connection itself (no upstream could be connected).
    Refused(ErrorReason),
    /// HTTP: a client did not finish a request head in time and was told 408.
    HeaderTimeout,
    /// Idle past the idle timeout: an HTTP keep-alive connection between requests,
    /// or an opaque one that carried no byte either way (reset on both sides).
    IdleTimeout,
    /// Opaque: one direction had ended and the other carried no byte for the
    /// half-close timeout (reset on both sides).
    HalfCloseTimeout,
    /// HTTP: hyper ended the connection with an error.
    Http(hyper::Error),
    /// The task ended without saying why (it was aborted).
    Aborted,
}

impl ConnEnd {
    /// The error an HTTP connection that ended this way is counted as: a client
    /// cut off at the header-read timeout (slowloris shows here, not only in
    /// `/connections`). An idle keep-alive connection closed between requests is
    /// no error.
    pub fn http_error(&self) -> Option<ErrorReason> {
        match self {
            ConnEnd::HeaderTimeout => Some(ErrorReason::HeaderReadTimeout),
            _ => None,
        }
    }

    /// The error an opaque connection that ended this way is counted as: a bound
    /// the proxy enforced (idle, half-close), or a peer the kernel gave up on
    /// (`ETIMEDOUT`: keepalive or the user timeout went unanswered).
    pub fn opaque_error(&self) -> Option<ErrorReason> {
        match self {
            ConnEnd::IdleTimeout => Some(ErrorReason::TcpIdleTimeout),
            ConnEnd::HalfCloseTimeout => Some(ErrorReason::HalfCloseTimeout),
            ConnEnd::Failed { error, .. } if error.kind() == io::ErrorKind::TimedOut => {
                Some(ErrorReason::PeerUnresponsive)
            }
            _ => None,
        }
    }
}

impl fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnEnd::Eof => f.write_str("eof"),
            ConnEnd::Failed { side, error } => {
                let who = match side {
                    Side::Client => "client",
                    Side::Upstream => "upstream",
                };
                match error.kind() {
                    io::ErrorKind::ConnectionReset => write!(f, "reset_by_{who}"),
                    io::ErrorKind::BrokenPipe => write!(f, "broken_pipe_{who}"),
                    _ => write!(f, "error_{who}: {error}"),
                }
            }
            ConnEnd::Refused(reason) => f.write_str(reason.as_str()),
            ConnEnd::HeaderTimeout => f.write_str("header_timeout_408"),
            ConnEnd::IdleTimeout => f.write_str("idle_timeout"),
            ConnEnd::HalfCloseTimeout => f.write_str("half_close_timeout"),
            ConnEnd::Http(e) => write!(f, "http_error: {e}"),
            ConnEnd::Aborted => f.write_str("aborted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_words_are_the_ones_connections_shows() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        let cases = [
            (ConnEnd::Eof, "eof"),
            (
                ConnEnd::Failed {
                    side: Side::Client,
                    error: reset,
                },
                "reset_by_client",
            ),
            (
                ConnEnd::Failed {
                    side: Side::Upstream,
                    error: pipe,
                },
                "broken_pipe_upstream",
            ),
            (ConnEnd::Refused(ErrorReason::NoEndpoints), "no_endpoints"),
            (ConnEnd::HeaderTimeout, "header_timeout_408"),
            (ConnEnd::IdleTimeout, "idle_timeout"),
            (ConnEnd::Aborted, "aborted"),
        ];
        for (end, word) in cases {
            assert_eq!(end.to_string(), word);
        }
    }

    #[test]
    fn bounds_and_dead_peers_are_counted_other_ends_are_not() {
        let failed = |kind| ConnEnd::Failed {
            side: Side::Upstream,
            error: io::Error::from(kind),
        };
        let cases = [
            (ConnEnd::IdleTimeout, Some(ErrorReason::TcpIdleTimeout)),
            (
                ConnEnd::HalfCloseTimeout,
                Some(ErrorReason::HalfCloseTimeout),
            ),
            (
                failed(io::ErrorKind::TimedOut),
                Some(ErrorReason::PeerUnresponsive),
            ),
            (failed(io::ErrorKind::ConnectionReset), None),
            (ConnEnd::Eof, None),
        ];
        for (end, reason) in cases {
            assert_eq!(end.opaque_error(), reason, "{end}");
        }
    }
}
