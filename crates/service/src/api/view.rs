//! What a job looks like from outside: its state and every shard's, figures summed over
//! the workers running it, the throughput samples merged.

use super::*;

#[derive(Serialize)]
pub(super) struct JobView {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) description: String,
    pub(super) desired_state: String,
    /// What the job is doing: created, starting, full-sync, incremental, retrying,
    /// completed, stopped, paused, failed (from its shards' states).
    pub(super) state: String,
    pub(super) mode: String,
    pub(super) source_nodes: Vec<String>,
    pub(super) target_nodes: Vec<String>,
    pub(super) progress_percent: f64,
    /// Seed: "source transactions executed" (records read).
    pub(super) source_transactions: u64,
    /// Seed: "target transactions executed" (records applied).
    pub(super) target_transactions: u64,
    pub(super) keys_read: u64,
    pub(super) keys_applied: u64,
    pub(super) bytes_read: u64,
    /// Absent while any shard's lag is unknown (its source link is down), never 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lag_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lag_seconds: Option<f64>,
    /// Every shard's source link is up.
    pub(super) link_up: bool,
    /// The longest time since a shard last heard from its source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seconds_since_contact: Option<f64>,
    pub(super) read_rate: f64,
    pub(super) apply_rate: f64,
    pub(super) bytes_rate: f64,
    pub(super) attempts: u32,
    pub(super) next_attempt: Option<String>,
    pub(super) last_error: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) spec: JobSpec,
    /// The workers that run the job's shards (comma-separated when several), and their
    /// addresses.
    pub(super) worker: Option<String>,
    pub(super) worker_address: Option<String>,
    /// One entry per source shard: the worker that runs it, its state and figures.
    pub(super) shards: Vec<ShardView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) history: Option<Vec<crate::store::Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) samples: Option<Vec<crate::runner::Sample>>,
}

/// One source shard of a job (a task), as its owner runs it or last reported it.
#[derive(Serialize)]
pub(super) struct ShardView {
    /// "0", or `slots-<first slot>` for a shard of a cluster source.
    pub(super) shard: String,
    /// starting, full-sync, incremental, retrying, completed, failed, waiting (no
    /// worker holds it), stopped.
    pub(super) state: String,
    pub(super) worker: Option<String>,
    pub(super) worker_address: Option<String>,
    /// The source node the shard is read from.
    pub(super) node: Option<String>,
    pub(super) lease_generation: i64,
    /// The shard left the source's topology (resharded).
    pub(super) retired: bool,
    pub(super) error: Option<String>,
    #[serde(flatten)]
    pub(super) figures: TaskFigures,
}

/// The job from its row and its tasks' rows; the tasks this worker runs (`local`) give
/// their live figures.
pub(super) fn view(row: &JobRow, local: &[Arc<Running>], tasks: &[TaskRow]) -> JobView {
    let mode = row
        .spec
        .mode
        .clone()
        .unwrap_or_else(|| "full+incremental".into());
    let running = row.desired_state == Desired::Running;
    let mut shards: Vec<ShardView> = tasks
        .iter()
        .map(|t| {
            let here = local.iter().find(|r| r.key.shard == t.shard);
            let figures = match here {
                Some(r) => r.figures(),
                None => t.figures.clone(),
            };
            let state = match (&t.outcome, here, t.live) {
                (Some(o), _, _) => o.clone(),
                _ if t.retired => "retired".into(),
                (None, Some(r), _) if !r.is_finished() => r.state_name().into(),
                (None, _, true) => t.state.clone().unwrap_or_else(|| "starting".into()),
                (None, _, false) if running => "waiting".into(),
                (None, _, false) => row.desired_state.as_str().to_string(),
            };
            ShardView {
                shard: t.shard.clone(),
                state,
                worker: t.owner.clone().filter(|_| t.live),
                worker_address: t.address.clone().filter(|_| t.live),
                node: here.and_then(|r| r.node()).or_else(|| t.node.clone()),
                lease_generation: t.generation,
                retired: t.retired,
                error: t.error.clone().or_else(|| figures.last_error.clone()),
                figures,
            }
        })
        .collect();
    let current: Vec<&ShardView> = shards.iter().filter(|s| !s.retired).collect();
    let state = if !running {
        row.desired_state.as_str().to_string()
    } else {
        let has = |s: &str| current.iter().any(|v| v.state == s);
        if current.is_empty() || has("waiting") || has("starting") {
            if has("retrying") {
                "retrying".into()
            } else {
                "starting".into()
            }
        } else if has("retrying") || has("failed") {
            "retrying".into()
        } else if has("full-sync") {
            "full-sync".into()
        } else if current.iter().all(|v| v.state == "completed") {
            "completed".into()
        } else {
            "incremental".into()
        }
    };
    let mut workers: Vec<(String, String)> = Vec::new();
    for s in &current {
        if let Some(w) = &s.worker {
            let pair = (w.clone(), s.worker_address.clone().unwrap_or_default());
            if !workers.contains(&pair) {
                workers.push(pair);
            }
        }
    }
    let join = |f: fn(&(String, String)) -> &String| {
        (!workers.is_empty()).then(|| {
            workers
                .iter()
                .map(|p| f(p).as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let totals = shards.iter().fold(row.totals, |acc, s| {
        acc.plus(crate::store::Totals {
            records_read: s.figures.records_read,
            records_applied: s.figures.records_applied,
            keys_read: s.figures.keys_read,
            keys_applied: s.figures.keys_applied,
            bytes_read: s.figures.bytes_read,
        })
    });
    let sum = |f: fn(&TaskFigures) -> f64| current.iter().map(|s| f(&s.figures)).sum::<f64>();
    let progress = if row.desired_state == Desired::Completed {
        100.0
    } else if current.is_empty() {
        0.0
    } else {
        (sum(|f| f.progress_percent) / current.len() as f64 * 10.0).round() / 10.0
    };
    let last_error = row.last_error.clone().or_else(|| {
        current.iter().find_map(|s| {
            s.error.as_ref().map(|e| {
                if s.shard == "0" || e.starts_with("shard ") {
                    e.clone()
                } else {
                    format!("shard {}: {e}", s.shard)
                }
            })
        })
    });
    let mut v = JobView {
        id: row.id,
        name: row.spec.name.clone(),
        description: row.spec.description.clone(),
        desired_state: row.desired_state.as_str().to_string(),
        state,
        mode,
        source_nodes: row.spec.source.addresses.clone(),
        target_nodes: row.spec.target.addresses.clone(),
        progress_percent: progress,
        source_transactions: totals.records_read,
        target_transactions: totals.records_applied,
        keys_read: totals.keys_read,
        keys_applied: totals.keys_applied,
        bytes_read: totals.bytes_read,
        lag_bytes: Some(0),
        lag_seconds: Some(0.0),
        link_up: !current.is_empty() && current.iter().all(|s| s.figures.link_up),
        seconds_since_contact: current
            .iter()
            .filter_map(|s| s.figures.seconds_since_contact)
            .reduce(f64::max),
        read_rate: 0.0,
        apply_rate: 0.0,
        bytes_rate: 0.0,
        attempts: current
            .iter()
            .map(|s| s.figures.attempts)
            .max()
            .unwrap_or(0),
        next_attempt: current
            .iter()
            .filter_map(|s| s.figures.next_attempt.clone())
            .min(),
        last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
        spec: row.spec.public(),
        worker: join(|p| &p.0),
        worker_address: join(|p| &p.1),
        shards: Vec::new(),
        history: None,
        samples: None,
    };
    if running {
        // One shard whose lag is unknown makes the job's unknown.
        v.lag_bytes = current.iter().map(|s| s.figures.lag_bytes).sum();
        v.lag_seconds = current
            .iter()
            .map(|s| s.figures.lag_seconds)
            .try_fold(0.0, |a, l| l.map(|l| f64::max(a, l)));
        v.read_rate = sum(|f| f.read_rate);
        v.apply_rate = sum(|f| f.apply_rate);
        v.bytes_rate = sum(|f| f.bytes_rate);
    }
    shards.sort_by_key(|s| shard_order(&s.shard));
    v.shards = shards;
    if !local.is_empty() {
        v.samples = Some(merged_samples(local));
    }
    v
}

/// Shards in slot order ("slots-100" before "slots-5461").
pub(super) fn shard_order(id: &str) -> (u32, String) {
    let n = id
        .strip_prefix("slots-")
        .unwrap_or(id)
        .parse()
        .unwrap_or(u32::MAX);
    (n, id.to_string())
}

/// The chart's points of the tasks run here, added up point by point (all sampled once a
/// second, aligned on the latest).
pub(super) fn merged_samples(local: &[Arc<Running>]) -> Vec<crate::runner::Sample> {
    let all: Vec<Vec<crate::runner::Sample>> = local.iter().map(|r| r.samples()).collect();
    let Some(longest) = all.iter().map(Vec::len).max() else {
        return Vec::new();
    };
    (0..longest)
        .map(|i| {
            let mut out: Option<crate::runner::Sample> = None;
            for s in &all {
                let Some(p) = (s.len() + i).checked_sub(longest).and_then(|j| s.get(j)) else {
                    continue;
                };
                out = Some(match out {
                    None => *p,
                    Some(o) => crate::runner::Sample {
                        at: o.at.max(p.at),
                        records_read: o.records_read + p.records_read,
                        records_applied: o.records_applied + p.records_applied,
                        bytes_read: o.bytes_read + p.bytes_read,
                        lag_bytes: o.lag_bytes + p.lag_bytes,
                        lag_seconds: o.lag_seconds.max(p.lag_seconds),
                        apply_rate: o.apply_rate + p.apply_rate,
                    },
                });
            }
            out.unwrap_or(crate::runner::Sample {
                at: 0,
                records_read: 0,
                records_applied: 0,
                bytes_read: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
                apply_rate: 0.0,
            })
        })
        .collect()
}

/// The tasks of job `id` this worker runs.
pub(super) fn local(app: &App, id: i64) -> Vec<Arc<Running>> {
    app.manager
        .of_job(id)
        .into_iter()
        .filter(|r| app.workers.holds(&r.key))
        .collect()
}

pub(super) async fn job_view(app: &App, row: &JobRow) -> ApiResult<JobView> {
    let tasks = app.store.job_tasks(row.id).await?;
    Ok(view(row, &local(app, row.id), &tasks))
}
