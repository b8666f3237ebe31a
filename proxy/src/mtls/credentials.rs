//! One workload certificate made into rustls configurations, and the ones in force.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::verify::PeerVerifier;
use super::ALPN;

/// Why a certificate could not be made into configurations.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("the certificate: {0}")]
    Certificate(String),
    #[error("the trust bundle: {0}")]
    Bundle(String),
    #[error("the key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A workload certificate, its key and the mesh's trust bundle, as rustls
/// configurations: one for serving peers, one per peer identity for dialling.
#[derive(Debug)]
pub struct Credentials {
    spiffe_id: Arc<str>,
    not_after: SystemTime,
    server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The trust bundle as it came, to tell a new one from it.
    bundle_pem: Arc<str>,
    roots: Arc<[TrustAnchor<'static>]>,
    provider: Arc<CryptoProvider>,
    /// Client configurations by the identity they demand of the server, made on
    /// first use (a sidecar talks to a handful of workloads) and kept with their
    /// session caches for resumption.
    clients: Mutex<HashMap<Arc<str>, Arc<ClientConfig>>>,
}

impl Credentials {
    /// `cert_pem`: this workload's certificate (leaf first), for `key_der` (PKCS#8);
    /// `bundle_pem`: the mesh's trust anchors.
    pub fn new(
        spiffe_id: &str,
        cert_pem: &str,
        key_der: Vec<u8>,
        bundle_pem: &str,
        not_after: SystemTime,
    ) -> Result<Credentials, MtlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MtlsError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(MtlsError::Certificate("no certificate in the PEM".into()));
        }
        let key = PrivateKeyDer::try_from(key_der).map_err(|e| MtlsError::Key(e.to_owned()))?;
        Credentials::build(spiffe_id, chain, key, bundle_pem, not_after)
    }

    /// The same certificate and key trusting `bundle_pem` instead (a bundle that
    /// discovery brought: the mesh's trust anchors changed, a CA rotation).
    pub fn with_bundle(&self, bundle_pem: &str) -> Result<Credentials, MtlsError> {
        Credentials::build(
            &self.spiffe_id,
            self.chain.clone(),
            self.key.clone_key(),
            bundle_pem,
            self.not_after,
        )
    }

    /// Whether `bundle_pem` is the bundle these credentials trust.
    pub fn trusts(&self, bundle_pem: &str) -> bool {
        *self.bundle_pem == *bundle_pem
    }

    fn build(
        spiffe_id: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle_pem: &str,
        not_after: SystemTime,
    ) -> Result<Credentials, MtlsError> {
        let mut store = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
            let der = der.map_err(|e| MtlsError::Bundle(e.to_string()))?;
            store
                .add(der)
                .map_err(|e| MtlsError::Bundle(e.to_string()))?;
        }
        if store.is_empty() {
            return Err(MtlsError::Bundle("no certificate in the PEM".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots: Arc<[TrustAnchor<'static>]> = store.roots.clone().into();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| MtlsError::Bundle(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Credentials {
            spiffe_id: Arc::from(spiffe_id),
            not_after,
            server: Arc::new(server),
            chain,
            key,
            bundle_pem: Arc::from(bundle_pem),
            roots,
            provider,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// This workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> &Arc<str> {
        &self.spiffe_id
    }

    /// Whether the certificate has expired.
    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }

    /// The configuration that serves peers: a client certificate from the mesh CA
    /// required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The configuration that dials a peer known as `expected`.
    pub fn client_config(&self, expected: &Arc<str>) -> Result<Arc<ClientConfig>, MtlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = clients.get(expected) {
            return Ok(config.clone());
        }
        let verifier = PeerVerifier::new(
            self.roots.clone(),
            expected.clone(),
            self.provider.signature_verification_algorithms,
        );
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // The server is known by its SPIFFE ID, not a host name: no SNI to send.
        config.enable_sni = false;
        let config = Arc::new(config);
        clients.insert(expected.clone(), config.clone());
        Ok(config)
    }
}

/// The credentials in force, replaced at each renewal: a handshake takes the
/// current ones; connections already up keep theirs.
#[derive(Debug, Default)]
pub struct MeshTls {
    current: RwLock<Option<Arc<Credentials>>>,
    /// The proxy runs `--identity`: without valid credentials it dials no peer
    /// that expects mutual TLS (rather than dial it in plaintext).
    required: bool,
}

impl MeshTls {
    /// Credentials of a proxy that runs `--identity` (see the field).
    pub fn required() -> Self {
        MeshTls {
            current: RwLock::new(None),
            required: true,
        }
    }

    /// Whether the proxy runs `--identity`.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Puts `credentials` in force.
    pub fn install(&self, credentials: Credentials) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(credentials));
    }

    /// Trusts `bundle_pem` from now on (discovery brought it): the credentials in
    /// force are remade with it, when it differs. New handshakes use it;
    /// connections up keep theirs. Nothing changes when it cannot be read.
    pub fn trust(&self, bundle_pem: &str) -> Result<bool, MtlsError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let Some(credentials) = current.as_ref() else {
            return Ok(false);
        };
        if credentials.trusts(bundle_pem) {
            return Ok(false);
        }
        *current = Some(Arc::new(credentials.with_bundle(bundle_pem)?));
        Ok(true)
    }

    /// The credentials in force: none before the first certificate, or once the
    /// last one has expired (renewal failing for its whole lifetime).
    pub fn current(&self) -> Option<Arc<Credentials>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| !c.expired()).cloned()
    }
}
