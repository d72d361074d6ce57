//! The migration's last minute: pause writes on the source, wait until the running job's
//! checkpoints on the target name the offsets the source stopped at, and report — so that
//! "the target holds every write made before the pause" is proven by the checkpoints the
//! data was committed with, not guessed from a lag figure.
//!
//! 1. Pre-flight: every source shard has a `stream` checkpoint of this job on the target
//!    with the source's replication id, a run of the job holds it, and at the rate the job
//!    applied over the last second its lag fits in the pause.
//! 2. `CLIENT PAUSE <max-pause> WRITE` on every source master (`CLIENT PAUSE` of all
//!    clients before 6.2, which also holds reads), then each master's `master_repl_offset`.
//! 3. Wait until each shard's checkpoint reaches its master's offset, within the pause.
//! 4. The caller verifies a sample and then [`hold`]s the pause for the clients' move, or
//!    [`unpause`]s at once when anything failed. The pause's own timeout is the safety net:
//!    a cutover that dies leaves the source paused no longer than `max_pause`.

use std::time::{Duration, Instant};

use ferry_resp::{Connection, Endpoint, Frame};
use ferry_sink::{checkpoint, Checkpoint};
use serde::Serialize;
use tracing::{info, warn};

use crate::job::{discover_shards, resolve_target, JobError};
use crate::JobConfig;

/// Why a cutover did not happen (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error("{0}")]
    Job(#[from] JobError),
    #[error("{addr}: {source}")]
    Node {
        addr: String,
        source: ferry_resp::Error,
    },
    /// The job is not in a state a cutover can finish from.
    #[error("pre-flight: {0}")]
    NotReady(String),
    #[error("the target did not catch up within the pause of {max_pause:?}: {detail}")]
    TooSlow { max_pause: Duration, detail: String },
}

fn node_err(ep: &Endpoint) -> impl FnOnce(ferry_resp::Error) -> CutoverError + '_ {
    move |source| CutoverError::Node {
        addr: ep.addr(),
        source,
    }
}

/// One source shard at the cutover.
#[derive(Debug, Clone, Serialize)]
pub struct ShardCut {
    pub shard: String,
    pub master: String,
    /// `WRITE` (writes paused, reads served) or `ALL` (before 6.2: every client paused).
    pub pause: &'static str,
    /// The master's replication offset once paused: every write before the pause.
    pub offset: u64,
    /// The offset the job's checkpoint named when the pause began.
    pub applied_at_pause: u64,
    /// The checkpoint's offset when the wait ended.
    pub applied: u64,
    pub replid: String,
}

/// What a cutover did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Cutover {
    pub job: String,
    pub shards: Vec<ShardCut>,
    /// From the first `CLIENT PAUSE` to the target having caught up.
    pub catch_up_ms: u64,
    #[serde(skip)]
    paused_at: Instant,
    #[serde(skip)]
    masters: Vec<(Endpoint, bool)>,
}

impl Cutover {
    /// How long the source has been paused.
    pub fn paused_for(&self) -> Duration {
        self.paused_at.elapsed()
    }
}

/// A source master, connected.
struct Master {
    ep: Endpoint,
    conn: Connection,
    /// `CLIENT PAUSE … WRITE` and `CLIENT UNPAUSE` (6.2+, Valkey).
    write_pause: bool,
}

async fn connect_master(ep: &Endpoint) -> Result<Master, CutoverError> {
    let mut conn = Connection::connect(ep).await.map_err(node_err(ep))?;
    let info = conn.info("server").await.map_err(node_err(ep))?;
    let version: Vec<u32> = info
        .get("redis_version")
        .unwrap_or("0")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    let valkey = info.get("server_name") == Some("valkey") || info.get("valkey_version").is_some();
    let level = (
        version.first().copied().unwrap_or(0),
        version.get(1).copied().unwrap_or(0),
    );
    Ok(Master {
        ep: ep.clone(),
        conn,
        write_pause: valkey || level >= (6, 2),
    })
}

async fn repl_position(
    conn: &mut Connection,
    ep: &Endpoint,
) -> Result<(String, u64), CutoverError> {
    let info = conn.info("replication").await.map_err(node_err(ep))?;
    let replid = info.get("master_replid").unwrap_or_default().to_string();
    let offset = info
        .get("master_repl_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    Ok((replid, offset))
}

/// The job's checkpoint for `shard` on the target (the global one on a cluster target).
async fn load(
    target: &Endpoint,
    cluster: bool,
    job: &str,
    shard: &str,
) -> Result<Option<Checkpoint>, CutoverError> {
    let found = if cluster {
        ferry_sink::load_cluster_checkpoint(target, job, shard)
            .await
            .map(|c| c.map(|(c, _)| c))
    } else {
        checkpoint::load(target, &checkpoint::key(job, shard)).await
    };
    found.map_err(|e| CutoverError::Job(JobError::Target(e)))
}

/// Where the job's checkpoint for `shard` stands on the target: `(replid, offset)` of a
/// `stream` checkpoint; an error says what else is there.
async fn applied(
    target: &Endpoint,
    cluster: bool,
    job: &str,
    shard: &str,
) -> Result<(String, u64), CutoverError> {
    let found = load(target, cluster, job, shard).await?;
    let k = String::from_utf8_lossy(&checkpoint::key(job, shard)).into_owned();
    match found {
        Some(Checkpoint::Stream { replid, offset, .. }) => Ok((replid, offset)),
        Some(Checkpoint::Snapshot { .. }) => Err(CutoverError::NotReady(format!(
            "job {job:?} is still applying its snapshot (checkpoint {k}): cut over once it follows the source"
        ))),
        Some(other) => Err(CutoverError::NotReady(format!(
            "job {job:?} cannot continue (checkpoint {k} is {other:?})"
        ))),
        None => Err(CutoverError::NotReady(format!(
            "no checkpoint {k} on the target {}: is job {job:?} running with checkpoints on (--name)?",
            target.addr()
        ))),
    }
}

/// Whether a run of `job` holds connections to one of `nodes` (a CLI run's hold, or a
/// service worker's writers).
async fn job_is_running(nodes: &[Endpoint], job: &str) -> Result<bool, CutoverError> {
    for ep in nodes {
        let mut conn = Connection::connect(ep).await.map_err(node_err(ep))?;
        let list = conn
            .request(&["CLIENT", "LIST"])
            .await
            .map_err(node_err(ep))?
            .to_text();
        let running = list
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
            .any(|n| crate::lease::names_job(n, job));
        if running {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The target's nodes a job's connections may be on.
async fn target_nodes(target: &Endpoint, cluster: bool) -> Result<Vec<Endpoint>, CutoverError> {
    if !cluster {
        return Ok(vec![target.clone()]);
    }
    Ok(ferry_sink::slot::data_nodes(target, true)
        .await
        .map_err(JobError::Target)?)
}

/// Pre-flight, pause and wait (steps 1–3). On success the source stays paused: the caller
/// verifies, then calls [`hold`] or [`unpause`]. On failure after the pause began, the
/// source is unpaused (where the server can) before the error returns.
pub async fn cutover(config: &JobConfig, max_pause: Duration) -> Result<Cutover, CutoverError> {
    let (_, shards) = discover_shards(config).await?;
    let target = resolve_target(config).await?;
    let cluster = ferry_sink::is_cluster(&target)
        .await
        .map_err(JobError::Target)?;
    let job = &config.name;

    // 1. Pre-flight.
    if !job_is_running(&target_nodes(&target, cluster).await?, job).await? {
        return Err(CutoverError::NotReady(format!(
            "no run of job {job:?} holds the target {}: start `ferry sync --name {job}` (or the service's job) first",
            target.addr()
        )));
    }
    let mut masters = Vec::new();
    let mut first = Vec::new();
    for s in &shards {
        let mut m = connect_master(&s.master).await?;
        let (replid, source_offset) = repl_position(&mut m.conn, &m.ep).await?;
        let (ck_replid, ck_offset) = applied(&target, cluster, job, &s.id).await?;
        if ck_replid != replid {
            return Err(CutoverError::NotReady(format!(
                "shard {} ({}): the checkpoint names replication id {ck_replid}, the source has {replid} (a new snapshot is due)",
                s.id, s.master
            )));
        }
        first.push((ck_offset, source_offset));
        masters.push(m);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, s) in shards.iter().enumerate() {
        let (_, now) = applied(&target, cluster, job, &s.id).await?;
        let (_, source_now) = repl_position(&mut masters[i].conn, &s.master).await?;
        let rate = now.saturating_sub(first[i].0) as f64; // bytes per second
        let lag = source_now.saturating_sub(now);
        info!(shard = %s.id, lag_bytes = lag, apply_rate = rate, "pre-flight");
        if lag > 64 * 1024 {
            let secs = if rate > 0.0 {
                lag as f64 / rate
            } else {
                f64::INFINITY
            };
            if secs > max_pause.as_secs_f64() / 2.0 {
                return Err(CutoverError::NotReady(format!(
                    "shard {} is {lag} bytes behind and applied {rate:.0} bytes in the last second: \
                     it would need about {secs:.1} s, more than half the --max-pause of {max_pause:?}; \
                     cut over when the lag is smaller",
                    s.id
                )));
            }
        }
    }

    // 2. Pause every master, then read where each stopped.
    let ms = max_pause.as_millis().max(1).to_string();
    let paused_at = Instant::now();
    let mut paused: Vec<(Endpoint, bool)> = Vec::new();
    for m in &mut masters {
        let mut args = vec!["CLIENT", "PAUSE", ms.as_str()];
        if m.write_pause {
            args.push("WRITE");
        }
        let r = m.conn.request_raw(&args).await;
        match r {
            Ok(Frame::Error(e)) => {
                unpause_all(&paused).await;
                return Err(CutoverError::NotReady(format!(
                    "{}: CLIENT PAUSE refused: {}",
                    m.ep.addr(),
                    String::from_utf8_lossy(&e)
                )));
            }
            Err(e) => {
                unpause_all(&paused).await;
                return Err(CutoverError::Node {
                    addr: m.ep.addr(),
                    source: e,
                });
            }
            Ok(_) => paused.push((m.ep.clone(), m.write_pause)),
        }
        if !m.write_pause {
            warn!(source = %m.ep, "this server has no CLIENT PAUSE WRITE (Redis < 6.2): every client is paused, reads too");
        }
    }
    let mut cuts = Vec::new();
    for (m, s) in masters.iter_mut().zip(&shards) {
        let pos = repl_position(&mut m.conn, &m.ep).await;
        let (replid, offset) = match pos {
            Ok(p) => p,
            Err(e) => {
                unpause_all(&paused).await;
                return Err(e);
            }
        };
        cuts.push(ShardCut {
            shard: s.id.clone(),
            master: s.master.addr(),
            pause: if m.write_pause { "WRITE" } else { "ALL" },
            offset,
            applied_at_pause: 0,
            applied: 0,
            replid,
        });
    }

    // 3. Wait for the checkpoints, inside the pause (a margin left for the verification).
    let deadline = paused_at + max_pause.mul_f64(0.8);
    let mut started = false;
    loop {
        let mut all = true;
        for c in &mut cuts {
            let (replid, offset) = match applied(&target, cluster, job, &c.shard).await {
                Ok(a) => a,
                Err(e) => {
                    unpause_all(&paused).await;
                    return Err(e);
                }
            };
            if !started {
                c.applied_at_pause = offset;
            }
            c.applied = offset;
            if replid != c.replid {
                unpause_all(&paused).await;
                return Err(CutoverError::NotReady(format!(
                    "shard {}: the job's checkpoint moved to replication id {replid} during the pause",
                    c.shard
                )));
            }
            all &= offset >= c.offset;
        }
        started = true;
        if all {
            break;
        }
        if Instant::now() >= deadline {
            unpause_all(&paused).await;
            let detail = cuts
                .iter()
                .map(|c| {
                    format!(
                        "shard {} at {} of {} ({} bytes behind)",
                        c.shard,
                        c.applied,
                        c.offset,
                        c.offset.saturating_sub(c.applied)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CutoverError::TooSlow { max_pause, detail });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let catch_up_ms = paused_at.elapsed().as_millis() as u64;
    info!(
        catch_up_ms,
        "the target holds every write made before the pause"
    );
    Ok(Cutover {
        job: job.clone(),
        shards: cuts,
        catch_up_ms,
        paused_at,
        masters: paused,
    })
}

/// Keeps the source paused `hold` from now: on 6.2+ the pause is replaced in one
/// transaction (`CLIENT UNPAUSE` then `CLIENT PAUSE hold WRITE`, no write can pass between);
/// before 6.2 a pause can only be extended, so it lasts at least until the first one's end.
/// Returns how long it still lasts.
pub async fn hold(
    c: &Cutover,
    hold: Duration,
    max_pause: Duration,
) -> Result<Duration, CutoverError> {
    let ms = hold.as_millis().max(1).to_string();
    let mut lasts = hold;
    for (ep, write) in &c.masters {
        let mut conn = Connection::connect(ep).await.map_err(node_err(ep))?;
        if *write {
            conn.request(&["MULTI"]).await.map_err(node_err(ep))?;
            conn.request(&["CLIENT", "UNPAUSE"])
                .await
                .map_err(node_err(ep))?;
            conn.request(&["CLIENT", "PAUSE", ms.as_str(), "WRITE"])
                .await
                .map_err(node_err(ep))?;
            conn.request(&["EXEC"]).await.map_err(node_err(ep))?;
        } else {
            conn.request(&["CLIENT", "PAUSE", ms.as_str()])
                .await
                .map_err(node_err(ep))?;
            lasts = lasts.max(max_pause.saturating_sub(c.paused_for()));
        }
    }
    Ok(lasts)
}

/// Ends the pause now where the server can (`CLIENT UNPAUSE`, 6.2+); returns the masters
/// whose pause runs until its timeout instead.
pub async fn unpause(c: &Cutover) -> Vec<String> {
    unpause_all(&c.masters).await
}

async fn unpause_all(masters: &[(Endpoint, bool)]) -> Vec<String> {
    let mut left = Vec::new();
    for (ep, write) in masters {
        if !*write {
            left.push(ep.addr());
            continue;
        }
        let r = async {
            let mut conn = Connection::connect(ep).await?;
            conn.request(&["CLIENT", "UNPAUSE"]).await
        }
        .await;
        if let Err(e) = r {
            warn!(source = %ep, error = %e, "could not unpause: the pause ends at its timeout");
            left.push(ep.addr());
        }
    }
    left
}

/// One source shard's position, for `ferry status`.
#[derive(Debug, Clone, Serialize)]
pub struct ShardPosition {
    pub shard: String,
    pub master: String,
    pub source_replid: String,
    pub source_offset: u64,
    /// The checkpoint as stored (`stream <replid> <offset> <db>`, `snapshot …`, …), or
    /// `None` when there is none.
    pub checkpoint: Option<String>,
    /// The offset applied, when the checkpoint follows the source's current stream.
    pub applied: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// How long the target took to reach the source's offset of the moment of asking:
    /// measured, not estimated; `None` when it did not within the wait.
    pub lag_seconds: Option<f64>,
}

/// Where a job stands: its runs and, per source shard, the checkpoint against the source.
#[derive(Debug, Clone, Serialize)]
pub struct JobPosition {
    pub job: String,
    pub running: bool,
    pub shards: Vec<ShardPosition>,
}

/// Reads the job's position; waits up to `wait` for the target to reach the source's
/// current offsets, to measure the lag in seconds.
pub async fn position(config: &JobConfig, wait: Duration) -> Result<JobPosition, CutoverError> {
    let (_, shards) = discover_shards(config).await?;
    let target = resolve_target(config).await?;
    let cluster = ferry_sink::is_cluster(&target)
        .await
        .map_err(JobError::Target)?;
    let running = job_is_running(&target_nodes(&target, cluster).await?, &config.name).await?;
    let asked = Instant::now();
    let mut out = Vec::new();
    for s in &shards {
        let mut conn = Connection::connect(&s.master)
            .await
            .map_err(node_err(&s.master))?;
        let (replid, offset) = repl_position(&mut conn, &s.master).await?;
        out.push(ShardPosition {
            shard: s.id.clone(),
            master: s.master.addr(),
            source_replid: replid,
            source_offset: offset,
            checkpoint: None,
            applied: None,
            lag_bytes: None,
            lag_seconds: None,
        });
    }
    loop {
        let mut pending = false;
        for p in out.iter_mut().filter(|p| p.lag_seconds.is_none()) {
            let c = load(&target, cluster, &config.name, &p.shard).await?;
            p.checkpoint = c.as_ref().map(Checkpoint::encode);
            if let Some(Checkpoint::Stream { replid, offset, .. }) = c {
                if replid == p.source_replid {
                    if p.applied.is_none() {
                        p.lag_bytes = Some(p.source_offset.saturating_sub(offset));
                    }
                    p.applied = Some(offset);
                    if offset >= p.source_offset {
                        p.lag_seconds = Some(asked.elapsed().as_secs_f64());
                        continue;
                    }
                }
            }
            pending = true;
        }
        if !pending || asked.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(JobPosition {
        job: config.name.clone(),
        running,
        shards: out,
    })
}
