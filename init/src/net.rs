//! Address families, CIDRs and ports as weft-init accepts them from flags.
//!
//! Parsing is strict and every error names the offending value, because these values
//! end up in kernel rules where a typo silently captures (or leaks) the wrong traffic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP family: one iptables ruleset is generated and installed per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4, handled by `iptables`.
    V4,
    /// IPv6, handled by `ip6tables`.
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order in which they are installed).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback range, whose destinations are never captured.
    pub fn loopback(self) -> Cidr {
        match self {
            Family::V4 => Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                prefix: 8,
            },
            Family::V6 => Cidr {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        }
    }

    /// The command-name prefix of this family's iptables binaries.
    pub fn command_prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// An IPv4 or IPv6 network. Host bits are cleared on parse (as the kernel would), so
/// what `--dry-run` prints is what `iptables-save` shows afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The family this network belongs to.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The (masked) network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a CIDR was rejected; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("`{0}` is not a CIDR (expected ADDRESS/PREFIX such as 10.96.0.0/12 or fd00::/8)")]
    Syntax(String),
    /// The prefix length is not a number or too long for the family.
    #[error("`{value}` has an invalid prefix length (0-{max} for {family})")]
    Prefix {
        /// The rejected value.
        value: String,
        /// The family of the address part.
        family: Family,
        /// The longest valid prefix for that family.
        max: u8,
    },
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Accepts `ADDRESS/PREFIX`, or a bare address meaning a single host (/32, /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_part, prefix_part) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_part
            .parse()
            .map_err(|_| CidrError::Syntax(s.to_string()))?;
        let family = match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let max = family.max_prefix();
        let prefix = match prefix_part {
            None => max,
            Some(p) => digits(p)
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    value: s.to_string(),
                    family,
                    max,
                })?,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

/// `s` if it is a non-empty run of ASCII digits (`from_str` would also take `+8`).
fn digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Parses a TCP port (1-65535); the error names the value.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match digits(s).and_then(|d| d.parse::<u16>().ok()) {
        Some(p) if p != 0 => Ok(p),
        _ => Err(format!("`{s}` is not a TCP port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks_cidrs() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.family(), Family::V4);
        let c: Cidr = "fd00:1::5/16".parse().unwrap();
        assert_eq!(c.to_string(), "fd00::/16");
        assert_eq!(c.family(), Family::V6);
        assert_eq!(
            "192.168.1.1".parse::<Cidr>().unwrap().to_string(),
            "192.168.1.1/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_cidrs_naming_the_value() {
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1.2.3.4/8/9",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "+80", "http", "", " 80"] {
            assert!(parse_port(bad).unwrap_err().contains(&format!("`{bad}`")));
        }
    }
}
