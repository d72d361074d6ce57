//! RDB items → events: shared by every reader that meets an RDB (the replica's snapshot
//! transfer, an RDB file, an AOF's RDB preamble), so they all yield the same sequence
//! `SnapshotHeader`, entries, `SnapshotEnd`.

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;

use ferry_rdb::{Item, Parser};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::error::SourceError;
use ferry_core::event::Event;
use ferry_core::filter::{Filter, Verdict};
use ferry_core::stats::ShardStats;

/// Most events waiting in the queue before the parser sends a big value's next chunk.
const BIG_CHUNKS_QUEUED: usize = 16;

/// Sends one event from the parser thread: `try_send` first, since the queue is rarely
/// full and `blocking_send` parks the thread in a runtime `block_on` for every event
/// (a measurable share of a full sync's CPU); it blocks only when the writer is behind.
#[inline]
fn send(tx: &mpsc::Sender<Event>, ev: Event) -> Result<(), ()> {
    match tx.try_send(ev) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(ev)) => tx.blocking_send(ev).map_err(|_| ()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

/// Reads the parser's RDB to its end, sending its events from this (blocking) thread;
/// `skip_entries` reads keys without sending them (incremental mode). Returns the number
/// of keys.
pub(crate) fn send_rdb_events<R: Read>(
    parser: &mut Parser<R>,
    tx: &mpsc::Sender<Event>,
    stats: &ShardStats,
    skip_entries: bool,
    addr: &str,
    filter: Option<&Filter>,
) -> Result<u64, SourceError> {
    let mut in_dropped_big = false;
    let rdb_err = |source| SourceError::Rdb {
        addr: addr.to_string(),
        source,
    };
    let downstream = || SourceError::Downstream {
        addr: addr.to_string(),
    };
    let mut keys = 0u64;
    let mut empty = 0u64;
    let mut header_sent = false;
    while let Some(item) = parser.next_item().map_err(rdb_err)? {
        if !header_sent {
            header_sent = true;
            let rdb_version = parser.rdb_version().unwrap_or(0) as u16;
            tx.blocking_send(Event::SnapshotHeader { rdb_version })
                .map_err(|_| downstream())?;
        }
        let ev = match item {
            Item::Entry(e) if ferry_rdb::is_empty_value(e.value_type, &e.payload) => {
                // Redis drops an empty collection at load (and refuses it in RESTORE; an
                // old one plants an empty key that breaks DEBUG DIGEST).
                empty += 1;
                stats.empty_keys_skipped.fetch_add(1, Relaxed);
                if empty <= 10 {
                    info!(source = %addr, key = %String::from_utf8_lossy(&e.key), db = e.db, "empty key skipped, as Redis does at load");
                }
                continue;
            }
            Item::Entry(e) => {
                keys += 1;
                stats.keys_read.fetch_add(1, Relaxed);
                stats.records_read.fetch_add(1, Relaxed);
                if skip_entries {
                    continue;
                }
                Event::Entry(e)
            }
            Item::BigEntryStart(e) => {
                keys += 1;
                stats.keys_read.fetch_add(1, Relaxed);
                stats.records_read.fetch_add(1, Relaxed);
                if skip_entries {
                    continue;
                }
                Event::BigEntryStart(e)
            }
            Item::BigEntryChunk { .. } | Item::BigEntryEnd { .. } if skip_entries => continue,
            Item::BigEntryChunk { payload } => {
                // The event queue is bounded in events, not bytes: let only a few chunks
                // (each up to a megabyte) wait, so a giant value never sits in memory.
                while tx.max_capacity() - tx.capacity() > BIG_CHUNKS_QUEUED && !tx.is_closed() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Event::BigEntryChunk { payload }
            }
            Item::BigEntryEnd { payload } => Event::BigEntryEnd { payload },
            Item::Function { code } => Event::Function { code },
            Item::Aux { key, value } if key.as_ref() == b"lua" => Event::Script { body: value },
            Item::Aux { key, value } => {
                debug!(source = %addr, key = %String::from_utf8_lossy(&key), value = %String::from_utf8_lossy(&value), "RDB aux");
                continue;
            }
            Item::ModuleAux { module_id, .. } => Event::ModuleAux { module_id },
            _ => continue,
        };
        let ev = match filter {
            Some(f) => match f.apply(ev, stats, &mut in_dropped_big) {
                Verdict::Keep(ev) => ev,
                Verdict::Drop => continue,
            },
            None => ev,
        };
        send(tx, ev).map_err(|_| downstream())?;
    }
    if empty > 0 {
        warn!(source = %addr, "{empty} empty keys skipped, as Redis does at load");
    }
    let rdb_version = parser.rdb_version().unwrap_or(0) as u16;
    tx.blocking_send(Event::SnapshotEnd { rdb_version, keys })
        .map_err(|_| downstream())?;
    Ok(keys)
}
