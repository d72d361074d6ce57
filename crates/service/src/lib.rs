//! ferry's job service: a store of jobs and saved endpoints (SQLite or PostgreSQL), a
//! REST API, the web console, and Prometheus metrics. It drives `ferry_sync` through the
//! same API the CLI uses; jobs that were running when the service stopped are started
//! again when it starts, and resume from their checkpoints.

pub mod api;
pub mod console;
pub mod cutover;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod store;
pub mod workers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use model::{EndpointSpec, Instance, JobSpec};
pub use store::{Store, StoreError};

/// How `ferry serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`.
    pub store: String,
    /// Every API call and `/metrics` then need `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// A task's lease (one source shard of a job) lasts this long without renewal (renewed
    /// every third of it).
    pub lease: Duration,
    /// On shutdown, hand the tasks over one at a time, each once another worker runs it.
    pub drain: bool,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr, store: String) -> ServeOptions {
        ServeOptions {
            listen,
            store,
            token: None,
            lease: Duration::from_secs(15),
            drain: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running service.
pub struct Service {
    addr: SocketAddr,
    app: Arc<api::App>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
    drain: bool,
}

impl Service {
    /// Opens the store, restarts the jobs that were running, and starts listening.
    pub async fn start(opts: ServeOptions) -> Result<Service, ServiceError> {
        let store = Store::open(&opts.store).await?;
        if !store.is_postgres() {
            // One process per SQLite store: whatever an earlier one held is void.
            store.clear_leases().await?;
        }
        let manager = runner::Manager::new(store.clone());
        let resumed: HashSet<i64> = store
            .jobs()
            .await?
            .iter()
            .filter(|r| r.desired_state == store::Desired::Running)
            .map(|r| r.id)
            .collect();
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServiceError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServiceError::Listen {
                addr: opts.listen,
                source,
            })?;
        let worker_id = format!(
            "{addr}-{}-{:x}",
            std::process::id(),
            store::now_ms() & 0xff_ffff
        );
        let workers = workers::Workers::new(
            worker_id,
            addr.to_string(),
            opts.lease.max(Duration::from_secs(1)),
            store.clone(),
            manager.clone(),
            resumed,
        );
        let app = Arc::new(api::App {
            store,
            manager,
            workers: workers.clone(),
            token: opts.token.filter(|t| !t.is_empty()),
        });
        if !opts.listen.ip().is_loopback() && app.token.is_none() {
            warn!(listen = %opts.listen, "listening beyond loopback without a token: anyone who can reach it can read and change jobs");
        }
        let cancel = CancellationToken::new();
        let router = api::routes(app.clone());
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                warn!(error = %e, "HTTP server ended");
            }
        });
        let worker = workers.spawn(cancel.clone());
        info!(%addr, worker = %workers.id(), "ferry service listening");
        Ok(Service {
            addr,
            app,
            cancel,
            server,
            worker,
            drain: opts.drain,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn worker_id(&self) -> &str {
        self.app.workers.id()
    }

    /// Stops listening and stops every job cleanly, leaving their stored state as it is
    /// so that another worker (or the next start) resumes them: their leases are
    /// released. With `drain`, each job is handed over once another worker runs the one
    /// before.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.server.await;
        let _ = self.worker.await;
        self.app.workers.drain(self.drain).await;
        self.app.manager.shutdown().await;
        self.app.store.close().await;
    }
}
