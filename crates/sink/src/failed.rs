//! Replicated commands the target refuses: by default the writer stops with
//! [`TargetError::CommandFailed`] (permanent: the rest of the batch and its checkpoint may
//! be committed, so a retry would resume past the command); under
//! `--skip-failed-commands` each is logged, counted in
//! [`ShardStats::commands_failed`](ferry_core::ShardStats) and gone past.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferry_core::ShardStats;
use tracing::warn;

use crate::error::TargetError;
use crate::writer::WriterOptions;

/// Where a command refused by the target goes: an error, or a warning and a count.
#[derive(Debug, Clone)]
pub(crate) struct Failures {
    pub skip: bool,
    /// `--skip-unsupported`: [`TargetError::Unsupported`] is counted and gone past too.
    pub skip_unsupported: bool,
    /// The target held nothing of anyone else when the job began: a snapshot key found
    /// already there is the snapshot's own second copy ([`TargetError::DuplicateKey`]).
    pub target_was_empty: bool,
    pub stats: Arc<ShardStats>,
}

impl Failures {
    /// What the writer's options say (`--skip-failed-commands`, `--skip-unsupported`).
    pub fn new(opts: &WriterOptions, stats: &Arc<ShardStats>) -> Failures {
        Failures {
            skip: opts.skip_failed_commands,
            skip_unsupported: opts.skip_unsupported,
            target_was_empty: opts.target_was_empty,
            stats: stats.clone(),
        }
    }

    /// A snapshot key's refusal, the same rule for both writers: one the target can never
    /// take is skipped and counted under `--skip-unsupported` (`Ok(())`: the key is not
    /// applied), a key already there on a target that was empty is the source's duplicate,
    /// anything else stays the error it is.
    pub fn snapshot_key(&self, e: TargetError, db: u32) -> Result<(), TargetError> {
        match e {
            TargetError::KeyExists { addr, key } if self.target_was_empty => {
                Err(TargetError::DuplicateKey { addr, key, db })
            }
            e @ TargetError::Unsupported { .. } => self.handle(e),
            e => Err(e),
        }
    }

    /// `Ok` when `e` is a failed command and the user chose to skip such commands.
    pub fn handle(&self, e: TargetError) -> Result<(), TargetError> {
        match e {
            TargetError::CommandFailed {
                addr,
                command,
                key,
                db,
                offset,
                message,
            } if self.skip => {
                self.stats.commands_failed.fetch_add(1, Relaxed);
                warn!(target = %addr, %command, %key, db, offset, error = %message, "skipped a command the target refused (--skip-failed-commands)");
                Ok(())
            }
            TargetError::Unsupported {
                addr,
                what,
                message,
            } if self.skip_unsupported => {
                self.stats.unsupported_skipped.fetch_add(1, Relaxed);
                warn!(target = %addr, error = %message, "skipped {what}, which the target cannot hold (--skip-unsupported)");
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// Errors a master gives for a moment (memory full, loading, a failover, a busy script):
/// refused at queue time they abort the `EXEC` whole, so nothing was applied and a retry
/// can succeed. Any other refusal is the command's own and would recur.
pub(crate) fn is_transient(message: &[u8]) -> bool {
    const TRANSIENT: &[&[u8]] = &[
        b"OOM",
        b"BUSY",
        b"LOADING",
        b"READONLY",
        b"MASTERDOWN",
        b"TRYAGAIN",
        b"CLUSTERDOWN",
        b"NOREPLICAS",
        b"MOVED",
        b"ASK",
    ];
    TRANSIENT
        .iter()
        .any(|p| message.starts_with(p) && message.get(p.len()).is_none_or(|&b| b == b' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_refusals() {
        assert!(is_transient(b"OOM command not allowed"));
        assert!(is_transient(b"MOVED 3999 127.0.0.1:6381"));
        assert!(is_transient(b"BUSY Redis is busy running a script"));
        assert!(!is_transient(b"BUSYKEY Target key name already exists."));
        assert!(!is_transient(b"ERR unknown command 'FOO'"));
        assert!(!is_transient(b"WRONGTYPE Operation against a key"));
    }

    fn failures(skip_unsupported: bool, target_was_empty: bool) -> Failures {
        Failures {
            skip: false,
            skip_unsupported,
            target_was_empty,
            stats: Arc::new(ShardStats::default()),
        }
    }

    fn exists() -> TargetError {
        TargetError::KeyExists {
            addr: "t:1".into(),
            key: "k".into(),
        }
    }

    fn unsupported() -> TargetError {
        TargetError::Unsupported {
            addr: "t:1".into(),
            what: "key \"m\"".into(),
            message: "ERR Bad data format".into(),
        }
    }

    /// The one rule both writers apply to a refused snapshot key.
    #[test]
    fn a_refused_snapshot_key_is_skipped_named_or_kept_as_it_is() {
        // What the target can never hold: an error, or skipped and counted.
        let f = failures(false, true);
        assert!(matches!(
            f.snapshot_key(unsupported(), 0),
            Err(TargetError::Unsupported { .. })
        ));
        let f = failures(true, true);
        assert!(f.snapshot_key(unsupported(), 0).is_ok());
        assert_eq!(f.stats.unsupported_skipped.load(Relaxed), 1);
        // A key already there: the snapshot's own duplicate on a target that was empty,
        // else the target's key (an error naming it), skipped or not.
        match failures(true, true).snapshot_key(exists(), 3) {
            Err(TargetError::DuplicateKey { key, db, .. }) => {
                assert_eq!((key.as_str(), db), ("k", 3))
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            failures(true, false).snapshot_key(exists(), 3),
            Err(TargetError::KeyExists { .. })
        ));
        // Anything else stays what it is.
        let other = TargetError::Fenced { addr: "t:1".into() };
        assert!(matches!(
            failures(true, true).snapshot_key(other, 0),
            Err(TargetError::Fenced { .. })
        ));
    }
}
