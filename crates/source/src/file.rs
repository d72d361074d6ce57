//! Sources that are files a Redis wrote: an RDB (a backup, `SAVE`'s `dump.rdb`) and an
//! append-only file ([`crate::aof`]). Read once, on a blocking thread, into the same events
//! a replica yields; the job completes when they are read.
//!
//! Positions: a file has no replication id or offset, so the reader makes up its own —
//! replid `rdb` or `aof`, offsets counted in bytes of the file(s) read. They only order the
//! checkpoints of one run: a restarted job reads the files again from the start, after the
//! writer has flushed what the interrupted run applied.

use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferry_rdb::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::SourceError;
pub use crate::file_io::FileOptions;
use crate::file_io::{open, Counting};
use crate::rdb_events::send_rdb_events;
use crate::spec::SourceSpec;
use ferry_core::event::Event;
use ferry_core::stats::{Phase, ShardStats};

/// Reads a file source to its end (or until `cancel` fires).
pub async fn read_file(
    spec: SourceSpec,
    opts: FileOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let stop = cancel.clone();
    // The file is open to read until this returns: its "link" is up.
    let link = stats.clone();
    let _link_up = link.link_up_while();
    let task = tokio::task::spawn_blocking(move || match spec {
        SourceSpec::Rdb(path) => read_rdb_file(&path, &opts, &tx, &stats),
        SourceSpec::Aof(path) => crate::aof::read_aof(&path, &opts, &tx, &stats, &stop),
        SourceSpec::Redis(e) => Err(SourceError::Protocol {
            addr: e.addr(),
            message: "not a file source".into(),
        }),
    });
    // Always wait for the thread, even once cancelled: the writer ends as soon as the
    // thread drops its sender, which may be because the file could not be read, and the
    // job is then stopped (cancelled) before this task was polled again. Returning Ok on
    // cancel lost that error and a cut file was reported as a complete copy. The wait is
    // short: a cancelled writer drops its receiver, so the thread's next send fails.
    let result = task.await.unwrap_or_else(|e| {
        Err(SourceError::Protocol {
            addr: String::new(),
            message: format!("file reader thread failed: {e}"),
        })
    });
    if result.is_ok() {
        link.set_read_all();
    }
    match result {
        // Stopped (by the user or by the writer's end): the send failing is no error of
        // the file; the writer's own result says why it ended.
        Err(SourceError::Downstream { .. }) if cancel.is_cancelled() => Ok(()),
        r => r,
    }
}

fn read_rdb_file(
    path: &Path,
    opts: &FileOptions,
    tx: &mpsc::Sender<Event>,
    stats: &Arc<ShardStats>,
) -> Result<(), SourceError> {
    let (f, len) = open(path)?;
    let name = path.display().to_string();
    stats.rdb_size.store(len, Relaxed);
    *stats.replid.lock().unwrap_or_else(|e| e.into_inner()) = "rdb".into();
    tx.blocking_send(Event::SnapshotBegin {
        replid: "rdb".into(),
        offset: 0,
        rdb_size: Some(len),
    })
    .map_err(|_| SourceError::Downstream { addr: name.clone() })?;
    stats.set_phase(Phase::Snapshot);
    let mut parser = Parser::new(Counting {
        inner: BufReader::with_capacity(256 * 1024, f),
        stats: stats.clone(),
    });
    parser.set_big_values(opts.big_values);
    send_rdb_events(&mut parser, tx, stats, false, &name, None)?;
    Ok(())
}
