//! The property the fuzz target checks (`init/fuzz`), in one place: the target
//! calls it, and so does the corpus replay (`tests/fuzz_corpus.rs`) on the stable
//! toolchain, so the two cannot drift. A property that does not hold panics. Pure
//! and in-process: flags are parsed and validated, the eBPF map values computed;
//! nothing is loaded, attached or installed.
//!
//! Not an API: hidden from the docs, kept small.

use std::net::{IpAddr, Ipv6Addr};

use clap::Parser;
use weft_ebpf::settings::{addr, trie_prefix};
use weft_ebpf_common::{FLAG_PROXY_GID, FLAG_SOCKMAP};

use crate::config::{Cli, Config};
use crate::ebpf;
use crate::net::Cidr;

/// weft-init's flags, one argument per line of `data`, through clap and
/// validation into the eBPF maps' values (`ebpf::settings`, `Settings::config`,
/// the trie keys). Checks: no panic; a configuration accepted has non-zero,
/// distinct outbound and inbound ports and deduplicated exclusions; every excluded
/// network is masked, within its family's prefix length, prints as a CIDR that
/// parses back the same, and becomes a trie key of at most 128 bits whose address
/// is the network's (IPv4 mapped); the Config map value says what the flags said.
pub fn init_flags(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args = std::iter::once("weft-init").chain(text.lines());
    let Ok(cli) = Cli::try_parse_from(args) else {
        return;
    };
    let Ok(config) = Config::try_from(cli) else {
        return;
    };
    check(&config);
}

fn check(config: &Config) {
    let c = &config.capture;
    for port in [
        c.outbound_port,
        c.inbound_port,
        c.admin_port,
        c.metrics_port,
    ] {
        assert_ne!(port, 0);
    }
    assert_ne!(c.outbound_port, c.inbound_port);
    for ports in [&c.exclude_outbound_ports, &c.exclude_inbound_ports] {
        assert!(!ports.contains(&0), "port 0 excluded");
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "duplicate ports {ports:?}");
    }
    for cidr in c
        .exclude_outbound_cidrs
        .iter()
        .chain(&c.exclude_inbound_cidrs)
    {
        check_cidr(cidr);
    }

    let s = ebpf::settings(config);
    let map = s.config();
    assert_eq!(map.proxy_uid, c.proxy_uid);
    assert_eq!(map.proxy_gid, c.proxy_gid.unwrap_or(0));
    assert_eq!(map.outbound_port, c.outbound_port);
    assert_eq!(map.flags & FLAG_PROXY_GID != 0, c.proxy_gid.is_some());
    assert_eq!(map.flags & FLAG_SOCKMAP != 0, config.ebpf.sockmap);
    assert_eq!(s.exclude_ports, c.exclude_outbound_ports);
    assert_eq!(s.exclude_cidrs.len(), c.exclude_outbound_cidrs.len());
    for &(ip, prefix) in &s.exclude_cidrs {
        let bits = trie_prefix(ip, prefix);
        assert!(bits <= 128, "{ip}/{prefix}: a {bits}-bit trie key");
        let words = addr(ip);
        let mut octets = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let expected = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        assert_eq!(Ipv6Addr::from(octets), expected, "the map key of {ip}");
    }
}

fn check_cidr(cidr: &Cidr) {
    let (ip, prefix) = (cidr.addr(), cidr.prefix());
    let (bits, value) = match ip {
        IpAddr::V4(v4) => (32, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (128, u128::from(v6)),
    };
    assert!(u32::from(prefix) <= bits, "{cidr}: prefix too long");
    let host_bits = bits - u32::from(prefix);
    let host_mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    assert_eq!(value & host_mask, 0, "{cidr}: host bits set");
    let printed = cidr.to_string();
    let back: Cidr = printed
        .parse()
        .unwrap_or_else(|e| panic!("{printed} does not parse back: {e}"));
    assert_eq!(&back, cidr, "{printed} parses to another network");
}
