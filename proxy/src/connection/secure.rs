//! Mutual TLS at the server side of a connection (ARCHITECTURE.md, Mutual TLS):
//! an inbound or tunnelled connection that opens with a peer sidecar's handshake
//! is taken under TLS, anything else is served as it came or, for a service in
//! `mtls: strict`, refused. Failures are counted and the socket reset.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::route::Routing;
use crate::addr::Direction;
use crate::error::ErrorReason;
use crate::mtls::handshake::{self, Hello};
use crate::mtls::Credentials;
use crate::routes::MtlsMode;
use crate::state::Shared;
use crate::tcp::relay;
use crate::tcp::stream::Stream;
use crate::tunnel;

/// An inbound connection to this pod's application (`Routing::Local`, the only
/// kind a peer sidecar's mutual TLS can arrive as; the caller keeps every other one
/// plain without calling this): one that opens with a peer sidecar's handshake (a
/// ClientHello offering weft's ALPN), while this proxy holds a certificate, is
/// taken under mutual TLS; anything else stays as it came, unless the pod's service
/// is in `mtls: strict`. `None`: the connection was refused or its handshake failed
/// (counted, and the socket reset).
pub async fn take_inbound(shared: &Shared, client: TcpStream, routing: &Routing) -> Option<Stream> {
    debug_assert!(matches!(routing, Routing::Local { .. }));
    let credentials = shared.identity.tls().current();
    let hello = match &credentials {
        Some(_) => handshake::peek_hello(&client, routing.speculate_after())
            .await
            .unwrap_or(Hello::Other),
        None => Hello::Other,
    };
    match (hello, credentials) {
        (Hello::Mesh, Some(credentials)) => accept_mesh_tls(shared, client, credentials).await,
        _ => plaintext_allowed(shared, client),
    }
}

/// A connection that is no peer sidecar's mutual TLS: served, or refused (reset
/// and counted as `plaintext_refused`) when the pod's service is `mtls: strict`.
fn plaintext_allowed(shared: &Shared, client: TcpStream) -> Option<Stream> {
    if shared.routes.load().mtls_mode(&shared.own_service) != MtlsMode::Strict {
        return Some(Stream::Plain(client));
    }
    tracing::debug!(peer = ?client.peer_addr().ok(), "plaintext refused: mtls strict");
    shared.metrics.error(
        Direction::Inbound,
        &shared.own_service,
        ErrorReason::PlaintextRefused,
    );
    relay::reset(&client);
    None
}

/// Takes a peer sidecar's handshake on `client`; a failure is counted as
/// `tls_handshake` and the socket reset.
async fn accept_mesh_tls(
    shared: &Shared,
    client: TcpStream,
    credentials: Arc<Credentials>,
) -> Option<Stream> {
    let peer = client.peer_addr().ok();
    match handshake::accept(credentials.server_config(), client).await {
        Ok(stream) => Some(stream),
        Err((e, socket)) => {
            tracing::debug!(?peer, error = %e, "mutual TLS handshake refused");
            if let Some(socket) = &socket {
                relay::reset(socket);
            }
            shared.metrics.error(
                Direction::Inbound,
                &shared.own_service,
                ErrorReason::TlsHandshake,
            );
            None
        }
    }
}

/// A connection to the tunnel port: a peer holding a certificate opens it under
/// mutual TLS; plaintext from one without is still served, unless the service is
/// `mtls: strict`. (A sidecar sends its ClientHello or preface at once: the wait
/// for a silent one is the preface's.)
pub async fn take_tunnelled(shared: &Shared, client: TcpStream) -> Option<Stream> {
    match shared.identity.tls().current() {
        Some(credentials)
            if handshake::peek_hello(&client, tunnel::listen::PREFACE_TIMEOUT)
                .await
                .is_ok_and(|h| h == Hello::Mesh) =>
        {
            accept_mesh_tls(shared, client, credentials).await
        }
        _ => plaintext_allowed(shared, client),
    }
}
