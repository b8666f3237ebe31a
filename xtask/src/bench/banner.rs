//! The server-speaks-first row (issue 14, goal 6): how long a banner (SMTP- or
//! MySQL-style: the server writes first, the client waits for it) takes to reach the
//! client through each setup. On weft the port is `auto`, so each sidecar runs
//! protocol detection on a connection whose client stays silent; what that costs is
//! the gap to `direct`.
//!
//! Both ends are this binary, as hidden `bench` subcommands started in the pods:
//!
//! - `bench --serve-banner PORT SECONDS` (server pod, with the app): on every
//!   accepted connection writes [`BANNER`] at once, then echoes what it reads until
//!   the peer closes; a thread per connection, so a connection whose far side
//!   lingers (a proxy closing its upstream late) never delays the next accept. It
//!   exits by itself after SECONDS, and is killed with the pods before that.
//! - `bench --time-banner ADDR COUNT SECONDS OUT` (client pod): COUNT sequential
//!   connections (fewer if SECONDS run out), each timed from just before connect() to
//!   the first banner byte read; the whole banner is read and compared, then the
//!   connection is closed. Writes a [`BannerResult`] as JSON to OUT.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::setups::{Bench, Side};
use super::Deadline;

/// What the server says first: an SMTP-style greeting line.
pub const BANNER: &[u8] = b"220 weft-bench ready\r\n";

/// How long one connection may take to connect or to deliver its banner.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server waits on a connection where nothing arrives (the client
/// closes right after the banner; this only bounds a peer that vanished).
const SERVER_IDLE: Duration = Duration::from_secs(60);

/// What one `--time-banner` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BannerResult {
    /// Connections that delivered a banner (timed).
    pub connections: u64,
    /// Of those, how many delivered exactly [`BANNER`].
    pub intact: u64,
    /// Connections that failed (refused, reset, timed out, closed before a byte).
    pub errors: u64,
    /// The first few errors.
    pub error_text: String,
    /// Time to the first banner byte, over the timed connections.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Runs the timing client in the client pod against `target` and reads its result.
pub fn run(
    bench: &Bench,
    target: SocketAddr,
    count: u32,
    deadline: &Deadline,
) -> Result<BannerResult> {
    let exe = std::env::current_exe().context("this executable's path")?;
    let out = bench
        .run_dir()
        .join(format!("banner-{}.json", super::load::unique()));
    // Each connection is bounded by IO_TIMEOUT twice (connect, banner); the client
    // stops by itself after SECONDS in any case.
    let secs: u64 = 60;
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "bench".into(),
        "--time-banner".into(),
        target.to_string(),
        count.to_string(),
        secs.to_string(),
        out.display().to_string(),
    ];
    let proc = bench.pod_spawn(Side::Client, "banner-client", &argv)?;
    let limit = Duration::from_secs(secs) + IO_TIMEOUT * 2 + Duration::from_secs(10);
    super::load::wait_exit(&proc, limit, deadline, "the banner client")?;
    let text = std::fs::read_to_string(&out).with_context(|| {
        format!(
            "the banner client wrote no {}; its log:\n{}",
            out.display(),
            proc.logs()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("the banner client's {}", out.display()))
}

/// Starts the banner server in the server pod (on the server CPU, with the app).
pub fn start_server(bench: &Bench, lifetime: Duration) -> Result<()> {
    let exe = std::env::current_exe().context("this executable's path")?;
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "bench".into(),
        "--serve-banner".into(),
        super::configs::APP_BANNER.to_string(),
        lifetime.as_secs().max(1).to_string(),
    ];
    bench.pod_spawn(Side::Server, "banner-server", &argv)?;
    Ok(())
}

/// `bench --serve-banner PORT SECONDS`.
pub fn serve_main(args: &[String]) -> Result<()> {
    let [port, secs] = args else {
        bail!("--serve-banner PORT SECONDS");
    };
    let port: u16 = port.parse().context("PORT")?;
    let secs: u64 = secs.parse().context("SECONDS")?;
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind :{port}"))?;
    // The accept loop blocks; a timer thread ends the process instead.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("serve-banner: {secs} s are up; exiting");
        std::process::exit(0);
    });
    serve(&listener)
}

/// Accepts forever, a banner and an echo thread per connection.
fn serve(listener: &TcpListener) -> Result<()> {
    loop {
        let (conn, _) = match listener.accept() {
            Ok(c) => c,
            // Aborted handshakes and the like concern one connection, not the server.
            Err(e) => {
                eprintln!("serve-banner: accept: {e}");
                continue;
            }
        };
        std::thread::spawn(move || {
            if let Err(e) = greet_and_echo(conn) {
                eprintln!("serve-banner: a connection: {e}");
            }
        });
    }
}

fn greet_and_echo(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    conn.write_all(BANNER)?;
    conn.set_read_timeout(Some(SERVER_IDLE))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

/// `bench --time-banner ADDR COUNT SECONDS OUT`.
pub fn time_main(args: &[String]) -> Result<()> {
    let [addr, count, secs, out] = args else {
        bail!("--time-banner ADDR COUNT SECONDS OUT");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let count: u32 = count.parse().context("COUNT")?;
    let secs: u64 = secs.parse().context("SECONDS")?;
    let result = time_connections(addr, count, Duration::from_secs(secs));
    std::fs::write(out, serde_json::to_string(&result)? + "\n")
        .with_context(|| format!("write {out}"))?;
    Ok(())
}

/// `count` sequential connections to `addr` (stopping early after `budget`), each
/// timed to its first banner byte.
fn time_connections(addr: SocketAddr, count: u32, budget: Duration) -> BannerResult {
    let started = Instant::now();
    let mut times_ms = Vec::with_capacity(count as usize);
    let (mut intact, mut errors) = (0u64, 0u64);
    let mut error_text = Vec::new();
    for _ in 0..count {
        if started.elapsed() > budget {
            break;
        }
        match time_one(addr) {
            Ok((ms, banner)) => {
                times_ms.push(ms);
                if banner == BANNER {
                    intact += 1;
                } else if error_text.len() < 3 {
                    error_text.push(format!(
                        "banner arrived as {:?}",
                        String::from_utf8_lossy(&banner)
                    ));
                }
            }
            Err(e) => {
                errors += 1;
                if error_text.len() < 3 {
                    error_text.push(format!("{e:#}"));
                }
            }
        }
    }
    times_ms.sort_by(f64::total_cmp);
    BannerResult {
        connections: times_ms.len() as u64,
        intact,
        errors,
        error_text: error_text.join("; "),
        p50_ms: percentile(&times_ms, 0.50),
        p99_ms: percentile(&times_ms, 0.99),
    }
}

/// One connection: the time from before connect() to the first byte, and the banner
/// as read (up to [`BANNER`]'s length, or what came before the server closed).
fn time_one(addr: SocketAddr) -> Result<(f64, Vec<u8>)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut banner = Vec::with_capacity(BANNER.len());
    let mut chunk = [0u8; 256];
    let n = s.read(&mut chunk).context("waiting for the banner")?;
    let first = t0.elapsed();
    if n == 0 {
        bail!("closed before the banner");
    }
    banner.extend_from_slice(&chunk[..n]);
    while banner.len() < BANNER.len() {
        let n = s
            .read(&mut chunk)
            .context("reading the rest of the banner")?;
        if n == 0 {
            break;
        }
        banner.extend_from_slice(&chunk[..n]);
    }
    Ok((first.as_secs_f64() * 1000.0, banner))
}

/// The nearest-rank percentile `p` (0..=1) of ascending `sorted`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), Some(100.0));
        assert_eq!(percentile(&v, 0.99), Some(198.0));
        assert_eq!(percentile(&v, 1.0), Some(200.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    /// The server and the timing client against each other on loopback: every
    /// connection times a banner, and every banner arrives whole.
    #[test]
    fn client_times_the_servers_banners() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || serve(&listener));
        let r = time_connections(addr, 20, Duration::from_secs(30));
        assert_eq!((r.connections, r.intact, r.errors), (20, 20, 0), "{r:?}");
        let (p50, p99) = (r.p50_ms.unwrap_or(-1.0), r.p99_ms.unwrap_or(-1.0));
        assert!(0.0 < p50 && p50 <= p99, "{r:?}");
    }

    #[test]
    fn a_wrong_banner_is_not_intact_and_a_refusal_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let mut c = conn.expect("accept");
                let _ = c.write_all(b"554 no\r\n");
            }
        });
        let r = time_connections(addr, 2, Duration::from_secs(30));
        assert_eq!((r.connections, r.intact, r.errors), (2, 0, 0), "{r:?}");
        assert!(r.error_text.contains("554 no"), "{r:?}");

        // A port nothing listens on: bound, then closed again.
        let gone = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let r = time_connections(gone, 3, Duration::from_secs(30));
        assert_eq!((r.connections, r.errors, r.p50_ms), (0, 3, None), "{r:?}");
    }
}
