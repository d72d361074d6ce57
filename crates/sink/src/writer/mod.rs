//! The pipelined writer for a standalone target: events in, commands out, replies matched
//! in order on a second task, the applied offset advanced as replies arrive.
//!
//! Every command is written to one connection in source order, so the target applies them
//! in that order; the pipeline depth is bounded (batches in flight), which bounds memory.
//!
//! Files: `encode` (events into commands and checkpointed transactions), `expect` (what a
//! reply must say, and the check), `replies` (the reply task); this file holds the
//! options and the writer's loop.

mod encode;
mod expect;
mod replies;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
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

use encode::*;
pub(crate) use encode::{command_key, write_restore};
use expect::*;
pub(crate) use expect::{check_reply, command_failed, Expect, TxnCmd};
use replies::read_replies;

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
