//! Jobs: their specs, desired states, verification results, totals, and their history
//! (events).

use super::*;

impl Store {
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
