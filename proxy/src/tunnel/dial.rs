//! The client side of the tunnel: the handshake on a socket already connected to a
//! peer sidecar's tunnel port, and what this proxy remembers of peers that speak
//! no tunnel (older sidecars). Which endpoint to dial, the timeout around it and
//! the retry on another endpoint stay with the caller ([`crate::tcp::connect`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::preface::{Answer, Preface, Status, ANSWER_LEN};
use crate::error::ErrorReason;
use crate::tcp::stream::Stream;

/// How long a peer found without a tunnel is dialled directly before the tunnel is
/// tried on it again (it may have been upgraded meanwhile).
pub const NO_TUNNEL_FOR: Duration = Duration::from_secs(30);
/// Peers remembered at most; past it, those that answered are forgotten first (a
/// forgotten peer is only asked again).
const MAX_PEERS: usize = 4096;

/// How the handshake went.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The peer's application accepted: the socket now carries its bytes.
    Connected,
    /// The peer sidecar answered that its application could not be reached (or may
    /// not be, through the tunnel), with the reason its answer gave.
    Refused(ErrorReason),
    /// The socket closed or failed before a whole answer came.
    Broken,
    /// Something answered that is no tunnel of a version this proxy speaks.
    NotTunnel,
}

/// Sends the preface for `port` on `stream` and reads the peer's answer (exactly
/// its length: what follows it belongs to the application). Unbounded in time: the
/// caller bounds the whole connect.
pub async fn handshake(stream: &mut Stream, port: u16) -> Handshake {
    let sent = async {
        stream.write_all(&Preface { port }.encode()).await?;
        // Under TLS, the record goes out on flush.
        stream.flush().await
    };
    if sent.await.is_err() {
        return Handshake::Broken;
    }
    let mut answer = [0u8; ANSWER_LEN];
    if stream.read_exact(&mut answer).await.is_err() {
        // EOF or reset before the whole answer.
        return Handshake::Broken;
    }
    match Answer::decode(&answer) {
        Answer::Status(Status::Connected) => Handshake::Connected,
        Answer::Status(Status::Refused) => Handshake::Refused(ErrorReason::ConnectRefused),
        Answer::Status(Status::Timeout) => Handshake::Refused(ErrorReason::ConnectTimeout),
        Answer::Status(Status::Unauthorized) => Handshake::Refused(ErrorReason::Unauthorized),
        Answer::Status(Status::Error | Status::Forbidden) | Answer::UnknownStatus(_) => {
            Handshake::Refused(ErrorReason::ConnectError)
        }
        Answer::Status(Status::UnsupportedVersion) | Answer::NotTunnel => Handshake::NotTunnel,
    }
}

/// What is known of one peer sidecar's tunnel.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// It answered a handshake: it speaks the tunnel.
    Answered,
    /// It does not (refused the tunnel port, or answered something else): dial it
    /// directly until then.
    Absent { until: Instant },
}

/// The tunnel as this proxy dials it: the peers' port and what each peer (by
/// address: one sidecar per pod address) did.
#[derive(Debug)]
pub struct TunnelClient {
    port: u16,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl TunnelClient {
    /// Dials peers on `port` (the one this proxy's own tunnel listens on: the port
    /// is a mesh-wide convention, as 15006 is).
    pub fn new(port: u16) -> Self {
        TunnelClient {
            port,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The peers' tunnel port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `peer` is to be dialled through the tunnel (not known to lack it).
    pub fn worth_trying(&self, peer: IpAddr) -> bool {
        let mut peers = self.lock();
        match peers.get(&peer) {
            Some(Peer::Absent { until }) if Instant::now() < *until => false,
            Some(Peer::Absent { .. }) => {
                peers.remove(&peer);
                true
            }
            _ => true,
        }
    }

    /// Whether `peer` has answered a handshake before: then a tunnel that breaks
    /// before answering is a failure of that peer, not an older sidecar.
    pub fn answered_before(&self, peer: IpAddr) -> bool {
        matches!(self.lock().get(&peer), Some(Peer::Answered))
    }

    /// `peer` answered a handshake.
    pub fn answered(&self, peer: IpAddr) {
        let mut peers = self.lock();
        if !matches!(peers.get(&peer), Some(Peer::Answered)) {
            make_room(&mut peers);
            peers.insert(peer, Peer::Answered);
        }
    }

    /// `peer` speaks no tunnel but was reached directly: dial it so for
    /// [`NO_TUNNEL_FOR`].
    pub fn absent(&self, peer: IpAddr) {
        let mut peers = self.lock();
        make_room(&mut peers);
        tracing::info!(%peer, "peer sidecar speaks no tunnel; dialling it directly for a while");
        peers.insert(
            peer,
            Peer::Absent {
                until: Instant::now() + NO_TUNNEL_FOR,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bounds the map: expired absences go, then (if still full) every answered peer.
fn make_room(peers: &mut HashMap<IpAddr, Peer>) {
    if peers.len() < MAX_PEERS {
        return;
    }
    let now = Instant::now();
    peers.retain(|_, p| matches!(p, Peer::Absent { until } if now < *until));
    if peers.len() >= MAX_PEERS {
        peers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::preface::{Decoded, PREFACE_HEAD};
    use tokio::net::{TcpListener, TcpStream};

    /// A peer that reads a preface and writes `reply`, then `after` (say, a banner).
    async fn peer(reply: Vec<u8>, after: &'static [u8]) -> (Stream, tokio::task::JoinHandle<u16>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; PREFACE_HEAD];
            s.read_exact(&mut buf).await.expect("preface");
            let Ok(Decoded::Complete { preface, .. }) = Preface::decode(&buf) else {
                panic!("bad preface {buf:?}");
            };
            s.write_all(&reply).await.expect("answer");
            s.write_all(after).await.expect("after");
            drop(s);
            preface.port
        });
        let s = TcpStream::connect(addr).await.expect("connect");
        (Stream::Plain(s), task)
    }

    #[tokio::test]
    async fn connected_leaves_the_applications_bytes_unread() {
        let (mut s, task) = peer(Status::Connected.encode().to_vec(), b"220 banner\r\n").await;
        assert_eq!(handshake(&mut s, 2525).await, Handshake::Connected);
        assert_eq!(task.await.expect("peer"), 2525);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"220 banner\r\n");
    }

    #[tokio::test]
    async fn refusals_carry_their_reason() {
        for (status, reason) in [
            (Status::Refused, ErrorReason::ConnectRefused),
            (Status::Timeout, ErrorReason::ConnectTimeout),
            (Status::Error, ErrorReason::ConnectError),
            (Status::Forbidden, ErrorReason::ConnectError),
            (Status::Unauthorized, ErrorReason::Unauthorized),
        ] {
            let (mut s, _task) = peer(status.encode().to_vec(), b"").await;
            assert_eq!(handshake(&mut s, 80).await, Handshake::Refused(reason));
        }
    }

    #[tokio::test]
    async fn a_close_before_the_whole_answer_is_broken() {
        let (mut s, _task) = peer(Status::Connected.encode()[..4].to_vec(), b"").await;
        assert_eq!(handshake(&mut s, 80).await, Handshake::Broken);
    }

    #[tokio::test]
    async fn strangers_and_other_versions_are_no_tunnel() {
        let (mut s, _task) = peer(b"HTTP/1.1 502 Bad Gateway\r\n".to_vec(), b"").await;
        assert_eq!(handshake(&mut s, 80).await, Handshake::NotTunnel);
        let (mut s, _task) = peer(Status::UnsupportedVersion.encode().to_vec(), b"").await;
        assert_eq!(handshake(&mut s, 80).await, Handshake::NotTunnel);
    }

    #[test]
    fn absent_peers_are_dialled_directly_for_a_while() {
        let client = TunnelClient::new(15008);
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(client.worth_trying(peer));
        assert!(!client.answered_before(peer));
        client.answered(peer);
        assert!(client.answered_before(peer));
        client.absent(peer);
        assert!(!client.worth_trying(peer));
        assert!(!client.answered_before(peer));
        client.lock().insert(
            peer,
            Peer::Absent {
                until: Instant::now(),
            },
        );
        assert!(client.worth_trying(peer), "asked again once it expired");
    }

    #[test]
    fn the_memory_is_bounded() {
        let client = TunnelClient::new(15008);
        for i in 0..(MAX_PEERS as u32 + 10) {
            client.answered(IpAddr::from(i.to_be_bytes()));
        }
        assert!(client.lock().len() <= MAX_PEERS);
    }
}
