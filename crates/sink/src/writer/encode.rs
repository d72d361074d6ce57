//! Events into commands: `RESTORE`s, replicated commands with their databases mapped, the
//! checkpointed transaction around each batch, rewrites of values the target cannot
//! restore.

use super::*;

/// Turns events into RESP in a reused buffer, tracking the connection's database and
/// whether a transaction is open.
pub(super) struct Encoder {
    pub(super) buf: BytesMut,
    pub(super) expects: Vec<Expect>,
    pub(super) db: Option<u32>,
    /// A MULTI is open on the connection (ferry's own, or the source's passed through).
    pub(super) in_multi: bool,
    pub(super) rdb_version: u16,
    pub(super) overwrite: bool,
    pub(super) checkpoint: Option<Bytes>,
    /// The checkpoint key is known to exist on the target before the next checkpoint write.
    pub(super) checkpoint_exists: bool,
    pub(super) flush_before_snapshot: bool,
    /// See [`WriterOptions::function_load_replaces`].
    pub(super) function_replace: bool,
    /// Stream position: which history, and the offset the snapshot started from.
    pub(super) replid: String,
    pub(super) snapshot_offset: u64,
    /// Inside a source MULTI whose EXEC has not arrived: the batch cannot end here.
    pub(super) src_multi: bool,
    /// Commands queued in ferry's open transaction and the offset it will record.
    pub(super) txn_names: Vec<TxnCmd>,
    /// Source offset and database the transaction's checkpoint will record.
    pub(super) txn_offset: Option<(u64, u32)>,
    pub(super) txn_open: bool,
    pub(super) txn_folded: u64,
    /// Source db → target db.
    pub(super) db_map: DbMap,
    /// A batch is cut once it holds this many bytes.
    pub(super) batch_bytes: usize,
    /// Commands of a rewritten key that did not fit in the batch (a big value's chunk can
    /// make thousands): written into the next batches before any other event.
    pub(super) pending: Option<PendingRewrite>,
}

/// The rest of a key's rewrite commands, for the next batch.
pub(super) struct PendingRewrite {
    pub(super) db: u32,
    pub(super) key: Bytes,
    pub(super) cmds: std::vec::IntoIter<Cmd>,
    pub(super) completes_key: bool,
}

impl Encoder {
    pub(super) fn new(opts: &WriterOptions) -> Encoder {
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
    pub(super) fn select(&mut self, db: u32) {
        self.select_target(self.db_map.target(db));
    }

    /// Selects target database `db` as it is (ferry's checkpoint lives in db 0).
    pub(super) fn select_target(&mut self, db: u32) {
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

    pub(super) fn queue_select(&mut self, db: u32) {
        self.queue_select_target(self.db_map.target(db));
    }

    pub(super) fn queue_select_target(&mut self, db: u32) {
        self.select_target(db);
    }

    /// Writes the checkpoint with `GETSET`: its old value tells whether the key was still
    /// there. Returns whether it must have been.
    pub(super) fn set_checkpoint(&mut self, key: &Bytes, value: String) -> bool {
        frame::write_command(&mut self.buf, &[b"GETSET".as_ref(), key, value.as_bytes()]);
        std::mem::replace(&mut self.checkpoint_exists, true)
    }

    /// An outside checkpoint write's expected reply.
    pub(super) fn expect_checkpoint(&mut self, key: Bytes, value: String) {
        let must_exist = self.set_checkpoint(&key, value);
        self.expects.push(Expect::Checkpoint { key, must_exist });
    }

    /// Opens ferry's transaction for this batch if it is not open yet.
    pub(super) fn open_txn(&mut self) {
        if !self.txn_open {
            frame::write_command(&mut self.buf, &[b"MULTI"]);
            self.expects.push(Expect::Control { what: "MULTI" });
            self.txn_open = true;
            self.in_multi = true;
        }
    }

    /// Ends the batch's transaction with the checkpoint of what it holds.
    pub(super) fn close_txn(&mut self) {
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
    pub(super) fn discard_txn(&mut self) {
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
    pub(super) fn push_checkpointed(&mut self, db: u32, argv: Vec<Bytes>, offset: u64) {
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
    pub(super) fn keep_job_keys_in_zero(&mut self, other: u32) {
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
    pub(super) fn push_rewrite(
        &mut self,
        db: u32,
        key: Bytes,
        cmds: Vec<Cmd>,
        completes_key: bool,
    ) {
        self.write_rewrite(PendingRewrite {
            db,
            key,
            cmds: cmds.into_iter(),
            completes_key,
        });
    }

    pub(super) fn write_rewrite(&mut self, mut p: PendingRewrite) {
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
    pub(super) fn resume_pending(&mut self) -> bool {
        if let Some(p) = self.pending.take() {
            self.write_rewrite(p);
        }
        self.pending.is_some()
    }

    pub(super) fn route(&mut self, compat: &mut Compat, ev: Event) -> Result<(), TargetError> {
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

    pub(super) fn push(&mut self, ev: Event) {
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
pub(super) fn swapped_with_zero(argv: &[Bytes]) -> Option<u32> {
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
