//! Tier 2: workload certificates (groundwork for mutual TLS). A controller with
//! `--ca-dir` and a sidecar with `--identity`: the proxy makes its key, the
//! controller signs it for the identity the sidecar's token names, and the proxy's
//! `/identity` shows the SPIFFE ID, the mesh's trust bundle (the controller's
//! `ca.pem`) and a renewal at 70% of the lifetime. A sidecar whose token names no
//! identity gets no certificate, says why, is not ready (`/ready/proxy`) and still
//! routes. Capture mode plays no
//! part (the certificate travels on the controller connection), so iptables mode
//! only.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{wait_until, Controller, Mesh, Mode};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const ADMIN: &str = "127.0.0.1:15000";

#[test]
fn a_sidecar_keeps_a_certificate_for_its_own_identity() {
    let mesh = Mesh::new().unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "b1").unwrap();
    let other = Mode::Iptables.add_pod(&mesh, "other").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}]\n  other:\n    vip: 10.96.0.11\n    ports: [{{ port: 80 }}]\n",
            back.ipv4()
        ),
    )
    .unwrap();
    let ca_dir = mesh.run_dir().join("ca");
    let ca_arg = ca_dir.to_string_lossy().into_owned();
    let controller = Controller::start(
        &mesh,
        &file,
        &["--ca-dir", &ca_arg, "--cert-lifetime", "1h"],
    )
    .unwrap();
    let admin: SocketAddr = ADMIN.parse().unwrap();

    // The sidecar's token (weft-localmesh) names its service as its identity.
    back.sidecar_with(
        &[],
        "backend",
        &["--controller", controller.url(), "--identity"],
    )
    .unwrap();
    let identity = || -> Value {
        let (code, body) = back.http_get(admin, "/identity").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(SECS(10), Duration::from_millis(50), || {
        !identity()["certificate"].is_null()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", identity()));
    let got = identity();
    let cert = &got["certificate"];
    println!("identity: {got:#}");
    assert_eq!(cert["spiffe_id"], "spiffe://weft.local/ns/local/sa/backend");
    assert_eq!(got["issued"], 1);
    assert_eq!(got["failures"], 0);
    assert!(cert["cert_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        cert["trust_bundle_pem"].as_str().unwrap(),
        std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap()
    );
    // Renewal at 70% of the hour (the issue and expiry times are whole seconds).
    let at = |k: &str| cert[k].as_i64().unwrap();
    let lifetime = at("not_after") - at("issued_at");
    assert!((3598..=3600).contains(&lifetime), "{cert}");
    let renew = at("renew_at") - at("issued_at");
    assert!((2518..=2521).contains(&renew), "{cert}");

    // A token without an identity: no certificate, the reason shown, routes all
    // the same.
    let token = mesh
        .credentials()
        .issue("pod-other", &["other"], Some(1337))
        .unwrap();
    let token_arg = token.to_string_lossy().into_owned();
    // Not ready without a certificate: started without waiting for /ready/proxy.
    other
        .sidecar_unsynced(
            &[],
            "other",
            &[
                "--controller",
                controller.url(),
                "--controller-token-file",
                &token_arg,
                "--identity",
            ],
        )
        .unwrap();
    let refused = || -> Value {
        let (code, body) = other.http_get(admin, "/identity").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(SECS(10), Duration::from_millis(50), || {
        refused()["failures"].as_u64().unwrap_or(0) >= 1
    })
    .unwrap_or_else(|e| panic!("{e}: {}", refused()));
    let got = refused();
    assert!(got["certificate"].is_null(), "{got}");
    let why = got["last_error"].as_str().unwrap();
    assert!(
        why.contains("PermissionDenied") && why.contains("identity"),
        "{why}"
    );
    // Discovery synced (the first snapshot may land after the refusal: failed
    // a CI run, where readiness still named the snapshot) ...
    let synced = || -> Value {
        let (code, routes) = other.http_get(admin, "/routes").unwrap();
        assert_eq!(code, 200);
        serde_json::from_str(&routes).unwrap()
    };
    wait_until(SECS(10), Duration::from_millis(50), || {
        synced()["discovery"]["synced"] == true
    })
    .unwrap_or_else(|e| panic!("{e}: {}", synced()));
    // ... and still not ready: peers would demand mutual TLS of it.
    let metrics: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let (code, why) = other.http_get(metrics, "/ready/proxy").unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("no valid workload certificate"), "{why}");
}
