//! What the server knows of a client's traffic between messages: when it
//! was last heard from, whether it has been pinged since, and whether its
//! writer counts as busy (see `server::contention`).
//!
//! One small inline struct per [`Client`](super::Client), shared by the
//! session's two tasks and the server's keepalive sweeper, so that an idle
//! session carries no timer of its own (issue 6, idle memory).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When the client was last heard from, and the keepalive and contention
/// flags.
///
/// The reader only raises a flag per frame (no clock read on the hot path);
/// the keepalive sweeper, which reads the clock anyway, turns the flag into
/// a time on its tick. So [`Liveness::idle`] is late by at most one tick: a
/// ping or a keepalive close can come that much later, never earlier.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: AtomicBool,
    /// Milliseconds since [`epoch`] at the last tick that found `seen`.
    last_seen_ms: AtomicU64,
    /// Pinged since it was last heard from.
    pinged: AtomicBool,
    /// Its writer's last batch was a busy one (`server::contention`).
    busy: AtomicBool,
}

/// The process-wide origin of [`Liveness`] times: one `Instant`, not one
/// per client.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the keepalive sweeper should do about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    /// Heard from recently enough, or already pinged: nothing.
    Nothing,
    /// Silent for the ping interval: send one ping.
    Ping,
    /// Silent for the ping interval plus the pong timeout: close it.
    TimedOut,
}

impl Liveness {
    /// A client heard from now.
    pub fn new() -> Liveness {
        Liveness { last_seen_ms: AtomicU64::new(now_ms()), ..Liveness::default() }
    }

    /// The client sent a frame (any frame: a pong counts).
    pub fn touch(&self) {
        self.seen.store(true, Ordering::Relaxed);
    }

    /// How long since the client was last heard from, as of the last call
    /// of this (only the keepalive sweeper calls it).
    pub fn idle(&self) -> Duration {
        let now = now_ms();
        if self.seen.swap(false, Ordering::Relaxed) {
            self.last_seen_ms.store(now, Ordering::Relaxed);
        }
        Duration::from_millis(now.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    /// The keepalive decision for one tick: a ping once the client has been
    /// silent for `ping_interval`, a close once it stays silent for
    /// `pong_timeout` more.
    pub fn check(&self, ping_interval: Duration, pong_timeout: Duration) -> Keepalive {
        let idle = self.idle();
        if idle < ping_interval {
            self.pinged.store(false, Ordering::Relaxed);
            Keepalive::Nothing
        } else if idle >= ping_interval + pong_timeout {
            Keepalive::TimedOut
        } else if self.pinged.swap(true, Ordering::Relaxed) {
            Keepalive::Nothing
        } else {
            Keepalive::Ping
        }
    }

    /// Marks the writer busy or not; true when that changed the mark.
    pub fn set_busy(&self, busy: bool) -> bool {
        // A load first: the common case changes nothing and writes nothing.
        self.busy.load(Ordering::Relaxed) != busy && self.busy.swap(busy, Ordering::Relaxed) != busy
    }

    /// Whether the writer's last batch was a busy one.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_client_is_pinged_once_then_timed_out_and_a_frame_resets_it() {
        let live = Liveness::new();
        let (ping, pong) = (Duration::from_millis(100), Duration::from_millis(100));
        assert_eq!(live.check(ping, pong), Keepalive::Nothing);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(live.check(ping, pong), Keepalive::Ping);
        assert_eq!(live.check(ping, pong), Keepalive::Nothing, "one ping per silence");
        live.touch();
        assert_eq!(live.check(ping, pong), Keepalive::Nothing);
        std::thread::sleep(Duration::from_millis(220));
        assert_eq!(live.check(ping, pong), Keepalive::TimedOut);
    }

    #[test]
    fn set_busy_reports_changes_only() {
        let live = Liveness::new();
        assert!(!live.set_busy(false));
        assert!(live.set_busy(true));
        assert!(!live.set_busy(true));
        assert!(live.is_busy());
        assert!(live.set_busy(false));
    }
}
