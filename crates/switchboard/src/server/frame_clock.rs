//! The session reader's clock: read once per run of frames, not per frame
//! (issue 6).
//!
//! Each frame a client sends needs the time twice: the rate limiter's token
//! buckets take a monotonic time, and the message it becomes is stamped with
//! the hub's wall-clock time ([`crate::hub::Message::ts`]). A clock read
//! costs ~25 ns on this box, and the two were ~10% of a classic DM's server
//! CPU in the default configuration (rate limits on).
//!
//! A reader with a backlog handles its frames back to back, so one reading
//! serves a run of up to [`RUN`] frames. The clock is read again as soon as
//! the reader waits for anything (the socket, tokio's coop budget, the
//! store): [`FrameClock::watch`] notes it. So a frame's time is never older
//! than the reader's last wait, and at most one run's work (tens of µs)
//! older than the frame's own handling: a rate limit is enforced as if the
//! frame came that much earlier (never looser), and `ts`, which has
//! millisecond resolution, is off by a fraction of a millisecond at most.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Instant;

use crate::hub::now_ms;

/// Frames served by one reading of the clock, at most.
const RUN: u32 = 32;

/// Monotonic nanoseconds since the process first asked.
fn monotonic_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// When a frame was read: by the monotonic clock, for the rate limiter, and
/// by the wall clock, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameTime {
    /// Monotonic ns (process-wide origin), as `TokenBucket` takes them.
    pub(crate) monotonic_ns: u64,
    /// Milliseconds since the Unix epoch: `Message::ts`.
    pub(crate) ts: u64,
}

/// The time of the frame being handled; see the module doc. Lives in the
/// reader's task, so it is kept small (24 bytes; issue 6, idle memory).
#[derive(Debug)]
pub(crate) struct FrameClock {
    /// The last reading.
    reading: FrameTime,
    /// Frames the reading still serves; 0 reads the clock again.
    left: u32,
}

impl FrameClock {
    pub(crate) fn new() -> FrameClock {
        FrameClock { reading: FrameTime { monotonic_ns: 0, ts: 0 }, left: 0 }
    }

    /// The time of the next frame: the last reading while it is fresh.
    pub(crate) fn frame_time(&mut self) -> FrameTime {
        if self.left == 0 {
            self.reading = FrameTime { monotonic_ns: monotonic_ns(), ts: now_ms() };
            self.left = RUN;
        }
        self.left -= 1;
        self.reading
    }

    /// The reader waited: the next frame reads the clock again.
    pub(crate) fn waited(&mut self) {
        self.left = 0;
    }

    /// Passes `polled` through, noting a wait.
    pub(crate) fn note<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        if polled.is_pending() {
            self.waited();
        }
        polled
    }

    /// Awaits `future`, noting whether it had to wait.
    pub(crate) async fn watch<F: Future>(&mut self, future: F) -> F::Output {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| self.note(future.as_mut().poll(cx))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_serves_a_run_then_the_clock_is_read_again() {
        let mut clock = FrameClock::new();
        let first = clock.frame_time();
        for _ in 1..RUN {
            assert_eq!(clock.frame_time(), first);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            clock.frame_time().monotonic_ns > first.monotonic_ns,
            "the run is over: a new reading"
        );
    }

    #[test]
    fn a_wait_ends_the_run() {
        let mut clock = FrameClock::new();
        let first = clock.frame_time();
        assert_eq!(clock.note(Poll::Ready(())), Poll::Ready(()));
        assert_eq!(clock.frame_time(), first, "no wait: the same reading");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.note(Poll::<()>::Pending).is_pending());
        let after = clock.frame_time();
        assert!(after.monotonic_ns > first.monotonic_ns && after.ts >= first.ts);
    }

    #[tokio::test]
    async fn watch_notes_a_future_that_waited() {
        let mut clock = FrameClock::new();
        let first = clock.frame_time();
        clock.watch(std::future::ready(())).await;
        assert_eq!(clock.frame_time(), first);
        clock.watch(tokio::task::yield_now()).await;
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.frame_time().monotonic_ns > first.monotonic_ns, "yield_now waits once");
    }
}
