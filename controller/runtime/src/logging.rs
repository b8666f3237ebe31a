//! The binaries' logs: `tracing` events to stderr, filtered by the `--log` flag
//! (EnvFilter syntax), in colour only when stderr is a terminal.

/// Installs the global subscriber with `filter` (e.g. `info,weft_proxy=debug`).
/// Call once, before anything logs.
pub fn init(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}
