//! ferry as a replica of one source node: the handshake, the snapshot transfer and the
//! command stream, with every byte of the stream counted for the replication offset.
//!
//! Order of work (as Redis's own `replication.c` does it from the replica side):
//! `AUTH` → `REPLCONF listening-port` → `REPLCONF capa eof capa psync2` → `REPLCONF version`
//! (Valkey) → `PSYNC` →
//! `+FULLRESYNC <replid> <offset>` then an RDB (`$<len>` or diskless `$EOF:<mark>`), or
//! `+CONTINUE [<replid>]` → the command stream. `REPLCONF ACK <offset>` goes out every
//! second from its own task, so a slow snapshot never makes the source time the link out.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferry_rdb::Parser;
use ferry_resp::{frame, Connection, Endpoint, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::SourceError;
use crate::pipe::ChannelReader;
use crate::ratelimit::RateLimiter;
use crate::rdb_events::send_rdb_events;
use ferry_core::event::Event;
use ferry_core::filter::{Filter, Verdict};
use ferry_core::stats::{Phase, ShardStats};

/// What to ask the source for.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub endpoint: Endpoint,
    /// Sent as `REPLCONF listening-port`; 0 by default so that no tool that lists the
    /// source's replicas mistakes ferry for a node it can connect to.
    pub listening_port: u16,
    /// Resume from `(replid, offset)`: the offset is the last byte already applied, and
    /// `PSYNC replid offset+1` is sent.
    pub resume: Option<(String, u64)>,
    /// The database selected at the resume offset: a partial resync continues the stream
    /// mid-way, without a new `SELECT`.
    pub resume_db: u32,
    /// Incremental mode: read a snapshot if the source insists, but apply none of it.
    pub skip_snapshot: bool,
    /// Full mode: stop once the snapshot has been read.
    pub stop_after_snapshot: bool,
    pub ack_interval: Duration,
    /// How many 64 KiB chunks of RDB may wait for the parser.
    pub rdb_queue_chunks: usize,
    /// A source that sends nothing for this long is taken as gone (Redis's own
    /// `repl-timeout` default is 60 s; the source PINGs every 10 s).
    pub read_timeout: Duration,
    /// The job's byte rate limit on what is read from its sources, shared by all shards.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Resuming in incremental mode: a source that can only offer a new snapshot is an
    /// error (applying none of it would lose writes).
    pub refuse_full_resync: bool,
    /// Values above these thresholds are read and sent in chunks, so that memory stays
    /// bounded however big one value is.
    pub big_values: Option<ferry_rdb::BigValues>,
    /// Keys, databases and commands to leave out (see [`crate::filter`]); applied here,
    /// before events leave the reader, to the snapshot and the stream alike.
    pub filter: Option<Arc<Filter>>,
    /// The name `PSYNC` goes by on this source (a provider may rename it).
    pub psync_command: String,
    /// `CLIENT SETNAME` of the replica connection, so that `CLIENT LIST` and `INFO
    /// replication` on the source say whose it is (a refusal is ignored).
    pub client_name: Option<String>,
}

impl ReplicaOptions {
    pub fn new(endpoint: Endpoint) -> Self {
        ReplicaOptions {
            endpoint,
            listening_port: 0,
            resume: None,
            resume_db: 0,
            skip_snapshot: false,
            stop_after_snapshot: false,
            ack_interval: Duration::from_secs(1),
            rdb_queue_chunks: 64,
            read_timeout: Duration::from_secs(60),
            rate_limit: None,
            refuse_full_resync: false,
            big_values: Some(ferry_rdb::BigValues::default()),
            filter: None,
            psync_command: "PSYNC".into(),
            client_name: None,
        }
    }
}

/// How the source answered `PSYNC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PsyncReply {
    FullResync { replid: String, offset: u64 },
    Continue { replid: Option<String> },
}

/// How the RDB is framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RdbTransfer {
    Length(u64),
    Eof([u8; 40]),
}

/// Runs the reader until the source link fails, `cancel` fires, or (in full mode) the
/// snapshot is read. Events go to `tx` in source order.
pub async fn replicate(
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let result = replicate_inner(opts, tx, stats, cancel.clone()).await;
    crate::error::unless_stopped(result, &cancel)
}

async fn replicate_inner(
    opts: ReplicaOptions,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let addr = opts.endpoint.addr();
    stats.set_phase(Phase::Connecting);
    let mut conn = Connection::connect(&opts.endpoint).await?;
    if let Ok(info) = conn.info("keyspace").await {
        let keys: u64 = info.keyspace().iter().map(|(_, k)| k).sum();
        stats.expected_keys.store(keys, Relaxed);
    }
    // A source that accepts the connection and then says nothing is timed out at every
    // step (the snapshot's wait included: Redis sends `\n` while it forks).
    match tokio::time::timeout(opts.read_timeout, handshake(&mut conn, &opts)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ferry_resp::Error::Timeout {
                addr,
                what: format!(
                    "the replication handshake ({:?} without a reply)",
                    opts.read_timeout
                ),
            }
            .into())
        }
    }

    let psync_args = match &opts.resume {
        Some((replid, offset)) => vec![
            opts.psync_command.clone(),
            replid.clone(),
            (offset + 1).to_string(),
        ],
        None => vec![opts.psync_command.clone(), "?".into(), "-1".into()],
    };
    conn.send(&psync_args).await?;
    stats.set_phase(Phase::WaitingForSnapshot);
    let reply = read_psync_reply(&mut conn, opts.read_timeout).await?;
    // Connected and replicating: the link is up until this reader returns.
    let _link_up = stats.link_up_while();
    let (stream, mut buf, _) = conn.into_parts();
    let (rd, wr) = tokio::io::split(stream);
    let mut link = Link {
        rd,
        addr: addr.clone(),
        stats: stats.clone(),
        timeout: opts.read_timeout,
        limiter: opts.rate_limit.clone(),
    };

    let ack_now = Arc::new(Notify::new());
    let awaiting_stream = Arc::new(AtomicBool::new(false));
    let ack_task = tokio::spawn(ack_loop(
        wr,
        addr.clone(),
        stats.clone(),
        ack_now.clone(),
        awaiting_stream.clone(),
        opts.ack_interval,
    ));
    let _ack_guard = AbortOnDrop(ack_task);

    let offset = match reply {
        PsyncReply::FullResync { replid, offset } => {
            if opts.refuse_full_resync {
                return Err(SourceError::BacklogGone {
                    addr,
                    offset: opts.resume.as_ref().map(|r| r.1).unwrap_or(0),
                });
            }
            info!(source = %addr, %replid, offset, "full resync");
            *stats.replid.lock().unwrap_or_else(|e| e.into_inner()) = replid.clone();
            stats.read_offset.store(offset, Relaxed);
            stats.applied_offset.set(offset);
            stats.stream_start.store(offset, Relaxed);
            stats.full_resyncs.fetch_add(1, Relaxed);
            let transfer = read_rdb_header(&mut link, &mut buf, &cancel).await?;
            let rdb_size = match &transfer {
                RdbTransfer::Length(n) => Some(*n),
                RdbTransfer::Eof(_) => None,
            };
            stats.rdb_size.store(rdb_size.unwrap_or(0), Relaxed);
            send(
                &tx,
                Event::SnapshotBegin {
                    replid,
                    offset,
                    rdb_size,
                },
                &addr,
                &cancel,
            )
            .await?;
            stats.set_phase(Phase::Snapshot);
            buf = transfer_rdb(&mut link, buf, transfer, &opts, &tx, &cancel).await?;
            // A diskless source starts the command stream on the first ACK it gets after it
            // has seen the transfer end; ACK quickly until the stream begins.
            awaiting_stream.store(buf.is_empty(), Relaxed);
            ack_now.notify_one();
            if opts.stop_after_snapshot || cancel.is_cancelled() {
                stats.set_read_all();
                return Ok(());
            }
            offset
        }
        PsyncReply::Continue { replid } => {
            let (old_id, last) = opts.resume.clone().ok_or_else(|| SourceError::Protocol {
                addr: addr.clone(),
                message: "+CONTINUE to a PSYNC that asked for a full resync".into(),
            })?;
            let replid = replid.unwrap_or(old_id);
            info!(source = %addr, %replid, offset = last, "partial resync (+CONTINUE)");
            *stats.replid.lock().unwrap_or_else(|e| e.into_inner()) = replid.clone();
            stats.read_offset.store(last, Relaxed);
            stats.applied_offset.set(last);
            stats.stream_start.store(last, Relaxed);
            stats.set_snapshot_unapplied(false);
            send(
                &tx,
                Event::Continue {
                    replid,
                    offset: last,
                },
                &addr,
                &cancel,
            )
            .await?;
            last
        }
    };
    stats.set_phase(Phase::Incremental);
    let streaming = StreamStarted(&awaiting_stream);
    // After a snapshot the source SELECTs before its first command; after +CONTINUE the
    // stream goes on in the database selected at the resume offset.
    let db = if opts.resume.is_some() {
        opts.resume_db
    } else {
        0
    };
    command_stream(
        &mut link,
        buf,
        offset,
        db,
        &tx,
        &ack_now,
        streaming,
        opts.filter.as_deref(),
        &cancel,
    )
    .await
}

/// Clears the "waiting for the stream" flag once the first stream bytes arrive.
struct StreamStarted<'a>(&'a AtomicBool);

impl StreamStarted<'_> {
    fn mark(&self) {
        self.0.store(false, Relaxed);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(
    tx: &mpsc::Sender<Event>,
    ev: Event,
    addr: &str,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    tokio::select! {
        r = tx.send(ev) => r.map_err(|_| SourceError::Downstream { addr: addr.to_string() }),
        _ = cancel.cancelled() => Ok(()),
    }
}

async fn handshake(conn: &mut Connection, opts: &ReplicaOptions) -> Result<(), SourceError> {
    let addr = conn.addr().to_string();
    let port = opts.listening_port.to_string();
    let refused = |command: &str, message: String| {
        if message.starts_with("LOADING") {
            SourceError::Loading { addr: addr.clone() }
        } else {
            SourceError::PsyncRefused {
                addr: addr.clone(),
                command: command.to_string(),
                message,
            }
        }
    };
    let pong = conn.request_raw(&["PING"]).await?;
    if let Frame::Error(m) = pong {
        let m = String::from_utf8_lossy(&m).into_owned();
        if m.starts_with("NOAUTH") || m.starts_with("WRONGPASS") {
            return Err(ferry_resp::Error::Auth { addr, message: m }.into());
        }
        // LOADING and friends still answer PING with an error only on some versions.
        return Err(refused("PING", m));
    }
    if let Some(name) = &opts.client_name {
        if let Frame::Error(m) = conn.request_raw(&["CLIENT", "SETNAME", name]).await? {
            debug!(source = %addr, reply = %String::from_utf8_lossy(&m), "CLIENT SETNAME refused");
        }
    }
    if let Frame::Error(m) = conn
        .request_raw(&["REPLCONF", "listening-port", &port])
        .await?
    {
        return Err(refused(
            "REPLCONF listening-port",
            String::from_utf8_lossy(&m).into_owned(),
        ));
    }
    // Old servers reject capabilities they do not know; Redis's replica ignores that too.
    if let Frame::Error(m) = conn
        .request_raw(&["REPLCONF", "capa", "eof", "capa", "psync2"])
        .await?
    {
        debug!(source = %addr, reply = %String::from_utf8_lossy(&m), "REPLCONF capa refused");
    }
    // Valkey 9 sends a replica that names no version of its own an RDB 11 snapshot, in which
    // a hash with field TTLs cannot be stored: the snapshot fails on the source. Announcing
    // the newest Valkey whose RDB (`VALKEY080`) ferry reads gets that format. Redis refuses
    // the option, which changes nothing.
    if let Frame::Error(m) = conn
        .request_raw(&["REPLCONF", "version", ANNOUNCED_VALKEY_VERSION])
        .await?
    {
        debug!(source = %addr, reply = %String::from_utf8_lossy(&m), "REPLCONF version refused");
    }
    Ok(())
}

/// Largest replicated command accepted: 4 GB, well over Redis's default
/// `proto-max-bulk-len` (512 MB); a longer declared length is taken as corruption.
const MAX_STREAM_COMMAND: usize = 4 << 30;

/// The replica version announced to the source: the newest Valkey whose snapshot format
/// ferry's parser reads.
const ANNOUNCED_VALKEY_VERSION: &str = "9.0.0";

/// Drops the master's keep-alive newlines from the front of the buffer.
fn skip_newlines(buf: &mut BytesMut) -> usize {
    let n = buf.iter().take_while(|&&b| b == b'\n').count();
    buf.advance(n);
    n
}

async fn read_psync_reply(
    conn: &mut Connection,
    timeout: Duration,
) -> Result<PsyncReply, SourceError> {
    let addr = conn.addr().to_string();
    let frame = loop {
        if conn.peek().first() == Some(&b'\n') {
            skip_newlines(conn.buffer());
        }
        if conn.peek().first() == Some(&b'$') {
            // A renamed PSYNC runs as the old SYNC (Redis tells them apart by the name
            // called): the RDB transfer comes at once, with no replid or offset. Offsets
            // count from 0 under a made-up replid; a restart takes a new snapshot.
            warn!(source = %addr, "the source answered as to SYNC (PSYNC renamed?): full copy without a resumable position");
            return Ok(PsyncReply::FullResync {
                replid: "sync".into(),
                offset: 0,
            });
        }
        match conn.try_frame() {
            Ok(Some((f, _))) => break f,
            Ok(None) => match tokio::time::timeout(timeout, conn.fill()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => {
                    return Err(ferry_resp::Error::Timeout {
                        addr,
                        what: format!("a reply to PSYNC ({timeout:?} without a byte)"),
                    }
                    .into())
                }
            },
            Err(e) => {
                return Err(SourceError::Protocol {
                    addr,
                    message: format!("reply to PSYNC: {e}"),
                })
            }
        }
    };
    parse_psync_reply(&frame, &addr)
}

fn parse_psync_reply(frame: &Frame, addr: &str) -> Result<PsyncReply, SourceError> {
    let text = frame.to_text();
    match frame {
        Frame::Error(_) => Err(if text.starts_with("NOMASTERLINK") {
            SourceError::NoMasterLink {
                addr: addr.to_string(),
            }
        } else if text.starts_with("LOADING") {
            SourceError::Loading {
                addr: addr.to_string(),
            }
        } else {
            SourceError::PsyncRefused {
                addr: addr.to_string(),
                command: "PSYNC".into(),
                message: text,
            }
        }),
        Frame::Simple(_) => {
            let mut parts = text.split_whitespace();
            match parts.next() {
                Some("FULLRESYNC") => {
                    let replid = parts.next().unwrap_or_default().to_string();
                    let offset = parts.next().and_then(|o| o.parse::<u64>().ok());
                    match offset {
                        Some(offset) if replid.len() == 40 => {
                            Ok(PsyncReply::FullResync { replid, offset })
                        }
                        _ => Err(SourceError::Protocol {
                            addr: addr.to_string(),
                            message: format!("malformed PSYNC reply {text:?}"),
                        }),
                    }
                }
                Some("CONTINUE") => Ok(PsyncReply::Continue {
                    replid: parts.next().map(str::to_string),
                }),
                _ => Err(SourceError::Protocol {
                    addr: addr.to_string(),
                    message: format!("unexpected PSYNC reply {text:?}"),
                }),
            }
        }
        _ => Err(SourceError::Protocol {
            addr: addr.to_string(),
            message: format!("unexpected PSYNC reply {text:?}"),
        }),
    }
}

/// The read side of the link to the source, with what every read must respect: the
/// timeout after which a silent source counts as gone (it PINGs every 10 s by default, and
/// sends newlines while it forks), and the job's shared rate limit.
struct Link {
    rd: ReadHalf<ferry_resp::Stream>,
    addr: String,
    stats: Arc<ShardStats>,
    timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
}

impl Link {
    async fn read_more(&mut self, buf: &mut BytesMut, context: &str) -> Result<usize, SourceError> {
        buf.reserve(64 * 1024);
        let n = match tokio::time::timeout(self.timeout, self.rd.read_buf(buf)).await {
            Ok(r) => r.map_err(|source| ferry_resp::Error::Io {
                addr: self.addr.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ferry_resp::Error::Timeout {
                    addr: self.addr.clone(),
                    what: format!(
                        "{context}: nothing received for {} s",
                        self.timeout.as_secs()
                    ),
                }
                .into())
            }
        };
        if n == 0 {
            return Err(ferry_resp::Error::Closed {
                addr: self.addr.clone(),
                context: Some(context.to_string()),
            }
            .into());
        }
        self.stats.bytes_read.fetch_add(n as u64, Relaxed);
        self.stats.touch();
        if let Some(l) = &self.limiter {
            l.consume(n as u64).await;
        }
        Ok(n)
    }
}

/// Reads `$<len>\r\n` or `$EOF:<40 bytes>\r\n`, skipping keep-alive newlines the master
/// sends while it forks and saves.
async fn read_rdb_header(
    link: &mut Link,
    buf: &mut BytesMut,
    cancel: &CancellationToken,
) -> Result<RdbTransfer, SourceError> {
    let addr = link.addr.clone();
    let addr = addr.as_str();
    loop {
        skip_newlines(buf);
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(pos + 2);
            let line = &line[..pos];
            return parse_rdb_header(line).ok_or_else(|| SourceError::Protocol {
                addr: addr.to_string(),
                message: format!(
                    "expected the RDB header ($<len> or $EOF:<mark>), got {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(80)])
                ),
            });
        }
        if buf.len() > 1024 {
            return Err(SourceError::Protocol {
                addr: addr.to_string(),
                message: "RDB header line too long".into(),
            });
        }
        tokio::select! {
            r = link.read_more(buf, "while waiting for the snapshot") => { r?; }
            _ = cancel.cancelled() => return Err(SourceError::Downstream { addr: addr.to_string() }),
        }
    }
}

fn parse_rdb_header(line: &[u8]) -> Option<RdbTransfer> {
    let rest = line.strip_prefix(b"$")?;
    if let Some(mark) = rest.strip_prefix(b"EOF:") {
        return mark.try_into().ok().map(RdbTransfer::Eof);
    }
    std::str::from_utf8(rest)
        .ok()?
        .parse()
        .ok()
        .map(RdbTransfer::Length)
}

/// Streams the RDB to a parser thread and returns the bytes read past its end (the start
/// of the command stream).
async fn transfer_rdb(
    link: &mut Link,
    mut buf: BytesMut,
    transfer: RdbTransfer,
    opts: &ReplicaOptions,
    tx: &mpsc::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<BytesMut, SourceError> {
    let stats = &link.stats.clone();
    let addr = opts.endpoint.addr();
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(opts.rdb_queue_chunks.max(1));
    let parse = {
        let tx = tx.clone();
        let stats = stats.clone();
        let skip = opts.skip_snapshot;
        let addr = addr.clone();
        let big = opts.big_values;
        let filter = opts.filter.clone();
        tokio::task::spawn_blocking(move || parse_rdb(chunk_rx, tx, stats, skip, addr, big, filter))
    };
    let mut parse = AbortOnDropT(Some(parse));
    let mut chunk_tx = Some(chunk_tx);
    let mut remaining = match transfer {
        RdbTransfer::Length(n) => Some(n),
        RdbTransfer::Eof(_) => None,
    };
    let outcome = loop {
        // Forward what is buffered (up to the RDB's end when its length is known).
        if !buf.is_empty() && remaining != Some(0) {
            let take = match remaining {
                Some(r) => (r.min(buf.len() as u64)) as usize,
                None => buf.len(),
            };
            let Some(sender) = chunk_tx.as_ref() else {
                unreachable!("sender dropped only once the RDB is fully forwarded")
            };
            tokio::select! {
                permit = sender.reserve() => match permit {
                    Ok(permit) => {
                        let chunk = buf.split_to(take).freeze();
                        stats.rdb_read.fetch_add(chunk.len() as u64, Relaxed);
                        permit.send(chunk);
                        if let Some(r) = remaining.as_mut() {
                            *r -= take as u64;
                        }
                    }
                    // The parser stopped: its result says why.
                    Err(_) => break parse.join().await,
                },
                r = parse.wait() => break r,
                _ = cancel.cancelled() => return Err(SourceError::Downstream { addr }),
            }
            continue;
        }
        if remaining == Some(0) {
            // Whole RDB handed over: the parser sees end-of-input after it.
            chunk_tx = None;
            tokio::select! {
                r = parse.wait() => break r,
                _ = cancel.cancelled() => return Err(SourceError::Downstream { addr }),
            }
        }
        tokio::select! {
            r = link.read_more(&mut buf, "during the snapshot transfer") => { r?; }
            r = parse.wait() => break r,
            _ = cancel.cancelled() => return Err(SourceError::Downstream { addr }),
        }
    };
    drop(chunk_tx);
    let done = outcome?;
    let mut tail = BytesMut::new();
    for b in done.leftover {
        tail.extend_from_slice(&b);
    }
    match transfer {
        RdbTransfer::Length(n) => {
            let unread = tail.len() as u64 + remaining.unwrap_or(0);
            if unread > 0 {
                // Redis sends exactly the RDB it announced: a length that disagrees with
                // where the RDB ends is a corrupted transfer, not padding to skip (skipping
                // it would swallow the command stream after it).
                return Err(SourceError::Protocol {
                    addr,
                    message: format!(
                        "the source announced an RDB of {n} bytes, but the RDB ended after {} ({unread} announced bytes left over)",
                        n.saturating_sub(unread)
                    ),
                });
            }
            Ok(buf)
        }
        RdbTransfer::Eof(mark) => {
            tail.extend_from_slice(&buf);
            while tail.len() < mark.len() {
                link.read_more(&mut tail, "reading the RDB end mark")
                    .await?;
            }
            if tail[..mark.len()] != mark {
                return Err(SourceError::Protocol {
                    addr,
                    message: format!(
                        "diskless RDB not followed by its end mark (RDB of {} bytes)",
                        done.rdb_len
                    ),
                });
            }
            tail.advance(mark.len());
            Ok(tail)
        }
    }
}

struct ParseDone {
    leftover: Vec<Bytes>,
    rdb_len: u64,
}

struct AbortOnDropT(Option<tokio::task::JoinHandle<Result<ParseDone, SourceError>>>);

impl AbortOnDropT {
    async fn wait(&mut self) -> Result<ParseDone, SourceError> {
        match self.0.as_mut() {
            Some(h) => {
                let r = h.await;
                self.0 = None;
                match r {
                    Ok(r) => r,
                    Err(e) => Err(SourceError::Protocol {
                        addr: String::new(),
                        message: format!("RDB parser thread failed: {e}"),
                    }),
                }
            }
            None => std::future::pending().await,
        }
    }

    async fn join(&mut self) -> Result<ParseDone, SourceError> {
        self.wait().await
    }
}

impl Drop for AbortOnDropT {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The parser thread: RDB items → events.
fn parse_rdb(
    rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Event>,
    stats: Arc<ShardStats>,
    skip_entries: bool,
    addr: String,
    big_values: Option<ferry_rdb::BigValues>,
    filter: Option<Arc<Filter>>,
) -> Result<ParseDone, SourceError> {
    let mut parser = Parser::new(ChannelReader::new(rx));
    parser.set_big_values(big_values);
    send_rdb_events(
        &mut parser,
        &tx,
        &stats,
        skip_entries,
        &addr,
        filter.as_deref(),
    )?;
    let rdb_len = parser.offset();
    let (reader, buffered) = parser.into_parts();
    let mut leftover = Vec::new();
    if !buffered.is_empty() {
        leftover.push(buffered);
    }
    leftover.extend(reader.into_leftover());
    Ok(ParseDone { leftover, rdb_len })
}

#[allow(clippy::too_many_arguments)]
async fn command_stream(
    link: &mut Link,
    mut buf: BytesMut,
    mut offset: u64,
    mut db: u32,
    tx: &mpsc::Sender<Event>,
    ack_now: &Notify,
    streaming: StreamStarted<'_>,
    filter: Option<&Filter>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let stats = link.stats.clone();
    let addr = link.addr.clone();
    let addr = addr.as_str();
    // Resumes a command it has partly checked: a big one arriving in many reads is checked
    // once, not again from its start after every read.
    let mut decoder = frame::Decoder::new(MAX_STREAM_COMMAND);
    loop {
        if !buf.is_empty() {
            streaming.mark();
        }
        let mut idle_bytes = false;
        loop {
            let (argv, n) = match decoder.parse_command(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    return Err(SourceError::Protocol {
                        addr: addr.to_string(),
                        message: format!(
                            "command stream at offset {}: {e}",
                            offset + e.offset as u64
                        ),
                    })
                }
            };
            offset += n as u64;
            let Some(argv) = argv else {
                return Err(SourceError::Protocol {
                    addr: addr.to_string(),
                    message: format!("command stream at offset {offset}: not a command"),
                });
            };
            let Some(name) = argv.first() else {
                idle_bytes = true;
                continue;
            };
            if name.eq_ignore_ascii_case(b"PING") {
                idle_bytes = true;
                continue;
            }
            if name.eq_ignore_ascii_case(b"SELECT") {
                db = argv
                    .get(1)
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| SourceError::Protocol {
                        addr: addr.to_string(),
                        message: format!("bad SELECT in the command stream at offset {offset}"),
                    })?;
                idle_bytes = true;
                continue;
            }
            if name.eq_ignore_ascii_case(b"REPLCONF") {
                if argv
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"))
                {
                    ack_now.notify_one();
                }
                idle_bytes = true;
                continue;
            }
            idle_bytes = false;
            stats.records_read.fetch_add(1, Relaxed);
            let mut ev = Event::Command { db, argv, offset };
            if let Some(f) = filter {
                match f.apply(ev, &stats, &mut false) {
                    Verdict::Keep(kept) => ev = kept,
                    Verdict::Drop => continue,
                }
            }
            // Most sends find room: no future, no wake-up of our own.
            let ev = match tx.try_send(ev) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(ev)) => ev,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(SourceError::Downstream {
                        addr: addr.to_string(),
                    })
                }
            };
            tokio::select! {
                r = tx.send(ev) => r.map_err(|_| SourceError::Downstream { addr: addr.to_string() })?,
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        if idle_bytes {
            tokio::select! {
                r = tx.send(Event::Offset { offset, db }) => r.map_err(|_| SourceError::Downstream { addr: addr.to_string() })?,
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        stats.mark_read(offset);
        tokio::select! {
            r = link.read_more(&mut buf, "during the command stream") => { r?; }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// Sends `REPLCONF ACK <applied offset>` every `interval`, and at once when asked
/// (`REPLCONF GETACK`, end of snapshot).
async fn ack_loop(
    mut wr: WriteHalf<ferry_resp::Stream>,
    addr: String,
    stats: Arc<ShardStats>,
    now: Arc<Notify>,
    awaiting_stream: Arc<AtomicBool>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fast_acks = 0u32;
    loop {
        // At most 2 s of fast ACKs: an idle source may send nothing for a while.
        let fast = awaiting_stream.load(Relaxed) && fast_acks < 200;
        if fast {
            fast_acks += 1;
        }
        tokio::select! {
            _ = tick.tick(), if !fast => {}
            _ = tokio::time::sleep(Duration::from_millis(10)), if fast => {}
            _ = now.notified() => {}
        }
        let off = stats.applied_offset.get().to_string();
        let cmd = frame::command(&["REPLCONF", "ACK", off.as_str()]);
        if let Err(e) = wr.write_all(&cmd).await {
            debug!(source = %addr, error = %e, "ACK not sent; the reader will see the link fail");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psync_replies() {
        let full = Frame::Simple(Bytes::from(
            "FULLRESYNC 0123456789012345678901234567890123456789 42",
        ));
        assert_eq!(
            parse_psync_reply(&full, "a").unwrap(),
            PsyncReply::FullResync {
                replid: "0123456789012345678901234567890123456789".into(),
                offset: 42
            }
        );
        let cont = Frame::Simple(Bytes::from("CONTINUE"));
        assert_eq!(
            parse_psync_reply(&cont, "a").unwrap(),
            PsyncReply::Continue { replid: None }
        );
        let e = parse_psync_reply(&Frame::Error(Bytes::from("NOMASTERLINK Can't SYNC")), "a");
        assert!(matches!(e, Err(SourceError::NoMasterLink { .. })));
        let e = parse_psync_reply(&Frame::Error(Bytes::from("LOADING Redis is loading")), "a");
        assert!(matches!(e, Err(SourceError::Loading { .. })));
        let e = parse_psync_reply(
            &Frame::Error(Bytes::from("ERR unknown command 'PSYNC'")),
            "n:1",
        );
        assert!(e.unwrap_err().to_string().contains("n:1"));
        assert!(parse_psync_reply(&Frame::Simple(Bytes::from("FULLRESYNC x y")), "a").is_err());
    }

    #[test]
    fn rdb_headers() {
        assert_eq!(parse_rdb_header(b"$123"), Some(RdbTransfer::Length(123)));
        let mark = [b'a'; 40];
        let mut line = b"$EOF:".to_vec();
        line.extend_from_slice(&mark);
        assert_eq!(parse_rdb_header(&line), Some(RdbTransfer::Eof(mark)));
        assert_eq!(parse_rdb_header(b"$EOF:short"), None);
        assert_eq!(parse_rdb_header(b"+OK"), None);
        let mut b = BytesMut::from(&b"\n\n\n$5\r\n"[..]);
        assert_eq!(skip_newlines(&mut b), 3);
    }
}
