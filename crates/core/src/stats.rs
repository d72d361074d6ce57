//! Live figures of one shard's sync, shared by its reader, its writer and whoever shows
//! progress. Plain atomics: written on the hot path, read by the display.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Connecting = 0,
    WaitingForSnapshot = 1,
    Snapshot = 2,
    Incremental = 3,
    Done = 4,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::WaitingForSnapshot => "waiting-for-snapshot",
            Phase::Snapshot => "full-sync",
            Phase::Incremental => "incremental",
            Phase::Done => "done",
        }
    }
}

/// How far the writer has applied the source's stream (a replication offset): the one path
/// from the writer back to the reader, which acknowledges it to the source
/// (`REPLCONF ACK`), so the source's view of its replica is what the target holds. The lag
/// is measured against it too.
#[derive(Debug, Default)]
pub struct AppliedOffset(AtomicU64);

impl AppliedOffset {
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Set by the writer as replies confirm what it sent; by the reader where a new stream
    /// starts (the snapshot's offset, or the one resumed from).
    pub fn set(&self, offset: u64) {
        self.0.store(offset, Relaxed)
    }
}

#[derive(Debug)]
pub struct ShardStats {
    phase: AtomicU8,
    /// A snapshot the writer has begun and not yet seen applied: the reader may already be
    /// in the stream, but the shard is still in its full sync (see [`ShardStats::phase`]).
    snapshot_unapplied: AtomicBool,
    /// The shard's target has been in step at least once in this run (a snapshot applied, or
    /// a stream resumed from its checkpoint): a stop now leaves a target a rerun resumes.
    streamed: AtomicBool,
    /// RDB size when known, and bytes of it read so far.
    pub rdb_size: AtomicU64,
    pub rdb_read: AtomicU64,
    /// Keys the source said it holds (INFO keyspace) before the snapshot: the progress
    /// denominator for a diskless snapshot whose size is unknown.
    pub expected_keys: AtomicU64,
    /// Snapshot keys read / applied.
    pub keys_read: AtomicU64,
    pub keys_applied: AtomicU64,
    /// Records (keys + commands) read from the source / applied on the target.
    pub records_read: AtomicU64,
    pub records_applied: AtomicU64,
    /// Bytes received from the source (RDB and stream).
    pub bytes_read: AtomicU64,
    /// Replication offset read up to, and applied on the target up to.
    pub read_offset: AtomicU64,
    pub applied_offset: AppliedOffset,
    /// The offset the last `PSYNC` reply started the stream at (a snapshot's, or the one
    /// resumed from): an attempt made progress only if the target got past it.
    pub stream_start: AtomicU64,
    /// Full resyncs the source started for this shard (each one a fork on the source).
    pub full_resyncs: AtomicU64,
    /// (offset read up to, when) samples, at most one per 10 ms: the lag in seconds is the
    /// age of the oldest sample the target has not yet applied.
    read_marks: Mutex<VecDeque<(u64, Instant)>>,
    /// For a job's total over several shards: the largest shard lag, in µs.
    lag_override_us: AtomicU64,
    /// The reader is connected and in its snapshot or stream: only then is the lag known
    /// (a source that is gone sends nothing, which would look like no lag).
    link_up: AtomicBool,
    /// The reader read all it had to (a full-mode snapshot, a file) and returned: its link
    /// is down by design, and the lag is still known.
    read_all: AtomicBool,
    /// Last bytes read from the source (its pings and newlines too), or the moment the
    /// link came up: ms since the Unix epoch, 0 before any contact.
    last_contact_ms: AtomicU64,
    /// The last progress shown, kept while the shard reconnects so that it does not drop
    /// to 0 % (f64 bits).
    last_progress: AtomicU64,
    pub replid: Mutex<String>,
    /// What the job's filters dropped: snapshot keys and keys cut out of multi-key
    /// commands; whole stream commands (and snapshot functions or scripts); commands whose
    /// keys disagreed and were kept or dropped by their first key.
    pub filtered_keys: AtomicU64,
    pub filtered_commands: AtomicU64,
    pub filtered_mixed: AtomicU64,
    /// Source transactions (`MULTI`/`EXEC`) that spanned slots of a cluster target and were
    /// applied as one transaction per slot: each part atomic, not the whole.
    pub split_transactions: AtomicU64,
    /// Replicated commands the target refused and the writer went past
    /// (`--skip-failed-commands`).
    pub commands_failed: AtomicU64,
    /// Snapshot keys holding an empty collection, dropped as Redis drops them at load.
    pub empty_keys_skipped: AtomicU64,
    /// Keys, functions, scripts and module data the target cannot hold, skipped and
    /// counted (`--skip-unsupported`).
    pub unsupported_skipped: AtomicU64,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            phase: AtomicU8::new(Phase::Connecting as u8),
            snapshot_unapplied: AtomicBool::new(false),
            streamed: AtomicBool::new(false),
            rdb_size: AtomicU64::new(0),
            rdb_read: AtomicU64::new(0),
            expected_keys: AtomicU64::new(0),
            keys_read: AtomicU64::new(0),
            keys_applied: AtomicU64::new(0),
            records_read: AtomicU64::new(0),
            records_applied: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_offset: AtomicU64::new(0),
            applied_offset: AppliedOffset::default(),
            stream_start: AtomicU64::new(0),
            full_resyncs: AtomicU64::new(0),
            read_marks: Mutex::new(VecDeque::new()),
            lag_override_us: AtomicU64::new(0),
            link_up: AtomicBool::new(false),
            read_all: AtomicBool::new(false),
            last_contact_ms: AtomicU64::new(0),
            last_progress: AtomicU64::new(0),
            replid: Mutex::new(String::new()),
            filtered_keys: AtomicU64::new(0),
            filtered_commands: AtomicU64::new(0),
            filtered_mixed: AtomicU64::new(0),
            split_transactions: AtomicU64::new(0),
            commands_failed: AtomicU64::new(0),
            empty_keys_skipped: AtomicU64::new(0),
            unsupported_skipped: AtomicU64::new(0),
        }
    }
}

impl ShardStats {
    /// Where the shard is. The reader moves it on as it reads; a shard whose reader is in
    /// the stream while its writer still applies the snapshot is in [`Phase::Snapshot`]:
    /// "incremental" means the snapshot is on the target.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Connecting,
            1 => Phase::WaitingForSnapshot,
            2 => Phase::Snapshot,
            3 if self.snapshot_unapplied.load(Relaxed) => Phase::Snapshot,
            3 => Phase::Incremental,
            _ => Phase::Done,
        }
    }

    /// A snapshot is (`true`) or is no longer (`false`) waiting to be applied: the writer
    /// clears it once the snapshot is on the target, a reader that resumes the stream
    /// (no snapshot coming) too.
    pub fn set_snapshot_unapplied(&self, pending: bool) {
        self.snapshot_unapplied.store(pending, Relaxed);
        if !pending {
            self.streamed.store(true, Relaxed);
        }
    }

    /// The target holds a whole snapshot (or a resumed stream) and no new snapshot is
    /// being applied: a stop now is clean, not an incomplete copy.
    pub fn target_in_step(&self) -> bool {
        self.streamed.load(Relaxed) && self.phase() != Phase::Snapshot
    }

    /// Moves the shard on. A snapshot that begins is unapplied until its writer says so
    /// ([`ShardStats::set_snapshot_unapplied`]).
    pub fn set_phase(&self, p: Phase) {
        if p == Phase::Snapshot {
            self.snapshot_unapplied.store(true, Relaxed);
        }
        self.phase.store(p as u8, Relaxed);
    }

    /// Snapshot progress in percent (100 once streaming). While the reader (re)connects it
    /// is the last value shown, not 0: the target still holds what was copied; a new
    /// snapshot, if one comes, restarts it from its own figures.
    pub fn progress_percent(&self) -> f64 {
        let p = match self.phase() {
            Phase::Incremental | Phase::Done => 100.0,
            Phase::Connecting | Phase::WaitingForSnapshot if self.streamed.load(Relaxed) => 100.0,
            Phase::Connecting | Phase::WaitingForSnapshot => {
                return f64::from_bits(self.last_progress.load(Relaxed))
            }
            Phase::Snapshot => {
                let size = self.rdb_size.load(Relaxed);
                let frac = if size > 0 {
                    self.rdb_read.load(Relaxed) as f64 / size as f64
                } else {
                    let exp = self.expected_keys.load(Relaxed);
                    if exp == 0 {
                        0.0
                    } else {
                        self.keys_applied.load(Relaxed) as f64 / exp as f64
                    }
                };
                (frac * 100.0).clamp(0.0, 99.9)
            }
        };
        self.last_progress.store(p.to_bits(), Relaxed);
        p
    }

    /// The reader is connected and reading (`true`), or its link ended (`false`); either
    /// counts as a contact.
    pub fn set_link_up(&self, up: bool) {
        self.touch();
        if up {
            self.read_all.store(false, Relaxed);
        }
        self.link_up.store(up, Relaxed);
    }

    /// The reader read everything it was to read and ends: the link going down now is no
    /// sign of a source gone.
    pub fn set_read_all(&self) {
        self.read_all.store(true, Relaxed);
    }

    /// Marks the link up until the returned guard is dropped (the reader returns, fails or
    /// is cancelled).
    pub fn link_up_while(&self) -> LinkUp<'_> {
        self.set_link_up(true);
        LinkUp(self)
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Relaxed)
    }

    /// Something was read from the source just now.
    pub fn touch(&self) {
        self.last_contact_ms.store(now_ms(), Relaxed);
    }

    /// Seconds since the last contact with the source; `None` before any.
    pub fn seconds_since_contact(&self) -> Option<f64> {
        match self.last_contact_ms.load(Relaxed) {
            0 => None,
            at => Some(now_ms().saturating_sub(at) as f64 / 1e3),
        }
    }

    /// Whether the lag figures mean anything: the link is up, or the shard is done (a
    /// finished file or snapshot has nothing more to read).
    pub fn lag_known(&self) -> bool {
        self.link_up() || self.read_all.load(Relaxed) || self.phase() == Phase::Done
    }

    /// The link is down while it should be up: the source is unreachable (not merely
    /// read to its end, nor not yet reached).
    pub fn link_lost(&self) -> bool {
        !self.lag_known() && self.last_contact_ms.load(Relaxed) != 0
    }

    /// [`ShardStats::lag_bytes`], or `None` while the lag is unknown (the link is down).
    pub fn known_lag_bytes(&self) -> Option<u64> {
        self.lag_known().then(|| self.lag_bytes())
    }

    /// [`ShardStats::lag_seconds`], or `None` while the lag is unknown (the link is down).
    pub fn known_lag_seconds(&self) -> Option<f64> {
        self.lag_known().then(|| self.lag_seconds())
    }

    /// Bytes of the replication stream read but not yet applied.
    pub fn lag_bytes(&self) -> u64 {
        self.read_offset
            .load(Relaxed)
            .saturating_sub(self.applied_offset.get())
    }

    /// Records that the stream was read up to `offset` now.
    pub fn mark_read(&self, offset: u64) {
        self.read_offset.store(offset, Relaxed);
        let now = Instant::now();
        if let Ok(mut marks) = self.read_marks.lock() {
            let applied = self.applied_offset.get();
            while marks.front().is_some_and(|(o, _)| *o <= applied) {
                marks.pop_front();
            }
            match marks.back_mut() {
                Some((o, t)) if now.duration_since(*t) < Duration::from_millis(10) => *o = offset,
                _ => marks.push_back((offset, now)),
            }
        }
    }

    /// Sets these figures to the total of several shards' (a job reading a cluster).
    pub fn sum_of(&self, shards: &[std::sync::Arc<ShardStats>]) {
        let sum = |f: fn(&ShardStats) -> &AtomicU64| {
            shards.iter().map(|s| f(s).load(Relaxed)).sum::<u64>()
        };
        self.rdb_size.store(sum(|s| &s.rdb_size), Relaxed);
        self.rdb_read.store(sum(|s| &s.rdb_read), Relaxed);
        self.expected_keys.store(sum(|s| &s.expected_keys), Relaxed);
        self.keys_read.store(sum(|s| &s.keys_read), Relaxed);
        self.keys_applied.store(sum(|s| &s.keys_applied), Relaxed);
        self.records_read.store(sum(|s| &s.records_read), Relaxed);
        self.records_applied
            .store(sum(|s| &s.records_applied), Relaxed);
        self.bytes_read.store(sum(|s| &s.bytes_read), Relaxed);
        self.split_transactions
            .store(sum(|s| &s.split_transactions), Relaxed);
        self.commands_failed
            .store(sum(|s| &s.commands_failed), Relaxed);
        self.empty_keys_skipped
            .store(sum(|s| &s.empty_keys_skipped), Relaxed);
        self.unsupported_skipped
            .store(sum(|s| &s.unsupported_skipped), Relaxed);
        self.read_offset.store(sum(|s| &s.read_offset), Relaxed);
        self.applied_offset
            .set(shards.iter().map(|s| s.applied_offset.get()).sum());
        self.full_resyncs.store(sum(|s| &s.full_resyncs), Relaxed);
        let phase = shards.iter().map(|s| s.phase() as u8).min().unwrap_or(0);
        self.phase.store(phase, Relaxed);
        let lag = shards.iter().map(|s| s.lag_seconds()).fold(0.0, f64::max);
        self.lag_override_us.store((lag * 1e6) as u64, Relaxed);
        // The total's link is up only while every shard's is; its last contact is the
        // oldest shard's.
        self.link_up.store(
            !shards.is_empty() && shards.iter().all(|s| s.link_up()),
            Relaxed,
        );
        self.read_all.store(
            !shards.is_empty() && shards.iter().all(|s| s.lag_known()),
            Relaxed,
        );
        let oldest = shards
            .iter()
            .map(|s| s.last_contact_ms.load(Relaxed))
            .min()
            .unwrap_or(0);
        self.last_contact_ms.store(oldest, Relaxed);
        if shards.iter().all(|s| s.streamed.load(Relaxed)) && !shards.is_empty() {
            self.streamed.store(true, Relaxed);
        }
    }

    /// Age of the oldest byte of the stream read but not yet applied on the target.
    pub fn lag_seconds(&self) -> f64 {
        let over = self.lag_override_us.load(Relaxed) as f64 / 1e6;
        over.max(self.own_lag_seconds())
    }

    fn own_lag_seconds(&self) -> f64 {
        let applied = self.applied_offset.get();
        let Ok(mut marks) = self.read_marks.lock() else {
            return 0.0;
        };
        while marks.front().is_some_and(|(o, _)| *o <= applied) {
            marks.pop_front();
        }
        marks
            .front()
            .map(|(_, t)| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Clears the link-up flag when the reader ends, however it ends.
pub struct LinkUp<'a>(&'a ShardStats);

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.set_link_up(false);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_unknown_while_the_link_is_down() {
        let s = ShardStats::default();
        assert_eq!(s.known_lag_bytes(), None, "no contact yet");
        assert_eq!(s.seconds_since_contact(), None);
        s.set_phase(Phase::Incremental);
        s.set_snapshot_unapplied(false);
        {
            let _up = s.link_up_while();
            s.mark_read(10);
            assert_eq!(s.known_lag_bytes(), Some(10));
            assert!(s.known_lag_seconds().is_some());
            assert_eq!(s.progress_percent(), 100.0);
        }
        assert!(!s.link_up());
        assert_eq!(s.known_lag_bytes(), None, "down: unknown, not 0");
        assert_eq!(s.known_lag_seconds(), None);
        assert!(s.seconds_since_contact().is_some());
        s.set_phase(Phase::Connecting);
        assert_eq!(
            s.progress_percent(),
            100.0,
            "a reconnect keeps the progress"
        );
        assert!(s.link_lost());
        s.set_phase(Phase::Done);
        assert_eq!(s.known_lag_bytes(), Some(10), "done: nothing more to read");
    }

    #[test]
    fn a_reader_that_read_everything_leaves_the_lag_known() {
        let s = ShardStats::default();
        s.set_phase(Phase::Snapshot);
        {
            let _up = s.link_up_while();
            s.set_read_all();
        }
        assert!(!s.link_up());
        assert_eq!(s.known_lag_bytes(), Some(0));
        assert!(!s.link_lost());
        s.set_link_up(true);
        s.set_link_up(false);
        assert!(s.link_lost(), "a new link that fails is lost");
    }

    #[test]
    fn progress_is_kept_while_reconnecting_during_a_snapshot() {
        let s = ShardStats::default();
        s.set_phase(Phase::Snapshot);
        s.rdb_size.store(200, Relaxed);
        s.rdb_read.store(100, Relaxed);
        assert_eq!(s.progress_percent(), 50.0);
        s.set_phase(Phase::Connecting);
        assert_eq!(s.progress_percent(), 50.0);
    }

    #[test]
    fn a_total_is_up_only_while_every_shard_is() {
        let a = std::sync::Arc::new(ShardStats::default());
        let b = std::sync::Arc::new(ShardStats::default());
        let total = ShardStats::default();
        a.set_link_up(true);
        b.set_link_up(true);
        total.sum_of(&[a.clone(), b.clone()]);
        assert!(total.link_up());
        b.set_link_up(false);
        total.sum_of(&[a, b]);
        assert!(!total.link_up());
        assert!(total.seconds_since_contact().is_some());
    }
}
