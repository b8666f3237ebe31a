//! `weftctl`: the user's CLI for weft.
//!
//! - `weftctl up -f FILE [--mode iptables|ebpf]` runs a local mesh in the
//!   foreground: pods as network namespaces on one bridge (in eBPF mode each also a
//!   cgroup v2), the controller, and in every pod weft-init, weft-proxy and the
//!   workload ([`up`]).
//! - `weftctl down` stops it, or cleans up after one that crashed ([`down`]).
//! - `weftctl status`, `weftctl conns POD` show what the controller serves and
//!   what a pod's proxy carries ([`inspect`]).
//! - `weftctl exec POD -- CMD` runs a command inside a pod ([`exec`]).
//! - `weftctl top`, `weftctl graph`, `weftctl conns POD --watch`: live views from
//!   every proxy's metrics and connections ([`observe`], [`edges`]).
//! - `weftctl dashboard`: the controller's mesh page, where it is and what it
//!   shows now ([`dashboard`]).
//!
//! The commands find the running mesh through a state file ([`state`]). Pods,
//! processes in them and sidecars come from weft-localmesh — one
//! implementation for the local mesh and the tier-2 tests.

mod dashboard;
mod down;
mod edges;
mod exec;
mod inspect;
mod observe;
mod podhttp;
mod render;
mod state;
mod table;
mod up;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// weft's CLI: run a local mesh and look inside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Where the running local mesh is recorded.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = state::DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local mesh of a mesh file in the foreground; Ctrl-C tears it down.
    Up {
        /// The mesh file (services and workloads).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// How pods capture traffic: iptables, or eBPF (each pod also a cgroup v2;
        /// needs the eBPF toolchain at build time, see `cargo xtask setup-ebpf`).
        #[arg(long, value_enum, default_value = "iptables")]
        mode: up::CaptureMode,
    },
    /// Stop the local mesh, or clean up after one that crashed.
    Down,
    /// List the pods, the services and their endpoints.
    Status,
    /// Show a pod's proxy connections (live and recently closed).
    Conns {
        /// The pod, e.g. `frontend-0`.
        pod: String,
        /// The proxy's JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table every --interval until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Per service edge: request rate, success rate, p50/p99 latency (like `linkerd viz stat`).
    Top {
        /// The measuring window; the view refreshes this often.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one window and exit.
        #[arg(long)]
        once: bool,
    },
    /// The service topology as Graphviz DOT (or SVG with --svg and Graphviz installed).
    Graph {
        /// Render to this SVG file with `dot`.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// The mesh page: its address, how to open it, and what it shows now.
    Dashboard,
    /// Run a command inside a pod (its network namespace, its /etc/hosts).
    Exec {
        /// The pod, e.g. `frontend-0`.
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. }) {
        // `weftctl conns POD | head` should end quietly, like any Unix tool. `up`
        // keeps Rust's default (ignored), so a closed stdout cannot skip teardown.
        // SAFETY: setting a standard disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let dir = cli.state_dir;
    let result = match cli.command {
        Command::Up { file, mode } => up::run(&up::UpOptions {
            file,
            state_dir: dir,
            mode,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Down => down::run(&dir).map(|()| ExitCode::SUCCESS),
        Command::Status => inspect::status(&dir).map(|()| ExitCode::SUCCESS),
        Command::Conns {
            pod,
            json,
            watch,
            interval,
        } => if watch {
            observe::watch_conns(&dir, &pod, interval)
        } else {
            inspect::conns(&dir, &pod, json)
        }
        .map(|()| ExitCode::SUCCESS),
        Command::Top { interval, once } => {
            observe::top(&dir, interval, once).map(|()| ExitCode::SUCCESS)
        }
        Command::Graph { svg } => observe::graph(&dir, svg.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Dashboard => dashboard::run(&dir).map(|()| ExitCode::SUCCESS),
        Command::Exec { pod, command } => exec::run(&dir, &pod, &command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
