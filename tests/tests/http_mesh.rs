//! Tier 2: the L7 path through real sidecars, with the real controller serving each
//! service's policy. Clients and servers are unmodified: curl, h2load, python
//! (tests/tools/httpkit.py, tcpkit.py), openssl, and an h2c server with trailers that
//! the test runs inside a pod. Issue 4's "must show" list, one test each.
//!
//! The tests of this file run one at a time (they measure latencies and hold load;
//! the machine has two cores).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_e2e::Controller;
use weft_e2e::{python3, tool, wait_until, Mesh, Pod, PodProc, ProcSpec, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A mesh: a client pod `front` (service `frontend`) and backend pods, the
/// controller serving `services` (YAML under `services:`, given the backends), and
/// a sidecar in every pod.
struct Env {
    mesh: Mesh,
    front: Pod,
    backs: Vec<Pod>,
    sf: Sidecar,
    sbs: Vec<Sidecar>,
    _controller: Controller,
}

impl Env {
    /// `backend_service` names the backends' sidecars; `front_args` are extra
    /// flags of the client's proxy.
    fn new(
        backends: usize,
        backend_service: &str,
        services: impl Fn(&[Pod]) -> String,
        front_args: &[&str],
    ) -> Env {
        let mesh = Mesh::new().unwrap();
        let front = mesh.add_pod("front").unwrap();
        let backs: Vec<Pod> = (1..=backends)
            .map(|i| mesh.add_pod(&format!("back{i}")).unwrap())
            .collect();
        let yaml = format!(
            "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n{}",
            front.ipv4(),
            services(&backs)
        );
        let file = mesh.run_dir().join("mesh.yaml");
        std::fs::write(&file, yaml).unwrap();
        let controller = Controller::start(&mesh, &file, &[]).unwrap();
        let url = controller.url().to_owned();
        let mut args = vec!["--controller", url.as_str()];
        args.extend_from_slice(front_args);
        front.add_route("10.96.0.0/16").unwrap();
        let sf = Sidecar::start_with(&front, &[], "frontend", &args).unwrap();
        let sbs = backs
            .iter()
            .map(|b| {
                Sidecar::start_with(
                    b,
                    &[],
                    backend_service,
                    &["--controller", url.as_str(), "--drain-grace", "5s"],
                )
                .unwrap()
            })
            .collect();
        Env {
            mesh,
            front,
            backs,
            sf,
            sbs,
            _controller: controller,
        }
    }

    /// Runs `python3 httpkit.py ARGS` in the client pod; its JSON output.
    fn kit(&self, args: &[&str]) -> Value {
        kit_in(&self.front, args)
    }

    /// `curl` in the client pod: (status, x-weft-error, seconds).
    fn curl(&self, url: &str) -> (u16, String, f64) {
        let out = self
            .front
            .run_ok(
                [
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "20",
                    "-w",
                    "%{http_code} [%header{x-weft-error}] %{time_total}",
                    url,
                ],
                None,
                SECS(30),
            )
            .unwrap();
        let (code, rest) = out.split_once(" [").unwrap();
        let (err, secs) = rest.split_once("] ").unwrap();
        (
            code.parse().unwrap(),
            err.to_string(),
            secs.trim().parse().unwrap(),
        )
    }

    /// Every proxy log, for failure messages.
    fn logs(&self) -> String {
        self.mesh.logs_report()
    }
}

fn kit_in(pod: &Pod, args: &[&str]) -> Value {
    let mut argv = vec![python3().to_string_lossy().into_owned(), tool("httpkit.py")];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = pod.run_ok(&argv, None, SECS(60)).unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `httpkit.py serve PORT NAME` in `pod`.
fn serve(pod: &Pod, port: u16, name: &str) -> PodProc {
    let p = pod
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                tool("httpkit.py").as_str(),
                "serve",
                &port.to_string(),
                name,
            ])
            .name("httpkit"),
        )
        .unwrap();
    pod.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), SECS(10))
        .unwrap();
    p
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Switches an httpkit server's mode (over loopback: not captured, not counted).
fn set_mode(pod: &Pod, port: u16, mode: &str) {
    let (status, _) = pod
        .http_get(local(port), &format!("/__mode/{mode}"))
        .unwrap();
    assert_eq!(status, 200);
}

/// An httpkit server's request counts.
fn stats(pod: &Pod, port: u16) -> BTreeMap<String, u64> {
    let (_, body) = pod.http_get(local(port), "/__stats").unwrap();
    serde_json::from_str(&body).unwrap()
}

fn count(stats: &BTreeMap<String, u64>, key: &str) -> u64 {
    stats.get(key).copied().unwrap_or(0)
}

fn statuses(v: &Value) -> BTreeMap<String, u64> {
    v["statuses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn no_panics(env: &Env) {
    for s in std::iter::once(&env.sf).chain(&env.sbs) {
        let logs = s.proxy().logs();
        assert!(!logs.contains("panicked"), "{logs}");
    }
}

/// Must show 1: 30 requests on one keep-alive connection land 10/10/10.
#[test]
fn keep_alive_requests_are_balanced_per_request() {
    let _serial = serial();
    let mut servers = Vec::new();
    let env = Env::new(
        3,
        "backend",
        |b| {
            format!(
                "  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}, {}, {}]\n",
                b[0].ipv4(),
                b[1].ipv4(),
                b[2].ipv4()
            )
        },
        &[],
    );
    for b in &env.backs {
        servers.push(serve(b, 8080, b.name()));
    }
    let out = env.kit(&["get-many", "http://10.96.0.10/", "30"]);
    assert_eq!(out["connections"], 1, "{out}");
    assert_eq!(
        out["bodies"],
        serde_json::json!({"back1": 10, "back2": 10, "back3": 10}),
        "{out}"
    );
    let conns = env
        .sf
        .connections_to("10.96.0.10:80".parse().unwrap())
        .unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0]["protocol"], "http1");
    assert_eq!(conns[0]["requests"], 30);
    no_panics(&env);
}

/// An h2c server answering every request with its name and gRPC-style trailers.
struct H2cServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for H2cServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A body of one data frame then trailers.
struct Trailered {
    data: Option<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for Trailered {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(hyper::body::Frame::data(d)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

fn h2c_server(pod: &Pod, port: u16, name: &'static str) -> H2cServer {
    let listener = pod
        .in_netns(|| std::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))))
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (s, _) = tokio::select! {
                    _ = &mut rx => return,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Trailered {
                            data: Some(bytes::Bytes::from_static(name.as_bytes())),
                            trailers: Some(trailers),
                        }))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
    });
    H2cServer {
        stop: Some(tx),
        thread: Some(thread),
    }
}

/// Must show 2: HTTP/2 prior knowledge through the mesh (curl and h2load), to an
/// h2c server; trailers arrive.
#[test]
fn h2c_prior_knowledge_passes_with_trailers() {
    let _serial = serial();
    let env = Env::new(
        2,
        "grpcish",
        |b| {
            format!(
                "  grpcish:\n    vip: 10.96.0.11\n    ports: [{{ port: 80, target_port: 8081 }}]\n    endpoints: [{}, {}]\n",
                b[0].ipv4(),
                b[1].ipv4()
            )
        },
        &[],
    );
    let _servers = [
        h2c_server(&env.backs[0], 8081, "back1"),
        h2c_server(&env.backs[1], 8081, "back2"),
    ];
    let out = env
        .front
        .run(
            [
                "curl",
                "-sS",
                "-v",
                "--http2-prior-knowledge",
                "--max-time",
                "10",
                "-w",
                "\n%{http_version} %{http_code}\n",
                "http://10.96.0.11/",
            ],
            None,
            SECS(20),
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", env.logs());
    assert!(stdout.contains("\n2 200"), "{stdout}");
    assert!(stdout.starts_with("back"), "{stdout}");
    // curl -v shows trailers as received headers after the body.
    assert!(stderr.contains("< grpc-status: 0"), "{stderr}");
    assert!(stderr.contains("< grpc-message: back"), "{stderr}");

    let out = env
        .front
        .run_ok(
            [
                "h2load",
                "-n",
                "400",
                "-c",
                "4",
                "-m",
                "10",
                "http://10.96.0.11/",
            ],
            None,
            SECS(60),
        )
        .unwrap();
    assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
    let conns = env
        .sf
        .connections_to("10.96.0.11:80".parse().unwrap())
        .unwrap();
    assert!(conns.iter().all(|c| c["protocol"] == "h2"), "{conns:?}");
    // Both endpoints served (per-request balancing over one h2 connection each).
    let served = |sb: &Sidecar| {
        sb.metric(
            "weft_http_requests_total",
            &[("direction", "inbound"), ("status_code", "200")],
        )
        .unwrap()
    };
    wait_until(SECS(5), MS(50), || {
        served(&env.sbs[0]) + served(&env.sbs[1]) == 401.0
    })
    .unwrap();
    assert!(served(&env.sbs[0]) >= 150.0 && served(&env.sbs[1]) >= 150.0);
    no_panics(&env);
}

/// Must show 3: a server-speaks-first banner on an undeclared port reaches a silent
/// client promptly; TLS and other opaque bytes pass unchanged.
#[test]
fn banners_are_prompt_and_opaque_bytes_are_identical() {
    let _serial = serial();
    let env = Env::new(
        1,
        "misc",
        |b| {
            let ip = b[0].ipv4();
            format!(
                "  smtp:\n    vip: 10.96.0.12\n    ports: [{{ port: 25, target_port: 2525 }}]\n    endpoints: [{ip}]\n  blob:\n    vip: 10.96.0.13\n    ports: [{{ port: 9000 }}]\n    endpoints: [{ip}]\n  tls:\n    vip: 10.96.0.14\n    ports: [{{ port: 443, target_port: 8443 }}]\n    endpoints: [{ip}]\n"
            )
        },
        &[],
    );
    let back = &env.backs[0];
    let _banner = back
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                tool("httpkit.py").as_str(),
                "banner",
                "2525",
                "220 weft-test ESMTP",
            ])
            .name("banner"),
        )
        .unwrap();
    back.wait_listening(local(2525), SECS(10)).unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let addr: SocketAddr = "10.96.0.12:25".parse().unwrap();
        let (elapsed, line) = env.front.in_netns(move || {
            let started = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, SECS(5)).unwrap();
            s.set_read_timeout(Some(SECS(5))).unwrap();
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed after {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            let elapsed = started.elapsed();
            // The connection is opaque now: what the client says is echoed.
            s.write_all(b"EHLO me\r\n").unwrap();
            let mut echo = [0u8; 9];
            s.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"EHLO me\r\n");
            (elapsed, String::from_utf8_lossy(&got).into_owned())
        });
        assert_eq!(line, "220 weft-test ESMTP\r\n");
        times.push(elapsed);
    }
    times.sort();
    println!(
        "banner through two sidecars, connect to first byte: min {:?} median {:?} max {:?}",
        times[0], times[2], times[4]
    );
    assert!(times[4] < MS(100), "{times:?}");

    // Opaque bytes: 4 MB that start like no protocol, digested at both ends.
    let _sink = back
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                tool("tcpkit.py").as_str(),
                "serve-sink",
                "9000",
            ])
            .name("sink"),
        )
        .unwrap();
    back.wait_listening(local(9000), SECS(10)).unwrap();
    let bytes = (4 << 20).to_string();
    let py = python3().to_string_lossy().into_owned();
    env.front
        .run_ok(
            [
                &py,
                &tool("tcpkit.py"),
                "push",
                "10.96.0.13",
                "9000",
                &bytes,
            ],
            None,
            SECS(60),
        )
        .unwrap();
    let want = env
        .front
        .run_ok([&py, &tool("tcpkit.py"), "digest", &bytes], None, SECS(30))
        .unwrap();
    let want = want.trim().trim_start_matches("sha256=").to_string();
    wait_until(SECS(10), MS(50), || {
        std::fs::read_to_string(_sink.log_path())
            .unwrap_or_default()
            .contains(&format!("received={bytes} sha256={want}"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", _sink.logs()));

    // TLS end to end (any changed byte fails the handshake or a record's MAC).
    let dir = env.mesh.run_dir().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    back.run_ok(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=tls.mesh",
            "-days",
            "1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
        SECS(60),
    )
    .unwrap();
    let _tls = back
        .spawn(
            ProcSpec::new([
                "openssl",
                "s_server",
                "-accept",
                "8443",
                "-key",
                key.to_str().unwrap(),
                "-cert",
                cert.to_str().unwrap(),
                "-www",
            ])
            .name("s_server"),
        )
        .unwrap();
    back.wait_listening(local(8443), SECS(10)).unwrap();
    let page = env
        .front
        .run_ok(
            [
                "curl",
                "-sS",
                "-k",
                "--max-time",
                "10",
                "https://10.96.0.14/",
            ],
            None,
            SECS(20),
        )
        .unwrap();
    assert!(page.contains("s_server"), "{page}");
    let tls = env
        .sf
        .connections_to("10.96.0.14:443".parse().unwrap())
        .unwrap();
    assert!(tls.iter().all(|c| c["protocol"] == "tcp"), "{tls:?}");
    no_panics(&env);
}

/// Must show 4: an endpoint failing half its requests with 503 is hidden by retries
/// for GETs; a POST is never retried; under a full outage retries stay within the
/// budget (counted at the servers).
#[test]
fn retries_hide_a_flaky_endpoint_within_their_budget() {
    let _serial = serial();
    let env = Env::new(
        3,
        "flaky",
        |b| {
            format!(
                "  flaky:\n    vip: 10.96.0.20\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}, {}, {}]\n    policy:\n      retries: {{ attempts: 2, budget_percent: 20, min_per_second: 10, on: [503] }}\n      circuit_breaker: {{ consecutive_failures: 1000 }}\n",
                b[0].ipv4(),
                b[1].ipv4(),
                b[2].ipv4()
            )
        },
        &[],
    );
    let _servers: Vec<PodProc> = env.backs.iter().map(|b| serve(b, 8080, b.name())).collect();
    let total = |key: &str| -> u64 { env.backs.iter().map(|b| count(&stats(b, 8080), key)).sum() };

    set_mode(&env.backs[0], 8080, "flaky");
    let out = env.kit(&["load", "http://10.96.0.20/", "40", "3", "2"]);
    assert_eq!(out["errors"], 0, "{out}");
    assert_eq!(
        statuses(&out),
        BTreeMap::from([("200".into(), 120)]),
        "{out}"
    );
    let flaky = stats(&env.backs[0], 8080);
    let failed_at_server = count(&flaky, "total") / 2;
    assert!(failed_at_server >= 10, "{flaky:?}");
    assert_eq!(
        total("GET"),
        120 + failed_at_server,
        "every 503 retried once"
    );
    println!("GETs: 120 sent, 120 x 200 seen; flaky endpoint answered 503 {failed_at_server} times, each retried");

    // POSTs: never retried, so the flaky endpoint's 503s reach the client.
    let posts_before = total("POST");
    let out = env.kit(&["load", "http://10.96.0.20/", "20", "2", "1", "POST"]);
    assert_eq!(out["errors"], 0, "{out}");
    let seen = statuses(&out);
    assert_eq!(total("POST") - posts_before, 40, "{seen:?}");
    assert!(seen.get("503").copied().unwrap_or(0) > 0, "{seen:?}");

    // Full outage: every answer is 503; retries are bounded by 20 % + 10/s.
    for b in &env.backs {
        set_mode(b, 8080, "outage");
    }
    let before = total("total");
    let started = Instant::now();
    let out = env.kit(&["load", "http://10.96.0.20/", "50", "4", "2"]);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        statuses(&out),
        BTreeMap::from([("503".into(), 200)]),
        "{out}"
    );
    let retries = total("total") - before - 200;
    // Budget: 20 % of 200 requests + 10/s over the run (plus the one-second window).
    let bound = 0.2 * 200.0 + 10.0 * (secs + 1.0);
    println!("outage: 200 requests in {secs:.1}s, {retries} retries (budget bound {bound:.0}; without it 400)");
    assert!(retries > 0, "retries happened");
    assert!((retries as f64) <= bound, "{retries} > {bound}");
    no_panics(&env);
}

/// Must show 5: a hung endpoint gives 504 with x-weft-error after the timeout; after
/// N consecutive failures it is ejected (no requests reach it), then serves again
/// once healed; with every endpoint ejected requests fail fast.
#[test]
fn a_hung_endpoint_times_out_is_ejected_and_comes_back() {
    let _serial = serial();
    let env = Env::new(
        3,
        "slow",
        |b| {
            format!(
                "  slow:\n    vip: 10.96.0.30\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}, {}]\n    policy:\n      timeout: 500ms\n      retries: {{ attempts: 0 }}\n      circuit_breaker: {{ consecutive_failures: 3, base_ejection: 3s, max_ejection_percent: 50 }}\n  dead:\n    vip: 10.96.0.31\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}]\n    policy:\n      timeout: 300ms\n      circuit_breaker: {{ consecutive_failures: 2, base_ejection: 30s, max_ejection_percent: 100 }}\n",
                b[0].ipv4(),
                b[1].ipv4(),
                b[2].ipv4()
            )
        },
        &[],
    );
    let _servers: Vec<PodProc> = env.backs.iter().map(|b| serve(b, 8080, b.name())).collect();
    let hung = &env.backs[0];
    set_mode(hung, 8080, "hang");
    let url = "http://10.96.0.30/";
    let mut timeouts = 0;
    for _ in 0..6 {
        let (code, err, secs) = env.curl(url);
        match code {
            504 => {
                assert_eq!(err, "request_timeout");
                assert!((0.45..2.0).contains(&secs), "{secs}");
                timeouts += 1;
            }
            200 => {}
            other => panic!("{other} {err}"),
        }
    }
    assert_eq!(timeouts, 3, "round robin: every other request hung");
    assert_eq!(count(&stats(hung, 8080), "total"), 3);
    // Ejected: nothing reaches it.
    for _ in 0..10 {
        assert_eq!(env.curl(url).0, 200);
    }
    assert_eq!(
        count(&stats(hung, 8080), "total"),
        3,
        "no requests while ejected"
    );
    // Healed; after the ejection a probe finds it, and it is back in the rotation.
    set_mode(hung, 8080, "ok");
    std::thread::sleep(SECS(3));
    let mut codes = Vec::new();
    wait_until(SECS(10), MS(100), || {
        codes.push(env.curl(url).0);
        count(&stats(hung, 8080), "total") >= 6
    })
    .unwrap_or_else(|e| panic!("{e}: {codes:?}\n{}", env.logs()));
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");

    // Every endpoint ejected: 503 at once.
    set_mode(&env.backs[2], 8080, "hang");
    for _ in 0..2 {
        assert_eq!(env.curl("http://10.96.0.31/").0, 504);
    }
    let (code, err, secs) = env.curl("http://10.96.0.31/");
    assert_eq!((code, err.as_str()), (503, "all_endpoints_ejected"));
    assert!(secs < 0.1, "fails fast: {secs}");
    set_mode(&env.backs[2], 8080, "ok");
    no_panics(&env);
}

/// Must show 6: SIGTERM to a backend's sidecar during steady load: no client sees a
/// failure (HTTP/1 responses carry `Connection: close`, the request in flight
/// finishes, new connections go to the other endpoint), and the proxy exits within
/// its grace period.
#[test]
fn sigterm_under_load_loses_no_request() {
    let _serial = serial();
    let env = Env::new(
        2,
        "web",
        |b| {
            format!(
                "  web:\n    vip: 10.96.0.40\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}, {}]\n",
                b[0].ipv4(),
                b[1].ipv4()
            )
        },
        &[],
    );
    let _servers: Vec<PodProc> = env.backs.iter().map(|b| serve(b, 8080, b.name())).collect();
    let front = env.front.clone();
    let load = std::thread::spawn(move || {
        kit_in(&front, &["load", "http://10.96.0.40/", "200", "5", "4"])
    });
    std::thread::sleep(MS(1500));
    // A slow request straight to back1 (inbound L7 on its sidecar), in flight when
    // the drain begins.
    let front = env.front.clone();
    let slow_url = format!("http://{}:8080/", env.backs[0].ipv4());
    let slow = std::thread::spawn(move || kit_in(&front, &["slow-get", &slow_url, "1500"]));
    std::thread::sleep(MS(300));
    let proxy = env.sbs[0].proxy();
    let term = Instant::now();
    proxy.kill_term().unwrap();
    let status = proxy
        .wait_timeout(SECS(6))
        .unwrap_or_else(|| panic!("still running after the grace: {}", proxy.logs()));
    let exit = term.elapsed();
    println!("drain: SIGTERM to exit {exit:?} (grace 5s)");
    assert!(status.success(), "{status:?} {}", proxy.logs());
    assert!(exit < SECS(5), "{exit:?}");
    let slow = slow.join().unwrap();
    assert_eq!(slow["status"], 200, "{slow}\n{}", proxy.logs());
    // The response finished during the drain tells the client to go elsewhere.
    assert_eq!(slow["connection"], "close", "{slow}");
    let out = load.join().unwrap();
    assert_eq!(out["errors"], 0, "{out}\n{}", env.logs());
    assert_eq!(
        statuses(&out),
        BTreeMap::from([("200".into(), 1000)]),
        "{out}"
    );
    println!("load during the drain: {out}");
    assert!(
        proxy.logs().contains("drained; exiting"),
        "{}",
        proxy.logs()
    );
    assert!(!env.sf.proxy().logs().contains("panicked"));
}

/// Reads what the proxy answers to `request` on a fresh connection from `pod`.
fn raw_exchange(pod: &Pod, addr: SocketAddr, request: Vec<u8>) -> String {
    pod.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&addr, SECS(5)).unwrap();
        s.set_read_timeout(Some(SECS(10))).unwrap();
        let _ = s.write_all(&request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Must show 7: garbage → 400, a 200 KB header → 431, slowloris → 408 after the
/// header timeout; other clients unaffected, no panic.
#[test]
fn bad_clients_get_400_431_408_and_others_are_unaffected() {
    let _serial = serial();
    let env = Env::new(
        1,
        "web",
        |b| {
            format!(
                "  web:\n    vip: 10.96.0.50\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{ip}]\n  webhttp:\n    vip: 10.96.0.51\n    ports: [{{ port: 80, target_port: 8080, protocol: http }}]\n    endpoints: [{ip}]\n",
                ip = b[0].ipv4()
            )
        },
        &["--header-read-timeout", "1s"],
    );
    let _server = serve(&env.backs[0], 8080, "back1");
    let auto: SocketAddr = "10.96.0.50:80".parse().unwrap();
    let http: SocketAddr = "10.96.0.51:80".parse().unwrap();
    let out = raw_exchange(
        &env.front,
        http,
        b"\x16\x03\x01\x00\x05hello\r\n\r\n".to_vec(),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw_exchange(
        &env.front,
        auto,
        b"GET / HTTP/1.1\r\nHost: web\r\nbad header line\r\n\r\n".to_vec(),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let out = raw_exchange(&env.front, auto, big.into_bytes());
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");

    // Slowloris: a header byte every 300 ms; meanwhile others are served.
    let front = env.front.clone();
    let loris = std::thread::spawn(move || {
        front.in_netns(move || {
            let started = Instant::now();
            let mut s = TcpStream::connect_timeout(&auto, SECS(5)).unwrap();
            s.set_read_timeout(Some(MS(300))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n").unwrap();
            let mut out = Vec::new();
            for b in b"X-Slow: drip-drip-drip-drip-drip\r\n"
                .iter()
                .cycle()
                .take(100)
            {
                // Read first: the 408 is read before a write could meet a reset.
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
                if s.write_all(&[*b]).is_err() {
                    break;
                }
            }
            (
                started.elapsed(),
                String::from_utf8_lossy(&out).into_owned(),
            )
        })
    });
    std::thread::sleep(MS(200));
    for _ in 0..5 {
        assert_eq!(env.curl("http://10.96.0.50/").0, 200);
    }
    let (elapsed, out) = loris.join().unwrap();
    println!(
        "slowloris: answered {:?} after {elapsed:?}",
        out.lines().next()
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(elapsed < SECS(3), "{elapsed:?}");
    assert_eq!(env.curl("http://10.96.0.50/").0, 200);
    no_panics(&env);
}

/// Must show 8: after a known pattern, `weft_http_requests_total` per status equals
/// what the client saw, on both sides.
#[test]
fn request_counts_match_what_clients_saw() {
    let _serial = serial();
    let env = Env::new(
        2,
        "counted",
        |b| {
            format!(
                "  counted:\n    vip: 10.96.0.60\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}, {}]\n    policy:\n      retries: {{ attempts: 0 }}\n      circuit_breaker: {{ consecutive_failures: 1000 }}\n",
                b[0].ipv4(),
                b[1].ipv4()
            )
        },
        &[],
    );
    let _servers: Vec<PodProc> = env.backs.iter().map(|b| serve(b, 8080, b.name())).collect();
    let pattern = [
        ("/", 7),
        ("/status/404", 3),
        ("/status/500", 2),
        ("/status/503", 1),
    ];
    let mut seen = BTreeMap::<u16, u32>::new();
    for (path, n) in pattern {
        for _ in 0..n {
            let (code, _, _) = env.curl(&format!("http://10.96.0.60{path}"));
            *seen.entry(code).or_default() += 1;
        }
    }
    assert_eq!(
        seen,
        BTreeMap::from([(200, 7), (404, 3), (500, 2), (503, 1)])
    );
    for (code, n) in &seen {
        let code = code.to_string();
        let out = env
            .sf
            .metric(
                "weft_http_requests_total",
                &[
                    ("direction", "outbound"),
                    ("source_service", "frontend"),
                    ("destination_service", "counted"),
                    ("method", "GET"),
                    ("status_code", &code),
                ],
            )
            .unwrap();
        assert_eq!(out, f64::from(*n), "outbound {code}");
        let inbound = |sb: &Sidecar| {
            sb.metric(
                "weft_http_requests_total",
                &[
                    ("direction", "inbound"),
                    ("source_service", "frontend"),
                    ("destination_service", "counted"),
                    ("status_code", &code),
                ],
            )
            .unwrap()
        };
        wait_until(SECS(5), MS(50), || {
            inbound(&env.sbs[0]) + inbound(&env.sbs[1]) == f64::from(*n)
        })
        .unwrap_or_else(|e| panic!("inbound {code}: {e}"));
    }
    no_panics(&env);
}
