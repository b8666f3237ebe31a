//! Tier 2: the controller's mesh page (ARCHITECTURE.md, The mesh page) in a real
//! browser. `weftctl up` runs the demo mesh (`examples/demo.yaml`: a frontend and
//! three backend replicas); a bad edit of the mesh file, a bounded load and one
//! long-lived client run against it; then headless Chromium (Debian's, driven by
//! Selenium from the test venv, `tools/meshpage.py`) opens the URL `weftctl up`
//! printed, from inside the mesh's node namespace, and watches the page redraw.
//!
//! It must show the three backend replicas, the frontend -> backend edge with
//! exactly the clients' request count within a refresh of the first round of the
//! controller's gathering after the load ended (and never more), the long-lived
//! client's connection (by its port) in frontend-0's pod view, and the bad edit
//! with its line. It fails if the page requested anything from outside the
//! controller's origin. Screenshots go to `target/test-output/mesh_page/<mode>/`.
//! Both capture modes (`_iptables` / `_ebpf`: `weftctl up --mode`).
//!
//! Network safety: the browser, its driver and every client run in namespaces the
//! mesh made, with no route out; Chromium resolves no host but the controller; the load is a
//! fixed number of requests, the long-lived client exits by itself after 90 s, the
//! browser script after 60 s; `weftctl down` (also on panic) removes everything.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use weft_e2e::weftctl::WeftctlUp as Up;
use weft_e2e::{output_dir, pyenv, tool};

const DEMO: &str = include_str!("../../examples/demo.yaml");
/// Requests of the bounded load, each on a connection of its own.
const LOAD: usize = 40;
/// The controller's gathering interval (its default) and one read's deadline: a
/// round that ends this long after the load has read every counter after it.
const ROUND: Duration = Duration::from_secs(3);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A client in frontend-0 that makes one request on a keep-alive connection,
/// prints its local port, and holds the connection for up to 90 s.
fn long_lived_client(up: &Up) -> (Child, u16) {
    let script = "import http.client, time\n\
c = http.client.HTTPConnection('backend', 80, timeout=10)\n\
c.connect()\n\
port = c.sock.getsockname()[1]\n\
c.request('GET', '/')\n\
r = c.getresponse()\n\
r.read()\n\
print(port, r.status, flush=True)\n\
time.sleep(90)\n";
    let mut child = up
        .command(&["exec", "frontend-0", "--", "python3", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut words = line.split_whitespace();
    let port: u16 = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("200"), "{line}");
    (child, port)
}

/// `LOAD` requests from frontend-0 to the backend service, 200 ms apart (so the
/// page draws a few rounds of it); each
/// must be answered 200.
fn bounded_load(up: &Up) {
    let script = format!(
        "for i in $(seq 1 {LOAD}); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 http://backend/; sleep 0.2; done"
    );
    let out = up.weftctl_ok(&["exec", "frontend-0", "--", "sh", "-c", &script]);
    let codes: Vec<&str> = out.lines().collect();
    assert_eq!(codes.len(), LOAD, "{out}");
    assert!(codes.iter().all(|c| *c == "200"), "{out}");
}

/// Runs `meshpage.py` in the node namespace; its JSON report.
fn browse(node_netns: &str, args: &[String]) -> Value {
    let python = pyenv::selenium_python().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(&python)
        .arg(tool("meshpage.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script stops itself after its own timeout; this bounds a hung browser.
    let deadline = Instant::now() + Duration::from_secs(150);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshpage.py did not finish within 150 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "meshpage.py failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_mesh_page_shows_the_demo_mesh_in_a_browser_iptables() {
    the_mesh_page_shows_the_demo_mesh_in_a_browser("iptables");
}

#[test]
fn the_mesh_page_shows_the_demo_mesh_in_a_browser_ebpf() {
    the_mesh_page_shows_the_demo_mesh_in_a_browser("ebpf");
}

fn the_mesh_page_shows_the_demo_mesh_in_a_browser(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, DEMO).unwrap();
    let up = Up::start_ready(&file, mode);
    let url = up
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("The mesh page: "))
        .unwrap_or_else(|| panic!("no page address in:\n{}", up.output()))
        .trim()
        .to_owned();
    let state = up.state();
    let origin = format!("http://{}", state["controller_http"].as_str().unwrap());
    assert!(url.starts_with(&format!("{origin}/ui/#token=")), "{url}");

    // A bad edit: the backend's VIP is no address. The controller refuses it
    // and keeps serving the last good mesh.
    let bad_line = DEMO
        .lines()
        .position(|l| l.contains("vip: 10.96.0.10"))
        .unwrap()
        + 1;
    std::fs::write(&file, DEMO.replace("vip: 10.96.0.10", "vip: 10.96.0.300")).unwrap();
    weft_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        up.output().contains("keeping the last good configuration")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", up.output()));

    let (mut client, client_port) = long_lived_client(&up);
    bounded_load(&up);
    let load_ended = unix_ms();
    let clients_count = LOAD + 1;

    let out = output_dir(&format!("mesh_page/{mode}")).unwrap();
    let report = browse(
        state["node_netns"].as_str().unwrap(),
        &[
            "--url".into(),
            url.clone(),
            "--out".into(),
            out.display().to_string(),
            "--expect-requests".into(),
            clients_count.to_string(),
            "--settled-after-ms".into(),
            (load_ended + ROUND.as_millis() as u64).to_string(),
            "--client-port".into(),
            client_port.to_string(),
            "--bad-line".into(),
            bad_line.to_string(),
        ],
    );
    let _ = client.kill();
    let _ = client.wait();

    let renders = report["renders"].as_array().unwrap();
    let last = renders
        .last()
        .unwrap_or_else(|| panic!("no render: {report}"));
    if !report["satisfied"].as_bool().unwrap() {
        let metrics = up.weftctl_ok(&[
            "exec",
            "frontend-0",
            "--",
            "curl",
            "-s",
            "http://127.0.0.1:15020/metrics",
        ]);
        let requests: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("weft_http_requests_total")
                    || l.starts_with("weft_tcp_connections_opened_total")
            })
            .collect();
        panic!(
            "the page never showed it all; frontend-0's counters:\n{}\nlast render:\n{last:#}",
            requests.join("\n")
        );
    }
    // The count: never above the clients', equal within a refresh of the first
    // round gathered after the load, and equal from then on. (One refresh of
    // slack: a proxy whose read misses a round's deadline is summed with its
    // previous page for that round, ARCHITECTURE.md, The mesh page.)
    for r in renders {
        if let Some(n) = r["edge_requests"].as_u64() {
            assert!(n <= clients_count as u64, "{n} > {clients_count}: {r:#}");
        }
    }
    let settled_after = load_ended + ROUND.as_millis() as u64;
    let round_of = |r: &Value| {
        r["refreshed_at"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok())
    };
    let after: Vec<&Value> = renders
        .iter()
        .filter(|r| round_of(r).is_some_and(|t| t >= settled_after))
        .collect();
    let first_equal = after
        .iter()
        .position(|r| r["edge_requests"].as_u64() == Some(clients_count as u64))
        .unwrap_or_else(|| panic!("never {clients_count} after the load: {after:#?}"));
    let first_round = round_of(after[0]).unwrap();
    assert!(
        round_of(after[first_equal]).unwrap() <= first_round + ROUND.as_millis() as u64,
        "the count caught up later than a refresh after the first round gathered after the load: {after:#?}"
    );
    assert!(
        after[first_equal..]
            .iter()
            .all(|r| r["edge_requests"].as_u64() == Some(clients_count as u64)),
        "the count moved after it equalled the clients': {after:#?}"
    );
    // The three replicas, in the graph and in the pod view, their sidecars ready.
    assert_eq!(last["backend_endpoints"], 3, "{last:#}");
    let backends: Vec<&Value> = last["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["service"] == "backend")
        .collect();
    assert_eq!(backends.len(), 3, "{last:#}");
    assert!(backends.iter().all(|p| p["ready"] == "true"), "{last:#}");
    // The long-lived client's connection, live, to the backend's VIP.
    let front = last["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod"] == "frontend-0")
        .unwrap();
    let row = front["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["cells"][2]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{client_port}"))
        })
        .unwrap_or_else(|| panic!("no connection from port {client_port}: {front:#}"));
    assert_eq!(row["direction"], "outbound", "{row}");
    assert_eq!(row["cells"][3], "10.96.0.10:80", "{row}");
    assert_eq!(row["cells"][4], "backend", "{row}");
    // The bad edit, with its line.
    let edit = last["bad_edits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["line"].as_str().and_then(|l| l.parse().ok()) == Some(bad_line))
        .unwrap_or_else(|| panic!("no bad edit at line {bad_line}: {last:#}"));
    assert!(edit["text"].as_str().unwrap().contains("vip"), "{edit}");
    // Golden signals drawn: the backend's sparklines have points.
    let backend_card = last["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "backend")
        .unwrap();
    assert!(
        backend_card["sparklines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64().unwrap() >= 2),
        "{backend_card}"
    );

    // Nothing from outside the controller.
    let requested: Vec<&str> = report["requested"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["resources"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        requested.iter().any(|u| u.ends_with("/ui/api/mesh")),
        "{requested:?}"
    );
    for u in &requested {
        assert!(
            u.starts_with(&format!("{origin}/")) || u.starts_with("data:"),
            "the page loaded {u} from outside {origin}"
        );
    }
    assert!(
        report["console_errors"].as_array().unwrap().is_empty(),
        "{}",
        report["console_errors"]
    );
    for shot in ["mesh-page.png", "topology.png", "pods.png"] {
        let png = std::fs::read(out.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot}");
    }
}
