//! The application probe on the metrics port: `GET /app-health/<port>` answers 200
//! when the pod's application accepts a TCP connection on `<port>`, 503 when it does
//! not (or while the proxy drains); `GET /app-health/<port>/<path>` sends the
//! application `GET /<path>` and answers 200 for a 2xx or 3xx status, 503 otherwise.
//!
//! Why: a TCP check of a meshed endpoint from outside the pod reaches the sidecar,
//! which accepts whether or not the application behind it is alive. The controller
//! checks meshed endpoints through this probe instead (ARCHITECTURE.md, Controller
//! sources and health), the way Istio rewrites the kubelet's probes to its agent.
//!
//! The application is dialled where inbound traffic reaches it: at the pod's own
//! address (loopback when the pod has none), by the proxy's uid, which capture
//! excludes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::EndpointAddr;
use crate::state::Shared;
use crate::tcp::connect::{Connector, Upstream};
use weft_runtime::http::{text, Body};

/// Bound on one probe, connect and answer included (the controller's default check
/// timeout is 1 s).
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
/// The most of the application's answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;
/// After a TCP probe: how long, and how much, the application's own bytes are read
/// before the connection is dropped ([`close_gently`]).
const CLOSE_WAIT: Duration = Duration::from_millis(200);
const CLOSE_READ_LIMIT: usize = 64 * 1024;

/// Answers `/app-health/<rest>`.
pub async fn probe(shared: &Shared, rest: &str) -> http::Response<Body> {
    let (port, path) = match rest.split_once('/') {
        Some((port, path)) => (port, Some(path)),
        // A query without a path has nothing to go to: a TCP probe.
        None => (rest.split_once('?').map_or(rest, |(port, _)| port), None),
    };
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /app-health/<port>[/<path>]\n",
        );
    };
    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let checked = tokio::time::timeout(PROBE_TIMEOUT, async {
        let (app, mut upstream) = dial(&shared.connector, port, PROBE_TIMEOUT).await?;
        let Some(path) = path else {
            close_gently(upstream.stream).await;
            return Ok(format!("app port {port} accepts connections\n"));
        };
        let status = http_status(&mut upstream.stream, app, path).await;
        close_gently(upstream.stream).await;
        let status = status?;
        if (200..400).contains(&status) {
            Ok(format!("app answered {status} on /{path}\n"))
        } else {
            Err(format!("app answered {status} on /{path}"))
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "app port {port}: no answer within {PROBE_TIMEOUT:?}"
        ))
    });
    match checked {
        Ok(why) => text(StatusCode::OK, why),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Whether the pod's application accepts a connection on `port` (dialled within
/// `timeout`, then closed gently); else `app port <port>: <reason>`. `/ready` asks
/// this ([`crate::readiness`]).
pub async fn accepts(connector: &Connector, port: u16, timeout: Duration) -> Result<(), String> {
    let (_, upstream) = dial(connector, port, timeout).await?;
    close_gently(upstream.stream).await;
    Ok(())
}

/// Connects to the application's `port` where inbound traffic reaches it (the
/// socket stays registered as the proxy's own while the [`Upstream`] lives).
async fn dial(
    connector: &Connector,
    port: u16,
    timeout: Duration,
) -> Result<(EndpointAddr, Upstream), String> {
    let app = EndpointAddr(SocketAddr::new(app_address(), port));
    let upstream = connector
        .connect(app, timeout)
        .await
        .map_err(|reason| format!("app port {port}: {reason}"))?;
    Ok((app, upstream))
}

/// Ends a probe connection the way a polite client does: our FIN first, then what
/// the application sends (a banner, its own FIN) read and dropped, briefly. Closing
/// with its bytes unread would reset the connection, which an application may log
/// as an error every check.
async fn close_gently(mut stream: tokio::net::TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = CLOSE_READ_LIMIT;
    let drained = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
}

/// Sends `GET /<path>` on `stream` and reads the status code of the answer.
async fn http_status(
    stream: &mut tokio::net::TcpStream,
    app: EndpointAddr,
    path: &str,
) -> Result<u16, String> {
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("bad probe path".into());
    }
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: weft-app-health\r\nConnection: close\r\n\r\n",
        app.0
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing the probe: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&buf)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "the app's answer is not HTTP".to_string())
}

/// Where inbound traffic reaches the application: the pod's first IPv4 address (or
/// its first address), loopback when it has none.
fn app_address() -> IpAddr {
    let addrs: Vec<IpAddr> = crate::discovery::pod_addresses()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}
