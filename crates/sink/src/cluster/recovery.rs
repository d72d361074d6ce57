//! Answers from the masters: acknowledged units, refusals (`MOVED`, `ASK`, `TRYAGAIN`)
//! resent, and lost masters replaced (a failover) with what they left unanswered resent
//! unless its slot checkpoint shows it applied.

use super::*;

impl ClusterWriter {
    pub(super) async fn report(&mut self, r: Report) -> Result<(), TargetError> {
        match r {
            Report::Failed { error } => Err(error),
            Report::Done { id, results } => {
                let Some(flight) = self.flights.remove(&id) else {
                    return Ok(());
                };
                self.outstanding = self.outstanding.saturating_sub(flight.weight);
                self.flight_done(&flight.addr, flight.weight);
                let mut refresh = false;
                // Slots refused with `ASK`/`TRYAGAIN`/`CLUSTERDOWN`: paused before resending.
                let mut later: Vec<u16> = Vec::new();
                let mut retry = Vec::new();
                let mut refused = Vec::new();
                // Slots of a pack's refused `RESTORE`s, now queued (a pack is no slot's flight).
                let mut unpacked_slots = Vec::new();
                for (unit, answer) in flight.units.iter().zip(results) {
                    match answer {
                        Answer::Applied => self.acked(unit, unit.keys, unit.records),
                        Answer::Refused(r) => refused.push((unit.clone(), r)),
                        Answer::Partly(list) => {
                            let Expects::Pack(ends) = &unit.expects else {
                                continue;
                            };
                            let applied = unit.keys - list.len() as u64;
                            self.acked(unit, applied, applied);
                            for (i, r) in list {
                                let (slot, mut u) = unpacked(unit, ends, i as usize);
                                u.slot = Some(slot);
                                unpacked_slots.push(slot);
                                refused.push((u, r));
                            }
                        }
                    }
                }
                for (mut unit, r) in refused {
                    let first = *unit.first_refusal.get_or_insert_with(Instant::now);
                    let message = match &r {
                        Refusal::Moved(m) => {
                            refresh = true;
                            self.moved += 1;
                            m
                        }
                        Refusal::Later(m) => {
                            if let Some(s) = unit.slot {
                                if later.last() != Some(&s) {
                                    later.push(s);
                                }
                            }
                            self.asked += 1;
                            m
                        }
                    };
                    if first.elapsed() > REDIRECT_PATIENCE {
                        return Err(TargetError::Rejected {
                            addr: flight.addr.clone(),
                            command: unit.what(),
                            message: format!(
                                "still refused after {REDIRECT_PATIENCE:?}: {message}"
                            ),
                        });
                    }
                    debug!(target = %flight.addr, refusal = %message, "resending");
                    retry.push(unit);
                }
                self.requeue(&flight.addr, retry)?;
                let now = Instant::now();
                for &s in &later {
                    let st = &mut self.slots[s as usize];
                    if st.not_before.is_none() {
                        st.not_before = Some(now + RETRY_BACKOFF);
                        self.delayed.push(s);
                    }
                }
                for &s in &flight.slots {
                    self.slots[s as usize].inflight = None;
                    self.wake(s);
                }
                for s in unpacked_slots {
                    self.wake(s);
                }
                if refresh {
                    self.refresh().await?;
                }
                self.advance();
                Ok(())
            }
            Report::Lost { addr, error } => self.recover(addr, error).await,
        }
    }

    /// A flight to `addr` is answered: that master may take more.
    pub(super) fn flight_done(&mut self, addr: &str, weight: usize) {
        if let Some(n) = self.node_inflight.get_mut(addr) {
            *n = n.saturating_sub(weight);
        }
    }

    /// Units to send again: a slot's go first in its queue (in their order), a broadcast's
    /// straight back to its master.
    pub(super) fn requeue(&mut self, addr: &str, units: Vec<Unit>) -> Result<(), TargetError> {
        let mut direct = Vec::new();
        for u in units.into_iter().rev() {
            let Some(s) = u.slot else {
                direct.push(u);
                continue;
            };
            self.outstanding += u.weight();
            let st = &mut self.slots[s as usize];
            if !st.has_work() {
                self.busy += 1;
            }
            st.retry.push_front(u);
        }
        if !direct.is_empty() {
            direct.reverse();
            let ep = self
                .map
                .masters
                .iter()
                .find(|m| m.addr() == addr)
                .cloned()
                .unwrap_or_else(|| self.seed.clone());
            self.send(&ep, direct, Vec::new())?;
        }
        Ok(())
    }

    /// A unit is applied: `keys` and `records` of it (a pack's, less those refused).
    pub(super) fn acked(&mut self, unit: &Unit, keys: u64, records: u64) {
        for o in &unit.offsets {
            if let Some(n) = self.unacked.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.unacked.remove(o);
                }
            }
        }
        if unit.keys > 0 {
            self.summary.keys += keys;
            self.stats.keys_applied.fetch_add(keys, Relaxed);
        } else {
            self.summary.commands += records;
        }
        self.stats.records_applied.fetch_add(records, Relaxed);
        if let Some(c) = &unit.global {
            self.global_pending = false;
            if let Checkpoint::Stream { offset, .. } = **c {
                self.global_written = Some(offset);
            }
        }
    }

    pub(super) async fn refresh(&mut self) -> Result<(), TargetError> {
        let mut candidates = self.map.masters.clone();
        candidates.push(self.seed.clone());
        let map = slot::fetch_any(&candidates).await?;
        if map.unassigned() == 0 {
            info!(
                masters = map.masters.len(),
                "slot map refreshed after MOVED"
            );
            self.set_map(map);
        }
        Ok(())
    }

    /// A master's connection is gone (it failed, or failed over): wait for the cluster to
    /// serve its slots again, then resend what it left unanswered — unless a slot's
    /// checkpoint shows its batch was applied.
    pub(super) async fn recover(
        &mut self,
        addr: String,
        error: TargetError,
    ) -> Result<(), TargetError> {
        self.nodes.remove(&addr);
        let mut lost: Vec<(u64, Flight)> = Vec::new();
        let ids: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| f.addr == addr)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(f) = self.flights.remove(&id) {
                lost.push((id, f));
            }
        }
        lost.sort_by_key(|(id, _)| *id);
        if lost.is_empty() {
            return Ok(());
        }
        if let Some((_, f)) = lost.iter().find(|(_, f)| {
            f.units
                .iter()
                .any(|u| !u.idempotent && u.checkpoint.is_none())
        }) {
            let what = f
                .units
                .iter()
                .find(|u| !u.idempotent && u.checkpoint.is_none())
                .map(Unit::what)
                .unwrap_or_default();
            warn!(target = %addr, command = %what, "connection lost with writes that cannot be verified in flight");
            return Err(error);
        }
        // Under a lapsed lease nothing is resent (nor is the cluster asked to reconnect).
        still_valid(&self.opts.still_valid, &addr)?;
        warn!(target = %addr, error = %error, batches = lost.len(), "lost a target master; waiting for the cluster to replace it");
        self.wait_replaced(&addr, &error).await?;
        still_valid(&self.opts.still_valid, &addr)?;
        let mut conns = HashMap::new();
        self.node_inflight.remove(&addr);
        for (_, flight) in lost {
            self.outstanding = self.outstanding.saturating_sub(flight.weight);
            let mut resend = Vec::new();
            for unit in flight.units.iter() {
                match (unit.checkpoint, unit.slot) {
                    (Some(offset), Some(slot))
                        if self.slot_applied(slot, &mut conns).await? >= Some(offset) =>
                    {
                        self.acked(unit, unit.keys, unit.records)
                    }
                    _ => resend.push(unit.clone()),
                }
            }
            self.requeue(&flight.addr, resend)?;
            for &s in &flight.slots {
                self.slots[s as usize].inflight = None;
                self.wake(s);
            }
        }
        self.advance();
        Ok(())
    }

    /// Polls the slot map until `addr` answers again or serves no slot any more.
    pub(super) async fn wait_replaced(
        &mut self,
        addr: &str,
        error: &TargetError,
    ) -> Result<(), TargetError> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let mut candidates: Vec<Endpoint> = self
                .map
                .masters
                .iter()
                .filter(|m| m.addr() != addr)
                .cloned()
                .collect();
            candidates.push(self.seed.clone());
            if let Ok(map) = slot::fetch_any(&candidates).await {
                let serves = map.masters.iter().any(|m| m.addr() == addr);
                if map.unassigned() == 0 {
                    let back = serves
                        && match map.masters.iter().find(|m| m.addr() == addr) {
                            Some(ep) => Connection::connect(ep).await.is_ok(),
                            None => false,
                        };
                    if !serves || back {
                        info!(lost = %addr, masters = map.masters.len(), "slot map refreshed");
                        self.set_map(map);
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(TargetError::Topology {
                    addr: addr.to_string(),
                    message: format!(
                        "no master took over within {FAILOVER_PATIENCE:?} after: {error}"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The offset a slot's checkpoint records on its current master.
    pub(super) async fn slot_applied(
        &self,
        slot: u16,
        conns: &mut HashMap<String, Connection>,
    ) -> Result<Option<u64>, TargetError> {
        let (Some(key), Some(ep)) = (&self.opts.checkpoint_key, self.map.endpoint(slot)) else {
            return Ok(None);
        };
        let key = slot_checkpoint_key(key, slot);
        let conn = match conns.entry(ep.addr()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Connection::connect(ep).await?)
            }
        };
        match conn.request(&[b"GET".as_ref(), &key]).await? {
            Frame::Bulk(v) => Ok(match Checkpoint::parse(&v) {
                Some(Checkpoint::Stream { offset, .. }) => Some(offset),
                _ => None,
            }),
            _ => Ok(None),
        }
    }
}

pub(super) async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t.into()).await;
    }
}
