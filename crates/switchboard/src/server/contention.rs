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

/// One writer's place in the [`global`] count; it leaves the count when
/// dropped. One byte, as it lives in every session's writer.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    busy: bool,
}

impl Busy {
    /// Records whether the writer is busy now.
    pub(crate) fn set(&mut self, busy: bool) {
        self.set_in(global(), busy);
    }

    fn set_in(&mut self, contention: &Contention, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if busy {
                contention.enter();
            } else {
                contention.leave();
            }
        }
    }

    /// Whether the writer's last batch was a busy one.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_shorten_once_enough_writers_are_busy_and_lengthen_when_they_leave() {
        let contention = Contention::default();
        let mut writers: Vec<Busy> = (0..CONTENDED_AT).map(|_| Busy::default()).collect();
        for writer in &mut writers[1..] {
            writer.set_in(&contention, true);
            writer.set_in(&contention, true); // idempotent
        }
        assert!(!contention.contended());
        assert_eq!(contention.budget_per_frame(), BUDGET_PER_FRAME);

        writers[0].set_in(&contention, true);
        assert!(contention.contended());
        assert_eq!(contention.budget_per_frame(), BUDGET_PER_FRAME_CONTENDED);

        writers[0].set_in(&contention, false);
        assert!(!contention.contended());
        for writer in &mut writers {
            writer.set_in(&contention, false);
        }
        assert_eq!(contention.busy_writers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_writer_that_ends_leaves_the_global_count() {
        // Only this test touches the global count while busy; others in
        // the process may run sessions, so compare against a baseline.
        let before = global().busy_writers.load(Ordering::Relaxed);
        let mut writer = Busy::default();
        writer.set(true);
        assert!(writer.is_busy());
        drop(writer);
        assert!(global().busy_writers.load(Ordering::Relaxed) <= before);
    }
}
