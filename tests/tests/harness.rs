//! Tier-2 tests of the harness itself (root): pods reach each other over IPv4 and
//! IPv6, as root and as an unprivileged uid; nothing leaves the mesh; commands
//! enter pods with setns on the network namespace only; and dropping a mesh —
//! also while panicking — leaves no namespace and no process behind.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use weft_e2e::netns::{self, NsId};
use weft_e2e::process::group_members;
use weft_e2e::{python3, wait_until, Mesh, Pod, ProcSpec};

const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(10);

/// Serves `dir` with `python3 -m http.server` on `[::]:port` (dual stack) in `pod`
/// as `uid`, and waits until it answers.
fn serve_dir(pod: &Pod, dir: &std::path::Path, port: u16, uid: u32) -> Result<weft_e2e::PodProc> {
    let py = python3();
    let port_s = port.to_string();
    let dir_s = dir.to_str().context("utf-8 dir")?;
    let server = pod.spawn(
        ProcSpec::new([
            py.as_os_str().to_str().context("utf-8 python path")?,
            "-m",
            "http.server",
            &port_s,
            "--bind",
            "::",
            "--directory",
            dir_s,
        ])
        .name("http-server")
        .uid(uid),
    )?;
    pod.wait_listening(SocketAddr::new(IpAddr::V4(pod.ipv4()), port), T)
        .with_context(|| format!("http.server logs:\n{}", server.logs()))?;
    Ok(server)
}

/// A directory any uid can read, holding `index.html` with `body`.
fn www(mesh: &Mesh, body: &str) -> Result<PathBuf> {
    let dir = mesh.run_dir().join("www");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("index.html"), body)?;
    std::fs::set_permissions(mesh.run_dir(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        dir.join("index.html"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    Ok(dir)
}

#[test]
fn pods_talk_http_over_v4_and_v6_as_root_and_nobody() -> Result<()> {
    let mesh = Mesh::new()?;
    let a = mesh.add_pod("a")?;
    let b = mesh.add_pod("b")?;
    assert_ne!(a.ipv4(), b.ipv4());
    assert!(a.netns_name().starts_with(mesh.prefix()));
    assert!(a.netns_path().exists());

    let marker = format!("hello from {}", b.netns_name());
    let dir = www(&mesh, &marker)?;
    let server = serve_dir(&b, &dir, 8080, NOBODY)?;

    let urls = [
        format!("http://{}:8080/", b.ipv4()),
        format!("http://[{}]:8080/", b.ipv6()),
    ];
    for url in &urls {
        for uid in [None, Some(NOBODY)] {
            let out = a.run_ok(["curl", "-sS", "--max-time", "5", url.as_str()], uid, T)?;
            ensure!(out.contains(&marker), "curl {url} as {uid:?}: got {out:?}");
        }
    }

    for ip in [IpAddr::V4(b.ipv4()), IpAddr::V6(b.ipv6())] {
        let addr = SocketAddr::new(ip, 8080);
        let (status, body) = a.http_get(addr, "/")?;
        assert_eq!(status, 200, "GET {addr}");
        assert!(body.contains(&marker), "GET {addr}: {body:?}");
        let (status, _) = a.http_get(addr, "/no-such-file")?;
        assert_eq!(status, 404);
    }
    // The server's pod reaches itself on its own address too.
    let (status, _) = b.http_get(SocketAddr::new(IpAddr::V4(b.ipv4()), 8080), "/")?;
    assert_eq!(status, 200);

    // Its log captured the requests (python logs them to stderr).
    wait_until(T, Duration::from_millis(50), || {
        server.logs().contains("GET / HTTP/1.1")
    })
    .with_context(|| format!("log: {}", server.logs()))?;
    assert_eq!(
        server.log_path(),
        mesh.run_dir().join("b-http-server.log").as_path()
    );

    server.kill_term()?;
    let status = server
        .wait_timeout(T)
        .context("http.server ignored SIGTERM")?;
    assert!(!status.success(), "{status:?}");
    Ok(())
}

#[test]
fn pods_cannot_reach_outside_the_mesh() -> Result<()> {
    let mesh = Mesh::new()?;
    let a = mesh.add_pod("a")?;
    for pod in [&a, mesh.node()] {
        for family in ["-4", "-6"] {
            let routes = pod.run_ok(["ip", family, "route"], None, T)?;
            ensure!(
                !routes.lines().any(|l| l.starts_with("default")),
                "{} has a default route:\n{routes}",
                pod.name()
            );
        }
        let forward = pod.run_ok(["sysctl", "-n", "net.ipv4.ip_forward"], None, T)?;
        assert_eq!(forward.trim(), "0", "{} forwards", pod.name());
    }
    let v4 = a.run_ok(["ip", "-4", "route"], None, T)?;
    assert_eq!(
        v4.trim(),
        "10.211.0.0/24 dev eth0 proto kernel scope link src 10.211.0.2"
    );

    // Documentation addresses (TEST-NET-1, 2001:db8::/32): no route, so the
    // connect fails at once and no packet is sent anywhere.
    for dst in ["192.0.2.1:80", "[2001:db8::1]:80"] {
        let dst: SocketAddr = dst.parse()?;
        let start = Instant::now();
        let res = a.in_netns(|| TcpStream::connect_timeout(&dst, Duration::from_secs(2)));
        let err = res
            .err()
            .with_context(|| format!("connect to {dst} succeeded"))?;
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{dst}: {err}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    // Extra prefixes (service VIPs) route out of eth0, inside the mesh only.
    a.add_route("10.96.0.0/16")?;
    a.add_route("fd00:96::/64")?;
    let v4 = a.run_ok(["ip", "-4", "route"], None, T)?;
    assert!(v4.contains("10.96.0.0/16 dev eth0"), "{v4}");
    let v6 = a.run_ok(["ip", "-6", "route"], None, T)?;
    assert!(v6.contains("fd00:96::/64 dev eth0"), "{v6}");
    Ok(())
}

#[test]
fn commands_enter_the_pod_netns_only_and_drop_privileges() -> Result<()> {
    let mesh = Mesh::new()?;
    let a = mesh.add_pod("a")?;
    let ns = netns::ns_id(&a.netns_path())?;

    // Same mount namespace as the test (no /sys remount), the pod's network one.
    let mnt = a.run_ok(["readlink", "/proc/self/ns/mnt"], None, T)?;
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt")?;
    assert_eq!(mnt.trim(), own_mnt.to_str().unwrap());
    let net = a.run_ok(["readlink", "/proc/self/ns/net"], Some(NOBODY), T)?;
    assert_eq!(net.trim(), format!("net:[{}]", ns.ino));
    // The harness's own thread-level entry lands in the same namespace.
    let thread_net = a.in_netns(|| std::fs::read_link("/proc/thread-self/ns/net"))?;
    assert_eq!(thread_net.to_str().unwrap(), net.trim());
    assert_ne!(std::fs::read_link("/proc/self/ns/net")?, thread_net);
    let cgroup2 = a.run_ok(
        ["sh", "-c", "grep -c cgroup2 /proc/self/mountinfo"],
        None,
        T,
    )?;
    assert_ne!(cgroup2.trim(), "0", "cgroup2 mount not visible in the pod");

    let ids = a.run_ok(["sh", "-c", "id -u; id -g; id -G"], Some(NOBODY), T)?;
    assert_eq!(ids, "65534\n65534\n65534\n");
    let ids = a.run_ok(["id", "-u"], None, T)?;
    assert_eq!(ids, "0\n");

    // A spawned process is the leader of its own group and session.
    let p = a.spawn(ProcSpec::new(["sleep", "300"]).uid(1337))?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))?;
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[2], p.pid().to_string(), "pgrp");
    assert_eq!(fields[3], p.pid().to_string(), "session");
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid()))?;
    assert!(
        status.contains("\nUid:\t1337\t1337\t1337\t1337\n"),
        "{status}"
    );
    p.kill_term()?;
    let st = p.wait_timeout(T).context("sleep survived SIGTERM")?;
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    Ok(())
}

#[test]
fn run_times_out_and_spawn_captures_logs() -> Result<()> {
    let mesh = Mesh::new()?;
    let a = mesh.add_pod("logger")?;

    let start = Instant::now();
    let err = a
        .run(
            ["sh", "-c", "echo started; exec sleep 30"],
            None,
            Duration::from_millis(300),
        )
        .expect_err("must time out");
    assert!(start.elapsed() < Duration::from_secs(5));
    let msg = format!("{err:#}");
    assert!(
        msg.contains("timed out") && msg.contains("started"),
        "{msg}"
    );

    let out = a.run(["sh", "-c", "echo out; echo err >&2; exit 3"], None, T)?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(a.run_ok(["false"], None, T).is_err());

    let spec = ProcSpec::new(["sh", "-c", "echo \"to stdout $WEFT_X\"; echo to stderr >&2"])
        .env("WEFT_X", "x=1")
        .name("echo");
    let p1 = a.spawn(spec.clone())?;
    let p2 = a.spawn(spec)?;
    for p in [&p1, &p2] {
        let st = p.wait_timeout(T).context("echo did not exit")?;
        assert!(st.success());
        assert!(p.logs().contains("to stdout x=1\n"), "{}", p.logs());
        assert!(p.logs().contains("to stderr\n"), "{}", p.logs());
    }
    assert_eq!(p1.log_path(), mesh.run_dir().join("logger-echo.log"));
    assert_eq!(p2.log_path(), mesh.run_dir().join("logger-echo-2.log"));
    let report = mesh.logs_report();
    assert!(
        report.contains("logger/echo (pid") && report.contains("to stderr"),
        "{report}"
    );
    Ok(())
}

#[test]
fn meshes_in_parallel_are_isolated() -> Result<()> {
    let meshes: Vec<Mesh> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(Mesh::new)).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<_>>()
    })?;
    let mut prefixes: Vec<&str> = meshes.iter().map(Mesh::prefix).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    assert_eq!(prefixes.len(), 3);

    // The same pod name and address in each mesh; each sees only its own.
    let pods: Vec<(Pod, Pod)> = meshes
        .iter()
        .map(|m| Ok((m.add_pod("a")?, m.add_pod("b")?)))
        .collect::<Result<_>>()?;
    for (i, (a, b)) in pods.iter().enumerate() {
        assert_eq!(a.ipv4().to_string(), "10.211.0.2");
        let listener = b.in_netns(|| std::net::TcpListener::bind((b.ipv4(), 9000)))?;
        let addr = SocketAddr::new(IpAddr::V4(b.ipv4()), 9000);
        let mut conn = a.tcp_connect_blocking(addr)?;
        let (mut server_side, peer) = listener.accept()?;
        assert_eq!(peer.ip(), IpAddr::V4(a.ipv4()));
        use std::io::{Read, Write};
        server_side.write_all(format!("mesh {i}").as_bytes())?;
        drop(server_side);
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        assert_eq!(got, format!("mesh {i}"));
    }
    Ok(())
}

/// What a test records about a mesh before dropping it, to check afterwards.
#[derive(Debug, Default)]
struct Footprint {
    prefix: String,
    run_dir: PathBuf,
    netns: Vec<NsId>,
    pgids: Vec<i32>,
}

/// Builds a mesh with two pods and processes that try to outlive it: a group
/// with a child, one ignoring SIGTERM, one that left its process group.
fn busy_mesh(fp: &Mutex<Footprint>) -> Result<Mesh> {
    let mesh = Mesh::new()?;
    let a = mesh.add_pod("a")?;
    let b = mesh.add_pod("b")?;
    let procs = [
        a.spawn(ProcSpec::new(["sh", "-c", "sleep 301 & exec sleep 302"]))?,
        a.spawn(
            ProcSpec::new([
                "sh",
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 1; done",
            ])
            .uid(NOBODY),
        )?,
        b.spawn(ProcSpec::new([
            "sh",
            "-c",
            "setsid sleep 303 & exec sleep 304",
        ]))?,
    ];
    wait_until(T, Duration::from_millis(20), || {
        procs[1].logs().contains("ready")
    })?;
    let mut f = fp.lock().unwrap();
    f.prefix = mesh.prefix().to_owned();
    f.run_dir = mesh.run_dir().to_owned();
    for pod in [&a, &b, mesh.node()] {
        f.netns.push(netns::ns_id(&pod.netns_path())?);
    }
    f.pgids = procs.iter().map(|p| p.pid() as i32).collect();
    // Something is inside the pods right now.
    assert!(!netns::pids_in(f.netns[0]).is_empty());
    assert!(!netns::pids_in(f.netns[1]).is_empty());
    Ok(mesh)
}

fn assert_clean(fp: &Footprint) -> Result<()> {
    let left: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&fp.prefix))
        .collect();
    ensure!(left.is_empty(), "namespaces left: {left:?}");
    for &id in &fp.netns {
        let pids = netns::pids_in(id);
        ensure!(pids.is_empty(), "processes left in a mesh netns: {pids:?}");
    }
    for &pgid in &fp.pgids {
        let pids = group_members(pgid);
        ensure!(pids.is_empty(), "processes left in group {pgid}: {pids:?}");
    }
    if std::env::var_os("WEFT_KEEP_LOGS").is_none() {
        ensure!(!fp.run_dir.exists(), "{} left", fp.run_dir.display());
    }
    Ok(())
}

#[test]
fn drop_removes_namespaces_and_processes() -> Result<()> {
    let fp = Mutex::new(Footprint::default());
    let mesh = busy_mesh(&fp)?;
    let start = Instant::now();
    drop(mesh);
    // SIGTERM, a grace period for the one that ignores it, then SIGKILL.
    assert!(start.elapsed() < Duration::from_secs(5));
    let fp = fp.into_inner().unwrap();
    assert_clean(&fp)
}

#[test]
fn drop_while_panicking_removes_namespaces_and_processes() -> Result<()> {
    let fp = Mutex::new(Footprint::default());
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _mesh = busy_mesh(&fp).expect("mesh");
        panic!("deliberate panic with a live mesh (its logs follow)");
    }));
    assert!(res.is_err());
    let fp = fp.lock().unwrap_or_else(|p| p.into_inner());
    assert!(!fp.prefix.is_empty());
    assert_clean(&fp)
}
