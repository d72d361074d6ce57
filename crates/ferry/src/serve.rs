//! `ferry serve`: the job service (REST API, web console, `/metrics`) until SIGINT/SIGTERM.

use std::net::SocketAddr;

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
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let service = Service::start(ServeOptions {
        listen: args.listen,
        store: args.store,
        token: args.token,
    })
    .await
    .context("cannot start the service")?;
    println!("ferry service on http://{}/", service.addr());
    let cancel = CancellationToken::new();
    crate::stop_on_signals(cancel.clone());
    cancel.cancelled().await;
    service.shutdown().await;
    Ok(())
}
