//! The one event type that flows from a reader to a writer.

use bytes::Bytes;

/// What a reader produces, in source order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A full resync began: everything after this replaces the target's copy.
    SnapshotBegin {
        replid: String,
        offset: u64,
        /// Size of the RDB when the source announced it (disk-based transfer).
        rdb_size: Option<u64>,
    },
    /// The snapshot's RDB version: the version every following entry's payload is in.
    SnapshotHeader { rdb_version: u16 },
    /// One key of the snapshot, with its value still serialized as in the RDB.
    Entry(ferry_rdb::Entry),
    /// The start of a snapshot value too big for one event (see
    /// [`ferry_rdb::Parser::set_big_values`]): its key and metadata, with an empty payload
    /// (a string's: its length, [`ferry_rdb::Entry::big_string_len`]).
    /// Its [`Event::BigEntryChunk`]s and one [`Event::BigEntryEnd`] follow, nothing between.
    BigEntryStart(ferry_rdb::Entry),
    /// The next elements of the big value: a serialized value of the entry's type holding
    /// just these elements.
    BigEntryChunk { payload: Bytes },
    /// The end of the big value; for a stream its metadata (a serialized stream without
    /// entries).
    BigEntryEnd { payload: Option<Bytes> },
    /// A function library from the snapshot (`FUNCTION LOAD` code).
    Function { code: Bytes },
    /// Module auxiliary data from the snapshot (`RDB_OPCODE_MODULE_AUX`): nothing can
    /// write it into a target, and a Redis without the module refuses the file, so the
    /// writer refuses it too unless told to skip what the target cannot hold.
    ModuleAux { module_id: u64 },
    /// A Lua script body from an old RDB's `lua` AUX field (`SCRIPT LOAD`).
    Script { body: Bytes },
    /// The snapshot is complete: `rdb_version` is the payload version of every entry.
    SnapshotEnd { rdb_version: u16, keys: u64 },
    /// The stream resumed without a snapshot (`+CONTINUE`).
    Continue { replid: String, offset: u64 },
    /// One replicated write command, in database `db`; `offset` is the source replication
    /// offset just past it.
    Command {
        db: u32,
        argv: Vec<Bytes>,
        offset: u64,
    },
    /// The offset advanced over bytes that carry nothing to apply (`PING`, `SELECT`,
    /// `REPLCONF`); lets the applied offset catch up when the source is idle. `db` is the
    /// database selected at that point of the stream.
    Offset { offset: u64, db: u32 },
}

impl Event {
    /// Bytes of payload this event carries (for buffer bounds and throughput figures).
    pub fn weight(&self) -> usize {
        match self {
            Event::Entry(e) | Event::BigEntryStart(e) => e.key.len() + e.payload.len() + 64,
            Event::BigEntryChunk { payload } => payload.len() + 16,
            Event::BigEntryEnd { payload } => payload.as_ref().map_or(16, |p| p.len() + 16),
            Event::Command { argv, .. } => argv.iter().map(|a| a.len() + 16).sum(),
            Event::Function { code } => code.len(),
            Event::Script { body } => body.len(),
            _ => 16,
        }
    }
}
