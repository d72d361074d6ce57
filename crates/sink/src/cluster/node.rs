//! One master's connection: a writer task sending flights of units and a reader task
//! checking their replies, reporting each flight's answer (applied, refused, or the
//! connection lost) back to the writer.

use super::*;

#[derive(Debug, Default)]
pub(super) struct SlotState {
    pub(super) pending: VecDeque<Item>,
    /// Units refused (redirected) or unanswered, sent again before anything else.
    pub(super) retry: VecDeque<Unit>,
    pub(super) inflight: Option<u64>,
    pub(super) not_before: Option<Instant>,
    /// Listed in `ready`.
    pub(super) listed: bool,
}

impl SlotState {
    pub(super) fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.retry.is_empty()
    }
}

/// A batch sent to a master: units of any number of its slots (each slot's in order), until
/// its replies are in.
pub(super) struct Flight {
    pub(super) addr: String,
    /// Shared with the master's connection task, which writes their bytes and checks
    /// their replies: nothing is copied per unit to send it.
    pub(super) units: Arc<Vec<Unit>>,
    /// The slots it carries units of; none of them has another flight.
    pub(super) slots: Vec<u16>,
    pub(super) weight: usize,
}

/// A flight being filled for one master: its units, their slots, their bytes.
pub(super) type OpenFlight = (Vec<Unit>, Vec<u16>, usize);

/// A transaction being built: its bytes, how many commands it queues, and the unit's
/// figures.
pub(super) type OpenTxn = (BytesMut, u32, Unit);

pub(super) struct NodeBatch {
    pub(super) id: u64,
    pub(super) units: Arc<Vec<Unit>>,
}

#[derive(Debug)]
pub(super) enum Refusal {
    Moved(String),
    /// `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the same owner, a little later.
    Later(String),
}

/// How a master answered one unit.
pub(super) enum Answer {
    Applied,
    Refused(Refusal),
    /// A pack whose listed commands (index, refusal) were refused; the others are applied.
    Partly(Vec<(u32, Refusal)>),
}

pub(super) enum Report {
    Done { id: u64, results: Vec<Answer> },
    Lost { addr: String, error: TargetError },
    Failed { error: TargetError },
}

pub(super) fn refusal(message: &[u8]) -> Option<Refusal> {
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
pub(super) fn spawn_node(
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

pub(super) async fn read_node(
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
pub(super) enum Stop {
    Lost(TargetError),
    Failed(TargetError),
}

impl Stop {
    /// A malformed reply from the master at `addr`.
    pub(super) fn protocol(addr: &str, source: frame::DecodeError) -> Stop {
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
pub(super) async fn next_reply(
    rd: &mut Replies,
    buf: &mut BytesMut,
    dead: &CancellationToken,
    addr: &str,
    ok: bool,
) -> Result<Option<Frame>, Stop> {
    loop {
        // A malformed reply fails the writer; a connection gone may have its batches resent.
        if let Some(reply) = rd.try_next(buf, ok).map_err(Stop::Failed)? {
            return Ok(reply);
        }
        read_more(rd, buf, dead, addr).await.map_err(Stop::Lost)?;
    }
}

/// The replies to one unit: all of them are read; the first refusal refuses the unit
/// (replies after it, `EXECABORT`, only echo it), another error fails the writer.
pub(super) async fn read_unit(
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
pub(super) async fn read_pack(
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
pub(super) async fn read_txn(
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

pub(super) const QUEUED: &[u8] = b"+QUEUED\r\n";

/// The error naming the `i`th command queued in a transaction unit, read back from the
/// bytes it sent (only when an error needs it) with its offset and db from the unit's
/// events; `None` for ferry's own checkpoint `SET`, which is no source command.
pub(super) fn txn_failure(
    unit: &Unit,
    i: usize,
    message: &[u8],
    addr: &str,
) -> Option<TargetError> {
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
pub(super) fn txn_command_argv(bytes: &Bytes, i: usize) -> Option<Vec<Bytes>> {
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
pub(super) fn txn_command_name(bytes: &Bytes, i: usize) -> String {
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
pub(super) async fn read_more(
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

pub(super) fn closed(addr: &str, context: &str) -> TargetError {
    ferry_resp::Error::Closed {
        addr: addr.to_string(),
        context: Some(context.into()),
    }
    .into()
}
