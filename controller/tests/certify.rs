//! In-process: the `Certificates` gRPC service (the mesh CA). A controller on
//! loopback with `--ca-dir` signs a proxy's CSR for the identity its token names
//! (never what the CSR asks for), returns the trust bundle it keeps in the
//! directory (the same after a restart), caps lifetimes, and refuses callers
//! without a credential, with one naming no identity, and every caller when
//! authentication is off; without `--ca-dir` the service is not there. Discovery
//! names a sidecar's endpoints with the identity its token carries.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use tonic::Code;
use weft_api::identity::{CertifyRequest, CertifyResponse};
use weft_api::CertificatesClient;
use weft_controller::auth::AuthConfig;
use weft_controller::ca::CaConfig;
use weft_controller::health::{Defaults, Scope};
use weft_controller::Options;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

mod common;
use common::start_in;

const MESH: &str = "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{ port: 80 }]\n";
const POD: &str = "0123456789abcdef0123456789abcdef-backend1";
const OPERATOR: &str = "0123456789abcdef0123456789abcdef-operator";
const TOKENS: &str = "tokens:\n  pod-b1:\n    token: 0123456789abcdef0123456789abcdef-backend1\n    register: [backend]\n    identity: backend\n  operator:\n    token: 0123456789abcdef0123456789abcdef-operator\n    register: [\"*\"]\n";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write mesh");
    std::fs::write(dir.path().join("tokens.yaml"), TOKENS).expect("write tokens");
    dir
}

/// Options with the token file and a CA in `<dir>/ca` (`auth`: tokens required).
fn with_ca(auth: bool) -> impl FnOnce(Options) -> Options {
    move |o: Options| Options {
        health: Defaults {
            scope: Scope::Off,
            ..Defaults::default()
        },
        auth: if auth {
            AuthConfig::tokens(o.config.with_file_name("tokens.yaml"))
        } else {
            AuthConfig::off()
        },
        ca: Some(CaConfig {
            dir: o.config.with_file_name("ca"),
            trust_domain: "weft.test".into(),
            lifetime: DAY,
        }),
        ..o
    }
}

/// A CSR for a fresh key, asking for `dns` (which the CA must ignore).
fn csr(dns: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let pem = CertificateParams::new(vec![dns.to_owned()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, pem)
}

async fn certify(
    grpc: std::net::SocketAddr,
    token: Option<&str>,
    csr_pem: &str,
    lifetime_seconds: u32,
) -> Result<CertifyResponse, tonic::Status> {
    let mut client = CertificatesClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    let mut request = tonic::Request::new(CertifyRequest {
        csr_pem: csr_pem.to_owned(),
        lifetime_seconds,
    });
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    client.certify(request).await.map(|r| r.into_inner())
}

fn der(pem_text: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .expect("pem")
        .1
        .contents
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_own_identity_and_the_bundle_survives_a_restart() {
    let c = start_in(dir(), with_ca(true)).await;
    let (key, csr_pem) = csr("admin.example");
    let got = certify(c.grpc, Some(POD), &csr_pem, 0)
        .await
        .expect("certified");
    assert_eq!(got.spiffe_id, "spiffe://weft.test/ns/local/sa/backend");
    let leaf = der(&got.cert_pem);
    let (_, cert) = X509Certificate::from_der(&leaf).expect("x509");
    let sans = cert
        .subject_alternative_name()
        .expect("ext")
        .expect("san")
        .value
        .general_names
        .clone();
    assert_eq!(
        sans,
        vec![GeneralName::URI("spiffe://weft.test/ns/local/sa/backend")]
    );
    assert_eq!(cert.public_key().raw, key.public_key_der());
    let lifetime = got.not_after_unix_seconds - unix_now();
    assert!(
        (DAY.as_secs() as i64 - 60..=DAY.as_secs() as i64).contains(&lifetime),
        "{lifetime}"
    );
    // The bundle is the stored root, and the certificate chains to it.
    let ca_pem = c.dir.path().join("ca/ca.pem");
    assert_eq!(
        got.trust_bundle_pem,
        std::fs::read_to_string(&ca_pem).expect("ca.pem")
    );
    let root = der(&got.trust_bundle_pem);
    let (_, root_cert) = X509Certificate::from_der(&root).expect("x509");
    cert.verify_signature(Some(root_cert.public_key()))
        .expect("signed by the root");

    // A shorter lifetime is granted, a longer one capped at the default.
    let hour = certify(c.grpc, Some(POD), &csr("x").1, 3600)
        .await
        .expect("an hour");
    assert!((3540..=3600).contains(&(hour.not_after_unix_seconds - unix_now())));
    let capped = certify(c.grpc, Some(POD), &csr("x").1, 7 * 24 * 3600)
        .await
        .expect("capped");
    assert!(capped.not_after_unix_seconds - unix_now() <= DAY.as_secs() as i64);

    // A restarted controller keeps its CA.
    let dir = c.stop().await;
    let c = start_in(dir, with_ca(true)).await;
    let again = certify(c.grpc, Some(POD), &csr("x").1, 0)
        .await
        .expect("certified again");
    assert_eq!(again.trust_bundle_pem, got.trust_bundle_pem);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_an_identity_and_bad_requests_are_refused() {
    let c = start_in(dir(), with_ca(true)).await;
    let (_, good) = csr("x");
    let code = |r: Result<CertifyResponse, tonic::Status>| r.expect_err("refused").code();
    assert_eq!(
        code(certify(c.grpc, None, &good, 0).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            certify(
                c.grpc,
                Some("0123456789abcdef0123456789abcdef-unknown1"),
                &good,
                0
            )
            .await
        ),
        Code::Unauthenticated
    );
    // The operator's token names no workload.
    let refused = certify(c.grpc, Some(OPERATOR), &good, 0)
        .await
        .expect_err("no identity");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("identity"), "{refused}");
    assert_eq!(
        code(certify(c.grpc, Some(POD), "not a csr", 0).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(certify(c.grpc, Some(POD), &good, 5).await),
        Code::InvalidArgument
    );
    c.stop().await;

    // Authentication off: nobody's identity can be trusted.
    let c = start_in(dir(), with_ca(false)).await;
    assert_eq!(
        code(certify(c.grpc, Some(POD), &good, 0).await),
        Code::FailedPrecondition
    );
    c.stop().await;

    // Without --ca-dir the service is not served.
    let c = start_in(dir(), |o| Options {
        auth: AuthConfig::tokens(o.config.with_file_name("tokens.yaml")),
        ..o
    })
    .await;
    assert_eq!(
        code(certify(c.grpc, Some(POD), &good, 0).await),
        Code::Unimplemented
    );
    c.stop().await;
}

/// A Watch as a sidecar at `address` opens it, with `token`.
async fn subscribe(
    grpc: std::net::SocketAddr,
    token: &str,
    address: &str,
) -> tonic::Streaming<weft_api::discovery::MeshUpdate> {
    let mut client = weft_api::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect grpc");
    let mut request = tonic::Request::new(weft_api::discovery::WatchRequest {
        service: "backend".into(),
        proxy_id: address.into(),
        addresses: vec![address.into()],
        draining: false,
        mtls: true,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    client.watch(request).await.expect("watch").into_inner()
}

/// `(address, meshed, identity)` of the backend's endpoints in `update`.
fn endpoints(update: &weft_api::discovery::MeshUpdate) -> Vec<(String, bool, String)> {
    let backend = update
        .services
        .iter()
        .find(|s| s.name == "backend")
        .expect("backend");
    backend
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.meshed, e.identity.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_names_each_sidecars_endpoints_with_its_identity() {
    let dir = dir();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{ port: 80 }]\n    \
         endpoints: [10.211.0.5, 10.211.0.6, 10.211.0.7]\n",
    )
    .expect("write mesh");
    let c = start_in(dir, with_ca(true)).await;
    // The pod's sidecar: its first snapshot already names its endpoint.
    let mut pod = subscribe(c.grpc, POD, "10.211.0.5").await;
    let first = pod.message().await.expect("stream").expect("snapshot");
    let id = "spiffe://weft.test/ns/local/sa/backend".to_owned();
    assert_eq!(
        endpoints(&first),
        [
            ("10.211.0.5".into(), true, id.clone()),
            ("10.211.0.6".into(), false, String::new()),
            ("10.211.0.7".into(), false, String::new()),
        ]
    );
    // A sidecar whose credential names no identity is meshed, but not named: a
    // client then has no identity to demand of it.
    let _operator = subscribe(c.grpc, OPERATOR, "10.211.0.6").await;
    let next = pod.message().await.expect("stream").expect("update");
    assert_eq!(
        endpoints(&next),
        [
            ("10.211.0.5".into(), true, id),
            ("10.211.0.6".into(), true, String::new()),
            ("10.211.0.7".into(), false, String::new()),
        ]
    );
    c.stop().await;
}
