//! Handshakes between two in-memory ends (`tokio::io::duplex`: no socket), with
//! certificates made here as the controller's CA makes them (rcgen: a root, leaves
//! whose only name is a SPIFFE ID, server and client usage).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

const A: &str = "spiffe://weft.test/ns/local/sa/a";
const B: &str = "spiffe://weft.test/ns/local/sa/b";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("root");
        Ca { cert, key }
    }

    fn bundle(&self) -> String {
        self.cert.pem()
    }

    /// Credentials for `id`, trusting `trusted`'s root (this CA's, by default).
    fn issue(&self, id: &str, trusted: &Ca) -> Credentials {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("ia5"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        Credentials::new(
            id,
            &leaf.pem(),
            key.serialize_der(),
            &trusted.bundle(),
            SystemTime::now() + Duration::from_secs(3600),
        )
        .expect("credentials")
    }
}

/// What each side saw of a handshake: the peer's identity, or the error.
#[derive(Debug)]
struct Outcome {
    client: Result<Option<String>, String>,
    server: Result<Option<String>, String>,
}

/// A handshake of `client` (expecting `expected`) with `server`, then one
/// message each way when it succeeded.
async fn handshake(client: &Credentials, expected: &str, server: &Credentials) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(client.client_config(&Arc::from(expected)).expect("config"));
    let acceptor = TlsAcceptor::from(server.server_config());
    let server_side = async move {
        let mut tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(ALPN));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = peer_identity(conn.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client_side = async move {
        let mut tls = connector
            .connect(server_name(), c)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates());
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok::<_, String>(peer)
    };
    let (client, server) = tokio::join!(client_side, server_side);
    Outcome { client, server }
}

#[tokio::test]
async fn peers_of_one_mesh_see_each_others_identity() {
    let ca = Ca::new();
    let (a, b) = (ca.issue(A, &ca), ca.issue(B, &ca));
    let out = handshake(&a, B, &b).await;
    assert_eq!(out.client, Ok(Some(B.to_owned())), "{out:?}");
    assert_eq!(out.server, Ok(Some(A.to_owned())), "{out:?}");
}

#[tokio::test]
async fn a_valid_certificate_for_another_workload_is_refused() {
    let ca = Ca::new();
    let (a, b) = (ca.issue(A, &ca), ca.issue(B, &ca));
    let out = handshake(&a, "spiffe://weft.test/ns/local/sa/c", &b).await;
    let e = out.client.expect_err("refused");
    assert!(e.contains("WrongPeer") && e.contains("sa/c"), "{e}");
    assert!(out.server.is_err(), "{:?}", out.server);
}

#[tokio::test]
async fn a_server_or_a_client_from_another_ca_is_refused() {
    let (ca, other) = (Ca::new(), Ca::new());
    let a = ca.issue(A, &ca);
    // The server's certificate is from another CA (which it trusts itself).
    let out = handshake(&a, B, &other.issue(B, &other)).await;
    // (The test CAs share a subject, as two meshes' CAs would: the issuer is
    // found by name and its signature fails.)
    let e = out.client.expect_err("refused");
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
    // The client's is: the server refuses it.
    let b = ca.issue(B, &ca);
    let out = handshake(&other.issue(A, &ca), B, &b).await;
    let e = out.server.expect_err("refused");
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = Ca::new();
    let b = ca.issue(B, &ca);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    // A client that checks the server as a sidecar would, but has no certificate
    // of its own to present.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verify::PeerVerifier::new(
        roots.roots.into(),
        Arc::from(B),
        provider.signature_verification_algorithms,
    );
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN.to_vec()];
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(b.server_config());
    let server = tokio::spawn(async move { acceptor.accept(s).await.map(|_| ()) });
    let client = TlsConnector::from(Arc::new(anonymous))
        .connect(server_name(), c)
        .await;
    let e = server.await.expect("task").expect_err("refused");
    assert!(e.to_string().contains("no certificates"), "{e}");
    // The client may finish its side before it reads the alert (TLS 1.3 sends the
    // client's certificate last): either way it cannot talk.
    if let Ok(mut tls) = client {
        let mut buf = [0u8; 1];
        let read = tls.read(&mut buf).await;
        assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    }
}

#[test]
fn renewed_credentials_replace_the_old_and_expired_ones_are_not_used() {
    let ca = Ca::new();
    let tls = MeshTls::default();
    assert!(
        tls.current().is_none(),
        "nothing before the first certificate"
    );
    tls.install(ca.issue(A, &ca));
    let first = tls.current().expect("in force");
    tls.install(ca.issue(A, &ca));
    let second = tls.current().expect("in force");
    assert!(!Arc::ptr_eq(&first, &second), "the renewed one is used");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(A.try_into().expect("ia5"))];
    let leaf = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    let expired = Credentials::new(
        A,
        &leaf.pem(),
        key.serialize_der(),
        &ca.bundle(),
        SystemTime::now() - Duration::from_secs(1),
    )
    .expect("credentials");
    tls.install(expired);
    assert!(
        tls.current().is_none(),
        "an expired certificate is not used"
    );
}

/// A connected pair of loopback sockets: (the dialling end, the accepted end).
async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    (c, l.accept().await.expect("accept").0)
}

#[tokio::test]
async fn the_inbound_port_tells_a_peers_handshake_from_plaintext_and_other_tls() {
    use handshake::{peek_hello, Hello};
    let wait = Duration::from_millis(200);
    let ca = Ca::new();
    let a = ca.issue(A, &ca);

    // A sidecar's ClientHello, offering weft's ALPN; peeking consumed nothing, so
    // the handshake then completes on the same socket.
    let (c, s) = socket_pair().await;
    let b = ca.issue(B, &ca);
    let client = tokio::spawn(handshake::connect(
        a.client_config(&Arc::from(B)).expect("config"),
        c,
    ));
    assert_eq!(peek_hello(&s, wait).await.expect("peek"), Hello::Mesh);
    let server = handshake::accept(b.server_config(), s)
        .await
        .map_err(|(e, _)| e)
        .expect("accepted");
    let client = client.await.expect("task").expect("connected");
    assert_eq!(server.peer_identity().as_deref(), Some(A));
    assert_eq!(client.peer_identity().as_deref(), Some(B));

    // Plaintext HTTP, an application's own TLS (no ALPN, or another one), and a
    // client that says nothing are all left alone.
    let (mut c, s) = socket_pair().await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    assert_eq!(peek_hello(&s, wait).await.expect("peek"), Hello::Other);
    for alpn in [vec![], vec![b"h2".to_vec()]] {
        let (c, s) = socket_pair().await;
        let mut config = (*a.client_config(&Arc::from(B)).expect("config")).clone();
        config.alpn_protocols = alpn;
        let _client = tokio::spawn(TlsConnector::from(Arc::new(config)).connect(server_name(), c));
        assert_eq!(peek_hello(&s, wait).await.expect("peek"), Hello::Other);
    }
    let (_c, s) = socket_pair().await;
    assert_eq!(peek_hello(&s, wait).await.expect("peek"), Hello::Other);
}

#[tokio::test]
async fn a_relay_between_tls_and_plaintext_carries_bytes_and_half_closes() {
    use crate::tcp::connect::Connector;
    use crate::tcp::relay::{relay_opaque, RelayLimits};
    use std::sync::atomic::{AtomicU64, Ordering};
    let ca = Ca::new();
    let (a, b) = (ca.issue(A, &ca), ca.issue(B, &ca));
    // A peer sidecar's TLS connection, taken by this proxy...
    let (c, s) = socket_pair().await;
    let peer = tokio::spawn(handshake::connect(
        a.client_config(&Arc::from(B)).expect("config"),
        c,
    ));
    let mut taken = handshake::accept(b.server_config(), s)
        .await
        .map_err(|(e, _)| e)
        .expect("accepted");
    let mut peer = peer.await.expect("task").expect("connected");
    // ...relayed to a plaintext application that echoes until end of stream.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app_addr = crate::addr::EndpointAddr(app.local_addr().expect("addr"));
    let echo = tokio::spawn(async move {
        let (mut s, _) = app.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        s.write_all(&got).await.expect("echo");
        got.len()
    });
    let dialed = Connector::default()
        .dial_addr(app_addr, Duration::from_secs(1))
        .await;
    let counts = (AtomicU64::new(0), AtomicU64::new(0));
    let relay = async {
        relay_opaque(
            &mut taken,
            b"pre",
            dialed.upstream,
            RelayLimits::NONE,
            &counts,
        )
        .await
    };
    let talk = async {
        peer.write_all(&[7u8; 100_000]).await.expect("write");
        // The peer's half-close reaches the application as end of stream.
        peer.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        peer.read_to_end(&mut back).await.expect("read back");
        back
    };
    let (end, back) = tokio::join!(relay, talk);
    assert!(matches!(end, crate::error::ConnEnd::Eof), "{end}");
    assert_eq!(echo.await.expect("app"), 100_003);
    assert_eq!(&back[..3], b"pre");
    assert_eq!(back.len(), 100_003);
    assert_eq!(counts.0.load(Ordering::Relaxed), 100_003);
    assert_eq!(counts.1.load(Ordering::Relaxed), 100_003);
}

/// A CA rotation: `a` (old CA) and `b` (new CA) refuse each other until a bundle
/// that holds both roots reaches them (as discovery brings it); a bad bundle
/// changes nothing.
#[tokio::test]
async fn a_new_bundle_trusts_the_next_ca_from_the_next_handshake() {
    let (old, new) = (Ca::new(), Ca::new());
    let (a, b) = (MeshTls::required(), MeshTls::required());
    a.install(old.issue(A, &old));
    b.install(new.issue(B, &new));
    let now = |t: &MeshTls| t.current().expect("in force");
    let out = handshake(&now(&a), B, &now(&b)).await;
    assert!(out.client.is_err(), "{out:?}");
    let both = format!("{}{}", old.bundle(), new.bundle());
    assert!(a.trust("not a bundle").is_err());
    assert!(a.trust(&both).expect("read"), "changed");
    assert!(!a.trust(&both).expect("read"), "the same again: unchanged");
    assert!(b.trust(&both).expect("read"));
    let out = handshake(&now(&a), B, &now(&b)).await;
    assert_eq!(out.client, Ok(Some(B.to_owned())), "{out:?}");
    assert_eq!(out.server, Ok(Some(A.to_owned())), "{out:?}");
    assert_eq!(now(&a).spiffe_id().as_ref(), A, "the same certificate");
}
