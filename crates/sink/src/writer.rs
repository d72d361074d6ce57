//! The pipelined writer for a standalone target: events in, commands out, replies matched
//! in order on a second task, the applied offset advanced as replies arrive.
//!
//! Every command is written to one connection in source order, so the target applies them
//! in that order; the pipeline depth is bounded (batches in flight), which bounds memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::{Event, ShardStats};
use ferry_resp::{frame, Endpoint, Frame};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::checkpoint::{is_checkpoint_key, Checkpoint};
use crate::compat::{Compat, Routed};
use crate::error::TargetError;
use crate::failed::{is_transient, Failures};
use crate::link::Replies;
use crate::rewrite::{Check, Cmd};
use ferry_core::dbmap::DbMap;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub endpoint: Endpoint,
    /// Replace keys that already exist on the target (`RESTORE … REPLACE`,
    /// `FUNCTION LOAD REPLACE`); without it an existing key is an error.
    pub overwrite: bool,
    /// A batch is written once it holds this many bytes (or the queue is empty).
    pub batch_bytes: usize,
    /// Batches written but not yet answered.
    pub max_batches_in_flight: usize,
    /// The checkpoint key: when set, every batch of stream commands is wrapped in
    /// `MULTI … SET <key> <checkpoint> EXEC`.
    pub checkpoint_key: Option<Bytes>,
    /// Flush the target before applying a snapshot: set when the job has applied data
    /// before (a checkpoint existed), so a new snapshot must not leave stale keys behind.
    pub flush_before_snapshot: bool,
    /// With several source shards, a shard owns only the keys of its slots: its flush
    /// deletes those keys instead of `FLUSHALL`.
    pub flush_slots: Option<Vec<(u16, u16)>>,
    /// A new snapshot would need a flush the job may not do (it does not own the target):
    /// the writer stops with [`TargetError::FlushRefused`] before writing anything of it.
    pub refuse_snapshot: bool,
    /// The checkpoint key exists on the target as the writer starts (the job resumes). Each
    /// checkpoint write (`GETSET`) then checks that the key it replaces is still there: a
    /// missing one means the target lost data under ferry ([`TargetError::LostData`]).
    pub checkpoint_exists: bool,
    /// `SET <key> <value> NX` before anything else (db 0): the job's ownership record
    /// ([`crate::owner`]), written by the writer's own pipeline so it costs no round trip
    /// and lands before the first key.
    pub record_ownership: Option<(Bytes, &'static str)>,
    /// A snapshot value whose payload is bigger than this is written as chunks of commands
    /// instead of one `RESTORE`.
    pub big_value_bytes: usize,
    /// Skip (and count) keys the target cannot hold (module values, hash field TTLs on an
    /// older target) instead of stopping.
    pub skip_unsupported: bool,
    /// Source db → target db, applied where the writer selects (see [`crate::dbmap`]).
    pub db_map: DbMap,
    /// Cluster target, resuming: per slot, the source offset that slot's own checkpoint
    /// records; commands of the slot up to it are already applied and are skipped.
    pub slot_offsets: Option<Arc<HashMap<u16, u64>>>,
    /// `CLIENT SETNAME` of the writer's connections (see [`crate::fence`]).
    pub client_name: Option<String>,
    /// Cluster target: checked before every batch, reconnection and resend; once it says
    /// `false` the writer stops with [`TargetError::Fenced`] (see [`crate::fence::StillValid`]).
    pub still_valid: Option<crate::fence::StillValid>,
    /// A replicated command the target refuses is logged, counted and gone past instead of
    /// stopping the job (see [`crate::failed`]).
    pub skip_failed_commands: bool,
    /// The target held nothing of anyone else when the job began (the job owns it): a
    /// snapshot key found already there can only be the snapshot's own second copy.
    pub target_was_empty: bool,
    /// No reply byte for this long while replies are awaited: the target is taken as gone
    /// ([`ferry_resp::Error::Timeout`], a connection failure).
    pub reply_timeout: Duration,
}

impl WriterOptions {
    /// Whether a snapshot's `FUNCTION LOAD` replaces a library of the same name, the one
    /// rule of both writers: with `--overwrite`, or when the job flushed before this
    /// snapshot (`FLUSHALL` and a slot-scoped delete keep libraries, and a target the job
    /// may flush is its own, so the library there is its own earlier copy).
    pub(crate) fn function_load_replaces(&self) -> bool {
        self.overwrite || self.flush_before_snapshot
    }

    pub fn new(endpoint: Endpoint) -> Self {
        WriterOptions {
            endpoint,
            overwrite: false,
            batch_bytes: 256 * 1024,
            max_batches_in_flight: 32,
            checkpoint_key: None,
            flush_before_snapshot: false,
            flush_slots: None,
            refuse_snapshot: false,
            checkpoint_exists: false,
            record_ownership: None,
            big_value_bytes: crate::compat::DEFAULT_BIG_VALUE_BYTES,
            skip_unsupported: false,
            db_map: DbMap::default(),
            slot_offsets: None,
            client_name: None,
            still_valid: None,
            skip_failed_commands: false,
            target_was_empty: false,
            reply_timeout: Duration::from_secs(60),
        }
    }
}

/// What one command's reply means to the writer.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// A snapshot key; its name for the error message.
    Restore {
        key: Bytes,
        /// The source db (0 where unknown).
        db: u32,
    },
    /// A replicated command; `offset` set when its reply means "applied" (not queued in a
    /// MULTI).
    Command {
        name: Bytes,
        key: Option<Bytes>,
        offset: Option<u64>,
        db: u32,
    },
    /// `MULTI`, `SELECT`: protocol replies that must be OK.
    Control {
        what: &'static str,
    },
    /// A command queued inside MULTI: `+QUEUED`; for an error, the source command's key
    /// and (offset, db) when it is one.
    Queued {
        name: Bytes,
        key: Option<Bytes>,
        at: Option<(u64, u32)>,
    },
    /// Nothing was sent: everything of the snapshot before it is applied.
    SnapshotApplied,
    /// Nothing was sent: the offset is applied once everything before it is.
    Mark {
        offset: u64,
    },
    FunctionLoad,
    ScriptLoad,
    /// A checkpoint write (`GETSET`) outside a transaction; with `must_exist`, a missing
    /// old value means the target lost data.
    Checkpoint {
        key: Bytes,
        must_exist: bool,
    },
    /// The `EXEC` closing one of ferry's own transactions: one reply per queued command
    /// (`names`, with `counted` for the source's commands that count as records).
    Exec {
        names: Vec<TxnCmd>,
        offset: Option<u64>,
        /// The source's own MULTI/EXEC folded into this transaction: applied records too.
        folded: u64,
        /// The transaction ends with a `GETSET` of this checkpoint key, whose old value must
        /// exist (see [`WriterOptions::checkpoint_exists`]).
        must_exist: Option<Bytes>,
    },
    /// A command of a snapshot key rewritten into plain commands; `last` when it completes
    /// the key.
    Rewrite {
        key: Bytes,
        name: Bytes,
        check: Check,
        last: bool,
    },
}

/// One command queued in a transaction, for the error naming it should it fail in `EXEC`
/// (the names and keys are shared `Bytes` of the event: no copy).
#[derive(Debug, Clone)]
pub(crate) struct TxnCmd {
    pub name: Bytes,
    pub key: Option<Bytes>,
    pub db: u32,
    pub offset: u64,
    /// A source command that counts as a record (not ferry's `SELECT` or checkpoint).
    pub counted: bool,
}

impl TxnCmd {
    /// Ferry's own command inside its transaction (`SELECT`, the checkpoint's `SET`).
    pub(crate) fn own(name: &'static [u8]) -> TxnCmd {
        TxnCmd {
            name: Bytes::from_static(name),
            key: None,
            db: 0,
            offset: 0,
            counted: false,
        }
    }
}

impl Expect {
    /// `+QUEUED` expected for one of ferry's own commands.
    pub(crate) fn queued(name: &'static [u8]) -> Expect {
        Expect::Queued {
            name: Bytes::from_static(name),
            key: None,
            at: None,
        }
    }
}

/// Turns events into RESP in a reused buffer, tracking the connection's database and
/// whether a transaction is open.
struct Encoder {
    buf: BytesMut,
    expects: Vec<Expect>,
    db: Option<u32>,
    /// A MULTI is open on the connection (ferry's own, or the source's passed through).
    in_multi: bool,
    rdb_version: u16,
    overwrite: bool,
    checkpoint: Option<Bytes>,
    /// The checkpoint key is known to exist on the target before the next checkpoint write.
    checkpoint_exists: bool,
    flush_before_snapshot: bool,
    /// See [`WriterOptions::function_load_replaces`].
    function_replace: bool,
    /// Stream position: which history, and the offset the snapshot started from.
    replid: String,
    snapshot_offset: u64,
    /// Inside a source MULTI whose EXEC has not arrived: the batch cannot end here.
    src_multi: bool,
    /// Commands queued in ferry's open transaction and the offset it will record.
    txn_names: Vec<TxnCmd>,
    /// Source offset and database the transaction's checkpoint will record.
    txn_offset: Option<(u64, u32)>,
    txn_open: bool,
    txn_folded: u64,
    /// Source db → target db.
    db_map: DbMap,
    /// A batch is cut once it holds this many bytes.
    batch_bytes: usize,
    /// Commands of a rewritten key that did not fit in the batch (a big value's chunk can
    /// make thousands): written into the next batches before any other event.
    pending: Option<PendingRewrite>,
}

/// The rest of a key's rewrite commands, for the next batch.
struct PendingRewrite {
    db: u32,
    key: Bytes,
    cmds: std::vec::IntoIter<Cmd>,
    completes_key: bool,
}

impl Encoder {
    fn new(opts: &WriterOptions) -> Encoder {
        Encoder {
            buf: BytesMut::with_capacity(opts.batch_bytes * 2),
            expects: Vec::new(),
            db: None,
            in_multi: false,
            rdb_version: 0,
            overwrite: opts.overwrite,
            checkpoint: opts.checkpoint_key.clone(),
            checkpoint_exists: opts.checkpoint_exists,
            // A slot-scoped flush is done here, before the snapshot's first event.
            flush_before_snapshot: opts.flush_before_snapshot && opts.flush_slots.is_none(),
            function_replace: opts.function_load_replaces(),
            replid: String::new(),
            snapshot_offset: 0,
            src_multi: false,
            txn_names: Vec::new(),
            txn_offset: None,
            txn_open: false,
            txn_folded: 0,
            db_map: opts.db_map.clone(),
            batch_bytes: opts.batch_bytes,
            pending: None,
        }
    }

    /// Selects the target database that source database `db` maps to.
    fn select(&mut self, db: u32) {
        self.select_target(self.db_map.target(db));
    }

    /// Selects target database `db` as it is (ferry's checkpoint lives in db 0).
    fn select_target(&mut self, db: u32) {
        if self.db != Some(db) {
            frame::write_command(
                &mut self.buf,
                &[b"SELECT".as_ref(), db.to_string().as_bytes()],
            );
            self.expects.push(if self.in_multi {
                self.txn_names.push(TxnCmd::own(b"SELECT"));
                Expect::queued(b"SELECT")
            } else {
                Expect::Control { what: "SELECT" }
            });
            self.db = Some(db);
        }
    }

    fn queue_select(&mut self, db: u32) {
        self.queue_select_target(self.db_map.target(db));
    }

    fn queue_select_target(&mut self, db: u32) {
        self.select_target(db);
    }

    /// Writes the checkpoint with `GETSET`: its old value tells whether the key was still
    /// there. Returns whether it must have been.
    fn set_checkpoint(&mut self, key: &Bytes, value: String) -> bool {
        frame::write_command(&mut self.buf, &[b"GETSET".as_ref(), key, value.as_bytes()]);
        std::mem::replace(&mut self.checkpoint_exists, true)
    }

    /// An outside checkpoint write's expected reply.
    fn expect_checkpoint(&mut self, key: Bytes, value: String) {
        let must_exist = self.set_checkpoint(&key, value);
        self.expects.push(Expect::Checkpoint { key, must_exist });
    }

    /// Opens ferry's transaction for this batch if it is not open yet.
    fn open_txn(&mut self) {
        if !self.txn_open {
            frame::write_command(&mut self.buf, &[b"MULTI"]);
            self.expects.push(Expect::Control { what: "MULTI" });
            self.txn_open = true;
            self.in_multi = true;
        }
    }

    /// Ends the batch's transaction with the checkpoint of what it holds.
    fn close_txn(&mut self) {
        if !self.txn_open {
            return;
        }
        let Some(key) = self.checkpoint.clone() else {
            return;
        };
        let mut must_exist = None;
        if let Some((offset, db)) = self.txn_offset {
            self.queue_select_target(0);
            let value = Checkpoint::encode_stream(&self.replid, offset, db);
            if self.set_checkpoint(&key, value) {
                must_exist = Some(key.clone());
            }
            self.txn_names.push(TxnCmd::own(b"SET checkpoint"));
            self.expects.push(Expect::queued(b"SET checkpoint"));
        }
        frame::write_command(&mut self.buf, &[b"EXEC"]);
        self.expects.push(Expect::Exec {
            names: std::mem::take(&mut self.txn_names),
            offset: self.txn_offset.take().map(|(o, _)| o),
            folded: std::mem::take(&mut self.txn_folded),
            must_exist,
        });
        self.txn_open = false;
        self.in_multi = false;
    }

    /// Drops an unfinished transaction (stopping inside a source MULTI): nothing of it is
    /// applied and the checkpoint stays where it was.
    fn discard_txn(&mut self) {
        if self.txn_open {
            frame::write_command(&mut self.buf, &[b"DISCARD"]);
            self.expects.push(Expect::Control { what: "DISCARD" });
            self.txn_names.clear();
            self.txn_offset = None;
            self.txn_folded = 0;
            self.txn_open = false;
            self.in_multi = false;
            self.src_multi = false;
        }
    }

    /// A stream command under checkpoints: queued in ferry's transaction, the source's own
    /// MULTI/EXEC dropped (the batch's transaction keeps it atomic; batches never split it).
    fn push_checkpointed(&mut self, db: u32, argv: Vec<Bytes>, offset: u64) {
        let name = &argv[0];
        if name.eq_ignore_ascii_case(b"MULTI") {
            self.open_txn();
            self.src_multi = true;
            self.txn_folded += 1;
            return;
        }
        if name.eq_ignore_ascii_case(b"EXEC") {
            self.src_multi = false;
            self.txn_offset = Some((offset, db));
            self.txn_folded += 1;
            return;
        }
        self.open_txn();
        self.queue_select(db);
        if may_remove_checkpoint(name) {
            self.checkpoint_exists = false;
        }
        frame::write_command(&mut self.buf, &argv);
        let key = command_key(&argv).cloned();
        self.expects.push(Expect::Queued {
            name: name.clone(),
            key: key.clone(),
            at: Some((offset, db)),
        });
        self.txn_names.push(TxnCmd {
            name: name.clone(),
            key,
            db,
            offset,
            counted: true,
        });
        if !self.src_multi {
            self.txn_offset = Some((offset, db));
        }
        if let Some(other) = swapped_with_zero(&argv) {
            self.keep_job_keys_in_zero(other);
        }
    }

    /// After `SWAPDB 0 other` in the transaction, the job's keys (its checkpoint and its
    /// ownership record, which live in database 0) are in `other` with the data: moved back
    /// in the same transaction, so database `other` holds only the source's data.
    fn keep_job_keys_in_zero(&mut self, other: u32) {
        let Some(ckpt) = self.checkpoint.clone() else {
            return;
        };
        let mut keys = vec![ckpt.clone()];
        if let Some(i) = ckpt.iter().rposition(|&b| b == b':') {
            let mut owner = ckpt[..i].to_vec();
            owner.extend_from_slice(b":target");
            keys.push(Bytes::from(owner));
        }
        self.select_target(other);
        for k in keys {
            frame::write_command(&mut self.buf, &[b"MOVE".as_ref(), &k, b"0"]);
            self.txn_names.push(TxnCmd::own(b"MOVE checkpoint"));
            self.expects.push(Expect::queued(b"MOVE checkpoint"));
        }
    }

    /// A snapshot key written as plain commands (see [`crate::rewrite`]). Outside a
    /// transaction, stops once the batch is full and leaves the rest in `pending`, so that
    /// a batch (its buffer and its expected replies) stays bounded however many commands
    /// one chunk of a big value makes.
    fn push_rewrite(&mut self, db: u32, key: Bytes, cmds: Vec<Cmd>, completes_key: bool) {
        self.write_rewrite(PendingRewrite {
            db,
            key,
            cmds: cmds.into_iter(),
            completes_key,
        });
    }

    fn write_rewrite(&mut self, mut p: PendingRewrite) {
        self.select(p.db);
        let may_cut = !self.txn_open && !self.src_multi;
        while let Some(cmd) = p.cmds.next() {
            frame::write_command(&mut self.buf, &cmd.argv);
            let last = p.cmds.len() == 0;
            let name = cmd.argv.into_iter().next().unwrap_or_default();
            self.expects.push(Expect::Rewrite {
                key: p.key.clone(),
                name,
                check: cmd.check,
                last: p.completes_key && last,
            });
            if may_cut && !last && self.buf.len() >= self.batch_bytes {
                self.pending = Some(p);
                return;
            }
        }
    }

    /// Writes what is left of a cut rewrite; true if some is still left after that.
    fn resume_pending(&mut self) -> bool {
        if let Some(p) = self.pending.take() {
            self.write_rewrite(p);
        }
        self.pending.is_some()
    }

    fn route(&mut self, compat: &mut Compat, ev: Event) -> Result<(), TargetError> {
        match compat.route(ev)? {
            Routed::Pass(ev) => self.push(ev),
            Routed::Rewrite {
                db,
                key,
                cmds,
                completes_key,
            } => self.push_rewrite(db, key, cmds, completes_key),
            Routed::Drop => {}
        }
        Ok(())
    }

    fn push(&mut self, ev: Event) {
        match ev {
            Event::Entry(e) if is_checkpoint_key(&e.key) => {}
            Event::Command { argv, offset, db }
                if argv.get(1).is_some_and(|k| is_checkpoint_key(k)) =>
            {
                self.push(Event::Offset { offset, db })
            }
            Event::Command { db, argv, offset } if self.checkpoint.is_some() => {
                let argv = map_db_arguments(&self.db_map, argv);
                self.push_checkpointed(db, argv, offset)
            }
            // Bytes with nothing to apply (PING, SELECT) still move the checkpoint, so it
            // always names the source's exact position.
            Event::Offset { offset, db } if self.checkpoint.is_some() => {
                self.open_txn();
                if !self.src_multi {
                    self.txn_offset = Some((offset, db));
                }
            }
            Event::SnapshotBegin { replid, offset, .. } => {
                self.replid = replid;
                self.snapshot_offset = offset;
                if self.flush_before_snapshot {
                    frame::write_command(&mut self.buf, &[b"FLUSHALL".as_ref()]);
                    self.expects.push(Expect::Control { what: "FLUSHALL" });
                    self.checkpoint_exists = false;
                }
                if let Some(key) = self.checkpoint.clone() {
                    self.select_target(0);
                    let value = Checkpoint::encode_snapshot(&self.replid, offset);
                    self.expect_checkpoint(key, value);
                }
            }
            Event::SnapshotEnd { .. } => {
                if let Some(key) = self.checkpoint.clone() {
                    self.select_target(0);
                    // The source SELECTs before its first command after a snapshot.
                    let value = Checkpoint::encode_stream(&self.replid, self.snapshot_offset, 0);
                    self.expect_checkpoint(key, value);
                }
                self.expects.push(Expect::SnapshotApplied);
            }
            Event::Continue { replid, .. } => self.replid = replid,
            Event::Entry(e) => {
                self.select(e.db as u32);
                write_restore(&mut self.buf, &e, self.overwrite, self.rdb_version);
                self.expects.push(Expect::Restore {
                    key: e.key,
                    db: e.db as u32,
                });
            }
            Event::Command { db, argv, offset } => {
                let argv = map_db_arguments(&self.db_map, argv);
                self.select(db);
                frame::write_command(&mut self.buf, &argv);
                let name = argv[0].clone();
                let expect = if name.eq_ignore_ascii_case(b"MULTI") {
                    self.in_multi = true;
                    self.txn_names.clear();
                    Expect::Control { what: "MULTI" }
                } else if name.eq_ignore_ascii_case(b"EXEC") && self.in_multi {
                    // The source's own transaction passed through: its commands (counted as
                    // they were queued) are named if one fails inside the EXEC.
                    self.in_multi = false;
                    Expect::Exec {
                        names: std::mem::take(&mut self.txn_names),
                        offset: Some(offset),
                        folded: 1,
                        must_exist: None,
                    }
                } else if name.eq_ignore_ascii_case(b"EXEC")
                    || name.eq_ignore_ascii_case(b"DISCARD")
                {
                    self.in_multi = false;
                    self.txn_names.clear();
                    Expect::Command {
                        name,
                        key: None,
                        offset: Some(offset),
                        db,
                    }
                } else if self.in_multi {
                    let key = command_key(&argv).cloned();
                    self.txn_names.push(TxnCmd {
                        name: name.clone(),
                        key: key.clone(),
                        db,
                        offset,
                        counted: false,
                    });
                    Expect::Queued {
                        name,
                        key,
                        at: Some((offset, db)),
                    }
                } else {
                    Expect::Command {
                        key: command_key(&argv).cloned(),
                        name,
                        offset: Some(offset),
                        db,
                    }
                };
                self.expects.push(expect);
            }
            Event::Function { code } => {
                let mut args: Vec<&[u8]> = vec![b"FUNCTION", b"LOAD"];
                if self.function_replace {
                    args.push(b"REPLACE");
                }
                args.push(&code);
                frame::write_command(&mut self.buf, &args);
                self.expects.push(Expect::FunctionLoad);
            }
            Event::Script { body } => {
                frame::write_command(&mut self.buf, &[b"SCRIPT".as_ref(), b"LOAD", &body]);
                self.expects.push(Expect::ScriptLoad);
            }
            Event::SnapshotHeader { rdb_version } => self.rdb_version = rdb_version,
            // Refused or skipped by `Compat` before it gets here.
            Event::ModuleAux { .. } => {}
            Event::Offset { offset, .. } => self.expects.push(Expect::Mark { offset }),
            // Big entries are turned into commands by `Compat` before they get here.
            Event::BigEntryStart(_) | Event::BigEntryChunk { .. } | Event::BigEntryEnd { .. } => {}
        }
    }
}

/// The target database numbers in a command naming databases (`SWAPDB a b`, `MOVE key db`,
/// `COPY src dst DB db`), mapped by `--db-map` like the databases ferry `SELECT`s.
pub(crate) fn map_db_arguments(map: &DbMap, mut argv: Vec<Bytes>) -> Vec<Bytes> {
    if map.is_empty() {
        return argv;
    }
    let name = &argv[0];
    let at: Vec<usize> = if name.eq_ignore_ascii_case(b"SWAPDB") {
        vec![1, 2]
    } else if name.eq_ignore_ascii_case(b"MOVE") {
        vec![2]
    } else if name.eq_ignore_ascii_case(b"COPY") {
        (3..argv.len().saturating_sub(1))
            .filter(|&i| argv[i].eq_ignore_ascii_case(b"DB"))
            .map(|i| i + 1)
            .collect()
    } else {
        return argv;
    };
    for i in at {
        let mapped = std::str::from_utf8(&argv[i])
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
            .map(|d| map.target(d));
        if let Some(d) = mapped {
            argv[i] = Bytes::from(d.to_string());
        }
    }
    argv
}

/// The key an error about `argv` names: its first argument, or a script's first key (not
/// its body).
pub(crate) fn command_key(argv: &[Bytes]) -> Option<&Bytes> {
    let name = argv.first()?;
    let script = [b"EVAL".as_ref(), b"EVALSHA", b"FCALL"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n));
    if script {
        return match argv.get(2).map(|n| n.as_ref()) {
            Some(b"0") | None => None,
            Some(_) => argv.get(3),
        };
    }
    if name.eq_ignore_ascii_case(b"XREADGROUP") {
        let at = argv
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
        return argv.get(at + 1);
    }
    argv.get(1)
}

/// For `SWAPDB 0 n` or `SWAPDB n 0` (target numbers, n ≠ 0): `n`.
fn swapped_with_zero(argv: &[Bytes]) -> Option<u32> {
    if argv.len() != 3 || !argv[0].eq_ignore_ascii_case(b"SWAPDB") {
        return None;
    }
    let db = |i: usize| std::str::from_utf8(&argv[i]).ok()?.parse::<u32>().ok();
    match (db(1)?, db(2)?) {
        (0, n) | (n, 0) if n != 0 => Some(n),
        _ => None,
    }
}

/// A replicated command that may remove ferry's checkpoint key with the rest (a flush, a
/// database swap, a script): the next checkpoint write cannot expect to find it.
pub(crate) fn may_remove_checkpoint(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"FLUSHALL",
        b"FLUSHDB",
        b"SWAPDB",
        b"EVAL",
        b"EVALSHA",
        b"FCALL",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME n | FREQ n]` for one snapshot entry,
/// the payload framed as a DUMP of `rdb_version`. Shared by the standalone and cluster writers.
pub(crate) fn write_restore(
    buf: &mut BytesMut,
    e: &ferry_rdb::Entry,
    overwrite: bool,
    rdb_version: u16,
) {
    let mut n = 4;
    let ttl = match e.expire_ms {
        Some(ms) if ms > 0 => ms,
        // An expiry of 0 or less is long past: keep it past, not persistent.
        Some(_) => 1,
        None => 0,
    };
    if ttl > 0 {
        n += 1;
    }
    if overwrite {
        n += 1;
    }
    if e.idle.is_some() || e.freq.is_some() {
        n += 2;
    }
    frame::write_array_header(buf, n);
    frame::write_bulk(buf, b"RESTORE");
    frame::write_bulk(buf, &e.key);
    frame::write_bulk_int(buf, ttl);
    let len = ferry_rdb::dump_payload_len(e.payload.len());
    frame::write_bulk_header(buf, len);
    ferry_rdb::write_dump_payload(buf, e.value_type, &e.payload, rdb_version);
    buf.extend_from_slice(b"\r\n");
    if overwrite {
        frame::write_bulk(buf, b"REPLACE");
    }
    if ttl > 0 {
        frame::write_bulk(buf, b"ABSTTL");
    }
    if let Some(idle) = e.idle {
        frame::write_bulk(buf, b"IDLETIME");
        frame::write_bulk_int(buf, idle as i64);
    } else if let Some(freq) = e.freq {
        frame::write_bulk(buf, b"FREQ");
        frame::write_bulk_int(buf, freq as i64);
    }
}

/// Summary of a writer's run.
#[derive(Debug, Default, Clone)]
pub struct WriteSummary {
    pub keys: u64,
    pub commands: u64,
    /// Cluster target: source transactions whose commands spanned slots, applied as one
    /// transaction per slot.
    pub cross_slot_transactions: u64,
}

/// Connects to the target and applies events until `rx` closes (the source is done) or
/// `cancel` fires; either way everything already sent is answered before it returns.
pub async fn write(
    opts: WriterOptions,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<WriteSummary, TargetError> {
    let (conn, version) = crate::link::open(&opts.endpoint, opts.client_name.as_deref()).await?;
    let addr = conn.addr().to_string();
    if let Some(v) = &version {
        info!(target = %addr, version = %v, "target connected");
    }
    let (stream, rbuf, _) = conn.into_parts();
    let (rd, mut wr) = tokio::io::split(stream);
    let (exp_tx, exp_rx) = mpsc::channel::<Vec<Expect>>(opts.max_batches_in_flight.max(1));
    let mut replies = tokio::spawn(read_replies(
        Replies::new(rd, opts.reply_timeout, &addr),
        rbuf,
        exp_rx,
        addr.clone(),
        stats.clone(),
        opts.checkpoint_key.is_some(),
        Failures::new(&opts, &stats),
    ));

    let mut enc = Encoder::new(&opts);
    if let Some((key, value)) = &opts.record_ownership {
        enc.select_target(0);
        frame::write_command(
            &mut enc.buf,
            &[b"SET".as_ref(), key, value.as_bytes(), b"NX"],
        );
        enc.expects.push(Expect::Control {
            what: "SET ownership record",
        });
    }
    let mut compat = Compat::for_writer(version.clone(), &opts, &stats, &addr);
    let result: Result<(), TargetError> = async {
        loop {
            if enc.pending.is_some() {
                // The rest of a cut rewrite goes first (a key's commands stay in order).
                if cancel.is_cancelled() {
                    break;
                }
                enc.resume_pending();
            } else {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = cancel.cancelled() => None,
                    r = &mut replies => return Err(reply_task_result(r, &addr).err().unwrap_or_else(|| closed(&addr))),
                };
                let Some(ev) = ev else { break };
                if let Event::SnapshotBegin { .. } = &ev {
                    if opts.refuse_snapshot {
                        return Err(TargetError::FlushRefused { addr: addr.clone() });
                    }
                    if opts.flush_before_snapshot {
                        match &opts.flush_slots {
                            Some(ranges) => {
                                crate::flush::delete_slots(&opts.endpoint, ranges).await?;
                            }
                            None => crate::flush::log_flushall(&opts.endpoint, false).await,
                        }
                    }
                }
                enc.route(&mut compat, ev)?;
            }
            let mut stop = false;
            loop {
                while enc.buf.len() < opts.batch_bytes && enc.pending.is_none() {
                    match rx.try_recv() {
                        Ok(ev) => enc.route(&mut compat, ev)?,
                        Err(_) => break,
                    }
                }
                if !enc.src_multi {
                    break;
                }
                // A source transaction is open: its EXEC must land in this batch.
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = cancel.cancelled() => None,
                };
                match ev {
                    Some(ev) => enc.route(&mut compat, ev)?,
                    None => {
                        enc.discard_txn();
                        stop = true;
                        break;
                    }
                }
            }
            enc.close_txn();
            if enc.expects.is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut enc.expects);
            tokio::select! {
                r = exp_tx.send(batch) => { if r.is_err() { break; } }
                r = &mut replies => return Err(reply_task_result(r, &addr).err().unwrap_or_else(|| closed(&addr))),
            }
            if !enc.buf.is_empty() {
                tokio::select! {
                    r = wr.write_all(&enc.buf) => r.map_err(|source| ferry_resp::Error::Io { addr: addr.clone(), source })?,
                    r = &mut replies => return Err(reply_task_result(r, &addr).err().unwrap_or_else(|| closed(&addr))),
                }
                enc.buf.clear();
                if enc.buf.capacity() > opts.batch_bytes * 8 {
                    enc.buf = BytesMut::with_capacity(opts.batch_bytes * 2);
                }
            }
            if stop {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(exp_tx);
    if compat.rewritten > 0 || compat.skipped > 0 {
        info!(target = %addr, rewritten = compat.rewritten, skipped = compat.skipped, "keys written as plain commands / skipped");
    }
    match result {
        Ok(()) => {
            let summary = reply_task_result(replies.await, &addr)?;
            debug!(target = %addr, ?summary, "writer drained");
            Ok(summary)
        }
        Err(e) => {
            replies.abort();
            Err(e)
        }
    }
}

fn closed(addr: &str) -> TargetError {
    ferry_resp::Error::Closed {
        addr: addr.to_string(),
        context: Some("reply reader stopped".into()),
    }
    .into()
}

fn reply_task_result(
    r: Result<Result<WriteSummary, TargetError>, tokio::task::JoinError>,
    addr: &str,
) -> Result<WriteSummary, TargetError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(TargetError::Internal {
            addr: addr.to_string(),
            message: format!("reply reader failed: {e}"),
        }),
    }
}

pub(crate) fn lossy(b: &[u8]) -> String {
    let b = &b[..b.len().min(200)];
    String::from_utf8_lossy(b).into_owned()
}

/// Reads replies in order and checks each against what its command expects.
#[allow(clippy::too_many_arguments)]
async fn read_replies(
    mut rd: Replies,
    mut buf: BytesMut,
    mut exp_rx: mpsc::Receiver<Vec<Expect>>,
    addr: String,
    stats: Arc<ShardStats>,
    checkpointed: bool,
    failures: Failures,
) -> Result<WriteSummary, TargetError> {
    let mut summary = WriteSummary::default();
    // The batch being answered, consumed in place (moving each batch into a VecDeque
    // copied every expectation once more).
    let mut queue = Vec::<Expect>::new().into_iter().peekable();
    loop {
        if queue.peek().is_none() {
            match exp_rx.recv().await {
                Some(batch) => queue = batch.into_iter().peekable(),
                None => return Ok(summary),
            }
        }
        // Markers need no reply: apply them as soon as they reach the front.
        loop {
            match queue.peek() {
                Some(Expect::Mark { offset }) => stats.applied_offset.set(*offset),
                Some(Expect::SnapshotApplied) => {
                    stats.set_snapshot_unapplied(false);
                    info!(target = %addr, keys = summary.keys, "snapshot applied")
                }
                _ => break,
            }
            queue.next();
        }
        let Some(expect) = queue.next() else {
            continue;
        };
        // A snapshot key's `+OK` is by far the most common reply: count it without
        // building a frame.
        if let Expect::Restore { .. } = expect {
            if buf.starts_with(b"+OK\r\n") {
                buf.advance(5);
                summary.keys += 1;
                stats.keys_applied.fetch_add(1, Relaxed);
                stats.records_applied.fetch_add(1, Relaxed);
                continue;
            }
        }
        let reply = loop {
            match rd.parse(&mut buf) {
                Ok(Some((f, _))) => break f,
                Ok(None) => {}
                Err(source) => {
                    return Err(ferry_resp::Error::Protocol {
                        addr: addr.clone(),
                        source,
                    }
                    .into())
                }
            }
            rd.read_more(&mut buf).await?;
        };
        match (&expect, &reply) {
            // Each command that failed inside a committed EXEC: the rest of it is applied.
            (
                Expect::Exec {
                    names, must_exist, ..
                },
                Frame::Array(items),
            ) => {
                checkpoint_kept(must_exist.as_ref(), items, &addr)?;
                for e in exec_failures(names, items, &addr) {
                    failures.handle(e)?;
                }
            }
            // Refused at queue time, the whole EXEC is aborted: skipping the one command
            // would drop its batch, so this always stops.
            (Expect::Queued { .. }, _) => check_reply(&expect, &reply, &addr)?,
            _ => match check_reply(&expect, &reply, &addr) {
                Err(e @ TargetError::CommandFailed { .. }) => failures.handle(e)?,
                Err(e @ (TargetError::Unsupported { .. } | TargetError::KeyExists { .. })) => {
                    let db = match &expect {
                        Expect::Restore { db, .. } => *db,
                        _ => 0,
                    };
                    failures.snapshot_key(e, db)?;
                    // Skipped: not applied.
                    continue;
                }
                r => r?,
            },
        }
        match expect {
            Expect::Restore { .. } => {
                summary.keys += 1;
                stats.keys_applied.fetch_add(1, Relaxed);
                stats.records_applied.fetch_add(1, Relaxed);
            }
            Expect::Command { offset, .. } => {
                summary.commands += 1;
                stats.records_applied.fetch_add(1, Relaxed);
                if let Some(o) = offset {
                    stats.applied_offset.set(o);
                }
            }
            Expect::Queued { .. } if !checkpointed => {
                summary.commands += 1;
                stats.records_applied.fetch_add(1, Relaxed);
            }
            Expect::Exec {
                names,
                offset,
                folded,
                ..
            } => {
                let n = names.iter().filter(|c| c.counted).count() as u64 + folded;
                summary.commands += n;
                stats.records_applied.fetch_add(n, Relaxed);
                if let Some(o) = offset {
                    stats.applied_offset.set(o);
                }
            }
            Expect::Rewrite { last: true, .. } => {
                summary.keys += 1;
                stats.keys_applied.fetch_add(1, Relaxed);
                stats.records_applied.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
}

/// The error naming a replicated command the target refused.
pub(crate) fn command_failed(
    addr: &str,
    name: &[u8],
    key: Option<&Bytes>,
    db: u32,
    offset: u64,
    message: &[u8],
) -> TargetError {
    TargetError::CommandFailed {
        addr: addr.to_string(),
        command: lossy(name).to_uppercase(),
        key: key.map(|k| lossy(k)).unwrap_or_default(),
        db,
        offset,
        message: lossy(message),
    }
}

/// The commands that failed inside a committed `EXEC`, by their place in it. Ferry's own
/// commands (`SELECT`, the checkpoint) failing is no source command's fault: those are
/// [`TargetError::Rejected`].
fn exec_failures<'a>(
    names: &'a [TxnCmd],
    items: &'a [Frame],
    addr: &'a str,
) -> impl Iterator<Item = TargetError> + 'a {
    items.iter().enumerate().filter_map(move |(i, item)| {
        let Frame::Error(m) = item else {
            return None;
        };
        Some(match names.get(i) {
            Some(c) if c.name.as_ref() != b"SELECT" && c.name.as_ref() != b"SET checkpoint" => {
                command_failed(addr, &c.name, c.key.as_ref(), c.db, c.offset, m)
            }
            c => TargetError::Rejected {
                addr: addr.to_string(),
                command: c.map_or("a command".into(), |c| lossy(&c.name).to_uppercase())
                    + " (in a checkpointed batch)",
                message: lossy(m),
            },
        })
    })
}

/// A transaction that ends with the `GETSET` of a checkpoint that must exist: its old value,
/// the last reply, must be there, or the target lost data under ferry.
fn checkpoint_kept(
    must_exist: Option<&Bytes>,
    items: &[Frame],
    addr: &str,
) -> Result<(), TargetError> {
    match (must_exist, items.last()) {
        (Some(key), Some(Frame::Null)) => Err(TargetError::LostData {
            addr: addr.to_string(),
            key: lossy(key),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn check_reply(expect: &Expect, reply: &Frame, addr: &str) -> Result<(), TargetError> {
    let rejected = |command: String, message: String| TargetError::Rejected {
        addr: addr.to_string(),
        command,
        message,
    };
    let unsupported = |what: String, m: &[u8]| TargetError::Unsupported {
        addr: addr.to_string(),
        what,
        message: lossy(m),
    };
    match (expect, reply) {
        (Expect::Restore { key, db }, Frame::Error(m)) => {
            if m.starts_with(b"BUSYKEY") {
                Err(TargetError::KeyExists {
                    addr: addr.to_string(),
                    key: lossy(key),
                })
            } else if is_transient(m) {
                Err(rejected(format!("RESTORE {:?}", lossy(key)), lossy(m)))
            } else {
                // A payload the target cannot read (a module it lacks, a corrupt
                // encoding, an empty value): the same bytes are refused on every attempt.
                Err(unsupported(
                    format!("key {:?} (source db {db}; RESTORE)", lossy(key)),
                    m,
                ))
            }
        }
        (
            Expect::Command {
                name,
                key,
                offset: Some(offset),
                db,
            },
            Frame::Error(m),
        ) if !is_transient(m) && !name.eq_ignore_ascii_case(b"EXEC") => {
            Err(command_failed(addr, name, key.as_ref(), *db, *offset, m))
        }
        (Expect::Command { name, key, .. }, Frame::Error(m)) => {
            let cmd = match key {
                Some(k) => format!("{} {:?}", lossy(name).to_uppercase(), lossy(k)),
                None => lossy(name).to_uppercase(),
            };
            Err(rejected(cmd, lossy(m)))
        }
        (Expect::Command { name, .. }, Frame::Null) if name.eq_ignore_ascii_case(b"EXEC") => {
            Err(rejected(
                "EXEC".into(),
                "transaction aborted (a watched key changed)".into(),
            ))
        }
        (
            Expect::Queued {
                name,
                key,
                at: Some((offset, db)),
            },
            Frame::Error(m),
        ) if !is_transient(m) => Err(command_failed(addr, name, key.as_ref(), *db, *offset, m)),
        (Expect::Queued { name, .. }, Frame::Error(m)) => Err(rejected(
            format!("{} (inside MULTI)", lossy(name).to_uppercase()),
            lossy(m),
        )),
        (Expect::Control { what }, Frame::Error(m)) => Err(rejected(what.to_string(), lossy(m))),
        (Expect::FunctionLoad, Frame::Error(m)) if is_transient(m) => {
            Err(rejected("FUNCTION LOAD".into(), lossy(m)))
        }
        (Expect::FunctionLoad, Frame::Error(m)) => {
            if m.windows(14).any(|w| w == b"already exists") {
                Err(TargetError::LibraryExists {
                    addr: addr.to_string(),
                    message: lossy(m),
                })
            } else {
                Err(unsupported("a function library (FUNCTION LOAD)".into(), m))
            }
        }
        (Expect::ScriptLoad, Frame::Error(m)) if is_transient(m) => {
            Err(rejected("SCRIPT LOAD".into(), lossy(m)))
        }
        (Expect::ScriptLoad, Frame::Error(m)) => {
            Err(unsupported("a Lua script (SCRIPT LOAD)".into(), m))
        }
        (Expect::Exec { .. }, Frame::Error(m)) => Err(rejected("EXEC".into(), lossy(m))),
        (Expect::Exec { .. }, Frame::Null) => {
            Err(rejected("EXEC".into(), "transaction aborted".into()))
        }
        (Expect::Checkpoint { key, must_exist }, reply) => match reply {
            Frame::Error(m) => Err(rejected("GETSET checkpoint".into(), lossy(m))),
            Frame::Null if *must_exist => Err(TargetError::LostData {
                addr: addr.to_string(),
                key: lossy(key),
            }),
            _ => Ok(()),
        },
        (
            Expect::Exec {
                names, must_exist, ..
            },
            Frame::Array(items),
        ) => {
            checkpoint_kept(must_exist.as_ref(), items, addr)?;
            match exec_failures(names, items, addr).next() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        (
            Expect::Rewrite {
                key,
                check: Check::RenameNx | Check::RenameNxExpiring,
                ..
            },
            Frame::Integer(0),
        ) => Err(TargetError::KeyExists {
            addr: addr.to_string(),
            key: lossy(key),
        }),
        (Expect::Rewrite { check, .. }, Frame::Error(m))
            if matches!(check, Check::RenameExpiring | Check::RenameNxExpiring)
                && m.ends_with(b"no such key") =>
        {
            Ok(()) // it expired while being written
        }
        (Expect::Rewrite { key, name, .. }, Frame::Error(m)) => Err(rejected(
            format!(
                "{} while rewriting key {:?} into commands",
                lossy(name).to_uppercase(),
                lossy(key)
            ),
            lossy(m),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_arguments_follow_the_db_map() {
        let map: DbMap = "1:5,2:0".parse().unwrap();
        let args = |s: &str| s.split(' ').map(|p| Bytes::from(p.to_string())).collect();
        let text = |v: Vec<Bytes>| {
            v.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let m = |s: &str| text(map_db_arguments(&map, args(s)));
        assert_eq!(m("SWAPDB 1 3"), "SWAPDB 5 3");
        assert_eq!(m("MOVE k 2"), "MOVE k 0");
        assert_eq!(m("COPY a b DB 1 REPLACE"), "COPY a b DB 5 REPLACE");
        assert_eq!(m("COPY db DB REPLACE"), "COPY db DB REPLACE");
        assert_eq!(m("SET 1 2"), "SET 1 2");
        assert_eq!(
            text(map_db_arguments(&DbMap::default(), args("MOVE k 1"))),
            "MOVE k 1"
        );
        let z = |s: &str| swapped_with_zero(&args(s));
        assert_eq!(z("SWAPDB 0 3"), Some(3));
        assert_eq!(z("swapdb 4 0"), Some(4));
        assert_eq!(z("SWAPDB 0 0"), None);
        assert_eq!(z("SWAPDB 1 2"), None);
    }

    fn cmd(i: usize) -> Cmd {
        Cmd {
            argv: vec![
                Bytes::from_static(b"RPUSH"),
                Bytes::from_static(b"tmp"),
                Bytes::from(format!("{i:0>90}")),
            ],
            check: Check::Ok,
        }
    }

    #[test]
    fn a_long_rewrite_is_cut_into_batches_in_order() {
        let mut opts = WriterOptions::new(Endpoint::new("127.0.0.1", 1));
        opts.batch_bytes = 250;
        let mut enc = Encoder::new(&opts);
        enc.db = Some(0);
        let cmds: Vec<Cmd> = (0..10).map(cmd).collect();
        let mut whole = BytesMut::new();
        for c in &cmds {
            frame::write_command(&mut whole, &c.argv);
        }
        enc.push_rewrite(0, Bytes::from_static(b"k"), cmds, true);
        let mut batches = Vec::new();
        loop {
            batches.push((
                std::mem::take(&mut enc.buf),
                std::mem::take(&mut enc.expects),
            ));
            if !enc.resume_pending() && enc.expects.is_empty() {
                break;
            }
        }
        // Each command is ~120 bytes: cut after the third, 3 + 3 + 3 + 1.
        let sizes: Vec<usize> = batches.iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let joined: Vec<u8> = batches.iter().flat_map(|(b, _)| b.to_vec()).collect();
        assert_eq!(joined, whole.to_vec());
        let lasts: Vec<bool> = batches
            .iter()
            .flat_map(|(_, e)| e.iter())
            .map(|e| matches!(e, Expect::Rewrite { last: true, .. }))
            .collect();
        assert_eq!(lasts.iter().filter(|l| **l).count(), 1);
        assert!(lasts[9]);

        // Inside a transaction nothing is cut.
        let mut enc = Encoder::new(&opts);
        enc.db = Some(0);
        enc.txn_open = true;
        enc.push_rewrite(
            0,
            Bytes::from_static(b"k"),
            (0..10).map(cmd).collect(),
            false,
        );
        assert!(enc.pending.is_none());
        assert_eq!(enc.expects.len(), 10);
    }
}
