//! The job store: instances, jobs and their history, in SQLite (a file, created 0600
//! because it holds passwords) or PostgreSQL (shared by several workers). One code path
//! through sqlx's `Any` driver: runtime queries with `$n` placeholders (both backends take
//! them), timestamps as i64 milliseconds, booleans as integers.

use std::collections::BTreeMap;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::model::{EndpointSpec, Instance, JobSpec, TaskFigures};

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
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_totals.sql")),
    (3, include_str!("../migrations/sqlite/0003_workers.sql")),
    (4, include_str!("../migrations/sqlite/0004_verify.sql")),
    (5, include_str!("../migrations/sqlite/0005_tasks.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_totals.sql")),
    (3, include_str!("../migrations/postgres/0003_workers.sql")),
    (4, include_str!("../migrations/postgres/0004_verify.sql")),
    (5, include_str!("../migrations/postgres/0005_tasks.sql")),
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

    // ---- instances ----

    pub async fn create_instance(&self, i: &Instance) -> Result<i64, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO instances (name, topology, addresses, username, password, tls, labels, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(i.name.clone())
        .bind(i.endpoint.topology.clone())
        .bind(json(&i.endpoint.addresses))
        .bind(i.endpoint.username.clone())
        .bind(i.endpoint.password.clone())
        .bind(i.endpoint.tls as i64)
        .bind(json(&i.labels))
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| exists(e, "instance", &i.name))?;
        Ok(r.try_get("id")?)
    }

    pub async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_row).collect()
    }

    pub async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        let row = sqlx::query("SELECT * FROM instances WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_row).transpose()
    }

    /// Replaces an instance; a missing password keeps the stored one.
    pub async fn update_instance(&self, name: &str, i: &Instance) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET name = $1, topology = $2, addresses = $3, username = $4, \
             password = COALESCE($5, password), tls = $6, labels = $7, updated_at = $8 WHERE name = $9",
        )
        .bind(i.name.clone())
        .bind(i.endpoint.topology.clone())
        .bind(json(&i.endpoint.addresses))
        .bind(i.endpoint.username.clone())
        .bind(i.endpoint.password.clone())
        .bind(i.endpoint.tls as i64)
        .bind(json(&i.labels))
        .bind(now_ms())
        .bind(name.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| exists(e, "instance", &i.name))?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_instance(&self, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM instances WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- jobs ----

    pub async fn create_job(&self, spec: &JobSpec, desired: Desired) -> Result<i64, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO jobs (name, description, desired_state, spec, source_password, target_password, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(spec.name.clone())
        .bind(spec.description.clone())
        .bind(desired.to_string())
        .bind(json(spec))
        .bind(spec.source.password.clone())
        .bind(spec.target.password.clone())
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| exists(e, "job", &spec.name))?;
        let id: i64 = r.try_get("id")?;
        sqlx::query("INSERT INTO job_events (job_id, at, message) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(now)
            .bind("created".to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// By numeric id or by name.
    pub async fn job(&self, id_or_name: &str) -> Result<Option<JobRow>, StoreError> {
        let row = match id_or_name.parse::<i64>() {
            Ok(id) => {
                sqlx::query("SELECT * FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Err(_) => None,
        };
        let row = match row {
            Some(r) => Some(r),
            None => {
                sqlx::query("SELECT * FROM jobs WHERE name = $1")
                    .bind(id_or_name.to_string())
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(job_row).transpose()
    }

    /// Replaces a job's spec; a missing password keeps the stored one.
    pub async fn update_job(&self, id: i64, spec: &JobSpec) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET name = $1, description = $2, spec = $3, \
             source_password = COALESCE($4, source_password), target_password = COALESCE($5, target_password), \
             updated_at = $6 WHERE id = $7",
        )
        .bind(spec.name.clone())
        .bind(spec.description.clone())
        .bind(json(spec))
        .bind(spec.source.password.clone())
        .bind(spec.target.password.clone())
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| exists(e, "job", &spec.name))?;
        self.event(id, "updated").await
    }

    pub async fn set_desired(
        &self,
        id: i64,
        state: Desired,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET desired_state = $1, last_error = COALESCE($2, last_error), updated_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(error.map(str::to_string))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if state == Desired::Running {
            // Started again: every shard runs again, and the shards are discovered anew.
            sqlx::query("UPDATE job_tasks SET outcome = NULL, error = NULL WHERE job_id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            sqlx::query("UPDATE job_leases SET expires_at = 0 WHERE job_id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The job's last `ferry verify` (JSON: status, times, and the report or the error).
    pub async fn set_verification(&self, id: i64, json: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET verify_report = $1 WHERE id = $2")
            .bind(json)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn verification(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT verify_report FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<String>, _>("verify_report")?,
            None => None,
        })
    }

    pub async fn save_totals(&self, id: i64, t: Totals) -> Result<(), StoreError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE jobs SET records_read = $1, records_applied = $2, keys_read = $3, keys_applied = $4, bytes_read = $5 WHERE id = $6",
        )
        .bind(n(t.records_read))
        .bind(n(t.records_applied))
        .bind(n(t.keys_read))
        .bind(n(t.keys_applied))
        .bind(n(t.bytes_read))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_job(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM job_events WHERE job_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM job_leases WHERE job_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM job_tasks WHERE job_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn event(&self, id: i64, message: &str) -> Result<(), StoreError> {
        self.event_at(id, now_ms(), message).await
    }

    pub async fn event_at(&self, id: i64, at: i64, message: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO job_events (job_id, at, message) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(at)
            .bind(message.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The latest `limit` events, oldest first.
    pub async fn events(&self, id: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, message FROM job_events WHERE job_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Event {
                    at: r.try_get("at")?,
                    message: r.try_get("message")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.reverse();
        Ok(out)
    }
}

/// Workers and leases (see `crate::workers`).
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

    /// Registers the worker or renews its heartbeat.
    pub async fn worker_heartbeat(
        &self,
        id: &str,
        address: &str,
        draining: bool,
    ) -> Result<(), StoreError> {
        let now = self.now();
        sqlx::query(sql(format!(
            "INSERT INTO workers (id, address, started_at, heartbeat_at, draining) VALUES ($1, $2, {now}, {now}, $3) \
             ON CONFLICT (id) DO UPDATE SET address = $2, heartbeat_at = {now}, draining = $3"
        )))
        .bind(id.to_string())
        .bind(address.to_string())
        .bind(draining as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_worker(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every registered worker; those silent for longer than `lease_ms` are not live,
    /// and those silent for ten times that are forgotten.
    pub async fn workers(&self, lease_ms: i64) -> Result<Vec<WorkerRow>, StoreError> {
        let now = self.now();
        sqlx::query(sql(format!(
            "DELETE FROM workers WHERE heartbeat_at < {now} - $1"
        )))
        .bind(lease_ms.saturating_mul(10))
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(sql(format!(
            "SELECT id, address, started_at, heartbeat_at, draining, {now} AS now FROM workers ORDER BY started_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let heartbeat_at: i64 = r.try_get("heartbeat_at")?;
                let now: i64 = r.try_get("now")?;
                Ok(WorkerRow {
                    id: r.try_get("id")?,
                    address: r.try_get("address")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at,
                    draining: r.try_get::<i64, _>("draining")? != 0,
                    live: heartbeat_at >= now - lease_ms,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Gives every job that should run a lease row (unowned) if it has none yet.
    pub async fn ensure_leases(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO job_leases (job_id, owner, generation, expires_at) \
             SELECT id, NULL, 0, 0 FROM jobs WHERE desired_state = 'running' \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets every lease and worker: a SQLite store has one process, so whatever an
    /// earlier process held is void.
    pub async fn clear_leases(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_leases SET owner = NULL, expires_at = 0, state = NULL")
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE job_tasks SET owner = NULL, expires_at = 0, state = NULL")
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM workers")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Tasks: one per source shard of a job (see `crate::workers`).
impl Store {
    /// Takes the job's turn to discover its source's shards if it is due (never done, or
    /// older than its interval): of the workers asking, exactly one gets true. The next
    /// turn is due `next_ms` later.
    pub async fn planning_turn(
        &self,
        job_id: i64,
        owner: &str,
        next_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let row = sqlx::query(sql(format!(
            "UPDATE job_leases SET owner = $1, generation = generation + 1, expires_at = {now} + $2 \
             WHERE job_id = $3 AND expires_at < {now} RETURNING job_id"
        )))
        .bind(owner.to_string())
        .bind(next_ms)
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// A discovery failed: the next turn is due at once (the next heartbeat).
    pub async fn planning_again(&self, job_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_leases SET expires_at = 0 WHERE job_id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes the job's tasks the given shards: missing ones are added (unowned), those no
    /// longer among them are retired (their owners stop them), and returning ones run
    /// again. Returns (added, retired).
    pub async fn set_shards(
        &self,
        job_id: i64,
        shards: &[String],
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let rows = sqlx::query("SELECT shard, retired FROM job_tasks WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        let mut known = BTreeMap::new();
        for r in &rows {
            let shard: String = r.try_get("shard")?;
            let retired: i64 = r.try_get("retired")?;
            known.insert(shard, retired != 0);
        }
        let now = now_ms();
        let mut added = Vec::new();
        for shard in shards {
            match known.get(shard) {
                None => {
                    let r = sqlx::query(
                        "INSERT INTO job_tasks (job_id, shard, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (job_id, shard) DO NOTHING",
                    )
                    .bind(job_id)
                    .bind(shard.clone())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    if r.rows_affected() > 0 {
                        added.push(shard.clone());
                    }
                }
                Some(true) => {
                    sqlx::query(
                        "UPDATE job_tasks SET retired = 0, updated_at = $3 WHERE job_id = $1 AND shard = $2",
                    )
                    .bind(job_id)
                    .bind(shard.clone())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    added.push(shard.clone());
                }
                Some(false) => {}
            }
        }
        let mut retired = Vec::new();
        for (shard, was_retired) in &known {
            if !was_retired && !shards.contains(shard) {
                sqlx::query(
                    "UPDATE job_tasks SET retired = 1, updated_at = $3 WHERE job_id = $1 AND shard = $2",
                )
                .bind(job_id)
                .bind(shard.clone())
                .bind(now)
                .execute(&self.pool)
                .await?;
                retired.push(shard.clone());
            }
        }
        Ok((added, retired))
    }

    /// Every task, with its owner's address.
    pub async fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        self.tasks_where(None).await
    }

    /// The tasks of one job.
    pub async fn job_tasks(&self, job_id: i64) -> Result<Vec<TaskRow>, StoreError> {
        self.tasks_where(Some(job_id)).await
    }

    async fn tasks_where(&self, job_id: Option<i64>) -> Result<Vec<TaskRow>, StoreError> {
        let now = self.now();
        let rows = sqlx::query(sql(format!(
            "SELECT t.job_id, t.shard, t.owner, t.generation, t.expires_at, t.state, t.node, t.outcome, \
             t.error, t.figures, t.retired, t.updated_at, w.address, {now} AS now \
             FROM job_tasks t LEFT JOIN workers w ON w.id = t.owner \
             WHERE ($1 < 0 OR t.job_id = $1) ORDER BY t.job_id, t.shard"
        )))
        .bind(job_id.unwrap_or(-1))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let owner: Option<String> = r.try_get("owner")?;
                let expires_at: i64 = r.try_get("expires_at")?;
                let now: i64 = r.try_get("now")?;
                let figures: Option<String> = r.try_get("figures")?;
                Ok(TaskRow {
                    job_id: r.try_get("job_id")?,
                    shard: r.try_get("shard")?,
                    live: owner.is_some() && expires_at >= now,
                    owner,
                    generation: r.try_get("generation")?,
                    expires_at,
                    state: r.try_get("state")?,
                    node: r.try_get("node")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                    figures: figures
                        .and_then(|f| serde_json::from_str(&f).ok())
                        .unwrap_or_default(),
                    retired: r.try_get::<i64, _>("retired")? != 0,
                    updated_at: r.try_get("updated_at")?,
                    address: r.try_get("address")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Takes a task of a running job that nobody holds (never held, released, or
    /// expired) and that is still to run: one `UPDATE` whose condition PostgreSQL
    /// evaluates again on the row it locks, so of two workers racing for it exactly one
    /// gets a row back. Returns the new generation.
    pub async fn claim_task(
        &self,
        job_id: i64,
        shard: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = self.now();
        let row = sqlx::query(sql(format!(
            "UPDATE job_tasks SET owner = $1, generation = generation + 1, expires_at = {now} + $2, \
             state = NULL, updated_at = {now} \
             WHERE job_id = $3 AND shard = $4 AND (owner IS NULL OR expires_at < {now}) \
             AND retired = 0 AND outcome IS NULL \
             AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = $3 AND jobs.desired_state = 'running') \
             RETURNING generation"
        )))
        .bind(owner.to_string())
        .bind(lease_ms)
        .bind(job_id)
        .bind(shard.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("generation")).transpose()?)
    }

    /// Extends a task's lease still held by `owner` at `generation` and not expired, and
    /// stores the task's state and figures; false when the lease is lost.
    #[allow(clippy::too_many_arguments)]
    pub async fn renew_task(
        &self,
        job_id: i64,
        shard: &str,
        owner: &str,
        generation: i64,
        lease_ms: i64,
        state: &str,
        node: Option<&str>,
        figures: &TaskFigures,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let row = sqlx::query(sql(format!(
            "UPDATE job_tasks SET expires_at = {now} + $1, state = $2, node = COALESCE($3, node), \
             figures = $4, updated_at = {now} \
             WHERE job_id = $5 AND shard = $6 AND owner = $7 AND generation = $8 AND expires_at >= {now} \
             RETURNING job_id"
        )))
        .bind(lease_ms)
        .bind(state.to_string())
        .bind(node.map(str::to_string))
        .bind(json(figures))
        .bind(job_id)
        .bind(shard.to_string())
        .bind(owner.to_string())
        .bind(generation)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Gives a task back (stopped here): another worker may take it at once. Its last
    /// figures stay for the job's view.
    pub async fn release_task(
        &self,
        job_id: i64,
        shard: &str,
        owner: &str,
        generation: i64,
        figures: Option<&TaskFigures>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_tasks SET owner = NULL, expires_at = 0, state = NULL, \
             figures = COALESCE($1, figures), updated_at = $2 \
             WHERE job_id = $3 AND shard = $4 AND owner = $5 AND generation = $6",
        )
        .bind(figures.map(json))
        .bind(now_ms())
        .bind(job_id)
        .bind(shard.to_string())
        .bind(owner.to_string())
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores how a task ended (completed, failed, or retired: its shard left the source)
    /// and gives it back, only if `owner` still holds it at `generation`. A failed task
    /// fails its job, naming the shard and the cause.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_task(
        &self,
        job_id: i64,
        shard: &str,
        owner: &str,
        generation: i64,
        outcome: &str,
        error: Option<&str>,
        figures: &TaskFigures,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let retired = outcome == "retired";
        let r = sqlx::query(
            "UPDATE job_tasks SET owner = NULL, expires_at = 0, state = NULL, outcome = $1, error = $2, \
             figures = $3, retired = $4, updated_at = $5 \
             WHERE job_id = $6 AND shard = $7 AND owner = $8 AND generation = $9",
        )
        .bind((!retired).then(|| outcome.to_string()))
        .bind(error.map(str::to_string))
        .bind(json(figures))
        .bind(retired as i64)
        .bind(now_ms())
        .bind(job_id)
        .bind(shard.to_string())
        .bind(owner.to_string())
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        let held = r.rows_affected() > 0;
        if held && outcome == "failed" {
            let message = format!("shard {shard}: {}", error.unwrap_or("failed"));
            sqlx::query(
                "UPDATE jobs SET desired_state = 'failed', last_error = $1, updated_at = $2 \
                 WHERE id = $3 AND desired_state = 'running'",
            )
            .bind(message)
            .bind(now_ms())
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Marks completed the running jobs whose every task completed (full mode); returns
    /// their ids.
    pub async fn complete_finished_jobs(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "UPDATE jobs SET desired_state = 'completed', updated_at = $1 \
             WHERE desired_state = 'running' \
             AND EXISTS (SELECT 1 FROM job_tasks t WHERE t.job_id = jobs.id AND t.retired = 0) \
             AND NOT EXISTS (SELECT 1 FROM job_tasks t WHERE t.job_id = jobs.id AND t.retired = 0 \
                 AND (t.outcome IS NULL OR t.outcome <> 'completed')) \
             RETURNING id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<Vec<i64>, sqlx::Error>>()
            .map_err(StoreError::from)
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

fn instance_row(r: &AnyRow) -> Result<Instance, StoreError> {
    let addresses: String = r.try_get("addresses")?;
    let labels: String = r.try_get("labels")?;
    let tls: i64 = r.try_get("tls")?;
    Ok(Instance {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        endpoint: EndpointSpec {
            instance: None,
            topology: r.try_get("topology")?,
            addresses: serde_json::from_str(&addresses)
                .map_err(|e| StoreError::Corrupt(format!("instance addresses: {e}")))?,
            username: r.try_get("username")?,
            password: r.try_get("password")?,
            password_set: false,
            tls: tls != 0,
            // Not a column of saved instances: a job names Sentinel's master itself.
            master_name: None,
        },
        labels: serde_json::from_str::<BTreeMap<String, String>>(&labels)
            .map_err(|e| StoreError::Corrupt(format!("instance labels: {e}")))?,
    })
}

fn job_row(r: &AnyRow) -> Result<JobRow, StoreError> {
    let spec: String = r.try_get("spec")?;
    let mut spec: JobSpec =
        serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
    spec.source.password = r.try_get("source_password")?;
    spec.target.password = r.try_get("target_password")?;
    spec.source.password_set = false;
    spec.target.password_set = false;
    Ok(JobRow {
        id: r.try_get("id")?,
        spec,
        desired_state: {
            let name: String = r.try_get("desired_state")?;
            Desired::parse(&name).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown desired state {name:?}").into())
            })?
        },
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        totals: {
            let n = |k: &str| -> Result<u64, sqlx::Error> {
                Ok(u64::try_from(r.try_get::<i64, _>(k)?).unwrap_or(0))
            };
            Totals {
                records_read: n("records_read")?,
                records_applied: n("records_applied")?,
                keys_read: n("keys_read")?,
                keys_applied: n("keys_applied")?,
                bytes_read: n("bytes_read")?,
            }
        },
    })
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
