//! A minimal blocking HTTP/1.1 client: one request with `Connection: close` on a
//! stream the caller made (inside a pod), for admin, metrics and test servers.
//! Bodies framed by Content-Length, chunked encoding, or the end of the stream.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

/// Largest response accepted.
const MAX_RESPONSE: usize = 16 << 20;

/// Sends `GET path` with `Host: host` on `stream` and reads the response:
/// status code and body (lossy UTF-8).
pub fn get<S: Read + Write>(stream: S, host: &str, path: &str) -> Result<(u16, String)> {
    request(stream, "GET", host, path, None)
}

/// Sends `METHOD path` with `Host: host` on `stream`, with a JSON body if given,
/// and reads the response: status code and body (lossy UTF-8).
pub fn request<S: Read + Write>(
    stream: S,
    method: &str,
    host: &str,
    path: &str,
    json_body: Option<&str>,
) -> Result<(u16, String)> {
    request_with(stream, method, host, path, &[], json_body)
}

/// [`request`] with more header fields (e.g. `Authorization`).
pub fn request_with<S: Read + Write>(
    mut stream: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    json_body: Option<&str>,
) -> Result<(u16, String)> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-localmesh\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = json_body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    stream.write_all(req.as_bytes()).context("send request")?;
    stream.flush().context("send request")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((status, body)) = parse(&buf, false)? {
            return Ok((status, String::from_utf8_lossy(&body).into_owned()));
        }
        let n = stream.read(&mut chunk).context("read response")?;
        if n == 0 {
            return match parse(&buf, true)? {
                Some((status, body)) => Ok((status, String::from_utf8_lossy(&body).into_owned())),
                None => bail!(
                    "connection closed before a complete response ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(200)])
                ),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            bail!("response larger than {MAX_RESPONSE} bytes");
        }
    }
}

/// Parses a response in `buf`: `Ok(None)` while incomplete. With `eof`, a body
/// without framing is everything after the headers.
pub fn parse(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 status line: {status_line:?}");
    }
    let status: u16 = code
        .parse()
        .with_context(|| format!("bad status code in {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if status / 100 == 1 || status == 204 || status == 304 {
        return Ok(Some((status, Vec::new())));
    }
    if chunked {
        return match dechunk(body)? {
            Some(b) => Ok(Some((status, b))),
            None if eof => bail!("connection closed inside a chunked body"),
            None => Ok(None),
        };
    }
    if let Some(len) = content_length {
        return if body.len() >= len {
            Ok(Some((status, body[..len].to_vec())))
        } else if eof {
            bail!("connection closed after {} of {len} body bytes", body.len())
        } else {
            Ok(None)
        };
    }
    Ok(eof.then(|| (status, body.to_vec())))
}

/// Decodes a complete chunked body; `Ok(None)` while incomplete.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(body, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&body[..eol]).context("chunk size is not UTF-8")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line; the body is complete.
            return Ok(Some(out));
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse(r, false).expect("parse"),
            Some((200, b"hello".to_vec()))
        );
        assert_eq!(parse(&r[..r.len() - 1], false).expect("parse"), None);
        assert!(parse(&r[..r.len() - 1], true).is_err());
    }

    #[test]
    fn chunked() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse(r, false).expect("parse"),
            Some((200, b"abcde".to_vec()))
        );
        assert_eq!(parse(&r[..60], false).expect("parse"), None);
    }

    #[test]
    fn until_eof() {
        let r = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        assert_eq!(parse(r, false).expect("parse"), None);
        assert_eq!(
            parse(r, true).expect("parse"),
            Some((404, b"nope".to_vec()))
        );
        assert!(parse(b"SSH-2.0\r\n\r\n", true).is_err());
    }

    #[test]
    fn over_a_stream() {
        struct Fake(std::io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Fake {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Fake {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut fake = Fake(
            std::io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
            Vec::new(),
        );
        assert_eq!(
            get(&mut fake, "h:1", "/x").expect("get"),
            (200, "ok".to_owned())
        );
        assert!(String::from_utf8_lossy(&fake.1).starts_with("GET /x HTTP/1.1\r\nHost: h:1\r\n"));
    }
}
