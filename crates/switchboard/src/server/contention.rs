//! How busy sessions share the runtime's workers (issue 6, rtt under load).
//!
//! A worker runs its ready tasks in rounds, one turn each. A light client's
//! frame (a chat line, a ping) waits for the round to reach its reader, so
//! its latency is the length of a round: the sum of the turns of every busy
//! session. Long turns are cheap (fewer task switches, more frames per
//! write syscall) but make that wait grow with the number of busy flows:
//! measured, an rtt of 0.8 ms beside 4 busy pairs, 2.8 ms beside 16 and
//! 7 ms beside 64.
//!
//! So the policy changes with contention. While few flows are busy, readers
//! take long turns and writers write as soon as they are woken. Once
//! [`CONTENDED_AT`] writers are busy at the same time, readers take shorter
//! turns ([`budget_per_frame`]) and a busy writer lets its next batch gather
//! for a few turns before writing (`session::write_loop`), so that rounds stay
//! short without more write syscalls.
//!
//! The count is process-wide ([`global`]), like the runtime whose workers it
//! describes.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hub::Liveness;

/// A write batch of at least this many frames marks its writer busy.
pub(crate) const BUSY_BATCH: usize = 16;

/// Busy writers from which the workers count as contended.
const CONTENDED_AT: usize = 4;

/// Units of tokio's coop budget (128 per task poll) a routed frame consumes
/// while the workers are not contended: a reader's turn is up to ~128
/// frames.
const BUDGET_PER_FRAME: usize = 1;

/// Units a routed frame consumes while the workers are contended: turns of
/// ~42 frames.
const BUDGET_PER_FRAME_CONTENDED: usize = 3;

/// How many writers are busy.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    busy_writers: AtomicUsize,
}

/// The process's count.
pub(crate) fn global() -> &'static Contention {
    static GLOBAL: Contention = Contention { busy_writers: AtomicUsize::new(0) };
    &GLOBAL
}

impl Contention {
    /// Whether enough flows are busy that turns should be short.
    pub(crate) fn contended(&self) -> bool {
        self.busy_writers.load(Ordering::Relaxed) >= CONTENDED_AT
    }

    /// Coop budget units a routed frame consumes (its size adds more).
    pub(crate) fn budget_per_frame(&self) -> usize {
        if self.contended() {
            BUDGET_PER_FRAME_CONTENDED
        } else {
            BUDGET_PER_FRAME
        }
    }

    fn enter(&self) {
        self.busy_writers.fetch_add(1, Ordering::Relaxed);
    }

    fn leave(&self) {
        self.busy_writers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records whether the writer whose client has `liveness` is busy now.
///
/// The mark lives in the client's [`Liveness`], where the keepalive
/// sweeper clears it on its tick (a flow that stopped stops counting) and
/// the session clears it once its writer has ended ([`leave`]).
pub(crate) fn set_busy(liveness: &Liveness, busy: bool) {
    set_busy_in(global(), liveness, busy);
}

/// Takes a writer out of the count for good: its session is ending.
pub(crate) fn leave(liveness: &Liveness) {
    set_busy(liveness, false);
}

fn set_busy_in(contention: &Contention, liveness: &Liveness, busy: bool) {
    if liveness.set_busy(busy) {
        if busy {
            contention.enter();
        } else {
            contention.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_shorten_once_enough_writers_are_busy_and_lengthen_when_they_leave() {
        let contention = Contention::default();
        let writers: Vec<Liveness> = (0..CONTENDED_AT).map(|_| Liveness::new()).collect();
        for writer in &writers[1..] {
            set_busy_in(&contention, writer, true);
            set_busy_in(&contention, writer, true); // idempotent
        }
        assert!(!contention.contended());
        assert_eq!(contention.budget_per_frame(), BUDGET_PER_FRAME);

        set_busy_in(&contention, &writers[0], true);
        assert!(contention.contended());
        assert_eq!(contention.budget_per_frame(), BUDGET_PER_FRAME_CONTENDED);

        set_busy_in(&contention, &writers[0], false);
        assert!(!contention.contended());
        for writer in &writers {
            set_busy_in(&contention, writer, false);
        }
        assert_eq!(contention.busy_writers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_writer_that_ends_leaves_the_global_count() {
        // Only this test touches the global count while busy; others in
        // the process may run sessions, so compare against a baseline.
        let before = global().busy_writers.load(Ordering::Relaxed);
        let writer = Liveness::new();
        set_busy(&writer, true);
        assert!(writer.is_busy());
        leave(&writer);
        assert!(!writer.is_busy());
        assert!(global().busy_writers.load(Ordering::Relaxed) <= before);
    }
}
