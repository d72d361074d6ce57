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
//! The job's filters and database mapping apply (see [`scope`]): source database `s` is
//! compared with the target database the job writes it to, keys the job does not copy are
//! not compared, and a target key is extra only if the job would have written it (its
//! database receives a filtered-in source database, its name passes the filters) and none
//! of the source databases mapped there holds it.
//!
//! Either side may be a Redis Cluster (see [`side`]): a cluster source is scanned master by
//! master, and every key is read on the master owning its slot on each side; the extras
//! scan covers every target master. A cluster has only db 0, so against a cluster target
//! only the source databases mapped to db 0 are compared, from a cluster source only its
//! db 0 (into the target database it is mapped to), and a standalone side's other keys are
//! reported as not compared.

pub mod compare;
pub mod node;
pub mod rate;
pub mod report;
pub mod scope;
pub mod side;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::DbMap;
use ferry_core::Filter;
use ferry_resp::Endpoint;
use serde::Serialize;
use tracing::{debug, info};

use compare::Rules;
use node::Role;
use rate::RateLimiter;
pub use report::{escape_key, Difference, Problem, Report, ValueMethod};
use scope::Scope;
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
    /// The job's filters: what they leave out is not compared (see [`scope`]).
    pub filter: Option<Arc<Filter>>,
    /// The job's database mapping: source db `s` is compared with target db
    /// `db_map.target(s)`.
    pub db_map: DbMap,
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
            filter: None,
            db_map: DbMap::default(),
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

/// Where a candidate was found, which says how to compare it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    /// Scanning this source database (compared with the target database it maps to).
    Source(u32),
    /// Scanning this target database for keys no source database mapped there holds.
    Target(u32),
}

/// A difference awaiting its recheck.
struct Candidate {
    origin: Origin,
    /// The source database reported: the one scanned, or for a key found on the target,
    /// the source database it was compared with (the first one mapped there if none holds
    /// it).
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
    let scope = Scope::new(
        config.filter.clone(),
        config.db_map.clone(),
        source_db,
        config.target.db,
    )?;
    // The databases the URLs name must exist on a cluster side (db 0 only).
    if let Some(s) = source_db.filter(|_| tgt.is_cluster()) {
        let t = scope.target_of(s);
        if t != 0 {
            return Err(VerifyError::Config(format!(
                "a Redis Cluster has only database 0; cannot compare source db {s} \
                 (mapped to db {t}) with it"
            )));
        }
    }
    if let Some(t) = config.target.db.filter(|_| src.is_cluster()) {
        let mapped = scope.target_of(0);
        if mapped != t {
            return Err(VerifyError::Config(format!(
                "a Redis Cluster has only database 0, compared with target db {mapped}; \
                 cannot compare target db {t} with it"
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
    let mut left_out = LeftOut::default();
    // Source databases holding keys on any node: where a target key is looked for.
    let mut source_dbs = BTreeSet::new();
    progress.round.store(1, Relaxed);

    for n in src.masters() {
        let listed = src.node(n).keyspace().await?;
        source_dbs.extend(listed.iter().map(|(d, _)| *d));
        let mut dbs = Vec::new();
        for (db, keys) in listed {
            if !scope.source_selected(db) {
                continue;
            }
            if !scope.db_allowed(db) {
                left_out.source_filtered += keys;
            } else if tgt.is_cluster() && scope.target_of(db) != 0 {
                // A cluster has only db 0.
                left_out.source_not_compared += keys;
            } else {
                dbs.push((db, keys));
            }
        }
        let total: u64 = dbs.iter().map(|(_, k)| k).sum();
        progress.source_keys_total.fetch_add(total, Relaxed);
        for (db, _) in dbs {
            src.select(db).await?;
            tgt.select(scope.target_of(db)).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = src.node(n).scan(&cursor, batch).await?;
                let scanned = keys.len();
                let keys: Vec<Bytes> = keys.into_iter().filter(|k| scope.key_allowed(k)).collect();
                left_out.source_filtered += (scanned - keys.len()) as u64;
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
                        candidates.push(Candidate {
                            origin: Origin::Source(db),
                            db,
                            key,
                            problems,
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

    // Extras: keys the job would have written to some target node that no source
    // database mapped there holds.
    for n in tgt.masters() {
        let listed = tgt.node(n).keyspace().await?;
        let mut dbs = Vec::new();
        for (db, keys) in listed {
            if !scope.target_selected(db) {
                continue;
            }
            if !cluster_only(scope.sources_of(db), &src).is_empty() {
                dbs.push((db, cluster_only(scope.lookup_of(db), &src)));
                continue;
            }
            // Db 0 holds ferry's checkpoints, which are not data: count its keys by a scan.
            let keys = if db == 0 {
                tgt.select(0).await?;
                count_keys(tgt.node(n), batch, &mut limiter).await?
            } else {
                keys
            };
            if src.is_cluster() && !scope.sources_of(db).is_empty() {
                // Written from a source database other than 0, which a cluster lacks.
                left_out.target_not_compared += keys;
            } else {
                // No source database the job copies is written here: not the job's.
                left_out.target_filtered += keys;
            }
        }
        for (db, sources) in dbs {
            let look: Vec<u32> = sources
                .iter()
                .copied()
                .filter(|s| source_dbs.contains(s))
                .collect();
            tgt.select(db).await?;
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = tgt.node(n).scan(&cursor, batch).await?;
                let scanned = keys.len();
                let keys: Vec<Bytes> = keys.into_iter().filter(|k| scope.key_allowed(k)).collect();
                left_out.target_filtered += (scanned - keys.len()) as u64;
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| sampled(k, config.sample_percent))
                    .collect();
                limiter.acquire(keys.len() as u64).await;
                target_keys_scanned += keys.len() as u64;
                progress
                    .target_keys_scanned
                    .fetch_add(keys.len() as u64, Relaxed);
                let mut found = vec![false; keys.len()];
                for &s in &look {
                    src.select(s).await?;
                    for (f, e) in found.iter_mut().zip(src.exists(&keys).await?) {
                        *f |= e;
                    }
                }
                for (key, f) in keys.into_iter().zip(found) {
                    if !f {
                        candidates.push(Candidate {
                            origin: Origin::Target(db),
                            db: sources.first().copied().unwrap_or(db),
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
        let ctx = Recheck {
            scope: &scope,
            rules,
            batch,
        };
        candidates = recheck(&mut src, &mut tgt, &ctx, candidates, &mut limiter).await?;
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
        source_keys_not_compared: left_out.source_not_compared,
        target_keys_not_compared: left_out.target_not_compared,
        source_keys_filtered: left_out.source_filtered,
        target_keys_filtered: left_out.target_filtered,
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
            target_db: match c.origin {
                Origin::Source(s) => scope.target_of(s),
                Origin::Target(t) => t,
            },
            key: escape_key(&c.key),
            problems: c.problems,
        })
        .collect();
    Ok(report)
}

/// Keys neither compared nor scanned for extras, by reason.
#[derive(Default)]
struct LeftOut {
    /// Source keys in databases other than those mapped to a cluster target's db 0.
    source_not_compared: u64,
    /// Target keys in databases a cluster source (db 0 only) is not mapped to.
    target_not_compared: u64,
    /// Source keys the job's filters leave out.
    source_filtered: u64,
    /// Target keys the job would not have written.
    target_filtered: u64,
}

/// The source databases among `dbs` that `src` can hold (a cluster: 0 only).
fn cluster_only(mut dbs: Vec<u32>, src: &Side) -> Vec<u32> {
    if src.is_cluster() {
        dbs.retain(|&s| s == 0);
    }
    dbs
}

/// The keys of the node's selected database, ferry's checkpoints left out.
async fn count_keys(
    node: &mut node::Node,
    batch: usize,
    limiter: &mut RateLimiter,
) -> Result<u64, VerifyError> {
    let mut cursor = Bytes::from_static(b"0");
    let mut n = 0u64;
    loop {
        let (next, keys) = node.scan(&cursor, batch).await?;
        limiter.acquire(keys.len() as u64).await;
        n += keys.len() as u64;
        if next.as_ref() == b"0" {
            return Ok(n);
        }
        cursor = next;
    }
}

/// What a recheck needs besides the connections.
struct Recheck<'a> {
    scope: &'a Scope,
    rules: Rules,
    batch: usize,
}

/// Compares the candidates again; returns those that still differ, with their problems now.
/// A key found on the target is compared with every source database mapped there that
/// holds keys now: it is resolved when it equals the key in one of them.
async fn recheck(
    src: &mut Side,
    tgt: &mut Side,
    ctx: &Recheck<'_>,
    candidates: Vec<Candidate>,
    limiter: &mut RateLimiter,
) -> Result<Vec<Candidate>, VerifyError> {
    let mut by_origin: BTreeMap<Origin, Vec<Bytes>> = BTreeMap::new();
    for c in candidates {
        by_origin.entry(c.origin).or_default().push(c.key);
    }
    let mut source_dbs = BTreeSet::new();
    if by_origin.keys().any(|o| matches!(o, Origin::Target(_))) {
        for n in src.masters() {
            let listed = src.node(n).keyspace().await?;
            source_dbs.extend(listed.into_iter().map(|(d, _)| d));
        }
    }
    let mut left = Vec::new();
    for (origin, mut keys) in by_origin {
        // A key deleted from the source between the two scans may be listed twice.
        keys.sort_unstable();
        keys.dedup();
        match origin {
            Origin::Source(db) => {
                src.select(db).await?;
                tgt.select(ctx.scope.target_of(db)).await?;
                for chunk in keys.chunks(ctx.batch) {
                    limiter.acquire(chunk.len() as u64).await;
                    let results = side::compare_keys(src, tgt, chunk, ctx.rules).await?;
                    for (key, problems) in chunk.iter().zip(results) {
                        if !problems.is_empty() {
                            left.push(Candidate {
                                origin,
                                db,
                                key: key.clone(),
                                problems,
                            });
                        }
                    }
                }
            }
            Origin::Target(t) => {
                let sources = cluster_only(ctx.scope.lookup_of(t), src);
                let first = sources.first().copied().unwrap_or(t);
                let look: Vec<u32> = sources
                    .into_iter()
                    .filter(|s| source_dbs.contains(s))
                    .collect();
                tgt.select(t).await?;
                for chunk in keys.chunks(ctx.batch) {
                    limiter.acquire(chunk.len() as u64).await;
                    // Per key: the source database it is reported with and its problems;
                    // `None` once it equals the key in some source database.
                    let mut state: Vec<Option<(u32, Vec<Problem>)>> =
                        vec![Some((first, vec![Problem::ExtraOnTarget])); chunk.len()];
                    if look.is_empty() {
                        // No source database mapped here holds keys: only the target matters.
                        for (st, e) in state.iter_mut().zip(tgt.exists(chunk).await?) {
                            if !e {
                                *st = None;
                            }
                        }
                    }
                    for &s in &look {
                        src.select(s).await?;
                        let results = side::compare_keys(src, tgt, chunk, ctx.rules).await?;
                        for (st, problems) in state.iter_mut().zip(results) {
                            if problems.is_empty() {
                                *st = None;
                            } else if let Some((db, p)) = st {
                                // A source database holding the key says more than "extra".
                                if *p == [Problem::ExtraOnTarget]
                                    && problems != [Problem::ExtraOnTarget]
                                {
                                    *db = s;
                                    *p = problems;
                                }
                            }
                        }
                    }
                    for (key, st) in chunk.iter().zip(state) {
                        if let Some((db, problems)) = st {
                            left.push(Candidate {
                                origin,
                                db,
                                key: key.clone(),
                                problems,
                            });
                        }
                    }
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
