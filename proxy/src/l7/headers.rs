//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so the proxy
//! drops them between its two connections — `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding` (hyper frames each side
//! itself), `Upgrade` unless an upgrade is being passed through, and `TE` except
//! `TE: trailers` (which gRPC needs, and which is the only `TE` HTTP/2 allows).
//!
//! `Host` is never hop-by-hop, even when `Connection` names it.
//!
//! The common case allocates nothing: only a `Connection` header naming
//! non-standard headers makes a (small) list of names to remove.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE,
};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` is kept and `Connection`
/// becomes `upgrade`, so an HTTP/1 upgrade (WebSocket) reaches the other side.
pub fn strip(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named = connection_named(headers);
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if let Some(te) = headers.get(TE) {
        let trailers = tokens(te).any(|t| t.eq_ignore_ascii_case("trailers"));
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether an HTTP/1 request asks to upgrade the connection (`Connection: upgrade`
/// with an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, alone or
/// with a `+codec` or parameters; not gRPC-Web, whose errors travel differently).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// Headers named by `Connection` beyond the ones [`strip`] removes anyway.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in tokens(value) {
            // `host` too: Host is end to end whatever Connection says, and an
            // HTTP/1.1 request without it must be refused (RFC 9112, section 3.2).
            let standard = ["close", "keep-alive", "upgrade", "te", "host"]
                .iter()
                .any(|s| token.eq_ignore_ascii_case(s));
            if !standard {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    out.push(name);
                }
            }
        }
    }
    out
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_end_to_end_ones_stay() {
        let mut h = map(&[
            ("host", "backend"),
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("upgrade", "websocket"),
            ("content-length", "5"),
            ("trailer", "grpc-status"),
        ]);
        strip(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host", "te", "trailer"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=y",
        ] {
            assert!(is_grpc(&map(&[("content-type", ct)])), "{ct}");
        }
        for ct in ["application/grpc-web", "application/json", "text/plain"] {
            assert!(!is_grpc(&map(&[("content-type", ct)])), "{ct}");
        }
        assert!(!is_grpc(&map(&[])));
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "x"),
        ]);
        assert!(wants_upgrade(&h));
        strip(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "x");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn connection_naming_host_does_not_remove_it() {
        // Found by the http1_head fuzz property (fuzz/regressions/http1_head/).
        let mut h = map(&[
            ("host", "backend"),
            ("connection", "close, Host, x-a"),
            ("x-a", "1"),
        ]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["host"], "backend");
    }

    #[test]
    fn te_without_trailers_is_removed() {
        let mut h = map(&[("te", "gzip")]);
        strip(&mut h, false);
        assert!(h.is_empty());
    }
}
