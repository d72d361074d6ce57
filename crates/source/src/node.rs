//! A live source read by the method the job asked for: as its replica, by SCAN, or
//! (auto) as its replica unless it refuses, then by SCAN.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::SourceError;
use crate::replica::{replicate, ReplicaOptions};
use crate::scan::scan;
use crate::spec::SourceMethod;
use ferry_core::event::Event;
use ferry_core::stats::ShardStats;

/// Reads one node until it fails, `cancel` fires, or (full mode) the snapshot is read.
pub async fn read_node(
    method: SourceMethod,
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    match method {
        SourceMethod::Psync => replicate(opts, tx, stats, cancel).await,
        SourceMethod::Scan => scan(opts, tx, stats, cancel).await,
        SourceMethod::Auto => {
            // A refusal comes before any event is sent: nothing to undo downstream.
            match replicate(opts.clone(), tx.clone(), stats.clone(), cancel.clone()).await {
                Err(SourceError::PsyncRefused {
                    addr,
                    command,
                    message,
                }) => {
                    warn!(source = %addr, %command, reply = %message,
                          "the source refuses replication; falling back to SCAN + keyspace notifications (no exact ordering across keys, no offsets: a restart redoes the snapshot)");
                    scan(opts, tx, stats, cancel).await
                }
                r => r,
            }
        }
    }
}
