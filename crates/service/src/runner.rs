//! The tasks running in this process — each one source shard of a job, driven by
//! `ferry_sync::job::run_shard` — and a sampler per task that keeps the recent figures
//! (rates, the chart's points) and copies the task's history into the job's, so a restart
//! shows what happened before it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_sync::{JobConfig, JobStatus};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::TaskFigures;
use crate::store::{now_ms, Store, Totals};

/// A task: one source shard of a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub job: i64,
    /// The shard's stable id ("0", or `slots-<first slot>`).
    pub shard: String,
}

impl TaskKey {
    /// A line of the job's history about this task: "shard <id>: …", or the line alone
    /// for the one shard of a source that is not a cluster.
    pub fn say(&self, message: &str) -> String {
        if self.shard == "0" {
            message.to_string()
        } else {
            format!("shard {}: {message}", self.shard)
        }
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.job, self.shard)
    }
}

/// Points kept for the chart: five minutes at one a second.
const SAMPLES: usize = 300;
/// Rates are averaged over this many seconds.
const RATE_WINDOW: usize = 5;

/// One second's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at: i64,
    pub records_read: u64,
    pub records_applied: u64,
    pub bytes_read: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Records applied per second over the last seconds.
    pub apply_rate: f64,
}

pub struct Running {
    /// The job's name.
    pub name: String,
    pub key: TaskKey,
    /// Counts of the task's earlier runs (here or on other workers).
    pub base: Totals,
    pub status: Arc<JobStatus>,
    cancel: CancellationToken,
    finished: AtomicBool,
    /// Its lease was lost: stop without storing anything more about the job (its new
    /// owner does).
    fenced: AtomicBool,
    samples: Mutex<VecDeque<Sample>>,
    /// Retries and errors seen, for the Prometheus counters (the job's own attempt count
    /// restarts after progress).
    pub retries_total: AtomicU64,
    pub errors_total: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    /// The job's counts, earlier runs included.
    pub fn totals(&self) -> Totals {
        let s = &self.status.stats;
        self.base.plus(Totals {
            records_read: s.records_read.load(Relaxed),
            records_applied: s.records_applied.load(Relaxed),
            keys_read: s.keys_read.load(Relaxed),
            keys_applied: s.keys_applied.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Relaxed)
    }

    /// What the task is doing now (starting, full-sync, incremental, retrying, …).
    pub fn state_name(&self) -> &'static str {
        self.status.view().state.name()
    }

    /// The source node the shard is read from now.
    pub fn node(&self) -> Option<String> {
        self.status
            .shards()
            .into_iter()
            .next()
            .map(|s| s.node)
            .filter(|n| !n.is_empty())
    }

    /// The figures stored in the task's row (see `TaskFigures`).
    pub fn figures(&self) -> TaskFigures {
        let s = &self.status.stats;
        let t = self.totals();
        let view = self.status.view();
        let finished = self.is_finished();
        let (read_rate, apply_rate, bytes_rate) = if finished {
            (0.0, 0.0, 0.0)
        } else {
            self.rates()
        };
        TaskFigures {
            records_read: t.records_read,
            records_applied: t.records_applied,
            keys_read: t.keys_read,
            keys_applied: t.keys_applied,
            bytes_read: t.bytes_read,
            lag_bytes: if finished { Some(0) } else { view.lag_bytes },
            lag_seconds: if finished {
                Some(0.0)
            } else {
                view.lag_seconds
            },
            link_up: view.link_up,
            seconds_since_contact: view.seconds_since_contact,
            progress_percent: (s.progress_percent() * 10.0).round() / 10.0,
            read_rate,
            apply_rate,
            bytes_rate,
            attempts: view.attempts,
            next_attempt: view.next_attempt.map(|t| t.to_string()),
            last_error: view.last_error,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records read and applied per second over the last seconds.
    pub fn rates(&self) -> (f64, f64, f64) {
        let Ok(s) = self.samples.lock() else {
            return (0.0, 0.0, 0.0);
        };
        let (Some(last), Some(first)) = (
            s.back(),
            s.iter()
                .rev()
                .nth(RATE_WINDOW.min(s.len().saturating_sub(1))),
        ) else {
            return (0.0, 0.0, 0.0);
        };
        let secs = (last.at - first.at) as f64 / 1000.0;
        if secs <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        (
            per(last.records_read, first.records_read),
            per(last.records_applied, first.records_applied),
            per(last.bytes_read, first.bytes_read),
        )
    }
}

#[derive(Clone)]
pub struct Manager {
    store: Store,
    jobs: Arc<Mutex<HashMap<TaskKey, Arc<Running>>>>,
}

impl Manager {
    pub fn new(store: Store) -> Manager {
        Manager {
            store,
            jobs: Arc::default(),
        }
    }

    pub fn get(&self, key: &TaskKey) -> Option<Arc<Running>> {
        self.jobs.lock().ok()?.get(key).cloned()
    }

    /// The tasks of job `id` that run here.
    pub fn of_job(&self, id: i64) -> Vec<Arc<Running>> {
        let mut v: Vec<Arc<Running>> = self
            .jobs
            .lock()
            .map(|j| j.values().filter(|r| r.key.job == id).cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn all(&self) -> Vec<Arc<Running>> {
        self.jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_running(&self, key: &TaskKey) -> bool {
        self.get(key).is_some_and(|r| !r.is_finished())
    }

    /// Starts the task (its shard resumes from its checkpoint); a running task is left
    /// alone. How the task ends is stored only while `lease` (owner, generation) is held;
    /// the fence stops the task's writes once the lease lapses.
    pub fn start(
        &self,
        key: TaskKey,
        mut config: JobConfig,
        base: Totals,
        lease: (String, i64, Arc<ferry_sync::Fence>),
    ) {
        if self.is_running(&key) {
            return;
        }
        let status = JobStatus::new();
        let running = Arc::new(Running {
            name: config.name.clone(),
            key: key.clone(),
            base,
            status: status.clone(),
            cancel: lease.2.token(),
            finished: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            retries_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            task: Mutex::new(None),
        });
        config.fence = Some(lease.2.clone());
        let (owner, generation) = (lease.0, lease.1);
        info!(job = %config.name, shard = %key.shard, generation, "starting the shard's task");
        let store = self.store.clone();
        let r = running.clone();
        let task = tokio::spawn(async move {
            let sampler = tokio::spawn(sample(r.clone(), store.clone()));
            let result = ferry_sync::job::run_shard(
                config,
                &r.key.shard,
                r.status.clone(),
                r.cancel.clone(),
            )
            .await;
            r.finished.store(true, Relaxed);
            let _ = sampler.await;
            // A stop (by the user, a hand-over, a shutdown) leaves the task to run again;
            // an end is stored, only while the lease is held.
            let end = match result {
                Ok(o) if o.completed => Some(("completed", None)),
                Ok(_) => None,
                Err(e @ ferry_sync::JobError::ShardGone { .. }) => {
                    Some(("retired", Some(e.to_string())))
                }
                Err(e) => {
                    r.errors_total.fetch_add(1, Relaxed);
                    Some(("failed", Some(e.to_string())))
                }
            };
            let Some((outcome, error)) = end else { return };
            if r.fenced.load(Relaxed) {
                return;
            }
            let key = &r.key;
            match store
                .finish_task(
                    key.job,
                    &key.shard,
                    &owner,
                    generation,
                    outcome,
                    error.as_deref(),
                    &r.figures(),
                )
                .await
            {
                Ok(true) => {
                    let message = match &error {
                        Some(e) => key.say(&format!("{outcome}: {e}")),
                        None => key.say(outcome),
                    };
                    let _ = store.event(key.job, &message).await;
                    if outcome == "retired" {
                        // The source was resharded: discover its shards now.
                        let _ = store.planning_again(key.job).await;
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(task = %key, error = %e, "cannot store the task's end"),
            }
        });
        if let Ok(mut t) = running.task.lock() {
            *t = Some(task);
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(key, running);
        }
    }

    /// Stops the task cleanly (writes in flight are answered first) and waits for it.
    pub async fn stop(&self, key: &TaskKey) {
        let Some(r) = self.get(key) else { return };
        r.cancel.cancel();
        let task = r.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            if tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .is_err()
            {
                warn!(job = %r.name, "job did not stop within 60 s");
            }
        }
    }

    /// Cancels the task without waiting (it drains in the background): its lease could
    /// not be renewed in time, or was lost. Nothing more about it is stored from here.
    pub fn fence(&self, key: &TaskKey) {
        if let Some(r) = self.get(key) {
            r.fenced.store(true, Relaxed);
            r.cancel.cancel();
        }
    }

    pub fn forget(&self, key: &TaskKey) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(key);
        }
    }

    /// Stops every task without changing its stored state (a service shutdown).
    pub async fn shutdown(&self) {
        let keys: Vec<TaskKey> = self
            .jobs
            .lock()
            .map(|j| j.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            self.stop(&key).await;
        }
    }
}

async fn sample(r: Arc<Running>, store: Store) {
    let id = r.key.job;
    let mut persisted_until = now_ms();
    let mut last_attempts = 0;
    loop {
        let done = r.is_finished();
        let stats = &r.status.stats;
        let view = r.status.view();
        if view.attempts > last_attempts {
            let more = u64::from(view.attempts - last_attempts);
            r.retries_total.fetch_add(more, Relaxed);
            r.errors_total.fetch_add(more, Relaxed);
        }
        last_attempts = view.attempts;
        for h in &view.history {
            let at = h.at.as_millisecond();
            if at > persisted_until {
                let message = if h.message.starts_with("shard ") {
                    h.message.clone()
                } else {
                    r.key.say(&h.message)
                };
                if let Err(e) = store.event_at(id, at, &message).await {
                    warn!(job = id, error = %e, "cannot store the job's history");
                }
                persisted_until = at;
            }
        }
        let mut s = Sample {
            at: now_ms(),
            records_read: stats.records_read.load(Relaxed),
            records_applied: stats.records_applied.load(Relaxed),
            bytes_read: stats.bytes_read.load(Relaxed),
            lag_bytes: stats.lag_bytes(),
            lag_seconds: stats.lag_seconds(),
            apply_rate: 0.0,
        };
        if let Ok(mut samples) = r.samples.lock() {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            if let Some(first) = samples
                .iter()
                .rev()
                .nth(RATE_WINDOW.min(samples.len().saturating_sub(1)))
            {
                let secs = (s.at - first.at) as f64 / 1000.0;
                if secs > 0.0 {
                    s.apply_rate =
                        s.records_applied.saturating_sub(first.records_applied) as f64 / secs;
                }
            }
            samples.push_back(s);
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
