//! A token bucket: the per-connection rate limit.
//!
//! Pure arithmetic on a caller-supplied clock (nanoseconds from any fixed
//! origin), so it is tested without sleeping. The limit ([`Rate`]) is the
//! server's, shared by every connection; a connection holds only its
//! [`TokenBucket`] (16 bytes, in its reader's task: issue 6, idle memory).

/// A limit: `per_sec` tokens a second, at most `burst` saved up. A rate of
/// 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    /// `per_sec` tokens a second, up to `burst`.
    pub fn new(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }

    /// Tokens a second.
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.per_sec <= 0.0
    }
}

/// The tokens one client holds against a [`Rate`]; a cost is taken if
/// available.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    /// The clock at the last call, in ns.
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket, at `now_ns`.
    pub fn full(rate: &Rate, now_ns: u64) -> TokenBucket {
        TokenBucket { tokens: rate.burst, last_ns: now_ns }
    }

    /// Refills by the time since the last call (`now_ns`, on the same clock),
    /// then takes `cost` tokens if the bucket holds them; returns whether it
    /// did.
    pub fn try_take(&mut self, rate: &Rate, cost: f64, now_ns: u64) -> bool {
        if rate.is_unlimited() {
            return true;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        // A time before the last one counts as the last one, not twice.
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn refills_at_rate_up_to_burst() {
        let start = 7 * MS;
        let rate = Rate::new(10.0, 5.0);
        let mut bucket = TokenBucket::full(&rate, start);
        assert!((0..5).all(|_| bucket.try_take(&rate, 1.0, start)));
        assert!(!bucket.try_take(&rate, 1.0, start));
        let later = start + 200 * MS;
        assert!(bucket.try_take(&rate, 1.0, later));
        assert!(bucket.try_take(&rate, 1.0, later));
        assert!(!bucket.try_take(&rate, 1.0, later));
        let much_later = start + 60_000 * MS;
        assert!((0..5).all(|_| bucket.try_take(&rate, 1.0, much_later)));
        assert!(!bucket.try_take(&rate, 1.0, much_later));
        let unlimited = Rate::new(0.0, 0.0);
        let mut bucket = TokenBucket::full(&unlimited, start);
        assert!((0..1000).all(|_| bucket.try_take(&unlimited, 1e9, start)));
    }

    #[test]
    fn a_clock_read_early_refills_nothing_extra() {
        // The session reads its clock once per run of frames
        // (`server::frame_clock`): the same `now` again adds no tokens.
        let rate = Rate::new(1000.0, 2.0);
        let mut bucket = TokenBucket::full(&rate, 0);
        let now = 1000 * MS;
        assert!(bucket.try_take(&rate, 2.0, now));
        assert!(!bucket.try_take(&rate, 1.0, now));
        assert!(bucket.try_take(&rate, 1.0, now + MS), "1 ms later: one token");
        assert!(bucket.try_take(&rate, 0.0, now - MS), "a clock going back refills nothing");
        assert!(!bucket.try_take(&rate, 1.0, now + MS));
    }
}
