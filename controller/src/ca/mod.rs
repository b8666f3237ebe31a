//! The mesh's certificate authority, served as the `Certificates` gRPC service
//! ([`CertificateService`], `weft.identity.v1`) when `--ca-dir` is given: it signs each workload's certificate (an
//! X.509-SVID: the workload's [`SpiffeId`] as the only URI SAN, server and client
//! auth, short-lived) from a CSR whose key was made in the proxy and never leaves
//! it. Only the CSR's public key is used: the name, lifetime and usages come from
//! the CA, so a proxy cannot ask for another workload's identity.
//!
//! The CA's key and root live in `--ca-dir` (`ca.key`, mode 0600, and `ca.pem`),
//! made on first start when the directory holds neither and written like the
//! registry (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves the old file or the new one. A key without its root gets a new root for
//! the same key; a root without its key is refused (nothing could sign for it).
//!
//! The trust bundle is the root, plus the CA certificates of `trust-anchors.pem`
//! in the same directory when it exists (read at start): how a CA is rotated
//! without a failed handshake (ARCHITECTURE.md, The mesh CA). Proxies get it with
//! each certificate and with every discovery snapshot.

mod service;
mod spiffe;

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

pub use service::{identity_of, CaConfig, CertificateService};
pub use spiffe::{check_name, check_trust_domain, SpiffeError, SpiffeId};

/// A Kubernetes TLS Secret's certificate (cert-manager's layout).
const TLS_CERT: &str = "tls.crt";
/// Its key.
const TLS_KEY: &str = "tls.key";
/// Its issuer's CA.
const TLS_CA: &str = "ca.crt";

/// The trust bundle: `anchors`, then the CA certificates of `dir`'s
/// [`ANCHORS_FILE`] (when it exists) that are not among them.
fn bundle_with_anchors(dir: &Path, anchors: &[&str]) -> Result<String, CaError> {
    let path = dir.join(ANCHORS_FILE);
    let extra = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CaError::Io { path, source }),
    };
    let extra = if extra.is_empty() {
        Vec::new()
    } else {
        ca_certificates(&extra).map_err(|reason| CaError::Stored {
            path: path.clone(),
            reason,
        })?
    };
    let mut bundle = String::new();
    for anchor in anchors.iter().copied().chain(extra) {
        let anchor = anchor.trim_end();
        if !bundle.contains(anchor) {
            bundle.push_str(anchor);
            bundle.push('\n');
        }
    }
    Ok(bundle)
}

/// The PEM blocks of `pem`, each a CA certificate (at least one).
fn ca_certificates(pem: &str) -> Result<Vec<&str>, String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end = rest[start..]
            .find(END)
            .ok_or("a certificate without its END line")?
            + start
            + END.len();
        let block = &rest[start..end];
        let params = CertificateParams::from_ca_cert_pem(block)
            .map_err(|e| format!("certificate {}: {e}", blocks.len() + 1))?;
        if params.is_ca == IsCa::NoCa {
            return Err(format!("certificate {}: not a CA", blocks.len() + 1));
        }
        blocks.push(block);
        rest = &rest[end..];
    }
    if blocks.is_empty() {
        return Err("no certificate".to_owned());
    }
    Ok(blocks)
}

/// The CA's private key, PEM (PKCS#8), mode 0600.
const KEY_FILE: &str = "ca.key";
/// The CA's self-signed root, PEM: the mesh's trust bundle.
const ROOT_FILE: &str = "ca.pem";
/// Further roots the mesh trusts, PEM (optional): the next CA's, or the last
/// one's, during a rotation.
const ANCHORS_FILE: &str = "trust-anchors.pem";
/// How long a root made here is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this much in the past, for clocks a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The shortest lifetime [`Ca::issue`] signs for: short enough that a test sees
/// renewals come and go within seconds (a proxy renews at 70% of it).
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
/// The longest lifetime [`Ca::issue`] signs for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A workload certificate's lifetime unless configured otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What went wrong loading the CA or signing.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Stored { path: PathBuf, reason: String },
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error("lifetime {0:?}: between {MIN_LIFETIME:?} and {MAX_LIFETIME:?}")]
    Lifetime(Duration),
    #[error("signing: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM, then the CA's own below the trust anchors, if any
    /// (the root is not repeated: it is the trust bundle).
    pub cert_pem: String,
    pub not_after: SystemTime,
}

/// The loaded CA: its key and root.
pub struct Ca {
    key: KeyPair,
    /// The root as rcgen's issuer (re-signed in memory from the stored root's
    /// parameters: same subject, key and key identifier, so what it signs chains
    /// to the stored root).
    issuer: Certificate,
    root_pem: String,
    /// The root, then the extra anchors.
    bundle_pem: String,
    /// What follows a leaf in the chain it is given: the CA's own certificate and
    /// its issuers' below the trust anchors, for a CA that is not itself one (an
    /// intermediate, as cert-manager may issue); empty for a root.
    chain_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir`, making its key and root first if `dir` holds
    /// neither (and `dir` itself, mode 0700, if missing); the root's subject names
    /// `trust_domain`.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        if dir.join(TLS_KEY).exists() {
            return Ca::load_tls_secret(dir);
        }
        let (key_path, root_path) = (dir.join(KEY_FILE), dir.join(ROOT_FILE));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let stored = |path: &Path, reason: String| CaError::Stored {
            path: path.to_path_buf(),
            reason,
        };
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| stored(&key_path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if root_path.exists() {
                    return Err(stored(
                        &root_path,
                        format!("a root without its key ({KEY_FILE} is missing): restore the key or remove the root to start a new CA"),
                    ));
                }
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io(dir))?;
                let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
                write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let root_pem = match std::fs::read_to_string(&root_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let root = root_params(trust_domain, SystemTime::now())
                    .self_signed(&key)
                    .map_err(|e| CaError::Sign(e.to_string()))?;
                write_atomically(&root_path, root.pem().as_bytes(), 0o644)?;
                root.pem()
            }
            Err(e) => return Err(io(&root_path)(e)),
        };
        let params = CertificateParams::from_ca_cert_pem(&root_pem)
            .map_err(|e| stored(&root_path, e.to_string()))?;
        let issuer = params
            .self_signed(&key)
            .map_err(|e| stored(&root_path, format!("does not match {KEY_FILE}: {e}")))?;
        if issuer.params().is_ca == IsCa::NoCa {
            return Err(stored(&root_path, "not a CA certificate".to_owned()));
        }
        let bundle_pem = bundle_with_anchors(dir, &[root_pem.trim_end()])?;
        Ok(Ca {
            key,
            issuer,
            root_pem,
            bundle_pem,
            chain_pem: String::new(),
        })
    }

    /// Loads a CA from `dir` in the layout of a Kubernetes TLS Secret mounted as a
    /// volume, as cert-manager writes one (`tls.crt`, `tls.key` in PKCS#8,
    /// `ca.crt`), never writing into it: `tls.crt` is the CA's certificate (and
    /// the chain above it), `ca.crt` the anchor the mesh trusts (the CA itself when
    /// self-signed; `tls.crt`'s last certificate without it).
    fn load_tls_secret(dir: &Path) -> Result<Ca, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
        };
        let stored = |name: &str, reason: String| CaError::Stored {
            path: dir.join(name),
            reason,
        };
        let key_pem = read(TLS_KEY)?;
        if key_pem.contains("BEGIN EC PRIVATE KEY") || key_pem.contains("BEGIN RSA PRIVATE KEY") {
            return Err(stored(
                TLS_KEY,
                "a PKCS#1/SEC1 key: issue the CA with `privateKey: {encoding: PKCS8}`".to_owned(),
            ));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| stored(TLS_KEY, e.to_string()))?;
        let cert_pem = read(TLS_CERT)?;
        let chain = ca_certificates(&cert_pem).map_err(|e| stored(TLS_CERT, e))?;
        let own = chain[0].to_owned();
        let issuer = CertificateParams::from_ca_cert_pem(&own)
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| stored(TLS_CERT, format!("does not match {TLS_KEY}: {e}")))?;
        let anchors_pem = match read(TLS_CA) {
            Ok(pem) => pem,
            Err(CaError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                chain[chain.len() - 1].to_owned()
            }
            Err(e) => return Err(e),
        };
        let anchors = ca_certificates(&anchors_pem).map_err(|e| stored(TLS_CA, e))?;
        // Below the anchors: the CA's certificate and the issuers between it and
        // them go with every leaf.
        let chain_pem: String = chain
            .iter()
            .take_while(|c| !anchors.contains(c))
            .map(|c| format!("{c}\n"))
            .collect();
        Ok(Ca {
            key,
            issuer,
            root_pem: format!("{own}\n"),
            bundle_pem: bundle_with_anchors(dir, &anchors)?,
            chain_pem,
        })
    }

    /// What peers trust, PEM: the root and the extra anchors.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The root, PEM: what peers trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs the key of `csr_pem` (whose signature must be valid) for `id`, valid
    /// from [`CLOCK_SKEW`] before `now` for `lifetime`. Whatever else the CSR asks
    /// for (names, extensions) is ignored.
    pub fn issue(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        if lifetime < MIN_LIFETIME || lifetime > MAX_LIFETIME {
            return Err(CaError::Lifetime(lifetime));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let not_after = now + lifetime;
        let mut params = CertificateParams::default();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial()?);
        // X.509-SVID: the identity is the URI SAN. The subject carries only the
        // organisation: an empty one would need the SAN marked critical (RFC 5280
        // 4.2.1.6), which rcgen does not do.
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "weft");
        params.distinguished_name = subject;
        params.subject_alt_names = vec![SanType::URI(
            id.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer, &self.key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            not_after,
        })
    }
}

/// The root's parameters: a CA for end-entity certificates only (path length 0).
fn root_params(trust_domain: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "weft");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("weft mesh CA {trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params
}

/// A random, positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign("no randomness for a serial number".to_owned()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to be stripped
    Ok(SerialNumber::from_slice(&bytes))
}

/// [`crate::persist::write_atomically`], its error as a [`CaError`].
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    crate::persist::write_atomically(path, bytes, mode)
        .map_err(|(path, source)| CaError::Io { path, source })
}

#[cfg(test)]
mod tests;
