//! Removing what one source shard put on the target, before that shard's new snapshot.
//! With one source shard the job owns the whole target and `FLUSHALL` does it; with a
//! cluster source, each shard owns only the keys of its slots, so those are deleted
//! key by key and the other shards' data stays.

use bytes::Bytes;
use ferry_resp::{Connection, Endpoint, Frame, Scan};
use tracing::warn;

use crate::checkpoint::is_checkpoint_key;
use crate::error::TargetError;
use crate::slot::{in_ranges, key_slot};

/// Deletes, in every database of `target`, the keys whose slot is in `ranges`. Returns how
/// many were deleted.
pub async fn delete_slots(target: &Endpoint, ranges: &[(u16, u16)]) -> Result<u64, TargetError> {
    let mut conn = Connection::connect(target).await?;
    let dbs: Vec<u32> = conn
        .info("keyspace")
        .await?
        .keyspace()
        .into_iter()
        .map(|(db, _)| db)
        .collect();
    let mut deleted = 0u64;
    for db in dbs {
        conn.request(&[b"SELECT".as_ref(), db.to_string().as_bytes()])
            .await?;
        let mut scan = Scan::new(1000);
        while let Some(keys) = scan.next(&mut conn).await? {
            let doomed: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| !is_checkpoint_key(k) && in_ranges(key_slot(k), ranges))
                .collect();
            // One UNLINK per key, pipelined: on a cluster node keys of different slots
            // cannot share a command.
            for k in &doomed {
                conn.send(&[b"UNLINK".as_ref(), k]).await?;
            }
            for _ in &doomed {
                let (reply, _) = conn.read_frame("UNLINK").await?;
                if let Frame::Error(e) = reply {
                    return Err(TargetError::Rejected {
                        addr: target.addr(),
                        command: "UNLINK".into(),
                        message: String::from_utf8_lossy(&e).into_owned(),
                    });
                }
            }
            deleted += doomed.len() as u64;
        }
    }
    warn!(target = %target, deleted, "flushed the shard's slots before its new snapshot: removed {deleted} keys this job wrote before");
    Ok(deleted)
}

/// Logs, at warn, the `FLUSHALL` the writer is about to send before a new snapshot, with the
/// number of keys it removes (every flush is told, with what it costs).
pub async fn log_flushall(target: &Endpoint, cluster: bool) {
    match crate::owner::count_keys(target, cluster).await {
        Ok(keys) => {
            warn!(target = %target, keys, "flushing the target (FLUSHALL) before a new snapshot: removing {keys} keys this job wrote before")
        }
        Err(e) => {
            warn!(target = %target, error = %e, "flushing the target (FLUSHALL) before a new snapshot (could not count its keys)")
        }
    }
}
