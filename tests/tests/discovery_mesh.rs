//! Tier 2: the real controller serves a mesh file; sidecars route connections to a
//! service VIP round robin over its endpoints, over IPv4 and IPv6 VIPs, and the
//! inbound side names the calling service from the controller's endpoint map.
//! In both capture modes (`_iptables`, `_ebpf`): the same body, the pods' capture
//! installed by weft-init in that mode.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use weft_e2e::Controller;
use weft_e2e::{python3, wait_until, Mesh, Mode, ModePod, PodProc, ProcSpec, Sidecar, Stat};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// python's http.server on 8080 serving an index.html that names the pod.
fn named_http_server(mesh: &Mesh, pod: &ModePod) -> PodProc {
    let dir = mesh.run_dir().join(format!("www-{}", pod.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), pod.name()).unwrap();
    let proc = pod
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                "-m",
                "http.server",
                "8080",
                "--bind",
                "::",
                "--directory",
                dir.to_str().unwrap(),
            ])
            .name("http"),
        )
        .unwrap();
    pod.wait_listening("127.0.0.1:8080".parse().unwrap(), SECS(10))
        .unwrap();
    proc
}

fn curl_body(pod: &ModePod, url: &str) -> String {
    pod.run_ok(["curl", "-sS", "--max-time", "10", url], None, SECS(20))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn connections_to_a_service_vip_land_round_robin_on_its_endpoints_iptables() {
    round_robin_over_service_endpoints(Mode::Iptables);
}

#[test]
fn connections_to_a_service_vip_land_round_robin_on_its_endpoints_ebpf() {
    round_robin_over_service_endpoints(Mode::Ebpf);
}

fn round_robin_over_service_endpoints(mode: Mode) {
    let mesh = Mesh::new().unwrap();
    let front = mode.add_pod(&mesh, "front").unwrap();
    let backends: Vec<ModePod> = (1..=3)
        .map(|i| mode.add_pod(&mesh, &format!("back{i}")).unwrap())
        .collect();
    let _servers: Vec<PodProc> = backends
        .iter()
        .map(|b| named_http_server(&mesh, b))
        .collect();

    let list =
        |f: &dyn Fn(&ModePod) -> String| backends.iter().map(f).collect::<Vec<_>>().join(", ");
    let mesh_file = format!(
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080, protocol: tcp }}]\n    endpoints: [{}]\n  backend6:\n    vip: fd00:96::10\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}]\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80 }}]\n    endpoints: [{}, {}]\n",
        list(&|b| b.ipv4().to_string()),
        list(&|b| format!("\"{}\"", b.ipv6())),
        front.ipv4(),
        front.ipv6(),
    );
    let file = mesh.run_dir().join("mesh.yaml");
    std::fs::write(&file, mesh_file).unwrap();
    let controller = Controller::start(&mesh, &file, &[]).unwrap();

    let discovery = ["--controller", controller.url()];
    front.add_route("10.96.0.0/16").unwrap();
    front.add_route("fd00:96::/64").unwrap();
    let sf = front.sidecar_with(&[], "frontend", &discovery).unwrap();
    let sbs: Vec<Sidecar> = backends
        .iter()
        .map(|b| b.sidecar_with(&[], "backend", &discovery).unwrap())
        .collect();

    for vip in ["http://10.96.0.10/", "http://[fd00:96::10]/"] {
        let mut served = BTreeMap::<String, usize>::new();
        for _ in 0..9 {
            *served.entry(curl_body(&front, vip)).or_default() += 1;
        }
        assert_eq!(
            served.into_iter().collect::<Vec<_>>(),
            [
                ("back1".into(), 3),
                ("back2".into(), 3),
                ("back3".into(), 3)
            ],
            "{vip}"
        );
    }
    let opened = "weft_tcp_connections_opened_total";
    let edge = |dst| {
        [
            ("direction", "outbound"),
            ("source_service", "frontend"),
            ("destination_service", dst),
        ]
    };
    assert_eq!(sf.metric(opened, &edge("backend")).unwrap(), 9.0);
    assert_eq!(sf.metric(opened, &edge("backend6")).unwrap(), 9.0);
    for sb in &sbs {
        // Each backend saw 3 + 3 connections, and knows they came from the frontend.
        let inbound = [
            ("direction", "inbound"),
            ("source_service", "frontend"),
            ("destination_service", "backend"),
        ];
        wait_until(SECS(5), Duration::from_millis(50), || {
            sb.metric(opened, &inbound).unwrap() == 6.0
        })
        .unwrap();
    }
    if mode == Mode::Ebpf {
        // 18 connections to VIPs rewritten by connect4/connect6 in the frontend; the
        // proxies' own connections (to the controller, to the backends) skipped.
        assert_eq!(front.ebpf_stat(Stat::Redirected).unwrap(), 18);
        assert_eq!(front.ebpf_stat(Stat::OrigDstAnswered).unwrap(), 18);
        assert!(front.ebpf_stat(Stat::SkippedProxy).unwrap() >= 18);
    }
}
