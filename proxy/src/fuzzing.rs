//! The properties the fuzz targets check (`proxy/fuzz`), in one place: each
//! `fuzz_targets/*.rs` calls one function here, and so does the corpus replay
//! (`tests/fuzz_corpus.rs`) on the stable toolchain, so the two cannot drift. A
//! property that does not hold panics. Pure and in-process: no socket, no timer.
//!
//! Not an API: hidden from the docs, kept small.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use weft_api::discovery::{self as api, MeshUpdate};

use crate::addr::OrigDstAddr;
use crate::detect::classify::{self, Verdict, MAX_SNIFF};
use crate::discovery;
use crate::l7::headers;
use crate::policy::{Defaults, Policy};
use crate::routes::{Resolved, RouteTable, Routes};

/// Protocol detection over reads split as `data` says: byte 0 is how many split
/// bytes follow (mod 16), each one a read's length; the rest is what the client
/// sends. Checks: the verdict is the one the whole input gets in one read, and no
/// more than [`MAX_SNIFF`] bytes are consumed.
pub fn detect_chunks(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (splits, payload) = rest.split_at(n);
    let mut chunks = Vec::new();
    let mut at = 0;
    for s in splits {
        // 1 to 16,257 bytes: short reads and reads past the sniff limit alike.
        let len = usize::from(*s) * usize::from(*s) / 4 + 1;
        let end = (at + len).min(payload.len());
        chunks.push(&payload[at..end]);
        at = end;
    }
    chunks.push(&payload[at..]);

    let (split, consumed) = sniff_model(chunks.iter().copied());
    let (whole, _) = sniff_model(std::iter::once(payload));
    assert!(consumed <= MAX_SNIFF, "{consumed} bytes consumed");
    assert_eq!(split, whole, "the verdict depends on the split");
    if let Some(v) = split {
        assert_ne!(v, Verdict::NeedMore, "decide never returns NeedMore");
    }
}

/// What `detect::sniff` does with a client's reads: each read takes at most the
/// room left under [`MAX_SNIFF`], and detection decides after each one. Returns the
/// verdict (`None`: undecided when the client stopped, which sniff takes as
/// opaque) and the bytes consumed.
fn sniff_model<'a>(reads: impl Iterator<Item = &'a [u8]>) -> (Option<Verdict>, usize) {
    let mut buf = Vec::new();
    for read in reads {
        let mut read = read;
        while !read.is_empty() {
            let take = read.len().min(MAX_SNIFF - buf.len());
            buf.extend_from_slice(&read[..take]);
            read = &read[take..];
            if let Some(v) = classify::decide(&buf) {
                return (Some(v), buf.len());
            }
        }
    }
    (None, buf.len())
}

/// Hop-by-hop headers the proxy always removes.
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "connection",
];

/// The request head handling the proxy does itself, on a head made of `data`'s
/// lines (`name: value`, as hyper would hand them over; lines that are no valid
/// header are skipped): hop-by-hop stripping as `l7::forward` applies it, for an
/// HTTP/1 request (upgrade as asked) and for an HTTP/2 one (no upgrade). Checks: no
/// hop-by-hop header survives, nor one the `Connection` header named; `TE` is at
/// most `trailers`; an upgrade keeps `Upgrade` with `Connection: upgrade`; every
/// other header, `Host` included, is passed on unchanged and in order.
pub fn http1_head(data: &[u8]) {
    let mut original = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        original.append(name, value);
    }
    let _ = headers::is_grpc(&original);
    let asks_upgrade = headers::wants_upgrade(&original);
    for upgrade in [asks_upgrade, false] {
        let mut stripped = original.clone();
        headers::strip(&mut stripped, upgrade);
        check_stripped(&original, &stripped, upgrade);
    }
}

fn check_stripped(original: &HeaderMap, stripped: &HeaderMap, upgrade: bool) {
    // Lower-cased tokens of every Connection header, as a proxy reads them.
    let named: BTreeSet<String> = original
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP {
        if name == "connection" && upgrade {
            let values: Vec<_> = stripped.get_all(name).iter().collect();
            assert_eq!(values, ["upgrade"], "Connection of an upgrade");
        } else {
            assert!(!stripped.contains_key(name), "{name} survived");
        }
    }
    let te: Vec<_> = stripped.get_all(http::header::TE).iter().collect();
    assert!(te.is_empty() || te == ["trailers"], "TE {te:?}");
    if upgrade {
        assert_eq!(
            stripped
                .get_all(http::header::UPGRADE)
                .iter()
                .collect::<Vec<_>>(),
            original
                .get_all(http::header::UPGRADE)
                .iter()
                .collect::<Vec<_>>(),
            "an upgrade's Upgrade"
        );
    } else {
        assert!(
            !stripped.contains_key(http::header::UPGRADE),
            "Upgrade survived"
        );
    }
    // Host is never hop-by-hop, whatever Connection names: without it an HTTP/1.1
    // upstream must refuse the request (RFC 9112, section 3.2).
    assert_eq!(
        stripped
            .get_all(http::header::HOST)
            .iter()
            .collect::<Vec<_>>(),
        original
            .get_all(http::header::HOST)
            .iter()
            .collect::<Vec<_>>(),
        "Host changed"
    );
    for name in original.keys() {
        let s = name.as_str();
        let special = HOP_BY_HOP.contains(&s) || s == "te" || s == "upgrade" || s == "host";
        if special {
            continue;
        }
        let before: Vec<_> = original.get_all(name).iter().collect();
        let after: Vec<_> = stripped.get_all(name).iter().collect();
        if named.contains(s) {
            assert!(after.is_empty(), "{s}, named by Connection, survived");
        } else {
            assert_eq!(after, before, "end-to-end header {s} changed");
        }
    }
    for name in stripped.keys() {
        assert!(
            original.contains_key(name) || name == http::header::TE,
            "{name} appeared"
        );
    }
}

/// The proxy's `--max-services` in [`discovery_updates`]: small, so the bound is
/// exercised.
const MAX_SERVICES: usize = 16;

/// The discovery client's handling of Watch updates: `data` is a sequence of
/// length-delimited `MeshUpdate` messages (protobuf, as on the wire), applied in
/// order to one table with [`discovery::apply`]. An update with an invalid service
/// or leaving more than [`MAX_SERVICES`] is rejected whole: the table and version
/// stay as they were. Checks after an applied one: the version is the update's; a
/// service upserted is in the table as sent; a removed service is gone;
/// a snapshot holds exactly its services, an increment keeps the others unchanged;
/// every VIP:port resolves to a route of a service with that VIP:port and its
/// endpoints; every endpoint maps back to a service that has it; every duration of
/// a policy can be added to the clock.
pub fn discovery_updates(data: &[u8]) {
    let routes = Routes::default();
    let defaults = Defaults::default();
    let mut buf = data;
    let mut count = 0;
    while !buf.is_empty() && count < 64 {
        let Ok(update) = MeshUpdate::decode_length_delimited(&mut buf) else {
            break;
        };
        count += 1;
        let (before, before_applied) = routes.load_applied();
        match discovery::apply(&routes, &update, defaults, MAX_SERVICES) {
            Ok(applied) => {
                assert_eq!(applied.version, update.version);
                assert!(
                    update.services.iter().all(valid),
                    "an invalid service applied"
                );
                let (table, version) = routes.load_applied();
                assert_eq!(version, Some(applied));
                assert!(table.service_count() <= MAX_SERVICES);
                check_update(&before, &table, &update);
                check_table(&table);
            }
            Err(_) => {
                // Rejected whole: the table and its version are as they were.
                let (table, version) = routes.load_applied();
                assert!(
                    std::sync::Arc::ptr_eq(&before, &table),
                    "a rejected update changed the table"
                );
                assert_eq!(version, before_applied);
                let invalid = !update.services.iter().all(valid);
                assert!(invalid || update.services.len() + before.service_count() > MAX_SERVICES);
            }
        }
    }
}

/// A service a proxy can route: what `discovery::spec_of` must accept.
fn valid(s: &api::Service) -> bool {
    let port = |p: u32| (1..=u32::from(u16::MAX)).contains(&p);
    s.vip.parse::<IpAddr>().is_ok()
        && s.ports.iter().all(|p| port(p.port) && port(p.target_port))
        && s.endpoints
            .iter()
            .all(|e| e.address.parse::<IpAddr>().is_ok())
        && s.withheld.iter().all(|a| a.parse::<IpAddr>().is_ok())
}

fn check_update(before: &RouteTable, after: &RouteTable, update: &MeshUpdate) {
    // The last valid occurrence of each name wins.
    let mut upserted: BTreeMap<&str, &api::Service> = BTreeMap::new();
    for s in update.services.iter().filter(|s| valid(s)) {
        upserted.insert(&s.name, s);
    }
    for s in &update.services {
        let in_table = after.service(&s.name);
        if let Some(sent) = upserted.get(s.name.as_str()) {
            let spec = in_table.unwrap_or_else(|| panic!("valid service {:?} missing", s.name));
            assert_eq!(Ok(spec.vip), sent.vip.parse::<IpAddr>());
            let ports: Vec<(u32, u32)> = spec
                .ports
                .iter()
                .map(|p| (u32::from(p.port), u32::from(p.target_port)))
                .collect();
            let sent_ports: Vec<(u32, u32)> =
                sent.ports.iter().map(|p| (p.port, p.target_port)).collect();
            assert_eq!(ports, sent_ports, "ports of {:?}", s.name);
            assert_eq!(spec.endpoints.len(), sent.endpoints.len());
        } else if update.full_snapshot || update.removed.contains(&s.name) {
            assert!(in_table.is_none(), "invalid service {:?} applied", s.name);
        } else {
            assert_eq!(in_table, before.service(&s.name), "invalid {:?}", s.name);
        }
    }
    for name in &update.removed {
        if !upserted.contains_key(name.as_str()) {
            assert!(after.service(name).is_none(), "removed {name:?} stays");
        }
    }
    let listed: BTreeSet<&str> = update.services.iter().map(|s| s.name.as_str()).collect();
    if update.full_snapshot {
        assert_eq!(after.service_count(), upserted.len(), "snapshot size");
    } else {
        for view in before.view() {
            if !listed.contains(view.name) && !update.removed.iter().any(|r| r == view.name) {
                assert_eq!(
                    after.service(view.name),
                    before.service(view.name),
                    "untouched service {:?} changed",
                    view.name
                );
            }
        }
    }
}

fn check_table(table: &RouteTable) {
    let views = table.view();
    assert_eq!(views.len(), table.service_count());
    for view in &views {
        let spec = table.service(view.name).expect("a viewed service exists");
        check_policy(&spec.policy);
        for route in &view.routes {
            let Resolved::Service(r) = table.resolve(OrigDstAddr(route.vip_port)) else {
                panic!("{} does not resolve", route.vip_port);
            };
            // Two services may claim one VIP:port; the route is one of theirs.
            let owner = table.service(&r.service).expect("a route's service exists");
            // Addresses compare canonical: an IPv4-mapped IPv6 VIP is its IPv4 one.
            let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
            let owns = owner.ports.iter().any(|p| {
                canonical(SocketAddr::new(owner.vip, p.port)) == canonical(route.vip_port)
            });
            assert!(owns, "{} routes to {}", route.vip_port, r.service);
            let endpoints: Vec<SocketAddr> = r.endpoints().map(|e| e.0).collect();
            let expected: Vec<SocketAddr> = owner
                .endpoints
                .iter()
                .map(|ip| SocketAddr::new(*ip, r.target_port))
                .collect();
            assert_eq!(endpoints, expected);
            assert!(owner.ports.iter().any(|p| p.target_port == r.target_port));
        }
        for ip in spec.endpoints.iter().chain(&spec.withheld) {
            let peer = table
                .service_of_peer(*ip)
                .unwrap_or_else(|| panic!("endpoint {ip} of {} unknown", view.name));
            let other = table.service(&peer).expect("a peer's service exists");
            let has = |a: &IpAddr| a.to_canonical() == ip.to_canonical();
            assert!(
                other.endpoints.iter().chain(&other.withheld).any(has),
                "{ip} maps to {peer}, which does not have it"
            );
        }
    }
}

/// Every duration is usable as a deadline (`Instant::now() + d` panics on overflow).
fn check_policy(p: &Policy) {
    let now = Instant::now();
    let durations: [(&str, Duration); 7] = [
        ("timeout", p.timeout),
        ("connect_timeout", p.connect_timeout),
        ("idle_timeout", p.idle_timeout),
        ("tcp_idle_timeout", p.tcp_idle_timeout),
        ("half_close_timeout", p.half_close_timeout),
        ("base_ejection", p.circuit_breaker.base_ejection),
        ("max_ejection", p.circuit_breaker.max_ejection),
    ];
    for (name, d) in durations {
        assert!(
            now.checked_add(d).is_some(),
            "{name} {d:?} overflows a deadline"
        );
    }
    assert!(p.retries.budget_percent <= 100);
    assert!(p.circuit_breaker.max_ejection_percent <= 100);
    assert!(p.circuit_breaker.max_ejection >= p.circuit_breaker.base_ejection);
}
