//! What each command's reply must say ([`Expect`]), and the one check of a reply against
//! it: a refusal named by command, key and offset, the errors inside an `EXEC`, a
//! checkpoint that vanished.

use super::*;

/// What one command's reply means to the writer.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// A snapshot key; its name for the error message.
    Restore {
        key: Bytes,
        /// The source db (0 where unknown).
        db: u32,
    },
    /// A replicated command; `offset` set when its reply means "applied" (not queued in a
    /// MULTI).
    Command {
        name: Bytes,
        key: Option<Bytes>,
        offset: Option<u64>,
        db: u32,
    },
    /// `MULTI`, `SELECT`: protocol replies that must be OK.
    Control {
        what: &'static str,
    },
    /// A command queued inside MULTI: `+QUEUED`; for an error, the source command's key
    /// and (offset, db) when it is one.
    Queued {
        name: Bytes,
        key: Option<Bytes>,
        at: Option<(u64, u32)>,
    },
    /// Nothing was sent: everything of the snapshot before it is applied.
    SnapshotApplied,
    /// Nothing was sent: the offset is applied once everything before it is.
    Mark {
        offset: u64,
    },
    FunctionLoad,
    ScriptLoad,
    /// A checkpoint write (`GETSET`) outside a transaction; with `must_exist`, a missing
    /// old value means the target lost data.
    Checkpoint {
        key: Bytes,
        must_exist: bool,
    },
    /// The `EXEC` closing one of ferry's own transactions: one reply per queued command
    /// (`names`, with `counted` for the source's commands that count as records).
    Exec {
        names: Vec<TxnCmd>,
        offset: Option<u64>,
        /// The source's own MULTI/EXEC folded into this transaction: applied records too.
        folded: u64,
        /// The transaction ends with a `GETSET` of this checkpoint key, whose old value must
        /// exist (see [`WriterOptions::checkpoint_exists`]).
        must_exist: Option<Bytes>,
    },
    /// A command of a snapshot key rewritten into plain commands; `last` when it completes
    /// the key.
    Rewrite {
        key: Bytes,
        name: Bytes,
        check: Check,
        last: bool,
    },
}

/// One command queued in a transaction, for the error naming it should it fail in `EXEC`
/// (the names and keys are shared `Bytes` of the event: no copy).
#[derive(Debug, Clone)]
pub(crate) struct TxnCmd {
    pub name: Bytes,
    pub key: Option<Bytes>,
    pub db: u32,
    pub offset: u64,
    /// A source command that counts as a record (not ferry's `SELECT` or checkpoint).
    pub counted: bool,
}

impl TxnCmd {
    /// Ferry's own command inside its transaction (`SELECT`, the checkpoint's `SET`).
    pub(crate) fn own(name: &'static [u8]) -> TxnCmd {
        TxnCmd {
            name: Bytes::from_static(name),
            key: None,
            db: 0,
            offset: 0,
            counted: false,
        }
    }
}

impl Expect {
    /// `+QUEUED` expected for one of ferry's own commands.
    pub(crate) fn queued(name: &'static [u8]) -> Expect {
        Expect::Queued {
            name: Bytes::from_static(name),
            key: None,
            at: None,
        }
    }
}

/// The error naming a replicated command the target refused.
pub(crate) fn command_failed(
    addr: &str,
    name: &[u8],
    key: Option<&Bytes>,
    db: u32,
    offset: u64,
    message: &[u8],
) -> TargetError {
    TargetError::CommandFailed {
        addr: addr.to_string(),
        command: lossy(name).to_uppercase(),
        key: key.map(|k| lossy(k)).unwrap_or_default(),
        db,
        offset,
        message: lossy(message),
    }
}

/// The commands that failed inside a committed `EXEC`, by their place in it. Ferry's own
/// commands (`SELECT`, the checkpoint) failing is no source command's fault: those are
/// [`TargetError::Rejected`].
pub(super) fn exec_failures<'a>(
    names: &'a [TxnCmd],
    items: &'a [Frame],
    addr: &'a str,
) -> impl Iterator<Item = TargetError> + 'a {
    items.iter().enumerate().filter_map(move |(i, item)| {
        let Frame::Error(m) = item else {
            return None;
        };
        Some(match names.get(i) {
            Some(c) if c.name.as_ref() != b"SELECT" && c.name.as_ref() != b"SET checkpoint" => {
                command_failed(addr, &c.name, c.key.as_ref(), c.db, c.offset, m)
            }
            c => TargetError::Rejected {
                addr: addr.to_string(),
                command: c.map_or("a command".into(), |c| lossy(&c.name).to_uppercase())
                    + " (in a checkpointed batch)",
                message: lossy(m),
            },
        })
    })
}

/// A transaction that ends with the `GETSET` of a checkpoint that must exist: its old value,
/// the last reply, must be there, or the target lost data under ferry.
pub(super) fn checkpoint_kept(
    must_exist: Option<&Bytes>,
    items: &[Frame],
    addr: &str,
) -> Result<(), TargetError> {
    match (must_exist, items.last()) {
        (Some(key), Some(Frame::Null)) => Err(TargetError::LostData {
            addr: addr.to_string(),
            key: lossy(key),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn check_reply(expect: &Expect, reply: &Frame, addr: &str) -> Result<(), TargetError> {
    let rejected = |command: String, message: String| TargetError::Rejected {
        addr: addr.to_string(),
        command,
        message,
    };
    let unsupported = |what: String, m: &[u8]| TargetError::Unsupported {
        addr: addr.to_string(),
        what,
        message: lossy(m),
    };
    match (expect, reply) {
        (Expect::Restore { key, db }, Frame::Error(m)) => {
            if m.starts_with(b"BUSYKEY") {
                Err(TargetError::KeyExists {
                    addr: addr.to_string(),
                    key: lossy(key),
                })
            } else if is_transient(m) {
                Err(rejected(format!("RESTORE {:?}", lossy(key)), lossy(m)))
            } else {
                // A payload the target cannot read (a module it lacks, a corrupt
                // encoding, an empty value): the same bytes are refused on every attempt.
                Err(unsupported(
                    format!("key {:?} (source db {db}; RESTORE)", lossy(key)),
                    m,
                ))
            }
        }
        (
            Expect::Command {
                name,
                key,
                offset: Some(offset),
                db,
            },
            Frame::Error(m),
        ) if !is_transient(m) && !name.eq_ignore_ascii_case(b"EXEC") => {
            Err(command_failed(addr, name, key.as_ref(), *db, *offset, m))
        }
        (Expect::Command { name, key, .. }, Frame::Error(m)) => {
            let cmd = match key {
                Some(k) => format!("{} {:?}", lossy(name).to_uppercase(), lossy(k)),
                None => lossy(name).to_uppercase(),
            };
            Err(rejected(cmd, lossy(m)))
        }
        (Expect::Command { name, .. }, Frame::Null) if name.eq_ignore_ascii_case(b"EXEC") => {
            Err(rejected(
                "EXEC".into(),
                "transaction aborted (a watched key changed)".into(),
            ))
        }
        (
            Expect::Queued {
                name,
                key,
                at: Some((offset, db)),
            },
            Frame::Error(m),
        ) if !is_transient(m) => Err(command_failed(addr, name, key.as_ref(), *db, *offset, m)),
        (Expect::Queued { name, .. }, Frame::Error(m)) => Err(rejected(
            format!("{} (inside MULTI)", lossy(name).to_uppercase()),
            lossy(m),
        )),
        (Expect::Control { what }, Frame::Error(m)) => Err(rejected(what.to_string(), lossy(m))),
        (Expect::FunctionLoad, Frame::Error(m)) if is_transient(m) => {
            Err(rejected("FUNCTION LOAD".into(), lossy(m)))
        }
        (Expect::FunctionLoad, Frame::Error(m)) => {
            if m.windows(14).any(|w| w == b"already exists") {
                Err(TargetError::LibraryExists {
                    addr: addr.to_string(),
                    message: lossy(m),
                })
            } else {
                Err(unsupported("a function library (FUNCTION LOAD)".into(), m))
            }
        }
        (Expect::ScriptLoad, Frame::Error(m)) if is_transient(m) => {
            Err(rejected("SCRIPT LOAD".into(), lossy(m)))
        }
        (Expect::ScriptLoad, Frame::Error(m)) => {
            Err(unsupported("a Lua script (SCRIPT LOAD)".into(), m))
        }
        (Expect::Exec { .. }, Frame::Error(m)) => Err(rejected("EXEC".into(), lossy(m))),
        (Expect::Exec { .. }, Frame::Null) => {
            Err(rejected("EXEC".into(), "transaction aborted".into()))
        }
        (Expect::Checkpoint { key, must_exist }, reply) => match reply {
            Frame::Error(m) => Err(rejected("GETSET checkpoint".into(), lossy(m))),
            Frame::Null if *must_exist => Err(TargetError::LostData {
                addr: addr.to_string(),
                key: lossy(key),
            }),
            _ => Ok(()),
        },
        (
            Expect::Exec {
                names, must_exist, ..
            },
            Frame::Array(items),
        ) => {
            checkpoint_kept(must_exist.as_ref(), items, addr)?;
            match exec_failures(names, items, addr).next() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        (
            Expect::Rewrite {
                key,
                check: Check::RenameNx | Check::RenameNxExpiring,
                ..
            },
            Frame::Integer(0),
        ) => Err(TargetError::KeyExists {
            addr: addr.to_string(),
            key: lossy(key),
        }),
        (Expect::Rewrite { check, .. }, Frame::Error(m))
            if matches!(check, Check::RenameExpiring | Check::RenameNxExpiring)
                && m.ends_with(b"no such key") =>
        {
            Ok(()) // it expired while being written
        }
        (Expect::Rewrite { key, name, .. }, Frame::Error(m)) => Err(rejected(
            format!(
                "{} while rewriting key {:?} into commands",
                lossy(name).to_uppercase(),
                lossy(key)
            ),
            lossy(m),
        )),
        _ => Ok(()),
    }
}
