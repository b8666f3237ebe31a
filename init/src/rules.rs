//! Pure generation of weft's nat ruleset and of the `iptables-restore --noflush` input
//! that installs it. Nothing here runs a command.
//!
//! The input declares both weft chains (`:WEFT_OUTPUT - [0:0]`); with `--noflush`
//! that creates a missing chain and flushes an existing one, so one restore replaces
//! every weft rule atomically and installing twice equals installing once. The jumps
//! from the built-in chains are the only rules outside weft's chains; they are appended
//! only when not already present (the caller checks with `iptables -C`).

use std::fmt::Write as _;

use crate::config::Capture;
use crate::net::Family;

/// Chain holding the outbound capture rules (jumped to from nat OUTPUT).
pub const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// Chain holding the inbound capture rules (jumped to from nat PREROUTING).
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// Every chain weft-init creates, in declaration order.
pub const CHAINS: [&str; 2] = [OUTPUT_CHAIN, INBOUND_CHAIN];
/// The most ports one `-m multiport` match accepts.
pub const MULTIPORT_MAX: usize = 15;

/// A jump from a built-in nat chain into one of weft's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// The built-in chain (`OUTPUT` or `PREROUTING`).
    pub from: &'static str,
    /// The weft chain jumped to.
    pub to: &'static str,
}

impl Jump {
    /// The rule specification after the chain name, as given to `-C`, `-A` and `-D`.
    pub fn spec(&self) -> [&'static str; 4] {
        ["-p", "tcp", "-j", self.to]
    }

    /// The rule as `iptables-save` prints it and `iptables-restore` reads it.
    pub fn rule_line(&self) -> String {
        format!("-A {} {}", self.from, self.spec().join(" "))
    }
}

/// Locally generated TCP enters WEFT_OUTPUT.
pub const OUTPUT_JUMP: Jump = Jump {
    from: "OUTPUT",
    to: OUTPUT_CHAIN,
};
/// TCP arriving at the namespace enters WEFT_INBOUND.
pub const INBOUND_JUMP: Jump = Jump {
    from: "PREROUTING",
    to: INBOUND_CHAIN,
};
/// Both jumps, in the order they are appended.
pub const JUMPS: [Jump; 2] = [OUTPUT_JUMP, INBOUND_JUMP];

/// Which directions iptables captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Outbound and inbound (`--mode iptables`).
    All,
    /// Inbound only: outbound is captured by eBPF (`--mode ebpf`). WEFT_OUTPUT is
    /// still declared (empty, no jump), so cleanup is the same in both modes.
    InboundOnly,
}

impl Scope {
    /// The jumps this scope installs.
    pub fn jumps(self) -> &'static [Jump] {
        match self {
            Scope::All => &JUMPS,
            Scope::InboundOnly => std::slice::from_ref(&JUMPS[1]),
        }
    }
}

/// One rule inside a weft chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The weft chain it belongs to.
    pub chain: &'static str,
    /// The rule specification (matches and target), one argument per element.
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &'static str, spec: &[&str]) -> Self {
        Rule {
            chain,
            spec: spec.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    /// The rule as an `iptables-restore` line.
    pub fn line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

/// weft's rules for one family: the contents of its chains (jumps excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family these rules are for.
    pub family: Family,
    /// The rules, in chain order: WEFT_OUTPUT first, then WEFT_INBOUND.
    pub rules: Vec<Rule>,
}

impl Ruleset {
    /// Generates the rules for `family`; CIDRs of the other family are left out.
    pub fn generate(capture: &Capture, family: Family) -> Self {
        Self::generate_scoped(capture, family, Scope::All)
    }

    /// Generates the rules of `scope` for `family`.
    pub fn generate_scoped(capture: &Capture, family: Family, scope: Scope) -> Self {
        let mut ruleset = Self::generate_all(capture, family);
        if scope == Scope::InboundOnly {
            ruleset.rules.retain(|r| r.chain != OUTPUT_CHAIN);
        }
        ruleset
    }

    fn generate_all(capture: &Capture, family: Family) -> Self {
        let mut rules = Vec::new();

        // Outbound: the proxy's own connections, loopback, excluded destinations.
        let uid = capture.proxy_uid.to_string();
        rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
        ));
        if let Some(gid) = capture.proxy_gid {
            let gid = gid.to_string();
            rules.push(Rule::new(
                OUTPUT_CHAIN,
                &["-m", "owner", "--gid-owner", &gid, "-j", "RETURN"],
            ));
        }
        let loopback = family.loopback().to_string();
        rules.push(Rule::new(OUTPUT_CHAIN, &["-d", &loopback, "-j", "RETURN"]));
        for cidr in capture
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            let cidr = cidr.to_string();
            rules.push(Rule::new(OUTPUT_CHAIN, &["-d", &cidr, "-j", "RETURN"]));
        }
        rules.extend(multiport_returns(
            OUTPUT_CHAIN,
            &capture.exclude_outbound_ports,
        ));
        let to = capture.outbound_port.to_string();
        rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &to],
        ));

        // Inbound: the proxy's own ports, excluded ports, excluded sources.
        let mut inbound_ports = vec![
            capture.inbound_port,
            capture.outbound_port,
            capture.admin_port,
            capture.metrics_port,
            capture.tunnel_port,
        ];
        inbound_ports.extend(&capture.exclude_inbound_ports);
        let mut seen = Vec::with_capacity(inbound_ports.len());
        inbound_ports.retain(|p| {
            let new = !seen.contains(p);
            seen.push(*p);
            new
        });
        rules.extend(multiport_returns(INBOUND_CHAIN, &inbound_ports));
        for cidr in capture
            .exclude_inbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            let cidr = cidr.to_string();
            rules.push(Rule::new(INBOUND_CHAIN, &["-s", &cidr, "-j", "RETURN"]));
        }
        let to = capture.inbound_port.to_string();
        rules.push(Rule::new(
            INBOUND_CHAIN,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &to],
        ));

        Ruleset { family, rules }
    }

    /// How many rules `chain` holds.
    pub fn count(&self, chain: &str) -> usize {
        self.rules.iter().filter(|r| r.chain == chain).count()
    }

    /// The `iptables-restore --noflush` input installing this ruleset, appending the
    /// given jumps (those found absent).
    pub fn restore_input(&self, append_jumps: &[Jump]) -> String {
        let mut s = String::from("*nat\n");
        for chain in CHAINS {
            // Infallible: writing to a String.
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for rule in &self.rules {
            s.push_str(&rule.line());
            s.push('\n');
        }
        for jump in append_jumps {
            s.push_str(&jump.rule_line());
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// `-p tcp -m multiport --dports a,b,.. -j RETURN`, at most [`MULTIPORT_MAX`] per rule.
fn multiport_returns(chain: &'static str, ports: &[u16]) -> Vec<Rule> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|chunk| {
            let list = chunk
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
            Rule::new(
                chain,
                &[
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "--dports",
                    &list,
                    "-j",
                    "RETURN",
                ],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Cidr;

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn representative() -> Capture {
        Capture {
            proxy_gid: Some(1337),
            // 17 ports: one full multiport rule of 15 and one of 2.
            exclude_outbound_ports: (1..=17).map(|p| p * 100).collect(),
            exclude_inbound_ports: vec![22, 15020],
            exclude_outbound_cidrs: cidrs(&["10.96.0.0/12", "fd00:10:96::/112", "169.254.169.254"]),
            exclude_inbound_cidrs: cidrs(&["192.168.0.0/16", "fe80::/10"]),
            ..Capture::default()
        }
    }

    #[test]
    fn ipv4_restore_input() {
        let rs = Ruleset::generate(&representative(), Family::V4);
        assert_eq!(
            rs.restore_input(&JUMPS),
            "\
*nat
:WEFT_OUTPUT - [0:0]
:WEFT_INBOUND - [0:0]
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN
-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN
-A WEFT_OUTPUT -p tcp -m multiport --dports 100,200,300,400,500,600,700,800,900,1000,1100,1200,1300,1400,1500 -j RETURN
-A WEFT_OUTPUT -p tcp -m multiport --dports 1600,1700 -j RETURN
-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -p tcp -m multiport --dports 15006,15001,15000,15020,15008,22 -j RETURN
-A WEFT_INBOUND -s 192.168.0.0/16 -j RETURN
-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A PREROUTING -p tcp -j WEFT_INBOUND
COMMIT
"
        );
        assert_eq!(rs.count(OUTPUT_CHAIN), 8);
        assert_eq!(rs.count(INBOUND_CHAIN), 3);
    }

    #[test]
    fn ipv6_restore_input() {
        let rs = Ruleset::generate(&representative(), Family::V6);
        assert_eq!(
            rs.restore_input(&JUMPS),
            "\
*nat
:WEFT_OUTPUT - [0:0]
:WEFT_INBOUND - [0:0]
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -d ::1/128 -j RETURN
-A WEFT_OUTPUT -d fd00:10:96::/112 -j RETURN
-A WEFT_OUTPUT -p tcp -m multiport --dports 100,200,300,400,500,600,700,800,900,1000,1100,1200,1300,1400,1500 -j RETURN
-A WEFT_OUTPUT -p tcp -m multiport --dports 1600,1700 -j RETURN
-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -p tcp -m multiport --dports 15006,15001,15000,15020,15008,22 -j RETURN
-A WEFT_INBOUND -s fe80::/10 -j RETURN
-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A PREROUTING -p tcp -j WEFT_INBOUND
COMMIT
"
        );
    }

    #[test]
    fn defaults_without_jumps() {
        let rs = Ruleset::generate(&Capture::default(), Family::V4);
        assert_eq!(
            rs.restore_input(&[]),
            "\
*nat
:WEFT_OUTPUT - [0:0]
:WEFT_INBOUND - [0:0]
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -p tcp -m multiport --dports 15006,15001,15000,15020,15008 -j RETURN
-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006
COMMIT
"
        );
    }

    #[test]
    fn multiport_chunks_at_exactly_fifteen() {
        assert_eq!(multiport_returns(OUTPUT_CHAIN, &[]).len(), 0);
        let ports: Vec<u16> = (1..=15).collect();
        assert_eq!(multiport_returns(OUTPUT_CHAIN, &ports).len(), 1);
        let ports: Vec<u16> = (1..=30).collect();
        assert_eq!(multiport_returns(OUTPUT_CHAIN, &ports).len(), 2);
        let ports: Vec<u16> = (1..=31).collect();
        let rules = multiport_returns(OUTPUT_CHAIN, &ports);
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[2].line(),
            "-A WEFT_OUTPUT -p tcp -m multiport --dports 31 -j RETURN"
        );
    }

    #[test]
    fn jump_lines_match_save_format() {
        assert_eq!(OUTPUT_JUMP.rule_line(), "-A OUTPUT -p tcp -j WEFT_OUTPUT");
        assert_eq!(
            INBOUND_JUMP.rule_line(),
            "-A PREROUTING -p tcp -j WEFT_INBOUND"
        );
    }
}
