//! The binaries' logs: `tracing` events to stderr, filtered by the `--log` flag, in
//! colour only when stderr is a terminal.
//!
//! The filter is a comma-separated list of `target=level` directives and at most one
//! bare level, the default (`info,weft_proxy=debug`): tracing-subscriber's `Targets`,
//! the static part of `EnvFilter`'s syntax. `EnvFilter`'s span and field directives
//! are left out on purpose: they pull in a regex engine, about 0.44 MB of code that
//! every sidecar would map for a feature its logs never used.

use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Parses a `--log` filter (see the module docs); an empty one logs nothing.
fn parse_filter(filter: &str) -> Result<Targets, ParseError> {
    filter.parse()
}

/// Installs the global subscriber with `filter` (e.g. `info,weft_proxy=debug`).
/// Call once, before anything logs.
pub fn init(filter: &str) -> Result<(), ParseError> {
    let filter = parse_filter(filter)?;
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tracing::level_filters::LevelFilter;
    use tracing::Level;

    use super::parse_filter;

    #[test]
    fn a_default_level_and_per_target_levels_parse() {
        let f = parse_filter("warn,weft_proxy=debug,weft_proxy::l7=trace").unwrap();
        assert!(f.would_enable("weft_proxy::conntable", &Level::DEBUG));
        assert!(!f.would_enable("weft_proxy::conntable", &Level::TRACE));
        assert!(f.would_enable("weft_proxy::l7::serve", &Level::TRACE));
        assert!(f.would_enable("h2::codec", &Level::WARN));
        assert!(!f.would_enable("h2::codec", &Level::INFO));
        assert_eq!(f.default_level(), Some(LevelFilter::WARN));
    }

    #[test]
    fn a_bad_level_is_an_error() {
        assert!(parse_filter("info,weft_proxy=loud").is_err());
    }
}
