//! Before a job's first write: does it own its target? See [`ferry_sink::owner`]. A job
//! that finds its target empty owns it; one that finds other data is refused unless the user
//! allowed that (`allow_nonempty_target`, or `overwrite`), and then shares the target: it
//! never flushes it unless `allow_flush` says so.

use ferry_resp::Endpoint;
use ferry_sink::owner::{self, Ownership};
use ferry_sink::TargetError;
use tracing::{info, warn};

use crate::config::{JobConfig, Mode};

/// The job's ownership of `target`: the one recorded there, else `remembered` (what an
/// earlier attempt of this process established: a target that lost data under ferry is
/// still the job's), else found out now. The second value is true when the record is still
/// to be written (the writer does it, first thing, with `SET … NX`).
pub async fn establish(
    config: &JobConfig,
    target: &Endpoint,
    cluster: bool,
    resuming: bool,
    remembered: Option<Ownership>,
) -> Result<(Ownership, bool), TargetError> {
    if config.checkpoint {
        if let Some(o) = owner::read(target, cluster, &config.name).await? {
            return Ok((o, false));
        }
    }
    let found = match remembered {
        Some(o) => o,
        // A checkpoint from before ownership was recorded: nothing says the job found its
        // target empty, so it deletes nothing.
        None if resuming => Ownership::Shared,
        None => match owner::foreign_key(target, cluster, &config.name).await? {
            None => Ownership::Owned,
            Some(foreign) => {
                // Another shard of this job may have recorded it and started writing since.
                if let Some(o) = owner::read(target, cluster, &config.name).await? {
                    return Ok((o, false));
                }
                let allowed = config.allow_nonempty_target
                    || config.overwrite
                    || config.mode == Mode::Incremental;
                if !allowed {
                    return Err(TargetError::NotEmpty {
                        addr: foreign.addr,
                        keys: foreign.total,
                        db: foreign.db,
                        example: String::from_utf8_lossy(&foreign.key).into_owned(),
                    });
                }
                info!(target = %target, keys = foreign.total,
                      "the target holds other data: this job shares it and will delete nothing there");
                Ownership::Shared
            }
        },
    };
    // Without checkpoints ferry leaves no key of its own on the target: the answer lasts
    // for this run only.
    if !config.checkpoint {
        return Ok((found, false));
    }
    if remembered.is_some() {
        warn!(target = %target, "the job's ownership record was gone from the target: written again");
    }
    Ok((found, true))
}

/// A deleted job's traces on its target: every shard's checkpoint (a cluster target keeps
/// one per slot besides) and its ownership record, so a new job of that name decides anew.
/// Every part is tried; the last failure is returned, naming what stayed behind.
pub async fn forget_job(
    target: &Endpoint,
    cluster: bool,
    name: &str,
    shards: &[String],
) -> Result<(), String> {
    let mut failed = None;
    for shard in shards {
        let key = ferry_sink::checkpoint::key(name, shard);
        let deleted = if cluster {
            ferry_sink::delete_cluster_checkpoint(target, name, shard).await
        } else {
            ferry_sink::checkpoint::delete(target, &key).await
        };
        if let Err(e) = deleted {
            failed = Some(format!(
                "the checkpoint {} could not be deleted from the target: {e}",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    if let Err(e) = owner::forget(target, cluster, name).await {
        failed = Some(format!(
            "the job's ownership record could not be deleted from the target: {e}"
        ));
    }
    failed.map_or(Ok(()), Err)
}
