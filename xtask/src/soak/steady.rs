//! `cargo xtask soak --minutes M`: a steady load through a small mesh, watching the
//! proxies' memory and descriptors.
//!
//! The mesh: weft-controller in the node namespace, three `backend` replicas
//! (python's http.server behind a sidecar each) and a `client` pod whose sidecar
//! balances over them; oha in the client pod sends `--rate` requests a second
//! (open loop, 4 keep-alive connections) to `http://backend/` for M minutes. Every
//! [`SAMPLE_EVERY`] the four proxies' RSS (and its anonymous part: the rest is the
//! binary's and libraries' pages, shared by every copy) and open fds are read from
//! /proc; the report gives, per proxy, the values at the first minute and at the
//! end and the least-squares slope after the first minute (warm-up: pools, tables,
//! allocator arenas fill), plus what the client saw: sent / succeeded / failed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use weft_localmesh::cgroup::PodCgroup;
use weft_localmesh::controller::Controller;
use weft_localmesh::sidecar::Sidecar;
use weft_localmesh::{Mesh, Pod, ProcSpec};

use super::tally;

const BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const APP_PORT: u16 = 8080;
const REPLICAS: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples before this are warm-up, left out of the slopes.
const WARM_UP: Duration = Duration::from_secs(60);
/// oha's keep-alive connections.
const CONNECTIONS: u32 = 4;

/// One proxy's samples.
#[derive(Debug)]
struct Series {
    name: String,
    pid: u32,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the load began.
    t: f64,
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
}

/// Runs the steady load for `minutes` at `rate` requests a second in `mode`
/// (`iptables` or `ebpf`); fails if a request failed or a proxy died.
pub fn run(minutes: f64, rate: u32, mode: &str, oha: &Path) -> Result<()> {
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let mesh = Mesh::new()?;
    println!(
        "soak: {minutes} min at {rate} req/s, {mode} mode, mesh {}",
        mesh.prefix()
    );
    let backends: Vec<Pod> = (0..REPLICAS)
        .map(|i| mesh.add_pod(&format!("backend-{i}")))
        .collect::<Result<_>>()?;
    let client = mesh.add_pod("client")?;
    // The VIPs exist only inside the mesh: routed out of the pod's interface, to
    // be captured before they leave.
    client.add_route("10.96.0.0/16")?;
    let file = mesh.run_dir().join("mesh.yaml");
    let endpoints: Vec<String> = backends.iter().map(|p| p.ipv4().to_string()).collect();
    std::fs::write(
        &file,
        format!(
            "# cargo xtask soak --minutes\nservices:\n  backend:\n    vip: {BACKEND_VIP}\n    \
             ports: [{{ port: 80, target_port: {APP_PORT}, protocol: auto }}]\n    \
             endpoints: [{}]\n  client:\n    vip: {CLIENT_VIP}\n    \
             ports: [{{ port: 9, protocol: tcp }}]\n    endpoints: [{}]\n",
            endpoints.join(", "),
            client.ipv4()
        ),
    )?;
    let controller = Controller::start(&mesh, &file, &[])?;
    let ebpf = mode == "ebpf";
    let mut cgroups = Vec::new();
    let mut series = Vec::new();
    for pod in backends.iter().chain([&client]) {
        let service = if pod.name() == "client" {
            "client"
        } else {
            "backend"
        };
        let cgroup = if ebpf {
            cgroups.push(PodCgroup::create(&mesh, pod)?);
            cgroups.last().map(|c| c.path().to_path_buf())
        } else {
            None
        };
        let args = ["--controller", controller.url()];
        let sidecar = match &cgroup {
            Some(cg) => Sidecar::start_ebpf_with(pod, cg, &[], service, &args)?,
            None => Sidecar::start_with(pod, &[], service, &args)?,
        };
        series.push(Series {
            name: pod.name().to_owned(),
            pid: sidecar.proxy().pid(),
            samples: Vec::new(),
        });
        if service == "backend" {
            start_app(&mesh, pod, cgroup.as_deref())?;
        }
    }

    let out = mesh.run_dir().join("oha.json");
    let url = format!("http://{BACKEND_VIP}/");
    let secs = duration.as_secs().max(1).to_string() + "s";
    let argv = [
        oha.display().to_string(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-o".into(),
        out.display().to_string(),
        "--worker-threads".into(),
        "1".into(),
        "-c".into(),
        CONNECTIONS.to_string(),
        "-q".into(),
        rate.to_string(),
        "-z".into(),
        secs,
        "-w".into(),
        "--latency-correction".into(),
        url,
    ];
    let mut spec = ProcSpec::new(argv).name("oha");
    if let Some(cg) = cgroups.last() {
        spec = spec.cgroup(cg.path());
    }
    let began = Instant::now();
    let load = client.spawn(spec)?;
    let limit = duration + Duration::from_secs(60);
    let mut next = began;
    let status = loop {
        if let Some(status) = load.try_wait() {
            break status;
        }
        if began.elapsed() > limit {
            let _ = load.kill();
            bail!("oha ran past {limit:?}; killed:\n{}", load.logs());
        }
        if Instant::now() >= next {
            let t = began.elapsed().as_secs_f64();
            for s in &mut series {
                let rss_kib = tally::rss_kib(s.pid)
                    .with_context(|| format!("the {} proxy is gone", s.name))?;
                s.samples.push(Sample {
                    t,
                    rss_kib,
                    anon_kib: tally::rss_anon_kib(s.pid)?,
                    fds: tally::fds(s.pid)?,
                });
            }
            next += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        bail!("oha failed ({status}):\n{}", load.logs());
    }
    let text = std::fs::read_to_string(&out).context("oha's report")?;
    let result = crate::bench::parse_oha(&text)?;
    let ok = result.responses - result.non_200;
    let failed = result.non_200 + result.errors;
    println!(
        "\nclient: sent {} / succeeded {ok} / failed {failed} ({:.0} req/s, p50 {:.3} ms, p99 {:.3} ms)\n",
        result.responses + result.errors,
        result.rps,
        result.p50_ms,
        result.p99_ms
    );
    print!("{}", report(&series));
    for cg in cgroups {
        cg.close()?;
    }
    drop(mesh);
    if failed > 0 {
        bail!(
            "{failed} requests failed: {}",
            result
                .error_text
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// python's http.server in `pod` (inside `cgroup` in eBPF mode), waited for.
fn start_app(mesh: &Mesh, pod: &Pod, cgroup: Option<&Path>) -> Result<()> {
    let www = mesh.run_dir().join(format!("www-{}", pod.name()));
    std::fs::create_dir_all(&www)?;
    std::fs::write(
        www.join("index.html"),
        format!("hello from {}\n", pod.name()),
    )?;
    let python = weft_localmesh::bins::python3();
    let mut spec = ProcSpec::new([
        python.to_string_lossy().as_ref(),
        "-m",
        "http.server",
        &APP_PORT.to_string(),
    ])
    .cwd(&www)
    .name("app");
    if let Some(cg) = cgroup {
        spec = spec.cgroup(cg);
    }
    pod.spawn(spec)?;
    pod.wait_listening(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), APP_PORT),
        Duration::from_secs(10),
    )
}

/// One row per proxy: RSS (all, and its anonymous part) and fds at the end of the
/// warm-up and at the end, and their slopes per minute after it.
fn report(series: &[Series]) -> String {
    let mut s = String::from(
        "| proxy | RSS KiB at 1 min → end | slope KiB/min | anon RSS KiB at 1 min → end | slope KiB/min | fds at 1 min → end | slope /min |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for p in series {
        let settled: Vec<Sample> = p
            .samples
            .iter()
            .filter(|x| x.t >= WARM_UP.as_secs_f64())
            .copied()
            .collect();
        let (Some(first), Some(last)) = (settled.first(), settled.last()) else {
            s.push_str(&format!(
                "| {} | (run shorter than the warm-up) |\n",
                p.name
            ));
            continue;
        };
        let minutes: Vec<f64> = settled.iter().map(|x| x.t / 60.0).collect();
        let per_minute = |f: fn(&Sample) -> u64| {
            let ys: Vec<f64> = settled.iter().map(|x| f(x) as f64).collect();
            slope(&minutes, &ys)
        };
        s.push_str(&format!(
            "| {} | {} → {} | {:+.1} | {} → {} | {:+.1} | {} → {} | {:+.2} |\n",
            p.name,
            first.rss_kib,
            last.rss_kib,
            per_minute(|x| x.rss_kib),
            first.anon_kib,
            last.anon_kib,
            per_minute(|x| x.anon_kib),
            first.fds,
            last.fds,
            per_minute(|x| x.fds),
        ));
    }
    s
}

/// Least-squares slope of `y` over `x` (0 with fewer than two points).
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let var: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        assert!((slope(&[0.0, 1.0, 2.0], &[5.0, 7.0, 9.0]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_eq!(slope(&[1.0], &[4.0]), 0.0);
    }
}
