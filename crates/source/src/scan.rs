//! A live source read without replication, for servers that refuse `PSYNC` (renamed,
//! disabled, ACL, managed services): `SCAN` + pipelined `DUMP`/`PTTL` for the snapshot,
//! and keyspace notifications for the writes after it, each changed key read again.
//!
//! Subscribed before the scan starts, so a key changed while being scanned is read again
//! after. Limits, compared to `PSYNC`: no ordering across keys (only each key's final
//! state is exact), writes between a change and its re-read coalesce, transactions are
//! not atomic on the target, expirations arrive as `expired` events (a `DEL`), and there
//! is no offset: a restart redoes the snapshot (the writer flushes the target first).
//!
//! Positions: replid `scan`; the snapshot is offset 0 and each change re-read after it
//! the next integer. They order one run's checkpoints, nothing more.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_resp::{frame, Connection, Endpoint, Frame};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::SourceError;
use crate::replica::ReplicaOptions;
use ferry_core::event::Event;
use ferry_core::stats::{Phase, ShardStats};

/// The replication id of checkpoints written for this method.
pub const SCAN_REPLID: &str = "scan";
/// Keys per `SCAN` call, and per pipelined batch of `DUMP`s.
const BATCH: usize = 512;
/// Notifications of one key within this window make one re-read.
const COALESCE: Duration = Duration::from_millis(20);

/// Reads the source by SCAN (see the module doc) until it fails, `cancel` fires, or (full
/// mode) the snapshot is read.
pub async fn scan(
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let result = scan_inner(opts, tx, stats, cancel.clone()).await;
    crate::error::unless_stopped(result, &cancel)
}

/// Keys named by notifications and not yet read again.
#[derive(Default)]
struct Dirty {
    keys: Mutex<HashSet<(u32, Bytes)>>,
    changed: Notify,
}

struct Task(tokio::task::JoinHandle<SourceError>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn scan_inner(
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let addr = opts.endpoint.addr();
    stats.set_phase(Phase::Connecting);
    if let (Some((_, offset)), true) = (&opts.resume, opts.refuse_full_resync) {
        // Incremental mode cannot resume: the writes while ferry was away are unknown.
        return Err(SourceError::BacklogGone {
            addr,
            offset: *offset,
        });
    }
    let mut conn = Connection::connect(&opts.endpoint).await?;
    // Values are read whole (`DUMP`): as big as the source allows.
    conn.set_max_reply(frame::MAX_LEN);
    let dbs = conn.info("keyspace").await?.keyspace();
    // Connected: the link is up until this reader returns.
    let _link_up = stats.link_up_while();
    stats
        .expected_keys
        .store(dbs.iter().map(|(_, k)| k).sum(), Relaxed);
    *stats.replid.lock().unwrap_or_else(|e| e.into_inner()) = SCAN_REPLID.into();
    stats.read_offset.store(0, Relaxed);
    stats.applied_offset.set(0);
    // Every scan is a new full copy: progress is a change applied after it.
    stats.stream_start.store(0, Relaxed);
    stats.full_resyncs.fetch_add(1, Relaxed);

    let follow = !opts.stop_after_snapshot;
    let dirty = Arc::new(Dirty::default());
    let mut listener = None;
    if follow {
        enable_notifications(&mut conn, &addr).await?;
        let sub = subscribe(&opts.endpoint).await?;
        listener = Some(Task(tokio::spawn(listen(sub, dirty.clone()))));
        info!(source = %addr, "following writes by keyspace notifications: no ordering across keys, no offsets (a restart redoes the snapshot), writes between a change and its re-read coalesce, expirations arrive as deletes");
    }

    let send = |ev: Event| {
        let tx = tx.clone();
        let addr = addr.clone();
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                r = tx.send(ev) => r.map_err(|_| SourceError::Downstream { addr }),
                _ = cancel.cancelled() => Ok(()),
            }
        }
    };
    if opts.skip_snapshot {
        send(Event::Continue {
            replid: SCAN_REPLID.into(),
            offset: 0,
        })
        .await?;
    } else {
        send(Event::SnapshotBegin {
            replid: SCAN_REPLID.into(),
            offset: 0,
            rdb_size: None,
        })
        .await?;
        stats.set_phase(Phase::Snapshot);
        for code in function_libraries(&mut conn).await? {
            send(Event::Function { code }).await?;
        }
        let mut version = None;
        let mut seen = HashSet::new();
        let mut keys = 0u64;
        for (db, _) in &dbs {
            select(&mut conn, *db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                if let Some(t) = &listener {
                    if t.0.is_finished() {
                        break;
                    }
                }
                let (next, batch) = scan_step(&mut conn, &cursor).await?;
                for (key, value) in read_keys(&mut conn, &batch).await? {
                    let Some((dump, pttl)) = value else { continue };
                    // SCAN may return a key twice; the second copy is not restored again
                    // (a change in between is re-read after the snapshot).
                    if !seen.insert(key_id(*db, &key)) {
                        continue;
                    }
                    let (value_type, payload, v) = split_dump(&dump, &key, &addr)?;
                    if version != Some(v) {
                        version = Some(v);
                        send(Event::SnapshotHeader { rdb_version: v }).await?;
                    }
                    keys += 1;
                    stats.keys_read.fetch_add(1, Relaxed);
                    stats.records_read.fetch_add(1, Relaxed);
                    stats.touch();
                    send(Event::Entry(ferry_rdb::Entry {
                        db: *db as u64,
                        key,
                        value_type,
                        payload,
                        expire_ms: (pttl >= 0).then(|| now_ms() + pttl),
                        idle: None,
                        freq: None,
                    }))
                    .await?;
                }
                cursor = next;
                if cursor.as_ref() == b"0" {
                    break;
                }
            }
        }
        send(Event::SnapshotEnd {
            rdb_version: version.unwrap_or(0),
            keys,
        })
        .await?;
        info!(source = %addr, keys, "SCAN snapshot read");
    }
    let Some(mut listener) = listener else {
        stats.set_read_all();
        return Ok(());
    };
    stats.set_phase(Phase::Incremental);
    let mut seq = 0u64;
    let mut db_selected = None;
    loop {
        tokio::select! {
            _ = dirty.changed.notified() => {}
            r = &mut listener.0 => return Err(r.unwrap_or_else(|e| SourceError::Protocol {
                addr: addr.clone(),
                message: format!("notification listener failed: {e}"),
            })),
            _ = cancel.cancelled() => return Ok(()),
        }
        tokio::time::sleep(COALESCE).await;
        let mut changed: Vec<(u32, Bytes)> = {
            let mut set = dirty.keys.lock().unwrap_or_else(|e| e.into_inner());
            set.drain().collect()
        };
        changed.sort_unstable_by_key(|k| k.0);
        for chunk in changed.chunks(BATCH) {
            let values = read_changed(&mut conn, chunk, &mut db_selected).await?;
            for ((db, key), value) in chunk.iter().zip(values) {
                seq += 1;
                let argv = match value {
                    Some((dump, pttl)) => {
                        let ttl = match pttl {
                            0 => 1, // about to expire; 0 would mean "no expiry"
                            t if t > 0 => t,
                            _ => 0,
                        };
                        vec![
                            Bytes::from_static(b"RESTORE"),
                            key.clone(),
                            Bytes::from(ttl.to_string()),
                            dump,
                            Bytes::from_static(b"REPLACE"),
                        ]
                    }
                    None => vec![Bytes::from_static(b"DEL"), key.clone()],
                };
                stats.records_read.fetch_add(1, Relaxed);
                stats.touch();
                stats.mark_read(seq);
                send(Event::Command {
                    db: *db,
                    argv,
                    offset: seq,
                })
                .await?;
            }
        }
    }
}

/// The code of every function library (none before Redis 7, where `FUNCTION` is unknown).
async fn function_libraries(conn: &mut Connection) -> Result<Vec<Bytes>, SourceError> {
    let reply = conn.request_raw(&["FUNCTION", "LIST", "WITHCODE"]).await?;
    let Frame::Array(libs) = reply else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for lib in libs {
        let Frame::Array(fields) = lib else { continue };
        for pair in fields.chunks(2) {
            if let [name, Frame::Bulk(code)] = pair {
                if name
                    .as_bytes()
                    .is_some_and(|n| n.as_ref() == b"library_code")
                {
                    out.push(code.clone());
                }
            }
        }
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 128 bits naming (db, key): collisions are out of reach, and a key costs 16 bytes.
fn key_id(db: u32, key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, db, key).hash(&mut h);
        h.finish() as u128
    };
    (half(1) << 64) | half(2)
}

fn split_dump(dump: &Bytes, key: &[u8], addr: &str) -> Result<(u8, Bytes, u16), SourceError> {
    let (value_type, payload, version) =
        ferry_rdb::parse_dump_payload(dump).map_err(|e| SourceError::Protocol {
            addr: addr.to_string(),
            message: format!(
                "DUMP of key {:?} is not a valid payload: {e}",
                String::from_utf8_lossy(key)
            ),
        })?;
    let start = 1;
    let payload = dump.slice(start..start + payload.len());
    Ok((value_type, payload, version))
}

async fn select(conn: &mut Connection, db: u32) -> Result<(), SourceError> {
    conn.request(&["SELECT", &db.to_string()]).await?;
    Ok(())
}

/// One `SCAN` call: the next cursor and the keys.
async fn scan_step(
    conn: &mut Connection,
    cursor: &Bytes,
) -> Result<(Bytes, Vec<Bytes>), SourceError> {
    Ok(conn.scan_step(cursor, None, BATCH).await?)
}

/// A key's `DUMP` and `PTTL`; `None` when the key no longer exists.
type Value = Option<(Bytes, i64)>;

/// `DUMP` and `PTTL` of every key, pipelined, in the connection's database.
async fn read_keys(
    conn: &mut Connection,
    keys: &[Bytes],
) -> Result<Vec<(Bytes, Value)>, SourceError> {
    let mut buf = BytesMut::new();
    for k in keys {
        frame::write_command(&mut buf, &[b"DUMP".as_ref(), k]);
        frame::write_command(&mut buf, &[b"PTTL".as_ref(), k]);
    }
    conn.write_all(&buf).await?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        out.push((k.clone(), read_value(conn, k).await?));
    }
    Ok(out)
}

/// Like [`read_keys`] for keys of several databases (sorted by database).
async fn read_changed(
    conn: &mut Connection,
    keys: &[(u32, Bytes)],
    selected: &mut Option<u32>,
) -> Result<Vec<Value>, SourceError> {
    let mut buf = BytesMut::new();
    let mut selects = 0;
    let mut db_now = *selected;
    for (db, k) in keys {
        if db_now != Some(*db) {
            frame::write_command(&mut buf, &[b"SELECT".as_ref(), db.to_string().as_bytes()]);
            selects += 1;
            db_now = Some(*db);
        }
        frame::write_command(&mut buf, &[b"DUMP".as_ref(), k]);
        frame::write_command(&mut buf, &[b"PTTL".as_ref(), k]);
    }
    conn.write_all(&buf).await?;
    let mut out = Vec::with_capacity(keys.len());
    let mut db_now = *selected;
    for (db, k) in keys {
        if db_now != Some(*db) {
            let (f, _) = conn.read_frame("SELECT").await?;
            if let Frame::Error(m) = f {
                return Err(SourceError::Protocol {
                    addr: conn.addr().to_string(),
                    message: format!("SELECT {db}: {}", String::from_utf8_lossy(&m)),
                });
            }
            selects -= 1;
            db_now = Some(*db);
        }
        out.push(read_value(conn, k).await?);
    }
    debug_assert_eq!(selects, 0);
    *selected = db_now;
    Ok(out)
}

async fn read_value(conn: &mut Connection, key: &[u8]) -> Result<Value, SourceError> {
    let (dump, _) = conn.read_frame("DUMP").await?;
    let (pttl, _) = conn.read_frame("PTTL").await?;
    let err = |what: &str, f: &Frame| SourceError::Protocol {
        addr: conn.addr().to_string(),
        message: format!(
            "{what} of key {:?}: {}",
            String::from_utf8_lossy(key),
            f.to_text()
        ),
    };
    let dump = match dump {
        Frame::Bulk(b) => b,
        Frame::Null => return Ok(None),
        other => return Err(err("DUMP", &other)),
    };
    match pttl {
        Frame::Integer(-2) => Ok(None),
        Frame::Integer(t) => Ok(Some((dump, t))),
        other => Err(err("PTTL", &other)),
    }
}

/// Makes sure the source publishes keyspace events of every class: `K` (keyspace channel)
/// and `A` (all classes, `expired` and `evicted` included).
async fn enable_notifications(conn: &mut Connection, addr: &str) -> Result<(), SourceError> {
    let current = match conn
        .request_raw(&["CONFIG", "GET", "notify-keyspace-events"])
        .await?
    {
        Frame::Array(items) => items.get(1).map(Frame::to_text),
        _ => None,
    };
    if let Some(flags) = &current {
        if flags.contains('K') && flags.contains('A') {
            return Ok(());
        }
    }
    let mut flags = current.clone().unwrap_or_default();
    flags.push_str("KA");
    match conn
        .request_raw(&["CONFIG", "SET", "notify-keyspace-events", &flags])
        .await?
    {
        Frame::Error(m) => Err(SourceError::Notifications {
            addr: addr.to_string(),
            message: format!(
                "notify-keyspace-events is {}, which lacks K and A, and CONFIG SET was refused ({}); set `notify-keyspace-events KEA` on the source (its config file, or the provider's parameter settings) and run again",
                current.as_deref().map_or("unknown (CONFIG GET refused)".to_string(), |c| format!("{c:?}")),
                String::from_utf8_lossy(&m)
            ),
        }),
        _ => {
            warn!(source = %addr, was = current.as_deref().unwrap_or("?"), now = %flags, "enabled keyspace notifications on the source (CONFIG SET notify-keyspace-events); it stays on after ferry stops");
            Ok(())
        }
    }
}

async fn subscribe(endpoint: &Endpoint) -> Result<Connection, SourceError> {
    let mut sub = Connection::connect(endpoint).await?;
    let reply = sub.request_raw(&["PSUBSCRIBE", "__keyspace@*__:*"]).await?;
    match &reply {
        Frame::Array(items) if items.first().and_then(Frame::as_bytes).is_some_and(|b| b.eq_ignore_ascii_case(b"psubscribe")) => Ok(sub),
        other => Err(SourceError::Notifications {
            addr: endpoint.addr(),
            message: format!(
                "PSUBSCRIBE __keyspace@*__:* refused: {}; the user needs the pubsub permission (ACL `&__keyspace@*` and +psubscribe)",
                other.to_text()
            ),
        }),
    }
}

/// Collects changed keys until the subscription fails; returns why it did.
async fn listen(mut sub: Connection, dirty: Arc<Dirty>) -> SourceError {
    loop {
        let frame = match sub.read_frame_no_timeout().await {
            Ok((f, _)) => f,
            Err(e) => return e.into(),
        };
        let Some((db, key)) = keyspace_message(frame) else {
            continue;
        };
        dirty
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((db, key));
        dirty.changed.notify_one();
    }
}

/// `pmessage <pattern> __keyspace@<db>__:<key> <event>` → (db, key).
fn keyspace_message(frame: Frame) -> Option<(u32, Bytes)> {
    let Frame::Array(items) = frame else {
        return None;
    };
    let [kind, _pattern, channel, _event] = items.as_slice() else {
        return None;
    };
    if !kind.as_bytes()?.eq_ignore_ascii_case(b"pmessage") {
        return None;
    }
    let channel = channel.as_bytes()?;
    let rest = channel.strip_prefix(b"__keyspace@")?;
    let end = rest.iter().position(|&b| b == b'_')?;
    let db = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let key_at = channel.len() - rest.len() + end;
    let key = channel.slice(key_at..).strip_prefix_bytes(b"__:")?;
    Some((db, key))
}

trait StripPrefixBytes: Sized {
    fn strip_prefix_bytes(self, prefix: &[u8]) -> Option<Self>;
}

impl StripPrefixBytes for Bytes {
    fn strip_prefix_bytes(self, prefix: &[u8]) -> Option<Bytes> {
        self.starts_with(prefix).then(|| self.slice(prefix.len()..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s))
    }

    #[test]
    fn keyspace_messages() {
        let m = Frame::Array(vec![
            bulk(b"pmessage"),
            bulk(b"__keyspace@*__:*"),
            bulk(b"__keyspace@12__:a:b__:c"),
            bulk(b"set"),
        ]);
        assert_eq!(
            keyspace_message(m),
            Some((12, Bytes::from_static(b"a:b__:c")))
        );
        let sub = Frame::Array(vec![bulk(b"psubscribe"), bulk(b"x"), Frame::Integer(1)]);
        assert_eq!(keyspace_message(sub), None);
        assert_ne!(key_id(0, b"k"), key_id(1, b"k"));
    }
}
