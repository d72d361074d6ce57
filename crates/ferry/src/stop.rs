//! How a stopped `ferry sync` ended: a stop (SIGINT/SIGTERM) before every shard's snapshot
//! was applied leaves a partial target, which must not exit 0 like a clean stop.

use ferry_sync::JobStatus;

/// Every shard's target has been in step in this run and is not taking a new snapshot.
pub(crate) fn snapshot_applied(status: &JobStatus) -> bool {
    let shards = status.shards();
    if shards.is_empty() {
        return status.stats.target_in_step();
    }
    shards.iter().all(|s| s.stats.target_in_step())
}
