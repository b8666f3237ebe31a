//! Protocol detection on a byte prefix: is what the client sent first an HTTP/1.x
//! request line, the HTTP/2 prior-knowledge preface, or something else?
//!
//! Pure functions over bytes; the waiting (and the server-speaks-first race) is in
//! [`super::sniff`]. The rules are strict on purpose, so that text protocols that
//! merely start with a word are not taken for HTTP: an HTTP/1 verdict needs a whole
//! request line, `token SP target SP "HTTP/1." digit (CRLF | LF)`. A Redis inline
//! `GET key\r\n` or a memcached `get key\r\n` is therefore opaque, and a TLS
//! ClientHello (first byte 0x16) is opaque at its first byte.

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes detection looks at before deciding on what it has.
pub const MAX_SNIFF: usize = 16 * 1024;

/// Longest method token accepted (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 32;

/// What a prefix of the client's bytes says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A complete HTTP/1.x request line.
    Http1,
    /// The HTTP/2 preface.
    H2,
    /// Not HTTP: relay the bytes as they are.
    Opaque,
    /// Consistent with HTTP so far; more bytes are needed.
    NeedMore,
}

/// Classifies the first bytes a client sent.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Verdict::H2;
    }
    if H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    request_line(buf)
}

/// The verdict once [`MAX_SNIFF`] bytes have arrived without a decision: a request
/// whose method and the start of its target look right is HTTP (hyper then answers
/// an over-long line with 414 or 400, and L7 policy is not bypassed by a long URL);
/// anything else is opaque.
pub fn classify_at_limit(buf: &[u8]) -> Verdict {
    match classify(buf) {
        Verdict::NeedMore if method_len(buf).is_some() => Verdict::Http1,
        Verdict::NeedMore => Verdict::Opaque,
        v => v,
    }
}

/// What detection decides on `buf`, every byte the client has sent so far (at most
/// [`MAX_SNIFF`]): `None` while more bytes are needed. Monotone in the prefix, so
/// the verdict does not depend on how the bytes were split into reads.
pub fn decide(buf: &[u8]) -> Option<Verdict> {
    match classify(buf) {
        Verdict::NeedMore if buf.len() >= MAX_SNIFF => Some(classify_at_limit(buf)),
        Verdict::NeedMore => None,
        v => Some(v),
    }
}

/// Length of a complete method token followed by a space, if `buf` starts with one.
fn method_len(buf: &[u8]) -> Option<usize> {
    let n = buf.iter().take_while(|b| is_tchar(**b)).count();
    (n > 0 && n <= MAX_METHOD && buf.get(n) == Some(&b' ')).then_some(n)
}

fn request_line(buf: &[u8]) -> Verdict {
    // method
    let m = buf.iter().take_while(|b| is_tchar(**b)).count();
    if m > MAX_METHOD || (m == 0) {
        return Verdict::Opaque;
    }
    let Some(&sep) = buf.get(m) else {
        return Verdict::NeedMore;
    };
    if sep != b' ' {
        return Verdict::Opaque;
    }
    // request-target: visible ASCII (and obs-text, which real clients send), no spaces
    let rest = &buf[m + 1..];
    let t = rest.iter().take_while(|b| is_target_byte(**b)).count();
    let Some(&sep) = rest.get(t) else {
        return Verdict::NeedMore;
    };
    if t == 0 || sep != b' ' {
        return Verdict::Opaque;
    }
    // HTTP-version and line end
    let version = &rest[t + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return Verdict::Opaque;
    }
    if version.len() <= V.len() {
        return Verdict::NeedMore;
    }
    if !version[V.len()].is_ascii_digit() {
        return Verdict::Opaque;
    }
    match &version[V.len() + 1..] {
        [] | [b'\r'] => Verdict::NeedMore,
        [b'\n', ..] | [b'\r', b'\n', ..] => Verdict::Http1,
        _ => Verdict::Opaque,
    }
}

/// RFC 9110 `tchar`: the characters of a method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_prefix(full: &[u8]) -> Vec<Verdict> {
        (1..full.len()).map(|n| classify(&full[..n])).collect()
    }

    #[test]
    fn request_lines_are_http1_once_complete() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api/v1/things?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"DELETE http://example.com/x HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PATCH /p HTTP/1.1\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"PROPFIND /dav HTTP/1.1\r\n",
            b"PRI /not-the-preface HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(line),
                Verdict::Http1,
                "{:?}",
                String::from_utf8_lossy(line)
            );
            let end = line.iter().position(|b| *b == b'\n').expect("line end");
            for (n, v) in every_prefix(&line[..=end]).into_iter().enumerate() {
                assert_eq!(v, Verdict::NeedMore, "prefix of {n} bytes of {line:?}");
            }
        }
    }

    #[test]
    fn the_h2_preface_is_h2_and_its_prefixes_wait() {
        assert_eq!(classify(H2_PREFACE), Verdict::H2);
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 18, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_frames), Verdict::H2);
        assert!(every_prefix(H2_PREFACE)
            .into_iter()
            .all(|v| v == Verdict::NeedMore));
        // A prefix shared with PUT/POST/PATCH still waits for more.
        assert_eq!(classify(b"P"), Verdict::NeedMore);
        assert_eq!(classify(b"PU"), Verdict::NeedMore);
    }

    #[test]
    fn other_protocols_are_opaque() {
        let client_hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for bytes in [
            &client_hello[..],
            &client_hello[..1],
            b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", // Redis RESP
            b"GET key\r\n",                      // Redis inline
            b"get key\r\n",                      // memcached
            b"PING\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"EHLO example.com\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET /\r\n",                        // HTTP/0.9
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
            b" GET / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
        ] {
            assert_eq!(classify(bytes), Verdict::Opaque, "{bytes:?}");
        }
    }

    #[test]
    fn long_lines_are_decided_at_the_limit() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_SNIFF, b'a');
        assert_eq!(classify(&long), Verdict::NeedMore);
        assert_eq!(classify_at_limit(&long), Verdict::Http1);
        let words = vec![b'a'; MAX_METHOD + 1];
        assert_eq!(classify(&words), Verdict::Opaque);
        assert_eq!(classify_at_limit(b"hello"), Verdict::Opaque);
    }
}
