//! Noticing dead peers: TCP keepalive and `TCP_USER_TIMEOUT` on every socket the
//! proxy relays (the client's, from accept, and the upstream's, from connect).
//! Accepted sockets get them from their listener, which is given them once
//! ([`Liveness::apply_to_listener`]): Linux makes an accepted socket as a copy of
//! its listener, keepalive settings, user timeout and `TCP_NODELAY` included, so
//! each accept saves five `setsockopt` calls.
//!
//! A peer that vanishes without a FIN or RST (its node powered off, its link cut)
//! leaves an idle socket open forever and a socket with unacknowledged data (a FIN
//! included) retransmitting for the kernel's full time, about 15 minutes. Keepalive
//! probes an idle connection after [`Liveness::keepalive`] (on by default); the
//! user timeout, when set (`--tcp-user-timeout`), bounds how long sent data (and
//! keepalive probes) may go unacknowledged before the kernel aborts the
//! connection, which the relay then sees as an error and counts.
//!
//! The user timeout is off by default: Linux also aborts a connection whose peer
//! keeps a zero window past it, so a reader that pauses (back-pressure, for
//! minutes) would lose its connection through the mesh. A half-closed connection
//! stuck retransmitting its FIN is bounded without it, by the relay's half-close
//! timeout.

use std::time::Duration;

use std::os::fd::AsFd;

use socket2::{SockRef, TcpKeepalive};

/// Default time a connection is idle before the first keepalive probe.
pub const KEEPALIVE: Duration = Duration::from_secs(60);
/// Between keepalive probes at most; a shorter keepalive time probes at its own
/// pace (`--tcp-keepalive 5s`: a probe every 5 s), so the setting alone says how
/// soon an idle dead peer is noticed: about the time times 1 + probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the peer is declared dead (without a user timeout).
const KEEPALIVE_PROBES: u32 = 3;

/// The socket options that notice dead peers; `None` leaves the kernel's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    pub keepalive: Option<Duration>,
    pub user_timeout: Option<Duration>,
}

impl Liveness {
    /// The proxy's defaults: keepalive, no user timeout.
    pub fn defaults() -> Self {
        Liveness {
            keepalive: Some(KEEPALIVE),
            user_timeout: None,
        }
    }

    /// Sets the options on `socket`; a failure (a socket already closed) is not
    /// worth more than a debug line.
    pub fn apply(&self, socket: &impl AsFd) {
        let sock = SockRef::from(socket);
        if let Some(idle) = self.keepalive {
            let probes = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle.min(KEEPALIVE_INTERVAL))
                .with_retries(KEEPALIVE_PROBES);
            if let Err(e) = sock.set_tcp_keepalive(&probes) {
                tracing::debug!(error = %e, "TCP keepalive");
            }
        }
        if let Some(timeout) = self.user_timeout {
            if let Err(e) = sock.set_tcp_user_timeout(Some(timeout)) {
                tracing::debug!(error = %e, "TCP_USER_TIMEOUT");
            }
        }
    }

    /// Sets the options, and `TCP_NODELAY` (the relays write whole messages, and
    /// Nagle would hold a response's last segment back), on a listening socket:
    /// every socket it accepts starts with them.
    pub fn apply_to_listener(&self, listener: &impl AsFd) -> std::io::Result<()> {
        SockRef::from(listener).set_tcp_nodelay(true)?;
        self.apply(listener);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn the_options_reach_the_socket() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let user_timeout = Duration::from_secs(30);
        Liveness {
            user_timeout: Some(user_timeout),
            ..Liveness::defaults()
        }
        .apply(&c);
        assert_options(&c, KEEPALIVE, KEEPALIVE_INTERVAL, user_timeout);
    }

    /// `socket` probes after `idle`, every `interval`, [`KEEPALIVE_PROBES`] times,
    /// with `user_timeout`.
    fn assert_options(
        socket: &TcpStream,
        idle: Duration,
        interval: Duration,
        user_timeout: Duration,
    ) {
        let sock = SockRef::from(socket);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"), idle);
        assert_eq!(
            sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            interval
        );
        assert_eq!(
            sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            KEEPALIVE_PROBES
        );
        assert_eq!(
            sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(user_timeout)
        );
    }

    #[tokio::test]
    async fn accepted_sockets_start_with_their_listeners_options() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let user_timeout = Duration::from_secs(30);
        let short = Duration::from_secs(7);
        Liveness {
            keepalive: Some(short),
            user_timeout: Some(user_timeout),
        }
        .apply_to_listener(&l)
        .expect("listener options");
        let _c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = l.accept().await.expect("accept");
        assert!(SockRef::from(&accepted).tcp_nodelay().expect("TCP_NODELAY"));
        assert_options(&accepted, short, short, user_timeout);
    }

    #[tokio::test]
    async fn a_short_keepalive_probes_at_its_own_pace() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let short = Duration::from_secs(2);
        Liveness {
            keepalive: Some(short),
            user_timeout: None,
        }
        .apply(&c);
        let sock = SockRef::from(&c);
        assert_eq!(sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"), short);
        assert_eq!(sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"), short);
    }

    #[tokio::test]
    async fn none_leaves_the_kernel_defaults() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        Liveness::default().apply(&c);
        let sock = SockRef::from(&c);
        assert!(!sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"), None);
    }
}
