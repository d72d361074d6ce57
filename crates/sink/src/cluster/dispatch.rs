//! Turning queued items into units and sending the ready slots of each master as one
//! flight, within what a master may have unanswered.

use super::*;

impl ClusterWriter {
    pub(super) fn room(&self, i: usize) -> bool {
        self.node_inflight.get(&self.addrs[i]).copied().unwrap_or(0) < self.node_cap
    }

    /// Sends the next batch of ready slots: per master, as long as what it has unanswered
    /// stays under `node_cap`, one flight (several when they grow past `batch_bytes`), each
    /// slot's units in order, at most one flight per slot. A master's other ready slots stay
    /// listed, untouched, until one of its flights is answered.
    pub(super) fn dispatch(&mut self) -> Result<(), TargetError> {
        if !self.delayed.is_empty() {
            let now = Instant::now();
            let mut due = Vec::new();
            self.delayed.retain(|&s| {
                let st = &self.slots[s as usize];
                if st.not_before.is_none_or(|t| t <= now) {
                    due.push(s);
                    false
                } else {
                    true
                }
            });
            for s in due {
                self.slots[s as usize].not_before = None;
                self.wake(s);
            }
        }
        for i in 0..self.ready.len() {
            if !self.packs[i].is_empty() && self.room(i) {
                // Its memory was counted as packed; `send` counts it again as in flight.
                self.outstanding = self.outstanding.saturating_sub(self.packs[i].weight());
                let unit = self.packs[i].take(self.opts.batch_bytes + self.opts.batch_bytes / 4);
                let ep = self.map.masters[i].clone();
                self.send(&ep, vec![unit], Vec::new())?;
            }
            let mut room = self.room(i);
            let mut open: Option<OpenFlight> = None;
            while room {
                let Some(slot) = self.ready[i].pop_front() else {
                    break;
                };
                self.slots[slot as usize].listed = false;
                // Sized for the slots at hand (growing it would move every unit), but not a
                // big allocation for a stream's few.
                let n = (self.ready[i].len() + 1).min(1024);
                let f =
                    open.get_or_insert_with(|| (Vec::with_capacity(n), Vec::with_capacity(n), 0));
                let start = f.0.len();
                if self.take_units(slot, &mut f.0) == 0 {
                    continue;
                }
                // A flight's size is capped in bytes sent (its memory is counted in
                // `outstanding`).
                f.2 += f.0[start..].iter().map(|u| u.bytes.len()).sum::<usize>();
                f.1.push(slot);
                if f.2 >= self.opts.batch_bytes {
                    let (units, slots, _) = open.take().unwrap_or_default();
                    let ep = self.map.masters[i].clone();
                    self.send(&ep, units, slots)?;
                    room = self.room(i);
                }
            }
            if let Some((units, slots, _)) = open.filter(|f| !f.0.is_empty()) {
                let ep = self.map.masters[i].clone();
                self.send(&ep, units, slots)?;
            }
        }
        Ok(())
    }

    /// Appends a slot's next batch to `out`: what was refused first, else queued items up to
    /// `batch_bytes`. Returns the weight appended.
    pub(super) fn take_units(&mut self, slot: u16, out: &mut Vec<Unit>) -> usize {
        let st = &mut self.slots[slot as usize];
        if st.inflight.is_some() || st.not_before.is_some() || !st.has_work() {
            return 0;
        }
        let start = out.len();
        // Queued work leaves `outstanding` here and comes back as the flight's weight.
        if !st.retry.is_empty() {
            let mut size = 0;
            for u in st.retry.drain(..) {
                size += u.weight();
                out.push(u);
            }
            self.outstanding = self.outstanding.saturating_sub(size);
        } else {
            // Units go straight into the flight until a command item needs `units_of`.
            // A batch is capped by the bytes it sends, not by its memory: a busy slot's
            // stream (one slot takes all of `redis-benchmark --cluster`'s keys of a master)
            // goes in batches as big as on a standalone target.
            let mut items = Vec::new();
            let mut size = 0;
            let mut bytes = 0;
            while let Some(item) = st.pending.pop_front() {
                size += item.weight();
                bytes += item.bytes();
                match item {
                    Item::Unit(u) if items.is_empty() => out.push(u),
                    item => items.push(item),
                }
                if bytes >= self.opts.batch_bytes {
                    break;
                }
            }
            if st.pending.is_empty() && st.pending.capacity() > 64 {
                // A burst's queue is not kept for the rest of the sync.
                st.pending = VecDeque::new();
            }
            self.outstanding = self.outstanding.saturating_sub(size);
            if !items.is_empty() {
                self.units_of(slot, items, out);
            }
        }
        if !self.slots[slot as usize].has_work() {
            self.busy -= 1;
        }
        let mut weight = 0;
        for u in &mut out[start..] {
            u.slot = Some(slot);
            weight += u.weight();
        }
        weight
    }

    /// Sends a flight to the master at `ep`; `slots` are the slots it carries units of.
    pub(super) fn send(
        &mut self,
        ep: &Endpoint,
        units: Vec<Unit>,
        slots: Vec<u16>,
    ) -> Result<u64, TargetError> {
        let addr = ep.addr();
        still_valid(&self.opts.still_valid, &addr)?;
        let id = self.next_id;
        self.next_id += 1;
        let reports = self.reports_tx.clone();
        let name = self.opts.client_name.clone();
        let valid = self.opts.still_valid.clone();
        let failures = Failures::new(&self.opts, &self.stats);
        let timeout = self.opts.reply_timeout;
        let node = self
            .nodes
            .entry(addr.clone())
            .or_insert_with(|| spawn_node(ep.clone(), reports, name, valid, failures, timeout));
        let weight = units.iter().map(Unit::weight).sum();
        let units = Arc::new(units);
        let batch = NodeBatch {
            id,
            units: units.clone(),
        };
        // A node task that ended has reported its loss (or a failure), still queued for
        // `report`: the recovery then takes this flight too. A new connection must not, or
        // a batch could be applied twice.
        let _ = node.send(batch);
        *self.node_inflight.entry(addr.clone()).or_default() += weight;
        self.outstanding += weight;
        for &s in &slots {
            self.slots[s as usize].inflight = Some(id);
        }
        self.flights.insert(
            id,
            Flight {
                addr,
                units,
                slots,
                weight,
            },
        );
        Ok(id)
    }

    /// Turns a slot's queued items into units, appended to `units`: under checkpoints all its
    /// commands become one transaction that also records the slot's checkpoint.
    pub(super) fn units_of(&mut self, slot: u16, items: Vec<Item>, units: &mut Vec<Unit>) {
        // Only a batch of stream commands needs the slot's checkpoint key.
        let ckpt_key = match self.opts.checkpoint_key.as_ref() {
            Some(k) if items.iter().any(|i| matches!(i, Item::Cmds { .. })) => {
                Some(slot_checkpoint_key(k, slot))
            }
            _ => None,
        };
        let mut txn: Option<OpenTxn> = None;
        let mut last = (0u64, 0u32);
        for item in items {
            match item {
                Item::Unit(u) => {
                    if let Some(t) = txn.take() {
                        units.push(self.close_txn(t, slot, ckpt_key.as_ref(), last));
                    }
                    units.push(u);
                }
                Item::Cmds {
                    cmds,
                    offset,
                    db,
                    records,
                    txn: src_txn,
                } => {
                    if ckpt_key.is_some() || src_txn {
                        let t = txn.get_or_insert_with(|| {
                            let mut buf = BytesMut::new();
                            frame::write_command(&mut buf, &[b"MULTI"]);
                            (buf, 0, Unit::new(Bytes::new(), Vec::new()))
                        });
                        for c in &cmds {
                            frame::write_command(&mut t.0, c);
                        }
                        t.1 += cmds.len() as u32;
                        t.2.offsets.push(offset);
                        t.2.spans.push((cmds.len() as u32, db));
                        t.2.records += records;
                        last = (offset, db);
                        if ckpt_key.is_none() {
                            // Without checkpoints, a source transaction is its own unit.
                            if let Some(t) = txn.take() {
                                units.push(self.close_txn(t, slot, None, last));
                            }
                        }
                    } else {
                        for (i, c) in cmds.into_iter().enumerate() {
                            let mut buf = BytesMut::new();
                            frame::write_command(&mut buf, &c);
                            let mut u = Unit::new(
                                buf.freeze(),
                                vec![Expect::Command {
                                    name: c[0].clone(),
                                    key: c.get(1).cloned(),
                                    // For an error naming it (the cluster writer tracks
                                    // applied offsets by unit, not by this).
                                    offset: Some(offset),
                                    db,
                                }],
                            );
                            if i == 0 {
                                u.offsets.push(offset);
                                u.records = records;
                            }
                            units.push(u);
                        }
                    }
                }
            }
        }
        if let Some(t) = txn.take() {
            units.push(self.close_txn(t, slot, ckpt_key.as_ref(), last));
        }
    }

    pub(super) fn close_txn(
        &mut self,
        (mut buf, mut queued, mut unit): OpenTxn,
        slot: u16,
        ckpt_key: Option<&Bytes>,
        (offset, db): (u64, u32),
    ) -> Unit {
        let mut must_exist = false;
        if let Some(key) = ckpt_key {
            let value = Checkpoint::Stream {
                replid: self.replid.clone(),
                offset,
                db,
            }
            .encode();
            frame::write_command(&mut buf, &[b"GETSET".as_ref(), key, value.as_bytes()]);
            queued += 1;
            unit.checkpoint = Some(offset);
            must_exist = std::mem::replace(&mut self.ckpt_exists[slot as usize], true);
        }
        frame::write_command(&mut buf, &[b"EXEC"]);
        unit.bytes = buf.freeze();
        unit.expects = Expects::Txn { queued, must_exist };
        unit
    }

    pub(super) fn queue(&mut self, slot: u16, item: Item) {
        self.outstanding += item.weight();
        let st = &mut self.slots[slot as usize];
        if !st.has_work() {
            self.busy += 1;
        }
        st.pending.push_back(item);
        self.wake(slot);
    }
}
