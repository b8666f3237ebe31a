//! Tier 2: weft-init's iptables rules, with both backends (iptables-nft and
//! iptables-legacy): installing twice equals installing once, `--dry-run` changes
//! nothing, `--cleanup` leaves no trace, and a bad flag changes nothing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_e2e::sidecar::weft_init;
use weft_e2e::{Mesh, Pod};

const BACKENDS: [&str; 2] = ["nft", "legacy"];

/// Both families' nat tables as `<backend>-save` prints them, without the comment
/// lines (timestamps) and packet counters, so two saves compare equal.
fn nat_rules(pod: &Pod, backend: &str) -> String {
    let mut out = String::new();
    for family in ["iptables", "ip6tables"] {
        let save = format!("{family}-{backend}-save");
        let text = pod
            .run_ok([save.as_str(), "-t", "nat"], None, Duration::from_secs(10))
            .unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // ":CHAIN POLICY [pkts:bytes]" → ":CHAIN POLICY"
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            out.push_str(family);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn weft_lines(rules: &str) -> Vec<&str> {
    rules.lines().filter(|l| l.contains("WEFT")).collect()
}

const EXCLUSIONS: &[&str] = &[
    "--exclude-outbound-ports",
    "9090,9091",
    "--exclude-inbound-ports",
    "8081",
    "--exclude-outbound-cidrs",
    "10.96.0.0/16,fd00:96::/64",
    "--exclude-inbound-cidrs",
    "10.211.0.9/32",
];

fn install_is_idempotent_and_cleanup_complete(backend: &str) {
    let mesh = Mesh::new().unwrap();
    let pod = mesh.add_pod("p").unwrap();
    let with_backend = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--iptables-backend".to_string(), backend.to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let init = |extra: &[&str]| -> String {
        let args = with_backend(extra);
        weft_init(&pod, &args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    };
    let pristine = nat_rules(&pod, backend);
    assert!(weft_lines(&pristine).is_empty());

    // --dry-run prints the rules and changes nothing.
    let mut dry = vec!["--dry-run"];
    dry.extend_from_slice(EXCLUSIONS);
    let printed = init(&dry);
    assert!(
        printed.contains("WEFT_OUTPUT") && printed.contains("WEFT_INBOUND"),
        "{printed}"
    );
    assert!(printed.contains("--to-ports 15001"), "{printed}");
    assert_eq!(
        nat_rules(&pod, backend),
        pristine,
        "--dry-run changed the rules"
    );

    init(EXCLUSIONS);
    let once = nat_rules(&pod, backend);
    let weft = weft_lines(&once);
    for family in ["iptables", "ip6tables"] {
        for expected in [
            format!("{family} -A OUTPUT -p tcp -j WEFT_OUTPUT"),
            format!("{family} -A PREROUTING -p tcp -j WEFT_INBOUND"),
            format!("{family} -A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
            format!("{family} -A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006"),
        ] {
            assert!(
                weft.contains(&expected.as_str()),
                "missing `{expected}` in\n{once}"
            );
        }
    }
    // Each exclusion landed in its own family only.
    assert!(
        once.contains("iptables -A WEFT_OUTPUT -d 10.96.0.0/16 -j RETURN"),
        "{once}"
    );
    assert!(
        once.contains("ip6tables -A WEFT_OUTPUT -d fd00:96::/64 -j RETURN"),
        "{once}"
    );
    assert!(
        !once.contains("ip6tables -A WEFT_OUTPUT -d 10.96"),
        "{once}"
    );
    assert!(once.contains("9090,9091"), "{once}");
    assert!(once.contains("-s 10.211.0.9/32"), "{once}");

    init(EXCLUSIONS);
    assert_eq!(
        nat_rules(&pod, backend),
        once,
        "a second install differs from the first"
    );

    // A bad flag fails, says why, and leaves the installed rules as they were.
    let bin = weft_e2e::weft_bin("weft-init");
    let bad = pod
        .run(
            [
                bin.to_str().unwrap(),
                "--iptables-backend",
                backend,
                "--exclude-outbound-ports",
                "99999",
            ],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("99999"),
        "{bad:?}"
    );
    assert_eq!(nat_rules(&pod, backend), once);

    init(&["--cleanup"]);
    let after = nat_rules(&pod, backend);
    assert!(weft_lines(&after).is_empty(), "left behind:\n{after}");
    assert_eq!(after, pristine);
    // Cleaning up when nothing is installed succeeds.
    init(&["--cleanup"]);
}

#[test]
fn iptables_nft_install_twice_dry_run_and_cleanup() {
    install_is_idempotent_and_cleanup_complete(BACKENDS[0]);
}

#[test]
fn iptables_legacy_install_twice_dry_run_and_cleanup() {
    install_is_idempotent_and_cleanup_complete(BACKENDS[1]);
}

#[test]
fn ebpf_mode_is_refused_with_a_clear_message() {
    let mesh = Mesh::new().unwrap();
    let pod = mesh.add_pod("p").unwrap();
    let bin = weft_e2e::weft_bin("weft-init");
    let out = pod
        .run(
            [bin.to_str().unwrap(), "--mode", "ebpf"],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mode ebpf needs --cgroup"),
        "{out:?}"
    );
    for backend in BACKENDS {
        assert!(weft_lines(&nat_rules(&pod, backend)).is_empty());
    }
}

#[test]
fn missing_iptables_fails_and_installs_nothing() {
    let mesh = Mesh::new().unwrap();
    let pod = mesh.add_pod("p").unwrap();
    let bin = weft_e2e::weft_bin("weft-init");
    // An empty PATH: no iptables binary can be found.
    let out = pod
        .run(
            [
                "/usr/bin/env",
                "PATH=/nonexistent",
                bin.to_str().unwrap(),
                "--iptables-backend",
                "nft",
            ],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("iptables"), "{stderr}");
    for backend in BACKENDS {
        assert!(weft_lines(&nat_rules(&pod, backend)).is_empty());
    }
}
