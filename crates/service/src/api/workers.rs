//! The workers of the job service and what each holds.

use super::*;

pub(super) async fn list_workers(State(app): Shared) -> ApiResult<Json<Value>> {
    let lease_ms = i64::try_from(app.workers.lease().as_millis()).unwrap_or(i64::MAX);
    let workers = app.store.workers(lease_ms).await?;
    let tasks = app.store.tasks().await?;
    let list: Vec<Value> = workers
        .iter()
        .map(|w| {
            let held: Vec<&TaskRow> = tasks
                .iter()
                .filter(|t| t.live && t.owner.as_deref() == Some(w.id.as_str()))
                .collect();
            let mut jobs: Vec<i64> = held.iter().map(|t| t.job_id).collect();
            jobs.dedup();
            let shards: Vec<Value> = held
                .iter()
                .map(|t| json!({ "job": t.job_id, "shard": t.shard }))
                .collect();
            json!({
                "id": w.id, "address": w.address, "started_at": w.started_at,
                "heartbeat_at": w.heartbeat_at, "draining": w.draining, "live": w.live,
                "jobs": jobs, "tasks": shards, "this": w.id == app.workers.id(),
            })
        })
        .collect();
    Ok(Json(
        json!({ "workers": list, "lease_seconds": app.workers.lease().as_secs_f64() }),
    ))
}
