//! ferry's job service: a store of jobs and saved endpoints (SQLite or PostgreSQL), a
//! REST API, the web console, and Prometheus metrics. It drives `ferry_sync` through the
//! same API the CLI uses; jobs that were running when the service stopped are started
//! again when it starts, and resume from their checkpoints.

pub mod api;
pub mod console;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

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
}

impl Service {
    /// Opens the store, restarts the jobs that were running, and starts listening.
    pub async fn start(opts: ServeOptions) -> Result<Service, ServiceError> {
        let store = Store::open(&opts.store).await?;
        let manager = runner::Manager::new(store.clone());
        for row in store.jobs().await? {
            if row.desired_state != "running" {
                continue;
            }
            match row.spec.config() {
                Ok(config) => {
                    info!(job = %row.spec.name, "resuming job");
                    let _ = store.event(row.id, "resumed after a service restart").await;
                    manager.start(row.id, config, row.totals);
                }
                Err(e) => warn!(job = %row.spec.name, error = %e, "cannot resume job"),
            }
        }
        let app = Arc::new(api::App {
            store,
            manager,
            token: opts.token.filter(|t| !t.is_empty()),
        });
        if !opts.listen.ip().is_loopback() && app.token.is_none() {
            warn!(listen = %opts.listen, "listening beyond loopback without a token: anyone who can reach it can read and change jobs");
        }
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
        info!(%addr, "ferry service listening");
        Ok(Service {
            addr,
            app,
            cancel,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and stops every job cleanly, leaving their stored state as it is
    /// so that the next start resumes them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.server.await;
        self.app.manager.shutdown().await;
        self.app.store.close().await;
    }
}
