//! The writer for a Redis Cluster target: events of one source shard routed by hash slot to
//! the masters that serve them, over one pipelined connection per master, all in parallel.
//!
//! Order: each slot has at most one batch in flight, so a slot's writes (and so each key's)
//! are applied in source order however connections, redirections and retries interleave.
//! While a slot's batch is in flight, its next events gather into its next batch.
//!
//! Batching: the batches of every ready slot of one master travel in one flight (one write,
//! one reply pass), its units shared with the connection task rather than copied. What a
//! master has unanswered is bounded in memory (`node_cap`): past it, its other ready slots
//! wait for an answer, which makes the next flight bigger rather than adding one more; below
//! it, a few ready slots leave at once (a stream's latency). Ready slots are
//! listed as they become ready, so a dispatch never walks idle slots. The queue limit counts
//! each unit's own memory, not just its bytes.
//!
//! The snapshot's `RESTORE`s skip the slot queues: they are encoded straight into one buffer
//! per master (a [`Pack`]), sent as one unit and answered one by one; only those refused
//! (a slot being moved) are cut out and resent through their slots' queues. The snapshot's
//! keys are distinct, so their order does not matter. This took ferry's CPU for a 1M-key
//! cluster snapshot from ~2.5 s to ~0.75 s.
//!
//! Checkpoints: each batch of stream commands is one `MULTI … SET <slot checkpoint> EXEC` on
//! its slot's master, the slot checkpoint key being `ferry:checkpoint:{<tag>}:<job>:<shard>`
//! with `<tag>` hashing to that slot. The job's usual key holds the global position, written
//! on its own once every event up to it has been acknowledged by every master; a restart
//! resumes the stream there and skips, per slot, what that slot's checkpoint says it already
//! holds. So each slot's batches are applied exactly once.
//!
//! Redirections: `MOVED` refreshes the slot map and resends the slot's batch to the new
//! owner. `ASK` (a slot being migrated), `TRYAGAIN` and `CLUSTERDOWN` back off briefly and
//! resend the batch to the owner until the migration ends (ferry does not use `ASKING`: a
//! transaction would need it before every queued command). A lost connection (a master that
//! failed over) refreshes the map from any reachable node; each batch it left unanswered is
//! resent unless its slot checkpoint shows it applied.
//!
//! Files, one concept each: [`route`] (where a command goes), [`unit`] (what is sent),
//! [`node`] (one master's connection and its replies), `dispatch` (queues into flights),
//! `apply` (events into queues), `recovery` (answers, redirections, failovers) and
//! [`checkpoints`] (a cluster's slot checkpoints); this file holds the writer's state and
//! its loop.

mod apply;
mod checkpoints;
mod dispatch;
mod node;
mod recovery;
mod route;
mod unit;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::{Event, ShardStats};
use ferry_resp::{frame, Connection, Endpoint, Frame, Scan};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{self, is_checkpoint_key, Checkpoint, PREFIX};
use crate::compat::{Compat, Routed};
use crate::error::TargetError;
use crate::failed::{is_transient, Failures};
use crate::fence::{still_valid, StillValid};
use crate::link::Replies;
use crate::rewrite::Cmd;
use crate::slot::{self, key_slot, slot_tag, SlotMap, SLOTS};
use crate::writer::{
    check_reply, command_failed, lossy, write_restore, Expect, TxnCmd, WriteSummary, WriterOptions,
};

use checkpoints::*;
pub use checkpoints::{
    delete_cluster_checkpoint, is_cluster, load_cluster_checkpoint, slot_checkpoint_key,
};
use node::*;
use recovery::sleep_until;
use route::*;
use unit::*;

/// A redirected batch is retried this long before the writer gives up.
const REDIRECT_PATIENCE: Duration = Duration::from_secs(120);
/// Pause before resending a batch refused with `ASK`/`TRYAGAIN`/`CLUSTERDOWN`.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Most events taken from the queue between two dispatches.
const DRAIN_EVENTS: usize = 8192;
/// How long a lost master may take to be replaced (failover) before the writer gives up.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// Applies events to a cluster whose any node is `opts.endpoint` until `rx` closes or
/// `cancel` fires; everything already sent is answered before it returns.
pub async fn write_cluster(
    opts: WriterOptions,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<WriteSummary, TargetError> {
    let mut seed = opts.endpoint.clone();
    seed.db = None;
    still_valid(&opts.still_valid, &seed.addr())?;
    let (mut conn, version) = crate::link::open(&seed, None).await?;
    let addr = conn.addr().to_string();
    let map = SlotMap::fetch(&mut conn, &seed).await?;
    drop(conn);
    if map.unassigned() > 0 {
        return Err(TargetError::Topology {
            addr,
            message: format!(
                "{} of the cluster's 16384 slots are served by no master (CLUSTER SLOTS); \
                 fix the cluster first",
                map.unassigned()
            ),
        });
    }
    info!(target = %addr, masters = map.masters.len(), version = ?version.as_ref().map(|v| v.to_string()), "cluster target connected");
    let compat = Compat::for_writer(version, &opts, &stats, &addr);
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let limit = (opts.batch_bytes * opts.max_batches_in_flight.max(1)).max(1 << 20);
    let addrs: Vec<String> = map.masters.iter().map(Endpoint::addr).collect();
    let mut w = ClusterWriter {
        limit,
        // A quarter of everything a writer may hold: a few masters share it.
        node_cap: (limit / 4).max(opts.batch_bytes),
        global_slot: opts.checkpoint_key.as_deref().map(key_slot),
        opts,
        stats,
        seed,
        addr,
        map,
        nodes: HashMap::new(),
        reports_tx,
        reports,
        slots: (0..SLOTS).map(|_| SlotState::default()).collect(),
        ready: vec![VecDeque::new(); addrs.len()],
        packs: (0..addrs.len()).map(|_| Pack::default()).collect(),
        addrs,
        node_inflight: HashMap::new(),
        delayed: Vec::new(),
        busy: 0,
        flights: HashMap::new(),
        next_id: 0,
        outstanding: 0,
        unacked: BTreeMap::new(),
        routed: VecDeque::new(),
        replid: String::new(),
        snapshot_offset: 0,
        rdb_version: 0,
        src_txn: None,
        global_written: None,
        global_pending: false,
        applied: None,
        streaming: false,
        summary: WriteSummary::default(),
        compat,
        moved: 0,
        asked: 0,
        ckpt_exists: vec![false; SLOTS],
        global_exists: false,
    };
    w.global_exists = w.opts.checkpoint_exists;
    if let Some(slots) = &w.opts.slot_offsets {
        for &slot in slots.keys() {
            w.ckpt_exists[slot as usize] = true;
        }
    }
    let result = w.run(&mut rx, &cancel).await;
    if w.summary.cross_slot_transactions > 0 {
        info!(
            count = w.summary.cross_slot_transactions,
            "source transactions spanning slots were applied as one transaction per slot"
        );
    }
    if w.moved > 0 || w.asked > 0 {
        info!(
            moved = w.moved,
            ask_or_tryagain = w.asked,
            "requests resent after the target redirected them"
        );
    }
    if w.compat.rewritten > 0 || w.compat.skipped > 0 {
        info!(
            rewritten = w.compat.rewritten,
            skipped = w.compat.skipped,
            "keys written as plain commands / skipped"
        );
    }
    result.map(|()| w.summary)
}

struct ClusterWriter {
    opts: WriterOptions,
    stats: Arc<ShardStats>,
    seed: Endpoint,
    addr: String,
    map: SlotMap,
    nodes: HashMap<String, mpsc::UnboundedSender<NodeBatch>>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    slots: Vec<SlotState>,
    /// Slots with something to send, no flight and no pause: the next dispatch sends them.
    /// Per master (index in `map.masters`), the slots it serves that are ready.
    ready: Vec<VecDeque<u16>>,
    /// Per master, the snapshot's `RESTORE`s gathered for its next flight.
    packs: Vec<Pack>,
    /// `map.masters`' addresses.
    addrs: Vec<String>,
    /// Flights unanswered per master.
    node_inflight: HashMap<String, usize>,
    /// Unanswered weight per master past which its ready slots wait (and so gather into
    /// bigger flights: fewer wake-ups and allocations per key).
    node_cap: usize,
    /// Slots paused after a refusal (`not_before`), listed again once the pause is over.
    delayed: Vec<u16>,
    /// Slots with something to send.
    busy: usize,
    flights: HashMap<u64, Flight>,
    next_id: u64,
    /// Bytes queued or in flight: reading events pauses above `limit` (half of it during
    /// the snapshot, see [`ClusterWriter::queue_limit`]).
    outstanding: usize,
    limit: usize,
    /// Stream offsets with units not yet acknowledged (how many).
    unacked: BTreeMap<u64, usize>,
    /// Stream events routed (offset, source db), oldest first, until all before them are
    /// acknowledged.
    routed: VecDeque<(u64, u32)>,
    replid: String,
    snapshot_offset: u64,
    rdb_version: u16,
    /// A source transaction being collected: its commands and database.
    src_txn: Option<(Vec<Vec<Bytes>>, u32)>,
    global_slot: Option<u16>,
    global_written: Option<u64>,
    global_pending: bool,
    /// Everything up to this (offset, db) is acknowledged by every master.
    applied: Option<(u64, u32)>,
    streaming: bool,
    summary: WriteSummary,
    compat: Compat,
    /// Units resent after `MOVED` / after `ASK`, `TRYAGAIN`, `CLUSTERDOWN`.
    moved: u64,
    asked: u64,
    /// Per slot, whether its checkpoint key is known to exist on the target (loaded at
    /// resume, or written since): its next `GETSET` must find it.
    ckpt_exists: Vec<bool>,
    /// The same for the job's global checkpoint.
    global_exists: bool,
}

impl ClusterWriter {
    /// How much may be queued or in flight before reading pauses. The snapshot's keys
    /// spread over every slot and come faster than the masters take them: a deeper queue
    /// buys no speed there, only memory (measured: 85 → 65 MB peak RSS at 1M keys 3 → 3, the
    /// same time). The stream often hammers a few slots, whose batches go one after
    /// another: there the full depth keeps the lag down.
    fn queue_limit(&self) -> usize {
        if self.streaming {
            self.limit
        } else {
            self.limit / 2
        }
    }

    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Event>,
        cancel: &CancellationToken,
    ) -> Result<(), TargetError> {
        if let Some((key, value)) = self.opts.record_ownership.clone() {
            let mut buf = BytesMut::new();
            frame::write_command(&mut buf, &[b"SET".as_ref(), &key, value.as_bytes(), b"NX"]);
            let mut u = Unit::new(
                buf.freeze(),
                vec![Expect::Control {
                    what: "SET ownership record",
                }],
            );
            u.idempotent = true;
            self.queue(key_slot(&key), Item::Unit(u));
        }
        let mut reading = true;
        loop {
            self.dispatch()?;
            if !reading && self.idle() {
                return Ok(());
            }
            let wake = self.next_wake();
            tokio::select! {
                ev = rx.recv(), if reading && self.outstanding < self.queue_limit() => match ev {
                    Some(ev) => {
                        self.event(ev).await?;
                        // Take what is already queued before dispatching, so that one
                        // flight per master carries many slots' work.
                        let mut n = 1;
                        while n < DRAIN_EVENTS && self.outstanding < self.queue_limit() {
                            let Ok(ev) = rx.try_recv() else { break };
                            self.event(ev).await?;
                            n += 1;
                        }
                    }
                    None => reading = false,
                },
                r = self.reports.recv() => {
                    if let Some(r) = r {
                        self.report(r).await?;
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
                _ = cancel.cancelled(), if reading => reading = false,
            }
        }
    }

    fn idle(&self) -> bool {
        self.flights.is_empty() && self.busy == 0 && self.packs.iter().all(Pack::is_empty)
    }

    fn next_wake(&self) -> Option<Instant> {
        self.delayed
            .iter()
            .filter_map(|&s| self.slots[s as usize].not_before)
            .min()
    }

    /// Lists `slot` for the next dispatch if it has work and may send now.
    fn wake(&mut self, slot: u16) {
        let st = &mut self.slots[slot as usize];
        if !st.listed && st.inflight.is_none() && st.not_before.is_none() && st.has_work() {
            st.listed = true;
            // Every slot has a master (a map with a gap is never taken); were it not so,
            // the master asked answers `MOVED`.
            let i = self.map.owner[slot as usize].unwrap_or(0);
            self.ready[i].push_back(slot);
        }
    }

    /// Takes a new slot map; the ready slots are listed under their new masters, and the
    /// packs' `RESTORE`s go to their slots' queues (they are packed for the old owners).
    fn set_map(&mut self, map: SlotMap) {
        let slots: Vec<u16> = self.ready.iter_mut().flat_map(|q| q.drain(..)).collect();
        let packs = std::mem::take(&mut self.packs);
        self.addrs = map.masters.iter().map(Endpoint::addr).collect();
        self.ready = vec![VecDeque::new(); map.masters.len()];
        self.packs = (0..map.masters.len()).map(|_| Pack::default()).collect();
        self.map = map;
        for s in slots {
            let i = self.map.owner[s as usize].unwrap_or(0);
            self.ready[i].push_back(s);
        }
        for mut pack in packs.into_iter().filter(|p| !p.is_empty()) {
            self.outstanding = self.outstanding.saturating_sub(pack.weight());
            let unit = pack.take(0);
            let Expects::Pack(ends) = &unit.expects else {
                continue;
            };
            for i in 0..ends.len() {
                let (slot, u) = unpacked(&unit, ends, i);
                self.queue(slot, Item::Unit(u));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn splits_multi_key_commands_by_slot() {
        let Route::Slots(parts) =
            route_command(argv(&["DEL", "foo", "bar", "{foo}x"]), "t").unwrap()
        else {
            panic!("not routed to slots");
        };
        assert_eq!(
            parts,
            vec![
                (key_slot(b"foo"), argv(&["DEL", "foo", "{foo}x"])),
                (key_slot(b"bar"), argv(&["DEL", "bar"])),
            ]
        );
        let Route::Slots(parts) =
            route_command(argv(&["MSET", "foo", "1", "bar", "2", "{bar}y", "3"]), "t").unwrap()
        else {
            panic!("not routed to slots");
        };
        assert_eq!(
            parts,
            vec![
                (key_slot(b"foo"), argv(&["MSET", "foo", "1"])),
                (key_slot(b"bar"), argv(&["MSET", "bar", "2", "{bar}y", "3"])),
            ]
        );
        let e = route_command(argv(&["MSETNX", "foo", "1", "bar", "2"]), "t").unwrap_err();
        assert!(e.to_string().contains("MSETNX"), "{e}");
        assert!(route_command(argv(&["MSETNX", "{a}1", "1", "{a}2", "2"]), "t").is_ok());
        assert_eq!(
            route_command(argv(&["FLUSHALL"]), "t").unwrap(),
            Route::Broadcast(argv(&["FLUSHALL"]))
        );
        let e = route_command(argv(&["SWAPDB", "0", "1"]), "t").unwrap_err();
        assert!(e.to_string().contains("SWAPDB"), "{e}");
    }

    #[test]
    fn the_key_of_a_restore_is_read_back_from_the_command() {
        for key in [&b"k"[..], b"a key with\r\n inside", &[b'x'; 300]] {
            let e = ferry_rdb::Entry {
                db: 0,
                key: Bytes::copy_from_slice(key),
                value_type: 0,
                payload: Bytes::from_static(b"\x00\x01v"),
                expire_ms: Some(5),
                idle: None,
                freq: None,
            };
            let mut buf = BytesMut::new();
            write_restore(&mut buf, &e, true, 9);
            assert_eq!(restore_key(&buf.freeze()).as_deref(), Some(key));
        }
    }

    #[test]
    fn slot_checkpoint_keys_land_in_their_slot() {
        let global = checkpoint::key("job", "0");
        for s in [0u16, 1, 5000, 16383] {
            let k = slot_checkpoint_key(&global, s);
            assert_eq!(key_slot(&k), s);
            assert!(is_checkpoint_key(&k));
        }
        assert_eq!(
            slot_pattern("a*b", "0"),
            b"ferry:checkpoint:{*}:a\\*b:0".to_vec()
        );
    }
}
