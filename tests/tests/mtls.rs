//! Tier 2: mutual TLS between sidecars on the wire, in both capture modes
//! (`_iptables`, `_ebpf`), IPv4 and IPv6.
//!
//! A controller with a CA; `front` and `back` run sidecars with `--identity`, so
//! discovery names `back`'s addresses with its SPIFFE ID. The controls: `clear`'s
//! sidecar holds a certificate too, but its service is `mtls: disabled`;
//! `plain`'s holds none (no identity in discovery). While `tcpdump` records the
//! node's bridge, `front`'s unmodified clients send a marker through the mesh:
//! HTTP (curl, a POST body) to `back` through an IPv4 and an IPv6 VIP, opaque TCP
//! (nc, through the tunnel) the same, and HTTP to `clear` and `plain`.
//!
//! - The capture holds no byte of the marker sent to `back`, and its handshakes
//!   are TLS 1.3 with weft's ALPN; the markers sent to `clear` and `plain` are
//!   there in clear (so the check can fail).
//! - Every request was answered, by the application behind the sidecar.
//! - `mtls: strict` (`locked`): `front` is served, a pod without a sidecar is
//!   refused (reset) and counted as `plaintext_refused`; the same client is
//!   served by the permissive `back`.
//! - `back`'s sidecar shows its inbound connections as mutual TLS from `front`'s
//!   identity in `/connections`; `front`'s shows its opaque ones as mutual TLS to
//!   `back`'s.
//!
//! Further tests, iptables only (capture plays no part in them): `openssl
//! s_client` is served with a mesh-CA client certificate and refused without;
//! renewals under load fail no request; a certificate that expires while the
//! controller is away makes the proxy not ready until the controller returns.
#![allow(clippy::unwrap_used)]

mod secure;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nix::sys::signal::Signal;
use secure::{admin_json, app, connections, nc, wait_for_identities};
use serde_json::Value;
use weft_e2e::{python3, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
/// The sidecar's metrics and health listener (`/ready/proxy`).
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);
const FRONT_ID: &str = "spiffe://weft.local/ns/local/sa/frontend";
const BACK_ID: &str = "spiffe://weft.local/ns/local/sa/backend";
const LOCKED_ID: &str = "spiffe://weft.local/ns/local/sa/locked";
/// The TLS 1.3 `supported_versions` extension as a ServerHello carries it (type
/// 43, length 2, version 0x0304): only a TLS 1.3 handshake has it.
const TLS13_SERVER_HELLO_EXT: &[u8] = &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];

#[test]
fn sidecars_carry_meshed_traffic_under_mutual_tls_iptables() {
    marker_stays_encrypted(Mode::Iptables);
}

#[test]
fn sidecars_carry_meshed_traffic_under_mutual_tls_ebpf() {
    marker_stays_encrypted(Mode::Ebpf);
}

fn marker_stays_encrypted(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let front = mode.add_pod(&mesh, "front").unwrap();
    let back = mode.add_pod(&mesh, "back").unwrap();
    let plain = mode.add_pod(&mesh, "plain").unwrap();
    let clear = mode.add_pod(&mesh, "clear").unwrap();
    let locked = mode.add_pod(&mesh, "locked").unwrap();
    // No sidecar at all: an unmeshed client.
    let outside = mode.add_pod(&mesh, "outside").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n\
             \x20 frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{f4}]\n\
             \x20 backend:\n    vip: 10.96.0.10\n    ports:\n      - {{ port: 80, target_port: 8080 }}\n      - {{ port: 90, target_port: 9000, protocol: tcp }}\n    endpoints: [{b4}]\n\
             \x20 backend6:\n    vip: fd00:96::10\n    ports:\n      - {{ port: 80, target_port: 8080 }}\n      - {{ port: 90, target_port: 9000, protocol: tcp }}\n    endpoints: [\"{b6}\"]\n\
             \x20 plain:\n    vip: 10.96.0.12\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{p4}]\n\
             \x20 clear:\n    vip: 10.96.0.14\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{c4}]\n    mtls: disabled\n\
             \x20 locked:\n    vip: 10.96.0.13\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{l4}]\n    mtls: strict\n",
            f4 = front.ipv4(),
            b4 = back.ipv4(),
            b6 = back.ipv6(),
            p4 = plain.ipv4(),
            c4 = clear.ipv4(),
            l4 = locked.ipv4(),
        ),
    )
    .unwrap();
    let ca = mesh.run_dir().join("ca");
    let ca = ca.to_string_lossy().into_owned();
    let controller = Controller::start(&mesh, &file, &["--ca-dir", &ca]).unwrap();
    front.add_route("10.96.0.0/16").unwrap();
    front.add_route("fd00:96::/64").unwrap();
    let url = controller.url().to_owned();
    let with_identity = ["--controller", url.as_str(), "--identity"];
    let front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let plain_sidecar = plain
        .sidecar_with(&[], "plain", &["--controller", url.as_str()])
        .unwrap();
    let locked_sidecar = locked.sidecar_with(&[], "locked", &with_identity).unwrap();
    let clear_sidecar = clear.sidecar_with(&[], "clear", &with_identity).unwrap();
    let _servers = [
        app(
            &back,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "back"],
        ),
        app(&back, "echo", &tool("tcpkit.py"), &["serve-echo", "9000"]),
        app(
            &plain,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "plain"],
        ),
        app(
            &locked,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "locked"],
        ),
        app(
            &clear,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "clear"],
        ),
    ];
    for pod in [&front, &back, &locked, &clear] {
        wait_for_certificate(pod);
    }
    wait_for_identities(&front, &[back.ipv4().into(), back.ipv6().into()], BACK_ID);
    wait_for_identities(&front, &[locked.ipv4().into()], LOCKED_ID);

    let marker = format!("weft-secret-{}", mesh.prefix());
    let in_clear = format!("weft-clear-{}", mesh.prefix());
    let capture = Capture::start(&mesh);
    for vip in ["10.96.0.10", "[fd00:96::10]"] {
        let body = curl_post(&front, &format!("http://{vip}/"), &marker);
        assert_eq!(body, "back", "{vip}");
    }
    for vip in ["10.96.0.10", "fd00:96::10"] {
        let echoed = nc(&front, vip, 90, &marker);
        assert_eq!(echoed, marker, "{vip}");
    }
    assert_eq!(curl_post(&front, "http://10.96.0.12/", &in_clear), "plain");
    let disabled = format!("weft-disabled-{}", mesh.prefix());
    assert_eq!(curl_post(&front, "http://10.96.0.14/", &disabled), "clear");
    let pcap = capture.stop();

    println!(
        "capture: {} bytes; TLS 1.3 ServerHellos: {}",
        pcap.len(),
        count(&pcap, TLS13_SERVER_HELLO_EXT)
    );
    assert_eq!(
        count(&pcap, marker.as_bytes()),
        0,
        "the marker crossed the bridge in clear"
    );
    assert!(
        count(&pcap, in_clear.as_bytes()) > 0,
        "the control's marker is not in the capture: the capture saw nothing"
    );
    assert!(
        count(&pcap, disabled.as_bytes()) > 0,
        "the marker sent to the `mtls: disabled` service is not in clear"
    );
    // Two HTTP connections (IPv4, IPv6), two tunnels: four handshakes at least.
    assert!(
        count(&pcap, TLS13_SERVER_HELLO_EXT) >= 4,
        "no TLS 1.3 handshakes"
    );
    assert!(count(&pcap, b"weft/1") >= 4, "no weft ALPN offered");

    // `mtls: strict`: a meshed client is served (under mutual TLS); an unmeshed
    // one is refused (reset), and counted, where a permissive service serves it.
    assert_eq!(curl_post(&front, "http://10.96.0.13/", "hello"), "locked");
    let refused = outside
        .run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                &format!("http://{}:8080/", locked.ipv4()),
            ],
            None,
            SECS(20),
        )
        .unwrap();
    assert!(!refused.status.success(), "served in clear: {refused:?}");
    let counted = locked_sidecar
        .metric(
            "weft_proxy_errors_total",
            &[("reason", "plaintext_refused")],
        )
        .unwrap();
    assert!(counted >= 1.0, "not counted: {counted}");
    let served = outside
        .run_ok(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                &format!("http://{}:8080/", back.ipv4()),
            ],
            None,
            SECS(20),
        )
        .unwrap();
    assert_eq!(
        served.trim(),
        "back",
        "permissive serves the unmeshed client"
    );

    // Inbound at `back`: every connection from `front` is mutual TLS from its
    // identity.
    let inbound: Vec<Value> = connections(&back)
        .into_iter()
        .filter(|c| c["direction"] == "inbound")
        .filter(|c| {
            c["source"]
                .as_str()
                .is_some_and(|s| !s.starts_with(&outside.ipv4().to_string()))
        })
        .collect();
    assert!(inbound.len() >= 4, "{inbound:#?}");
    for c in &inbound {
        assert_eq!(c["tls"], true, "{c}");
        assert_eq!(c["peer_identity"], FRONT_ID, "{c}");
    }
    // The series say the same (`tls`): both sides of the edges to `back` (HTTP
    // and TCP), the unmeshed client's plaintext, and the edge to `plain`.
    let count = |sidecar: &weft_e2e::Sidecar, name: &str, labels: &[(&str, &str)]| {
        sidecar.metric(name, labels).unwrap()
    };
    let (requests, opened) = (
        "weft_http_requests_total",
        "weft_tcp_connections_opened_total",
    );
    let out = |service, tls| {
        [
            ("direction", "outbound"),
            ("destination_service", service),
            ("tls", tls),
        ]
    };
    let inbound = |tls| [("direction", "inbound"), ("tls", tls)];
    for service in ["backend", "backend6"] {
        assert_eq!(
            count(&front_sidecar, requests, &out(service, "true")),
            1.0,
            "{service}"
        );
        // The HTTP connection and the nc one.
        assert_eq!(
            count(&front_sidecar, opened, &out(service, "true")),
            2.0,
            "{service}"
        );
        assert_eq!(
            count(&front_sidecar, opened, &out(service, "false")),
            0.0,
            "{service}"
        );
    }
    assert_eq!(count(&back_sidecar, requests, &inbound("true")), 2.0);
    assert_eq!(
        count(&back_sidecar, requests, &inbound("false")),
        1.0,
        "outside's"
    );
    assert!(count(&back_sidecar, opened, &inbound("true")) >= 4.0);
    assert_eq!(count(&front_sidecar, requests, &out("plain", "false")), 1.0);
    assert_eq!(count(&plain_sidecar, requests, &inbound("false")), 1.0);
    assert_eq!(count(&plain_sidecar, requests, &inbound("true")), 0.0);
    assert_eq!(count(&front_sidecar, requests, &out("clear", "false")), 1.0);
    assert_eq!(count(&clear_sidecar, requests, &inbound("false")), 1.0);

    // Outbound opaque at `front`: mutual TLS to `back`'s identity.
    let opaque: Vec<Value> = connections(&front)
        .into_iter()
        .filter(|c| c["direction"] == "outbound" && c["protocol"] == "tcp")
        .filter(|c| c["service"] == "backend" || c["service"] == "backend6")
        .collect();
    assert_eq!(opaque.len(), 2, "{opaque:#?}");
    for c in &opaque {
        assert_eq!(c["tls"], true, "{c}");
        assert_eq!(c["peer_identity"], BACK_ID, "{c}");
    }
}

/// `tcpdump` on the node's bridge, writing a pcap file.
struct Capture {
    proc: PodProc,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(mesh: &Mesh) -> Capture {
        let file = mesh.run_dir().join("bridge.pcap");
        let argv = [
            "tcpdump",
            "-i",
            "br0",
            "-U",
            // Each packet as it comes (else they wait in the kernel's ring buffer).
            "--immediate-mode",
            "-n",
            // Root writes the file: no switch to the tcpdump user.
            "-Z",
            "root",
            "-s",
            "0",
            "-w",
            file.to_str().unwrap(),
            "tcp",
        ];
        let proc = mesh
            .node()
            .spawn(ProcSpec::new(argv).name("tcpdump"))
            .unwrap();
        wait_until(SECS(10), MS(20), || proc.logs().contains("listening on"))
            .unwrap_or_else(|e| panic!("tcpdump: {e}: {}", proc.logs()));
        Capture { proc, file }
    }

    /// Stops the capture (flushing it) and returns the file's bytes.
    fn stop(self) -> Vec<u8> {
        // Packets still in flight reach the bridge: a moment before stopping.
        std::thread::sleep(MS(300));
        self.proc.signal(Signal::SIGINT).unwrap();
        self.proc
            .wait_timeout(SECS(10))
            .unwrap_or_else(|| panic!("tcpdump did not stop: {}", self.proc.logs()));
        std::fs::read(&self.file).unwrap()
    }
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn curl_post(pod: &ModePod, url: &str, body: &str) -> String {
    pod.run_ok(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--data-binary",
            body,
            url,
        ],
        None,
        SECS(20),
    )
    .unwrap()
    .trim()
    .to_owned()
}

fn wait_for_certificate(pod: &ModePod) {
    wait_until(SECS(10), MS(50), || {
        !admin_json(pod, "/identity")["certificate"].is_null()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{}: no certificate ({e}): {}",
            pod.name(),
            admin_json(pod, "/identity")
        )
    });
}

/// `openssl s_client` as a peer sidecar would be, against a pod's application port
/// (captured to its sidecar's inbound port): with weft's ALPN and a client
/// certificate from the mesh CA it sees the server's chain and SPIFFE ID and is
/// served; without a client certificate, or with one from another CA, it gets no
/// answer. Capture mode plays no part in the handshake: iptables only.
#[test]
fn openssl_with_a_mesh_certificate_is_served_and_without_one_is_refused() {
    let mesh = Mesh::new().unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "back").unwrap();
    let outside = Mode::Iptables.add_pod(&mesh, "outside").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    backend_mesh_file(&file, &back, "");
    let dir = mesh.run_dir().to_owned();
    let ca = dir.join("ca");
    let ca_arg = ca.to_string_lossy().into_owned();
    let controller = Controller::start(&mesh, &file, &["--ca-dir", &ca_arg]).unwrap();
    let _sidecar = back
        .sidecar_with(
            &[],
            "backend",
            &["--controller", controller.url(), "--identity"],
        )
        .unwrap();
    let _app = app(
        &back,
        "http",
        &tool("httpkit.py"),
        &["serve", "8080", "back"],
    );
    wait_for_certificate(&back);

    // A client certificate signed by the mesh CA (its key and root in --ca-dir),
    // and one signed by another CA.
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.pem",
        "-subj",
        "/O=weft",
        "-days",
        "1",
    ]);
    for (name, ca_cert, ca_key) in [
        ("mesh", path("ca/ca.pem"), path("ca/ca.key")),
        ("other", path("other-ca.pem"), path("other-ca.key")),
    ] {
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-client.key"),
            "-out",
            &format!("{name}-client.csr"),
            "-subj",
            "/O=weft",
            "-addext",
            "subjectAltName=URI:spiffe://weft.local/ns/local/sa/tester",
            "-addext",
            "extendedKeyUsage=clientAuth",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}-client.csr"),
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-copy_extensions",
            "copy",
            "-out",
            &format!("{name}-client.pem"),
        ]);
    }

    let target = format!("{}:8080", back.ipv4());
    let s_client = |client: Option<&str>| -> String {
        let mut script = format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: back\\r\\nConnection: close\\r\\n\\r\\n' | \
             openssl s_client -connect {target} -alpn weft/1 -CAfile {} -showcerts -ign_eof",
            path("ca/ca.pem")
        );
        if let Some(name) = client {
            script += &format!(
                " -cert {} -key {}",
                path(&format!("{name}-client.pem")),
                path(&format!("{name}-client.key"))
            );
        }
        let out = outside
            .run(["sh", "-c", &format!("{script} 2>&1")], None, SECS(20))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let served = s_client(Some("mesh"));
    assert!(served.contains("TLSv1.3"), "{served}");
    assert!(served.contains("ALPN protocol: weft/1"), "{served}");
    assert!(served.contains("Verify return code: 0 (ok)"), "{served}");
    assert!(served.contains("HTTP/1.1 200"), "{served}");
    // The server's certificate names the backend's SPIFFE ID.
    let leaf = served
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap_or_else(|| panic!("no certificate shown: {served}"));
    let pem = format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n");
    std::fs::write(dir.join("server.pem"), pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("server.pem"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&out.stdout);
    assert!(san.contains(&format!("URI:{BACK_ID}")), "{san}");

    for client in [None, Some("other")] {
        let refused = s_client(client);
        assert!(
            !refused.contains("HTTP/1.1"),
            "{client:?} was served: {refused}"
        );
        assert!(refused.contains("alert"), "{client:?}: {refused}");
    }
}

/// Certificates of 12 s, renewed at 70%: a keep-alive load of 200 requests a
/// second for 30 s through `front`'s and `back`'s sidecars, across at least three
/// renewals of each, has no failed request, and the serial `openssl s_client`
/// sees at `back` changes. Capture mode plays no part: iptables only.
#[test]
fn renewals_under_load_fail_no_request_and_change_the_certificate() {
    let mesh = Mesh::new().unwrap();
    let front = Mode::Iptables.add_pod(&mesh, "front").unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "back").unwrap();
    let outside = Mode::Iptables.add_pod(&mesh, "outside").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}]\n",
            front.ipv4(),
            back.ipv4()
        ),
    )
    .unwrap();
    let ca = mesh.run_dir().join("ca").to_string_lossy().into_owned();
    let controller =
        Controller::start(&mesh, &file, &["--ca-dir", &ca, "--cert-lifetime", "12s"]).unwrap();
    front.add_route("10.96.0.0/16").unwrap();
    let args = ["--controller", controller.url(), "--identity"];
    let _front_sidecar = front.sidecar_with(&[], "frontend", &args).unwrap();
    let _back_sidecar = back.sidecar_with(&[], "backend", &args).unwrap();
    let _app = app(
        &back,
        "http",
        &tool("httpkit.py"),
        &["serve", "8080", "back"],
    );
    for pod in [&front, &back] {
        wait_for_certificate(pod);
    }
    wait_for_identities(&front, &[back.ipv4().into()], BACK_ID);

    // The serial of the certificate `back` presents (the handshake itself fails:
    // no client certificate; the server's has been seen by then).
    let serial = || -> String {
        let script = format!(
            "openssl s_client -connect {}:8080 -alpn weft/1 </dev/null 2>/dev/null | openssl x509 -noout -serial",
            back.ipv4()
        );
        let out = outside
            .run_ok(["sh", "-c", &script], None, SECS(20))
            .unwrap();
        assert!(out.starts_with("serial="), "{out}");
        out.trim().to_owned()
    };
    let first = serial();
    let issued = |pod: &ModePod| admin_json(pod, "/identity")["issued"].as_u64().unwrap();
    let before = (issued(&front), issued(&back));

    let out = front
        .run_ok(
            [
                python3().to_string_lossy().as_ref(),
                &tool("httpkit.py"),
                "load",
                "http://10.96.0.10/",
                "200",
                "30",
                "4",
            ],
            None,
            SECS(90),
        )
        .unwrap();
    let result: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let after = (issued(&front), issued(&back));
    let last = serial();
    println!("load: {result}; certificates issued (front, back): {before:?} -> {after:?}; serial {first} -> {last}");
    assert_eq!(result["sent"], 6000, "{result}");
    assert_eq!(result["errors"], 0, "{result}");
    assert_eq!(result["statuses"]["200"], 6000, "{result}");
    assert!(
        after.0 >= before.0 + 3 && after.1 >= before.1 + 3,
        "{before:?} -> {after:?}"
    );
    assert_ne!(first, last, "the certificate was not renewed");
    // The load went under mutual TLS: every connection `back` took from `front`.
    let from_front = format!("{}:", front.ipv4());
    let inbound: Vec<Value> = connections(&back)
        .into_iter()
        .filter(|c| {
            c["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&from_front))
        })
        .collect();
    assert!(!inbound.is_empty(), "no connection from front at back");
    for c in &inbound {
        assert_eq!(c["tls"], true, "{c}");
        assert_eq!(c["peer_identity"], FRONT_ID, "{c}");
    }
}

/// A proxy whose certificate (10 s) expires while the controller is away reports
/// not ready, and recovers when the controller (its CA persisted in `--ca-dir`)
/// returns: the new certificate chains to the same root. Meanwhile a client
/// sidecar without a valid certificate fails closed: a new connection to the
/// meshed `back` is reset and counted `no_certificate`, never sent in plaintext
/// (pooled HTTP connections keep the security they were made with). iptables only.
#[test]
fn a_certificate_expired_while_the_controller_was_away_is_not_ready_until_it_returns() {
    let mesh = Mesh::new().unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "back").unwrap();
    let front = Mode::Iptables.add_pod(&mesh, "front").unwrap();
    front.add_route("10.96.0.0/16").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    backend_mesh_file(
        &file,
        &back,
        ", { port: 90, target_port: 9000, protocol: tcp }",
    );
    let ca = mesh.run_dir().join("ca");
    let ca_arg = ca.to_string_lossy().into_owned();
    let args = ["--ca-dir", ca_arg.as_str(), "--cert-lifetime", "10s"];
    let controller = Controller::start(&mesh, &file, &args).unwrap();
    let with_identity = ["--controller", controller.url(), "--identity"];
    let back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let _server = app(&back, "echo", &tool("tcpkit.py"), &["serve-echo", "9000"]);
    wait_for_identities(&front, &[back.ipv4().into()], BACK_ID);
    let root = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let ready = || back.http_get(METRICS, "/ready/proxy").unwrap();
    assert_eq!(ready().0, 200, "{:?}", ready());
    let echo = || {
        let script = "printf %s hello | nc -N -w 10 10.96.0.10 90; true";
        front.run_ok(["sh", "-c", script], None, SECS(20)).unwrap()
    };
    assert_eq!(echo(), "hello");

    controller.proc().signal(Signal::SIGKILL).unwrap();
    controller.proc().wait_timeout(SECS(5)).expect("killed");
    wait_until(SECS(20), MS(100), || ready().0 == 503)
        .unwrap_or_else(|e| panic!("still ready with the controller away ({e}): {:?}", ready()));
    let (_, why) = ready();
    assert!(why.contains("no valid workload certificate"), "{why}");
    let front_ready = || front.http_get(METRICS, "/ready/proxy").unwrap().0;
    wait_until(SECS(20), MS(100), || front_ready() == 503).unwrap();
    assert_eq!(echo(), "", "served without a certificate");
    let no_certificate = front_sidecar
        .metric("weft_proxy_errors_total", &[("reason", "no_certificate")])
        .unwrap();
    assert_eq!(no_certificate, 1.0);
    let plaintext = back_sidecar
        .metric(
            "weft_tcp_connections_opened_total",
            &[("direction", "inbound"), ("tls", "false")],
        )
        .unwrap();
    assert_eq!(plaintext, 0.0, "a connection reached back in plaintext");

    let _controller = Controller::start(&mesh, &file, &args).unwrap();
    wait_until(SECS(60), MS(200), || ready().0 == 200)
        .unwrap_or_else(|e| panic!("not ready again ({e}): {}", admin_json(&back, "/identity")));
    let identity = admin_json(&back, "/identity");
    assert_eq!(
        identity["certificate"]["trust_bundle_pem"].as_str(),
        Some(root.as_str()),
        "the CA's root changed across the restart"
    );
    wait_until(SECS(60), MS(200), || front_ready() == 200).unwrap();
    assert_eq!(echo(), "hello", "served again");
}

/// A CA rotated in three restarts of the controller while a keep-alive HTTP load
/// (100 requests a second for 30 s) and a stream of new opaque TCP connections (each a new
/// mutual TLS handshake through the tunnel) run through `front` and `back`: no
/// request and no connection fails.
///
/// 1. The old CA (`ca-a`) trusts the new one's root too (`trust-anchors.pem`):
///    every snapshot brings both roots to the proxies, which keep their
///    certificates.
/// 2. The new CA (`ca-b`, trusting the old root) takes over: the proxies renew
///    into certificates from it, each trusted by a peer still holding an old one.
/// 3. The new CA alone: the bundle is its root only.
///
/// Capture mode plays no part: iptables only.
#[test]
fn the_ca_rotates_without_a_failed_request_or_connection() {
    let mesh = Mesh::new().unwrap();
    let front = Mode::Iptables.add_pod(&mesh, "front").unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "back").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n  backend:\n    vip: 10.96.0.10\n    ports:\n      - {{ port: 80, target_port: 8080 }}\n      - {{ port: 90, target_port: 9000, protocol: tcp }}\n    endpoints: [{}]\n",
            front.ipv4(),
            back.ipv4()
        ),
    )
    .unwrap();
    let (ca_a, ca_b) = (mesh.run_dir().join("ca-a"), mesh.run_dir().join("ca-b"));
    let new_ca = make_ca(&front, &ca_b);
    let args = |dir: &std::path::Path| {
        vec![
            "--ca-dir".to_owned(),
            dir.to_string_lossy().into_owned(),
            "--cert-lifetime".to_owned(),
            "10s".to_owned(),
        ]
    };
    let start = |dir: &std::path::Path| {
        let args = args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Controller::start(&mesh, &file, &args).unwrap()
    };
    let mut controller = start(&ca_a);
    let old_ca = std::fs::read_to_string(ca_a.join("ca.pem")).unwrap();
    front.add_route("10.96.0.0/16").unwrap();
    let with_identity = ["--controller", controller.url(), "--identity"];
    let _front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let _back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let _apps = [
        app(
            &back,
            "http",
            &tool("httpkit.py"),
            &["serve", "8080", "back"],
        ),
        app(&back, "echo", &tool("tcpkit.py"), &["serve-echo", "9000"]),
    ];
    for pod in [&front, &back] {
        wait_for_certificate(pod);
    }
    wait_for_identities(&front, &[back.ipv4().into()], BACK_ID);

    let load = front
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                &tool("httpkit.py"),
                "load",
                "http://10.96.0.10/",
                "100",
                "30",
                "4",
            ])
            .name("load"),
        )
        .unwrap();
    // New connections all along: 20 at a time, each echoing one record.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let bursts = std::thread::scope(|s| {
        let connections = s.spawn(|| {
            let mut totals = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = front
                    .run_ok(
                        [
                            python3().to_string_lossy().as_ref(),
                            &tool("tcpkit.py"),
                            "burst",
                            "10.96.0.10",
                            "90",
                            "20",
                            "1",
                        ],
                        None,
                        SECS(30),
                    )
                    .unwrap();
                let field = |name: &str| -> u64 {
                    out.split_whitespace()
                        .find_map(|w| w.strip_prefix(name)?.parse().ok())
                        .unwrap_or_else(|| panic!("{name} in {out:?}"))
                };
                totals.0 += field("ok=");
                totals.1 += field("bad=");
                totals.2 += field("errors=");
                std::thread::sleep(MS(300));
            }
            totals
        });
        let restart = |controller: &mut Controller, dir: &std::path::Path| {
            controller.proc().signal(Signal::SIGTERM).unwrap();
            controller.proc().wait_timeout(SECS(10)).expect("stopped");
            *controller = start(dir);
        };
        let bundle = |pod: &ModePod| -> String {
            admin_json(pod, "/identity")["certificate"]["trust_bundle_pem"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let issued_by = |pod: &ModePod, root: &str| -> bool {
            let cert = admin_json(pod, "/identity")["certificate"]["cert_pem"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            verifies(&front, &cert, root)
        };
        std::thread::sleep(SECS(3));
        // 1. Both roots, from the old CA.
        std::fs::write(ca_a.join("trust-anchors.pem"), &new_ca).unwrap();
        restart(&mut controller, &ca_a);
        for pod in [&front, &back] {
            wait_until(SECS(20), MS(100), || {
                let b = bundle(pod);
                b.contains(new_ca.trim_end()) && b.contains(old_ca.trim_end())
            })
            .unwrap_or_else(|e| panic!("{}: no new root ({e}): {}", pod.name(), bundle(pod)));
        }
        std::thread::sleep(SECS(3));
        // 2. The new CA, trusting the old root.
        std::fs::write(ca_b.join("trust-anchors.pem"), &old_ca).unwrap();
        restart(&mut controller, &ca_b);
        for pod in [&front, &back] {
            wait_until(SECS(30), MS(200), || issued_by(pod, &new_ca))
                .unwrap_or_else(|e| panic!("{}: no certificate from the new CA ({e})", pod.name()));
        }
        std::thread::sleep(SECS(3));
        // 3. The new CA alone.
        std::fs::remove_file(ca_b.join("trust-anchors.pem")).unwrap();
        restart(&mut controller, &ca_b);
        for pod in [&front, &back] {
            wait_until(SECS(20), MS(100), || {
                !bundle(pod).contains(old_ca.trim_end())
            })
            .unwrap_or_else(|e| panic!("{}: the old root stays ({e})", pod.name()));
        }
        std::thread::sleep(SECS(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        connections.join().unwrap()
    });
    // Open loop, but a client on a busy machine may fall behind: time to catch up.
    load.wait_timeout(SECS(120))
        .unwrap_or_else(|| panic!("the load did not end: {}", load.logs()));
    let result: Value = serde_json::from_str(load.logs().lines().last().unwrap()).unwrap();
    println!("rotation: HTTP load {result}; new connections ok/bad/errors {bursts:?}");
    assert_eq!(result["errors"], 0, "{result}");
    assert_eq!(result["statuses"]["200"], result["sent"], "{result}");
    assert_eq!(
        (bursts.1, bursts.2),
        (0, 0),
        "connections failed: {bursts:?}"
    );
    assert!(
        bursts.0 >= 100,
        "too few connections to show anything: {bursts:?}"
    );
}

/// Writes a mesh file of `backend` alone (VIP 10.96.0.10), `back`'s pod its
/// endpoint, on port 80 (to 8080) and `more_ports` (`, { port: ... }`).
fn backend_mesh_file(file: &std::path::Path, back: &ModePod, more_ports: &str) {
    std::fs::write(
        file,
        format!(
            "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080 }}{more_ports}]\n    endpoints: [{}]\n",
            back.ipv4()
        ),
    )
    .unwrap();
}

/// Makes a CA in `dir` as an operator would with openssl (an EC P-256 key,
/// PKCS#8, and a self-signed CA root) and returns its root, PEM.
fn make_ca(pod: &ModePod, dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.to_str().unwrap();
    let script = format!(
        "set -e; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {d}/ca.key; \
         openssl req -x509 -new -key {d}/ca.key -days 2 -subj /O=weft/CN=next-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
         -out {d}/ca.pem; chmod 600 {d}/ca.key"
    );
    pod.run_ok(["sh", "-c", &script], None, SECS(20)).unwrap();
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

/// Whether `cert_pem` chains to `root_pem` (`openssl verify`).
fn verifies(pod: &ModePod, cert_pem: &str, root_pem: &str) -> bool {
    if cert_pem.is_empty() {
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, root) = (dir.path().join("cert.pem"), dir.path().join("root.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&root, root_pem).unwrap();
    pod.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            // The chain's other certificates (an intermediate) as candidates.
            "-untrusted",
            cert.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
        None,
        SECS(20),
    )
    .unwrap()
    .status
    .success()
}

/// The CA as cert-manager leaves it in a mounted Secret (`tls.crt`, `tls.key`,
/// `ca.crt`), here an intermediate under a root made with openssl: the
/// sidecars' certificates come with the intermediate, and `front` reaches `back`
/// under mutual TLS, each trusting the root alone. iptables only.
#[test]
fn a_ca_from_a_tls_secret_signs_with_its_intermediate() {
    let mesh = Mesh::new().unwrap();
    let front = Mode::Iptables.add_pod(&mesh, "front").unwrap();
    let back = Mode::Iptables.add_pod(&mesh, "back").unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    backend_mesh_file(&file, &back, "");
    let secret = mesh.run_dir().join("mesh-ca-secret");
    std::fs::create_dir_all(&secret).unwrap();
    let d = secret.to_str().unwrap();
    // A root, and the CA under it; the Secret's files as cert-manager names them.
    let script = format!(
        "set -e; cd {d}; \
         openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key; \
         openssl req -x509 -new -key root.key -days 2 -subj /O=weft/CN=root \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt; \
         openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out tls.key; \
         openssl req -new -key tls.key -subj /O=weft/CN=mesh-ca -out ca.csr; \
         printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ext; \
         openssl x509 -req -in ca.csr -CA ca.crt -CAkey root.key -CAcreateserial -days 2 -extfile ext -out tls.crt; \
         rm root.key ca.csr ext ca.srl"
    );
    front.run_ok(["sh", "-c", &script], None, SECS(20)).unwrap();
    let root = std::fs::read_to_string(secret.join("ca.crt")).unwrap();
    let controller = Controller::start(&mesh, &file, &["--ca-dir", d]).unwrap();
    front.add_route("10.96.0.0/16").unwrap();
    let with_identity = ["--controller", controller.url(), "--identity"];
    let front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let _back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let _app = app(
        &back,
        "http",
        &tool("httpkit.py"),
        &["serve", "8080", "back"],
    );
    for pod in [&front, &back] {
        wait_for_certificate(pod);
        let cert = &admin_json(pod, "/identity")["certificate"];
        assert_eq!(cert["trust_bundle_pem"].as_str(), Some(root.as_str()));
        let chain = cert["cert_pem"].as_str().unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
        assert!(verifies(pod, chain, &root), "{chain}");
    }
    wait_for_identities(&front, &[back.ipv4().into()], BACK_ID);
    assert_eq!(curl_post(&front, "http://10.96.0.10/", "hello"), "back");
    let secured = front_sidecar
        .metric(
            "weft_http_requests_total",
            &[("destination_service", "backend"), ("tls", "true")],
        )
        .unwrap();
    assert_eq!(secured, 1.0);
    let files: Vec<String> = std::fs::read_dir(&secret)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        3,
        "the controller wrote into the Secret: {files:?}"
    );
}
