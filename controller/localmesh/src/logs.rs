//! Tails of captured process logs, for a failing test's stderr.

use std::fmt::Write as _;
use std::path::Path;

/// Lines of each log shown when a test fails.
pub const TAIL_LINES: usize = 50;

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    if n == 0 {
        return "";
    }
    match trimmed.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// A block for one process: a header naming it, then the last [`TAIL_LINES`]
/// lines of its log file.
pub fn report(pod: &str, name: &str, pid: u32, argv: &str, log: &Path) -> String {
    let text = match std::fs::read(log) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "----- {pod}/{name} (pid {pid}) `{argv}`: last {TAIL_LINES} lines of {} -----",
        log.display()
    );
    let body = tail(&text, TAIL_LINES);
    if body.is_empty() {
        s.push_str("(empty)\n");
    } else {
        s.push_str(body);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("a\nb\n", 0), "");
    }
}
