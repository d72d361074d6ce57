//! What a running job shows: its state, its retries, its last error, its history — the
//! figures of the seed's "Job Management" view. Shared by the job, the CLI and the service.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferry_core::{Phase, ShardStats};
use jiff::Timestamp;

/// The job's state as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Starting,
    FullSync,
    Incremental,
    Retrying,
    Completed,
    Stopped,
    Failed,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::FullSync => "full-sync",
            JobState::Incremental => "incremental",
            JobState::Retrying => "retrying",
            JobState::Completed => "completed",
            JobState::Stopped => "stopped",
            JobState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
struct Inner {
    /// Set when the job is not simply running.
    outcome: Option<JobState>,
    retrying: bool,
    /// Shards waiting for their next attempt (each shard retries on its own), with the
    /// attempt count and time of each.
    retrying_shards: BTreeMap<String, (u32, Timestamp)>,
    attempts: u32,
    next_attempt: Option<Timestamp>,
    last_error: Option<String>,
    history: VecDeque<HistoryEntry>,
}

/// A message about one shard: named, unless it is the one shard ("0") of a source that is
/// not a cluster.
fn about(shard: &str, message: &str) -> String {
    if shard == "0" {
        message.to_string()
    } else {
        format!("shard {shard}: {message}")
    }
}

/// A point-in-time copy of a job's status.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub state: JobState,
    pub attempts: u32,
    pub next_attempt: Option<Timestamp>,
    pub last_error: Option<String>,
    pub history: Vec<HistoryEntry>,
    /// The source link is up (the reader connected and reading its snapshot or stream).
    pub link_up: bool,
    /// Seconds since anything was last read from the source; `None` before any contact.
    pub seconds_since_contact: Option<f64>,
    /// The lag, `None` while it is unknown (the link is down): never a reassuring 0.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
}

const HISTORY_CAP: usize = 500;

/// One source shard of a running job.
#[derive(Debug, Clone)]
pub struct ShardView {
    /// Stable name ("0", or `slots-<first slot>` for a cluster's shard).
    pub id: String,
    /// The node it is read from now.
    pub node: String,
    pub stats: Arc<ShardStats>,
}

/// `stats` holds the job's totals; with several source shards each has its own figures in
/// `shards` (with one shard, both are the same).
#[derive(Debug, Default)]
pub struct JobStatus {
    pub stats: Arc<ShardStats>,
    inner: Mutex<Inner>,
    shards: Mutex<Vec<ShardView>>,
}

impl JobStatus {
    pub fn new() -> Arc<JobStatus> {
        Arc::new(JobStatus::default())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Adds a line to the job's history (state changes, retries, resumes).
    pub fn record(&self, message: impl Into<String>) {
        let message = message.into();
        self.with(|i| {
            if i.history.len() == HISTORY_CAP {
                i.history.pop_front();
            }
            i.history.push_back(HistoryEntry {
                at: Timestamp::now(),
                message,
            });
        });
    }

    pub fn set_retrying(&self, error: &str, attempts: u32, next: Timestamp) {
        self.with(|i| {
            i.retrying = true;
            i.attempts = attempts;
            i.next_attempt = Some(next);
            i.last_error = Some(error.to_string());
        });
        self.record(format!(
            "attempt {attempts} failed: {error}; next attempt at {next}"
        ));
    }

    pub fn set_running(&self) {
        self.with(|i| {
            i.retrying = false;
            i.next_attempt = None;
        });
    }

    /// Shard `shard` failed and retries at `next` (the other shards go on).
    pub fn set_shard_retrying(&self, shard: &str, error: &str, attempts: u32, next: Timestamp) {
        self.with(|i| {
            i.retrying_shards
                .insert(shard.to_string(), (attempts, next));
            i.retrying = true;
            i.attempts = i.retrying_shards.values().map(|r| r.0).max().unwrap_or(0);
            i.next_attempt = i.retrying_shards.values().map(|r| r.1).min();
            i.last_error = Some(about(shard, error));
        });
        self.record(about(
            shard,
            &format!("attempt {attempts} failed: {error}; next attempt at {next}"),
        ));
    }

    /// Shard `shard` runs again (its attempt started).
    pub fn set_shard_running(&self, shard: &str) {
        self.with(|i| {
            i.retrying_shards.remove(shard);
            i.retrying = !i.retrying_shards.is_empty();
            i.next_attempt = i.retrying_shards.values().map(|r| r.1).min();
        });
    }

    pub fn finish(&self, state: JobState, error: Option<String>) {
        self.with(|i| {
            i.outcome = Some(state.clone());
            i.retrying = false;
            i.retrying_shards.clear();
            i.next_attempt = None;
            if error.is_some() {
                i.last_error = error.clone();
            }
        });
        match error {
            Some(e) => self.record(format!("{}: {e}", state.name())),
            None => self.record(state.name()),
        }
    }

    pub fn set_shards(&self, shards: Vec<ShardView>) {
        *self.shards.lock().unwrap_or_else(|e| e.into_inner()) = shards;
    }

    /// Shard `id` is read from `node` now.
    pub fn set_shard_node(&self, id: &str, node: String) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shards.iter_mut().find(|s| s.id == id) {
            s.node = node;
        }
    }

    pub fn shards(&self) -> Vec<ShardView> {
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The figures of shard `id` kept from an earlier attempt, or new ones.
    pub fn shard_stats(&self, id: &str) -> Arc<ShardStats> {
        self.shards()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.stats)
            .unwrap_or_default()
    }

    pub fn view(&self) -> StatusView {
        let phase = self.stats.phase();
        self.with(|i| {
            let state = if let Some(s) = &i.outcome {
                s.clone()
            } else if i.retrying {
                JobState::Retrying
            } else {
                match phase {
                    Phase::Connecting | Phase::WaitingForSnapshot => JobState::Starting,
                    Phase::Snapshot => JobState::FullSync,
                    Phase::Incremental => JobState::Incremental,
                    Phase::Done => JobState::Completed,
                }
            };
            StatusView {
                state,
                attempts: i.attempts,
                next_attempt: i.next_attempt,
                last_error: i.last_error.clone(),
                history: i.history.iter().cloned().collect(),
                link_up: self.stats.link_up(),
                seconds_since_contact: self.stats.seconds_since_contact(),
                lag_bytes: self.stats.known_lag_bytes(),
                lag_seconds: self.stats.known_lag_seconds(),
            }
        })
    }
}
