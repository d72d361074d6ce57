/// Why a writer stopped. Names the target node and, for a refused write, the command and
/// key, so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Node(#[from] ferry_resp::Error),
    #[error("{addr}: key {key:?} already exists on the target; start with an empty target or pass --overwrite to replace existing keys")]
    KeyExists { addr: String, key: String },
    /// The snapshot itself holds a key twice (the target was empty when the copy began, so
    /// nothing else put it there): Redis refuses such an RDB at load.
    #[error("{addr}: the snapshot holds key {key:?} (db {db}) twice: the target was empty when the copy began, so its first copy came from the same snapshot; Redis refuses such an RDB at load (\"Duplicated key found in RDB file\"): repair the file, or pass --overwrite to keep the key's last copy")]
    DuplicateKey { addr: String, key: String, db: u32 },
    /// Something of the snapshot the target refuses in a way no retry changes (a module
    /// value whose module it lacks, a payload it cannot read, `FUNCTION LOAD` on a version
    /// without functions), or module aux data, which nothing can write.
    #[error("{addr}: the target cannot hold {what}: {message}; every attempt would be refused alike: pass --skip-unsupported to skip and count such keys, functions, scripts and module data")]
    Unsupported {
        addr: String,
        what: String,
        message: String,
    },
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
    /// What the source sent cannot be applied on this target as it is (a command or
    /// encoding its version lacks, a command a cluster cannot run, data in a db a cluster
    /// lacks).
    #[error("{addr}: {message}")]
    Incompatible { addr: String, message: String },
    /// A reply ferry cannot read where it knows the shape (`SCAN`, `CLUSTER SLOTS`).
    #[error("{addr}: unexpected reply to {what}")]
    BadReply { addr: String, what: String },
    /// The target cluster's slots are not all served (a slot without a master, no master
    /// after a failover): nothing can be written where they go.
    #[error("{addr}: {message}")]
    Topology { addr: String, message: String },
    /// A key of ferry's own (a checkpoint, an ownership record) holds something ferry did
    /// not write.
    #[error(
        "{addr}: {what} {key:?} holds {value:?}, not one ferry wrote; delete it to start over"
    )]
    ForeignValue {
        addr: String,
        what: &'static str,
        key: String,
        value: String,
    },
    /// A snapshot's function library exists on the target already, and the job may not
    /// replace it.
    #[error("{addr}: the target refused FUNCTION LOAD: {message}; pass --overwrite to replace it")]
    LibraryExists { addr: String, message: String },
    /// A task of the writer ended without an answer (it panicked or was cancelled): a bug,
    /// retried like a lost connection (the checkpoint says where to resume).
    #[error("{addr}: {message}")]
    Internal { addr: String, message: String },
    /// The target holds keys this job did not write, and the user did not say they may stay.
    #[error("{addr}: the target already holds {keys} keys that this job did not write (e.g. {example:?} in db {db}); ferry does not copy into a target holding other data unless told to: empty the target, or pass --allow-nonempty-target (job field allow_nonempty_target) to keep those keys beside the copy (and --overwrite to replace the ones the source also has)")]
    NotEmpty {
        addr: String,
        keys: u64,
        db: u32,
        example: String,
    },
    /// A new snapshot needs the job's earlier copy removed, but the job does not own the
    /// target (it held other data when the job started).
    #[error("{addr}: the source sent a new snapshot (its backlog no longer holds this job's position, or it restarted), and applying it needs this job's earlier copy removed first; but the target held other data when this job started and ferry deletes only what it owns, so nothing was deleted: pass --allow-flush (job field allow_flush) to let this job flush the target before a new snapshot, or empty the target and start again")]
    FlushRefused { addr: String },
    /// The job's checkpoint vanished from the target while the job ran: the target lost
    /// data (flushed, restarted empty, failed over to a replica without it).
    #[error("{addr}: the target lost data under ferry: this job's checkpoint {key:?} is gone (the target was flushed, restarted without its data, or failed over to a node without it)")]
    LostData { addr: String, key: String },
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
