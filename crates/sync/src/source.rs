//! The job's reader, by kind of source: a live node (PSYNC, SCAN, or auto) or files.

use std::sync::Arc;

use ferry_core::{Event, ShardStats};
use ferry_source::{FileOptions, ReplicaOptions, SourceError, SourceSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;

/// Runs the reader `config.source` calls for; `opts` as built for a replica (a file
/// reader takes its snapshot options).
pub(crate) async fn read(
    config: JobConfig,
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    match config.source {
        SourceSpec::Redis(_) => {
            ferry_source::read_node(config.source_method, opts, tx, stats, cancel).await
        }
        file => {
            let fopts = FileOptions {
                big_values: opts.big_values,
                aof_until: config.aof_until,
            };
            ferry_source::read_file(file, fopts, tx, stats, cancel).await
        }
    }
}
