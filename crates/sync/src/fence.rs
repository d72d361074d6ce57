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
}

impl Fence {
    /// `cancel` is the job's own token: the fence cancels the job when it trips.
    pub fn new(valid_until: Instant, cancel: CancellationToken) -> Arc<Fence> {
        Arc::new(Fence {
            valid_until: Mutex::new(valid_until),
            cancel,
        })
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
