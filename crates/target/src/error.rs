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
