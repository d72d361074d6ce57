//! Proof that a copy is complete: `ferry verify` compares a source and a target key by key
//! while both keep taking writes, and reports only the differences that persist.
//!
//! A round scans every database of every source node (`SCAN COUNT n`) and compares each
//! batch of keys with the target in one pipeline per side: presence, type and TTL, and in
//! `full` mode the value (`DEBUG DIGEST-VALUE` where both servers allow it, otherwise the
//! contents read in bounded chunks, see [`compare`]). It then scans the target for keys the
//! source lacks. A key written while the copy is in flight differs for a moment, so every
//! difference is only a *candidate*: later rounds, `recheck_delay` apart, compare the
//! candidates again, and what is equal by then is dropped as transient.
//!
//! Memory is bounded by the batch and chunk sizes plus the list of candidates, never by the
//! size of a value or of the data set.
//!
//! Either side may be a Redis Cluster (see [`side`]): a cluster source is scanned master by
//! master, and every key is read on the master owning its slot on each side; the extras
//! scan covers every target master. A cluster has only db 0, so when either side is one only
//! db 0 is compared, and a standalone side's keys in other databases are reported as not
//! compared.

pub mod compare;
pub mod node;
pub mod rate;
pub mod report;
pub mod side;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_resp::Endpoint;
use serde::Serialize;
use tracing::{debug, info};

use compare::Rules;
use node::Role;
use rate::RateLimiter;
pub use report::{escape_key, Difference, Problem, Report, ValueMethod};
use side::Side;

/// What is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Presence, type and TTL.
    Keys,
    /// Also the value.
    Full,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keys" => Ok(Mode::Keys),
            "full" => Ok(Mode::Full),
            other => Err(format!("unknown mode {other:?} (keys or full)")),
        }
    }
}

/// One verification.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nodes holding the source's data (one for a standalone server).
    pub source: Vec<Endpoint>,
    pub target: Endpoint,
    pub mode: Mode,
    /// Share of keys compared, in percent (100: all); keys are picked by a hash of their
    /// name, so the same keys are picked on both sides and in every run.
    pub sample_percent: f64,
    /// Keys read per second, over both scans; `None`: unlimited.
    pub rate_limit: Option<u64>,
    /// The full pass plus this many minus one rechecks of the differences found.
    pub rounds: u32,
    pub recheck_delay: Duration,
    pub ttl_tolerance: Duration,
    /// Differing keys listed in the report.
    pub max_diffs: usize,
    /// `SCAN … COUNT` and keys per pipelined batch.
    pub batch: usize,
    /// Elements per chunk when reading a big value.
    pub chunk: usize,
}

impl Config {
    pub fn new(source: Endpoint, target: Endpoint) -> Config {
        Config {
            source: vec![source],
            target,
            mode: Mode::Full,
            sample_percent: 100.0,
            rate_limit: None,
            rounds: 3,
            recheck_delay: Duration::from_secs(1),
            ttl_tolerance: Duration::from_secs(2),
            max_diffs: 20,
            batch: 1000,
            chunk: 1000,
        }
    }
}

/// Live counters for a progress display; read them from another task.
#[derive(Debug, Default)]
pub struct Progress {
    /// Keys the source's `INFO keyspace` announced (an estimate: data is live).
    pub source_keys_total: AtomicU64,
    pub source_keys_scanned: AtomicU64,
    pub target_keys_scanned: AtomicU64,
    /// Current round, from 1.
    pub round: AtomicU32,
    /// Differences not (yet) resolved.
    pub candidates: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{} node {}", .role.name(), .source)]
    Node {
        role: Role,
        #[source]
        source: ferry_resp::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl VerifyError {
    pub fn node(role: Role, source: ferry_resp::Error) -> Self {
        VerifyError::Node { role, source }
    }
}

/// A difference awaiting its recheck.
struct Candidate {
    db: u32,
    key: Bytes,
    problems: Vec<Problem>,
}

fn sampled(key: &[u8], percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    // FNV-1a: stable across runs and builds, unlike the std hasher's contract.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    ((h % 10_000) as f64) < percent * 100.0
}

/// Compares source and target and returns what differs after the rechecks.
pub async fn verify(config: &Config, progress: &Progress) -> Result<Report, VerifyError> {
    let started = Instant::now();
    if !(config.sample_percent > 0.0 && config.sample_percent <= 100.0) {
        return Err(VerifyError::Config(
            "--sample must be above 0 and at most 100".into(),
        ));
    }
    let mut src = Side::open(&config.source, Role::Source).await?;
    let mut tgt = Side::open(std::slice::from_ref(&config.target), Role::Target).await?;
    let source_db = config.source.first().and_then(|e| e.db);
    let cluster = src.is_cluster() || tgt.is_cluster();
    if cluster {
        if let Some(db) = source_db.or(config.target.db).filter(|&d| d != 0) {
            return Err(VerifyError::Config(format!(
                "a Redis Cluster has only database 0; cannot compare db {db} with it"
            )));
        }
    }
    let mut limiter = RateLimiter::new(config.rate_limit);
    let rules = Rules {
        values: config.mode == Mode::Full,
        ttl_tolerance: config.ttl_tolerance,
        chunk: config.chunk.max(1),
    };
    let batch = config.batch.max(1);
    let mut keys_compared = 0u64;
    let mut target_keys_scanned = 0u64;
    let mut candidates = Vec::new();
    let value_method = match (rules.values, src.digest() && tgt.digest()) {
        (false, _) => ValueMethod::None,
        (true, true) => ValueMethod::Digest,
        (true, false) => ValueMethod::Contents,
    };
    // Against a cluster only db 0 is compared; a standalone side's other databases are
    // counted as not compared.
    let mut not_compared = NotCompared::default();
    progress.round.store(1, Relaxed);

    for n in src.masters() {
        let listed = src.node(n).keyspace().await?;
        let dbs: Vec<(u32, u64)> = if cluster {
            if !src.is_cluster() {
                not_compared.source = listed.iter().filter(|(d, _)| *d != 0).map(|(_, k)| k).sum();
            }
            vec![(
                0,
                listed.iter().find(|(d, _)| *d == 0).map_or(0, |(_, k)| *k),
            )]
        } else {
            match source_db.or(config.target.db) {
                Some(db) => vec![(
                    db,
                    listed.iter().find(|(d, _)| *d == db).map_or(0, |(_, k)| *k),
                )],
                None => listed,
            }
        };
        let total: u64 = dbs.iter().map(|(_, k)| k).sum();
        progress.source_keys_total.fetch_add(total, Relaxed);
        for (db, _) in dbs {
            src.select(db).await?;
            tgt.select(db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = src.node(n).scan(&cursor, batch).await?;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| sampled(k, config.sample_percent))
                    .collect();
                limiter.acquire(keys.len() as u64).await;
                let results = side::compare_keys(&mut src, &mut tgt, &keys, rules).await?;
                keys_compared += keys.len() as u64;
                progress
                    .source_keys_scanned
                    .fetch_add(keys.len() as u64, Relaxed);
                for (key, problems) in keys.into_iter().zip(results) {
                    if !problems.is_empty() {
                        candidates.push(Candidate { db, key, problems });
                        progress.candidates.fetch_add(1, Relaxed);
                    }
                }
                if next.as_ref() == b"0" {
                    break;
                }
                cursor = next;
            }
        }
    }

    // Extras: keys on some target node that the source lacks.
    for n in tgt.masters() {
        let listed = tgt.node(n).keyspace().await?;
        let dbs: Vec<u32> = if cluster {
            if !tgt.is_cluster() {
                not_compared.target = listed.iter().filter(|(d, _)| *d != 0).map(|(_, k)| k).sum();
            }
            vec![0]
        } else {
            match source_db.or(config.target.db) {
                Some(db) => vec![db],
                None => listed.into_iter().map(|(db, _)| db).collect(),
            }
        };
        for db in dbs {
            src.select(db).await?;
            tgt.select(db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = tgt.node(n).scan(&cursor, batch).await?;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| sampled(k, config.sample_percent))
                    .collect();
                limiter.acquire(keys.len() as u64).await;
                target_keys_scanned += keys.len() as u64;
                progress
                    .target_keys_scanned
                    .fetch_add(keys.len() as u64, Relaxed);
                let exists = src.exists(&keys).await?;
                for (key, e) in keys.into_iter().zip(exists) {
                    if !e {
                        candidates.push(Candidate {
                            db,
                            key,
                            problems: vec![Problem::ExtraOnTarget],
                        });
                        progress.candidates.fetch_add(1, Relaxed);
                    }
                }
                if next.as_ref() == b"0" {
                    break;
                }
                cursor = next;
            }
        }
    }
    info!(
        candidates = candidates.len(),
        keys_compared, "first round done"
    );

    let mut rounds = 1;
    let mut transient = 0u64;
    while rounds < config.rounds && !candidates.is_empty() {
        tokio::time::sleep(config.recheck_delay).await;
        rounds += 1;
        progress.round.store(rounds, Relaxed);
        let before = candidates.len();
        candidates = recheck(&mut src, &mut tgt, candidates, rules, batch, &mut limiter).await?;
        transient += (before - candidates.len()) as u64;
        progress.candidates.store(candidates.len() as u64, Relaxed);
        debug!(round = rounds, left = candidates.len(), "recheck done");
    }

    let mut report = Report {
        equal: candidates.is_empty(),
        mode: config.mode,
        value_method,
        keys_compared,
        keys_equal: keys_compared,
        missing_on_target: 0,
        extra_on_target: 0,
        type_differences: 0,
        value_differences: 0,
        ttl_differences: 0,
        target_keys_scanned,
        source_cluster: src.is_cluster(),
        target_cluster: tgt.is_cluster(),
        source_keys_not_compared: not_compared.source,
        target_keys_not_compared: not_compared.target,
        transient,
        rounds,
        duration_ms: started.elapsed().as_millis() as u64,
        differences: Vec::new(),
        truncated: candidates.len() > config.max_diffs,
    };
    for c in &candidates {
        let mut extra = false;
        for p in &c.problems {
            match p {
                Problem::MissingOnTarget => report.missing_on_target += 1,
                Problem::ExtraOnTarget => {
                    report.extra_on_target += 1;
                    extra = true;
                }
                Problem::Type { .. } => report.type_differences += 1,
                Problem::Ttl { .. } => report.ttl_differences += 1,
                Problem::Value { .. } => report.value_differences += 1,
            }
        }
        if !extra {
            report.keys_equal = report.keys_equal.saturating_sub(1);
        }
    }
    report.differences = candidates
        .into_iter()
        .take(config.max_diffs)
        .map(|c| Difference {
            db: c.db,
            key: escape_key(&c.key),
            problems: c.problems,
        })
        .collect();
    Ok(report)
}

/// Keys in databases other than 0 on a standalone side compared with a cluster.
#[derive(Default)]
struct NotCompared {
    source: u64,
    target: u64,
}

/// Compares the candidates again; returns those that still differ, with their problems now.
async fn recheck(
    src: &mut Side,
    tgt: &mut Side,
    candidates: Vec<Candidate>,
    rules: Rules,
    batch: usize,
    limiter: &mut RateLimiter,
) -> Result<Vec<Candidate>, VerifyError> {
    let mut by_db: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
    for c in candidates {
        by_db.entry(c.db).or_default().push(c.key);
    }
    let mut left = Vec::new();
    for (db, mut keys) in by_db {
        // A key deleted from the source between the two scans may be listed twice.
        keys.sort_unstable();
        keys.dedup();
        src.select(db).await?;
        tgt.select(db).await?;
        for chunk in keys.chunks(batch) {
            limiter.acquire(chunk.len() as u64).await;
            let results = side::compare_keys(src, tgt, chunk, rules).await?;
            for (key, problems) in chunk.iter().zip(results) {
                if !problems.is_empty() {
                    left.push(Candidate {
                        db,
                        key: key.clone(),
                        problems,
                    });
                }
            }
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_stable_and_roughly_proportional() {
        let picked = (0..10_000)
            .filter(|i| sampled(format!("key:{i}").as_bytes(), 10.0))
            .count();
        assert!((700..1300).contains(&picked), "{picked}");
        assert!(sampled(b"anything", 100.0));
        assert_eq!(sampled(b"k:1", 10.0), sampled(b"k:1", 10.0));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("keys".parse::<Mode>(), Ok(Mode::Keys));
        assert!("bogus".parse::<Mode>().is_err());
    }
}
