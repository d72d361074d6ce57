//! `ferry cutover`: the migration's last minute, while the job runs. Pauses writes on the
//! source, waits until the job's checkpoints prove the target holds every write made before
//! the pause, verifies a sample, then keeps the source paused for `--hold` while clients
//! move (exit 0), or unpauses at once when anything failed (exit 1; 2 when a node could
//! not be reached). With `--reverse` it then stops the job and runs, in this process, the
//! job back from the new side into the old source, from that instant on.

use std::process::ExitCode;
use std::time::Duration;

use crate::out::outln;
use ferry_service::cutover::{self as service_cutover, Failure, Proven};
use ferry_sync::{JobConfig, JobStatus, Mode};
use ferry_sync::{Phase, SourceSpec};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(clap::Args)]
pub struct CutoverArgs {
    /// The job, as given to `ferry sync` (source, target, --name, TLS, filters).
    #[command(flatten)]
    job: Box<crate::SyncArgs>,
    /// The longest the source may stay paused waiting for the target (it is unpaused and
    /// the cutover fails past it).
    #[arg(long, default_value = "10s", value_parser = crate::verify::parse_duration)]
    max_pause: Duration,
    /// Once the target holds everything, keep the source paused this long for the clients
    /// to move (0: unpause at once).
    #[arg(long, default_value = "30s", value_parser = crate::verify::parse_duration)]
    hold: Duration,
    /// Percentage of keys compared (values too) while the source is paused; 0 skips it.
    #[arg(long, default_value_t = 1.0)]
    verify_sample: f64,
    /// Then stop the job and run, in this process, the job from the target back into the
    /// source from this instant on (named `<job>-reverse`), so the old side stays current.
    #[arg(long)]
    reverse: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn fail(json: bool, code: u8, message: &str) -> ExitCode {
    if json {
        outln!("{}", json!({ "ok": false, "error": message }));
    }
    error!("cutover failed: {message}");
    ExitCode::from(code)
}

pub async fn run(args: CutoverArgs) -> ExitCode {
    let job = match crate::job_file(&args.job).and_then(|(f, flags)| Ok(f.merge(flags)?)) {
        Ok(j) => j,
        Err(e) => return fail(args.json, 2, &format!("{e:#}")),
    };
    if args.reverse && !job.db_map.is_empty() {
        return fail(
            args.json,
            2,
            "--reverse cannot invert a --db-map; start the way back by hand",
        );
    }
    info!(name = %job.name, max_pause = ?args.max_pause, "cutover: pre-flight");
    let failed = |f: Failure| {
        let code = if matches!(f, Failure::Node(_)) { 2 } else { 1 };
        fail(args.json, code, f.message())
    };
    let proven = match service_cutover::prove(&job, args.max_pause, args.verify_sample).await {
        Ok(p) => p,
        Err(f) => return failed(f),
    };
    // The way back starts before clients move: nothing written on the new side is missed.
    let reverse = if args.reverse {
        match start_reverse(&job).await {
            Ok(r) => Some(r),
            Err(e) => {
                return failed(service_cutover::abort(&proven.cut, Failure::Refused(e)).await)
            }
        }
    } else {
        None
    };
    let lasts = match service_cutover::release(&proven, args.hold, args.max_pause).await {
        Ok(l) => l,
        Err(f) => return failed(f),
    };
    let reverse_name = reverse.as_ref().map(|r| r.name.as_str());
    if args.json {
        outln!(
            "{}",
            service_cutover::report_json(&proven, lasts, reverse_name)
        );
    } else {
        report(&proven, lasts, reverse_name);
    }
    match reverse {
        None => ExitCode::SUCCESS,
        Some(r) => r.finish().await,
    }
}

fn report(p: &Proven, lasts: Option<Duration>, reverse: Option<&str>) {
    let c = &p.cut;
    outln!(
        "cutover of job {:?}: the target holds every write made before the pause",
        c.job
    );
    for s in &c.shards {
        outln!(
            "  shard {:<12} {}  paused ({})  offset {}  applied {} at the pause, {} now",
            s.shard,
            s.master,
            s.pause,
            s.offset,
            s.applied_at_pause,
            s.applied
        );
    }
    outln!("  caught up {} ms after the pause", c.catch_up_ms);
    match &p.verified {
        Some(r) => outln!(
            "  verified {} sampled keys ({}%): all equal",
            r.keys_compared,
            p.verify_sample
        ),
        None => outln!("  not verified (--verify-sample 0)"),
    }
    if let Some(name) = reverse {
        outln!(
            "  the way back runs: job {name:?} copies every write on the target into the source"
        );
    }
    match lasts {
        Some(d) => outln!(
            "writes on the source stay paused for {:.1} s more: move the clients to the target now",
            d.as_secs_f64()
        ),
        None => outln!("the source is unpaused"),
    }
}

/// The job back from the target into the source, running in this process.
struct Reverse {
    name: String,
    task: tokio::task::JoinHandle<Result<ferry_sync::JobOutcome, ferry_sync::JobError>>,
    cancel: CancellationToken,
}

impl Reverse {
    async fn finish(self) -> ExitCode {
        info!(name = %self.name, "the way back runs until SIGINT/SIGTERM");
        crate::stop_on_signals(self.cancel.clone());
        match self.task.await {
            Ok(Ok(o)) => {
                outln!(
                    "way back stopped: {} commands applied to the source",
                    o.commands
                );
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                error!("the way back failed: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                error!("the way back failed: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Stops the job (its run on this host), then starts the reverse job and waits until it
/// follows the target's stream.
async fn start_reverse(job: &JobConfig) -> Result<Reverse, String> {
    stop_forward(job).await?;
    let mut r = job.clone();
    r.name = format!("{}-reverse", job.name);
    r.source = SourceSpec::Redis(job.target.clone());
    r.source_seeds = job.target_seeds.clone();
    r.source_type = job.target_type;
    r.source_master = job.target_master.clone();
    r.use_replica = false;
    r.target = job.source_seeds[0].clone();
    r.target_seeds = job.source_seeds.clone();
    r.target_type = job.source_type;
    r.target_master = job.source_master.clone();
    r.mode = Mode::Incremental;
    let status = JobStatus::new();
    let cancel = CancellationToken::new();
    let name = r.name.clone();
    let task = tokio::spawn(ferry_sync::run(r, status.clone(), cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if status.stats.phase() == Phase::Incremental {
            break;
        }
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            cancel.cancel();
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                _ => "it did not reach the target's stream within 60 s".into(),
            };
            return Err(format!(
                "the job stopped, but the way back ({name}) did not start: {why}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(%name, "the way back follows the target");
    Ok(Reverse { name, task, cancel })
}

/// Stops the run of the job that holds the target: on this host, with SIGTERM (it finishes
/// the writes in flight); elsewhere it must be stopped by hand.
async fn stop_forward(job: &JobConfig) -> Result<(), String> {
    let holders = ferry_sync::lease::holders(job)
        .await
        .map_err(|e| format!("cannot list the job's runs: {e}"))?;
    let Some((host, pid)) = holders.first().cloned() else {
        return Err("no run of the job holds the target any more".into());
    };
    if host != ferry_sync::lease::this_host() {
        return Err(format!(
            "the job runs on {host} (pid {pid}): stop it there and start the way back by hand \
             (ferry sync --mode incremental from the target into the source)"
        ));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| format!("cannot signal the job (pid {pid}): {e}"))?;
    if !status.success() {
        return Err(format!("cannot signal the job (pid {pid})"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = ferry_sync::lease::holders(job)
            .await
            .map_err(|e| format!("cannot list the job's runs: {e}"))?;
        if left.is_empty() {
            info!(pid, "the job stopped");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            warn!(pid, "the job did not stop within 30 s");
            return Err(format!("the job (pid {pid}) did not stop within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
