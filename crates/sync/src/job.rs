//! One sync job: a reader and a writer joined by a bounded channel of events, run again
//! after each failure as its retry policy says, resuming from the checkpoint kept in the
//! target.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Phase, ShardStats};
use ferry_resp::Endpoint;
use ferry_sink::checkpoint::{self, Checkpoint};
use ferry_sink::{TargetError, WriterOptions};
use ferry_source::{
    discover, RateLimiter, ReplicaOptions, Shard, SourceError, SourceSpec, SourceType,
};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{JobConfig, Mode};
use crate::retry::{Decision, FailureKind, RetryPolicy, RetryState};
use crate::status::{JobState, JobStatus, ShardView};

/// Events between a job's fence and its writer: what a worker frozen past its lease may
/// still write when it wakes up is at most this (and the writer's batch in progress).
const FENCED_QUEUE: usize = 256;

/// Hands the reader's events to the writer only while the fence holds; once it lapses,
/// stops (the writer applies what it was handed and ends) and cancels the job.
fn fenced(
    mut rx: mpsc::Receiver<ferry_core::Event>,
    fence: Arc<crate::fence::Fence>,
) -> mpsc::Receiver<ferry_core::Event> {
    let (tx, out) = mpsc::channel(FENCED_QUEUE);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if !fence.is_valid() {
                if !fence.token().is_cancelled() {
                    warn!("the job's lease lapsed: writing nothing more and stopping the job");
                }
                fence.trip();
                return;
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    out
}

/// Events waiting between the reader and the writer: the bound is the backpressure that
/// stops the reader (and so the socket) when the target is slower.
const EVENT_QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("source: {0}")]
    Source(SourceError),
    #[error("target: {0}")]
    Target(TargetError),
    #[error("{reason}; last error: {last}")]
    GaveUp { reason: String, last: Box<JobError> },
    /// The shard is no longer one of the source's (resharded): its task ends.
    #[error("source shard {shard} is no longer in the source's topology (shards now: {shards})")]
    ShardGone { shard: String, shards: String },
    /// An earlier run stopped at a command the target refused (its checkpoint says so).
    #[error("an earlier run of this job stopped at a replicated command the target refused (source offset {offset}), and writes after it may have been applied: the target no longer matches the source and the job cannot resume. Empty the target and delete the checkpoint {key:?} to copy again")]
    StoppedAtFailure { key: String, offset: u64 },
    /// The target lost data under an incremental job, which cannot copy it again.
    #[error("{0}; an incremental job copies only new writes, so it cannot restore what was lost: run the job as full+incremental to copy the source again")]
    CannotRecopy(TargetError),
    /// Source and target are one server, replication group or cluster (see `identity`).
    #[error("{0}; give a different target")]
    SameServer(String),
    /// Another run holds the job's lease on the target (see `lease`).
    #[error("{0}")]
    LeaseHeld(String),
    /// Another run took the job's lease over while this one ran.
    #[error("{0}")]
    LeaseLost(String),
    /// The target evicted keys while the job copied (see `evictions`): a retry would too.
    #[error("{0}")]
    Evicted(crate::evictions::Evicted),
}

impl From<SourceError> for JobError {
    fn from(e: SourceError) -> Self {
        JobError::Source(e)
    }
}

impl From<TargetError> for JobError {
    fn from(e: TargetError) -> Self {
        JobError::Target(e)
    }
}

impl JobError {
    /// A broken link rather than a refusal: what a retry policy retries as a connection
    /// failure.
    pub fn is_connection(&self) -> bool {
        match self {
            JobError::Source(e) => e.is_connection(),
            JobError::Target(e) => e.is_connection(),
            JobError::GaveUp { last, .. } => last.is_connection(),
            JobError::ShardGone { .. }
            | JobError::CannotRecopy(_)
            | JobError::StoppedAtFailure { .. }
            | JobError::SameServer(_)
            | JobError::LeaseHeld(_)
            | JobError::LeaseLost(_)
            | JobError::Evicted(_) => false,
        }
    }

    /// Errors that no retry can mend: the user must change something first.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            JobError::Target(
                TargetError::KeyExists { .. }
                    | TargetError::DuplicateKey { .. }
                    | TargetError::Unsupported { .. }
                    | TargetError::Incompatible { .. }
                    | TargetError::BadReply { .. }
                    | TargetError::Topology { .. }
                    | TargetError::ForeignValue { .. }
                    | TargetError::LibraryExists { .. }
                    | TargetError::NotEmpty { .. }
                    | TargetError::FlushRefused { .. }
                    | TargetError::CommandFailed { .. }
            ) | JobError::Source(SourceError::BacklogGone { .. })
                | JobError::GaveUp { .. }
                | JobError::CannotRecopy(_)
                | JobError::StoppedAtFailure { .. }
                | JobError::SameServer(_)
                | JobError::LeaseHeld(_)
                | JobError::LeaseLost(_)
                | JobError::Evicted(_)
        )
    }
}

/// How a job ended without error.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub keys: u64,
    pub commands: u64,
    /// Full mode finished the copy (as opposed to a stop by the user).
    pub completed: bool,
}

/// Runs the job until it completes (full mode), fails for good, or `cancel` fires (a clean
/// stop: everything already sent to the target is answered first). Each source shard
/// runs and retries on its own, as `config.retry` says (a failing shard does not restart
/// the others); each attempt resumes from the shard's checkpoint in the target.
pub async fn run(
    config: JobConfig,
    status: Arc<JobStatus>,
    cancel: CancellationToken,
) -> Result<JobOutcome, JobError> {
    // One run per job and target (a run under a fence of its own, the service's, has its
    // own exclusion).
    if config.fence.is_some() {
        return run_unleased(config, status, cancel).await;
    }
    let mut retry = RetryState::new(config.retry.clone());
    let lease = loop {
        let taken = async {
            let node = lease_node(&config).await?;
            crate::lease::acquire(&node, &config.name, &cancel).await
        }
        .await;
        match taken {
            Ok(l) => break l,
            Err(e) => {
                match retry_or_give_up(&config, &mut retry, e, &status, None, &cancel).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        status.finish(JobState::Stopped, None);
                        return Ok(JobOutcome {
                            keys: 0,
                            commands: 0,
                            completed: false,
                        });
                    }
                    Err(e) => {
                        status.finish(JobState::Failed, Some(e.to_string()));
                        return Err(e);
                    }
                }
            }
        }
    };
    let token = lease.token.clone();
    let r = run_unleased(config, status.clone(), token).await;
    let r = lease.finish(r).await;
    if let Err(e @ JobError::LeaseLost(_)) = &r {
        status.finish(JobState::Failed, Some(e.to_string()));
    }
    r
}

/// The node where a run holds the job (see `lease`): the target (its current master), or
/// on a cluster one master chosen by the job's name.
pub(crate) async fn lease_node(config: &JobConfig) -> Result<Endpoint, JobError> {
    let target = resolve_target(config).await?;
    if !ferry_sink::is_cluster(&target).await? {
        return Ok(target);
    }
    let map = ferry_sink::slot::fetch_any(std::slice::from_ref(&target)).await?;
    // Any fixed master per job does: the one of the slot of a key named after the job.
    let key = format!("ferry:checkpoint:{}:lease", config.name);
    map.endpoint(ferry_sink::slot::key_slot(key.as_bytes()))
        .cloned()
        .ok_or_else(|| {
            JobError::Target(TargetError::Topology {
                addr: target.addr(),
                message: "the slot of the job's lease key is served by no master".into(),
            })
        })
}

/// [`run`] without the hold on the target.
async fn run_unleased(
    config: JobConfig,
    status: Arc<JobStatus>,
    cancel: CancellationToken,
) -> Result<JobOutcome, JobError> {
    let limiter = config.rate_limit.map(|r| Arc::new(RateLimiter::new(r)));
    crate::scope::log_scope(config.filter.as_deref(), &config.db_map);
    let _log_filtered = LogFilteredOnDrop(status.stats.clone());
    // Discovery failures (the source unreachable before any shard runs) retry as the
    // policy says; each shard then retries on its own.
    let mut retry = RetryState::new(config.retry.clone());
    let mut total = JobOutcome {
        keys: 0,
        commands: 0,
        completed: false,
    };
    loop {
        status.stats.set_phase(Phase::Connecting);
        let found = discover_shards(&config).await;
        let (kind, shards) = match found {
            Ok(x) => x,
            Err(e) if cancel.is_cancelled() => {
                warn!(error = %e, "error while stopping");
                status.finish(JobState::Stopped, None);
                return Ok(total);
            }
            Err(e) => {
                match retry_or_give_up(&config, &mut retry, e, &status, None, &cancel).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        status.finish(JobState::Stopped, None);
                        return Ok(total);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        status.set_running();
        let plan: Vec<String> = shards
            .iter()
            .map(|s| format!("{} via {}", s.id, s.reader_node(config.use_replica)))
            .collect();
        info!(source_type = %kind, shards = %plan.join(", "), "source discovered");
        match run_shards(&config, &status, &limiter, shards, &cancel).await {
            ShardsEnd::Done(o) => {
                total.keys += o.keys;
                total.commands += o.commands;
                total.completed = o.completed;
                let state = if o.completed && !cancel.is_cancelled() {
                    JobState::Completed
                } else {
                    JobState::Stopped
                };
                status.finish(state, None);
                return Ok(total);
            }
            ShardsEnd::Reshaped(o) => {
                total.keys += o.keys;
                total.commands += o.commands;
                info!("the source's shards changed: discovering them again");
            }
            ShardsEnd::Failed(e) => {
                status.finish(JobState::Failed, Some(e.to_string()));
                return Err(e);
            }
        }
    }
}

/// Runs one source shard of the job (`shard`: its stable id, "0" or `slots-<first
/// slot>`) with its own retries, until it completes (full mode), fails for good, or
/// `cancel` fires. `status.stats` are the shard's figures. The service runs each shard of
/// a job as a task of its own, on whichever worker holds the task's lease; a shard no
/// longer in the source's topology ends with [`JobError::ShardGone`].
pub async fn run_shard(
    config: JobConfig,
    shard: &str,
    status: Arc<JobStatus>,
    cancel: CancellationToken,
) -> Result<JobOutcome, JobError> {
    let limiter = config.rate_limit.map(|r| Arc::new(RateLimiter::new(r)));
    let _log_filtered = LogFilteredOnDrop(status.stats.clone());
    status.set_shards(vec![ShardView {
        id: shard.to_string(),
        node: String::new(),
        stats: status.stats.clone(),
    }]);
    let r = shard_loop(
        &config,
        &status,
        shard.to_string(),
        None,
        status.stats.clone(),
        limiter,
        &cancel,
    )
    .await;
    match r {
        Ok(o) => {
            let state = if o.completed {
                JobState::Completed
            } else {
                JobState::Stopped
            };
            status.finish(state, None);
            Ok(o)
        }
        Err(e) => {
            status.finish(JobState::Failed, Some(e.to_string()));
            Err(e)
        }
    }
}

/// How a run of every shard ended.
enum ShardsEnd {
    Done(JobOutcome),
    /// A shard left the source's topology: discover again.
    Reshaped(JobOutcome),
    Failed(JobError),
}

/// Runs every shard, each with its own retries: a failing shard does not restart the
/// others. A shard failing for good stops the others (each drains what it has sent).
async fn run_shards(
    config: &JobConfig,
    status: &Arc<JobStatus>,
    limiter: &Option<Arc<RateLimiter>>,
    shards: Vec<Shard>,
    cancel: &CancellationToken,
) -> ShardsEnd {
    let several = shards.len() > 1;
    let views: Vec<ShardView> = shards
        .iter()
        .map(|s| ShardView {
            id: s.id.clone(),
            node: s.reader_node(config.use_replica).addr(),
            stats: if several {
                status.shard_stats(&s.id)
            } else {
                status.stats.clone()
            },
        })
        .collect();
    status.set_shards(views.clone());
    let all: Vec<Arc<ShardStats>> = views.iter().map(|v| v.stats.clone()).collect();
    let summing = several.then(|| {
        let all = all.clone();
        let totals = status.stats.clone();
        tokio::spawn(async move {
            loop {
                totals.sum_of(&all);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let stop_all = cancel.child_token();
    let mut set = tokio::task::JoinSet::new();
    let count = shards.len();
    for (shard, view) in shards.into_iter().zip(&views) {
        let config = config.clone();
        let status = status.clone();
        let stats = view.stats.clone();
        let limiter = limiter.clone();
        let stop = stop_all.clone();
        set.spawn(async move {
            let id = shard.id.clone();
            let r = shard_loop(
                &config,
                &status,
                id.clone(),
                Some((shard, count)),
                stats,
                limiter,
                &stop,
            )
            .await;
            (id, r)
        });
    }
    let mut total = JobOutcome {
        keys: 0,
        commands: 0,
        completed: true,
    };
    let mut failed = None;
    let mut reshaped = false;
    while let Some(joined) = set.join_next().await {
        let (id, r) = match joined {
            Ok(x) => x,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match r {
            Ok(o) => {
                total.keys += o.keys;
                total.commands += o.commands;
                total.completed &= o.completed;
            }
            Err(e @ JobError::ShardGone { .. }) => {
                warn!(shard = %id, error = %e, "stopping the other shards");
                reshaped = true;
                stop_all.cancel();
            }
            Err(e) => {
                warn!(shard = %id, error = %e, "shard failed for good; stopping the others");
                stop_all.cancel();
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(s) = summing {
        s.abort();
        status.stats.sum_of(&all);
    }
    if let Some(e) = failed {
        return ShardsEnd::Failed(e);
    }
    if reshaped && !cancel.is_cancelled() {
        return ShardsEnd::Reshaped(JobOutcome {
            completed: false,
            ..total
        });
    }
    if total.completed {
        status.stats.set_phase(Phase::Done);
    }
    ShardsEnd::Done(total)
}

/// The source's shards: a file is one shard (its reader takes no node); a live source
/// is discovered.
pub async fn discover_shards(config: &JobConfig) -> Result<(SourceType, Vec<Shard>), JobError> {
    match &config.source {
        SourceSpec::Rdb(_) | SourceSpec::Aof(_) => Ok((
            SourceType::Standalone,
            vec![Shard {
                id: "0".into(),
                master: Endpoint::new("file", 0),
                replicas: Vec::new(),
                slots: Vec::new(),
            }],
        )),
        SourceSpec::Redis(_) => Ok(discover(
            &config.source_seeds,
            config.source_type,
            config.source_master.as_deref(),
        )
        .await?),
    }
}

/// After a failure: waits for the next attempt as the retry policy says (true), or for a
/// stop (false); an error that no retry mends, or a policy that gives up, is returned.
async fn retry_or_give_up(
    config: &JobConfig,
    retry: &mut RetryState,
    e: JobError,
    status: &JobStatus,
    shard: Option<&str>,
    cancel: &CancellationToken,
) -> Result<bool, JobError> {
    // A file does not get better by reading it again.
    if e.is_permanent() || (config.source.is_file() && matches!(e, JobError::Source(_))) {
        return Err(e);
    }
    let kind = if e.is_connection() {
        FailureKind::Connection
    } else {
        FailureKind::Other
    };
    match retry.on_failure(kind, Timestamp::now()) {
        Decision::GiveUp(reason) => Err(JobError::GaveUp {
            reason,
            last: Box::new(e),
        }),
        Decision::RetryAt(at) => {
            let attempts = retry.attempts();
            match shard {
                Some(s) => {
                    warn!(shard = s, error = %e, attempt = attempts, next_attempt = %at, "{kind}; retrying the shard");
                    status.set_shard_retrying(s, &e.to_string(), attempts, at);
                }
                None => {
                    warn!(error = %e, attempt = attempts, next_attempt = %at, "{kind}; retrying");
                    status.set_retrying(&e.to_string(), attempts, at);
                }
            }
            let wait = at
                .duration_since(Timestamp::now())
                .try_into()
                .unwrap_or(Duration::ZERO);
            if wait > Duration::from_secs(5) {
                match config.retry {
                    RetryPolicy::Scheduled { .. } => {
                        info!(until = %at, "waiting for the retry window")
                    }
                    _ => info!(until = %at, "waiting before the next attempt"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => Ok(true),
                _ = cancel.cancelled() => Ok(false),
            }
        }
    }
}

/// Finds shard `id` in the source's topology now (its reader node changes with a
/// failover), with the number of shards.
async fn locate(config: &JobConfig, id: &str) -> Result<(Shard, usize), JobError> {
    let (_, shards) = discover_shards(config).await?;
    let count = shards.len();
    let known: Vec<String> = shards.iter().map(|s| s.id.clone()).collect();
    match shards.into_iter().find(|s| s.id == id) {
        Some(s) => Ok((s, count)),
        None => Err(JobError::ShardGone {
            shard: id.to_string(),
            shards: known.join(", "),
        }),
    }
}

/// One shard's attempts, each resuming from the shard's checkpoint, until it completes
/// (full mode), stops, or fails for good. `first`: the shard as just discovered (with
/// the number of shards), else it is looked up.
async fn shard_loop(
    config: &JobConfig,
    status: &Arc<JobStatus>,
    id: String,
    mut first: Option<(Shard, usize)>,
    stats: Arc<ShardStats>,
    limiter: Option<Arc<RateLimiter>>,
    cancel: &CancellationToken,
) -> Result<JobOutcome, JobError> {
    let mut retry = RetryState::new(config.retry.clone());
    let mut carry = Carry::default();
    // What every attempt applied, not only the last one (the writer's own summary is lost
    // with an attempt that fails).
    let base = (
        stats.keys_applied.load(Relaxed),
        stats.records_applied.load(Relaxed),
    );
    let outcome = |completed: bool| {
        let keys = stats.keys_applied.load(Relaxed).saturating_sub(base.0);
        let records = stats.records_applied.load(Relaxed).saturating_sub(base.1);
        JobOutcome {
            keys,
            commands: records.saturating_sub(keys),
            completed,
        }
    };
    loop {
        // Progress is the target getting past where the attempt's stream started: a
        // snapshot applied and then lost (a target out of memory, a stream that breaks at
        // once) is not, or a job failing after every snapshot would fork the source for
        // ever with its failure streak starting over each time.
        let progress_mark = (stats.stream_start.load(Relaxed), stats.applied_offset.get());
        let resyncs_before = stats.full_resyncs.load(Relaxed);
        status.set_shard_running(&id);
        let result = async {
            stats.set_phase(Phase::Connecting);
            let (shard, count) = match first.take() {
                Some(x) => x,
                None => locate(config, &id).await?,
            };
            let node = shard.reader_node(config.use_replica).clone();
            status.set_shard_node(&id, node.addr());
            let target = resolve_target(config).await?;
            attempt_shard(
                config,
                &target,
                &id,
                &node,
                (count > 1).then(|| shard.slots.clone()),
                &stats,
                limiter.clone(),
                &mut carry,
                cancel,
            )
            .await
        }
        .await;
        if stats.records_applied.load(Relaxed) > 0 {
            carry.applied_before = true;
            carry.had_checkpoint |= config.checkpoint;
        }
        let now = (stats.stream_start.load(Relaxed), stats.applied_offset.get());
        let progressed = now != progress_mark && now.1 > now.0;
        match result {
            Ok(o) => return Ok(outcome(o.completed)),
            Err(e) if cancel.is_cancelled() => {
                warn!(shard = %id, error = %e, "error while stopping");
                return Ok(outcome(false));
            }
            Err(e @ JobError::ShardGone { .. }) => return Err(e),
            Err(JobError::Target(e @ TargetError::LostData { .. })) => {
                if config.mode == Mode::Incremental {
                    return Err(JobError::CannotRecopy(e));
                }
                warn!(shard = %id, error = %e, "the target lost data: copying the source again (a new snapshot)");
                status.record(format!("shard {id}: {e}; copying the source again"));
                carry.recopy = true;
                carry.had_checkpoint = false;
                carry.applied_before = true;
            }
            Err(e) => {
                if progressed {
                    retry.on_progress();
                } else if stats.full_resyncs.load(Relaxed) != resyncs_before {
                    retry.snapshot_failed();
                }
                match retry_or_give_up(config, &mut retry, e, status, Some(&id), cancel).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(outcome(false)),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// What one shard's attempts learn and pass on to the next.
#[derive(Default)]
struct Carry {
    /// An earlier attempt applied data: a new snapshot flushes first.
    applied_before: bool,
    /// The shard's checkpoint existed (or was written) in an earlier attempt: if it is gone
    /// now, the target lost data under ferry.
    had_checkpoint: bool,
    /// The target lost data: the next attempt forgets the checkpoint and copies again.
    recopy: bool,
    /// The job's ownership of the target, once established.
    owned: Option<ferry_sink::owner::Ownership>,
}

/// The node to write to: for a replica-set or sentinel target its current master (found
/// again at every attempt, so a target failover is followed), for a cluster any node that
/// answers (the cluster writer learns the rest), else the first address.
pub(crate) async fn resolve_target(config: &JobConfig) -> Result<Endpoint, JobError> {
    if config.target_type == SourceType::Standalone {
        return Ok(config.target.clone());
    }
    let found = discover(
        &config.target_seeds,
        config.target_type,
        config.target_master.as_deref(),
    )
    .await;
    let (kind, shards) = match found {
        Ok(r) => r,
        Err(SourceError::Node(e)) => return Err(JobError::Target(TargetError::Node(e))),
        // Retried like any refusal: a failover may be under way.
        Err(e) => {
            return Err(JobError::Target(TargetError::Rejected {
                addr: config.target.addr(),
                command: "topology discovery".into(),
                message: e.to_string(),
            }))
        }
    };
    let node = shards
        .first()
        .map(|s| s.master.clone())
        .unwrap_or_else(|| config.target.clone());
    if node != config.target {
        info!(target_type = %kind, node = %node, "writing to the target's master");
    }
    Ok(node)
}

/// One connection of reader and writer for one source shard, from its checkpoint (or a
/// new snapshot) until the end, a stop, or the first failure. `slots`: the shard's slots
/// when the source has several shards (its new snapshot then flushes only its keys).
#[allow(clippy::too_many_arguments)]
async fn attempt_shard(
    config: &JobConfig,
    target: &Endpoint,
    shard_id: &str,
    node: &Endpoint,
    slots: Option<Vec<(u16, u16)>>,
    stats: &Arc<ShardStats>,
    limiter: Option<Arc<RateLimiter>>,
    carry: &mut Carry,
    cancel: &CancellationToken,
) -> Result<JobOutcome, JobError> {
    stats.set_phase(Phase::Connecting);
    let ckpt_key = config
        .checkpoint
        .then(|| checkpoint::key(&config.name, shard_id));
    // A cluster target keeps a checkpoint per slot besides the job's own (ferry_sink::cluster).
    let cluster = ferry_sink::is_cluster(target).await?;
    if !config.source.is_file() {
        refuse_same_server(node, target, cluster).await?;
    }
    // Under a lease (a task of the service: one source shard of the job): cut off an
    // earlier holder's writers of this shard before reading its checkpoint. The name is
    // per shard, so tasks of one job on other workers are left alone.
    let client_name = match &config.fence {
        Some(fence) => {
            let nodes = ferry_sink::slot::data_nodes(target, cluster).await?;
            let task = task_name(&config.name, shard_id);
            for node in &nodes {
                ferry_sink::fence::cut_off_older(node, &task, fence.generation()).await?;
            }
            Some(ferry_sink::fence::client_name(&task, fence.generation()))
        }
        None => None,
    };
    if carry.recopy {
        // The checkpoint written after the loss claims what the target no longer holds.
        if let Some(k) = &ckpt_key {
            if cluster {
                ferry_sink::delete_cluster_checkpoint(target, &config.name, shard_id).await?;
            } else {
                checkpoint::delete(target, k).await?;
            }
        }
        carry.recopy = false;
    }
    let (saved, slot_offsets) = match &ckpt_key {
        Some(_) if cluster => {
            match ferry_sink::load_cluster_checkpoint(target, &config.name, shard_id).await? {
                Some((c, slots)) => (Some(c), Some(Arc::new(slots))),
                None => (None, None),
            }
        }
        Some(k) => (checkpoint::load(target, k).await?, None),
        None => (None, None),
    };
    if let (Some(Checkpoint::Failed { offset }), Some(k)) = (&saved, &ckpt_key) {
        return Err(JobError::StoppedAtFailure {
            key: String::from_utf8_lossy(k).into_owned(),
            offset: *offset,
        });
    }
    if let (None, Some(k)) = (&saved, &ckpt_key) {
        if carry.had_checkpoint && !config.source.is_file() {
            return Err(JobError::Target(TargetError::LostData {
                addr: target.addr(),
                key: String::from_utf8_lossy(k).into_owned(),
            }));
        }
    }
    if saved.is_some() {
        carry.had_checkpoint = true;
    }
    let (ownership, unrecorded) =
        crate::ownership::establish(config, target, cluster, saved.is_some(), carry.owned).await?;
    carry.owned = Some(ownership);
    let evictions = crate::evictions::baseline(target, cluster).await?;
    let mut ropts = ReplicaOptions::new(node.clone());
    ropts.client_name = Some(source_client_name(&config.name));
    if let Some(name) = &config.psync_command {
        ropts.psync_command = name.clone();
    }
    ropts.rate_limit = limiter;
    ropts.read_timeout = config.source_timeout;
    // Whatever this job applied before (a checkpoint says so, or an earlier attempt) must
    // not outlive a new snapshot: the target is flushed before one.
    let mut flush = saved.is_some() || carry.applied_before;
    match (config.mode, &saved) {
        // Files and SCAN have no offsets to resume from: a restart reads everything
        // again, after the flush.
        _ if config.source.is_file() => ropts.stop_after_snapshot = true,
        (Mode::Full, _) => ropts.stop_after_snapshot = true,
        (_, Some(Checkpoint::Stream { replid, offset, db })) => {
            info!(%replid, offset, db, "resuming from the checkpoint");
            ropts.resume = Some((replid.clone(), *offset));
            ropts.resume_db = *db;
            if config.mode == Mode::Incremental {
                ropts.refuse_full_resync = true;
            }
        }
        (Mode::Incremental, _) => {
            // From now on: a new snapshot read and dropped. (A PSYNC at the source's current
            // offset would avoid the snapshot, but continues in whatever database the
            // source last selected for its replicas, which cannot be known.)
            ropts.skip_snapshot = true;
            flush = false;
        }
        (Mode::FullIncremental, _) => {}
    }
    let mut wopts = WriterOptions::new(target.clone());
    wopts.overwrite = config.overwrite;
    wopts.checkpoint_key = ckpt_key.clone();
    // ferry flushes only what it owns: a job sharing its target fails a new snapshot instead
    // (unless the user allowed the flush).
    let may_flush = ownership == ferry_sink::owner::Ownership::Owned || config.allow_flush;
    wopts.flush_before_snapshot = flush && may_flush;
    wopts.refuse_snapshot = flush && !may_flush;
    wopts.checkpoint_exists = saved.is_some();
    wopts.record_ownership =
        unrecorded.then(|| (ferry_sink::owner::key(&config.name), ownership.as_str()));
    wopts.flush_slots = slots;
    wopts.skip_unsupported = config.skip_unsupported;
    wopts.skip_failed_commands = config.skip_failed_commands;
    // An owned target is empty (or flushed) before the snapshot: a key already there came
    // from the snapshot itself.
    wopts.reply_timeout = config.target_timeout;
    wopts.target_was_empty = ownership == ferry_sink::owner::Ownership::Owned;
    wopts.slot_offsets = slot_offsets;
    wopts.client_name = client_name;
    // Fencing of the cluster writer's own sends, reconnects and resends: it asks the
    // lease before each, and a lapsed lease stops the task (tripping the fence cancels it,
    // so the writer's `Fenced` error ends the attempt as a stop, not a failure).
    wopts.still_valid = config.fence.clone().map(|fence| {
        ferry_sink::fence::StillValid::new(move || {
            let valid = fence.is_valid();
            if !valid {
                fence.trip();
            }
            valid
        })
    });
    if let Some(t) = config.big_key_threshold {
        wopts.big_value_bytes = t;
    }
    let mut big = ferry_rdb::BigValues::default();
    if let Some(t) = config.big_key_threshold {
        big.string_bytes = t as u64;
    }
    if let Some(n) = config.big_key_elements {
        big.elements = n.max(1);
        big.nodes = (n / 50).max(1);
    }
    ropts.big_values = Some(big);
    ropts.filter = config.filter.clone();
    wopts.db_map = config.db_map.clone();

    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let rx = match config.fence.clone() {
        Some(fence) => fenced(rx, fence),
        None => rx,
    };
    // Reader and writer stop on their own tokens so that a reader failure lets the writer
    // drain first.
    let writer_cancel = cancel.child_token();
    let reader_cancel = cancel.child_token();
    let mut writer = if cluster {
        tokio::spawn(ferry_sink::write_cluster(
            wopts,
            rx,
            stats.clone(),
            writer_cancel.clone(),
        ))
    } else {
        tokio::spawn(ferry_sink::write(
            wopts,
            rx,
            stats.clone(),
            writer_cancel.clone(),
        ))
    };
    let mut reader = tokio::spawn(crate::source::read(
        config.clone(),
        ropts,
        tx,
        stats.clone(),
        reader_cancel.clone(),
    ));

    // Whichever ends first, the other is brought to an end and both results are read; an
    // eviction on the target ends both.
    let watch = crate::evictions::watch(evictions.as_ref(), stats.clone());
    tokio::pin!(watch);
    let (read, written) = tokio::select! {
        e = &mut watch => {
            reader_cancel.cancel();
            writer_cancel.cancel();
            let _ = reader.await;
            let _ = writer.await;
            return Err(e);
        }
        r = &mut reader => {
            // Reader done (snapshot read in full mode, stopped, or failed): its sender is
            // gone, so the writer applies what is queued and returns.
            let read = joined(r);
            (read, joined(writer.await))
        }
        w = &mut writer => {
            let written = joined(w);
            reader_cancel.cancel();
            (joined(reader.await), written)
        }
    };
    // A reader failure only closes the channel (the writer drains and succeeds), while a
    // writer failure makes the reader's sends fail: the writer's error is the cause.
    if let (Err(TargetError::CommandFailed { offset, .. }), Some(k)) = (&written, &ckpt_key) {
        // Batches sent after the refused one may still commit with their checkpoints: once
        // they have (a moment on any link), the checkpoint is marked so that no later run
        // resumes past the refused command.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match checkpoint::mark_failed(target, cluster, k, *offset).await {
            Ok(()) => warn!(shard = shard_id, offset, "the checkpoint is marked failed: a later run refuses to resume past the refused command"),
            Err(e) => warn!(shard = shard_id, error = %e, "could not mark the checkpoint failed"),
        }
    }
    // Evictions since the watcher's last look fail the attempt before anything says
    // complete, and explain a failure they caused (an evicted checkpoint reads as lost data,
    // which would otherwise copy again, and be evicted again, forever).
    if let Some(b) = &evictions {
        b.check().await?;
    }
    let summary = written?;
    read?;
    let completed =
        (config.mode == Mode::Full || config.source.is_file()) && !cancel.is_cancelled();
    if completed {
        stats.set_phase(Phase::Done);
        info!(shard = shard_id, keys = summary.keys, "full sync complete");
    }
    Ok(JobOutcome {
        keys: summary.keys,
        commands: summary.commands,
        completed,
    })
}

/// The name of the job's replica connection on the source (`CLIENT LIST` shows it).
fn source_client_name(job: &str) -> String {
    format!("ferry-reader~{}", crate::lease::client_name_job(job))
}

/// Refuses, before anything is written, a source node that is the target (or one of its
/// masters) or shares its replication group or cluster: the job would feed itself.
async fn refuse_same_server(
    source: &Endpoint,
    target: &Endpoint,
    cluster: bool,
) -> Result<(), JobError> {
    let sid = match crate::identity::identify(source).await {
        Ok(id) => id,
        Err(e) if e.is_connection() => return Err(JobError::Source(SourceError::Node(e))),
        // A source that refuses INFO (some managed services) cannot be told apart:
        // the address check of the pre-check is all there is.
        Err(e) => {
            warn!(source = %source, error = %e, "cannot identify the source server; not checking that the target differs");
            return Ok(());
        }
    };
    let nodes = ferry_sink::slot::data_nodes(target, cluster).await?;
    for t in &nodes {
        let tid = match crate::identity::identify(t).await {
            Ok(id) => id,
            Err(e) if e.is_connection() => return Err(JobError::Target(TargetError::Node(e))),
            Err(e) => {
                warn!(target = %t, error = %e, "cannot identify the target server; not checking that it differs from the source");
                continue;
            }
        };
        if let Some(why) = crate::identity::same(&sid, &tid) {
            return Err(JobError::SameServer(crate::identity::refusal(
                source, t, why,
            )));
        }
    }
    Ok(())
}

/// The name a task (one source shard of a job) goes by in its writers' client names:
/// `<job>:<shard>`. A service job's name holds no ':' (letters, digits, '-', '_', '.'), so no
/// job's or shard's name is a prefix of another task's up to the `-g` that follows.
pub fn task_name(job: &str, shard: &str) -> String {
    format!("{job}:{shard}")
}

/// Logs the filter counts however the job ends.
struct LogFilteredOnDrop(Arc<ShardStats>);
impl Drop for LogFilteredOnDrop {
    fn drop(&mut self) {
        crate::scope::log_filtered(&self.0);
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(e: TargetError) -> JobError {
        JobError::Target(e)
    }

    /// What no retry mends stops the job; a writer task that ended without an answer (a
    /// bug, a cancellation) is retried from the checkpoint like a lost link.
    #[test]
    fn named_target_errors_are_permanent_or_not_by_what_they_are() {
        let addr = || "127.0.0.1:1".to_string();
        for e in [
            TargetError::Incompatible {
                addr: addr(),
                message: "x".into(),
            },
            TargetError::BadReply {
                addr: addr(),
                what: "SCAN".into(),
            },
            TargetError::Topology {
                addr: addr(),
                message: "slot 5 is served by no master".into(),
            },
            TargetError::ForeignValue {
                addr: addr(),
                what: "checkpoint key",
                key: "ferry:checkpoint:j:0".into(),
                value: "junk".into(),
            },
            TargetError::LibraryExists {
                addr: addr(),
                message: "Library 'l' already exists".into(),
            },
        ] {
            assert!(target(e).is_permanent());
        }
        let internal = target(TargetError::Internal {
            addr: addr(),
            message: "reply reader failed: task panicked".into(),
        });
        assert!(!internal.is_permanent());
        let text = target(TargetError::ForeignValue {
            addr: addr(),
            what: "ownership record",
            key: "k".into(),
            value: "v".into(),
        })
        .to_string();
        assert!(
            text.contains("ownership record \"k\" holds \"v\""),
            "{text}"
        );
    }
}
