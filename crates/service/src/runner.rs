//! The jobs running in this process: one task per job driving `ferry_sync::run`, and a
//! sampler per job that keeps the recent figures (rates, the chart's points) and copies
//! the job's history into the store, so a restart shows what happened before it.

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

use crate::store::{now_ms, Store, Totals};

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
    pub name: String,
    /// Counts of the job's earlier runs.
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

    /// What the job is doing now (starting, full-sync, incremental, retrying, …).
    pub fn state_name(&self) -> &'static str {
        self.status.view().state.name()
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
    jobs: Arc<Mutex<HashMap<i64, Arc<Running>>>>,
}

impl Manager {
    pub fn new(store: Store) -> Manager {
        Manager {
            store,
            jobs: Arc::default(),
        }
    }

    pub fn get(&self, id: i64) -> Option<Arc<Running>> {
        self.jobs.lock().ok()?.get(&id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Running>> {
        self.jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_running(&self, id: i64) -> bool {
        self.get(id).is_some_and(|r| !r.is_finished())
    }

    /// Starts the job (resuming from its checkpoint); a running job is left alone. With a
    /// lease (owner, generation), how the job ends is stored only while that lease is held.
    /// A fence (from the lease) stops the job's writes once it lapses.
    pub fn start(
        &self,
        id: i64,
        mut config: JobConfig,
        base: Totals,
        lease: Option<(String, i64, Arc<ferry_sync::Fence>)>,
    ) {
        if self.is_running(id) {
            return;
        }
        let status = JobStatus::new();
        let running = Arc::new(Running {
            name: config.name.clone(),
            base,
            status: status.clone(),
            cancel: lease
                .as_ref()
                .map(|(_, _, f)| f.token())
                .unwrap_or_default(),
            finished: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            retries_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            task: Mutex::new(None),
        });
        config.fence = lease.as_ref().map(|(_, _, f)| f.clone());
        let lease = lease.map(|(owner, generation, _)| (owner, generation));
        info!(job = %config.name, "starting job");
        let store = self.store.clone();
        let r = running.clone();
        let task = tokio::spawn(async move {
            let sampler = tokio::spawn(sample(r.clone(), store.clone(), id));
            let result = ferry_sync::run(config, r.status.clone(), r.cancel.clone()).await;
            r.finished.store(true, Relaxed);
            let _ = sampler.await;
            // A user's stop or pause has already stored the wanted state; a service
            // shutdown must leave "running" so the next start resumes the job.
            let end = match result {
                Ok(o) if o.completed => Some(("completed", None)),
                Ok(_) => None,
                Err(e) => {
                    r.errors_total.fetch_add(1, Relaxed);
                    Some(("failed", Some(e.to_string())))
                }
            };
            let outcome = match (end, &lease) {
                (None, _) => Ok(()),
                (Some(_), _) if r.fenced.load(Relaxed) => Ok(()),
                (Some((state, error)), Some((owner, generation))) => store
                    .finish_job(id, state, error.as_deref(), owner, *generation)
                    .await
                    .map(|_| ()),
                (Some((state, error)), None) => {
                    store.set_desired(id, state, error.as_deref()).await
                }
            };
            if let Err(e) = outcome {
                warn!(job = id, error = %e, "cannot store the job's end");
            }
        });
        if let Ok(mut t) = running.task.lock() {
            *t = Some(task);
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, running);
        }
    }

    /// Stops the job cleanly (writes in flight are answered first) and waits for it.
    pub async fn stop(&self, id: i64) {
        let Some(r) = self.get(id) else { return };
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

    /// Cancels the job without waiting (it drains in the background): its lease could
    /// not be renewed in time, or was lost. Nothing more about it is stored from here.
    pub fn fence(&self, id: i64) {
        if let Some(r) = self.get(id) {
            r.fenced.store(true, Relaxed);
            r.cancel.cancel();
        }
    }

    pub fn forget(&self, id: i64) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(&id);
        }
    }

    /// Stops every job without changing its stored state (a service shutdown).
    pub async fn shutdown(&self) {
        let ids: Vec<i64> = self
            .jobs
            .lock()
            .map(|j| j.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.stop(id).await;
        }
    }
}

async fn sample(r: Arc<Running>, store: Store, id: i64) {
    let mut persisted_until = now_ms();
    let mut last_attempts = 0;
    let mut saved = r.base;
    let mut tick = 0u64;
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
                if let Err(e) = store.event_at(id, at, &h.message).await {
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
        tick += 1;
        let totals = r.totals();
        if totals != saved && (done || tick >= 5) && !r.fenced.load(Relaxed) {
            tick = 0;
            match store.save_totals(id, totals).await {
                Ok(()) => saved = totals,
                Err(e) => warn!(job = id, error = %e, "cannot store the job's counts"),
            }
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
