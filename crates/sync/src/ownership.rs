//! Before a job's first write: does it own its target? See [`ferry_target::owner`]. A job
//! that finds its target empty owns it; one that finds other data is refused unless the user
//! allowed that (`allow_nonempty_target`, or `overwrite`), and then shares the target: it
//! never flushes it unless `allow_flush` says so.

use ferry_resp::Endpoint;
use ferry_target::owner::{self, Ownership};
use ferry_target::TargetError;
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
