//! Progress on the terminal: a live line on a TTY, a log line every few seconds otherwise.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferry_sync::{Phase, ShardStats};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

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

fn line(s: &ShardStats) -> String {
    let phase = s.phase();
    let mut out = format!(
        "{:<12} {:>5.1}%  keys {}/{}  records read {} applied {}",
        phase.name(),
        s.progress_percent(),
        s.keys_applied.load(Relaxed),
        s.keys_read.load(Relaxed),
        s.records_read.load(Relaxed),
        s.records_applied.load(Relaxed),
    );
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
            loop {
                bar.set_message(line(&stats));
                bar.tick();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = token.cancelled() => break,
                }
            }
            bar.finish_with_message(line(&stats));
        } else {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = token.cancelled() => break,
                }
                let s = &stats;
                info!(
                    phase = s.phase().name(),
                    progress = format!("{:.1}", s.progress_percent()),
                    keys_applied = s.keys_applied.load(Relaxed),
                    records_read = s.records_read.load(Relaxed),
                    records_applied = s.records_applied.load(Relaxed),
                    lag_bytes = s
                        .known_lag_bytes()
                        .map_or("unknown".into(), |l| l.to_string()),
                    lag_seconds = s
                        .known_lag_seconds()
                        .map_or("unknown".into(), |l| format!("{l:.3}")),
                    link_up = s.link_up(),
                    seconds_since_contact = s
                        .seconds_since_contact()
                        .map_or("-".into(), |n| format!("{n:.1}")),
                    "progress"
                );
            }
        }
    });
    Display { stop, task }
}
