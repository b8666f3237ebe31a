//! One bounded `GET` to a proxy's HTTP endpoint (`/metrics`, `/ready`,
//! `/connections`): a deadline over connect, request and body together, and a cap
//! on the body, so a slow or chatty proxy costs the gatherer at most that.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The largest body read from a proxy (a `/metrics` page of a busy proxy is a few
/// hundred KiB; `/connections` holds at most its live ones and the last 100 closed).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// `GET http://addr/path` within `deadline`: the status and the body as text.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<(u16, String), String> {
    match tokio::time::timeout(deadline, get_inner(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(deadline)
        )),
    }
}

async fn get_inner(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Drives the connection; ends with it (the request is the only one on it).
    let driver = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn reads_an_answer_and_gives_up_on_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: answers; second: says nothing.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready")
                .await
                .unwrap();
            let (_silent, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (status, body) = get(addr, "/ready", Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, body.as_str()), (503, "not ready"));
        let err = get(addr, "/ready", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("no answer within"), "{err}");
    }
}
