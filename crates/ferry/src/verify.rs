//! `ferry verify`: flags → [`ferry_verify::Config`], a progress line on a terminal, the
//! report as text or JSON, and the exit code (0 equal, 1 differences, 2 error).
//!
//! The source, target, TLS, filters and db mapping are read as `ferry sync` reads them
//! (`--config FILE` and the same flags), so a job is verified with exactly its scope.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::out::outln;
use clap::ValueEnum;
use ferry_resp::Endpoint;
use ferry_sync::{FileConfig, JobConfig};
use ferry_verify::{Config, Mode, Problem, Progress, Report};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, ValueEnum)]
pub enum VerifyMode {
    /// Presence, type and TTL.
    Keys,
    /// Also the value (DEBUG DIGEST-VALUE where allowed, else the contents).
    Full,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The job's settings in TOML, as for `ferry sync --config`: its source, target, TLS,
    /// filters and db_map apply (flags override them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Source node: redis://[user:pass@]host:port[/db]; any node of a Redis Cluster
    /// (every master is then scanned, db 0 only).
    #[arg(long, env = "FERRY_SOURCE")]
    source: Option<String>,
    /// Target node: redis://[user:pass@]host:port[/db]; any node of a Redis Cluster
    /// (each key is then read on the master owning its slot).
    #[arg(long, env = "FERRY_TARGET")]
    target: Option<String>,
    /// The job's filters, db mapping and TLS, as given to `ferry sync`.
    #[command(flatten)]
    scope: Box<crate::scope_args::ScopeArgs>,
    /// What to compare.
    #[arg(long, value_enum, default_value_t = VerifyMode::Full)]
    mode: VerifyMode,
    /// Compare this percentage of keys (picked by a hash of the key name).
    #[arg(long, default_value_t = 100.0)]
    sample: f64,
    /// Keys read per second (default: unlimited).
    #[arg(long)]
    rate_limit: Option<u64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// The full pass plus rechecks of what differed.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Pause before each recheck, e.g. 500ms, 1s, 2m.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    recheck_delay: Duration,
    /// TTLs this close count as equal.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    ttl_tolerance: Duration,
    /// Differing keys listed.
    #[arg(long, default_value_t = 20)]
    max_diffs: usize,
}

/// `1500ms`, `2s`, `1.5s`, `3m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("bad duration unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn fail(json: bool, message: &str) -> ExitCode {
    if json {
        outln!("{}", serde_json::json!({ "error": message }));
    }
    eprintln!("ferry verify: {message}");
    ExitCode::from(2)
}

/// The job the flags (and `--config`) describe, as `ferry sync` would run it.
fn job(args: &VerifyArgs) -> Result<JobConfig, String> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let flags = (*args.scope).clone().fill(FileConfig {
        source: args.source.clone(),
        target: args.target.clone(),
        ..Default::default()
    });
    let job = file.merge(flags).map_err(|e| e.to_string())?;
    if job.source_seeds.is_empty() {
        return Err(format!(
            "source {} is a file: verify compares two live servers",
            job.source
        ));
    }
    Ok(job)
}

pub async fn run(args: VerifyArgs) -> ExitCode {
    let job = match job(&args) {
        Ok(j) => j,
        Err(e) => return fail(args.json, &e),
    };
    let (source, target) = (job.source_seeds[0].clone(), job.target.clone());
    let mut config = Config::new(source.clone(), target.clone());
    config.source = job.source_seeds;
    config.filter = job.filter;
    config.db_map = job.db_map;
    config.mode = match args.mode {
        VerifyMode::Keys => Mode::Keys,
        VerifyMode::Full => Mode::Full,
    };
    config.sample_percent = args.sample;
    config.rate_limit = args.rate_limit;
    config.rounds = args.rounds.max(1);
    config.recheck_delay = args.recheck_delay;
    config.ttl_tolerance = args.ttl_tolerance;
    config.max_diffs = args.max_diffs;

    let progress = Arc::new(Progress::default());
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| spawn_bar(progress.clone()));
    let result = ferry_verify::verify(&config, &progress).await;
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(args.json, &e.to_string()),
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => outln!("{s}"),
            Err(e) => return fail(false, &format!("cannot encode the report: {e}")),
        }
    } else {
        print_text(&report, &source, &target);
    }
    if report.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn spawn_bar(progress: Arc<Progress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let total = progress.source_keys_total.load(Relaxed);
            let scanned = progress.source_keys_scanned.load(Relaxed);
            shown.set_message(format!(
                "round {}  source keys {scanned}/{total}  target keys {}  differing {}",
                progress.round.load(Relaxed),
                progress.target_keys_scanned.load(Relaxed),
                progress.candidates.load(Relaxed),
            ));
            shown.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

fn describe(p: &Problem) -> String {
    match p {
        Problem::MissingOnTarget => "missing on target".into(),
        Problem::ExtraOnTarget => "extra on target".into(),
        Problem::Type { source, target } => format!("type: {source} on source, {target} on target"),
        Problem::Ttl {
            source_ms,
            target_ms,
        } => {
            let show = |t: i64| {
                if t < 0 {
                    "none".to_string()
                } else {
                    format!("{t} ms")
                }
            };
            format!(
                "ttl: {} on source, {} on target",
                show(*source_ms),
                show(*target_ms)
            )
        }
        Problem::Value { detail } => format!("value: {detail}"),
    }
}

fn print_text(r: &Report, source: &Endpoint, target: &Endpoint) {
    let method = match r.value_method {
        ferry_verify::ValueMethod::None => "values not compared",
        ferry_verify::ValueMethod::Digest => "values by DEBUG DIGEST-VALUE",
        ferry_verify::ValueMethod::Contents => "values by contents",
    };
    let kind = |cluster: bool| if cluster { " (cluster)" } else { "" };
    outln!(
        "verify {source}{} -> {target}{} ({method})",
        kind(r.source_cluster),
        kind(r.target_cluster)
    );
    if r.source_keys_not_compared > 0 || r.target_keys_not_compared > 0 {
        outln!(
            "  not compared        {} source and {} target keys in databases other than 0 \
             (a cluster has only db 0)",
            r.source_keys_not_compared,
            r.target_keys_not_compared
        );
    }
    if r.source_keys_filtered > 0 || r.target_keys_filtered > 0 {
        outln!(
            "  outside the job     {} source and {} target keys (filters, db mapping)",
            r.source_keys_filtered,
            r.target_keys_filtered
        );
    }
    outln!("  keys compared       {}", r.keys_compared);
    outln!("  equal               {}", r.keys_equal);
    outln!("  missing on target   {}", r.missing_on_target);
    outln!("  extra on target     {}", r.extra_on_target);
    outln!("  type differences    {}", r.type_differences);
    outln!("  value differences   {}", r.value_differences);
    outln!("  ttl differences     {}", r.ttl_differences);
    outln!(
        "  transient           {} (differed, then caught up)",
        r.transient
    );
    outln!(
        "  rounds {}, {:.2} s, {} target keys scanned",
        r.rounds,
        r.duration_ms as f64 / 1000.0,
        r.target_keys_scanned
    );
    if !r.differences.is_empty() {
        outln!(
            "differences{}:",
            if r.truncated { " (first ones)" } else { "" }
        );
        for d in &r.differences {
            let what: Vec<String> = d.problems.iter().map(describe).collect();
            let db = if d.db == d.target_db {
                format!("db{}", d.db)
            } else {
                format!("db{}->db{}", d.db, d.target_db)
            };
            outln!("  {db} {:?}: {}", d.key, what.join("; "));
        }
    }
    outln!("result: {}", if r.equal { "EQUAL" } else { "DIFFERENT" });
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2 days").is_err());
    }
}
