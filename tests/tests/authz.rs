//! Tier 2: authorization policy, in both capture modes (`_iptables`, `_ebpf`).
//!
//! A controller with a CA; `front`, `other` and `back` run sidecars with
//! `--identity` (each named for its service); `outside` has no sidecar. The mesh
//! file lets only `frontend` (by service) call `backend`'s HTTP port and only
//! `frontend`'s SPIFFE ID its TCP port.
//!
//! - `front` gets 200 over HTTP and its bytes echoed over TCP (through the tunnel).
//! - `other` gets 403 with `x-weft-error: unauthorized` over HTTP (the client
//!   sidecar passes the peer's answer on) and its TCP connection reset; so does
//!   `outside` in plaintext. `back`'s sidecar counts each as `unauthorized` and
//!   never dials its application for them; `other`'s counts its refused TCP
//!   connection too.
//! - The verdict on HTTP is asked at each request: an edit that leaves `frontend`
//!   without its endpoint (so its identity unnamed) refuses `front`'s next
//!   request on the connection it already has; one that allows the namespace
//!   `local` on the HTTP port lets `other` in, without a restart.
#![allow(clippy::unwrap_used)]

mod secure;

use std::time::Duration;

use secure::{admin_json, app, connections, nc, wait_for_identities};
use serde_json::Value;
use weft_e2e::{tool, wait_until, Controller, Mesh, Mode, ModePod};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
const FRONT_ID: &str = "spiffe://weft.local/ns/local/sa/frontend";
const BACK_ID: &str = "spiffe://weft.local/ns/local/sa/backend";

#[test]
fn only_authorized_callers_reach_the_service_iptables() {
    only_authorized_callers(Mode::Iptables);
}

#[test]
fn only_authorized_callers_reach_the_service_ebpf() {
    only_authorized_callers(Mode::Ebpf);
}

/// The mesh file's versions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    AsWritten,
    /// `frontend` without its endpoint: no identity is `frontend`'s any more.
    FrontendGone,
    /// Port 80 also allows the namespace `local`.
    NamespaceToo,
}

/// The mesh file: `backend`'s port 80 for the service `frontend` (and, with
/// `namespace_too`, for the namespace `local`), its port 90 for `frontend`'s
/// identity.
fn mesh_file(front: &ModePod, other: &ModePod, back: &ModePod, edit: Edit) -> String {
    let namespace = if edit == Edit::NamespaceToo {
        "\n          - namespace: local"
    } else {
        ""
    };
    let frontend = if edit == Edit::FrontendGone {
        String::new()
    } else {
        front.ipv4().to_string()
    };
    format!(
        "services:
  frontend:
    vip: 10.96.0.2
    ports: [{{ port: 80 }}]
    endpoints: [{frontend}]
  other:
    vip: 10.96.0.3
    ports: [{{ port: 80 }}]
    endpoints: [{o}]
  backend:
    vip: 10.96.0.10
    ports:
      - {{ port: 80, target_port: 8080 }}
      - {{ port: 90, target_port: 9000, protocol: tcp }}
    endpoints: [{b}]
    authorization:
      - port: 80
        allow:
          - service: frontend{namespace}
      - port: 90
        allow:
          - identity: {FRONT_ID}
",
        o = other.ipv4(),
        b = back.ipv4(),
    )
}

fn only_authorized_callers(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let front = mode.add_pod(&mesh, "front").unwrap();
    let other = mode.add_pod(&mesh, "other").unwrap();
    let back = mode.add_pod(&mesh, "back").unwrap();
    let outside = mode.add_pod(&mesh, "outside").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(&file, mesh_file(&front, &other, &back, Edit::AsWritten)).unwrap();
    let ca = mesh.run_dir().join("ca");
    let ca = ca.to_string_lossy().into_owned();
    let controller = Controller::start(&mesh, &file, &["--ca-dir", &ca]).unwrap();
    for pod in [&front, &other] {
        pod.add_route("10.96.0.0/16").unwrap();
    }
    let url = controller.url().to_owned();
    let with_identity = ["--controller", url.as_str(), "--identity"];
    let _front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let other_sidecar = other.sidecar_with(&[], "other", &with_identity).unwrap();
    let back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let _servers = [
        app(
            &back,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "back"],
        ),
        app(&back, "echo", &tool("tcpkit.py"), &["serve-echo", "9000"]),
    ];
    // Every sidecar knows the others by identity: `back`'s resolves `frontend`'s,
    // the clients dial `back` under mutual TLS.
    wait_for_identities(&back, &[front.ipv4().into()], FRONT_ID);
    wait_for_identities(&front, &[back.ipv4().into()], BACK_ID);
    wait_for_identities(&other, &[back.ipv4().into()], BACK_ID);

    let line = format!("weft-authz-{}", mesh.prefix());
    // Allowed: by service (HTTP) and by identity (TCP, through the tunnel).
    assert_eq!(
        http(&front, "http://10.96.0.10/"),
        (200, None, "back".into())
    );
    assert_eq!(nc(&front, "10.96.0.10", 90, &line), line);

    // Refused: another meshed workload, and a pod without a sidecar (plaintext,
    // no identity), over HTTP and TCP.
    let forbidden = (403, Some("unauthorized".to_owned()), "unauthorized".into());
    assert_eq!(http(&other, "http://10.96.0.10/"), forbidden);
    assert_eq!(
        nc(&other, "10.96.0.10", 90, &line),
        "",
        "other's TCP was served"
    );
    let direct = format!("http://{}:8080/", back.ipv4());
    assert_eq!(http(&outside, &direct), forbidden);
    assert_eq!(
        nc(&outside, &back.ipv4().to_string(), 9000, &line),
        "",
        "outside's TCP was served"
    );
    let refused = |sidecar: &weft_e2e::Sidecar| {
        sidecar
            .metric("weft_proxy_errors_total", &[("reason", "unauthorized")])
            .unwrap()
    };
    // Two HTTP requests and two TCP connections at `back`; `other`'s own sidecar
    // heard the tunnel's refusal.
    assert_eq!(refused(&back_sidecar), 4.0);
    assert_eq!(refused(&other_sidecar), 1.0);
    // The refused requests are counted with the status their clients saw.
    let forbidden_requests = back_sidecar
        .metric(
            "weft_http_requests_total",
            &[("direction", "inbound"), ("status_code", "403")],
        )
        .unwrap();
    assert_eq!(forbidden_requests, 2.0);
    // Only `front`'s connections reached the application (a refused one shows no
    // endpoint; a refused TCP one ended `unauthorized`).
    let inbound: Vec<Value> = connections(&back)
        .into_iter()
        .filter(|c| c["direction"] == "inbound")
        .collect();
    assert_eq!(inbound.len(), 6, "{inbound:#?}");
    for c in &inbound {
        let from_front = c["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{}:", front.ipv4())));
        let reached_app = c["endpoint"].is_string();
        assert_eq!(from_front, reached_app, "{c}");
        if from_front {
            assert_eq!(c["peer_identity"], FRONT_ID, "{c}");
        } else if c["protocol"] == "tcp" {
            assert!(c["end"].to_string().contains("unauthorized"), "{c}");
        }
    }

    // The verdict is asked at each HTTP request: `frontend` without its endpoint
    // (so without an identity to allow), `front`'s next request on the
    // connection it already has to `back` is refused.
    let front_conns = || {
        connections(&back)
            .into_iter()
            .filter(|c| {
                c["protocol"] == "http1"
                    && c["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(&format!("{}:", front.ipv4())))
            })
            .count()
    };
    let before = front_conns();
    std::fs::write(&file, mesh_file(&front, &other, &back, Edit::FrontendGone)).unwrap();
    wait_until(SECS(10), MS(100), || {
        http(&front, "http://10.96.0.10/").0 == 403
    })
    .unwrap_or_else(|e| panic!("front still served after the edit: {e}"));
    assert_eq!(
        front_conns(),
        before,
        "the refusal came on the same connection"
    );

    // The namespace `local` allowed on port 80: `other` is let in, live.
    std::fs::write(&file, mesh_file(&front, &other, &back, Edit::NamespaceToo)).unwrap();
    wait_until(SECS(10), MS(100), || {
        http(&other, "http://10.96.0.10/").0 == 200
    })
    .unwrap_or_else(|e| panic!("other still refused after the edit: {e}"));
    assert_eq!(http(&front, "http://10.96.0.10/").0, 200, "front again");
    // Its TCP port still names `frontend`'s identity alone.
    assert_eq!(nc(&other, "10.96.0.10", 90, &line), "");
    assert_eq!(
        admin_json(&other, "/routes")["discovery"]["synced"],
        true,
        "other's sidecar"
    );
}

/// A GET from `pod`: the status, `x-weft-error` and the body.
fn http(pod: &ModePod, url: &str) -> (u16, Option<String>, String) {
    let out = pod
        .run_ok(
            ["curl", "-sS", "--max-time", "10", "-D", "-", url],
            None,
            SECS(20),
        )
        .unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {out}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let error = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-weft-error")
            .then(|| value.trim().to_owned())
    });
    (status, error, body.trim().to_owned())
}
