//! The job store: instances, jobs and their history, in SQLite (a file, created 0600
//! because it holds passwords) or PostgreSQL (shared by several workers). One code path
//! through sqlx's `Any` driver: runtime queries with `$n` placeholders (both backends take
//! them), timestamps as i64 milliseconds, booleans as integers.
//!
//! Files along the store's seams: `instances`, `jobs` (with their events), `workers`
//! (heartbeats and leases) and `tasks` (one per source shard); this file holds the rows,
//! the connection, the migrations and the helpers they share.

use std::collections::BTreeMap;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod instances;
mod jobs;
mod tasks;
mod workers;

use crate::model::{EndpointSpec, Instance, JobSpec, TaskFigures, Topology};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store {url}: {message}")]
    Open { url: String, message: String },
    #[error("{0}: the database did not answer in time")]
    Timeout(&'static str),
    #[error("a {what} named {name:?} already exists")]
    Exists { what: &'static str, name: String },
}

/// Schema versions, applied in order; each backend has its own SQL.
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_totals.sql")),
    (3, include_str!("../../migrations/sqlite/0003_workers.sql")),
    (4, include_str!("../../migrations/sqlite/0004_verify.sql")),
    (5, include_str!("../../migrations/sqlite/0005_tasks.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_totals.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_workers.sql"),
    ),
    (4, include_str!("../../migrations/postgres/0004_verify.sql")),
    (5, include_str!("../../migrations/postgres/0005_tasks.sql")),
];

/// The database's clock in milliseconds: leases are compared with one clock (the
/// database's), never with the workers' own, so clock skew between workers is harmless.
const PG_NOW: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

/// A task: one source shard of a job, leased and run by one worker.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub job_id: i64,
    /// The shard's stable id ("0", or `slots-<first slot>`): also its checkpoint's name.
    pub shard: String,
    pub owner: Option<String>,
    pub generation: i64,
    pub expires_at: i64,
    /// What the task is doing, as its owner last reported it.
    pub state: Option<String>,
    /// The source node the shard is read from.
    pub node: Option<String>,
    /// completed or failed: the task runs no more (until the job is started again).
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub figures: TaskFigures,
    /// The shard left the source's topology.
    pub retired: bool,
    pub updated_at: i64,
    /// The owner's listen address.
    pub address: Option<String>,
    /// Held and not expired.
    pub live: bool,
}

impl TaskRow {
    /// Still to be run: neither ended nor retired.
    pub fn runnable(&self) -> bool {
        !self.retired && self.outcome.is_none()
    }

    pub fn totals(&self) -> Totals {
        let f = &self.figures;
        Totals {
            records_read: f.records_read,
            records_applied: f.records_applied,
            keys_read: f.keys_read,
            keys_applied: f.keys_applied,
            bytes_read: f.bytes_read,
        }
    }
}

/// A registered worker.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub address: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub draining: bool,
    /// Heartbeat within the lease time.
    pub live: bool,
}

/// What a job is to be, as the user (or its end) left it; stored as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// Made, never started.
    Created,
    Running,
    Stopped,
    Paused,
    /// Ended by itself (full mode).
    Completed,
    /// Ended by a failure no retry mends.
    Failed,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Created => "created",
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Paused => "paused",
            Desired::Completed => "completed",
            Desired::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Desired> {
        [
            Desired::Created,
            Desired::Running,
            Desired::Stopped,
            Desired::Paused,
            Desired::Completed,
            Desired::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored job.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub spec: JobSpec,
    pub desired_state: Desired,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Counts of the job's earlier runs, so the figures add up across restarts.
    pub totals: Totals,
}

/// A job's cumulative counts (the seed's "transactions executed").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub records_read: u64,
    pub records_applied: u64,
    pub keys_read: u64,
    pub keys_applied: u64,
    pub bytes_read: u64,
}

impl Totals {
    pub fn plus(self, o: Totals) -> Totals {
        Totals {
            records_read: self.records_read + o.records_read,
            records_applied: self.records_applied + o.records_applied,
            keys_read: self.keys_read + o.keys_read,
            keys_applied: self.keys_applied + o.keys_applied,
            bytes_read: self.bytes_read + o.bytes_read,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub at: i64,
    pub message: String,
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`: `sqlite://PATH`,
    /// `sqlite::memory:` or `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |message: String| StoreError::Open {
            url: redact(url),
            message,
        };
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut opts = AnyPoolOptions::new();
        if !postgres {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .ok_or_else(|| open_err("use sqlite://PATH or postgres://…".into()))?;
            if path != ":memory:" {
                create_private(path).map_err(|e| open_err(e.to_string()))?;
            }
            // One writer at a time is what SQLite allows; a single connection avoids
            // "database is locked" and keeps an in-memory database one database.
            opts = opts.max_connections(1);
        }
        let pool = opts
            .connect(url)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let store = Store { pool, postgres };
        if !postgres {
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&store.pool)
                .await?;
        }
        store
            .migrate(if postgres { POSTGRES } else { SQLITE })
            .await?;
        Ok(store)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the missing schema versions in one transaction. On PostgreSQL an advisory
    /// lock serializes workers that start together on a new or older database.
    async fn migrate(&self, steps: &'static [(i64, &'static str)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7379001)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS ferry_schema (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT MAX(version) AS v FROM ferry_schema")
            .fetch_one(&mut *tx)
            .await?;
        let current: i64 = row.try_get::<Option<i64>, _>("v")?.unwrap_or(0);
        for (version, sql) in steps.iter().filter(|(v, _)| *v > current) {
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO ferry_schema (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Which backend, and its clock in SQL.
impl Store {
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    fn now(&self) -> &'static str {
        if self.postgres {
            PG_NOW
        } else {
            SQLITE_NOW
        }
    }
}

/// A query built from constant SQL and the constant clock expression (`PG_NOW` or
/// `SQLITE_NOW`): no value is ever formatted into it (values are bound).
fn sql(s: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(s)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn exists(e: sqlx::Error, what: &'static str, name: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Exists {
            what,
            name: name.to_string(),
        },
        _ => StoreError::Db(e),
    }
}

/// Creates the SQLite file readable by its owner only (it holds passwords), or narrows
/// an existing one to that.
fn create_private(path: &str) -> std::io::Result<()> {
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
    }
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(i), Some(at)) if at > i => format!("{}***{}", &url[..i + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(name: &str) -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "source": {"addresses": ["127.0.0.1:1"]},
            "target": {"addresses": ["127.0.0.1:2"]},
        }))
        .expect("spec")
    }

    fn shards(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Tasks at the store level, on two pools (two workers).
    async fn tasks_are_leased_one_worker_each(store: Store, second: Store) {
        let id = store
            .create_job(&spec("tasks"), Desired::Running)
            .await
            .expect("job");
        store.ensure_leases().await.expect("leases");
        // One discovery turn per interval, whoever asks.
        assert!(store.planning_turn(id, "a", 60_000).await.expect("turn"));
        assert!(!second.planning_turn(id, "b", 60_000).await.expect("turn"));
        let (added, retired) = store
            .set_shards(id, &shards(&["slots-0", "slots-5461", "slots-10923"]))
            .await
            .expect("shards");
        assert_eq!(added.len(), 3);
        assert!(retired.is_empty());
        // Idempotent.
        let (added, _) = second
            .set_shards(id, &shards(&["slots-0", "slots-5461", "slots-10923"]))
            .await
            .expect("shards");
        assert!(added.is_empty());

        // Eight workers on two pools race for one task: exactly one wins.
        let mut racing = Vec::new();
        for w in 0..8 {
            let s = if w % 2 == 0 {
                store.clone()
            } else {
                second.clone()
            };
            racing.push(tokio::spawn(async move {
                s.claim_task(id, "slots-0", &format!("w{w}"), 600)
                    .await
                    .expect("claim")
                    .map(|g| (w, g))
            }));
        }
        let mut won = Vec::new();
        for t in racing {
            if let Some(x) = t.await.expect("join") {
                won.push(x);
            }
        }
        assert_eq!(won.len(), 1, "{won:?}");
        let (w, generation) = won[0];
        let owner = format!("w{w}");
        let figures = TaskFigures {
            records_applied: 42,
            ..Default::default()
        };
        assert!(store
            .renew_task(
                id,
                "slots-0",
                &owner,
                generation,
                600,
                "incremental",
                Some("n:1"),
                &figures
            )
            .await
            .expect("renew"));
        // A stale generation or another worker renews nothing.
        assert!(!store
            .renew_task(
                id,
                "slots-0",
                &owner,
                generation - 1,
                600,
                "x",
                None,
                &figures
            )
            .await
            .expect("renew"));
        assert!(!second
            .renew_task(id, "slots-0", "other", generation, 600, "x", None, &figures)
            .await
            .expect("renew"));
        // The other tasks are free: another worker takes one; every worker sees both.
        let g2 = second
            .claim_task(id, "slots-5461", "b", 600)
            .await
            .expect("claim")
            .expect("a free task");
        let rows = second.job_tasks(id).await.expect("tasks");
        let t0 = rows.iter().find(|t| t.shard == "slots-0").expect("slots-0");
        assert!(t0.live && t0.owner.as_deref() == Some(owner.as_str()));
        assert_eq!(t0.state.as_deref(), Some("incremental"));
        assert_eq!(t0.node.as_deref(), Some("n:1"));
        assert_eq!(t0.figures.records_applied, 42);
        // Expired: another worker takes it over, with a new generation, and the old
        // owner's renewal and end are refused.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let g3 = second
            .claim_task(id, "slots-0", "c", 600)
            .await
            .expect("claim")
            .expect("an expired task");
        assert!(g3 > generation);
        assert!(!store
            .renew_task(id, "slots-0", &owner, generation, 600, "x", None, &figures)
            .await
            .expect("renew"));
        assert!(!store
            .finish_task(
                id,
                "slots-0",
                &owner,
                generation,
                "failed",
                Some("stale"),
                &figures
            )
            .await
            .expect("finish"));
        assert_eq!(
            store
                .job(&id.to_string())
                .await
                .expect("job")
                .expect("row")
                .desired_state,
            Desired::Running
        );
        // A resharded source: a gone shard's task is retired and cannot be claimed.
        let (added, retired) = store
            .set_shards(id, &shards(&["slots-0", "slots-5461"]))
            .await
            .expect("shards");
        assert!(added.is_empty());
        assert_eq!(retired, vec!["slots-10923".to_string()]);
        assert_eq!(
            store
                .claim_task(id, "slots-10923", "d", 600)
                .await
                .expect("claim"),
            None
        );
        // Every task completed: the job is completed.
        for (shard, who, g) in [("slots-0", "c", g3), ("slots-5461", "b", g2)] {
            assert!(store
                .finish_task(id, shard, who, g, "completed", None, &figures)
                .await
                .expect("finish"));
        }
        assert_eq!(
            store.complete_finished_jobs().await.expect("complete"),
            vec![id]
        );
        // Started again: the tasks run again; one failing for good fails the job and
        // names its shard.
        store
            .set_desired(id, Desired::Running, None)
            .await
            .expect("start");
        let g = store
            .claim_task(id, "slots-5461", "b", 600)
            .await
            .expect("claim")
            .expect("runs again");
        assert!(store
            .finish_task(id, "slots-5461", "b", g, "failed", Some("boom"), &figures)
            .await
            .expect("finish"));
        let row = store.job(&id.to_string()).await.expect("job").expect("row");
        assert_eq!(row.desired_state, Desired::Failed);
        assert_eq!(row.last_error.as_deref(), Some("shard slots-5461: boom"));
        // Deleting the job deletes its tasks.
        store.delete_job(id).await.expect("delete");
        assert!(store.tasks().await.expect("tasks").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let store = Store::open(&url).await.expect("store");
        tasks_are_leased_one_worker_each(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tasks() {
        use sqlx::Connection;
        let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            eprintln!("FERRY_TEST_POSTGRES_URL not set: skipped");
            return;
        };
        let name = format!("ferry_tasks_{}_{}", std::process::id(), now_ms());
        let mut c = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to FERRY_TEST_POSTGRES_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .expect("create database");
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h, format!("?{q}")),
            None => (base.as_str(), String::new()),
        };
        let (root, _) = head.rsplit_once('/').expect("database URL");
        let url = format!("{root}/{name}{query}");
        let store = Store::open(&url).await.expect("store");
        let second = Store::open(&url).await.expect("second store");
        tasks_are_leased_one_worker_each(store.clone(), second.clone()).await;
        store.close().await;
        second.close().await;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut c)
        .await;
    }
}
