//! A Python virtual environment with grpcio from PyPI, for the tests whose apps are
//! gRPC's own Python implementation (the xDS test's proxyless client and its
//! replicas). Made once under the target directory (`target/e2e-venv`) from the
//! system python3 and reused by later runs; a lock file keeps two test processes
//! from making it at once. Without `python3 -m venv` (Debian's python3-venv, which
//! `cargo xtask test` installs) or PyPI, it fails loudly: a tier-2 test never skips.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The grpcio the tests run: pinned, so that a run is the same on every machine.
pub const GRPCIO: &str = "grpcio==1.85.3";

/// The venv's directory: `target/e2e-venv` (the test executable is
/// `target/<profile>/deps/<test>`).
fn venv_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test executable is not under target/<profile>/deps")?;
    Ok(target.join("e2e-venv"))
}

/// The venv's python with grpcio importable, making the venv first if needed.
pub fn grpc_python() -> Result<PathBuf> {
    let dir = venv_dir()?;
    let python = dir.join("bin/python3");
    let stamp = dir.join(".grpcio");
    let lock_path = dir.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the venv")?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == GRPCIO) && imports_grpc(&python) {
        return Ok(python);
    }
    eprintln!("pyenv: making {} with {GRPCIO}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new(crate::python3())
        .arg("-m")
        .arg("venv")
        .arg(&dir))
    .context(
        "python3 -m venv (on Debian: apt-get install python3-venv, or run `cargo xtask test`)",
    )?;
    run(Command::new(dir.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        GRPCIO,
    ]))
    .context("pip install grpcio from PyPI")?;
    if !imports_grpc(&python) {
        bail!(
            "grpcio installed in {} but `import grpc` fails",
            dir.display()
        );
    }
    std::fs::write(&stamp, GRPCIO).context("write the venv's stamp")?;
    Ok(python)
}

fn imports_grpc(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
