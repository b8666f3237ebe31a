//! Tier 2: transparent interception end to end. Unmodified curl, python and nc in
//! one pod reach a server in another pod through both pods' weft-proxy sidecars,
//! installed by the real weft-init — in both capture modes: every test is a pair
//! (`_iptables`: real iptables rules; `_ebpf`: weft's eBPF programs on the pod's
//! cgroup for outbound, iptables for inbound) running one body. Where the body looks
//! at the kernel's side, it reads the mode's own counters: iptables rule counters,
//! or the pod's pinned WEFT_STATS map.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use weft_e2e::{python3, Mesh, Mode, ModePod, PodProc, ProcSpec, Stat};

const NOBODY: u32 = 65534;
const SECS: fn(u64) -> Duration = Duration::from_secs;

/// An HTTP server (python's http.server) on `port`, dual-stack, as an unprivileged
/// user, ready when this returns.
fn http_server(pod: &ModePod, port: u16) -> PodProc {
    let proc = pod
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "::",
                "--directory",
                "/usr/share",
            ])
            .name(&format!("http-{port}"))
            .uid(NOBODY),
        )
        .unwrap();
    // Loopback is never captured, so this readiness probe leaves no trace in the
    // proxies' connection tables.
    pod.wait_listening(SocketAddr::new([127, 0, 0, 1].into(), port), SECS(10))
        .unwrap();
    proc
}

/// `curl` in `pod` as `uid` (None = root); returns the HTTP status it saw.
fn curl(pod: &ModePod, url: &str, uid: Option<u32>) -> String {
    pod.run_ok(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ],
        uid,
        SECS(20),
    )
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

/// Runs `$body(mode, args...)` as one `#[test]` per mode: `<name>_iptables` and
/// `<name>_ebpf`.
macro_rules! both_modes {
    ($body:ident($($arg:expr),*): $iptables:ident, $ebpf:ident) => {
        #[test]
        fn $iptables() {
            $body(Mode::Iptables $(, $arg)*);
        }

        #[test]
        fn $ebpf() {
            $body(Mode::Ebpf $(, $arg)*);
        }
    };
}

/// Must-show 1 and 4: curl as root and as an ordinary user, through A's outbound
/// and B's inbound proxy, seen in both proxies' /connections and /metrics.
fn curl_through_both_sidecars(mode: Mode, ipv6: bool) {
    let mesh = Mesh::new().unwrap();
    let a = mode.add_pod(&mesh, "a").unwrap();
    let b = mode.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let sa = a.sidecar(&[]).unwrap();
    let sb = b.sidecar(&[]).unwrap();
    let b_ip: IpAddr = if ipv6 {
        b.ipv6().into()
    } else {
        b.ipv4().into()
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
        assert_eq!(c["endpoint"], dst.to_string());
        assert_eq!(c["end"], "eof");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 100, "{c}");
        let src: SocketAddr = c["source"].as_str().unwrap().parse().unwrap();
        let a_ip: IpAddr = if ipv6 {
            a.ipv6().into()
        } else {
            a.ipv4().into()
        };
        match mode {
            // REDIRECT keeps the app's source address.
            Mode::Iptables => assert_eq!(src.ip(), a_ip, "the client is the app in A"),
            // connect4/connect6 sent the app to the loopback listener.
            Mode::Ebpf => assert!(src.ip().is_loopback(), "the app came over loopback: {c}"),
        }
    }
    for c in &inb {
        assert_eq!(c["direction"], "inbound");
        let src: SocketAddr = c["source"].as_str().unwrap().parse().unwrap();
        let a_ip: IpAddr = if ipv6 {
            a.ipv6().into()
        } else {
            a.ipv4().into()
        };
        assert_eq!(src.ip(), a_ip, "the inbound peer is A's proxy");
    }
    // Byte counts agree across the two hops.
    let total = |v: &[serde_json::Value], k: &str| -> u64 {
        v.iter().map(|c| c[k].as_u64().unwrap()).sum()
    };
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
    assert_eq!(sa.metric(opened, &dir("inbound", &[])).unwrap(), 0.0);
    let b_edge = [("source_service", "unknown"), ("destination_service", "b")];
    assert_eq!(sb.metric(opened, &dir("inbound", &b_edge)).unwrap(), 2.0);
    assert_eq!(
        sb.metric("weft_tcp_sent_bytes_total", &dir("inbound", &[]))
            .unwrap(),
        total(&inb, "bytes_to_client") as f64
    );
    assert_eq!(
        sb.metric("weft_tcp_active_connections", &dir("inbound", &[]))
            .unwrap(),
        0.0
    );
    if mode == Mode::Ebpf {
        // The kernel side agrees: two rewrites and two getsockopt answers in A, none
        // in B (inbound is iptables).
        assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 2);
        assert_eq!(a.ebpf_stat(Stat::OrigDstAnswered).unwrap(), 2);
        assert_eq!(b.ebpf_stat(Stat::Redirected).unwrap(), 0);
        // sk_msg is opt-in (--sockmap): nothing hashed by default.
        assert_eq!(a.ebpf_stat(Stat::SockHashed).unwrap(), 0);
    }
}

both_modes!(curl_through_both_sidecars(false):
    curl_reaches_another_pod_through_both_sidecars_ipv4_iptables,
    curl_reaches_another_pod_through_both_sidecars_ipv4_ebpf);
both_modes!(curl_through_both_sidecars(true):
    curl_reaches_another_pod_through_both_sidecars_ipv6_iptables,
    curl_reaches_another_pod_through_both_sidecars_ipv6_ebpf);

/// Packet counter of the WEFT_OUTPUT rule that returns the proxy uid's traffic.
fn uid_exclusion_hits(pod: &ModePod, ipv6: bool) -> u64 {
    exclusion_hits(pod, ipv6, "--uid-owner 1337")
}

/// Packet counter of the WEFT_OUTPUT rule containing `needle` (iptables mode).
fn exclusion_hits(pod: &ModePod, ipv6: bool, needle: &str) -> u64 {
    let save = if ipv6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    // iptables-save is no app: it runs outside the pod's cgroup.
    let out = pod
        .pod()
        .run_ok([save, "-c", "-t", "nat"], None, SECS(10))
        .unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("-A WEFT_OUTPUT") && l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle} in\n{out}"));
    line.trim_start_matches('[')
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Must-show 2: the proxies' own upstream connections are not captured again.
fn proxies_own_connections_are_not_captured(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let a = mode.add_pod(&mesh, "a").unwrap();
    let b = mode.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let sa = a.sidecar(&[]).unwrap();
    let sb = b.sidecar(&[]).unwrap();
    for ip in [IpAddr::from(b.ipv4()), IpAddr::from(b.ipv6())] {
        for _ in 0..5 {
            assert_eq!(curl(&a, &url(ip, 8080), None), "200");
        }
        sa.wait_closed(SocketAddr::new(ip, 8080)).unwrap();
        sb.wait_closed(SocketAddr::new(ip, 8080)).unwrap();
    }
    // Exactly one captured connection per request on each side: a loop would show
    // more, and the proxies would count `reason="loop"`.
    let opened = "weft_tcp_connections_opened_total";
    assert_eq!(sa.metric(opened, &dir("outbound", &[])).unwrap(), 10.0);
    assert_eq!(sb.metric(opened, &dir("inbound", &[])).unwrap(), 10.0);
    // B's proxy dials the app in its own pod: that must not be captured as outbound.
    assert_eq!(sb.metric(opened, &dir("outbound", &[])).unwrap(), 0.0);
    for s in [&sa, &sb] {
        assert_eq!(s.metric("weft_proxy_errors_total", &[]).unwrap(), 0.0);
    }
    // And the kernel agrees: A's proxy connections hit the uid exclusion.
    match mode {
        Mode::Iptables => {
            assert!(uid_exclusion_hits(&a, false) >= 5);
            assert!(uid_exclusion_hits(&a, true) >= 5);
        }
        Mode::Ebpf => {
            assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 10);
            assert!(a.ebpf_stat(Stat::SkippedProxy).unwrap() >= 10);
            // B's proxy dials its app as uid 1337: skipped, never rewritten.
            assert!(b.ebpf_stat(Stat::SkippedProxy).unwrap() >= 10);
            assert_eq!(b.ebpf_stat(Stat::Redirected).unwrap(), 0);
        }
    }
}

both_modes!(proxies_own_connections_are_not_captured():
    proxies_own_connections_are_not_captured_iptables,
    proxies_own_connections_are_not_captured_ebpf);

/// `--proxy-gid`: a process running with the proxy's gid (under another uid) is left
/// alone like the proxy uid, an ordinary process is captured.
fn proxy_gid_is_not_captured(mode: Mode) {
    const PROXY_GID: &str = "1500";
    let mesh = Mesh::new().unwrap();
    let a = mode.add_pod(&mesh, "a").unwrap();
    let b = mode.add_pod(&mesh, "b").unwrap();
    let _server = http_server(&b, 8080);
    let sa = a.sidecar(&["--proxy-gid", PROXY_GID]).unwrap();
    let b4 = IpAddr::from(b.ipv4());
    let as_gid = |gid: &str| -> String {
        let regid = format!("--regid={gid}");
        let target = url(b4, 8080);
        let argv = [
            "setpriv",
            "--reuid=65534",
            regid.as_str(),
            "--clear-groups",
            "--",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            target.as_str(),
        ];
        a.run_ok(argv, None, SECS(20)).unwrap()
    };
    assert_eq!(as_gid(PROXY_GID), "200");
    let dst = SocketAddr::new(b4, 8080);
    std::thread::sleep(Duration::from_millis(200));
    assert!(sa.connections_to(dst).unwrap().is_empty());
    // Control: the same uid with its own gid is captured.
    assert_eq!(as_gid("65534"), "200");
    assert_eq!(sa.wait_closed(dst).unwrap().len(), 1);
    match mode {
        Mode::Iptables => assert!(exclusion_hits(&a, false, "--gid-owner 1500") >= 1),
        Mode::Ebpf => {
            assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 1);
            // The gid's curl and the proxy's upstream connection.
            assert_eq!(a.ebpf_stat(Stat::SkippedProxy).unwrap(), 2);
        }
    }
}

both_modes!(proxy_gid_is_not_captured():
    proxy_gid_is_not_captured_iptables,
    proxy_gid_is_not_captured_ebpf);

/// Must-show 3: excluded outbound port and CIDR, loopback, and an excluded inbound
/// port all bypass the proxy.
fn exclusions_and_loopback_bypass_the_proxy(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let a = mode.add_pod(&mesh, "a").unwrap();
    let b = mode.add_pod(&mesh, "b").unwrap();
    let c = mode.add_pod(&mesh, "c").unwrap();
    let _servers = [
        http_server(&a, 8000),
        http_server(&b, 8080),
        http_server(&b, 9090),
        http_server(&b, 8081),
        http_server(&c, 8080),
    ];
    let c_cidr = format!("{}/32", c.ipv4());
    let sa = a
        .sidecar(&[
            "--exclude-outbound-ports",
            "9090",
            "--exclude-outbound-cidrs",
            &c_cidr,
        ])
        .unwrap();
    let sb = b.sidecar(&["--exclude-inbound-ports", "8081"]).unwrap();
    let b4 = IpAddr::from(b.ipv4());

    // Control: a port that is not excluded goes through both proxies.
    assert_eq!(curl(&a, &url(b4, 8080), None), "200");
    assert_eq!(sa.wait_closed(SocketAddr::new(b4, 8080)).unwrap().len(), 1);
    assert_eq!(sb.wait_closed(SocketAddr::new(b4, 8080)).unwrap().len(), 1);

    // Excluded outbound port: A's proxy never sees it; B's inbound still does.
    assert_eq!(curl(&a, &url(b4, 9090), None), "200");
    assert_eq!(sb.wait_closed(SocketAddr::new(b4, 9090)).unwrap().len(), 1);
    assert!(sa
        .connections_to(SocketAddr::new(b4, 9090))
        .unwrap()
        .is_empty());

    // Excluded CIDR: C is reached directly (C has no sidecar).
    assert_eq!(curl(&a, &url(c.ipv4().into(), 8080), None), "200");
    assert!(sa
        .connections_to(SocketAddr::new(c.ipv4().into(), 8080))
        .unwrap()
        .is_empty());
    // ...while IPv6 to C is not excluded by an IPv4 CIDR.
    assert_eq!(curl(&a, &url(c.ipv6().into(), 8080), None), "200");
    assert_eq!(
        sa.wait_closed(SocketAddr::new(c.ipv6().into(), 8080))
            .unwrap()
            .len(),
        1
    );

    // Loopback inside A bypasses A's proxy (v4 and v6).
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

    // Excluded inbound port: reaches B's app directly, through A's outbound proxy.
    assert_eq!(curl(&a, &url(b4, 8081), None), "200");
    assert_eq!(sa.wait_closed(SocketAddr::new(b4, 8081)).unwrap().len(), 1);
    assert!(sb
        .connections_to(SocketAddr::new(b4, 8081))
        .unwrap()
        .is_empty());

    // Nothing else went through the proxies.
    let opened = "weft_tcp_connections_opened_total";
    assert_eq!(sa.metric(opened, &dir("outbound", &[])).unwrap(), 3.0);
    assert_eq!(sb.metric(opened, &dir("inbound", &[])).unwrap(), 2.0);
    if mode == Mode::Ebpf {
        // connect4 let the excluded port and CIDR through (C's IPv6 was captured).
        assert_eq!(a.ebpf_stat(Stat::SkippedExcluded).unwrap(), 2);
        assert!(a.ebpf_stat(Stat::SkippedLoopback).unwrap() >= 2);
        assert_eq!(a.ebpf_stat(Stat::Redirected).unwrap(), 3);
    }
}

both_modes!(exclusions_and_loopback_bypass_the_proxy():
    exclusions_and_loopback_bypass_the_proxy_iptables,
    exclusions_and_loopback_bypass_the_proxy_ebpf);
