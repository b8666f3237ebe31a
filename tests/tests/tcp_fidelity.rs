//! Tier 2: TCP semantics survive two proxies (A's outbound, B's inbound): large
//! transfers arrive byte-identical both ways, half-close works, a server's reset
//! reaches the client as a reset, and 1,000 concurrent connections all complete.
//! The applications are tests/tools/tcpkit.py and nc — plain sockets, no weft.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weft_e2e::{python3, wait_until, Mesh, Pod, PodProc, ProcSpec, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const HUNDRED_MB: u64 = 100 * 1000 * 1000;

fn tcpkit() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools/tcpkit.py")
        .to_string_lossy()
        .into_owned()
}

/// Two pods with sidecars and a tcpkit server `args` on `port` in B.
struct Setup {
    _mesh: Mesh,
    a: Pod,
    b: Pod,
    sa: Sidecar,
    sb: Sidecar,
    server: PodProc,
}

fn setup(port: u16, server_args: &[&str]) -> Setup {
    let mesh = Mesh::new().unwrap();
    let a = mesh.add_pod("a").unwrap();
    let b = mesh.add_pod("b").unwrap();
    let py = python3().to_string_lossy().into_owned();
    let mut argv = vec![
        py.clone(),
        tcpkit(),
        server_args[0].to_string(),
        port.to_string(),
    ];
    argv.extend(server_args[1..].iter().map(|s| s.to_string()));
    let server = b.spawn(ProcSpec::new(argv).name("server")).unwrap();
    wait_until(SECS(10), Duration::from_millis(50), || {
        server.logs().contains("listening")
    })
    .unwrap();
    let sa = Sidecar::start(&a, &[]).unwrap();
    let sb = Sidecar::start(&b, &[]).unwrap();
    Setup {
        _mesh: mesh,
        a,
        b,
        sa,
        sb,
        server,
    }
}

impl Setup {
    fn dst(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::from(self.b.ipv4()), port)
    }

    /// Runs tcpkit in A as a client of B's server.
    fn client(&self, args: &[&str], timeout: Duration) -> String {
        let py = python3().to_string_lossy().into_owned();
        let mut argv = vec![py, tcpkit(), args[0].to_string(), self.b.ipv4().to_string()];
        argv.extend(args[1..].iter().map(|s| s.to_string()));
        self.a
            .run_ok(&argv, None, timeout)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Both proxies carried exactly `n` connections to the server, all closed.
    fn assert_through_both_proxies(
        &self,
        port: u16,
        n: usize,
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let out = self.sa.wait_closed(self.dst(port)).unwrap();
        let inb = self.sb.wait_closed(self.dst(port)).unwrap();
        assert_eq!(out.len(), n, "A outbound: {out:#?}");
        assert_eq!(inb.len(), n, "B inbound: {inb:#?}");
        (out, inb)
    }
}

fn digest(bytes: u64) -> String {
    let out = std::process::Command::new(python3())
        .args([tcpkit(), "digest".into(), bytes.to_string()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn hundred_megabytes_download_arrives_byte_identical() {
    let s = setup(9000, &["serve-stream", &HUNDRED_MB.to_string()]);
    let got = s.client(&["fetch", "9000"], SECS(120));
    assert_eq!(got, format!("received={HUNDRED_MB} {}", digest(HUNDRED_MB)));
    let (out, inb) = s.assert_through_both_proxies(9000, 1);
    assert_eq!(out[0]["bytes_to_client"], HUNDRED_MB);
    assert_eq!(inb[0]["bytes_to_client"], HUNDRED_MB);
}

#[test]
fn hundred_megabytes_upload_arrives_byte_identical() {
    let s = setup(9001, &["serve-sink"]);
    let sent = s.client(&["push", "9001", &HUNDRED_MB.to_string()], SECS(120));
    let sha = sent.split_whitespace().nth(1).unwrap().to_string();
    let expected = format!("received={HUNDRED_MB} {sha}");
    wait_until(SECS(10), Duration::from_millis(50), || {
        s.server.logs().contains(&expected)
    })
    .unwrap_or_else(|e| panic!("{e}: server saw {}", s.server.logs()));
    let (out, _) = s.assert_through_both_proxies(9001, 1);
    assert_eq!(out[0]["bytes_from_client"], HUNDRED_MB);
}

#[test]
fn half_close_the_client_still_gets_the_reply() {
    let s = setup(9002, &["serve-reply-after-eof"]);
    // nc -N: shut down the sending side at end of input, then keep reading.
    let cmd = format!("printf hello | nc -N -w 10 {} 9002", s.b.ipv4());
    let reply = s.a.run_ok(["sh", "-c", &cmd], None, SECS(20)).unwrap();
    assert_eq!(reply.trim(), "got 5 bytes");
    let (out, _) = s.assert_through_both_proxies(9002, 1);
    assert_eq!(out[0]["end"], "eof");
}

#[test]
fn server_reset_reaches_the_client_as_a_reset() {
    let s = setup(9003, &["serve-reset"]);
    assert_eq!(s.client(&["read-expect-error", "9003"], SECS(30)), "reset");
    let (out, inb) = s.assert_through_both_proxies(9003, 1);
    assert_eq!(inb[0]["end"], "reset_by_upstream", "B saw the app's reset");
    assert_eq!(
        out[0]["end"], "reset_by_upstream",
        "A saw B's propagated reset"
    );
}

#[test]
fn a_thousand_concurrent_connections_all_complete() {
    let s = setup(9004, &["serve-echo"]);
    assert_eq!(
        s.client(&["many", "9004", "1000"], SECS(120)),
        "completed=1000"
    );
    // /connections keeps only the last 100 closed; the counters see all of them.
    s.sa.wait_closed(s.dst(9004)).unwrap();
    s.sb.wait_closed(s.dst(9004)).unwrap();
    for (sidecar, direction) in [(&s.sa, "outbound"), (&s.sb, "inbound")] {
        let d = [("direction", direction)];
        assert_eq!(
            sidecar
                .metric("weft_tcp_connections_opened_total", &d)
                .unwrap(),
            1000.0
        );
        assert_eq!(
            sidecar
                .metric("weft_tcp_connections_closed_total", &d)
                .unwrap(),
            1000.0
        );
        assert_eq!(
            sidecar.metric("weft_tcp_active_connections", &d).unwrap(),
            0.0
        );
        assert_eq!(
            sidecar.metric("weft_tcp_received_bytes_total", &d).unwrap(),
            8890.0
        );
        assert_eq!(sidecar.metric("weft_proxy_errors_total", &[]).unwrap(), 0.0);
    }
}
