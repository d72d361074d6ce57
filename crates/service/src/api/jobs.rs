//! A job's life: list, show, create (with its pre-check gate), update, start, stop, pause,
//! resume, delete (its traces on the target with it).

use super::*;

pub(super) async fn list_jobs(State(app): Shared) -> ApiResult<Json<Value>> {
    let tasks = app.store.tasks().await?;
    let jobs: Vec<JobView> = app
        .store
        .jobs()
        .await?
        .iter()
        .map(|row| {
            let mine: Vec<TaskRow> = tasks
                .iter()
                .filter(|t| t.job_id == row.id)
                .cloned()
                .collect();
            let mut v = view(row, &local(&app, row.id), &mine);
            v.samples = None;
            v
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

pub(super) async fn find(app: &App, id: &str) -> ApiResult<JobRow> {
    app.store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))
}

pub(super) async fn show_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    let mut v = job_view(&app, &row).await?;
    v.history = Some(app.store.events(row.id, 200).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(super) struct CreateQuery {
    /// Start right away (after a passing pre-check).
    #[serde(default)]
    pub(super) start: bool,
}

pub(super) async fn create_job(
    State(app): Shared,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let mut spec: JobSpec = parse(&body)?;
    resolve(&app, &mut spec.source).await?;
    resolve(&app, &mut spec.target).await?;
    let config = spec.config().map_err(ApiError::bad)?;
    if app.store.job(&spec.name).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "a job named {:?} already exists",
            spec.name
        )));
    }
    if q.start {
        gate(&config).await?;
    }
    let desired = if q.start {
        Desired::Running
    } else {
        Desired::Created
    };
    let id = app.store.create_job(&spec, desired).await?;
    if q.start {
        app.store.event(id, "started").await?;
        claim_now(&app).await;
    }
    let row = find(&app, &id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(job_view(&app, &row).await?)))
}

pub(super) async fn update_job(
    State(app): Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    let held = app.store.job_tasks(row.id).await?.iter().any(|t| t.live);
    let here = app.manager.of_job(row.id).iter().any(|r| !r.is_finished());
    if here || held || row.desired_state == Desired::Running {
        return Err(ApiError::conflict("stop the job before changing it"));
    }
    let mut spec: JobSpec = parse(&body)?;
    if spec.name != row.spec.name {
        return Err(ApiError::bad(
            "a job's name cannot change: it names the job's checkpoint on the target",
        ));
    }
    resolve(&app, &mut spec.source).await?;
    resolve(&app, &mut spec.target).await?;
    // A password left out keeps the stored one; validate with what will be used.
    let mut merged = spec.clone();
    if merged.source.password.is_none() {
        merged.source.password = row.spec.source.password.clone();
    }
    if merged.target.password.is_none() {
        merged.target.password = row.spec.target.password.clone();
    }
    merged.config().map_err(ApiError::bad)?;
    app.store.update_job(row.id, &spec).await?;
    show_job(State(app), Path(row.id.to_string())).await
}

/// Refuses to start a job whose pre-check fails (409, with the checks). A target holding
/// this job's own checkpoints passes as "resumes there" (see `ferry_sync::precheck`).
pub(super) async fn gate(config: &ferry_sync::JobConfig) -> ApiResult<Vec<Check>> {
    let checks = ferry_sync::precheck(config).await;
    if ferry_sync::precheck::worst(&checks) == Level::Fail {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: "the pre-check failed: fix what it reports first".into(),
            checks: Some(checks),
        });
    }
    Ok(checks)
}

/// The job's source shards as its tasks know them ("0" before its first discovery).
pub(super) async fn shards_of(app: &App, id: i64) -> ApiResult<Vec<String>> {
    let mut shards: Vec<String> = app
        .store
        .job_tasks(id)
        .await?
        .into_iter()
        .map(|t| t.shard)
        .collect();
    if shards.is_empty() {
        shards.push("0".into());
    }
    Ok(shards)
}

/// Lets this worker discover the shards of the jobs that should run and claim their
/// tasks now (rather than at its next heartbeat); tasks above its fair share are left to
/// the other workers.
pub(super) async fn claim_now(app: &App) {
    app.workers.plan_now().await;
    if let Err(e) = app.workers.tick().await {
        warn!(error = %e, "cannot claim the job now: the workers will at their next heartbeat");
    }
}

pub(super) async fn start(app: &App, row: &JobRow, event: &str) -> ApiResult<()> {
    if row.desired_state == Desired::Running {
        return Ok(());
    }
    let config = row.spec.config().map_err(ApiError::bad)?;
    gate(&config).await?;
    app.store
        .set_desired(row.id, Desired::Running, None)
        .await?;
    app.store.event(row.id, event).await?;
    claim_now(app).await;
    Ok(())
}

pub(super) async fn start_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    start(&app, &row, "started").await?;
    show_job(State(app), Path(row.id.to_string())).await
}

pub(super) async fn resume_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    if row.desired_state != Desired::Paused {
        return Err(ApiError::conflict(format!(
            "the job is {}, not paused",
            row.desired_state
        )));
    }
    start(&app, &row, "resumed").await?;
    show_job(State(app), Path(row.id.to_string())).await
}

pub(super) async fn halt(app: &App, id: &str, state: Desired) -> ApiResult<i64> {
    let row = find(app, id).await?;
    app.store.set_desired(row.id, state, None).await?;
    app.store
        .event(row.id, &format!("{state} by the user"))
        .await?;
    stop_anywhere(app, row.id).await?;
    Ok(row.id)
}

/// Stops the job's tasks this worker runs, and waits (up to the lease time and a
/// heartbeat) for the workers that run the others to stop them and release their leases.
pub(super) async fn stop_anywhere(app: &App, id: i64) -> ApiResult<()> {
    app.workers.stop_local(id).await;
    let until = std::time::Instant::now() + app.workers.lease() * 4 / 3;
    while app.store.job_tasks(id).await?.iter().any(|t| t.live) && std::time::Instant::now() < until
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(super) async fn stop_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, Desired::Stopped).await?;
    show_job(State(app), Path(id.to_string())).await
}

pub(super) async fn pause_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, Desired::Paused).await?;
    show_job(State(app), Path(id.to_string())).await
}

pub(super) async fn delete_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    if row.desired_state == Desired::Running {
        // The worker running it stops it when it sees it is no longer to run.
        app.store
            .set_desired(row.id, Desired::Stopped, None)
            .await?;
    }
    stop_anywhere(&app, row.id).await?;
    for r in app.manager.of_job(row.id) {
        app.manager.forget(&r.key);
    }
    // Every shard's checkpoint and the job's ownership record go with it.
    let shards = shards_of(&app, row.id).await?;
    let warning = match row.spec.target.endpoint() {
        Ok(target) => {
            let cluster = row.spec.target.topology == crate::model::Topology::Cluster;
            ferry_sync::ownership::forget_job(&target, cluster, &row.spec.name, &shards)
                .await
                .err()
        }
        Err(e) => Some(e),
    };
    app.store.delete_job(row.id).await?;
    Ok(Json(
        json!({ "deleted": row.spec.name, "checkpoint_deleted": warning.is_none(), "warning": warning }),
    ))
}
