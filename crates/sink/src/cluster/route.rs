//! Where a replicated command goes on a cluster: one slot, several (split by slot), every
//! master, or nowhere it can run.

use super::*;

/// What to do with one replicated command on a cluster.
#[derive(Debug, PartialEq)]
pub(super) enum Route {
    /// Per slot, the command (or the part of it) that slot's master applies.
    Slots(Vec<(u16, Vec<Bytes>)>),
    /// Sent to every master (`FLUSHALL`, `FUNCTION LOAD`, …): the command, given back.
    Broadcast(Vec<Bytes>),
}

pub(super) fn refuse(addr: &str, argv: &[Bytes], why: &str) -> TargetError {
    TargetError::Incompatible {
        addr: addr.to_string(),
        message: format!(
            "cannot apply {} on a cluster target: {why}",
            lossy(&argv[0]).to_uppercase()
        ),
    }
}

/// Splits a command whose keys may span slots where its meaning allows.
pub(super) fn route_command(argv: Vec<Bytes>, addr: &str) -> Result<Route, TargetError> {
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
