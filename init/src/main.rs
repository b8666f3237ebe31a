//! `weft-init`: installs (or removes) the pod's traffic capture; see the library docs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use weft_init::{Cli, Config, System};

fn main() -> ExitCode {
    init_logging();
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

/// Logs to stderr, filtered by `WEFT_LOG` (`target=level` directives and a default
/// level, e.g. `info,weft_init=debug`); `warn` when it is unset or does not parse.
fn init_logging() {
    let filter = std::env::var("WEFT_LOG")
        .ok()
        .and_then(|f| f.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::WARN));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

fn run(config: &Config) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    weft_init::run(config, &System::real(), &mut out)?;
    out.flush().context("cannot write output")?;
    Ok(())
}
