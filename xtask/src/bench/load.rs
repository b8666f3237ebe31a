//! Load generation, always from the client pod on the client CPU.
//!
//! - HTTP: oha (crates.io), installed once with `cargo install oha --locked` into
//!   `target/bench-tools`. Chosen over h2load and wrk because one tool covers both
//!   protocols and both loop kinds: HTTP/1.1 and h2c prior knowledge, closed loop
//!   (`-c`, `-z` with `-w` so every request started is finished and counted) and open
//!   loop at a fixed rate (`-q`) with coordinated-omission correction
//!   (`--latency-correction`: latency counts from when a request was due, not when
//!   it was sent), and JSON output with p50/p99/p99.9. The connection setup rate is
//!   a closed-loop HTTP/1.1 run with `--disable-keepalive`: a new connection per
//!   request. Debian has no wrk2, and
//!   h2load's `--rate` paces connections, not requests. It builds from crates.io
//!   with the Rust toolchain and Debian's libssl-dev (3-4 minutes on 2 cores, once).
//! - TCP bulk: iperf3 from Debian (`-J`), one stream. The throughput reported is
//!   the receiver's (`end.sum_received`): with sk_msg, or any proxy buffering, the
//!   sender can hand its socket far more than arrives within the test; the sender's
//!   count is kept to show the gap.
//! - Idle connections: this binary's hidden `bench --hold-idle ADDR COUNT SECONDS GO`,
//!   which opens COUNT keep-alive connections, sends one request on each, prints
//!   `open=K` and holds them; once the file GO exists (the benchmark has taken the
//!   proxies' RSS), it sends one more request on each and prints `answered=N`: an
//!   idle connection that a proxy slimmed down must still work.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use weft_localmesh::PodProc;

use super::setups::{Bench, Side};
use super::Deadline;

/// The oha release the benchmark installs (pinned, so numbers stay comparable).
const OHA_VERSION: &str = "1.16.0";
/// Closed-loop concurrency: HTTP/1.1 connections; h2c connections × streams each.
const H1_CONNS: u32 = 32;
const H2_CONNS: u32 = 4;
const H2_STREAMS: u32 = 8;
/// Open-loop: connections available to the rate limiter.
const OPEN_H1_CONNS: u32 = 16;
const OPEN_H2_CONNS: u32 = 2;

/// Where oha lives: `target/bench-tools/bin/oha`, installed on first use.
pub fn ensure_oha() -> Result<PathBuf> {
    let root = super::target_dir().join("bench-tools");
    let bin = root.join("bin").join("oha");
    let version_ok = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(OHA_VERSION))
        .unwrap_or(false);
    if version_ok {
        return Ok(bin);
    }
    eprintln!(
        "bench: installing oha {OHA_VERSION} from crates.io into {} (once; a few minutes on 2 cores)",
        root.display()
    );
    let mut cmd = crate::cargo();
    // native-tls (the system OpenSSL) rather than the default rustls with aws-lc: no
    // TLS is used here, and aws-lc's C build more than doubles the install time.
    cmd.args(["install", "oha", "--locked", "--version", OHA_VERSION])
        .args([
            "--no-default-features",
            "--features",
            "native-tls",
            "--root",
        ])
        .arg(&root)
        .arg("--target-dir")
        .arg(root.join("build"));
    crate::run(cmd)?;
    if !bin.is_file() {
        bail!("cargo install oha left no {}", bin.display());
    }
    // The build directory (~600 MB) is only needed to build again.
    let _ = std::fs::remove_dir_all(root.join("build"));
    Ok(bin)
}

/// The HTTP version of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2,
}

impl Proto {
    /// The `protocol` of results.json.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::H2 => "h2",
        }
    }
}

/// What an oha run does.
#[derive(Debug, Clone)]
pub enum HttpLoad {
    /// Closed loop for this long: as fast as the concurrency allows.
    Closed(Duration),
    /// Open loop: `count` requests at `rate` per second.
    Open { rate: u32, count: u64 },
    /// Closed loop for this long, HTTP/1.1 without keep-alive: a new connection per
    /// request (the connection setup rate).
    NewConns(Duration),
}

impl HttpLoad {
    /// The `load` of results.json: `max`, or the rate.
    pub fn name(&self) -> String {
        match self {
            HttpLoad::Closed(_) => "max".into(),
            HttpLoad::Open { rate, .. } => format!("{rate}/s"),
            HttpLoad::NewConns(_) => "conn".into(),
        }
    }

    pub fn rate(&self) -> Option<u32> {
        match self {
            HttpLoad::Closed(_) | HttpLoad::NewConns(_) => None,
            HttpLoad::Open { rate, .. } => Some(*rate),
        }
    }

    /// An upper bound on how long it may take before it is killed.
    fn limit(&self) -> Duration {
        let nominal = match self {
            HttpLoad::Closed(d) | HttpLoad::NewConns(d) => *d,
            HttpLoad::Open { rate, count } => {
                Duration::from_secs_f64(*count as f64 / f64::from((*rate).max(1)))
            }
        };
        nominal * 3 + Duration::from_secs(20)
    }
}

/// What oha reported.
#[derive(Debug, Clone)]
pub struct OhaResult {
    pub responses: u64,
    pub non_200: u64,
    pub errors: u64,
    pub error_text: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Runs oha in the client pod against `url` and parses its JSON.
pub fn run_oha(
    bench: &Bench,
    url: &str,
    proto: Proto,
    load: &HttpLoad,
    deadline: &Deadline,
) -> Result<OhaResult> {
    let out = bench.run_dir().join(format!("oha-{}.json", unique()));
    let mut argv: Vec<String> = vec![
        bench.oha().display().to_string(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-o".into(),
        out.display().to_string(),
        // One runtime thread: the generator gets one CPU, like each proxy.
        "--worker-threads".into(),
        "1".into(),
        "-t".into(),
        "10s".into(),
    ];
    let (conns, streams) = match (proto, load) {
        (Proto::Http1, HttpLoad::Closed(_) | HttpLoad::NewConns(_)) => (H1_CONNS, 1),
        (Proto::H2, HttpLoad::Closed(_)) => (H2_CONNS, H2_STREAMS),
        (Proto::Http1, HttpLoad::Open { .. }) => (OPEN_H1_CONNS, 1),
        (Proto::H2, HttpLoad::Open { .. }) => (OPEN_H2_CONNS, H2_STREAMS),
        (Proto::H2, HttpLoad::NewConns(_)) => bail!("h2c has no run without keep-alive"),
    };
    argv.extend(["-c".into(), conns.to_string()]);
    if proto == Proto::H2 {
        argv.extend(["--http2".into(), "-p".into(), streams.to_string()]);
    }
    match load {
        HttpLoad::Closed(d) => {
            // -w: requests in flight at the deadline finish and are counted, so the
            // generator's count is exactly what the app saw.
            argv.extend(["-z".into(), format!("{}ms", d.as_millis()), "-w".into()]);
        }
        HttpLoad::NewConns(d) => argv.extend([
            "-z".into(),
            format!("{}ms", d.as_millis()),
            "-w".into(),
            "--disable-keepalive".into(),
        ]),
        HttpLoad::Open { rate, count } => argv.extend([
            "-n".into(),
            count.to_string(),
            "-q".into(),
            rate.to_string(),
            "--latency-correction".into(),
        ]),
    }
    argv.push(url.to_string());
    let proc = bench.pod_spawn(Side::Client, "oha", &argv)?;
    wait_exit(&proc, load.limit(), deadline, "oha")?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("oha wrote no {}; its log:\n{}", out.display(), proc.logs()))?;
    parse_oha(&text).with_context(|| format!("oha's output {}", out.display()))
}

/// Waits for `proc` to exit successfully within `limit`, killing it on timeout or
/// Ctrl-C.
pub(super) fn wait_exit(
    proc: &PodProc,
    limit: Duration,
    deadline: &Deadline,
    what: &str,
) -> Result<()> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = proc.try_wait() {
            if !status.success() {
                bail!("{what} failed ({status}):\n{}", proc.logs());
            }
            return Ok(());
        }
        if let Err(e) = deadline.check(what) {
            let _ = proc.kill();
            return Err(e);
        }
        if Instant::now() > until {
            let _ = proc.kill();
            bail!("{what} ran past {limit:?}; killed:\n{}", proc.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A number for a unique output file name in the run directory.
pub(super) fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{:04}", N.fetch_add(1, Ordering::SeqCst))
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// oha's JSON: status-code and error distributions, requests per second, latency
/// percentiles in seconds.
pub fn parse_oha(text: &str) -> Result<OhaResult> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let mut responses = 0u64;
    let mut non_200 = 0u64;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            responses += n;
            if code != "200" {
                non_200 += n;
            }
        }
    }
    let mut errors = 0u64;
    let mut error_text = Vec::new();
    if let Some(errs) = v["errorDistribution"].as_object() {
        for (e, n) in errs {
            let n = n.as_u64().unwrap_or(0);
            errors += n;
            error_text.push(format!("{n}× {e}"));
        }
    }
    let pct = |k: &str| -> Result<f64> {
        num(&v["latencyPercentiles"][k])
            .map(|s| s * 1000.0)
            .with_context(|| format!("no latencyPercentiles.{k}"))
    };
    let (p50_ms, p99_ms, p999_ms) = if responses > 0 {
        (pct("p50")?, pct("p99")?, pct("p99.9")?)
    } else {
        (f64::NAN, f64::NAN, f64::NAN)
    };
    Ok(OhaResult {
        responses,
        non_200,
        errors,
        error_text: error_text.join(", "),
        rps: num(&v["summary"]["requestsPerSec"]).context("no summary.requestsPerSec")?,
        p50_ms,
        p99_ms,
        p999_ms,
    })
}

/// What iperf3 reported.
#[derive(Debug, Clone)]
pub struct TcpResult {
    pub bytes_received: u64,
    /// The receiver's throughput.
    pub gbit_s: f64,
    /// What the sender wrote to its socket (`end.sum_sent`).
    pub bytes_sent: u64,
}

/// One iperf3 stream of `secs` seconds from the client pod to `target`.
pub fn run_iperf3(
    bench: &Bench,
    target: SocketAddr,
    secs: u32,
    deadline: &Deadline,
) -> Result<TcpResult> {
    let out = bench.run_dir().join(format!("iperf3-{}.json", unique()));
    let argv: Vec<String> = vec![
        "iperf3".into(),
        "-c".into(),
        target.ip().to_string(),
        "-p".into(),
        target.port().to_string(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
        "--logfile".into(),
        out.display().to_string(),
    ];
    let proc = bench.pod_spawn(Side::Client, "iperf3", &argv)?;
    let limit = Duration::from_secs(u64::from(secs) * 3 + 20);
    let waited = wait_exit(&proc, limit, deadline, "iperf3");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    waited.with_context(|| format!("iperf3 output: {text}"))?;
    parse_iperf3(&text)
}

pub fn parse_iperf3(text: &str) -> Result<TcpResult> {
    let v: Value = serde_json::from_str(text).context("iperf3's output is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let recv = &v["end"]["sum_received"];
    Ok(TcpResult {
        bytes_received: recv["bytes"]
            .as_u64()
            .context("no end.sum_received.bytes")?,
        gbit_s: num(&recv["bits_per_second"]).context("no end.sum_received.bits_per_second")? / 1e9,
        bytes_sent: v["end"]["sum_sent"]["bytes"]
            .as_u64()
            .context("no end.sum_sent.bytes")?,
    })
}

/// Idle connections held by a helper process in the client pod.
#[derive(Debug)]
pub struct Held {
    proc: PodProc,
    go: PathBuf,
    pub open: u32,
}

impl Held {
    /// Sends one more request on every held connection; how many were answered.
    /// Then closes them all (the helper exits).
    pub fn request_again(self) -> Result<u32> {
        std::fs::write(&self.go, b"go").with_context(|| format!("write {}", self.go.display()))?;
        let done = self.proc.wait_timeout(Duration::from_secs(90));
        let logs = self.proc.logs();
        if done.is_none() {
            let _ = self.proc.kill();
            let _ = self.proc.wait_timeout(Duration::from_secs(5));
        }
        logs.lines()
            .find_map(|l| {
                l.strip_prefix("answered=")
                    .and_then(|n| n.trim().parse().ok())
            })
            .with_context(|| format!("the idle-connection holder never said answered=:\n{logs}"))
    }
}

/// Starts the holder in the client pod and waits until its connections are open.
pub fn hold_idle(
    bench: &Bench,
    target: SocketAddr,
    count: u32,
    deadline: &Deadline,
) -> Result<Held> {
    let exe = std::env::current_exe().context("this executable's path")?;
    let go = bench.mesh.run_dir().join("idle-go");
    let _ = std::fs::remove_file(&go);
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "bench".into(),
        "--hold-idle".into(),
        target.to_string(),
        count.to_string(),
        "120".into(),
        go.display().to_string(),
    ];
    let proc = bench.pod_spawn(Side::Client, "idle-holder", &argv)?;
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let logs = proc.logs();
        if let Some(open) = logs
            .lines()
            .find_map(|l| l.strip_prefix("open=").and_then(|n| n.trim().parse().ok()))
        {
            // Let the proxies settle (their per-connection state is made by now).
            std::thread::sleep(Duration::from_millis(500));
            return Ok(Held { proc, go, open });
        }
        if let Some(status) = proc.try_wait() {
            bail!("the idle-connection holder exited ({status}):\n{logs}");
        }
        if let Err(e) = deadline.check("the idle connections") {
            let _ = proc.kill();
            return Err(e);
        }
        if Instant::now() > until {
            let _ = proc.kill();
            bail!("the idle-connection holder did not finish opening:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `bench --hold-idle ADDR COUNT SECONDS GO`: runs inside the client pod (and its
/// cgroup). Opens COUNT connections, one `GET /` each with its response read
/// (keep-alive), prints `open=K`; holds them until the file GO exists (at most
/// SECONDS), then sends one more `GET /` on each and prints `answered=N`.
pub fn hold_idle_main(args: &[String]) -> Result<()> {
    let [addr, count, secs, go] = args else {
        bail!("--hold-idle ADDR COUNT SECONDS GO");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let count: u32 = count.parse().context("COUNT")?;
    let secs: u64 = secs.parse().context("SECONDS")?;
    raise_nofile(u64::from(count) + 256)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(count as usize);
    let mut failures = 0u32;
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-bench-idle\r\n\r\n");
    while conns.len() < count as usize && started.elapsed() < Duration::from_secs(60) {
        match one_request(addr, request.as_bytes()) {
            Ok(s) => conns.push(s),
            Err(e) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("hold-idle: connection {}: {e:#}", conns.len() + 1);
                }
                if failures > 100 {
                    break;
                }
            }
        }
    }
    println!("open={}", conns.len());
    std::io::stdout().flush().ok();
    let held = Instant::now();
    while !std::path::Path::new(go).exists() {
        if held.elapsed() > Duration::from_secs(secs) {
            bail!("no {go} after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut answered, mut failed) = (0u32, 0u32);
    for s in &mut conns {
        match request_on(s, request.as_bytes()) {
            Ok(()) => answered += 1,
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("hold-idle: a held connection, again: {e:#}");
                }
            }
        }
    }
    println!("answered={answered}");
    std::io::stdout().flush().ok();
    drop(conns);
    Ok(())
}

fn one_request(addr: SocketAddr, request: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    request_on(&mut s, request)?;
    Ok(s)
}

/// One request on `s` and its whole response (200, content-length framed).
fn request_on(s: &mut TcpStream, request: &[u8]) -> Result<()> {
    s.write_all(request)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before a full response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("answer: {}", head.lines().next().unwrap_or(""));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard).max(soft), hard)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oha_json() {
        let text = r#"{"summary":{"requestsPerSec":1000.5},
            "latencyPercentiles":{"p50":0.0001,"p99":0.002,"p99.9":0.01},
            "statusCodeDistribution":{"200":990,"502":10},
            "errorDistribution":{"connection reset":3}}"#;
        let r = parse_oha(text).expect("parses");
        assert_eq!((r.responses, r.non_200, r.errors), (1000, 10, 3));
        assert!((r.p50_ms - 0.1).abs() < 1e-9 && (r.p999_ms - 10.0).abs() < 1e-9);
        assert!((r.rps - 1000.5).abs() < 1e-9);
    }

    #[test]
    fn parses_iperf3_json() {
        let r = parse_iperf3(
            r#"{"end":{"sum_sent":{"bytes":1250},"sum_received":{"bytes":1000,"bits_per_second":2e9}}}"#,
        )
        .expect("parses");
        assert_eq!((r.bytes_received, r.bytes_sent), (1000, 1250));
        assert!((r.gbit_s - 2.0).abs() < 1e-9);
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
    }

    #[test]
    fn open_loop_is_named_by_rate() {
        let l = HttpLoad::Open {
            rate: 1000,
            count: 5,
        };
        assert_eq!((l.name(), l.rate()), ("1000/s".to_string(), Some(1000)));
        assert_eq!(HttpLoad::Closed(Duration::from_secs(1)).name(), "max");
        let c = HttpLoad::NewConns(Duration::from_secs(1));
        assert_eq!((c.name(), c.rate()), ("conn".to_string(), None));
    }
}
