//! Tier 2: eBPF-mode interception end to end. Each pod is a network namespace plus
//! its own cgroup v2; `weft-init --mode ebpf --cgroup` attaches weft's programs to the
//! cgroup (outbound) and installs iptables in the pod (inbound); weft-proxy (uid
//! 1337) and the apps run inside the cgroup. Unmodified curl reaches another pod
//! through both proxies; the proxy recovers the original destination through the
//! cgroup/getsockopt program, unchanged from iptables mode.
//!
//! Every cgroup and bpffs pin is named after the mesh's per-run prefix and removed on
//! drop ([`PodCgroup`]), also when a test fails.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::cgroup::PodCgroup;
use weft_e2e::sidecar::weft_init;
use weft_e2e::{python3, Mesh, Pod, PodProc, ProcSpec, Sidecar};

const NOBODY: u32 = 65534;
const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A pod with its cgroup.
struct EbpfPod {
    pod: Pod,
    cgroup: PodCgroup,
}

fn ebpf_pod(mesh: &Mesh, name: &str) -> EbpfPod {
    let pod = mesh.add_pod(name).unwrap();
    let cgroup = PodCgroup::create(mesh, &pod).unwrap();
    EbpfPod { pod, cgroup }
}

/// python's http.server on `port` (dual-stack, as nobody) inside the pod's cgroup,
/// ready when this returns.
fn http_server(p: &EbpfPod, port: u16) -> PodProc {
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
        .pod
        .spawn(ProcSpec::new(p.cgroup.wrap(&argv, Some(NOBODY))).name(&format!("http-{port}")))
        .unwrap();
    // Loopback is never captured: this probe leaves no trace in the proxies.
    p.pod
        .wait_listening(SocketAddr::new([127, 0, 0, 1].into(), port), SECS(10))
        .unwrap();
    proc
}

/// curl in the pod's cgroup as `uid` (None = root); the HTTP status it saw.
fn curl(p: &EbpfPod, url: &str, uid: Option<u32>) -> String {
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
    p.pod
        .run_ok(p.cgroup.wrap(&argv, uid), None, SECS(20))
        .unwrap()
}

fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

fn dir<'a>(direction: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("direction", direction)];
    v.extend_from_slice(extra);
    v
}

/// A counter of the pod's pinned WEFT_STATS map (summed over CPUs), read with bpftool.
fn stat(cg: &PodCgroup, index: u32) -> u64 {
    let pin = cg.pin_dir().join("map_WEFT_STATS");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["key"][0]
                .as_str()
                .and_then(|k| u32::from_str_radix(k.trim_start_matches("0x"), 16).ok())
                == Some(index)
        })
        .unwrap_or_else(|| panic!("no key {index} in {v}"));
    entry["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cpu| {
            let bytes: Vec<u8> = cpu["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u64::from_le_bytes(bytes[..8].try_into().unwrap())
        })
        .sum()
}

// Indexes of weft_ebpf_common::Stat.
const REDIRECTED: u32 = 0;
const SKIPPED_PROXY: u32 = 1;
const SKIPPED_LOOPBACK: u32 = 2;
const SKIPPED_EXCLUDED: u32 = 3;
const ORIG_DST_ANSWERED: u32 = 5;
const MSG_REDIRECTED: u32 = 6;
const SOCK_HASHED: u32 = 7;

/// curl as root and as nobody from A's cgroup to B, through A's eBPF-captured outbound
/// proxy and B's inbound proxy; the original destination is B:8080 in both.
fn curl_through_both_sidecars(ipv6: bool) {
    let mesh = Mesh::new().unwrap();
    let a = ebpf_pod(&mesh, "a");
    let b = ebpf_pod(&mesh, "b");
    let _server = http_server(&b, 8080);
    let sa = Sidecar::start_ebpf(&a.pod, &a.cgroup, &[]).unwrap();
    let sb = Sidecar::start_ebpf(&b.pod, &b.cgroup, &[]).unwrap();
    let (a_ip, b_ip): (IpAddr, IpAddr) = if ipv6 {
        (a.pod.ipv6().into(), b.pod.ipv6().into())
    } else {
        (a.pod.ipv4().into(), b.pod.ipv4().into())
    };
    let dst = SocketAddr::new(b_ip, 8080);

    assert_eq!(curl(&a, &url(b_ip, 8080), None), "200");
    assert_eq!(curl(&a, &url(b_ip, 8080), Some(NOBODY)), "200");

    let out = sa.wait_closed(dst).unwrap();
    assert_eq!(out.len(), 2, "A's outbound proxy saw {out:#?}");
    let inb = sb.wait_closed(dst).unwrap();
    assert_eq!(inb.len(), 2, "B's inbound proxy saw {inb:#?}");
    for c in &out {
        assert_eq!(c["direction"], "outbound");
        assert_eq!(c["original_destination"], dst.to_string());
        assert_eq!(c["endpoint"], dst.to_string());
        assert_eq!(c["end"], "eof");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 100, "{c}");
        // connect4/connect6 sent the app to the loopback listener.
        let src: SocketAddr = c["source"].as_str().unwrap().parse().unwrap();
        assert!(
            src.ip().is_loopback(),
            "the app reached the proxy over loopback: {c}"
        );
    }
    for c in &inb {
        assert_eq!(c["direction"], "inbound");
        let src: SocketAddr = c["source"].as_str().unwrap().parse().unwrap();
        assert_eq!(src.ip(), a_ip, "the inbound peer is A's proxy");
    }
    let total = |v: &[Value], k: &str| -> u64 { v.iter().map(|c| c[k].as_u64().unwrap()).sum() };
    assert_eq!(
        total(&out, "bytes_to_client"),
        total(&inb, "bytes_to_client")
    );
    assert_eq!(
        total(&out, "bytes_from_client"),
        total(&inb, "bytes_from_client")
    );

    let opened = "weft_tcp_connections_opened_total";
    let a_edge = [
        ("source_service", "a"),
        ("destination_service", "passthrough"),
    ];
    assert_eq!(sa.metric(opened, &dir("outbound", &a_edge)).unwrap(), 2.0);
    let b_edge = [("source_service", "unknown"), ("destination_service", "b")];
    assert_eq!(sb.metric(opened, &dir("inbound", &b_edge)).unwrap(), 2.0);
    // The kernel side agrees: two rewrites, two getsockopt answers in A.
    assert_eq!(stat(&a.cgroup, REDIRECTED), 2);
    assert_eq!(stat(&a.cgroup, ORIG_DST_ANSWERED), 2);
    // sk_msg (on by default): both ends of each app<->proxy connection were hashed.
    assert_eq!(stat(&a.cgroup, SOCK_HASHED), 4);
    eprintln!(
        "sk_msg redirected {} messages in A",
        stat(&a.cgroup, MSG_REDIRECTED)
    );
}

#[test]
fn ebpf_curl_reaches_another_pod_through_both_sidecars_ipv4() {
    curl_through_both_sidecars(false);
}

#[test]
fn ebpf_curl_reaches_another_pod_through_both_sidecars_ipv6() {
    curl_through_both_sidecars(true);
}

/// The proxies' own upstream connections (uid 1337) are not captured: exactly one
/// proxied connection per request on each side, no loop errors, and the kernel
/// counted A's proxy's connects as skipped.
#[test]
fn ebpf_proxies_own_connections_are_not_captured() {
    let mesh = Mesh::new().unwrap();
    let a = ebpf_pod(&mesh, "a");
    let b = ebpf_pod(&mesh, "b");
    let _server = http_server(&b, 8080);
    let sa = Sidecar::start_ebpf(&a.pod, &a.cgroup, &[]).unwrap();
    let sb = Sidecar::start_ebpf(&b.pod, &b.cgroup, &[]).unwrap();
    for ip in [IpAddr::from(b.pod.ipv4()), IpAddr::from(b.pod.ipv6())] {
        for _ in 0..5 {
            assert_eq!(curl(&a, &url(ip, 8080), None), "200");
        }
        sa.wait_closed(SocketAddr::new(ip, 8080)).unwrap();
        sb.wait_closed(SocketAddr::new(ip, 8080)).unwrap();
    }
    let opened = "weft_tcp_connections_opened_total";
    assert_eq!(sa.metric(opened, &dir("outbound", &[])).unwrap(), 10.0);
    assert_eq!(sb.metric(opened, &dir("inbound", &[])).unwrap(), 10.0);
    // B's proxy dials the app in its own pod (same cgroup): not captured as outbound.
    assert_eq!(sb.metric(opened, &dir("outbound", &[])).unwrap(), 0.0);
    for s in [&sa, &sb] {
        assert_eq!(s.metric("weft_proxy_errors_total", &[]).unwrap(), 0.0);
    }
    assert_eq!(stat(&a.cgroup, REDIRECTED), 10);
    assert!(stat(&a.cgroup, SKIPPED_PROXY) >= 10);
    assert!(stat(&b.cgroup, SKIPPED_PROXY) >= 10);
    assert_eq!(stat(&b.cgroup, REDIRECTED), 0);
}

/// Excluded outbound port and CIDR, and loopback, bypass A's proxy in eBPF mode.
#[test]
fn ebpf_exclusions_and_loopback_bypass_the_proxy() {
    let mesh = Mesh::new().unwrap();
    let a = ebpf_pod(&mesh, "a");
    let b = ebpf_pod(&mesh, "b");
    let c = ebpf_pod(&mesh, "c");
    let _servers = [
        http_server(&a, 8000),
        http_server(&b, 8080),
        http_server(&b, 9090),
        http_server(&c, 8080),
    ];
    let c_cidr = format!("{}/32", c.pod.ipv4());
    let sa = Sidecar::start_ebpf(
        &a.pod,
        &a.cgroup,
        &[
            "--exclude-outbound-ports",
            "9090",
            "--exclude-outbound-cidrs",
            &c_cidr,
        ],
    )
    .unwrap();
    let b4 = IpAddr::from(b.pod.ipv4());

    assert_eq!(curl(&a, &url(b4, 8080), None), "200");
    assert_eq!(sa.wait_closed(SocketAddr::new(b4, 8080)).unwrap().len(), 1);
    assert_eq!(curl(&a, &url(b4, 9090), None), "200");
    assert!(sa
        .connections_to(SocketAddr::new(b4, 9090))
        .unwrap()
        .is_empty());
    assert_eq!(curl(&a, &url(c.pod.ipv4().into(), 8080), None), "200");
    assert!(sa
        .connections_to(SocketAddr::new(c.pod.ipv4().into(), 8080))
        .unwrap()
        .is_empty());
    // An IPv4 CIDR does not exclude C's IPv6 address.
    let c6 = SocketAddr::new(c.pod.ipv6().into(), 8080);
    assert_eq!(curl(&a, &url(c6.ip(), 8080), None), "200");
    assert_eq!(sa.wait_closed(c6).unwrap().len(), 1);
    assert_eq!(curl(&a, "http://127.0.0.1:8000/", None), "200");
    assert_eq!(curl(&a, "http://[::1]:8000/", None), "200");
    assert!(sa
        .connections_to("127.0.0.1:8000".parse().unwrap())
        .unwrap()
        .is_empty());
    assert!(sa
        .connections_to("[::1]:8000".parse().unwrap())
        .unwrap()
        .is_empty());

    let opened = "weft_tcp_connections_opened_total";
    assert_eq!(sa.metric(opened, &dir("outbound", &[])).unwrap(), 2.0);
    assert_eq!(stat(&a.cgroup, SKIPPED_EXCLUDED), 2);
    assert!(stat(&a.cgroup, SKIPPED_LOOPBACK) >= 2);
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
    let a = ebpf_pod(&mesh, "a");
    let b = ebpf_pod(&mesh, "b");
    let _server = http_server(&b, 8080);
    let cg = a.cgroup.path().to_string_lossy().into_owned();

    let plan = weft_init(&a.pod, &["--mode", "auto", "--cgroup", &cg, "--dry-run"]).unwrap();
    assert!(
        plan.contains("attach cgroup/connect4 (weft_connect4)"),
        "{plan}"
    );
    assert!(!a.cgroup.pin_dir().exists(), "a dry run pinned something");

    let sa = Sidecar::start_ebpf(&a.pod, &a.cgroup, &[]).unwrap();
    let dst = SocketAddr::new(b.pod.ipv4().into(), 8080);
    assert_eq!(curl(&a, &url(dst.ip(), 8080), None), "200");
    assert_eq!(sa.wait_closed(dst).unwrap().len(), 1);
    let attached = weft_programs_attached(a.cgroup.path());
    assert_eq!(attached.len(), 4, "{attached:?}");
    assert!(a.cgroup.pin_dir().join("link_weft_connect4").exists());

    let out = weft_init(&a.pod, &["--mode", "ebpf", "--cgroup", &cg, "--cleanup"]).unwrap();
    assert!(out.contains("detached 4 programs"), "{out}");
    let left = weft_programs_attached(a.cgroup.path());
    assert!(left.is_empty(), "still attached after --cleanup: {left:?}");
    assert!(!a.cgroup.pin_dir().exists());
    assert!(
        !Path::new(weft_e2e::cgroup::PIN_ROOT).exists()
            || std::fs::read_dir(weft_e2e::cgroup::PIN_ROOT)
                .unwrap()
                .all(|e| !e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(a.cgroup.name())),
        "a pin of this pod is left under {}",
        weft_e2e::cgroup::PIN_ROOT
    );
    let save = a
        .pod
        .run_ok(["iptables-save", "-t", "nat"], None, SECS(10))
        .unwrap();
    assert!(!save.contains("WEFT_"), "{save}");

    // Capture is gone: the app now reaches B directly, A's proxy sees nothing new.
    assert_eq!(curl(&a, &url(dst.ip(), 8080), None), "200");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sa.connections_to(dst).unwrap().len(), 1);
    // A second cleanup has nothing to do and succeeds.
    let again = weft_init(&a.pod, &["--mode", "ebpf", "--cgroup", &cg, "--cleanup"]).unwrap();
    assert!(again.contains("nothing installed"), "{again}");
}
