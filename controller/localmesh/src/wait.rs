//! Polling a condition with a deadline.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Calls `cond` every `poll_interval` until it returns true (then `Ok`), or fails
/// once `timeout` has passed. `cond` is always called at least once, and once
/// more at the deadline. Add context to the error for a readable failure.
pub fn wait_until(
    timeout: Duration,
    poll_interval: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(poll_interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_and_times_out() {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(1), Duration::from_millis(1), || {
                n += 1;
                n == 3
            })
            .is_ok()
        );
        let t = Instant::now();
        let err = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
            false
        })
        .expect_err("must time out");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().contains("not met within"));
    }
}
