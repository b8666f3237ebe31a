//! A peer's certificate under mutual TLS: the client-side check of the server
//! (chain to the mesh's trust bundle, server usage, exactly the SPIFFE ID expected)
//! and the identity read back from a finished handshake.
//!
//! rustls's own server verifier checks DNS names and IP addresses only; a workload
//! certificate names a SPIFFE ID (a URI SAN) and nothing else, so the chain is
//! verified here with webpki, as rustls would, and the URI compared.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

/// Verifies a server's certificate for one expected SPIFFE ID.
#[derive(Debug)]
pub struct PeerVerifier {
    roots: Arc<[TrustAnchor<'static>]>,
    expected: Arc<str>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// Trusts chains to `roots` whose leaf names `expected` alone.
    pub fn new(
        roots: Arc<[TrustAnchor<'static>]>,
        expected: Arc<str>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        PeerVerifier {
            roots,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(certificate_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(certificate_error)?;
        let mut names = cert.valid_uri_names();
        match (names.next(), names.next()) {
            (Some(id), None) if id == &*self.expected => Ok(ServerCertVerified::assertion()),
            (id, _) => Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected: self.expected.to_string(),
                    presented: id.map(str::to_owned),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configurations allow TLS 1.3 only; a 1.2 handshake never gets here.
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server presented a valid certificate for another workload.
#[derive(Debug, thiserror::Error)]
#[error("the peer is {presented:?}, expected {expected}")]
struct WrongPeer {
    expected: String,
    presented: Option<String>,
}

/// webpki's verdict in rustls's terms (the common ones named, the rest carried).
fn certificate_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    let kind = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        e => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    };
    Error::InvalidCertificate(kind)
}

/// The SPIFFE ID of the peer that presented `certs` in a finished handshake (the
/// chain was verified by then): its leaf's single URI SAN.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut names = cert.valid_uri_names();
    match (names.next(), names.next()) {
        (Some(id), None) => Some(id.to_owned()),
        _ => None,
    }
}
