//! What the cluster writer sends: units (one slot's commands or transaction, with what each
//! reply must say), packs of snapshot `RESTORE`s, and the items a slot's queue holds.

use super::*;

/// One request whose replies stand or fall together: a transaction, one `RESTORE`, one
/// command, one key rewritten into commands. Its description for an error is built from
/// its expectations only when an error needs it.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub(super) bytes: Bytes,
    pub(super) expects: Expects,
    /// Source offsets of the stream events it applies (each counted in `unacked`).
    pub(super) offsets: Vec<u64>,
    /// A transaction: per event of `offsets`, how many commands it queued and its source
    /// db, to name a command that fails inside the `EXEC`.
    pub(super) spans: Vec<(u32, u32)>,
    /// Its slot checkpoint records this offset (a checkpointed transaction).
    pub(super) checkpoint: Option<u64>,
    pub(super) records: u64,
    pub(super) keys: u64,
    /// A global checkpoint write: its value.
    pub(super) global: Option<Box<Checkpoint>>,
    /// Safe to send again after a connection loss without knowing whether it was applied.
    pub(super) idempotent: bool,
    /// The slot whose order it keeps (`None`: a broadcast to one master).
    pub(super) slot: Option<u16>,
    pub(super) first_refusal: Option<Instant>,
}

/// What a unit's replies mean: one expectation (a `RESTORE`, the commonest unit, then needs
/// no allocation of its own) or several.
#[derive(Debug, Clone)]
pub(super) enum Expects {
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
    pub(super) fn as_slice(&self) -> &[Expect] {
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
pub(super) struct Pack {
    pub(super) buf: BytesMut,
    /// Each command's slot and end offset in `buf`.
    pub(super) ends: Vec<(u16, u32)>,
}

/// Memory a packed `RESTORE` takes besides its bytes (its entry in `Pack::ends`).
pub(super) const PACKED_OVERHEAD: usize = size_of::<(u16, u32)>();

impl Pack {
    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// What it holds, as counted in `outstanding`.
    pub(super) fn weight(&self) -> usize {
        self.buf.len() + self.ends.len() * PACKED_OVERHEAD
    }

    /// The pack as a unit to send; the pack is left empty.
    pub(super) fn take(&mut self, capacity: usize) -> Unit {
        let n = self.ends.len() as u64;
        let bytes = std::mem::replace(&mut self.buf, BytesMut::with_capacity(capacity)).freeze();
        let mut u = Unit::new(bytes, Expects::Pack(std::mem::take(&mut self.ends)));
        u.keys = n;
        u.records = n;
        u
    }
}

/// The `i`th command of a pack unit: its slot and bytes.
pub(super) fn packed(bytes: &Bytes, ends: &[(u16, u32)], i: usize) -> (u16, Bytes) {
    let start = if i == 0 { 0 } else { ends[i - 1].1 as usize };
    let (slot, end) = ends[i];
    (slot, bytes.slice(start..end as usize))
}

/// The `i`th command of a pack unit as a unit of its own, to go through its slot's queue.
pub(super) fn unpacked(pack: &Unit, ends: &[(u16, u32)], i: usize) -> (u16, Unit) {
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
pub(super) const UNIT_OVERHEAD: usize = size_of::<Item>() + size_of::<Expect>() + 64;

impl Unit {
    pub(super) fn new(bytes: Bytes, expects: impl Into<Expects>) -> Unit {
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
    pub(super) fn weight(&self) -> usize {
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
    pub(super) fn what(&self) -> String {
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
pub(super) enum Item {
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
    pub(super) fn bytes(&self) -> usize {
        match self {
            Item::Unit(u) => u.bytes.len(),
            Item::Cmds { cmds, .. } => cmds
                .iter()
                .map(|c| c.iter().map(|a| a.len() + 16).sum::<usize>())
                .sum(),
        }
    }

    pub(super) fn weight(&self) -> usize {
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
