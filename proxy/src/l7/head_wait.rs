//! Knowing when hyper's HTTP/1 server is waiting for the next request head.
//!
//! hyper arms its header-read timer exactly when it starts reading a request head
//! (the first one, and each next one on a keep-alive connection) and drops it once
//! the head is parsed. [`HeadWaitTimer`] is the timer hyper is given: it is
//! tokio's, and it counts the header-read sleeps alive, so "a sleep is alive" means
//! "between two requests, no request or response in progress". The serve loop
//! ([`super::serve`]) uses that to take an idle connection back from hyper and
//! hold it without hyper's buffers (ARCHITECTURE.md, "Data-plane defaults").

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

/// hyper's timer, counting the sleeps it has alive.
#[derive(Clone, Debug, Default)]
pub struct HeadWaitTimer {
    alive: Arc<AtomicUsize>,
}

impl HeadWaitTimer {
    /// Whether hyper is waiting for a request head (a header-read sleep is alive).
    pub fn waiting_for_head(&self) -> bool {
        self.alive.load(Ordering::Relaxed) > 0
    }
}

impl Timer for HeadWaitTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.counted(TokioTimer::new().sleep(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.counted(TokioTimer::new().sleep_until(deadline))
    }
}

impl HeadWaitTimer {
    fn counted(&self, inner: Pin<Box<dyn Sleep>>) -> Pin<Box<dyn Sleep>> {
        self.alive.fetch_add(1, Ordering::Relaxed);
        Box::pin(CountedSleep {
            inner,
            alive: self.alive.clone(),
        })
    }
}

/// A sleep that is counted while it exists.
struct CountedSleep {
    inner: Pin<Box<dyn Sleep>>,
    alive: Arc<AtomicUsize>,
}

impl Future for CountedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl Sleep for CountedSleep {}

impl Drop for CountedSleep {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_the_sleeps_alive_including_a_reset() {
        let timer = HeadWaitTimer::default();
        assert!(!timer.waiting_for_head());
        let mut sleep = timer.sleep_until(Instant::now() + Duration::from_secs(60));
        assert!(timer.waiting_for_head());
        // hyper's reset (the default: a new sleep replaces the old one).
        timer.reset(&mut sleep, Instant::now() + Duration::from_secs(30));
        assert!(timer.waiting_for_head());
        drop(sleep);
        assert!(!timer.waiting_for_head());
        // A sleep that fired counts until it is dropped.
        let mut sleep = timer.sleep(Duration::from_millis(1));
        sleep.as_mut().await;
        assert!(timer.waiting_for_head());
        drop(sleep);
        assert!(!timer.waiting_for_head());
    }
}
