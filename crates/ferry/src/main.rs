//! The `ferry` command: glue between the command line and the job crates.

mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_sync::{FileConfig, ShardStats};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Copy one Redis deployment into another and keep it in step"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProgressMode {
    /// A live line when stdout is a terminal, log lines otherwise.
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the source into the target (snapshot, then every later write).
    Sync(SyncArgs),
}

#[derive(clap::Args)]
struct SyncArgs {
    /// Job settings in TOML (source, target, mode, overwrite); flags override them.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Source node: redis://[user:pass@]host:port (user and password percent-encoded).
    #[arg(long, env = "FERRY_SOURCE")]
    source: Option<String>,
    /// Target node: redis://[user:pass@]host:port.
    #[arg(long, env = "FERRY_TARGET")]
    target: Option<String>,
    /// full, incremental or full+incremental (default).
    #[arg(long)]
    mode: Option<String>,
    /// Replace keys that already exist on the target instead of failing.
    #[arg(long)]
    overwrite: bool,
    /// Values bigger than this many bytes (serialized) are written as chunks of plain
    /// commands instead of one RESTORE.
    #[arg(long, value_name = "BYTES")]
    big_key_threshold: Option<usize>,
    /// Plain lists, sets, sorted sets and hashes with at least this many elements (streams
    /// and quicklists with a fiftieth as many nodes) are read and written in chunks.
    #[arg(long, value_name = "N")]
    big_key_elements: Option<u64>,
    /// Skip (and count) keys the target cannot hold, such as module values or hash field
    /// TTLs on a target before Redis 7.4, instead of stopping.
    #[arg(long)]
    skip_unsupported: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Sync(args) => sync(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels the token on SIGINT or SIGTERM.
fn stop_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("stopping: finishing the writes in flight");
        cancel.cancel();
    });
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let job = file.merge(FileConfig {
        source: args.source,
        target: args.target,
        mode: args.mode,
        overwrite: args.overwrite.then_some(true),
        big_key_threshold: args.big_key_threshold,
        big_key_elements: args.big_key_elements,
        skip_unsupported: args.skip_unsupported.then_some(true),
    })?;
    info!(source = %job.source, target = %job.target, mode = %job.mode, "starting sync");
    let stats = Arc::new(ShardStats::default());
    let cancel = CancellationToken::new();
    stop_on_signals(cancel.clone());
    let tty = match args.progress {
        ProgressMode::Auto => std::io::stdout().is_terminal(),
        ProgressMode::Always => true,
        ProgressMode::Never => false,
    };
    let display = progress::spawn(stats.clone(), tty, cancel.child_token());
    let started = Instant::now();
    let outcome = ferry_sync::run(job, stats.clone(), cancel.clone())
        .await
        .context("sync failed");
    display.finish().await;
    let outcome = outcome?;
    let secs = started.elapsed().as_secs_f64();
    if outcome.completed {
        println!("full sync complete: {} keys in {:.2} s", outcome.keys, secs);
    } else {
        println!(
            "stopped: {} keys and {} commands applied in {:.2} s",
            outcome.keys, outcome.commands, secs
        );
    }
    Ok(())
}
