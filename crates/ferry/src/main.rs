//! The `ferry` command: glue between the command line and the job crates.

mod check;
mod cutover;
mod jobcmd;
mod out;
mod probe;
mod progress;
mod scope_args;
mod serve;
mod status;
mod stop;
mod storelock;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::out::outln;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_sync::{FileConfig, JobStatus, RetryConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
    Sync(Box<SyncArgs>),
    /// Compare source and target key by key; exit 0 equal, 1 differences, 2 error.
    Verify(verify::VerifyArgs),
    /// Test connectivity and pre-check a job (same flags as sync); exit 0 pass, 1 warn, 2 fail.
    Check(Box<SyncArgs>),
    /// Run the job service: REST API, web console and /metrics.
    Serve(serve::ServeArgs),
    /// Manage the jobs of a running service.
    Job(jobcmd::JobArgs),
    /// Finish a migration while its job runs: pause the source's writes, prove the target
    /// holds every one, keep the source paused while clients move; exit 0 only then.
    Cutover(cutover::CutoverArgs),
    /// Where a job stands: its runs, each shard's checkpoint against the source, the lag
    /// in bytes and (measured) seconds.
    Status(status::StatusArgs),
    /// Print a shell completion script: `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (ferry.1 and one per subcommand) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub(crate) struct SyncArgs {
    /// Job settings in TOML (source, target, mode, overwrite); flags override them.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Source node: redis://[user:pass@]host:port (user and password percent-encoded);
    /// or files a Redis wrote: rdb:/path/dump.rdb, aof:/path/appendonlydir.
    #[arg(long, env = "FERRY_SOURCE")]
    source: Option<String>,
    /// Source topology: auto (default), standalone, replica-set, cluster or sentinel.
    #[arg(long)]
    source_type: Option<String>,
    /// Sentinel addresses (redis://[user:pass@]h:26379,h2:26379; the credentials are the
    /// data nodes'): the same as --source with --source-type sentinel.
    #[arg(long, conflicts_with = "source")]
    source_sentinel: Option<String>,
    /// Sentinel's name of the master to copy.
    #[arg(long)]
    source_master: Option<String>,
    /// Read each shard from a healthy replica when one exists (on by default), so the
    /// masters carry no load.
    #[arg(long, value_parser = ["on", "off"])]
    use_replica: Option<String>,
    /// How a live source is read: psync (as its replica), scan (SCAN + keyspace
    /// notifications, for sources that refuse PSYNC), auto (psync, scan if refused).
    #[arg(long, value_parser = ["psync", "scan", "auto"])]
    source_method: Option<String>,
    /// The name PSYNC goes by on the source, where a provider renamed it.
    #[arg(long, value_name = "NAME")]
    psync_command: Option<String>,
    /// AOF source: stop at the first timestamp annotation (#TS:) later than this.
    #[arg(long, value_name = "UNIX_SECONDS")]
    aof_until: Option<i64>,
    /// Target topology: auto (default), standalone, replica-set (writes go to its current
    /// master, followed through a failover), cluster or sentinel.
    #[arg(long)]
    target_type: Option<String>,
    /// Sentinel's name of the target's master.
    #[arg(long)]
    target_master: Option<String>,
    /// Target node: redis://[user:pass@]host:port.
    #[arg(long, env = "FERRY_TARGET")]
    target: Option<String>,
    /// full, incremental or full+incremental (default).
    #[arg(long)]
    mode: Option<String>,
    /// Replace keys that already exist on the target instead of failing.
    #[arg(long)]
    overwrite: bool,
    /// Accept a target that already holds keys this job did not write: they stay beside
    /// the copy, and the job never deletes anything there (see --allow-flush).
    #[arg(long)]
    allow_nonempty_target: bool,
    /// Let a new snapshot flush the target before it is applied even where the target held
    /// other data when the job started (by default ferry deletes only what it owns).
    #[arg(long)]
    allow_flush: bool,
    /// Start without running the pre-check first (`ferry check`); its failures otherwise
    /// stop `ferry sync` before anything is written.
    #[arg(long)]
    skip_precheck: bool,
    /// Job name: names the checkpoint kept on the target (default: the source address).
    /// A re-run with the same name resumes where the last one stopped.
    #[arg(long)]
    name: Option<String>,
    /// Keep a checkpoint on the target, written with the data it covers (on by default);
    /// off is faster but any failure means a new snapshot.
    #[arg(long, value_parser = ["on", "off"])]
    checkpoint: Option<String>,
    /// Limit what is read from the source, in MB/s (any positive number).
    #[arg(long, value_name = "MB_PER_SEC")]
    rate_limit: Option<f64>,
    /// A source that sends nothing for this long is taken as gone (default 60s).
    #[arg(long, value_name = "DURATION")]
    source_timeout: Option<String>,
    /// A target that sends no reply for this long while writes await one is taken as
    /// gone (default 60s).
    #[arg(long, value_name = "DURATION")]
    target_timeout: Option<String>,
    /// Retry policy: immediately (default) or scheduled.
    #[arg(long, value_parser = ["immediately", "scheduled"])]
    retry: Option<String>,
    /// Immediately: give up after this long of continuous connection failure (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    retry_connection_limit: Option<String>,
    /// Immediately: give up after this long of continuous other failure.
    #[arg(long, value_name = "DURATION")]
    retry_other_limit: Option<String>,
    /// Scheduled: daily window for retrying connection failures, e.g. 01:00-05:00.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    retry_connection_window: Option<String>,
    /// Scheduled: daily window for retrying other failures.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    retry_other_window: Option<String>,
    /// Scheduled: IANA time zone of the windows (default: the system's).
    #[arg(long)]
    retry_time_zone: Option<String>,
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
    /// Log, count and go past a replicated command the target refuses (a key of another
    /// type written on the target, say), instead of stopping.
    #[arg(long)]
    skip_failed_commands: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Serve Prometheus `/metrics` for this job on ADDR (e.g. 127.0.0.1:9187), the same
    /// series as the service's.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    scope: scope_args::ScopeArgs,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| progress::LogWriter);
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
            Command::Sync(args) => sync(*args).await,
            Command::Verify(args) => Ok(verify::run(args).await),
            Command::Check(args) => Ok(check::run(*args).await),
            Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Job(args) => Ok(jobcmd::run(args).await),
            Command::Cutover(args) => Ok(cutover::run(args).await),
            Command::Status(args) => Ok(status::run(args).await),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut cmd, "ferry", &mut script);
                // A closed stdout (`| head`) is no error worth a panic.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { dir } => man_pages(&dir).map(|n| {
                outln!("{n} man pages written into {}", dir.display());
                ExitCode::SUCCESS
            }),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry.1` and `ferry-<subcommand>.1` into `dir`; returns how many.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    let n = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    Ok(n)
}

/// Cancels the token on SIGINT or SIGTERM.
pub(crate) fn stop_on_signals(cancel: CancellationToken) {
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

/// The job settings the flags (and `--config`) describe: the file's, and the flags' that
/// override them. `ferry sync` and `ferry check` read a job the same way.
pub(crate) fn job_file(args: &SyncArgs) -> anyhow::Result<(FileConfig, FileConfig)> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let sentinel = args.source_sentinel.is_some();
    let flags = args.scope.clone().fill(FileConfig {
        name: args.name.clone(),
        source: args.source.clone().or(args.source_sentinel.clone()),
        source_type: if sentinel {
            Some("sentinel".into())
        } else {
            args.source_type.clone()
        },
        source_master: args.source_master.clone(),
        use_replica: args.use_replica.as_ref().map(|u| u == "on"),
        target: args.target.clone(),
        target_type: args.target_type.clone(),
        target_master: args.target_master.clone(),
        mode: args.mode.clone(),
        overwrite: args.overwrite.then_some(true),
        allow_nonempty_target: args.allow_nonempty_target.then_some(true),
        allow_flush: args.allow_flush.then_some(true),
        checkpoint: args.checkpoint.as_ref().map(|c| c == "on"),
        rate_limit_mb: args.rate_limit,
        source_timeout: args.source_timeout.clone(),
        target_timeout: args.target_timeout.clone(),
        retry: RetryConfig {
            policy: args.retry.clone(),
            connection_limit: args.retry_connection_limit.clone(),
            other_limit: args.retry_other_limit.clone(),
            connection_window: args.retry_connection_window.clone(),
            other_window: args.retry_other_window.clone(),
            time_zone: args.retry_time_zone.clone(),
        },
        big_key_threshold: args.big_key_threshold,
        big_key_elements: args.big_key_elements,
        skip_unsupported: args.skip_unsupported.then_some(true),
        skip_failed_commands: args.skip_failed_commands.then_some(true),
        source_method: args.source_method.clone(),
        psync_command: args.psync_command.clone(),
        aof_until: args.aof_until,
        url_databases: true,
        ..Default::default()
    });
    Ok((file, flags))
}

async fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let (file, flags) = job_file(&args)?;
    let job = file.merge(flags)?;
    info!(name = %job.name, source = %job.source, target = %job.target, mode = %job.mode,
          checkpoint = job.checkpoint, "starting sync");
    let status = JobStatus::new();
    let stats = status.stats.clone();
    let cancel = CancellationToken::new();
    stop_on_signals(cancel.clone());
    let _metrics = match args.metrics_listen {
        Some(addr) => {
            match ferry_service::metrics::serve_cli(addr, job.name.clone(), status.clone()).await {
                Ok(task) => {
                    info!(%addr, "serving /metrics");
                    Some(task)
                }
                Err(e) => {
                    error!("cannot listen on {addr} for /metrics: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => None,
    };
    // The first contact fails the run at once (exit 2): see `probe`. A sentinel's
    // credentials may differ from its master's, so sentinels are not probed here.
    let mut first = match job.source.endpoint() {
        Some(ep) if job.source_master.is_none() => probe::first_contact("source", ep).await,
        _ => Ok(()),
    };
    if first.is_ok() && job.target_master.is_none() {
        first = probe::first_contact("target", &job.target).await;
    }
    if let Err(e) = first {
        error!("{e}");
        return Ok(ExitCode::from(2));
    }
    if !args.skip_precheck {
        let checks = ferry_sync::precheck(&job).await;
        if ferry_sync::precheck::worst(&checks) == ferry_sync::Level::Fail {
            eprint!("{}", check::table(&checks));
            error!("the pre-check failed (table above); nothing was written. Fix what it says, or pass --skip-precheck to start anyway");
            return Ok(ExitCode::from(2));
        }
        for c in checks.iter().filter(|c| c.level == ferry_sync::Level::Warn) {
            warn!(check = %c.name, fix = c.fix.as_deref().unwrap_or(""), "pre-check: {}", c.message);
        }
    }
    let snapshot_only = job.mode == ferry_sync::Mode::Full || job.source.is_file();
    let copies_snapshot = job.mode != ferry_sync::Mode::Incremental;
    let tty = match args.progress {
        ProgressMode::Auto => std::io::stdout().is_terminal(),
        ProgressMode::Always => true,
        ProgressMode::Never => false,
    };
    let display = progress::spawn(stats.clone(), tty, cancel.child_token());
    let started = Instant::now();
    let outcome = ferry_sync::run(job, status.clone(), cancel.clone())
        .await
        .context("sync failed");
    display.finish().await;
    let outcome = outcome?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = stats.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    // The summary as one event too, numbers as numbers (for --log-format json).
    info!(
        keys = outcome.keys,
        commands = outcome.commands,
        bytes_read = bytes,
        seconds = (secs * 1000.0).round() / 1000.0,
        keys_per_sec = rate(outcome.keys).round(),
        completed = outcome.completed,
        "summary"
    );
    let figures = format!(
        "{:.0} keys/s, {:.1} MB read",
        rate(outcome.keys),
        bytes as f64 / 1e6
    );
    let failed = stats
        .commands_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        outln!("{failed} replicated command(s) failed on the target and were skipped (--skip-failed-commands)");
    }
    let empty = stats
        .empty_keys_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    if empty > 0 {
        outln!("{empty} empty keys skipped, as Redis does at load");
    }
    let unsupported = stats
        .unsupported_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    if unsupported > 0 {
        outln!("{unsupported} key(s), function(s), script(s) or module data the target cannot hold were skipped (--skip-unsupported)");
    }
    if outcome.completed {
        outln!(
            "full sync complete: {} keys in {:.2} s ({figures})",
            outcome.keys,
            secs
        );
    } else if copies_snapshot && (snapshot_only || !stop::snapshot_applied(&status)) {
        // Stopped before the snapshot was on the target: the target holds part of the
        // data, and a rerun starts the copy over. Exit 130 (as for SIGINT) so no script
        // takes it for a finished copy.
        outln!(
            "stopped before the copy completed: {} keys applied in {:.2} s; the target is \
             incomplete and a rerun starts the copy over",
            outcome.keys,
            secs
        );
        return Ok(ExitCode::from(130));
    } else {
        outln!(
            "stopped: {} keys and {} commands applied in {:.2} s ({figures})",
            outcome.keys,
            outcome.commands,
            secs
        );
    }
    Ok(ExitCode::SUCCESS)
}
