#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::*;

const TD: &str = "weft.test";

fn csr(names: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn der(pem_text: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .unwrap()
        .1
        .contents
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn made_once_then_loaded_with_the_same_root_and_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let first = Ca::load_or_create(&ca_dir, TD).unwrap();
    let again = Ca::load_or_create(&ca_dir, TD).unwrap();
    assert_eq!(first.root_pem(), again.root_pem());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |f: &str| {
        std::fs::metadata(ca_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(KEY_FILE), 0o600);
    assert_eq!(mode(ROOT_FILE), 0o644);
    assert!(!ca_dir.join("ca.key.tmp").exists() && !ca_dir.join("ca.pem.tmp").exists());
    // The root is a CA for leaves only, named after the trust domain.
    let root = der(first.root_pem());
    let (_, cert) = X509Certificate::from_der(&root).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert!(
        cert.subject().to_string().contains(TD),
        "{}",
        cert.subject()
    );
}

#[test]
fn a_key_without_its_root_gets_one_and_a_root_without_its_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::load_or_create(dir.path(), TD).unwrap();
    std::fs::remove_file(dir.path().join(ROOT_FILE)).unwrap();
    let remade = Ca::load_or_create(dir.path(), TD).unwrap();
    let key_of = |pem_text: &str| {
        let d = der(pem_text);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        c.public_key().raw.to_vec()
    };
    assert_eq!(key_of(first.root_pem()), key_of(remade.root_pem()));

    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let err = Ca::load_or_create(dir.path(), TD).unwrap_err().to_string();
    assert!(err.contains("without its key"), "{err}");
    // Nothing was overwritten.
    assert!(!dir.path().join(KEY_FILE).exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join(ROOT_FILE)).unwrap(),
        remade.root_pem()
    );
}

#[test]
fn a_damaged_key_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
    let err = Ca::load_or_create(dir.path(), TD).unwrap_err().to_string();
    assert!(err.contains(KEY_FILE), "{err}");
}

#[test]
fn issues_an_svid_with_only_the_callers_identity_signed_by_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), TD).unwrap();
    // The CSR asks for a DNS name: ignored, the identity comes from the caller.
    let (key, csr_pem) = csr(&["admin.example"]);
    let id = SpiffeId::local(TD, "backend").unwrap();
    let now = SystemTime::now();
    let issued = ca.issue(&csr_pem, &id, DEFAULT_LIFETIME, now).unwrap();
    assert_eq!(issued.not_after, now + DEFAULT_LIFETIME);

    let leaf = der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://weft.test/ns/local/sa/backend")]
    );
    // No name but the SAN's: the subject is the organisation only.
    assert_eq!(cert.subject().to_string(), "O=weft");
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    // The key is the proxy's.
    assert_eq!(cert.public_key().raw, key.public_key_der());
    // Valid from a little before now for the lifetime asked.
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(
        life as u64,
        (DEFAULT_LIFETIME + CLOCK_SKEW).as_secs(),
        "{:?}",
        cert.validity()
    );
    let root = der(ca.root_pem());
    let (_, root_cert) = X509Certificate::from_der(&root).unwrap();
    cert.verify_signature(Some(root_cert.public_key())).unwrap();

    // And rustls (webpki) accepts it as a client certificate under the root.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.clone())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf),
            &[],
            UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap()),
        )
        .unwrap();
}

#[test]
fn serial_numbers_differ() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), TD).unwrap();
    let id = SpiffeId::local(TD, "a").unwrap();
    let serial = |_| {
        let (_, csr_pem) = csr(&[]);
        let pem_text = ca
            .issue(&csr_pem, &id, DEFAULT_LIFETIME, SystemTime::now())
            .unwrap()
            .cert_pem;
        let d = der(&pem_text);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        c.raw_serial().to_vec()
    };
    let serials: std::collections::BTreeSet<_> = (0..8).map(serial).collect();
    assert_eq!(serials.len(), 8);
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), TD).unwrap();
    let id = SpiffeId::local(TD, "a").unwrap();
    let now = SystemTime::now();
    let (_, good) = csr(&[]);
    // Not a CSR.
    assert!(matches!(
        ca.issue("garbage", &id, DEFAULT_LIFETIME, now),
        Err(CaError::Csr(_))
    ));
    // A CSR whose signature does not match its key (a byte of the signature flipped).
    let mut bytes = der(&good);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = pem_of("CERTIFICATE REQUEST", &bytes);
    assert!(matches!(
        ca.issue(&tampered, &id, DEFAULT_LIFETIME, now),
        Err(CaError::Csr(_))
    ));
    // Lifetimes out of bounds.
    for life in [
        Duration::from_secs(1),
        MAX_LIFETIME + Duration::from_secs(1),
    ] {
        assert!(matches!(
            ca.issue(&good, &id, life, now),
            Err(CaError::Lifetime(_))
        ));
    }
}

#[test]
fn trust_anchors_join_the_bundle_and_a_bad_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (this, next) = (dir.path().join("this"), dir.path().join("next"));
    let ca = Ca::load_or_create(&this, TD).unwrap();
    assert_eq!(ca.trust_bundle_pem(), ca.root_pem(), "the root alone");
    let other = Ca::load_or_create(&next, TD).unwrap();
    // The next CA's root, and this one's again (a copy of the bundle): once each.
    std::fs::write(
        this.join(ANCHORS_FILE),
        format!("{}{}", other.root_pem(), ca.root_pem()),
    )
    .unwrap();
    let ca = Ca::load_or_create(&this, TD).unwrap();
    let bundle = ca.trust_bundle_pem();
    assert!(bundle.starts_with(ca.root_pem()), "{bundle}");
    assert!(bundle.contains(other.root_pem().trim_end()), "{bundle}");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    for bad in ["no pem here", "-----BEGIN CERTIFICATE-----\nAAAA\n"] {
        std::fs::write(this.join(ANCHORS_FILE), bad).unwrap();
        let e = Ca::load_or_create(&this, TD).unwrap_err().to_string();
        assert!(e.contains(ANCHORS_FILE), "{e}");
    }
}

/// A CA certificate with `key`, signed by `issuer` (self-signed without one).
fn ca_cert(name: &str, key: &KeyPair, issuer: Option<(&Certificate, &KeyPair)>) -> Certificate {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    match issuer {
        None => params.self_signed(key).unwrap(),
        Some((cert, ikey)) => params.signed_by(key, cert, ikey).unwrap(),
    }
}

/// Whether rustls (webpki) takes `chain_pem` (leaf first) as a client
/// certificate under the roots of `bundle_pem`.
fn chains_to(chain_pem: &str, bundle_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .is_ok()
}

#[test]
fn a_mounted_tls_secret_is_the_ca_self_signed_or_intermediate() {
    let id = SpiffeId::local(TD, "a").unwrap();
    let root_key = KeyPair::generate().unwrap();
    let root = ca_cert("root", &root_key, None);
    let issue = |dir: &Path| {
        let ca = Ca::load_or_create(dir, TD).unwrap();
        let (_, csr_pem) = csr(&[]);
        let issued = ca
            .issue(&csr_pem, &id, DEFAULT_LIFETIME, SystemTime::now())
            .unwrap();
        (ca, issued.cert_pem)
    };

    // cert-manager's self-signed CA: tls.crt is the root, as is ca.crt.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), root.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), root_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), root.pem()).unwrap();
    let (ca, leaf) = issue(dir.path());
    assert_eq!(ca.trust_bundle_pem(), root.pem());
    assert_eq!(
        leaf.matches("BEGIN CERTIFICATE").count(),
        1,
        "a root: the leaf alone"
    );
    assert!(chains_to(&leaf, ca.trust_bundle_pem()));
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(written.len(), 3, "nothing written into the mount");

    // An intermediate issued by a CA Issuer: the leaf goes with it, ca.crt is
    // the anchor.
    let key = KeyPair::generate().unwrap();
    let intermediate = ca_cert("intermediate", &key, Some((&root, &root_key)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), intermediate.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), root.pem()).unwrap();
    let (ca, chain) = issue(dir.path());
    assert_eq!(ca.trust_bundle_pem(), root.pem());
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    assert!(chains_to(&chain, ca.trust_bundle_pem()));
    let leaf_only = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    assert!(
        !chains_to(leaf_only, ca.trust_bundle_pem()),
        "needs the intermediate"
    );

    // A PKCS#1/SEC1 key is refused, saying how to issue it.
    std::fs::write(
        dir.path().join("tls.key"),
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = Ca::load_or_create(dir.path(), TD).unwrap_err().to_string();
    assert!(e.contains("PKCS8"), "{e}");
}
