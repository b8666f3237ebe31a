//! `cargo xtask setup-ebpf` and `cargo xtask build-ebpf`.
//!
//! - `setup-ebpf` installs what building the eBPF programs needs, skipping what is
//!   there (idempotent; `.ci/run` calls it): the nightly pinned in
//!   `ebpf/programs/rust-toolchain.toml` with rust-src, the Debian LLVM of the same
//!   major as that nightly's (`llvm-NN-dev`), bpf-linker built against it, and
//!   bpftool (the tests read the pinned maps and `bpftool cgroup tree` with it).
//! - `build-ebpf` builds the object (release, BTF) on its own and prints its path;
//!   weft-ebpf's build script runs the same build and embeds the result.
//!
//! Every child runs without `RUSTUP_TOOLCHAIN`: a `cargo xtask` started through
//! stable passes it down, and an inner cargo would then ignore rust-toolchain.toml.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context as _};

use crate::system::{self, Tool};
use crate::{run, workspace_root};

/// bpf-linker's version, pinned for reproducible object files.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn programs_dir() -> PathBuf {
    workspace_root().join("ebpf").join("programs")
}

/// A command with the outer toolchain selection removed.
fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "CARGO",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn output(mut cmd: Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// The channel pinned in `ebpf/programs/rust-toolchain.toml`.
pub fn pinned_channel() -> anyhow::Result<String> {
    let path = programs_dir().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|l| l.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}

/// `rustc -vV` of the pinned toolchain, if installed.
fn rustc_version(channel: &str) -> Option<String> {
    let mut cmd = clean("rustup");
    cmd.args(["run", channel, "rustc", "-vV"])
        .env("RUSTUP_AUTO_INSTALL", "0");
    output(cmd)
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The LLVM major version in `rustc -vV` output.
fn llvm_major(version: &str) -> anyhow::Result<u32> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no LLVM version in rustc -vV:\n{version}"))
}

fn has_rust_src(channel: &str) -> bool {
    let mut cmd = clean("rustup");
    cmd.args(["run", channel, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0");
    output(cmd)
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Whether the bpf-linker on PATH links LLVM `major`.
fn bpf_linker_links(major: u32) -> bool {
    let Ok(o) = output({
        let mut c = clean("sh");
        c.args(["-c", "ldd \"$(command -v bpf-linker)\""]);
        c
    }) else {
        return false;
    };
    o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains(&format!("libLLVM.so.{major}"))
}

/// Installs the eBPF toolchain, skipping what is there.
pub fn setup() -> anyhow::Result<()> {
    let channel = pinned_channel()?;
    if rustc_version(&channel).is_none() {
        eprintln!("xtask: installing toolchain {channel} (with rust-src)");
        let mut cmd = clean("rustup");
        cmd.args(["toolchain", "install", &channel, "--profile", "minimal"])
            .args(["--component", "rust-src"]);
        run(cmd)?;
    } else if !has_rust_src(&channel) {
        eprintln!("xtask: adding rust-src to {channel}");
        let mut cmd = clean("rustup");
        cmd.args(["component", "add", "rust-src", "--toolchain", &channel]);
        run(cmd)?;
    } else {
        eprintln!("xtask: {channel} with rust-src: present");
    }
    let version = rustc_version(&channel)
        .with_context(|| format!("toolchain {channel} still not usable after installing"))?;
    let major = llvm_major(&version)?;

    let llvm_config = format!("/usr/lib/llvm-{major}/bin/llvm-config");
    let llvm_dev = format!("llvm-{major}-dev");
    // `ensure` checks programs as files on PATH, so an absolute path works; `Tool`
    // holds `&'static str`, hence the (one-shot process, tiny) leaks.
    let tools = [
        Tool {
            program: Box::leak(llvm_config.clone().into_boxed_str()),
            package: Box::leak(llvm_dev.into_boxed_str()),
        },
        Tool {
            program: "bpftool",
            package: "bpftool",
        },
    ];
    if std::path::Path::new(&llvm_config).is_file() && on_path("bpftool") {
        eprintln!("xtask: llvm-{major}-dev and bpftool: present");
    } else {
        system::ensure(&tools)?;
    }

    if on_path("bpf-linker") && bpf_linker_links(major) {
        eprintln!("xtask: bpf-linker (LLVM {major}): present");
    } else {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes)"
        );
        let mut cmd = clean("cargo");
        cmd.args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}"));
        run(cmd)?;
        if !bpf_linker_links(major) {
            bail!("bpf-linker was installed but does not link libLLVM.so.{major}; is ~/.cargo/bin on PATH?");
        }
    }
    eprintln!("xtask: eBPF toolchain ready ({channel}, LLVM {major}, bpf-linker, bpftool)");
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// Builds the programs' object (release, BTF) and prints where it is.
pub fn build() -> anyhow::Result<()> {
    let channel = pinned_channel()?;
    if rustc_version(&channel).is_none() || !has_rust_src(&channel) || !on_path("bpf-linker") {
        bail!("the eBPF toolchain is incomplete ({channel} with rust-src, bpf-linker); run `cargo xtask setup-ebpf`");
    }
    let mut cmd = clean("rustup");
    cmd.args(["run", &channel, "cargo", "build", "--release"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .current_dir(programs_dir());
    run(cmd)?;
    let object = programs_dir().join("target/bpfel-unknown-none/release/weft-ebpf-programs");
    let len = std::fs::metadata(&object)
        .with_context(|| format!("no object at {}", object.display()))?
        .len();
    println!("{}", object.display());
    eprintln!("xtask: eBPF object built ({len} bytes, with BTF)");
    Ok(())
}
