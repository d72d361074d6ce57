//! What the file readers (an RDB, an AOF) share: their options, opening a file with its
//! size, errors naming the file, and a reader that counts what it reads into the shard's
//! figures.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferry_core::stats::ShardStats;
use ferry_rdb::BigValues;

use crate::error::SourceError;

/// What the file readers need beyond the path.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Values above these thresholds are read and sent in chunks.
    pub big_values: Option<BigValues>,
    /// AOF: stop at the first `#TS:` annotation later than this (unix seconds), as
    /// `redis-check-aof --truncate-to-timestamp` would.
    pub aof_until: Option<i64>,
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
