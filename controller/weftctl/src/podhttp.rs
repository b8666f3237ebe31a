//! Plain HTTP GETs to endpoints that only exist inside a pod's network namespace
//! (a proxy's admin port on the pod's loopback, the controller in the node).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on `addr` from inside the namespace `netns`: status and body.
pub fn get(netns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_as(netns, addr, path, None)
}

/// [`get`] with `Authorization: Bearer token` when a token is given.
pub fn get_as(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let ns_path = weft_localmesh::netns::path(netns);
    let stream = weft_localmesh::netns::run_in(&ns_path, || -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(s)
    })?
    .with_context(|| format!("connect to {addr} in {netns}"))?;
    let auth = token.map(weft_localmesh::credentials::bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    weft_localmesh::http::request_with(stream, "GET", &addr.to_string(), path, &headers, None)
        .with_context(|| format!("GET http://{addr}{path} in {netns}"))
}

/// Like [`get_as`], parsing a 200 answer as JSON.
pub fn get_json(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value> {
    let (status, body) = get_as(netns, addr, path, token)?;
    if status != 200 {
        bail!("GET http://{addr}{path} in {netns} answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{path} did not answer JSON"))
}
