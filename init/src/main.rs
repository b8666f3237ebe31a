//! `weft-init`: installs (or removes) the pod's traffic capture; see the library docs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_init::{Cli, Config, System};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    // Bad flags exit 2, like the ones clap rejects itself; failures to act exit 1.
    let config = match Config::try_from(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weft-init: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-init: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    weft_init::run(config, &System::real(), &mut out)?;
    out.flush().context("cannot write output")?;
    Ok(())
}
