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
use crate::replies::Replies;
use crate::rewrite::Cmd;
use crate::slot::{self, key_slot, slot_tag, SlotMap, SLOTS};
use crate::version::ServerVersion;
use crate::writer::{
    check_reply, command_failed, lossy, write_restore, Expect, TxnCmd, WriteSummary, WriterOptions,
};

/// A redirected batch is retried this long before the writer gives up.
const REDIRECT_PATIENCE: Duration = Duration::from_secs(120);
/// Pause before resending a batch refused with `ASK`/`TRYAGAIN`/`CLUSTERDOWN`.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Most events taken from the queue between two dispatches.
const DRAIN_EVENTS: usize = 8192;
/// How long a lost master may take to be replaced (failover) before the writer gives up.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// The key of one slot's checkpoint, derived from the job's (global) checkpoint key.
pub fn slot_checkpoint_key(global: &[u8], slot: u16) -> Bytes {
    let rest = global.strip_prefix(PREFIX).unwrap_or(global);
    let tag = slot_tag(slot);
    let mut k = Vec::with_capacity(PREFIX.len() + tag.len() + 3 + rest.len());
    k.extend_from_slice(PREFIX);
    k.push(b'{');
    k.extend_from_slice(tag.as_bytes());
    k.extend_from_slice(b"}:");
    k.extend_from_slice(rest);
    Bytes::from(k)
}

/// What to do with one replicated command on a cluster.
#[derive(Debug, PartialEq)]
enum Route {
    /// Per slot, the command (or the part of it) that slot's master applies.
    Slots(Vec<(u16, Vec<Bytes>)>),
    /// Sent to every master (`FLUSHALL`, `FUNCTION LOAD`, …): the command, given back.
    Broadcast(Vec<Bytes>),
}

fn refuse(addr: &str, argv: &[Bytes], why: &str) -> TargetError {
    TargetError::Incompatible {
        addr: addr.to_string(),
        message: format!(
            "cannot apply {} on a cluster target: {why}",
            lossy(&argv[0]).to_uppercase()
        ),
    }
}

/// Splits a command whose keys may span slots where its meaning allows.
fn route_command(argv: Vec<Bytes>, addr: &str) -> Result<Route, TargetError> {
    // Upper-cased on the stack: this runs for every replicated command. A name longer than
    // any matched below is left as it is (and matches nothing).
    let mut upper = [0u8; 16];
    let name: &[u8] = match argv[0].len() {
        n if n <= upper.len() => {
            upper[..n].copy_from_slice(&argv[0]);
            upper[..n].make_ascii_uppercase();
            &upper[..n]
        }
        _ => &argv[0],
    };
    let per_key = |argv: Vec<Bytes>, step: usize| -> Vec<(u16, Vec<Bytes>)> {
        let mut parts: Vec<(u16, Vec<Bytes>)> = Vec::new();
        for chunk in argv[1..].chunks(step) {
            let slot = key_slot(&chunk[0]);
            match parts.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, part)) => part.extend(chunk.iter().cloned()),
                None => {
                    let mut part = vec![argv[0].clone()];
                    part.extend(chunk.iter().cloned());
                    parts.push((slot, part));
                }
            }
        }
        parts
    };
    match name {
        b"FLUSHALL" | b"FLUSHDB" | b"FUNCTION" | b"SCRIPT" => Ok(Route::Broadcast(argv)),
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" if argv.len() > 1 => {
            Ok(Route::Slots(per_key(argv, 1)))
        }
        b"MSET" if argv.len() > 2 && argv.len() % 2 == 1 => Ok(Route::Slots(per_key(argv, 2))),
        b"MSETNX" if argv.len() > 2 => {
            let parts = per_key(argv.clone(), 2);
            if parts.len() > 1 {
                return Err(refuse(
                    addr,
                    &argv,
                    "its keys are in different slots, and split per slot it would no longer \
                     set all keys or none",
                ));
            }
            Ok(Route::Slots(parts))
        }
        b"SWAPDB" | b"MOVE" | b"SELECT" => {
            Err(refuse(addr, &argv, "a cluster has only database 0"))
        }
        b"BITOP" if argv.len() > 2 => Ok(Route::Slots(vec![(key_slot(&argv[2]), argv)])),
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let first_key = match argv.get(2).map(|n| n.as_ref()) {
                Some(b"0") | None => None,
                Some(_) => argv.get(3),
            };
            // A script without keys runs where slot 0 lives: it can only touch keys there.
            let slot = first_key.map_or(0, |k| key_slot(k));
            Ok(Route::Slots(vec![(slot, argv)]))
        }
        b"XREADGROUP" => match crate::writer::command_key(&argv).map(|k| key_slot(k)) {
            Some(slot) => Ok(Route::Slots(vec![(slot, argv)])),
            None => Err(refuse(addr, &argv, "it names no stream")),
        },
        b"XGROUP" | b"XINFO" | b"OBJECT" if argv.len() > 2 => {
            Ok(Route::Slots(vec![(key_slot(&argv[2]), argv)]))
        }
        _ if argv.len() > 1 => Ok(Route::Slots(vec![(key_slot(&argv[1]), argv)])),
        _ => Err(refuse(
            addr,
            &argv,
            "it names no key, so no master can be chosen for it",
        )),
    }
}

/// One request whose replies stand or fall together: a transaction, one `RESTORE`, one
/// command, one key rewritten into commands. Its description for an error is built from
/// its expectations only when an error needs it.
#[derive(Debug, Clone)]
struct Unit {
    bytes: Bytes,
    expects: Expects,
    /// Source offsets of the stream events it applies (each counted in `unacked`).
    offsets: Vec<u64>,
    /// A transaction: per event of `offsets`, how many commands it queued and its source
    /// db, to name a command that fails inside the `EXEC`.
    spans: Vec<(u32, u32)>,
    /// Its slot checkpoint records this offset (a checkpointed transaction).
    checkpoint: Option<u64>,
    records: u64,
    keys: u64,
    /// A global checkpoint write: its value.
    global: Option<Box<Checkpoint>>,
    /// Safe to send again after a connection loss without knowing whether it was applied.
    idempotent: bool,
    /// The slot whose order it keeps (`None`: a broadcast to one master).
    slot: Option<u16>,
    first_refusal: Option<Instant>,
}

/// What a unit's replies mean: one expectation (a `RESTORE`, the commonest unit, then needs
/// no allocation of its own) or several.
#[derive(Debug, Clone)]
enum Expects {
    One(Expect),
    Many(Vec<Expect>),
    /// A pack of snapshot `RESTORE`s (see [`Pack`]): each one's slot and where it ends in
    /// the unit's bytes. Each is answered on its own; the refused ones are resent alone.
    Pack(Vec<(u16, u32)>),
    /// One of ferry's transactions: `MULTI`, `queued` commands (the last of them the slot
    /// checkpoint's `SET` when checkpoints are on), `EXEC`. The commands' names, for an
    /// error, are read back from the unit's bytes.
    Txn {
        queued: u32,
        /// The last queued command is the slot checkpoint's `GETSET`, whose old value must
        /// exist (the slot had a checkpoint): a missing one means the target lost data.
        must_exist: bool,
    },
}

impl Expects {
    fn as_slice(&self) -> &[Expect] {
        match self {
            Expects::One(e) => std::slice::from_ref(e),
            Expects::Many(v) => v,
            Expects::Pack(_) | Expects::Txn { .. } => &[],
        }
    }
}

/// The snapshot's `RESTORE`s for one master, encoded back to back into one buffer as the
/// entries arrive: no unit, allocation or slot queue per key. The snapshot's keys are
/// distinct, so their order does not matter and a pack ignores the slots' one-batch-in-flight
/// rule (a key rewritten into several commands still goes through its slot's queue). A pack
/// is sent as one unit; a `RESTORE` the master refuses (`MOVED`, `ASK`: a slot being moved)
/// is cut out of it and resent alone through its slot's queue.
#[derive(Default)]
struct Pack {
    buf: BytesMut,
    /// Each command's slot and end offset in `buf`.
    ends: Vec<(u16, u32)>,
}

/// Memory a packed `RESTORE` takes besides its bytes (its entry in `Pack::ends`).
const PACKED_OVERHEAD: usize = size_of::<(u16, u32)>();

impl Pack {
    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// What it holds, as counted in `outstanding`.
    fn weight(&self) -> usize {
        self.buf.len() + self.ends.len() * PACKED_OVERHEAD
    }

    /// The pack as a unit to send; the pack is left empty.
    fn take(&mut self, capacity: usize) -> Unit {
        let n = self.ends.len() as u64;
        let bytes = std::mem::replace(&mut self.buf, BytesMut::with_capacity(capacity)).freeze();
        let mut u = Unit::new(bytes, Expects::Pack(std::mem::take(&mut self.ends)));
        u.keys = n;
        u.records = n;
        u
    }
}

/// The `i`th command of a pack unit: its slot and bytes.
fn packed(bytes: &Bytes, ends: &[(u16, u32)], i: usize) -> (u16, Bytes) {
    let start = if i == 0 { 0 } else { ends[i - 1].1 as usize };
    let (slot, end) = ends[i];
    (slot, bytes.slice(start..end as usize))
}

/// The `i`th command of a pack unit as a unit of its own, to go through its slot's queue.
fn unpacked(pack: &Unit, ends: &[(u16, u32)], i: usize) -> (u16, Unit) {
    let (slot, bytes) = packed(&pack.bytes, ends, i);
    // The key is read back from the command if an error needs it.
    let mut u = Unit::new(
        bytes,
        Expect::Restore {
            key: Bytes::new(),
            db: 0,
        },
    );
    u.keys = 1;
    u.records = 1;
    (slot, u)
}

impl From<Vec<Expect>> for Expects {
    fn from(v: Vec<Expect>) -> Expects {
        Expects::Many(v)
    }
}

impl From<Expect> for Expects {
    fn from(e: Expect) -> Expects {
        Expects::One(e)
    }
}

/// Memory a queued unit takes besides its bytes: the unit, its expectations and the
/// allocations' own overhead. Counted in `outstanding`, so the queue limit bounds memory.
const UNIT_OVERHEAD: usize = size_of::<Item>() + size_of::<Expect>() + 64;

impl Unit {
    fn new(bytes: Bytes, expects: impl Into<Expects>) -> Unit {
        Unit {
            bytes,
            expects: expects.into(),
            offsets: Vec::new(),
            spans: Vec::new(),
            checkpoint: None,
            records: 0,
            keys: 0,
            global: None,
            idempotent: false,
            slot: None,
            first_refusal: None,
        }
    }

    /// Bytes this unit holds while queued or in flight.
    fn weight(&self) -> usize {
        self.bytes.len()
            + UNIT_OVERHEAD
            + match &self.expects {
                Expects::One(_) => 0,
                Expects::Many(v) => v.len() * size_of::<Expect>(),
                Expects::Pack(v) => v.len() * PACKED_OVERHEAD,
                Expects::Txn { .. } => 0,
            }
    }

    /// What it is, for an error message.
    fn what(&self) -> String {
        let upper = |n: &Bytes| lossy(n).to_uppercase();
        if let Expects::Txn { queued, .. } = &self.expects {
            return format!(
                "a transaction of {queued} command(s) ({}…)",
                txn_command_name(&self.bytes, 0)
            );
        }
        if let Expects::Pack(ends) = &self.expects {
            return format!(
                "{} RESTORE(s) of the snapshot (RESTORE {:?}…)",
                ends.len(),
                lossy(&restore_key(&self.bytes).unwrap_or_default())
            );
        }
        if let Some(Expect::Exec { names, .. }) = self.expects.as_slice().last() {
            return format!(
                "a transaction of {} command(s) ({}…)",
                names.len(),
                names.first().map(|c| upper(&c.name)).unwrap_or_default()
            );
        }
        match self.expects.as_slice().first() {
            Some(Expect::Restore { key, .. }) if key.is_empty() => format!(
                "RESTORE {:?}",
                lossy(&restore_key(&self.bytes).unwrap_or_default())
            ),
            Some(Expect::Restore { key, .. }) => format!("RESTORE {:?}", lossy(key)),
            Some(Expect::Command { name, key, .. }) => match key {
                Some(k) => format!("{} {:?}", upper(name), lossy(k)),
                None => upper(name),
            },
            Some(Expect::Rewrite { key, .. }) => {
                format!("key {:?} rewritten into commands", lossy(key))
            }
            Some(Expect::Queued { name, .. }) => upper(name),
            Some(Expect::Control { what }) => what.to_string(),
            Some(Expect::FunctionLoad) => "FUNCTION LOAD".into(),
            Some(Expect::ScriptLoad) => "SCRIPT LOAD".into(),
            _ => "a request".into(),
        }
    }
}

/// A piece of work queued for a slot, turned into units when the slot's next batch is sent.
#[derive(Debug)]
enum Item {
    Unit(Unit),
    /// Commands of one source event (a command, or a slot's share of a source
    /// transaction), applied together.
    Cmds {
        cmds: Vec<Vec<Bytes>>,
        offset: u64,
        db: u32,
        records: u64,
        txn: bool,
    },
}

impl Item {
    /// Bytes it sends: what a batch's size is capped by.
    fn bytes(&self) -> usize {
        match self {
            Item::Unit(u) => u.bytes.len(),
            Item::Cmds { cmds, .. } => cmds
                .iter()
                .map(|c| c.iter().map(|a| a.len() + 16).sum::<usize>())
                .sum(),
        }
    }

    fn weight(&self) -> usize {
        match self {
            Item::Unit(u) => u.weight(),
            Item::Cmds { cmds, .. } => {
                UNIT_OVERHEAD
                    + cmds
                        .iter()
                        .map(|c| c.iter().map(|a| a.len() + 48).sum::<usize>())
                        .sum::<usize>()
            }
        }
    }
}

#[derive(Debug, Default)]
struct SlotState {
    pending: VecDeque<Item>,
    /// Units refused (redirected) or unanswered, sent again before anything else.
    retry: VecDeque<Unit>,
    inflight: Option<u64>,
    not_before: Option<Instant>,
    /// Listed in `ready`.
    listed: bool,
}

impl SlotState {
    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.retry.is_empty()
    }
}

/// A batch sent to a master: units of any number of its slots (each slot's in order), until
/// its replies are in.
struct Flight {
    addr: String,
    /// Shared with the master's connection task, which writes their bytes and checks
    /// their replies: nothing is copied per unit to send it.
    units: Arc<Vec<Unit>>,
    /// The slots it carries units of; none of them has another flight.
    slots: Vec<u16>,
    weight: usize,
}

/// A flight being filled for one master: its units, their slots, their bytes.
type OpenFlight = (Vec<Unit>, Vec<u16>, usize);

/// A transaction being built: its bytes, how many commands it queues, and the unit's
/// figures.
type OpenTxn = (BytesMut, u32, Unit);

struct NodeBatch {
    id: u64,
    units: Arc<Vec<Unit>>,
}

/// Whether the writer may still write: checked before every batch is sent, before every
/// reconnection and before resending what a lost connection left unanswered. Under a worker
/// lease it returns `false` once the lease has lapsed; the writer then stops with
/// [`TargetError::Fenced`] and sends nothing more.
#[derive(Clone)]
pub struct StillValid(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl StillValid {
    pub fn new(f: impl Fn() -> bool + Send + Sync + 'static) -> StillValid {
        StillValid(Arc::new(f))
    }

    fn check(&self, addr: &str) -> Result<(), TargetError> {
        if (self.0)() {
            Ok(())
        } else {
            Err(TargetError::Fenced {
                addr: addr.to_string(),
            })
        }
    }
}

impl std::fmt::Debug for StillValid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StillValid(..)")
    }
}

fn still_valid(hook: &Option<StillValid>, addr: &str) -> Result<(), TargetError> {
    hook.as_ref().map_or(Ok(()), |h| h.check(addr))
}

#[derive(Debug)]
enum Refusal {
    Moved(String),
    /// `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the same owner, a little later.
    Later(String),
}

/// How a master answered one unit.
enum Answer {
    Applied,
    Refused(Refusal),
    /// A pack whose listed commands (index, refusal) were refused; the others are applied.
    Partly(Vec<(u32, Refusal)>),
}

enum Report {
    Done { id: u64, results: Vec<Answer> },
    Lost { addr: String, error: TargetError },
    Failed { error: TargetError },
}

fn refusal(message: &[u8]) -> Option<Refusal> {
    let text = || lossy(message);
    if message.starts_with(b"MOVED ") {
        Some(Refusal::Moved(text()))
    } else if message.starts_with(b"ASK ")
        || message.starts_with(b"TRYAGAIN")
        || message.starts_with(b"CLUSTERDOWN")
        || message.starts_with(b"LOADING")
    {
        Some(Refusal::Later(text()))
    } else {
        None
    }
}

/// One master: a writer loop and a reply reader on one connection; every batch's outcome,
/// or the connection's loss, is reported.
fn spawn_node(
    ep: Endpoint,
    reports: mpsc::UnboundedSender<Report>,
    client_name: Option<String>,
    valid: Option<StillValid>,
    failures: Failures,
    reply_timeout: Duration,
) -> mpsc::UnboundedSender<NodeBatch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<NodeBatch>();
    tokio::spawn(async move {
        let addr = ep.addr();
        if let Err(error) = still_valid(&valid, &addr) {
            let _ = reports.send(Report::Failed { error });
            return;
        }
        let conn = match Connection::connect(&ep).await {
            Ok(mut c) => match &client_name {
                Some(name) => match c.request(&["CLIENT", "SETNAME", name.as_str()]).await {
                    Ok(_) => c,
                    Err(e) => {
                        let _ = reports.send(Report::Lost {
                            addr,
                            error: e.into(),
                        });
                        return;
                    }
                },
                None => c,
            },
            Err(e) => {
                let _ = reports.send(Report::Lost {
                    addr,
                    error: e.into(),
                });
                return;
            }
        };
        let (stream, rbuf, _) = conn.into_parts();
        let (rd, mut wr) = tokio::io::split(stream);
        let (exp_tx, exp_rx) = mpsc::unbounded_channel::<NodeBatch>();
        let dead = CancellationToken::new();
        let reader = tokio::spawn(read_node(
            Replies::new(rd, reply_timeout, &addr),
            rbuf,
            exp_rx,
            addr.clone(),
            reports.clone(),
            dead.clone(),
            failures.clone(),
        ));
        let mut out = BytesMut::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(b) = next.take() {
                for u in b.units.iter() {
                    out.extend_from_slice(&u.bytes);
                }
                if exp_tx.send(b).is_err() {
                    return;
                }
                if out.len() < 1 << 20 {
                    next = rx.try_recv().ok();
                }
            }
            if let Err(error) = still_valid(&valid, &addr) {
                // Nothing more leaves: the batches taken stay unanswered.
                let _ = reports.send(Report::Failed { error });
                dead.cancel();
                return;
            }
            if let Err(e) = wr.write_all(&out).await {
                debug!(target = %addr, error = %e, "write failed");
                dead.cancel();
                break;
            }
            out.clear();
        }
        drop(exp_tx);
        let _ = reader.await;
    });
    tx
}

async fn read_node(
    mut rd: Replies,
    mut buf: BytesMut,
    mut exp_rx: mpsc::UnboundedReceiver<NodeBatch>,
    addr: String,
    reports: mpsc::UnboundedSender<Report>,
    dead: CancellationToken,
    failures: Failures,
) {
    loop {
        let next = tokio::select! {
            n = exp_rx.recv() => n,
            _ = dead.cancelled() => None,
        };
        let Some(NodeBatch { id, units }) = next else {
            if dead.is_cancelled() {
                let _ = reports.send(Report::Lost {
                    addr: addr.clone(),
                    error: closed(&addr, "writing"),
                });
            }
            return;
        };
        let mut results = Vec::with_capacity(units.len());
        for unit in units.iter() {
            let answer = match &unit.expects {
                Expects::Pack(ends) => {
                    read_pack(&mut rd, &mut buf, &dead, &addr, unit, ends, &failures).await
                }
                Expects::Txn { .. } => {
                    read_txn(&mut rd, &mut buf, &dead, &addr, unit, &failures).await
                }
                _ => read_unit(&mut rd, &mut buf, &dead, &addr, unit, &failures).await,
            };
            match answer {
                Ok(a) => results.push(a),
                Err(stop) => {
                    let _ = reports.send(match stop {
                        Stop::Lost(error) => Report::Lost {
                            addr: addr.clone(),
                            error,
                        },
                        Stop::Failed(error) => Report::Failed { error },
                    });
                    return;
                }
            }
        }
        if reports.send(Report::Done { id, results }).is_err() {
            return;
        }
    }
}

/// Why a connection's reader stops: the connection is gone (its unanswered batches may be
/// resent), or a reply is an error the writer cannot get past.
enum Stop {
    Lost(TargetError),
    Failed(TargetError),
}

impl Stop {
    /// A malformed reply from the master at `addr`.
    fn protocol(addr: &str, source: frame::DecodeError) -> Stop {
        Stop::Failed(
            ferry_resp::Error::Protocol {
                addr: addr.to_string(),
                source,
            }
            .into(),
        )
    }
}

/// The next reply; `None` for a `+OK` taken without building a frame (when `ok` allows it:
/// the commonest reply, to a `RESTORE`).
async fn next_reply(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
    ok: bool,
) -> Result<Option<Frame>, Stop> {
    if ok {
        while buf.len() < 5 && buf.first().is_none_or(|&b| b == b'+') {
            if buf.len() >= 3 && &buf[..3] != b"+OK" {
                break;
            }
            read_more(rd, buf, dead, addr).await.map_err(Stop::Lost)?;
        }
        if buf.starts_with(b"+OK\r\n") {
            buf.advance(5);
            return Ok(None);
        }
    }
    loop {
        match rd.parse(buf) {
            Ok(Some((f, _))) => return Ok(Some(f)),
            Ok(None) => {}
            Err(source) => return Err(Stop::protocol(addr, source)),
        }
        read_more(rd, buf, dead, addr).await.map_err(Stop::Lost)?;
    }
}

/// The replies to one unit: all of them are read; the first refusal refuses the unit
/// (replies after it, `EXECABORT`, only echo it), another error fails the writer.
async fn read_unit(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
    unit: &Unit,
    failures: &Failures,
) -> Result<Answer, Stop> {
    let mut refused = None;
    for expect in unit.expects.as_slice() {
        let ok = matches!(expect, Expect::Restore { .. } | Expect::Control { .. });
        let Some(reply) = next_reply(rd, buf, dead, addr, ok).await? else {
            continue;
        };
        if let Frame::Error(m) = &reply {
            if let Some(r) = refusal(m) {
                refused.get_or_insert(r);
                continue;
            }
        }
        if refused.is_none() {
            let checked = match expect {
                // The key is taken from the command only when the reply is an error.
                Expect::Restore { key, .. } if key.is_empty() && reply.is_error() => {
                    let key = restore_key(&unit.bytes).unwrap_or_default();
                    check_reply(&Expect::Restore { key, db: 0 }, &reply, addr)
                }
                _ => check_reply(expect, &reply, addr),
            };
            match checked {
                // A stream command sent on its own (no checkpoints) failed: nothing else
                // depends on it.
                Err(e @ TargetError::CommandFailed { .. }) => {
                    failures.handle(e).map_err(Stop::Failed)?
                }
                // A cluster target has db 0 only.
                Err(e @ (TargetError::Unsupported { .. } | TargetError::KeyExists { .. })) => {
                    failures.snapshot_key(e, 0).map_err(Stop::Failed)?
                }
                r => r.map_err(Stop::Failed)?,
            }
        }
    }
    Ok(refused.map_or(Answer::Applied, Answer::Refused))
}

/// The replies to a pack of `RESTORE`s, one each: refusals are listed, another error fails
/// the writer (naming the key).
async fn read_pack(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
    unit: &Unit,
    ends: &[(u16, u32)],
    failures: &Failures,
) -> Result<Answer, Stop> {
    let mut refused = Vec::new();
    for i in 0..ends.len() {
        let Some(reply) = next_reply(rd, buf, dead, addr, true).await? else {
            continue;
        };
        if let Frame::Error(m) = &reply {
            if let Some(r) = refusal(m) {
                refused.push((i as u32, r));
                continue;
            }
        }
        if reply.is_error() {
            let key = restore_key(&packed(&unit.bytes, ends, i).1).unwrap_or_default();
            if let Err(e) = check_reply(&Expect::Restore { key, db: 0 }, &reply, addr) {
                failures.snapshot_key(e, 0).map_err(Stop::Failed)?;
            }
        }
    }
    Ok(if refused.is_empty() {
        Answer::Applied
    } else {
        Answer::Partly(refused)
    })
}

/// The replies to one of ferry's transactions, read without building frames for the
/// commonest (`+OK`, `+QUEUED`, and `EXEC`'s array scanned in place): a refusal refuses the
/// transaction (`EXEC` then answers `EXECABORT`), another error fails the writer, naming the
/// command.
async fn read_txn(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
    unit: &Unit,
    failures: &Failures,
) -> Result<Answer, Stop> {
    let (queued, must_exist) = match unit.expects {
        Expects::Txn { queued, must_exist } => (queued, must_exist),
        _ => (0, false),
    };
    let rejected = |command: String, message: &[u8]| {
        Stop::Failed(TargetError::Rejected {
            addr: addr.to_string(),
            command,
            message: lossy(message),
        })
    };
    let mut refused = None;
    if let Some(Frame::Error(m)) = next_reply(rd, buf, dead, addr, true).await? {
        match refusal(&m) {
            Some(r) => refused = Some(r),
            None => return Err(rejected("MULTI".into(), &m)),
        }
    }
    for i in 0..queued as usize {
        while buf.len() < QUEUED.len() && QUEUED.starts_with(buf) {
            read_more(rd, buf, dead, addr).await.map_err(Stop::Lost)?;
        }
        if buf.starts_with(QUEUED) {
            buf.advance(QUEUED.len());
            continue;
        }
        let Some(Frame::Error(m)) = next_reply(rd, buf, dead, addr, false).await? else {
            continue;
        };
        match refusal(&m) {
            Some(r) => {
                refused.get_or_insert(r);
            }
            // Replies after a refusal only echo it.
            None if refused.is_some() => {}
            // Refused at queue time, the EXEC is aborted whole (nothing applied): a retry
            // would meet the same refusal, and skipping would drop the batch, so it stops.
            None => {
                let failed = (!is_transient(&m))
                    .then(|| txn_failure(unit, i, &m, addr))
                    .flatten();
                return Err(match failed {
                    Some(e) => Stop::Failed(e),
                    None => {
                        let name = txn_command_name(&unit.bytes, i);
                        rejected(format!("{name} (inside MULTI)"), &m)
                    }
                });
            }
        }
    }
    // `EXEC`'s reply, whole in the buffer, then scanned for an error.
    let len = loop {
        match rd.whole_len(buf) {
            Ok(Some(len)) => break len,
            Ok(None) => read_more(rd, buf, dead, addr).await.map_err(Stop::Lost)?,
            Err(source) => return Err(Stop::protocol(addr, source)),
        }
    };
    let reply = buf.split_to(len);
    if let Some(r) = refused {
        return Ok(Answer::Refused(r));
    }
    match reply.first() {
        Some(b'*') if !reply.starts_with(b"*-1") => {
            let mut p = reply
                .iter()
                .position(|&b| b == b'\n')
                .map_or(len, |n| n + 1);
            let mut i = 0;
            let mut last = p;
            while p < len {
                last = p;
                if reply[p] == b'-' {
                    let end = reply[p..]
                        .iter()
                        .position(|&b| b == b'\r')
                        .map_or(len, |e| p + e);
                    let m = &reply[p + 1..end];
                    match txn_failure(unit, i, m, addr) {
                        // The rest of the transaction, and its checkpoint, are applied.
                        Some(e) => failures.handle(e).map_err(Stop::Failed)?,
                        None => {
                            let name = txn_command_name(&unit.bytes, i);
                            return Err(rejected(format!("{name} (in a checkpointed batch)"), m));
                        }
                    }
                }
                match frame::frame_len(&reply[p..]) {
                    Ok(Some(n)) => p += n,
                    _ => break,
                }
                i += 1;
            }
            if must_exist && reply[last..].starts_with(b"$-1\r\n") {
                return Err(Stop::Failed(TargetError::LostData {
                    addr: addr.to_string(),
                    key: format!(
                        "the checkpoint of slot {}",
                        unit.slot.map_or("?".into(), |s| s.to_string())
                    ),
                }));
            }
            Ok(Answer::Applied)
        }
        Some(b'-') => {
            let m = &reply[1..len.saturating_sub(2).max(1)];
            match refusal(m) {
                Some(r) => Ok(Answer::Refused(r)),
                None => Err(rejected("EXEC".into(), m)),
            }
        }
        _ => Err(rejected("EXEC".into(), b"transaction aborted".as_slice())),
    }
}

const QUEUED: &[u8] = b"+QUEUED\r\n";

/// The error naming the `i`th command queued in a transaction unit, read back from the
/// bytes it sent (only when an error needs it) with its offset and db from the unit's
/// events; `None` for ferry's own checkpoint `SET`, which is no source command.
fn txn_failure(unit: &Unit, i: usize, message: &[u8], addr: &str) -> Option<TargetError> {
    let mut first = 0usize;
    let (offset, db) = unit
        .offsets
        .iter()
        .zip(&unit.spans)
        .find_map(|(&o, &(n, db))| {
            first += n as usize;
            (i < first).then_some((o, db))
        })?;
    let argv = txn_command_argv(&unit.bytes, i)?;
    Some(command_failed(
        addr,
        argv.first()?,
        crate::writer::command_key(&argv),
        db,
        offset,
        message,
    ))
}

/// The `i`th command queued in one of ferry's transactions (`MULTI` first), parsed back.
fn txn_command_argv(bytes: &Bytes, i: usize) -> Option<Vec<Bytes>> {
    let mut buf = BytesMut::from(bytes.as_ref());
    let mut n = 0;
    while let Ok(Some((f, _))) = frame::parse(&mut buf) {
        if n == i + 1 {
            return f.into_argv();
        }
        n += 1;
    }
    None
}

/// The name (upper-cased) of the `i`th command queued in one of ferry's transactions, read
/// back from the bytes it sent (`MULTI` first): for an error message.
fn txn_command_name(bytes: &Bytes, i: usize) -> String {
    let mut buf = BytesMut::from(bytes.as_ref());
    let mut n = 0;
    while let Ok(Some((f, _))) = frame::parse(&mut buf) {
        if n == i + 1 {
            return match f.into_argv() {
                Some(argv) if !argv.is_empty() => lossy(&argv[0]).to_uppercase(),
                _ => "a command".into(),
            };
        }
        n += 1;
    }
    "a command".into()
}

/// Reads more replies into `buf`; the connection's end (or the writer half's failure) is
/// an error.
async fn read_more(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
) -> Result<(), TargetError> {
    tokio::select! {
        r = rd.read_more(buf) => r,
        _ = dead.cancelled() => Err(closed(addr, "while writes were in flight")),
    }
}

fn closed(addr: &str, context: &str) -> TargetError {
    ferry_resp::Error::Closed {
        addr: addr.to_string(),
        context: Some(context.into()),
    }
    .into()
}

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
    let mut conn = Connection::connect(&seed).await?;
    let addr = conn.addr().to_string();
    let info = conn.info("server").await?;
    let version = ServerVersion::from_info(&info);
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
    let mut compat = Compat::new(
        version,
        opts.overwrite,
        opts.skip_unsupported,
        opts.big_value_bytes,
        &addr,
    );
    compat.failures = opts
        .skip_failed_commands
        .then(|| Failures::new(&opts, &stats));
    compat.unsupported = Some(Failures {
        skip: false,
        ..Failures::new(&opts, &stats)
    });
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

    fn room(&self, i: usize) -> bool {
        self.node_inflight.get(&self.addrs[i]).copied().unwrap_or(0) < self.node_cap
    }

    /// Sends the next batch of ready slots: per master, as long as what it has unanswered
    /// stays under `node_cap`, one flight (several when they grow past `batch_bytes`), each
    /// slot's units in order, at most one flight per slot. A master's other ready slots stay
    /// listed, untouched, until one of its flights is answered.
    fn dispatch(&mut self) -> Result<(), TargetError> {
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
    fn take_units(&mut self, slot: u16, out: &mut Vec<Unit>) -> usize {
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
    fn send(
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
    fn units_of(&mut self, slot: u16, items: Vec<Item>, units: &mut Vec<Unit>) {
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

    fn close_txn(
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

    fn queue(&mut self, slot: u16, item: Item) {
        self.outstanding += item.weight();
        let st = &mut self.slots[slot as usize];
        if !st.has_work() {
            self.busy += 1;
        }
        st.pending.push_back(item);
        self.wake(slot);
    }

    fn check_db(&self, db: u32) -> Result<(), TargetError> {
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

    async fn event(&mut self, ev: Event) -> Result<(), TargetError> {
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

    async fn snapshot_event(&mut self, ev: Event) -> Result<(), TargetError> {
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

    fn rewrite(&mut self, key: Bytes, cmds: Vec<Cmd>, completes_key: bool) {
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

    async fn command(&mut self, db: u32, argv: Vec<Bytes>, offset: u64) -> Result<(), TargetError> {
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
    async fn transaction(
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

    fn queue_cmds(
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
    fn mark(&mut self, offset: u64, db: u32) {
        self.routed.push_back((offset, db));
        self.advance();
    }

    fn advance(&mut self) {
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
    fn write_global(&mut self, c: Checkpoint) {
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
    async fn broadcast(
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
    async fn drain(&mut self) -> Result<(), TargetError> {
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

    async fn report(&mut self, r: Report) -> Result<(), TargetError> {
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
    fn flight_done(&mut self, addr: &str, weight: usize) {
        if let Some(n) = self.node_inflight.get_mut(addr) {
            *n = n.saturating_sub(weight);
        }
    }

    /// Units to send again: a slot's go first in its queue (in their order), a broadcast's
    /// straight back to its master.
    fn requeue(&mut self, addr: &str, units: Vec<Unit>) -> Result<(), TargetError> {
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
    fn acked(&mut self, unit: &Unit, keys: u64, records: u64) {
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

    async fn refresh(&mut self) -> Result<(), TargetError> {
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
    async fn recover(&mut self, addr: String, error: TargetError) -> Result<(), TargetError> {
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
    async fn wait_replaced(&mut self, addr: &str, error: &TargetError) -> Result<(), TargetError> {
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
    async fn slot_applied(
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

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t.into()).await;
    }
}

/// The key of an encoded `RESTORE` (`*n`, `$7 RESTORE`, then the key's bulk string), read
/// back from the command for an error message.
fn restore_key(cmd: &Bytes) -> Option<Bytes> {
    let head = b"\r\n$7\r\nRESTORE\r\n$".len();
    let start = cmd.iter().position(|&b| b == b'\r')? + head;
    let cr = start + cmd.get(start..)?.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&cmd[start..cr]).ok()?.parse().ok()?;
    let key = cr + 2;
    (cmd.len() >= key + len).then(|| cmd.slice(key..key + len))
}

/// The masters of the cluster `seed` belongs to.
async fn masters_of(seed: &Endpoint) -> Result<SlotMap, TargetError> {
    let mut seed = seed.clone();
    seed.db = None;
    slot::fetch_any(&[seed]).await
}

/// `SCAN` pattern matching every slot checkpoint of a job's shard.
fn slot_pattern(job: &str, shard: &str) -> Vec<u8> {
    let mut p = PREFIX.to_vec();
    p.extend_from_slice(b"{*}:");
    for b in job
        .bytes()
        .chain(std::iter::once(b':'))
        .chain(shard.bytes())
    {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p
}

async fn scan_slot_keys(
    ep: &Endpoint,
    pattern: &[u8],
) -> Result<Vec<(Bytes, Option<Bytes>)>, TargetError> {
    let mut conn = Connection::connect(ep).await?;
    let mut out = Vec::new();
    let mut scan = Scan::new(1000).matching(Bytes::copy_from_slice(pattern));
    while let Some(keys) = scan.next(&mut conn).await? {
        for k in keys {
            let v = conn.request(&[b"GET".as_ref(), &k]).await?;
            out.push((k, v.as_bytes().cloned()));
        }
    }
    Ok(out)
}

/// Reads a job shard's checkpoint from a cluster target: the global one and, per slot, the
/// offset that slot's own checkpoint records (`None` when there is no global checkpoint).
pub async fn load_cluster_checkpoint(
    seed: &Endpoint,
    job: &str,
    shard: &str,
) -> Result<Option<(Checkpoint, HashMap<u16, u64>)>, TargetError> {
    let map = masters_of(seed).await?;
    let global = checkpoint::key(job, shard);
    let Some(owner) = map.endpoint(key_slot(&global)) else {
        return Err(TargetError::Topology {
            addr: seed.addr(),
            message: "the checkpoint's slot is served by no master".into(),
        });
    };
    let Some(c) = checkpoint::load(owner, &global).await? else {
        return Ok(None);
    };
    let mut slots = HashMap::new();
    let pattern = slot_pattern(job, shard);
    for ep in &map.masters {
        for (k, v) in scan_slot_keys(ep, &pattern).await? {
            if let Some(Checkpoint::Stream { offset, .. }) =
                v.as_deref().and_then(Checkpoint::parse)
            {
                slots.insert(key_slot(&k), offset);
            }
        }
    }
    Ok(Some((c, slots)))
}

/// Removes a job shard's checkpoints (global and per slot) from a cluster target.
pub async fn delete_cluster_checkpoint(
    seed: &Endpoint,
    job: &str,
    shard: &str,
) -> Result<(), TargetError> {
    let map = masters_of(seed).await?;
    let global = checkpoint::key(job, shard);
    if let Some(owner) = map.endpoint(key_slot(&global)) {
        checkpoint::delete(owner, &global).await?;
    }
    let pattern = slot_pattern(job, shard);
    for ep in &map.masters {
        let keys = scan_slot_keys(ep, &pattern).await?;
        if keys.is_empty() {
            continue;
        }
        let mut conn = Connection::connect(ep).await?;
        for (k, _) in keys {
            conn.request(&[b"DEL".as_ref(), &k]).await?;
        }
    }
    Ok(())
}

/// Whether the node at `ep` runs in cluster mode (`INFO server` → `redis_mode:cluster`).
pub async fn is_cluster(ep: &Endpoint) -> Result<bool, TargetError> {
    let mut conn = Connection::connect(ep).await?;
    let info = conn.info("server").await?;
    Ok(info.get("redis_mode") == Some("cluster"))
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
