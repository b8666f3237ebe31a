//! Knowing when hyper's HTTP/1 server has been waiting a while for the next
//! request head.
//!
//! hyper arms its header-read timer exactly when it starts reading a request head
//! (the first one, and each next one on a keep-alive connection) and drops it once
//! the head is parsed. [`HeadWaitTimer`] is the timer hyper is given: tokio's
//! clock, each sleep waking its task once early, [`IDLE_PROBE`] after it started,
//! and counted from then until it is dropped. So "a sleep has passed its probe"
//! means "between two requests, nothing in
//! progress, for at least [`IDLE_PROBE`]". The serve loop ([`super::serve`]) then
//! takes the idle connection back from hyper and holds it without hyper's buffers;
//! a busy connection, whose next request comes sooner, keeps its hyper connection
//! (rebuilding one per request would cost more CPU than it saves memory).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// How long hyper waits for a next head before the connection counts as idle.
pub const IDLE_PROBE: Duration = Duration::from_millis(50);

/// hyper's timer, counting its sleeps that are past their probe.
#[derive(Clone, Debug, Default)]
pub struct HeadWaitTimer {
    probed: Arc<AtomicUsize>,
}

impl HeadWaitTimer {
    /// Whether hyper has been waiting for a request head for [`IDLE_PROBE`] or more.
    pub fn idle_for_a_while(&self) -> bool {
        self.probed.load(Relaxed) > 0
    }
}

impl Timer for HeadWaitTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let first = deadline.min(Instant::now() + IDLE_PROBE);
        Box::pin(ProbedSleep {
            sleep: Box::pin(tokio::time::sleep_until(first.into())),
            deadline,
            probed: false,
            count: self.probed.clone(),
        })
    }
}

/// A sleep until `deadline`, counted in `count` from [`IDLE_PROBE`] after it
/// started until it is dropped.
struct ProbedSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: Instant,
    probed: bool,
    count: Arc<AtomicUsize>,
}

impl Future for ProbedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if self.probed || Instant::from(self.sleep.deadline()) >= self.deadline {
                return Poll::Ready(());
            }
            self.probed = true;
            self.count.fetch_add(1, Relaxed);
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline.into());
        }
    }
}

impl Sleep for ProbedSleep {}

impl Drop for ProbedSleep {
    fn drop(&mut self) {
        if self.probed {
            self.count.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_probed_after_the_probe_time_and_ends_at_its_deadline() {
        let timer = HeadWaitTimer::default();
        let mut sleep = timer.sleep(Duration::from_secs(10));
        assert!(!timer.idle_for_a_while());
        // Polled the way hyper does, whenever its connection is polled.
        let poll = |s: &mut Pin<Box<dyn Sleep>>| {
            s.as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
        };
        assert!(poll(&mut sleep).is_pending());
        tokio::time::advance(IDLE_PROBE + Duration::from_millis(1)).await;
        assert!(poll(&mut sleep).is_pending());
        assert!(timer.idle_for_a_while());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(poll(&mut sleep).is_ready());
        // hyper's reset (the default: a new sleep replaces the old one).
        timer.reset(&mut sleep, Instant::now() + Duration::from_secs(30));
        assert!(!timer.idle_for_a_while());
        tokio::time::advance(IDLE_PROBE + Duration::from_millis(1)).await;
        assert!(poll(&mut sleep).is_pending());
        assert!(timer.idle_for_a_while());
        drop(sleep);
        assert!(!timer.idle_for_a_while());
    }
}
