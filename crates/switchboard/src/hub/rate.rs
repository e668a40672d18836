//! A token bucket: the per-connection rate limit.
//!
//! Pure arithmetic on a caller-supplied clock, so it is tested without sleeping.

use std::time::Instant;

/// Refills `rate` tokens per second up to `burst`; a cost is taken if available.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 means unlimited.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes `cost` tokens if the bucket holds them; returns whether it did.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
    use std::time::Duration;

    #[test]
    fn refills_at_rate_up_to_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, start);
        assert!((0..5).all(|_| bucket.try_take(1.0, start)));
        assert!(!bucket.try_take(1.0, start));
        let later = start + Duration::from_millis(200);
        assert!(bucket.try_take(1.0, later));
        assert!(bucket.try_take(1.0, later));
        assert!(!bucket.try_take(1.0, later));
        let much_later = start + Duration::from_secs(60);
        assert!((0..5).all(|_| bucket.try_take(1.0, much_later)));
        assert!(!bucket.try_take(1.0, much_later));
        let mut unlimited = TokenBucket::new(0.0, 0.0, start);
        assert!((0..1000).all(|_| unlimited.try_take(1e9, start)));
    }
}
