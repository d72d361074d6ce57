//! Taking the reader's events: snapshot keys into packs, commands into their slots'
//! queues, transactions, broadcasts, and the global checkpoint once every master caught up.

use super::*;

impl ClusterWriter {
    pub(super) fn check_db(&self, db: u32) -> Result<(), TargetError> {
        let mapped = self.opts.db_map.target(db);
        if mapped == 0 {
            return Ok(());
        }
        Err(TargetError::Incompatible {
            addr: self.addr.clone(),
            message: if mapped == db {
                format!("source data in db {db}: a cluster target has only db 0; map it with --db-map {db}:0")
            } else {
                format!("source db {db} is mapped to db {mapped}: a cluster target has only db 0")
            },
        })
    }

    pub(super) async fn event(&mut self, ev: Event) -> Result<(), TargetError> {
        match ev {
            Event::Entry(e) if is_checkpoint_key(&e.key) => Ok(()),
            Event::Command { argv, offset, db }
                if argv.get(1).is_some_and(|k| is_checkpoint_key(k)) =>
            {
                self.mark(offset, db);
                Ok(())
            }
            Event::SnapshotBegin { replid, offset, .. } => {
                self.replid = replid;
                self.snapshot_offset = offset;
                self.streaming = false;
                if self.opts.refuse_snapshot {
                    return Err(TargetError::FlushRefused {
                        addr: self.addr.clone(),
                    });
                }
                if self.opts.flush_before_snapshot {
                    match self.opts.flush_slots.clone() {
                        // One shard of a cluster source owns only its slots' keys.
                        Some(ranges) => {
                            self.drain().await?;
                            for m in self.map.masters.clone() {
                                crate::flush::delete_slots(&m, &ranges).await?;
                            }
                        }
                        None => {
                            self.drain().await?;
                            crate::flush::log_flushall(&self.seed, true).await;
                            self.broadcast(vec![Bytes::from_static(b"FLUSHALL")], None)
                                .await?
                        }
                    }
                }
                // Durable before any key: a restart must know a snapshot was under way.
                let c = Checkpoint::Snapshot {
                    replid: self.replid.clone(),
                    offset,
                };
                self.write_global(c);
                self.drain().await
            }
            Event::SnapshotEnd { .. } => {
                self.drain().await?;
                let offset = self.snapshot_offset;
                self.routed.clear();
                self.applied = Some((offset, 0));
                self.write_global(Checkpoint::Stream {
                    replid: self.replid.clone(),
                    offset,
                    db: 0,
                });
                self.drain().await?;
                self.streaming = true;
                self.stats.set_snapshot_unapplied(false);
                info!(target = %self.addr, keys = self.summary.keys, "snapshot applied");
                Ok(())
            }
            Event::Continue { replid, offset } => {
                self.replid = replid;
                self.streaming = true;
                if self.applied.is_none() {
                    self.applied = Some((offset, 0));
                    self.global_written = Some(offset);
                }
                Ok(())
            }
            Event::Command { db, argv, offset } => {
                if argv.is_empty() {
                    return Ok(());
                }
                self.check_db(db)?;
                if let Err(e) = self.compat.check_arguments(db, &argv, offset) {
                    match &self.compat.failures {
                        // Gone past: its bytes still move the checkpoint.
                        Some(f) => f.handle(e)?,
                        None => return Err(e),
                    }
                    if self.src_txn.is_none() {
                        self.mark(offset, db);
                    }
                    return Ok(());
                }
                self.command(db, argv, offset).await
            }
            Event::Offset { offset, db } => {
                if self.src_txn.is_none() {
                    self.mark(offset, db);
                }
                Ok(())
            }
            other => match self.compat.route(other)? {
                Routed::Pass(ev) => self.snapshot_event(ev).await,
                Routed::Rewrite {
                    db,
                    key,
                    cmds,
                    completes_key,
                } => {
                    self.check_db(db)?;
                    self.rewrite(key, cmds, completes_key);
                    Ok(())
                }
                Routed::Drop => Ok(()),
            },
        }
    }

    pub(super) async fn snapshot_event(&mut self, ev: Event) -> Result<(), TargetError> {
        match ev {
            Event::SnapshotHeader { rdb_version } => self.rdb_version = rdb_version,
            Event::Entry(e) => {
                self.check_db(e.db as u32)?;
                let slot = key_slot(&e.key);
                // Every slot has a master (a map with a gap is never taken).
                let i = self.map.owner[slot as usize].unwrap_or(0);
                let pack = &mut self.packs[i];
                let before = pack.buf.len();
                write_restore(&mut pack.buf, &e, self.opts.overwrite, self.rdb_version);
                pack.ends.push((slot, pack.buf.len() as u32));
                self.outstanding += pack.buf.len() - before + PACKED_OVERHEAD;
            }
            Event::Function { code } => {
                let mut argv = vec![Bytes::from_static(b"FUNCTION"), Bytes::from_static(b"LOAD")];
                if self.opts.function_load_replaces() {
                    argv.push(Bytes::from_static(b"REPLACE"));
                }
                argv.push(code);
                self.broadcast(argv, None).await?;
            }
            Event::Script { body } => {
                let argv = vec![
                    Bytes::from_static(b"SCRIPT"),
                    Bytes::from_static(b"LOAD"),
                    body,
                ];
                self.broadcast(argv, None).await?;
            }
            // Handled before `Compat`, or turned into rewrites by it.
            _ => {}
        }
        Ok(())
    }

    pub(super) fn rewrite(&mut self, key: Bytes, cmds: Vec<Cmd>, completes_key: bool) {
        let mut buf = BytesMut::new();
        let n = cmds.len();
        let mut expects = Vec::with_capacity(n);
        for (i, cmd) in cmds.into_iter().enumerate() {
            frame::write_command(&mut buf, &cmd.argv);
            expects.push(Expect::Rewrite {
                key: key.clone(),
                name: cmd.argv.first().cloned().unwrap_or_default(),
                check: cmd.check,
                last: completes_key && i + 1 == n,
            });
        }
        let mut u = Unit::new(buf.freeze(), expects);
        if completes_key {
            u.keys = 1;
            u.records = 1;
        }
        self.queue(key_slot(&key), Item::Unit(u));
    }

    pub(super) async fn command(
        &mut self,
        db: u32,
        argv: Vec<Bytes>,
        offset: u64,
    ) -> Result<(), TargetError> {
        let name = &argv[0];
        if name.eq_ignore_ascii_case(b"MULTI") {
            self.src_txn = Some((Vec::new(), db));
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"EXEC") {
            let Some((cmds, db)) = self.src_txn.take() else {
                self.mark(offset, db);
                return Ok(());
            };
            return self.transaction(cmds, db, offset).await;
        }
        if let Some((cmds, _)) = &mut self.src_txn {
            cmds.push(argv);
            return Ok(());
        }
        match route_command(argv, &self.addr)? {
            Route::Broadcast(argv) => self.broadcast(argv, Some((offset, db))).await?,
            Route::Slots(parts) => {
                for (i, (slot, part)) in parts.into_iter().enumerate() {
                    let records = u64::from(i == 0);
                    self.queue_cmds(slot, vec![part], offset, db, records, false);
                }
            }
        }
        self.mark(offset, db);
        Ok(())
    }

    /// A source `MULTI … EXEC`: each slot's share applied as one transaction.
    pub(super) async fn transaction(
        &mut self,
        cmds: Vec<Vec<Bytes>>,
        db: u32,
        offset: u64,
    ) -> Result<(), TargetError> {
        let mut per_slot: Vec<(u16, Vec<Vec<Bytes>>)> = Vec::new();
        let mut records = 2; // MULTI and EXEC
        for argv in cmds {
            records += 1;
            match route_command(argv, &self.addr)? {
                Route::Broadcast(argv) => {
                    // Cannot be atomic with anything: everything before it goes first.
                    for (slot, cmds) in per_slot.drain(..) {
                        self.queue_cmds(slot, cmds, offset, db, 0, true);
                    }
                    self.broadcast(argv, Some((offset, db))).await?;
                }
                Route::Slots(parts) => {
                    for (slot, part) in parts {
                        match per_slot.iter_mut().find(|(s, _)| *s == slot) {
                            Some((_, c)) => c.push(part),
                            None => per_slot.push((slot, vec![part])),
                        }
                    }
                }
            }
        }
        if per_slot.len() > 1 {
            self.summary.cross_slot_transactions += 1;
            self.stats.split_transactions.fetch_add(1, Relaxed);
            debug!(
                offset,
                slots = per_slot.len(),
                "source transaction spans slots"
            );
        }
        for (i, (slot, cmds)) in per_slot.into_iter().enumerate() {
            let r = if i == 0 { records } else { 0 };
            self.queue_cmds(slot, cmds, offset, db, r, true);
        }
        self.mark(offset, db);
        Ok(())
    }

    pub(super) fn queue_cmds(
        &mut self,
        slot: u16,
        cmds: Vec<Vec<Bytes>>,
        offset: u64,
        db: u32,
        records: u64,
        txn: bool,
    ) {
        let applied = self
            .opts
            .slot_offsets
            .as_ref()
            .and_then(|m| m.get(&slot))
            .is_some_and(|&o| offset <= o);
        if applied {
            return;
        }
        *self.unacked.entry(offset).or_default() += 1;
        self.queue(
            slot,
            Item::Cmds {
                cmds,
                offset,
                db,
                records,
                txn,
            },
        );
    }

    /// A stream event has been routed: once everything up to it is acknowledged, it is
    /// the applied position.
    pub(super) fn mark(&mut self, offset: u64, db: u32) {
        self.routed.push_back((offset, db));
        self.advance();
    }

    pub(super) fn advance(&mut self) {
        let first_unacked = self.unacked.keys().next().copied();
        let mut moved = false;
        while let Some(&(o, db)) = self.routed.front() {
            if first_unacked.is_some_and(|u| u <= o) {
                break;
            }
            self.applied = Some((o, db));
            self.routed.pop_front();
            moved = true;
        }
        if let Some((o, db)) = self.applied {
            if moved {
                self.stats.applied_offset.set(o);
            }
            // Also when nothing moved: the position reached while the last global write was
            // in flight is written once that write is answered, not at the next event.
            if self.streaming && !self.global_pending && self.global_written != Some(o) {
                self.write_global(Checkpoint::Stream {
                    replid: self.replid.clone(),
                    offset: o,
                    db,
                });
            }
        }
    }

    /// Queues a write of the job's global checkpoint (when checkpoints are on).
    pub(super) fn write_global(&mut self, c: Checkpoint) {
        let (Some(key), Some(slot)) = (self.opts.checkpoint_key.clone(), self.global_slot) else {
            return;
        };
        let value = c.encode();
        let mut buf = BytesMut::new();
        frame::write_command(&mut buf, &[b"GETSET".as_ref(), &key, value.as_bytes()]);
        let must_exist = std::mem::replace(&mut self.global_exists, true);
        let mut u = Unit::new(buf.freeze(), vec![Expect::Checkpoint { key, must_exist }]);
        u.global = Some(Box::new(c));
        u.idempotent = true;
        self.global_pending = true;
        self.queue(slot, Item::Unit(u));
    }

    /// Sends `argv` to every master once everything before it is applied, and waits for
    /// all of them.
    pub(super) async fn broadcast(
        &mut self,
        argv: Vec<Bytes>,
        at: Option<(u64, u32)>,
    ) -> Result<(), TargetError> {
        self.drain().await?;
        let mut buf = BytesMut::new();
        frame::write_command(&mut buf, &argv);
        let bytes = buf.freeze();
        let name = argv[0].to_ascii_uppercase();
        let flush = matches!(name.as_slice(), b"FLUSHALL" | b"FLUSHDB");
        // Flushing twice or loading a script twice changes nothing.
        let idempotent = flush || name.as_slice() == b"SCRIPT";
        if flush {
            // The checkpoints go with the rest: the next writes cannot expect them.
            self.ckpt_exists.iter_mut().for_each(|e| *e = false);
            self.global_exists = false;
        }
        let mut masters = self.map.masters.clone();
        // A replicated flush takes the checkpoints with it: the master holding the global
        // checkpoint flushes last, in one transaction with the checkpoint of the flush.
        let last = match (flush, at, &self.opts.checkpoint_key, self.global_slot) {
            (true, Some((offset, db)), Some(key), Some(slot)) => {
                let owner = self.map.endpoint(slot).map(Endpoint::addr);
                masters
                    .iter()
                    .position(|m| Some(m.addr()) == owner)
                    .map(|i| (masters.remove(i), offset, db, key.clone()))
            }
            _ => None,
        };
        for (i, ep) in masters.iter().enumerate() {
            let expect = match name.as_slice() {
                b"FUNCTION"
                    if argv.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"LOAD"))
                        && at.is_none() =>
                {
                    Expect::FunctionLoad
                }
                b"SCRIPT" if at.is_none() => Expect::ScriptLoad,
                _ => Expect::Command {
                    name: argv[0].clone(),
                    key: None,
                    offset: None,
                    db: 0,
                },
            };
            let mut u = Unit::new(bytes.clone(), vec![expect]);
            u.idempotent = idempotent;
            if let Some((o, _)) = at {
                u.offsets.push(o);
                *self.unacked.entry(o).or_default() += 1;
                u.records = u64::from(i == 0 && last.is_none());
            }
            self.send(ep, vec![u], Vec::new())?;
        }
        self.drain().await?;
        if let Some((ep, offset, db, key)) = last {
            let c = Checkpoint::Stream {
                replid: self.replid.clone(),
                offset,
                db,
            };
            let value = c.encode();
            let mut buf = BytesMut::new();
            frame::write_command(&mut buf, &[b"MULTI"]);
            frame::write_command(&mut buf, &argv);
            frame::write_command(&mut buf, &[b"SET".as_ref(), &key, value.as_bytes()]);
            frame::write_command(&mut buf, &[b"EXEC"]);
            let expects = vec![
                Expect::Control { what: "MULTI" },
                Expect::Queued {
                    name: argv[0].clone(),
                    key: None,
                    at: Some((offset, db)),
                },
                Expect::queued(b"SET checkpoint"),
                Expect::Exec {
                    names: vec![
                        TxnCmd {
                            name: argv[0].clone(),
                            key: None,
                            db,
                            offset,
                            counted: true,
                        },
                        TxnCmd::own(b"SET checkpoint"),
                    ],
                    offset: None,
                    folded: 0,
                    must_exist: None,
                },
            ];
            let mut u = Unit::new(buf.freeze(), expects);
            u.idempotent = true;
            u.offsets.push(offset);
            *self.unacked.entry(offset).or_default() += 1;
            u.records = 1;
            u.global = Some(Box::new(c));
            self.global_pending = true;
            self.global_exists = true;
            self.send(&ep, vec![u], Vec::new())?;
            self.drain().await?;
        } else if flush {
            // The global checkpoint is written again as soon as the stream moves on.
            self.global_written = None;
        }
        Ok(())
    }

    /// Waits until everything queued is sent and acknowledged.
    pub(super) async fn drain(&mut self) -> Result<(), TargetError> {
        loop {
            self.dispatch()?;
            if self.idle() {
                return Ok(());
            }
            let wake = self.next_wake();
            tokio::select! {
                r = self.reports.recv() => {
                    if let Some(r) = r {
                        Box::pin(self.report(r)).await?;
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }
}
