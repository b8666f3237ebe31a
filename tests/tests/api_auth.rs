//! Tier 2: nobody changes or reads the mesh without credentials (the controller
//! API issue's "must show"). A sidecar whose token the controller does not know
//! gets no routes and says why in `/routes` and its log; given a good token (the
//! file rewritten, the proxy not restarted) it converges and routes, in both capture
//! modes. A bounded burst of registrations from one caller is answered 429 past
//! its rate and 409 past a registry cap, and the controller's RSS stays flat.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_e2e::{python3, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const ADMIN: &str = "127.0.0.1:15000";
const PROXY_UID: u32 = 1337;

fn http_server(pod: &ModePod) -> PodProc {
    let proc = pod
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                "-c",
                "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n  def do_GET(s):\n    s.send_response(200); s.send_header('content-length','2'); s.end_headers(); s.wfile.write(b'b1')\n  def log_message(s,*a): pass\nh.ThreadingHTTPServer(('0.0.0.0',8080),H).serve_forever()\n",
            ])
            .name("http"),
        )
        .unwrap();
    pod.wait_listening("127.0.0.1:8080".parse().unwrap(), SECS(10))
        .unwrap();
    proc
}

/// Writes `token` to `path` for the proxy's user (mode 0400), replacing the file.
fn write_token(path: &std::path::Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400)).unwrap();
    nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(PROXY_UID)), None).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_proxy_without_a_valid_token_gets_no_routes_until_it_has_one_iptables() {
    no_routes_without_a_token(Mode::Iptables);
}

#[test]
fn a_proxy_without_a_valid_token_gets_no_routes_until_it_has_one_ebpf() {
    no_routes_without_a_token(Mode::Ebpf);
}

fn no_routes_without_a_token(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let front = mode.add_pod(&mesh, "front").unwrap();
    let back = mode.add_pod(&mesh, "b1").unwrap();
    let _server = http_server(&back);
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{}]\n",
            back.ipv4()
        ),
    )
    .unwrap();
    let controller = Controller::start(&mesh, &file, &[]).unwrap();
    front.add_route("10.96.0.0/16").unwrap();

    // A token of the right shape that the controller never issued.
    let token_file = mesh.run_dir().join("front.token");
    write_token(&token_file, &"f".repeat(64));
    let token_arg = token_file.to_string_lossy().into_owned();
    let sidecar = front
        .sidecar_unsynced(
            &[],
            "frontend",
            &[
                "--controller",
                controller.url(),
                "--controller-token-file",
                &token_arg,
            ],
        )
        .unwrap();
    let admin: SocketAddr = ADMIN.parse().unwrap();
    let routes = || -> Value {
        let (code, body) = front.http_get(admin, "/routes").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // Refused: no routes, and it says why.
    wait_until(SECS(10), Duration::from_millis(50), || {
        routes()["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused this proxy"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", routes()));
    let view = routes();
    let why = view["discovery"]["last_error"].as_str().unwrap();
    assert!(why.contains("bad credential: unknown token"), "{why}");
    assert_eq!(view["discovery"]["synced"], false, "{view}");
    assert_eq!(view["services"].as_array().map_or(0, Vec::len), 0, "{view}");
    assert!(
        sidecar.proxy().logs().contains("refused this proxy"),
        "{}",
        sidecar.proxy().logs()
    );
    let (code, _) = front
        .http_get("127.0.0.1:15020".parse().unwrap(), "/ready/proxy")
        .unwrap();
    assert_eq!(code, 503, "not ready without routes");
    let (_, metrics) = mesh
        .node()
        .http_get(controller.http_addr(), "/metrics")
        .unwrap();
    let refused = weft_runtime::prom_text::value(
        &metrics,
        "weft_controller_api_denied_total",
        &[("api", "grpc"), ("reason", "bad_credential")],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
    println!("refused: {why}");

    // Given a token the controller knows (the file rewritten; the proxy reads it on
    // its next attempt): routes, and traffic through them.
    let issued = mesh
        .credentials()
        .issue("pod-front", &["frontend"], None)
        .unwrap();
    write_token(&token_file, &std::fs::read_to_string(issued).unwrap());
    wait_until(SECS(15), Duration::from_millis(100), || {
        routes()["discovery"]["synced"] == true
    })
    .unwrap_or_else(|e| panic!("{e}: {}", routes()));
    let body = front
        .run_ok(
            ["curl", "-sS", "--max-time", "10", "http://10.96.0.10/"],
            None,
            SECS(20),
        )
        .unwrap();
    assert_eq!(body.trim(), "b1");
    assert_eq!(routes()["discovery"]["connected"], true);
}

/// The controller's resident set (kB), from /proc.
fn rss_kb(proc: &PodProc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_burst_of_writes_is_answered_429_and_409_and_the_controller_stays_flat() {
    let mesh = Mesh::new().unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(
        &file,
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{ port: 80 }]\n  other:\n    vip: 10.96.0.11\n    ports: [{ port: 80 }]\n",
    )
    .unwrap();
    let state = mesh.run_dir().join("controller-state");
    let controller = Controller::start(
        &mesh,
        &file,
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--api-write-rate",
            "10",
            "--api-write-burst",
            "20",
            "--max-endpoints-per-service",
            "10",
        ],
    )
    .unwrap();
    let pod_token_file = mesh
        .credentials()
        .issue("pod-b", &["backend"], None)
        .unwrap();
    let pod_token = std::fs::read_to_string(pod_token_file).unwrap();
    for _ in 0..50 {
        controller.api("GET", "/v1/status", None).unwrap();
    }
    let before = rss_kb(controller.proc());
    let mut after = Vec::new();
    for round in 0..2 {
        // One caller, 300 registrations as fast as it can: its burst, then 429.
        let started = Instant::now();
        let mut codes = BTreeMap::<u16, usize>::new();
        for i in 0..300 {
            let path = format!(
                "/v1/services/backend/endpoints/10.1.{round}.{}",
                i % 250 + 1
            );
            let (code, body) = controller
                .api_as(Some(&pod_token), "PUT", &path, None)
                .unwrap();
            assert!(matches!(code, 200 | 201 | 409 | 429), "{code} {body}");
            *codes.entry(code).or_default() += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = codes.get(&201).copied().unwrap_or(0)
            + codes.get(&200).copied().unwrap_or(0)
            + codes.get(&409).copied().unwrap_or(0);
        let most = 20 + (10.0 * elapsed).ceil() as usize;
        println!("round {round}: 300 writes in {elapsed:.2} s: {codes:?} (at most {most} allowed)");
        assert!(allowed >= 20 && allowed <= most, "{codes:?}");
        assert_eq!(
            codes.get(&429).copied().unwrap_or(0),
            300 - allowed,
            "{codes:?}"
        );
        // The cap: the service holds 10 registered endpoints, no more.
        assert!(codes.get(&201).copied().unwrap_or(0) <= 10, "{codes:?}");
        if round == 0 {
            assert_eq!(codes.get(&201).copied(), Some(10), "{codes:?}");
            assert!(codes.get(&409).copied().unwrap_or(0) >= 10, "{codes:?}");
        }
        after.push(rss_kb(controller.proc()));
        std::thread::sleep(SECS(2));
    }
    let (code, body) = controller
        .api("PUT", "/v1/services/backend/endpoints/10.2.0.1", None)
        .unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("--max-endpoints-per-service"), "{body}");
    let (_, metrics) = mesh
        .node()
        .http_get(controller.http_addr(), "/metrics")
        .unwrap();
    let limited = weft_runtime::prom_text::value(
        &metrics,
        "weft_controller_api_denied_total",
        &[("api", "http"), ("reason", "rate_limited")],
    )
    .unwrap();
    assert!(limited >= 500.0, "{limited}");
    println!("controller RSS: before {before} kB, after each burst {after:?} kB");
    for kb in &after {
        assert!(
            *kb <= before + before / 10,
            "RSS grew: {before} kB -> {after:?} kB"
        );
    }
}
