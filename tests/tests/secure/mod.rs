//! What the mesh-security suites share (`mtls.rs`, `authz.rs`; `traces.rs` waits
//! for identities with it): apps started in a
//! pod, a one-line TCP exchange, and reading a sidecar's admin page (its
//! certificate, the identities it knows, its connections).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{python3, wait_until, ModePod, PodProc, ProcSpec};

/// The sidecar's admin listener.
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Starts `python3 SCRIPT ARGS` in `pod` and waits until it listens.
pub fn app(pod: &ModePod, name: &str, script: &str, args: &[&str]) -> PodProc {
    let mut argv = vec![python3().to_string_lossy().into_owned(), script.to_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let proc = pod.spawn(ProcSpec::new(&argv).name(name)).unwrap();
    wait_until(WAIT, Duration::from_millis(20), || {
        proc.logs().contains("listening")
    })
    .unwrap_or_else(|e| panic!("{name} in {}: {e}: {}", pod.name(), proc.logs()));
    proc
}

/// Sends `line` over a new TCP connection and reads what comes back until the
/// server closes or resets (`nc -N`: the write side is shut after the line); a
/// reset is no error here: only what was read counts.
pub fn nc(pod: &ModePod, host: &str, port: u16, line: &str) -> String {
    let script = format!("printf %s '{line}' | nc -N -w 10 {host} {port}; true");
    pod.run_ok(["sh", "-c", &script], None, Duration::from_secs(20))
        .unwrap()
        .trim()
        .to_owned()
}

/// A page of the sidecar's admin listener, as JSON.
pub fn admin_json(pod: &ModePod, path: &str) -> Value {
    let (code, body) = pod.http_get(ADMIN, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `pod`'s sidecar knows every address in `ips` by identity `id`.
pub fn wait_for_identities(pod: &ModePod, ips: &[IpAddr], id: &str) {
    wait_until(WAIT, POLL, || {
        let routes = admin_json(pod, "/routes");
        ips.iter().all(|ip| {
            routes["services"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["identities"][ip.to_string()].as_str() == Some(id))
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{}: no identities ({e}): {:#}",
            pod.name(),
            admin_json(pod, "/routes")
        )
    });
}

/// `/connections` of a pod's sidecar, live and closed rows together.
pub fn connections(pod: &ModePod) -> Vec<Value> {
    admin_json(pod, "/connections")["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}
