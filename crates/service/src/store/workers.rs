//! Workers and leases (see `crate::workers`): heartbeats, who is live, the lease rows.

use super::*;

impl Store {
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
