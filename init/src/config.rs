//! Command-line flags (each also read from a `WEFT_*` environment variable) and their
//! validation into a [`Config`].
//!
//! clap rejects malformed scalars (a uid or port that is not a number) on its own; the
//! list flags are taken as strings and validated here so that one error lists every bad
//! value at once instead of making the operator fix them one run at a time.

use clap::{Parser, ValueEnum};

use crate::net::{parse_port, Cidr};

/// Default REDIRECT target for locally generated TCP (the proxy's outbound listener).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default REDIRECT target for TCP arriving at the pod (the proxy's inbound listener).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Default proxy admin port (never captured inbound).
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Default proxy metrics and health port (never captured inbound).
pub const DEFAULT_METRICS_PORT: u16 = 15020;
/// Default proxy tunnel port, where peer sidecars open opaque connections to the
/// pod's apps (never captured inbound).
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;
/// Default uid the proxy runs as; its own connections are never captured.
pub const DEFAULT_PROXY_UID: u32 = 1337;

/// Install transparent TCP capture for the weft sidecar proxy in the current network
/// namespace (run it with `ip netns exec POD weft-init` or as a pod's init container).
///
/// Outbound TCP is redirected to the proxy's outbound port, inbound TCP to its inbound
/// port, in dedicated nat chains WEFT_OUTPUT and WEFT_INBOUND, for IPv4 and (when the
/// namespace has IPv6) IPv6. Installing again replaces weft's rules atomically;
/// --cleanup removes them. Every flag can also be set through the environment variable
/// shown next to it.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-init", version, about, long_about)]
pub struct Cli {
    /// How to intercept traffic.
    #[arg(long, value_enum, default_value_t = Mode::Iptables, env = "WEFT_MODE")]
    pub mode: Mode,

    /// Uid the proxy runs as; its connections are not captured.
    #[arg(long, env = "WEFT_PROXY_UID", value_name = "UID", default_value_t = DEFAULT_PROXY_UID,
          value_parser = clap::value_parser!(u32).range(..i64::from(u32::MAX)))]
    pub proxy_uid: u32,

    /// Gid the proxy runs as; if given, connections from this gid are not captured either.
    #[arg(long, env = "WEFT_PROXY_GID", value_name = "GID",
          value_parser = clap::value_parser!(u32).range(..i64::from(u32::MAX)))]
    pub proxy_gid: Option<u32>,

    /// Proxy port that captured outbound TCP is redirected to.
    #[arg(long, env = "WEFT_OUTBOUND_PORT", value_name = "PORT", default_value_t = DEFAULT_OUTBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// Proxy port that captured inbound TCP is redirected to.
    #[arg(long, env = "WEFT_INBOUND_PORT", value_name = "PORT", default_value_t = DEFAULT_INBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// The proxy's admin port (always excluded from inbound capture).
    #[arg(long, env = "WEFT_ADMIN_PORT", value_name = "PORT", default_value_t = DEFAULT_ADMIN_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,

    /// The proxy's metrics and health port (always excluded from inbound capture).
    #[arg(long, env = "WEFT_METRICS_PORT", value_name = "PORT", default_value_t = DEFAULT_METRICS_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub metrics_port: u16,

    /// The proxy's tunnel port, where peer sidecars connect to the pod's apps
    /// (always excluded from inbound capture).
    #[arg(long, env = "WEFT_TUNNEL_PORT", value_name = "PORT", default_value_t = DEFAULT_TUNNEL_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tunnel_port: u16,

    /// Destination TCP ports whose outbound connections are not captured.
    #[arg(
        long,
        env = "WEFT_EXCLUDE_OUTBOUND_PORTS",
        value_name = "PORT,..",
        value_delimiter = ','
    )]
    pub exclude_outbound_ports: Vec<String>,

    /// Local TCP ports whose inbound connections are not captured.
    #[arg(
        long,
        env = "WEFT_EXCLUDE_INBOUND_PORTS",
        value_name = "PORT,..",
        value_delimiter = ','
    )]
    pub exclude_inbound_ports: Vec<String>,

    /// Destination networks (IPv4 or IPv6) whose outbound connections are not captured.
    #[arg(
        long,
        env = "WEFT_EXCLUDE_OUTBOUND_CIDRS",
        value_name = "CIDR,..",
        value_delimiter = ','
    )]
    pub exclude_outbound_cidrs: Vec<String>,

    /// Source networks (IPv4 or IPv6) whose inbound connections are not captured.
    #[arg(
        long,
        env = "WEFT_EXCLUDE_INBOUND_CIDRS",
        value_name = "CIDR,..",
        value_delimiter = ','
    )]
    pub exclude_inbound_cidrs: Vec<String>,

    /// Which iptables implementation to drive.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "WEFT_IPTABLES_BACKEND")]
    pub iptables_backend: BackendChoice,

    /// Print the iptables-restore input per family and the command that would apply
    /// it; change nothing. With --cleanup, print what would be removed.
    #[arg(long, env = "WEFT_DRY_RUN", value_parser = parse_switch)]
    pub dry_run: bool,

    /// Remove everything weft-init installed (both families; with backend auto, in
    /// every backend present; in ebpf mode also the pod's eBPF programs and pins).
    /// Succeeds when there is nothing to remove.
    #[arg(long, env = "WEFT_CLEANUP", value_parser = parse_switch)]
    pub cleanup: bool,

    /// eBPF mode: the pod's cgroup v2 directory (e.g. /sys/fs/cgroup/unified/POD); the
    /// programs apply to every process in it, whatever its network namespace.
    #[arg(long, env = "WEFT_CGROUP", value_name = "PATH")]
    pub cgroup: Option<std::path::PathBuf>,

    /// eBPF mode: the name of the pin directory /sys/fs/bpf/weft/NAME (default: the
    /// cgroup directory's name).
    #[arg(long, env = "WEFT_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// eBPF mode: short-circuit app<->proxy loopback data with sk_msg (off by
    /// default: on kernel 6.18 an app socket in the sockhash reads through
    /// tcp_bpf_recvmsg, which can return EAGAIN to a blocking recv() after a spurious
    /// wakeup — a correctness cost for plain apps, for no throughput gain measured).
    #[arg(long, env = "WEFT_SOCKMAP", value_parser = parse_switch, conflicts_with = "no_sockmap")]
    pub sockmap: bool,

    /// eBPF mode: no sk_msg short-circuit (the default; kept so scripts can say so).
    #[arg(long, env = "WEFT_NO_SOCKMAP", value_parser = parse_switch)]
    pub no_sockmap: bool,
}

/// How traffic is intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// nat-table REDIRECT rules installed with iptables-restore.
    Iptables,
    /// eBPF programs on the pod's cgroup for outbound (connect4/6, sockops,
    /// getsockopt), iptables in the pod for inbound; needs --cgroup.
    Ebpf,
    /// ebpf when --cgroup is given, this build has the programs and the kernel has
    /// every feature they need; iptables otherwise.
    Auto,
}

/// The iptables implementation requested on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Like Kubernetes' iptables-wrapper: legacy if only legacy holds rules, else nft if installed, else legacy.
    Auto,
    /// iptables-nft (nf_tables kernel API).
    Nft,
    /// iptables-legacy (x_tables kernel API).
    Legacy,
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Install (or reinstall) capture.
    Install,
    /// Remove capture.
    Cleanup,
}

/// The validated settings the capture rules are generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Connections from this uid are not captured.
    pub proxy_uid: u32,
    /// Connections from this gid are not captured either, if set.
    pub proxy_gid: Option<u32>,
    /// REDIRECT target for outbound TCP.
    pub outbound_port: u16,
    /// REDIRECT target for inbound TCP.
    pub inbound_port: u16,
    /// Proxy admin port, excluded from inbound capture.
    pub admin_port: u16,
    /// Proxy metrics port, excluded from inbound capture.
    pub metrics_port: u16,
    /// Proxy tunnel port, excluded from inbound capture.
    pub tunnel_port: u16,
    /// Destination ports not captured outbound (deduplicated, in flag order).
    pub exclude_outbound_ports: Vec<u16>,
    /// Local ports not captured inbound (deduplicated, in flag order).
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination networks not captured outbound.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Source networks not captured inbound.
    pub exclude_inbound_cidrs: Vec<Cidr>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            tunnel_port: DEFAULT_TUNNEL_PORT,
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_cidrs: Vec::new(),
        }
    }
}

/// A validated run configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interception mode requested.
    pub mode: Mode,
    /// iptables implementation requested.
    pub backend: BackendChoice,
    /// Install or clean up.
    pub action: Action,
    /// Print instead of changing anything.
    pub dry_run: bool,
    /// What to capture.
    pub capture: Capture,
    /// eBPF mode's settings.
    pub ebpf: EbpfOptions,
}

/// eBPF mode's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EbpfOptions {
    /// The pod's cgroup v2 directory.
    pub cgroup: Option<std::path::PathBuf>,
    /// The pin directory's name, if not the cgroup's.
    pub pod_name: Option<String>,
    /// sk_msg acceleration.
    pub sockmap: bool,
}

/// Every invalid setting found, one per entry, each naming the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    /// One message per bad value.
    pub problems: Vec<String>,
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let exclude_outbound_ports = ports(
            "--exclude-outbound-ports",
            &cli.exclude_outbound_ports,
            &mut problems,
        );
        let exclude_inbound_ports = ports(
            "--exclude-inbound-ports",
            &cli.exclude_inbound_ports,
            &mut problems,
        );
        let exclude_outbound_cidrs = cidrs(
            "--exclude-outbound-cidrs",
            &cli.exclude_outbound_cidrs,
            &mut problems,
        );
        let exclude_inbound_cidrs = cidrs(
            "--exclude-inbound-cidrs",
            &cli.exclude_inbound_cidrs,
            &mut problems,
        );
        if cli.outbound_port == cli.inbound_port {
            problems.push(format!(
                "--outbound-port and --inbound-port are both {}: the proxy needs two distinct listeners",
                cli.inbound_port
            ));
        }
        if cli.mode == Mode::Ebpf
            && cli.cgroup.is_none()
            && !(cli.cleanup && cli.pod_name.is_some())
        {
            problems.push(
                "--mode ebpf needs --cgroup PATH (the pod's cgroup v2 directory)".to_string(),
            );
        }
        if let Some(name) = &cli.pod_name {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                problems.push(format!(
                    "--pod-name: `{name}` cannot name a directory under /sys/fs/bpf/weft"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            mode: cli.mode,
            backend: cli.iptables_backend,
            action: if cli.cleanup {
                Action::Cleanup
            } else {
                Action::Install
            },
            dry_run: cli.dry_run,
            capture: Capture {
                proxy_uid: cli.proxy_uid,
                proxy_gid: cli.proxy_gid,
                outbound_port: cli.outbound_port,
                inbound_port: cli.inbound_port,
                admin_port: cli.admin_port,
                metrics_port: cli.metrics_port,
                tunnel_port: cli.tunnel_port,
                exclude_outbound_ports,
                exclude_inbound_ports,
                exclude_outbound_cidrs,
                exclude_inbound_cidrs,
            },
            ebpf: EbpfOptions {
                cgroup: cli.cgroup,
                pod_name: cli.pod_name,
                sockmap: cli.sockmap && !cli.no_sockmap,
            },
        })
    }
}

/// The value of a switch given through its environment variable: empty (as
/// Kubernetes leaves an unset value), `0`, `false`, `no`, `off` are false; `1`,
/// `true`, `yes`, `on` true (case-insensitive).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err("expected true or false (also 1/0, yes/no, on/off)".to_string()),
    }
}

/// List items with surrounding whitespace trimmed; empty items (as in an empty
/// environment variable, or `80,,443`) are ignored.
fn items(raw: &[String]) -> impl Iterator<Item = &str> {
    raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn ports(flag: &str, raw: &[String], problems: &mut Vec<String>) -> Vec<u16> {
    let mut out = Vec::new();
    for item in items(raw) {
        match parse_port(item) {
            Ok(p) if !out.contains(&p) => out.push(p),
            Ok(_) => {}
            Err(e) => problems.push(format!("{flag}: {e}")),
        }
    }
    out
}

fn cidrs(flag: &str, raw: &[String], problems: &mut Vec<String>) -> Vec<Cidr> {
    let mut out = Vec::new();
    for item in items(raw) {
        match item.parse::<Cidr>() {
            Ok(c) if !out.contains(&c) => out.push(c),
            Ok(_) => {}
            Err(e) => problems.push(format!("{flag}: {e}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("weft-init").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.mode, Mode::Iptables);
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.action, Action::Install);
        assert!(!c.dry_run);
        assert_eq!(c.capture, Capture::default());
        assert_eq!(c.capture.proxy_uid, 1337);
        assert_eq!(c.capture.outbound_port, 15001);
        assert_eq!(c.capture.inbound_port, 15006);
        assert_eq!(c.capture.admin_port, 15000);
        assert_eq!(c.capture.metrics_port, 15020);
        assert_eq!(c.capture.tunnel_port, 15008);
    }

    #[test]
    fn all_flags() {
        let c = parse(&[
            "--mode",
            "auto",
            "--proxy-uid",
            "1500",
            "--proxy-gid",
            "1501",
            "--outbound-port",
            "16001",
            "--inbound-port",
            "16006",
            "--admin-port",
            "16000",
            "--metrics-port",
            "16020",
            "--tunnel-port",
            "16008",
            "--exclude-outbound-ports",
            "22, 3306,22",
            "--exclude-inbound-ports",
            "8443",
            "--exclude-inbound-ports",
            "9090",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--exclude-inbound-cidrs",
            "192.168.0.0/16",
            "--iptables-backend",
            "legacy",
            "--dry-run",
            "--cleanup",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.backend, BackendChoice::Legacy);
        assert_eq!(c.action, Action::Cleanup);
        assert!(c.dry_run);
        let k = &c.capture;
        assert_eq!((k.proxy_uid, k.proxy_gid), (1500, Some(1501)));
        assert_eq!(
            (
                k.outbound_port,
                k.inbound_port,
                k.admin_port,
                k.metrics_port,
                k.tunnel_port
            ),
            (16001, 16006, 16000, 16020, 16008)
        );
        assert_eq!(k.exclude_outbound_ports, vec![22, 3306]);
        assert_eq!(k.exclude_inbound_ports, vec![8443, 9090]);
        let strs = |v: &[Cidr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            strs(&k.exclude_outbound_cidrs),
            ["10.96.0.0/12", "fd00::/8"]
        );
        assert_eq!(strs(&k.exclude_inbound_cidrs), ["192.168.0.0/16"]);
    }

    #[test]
    fn empty_lists_mean_none() {
        let c = parse(&[
            "--exclude-outbound-ports",
            "",
            "--exclude-inbound-cidrs",
            " , ",
        ])
        .unwrap();
        assert!(c.capture.exclude_outbound_ports.is_empty());
        assert!(c.capture.exclude_inbound_cidrs.is_empty());
    }

    #[test]
    fn every_bad_list_value_is_reported_at_once() {
        let err = parse(&[
            "--exclude-outbound-ports",
            "80,http,70000",
            "--exclude-inbound-ports",
            "0",
            "--exclude-outbound-cidrs",
            "10.0.0.0/33",
            "--exclude-inbound-cidrs",
            "nonsense",
        ])
        .unwrap_err();
        for needle in [
            "--exclude-outbound-ports: `http` is not a TCP port",
            "--exclude-outbound-ports: `70000` is not a TCP port",
            "--exclude-inbound-ports: `0` is not a TCP port",
            "--exclude-outbound-cidrs: `10.0.0.0/33` has an invalid prefix length",
            "--exclude-inbound-cidrs: `nonsense` is not a CIDR",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn bad_scalars_are_flag_errors_naming_the_value() {
        for (args, value) in [
            (&["--proxy-uid", "99999999999"][..], "99999999999"),
            (&["--proxy-uid", "4294967295"][..], "4294967295"),
            (&["--proxy-gid", "-1"][..], "-1"),
            (&["--outbound-port", "0"][..], "0"),
            (&["--inbound-port", "65536"][..], "65536"),
            (&["--mode", "nft"][..], "nft"),
            (&["--iptables-backend", "xt"][..], "xt"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(value), "{args:?}: {err}");
        }
    }

    #[test]
    fn switch_values() {
        for t in ["1", "true", "TRUE", "yes", "on"] {
            assert_eq!(parse_switch(t), Ok(true), "{t}");
        }
        for f in ["", "0", "false", "No", "off"] {
            assert_eq!(parse_switch(f), Ok(false), "{f}");
        }
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn ebpf_flags() {
        let c = parse(&[
            "--mode",
            "ebpf",
            "--cgroup",
            "/sys/fs/cgroup/unified/pod-a",
            "--pod-name",
            "a",
            "--no-sockmap",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Ebpf);
        assert_eq!(
            c.ebpf.cgroup.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/unified/pod-a"))
        );
        assert_eq!(c.ebpf.pod_name.as_deref(), Some("a"));
        assert!(!c.ebpf.sockmap);
        assert!(!parse(&[]).unwrap().ebpf.sockmap, "sk_msg is opt-in");
        assert!(parse(&["--sockmap"]).unwrap().ebpf.sockmap);
        assert!(parse(&["--sockmap", "--no-sockmap"]).is_err());
    }

    #[test]
    fn ebpf_mode_needs_a_cgroup() {
        let err = parse(&["--mode", "ebpf"]).unwrap_err();
        assert!(err.contains("--mode ebpf needs --cgroup PATH"), "{err}");
        // Cleanup can find the pins by pod name alone.
        assert!(parse(&["--mode", "ebpf", "--cleanup", "--pod-name", "p"]).is_ok());
        let err = parse(&["--mode", "ebpf", "--cgroup", "/x", "--pod-name", "a/b"]).unwrap_err();
        assert!(err.contains("--pod-name: `a/b`"), "{err}");
    }

    #[test]
    fn same_inbound_and_outbound_port_is_rejected() {
        let err = parse(&["--outbound-port", "15006"]).unwrap_err();
        assert!(err.contains("both 15006"), "{err}");
    }
}
