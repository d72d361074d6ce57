//! Checks run on demand: verification, pre-checks of a job or a spec, the cut-over, and
//! the connectivity test of the wizard.

use super::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyRequest {
    /// "full" (default) or "keys".
    #[serde(default)]
    pub(super) mode: Option<String>,
    /// Share of keys compared, in percent.
    #[serde(default)]
    pub(super) sample_percent: Option<f64>,
    #[serde(default)]
    pub(super) rounds: Option<u32>,
}

/// Starts a `ferry verify` of the job's source against its target in the background; its
/// result is stored with the job (`GET` the same path).
pub(super) async fn verify_job(
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

pub(super) async fn verification(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    match app.store.verification(row.id).await? {
        Some(v) => Ok(Json(serde_json::from_str(&v).unwrap_or(Value::Null))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {:?} has not been verified yet", row.spec.name),
        )),
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) async fn precheck_job(
    State(app): Shared,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = find(&app, &id).await?;
    let config = row.spec.config().map_err(ApiError::bad)?;
    Ok(Json(checks_json(ferry_sync::precheck(&config).await)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CutoverRequest {
    #[serde(default)]
    pub(super) max_pause_ms: Option<u64>,
    #[serde(default)]
    pub(super) hold_ms: Option<u64>,
    #[serde(default)]
    pub(super) verify_sample_percent: Option<f64>,
}

/// `ferry cutover` for a job of the service (see [`crate::cutover`]); answers once the
/// source is held for the clients' move, or unpaused after a failure.
pub(super) async fn cutover_job(
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

pub(super) fn checks_json(checks: Vec<Check>) -> Value {
    let worst = ferry_sync::precheck::worst(&checks);
    json!({ "result": worst, "checks": checks })
}

pub(super) async fn precheck_spec(State(app): Shared, body: Bytes) -> ApiResult<Json<Value>> {
    let mut spec: JobSpec = parse(&body)?;
    resolve(&app, &mut spec.source).await?;
    resolve(&app, &mut spec.target).await?;
    let config = spec.config().map_err(ApiError::bad)?;
    Ok(Json(checks_json(ferry_sync::precheck(&config).await)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectivityRequest {
    #[serde(default)]
    pub(super) source: Option<EndpointSpec>,
    #[serde(default)]
    pub(super) target: Option<EndpointSpec>,
    #[serde(default)]
    pub(super) endpoint: Option<EndpointSpec>,
}

/// Tests each address of each endpoint given: connect, log in, `INFO server`.
pub(super) async fn connectivity(State(app): Shared, body: Bytes) -> ApiResult<Json<Value>> {
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
