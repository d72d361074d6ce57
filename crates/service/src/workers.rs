//! Several `ferry serve` processes sharing one PostgreSQL store form a cluster of workers.
//! Every worker serves the API and the console and sees every job. The work is divided
//! into tasks, one per source shard of each running job (a row of `job_tasks`), and each
//! task is run by exactly one worker, the holder of the task's lease (owner, generation,
//! expiry on the database's clock, in the task's row).
//!
//! Each worker, every third of the lease time (a "tick"):
//! 1. renews its heartbeat in `workers` (live workers are counted for the fair share);
//! 2. (beside the loop, so that a slow source cannot delay renewals) discovers the shards
//!    of the running jobs whose discovery is due (a new or restarted job at once, then
//!    every `PLAN_INTERVAL`): one worker per job and turn, the one that takes the job's
//!    turn in `job_leases`; new shards get a task, gone ones are retired;
//! 3. marks completed the jobs whose every task completed (full mode);
//! 4. renews each task lease it holds — `UPDATE … WHERE owner = me AND generation = g AND
//!    expires_at >= now()`, storing the task's state and figures in its row so that any
//!    worker can show the whole job; no row back means the lease is lost, and the task is
//!    stopped; a task whose job the user stopped, paused or deleted, that was retired, or
//!    that ended, is stopped and its lease released;
//! 5. hands back (stop, which drains, then release) the tasks above its fair share,
//!    `ceil(tasks to run / live workers)`, so that a worker that joins gets some;
//! 6. claims free or expired task leases up to its share and starts their shards, which
//!    resume from their checkpoints kept in the target.
//!
//! A task retries its own failures (the other shards of the job go on); one that fails
//! for good fails its job, naming the shard and the cause.
//!
//! Fencing, per task: a watchdog cancels a task whose lease was not renewed within two
//! thirds of the lease time after the last successful renewal was *sent* (so before the
//! database can see it expire, whatever the network delay), leaving a third of the lease
//! time for the writes in flight to be answered. A worker frozen for longer (SIGSTOP, a
//! suspended VM) cancels as soon as it runs again, its reader → writer fence hands nothing
//! more to the writer, and the task's next holder has closed the old generation's writer
//! connections (named after the task and its generation) before reading the checkpoint —
//! see the README, "Operations: several workers".
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

use crate::runner::{Manager, TaskKey};
use crate::store::{Desired, JobRow, Store, StoreError, TaskRow};

/// How often a running job's source is discovered again (a resharded source gets tasks
/// for its new shards, and those of its gone shards are retired).
const PLAN_INTERVAL: Duration = Duration::from_secs(30);

/// A task lease this worker holds.
#[derive(Debug, Clone)]
struct Held {
    generation: i64,
    /// Lets the task write while the lease holds (extended on each renewal).
    fence: Arc<ferry_sync::Fence>,
    /// When the watchdog cancels the task if no renewal succeeded since.
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
    held: Mutex<HashMap<TaskKey, Held>>,
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

    fn held(&self) -> HashMap<TaskKey, Held> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn set_held(&self, key: &TaskKey, held: Option<Held>) {
        if let Ok(mut h) = self.held.lock() {
            match held {
                Some(x) => h.insert(key.clone(), x),
                None => h.remove(key),
            };
        }
    }

    pub fn holds(&self, key: &TaskKey) -> bool {
        self.held().contains_key(key)
    }

    /// Runs the heartbeat loop and the watchdog until `stop` fires.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        let watchdog_stop = self.dog.clone();
        let dog = self.clone();
        tokio::spawn(async move { dog.watchdog(watchdog_stop).await });
        let planner = self.clone();
        let planner_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                planner.plan_now().await;
                tokio::select! {
                    _ = planner_stop.cancelled() => return,
                    _ = tokio::time::sleep(planner.heartbeat()) => {}
                }
            }
        });
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

    /// Cancels the tasks whose lease could not be renewed in time.
    async fn watchdog(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let now = Instant::now();
            let late: Vec<(TaskKey, Held)> = self
                .held()
                .into_iter()
                .filter(|(_, h)| !h.fenced && h.deadline <= now)
                .collect();
            for (key, mut h) in late {
                warn!(worker = %self.id, job = key.job, shard = %key.shard, "the task's lease was not renewed in time (the database did not answer, or this process was frozen): stopping the task (fencing)");
                self.manager.fence(&key);
                h.fenced = true;
                self.set_held(&key, Some(h));
            }
        }
    }

    /// One round: heartbeat, discovery, renewals, balance, claims. Database calls are
    /// bounded by the heartbeat interval so that a hung database cannot stall the loop.
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
        let should_run: HashMap<i64, &JobRow> = jobs
            .iter()
            .filter(|j| j.desired_state == Desired::Running)
            .map(|j| (j.id, j))
            .collect();
        match tokio::time::timeout(limit, self.store.complete_finished_jobs()).await {
            Ok(Ok(ids)) => {
                for id in ids {
                    info!(worker = %self.id, job = id, "every shard completed: the job is completed");
                    let _ = self
                        .store
                        .event(id, "completed: every shard completed")
                        .await;
                }
            }
            Ok(Err(e)) => warn!(worker = %self.id, error = %e, "cannot mark completed jobs"),
            Err(_) => {
                warn!(worker = %self.id, "cannot mark completed jobs: the database did not answer in time")
            }
        }
        let tasks = tokio::time::timeout(limit, self.store.tasks())
            .await
            .map_err(timed("tasks"))??;
        let runnable: Vec<&TaskRow> = tasks
            .iter()
            .filter(|t| t.runnable() && should_run.contains_key(&t.job_id))
            .collect();
        let to_run: HashSet<TaskKey> = runnable.iter().map(|t| key_of(t)).collect();

        // Renew what we hold first (a stop below may take a moment); then hand back what
        // should not run here any more.
        let mut done = Vec::new();
        for (key, h) in self.held() {
            let local = self.manager.get(&key);
            let finished = local.as_ref().is_none_or(|r| r.is_finished());
            if !to_run.contains(&key) || finished || h.fenced {
                let why = if h.fenced {
                    "stopped after its lease could not be renewed"
                } else if !to_run.contains(&key) {
                    "no longer to run"
                } else {
                    "ended"
                };
                done.push((key, h.generation, why));
                continue;
            }
            self.renew(&key, h, limit).await;
        }
        for (key, generation, why) in done {
            self.hand_back(&key, generation, why).await;
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
            runnable.len().div_ceil(live)
        };
        let mut mine: Vec<TaskKey> = self.held().keys().cloned().collect();
        mine.sort_unstable();
        while mine.len() > share {
            let Some(key) = mine.pop() else { break };
            if let Some(h) = self.held().get(&key).cloned() {
                let why = if draining {
                    "handed over: the worker is draining"
                } else {
                    "handed over to balance the tasks over the workers"
                };
                self.hand_back(&key, h.generation, why).await;
            }
        }

        // Claim up to the share.
        if mine.len() < share {
            for task in runnable {
                if self.held().len() >= share {
                    break;
                }
                let key = key_of(task);
                if task.live || self.holds(&key) || self.manager.is_running(&key) {
                    continue;
                }
                if let Some(row) = should_run.get(&task.job_id) {
                    self.claim(row, task, key).await?;
                }
            }
        }
        self.clear_resumed();
        Ok(())
    }

    /// Claims one task and starts its shard.
    async fn claim(&self, row: &JobRow, task: &TaskRow, key: TaskKey) -> Result<(), StoreError> {
        // Before the claim is sent: the database counts the lease from later.
        let sent = Instant::now();
        let claimed = self
            .store
            .claim_task(key.job, &key.shard, &self.id, self.lease_ms())
            .await?;
        let Some(generation) = claimed else {
            return Ok(());
        };
        let config = match row.spec.config() {
            Ok(c) => c,
            Err(e) => {
                warn!(job = %row.spec.name, error = %e, "cannot start the job");
                let _ = self
                    .store
                    .finish_task(
                        key.job,
                        &key.shard,
                        &self.id,
                        generation,
                        "failed",
                        Some(&e),
                        &task.figures,
                    )
                    .await;
                return Ok(());
            }
        };
        let restarted = self
            .resumed
            .lock()
            .map(|r| r.contains(&row.id))
            .unwrap_or(false);
        let event = key.say(&match (&task.owner, restarted) {
            (_, true) => "resumed after a service restart".to_string(),
            (Some(old), false) => format!(
                "taken over by worker {} (the lease of worker {old} expired)",
                self.id
            ),
            (None, false) => format!("running on worker {}", self.id),
        });
        info!(worker = %self.id, job = %row.spec.name, shard = %key.shard, generation, "{event}");
        let _ = self.store.event(row.id, &event).await;
        let deadline = sent + self.lease * 2 / 3;
        let fence = ferry_sync::Fence::with_generation(
            deadline,
            CancellationToken::new(),
            generation as u64,
        );
        self.set_held(
            &key,
            Some(Held {
                generation,
                fence: fence.clone(),
                deadline,
                fenced: false,
            }),
        );
        self.manager.forget(&key);
        self.manager.start(
            key,
            config,
            task.totals(),
            (self.id.clone(), generation, fence),
        );
        Ok(())
    }

    /// Discovers the shards of the running jobs whose discovery is due and this worker's
    /// turn. Runs beside the heartbeat loop (never under its lock), so that a source slow
    /// to answer cannot delay the renewals.
    pub async fn plan_now(&self) {
        if self.draining.load(Relaxed) {
            return;
        }
        let limit = self.heartbeat().max(Duration::from_secs(1));
        // Every running job has its row of discovery turns.
        if !matches!(
            tokio::time::timeout(limit, self.store.ensure_leases()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let jobs = match tokio::time::timeout(limit, self.store.jobs()).await {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                warn!(worker = %self.id, error = %e, "cannot read the jobs to discover their shards");
                return;
            }
            Err(_) => return,
        };
        let rows: Vec<&JobRow> = jobs
            .iter()
            .filter(|j| j.desired_state == Desired::Running)
            .collect();
        if !rows.is_empty() {
            self.plan(&rows, limit).await;
        }
    }

    async fn plan(&self, jobs: &[&JobRow], limit: Duration) {
        let next_ms = i64::try_from(PLAN_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        for row in jobs {
            let turn =
                tokio::time::timeout(limit, self.store.planning_turn(row.id, &self.id, next_ms))
                    .await;
            if !matches!(turn, Ok(Ok(true))) {
                continue;
            }
            let config = match row.spec.config() {
                Ok(c) => c,
                Err(e) => {
                    warn!(job = %row.spec.name, error = %e, "cannot start the job");
                    let _ = self
                        .store
                        .set_desired(row.id, Desired::Failed, Some(&e))
                        .await;
                    let _ = self.store.event(row.id, &format!("failed: {e}")).await;
                    continue;
                }
            };
            let found =
                tokio::time::timeout(limit * 2, ferry_sync::job::discover_shards(&config)).await;
            let shards: Vec<String> = match found {
                Ok(Ok((_, shards))) => shards.into_iter().map(|s| s.id).collect(),
                Ok(Err(e)) => {
                    warn!(job = %row.spec.name, error = %e, "cannot discover the source's shards: trying again at the next heartbeat");
                    let _ = self.store.planning_again(row.id).await;
                    continue;
                }
                Err(_) => {
                    warn!(job = %row.spec.name, "cannot discover the source's shards: no answer in time; trying again at the next heartbeat");
                    let _ = self.store.planning_again(row.id).await;
                    continue;
                }
            };
            match self.store.set_shards(row.id, &shards).await {
                Ok((added, retired)) => {
                    if (shards.len() > 1 && !added.is_empty()) || !retired.is_empty() {
                        let mut message =
                            format!("source shards: {} (a task each)", shards.join(", "));
                        if !retired.is_empty() {
                            message.push_str(&format!("; gone: {}", retired.join(", ")));
                        }
                        info!(worker = %self.id, job = %row.spec.name, "{message}");
                        let _ = self.store.event(row.id, &message).await;
                    }
                }
                Err(e) => {
                    warn!(job = %row.spec.name, error = %e, "cannot store the job's tasks");
                    let _ = self.store.planning_again(row.id).await;
                }
            }
        }
    }

    /// Only the first round's claims are restarts of this process's own jobs.
    fn clear_resumed(&self) {
        if let Ok(mut r) = self.resumed.lock() {
            r.clear();
        }
    }

    /// Renews one task lease, storing the task's state and figures; a lost lease stops
    /// the task.
    async fn renew(&self, key: &TaskKey, h: Held, limit: Duration) {
        let local = self.manager.get(key);
        let state = local.as_ref().map_or("starting", |r| r.state_name());
        let node = local.as_ref().and_then(|r| r.node());
        let figures = local.as_ref().map(|r| r.figures()).unwrap_or_default();
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            limit,
            self.store.renew_task(
                key.job,
                &key.shard,
                &self.id,
                h.generation,
                self.lease_ms(),
                state,
                node.as_deref(),
                &figures,
            ),
        )
        .await;
        match renewed {
            Ok(Ok(true)) => {
                let deadline = sent + self.lease * 2 / 3;
                if let Ok(mut held) = self.held.lock() {
                    if let Some(x) = held.get_mut(key) {
                        x.deadline = deadline;
                        x.fence.extend(deadline);
                    }
                }
            }
            Ok(Ok(false)) => {
                warn!(worker = %self.id, job = key.job, shard = %key.shard, generation = h.generation, "the task's lease was lost (expired or taken by another worker): stopping the task");
                self.manager.fence(key);
                self.manager.stop(key).await;
                self.manager.forget(key);
                self.set_held(key, None);
            }
            Ok(Err(e)) => {
                warn!(worker = %self.id, job = key.job, shard = %key.shard, error = %e, "cannot renew the task's lease: retrying")
            }
            Err(_) => {
                warn!(worker = %self.id, job = key.job, shard = %key.shard, "cannot renew the task's lease: the database did not answer in time")
            }
        }
    }

    /// Renews every task lease held (while draining, when the loop no longer runs).
    async fn renew_all(&self) {
        let limit = self.heartbeat().max(Duration::from_secs(1));
        for (key, h) in self.held() {
            self.renew(&key, h, limit).await;
        }
    }

    /// Stops the task (the writes in flight are answered) and then releases its lease,
    /// leaving its last figures in its row.
    async fn hand_back(&self, key: &TaskKey, generation: i64, why: &str) {
        info!(worker = %self.id, job = key.job, shard = %key.shard, "{why}: stopping the task and releasing its lease");
        self.manager.stop(key).await;
        let figures = self.manager.get(key).map(|r| r.figures());
        self.manager.forget(key);
        if let Err(e) = self
            .store
            .release_task(key.job, &key.shard, &self.id, generation, figures.as_ref())
            .await
        {
            warn!(worker = %self.id, job = key.job, shard = %key.shard, error = %e, "cannot release the task's lease: it expires by itself");
        }
        self.set_held(key, None);
    }

    /// Stops the tasks of job `id` held here now (the user stopped, paused or deleted it).
    pub async fn stop_local(&self, id: i64) {
        let _one = self.tick_lock.lock().await;
        let mine: Vec<(TaskKey, Held)> = self
            .held()
            .into_iter()
            .filter(|(k, _)| k.job == id)
            .collect();
        for (key, h) in mine {
            self.hand_back(&key, h.generation, "stopped by the user")
                .await;
        }
        for r in self.manager.of_job(id) {
            self.manager.stop(&r.key).await;
        }
    }

    /// Hands every task over (stop, then release its lease) and leaves the cluster. With
    /// `one_at_a_time`, each task is handed over once another worker runs the one before
    /// (at most twice the lease time each), the others' leases being renewed meanwhile.
    pub async fn drain(&self, one_at_a_time: bool) {
        self.draining.store(true, Relaxed);
        let _one = self.tick_lock.lock().await;
        let _ = self
            .store
            .worker_heartbeat(&self.id, &self.address, true)
            .await;
        let mut keys: Vec<TaskKey> = self.held().keys().cloned().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(h) = self.held().get(&key).cloned() else {
                continue;
            };
            self.hand_back(&key, h.generation, "handed over: the worker is draining")
                .await;
            if !one_at_a_time || self.held().is_empty() {
                continue;
            }
            let until = Instant::now() + self.lease * 2;
            let mut next_renewal = Instant::now();
            loop {
                let taken = self.store.tasks().await.is_ok_and(|ts| {
                    ts.iter()
                        .any(|t| key_of(t) == key && t.live && t.owner.as_deref() != Some(&self.id))
                });
                if taken || Instant::now() >= until {
                    if !taken {
                        warn!(worker = %self.id, job = key.job, shard = %key.shard, "no other worker took the task over yet: handing over the next one");
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

fn key_of(t: &TaskRow) -> TaskKey {
    TaskKey {
        job: t.job_id,
        shard: t.shard.clone(),
    }
}
