//! Retry policies, as the seed product offers them: *immediately* (retry at once with a
//! short jittered backoff, give up after an optional time of continuous failure, one limit
//! for connection failures and one for other failures) and *scheduled* (retry only inside a
//! daily window, one per kind of failure; outside it the job waits).
//!
//! Pure state machine over a caller-given clock, so every rule is tested without waiting.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// What failed: the link, or a node that answered but refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused, reset, timed out, unreachable, TLS handshake.
    Connection,
    /// PSYNC refused or renamed, source loading, wrong password, target rejects a command,
    /// target OOM or READONLY.
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Connection => "connection failure",
            FailureKind::Other => "failure",
        })
    }
}

/// A daily window `HH:MM-HH:MM` in a time zone; `end <= start` crosses midnight.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: Time,
    pub end: Time,
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("window {s:?} must look like 01:00-05:30"))?;
        let parse = |t: &str| -> Result<Time, String> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("time {t:?} must look like 01:30"))?;
            let h: i8 = h.parse().map_err(|_| format!("bad hour in {t:?}"))?;
            let m: i8 = m.parse().map_err(|_| format!("bad minute in {t:?}"))?;
            Time::new(h, m, 0, 0).map_err(|_| format!("time {t:?} out of range"))
        };
        Ok(Window {
            start: parse(a)?,
            end: parse(b)?,
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start.hour(),
            self.start.minute(),
            self.end.hour(),
            self.end.minute()
        )
    }
}

impl Window {
    pub fn contains(&self, t: Time) -> bool {
        if self.start < self.end {
            t >= self.start && t < self.end
        } else if self.start == self.end {
            true
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The first instant at or after `now` that is inside the window.
    pub fn next_open(&self, now: &Zoned) -> Timestamp {
        if self.contains(now.time()) {
            return now.timestamp();
        }
        let today = now.date().to_datetime(self.start);
        let at = match today.to_zoned(now.time_zone().clone()) {
            Ok(z) if z.timestamp() > now.timestamp() => z,
            _ => match now
                .date()
                .tomorrow()
                .map(|d| d.to_datetime(self.start))
                .and_then(|dt| dt.to_zoned(now.time_zone().clone()))
            {
                Ok(z) => z,
                Err(_) => return now.timestamp(),
            },
        };
        at.timestamp()
    }
}

#[derive(Debug, Clone)]
pub enum RetryPolicy {
    Immediately {
        connection_limit: Option<Duration>,
        other_limit: Option<Duration>,
    },
    Scheduled {
        connection_window: Window,
        other_window: Window,
        time_zone: TimeZone,
    },
}

impl Default for RetryPolicy {
    /// Retry at once, forever: a broken link is retried until it comes back.
    fn default() -> Self {
        RetryPolicy::Immediately {
            connection_limit: None,
            other_limit: None,
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    RetryAt(Timestamp),
    GiveUp(String),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After a snapshot that failed: each new one costs the source a fork and a full copy, so
/// the waits grow further before they level off.
const BACKOFF_MAX_SNAPSHOT: Duration = Duration::from_secs(60);

/// The retry state of one job.
#[derive(Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    connection_since: Option<Timestamp>,
    other_since: Option<Timestamp>,
    attempts: u32,
    /// The last failed attempt had started a full resync (see [`RetryState::snapshot_failed`]).
    snapshot_failed: bool,
    jitter_seed: u64,
}

impl RetryState {
    pub fn new(policy: RetryPolicy) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(7);
        RetryState {
            policy,
            connection_since: None,
            other_since: None,
            attempts: 0,
            snapshot_failed: false,
            jitter_seed: seed | 1,
        }
    }

    /// Failed attempts since the last progress.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The job made progress (connected and moved data): failure streaks start over.
    pub fn on_progress(&mut self) {
        self.connection_since = None;
        self.other_since = None;
        self.attempts = 0;
    }

    /// The attempt about to be reported as failed had started a full resync: its wait may
    /// grow up to [`BACKOFF_MAX_SNAPSHOT`] rather than [`BACKOFF_MAX`].
    pub fn snapshot_failed(&mut self) {
        self.snapshot_failed = true;
    }

    fn backoff(&mut self) -> Duration {
        let exp = self.attempts.saturating_sub(1).min(16);
        let max = if std::mem::take(&mut self.snapshot_failed) {
            BACKOFF_MAX_SNAPSHOT
        } else {
            BACKOFF_MAX
        };
        let base = BACKOFF_MIN.saturating_mul(1 << exp).min(max);
        // xorshift: ±25% jitter so that many jobs hitting one node do not retry in step.
        let mut x = self.jitter_seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_seed = x;
        let frac = (x % 1000) as f64 / 1000.0; // 0..1
        base.mul_f64(0.75 + frac * 0.5)
    }

    pub fn on_failure(&mut self, kind: FailureKind, now: Timestamp) -> Decision {
        self.attempts += 1;
        let since = match kind {
            FailureKind::Connection => self.connection_since.get_or_insert(now),
            FailureKind::Other => self.other_since.get_or_insert(now),
        };
        let failing_for = now.duration_since(*since).unsigned_abs();
        let backoff = self.backoff();
        match &self.policy {
            RetryPolicy::Immediately {
                connection_limit,
                other_limit,
            } => {
                let limit = match kind {
                    FailureKind::Connection => connection_limit,
                    FailureKind::Other => other_limit,
                };
                if let Some(limit) = limit {
                    if failing_for >= *limit {
                        return Decision::GiveUp(format!(
                            "gave up after {} of continuous {kind} (limit {})",
                            humantime::format_duration(round_secs(failing_for)),
                            humantime::format_duration(*limit)
                        ));
                    }
                }
                Decision::RetryAt(add(now, backoff))
            }
            RetryPolicy::Scheduled {
                connection_window,
                other_window,
                time_zone,
            } => {
                let window = match kind {
                    FailureKind::Connection => connection_window,
                    FailureKind::Other => other_window,
                };
                let at = add(now, backoff).to_zoned(time_zone.clone());
                Decision::RetryAt(window.next_open(&at))
            }
        }
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(t)
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn immediately_retries_soon_and_forever_without_limits() {
        let mut st = RetryState::new(RetryPolicy::default());
        let now = ts("2026-01-01T00:00:00Z");
        for i in 0..50 {
            let t = add(now, secs(i * 60));
            match st.on_failure(FailureKind::Connection, t) {
                Decision::RetryAt(at) => {
                    let wait = at.duration_since(t).unsigned_abs();
                    assert!(wait <= BACKOFF_MAX.mul_f64(1.25), "{wait:?}");
                    assert!(wait >= BACKOFF_MIN.mul_f64(0.75), "{wait:?}");
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(st.attempts(), 50);
    }

    #[test]
    fn immediately_gives_up_per_kind_after_its_limit() {
        let mut st = RetryState::new(RetryPolicy::Immediately {
            connection_limit: Some(secs(300)),
            other_limit: Some(secs(60)),
        });
        let t0 = ts("2026-01-01T00:00:00Z");
        assert!(matches!(
            st.on_failure(FailureKind::Connection, t0),
            Decision::RetryAt(_)
        ));
        assert!(matches!(
            st.on_failure(FailureKind::Connection, add(t0, secs(299))),
            Decision::RetryAt(_)
        ));
        // Other failures have their own, shorter clock.
        assert!(matches!(
            st.on_failure(FailureKind::Other, add(t0, secs(200))),
            Decision::RetryAt(_)
        ));
        match st.on_failure(FailureKind::Other, add(t0, secs(260))) {
            Decision::GiveUp(r) => assert!(r.contains("1m"), "{r}"),
            d => panic!("{d:?}"),
        }
        match st.on_failure(FailureKind::Connection, add(t0, secs(301))) {
            Decision::GiveUp(r) => assert!(r.contains("connection failure"), "{r}"),
            d => panic!("{d:?}"),
        }
        // Progress starts the clocks over.
        st.on_progress();
        assert!(matches!(
            st.on_failure(FailureKind::Connection, add(t0, secs(1000))),
            Decision::RetryAt(_)
        ));
    }

    #[test]
    fn waits_after_failed_snapshots_grow_past_the_usual_cap() {
        let mut st = RetryState::new(RetryPolicy::default());
        let t0 = ts("2026-01-01T00:00:00Z");
        let wait = |d: Decision| match d {
            Decision::RetryAt(at) => at.duration_since(t0).unsigned_abs(),
            d => panic!("{d:?}"),
        };
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = wait(st.on_failure(FailureKind::Other, t0));
        }
        assert!(last <= BACKOFF_MAX.mul_f64(1.25), "{last:?}");
        st.snapshot_failed();
        let after_snapshot = wait(st.on_failure(FailureKind::Other, t0));
        assert!(after_snapshot >= secs(45), "{after_snapshot:?}");
        // The longer cap is for that failure only.
        assert!(wait(st.on_failure(FailureKind::Other, t0)) <= BACKOFF_MAX.mul_f64(1.25));
    }

    #[test]
    fn windows_cross_midnight() {
        let w: Window = "22:00-02:30".parse().unwrap();
        assert!(w.contains(Time::new(23, 0, 0, 0).unwrap()));
        assert!(w.contains(Time::new(1, 0, 0, 0).unwrap()));
        assert!(!w.contains(Time::new(2, 30, 0, 0).unwrap()));
        assert!(!w.contains(Time::new(12, 0, 0, 0).unwrap()));
        let d: Window = "09:00-17:00".parse().unwrap();
        assert!(d.contains(Time::new(9, 0, 0, 0).unwrap()));
        assert!(!d.contains(Time::new(17, 0, 0, 0).unwrap()));
        assert_eq!(d.to_string(), "09:00-17:00");
        assert!("25:00-01:00".parse::<Window>().is_err());
        assert!("0900".parse::<Window>().is_err());
    }

    #[test]
    fn scheduled_waits_for_the_window_in_its_time_zone() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap(); // UTC+8
        let mut st = RetryState::new(RetryPolicy::Scheduled {
            connection_window: "01:00-05:00".parse().unwrap(),
            other_window: "22:00-02:00".parse().unwrap(),
            time_zone: tz,
        });
        // 12:00 in Shanghai: outside both windows.
        let noon = ts("2026-03-10T04:00:00Z");
        match st.on_failure(FailureKind::Connection, noon) {
            Decision::RetryAt(at) => assert_eq!(at, ts("2026-03-10T17:00:00Z")), // 01:00 next day
            d => panic!("{d:?}"),
        }
        match st.on_failure(FailureKind::Other, noon) {
            Decision::RetryAt(at) => assert_eq!(at, ts("2026-03-10T14:00:00Z")), // 22:00 same day
            d => panic!("{d:?}"),
        }
        // 23:30 in Shanghai: inside the other-failure window (across midnight): soon.
        let late = ts("2026-03-10T15:30:00Z");
        match st.on_failure(FailureKind::Other, late) {
            Decision::RetryAt(at) => {
                assert!(at.duration_since(late).unsigned_abs() <= BACKOFF_MAX.mul_f64(1.25))
            }
            d => panic!("{d:?}"),
        }
        // Scheduled never gives up.
        for h in 0..100 {
            assert!(matches!(
                st.on_failure(FailureKind::Connection, add(noon, secs(h * 3600))),
                Decision::RetryAt(_)
            ));
        }
    }
}
