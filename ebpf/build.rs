//! Builds the kernel programs (`ebpf/programs`) and embeds the object.
//!
//! The object is built with the nightly pinned in `programs/rust-toolchain.toml`
//! (`rustup run <channel> cargo build --release`, target and `-Z build-std=core` from
//! `programs/.cargo/config.toml`, BTF through bpf-linker) into `programs/target`, the
//! same place `cargo xtask build-ebpf` builds it, then copied to `$OUT_DIR`.
//!
//! - `WEFT_EBPF_OBJECT=PATH`: embed that object instead of building.
//! - Without the toolchain (the pinned nightly with rust-src, bpf-linker), the crate
//!   still builds, with an empty object and a warning; the loader then refuses with
//!   the reason (so `weft-init --mode ebpf` fails clearly and `--mode auto` picks
//!   iptables). `cargo xtask setup-ebpf` installs the toolchain.
//! - `WEFT_EBPF_REQUIRED=1` (CI sets it): a missing toolchain is an error too.
//! - With the toolchain there, a failing build of the programs is always an error.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("weft-ebpf.o");
    let programs = manifest.join("programs");
    for p in [
        "programs/src",
        "programs/Cargo.toml",
        "programs/Cargo.lock",
        "programs/rust-toolchain.toml",
        "programs/.cargo/config.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    for v in ["WEFT_EBPF_OBJECT", "WEFT_EBPF_REQUIRED", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let required = env::var("WEFT_EBPF_REQUIRED").is_ok_and(|v| v == "1" || v == "true");

    let result = match env::var_os("WEFT_EBPF_OBJECT") {
        Some(path) => fs::copy(&path, &out).map(|_| ()).map_err(|e| {
            Failure::Failed(format!(
                "WEFT_EBPF_OBJECT={}: {e}",
                Path::new(&path).display()
            ))
        }),
        None => build(&programs, &out),
    };
    match result {
        Ok(()) => println!("cargo:rustc-env=WEFT_EBPF_MISSING="),
        Err(Failure::Failed(reason)) => {
            panic!("weft-ebpf: building the eBPF programs failed: {reason}")
        }
        Err(Failure::Missing(reason)) if required => {
            panic!("weft-ebpf: cannot build the eBPF programs (WEFT_EBPF_REQUIRED is set): {reason}; run `cargo xtask setup-ebpf`")
        }
        Err(Failure::Missing(reason)) => {
            println!(
                "cargo:warning=weft-ebpf: building without the eBPF programs ({reason}); \
                 weft-init --mode ebpf will refuse. Run `cargo xtask setup-ebpf` to install the toolchain."
            );
            fs::write(&out, b"").expect("write empty object");
            println!(
                "cargo:rustc-env=WEFT_EBPF_MISSING={}",
                reason.replace('\n', " ")
            );
        }
    }
}

/// Why there is no object.
enum Failure {
    /// The toolchain is not installed: build without eBPF (unless required).
    Missing(String),
    /// The toolchain is there and the build failed: always an error.
    Failed(String),
}

/// The channel pinned in `programs/rust-toolchain.toml`.
fn pinned_channel(programs: &Path) -> Result<String, Failure> {
    let text = fs::read_to_string(programs.join("rust-toolchain.toml"))
        .map_err(|e| Failure::Failed(format!("reading rust-toolchain.toml: {e}")))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|l| l.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| Failure::Failed("no channel in rust-toolchain.toml".to_string()))
}

fn build(programs: &Path, out: &Path) -> Result<(), Failure> {
    let channel = pinned_channel(programs)?;
    let on_path = |bin: &str| {
        env::var_os("PATH")
            .map(|p| env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false)
    };
    if !on_path("bpf-linker") {
        return Err(Failure::Missing("bpf-linker not found on PATH".into()));
    }
    if !on_path("rustup") {
        return Err(Failure::Missing("rustup not found on PATH".into()));
    }
    let sysroot = Command::new("rustup")
        .args(["run", &channel, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        // Never download a toolchain from a build script.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|e| Failure::Missing(format!("running rustup: {e}")))?;
    if !sysroot.status.success() {
        return Err(Failure::Missing(format!(
            "toolchain {channel} is not installed"
        )));
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Err(Failure::Missing(format!(
            "rust-src is not installed for {channel}"
        )));
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &channel, "cargo", "build", "--release"])
        .current_dir(programs)
        .env("RUSTUP_AUTO_INSTALL", "0");
    // The outer build's toolchain and flags must not leak into the inner one (a
    // RUSTUP_TOOLCHAIN from a stable `cargo` would override rust-toolchain.toml).
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .map_err(|e| Failure::Failed(format!("running {cmd:?}: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Failure::Failed(format!(
            "`cargo build --release` in {} failed:\n{}",
            programs.display(),
            tail.join("\n")
        )));
    }
    let object = programs.join("target/bpfel-unknown-none/release/weft-ebpf-programs");
    fs::copy(&object, out)
        .map(|_| ())
        .map_err(|e| Failure::Failed(format!("copying {}: {e}", object.display())))
}
