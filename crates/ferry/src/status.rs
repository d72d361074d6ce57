//! `ferry status`: where a job stands, read from its checkpoints on the target and the
//! source's replication offsets — from any machine, whether the job runs in a CLI or in
//! the service. Exit 0 when a run holds the job and every shard follows the source's
//! stream, 1 otherwise, 2 when a node cannot be read.

use std::process::ExitCode;
use std::time::Duration;

use crate::out::outln;
use tracing::error;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The job, as given to `ferry sync` (source, target, --name, TLS).
    #[command(flatten)]
    job: Box<crate::SyncArgs>,
    /// How long to wait for the target to reach the source's current offsets (the lag in
    /// seconds is that time, measured).
    #[arg(long, default_value = "10s", value_parser = crate::verify::parse_duration)]
    wait: Duration,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let job = match crate::job_file(&args.job).and_then(|(f, flags)| Ok(f.merge(flags)?)) {
        Ok(j) => j,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let p = match ferry_sync::cutover::position(&job, args.wait).await {
        Ok(p) => p,
        Err(e) => {
            if args.json {
                outln!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let following = p.shards.iter().all(|s| s.applied.is_some());
    if args.json {
        match serde_json::to_string(&p) {
            Ok(s) => outln!("{s}"),
            Err(e) => error!("cannot encode the status: {e}"),
        }
    } else {
        outln!(
            "job {:?}: {}",
            p.job,
            if p.running { "running" } else { "not running" }
        );
        for s in &p.shards {
            let lag = match (s.lag_bytes, s.lag_seconds) {
                (Some(b), Some(t)) => format!("lag {b} bytes, caught up in {t:.3} s"),
                (Some(b), None) => format!(
                    "lag {b} bytes, not caught up within {:.1} s",
                    args.wait.as_secs_f64()
                ),
                _ => "lag unknown".into(),
            };
            outln!(
                "  shard {:<12} {}  source offset {}  checkpoint {}  {lag}",
                s.shard,
                s.master,
                s.source_offset,
                s.checkpoint.as_deref().unwrap_or("none"),
            );
        }
    }
    if p.running && following {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
