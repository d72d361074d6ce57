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
//! Today a source is one standalone node; [`Config::source`] is already a list of nodes
//! scanned one after another, so a cluster's shards (each compared with the target) slot in
//! once the target side routes by hash slot.

pub mod compare;
pub mod node;
pub mod rate;
pub mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_resp::Endpoint;
use serde::Serialize;
use tracing::{debug, info};

use compare::Rules;
use node::{Node, Role};
use rate::RateLimiter;
pub use report::{escape_key, Difference, Problem, Report, ValueMethod};

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
    if config.source.len() != 1 {
        return Err(VerifyError::Config(
            "verify compares one source node for now (cluster sources are not supported yet)"
                .into(),
        ));
    }
    if !(config.sample_percent > 0.0 && config.sample_percent <= 100.0) {
        return Err(VerifyError::Config(
            "--sample must be above 0 and at most 100".into(),
        ));
    }
    let mut tgt = Node::connect(&config.target, Role::Target).await?;
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
    let mut value_method = ValueMethod::None;
    progress.round.store(1, Relaxed);

    let mut sources = Vec::new();
    for ep in &config.source {
        let mut src = Node::connect(ep, Role::Source).await?;
        if rules.values {
            value_method = if src.digest && tgt.digest {
                ValueMethod::Digest
            } else {
                ValueMethod::Contents
            };
        }
        let dbs = databases(&mut src, ep, &config.target).await?;
        let total: u64 = dbs.iter().map(|(_, n)| n).sum();
        progress.source_keys_total.fetch_add(total, Relaxed);
        for (db, _) in dbs {
            src.select(db).await?;
            tgt.select(db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = src.scan(&cursor, batch).await?;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| sampled(k, config.sample_percent))
                    .collect();
                limiter.acquire(keys.len() as u64).await;
                let results = compare::compare_keys(&mut src, &mut tgt, &keys, rules).await?;
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
        // Extras: target keys that no source node has.
        let dbs = match ep.db.or(config.target.db) {
            Some(db) => vec![db],
            None => tgt
                .keyspace()
                .await?
                .into_iter()
                .map(|(db, _)| db)
                .collect(),
        };
        for db in dbs {
            src.select(db).await?;
            tgt.select(db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = tgt.scan(&cursor, batch).await?;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| sampled(k, config.sample_percent))
                    .collect();
                limiter.acquire(keys.len() as u64).await;
                target_keys_scanned += keys.len() as u64;
                progress
                    .target_keys_scanned
                    .fetch_add(keys.len() as u64, Relaxed);
                let cmds: Vec<Vec<Bytes>> = keys
                    .iter()
                    .map(|k| vec![Bytes::from_static(b"EXISTS"), k.clone()])
                    .collect();
                let exists = src.pipeline(&cmds).await?;
                for (key, e) in keys.into_iter().zip(exists) {
                    if e == ferry_resp::Frame::Integer(0) {
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
        sources.push(src);
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
        let Some(src) = sources.first_mut() else {
            break;
        };
        candidates = recheck(src, &mut tgt, candidates, rules, batch, &mut limiter).await?;
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

/// The source databases to scan: the URL's database, or every one `INFO keyspace` lists.
/// A database is compared with the database of the same index on the target.
async fn databases(
    src: &mut Node,
    source: &Endpoint,
    target: &Endpoint,
) -> Result<Vec<(u32, u64)>, VerifyError> {
    let listed = src.keyspace().await?;
    Ok(match source.db.or(target.db) {
        Some(db) => vec![(
            db,
            listed.iter().find(|(d, _)| *d == db).map_or(0, |(_, n)| *n),
        )],
        None => listed,
    })
}

/// Compares the candidates again; returns those that still differ, with their problems now.
async fn recheck(
    src: &mut Node,
    tgt: &mut Node,
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
            let results = compare::compare_keys(src, tgt, chunk, rules).await?;
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
