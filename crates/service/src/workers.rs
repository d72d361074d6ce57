//! Several `ferry serve` processes sharing one PostgreSQL store form a cluster of workers.
//! Every worker serves the API and the console and sees every job; each running job is
//! run by exactly one worker, the holder of the job's lease (a row of `job_leases`: owner,
//! generation, expiry on the database's clock).
//!
//! Each worker, every third of the lease time (a "tick"):
//! 1. renews its heartbeat in `workers` (live workers are counted for the fair share);
//! 2. renews each lease it holds — `UPDATE … WHERE owner = me AND generation = g AND
//!    expires_at >= now()`; no row back means the lease is lost, and the job is stopped;
//!    a job the user stopped, paused or deleted, or that ended, is stopped and its lease
//!    released;
//! 3. hands back (stop, which drains, then release) the jobs above its fair share,
//!    `ceil(jobs that should run / live workers)`, so that a worker that joins gets some;
//! 4. claims free or expired leases up to its share and starts their jobs, which resume
//!    from the checkpoints kept in the target.
//!
//! Fencing: a watchdog cancels a job whose lease was not renewed within two thirds of the
//! lease time after the last successful renewal was *sent* (so before the database can
//! see it expire, whatever the network delay), leaving a third of the lease time for the
//! writes in flight to be answered. A worker frozen for longer (SIGSTOP, a suspended VM)
//! cancels as soon as it runs again — see the README, "Operations: several workers", for
//! what that does and does not guarantee.
//!
//! SQLite (one process) runs the same code with one worker: leases left by an earlier
//! process are cleared at start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runner::Manager;
use crate::store::{Store, StoreError};

/// A lease this worker holds.
#[derive(Debug, Clone)]
struct Held {
    generation: i64,
    /// Lets the job write while the lease holds (extended on each renewal).
    fence: Arc<ferry_sync::Fence>,
    /// When the watchdog cancels the job if no renewal succeeded since.
    deadline: Instant,
    /// The watchdog cancelled it already.
    fenced: bool,
}

pub struct Workers {
    id: String,
    address: String,
    lease: Duration,
    store: Store,
    manager: Manager,
    held: Mutex<HashMap<i64, Held>>,
    /// One tick at a time (the loop's and the API's).
    tick_lock: tokio::sync::Mutex<()>,
    draining: AtomicBool,
    /// Stops the watchdog (after a drain).
    dog: CancellationToken,
    /// Jobs that should run when this process started: their first start here is a
    /// "resumed after a service restart".
    resumed: Mutex<HashSet<i64>>,
}

impl Workers {
    pub fn new(
        id: String,
        address: String,
        lease: Duration,
        store: Store,
        manager: Manager,
        resumed: HashSet<i64>,
    ) -> Arc<Workers> {
        Arc::new(Workers {
            id,
            address,
            lease,
            store,
            manager,
            held: Mutex::default(),
            tick_lock: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            dog: CancellationToken::new(),
            resumed: Mutex::new(resumed),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn heartbeat(&self) -> Duration {
        self.lease / 3
    }

    fn held(&self) -> HashMap<i64, Held> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn set_held(&self, id: i64, held: Option<Held>) {
        if let Ok(mut h) = self.held.lock() {
            match held {
                Some(x) => h.insert(id, x),
                None => h.remove(&id),
            };
        }
    }

    pub fn holds(&self, id: i64) -> bool {
        self.held().contains_key(&id)
    }

    /// Runs the heartbeat loop and the watchdog until `stop` fires.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        let watchdog_stop = self.dog.clone();
        let dog = self.clone();
        tokio::spawn(async move { dog.watchdog(watchdog_stop).await });
        tokio::spawn(async move {
            info!(worker = %me.id, lease_seconds = me.lease.as_secs_f64(), "worker started");
            loop {
                if let Err(e) = me.tick().await {
                    warn!(worker = %me.id, error = %e, "worker heartbeat failed: retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(me.heartbeat()) => {}
                }
            }
        })
    }

    /// Cancels the jobs whose lease could not be renewed in time.
    async fn watchdog(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let now = Instant::now();
            let late: Vec<(i64, Held)> = self
                .held()
                .into_iter()
                .filter(|(_, h)| !h.fenced && h.deadline <= now)
                .collect();
            for (id, mut h) in late {
                warn!(worker = %self.id, job = id, "the job's lease was not renewed in time (the database did not answer, or this process was frozen): stopping the job (fencing)");
                self.manager.fence(id);
                h.fenced = true;
                self.set_held(id, Some(h));
            }
        }
    }

    /// One round: heartbeat, renewals, balance, claims. Database calls are bounded by
    /// the heartbeat interval so that a hung database cannot stall the loop.
    pub async fn tick(&self) -> Result<(), StoreError> {
        let _one = self.tick_lock.lock().await;
        let limit = self.heartbeat().max(Duration::from_secs(1));
        let timed = |what: &'static str| move |_| StoreError::Timeout(what);
        let draining = self.draining.load(Relaxed);
        tokio::time::timeout(
            limit,
            self.store
                .worker_heartbeat(&self.id, &self.address, draining),
        )
        .await
        .map_err(timed("heartbeat"))??;
        tokio::time::timeout(limit, self.store.ensure_leases())
            .await
            .map_err(timed("leases"))??;
        let jobs = tokio::time::timeout(limit, self.store.jobs())
            .await
            .map_err(timed("jobs"))??;
        let should_run: HashMap<i64, &crate::store::JobRow> = jobs
            .iter()
            .filter(|j| j.desired_state == "running")
            .map(|j| (j.id, j))
            .collect();

        // Renew what we hold first (a stop below may take a moment); then hand back what
        // should not run here any more.
        let mut done = Vec::new();
        for (id, h) in self.held() {
            let local = self.manager.get(id);
            let finished = local.as_ref().is_none_or(|r| r.is_finished());
            if !should_run.contains_key(&id) || finished || h.fenced {
                let why = if h.fenced {
                    "stopped after its lease could not be renewed"
                } else if !should_run.contains_key(&id) {
                    "no longer to run"
                } else {
                    "ended"
                };
                done.push((id, h.generation, why));
                continue;
            }
            self.renew(
                id,
                h,
                local.as_ref().map_or("starting", |r| r.state_name()),
                limit,
            )
            .await;
        }

        for (id, generation, why) in done {
            self.hand_back(id, generation, why).await;
        }

        // Fair share.
        let workers = tokio::time::timeout(limit, self.store.workers(self.lease_ms()))
            .await
            .map_err(timed("workers"))??;
        let live = workers
            .iter()
            .filter(|w| w.live && !w.draining)
            .count()
            .max(1);
        let share = if draining {
            0
        } else {
            should_run.len().div_ceil(live)
        };
        let mut mine: Vec<i64> = self.held().keys().copied().collect();
        mine.sort_unstable();
        while mine.len() > share {
            let Some(id) = mine.pop() else { break };
            if let Some(h) = self.held().get(&id).cloned() {
                let why = if draining {
                    "handed over: the worker is draining"
                } else {
                    "handed over to balance the jobs over the workers"
                };
                self.hand_back(id, h.generation, why).await;
            }
        }

        // Claim up to the share.
        if mine.len() >= share {
            self.clear_resumed();
            return Ok(());
        }
        let leases = tokio::time::timeout(limit, self.store.leases())
            .await
            .map_err(timed("leases"))??;
        for lease in leases {
            if self.held().len() >= share {
                break;
            }
            let Some(row) = should_run.get(&lease.job_id) else {
                continue;
            };
            if lease.live || self.holds(lease.job_id) || self.manager.is_running(lease.job_id) {
                continue;
            }
            // Before the claim is sent: the database counts the lease from later.
            let sent = Instant::now();
            let claimed = self
                .store
                .claim_lease(lease.job_id, &self.id, self.lease_ms())
                .await?;
            let Some(generation) = claimed else { continue };
            let config = match row.spec.config() {
                Ok(c) => c,
                Err(e) => {
                    warn!(job = %row.spec.name, error = %e, "cannot start the job");
                    let _ = self
                        .store
                        .finish_job(row.id, "failed", Some(&e), &self.id, generation)
                        .await;
                    let _ = self.store.release_lease(row.id, &self.id, generation).await;
                    continue;
                }
            };
            let restarted = self
                .resumed
                .lock()
                .map(|mut r| r.remove(&row.id))
                .unwrap_or(false);
            let event = match (&lease.owner, restarted) {
                (_, true) => "resumed after a service restart".to_string(),
                (Some(old), false) => format!(
                    "taken over by worker {} (the lease of worker {old} expired)",
                    self.id
                ),
                (None, false) => format!("running on worker {}", self.id),
            };
            info!(worker = %self.id, job = %row.spec.name, generation, "{event}");
            let _ = self.store.event(row.id, &event).await;
            let deadline = sent + self.lease * 2 / 3;
            let fence = ferry_sync::Fence::with_generation(
                deadline,
                CancellationToken::new(),
                generation as u64,
            );
            self.set_held(
                row.id,
                Some(Held {
                    generation,
                    fence: fence.clone(),
                    deadline,
                    fenced: false,
                }),
            );
            self.manager.forget(row.id);
            self.manager.start(
                row.id,
                config,
                row.totals,
                Some((self.id.clone(), generation, fence)),
            );
        }
        self.clear_resumed();
        Ok(())
    }

    /// Only the first round's claims are restarts of this process's own jobs.
    fn clear_resumed(&self) {
        if let Ok(mut r) = self.resumed.lock() {
            r.clear();
        }
    }

    /// Renews one lease; a lost one stops its job.
    async fn renew(&self, id: i64, h: Held, state: &str, limit: Duration) {
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            limit,
            self.store
                .renew_lease(id, &self.id, h.generation, self.lease_ms(), state),
        )
        .await;
        match renewed {
            Ok(Ok(true)) => {
                let deadline = sent + self.lease * 2 / 3;
                if let Ok(mut held) = self.held.lock() {
                    if let Some(x) = held.get_mut(&id) {
                        x.deadline = deadline;
                        x.fence.extend(deadline);
                    }
                }
            }
            Ok(Ok(false)) => {
                warn!(worker = %self.id, job = id, generation = h.generation, "the job's lease was lost (expired or taken by another worker): stopping the job");
                self.manager.fence(id);
                self.manager.stop(id).await;
                self.manager.forget(id);
                self.set_held(id, None);
            }
            Ok(Err(e)) => {
                warn!(worker = %self.id, job = id, error = %e, "cannot renew the job's lease: retrying")
            }
            Err(_) => {
                warn!(worker = %self.id, job = id, "cannot renew the job's lease: the database did not answer in time")
            }
        }
    }

    /// Renews every lease held (while draining, when the loop no longer runs).
    async fn renew_all(&self) {
        let limit = self.heartbeat().max(Duration::from_secs(1));
        for (id, h) in self.held() {
            let state = self.manager.get(id).map_or("starting", |r| r.state_name());
            self.renew(id, h, state, limit).await;
        }
    }

    /// Stops the job (the writes in flight are answered) and then releases its lease.
    async fn hand_back(&self, id: i64, generation: i64, why: &str) {
        info!(worker = %self.id, job = id, "{why}: stopping the job and releasing its lease");
        self.manager.stop(id).await;
        self.manager.forget(id);
        if let Err(e) = self.store.release_lease(id, &self.id, generation).await {
            warn!(worker = %self.id, job = id, error = %e, "cannot release the lease: it expires by itself");
        }
        self.set_held(id, None);
    }

    /// Stops a job held here now (the user stopped, paused or deleted it).
    pub async fn stop_local(&self, id: i64) {
        if let Some(h) = self.held().get(&id).cloned() {
            let _one = self.tick_lock.lock().await;
            self.hand_back(id, h.generation, "stopped by the user")
                .await;
        } else {
            self.manager.stop(id).await;
        }
    }

    /// Hands every job over (stop, then release its lease) and leaves the cluster. With
    /// `one_at_a_time`, each job is handed over once another worker runs the one before
    /// (at most twice the lease time each), the others' leases being renewed meanwhile.
    pub async fn drain(&self, one_at_a_time: bool) {
        self.draining.store(true, Relaxed);
        let _one = self.tick_lock.lock().await;
        let _ = self
            .store
            .worker_heartbeat(&self.id, &self.address, true)
            .await;
        let mut ids: Vec<i64> = self.held().keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(h) = self.held().get(&id).cloned() else {
                continue;
            };
            self.hand_back(id, h.generation, "handed over: the worker is draining")
                .await;
            if !one_at_a_time || self.held().is_empty() {
                continue;
            }
            let until = Instant::now() + self.lease * 2;
            let mut next_renewal = Instant::now();
            loop {
                let taken = self.store.leases().await.is_ok_and(|ls| {
                    ls.iter()
                        .any(|l| l.job_id == id && l.live && l.owner.as_deref() != Some(&self.id))
                });
                if taken || Instant::now() >= until {
                    if !taken {
                        warn!(worker = %self.id, job = id, "no other worker took the job over yet: handing over the next one");
                    }
                    break;
                }
                if Instant::now() >= next_renewal {
                    let _ = self
                        .store
                        .worker_heartbeat(&self.id, &self.address, true)
                        .await;
                    self.renew_all().await;
                    next_renewal = Instant::now() + self.heartbeat();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if let Err(e) = self.store.remove_worker(&self.id).await {
            warn!(worker = %self.id, error = %e, "cannot unregister the worker");
        }
        self.dog.cancel();
        info!(worker = %self.id, "worker drained: every lease released");
    }
}
