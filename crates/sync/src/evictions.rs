//! Evictions on the target. A target with `maxmemory` and an evicting policy deletes copied
//! keys when it fills up, and answers every write with OK all the same: without looking,
//! ferry would report a copy complete that lost most of its keys. So each attempt reads
//! `evicted_keys` of every node it writes at its start and again while it runs (every 2 s,
//! once the snapshot is applied, and at the end of a full copy); any increase fails the job
//! permanently, since a retry would evict again.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::ShardStats;
use ferry_resp::{Connection, Endpoint};
use ferry_sink::TargetError;
use tracing::warn;

use crate::job::JobError;

/// How often the watcher re-reads the counters while the attempt runs.
const EVERY: Duration = Duration::from_secs(2);

/// The target nodes' `evicted_keys` when the attempt started.
#[derive(Debug)]
pub struct Baseline {
    nodes: Vec<(Endpoint, u64)>,
}

/// A node that evicted keys while the job copied into it.
#[derive(Debug, Clone)]
pub struct Evicted {
    pub addr: String,
    pub keys: u64,
    pub maxmemory: String,
    pub policy: String,
}

impl std::fmt::Display for Evicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {} evicted {} keys during the copy (maxmemory {}, maxmemory-policy {}): the target no longer holds what was copied; raise maxmemory on the target or set maxmemory-policy noeviction, then copy again",
            self.addr, self.keys, self.maxmemory, self.policy
        )
    }
}

/// Reads the baseline of every node the job writes: `target` itself, or every master of a
/// cluster target. `None` when a node refuses INFO (some managed services): a warning, and
/// the attempt goes on unchecked.
pub async fn baseline(target: &Endpoint, cluster: bool) -> Result<Option<Baseline>, JobError> {
    let nodes = ferry_sink::slot::data_nodes(target, cluster).await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        match evicted_keys(&node).await {
            Ok(Some(n)) => out.push((node, n)),
            Ok(None) => {
                warn!(target = %node, "the target reports no evicted_keys in INFO stats: not checking it for evictions");
                return Ok(None);
            }
            Err(e) if e.is_connection() => return Err(JobError::Target(TargetError::Node(e))),
            Err(e) => {
                warn!(target = %node, error = %e, "the target refuses INFO: not checking it for evictions");
                return Ok(None);
            }
        }
    }
    Ok(Some(Baseline { nodes: out }))
}

impl Baseline {
    /// Fails when any node evicted keys since the baseline. A node that cannot be read
    /// now (a broken link) is skipped: the writer reports the link itself.
    pub async fn check(&self) -> Result<(), JobError> {
        for (node, before) in &self.nodes {
            let now = match evicted_keys(node).await {
                Ok(Some(n)) => n,
                _ => continue,
            };
            if now > *before {
                return Err(JobError::Evicted(describe(node, now - before).await));
            }
        }
        Ok(())
    }

    /// Returns only when a node evicted keys: re-reads every [`EVERY`], and as soon as the
    /// shard's snapshot is applied. Meant to be raced against the attempt's reader and
    /// writer.
    pub async fn watch(&self, stats: Arc<ShardStats>) -> JobError {
        let mut in_step = stats.target_in_step();
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now_in_step = stats.target_in_step();
            let applied = now_in_step && !in_step;
            in_step = now_in_step;
            if applied || since.elapsed() >= EVERY {
                since = tokio::time::Instant::now();
                if let Err(e) = self.check().await {
                    return e;
                }
            }
        }
    }
}

/// The watcher of an optional baseline: never returns without one.
pub async fn watch(baseline: Option<&Baseline>, stats: Arc<ShardStats>) -> JobError {
    match baseline {
        Some(b) => b.watch(stats).await,
        None => std::future::pending().await,
    }
}

async fn evicted_keys(node: &Endpoint) -> Result<Option<u64>, ferry_resp::Error> {
    let mut conn = Connection::connect(node).await?;
    let stats = conn.info("stats").await?;
    Ok(stats
        .get("evicted_keys")
        .and_then(|v| v.trim().parse().ok()))
}

/// The error for `node`, with its memory settings as far as it tells them.
async fn describe(node: &Endpoint, keys: u64) -> Evicted {
    let mut e = Evicted {
        addr: node.addr(),
        keys,
        maxmemory: "unknown".into(),
        policy: "unknown".into(),
    };
    if let Ok(mut conn) = Connection::connect(node).await {
        if let Ok(mem) = conn.info("memory").await {
            if let Some(v) = mem.get("maxmemory") {
                e.maxmemory = v.to_string();
            }
            if let Some(v) = mem.get("maxmemory_policy") {
                e.policy = v.to_string();
            }
        }
    }
    e
}
