//! Sources that are files a Redis wrote: an RDB (a backup, `SAVE`'s `dump.rdb`) and an
//! append-only file ([`crate::aof`]). Read once, on a blocking thread, into the same events
//! a replica yields; the job completes when they are read.
//!
//! Positions: a file has no replication id or offset, so the reader makes up its own —
//! replid `rdb` or `aof`, offsets counted in bytes of the file(s) read. They only order the
//! checkpoints of one run: a restarted job reads the files again from the start, after the
//! writer has flushed what the interrupted run applied.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferry_rdb::{BigValues, Parser};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::SourceError;
use crate::rdb_events::send_rdb_events;
use crate::spec::SourceSpec;
use ferry_core::event::Event;
use ferry_core::stats::{Phase, ShardStats};

/// What the file readers need beyond the path.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Values above these thresholds are read and sent in chunks.
    pub big_values: Option<BigValues>,
    /// AOF: stop at the first `#TS:` annotation later than this (unix seconds), as
    /// `redis-check-aof --truncate-to-timestamp` would.
    pub aof_until: Option<i64>,
}

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

pub(crate) fn file_error(path: &Path, what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::File {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

pub(crate) fn open(path: &Path) -> Result<(File, u64), SourceError> {
    let f = File::open(path).map_err(|e| file_error(path, "cannot open", e))?;
    let len = f
        .metadata()
        .map_err(|e| file_error(path, "cannot read its size", e))?
        .len();
    Ok((f, len))
}

/// A reader that counts what it reads into the shard's figures (progress).
pub(crate) struct Counting<R> {
    pub inner: R,
    pub stats: Arc<ShardStats>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats.rdb_read.fetch_add(n as u64, Relaxed);
        self.stats.bytes_read.fetch_add(n as u64, Relaxed);
        self.stats.touch();
        Ok(n)
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
