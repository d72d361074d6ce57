//! How a stopped `ferry sync` ended: a stop (SIGINT/SIGTERM) before every shard's snapshot
//! was applied leaves a partial target, which must not exit 0 like a clean stop.

use ferry_sync::{JobStatus, Phase};

/// Every shard's snapshot is on the target (each is streaming, or done).
pub(crate) fn snapshot_applied(status: &JobStatus) -> bool {
    let shards = status.shards();
    let applied = |p: Phase| matches!(p, Phase::Incremental | Phase::Done);
    if shards.is_empty() {
        return applied(status.stats.phase());
    }
    shards.iter().all(|s| applied(s.stats.phase()))
}
