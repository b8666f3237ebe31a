//! Which failures of the fault suites' loads had already been handed to an
//! application when they failed, beyond the ones the app logged.
//!
//! The fault suites must tell a failure the mesh could have avoided (no
//! application ever had the request or connection) from one it could not. An app
//! logs an id once it reads it, but an app killed at that instant leaves unread
//! what its kernel already holds: connections in its accept queue, a request in
//! its socket's receive buffer. Those were delivered (the replica's sidecar
//! connected to the app and wrote the bytes) and then reset by the dying app. No
//! proxy can know whether an app acted on bytes it was sent, so such a request is
//! sent again only when its method is idempotent (and then does not fail), and
//! such a connection not at all. The client sees which it was:
//!
//! - an HTTP request or gRPC call: the replica's sidecar answered it with its own
//!   error `upstream_reset` (`x-weft-error`, passed on by the client's sidecar),
//!   and it is a POST (a gRPC call is one);
//! - an opaque TCP connection: the client's sidecar's `/connections` shows it (by
//!   the client's source port) established to an endpoint and ended
//!   `reset_by_upstream`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::Value;

/// The ids among `load`'s failures (`{"failures": [{"id", "port"}]}`) whose
/// connection the client's sidecar (its `/connections` document) had established
/// to an endpoint of `original_destination` (`ip:port`) before the endpoint reset
/// it. The sidecar must keep enough closed connections (`--closed-history`) for
/// the whole load.
pub fn established_then_reset(
    connections: &Value,
    original_destination: &str,
    load: &Value,
) -> Vec<u64> {
    let reset_after_established: BTreeSet<u16> = connections["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["original_destination"] == original_destination
                && !c["endpoint"].is_null()
                && c["end"] == "reset_by_upstream"
        })
        .filter_map(|c| c["source"].as_str()?.parse::<SocketAddr>().ok())
        .map(|source| source.port())
        .collect();
    load["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .is_some_and(|p| reset_after_established.contains(&p))
        })
        .filter_map(|f| f["id"].as_u64())
        .collect()
}

/// Whether an HTTP or gRPC load's failure (`{"method", "weft_error"}`; a gRPC
/// failure has no method: every call is a POST) was a request the replica's
/// sidecar had written to its app when the app reset, not idempotent, so not
/// sent again.
pub fn delivered_then_reset(failure: &Value) -> bool {
    failure["weft_error"] == "upstream_reset"
        && failure["method"].as_str().is_none_or(|m| m == "POST")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_posts_a_peer_sidecar_saw_reset_count_as_delivered() {
        let post =
            json!({"id": 1, "method": "POST", "status": 502, "weft_error": "upstream_reset"});
        let grpc = json!({"id": 2, "status": "Unavailable", "weft_error": "upstream_reset"});
        // An idempotent request reset under its app is sent again: failing is a defect.
        let get = json!({"id": 3, "method": "GET", "status": 502, "weft_error": "upstream_reset"});
        let refused =
            json!({"id": 4, "method": "POST", "status": 502, "weft_error": "connect_refused"});
        let transport = json!({"id": 5, "method": "POST", "error": "reset"});
        assert!(delivered_then_reset(&post));
        assert!(delivered_then_reset(&grpc));
        for f in [get, refused, transport] {
            assert!(!delivered_then_reset(&f), "{f}");
        }
    }

    #[test]
    fn only_connections_established_then_reset_by_the_endpoint_count() {
        let table = json!({"connections": [
            // Established, then reset by the endpoint: counts.
            {"source": "10.0.0.2:40001", "original_destination": "10.96.0.50:83",
             "endpoint": "10.0.0.3:8083", "end": "reset_by_upstream"},
            // No endpoint took it: the mesh failed it.
            {"source": "10.0.0.2:40002", "original_destination": "10.96.0.50:83",
             "endpoint": null, "end": "no_endpoint"},
            // Ended otherwise.
            {"source": "10.0.0.2:40003", "original_destination": "10.96.0.50:83",
             "endpoint": "10.0.0.3:8083", "end": "eof"},
            // Another destination.
            {"source": "10.0.0.2:40004", "original_destination": "10.96.0.50:80",
             "endpoint": "10.0.0.3:8080", "end": "reset_by_upstream"},
        ]});
        let load = json!({"failures": [
            {"id": 1, "port": 40001}, {"id": 2, "port": 40002},
            {"id": 3, "port": 40003}, {"id": 4, "port": 40004},
            {"id": 5, "port": null},
        ]});
        assert_eq!(
            established_then_reset(&table, "10.96.0.50:83", &load),
            vec![1]
        );
    }
}
