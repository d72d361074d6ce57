/// Why a writer stopped. Names the target node and, for a refused write, the command and
/// key, so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Node(#[from] ferry_resp::Error),
    #[error("{addr}: key {key:?} already exists on the target; start with an empty target or pass --overwrite to replace existing keys")]
    KeyExists { addr: String, key: String },
    #[error("{addr}: the target rejected {command}: {message}")]
    Rejected {
        addr: String,
        command: String,
        message: String,
    },
    /// A replicated command the target refused or failed (an error reply, inside an `EXEC`
    /// or not): the rest of its batch and the batch's checkpoint may be committed, so a
    /// retry would resume past it and the target would differ for good.
    #[error("{addr}: the target refused {command} {key:?} (source db {db}, replication offset {offset}): {message}; the target no longer matches the source: remove the cause (a key written on the target, an older target) and start again, or pass --skip-failed-commands to log, count and go past such commands")]
    CommandFailed {
        addr: String,
        command: String,
        key: String,
        db: u32,
        offset: u64,
        message: String,
    },
    #[error("{addr}: {message}")]
    Incompatible { addr: String, message: String },
    /// The writer's lease lapsed (its `still_valid` hook said so): it stopped without
    /// sending anything more.
    #[error("{addr}: the writer is no longer allowed to write (its lease lapsed); stopped before sending more")]
    Fenced { addr: String },
}

impl TargetError {
    pub fn is_connection(&self) -> bool {
        matches!(self, TargetError::Node(e) if e.is_connection())
    }
}
