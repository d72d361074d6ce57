//! A job run under a lease (several `ferry serve` workers): the lease holder keeps the
//! fence's deadline ahead while it renews the lease; once the deadline passes (the lease
//! could not be renewed, or the process was frozen past it) nothing more is handed to the
//! writer and the job is cancelled. Checked on the local monotonic clock for every event
//! between reader and writer, so a worker that wakes up late cannot apply what it reads
//! after waking; only the events already handed to the writer can still land.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Fence {
    valid_until: Mutex<Instant>,
    cancel: CancellationToken,
    /// The lease generation this run holds: its writer connections carry it in their
    /// client name, so a later holder can cut them off the target (see `job.rs`).
    generation: u64,
}

impl Fence {
    /// `cancel` is the job's own token: the fence cancels the job when it trips.
    pub fn new(valid_until: Instant, cancel: CancellationToken) -> Arc<Fence> {
        Fence::with_generation(valid_until, cancel, 0)
    }

    pub fn with_generation(
        valid_until: Instant,
        cancel: CancellationToken,
        generation: u64,
    ) -> Arc<Fence> {
        Arc::new(Fence {
            valid_until: Mutex::new(valid_until),
            cancel,
            generation,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The lease was renewed: writes may go on until `until`.
    pub fn extend(&self, until: Instant) {
        if let Ok(mut v) = self.valid_until.lock() {
            *v = (*v).max(until);
        }
    }

    pub fn is_valid(&self) -> bool {
        self.valid_until
            .lock()
            .map(|v| Instant::now() < *v)
            .unwrap_or(false)
    }

    /// Stops the job.
    pub fn trip(&self) {
        self.cancel.cancel();
    }

    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lapses_at_its_deadline_and_only_moves_forward() {
        let now = Instant::now();
        let f = Fence::new(now + Duration::from_secs(60), CancellationToken::new());
        assert!(f.is_valid());
        f.extend(now); // an older renewal answered late does not shorten it
        assert!(f.is_valid());
        let g = Fence::new(now, CancellationToken::new());
        assert!(!g.is_valid());
        g.extend(now + Duration::from_secs(60));
        assert!(g.is_valid());
        g.trip();
        assert!(g.token().is_cancelled());
    }
}
