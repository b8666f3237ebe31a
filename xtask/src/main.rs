//! `cargo xtask`: weft's developer tasks, in Rust so they run wherever cargo does.
//!
//! - `cargo xtask test` — the whole suite: builds every binary, then runs tier 1
//!   (in-process, unprivileged) and tier 2 (end-to-end across network namespaces; needs
//!   root and fails loudly without it). `--tier1` runs only the unprivileged tier.
//! - `cargo xtask demo` — the local mesh of `examples/demo.yaml` with real traffic,
//!   what it shows, and a check that teardown left nothing behind ([`demo`]).
//! - `cargo xtask setup-ebpf` / `build-ebpf` — install the eBPF toolchain (skipping
//!   what is there) / build the eBPF object on its own ([`ebpf`]).
//! - `cargo xtask bench-discovery` — a benchmark: how long a mesh-file edit takes to
//!   reach 20 proxies ([`bench::discovery`]).
//! - `cargo xtask bench [--quick]` — a benchmark: weft against no proxy, nginx and
//!   haproxy, with a report and plots in target/bench/ ([`bench`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod ebpf;
mod interrupt;
mod leaks;
mod soak;
mod system;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build everything and run both test tiers.
    Test {
        /// Only the unprivileged in-process tests (no root, no namespaces).
        #[arg(long)]
        tier1: bool,
        /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Run the local mesh of examples/demo.yaml with traffic, show it, tear it down.
    Demo(demo::DemoArgs),
    /// Benchmark (not a test): mesh-file edit to every proxy's routes, 1,000 services,
    /// 20 proxies, in a throwaway network namespace (root).
    BenchDiscovery(bench::discovery::Options),
    /// Benchmark (not a test): direct vs weft (iptables, eBPF) vs nginx vs haproxy,
    /// two hops, HTTP/1.1, h2c and TCP; writes target/bench/ (root).
    Bench(bench::Options),
    /// Long runs CI does not do: `--cycles N` pod lifecycles under one controller
    /// with nothing left, `--minutes M` of steady load with the proxies' RSS and fd
    /// slopes (root).
    Soak(soak::SoakArgs),
    /// Install the eBPF toolchain: pinned nightly + rust-src, llvm-NN-dev, bpf-linker,
    /// bpftool (idempotent).
    SetupEbpf,
    /// Build the eBPF programs' object (release, BTF) and print its path.
    BuildEbpf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test { tier1, test_args } => test(tier1, &test_args),
        Task::Demo(args) => demo::demo(&args),
        Task::BenchDiscovery(opts) => bench::discovery::bench_discovery(&opts),
        Task::Bench(opts) => bench::bench(&opts),
        Task::Soak(args) => soak::soak(&args),
        Task::SetupEbpf => ebpf::setup(),
        Task::BuildEbpf => ebpf::build(),
    }
}

/// Makes weft-ebpf's build script fail, instead of building without the programs,
/// when the eBPF toolchain is missing.
const EBPF_REQUIRED_ENV: &str = "WEFT_EBPF_REQUIRED";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `cargo build` puts the binaries of `profile` ("debug", "release"): beside
/// xtask's own, which the same build made (the workspace builds for the host's
/// target triple, so that is `target/<triple>/<profile>`; see .cargo/config.toml).
fn bin_dir(profile: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|triple_dir| triple_dir.join(profile))
        .unwrap_or_else(|| workspace_root().join("target").join(profile))
}

/// Builds the release binaries as the images do (deploy/docker/): weft-proxy with
/// weft-init, and weft-controller on its own. One build of all three would unify
/// their dependencies' features, and the controller's (tracing's `log`, mio's
/// `log`, hyper-util's `tracing`, ...) would grow the sidecar's code by about
/// 0.5 MB over what ships. Returns where they are.
fn build_release_as_shipped() -> anyhow::Result<PathBuf> {
    for packages in [&["weft-proxy", "weft-init"][..], &["weft-controller"]] {
        let mut build = cargo();
        build.args(["build", "--release", "--bins"]);
        for p in packages {
            build.args(["-p", p]);
        }
        run(build)?;
    }
    Ok(bin_dir("release"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn test(tier1_only: bool, test_args: &[String]) -> anyhow::Result<()> {
    if !tier1_only {
        system::ensure(system::TIER2_TOOLS)?;
        system::ensure_python(system::TIER2_PYTHON_MODULES)?;
        // eBPF mode's tier-2 tests need the programs embedded: install the
        // toolchain (skipping what is present) and refuse to build without it.
        ebpf::setup()?;
        std::env::set_var(EBPF_REQUIRED_ENV, "1");
    }
    // Tier-2 tests run the real binaries; build them first so the tests never pick up
    // stale ones.
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run(build)?;

    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    if tier1_only {
        tests.args(["--exclude", "weft-e2e"]);
    } else if !system::is_root() {
        bail!(
            "tier-2 tests need root (network namespaces, iptables); run as root, or pass --tier1"
        );
    }
    if !test_args.is_empty() {
        tests.arg("--").args(test_args);
    }
    if tier1_only {
        return run(tests);
    }
    let before = leaks::HostState::read()?;
    let result = run(tests);
    // Checked even when tests failed: a failing test must clean up too.
    let leaked = leaks::HostState::read()?.leaked_since(&before);
    if !leaked.is_empty() {
        bail!("the tests left behind:\n  {}", leaked.join("\n  "));
    }
    eprintln!("xtask: no network namespace, host interface, weft iptables chain, eBPF pin or program, or pod cgroup left behind");
    result
}
