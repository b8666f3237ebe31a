//! What the programs capture, as the loader writes it into their maps.

use std::net::IpAddr;

use weft_ebpf_common::{Addr, Config, FLAG_PROXY_GID, FLAG_SOCKMAP};

/// The interception settings of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Connections made by this uid (the proxy) are not captured.
    pub proxy_uid: u32,
    /// Connections made by this gid are not captured either.
    pub proxy_gid: Option<u32>,
    /// The proxy's outbound listener (on 127.0.0.1 and ::1).
    pub outbound_port: u16,
    /// Destination ports not captured.
    pub exclude_ports: Vec<u16>,
    /// Destination networks not captured: (network address, prefix length).
    pub exclude_cidrs: Vec<(IpAddr, u8)>,
    /// sk_msg acceleration of app↔proxy loopback data.
    pub sockmap: bool,
}

impl Settings {
    /// The [`Config`] map value.
    pub fn config(&self) -> Config {
        let mut flags = 0;
        if self.proxy_gid.is_some() {
            flags |= FLAG_PROXY_GID;
        }
        if self.sockmap {
            flags |= FLAG_SOCKMAP;
        }
        Config {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid.unwrap_or(0),
            flags,
            outbound_port: self.outbound_port,
            _pad: 0,
        }
    }
}

/// An address in the maps' form: 16 bytes in network order, IPv4 mapped.
pub fn addr(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// A CIDR's prefix length in the trie (IPv4 prefixes sit under the ::ffff:0:0/96 map).
pub fn trie_prefix(ip: IpAddr, prefix: u8) -> u32 {
    match ip {
        IpAddr::V4(_) => 96 + u32::from(prefix),
        IpAddr::V6(_) => u32::from(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_the_kernel_layout() {
        // The kernel's user_ip4 for 10.1.2.3 is the bytes 0a 01 02 03 read natively.
        let ip4 = u32::from_ne_bytes([10, 1, 2, 3]);
        assert_eq!(
            addr("10.1.2.3".parse().unwrap_or(IpAddr::from([0u8; 4]))),
            weft_ebpf_common::mapped_v4(ip4)
        );
        let v6 = addr("fd00:211::1".parse().unwrap_or(IpAddr::from([0u8; 4])));
        assert_eq!(v6[0], u32::from_ne_bytes([0xfd, 0, 0x02, 0x11]));
        assert!(!weft_ebpf_common::is_mapped_v4(&v6));
        assert_eq!(
            trie_prefix("10.0.0.0".parse().unwrap_or(IpAddr::from([0u8; 4])), 8),
            104
        );
    }

    #[test]
    fn config_flags() {
        let s = Settings {
            proxy_uid: 1337,
            proxy_gid: Some(1338),
            outbound_port: 15001,
            exclude_ports: vec![],
            exclude_cidrs: vec![],
            sockmap: true,
        };
        let c = s.config();
        assert_eq!(c.flags, FLAG_PROXY_GID | FLAG_SOCKMAP);
        assert_eq!(
            (c.proxy_uid, c.proxy_gid, c.outbound_port),
            (1337, 1338, 15001)
        );
    }
}
