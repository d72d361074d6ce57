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

use crate::model::{EndpointSpec, Instance, JobSpec};
use crate::runner::{Manager, Running};
use crate::store::{JobRow, Lease, Store, StoreError};

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
            .and_then(|v| v.strip_prefix("Bearer "))
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
    /// completed, stopped, paused, failed.
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
    lag_bytes: u64,
    lag_seconds: f64,
    read_rate: f64,
    apply_rate: f64,
    bytes_rate: f64,
    attempts: u32,
    next_attempt: Option<String>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    spec: JobSpec,
    /// The worker that runs the job (holds its lease), and its address.
    worker: Option<String>,
    worker_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<crate::store::Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    samples: Option<Vec<crate::runner::Sample>>,
}

fn view(row: &JobRow, running: Option<Arc<Running>>, lease: Option<&Lease>) -> JobView {
    let mode = row
        .spec
        .mode
        .clone()
        .unwrap_or_else(|| "full+incremental".into());
    let mut v = JobView {
        id: row.id,
        name: row.spec.name.clone(),
        description: row.spec.description.clone(),
        desired_state: row.desired_state.clone(),
        state: match row.desired_state.as_str() {
            "running" => "starting".into(),
            s => s.into(),
        },
        mode,
        source_nodes: row.spec.source.addresses.clone(),
        target_nodes: row.spec.target.addresses.clone(),
        progress_percent: 0.0,
        source_transactions: 0,
        target_transactions: 0,
        keys_read: 0,
        keys_applied: 0,
        bytes_read: 0,
        lag_bytes: 0,
        lag_seconds: 0.0,
        read_rate: 0.0,
        apply_rate: 0.0,
        bytes_rate: 0.0,
        attempts: 0,
        next_attempt: None,
        last_error: row.last_error.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        spec: row.spec.public(),
        worker: None,
        worker_address: None,
        history: None,
        samples: None,
    };
    if row.desired_state == "completed" {
        v.progress_percent = 100.0;
    }
    if let Some(l) = lease.filter(|l| l.live) {
        v.worker = l.owner.clone();
        v.worker_address = l.address.clone();
        // Run by another worker: its state as last reported.
        if let (Some(state), None, "running") = (&l.state, &running, row.desired_state.as_str()) {
            v.state = state.clone();
        }
    }
    let totals = running.as_ref().map(|r| r.totals()).unwrap_or(row.totals);
    v.source_transactions = totals.records_read;
    v.target_transactions = totals.records_applied;
    v.keys_read = totals.keys_read;
    v.keys_applied = totals.keys_applied;
    v.bytes_read = totals.bytes_read;
    if let Some(r) = running {
        let s = &r.status.stats;
        let status = r.status.view();
        let finished = r.is_finished();
        v.state = if finished && matches!(row.desired_state.as_str(), "paused" | "stopped") {
            row.desired_state.clone()
        } else {
            status.state.name().into()
        };
        v.progress_percent = (s.progress_percent() * 10.0).round() / 10.0;
        if !finished {
            v.lag_bytes = s.lag_bytes();
            v.lag_seconds = s.lag_seconds();
            (v.read_rate, v.apply_rate, v.bytes_rate) = r.rates();
        }
        v.attempts = status.attempts;
        v.next_attempt = status.next_attempt.map(|t| t.to_string());
        if status.last_error.is_some() {
            v.last_error = status.last_error;
        }
        v.samples = Some(r.samples());
    }
    v
}

/// The job as this worker runs it, if it does.
fn local(app: &App, id: i64) -> Option<Arc<Running>> {
    app.manager.get(id).filter(|_| app.workers.holds(id))
}

async fn lease_of(app: &App, id: i64) -> ApiResult<Option<Lease>> {
    Ok(app
        .store
        .leases()
        .await?
        .into_iter()
        .find(|l| l.job_id == id))
}

async fn list_workers(State(app): Shared) -> ApiResult<Json<Value>> {
    let lease_ms = i64::try_from(app.workers.lease().as_millis()).unwrap_or(i64::MAX);
    let workers = app.store.workers(lease_ms).await?;
    let leases = app.store.leases().await?;
    let list: Vec<Value> = workers
        .iter()
        .map(|w| {
            let jobs: Vec<i64> = leases
                .iter()
                .filter(|l| l.live && l.owner.as_deref() == Some(w.id.as_str()))
                .map(|l| l.job_id)
                .collect();
            json!({
                "id": w.id, "address": w.address, "started_at": w.started_at,
                "heartbeat_at": w.heartbeat_at, "draining": w.draining, "live": w.live,
                "jobs": jobs, "this": w.id == app.workers.id(),
            })
        })
        .collect();
    Ok(Json(
        json!({ "workers": list, "lease_seconds": app.workers.lease().as_secs_f64() }),
    ))
}

async fn list_jobs(State(app): Shared) -> ApiResult<Json<Value>> {
    let leases = app.store.leases().await?;
    let jobs: Vec<JobView> = app
        .store
        .jobs()
        .await?
        .iter()
        .map(|row| {
            let lease = leases.iter().find(|l| l.job_id == row.id);
            let mut v = view(row, local(&app, row.id), lease);
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
    let lease = lease_of(&app, row.id).await?;
    let mut v = view(&row, local(&app, row.id), lease.as_ref());
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
    let desired = if q.start { "running" } else { "created" };
    let id = app.store.create_job(&spec, desired).await?;
    if q.start {
        app.store.event(id, "started").await?;
        claim_now(&app).await;
    }
    let row = find(&app, &id.to_string()).await?;
    let lease = lease_of(&app, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&row, local(&app, id), lease.as_ref())),
    ))
}

async fn update_job(
    State(app): Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<JobView>> {
    let row = find(&app, &id).await?;
    let held = lease_of(&app, row.id).await?.is_some_and(|l| l.live);
    if app.manager.is_running(row.id) || held || row.desired_state == "running" {
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

/// Refuses to start a job whose pre-check fails (409, with the checks).
async fn gate(config: &ferry_sync::JobConfig) -> ApiResult<Vec<Check>> {
    let checks = checks_for(config).await;
    if ferry_sync::precheck::worst(&checks) == Level::Fail {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: "the pre-check failed: fix what it reports first".into(),
            checks: Some(checks),
        });
    }
    Ok(checks)
}

/// The pre-check (a target that holds this job's own checkpoint is not "non-empty": the
/// job resumes there).
async fn checks_for(config: &ferry_sync::JobConfig) -> Vec<Check> {
    ferry_sync::precheck(config).await
}

/// Lets this worker claim jobs that should run now (rather than at its next heartbeat);
/// jobs above its fair share are left to the other workers.
async fn claim_now(app: &App) {
    if let Err(e) = app.workers.tick().await {
        warn!(error = %e, "cannot claim the job now: the workers will at their next heartbeat");
    }
}

async fn start(app: &App, row: &JobRow, event: &str) -> ApiResult<()> {
    if row.desired_state == "running" {
        return Ok(());
    }
    let config = row.spec.config().map_err(ApiError::bad)?;
    gate(&config).await?;
    app.store.set_desired(row.id, "running", None).await?;
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
    if row.desired_state != "paused" {
        return Err(ApiError::conflict(format!(
            "the job is {}, not paused",
            row.desired_state
        )));
    }
    start(&app, &row, "resumed").await?;
    show_job(State(app), Path(row.id.to_string())).await
}

async fn halt(app: &App, id: &str, state: &str) -> ApiResult<i64> {
    let row = find(app, id).await?;
    app.store.set_desired(row.id, state, None).await?;
    app.store
        .event(row.id, &format!("{state} by the user"))
        .await?;
    stop_anywhere(app, row.id).await?;
    Ok(row.id)
}

/// Stops the job here if this worker runs it, else waits (up to the lease time and a
/// heartbeat) for the worker that runs it to stop it and release its lease.
async fn stop_anywhere(app: &App, id: i64) -> ApiResult<()> {
    app.workers.stop_local(id).await;
    let until = std::time::Instant::now() + app.workers.lease() * 4 / 3;
    while lease_of(app, id).await?.is_some_and(|l| l.live) && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn stop_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, "stopped").await?;
    show_job(State(app), Path(id.to_string())).await
}

async fn pause_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    let id = halt(&app, &id, "paused").await?;
    show_job(State(app), Path(id.to_string())).await
}

async fn delete_job(State(app): Shared, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    if row.desired_state == "running" {
        // The worker running it stops it when it sees it is no longer to run.
        app.store.set_desired(row.id, "stopped", None).await?;
    }
    stop_anywhere(&app, row.id).await?;
    app.manager.forget(row.id);
    let mut warning = None;
    match row.spec.target.endpoint() {
        Ok(target) => {
            let key = ferry_target::checkpoint::key(&row.spec.name, "0");
            if let Err(e) = ferry_target::checkpoint::delete(&target, &key).await {
                warning = Some(format!(
                    "the checkpoint {} could not be deleted from the target: {e}",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
        Err(e) => warning = Some(e),
    }
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
    Ok(Json(checks_json(checks_for(&config).await)))
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
    Ok(Json(checks_json(checks_for(&config).await)))
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
                    "version": ferry_target::ServerVersion::from_info(&info).map(|v| v.to_string()),
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
