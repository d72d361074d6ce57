//! A byte token bucket shared by all readers of a job. A read larger than the bucket goes
//! through at once and is paid for afterwards (the bucket goes into debt), so one big value
//! never waits forever and the long-run rate still holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    /// Tokens may accumulate up to one second's worth.
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `bytes_per_sec` must be positive.
    pub fn new(bytes_per_sec: f64) -> RateLimiter {
        let rate = bytes_per_sec.max(1.0);
        RateLimiter {
            bytes_per_sec: rate,
            burst: rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes_per_sec
    }

    /// Takes `n` bytes from the bucket, then sleeps off any debt.
    pub async fn consume(&self, n: u64) {
        let wait = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.bytes_per_sec;
            st.0 = (st.0 + refill).min(self.burst) - n as f64;
            st.1 = now;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_rate_and_lets_big_reads_through() {
        let l = RateLimiter::new(1_000_000.0);
        let t = Instant::now();
        // The first second's worth is free (burst), then 1.5 MB more takes ~1.5 s.
        for _ in 0..25 {
            l.consume(100_000).await;
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        // A single read far above the burst is not refused.
        let l = RateLimiter::new(1000.0);
        let t = Instant::now();
        l.consume(1500).await;
        assert!(t.elapsed() >= Duration::from_millis(400));
    }
}
