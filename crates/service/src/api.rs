//! The REST API under `/api/v1`, JSON in and out. Bodies are parsed here rather than by
//! axum's `Json` so that every malformed or invalid request is a 400 with a sentence.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_sync::{Check, Level};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use crate::model::TaskFigures;
use crate::model::{EndpointSpec, Instance, JobSpec};
use crate::runner::{Manager, Running};
use crate::store::{Desired, JobRow, Store, StoreError, TaskRow};

pub struct App {
    pub store: Store,
    pub manager: Manager,
    pub workers: Arc<crate::workers::Workers>,
    pub token: Option<String>,
}

type Shared = State<Arc<App>>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    checks: Option<Vec<Check>>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            checks: None,
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no {what} {id:?}"))
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Exists { .. } => ApiError::conflict(e.to_string()),
            e => {
                warn!(error = %e, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(c) = self.checks {
            body["checks"] = json!(c);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
}

pub fn routes(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/instances", get(list_instances).post(create_instance))
        .route(
            "/instances/{name}",
            get(show_instance)
                .put(update_instance)
                .delete(delete_instance),
        )
        .route("/jobs", get(list_jobs).post(create_job))
        .route(
            "/jobs/{id}",
            get(show_job).put(update_job).delete(delete_job),
        )
        .route("/jobs/{id}/start", post(start_job))
        .route("/jobs/{id}/stop", post(stop_job))
        .route("/jobs/{id}/pause", post(pause_job))
        .route("/jobs/{id}/resume", post(resume_job))
        .route("/jobs/{id}/precheck", post(precheck_job))
        .route("/jobs/{id}/cutover", post(cutover_job))
        .route("/jobs/{id}/verify", post(verify_job).get(verification))
        .route("/workers", get(list_workers))
        .route("/connectivity", post(connectivity))
        .route("/precheck", post(precheck_spec))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .merge(crate::console::routes())
        .with_state(app)
}

/// With a token set, every API call and `/metrics` needs `Authorization: Bearer TOKEN`
/// (the console's static files do not: the page asks for the token).
async fn auth(State(app): Shared, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 7235).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer TOKEN",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../assets/openapi.json"),
    )
}

async fn metrics(State(app): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&app.manager.all()),
    )
}

// ---- instances ----

async fn list_instances(State(app): Shared) -> ApiResult<Json<Value>> {
    let list: Vec<Instance> = app
        .store
        .instances()
        .await?
        .iter()
        .map(Instance::public)
        .collect();
    Ok(Json(json!({ "instances": list })))
}

async fn create_instance(State(app): Shared, body: Bytes) -> ApiResult<impl IntoResponse> {
    let mut i: Instance = parse(&body)?;
    i.validate().map_err(ApiError::bad)?;
    i.id = app.store.create_instance(&i).await?;
    Ok((StatusCode::CREATED, Json(i.public())))
}

async fn show_instance(State(app): Shared, Path(name): Path<String>) -> ApiResult<Json<Instance>> {
    match app.store.instance(&name).await? {
        Some(i) => Ok(Json(i.public())),
        None => Err(ApiError::not_found("instance", &name)),
    }
}

async fn update_instance(
    State(app): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Instance>> {
    let i: Instance = parse(&body)?;
    i.validate().map_err(ApiError::bad)?;
    if !app.store.update_instance(&name, &i).await? {
        return Err(ApiError::not_found("instance", &name));
    }
    show_instance(State(app), Path(i.name)).await
}

async fn delete_instance(State(app): Shared, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if app.store.delete_instance(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("instance", &name))
    }
}

/// Fills an endpoint that names a saved instance from it.
async fn resolve(app: &App, ep: &mut EndpointSpec) -> ApiResult<()> {
    let Some(name) = ep.instance.clone() else {
        return Ok(());
    };
    let saved = app
        .store
        .instance(&name)
        .await?
        .ok_or_else(|| ApiError::bad(format!("no saved instance {name:?}")))?;
    *ep = EndpointSpec {
        instance: Some(name),
        ..saved.endpoint
    };
    Ok(())
}

// ---- jobs ----

#[derive(Serialize)]
struct JobView {
    id: i64,
    name: String,
    description: String,
    desired_state: String,
    /// What the job is doing: created, starting, full-sync, incremental, retrying,
    /// completed, stopped, paused, failed (from its shards' states).
    state: String,
    mode: String,
    source_nodes: Vec<String>,
    target_nodes: Vec<String>,
    progress_percent: f64,
    /// Seed: "source transactions executed" (records read).
    source_transactions: u64,
    /// Seed: "target transactions executed" (records applied).
    target_transactions: u64,
    keys_read: u64,
    keys_applied: u64,
    bytes_read: u64,
    /// Absent while any shard's lag is unknown (its source link is down), never 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_seconds: Option<f64>,
    /// Every shard's source link is up.
    link_up: bool,
    /// The longest time since a shard last heard from its source.
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_since_contact: Option<f64>,
    read_rate: f64,
    apply_rate: f64,
    bytes_rate: f64,
    attempts: u32,
    next_attempt: Option<String>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    spec: JobSpec,
    /// The workers that run the job's shards (comma-separated when several), and their
    /// addresses.
    worker: Option<String>,
    worker_address: Option<String>,
    /// One entry per source shard: the worker that runs it, its state and figures.
    shards: Vec<ShardView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<crate::store::Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    samples: Option<Vec<crate::runner::Sample>>,
}

/// One source shard of a job (a task), as its owner runs it or last reported it.
#[derive(Serialize)]
struct ShardView {
    /// "0", or `slots-<first slot>` for a shard of a cluster source.
    shard: String,
    /// starting, full-sync, incremental, retrying, completed, failed, waiting (no
    /// worker holds it), stopped.
    state: String,
    worker: Option<String>,
    worker_address: Option<String>,
    /// The source node the shard is read from.
    node: Option<String>,
    lease_generation: i64,
    /// The shard left the source's topology (resharded).
    retired: bool,
    error: Option<String>,
    #[serde(flatten)]
    figures: TaskFigures,
}

/// The job from its row and its tasks' rows; the tasks this worker runs (`local`) give
/// their live figures.
fn view(row: &JobRow, local: &[Arc<Running>], tasks: &[TaskRow]) -> JobView {
    let mode = row
        .spec
        .mode
        .clone()
        .unwrap_or_else(|| "full+incremental".into());
    let running = row.desired_state == Desired::Running;
    let mut shards: Vec<ShardView> = tasks
        .iter()
        .map(|t| {
            let here = local.iter().find(|r| r.key.shard == t.shard);
            let figures = match here {
                Some(r) => r.figures(),
                None => t.figures.clone(),
            };
            let state = match (&t.outcome, here, t.live) {
                (Some(o), _, _) => o.clone(),
                _ if t.retired => "retired".into(),
                (None, Some(r), _) if !r.is_finished() => r.state_name().into(),
                (None, _, true) => t.state.clone().unwrap_or_else(|| "starting".into()),
                (None, _, false) if running => "waiting".into(),
                (None, _, false) => row.desired_state.as_str().to_string(),
            };
            ShardView {
                shard: t.shard.clone(),
                state,
                worker: t.owner.clone().filter(|_| t.live),
                worker_address: t.address.clone().filter(|_| t.live),
                node: here.and_then(|r| r.node()).or_else(|| t.node.clone()),
                lease_generation: t.generation,
                retired: t.retired,
                error: t.error.clone().or_else(|| figures.last_error.clone()),
                figures,
            }
        })
        .collect();
    let current: Vec<&ShardView> = shards.iter().filter(|s| !s.retired).collect();
    let state = if !running {
        row.desired_state.as_str().to_string()
    } else {
        let has = |s: &str| current.iter().any(|v| v.state == s);
        if current.is_empty() || has("waiting") || has("starting") {
            if has("retrying") {
                "retrying".into()
            } else {
                "starting".into()
            }
        } else if has("retrying") || has("failed") {
            "retrying".into()
        } else if has("full-sync") {
            "full-sync".into()
        } else if current.iter().all(|v| v.state == "completed") {
            "completed".into()
        } else {
            "incremental".into()
        }
    };
    let mut workers: Vec<(String, String)> = Vec::new();
    for s in &current {
        if let Some(w) = &s.worker {
            let pair = (w.clone(), s.worker_address.clone().unwrap_or_default());
            if !workers.contains(&pair) {
                workers.push(pair);
            }
        }
    }
    let join = |f: fn(&(String, String)) -> &String| {
        (!workers.is_empty()).then(|| {
            workers
                .iter()
                .map(|p| f(p).as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let totals = shards.iter().fold(row.totals, |acc, s| {
        acc.plus(crate::store::Totals {
            records_read: s.figures.records_read,
            records_applied: s.figures.records_applied,
            keys_read: s.figures.keys_read,
            keys_applied: s.figures.keys_applied,
            bytes_read: s.figures.bytes_read,
        })
    });
    let sum = |f: fn(&TaskFigures) -> f64| current.iter().map(|s| f(&s.figures)).sum::<f64>();
    let progress = if row.desired_state == Desired::Completed {
        100.0
    } else if current.is_empty() {
        0.0
    } else {
        (sum(|f| f.progress_percent) / current.len() as f64 * 10.0).round() / 10.0
    };
    let last_error = row.last_error.clone().or_else(|| {
        current.iter().find_map(|s| {
            s.error.as_ref().map(|e| {
                if s.shard == "0" || e.starts_with("shard ") {
                    e.clone()
                } else {
                    format!("shard {}: {e}", s.shard)
                }
            })
        })
    });
    let mut v = JobView {
        id: row.id,
        name: row.spec.name.clone(),
        description: row.spec.description.clone(),
        desired_state: row.desired_state.as_str().to_string(),
        state,
        mode,
        source_nodes: row.spec.source.addresses.clone(),
        target_nodes: row.spec.target.addresses.clone(),
        progress_percent: progress,
        source_transactions: totals.records_read,
        target_transactions: totals.records_applied,
        keys_read: totals.keys_read,
        keys_applied: totals.keys_applied,
        bytes_read: totals.bytes_read,
        lag_bytes: Some(0),
        lag_seconds: Some(0.0),
        link_up: !current.is_empty() && current.iter().all(|s| s.figures.link_up),
        seconds_since_contact: current
            .iter()
            .filter_map(|s| s.figures.seconds_since_contact)
            .reduce(f64::max),
        read_rate: 0.0,
        apply_rate: 0.0,
        bytes_rate: 0.0,
        attempts: current
            .iter()
            .map(|s| s.figures.attempts)
            .max()
            .unwrap_or(0),
        next_attempt: current
            .iter()
            .filter_map(|s| s.figures.next_attempt.clone())
            .min(),
        last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
        spec: row.spec.public(),
        worker: join(|p| &p.0),
        worker_address: join(|p| &p.1),
        shards: Vec::new(),
        history: None,
        samples: None,
    };
    if running {
        // One shard whose lag is unknown makes the job's unknown.
        v.lag_bytes = current.iter().map(|s| s.figures.lag_bytes).sum();
        v.lag_seconds = current
            .iter()
            .map(|s| s.figures.lag_seconds)
            .try_fold(0.0, |a, l| l.map(|l| f64::max(a, l)));
        v.read_rate = sum(|f| f.read_rate);
        v.apply_rate = sum(|f| f.apply_rate);
        v.bytes_rate = sum(|f| f.bytes_rate);
    }
    shards.sort_by_key(|s| shard_order(&s.shard));
    v.shards = shards;
    if !local.is_empty() {
        v.samples = Some(merged_samples(local));
    }
    v
}

/// Shards in slot order ("slots-100" before "slots-5461").
fn shard_order(id: &str) -> (u32, String) {
    let n = id
        .strip_prefix("slots-")
        .unwrap_or(id)
        .parse()
        .unwrap_or(u32::MAX);
    (n, id.to_string())
}

/// The chart's points of the tasks run here, added up point by point (all sampled once a
/// second, aligned on the latest).
fn merged_samples(local: &[Arc<Running>]) -> Vec<crate::runner::Sample> {
    let all: Vec<Vec<crate::runner::Sample>> = local.iter().map(|r| r.samples()).collect();
    let Some(longest) = all.iter().map(Vec::len).max() else {
        return Vec::new();
    };
    (0..longest)
        .map(|i| {
            let mut out: Option<crate::runner::Sample> = None;
            for s in &all {
                let Some(p) = (s.len() + i).checked_sub(longest).and_then(|j| s.get(j)) else {
                    continue;
                };
                out = Some(match out {
                    None => *p,
                    Some(o) => crate::runner::Sample {
                        at: o.at.max(p.at),
                        records_read: o.records_read + p.records_read,
                        records_applied: o.records_applied + p.records_applied,
                        bytes_read: o.bytes_read + p.bytes_read,
                        lag_bytes: o.lag_bytes + p.lag_bytes,
                        lag_seconds: o.lag_seconds.max(p.lag_seconds),
                        apply_rate: o.apply_rate + p.apply_rate,
                    },
                });
            }
            out.unwrap_or(crate::runner::Sample {
                at: 0,
                records_read: 0,
                records_applied: 0,
                bytes_read: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
                apply_rate: 0.0,
            })
        })
        .collect()
}

/// The tasks of job `id` this worker runs.
fn local(app: &App, id: i64) -> Vec<Arc<Running>> {
    app.manager
        .of_job(id)
        .into_iter()
        .filter(|r| app.workers.holds(&r.key))
        .collect()
}

async fn job_view(app: &App, row: &JobRow) -> ApiResult<JobView> {
    let tasks = app.store.job_tasks(row.id).await?;
    Ok(view(row, &local(app, row.id), &tasks))
}

async fn list_workers(State(app): Shared) -> ApiResult<Json<Value>> {
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

async fn list_jobs(State(app): Shared) -> ApiResult<Json<Value>> {
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

async fn find(app: &App, id: &str) -> ApiResult<JobRow> {
    app.store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))
}

async fn show_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    let mut v = job_view(&app, &row).await?;
    v.history = Some(app.store.events(row.id, 200).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct CreateQuery {
    /// Start right away (after a passing pre-check).
    #[serde(default)]
    start: bool,
}

async fn create_job(
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

async fn update_job(
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
async fn gate(config: &ferry_sync::JobConfig) -> ApiResult<Vec<Check>> {
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
async fn shards_of(app: &App, id: i64) -> ApiResult<Vec<String>> {
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
async fn claim_now(app: &App) {
    app.workers.plan_now().await;
    if let Err(e) = app.workers.tick().await {
        warn!(error = %e, "cannot claim the job now: the workers will at their next heartbeat");
    }
}

async fn start(app: &App, row: &JobRow, event: &str) -> ApiResult<()> {
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

async fn start_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    start(&app, &row, "started").await?;
    show_job(State(app), Path(row.id.to_string())).await
}

async fn resume_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
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

async fn halt(app: &App, id: &str, state: Desired) -> ApiResult<i64> {
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
async fn stop_anywhere(app: &App, id: i64) -> ApiResult<()> {
    app.workers.stop_local(id).await;
    let until = std::time::Instant::now() + app.workers.lease() * 4 / 3;
    while app.store.job_tasks(id).await?.iter().any(|t| t.live) && std::time::Instant::now() < until
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn stop_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, Desired::Stopped).await?;
    show_job(State(app), Path(id.to_string())).await
}

async fn pause_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, Desired::Paused).await?;
    show_job(State(app), Path(id.to_string())).await
}

async fn delete_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
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
            let cluster = row.spec.target.topology == "cluster";
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    /// "full" (default) or "keys".
    #[serde(default)]
    mode: Option<String>,
    /// Share of keys compared, in percent.
    #[serde(default)]
    sample_percent: Option<f64>,
    #[serde(default)]
    rounds: Option<u32>,
}

/// Starts a `ferry verify` of the job's source against its target in the background; its
/// result is stored with the job (`GET` the same path).
async fn verify_job(
    State(app): Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let row = find(&app, &id).await?;
    let req: VerifyRequest = if body.is_empty() {
        VerifyRequest::default()
    } else {
        parse(&body)?
    };
    let config = row.spec.config().map_err(ApiError::bad)?;
    if config.source_seeds.is_empty() {
        return Err(ApiError::bad(
            "a job reading files has no source to verify against",
        ));
    }
    if let Some(prev) = app.store.verification(row.id).await? {
        let prev: Value = serde_json::from_str(&prev).unwrap_or(Value::Null);
        let started = prev["started_at"].as_i64().unwrap_or(0);
        if prev["status"] == "running" && now_ms() - started < 3_600_000 {
            return Err(ApiError::conflict(
                "a verification of this job is already running",
            ));
        }
    }
    let mut vc = ferry_verify::Config::new(config.source_seeds[0].clone(), config.target.clone());
    vc.source = config.source_seeds.clone();
    // The job's scope: what it does not copy is not compared, and is never extra.
    vc.filter = config.filter.clone();
    vc.db_map = config.db_map.clone();
    if let Some(m) = &req.mode {
        vc.mode = match m.as_str() {
            "full" => ferry_verify::Mode::Full,
            "keys" => ferry_verify::Mode::Keys,
            other => {
                return Err(ApiError::bad(format!(
                    "verify mode {other:?}: use full or keys"
                )))
            }
        };
    }
    if let Some(p) = req.sample_percent {
        if !(p > 0.0 && p <= 100.0) {
            return Err(ApiError::bad("sample_percent must be in (0, 100]"));
        }
        vc.sample_percent = p;
    }
    if let Some(r) = req.rounds {
        vc.rounds = r.clamp(1, 10);
    }
    let started_at = now_ms();
    let running = json!({ "status": "running", "started_at": started_at });
    app.store
        .set_verification(row.id, &running.to_string())
        .await?;
    let store = app.store.clone();
    let job_id = row.id;
    tokio::spawn(async move {
        let progress = ferry_verify::Progress::default();
        let result = ferry_verify::verify(&vc, &progress).await;
        let done = match result {
            Ok(report) => json!({
                "status": "done",
                "started_at": started_at,
                "finished_at": now_ms(),
                "equal": report.equal,
                "report": report,
            }),
            Err(e) => json!({
                "status": "error",
                "started_at": started_at,
                "finished_at": now_ms(),
                "error": e.to_string(),
            }),
        };
        let summary = match done["status"].as_str() {
            Some("done") if done["equal"] == true => {
                "verification: source and target are equal".to_string()
            }
            Some("done") => "verification: differences found".to_string(),
            _ => format!(
                "verification failed: {}",
                done["error"].as_str().unwrap_or("?")
            ),
        };
        if let Err(e) = store.set_verification(job_id, &done.to_string()).await {
            warn!(error = %e, "cannot store a verification");
        }
        let _ = store.event(job_id, &summary).await;
    });
    Ok((StatusCode::ACCEPTED, Json(running)))
}

async fn verification(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    match app.store.verification(row.id).await? {
        Some(v) => Ok(Json(serde_json::from_str(&v).unwrap_or(Value::Null))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {:?} has not been verified yet", row.spec.name),
        )),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn precheck_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    let config = row.spec.config().map_err(ApiError::bad)?;
    Ok(Json(checks_json(ferry_sync::precheck(&config).await)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CutoverRequest {
    #[serde(default)]
    max_pause_ms: Option<u64>,
    #[serde(default)]
    hold_ms: Option<u64>,
    #[serde(default)]
    verify_sample_percent: Option<f64>,
}

/// `ferry cutover` for a job of the service (see [`crate::cutover`]); answers once the
/// source is held for the clients' move, or unpaused after a failure.
async fn cutover_job(
    State(app): Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    let req: CutoverRequest = if body.is_empty() {
        CutoverRequest::default()
    } else {
        parse(&body)?
    };
    let config = row.spec.config().map_err(ApiError::bad)?;
    let max_pause = std::time::Duration::from_millis(req.max_pause_ms.unwrap_or(10_000).max(1));
    let hold = std::time::Duration::from_millis(req.hold_ms.unwrap_or(30_000));
    let sample = req.verify_sample_percent.unwrap_or(1.0);
    if !(0.0..=100.0).contains(&sample) {
        return Err(ApiError::bad("verify_sample_percent must be in [0, 100]"));
    }
    let failed = |f: crate::cutover::Failure| match f {
        crate::cutover::Failure::Refused(m) => ApiError::conflict(m),
        crate::cutover::Failure::Node(m) => ApiError::new(StatusCode::BAD_GATEWAY, m),
    };
    let proven = crate::cutover::prove(&config, max_pause, sample)
        .await
        .map_err(failed)?;
    let lasts = crate::cutover::release(&proven, hold, max_pause)
        .await
        .map_err(failed)?;
    Ok(Json(crate::cutover::report_json(&proven, lasts, None)))
}

fn checks_json(checks: Vec<Check>) -> Value {
    let worst = ferry_sync::precheck::worst(&checks);
    json!({ "result": worst, "checks": checks })
}

async fn precheck_spec(State(app): Shared, body: Bytes) -> ApiResult<Json<Value>> {
    let mut spec: JobSpec = parse(&body)?;
    resolve(&app, &mut spec.source).await?;
    resolve(&app, &mut spec.target).await?;
    let config = spec.config().map_err(ApiError::bad)?;
    Ok(Json(checks_json(ferry_sync::precheck(&config).await)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectivityRequest {
    #[serde(default)]
    source: Option<EndpointSpec>,
    #[serde(default)]
    target: Option<EndpointSpec>,
    #[serde(default)]
    endpoint: Option<EndpointSpec>,
}

/// Tests each address of each endpoint given: connect, log in, `INFO server`.
async fn connectivity(State(app): Shared, body: Bytes) -> ApiResult<Json<Value>> {
    let req: ConnectivityRequest = parse(&body)?;
    let mut results = Vec::new();
    let given = [
        ("source", req.source),
        ("target", req.target),
        ("endpoint", req.endpoint),
    ];
    if given.iter().all(|(_, e)| e.is_none()) {
        return Err(ApiError::bad("give a source, a target or an endpoint"));
    }
    let mut all_ok = true;
    for (role, ep) in given {
        let Some(mut ep) = ep else { continue };
        resolve(&app, &mut ep).await?;
        ep.validate(role).map_err(ApiError::bad)?;
        for addr in &ep.addresses {
            let endpoint: ferry_resp::Endpoint = ep
                .url_for(addr)
                .parse()
                .map_err(|e| ApiError::bad(format!("{role}: {e}")))?;
            let result = async {
                let mut c = ferry_resp::Connection::connect(&endpoint).await?;
                c.info("server").await
            }
            .await;
            match result {
                Ok(info) => results.push(json!({
                    "role": role, "address": endpoint.addr(), "ok": true,
                    "version": ferry_sync::ServerVersion::from_info(&info).map(|v| v.to_string()),
                })),
                Err(e) => {
                    all_ok = false;
                    results.push(json!({
                        "role": role, "address": endpoint.addr(), "ok": false, "error": e.to_string(),
                    }))
                }
            }
        }
    }
    Ok(Json(json!({ "ok": all_ok, "results": results })))
}
