//! Per-mesh unique name prefixes and pod-name checks.
//!
//! Network namespace names are global to the machine and interface names are
//! limited to 15 bytes, so the prefix is short: `wf` + 5 hex digits mixed from the
//! process id, the clock and a process-wide counter. Every mesh, also several in
//! one test binary running in parallel threads, gets its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

/// Longest pod name accepted by [`check_pod_name`].
pub const MAX_POD_NAME: usize = 24;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh prefix such as `wf3a9c1`: `wf` and 5 lowercase hex digits.
pub fn new_prefix() -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = u64::from(std::process::id());
    let mixed = splitmix64(pid ^ splitmix64(nanos ^ splitmix64(count)));
    format!("wf{:05x}", mixed & 0xf_ffff)
}

/// True if `name` looks like a netns name made with a prefix of [`new_prefix`].
pub fn is_harness_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 8
        && name.starts_with("wf")
        && b[2..7].iter().all(|c| c.is_ascii_hexdigit())
        && b[7] == b'-'
}

/// Pod names become part of netns and log file names: lowercase letters, digits
/// and `-`, starting with a letter, at most [`MAX_POD_NAME`] bytes, not `node`.
pub fn check_pod_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let starts_with_letter = name.bytes().next().is_some_and(|c| c.is_ascii_lowercase());
    if !ok_chars || !starts_with_letter || name.len() > MAX_POD_NAME {
        bail!("bad pod name {name:?}: use [a-z][a-z0-9-]*, at most {MAX_POD_NAME} bytes");
    }
    if name == "node" {
        bail!("pod name \"node\" is reserved for the mesh's node namespace");
    }
    Ok(())
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = new_prefix();
        let b = new_prefix();
        assert_eq!(a.len(), 7);
        assert!(a.starts_with("wf"));
        assert_ne!(a, b);
        assert!(is_harness_name(&format!("{a}-node")));
        assert!(!is_harness_name("wfzzzzz-node"));
        assert!(!is_harness_name("other"));
    }

    #[test]
    fn pod_names() {
        assert!(check_pod_name("a").is_ok());
        assert!(check_pod_name("client-1").is_ok());
        assert!(check_pod_name("").is_err());
        assert!(check_pod_name("node").is_err());
        assert!(check_pod_name("A").is_err());
        assert!(check_pod_name("1a").is_err());
        assert!(check_pod_name("a/b").is_err());
        assert!(check_pod_name(&"a".repeat(MAX_POD_NAME + 1)).is_err());
    }
}
