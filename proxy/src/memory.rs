//! Giving memory back once a wave of connections has receded.
//!
//! The proxy keeps glibc's allocator (ARCHITECTURE.md, Data-plane defaults): it
//! needs no extra code in the binary and is what the idle-RSS figures were taken
//! with. glibc returns freed memory to the kernel only from the top of its heaps,
//! so after a flood of connections (each with its task, buffers and table rows)
//! closes, the freed chunks in the middle stay resident: 500 silent clients left
//! a sidecar 6.5 MB larger for good. `malloc_trim(0)` hands every free page of every
//! arena back (`MADV_DONTNEED`), and is called here when the number of live
//! connections has fallen to an eighth of its high point since the last trim, and
//! that high point was a wave (at least [`WAVE`] connections) — not on a timer in
//! steady state, where a trim would only give back what is about to be taken
//! again. The check runs every [`CHECK_EVERY`]; the trim itself, which walks the
//! heaps, on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use crate::conntable::ConnTable;

/// How often the live-connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The fewest live connections at a high point that make its fall worth a trim.
pub const WAVE: usize = 64;

/// When to trim, from the live-connection counts seen one after another.
#[derive(Debug, Default)]
pub struct Receding {
    /// The most live connections seen since the last trim.
    high: usize,
}

impl Receding {
    /// Takes the live count now; true when memory should be handed back.
    pub fn observe(&mut self, live: usize) -> bool {
        self.high = self.high.max(live);
        if self.high >= WAVE && live <= self.high / 8 {
            self.high = live;
            return true;
        }
        false
    }
}

/// Watches `conns` for as long as the proxy runs, trimming after each wave.
pub async fn reclaim_after_waves(conns: Arc<ConnTable>) {
    let mut receding = Receding::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if receding.observe(conns.live_count()) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Hands the allocator's free pages back to the kernel.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it has no
    // preconditions and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_wave_has_receded_and_not_in_steady_state() {
        let mut r = Receding::default();
        // Steady state below a wave: never.
        for live in [10, 40, 5, 0, 30] {
            assert!(!r.observe(live));
        }
        // A wave of 1,000 that drains: at an eighth, then at an eighth of that.
        let trims: Vec<usize> = [1000, 800, 400, 200, 126, 125, 60, 16, 15, 3, 0]
            .into_iter()
            .filter(|&live| r.observe(live))
            .collect();
        assert_eq!(trims, [125, 15]);
        // A new wave after that is another.
        assert!(!r.observe(300));
        assert!(r.observe(20));
    }
}
