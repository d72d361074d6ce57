//! `ferry serve`: the job service (REST API, web console, `/metrics`) until SIGINT/SIGTERM.

use std::net::SocketAddr;

use crate::out::outln;
use anyhow::Context;
use ferry_service::{ServeOptions, Service};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: put a proxy with TLS in front to expose it).
    #[arg(long, default_value = "127.0.0.1:7379")]
    listen: SocketAddr,
    /// Job store: sqlite://PATH (created 0600) or postgres://user:pass@host/db.
    #[arg(long, env = "FERRY_STORE", default_value = "sqlite://ferry.db")]
    store: String,
    /// Require `Authorization: Bearer TOKEN` on every API call and on /metrics.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Several workers on one PostgreSQL store: the lease of a task (one source shard of a
    /// job) lasts this long without renewal (renewed every third of it); a dead worker's
    /// tasks move after it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_seconds: u64,
    /// On SIGINT/SIGTERM, hand the tasks over one at a time, each once another worker runs
    /// the one before, then exit (without it: stop them all and release their leases).
    #[arg(long)]
    drain: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Held until the process exits: one `ferry serve` per SQLite store.
    let _store_lock = crate::storelock::lock(&args.store)?;
    let service = Service::start(ServeOptions {
        token: args.token,
        lease: std::time::Duration::from_secs(args.lease_seconds),
        drain: args.drain,
        ..ServeOptions::new(args.listen, args.store)
    })
    .await
    .context("cannot start the service")?;
    outln!("ferry service on http://{}/", service.addr());
    outln!("worker {}", service.worker_id());
    let cancel = CancellationToken::new();
    crate::stop_on_signals(cancel.clone());
    cancel.cancelled().await;
    service.shutdown().await;
    Ok(())
}
