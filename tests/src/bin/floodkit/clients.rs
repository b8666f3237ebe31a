//! floodkit's clients: the well-behaved one and the floods (see `main.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

/// How long a request of the well-behaved client has, from when it was due.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a flood connection's connect may take (a full accept queue makes the
/// kernel drop SYNs, which the client sends again after 1, 3, 7 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connects in flight at once while a flood opens.
const OPENING: usize = 256;
/// The most header bytes a slowloris connection trickles before giving up on
/// being cut (then counted `unfinished`): 30 s at one a second.
const SLOW_BYTES: u32 = 30;

type Sender = SendRequest<Empty<Bytes>>;

fn authority_of(uri: &Uri) -> Result<String, String> {
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|e| format!("{addr}: {e}"))
}

/// `floodkit load`: open loop over a pool of keep-alive connections.
pub async fn load(url: &str, rate: f64, seconds: Duration) -> Result<Value, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = Arc::new(authority_of(&uri)?);
    let pool: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let total = (rate * seconds.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut running = JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        sleep_until(due).await;
        let (pool, authority, uri) = (pool.clone(), authority.clone(), uri.clone());
        running.spawn(async move {
            let done = timeout(REQUEST_TIMEOUT, get(&pool, &authority, uri))
                .await
                .unwrap_or_else(|_| Err("timeout".to_owned()));
            (done, due.elapsed())
        });
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = running.join_next().await {
        match joined.map_err(|e| format!("a request task failed: {e}"))? {
            (Ok(()), took) => latencies.push(took.as_secs_f64() * 1000.0),
            (Err(e), _) => errors.push(e),
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    errors.truncate(5);
    Ok(json!({
        "sent": total,
        "ok": latencies.len(),
        "failed": total - latencies.len() as u64,
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }))
}

/// One GET on a pooled connection (made when none is free); its body read whole.
async fn get(pool: &Mutex<Vec<Sender>>, authority: &str, uri: Uri) -> Result<(), String> {
    let pooled = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut sender = match pooled.filter(|s| !s.is_closed()) {
        Some(s) => s,
        None => connect(authority).await?,
    };
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
    Ok(())
}

async fn connect(authority: &str) -> Result<Sender, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Opens `count` connections to `addr`, [`OPENING`] at a time: the ones made and
/// how many failed.
async fn open_many(addr: SocketAddr, count: usize) -> (Vec<TcpStream>, usize) {
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    let mut left = count;
    while left > 0 {
        let batch = left.min(OPENING);
        left -= batch;
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)));
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Ok(s))) => open.push(s),
                _ => failed += 1,
            }
        }
    }
    (open, failed)
}

/// `floodkit silent`.
pub async fn silent(addr: &str, count: usize, hold: Duration) -> Result<(), String> {
    let until = Instant::now() + hold;
    let (open, failed) = open_many(parse_addr(addr)?, count).await;
    println!("open={} failed={failed}", open.len());
    sleep_until(until).await;
    drop(open);
    println!("closed");
    Ok(())
}

/// How one slowloris connection ended.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    answered_408: AtomicU64,
    other_answers: AtomicU64,
    reset: AtomicU64,
    eof: AtomicU64,
    connect_errors: AtomicU64,
    unfinished: AtomicU64,
    /// Clients whose first connection is made.
    started: AtomicU64,
}

/// `floodkit slowloris`.
pub async fn slowloris(addr: &str, clients: usize, seconds: Duration) -> Result<Value, String> {
    let addr = parse_addr(addr)?;
    let until = Instant::now() + seconds;
    let tally = Arc::new(Tally::default());
    let mut running = JoinSet::new();
    for i in 0..clients {
        let tally = tally.clone();
        // Started over the first second, as clients that are not in lock step: each
        // sends its byte a second at its own moment, and is cut at its own moment.
        let offset = Duration::from_secs_f64(i as f64 / clients as f64);
        running.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut first = true;
            while first || Instant::now() < until {
                slow_one(addr, &tally, first).await;
                first = false;
            }
        });
    }
    let all_started = Instant::now() + CONNECT_TIMEOUT;
    while tally.started.load(Relaxed) < clients as u64 && Instant::now() < all_started {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("started");
    while running.join_next().await.is_some() {}
    let n = |c: &AtomicU64| c.load(Relaxed);
    Ok(json!({
        "connections": n(&tally.connections),
        "answered_408": n(&tally.answered_408),
        "other_answers": n(&tally.other_answers),
        "reset": n(&tally.reset),
        "eof": n(&tally.eof),
        "connect_errors": n(&tally.connect_errors),
        "unfinished": n(&tally.unfinished),
    }))
}

/// One slowloris connection: a request line, then a header byte a second until
/// the server answers or closes (or [`SLOW_BYTES`] have gone).
async fn slow_one(addr: SocketAddr, tally: &Tally, first: bool) {
    let connected = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
    if first {
        tally.started.fetch_add(1, Relaxed);
    }
    let Ok(Ok(mut s)) = connected else {
        tally.connect_errors.fetch_add(1, Relaxed);
        // Not at once again: a refused connect must not become a busy loop.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    tally.connections.fetch_add(1, Relaxed);
    let counter = match trickle(&mut s).await {
        Ended::Answer(a) if a.starts_with(b"HTTP/1.1 408") => &tally.answered_408,
        Ended::Answer(_) => &tally.other_answers,
        Ended::Reset => &tally.reset,
        Ended::Eof => &tally.eof,
        Ended::Unfinished => &tally.unfinished,
    };
    counter.fetch_add(1, Relaxed);
}

enum Ended {
    Answer(Vec<u8>),
    Reset,
    Eof,
    Unfinished,
}

async fn trickle(s: &mut TcpStream) -> Ended {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
        .await
        .is_err()
    {
        return Ended::Reset;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 256];
    let mut sent = 0;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => return match r {
                Ok(0) => Ended::Eof,
                Ok(n) => Ended::Answer(buf[..n].to_vec()),
                Err(_) => Ended::Reset,
            },
            _ = tick.tick() => {
                if sent == SLOW_BYTES {
                    return Ended::Unfinished;
                }
                let byte = [b'a' + (sent % 26) as u8];
                if s.write_all(&byte).await.is_err() {
                    return Ended::Reset;
                }
                sent += 1;
            }
        }
    }
}

/// `floodkit stall`.
pub async fn stall(url: &str, seconds: Duration) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = authority_of(&uri)?;
    let mut s = TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    println!("sent");
    tokio::time::sleep(seconds).await;
    Ok(())
}

/// `floodkit over`.
pub async fn over(addr: &str, count: usize) -> Result<Value, String> {
    let addr = parse_addr(addr)?;
    let mut set = JoinSet::new();
    for _ in 0..count {
        set.spawn(async move {
            let mut s = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                // Accepted and reset before the connect was seen to complete (the
                // kernel then reports the reset as the connect's error).
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Ok(Err(e)));
                }
                _ => return Err(()),
            };
            let mut buf = [0u8; 64];
            Ok::<_, ()>(timeout(Duration::from_secs(3), s.read(&mut buf)).await)
        });
    }
    let (mut refused, mut held, mut connect_errors) = (0, 0, 0);
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| format!("a task failed: {e}"))? {
            Err(()) => connect_errors += 1,
            Ok(Ok(Ok(0))) => refused += 1,
            Ok(Ok(Err(e))) if e.kind() == io::ErrorKind::ConnectionReset => refused += 1,
            Ok(_) => held += 1,
        }
    }
    Ok(json!({ "refused": refused, "held": held, "connect_errors": connect_errors }))
}
