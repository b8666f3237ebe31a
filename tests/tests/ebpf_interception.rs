//! Tier 2: what only eBPF mode has. Each pod is a network namespace plus its own
//! cgroup v2 ([`Mode::Ebpf`]); `weft-init --mode ebpf --cgroup` attaches weft's
//! programs to the cgroup (outbound) and installs iptables in the pod (inbound);
//! weft-proxy (uid 1337) and the apps run inside the cgroup.
//!
//! The suites shared with iptables mode — curl through both sidecars (IPv4 and
//! IPv6), no loop, exclusions, the proxy gid (interception.rs), TCP fidelity and
//! sk_msg on and off (tcp_fidelity.rs), service discovery (discovery_mesh.rs) and
//! the local mesh (local_mesh.rs) — run their `_ebpf` variants there. Here: the
//! kernel's bookkeeping of connections that never establish, `--no-sockmap`, and
//! `--mode auto` / `--cleanup`.
//!
//! Every cgroup and bpffs pin is named after the mesh's per-run prefix and removed on
//! drop ([`weft_e2e::cgroup::PodCgroup`]), also when a test fails.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use weft_e2e::sidecar::weft_init;
use weft_e2e::{python3, Mesh, Mode, ModePod, PodProc, ProcSpec, Stat};
use weft_ebpf_common::{MAP_ORIG_BY_CLIENT, MAP_ORIG_BY_COOKIE};

const NOBODY: u32 = 65534;
const SECS: fn(u64) -> Duration = Duration::from_secs;

/// python's http.server on `port` (dual-stack, as nobody) inside the pod's cgroup,
/// ready when this returns.
fn http_server(p: &ModePod, port: u16) -> PodProc {
    let port_s = port.to_string();
    let py = python3().to_string_lossy().into_owned();
    let argv = [
        py.as_str(),
        "-m",
        "http.server",
        &port_s,
        "--bind",
        "::",
        "--directory",
        "/usr/share",
    ];
    let proc = p
        .spawn(
            ProcSpec::new(argv)
                .uid(NOBODY)
                .name(&format!("http-{port}")),
        )
        .unwrap();
    // Loopback is never captured: this probe leaves no trace in the proxies.
    p.wait_listening(SocketAddr::new([127, 0, 0, 1].into(), port), SECS(10))
        .unwrap();
    proc
}

/// curl in the pod's cgroup as `uid` (None = root); the HTTP status it saw.
fn curl(p: &ModePod, url: &str, uid: Option<u32>) -> String {
    let argv = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        url,
    ];
    p.run_ok(argv, uid, SECS(20)).unwrap()
}

fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

/// A connection that never establishes (no proxy listens yet) leaves nothing behind
/// in the kernel: sockops deletes the cookie entry connect4/connect6 made when the
/// socket closes, as it deletes every established connection's original
/// destination (checked after each transfer in tcp_fidelity.rs).
#[test]
fn ebpf_entries_of_connections_that_never_establish_are_deleted() {
    let mesh = Mesh::new().unwrap();
    let a = Mode::Ebpf.add_pod(&mesh, "a").unwrap();
    let b = Mode::Ebpf.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let cg = a.cgroup().unwrap();
    // Capture without a proxy: the rewritten connect is refused.
    weft_init(
        &a,
        &["--mode", "ebpf", "--cgroup", &cg.path().to_string_lossy()],
    )
    .unwrap();
    for ip in [IpAddr::from(b.ipv4()), IpAddr::from(b.ipv6())] {
        let out = a
            .run(
                ["curl", "-sS", "--max-time", "5", &url(ip, 8080)],
                None,
                SECS(20),
            )
            .unwrap();
        assert!(!out.status.success(), "nothing listens on 15001: {out:?}");
    }
    assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 2);
    assert_eq!(a.ebpf_stat(Stat::Established).unwrap(), 0);
    assert_eq!(
        cg.map_len(MAP_ORIG_BY_COOKIE).unwrap(),
        0,
        "{}",
        cg.stats_line()
    );
    assert_eq!(cg.map_len(MAP_ORIG_BY_CLIENT).unwrap(), 0);
}

/// `--no-sockmap`: the programs run without sk_msg — nothing is hashed, no message
/// redirected — and a request still goes through both proxies.
#[test]
fn ebpf_without_sockmap_hashes_nothing() {
    let mesh = Mesh::new().unwrap();
    let a = Mode::Ebpf.add_pod(&mesh, "a").unwrap();
    let b = Mode::Ebpf.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let plan = weft_init(
        &a,
        &[
            "--mode",
            "ebpf",
            "--cgroup",
            &a.cgroup().unwrap().path().to_string_lossy(),
            "--no-sockmap",
            "--dry-run",
        ],
    )
    .unwrap();
    assert!(plan.contains("sk_msg off"), "{plan}");
    assert!(!plan.contains("attach sk_msg"), "{plan}");
    let sa = a.sidecar(&["--no-sockmap"]).unwrap();
    let _sb = b.sidecar(&["--no-sockmap"]).unwrap();
    let dst = SocketAddr::new(b.ipv4().into(), 8080);
    assert_eq!(curl(&a, &url(dst.ip(), 8080), None), "200");
    assert_eq!(sa.wait_closed(dst).unwrap().len(), 1);
    assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 1);
    assert_eq!(a.ebpf_stat(Stat::SockHashed).unwrap(), 0);
    assert_eq!(a.ebpf_stat(Stat::MsgRedirected).unwrap(), 0);
}

/// The weft programs `bpftool cgroup tree` lists under `cgroup` (other tests' pods
/// may run in parallel, each in its own cgroup).
fn weft_programs_attached(cgroup: &Path) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "tree"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current = String::new();
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with('/') {
            current = line.trim().to_string();
        } else if line.contains("weft_") && Path::new(&current) == cgroup {
            found.push(line.trim().to_string());
        }
    }
    found
}

/// `--mode auto` picks eBPF given a cgroup; `--cleanup` detaches every program and
/// removes every pin: `bpftool cgroup tree` shows no weft program, nothing is left
/// under /sys/fs/bpf/weft/<pod>, and A's traffic then goes directly to B.
#[test]
fn ebpf_cleanup_detaches_and_unpins_everything() {
    let mesh = Mesh::new().unwrap();
    let a = Mode::Ebpf.add_pod(&mesh, "a").unwrap();
    let b = Mode::Ebpf.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let a_cg = a.cgroup().unwrap();
    let cg = a_cg.path().to_string_lossy().into_owned();

    let plan = weft_init(&a, &["--mode", "auto", "--cgroup", &cg, "--dry-run"]).unwrap();
    assert!(
        plan.contains("attach cgroup/connect4 (weft_connect4)"),
        "{plan}"
    );
    assert!(!a_cg.pin_dir().exists(), "a dry run pinned something");

    let sa = a.sidecar(&[]).unwrap();
    let dst = SocketAddr::new(b.ipv4().into(), 8080);
    assert_eq!(curl(&a, &url(dst.ip(), 8080), None), "200");
    assert_eq!(sa.wait_closed(dst).unwrap().len(), 1);
    let attached = weft_programs_attached(a_cg.path());
    assert_eq!(attached.len(), 4, "{attached:?}");
    assert!(a_cg.pin_dir().join("link_weft_connect4").exists());

    let out = weft_init(&a, &["--mode", "ebpf", "--cgroup", &cg, "--cleanup"]).unwrap();
    assert!(out.contains("detached 4 programs"), "{out}");
    let left = weft_programs_attached(a_cg.path());
    assert!(left.is_empty(), "still attached after --cleanup: {left:?}");
    assert!(!a_cg.pin_dir().exists());
    assert!(
        !Path::new(weft_e2e::cgroup::PIN_ROOT).exists()
            || std::fs::read_dir(weft_e2e::cgroup::PIN_ROOT)
                .unwrap()
                .all(|e| !e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(a_cg.name())),
        "a pin of this pod is left under {}",
        weft_e2e::cgroup::PIN_ROOT
    );
    let save = a
        .pod()
        .run_ok(["iptables-save", "-t", "nat"], None, SECS(10))
        .unwrap();
    assert!(!save.contains("WEFT_"), "{save}");

    // Capture is gone: the app now reaches B directly, A's proxy sees nothing new.
    assert_eq!(curl(&a, &url(dst.ip(), 8080), None), "200");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sa.connections_to(dst).unwrap().len(), 1);
    // A second cleanup has nothing to do and succeeds.
    let again = weft_init(&a, &["--mode", "ebpf", "--cgroup", &cg, "--cleanup"]).unwrap();
    assert!(again.contains("nothing installed"), "{again}");
}
