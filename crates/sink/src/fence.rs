//! Cutting an earlier lease holder off the target. With several `ferry serve` workers, a
//! worker frozen past its lease may still hold writer connections with batches queued in
//! them. Each writer connection is named `ferry-<job>-g<generation>`; a new holder closes
//! the connections of older generations on every target node *before* it reads the
//! checkpoint, so a batch of the old holder either committed before (and its checkpoint is
//! read) or never will (a closed connection's open transaction is discarded).

use std::sync::Arc;

use ferry_resp::{Connection, Endpoint};
use tracing::warn;

use crate::error::TargetError;

/// The client name of a writer connection of `job` under lease `generation`.
pub fn client_name(job: &str, generation: u64) -> String {
    format!("ferry-{job}-g{generation}")
}

/// The generation in a client name of `job`'s writers, if it is one.
fn generation_of(name: &str, job: &str) -> Option<u64> {
    name.strip_prefix("ferry-")?
        .strip_prefix(job)?
        .strip_prefix("-g")?
        .parse()
        .ok()
}

/// Closes, on `node`, every writer connection of `job` from a generation below
/// `generation`. Returns how many were closed.
pub async fn cut_off_older(
    node: &Endpoint,
    job: &str,
    generation: u64,
) -> Result<u64, TargetError> {
    let mut conn = Connection::connect(node).await?;
    let list = conn
        .request(&["CLIENT", "LIST", "TYPE", "normal"])
        .await?
        .to_text();
    let mut closed = 0;
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let (Some(id), Some(name)) = (field("id"), field("name")) else {
            continue;
        };
        if generation_of(name, job).is_some_and(|g| g < generation) {
            conn.request(&["CLIENT", "KILL", "ID", id]).await?;
            closed += 1;
            warn!(target = %node, client = name, "closed a writer connection of an earlier lease holder");
        }
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_generation() {
        assert_eq!(client_name("job-1", 7), "ferry-job-1-g7");
        assert_eq!(generation_of("ferry-job-1-g7", "job-1"), Some(7));
        assert_eq!(generation_of("ferry-job-11-g7", "job-1"), None);
        assert_eq!(generation_of("other", "job-1"), None);
    }
}

/// Whether the writer may still write: checked before every batch is sent, before every
/// reconnection and before resending what a lost connection left unanswered. Under a worker
/// lease it returns `false` once the lease has lapsed; the writer then stops with
/// [`TargetError::Fenced`] and sends nothing more.
#[derive(Clone)]
pub struct StillValid(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl StillValid {
    pub fn new(f: impl Fn() -> bool + Send + Sync + 'static) -> StillValid {
        StillValid(Arc::new(f))
    }

    fn check(&self, addr: &str) -> Result<(), TargetError> {
        if (self.0)() {
            Ok(())
        } else {
            Err(TargetError::Fenced {
                addr: addr.to_string(),
            })
        }
    }
}

impl std::fmt::Debug for StillValid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StillValid(..)")
    }
}

pub(crate) fn still_valid(hook: &Option<StillValid>, addr: &str) -> Result<(), TargetError> {
    hook.as_ref().map_or(Ok(()), |h| h.check(addr))
}
