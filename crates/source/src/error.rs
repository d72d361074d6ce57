use ferry_rdb::RdbError;

/// Why a reader stopped. [`SourceError::is_connection`] separates link failures from the
/// source's refusals, which the retry policy treats differently.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Node(#[from] ferry_resp::Error),
    #[error("{addr}: the source refused replication ({command}): {message}; if the provider renamed PSYNC pass --psync-command NAME, otherwise --source-method scan (or auto) copies without PSYNC")]
    PsyncRefused {
        addr: String,
        command: String,
        message: String,
    },
    #[error(
        "{addr}: the source is loading its dataset (LOADING); it can serve a replica once loaded"
    )]
    Loading { addr: String },
    #[error("{addr}: the source is a replica whose link to its own master is down (NOMASTERLINK)")]
    NoMasterLink { addr: String },
    #[error("{addr}: snapshot RDB: {source}")]
    Rdb {
        addr: String,
        #[source]
        source: RdbError,
    },
    #[error("{addr}: replication protocol: {message}")]
    Protocol { addr: String, message: String },
    #[error("{addr}: the source no longer holds its stream from offset {offset} (backlog too small or restarted) and offers only a new snapshot, which incremental mode does not apply; run full+incremental to copy it")]
    BacklogGone { addr: String, offset: u64 },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(
        "{addr}: keyspace notifications, which the SCAN method follows writes with: {message}"
    )]
    Notifications { addr: String, message: String },
    #[error("the pipeline behind the reader of {addr} stopped")]
    Downstream { addr: String },
}

impl SourceError {
    pub fn is_connection(&self) -> bool {
        match self {
            SourceError::Node(e) => e.is_connection(),
            SourceError::Rdb { source, .. } => matches!(source.kind, ferry_rdb::ErrorKind::Io(_)),
            _ => false,
        }
    }
}

/// A reader's result once it ended: after a stop, whatever the link did while winding down
/// is no failure.
pub(crate) fn unless_stopped(
    result: Result<(), SourceError>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), SourceError> {
    if cancel.is_cancelled() {
        Ok(())
    } else {
        result
    }
}
