//! A keys-per-second token bucket for the read rate of one verification.

use std::time::{Duration, Instant};

/// Allows `rate` keys a second on average, with bursts of up to one second's worth. A
/// request larger than the bucket is let through at once and paid for afterwards (the
/// balance goes negative), so a whole SCAN batch never waits forever.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `None` or `Some(0)`: unlimited.
    pub fn new(keys_per_sec: Option<u64>) -> Self {
        let rate = keys_per_sec.filter(|&r| r > 0).map(|r| r as f64);
        RateLimiter {
            rate,
            tokens: rate.unwrap_or(0.0),
            last: Instant::now(),
        }
    }

    /// Waits until `n` keys may be read.
    pub async fn acquire(&mut self, n: u64) {
        let Some(rate) = self.rate else { return };
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        if self.tokens < 0.0 {
            let wait = -self.tokens / rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.last = Instant::now();
            self.tokens = 0.0;
        }
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_the_average_rate() {
        let mut r = RateLimiter::new(Some(1000));
        let start = Instant::now();
        for _ in 0..6 {
            r.acquire(100).await;
        }
        // 1000 tokens of burst cover the first 600 keys: no wait.
        assert!(start.elapsed() < Duration::from_millis(100));
        for _ in 0..10 {
            r.acquire(100).await;
        }
        // 1600 keys at 1000/s with a 1000-key burst: at least ~0.5 s.
        assert!(start.elapsed() >= Duration::from_millis(450));
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let mut r = RateLimiter::new(None);
        let start = Instant::now();
        r.acquire(u64::MAX / 2).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
