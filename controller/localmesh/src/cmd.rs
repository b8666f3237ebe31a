//! Running setup commands (`ip ...`) from the root namespace, and the root check.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Fails with a clear message unless the effective uid is 0. Tier-2 tests need
/// root and must fail loudly without it, never skip.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "weft tier-2 end-to-end tests need root (network namespaces, veths, setuid); \
             run them as root, e.g. `sudo -E cargo test -p weft-e2e`"
        );
    }
    Ok(())
}

/// The `ip` binary of iproute2 (absolute, so a trimmed PATH does not matter).
pub fn ip_bin() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip ARGS...` and fails with its stderr if it exits non-zero.
pub fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_checked(ip_bin(), args)
}

/// Runs `program ARGS...` in the test process's own namespaces, stdin closed;
/// returns stdout, or an error with the command line and its stderr.
pub fn run_checked<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = || {
        let mut s = program.to_owned();
        for a in &args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", shown()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
