//! Tasks: one per source shard of a job (see `crate::workers`): planning turns, shards
//! found, claims, renewals, releases and outcomes.

use super::*;

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
