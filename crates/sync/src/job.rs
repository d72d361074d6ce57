//! One sync job: a reader and a writer joined by a bounded channel of events.

use std::sync::Arc;

use ferry_resp::Connection;
use ferry_source::{Phase, ReplicaOptions, ShardStats, SourceError};
use ferry_target::{TargetError, WriterOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{JobConfig, Mode};

/// Events waiting between the reader and the writer: the bound is the backpressure that
/// stops the reader (and so the socket) when the target is slower.
const EVENT_QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("source: {0}")]
    Source(SourceError),
    #[error("target: {0}")]
    Target(TargetError),
}

impl From<SourceError> for JobError {
    fn from(e: SourceError) -> Self {
        JobError::Source(e)
    }
}

impl From<TargetError> for JobError {
    fn from(e: TargetError) -> Self {
        JobError::Target(e)
    }
}

impl JobError {
    /// A broken link rather than a refusal: what a retry policy retries as a connection
    /// failure.
    pub fn is_connection(&self) -> bool {
        match self {
            JobError::Source(e) => e.is_connection(),
            JobError::Target(e) => e.is_connection(),
        }
    }
}

/// How a job ended without error.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub keys: u64,
    pub commands: u64,
    /// Full mode finished the copy (as opposed to a stop by the user).
    pub completed: bool,
}

/// Runs the job until it completes (full mode), fails, or `cancel` fires (a clean stop:
/// everything already sent to the target is answered first).
pub async fn run(
    config: JobConfig,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<JobOutcome, JobError> {
    let mut ropts = ReplicaOptions::new(config.source.clone());
    match config.mode {
        Mode::Full => ropts.stop_after_snapshot = true,
        Mode::Incremental => {
            // Start from the source's current offset: PSYNC at it gives +CONTINUE when the
            // source has a backlog; otherwise the snapshot it sends is read and dropped.
            let mut conn = Connection::connect(&config.source)
                .await
                .map_err(SourceError::from)?;
            let repl = conn.info("replication").await.map_err(SourceError::from)?;
            if let (Some(id), Some(off)) = (
                repl.get("master_replid"),
                repl.get("master_repl_offset")
                    .and_then(|o| o.parse::<u64>().ok()),
            ) {
                ropts.resume = Some((id.to_string(), off));
            }
            ropts.skip_snapshot = true;
        }
        Mode::FullIncremental => {}
    }
    let mut wopts = WriterOptions::new(config.target.clone());
    wopts.overwrite = config.overwrite;
    wopts.skip_unsupported = config.skip_unsupported;
    if let Some(t) = config.big_key_threshold {
        wopts.big_value_bytes = t;
    }
    let mut big = ferry_rdb::BigValues::default();
    if let Some(t) = config.big_key_threshold {
        big.string_bytes = t as u64;
    }
    if let Some(n) = config.big_key_elements {
        big.elements = n.max(1);
        big.nodes = (n / 50).max(1);
    }
    ropts.big_values = Some(big);

    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    // The writer stops on its own token so that a reader failure lets it drain first.
    let writer_cancel = cancel.child_token();
    let reader_cancel = cancel.child_token();
    let mut writer = tokio::spawn(ferry_target::write(
        wopts,
        rx,
        stats.clone(),
        writer_cancel.clone(),
    ));
    let mut reader = tokio::spawn(ferry_source::replicate(
        ropts,
        tx,
        stats.clone(),
        reader_cancel.clone(),
    ));

    // Whichever ends first, the other is brought to an end and both results are read.
    let (read, written) = tokio::select! {
        r = &mut reader => {
            // Reader done (snapshot read in full mode, stopped, or failed): its sender is
            // gone, so the writer applies what is queued and returns.
            let read = joined(r);
            (read, joined(writer.await))
        }
        w = &mut writer => {
            let written = joined(w);
            reader_cancel.cancel();
            (joined(reader.await), written)
        }
    };
    // A reader failure only closes the channel (the writer drains and succeeds), while a
    // writer failure makes the reader's sends fail: the writer's error is the cause.
    let summary = written?;
    read?;
    let completed = config.mode == Mode::Full && !cancel.is_cancelled();
    if completed {
        stats.set_phase(Phase::Done);
        info!(keys = summary.keys, "full sync complete");
    }
    Ok(JobOutcome {
        keys: summary.keys,
        commands: summary.commands,
        completed,
    })
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
