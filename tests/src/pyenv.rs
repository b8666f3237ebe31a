//! A Python virtual environment with grpcio, opentelemetry-proto and Selenium from
//! PyPI, for the tests whose apps are gRPC's own Python implementation (the xDS
//! test's proxyless client and its replicas), the OTLP test's receiver
//! (`tools/otlpkit.py`: the OTLP protobuf types and gRPC service) and the mesh
//! page's browser driver (`tools/meshpage.py`, Debian's Chromium and chromedriver). Made once under the target directory (`target/e2e-venv`) from the
//! system python3 and reused by later runs; a lock file keeps two test processes
//! from making it at once. Without `python3 -m venv` (Debian's python3-venv, which
//! `cargo xtask test` installs) or PyPI, it fails loudly: a tier-2 test never skips.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The grpcio the tests run: pinned, so that a run is the same on every machine.
pub const GRPCIO: &str = "grpcio==1.85.3";

/// The OTLP receiver's packages, pinned likewise: the OTLP protobuf types and
/// gRPC stubs (opentelemetry-proto 1.45.2 needs protobuf 5 or later; 7.36.2 is
/// the one pip picks with it).
pub const OTLP: &[&str] = &["opentelemetry-proto==1.45.2", "protobuf==7.36.2"];

/// Selenium's Python bindings, pinned likewise (4.50.0: the newest whose
/// dependencies resolve from the PyPI mirror here; it drives Debian's
/// chromedriver, given by path, so Selenium Manager downloads nothing).
pub const SELENIUM: &str = "selenium==4.50.0";

/// Everything the venv holds, one venv for all the tests.
fn packages() -> Vec<&'static str> {
    let mut all = vec![GRPCIO];
    all.extend_from_slice(OTLP);
    all.push(SELENIUM);
    all
}

/// What a venv made with [`packages`] can import.
const IMPORTS: &str = "import grpc; from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc; from selenium import webdriver";

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
    python()
}

/// The venv's python with opentelemetry-proto (and grpcio) importable, making the
/// venv first if needed.
pub fn otlp_python() -> Result<PathBuf> {
    python()
}

/// The venv's python with Selenium importable, making the venv first if needed.
pub fn selenium_python() -> Result<PathBuf> {
    python()
}

/// The venv's python with every one of [`packages`] importable.
fn python() -> Result<PathBuf> {
    let packages = packages();
    let wanted = packages.join(" ");
    let dir = venv_dir()?;
    let python = dir.join("bin/python3");
    let stamp = dir.join(".packages");
    let lock_path = dir.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the venv")?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && imports_all(&python) {
        return Ok(python);
    }
    eprintln!("pyenv: making {} with {wanted}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new(crate::python3())
        .arg("-m")
        .arg("venv")
        .arg(&dir))
    .context(
        "python3 -m venv (on Debian: apt-get install python3-venv, or run `cargo xtask test`)",
    )?;
    run(Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
        ])
        .args(&packages))
    .with_context(|| format!("pip install {wanted} from PyPI"))?;
    if !imports_all(&python) {
        bail!(
            "{wanted} installed in {} but `{IMPORTS}` fails",
            dir.display()
        );
    }
    std::fs::write(&stamp, &wanted).context("write the venv's stamp")?;
    Ok(python)
}

fn imports_all(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", IMPORTS])
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
