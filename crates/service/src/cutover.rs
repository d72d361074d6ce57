//! A cutover's steps after the pause, shared by `ferry cutover` and the service's
//! `POST /api/jobs/{id}/cutover`: [`prove`] pauses, waits for the checkpoints and verifies
//! a sample (unpausing when anything fails); [`release`] holds the pause for the clients'
//! move or ends it. See [`ferry_sync::cutover`].

use std::time::Duration;

use ferry_sync::cutover::{self, Cutover, CutoverError};
use ferry_sync::JobConfig;
use serde_json::{json, Value};

/// Why a cutover failed: the job or the servers refused it (the user can act), or a node
/// could not be reached.
#[derive(Debug)]
pub enum Failure {
    Refused(String),
    Node(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Node(m) => m,
        }
    }
}

/// A cutover whose target provably holds every write made before the pause; the source is
/// still paused.
pub struct Proven {
    pub cut: Cutover,
    pub verified: Option<ferry_verify::Report>,
    pub verify_sample: f64,
}

fn still_paused(left: &[String]) -> String {
    if left.is_empty() {
        String::new()
    } else {
        format!(
            " (except {}: no CLIENT UNPAUSE before 6.2, the pause ends at its timeout)",
            left.join(", ")
        )
    }
}

/// Unpauses the source after a failure, saying so in the message.
pub async fn abort(c: &Cutover, failure: Failure) -> Failure {
    let left = cutover::unpause(c).await;
    let tail = format!("; the source is unpaused{}", still_paused(&left));
    match failure {
        Failure::Refused(m) => Failure::Refused(m + &tail),
        Failure::Node(m) => Failure::Node(m + &tail),
    }
}

/// Steps 1–4: pre-flight, pause, wait for the checkpoints, verify `verify_sample` percent
/// of the keys (0: none).
pub async fn prove(
    config: &JobConfig,
    max_pause: Duration,
    verify_sample: f64,
) -> Result<Proven, Failure> {
    if config.source_seeds.is_empty() {
        return Err(Failure::Refused(
            "the source is a file: there is nothing to cut over".into(),
        ));
    }
    if !config.checkpoint {
        return Err(Failure::Refused(
            "a cutover reads the job's checkpoints: the job must run with checkpoints on".into(),
        ));
    }
    let cut = cutover::cutover(config, max_pause).await.map_err(|e| {
        if matches!(e, CutoverError::Node { .. } | CutoverError::Job(_)) {
            Failure::Node(e.to_string())
        } else {
            Failure::Refused(e.to_string())
        }
    })?;
    let verified = if verify_sample > 0.0 {
        let mut vc =
            ferry_verify::Config::new(config.source_seeds[0].clone(), config.target.clone());
        vc.source = config.source_seeds.clone();
        vc.filter = config.filter.clone();
        vc.db_map = config.db_map.clone();
        vc.mode = ferry_verify::Mode::Full;
        vc.sample_percent = verify_sample.min(100.0);
        vc.rounds = 2;
        vc.recheck_delay = Duration::from_millis(100);
        let progress = ferry_verify::Progress::default();
        match ferry_verify::verify(&vc, &progress).await {
            Ok(r) if r.equal => Some(r),
            Ok(r) => {
                let msg = format!(
                    "the sampled verification found {} differing keys (first: {:?})",
                    r.keys_compared.saturating_sub(r.keys_equal),
                    r.differences.first().map(|d| d.key.clone())
                );
                return Err(abort(&cut, Failure::Refused(msg)).await);
            }
            Err(e) => {
                let msg = format!("the sampled verification failed: {e}");
                return Err(abort(&cut, Failure::Node(msg)).await);
            }
        }
    } else {
        None
    };
    Ok(Proven {
        cut,
        verified,
        verify_sample,
    })
}

/// Step 5: keeps the source paused `hold` for the clients' move (0: unpauses now). Returns
/// how long writes stay paused (`None`: unpaused).
pub async fn release(
    p: &Proven,
    hold: Duration,
    max_pause: Duration,
) -> Result<Option<Duration>, Failure> {
    if hold.is_zero() {
        let left = cutover::unpause(&p.cut).await;
        return Ok((!left.is_empty()).then(|| max_pause.saturating_sub(p.cut.paused_for())));
    }
    match cutover::hold(&p.cut, hold, max_pause).await {
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(abort(
            &p.cut,
            Failure::Node(format!("could not hold the pause: {e}")),
        )
        .await),
    }
}

/// The report as JSON (the CLI's `--json`, the API's reply).
pub fn report_json(p: &Proven, lasts: Option<Duration>, reverse: Option<&str>) -> Value {
    json!({
        "ok": true,
        "job": p.cut.job,
        "catch_up_ms": p.cut.catch_up_ms,
        "paused_ms": p.cut.paused_for().as_millis() as u64,
        "source_paused_for_ms": lasts.map(|d| d.as_millis() as u64),
        "shards": p.cut.shards,
        "verified": p.verified.as_ref().map(|r| json!({
            "sample_percent": p.verify_sample,
            "keys_compared": r.keys_compared,
            "keys_equal": r.keys_equal,
        })),
        "reverse_job": reverse,
    })
}
