//! Progress on the terminal: a live line on a TTY, a log line every few seconds otherwise.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferry_sync::{Phase, ShardStats};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The live line while one is drawn: log lines are written "around" it (it is cleared,
/// the line written, the bar drawn again), never through it.
static BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// stderr for the log, aware of the live line.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Display {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Display {
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The lag, or why it is unknown (the source link is down): never a reassuring 0.
fn lag(s: &ShardStats) -> String {
    match (s.known_lag_bytes(), s.known_lag_seconds()) {
        (Some(b), Some(t)) => format!("  lag {b} B {t:.2} s"),
        _ => match s.seconds_since_contact() {
            Some(n) if s.link_lost() => {
                format!("  lag unknown (source unreachable for {n:.0} s)")
            }
            _ => "  lag unknown (source not reached yet)".into(),
        },
    }
}

/// Rates over the last interval: what the line and the log show besides the counters.
struct Rates {
    at: std::time::Instant,
    keys: u64,
    records: u64,
    keys_per_sec: f64,
    records_per_sec: f64,
}

impl Rates {
    fn new(s: &ShardStats) -> Rates {
        Rates {
            at: std::time::Instant::now(),
            keys: s.keys_applied.load(Relaxed),
            records: s.records_applied.load(Relaxed),
            keys_per_sec: 0.0,
            records_per_sec: 0.0,
        }
    }

    /// Takes a new sample (smoothed, so the figure does not jump every tick).
    fn sample(&mut self, s: &ShardStats) {
        let dt = self.at.elapsed().as_secs_f64();
        if dt < 0.5 {
            return;
        }
        let keys = s.keys_applied.load(Relaxed);
        let records = s.records_applied.load(Relaxed);
        let k = keys.saturating_sub(self.keys) as f64 / dt;
        let r = records.saturating_sub(self.records) as f64 / dt;
        let smooth = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                0.5 * old + 0.5 * new
            }
        };
        self.keys_per_sec = smooth(self.keys_per_sec, k);
        self.records_per_sec = smooth(self.records_per_sec, r);
        *self = Rates {
            at: std::time::Instant::now(),
            keys,
            records,
            ..*self
        };
    }

    /// Seconds left of the snapshot at the current rate, when it can be told.
    fn eta(&self, s: &ShardStats) -> Option<f64> {
        let total = s.expected_keys.load(Relaxed);
        let done = s.keys_applied.load(Relaxed);
        (s.phase() == Phase::Snapshot && total > done && self.keys_per_sec > 0.0)
            .then(|| (total - done) as f64 / self.keys_per_sec)
    }
}

fn line(s: &ShardStats, r: &Rates) -> String {
    let phase = s.phase();
    let total = s.expected_keys.load(Relaxed);
    let applied = s.keys_applied.load(Relaxed);
    let mut out = match phase {
        Phase::Connecting => "connecting to the source".to_string(),
        Phase::WaitingForSnapshot => format!(
            "waiting for the source's snapshot (it forks and serializes {} keys first)",
            if total > 0 {
                total.to_string()
            } else {
                "its".into()
            }
        ),
        _ => {
            let of = if total > 0 {
                format!("{applied}/{total}")
            } else {
                applied.to_string()
            };
            format!(
                "{:<12} {:>5.1}%  keys {of}  {:.0} keys/s  records applied {} ({:.0}/s)",
                phase.name(),
                s.progress_percent(),
                r.keys_per_sec,
                s.records_applied.load(Relaxed),
                r.records_per_sec,
            )
        }
    };
    if let Some(eta) = r.eta(s) {
        out.push_str(&format!("  eta {eta:.0} s"));
    }
    if phase == Phase::Incremental || s.link_lost() {
        out.push_str(&lag(s));
    } else {
        out.push_str(&format!(
            "  {:.1} MB read",
            s.bytes_read.load(Relaxed) as f64 / 1e6
        ));
    }
    out
}

pub fn spawn(stats: Arc<ShardStats>, tty: bool, stop: CancellationToken) -> Display {
    let token = stop.clone();
    let task = tokio::spawn(async move {
        if tty {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            if let Ok(mut b) = BAR.lock() {
                *b = Some(bar.clone());
            }
            let mut rates = Rates::new(&stats);
            loop {
                rates.sample(&stats);
                bar.set_message(line(&stats, &rates));
                bar.tick();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = token.cancelled() => break,
                }
            }
            if let Ok(mut b) = BAR.lock() {
                *b = None;
            }
            bar.finish_with_message(line(&stats, &rates));
        } else {
            let mut rates = Rates::new(&stats);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = token.cancelled() => break,
                }
                let s = &stats;
                rates.sample(s);
                // Numbers as numbers (JSON logs); a lag that is unknown is left out, never 0.
                let progress = (s.progress_percent() * 10.0).round() / 10.0;
                let eta_seconds = rates.eta(s).map(|e| e.round());
                let (lag_bytes, lag_seconds) = (s.known_lag_bytes(), s.known_lag_seconds());
                let contact = s.seconds_since_contact().map(|n| (n * 10.0).round() / 10.0);
                let known = lag_bytes.is_some() && lag_seconds.is_some();
                info!(
                    phase = s.phase().name(),
                    progress,
                    keys_applied = s.keys_applied.load(Relaxed),
                    keys_total = s.expected_keys.load(Relaxed),
                    keys_per_sec = rates.keys_per_sec.round(),
                    records_read = s.records_read.load(Relaxed),
                    records_applied = s.records_applied.load(Relaxed),
                    records_per_sec = rates.records_per_sec.round(),
                    eta_seconds,
                    lag_bytes = lag_bytes.filter(|_| known),
                    lag_seconds = lag_seconds
                        .filter(|_| known)
                        .map(|t| (t * 1000.0).round() / 1000.0),
                    lag = (!known).then_some("unknown"),
                    link_up = s.link_up(),
                    seconds_since_contact = contact,
                    "progress"
                );
            }
        }
    });
    Display { stop, task }
}
