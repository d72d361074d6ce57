//! The reply task: replies read in order and checked against their expectations, the
//! applied offset advanced as they confirm what was sent.

use super::*;

/// Reads replies in order and checks each against what its command expects.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_replies(
    mut rd: Replies,
    mut buf: BytesMut,
    mut exp_rx: mpsc::Receiver<Vec<Expect>>,
    addr: String,
    stats: Arc<ShardStats>,
    checkpointed: bool,
    failures: Failures,
) -> Result<WriteSummary, TargetError> {
    let mut summary = WriteSummary::default();
    // The batch being answered, consumed in place (moving each batch into a VecDeque
    // copied every expectation once more).
    let mut queue = Vec::<Expect>::new().into_iter().peekable();
    loop {
        if queue.peek().is_none() {
            match exp_rx.recv().await {
                Some(batch) => queue = batch.into_iter().peekable(),
                None => return Ok(summary),
            }
        }
        // Markers need no reply: apply them as soon as they reach the front.
        loop {
            match queue.peek() {
                Some(Expect::Mark { offset }) => stats.applied_offset.set(*offset),
                Some(Expect::SnapshotApplied) => {
                    stats.set_snapshot_unapplied(false);
                    info!(target = %addr, keys = summary.keys, "snapshot applied")
                }
                _ => break,
            }
            queue.next();
        }
        let Some(expect) = queue.next() else {
            continue;
        };
        // A snapshot key's `+OK` is by far the most common reply: counted without building
        // a frame.
        let restore = matches!(expect, Expect::Restore { .. });
        let Some(reply) = rd.next(&mut buf, restore).await? else {
            summary.keys += 1;
            stats.keys_applied.fetch_add(1, Relaxed);
            stats.records_applied.fetch_add(1, Relaxed);
            continue;
        };
        match (&expect, &reply) {
            // Each command that failed inside a committed EXEC: the rest of it is applied.
            (
                Expect::Exec {
                    names, must_exist, ..
                },
                Frame::Array(items),
            ) => {
                checkpoint_kept(must_exist.as_ref(), items, &addr)?;
                for e in exec_failures(names, items, &addr) {
                    failures.handle(e)?;
                }
            }
            // Refused at queue time, the whole EXEC is aborted: skipping the one command
            // would drop its batch, so this always stops.
            (Expect::Queued { .. }, _) => check_reply(&expect, &reply, &addr)?,
            _ => match check_reply(&expect, &reply, &addr) {
                Err(e @ TargetError::CommandFailed { .. }) => failures.handle(e)?,
                Err(e @ (TargetError::Unsupported { .. } | TargetError::KeyExists { .. })) => {
                    let db = match &expect {
                        Expect::Restore { db, .. } => *db,
                        _ => 0,
                    };
                    failures.snapshot_key(e, db)?;
                    // Skipped: not applied.
                    continue;
                }
                r => r?,
            },
        }
        match expect {
            Expect::Restore { .. } => {
                summary.keys += 1;
                stats.keys_applied.fetch_add(1, Relaxed);
                stats.records_applied.fetch_add(1, Relaxed);
            }
            Expect::Command { offset, .. } => {
                summary.commands += 1;
                stats.records_applied.fetch_add(1, Relaxed);
                if let Some(o) = offset {
                    stats.applied_offset.set(o);
                }
            }
            Expect::Queued { .. } if !checkpointed => {
                summary.commands += 1;
                stats.records_applied.fetch_add(1, Relaxed);
            }
            Expect::Exec {
                names,
                offset,
                folded,
                ..
            } => {
                let n = names.iter().filter(|c| c.counted).count() as u64 + folded;
                summary.commands += n;
                stats.records_applied.fetch_add(n, Relaxed);
                if let Some(o) = offset {
                    stats.applied_offset.set(o);
                }
            }
            Expect::Rewrite { last: true, .. } => {
                summary.keys += 1;
                stats.keys_applied.fetch_add(1, Relaxed);
                stats.records_applied.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
}
