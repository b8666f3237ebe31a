//! `weft-controller`: flags, logging, listeners and signal handling. Everything else
//! lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use weft_controller::{Controller, Options};

/// weft's control plane: serves the mesh file's services to the proxies.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The YAML mesh file (watched and reloaded on change).
    #[arg(long, env = "WEFT_CONFIG")]
    config: PathBuf,
    /// Discovery API (gRPC) listen address.
    #[arg(long, env = "WEFT_GRPC_LISTEN", default_value = "0.0.0.0:15010")]
    grpc_listen: SocketAddr,
    /// HTTP API listen address (/v1/services, /v1/status, /metrics, /ready, /live).
    #[arg(long, env = "WEFT_HTTP_LISTEN", default_value = "0.0.0.0:15014")]
    http_listen: SocketAddr,
    /// How often the mesh file is checked for changes.
    #[arg(long, env = "WEFT_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weft-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("bad --log filter {:?}", args.log))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        let options = Options {
            config: args.config,
            poll_interval: args.poll_interval,
        };
        let controller = Controller::load(&options).await?;
        let grpc = TcpListener::bind(args.grpc_listen)
            .await
            .with_context(|| format!("binding {}", args.grpc_listen))?;
        let http = TcpListener::bind(args.http_listen)
            .await
            .with_context(|| format!("binding {}", args.http_listen))?;
        controller.serve(grpc, http, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; shutdown only by kill");
            std::future::pending::<()>().await
        }
    }
}
