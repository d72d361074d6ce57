//! The REST API under `/api/v1`, JSON in and out. Bodies are parsed here rather than by
//! axum's `Json` so that every malformed or invalid request is a 400 with a sentence.
//!
//! Files along the API's seams: `instances`, `jobs` (a job's life), `view` (what a job
//! looks like), `checks` (verify, pre-checks, cut-over, connectivity) and `workers`; this
//! file holds the routes, authentication and errors.

mod checks;
mod instances;
mod jobs;
mod view;
mod workers;

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

use checks::*;
use instances::*;
use jobs::*;
use view::*;
use workers::*;

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
        include_str!("../../assets/openapi.json"),
    )
}

async fn metrics(State(app): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&app.manager.all()),
    )
}
