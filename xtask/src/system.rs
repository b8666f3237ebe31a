//! System tools the tier-2 tests and the local mesh run for real, and installing them
//! on Debian when missing (as root), so a fresh machine needs no manual step.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

/// A program the suite runs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// What tier-2 tests need: namespaces and veth (iproute2), both iptables backends,
/// and the unmodified applications.
pub const TIER2_TOOLS: &[Tool] = &[
    tool("ip", "iproute2"),
    tool("iptables-nft", "iptables"),
    tool("iptables-legacy", "iptables"),
    tool("ip6tables-nft", "iptables"),
    tool("curl", "curl"),
    tool("nc", "netcat-openbsd"),
    tool("python3", "python3"),
    tool("h2load", "nghttp2-client"),
    tool("prometheus", "prometheus"),
    tool("promtool", "prometheus"),
    // The mTLS tests: a capture on the node's bridge, and a handshake by hand.
    tool("tcpdump", "tcpdump"),
    tool("openssl", "openssl"),
    // The mesh page in a real browser (tests/tests/mesh_page.rs): Debian's
    // headless Chromium and the chromedriver Selenium drives it through.
    tool("chromium", "chromium"),
    tool("chromedriver", "chromium-driver"),
];

/// Python modules the tier-2 tests need from Debian (`program` is the module):
/// `ensurepip` makes the venv into which the xDS test installs grpcio from PyPI
/// (`weft_e2e::pyenv`); Debian ships it apart from python3.
pub const TIER2_PYTHON_MODULES: &[Tool] = &[tool("ensurepip", "python3-venv")];

/// What `cargo xtask bench` runs besides weft: namespaces and capture, the proxies it
/// compares weft with, iperf3, `taskset` for pinning, and what building oha (the
/// HTTP load generator, from crates.io: see `bench::load`) needs. Debian's
/// policy-rc.d keeps the packages' own services from starting in containers; the
/// benchmark runs its own instances, with its own configuration, inside its
/// namespaces.
pub const BENCH_TOOLS: &[Tool] = &[
    tool("ip", "iproute2"),
    tool("iptables-nft", "iptables"),
    tool("ip6tables-nft", "iptables"),
    tool("taskset", "util-linux"),
    tool("setpriv", "util-linux"),
    tool("nginx", "nginx"),
    // Not a program: an absolute path is checked as it is (see `on_path`).
    tool(
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    tool("haproxy", "haproxy"),
    tool("iperf3", "iperf3"),
    // Building oha (cargo install, native-tls).
    tool("pkg-config", "pkg-config"),
    tool("/usr/include/openssl/ssl.h", "libssl-dev"),
];

/// Whether `program` is in PATH (or /usr/sbin, /sbin); an absolute path is checked
/// as it is, since joining it to a directory yields itself.
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // /proc/self/status carries the real uid; no libc dependency for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Makes sure every tool is present: installs missing packages with apt on Debian as
/// root, and otherwise fails naming exactly what is missing.
pub fn ensure(tools: &[Tool]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| !on_path(t.program))
        .map(|t| t.package)
        .collect();
    install(missing)
}

/// Makes sure the system python3 can import every module of `modules` (a
/// [`Tool`] whose `program` is the module), installing packages as [`ensure`] does.
pub fn ensure_python(modules: &[Tool]) -> anyhow::Result<()> {
    let missing = modules
        .iter()
        .filter(|m| {
            !Command::new("/usr/bin/python3")
                .args(["-c", &format!("import {}", m.program)])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|m| m.package)
        .collect();
    install(missing)
}

/// Installs `missing` packages with apt on Debian as root; otherwise fails naming them.
fn install(mut missing: Vec<&str>) -> anyhow::Result<()> {
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !(is_root() && Path::new("/usr/bin/apt-get").exists()) {
        bail!(
            "missing system packages: {} (install them, e.g. `apt-get install {}`, or run as root on Debian and xtask installs them)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed: {status}", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    // Packages such as prometheus, nginx and haproxy start their system service on
    // install, listening in the host's network namespace: the network-safety rule
    // forbids that, so services stay down while we install (invoke-rc.d asks this
    // policy script; 101 = "action forbidden").
    let _policy = ServicesHeldDown::new()?;
    apt(&install)
}

/// `/usr/sbin/policy-rc.d` answering 101 while it lives, unless one exists already
/// (then the machine's own policy stands and is left untouched).
struct ServicesHeldDown {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl ServicesHeldDown {
    fn new() -> anyhow::Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(ServicesHeldDown { created: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by cargo xtask while installing packages\nexit 101\n",
        )
        .with_context(|| format!("write {POLICY_RC_D}"))?;
        std::fs::set_permissions(
            POLICY_RC_D,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(ServicesHeldDown { created: true })
    }
}

impl Drop for ServicesHeldDown {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("xtask: remove {POLICY_RC_D}: {e}");
            }
        }
    }
}
