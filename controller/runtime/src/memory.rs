//! Giving memory back once a wave of work has receded, or a load has ended
//! (shared by weft-proxy, whose waves are connections, and weft-controller, whose
//! waves are discovery subscribers and API calls, counted as its runtime's live
//! tasks).
//!
//! weft keeps glibc's allocator (ARCHITECTURE.md, Data-plane defaults): it needs
//! no extra code in the binary and is what the idle-RSS figures were taken with.
//! glibc returns freed memory to the kernel only from the top of its heaps, so
//! after a flood (each connection or Watch with its task, buffers and table rows)
//! has gone, the freed chunks in the middle stay resident, and with a
//! multi-threaded runtime each wave may land in other arenas: 500 silent clients
//! left a sidecar 6.5 MB larger for good, and three rounds of 1,000 vanished
//! discovery subscribers left the controller 23 → 55 → 69 → 74 MB.
//! `malloc_trim(0)` hands every free page of every arena back (`MADV_DONTNEED`).
//! It is called on two signs that what was taken will not be wanted again soon,
//! never on a timer in steady state (where a trim would only give back what is
//! about to be taken again):
//! - a wave receded: the live count has fallen to an eighth of its high point
//!   since the last trim, and that high point was a wave (at least [`WAVE`]);
//! - a load ended: since the last trim the process has worked at least [`LOAD`]
//!   of CPU time, and has now been quiet (under [`QUIET`] of CPU per check) for
//!   [`QUIET_CHECKS`] checks in a row. A few keep-alive connections carrying a
//!   heavy load are no wave, yet leave the heap as fragmented as one: 32 busy
//!   connections left an idle proxy 2 MB larger (9.0 MB instead of 7.0).
//!
//! The checks run every [`CHECK_EVERY`]; the trim itself, which walks the heaps, on
//! a blocking thread.
use std::time::Duration;

/// How often the live count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The smallest high point whose fall is worth a trim.
pub const WAVE: usize = 64;

/// The CPU time worked since the last trim that makes a load worth trimming after.
pub const LOAD: Duration = Duration::from_millis(200);

/// At most this much CPU time in one check's interval counts as quiet (0.5%).
pub const QUIET: Duration = Duration::from_millis(5);

/// How many quiet checks in a row end a load.
pub const QUIET_CHECKS: u32 = 2;

/// When to trim, from what each check sees one after another.
#[derive(Debug, Default)]
pub struct Receding {
    /// The most live connections seen since the last trim.
    high: usize,
    /// CPU time worked since the last trim.
    worked: Duration,
    /// Quiet checks in a row.
    quiet: u32,
}

impl Receding {
    /// Takes the live count now and the CPU time used since the last check; true
    /// when memory should be handed back.
    pub fn observe(&mut self, live: usize, cpu: Duration) -> bool {
        self.high = self.high.max(live);
        self.worked += cpu;
        self.quiet = if cpu <= QUIET { self.quiet + 1 } else { 0 };
        let wave_receded = self.high >= WAVE && live <= self.high / 8;
        let load_ended = self.worked >= LOAD && self.quiet >= QUIET_CHECKS;
        if wave_receded || load_ended {
            self.high = live;
            self.worked = Duration::ZERO;
            return true;
        }
        false
    }
}

/// Watches `live` (connections, tasks: whatever holds memory per unit) and the
/// process's CPU time for as long as the process runs, trimming after each wave or
/// load; `release` runs first, to let go of what the process keeps only for a load
/// (idle pooled connections, say) so that its memory goes back too. Needs a tokio
/// runtime.
pub async fn reclaim_after_waves(live: impl Fn() -> usize, release: impl Fn()) {
    let mut receding = Receding::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu_before = process_cpu_time();
    loop {
        tick.tick().await;
        let cpu_now = process_cpu_time();
        let cpu = cpu_now.saturating_sub(cpu_before);
        cpu_before = cpu_now;
        if receding.observe(live(), cpu) {
            release();
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// The CPU time (user and system) this process has used so far; zero where it
/// cannot be read, which only disables the load-ended trim.
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Hands the allocator's free pages back to the kernel.
pub fn trim() {
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

    /// A check's CPU time while busy: above quiet, not a load on its own.
    const BUSY: Duration = Duration::from_millis(50);

    #[test]
    fn trims_once_a_wave_has_receded_and_not_in_steady_state() {
        let mut r = Receding::default();
        // Steady state below a wave, and busy: never.
        for live in [10, 40, 5, 0, 30] {
            assert!(!r.observe(live, BUSY));
        }
        // A wave of 1,000 that drains: at an eighth, then at an eighth of that.
        let trims: Vec<usize> = [1000, 800, 400, 200, 126, 125, 60, 16, 15, 3, 0]
            .into_iter()
            .filter(|&live| r.observe(live, BUSY))
            .collect();
        assert_eq!(trims, [125, 15]);
        // A new wave after that is another.
        assert!(!r.observe(300, BUSY));
        assert!(r.observe(20, BUSY));
    }

    #[test]
    fn trims_once_when_a_load_on_few_connections_has_ended() {
        let mut r = Receding::default();
        // 32 connections working hard for five checks (250 ms of CPU): no trim
        // while busy.
        for _ in 0..5 {
            assert!(!r.observe(32, BUSY));
        }
        // Quiet, the connections still open: a trim on the second quiet check,
        // and only one however long the quiet lasts.
        let trims: Vec<usize> = (0..10)
            .filter(|_| r.observe(32, Duration::from_millis(1)))
            .collect();
        assert_eq!(trims, [1]);
        // A light trickle (4 ms a check, quiet) trims once per LOAD of work done:
        // every 50 checks, not every check.
        let mut r = Receding::default();
        let trims: Vec<usize> = (1..=120)
            .filter(|_| r.observe(2, Duration::from_millis(4)))
            .collect();
        assert_eq!(trims, [50, 100]);
    }

    #[test]
    fn the_process_cpu_time_moves_with_work() {
        let before = process_cpu_time();
        let mut x = 0u64;
        while process_cpu_time() < before + Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_cpu_time() > before);
    }
}
