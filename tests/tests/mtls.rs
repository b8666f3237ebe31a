//! Tier 2: mutual TLS between sidecars on the wire, in both capture modes
//! (`_iptables`, `_ebpf`), IPv4 and IPv6.
//!
//! A controller with a CA; `front` and `back` run sidecars with `--identity`, so
//! discovery names `back`'s addresses with its SPIFFE ID; `plain`'s sidecar holds
//! no certificate (no identity in discovery: the control). While `tcpdump` records
//! the node's bridge, `front`'s unmodified clients send a marker through the mesh:
//! HTTP (curl, a POST body) to `back` through an IPv4 and an IPv6 VIP, opaque TCP
//! (nc, through the tunnel) the same, and HTTP to `plain`.
//!
//! - The capture holds no byte of the marker sent to `back`, and its handshakes
//!   are TLS 1.3 with weft's ALPN; the marker sent to `plain` is there in clear
//!   (so the check can fail).
//! - Every request was answered, by the application behind the sidecar.
//! - `back`'s sidecar shows its inbound connections as mutual TLS from `front`'s
//!   identity in `/connections`; `front`'s shows its opaque ones as mutual TLS to
//!   `back`'s.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use weft_e2e::{python3, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const FRONT_ID: &str = "spiffe://weft.local/ns/local/sa/frontend";
const BACK_ID: &str = "spiffe://weft.local/ns/local/sa/backend";
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
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n\
             \x20 frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{f4}]\n\
             \x20 backend:\n    vip: 10.96.0.10\n    ports:\n      - {{ port: 80, target_port: 8080 }}\n      - {{ port: 90, target_port: 9000, protocol: tcp }}\n    endpoints: [{b4}]\n\
             \x20 backend6:\n    vip: fd00:96::10\n    ports:\n      - {{ port: 80, target_port: 8080 }}\n      - {{ port: 90, target_port: 9000, protocol: tcp }}\n    endpoints: [\"{b6}\"]\n\
             \x20 plain:\n    vip: 10.96.0.12\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{p4}]\n",
            f4 = front.ipv4(),
            b4 = back.ipv4(),
            b6 = back.ipv6(),
            p4 = plain.ipv4(),
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
    let _front_sidecar = front.sidecar_with(&[], "frontend", &with_identity).unwrap();
    let _back_sidecar = back.sidecar_with(&[], "backend", &with_identity).unwrap();
    let _plain_sidecar = plain
        .sidecar_with(&[], "plain", &["--controller", url.as_str()])
        .unwrap();
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
    ];
    wait_for_certificate(&front);
    wait_for_certificate(&back);
    wait_for_identities(&front, &[back.ipv4().into(), back.ipv6().into()]);

    let marker = format!("weft-secret-{}", mesh.prefix());
    let clear = format!("weft-clear-{}", mesh.prefix());
    let capture = Capture::start(&mesh);
    for vip in ["10.96.0.10", "[fd00:96::10]"] {
        let body = curl_post(&front, &format!("http://{vip}/"), &marker);
        assert_eq!(body, "back", "{vip}");
    }
    for vip in ["10.96.0.10", "fd00:96::10"] {
        let echoed = nc(&front, vip, 90, &marker);
        assert_eq!(echoed, marker, "{vip}");
    }
    assert_eq!(curl_post(&front, "http://10.96.0.12/", &clear), "plain");
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
        count(&pcap, clear.as_bytes()) > 0,
        "the control's marker is not in the capture: the capture saw nothing"
    );
    // Two HTTP connections (IPv4, IPv6), two tunnels: four handshakes at least.
    assert!(
        count(&pcap, TLS13_SERVER_HELLO_EXT) >= 4,
        "no TLS 1.3 handshakes"
    );
    assert!(count(&pcap, b"weft/1") >= 4, "no weft ALPN offered");

    // Inbound at `back`: every connection from `front` is mutual TLS from its
    // identity.
    let inbound: Vec<Value> = connections(&back)
        .into_iter()
        .filter(|c| c["direction"] == "inbound")
        .collect();
    assert!(inbound.len() >= 4, "{inbound:#?}");
    for c in &inbound {
        assert_eq!(c["tls"], true, "{c}");
        assert_eq!(c["peer_identity"], FRONT_ID, "{c}");
    }
    // Outbound opaque at `front`: mutual TLS to `back`'s identity.
    let opaque: Vec<Value> = connections(&front)
        .into_iter()
        .filter(|c| c["direction"] == "outbound" && c["protocol"] == "tcp")
        .filter(|c| c["service"] != "plain")
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

/// Starts `python3 SCRIPT ARGS` in `pod` and waits until it listens.
fn app(pod: &ModePod, name: &str, script: &str, args: &[&str]) -> PodProc {
    let mut argv = vec![python3().to_string_lossy().into_owned(), script.to_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let proc = pod.spawn(ProcSpec::new(&argv).name(name)).unwrap();
    wait_until(SECS(10), MS(20), || proc.logs().contains("listening"))
        .unwrap_or_else(|e| panic!("{name} in {}: {e}: {}", pod.name(), proc.logs()));
    proc
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

/// Sends `line` over a new TCP connection and reads what comes back until the
/// server closes (`nc -N`: the write side is shut after the line).
fn nc(pod: &ModePod, host: &str, port: u16, line: &str) -> String {
    let script = format!("printf %s '{line}' | nc -N -w 10 {host} {port}");
    pod.run_ok(["sh", "-c", &script], None, SECS(20))
        .unwrap()
        .trim()
        .to_owned()
}

fn admin_json(pod: &ModePod, path: &str) -> Value {
    let (code, body) = pod.http_get(ADMIN, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
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

/// Waits until `pod`'s sidecar knows every address in `ips` by an identity.
fn wait_for_identities(pod: &ModePod, ips: &[IpAddr]) {
    wait_until(SECS(10), MS(50), || {
        let routes = admin_json(pod, "/routes");
        ips.iter().all(|ip| {
            routes["services"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["identities"][ip.to_string()].as_str() == Some(BACK_ID))
        })
    })
    .unwrap_or_else(|e| panic!("no identities ({e}): {:#}", admin_json(pod, "/routes")));
}

/// `/connections` of a pod's sidecar, live and closed rows together.
fn connections(pod: &ModePod) -> Vec<Value> {
    admin_json(pod, "/connections")["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}
