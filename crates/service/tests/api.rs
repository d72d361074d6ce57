//! The service's REST API against real redis-servers, with the service started in-process
//! on a free port and its SQLite store in a temporary folder.

use std::time::{Duration, Instant};

use ferry_service::{ServeOptions, Service};
use ferry_testkit::{free_port, Server};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cr3t-Pw'd";

struct Api {
    service: Option<Service>,
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn start(store: &str, token: Option<&str>) -> Api {
        let service = Service::start(ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            store: store.to_string(),
            token: token.map(str::to_string),
            ..ServeOptions::new("127.0.0.1:0".parse().expect("addr"), store.to_string())
        })
        .await
        .expect("service starts");
        let base = format!("http://{}", service.addr());
        Api {
            service: Some(service),
            http: reqwest::Client::new(),
            base,
            token: token.map(str::to_string),
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        assert!(
            !text.contains(SECRET),
            "a response holds a password: {path} → {text}"
        );
        (status, text)
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.json(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.json(reqwest::Method::POST, path, Some(body)).await
    }

    /// Polls the job until `f` holds on its view.
    async fn wait_job(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            let v = self.get(&format!("/api/v1/jobs/{name}")).await;
            if f(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "job {name} never {what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn endpoint(s: &Server) -> Value {
    match s.password() {
        Some(p) => json!({"addresses": [s.addr()], "password": p}),
        None => json!({"addresses": [s.addr()]}),
    }
}

fn spec(name: &str, source: &Server, target: &Server) -> Value {
    json!({
        "name": name,
        "description": "copy for the test",
        "source": endpoint(source),
        "target": endpoint(target),
        "mode": "full+incremental",
        "retry": {"policy": "immediately"},
    })
}

/// A password-protected source holding `key:0` … `key:<n-1>`, and an empty target.
fn pair_with_keys(n: usize) -> (Server, Server) {
    let source = Server::builder().password(SECRET).start();
    let target = Server::builder().password(SECRET).start();
    for i in 0..n {
        source.cmd(&["SET", &format!("key:{i}"), &i.to_string()]);
    }
    (source, target)
}

fn store_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("ferry.db").display())
}

async fn wait_value(target: &Server, key: &str, want: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let v = target.cmd(&["GET", key]);
        if !v.is_nil() && v.as_str() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became {want:?} on the target"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// "incremental" means the snapshot is on the target, not merely read: while the target
/// holds the writer's batches (a write pause), the job stays in its full sync although its
/// reader is already in the source's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_incremental_only_once_its_snapshot_is_applied() {
    let (source, target) = pair_with_keys(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    target.cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    let paused = Instant::now();
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("held", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    let mut seen = Vec::new();
    while paused.elapsed() < Duration::from_millis(2500) {
        let v = api.get("/api/v1/jobs/held").await;
        let state = v["state"].as_str().unwrap_or_default().to_string();
        assert_ne!(state, "incremental", "while the target is paused: {v}");
        if !seen.contains(&state) {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().any(|s| s == "full-sync"),
        "states seen: {seen:?}"
    );
    let v = api
        .wait_job("held", "reached incremental", |v| {
            v["state"] == "incremental"
        })
        .await;
    assert!(v["keys_applied"].as_u64().unwrap_or(0) >= 200, "{v}");
    assert_eq!(
        target.cmd(&["DBSIZE"]).as_int(),
        202,
        "200 keys, the checkpoint and the job's ownership record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_reaches_incremental_and_follows_writes() {
    let (source, target) = pair_with_keys(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("copy", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["spec"]["source"]["password_set"], json!(true), "{v}");
    let v = api
        .wait_job("copy", "reached incremental", |v| {
            v["state"] == "incremental"
        })
        .await;
    assert_eq!(v["progress_percent"], json!(100.0), "{v}");
    assert!(v["keys_applied"].as_u64().unwrap_or(0) >= 200, "{v}");
    assert!(v["target_transactions"].as_u64().unwrap_or(0) >= 200, "{v}");
    assert!(v["source_transactions"].as_u64().unwrap_or(0) >= 200, "{v}");
    assert_eq!(v["source_nodes"], json!([source.addr()]));
    assert_eq!(v["target_nodes"], json!([target.addr()]));
    assert_eq!(
        target.cmd(&["DBSIZE"]).as_int(),
        202,
        "200 keys, the checkpoint and the job's ownership record"
    );

    source.cmd(&["SET", "later", "write"]);
    wait_value(&target, "later", "write").await;
    let v = api
        .wait_job("copy", "counted the write", |v| {
            v["target_transactions"].as_u64().unwrap_or(0) >= 201
        })
        .await;
    assert!(
        v["history"].as_array().is_some_and(|h| !h.is_empty()),
        "{v}"
    );

    let list = api.get("/api/v1/jobs").await;
    assert_eq!(list["jobs"][0]["name"], "copy", "{list}");
    let (status, metrics) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ferry_records_applied_total{job=\"copy\",shard=\"0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_job_state{job=\"copy\",shard=\"0\",state=\"incremental\"} 1"),
        "{metrics}"
    );

    // Pause, then resume: writes made while paused arrive.
    let (status, v) = api.post("/api/v1/jobs/copy/pause", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "paused", "{v}");
    source.cmd(&["SET", "while-paused", "1"]);
    let (status, v) = api.post("/api/v1/jobs/copy/resume", json!({})).await;
    assert_eq!(status, 200, "{v}");
    wait_value(&target, "while-paused", "1").await;

    // Changing a running job is refused; stopped, it can be changed.
    let (status, _) = api
        .json(
            reqwest::Method::PUT,
            "/api/v1/jobs/copy",
            Some(spec("copy", &source, &target)),
        )
        .await;
    assert_eq!(status, 409);
    let (status, v) = api.post("/api/v1/jobs/copy/stop", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "stopped", "{v}");
    let mut changed = spec("copy", &source, &target);
    changed["description"] = json!("changed");
    changed["source"] = json!({"addresses": [source.addr()]}); // password kept
    let (status, v) = api
        .json(reqwest::Method::PUT, "/api/v1/jobs/copy", Some(changed))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["description"], "changed");
    assert_eq!(v["spec"]["source"]["password_set"], json!(true), "{v}");

    // Delete removes the checkpoint from the target and the job from the store.
    let (status, v) = api
        .json(reqwest::Method::DELETE, "/api/v1/jobs/copy", None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["checkpoint_deleted"], json!(true), "{v}");
    assert!(target.cmd(&["EXISTS", "ferry:checkpoint:copy:0"]).as_int() == 0);
    let (status, _) = api
        .json(reqwest::Method::GET, "/api/v1/jobs/copy", None)
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_catches_what_would_break_a_job() {
    let source = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let level = |v: &Value, name: &str| -> String {
        v["checks"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["name"].as_str().is_some_and(|n| n.contains(name)))
            })
            .map(|c| c["level"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no check {name:?}: {v:#}"))
    };

    // Non-empty target.
    let full = Server::start();
    full.cmd(&["SET", "here", "already"]);
    let (status, v) = api
        .post("/api/v1/precheck", spec("a", &source, &full))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "fail", "{v}");
    assert_eq!(level(&v, "target empty"), "fail");

    // Too few databases.
    let small = Server::builder().arg("databases", "2").start();
    source.cmd(&["SELECT", "5"]);
    source.cmd(&["SET", "in5", "x"]);
    source.cmd(&["SELECT", "0"]);
    let (_, v) = api
        .post("/api/v1/precheck", spec("a", &source, &small))
        .await;
    assert_eq!(level(&v, "databases"), "fail", "{v}");

    // Wrong password, naming the node.
    let locked = Server::builder().password("right").start();
    let mut s = spec("a", &source, &locked);
    s["target"]["password"] = json!(SECRET);
    let (_, v) = api.post("/api/v1/precheck", s.clone()).await;
    assert_eq!(
        level(&v, &format!("target {} reachable", locked.addr())),
        "fail",
        "{v}"
    );

    // Unreachable node.
    let gone = format!("127.0.0.1:{}", free_port());
    let mut s2 = spec("a", &source, &small);
    s2["target"] = json!({"addresses": [gone]});
    let (_, v) = api.post("/api/v1/precheck", s2).await;
    assert_eq!(
        level(&v, &format!("target {gone} reachable")),
        "fail",
        "{v}"
    );

    // Connectivity test of one endpoint before saving.
    let (status, v) = api
        .post(
            "/api/v1/connectivity",
            json!({"source": endpoint(&source), "target": s["target"]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["results"][0]["ok"], json!(true), "{v}");
    assert!(
        v["results"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&locked.addr())),
        "{v}"
    );

    // A job whose pre-check fails is not started, and with ?start=true not even created.
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("a", &source, &full))
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(v["checks"].is_array(), "{v}");
    assert_eq!(api.get("/api/v1/jobs").await["jobs"], json!([]));
    let (status, _) = api.post("/api/v1/jobs", spec("a", &source, &full)).await;
    assert_eq!(status, 201);
    let (status, v) = api.post("/api/v1/jobs/a/start", json!({})).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = api.post("/api/v1/jobs/a/precheck", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(level(&v, "target empty"), "fail");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_service_resumes_its_jobs() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "before", "1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("keep", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    api.wait_job("keep", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    wait_value(&target, "before", "1").await;
    let before = api.get("/api/v1/jobs/keep").await;
    api.stop().await;

    source.cmd(&["SET", "meanwhile", "2"]);
    let api = Api::start(&store_url(&dir), None).await;
    let v = api
        .wait_job("keep", "resumed", |v| v["state"] == "incremental")
        .await;
    wait_value(&target, "meanwhile", "2").await;
    let history: Vec<&str> = v["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        history.contains(&"resumed after a service restart"),
        "{history:?}"
    );
    // One process, one worker: it runs the job and lists itself.
    let worker = v["worker"]
        .as_str()
        .expect("the job names its worker")
        .to_string();
    let workers = api.get("/api/v1/workers").await;
    let list = workers["workers"].as_array().expect("workers");
    assert_eq!(list.len(), 1, "{workers}");
    assert_eq!(list[0]["id"], json!(worker), "{workers}");
    assert_eq!(list[0]["live"], json!(true), "{workers}");
    assert_eq!(list[0]["jobs"], json!([v["id"]]), "{workers}");
    // Resumed from the checkpoint: no new snapshot, so no key was read again; the counts
    // go on from where they were.
    let v = api
        .wait_job("keep", "counted the write", |v| {
            v["target_transactions"].as_u64() > before["target_transactions"].as_u64()
        })
        .await;
    assert_eq!(v["keys_read"], before["keys_read"], "{v}");
    assert_eq!(v["keys_read"], json!(1), "{v}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ferry.db"))
            .expect("store file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_400_with_a_reason() {
    let source = Server::start();
    let target = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut s = spec("x", &source, &target);
                s["mode"] = json!("fast");
                s
            },
            "mode",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["name"] = json!("has space");
                s
            },
            "job name",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["rate_limit_mb"] = json!(-1);
                s
            },
            "rate limit",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["retry"] = json!({"policy": "scheduled"});
                s
            },
            "window",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["retry"] = json!({"connection_limit": "soon"});
                s
            },
            "connection limit",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["source"]["addresses"] = json!([]);
                s
            },
            "address",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["source"]["topology"] = json!("ring");
                s
            },
            "topology",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["sorce"] = json!(1);
                s
            },
            "unknown field",
        ),
        (
            {
                let mut s = spec("x", &source, &target);
                s["source"]["instance"] = json!("nope");
                s
            },
            "no saved instance",
        ),
    ];
    for (body, needle) in cases {
        let (status, v) = api.post("/api/v1/jobs", body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        let msg = v["error"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", api.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        api.get("/api/v1/jobs").await["jobs"],
        json!([]),
        "nothing half-created"
    );

    let (status, _) = api.post("/api/v1/jobs", spec("x", &source, &target)).await;
    assert_eq!(status, 201);
    let (status, v) = api.post("/api/v1/jobs", spec("x", &source, &target)).await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = api
        .json(reqwest::Method::GET, "/api/v1/jobs/nope", None)
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_keep_passwords_to_themselves() {
    let source = Server::builder().password(SECRET).start();
    let target = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post(
            "/api/v1/instances",
            json!({"name": "src", "endpoint": endpoint(&source), "labels": {"env": "test"}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["endpoint"]["password_set"], json!(true), "{v}");
    let list = api.get("/api/v1/instances").await;
    assert_eq!(list["instances"][0]["labels"]["env"], "test", "{list}");
    let mut s = spec("via-instance", &source, &target);
    s["source"] = json!({"instance": "src"});
    let (status, v) = api
        .post(
            "/api/v1/connectivity",
            json!({"source": {"instance": "src"}}),
        )
        .await;
    assert_eq!((status, &v["ok"]), (200, &json!(true)), "{v}");
    let (status, v) = api.post("/api/v1/jobs?start=true", s).await;
    assert_eq!(status, 201, "{v}");
    api.wait_job("via-instance", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    let (status, _) = api
        .json(reqwest::Method::DELETE, "/api/v1/instances/src", None)
        .await;
    assert_eq!(status, 204);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_api_and_metrics_but_not_the_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), Some("tok")).await;
    let anon = reqwest::Client::new();
    for path in ["/api/v1/jobs", "/metrics", "/api/v1/openapi.json"] {
        let r = anon
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = anon
        .get(format!("{}/", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(api.get("/api/v1/jobs").await["jobs"], json!([]));
    // The scheme is case-insensitive (RFC 7235); a wrong token is still refused.
    for (header, want) in [
        ("bearer tok", 200),
        ("BEARER tok", 200),
        ("bearer nope", 401),
    ] {
        let r = anon
            .get(format!("{}/api/v1/jobs", api.base))
            .header("Authorization", header)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), want, "{header}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let doc = api.get("/api/v1/openapi.json").await;
    let routes = [
        ("/instances", vec!["get", "post"]),
        ("/instances/{name}", vec!["get", "put", "delete"]),
        ("/jobs", vec!["get", "post"]),
        ("/jobs/{id}", vec!["get", "put", "delete"]),
        ("/jobs/{id}/start", vec!["post"]),
        ("/jobs/{id}/stop", vec!["post"]),
        ("/jobs/{id}/pause", vec!["post"]),
        ("/jobs/{id}/resume", vec!["post"]),
        ("/jobs/{id}/precheck", vec!["post"]),
        ("/jobs/{id}/cutover", vec!["post"]),
        ("/jobs/{id}/verify", vec!["post", "get"]),
        ("/connectivity", vec!["post"]),
        ("/workers", vec!["get"]),
        ("/precheck", vec!["post"]),
        ("/openapi.json", vec!["get"]),
    ];
    for (path, methods) in routes {
        let full = format!("/api/v1{path}");
        for m in methods {
            assert!(
                doc["paths"][&full][m].is_object(),
                "{m} {full} missing from the OpenAPI document"
            );
        }
    }
    assert!(doc["paths"]["/metrics"]["get"].is_object());
    api.stop().await;
}

/// The same store code on PostgreSQL, when `FERRY_TEST_POSTGRES_URL` names a database
/// (skipped otherwise): create, name clash, restart, resume, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_and_resumes_jobs() {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let source = Server::builder().password(SECRET).start();
    let target = Server::start();
    source.cmd(&["SET", "before", "1"]);
    let name = format!("pg-{}", source.port());
    let api = Api::start(&url, None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec(&name, &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, _) = api
        .post("/api/v1/jobs", spec(&name, &source, &target))
        .await;
    assert_eq!(status, 409);
    api.wait_job(&name, "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    api.stop().await;
    source.cmd(&["SET", "meanwhile", "2"]);
    let api = Api::start(&url, None).await;
    api.wait_job(&name, "resumed", |v| v["state"] == "incremental")
        .await;
    wait_value(&target, "meanwhile", "2").await;
    let (status, _) = api
        .json(
            reqwest::Method::DELETE,
            &format!("/api/v1/jobs/{name}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    api.stop().await;
}

/// Polls the job's verification until it is no longer running.
async fn wait_verification(api: &Api, job: &str) -> Value {
    for _ in 0..300 {
        let (status, v) = api
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/jobs/{job}/verify"),
                None,
            )
            .await;
        if status == 200 {
            let v: Value = serde_json::from_str(&v).expect("JSON");
            if v["status"] != "running" {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the verification of {job} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_a_job_action_whose_result_is_stored() {
    let source = Server::builder().password(SECRET).start();
    let target = Server::builder().password(SECRET).start();
    for i in 0..100 {
        source.cmd(&["SET", &format!("key:{i}"), &i.to_string()]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("checked", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    api.wait_job("checked", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    let (status, _) = api
        .call(reqwest::Method::GET, "/api/v1/jobs/checked/verify", None)
        .await;
    assert_eq!(status, 404, "never verified yet");

    let (status, v) = api.post("/api/v1/jobs/checked/verify", json!({})).await;
    assert_eq!(status, 202, "{v}");
    let v = wait_verification(&api, "checked").await;
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["report"]["equal"], json!(true), "{v}");
    assert_eq!(v["report"]["keys_compared"], json!(100), "{v}");

    // A difference the job does not carry (a write on the target) is found, by key.
    target.cmd(&["SET", "key:7", "changed on the target"]);
    let (status, v) = api
        .post("/api/v1/jobs/checked/verify", json!({"rounds": 1}))
        .await;
    assert_eq!(status, 202, "{v}");
    let v = wait_verification(&api, "checked").await;
    assert_eq!(v["report"]["equal"], json!(false), "{v}");
    assert_eq!(v["report"]["value_differences"], json!(1), "{v}");
    assert_eq!(v["report"]["differences"][0]["key"], json!("key:7"), "{v}");
    let job = api.get("/api/v1/jobs/checked").await;
    assert!(
        job.to_string().contains("verification: differences found"),
        "{job}"
    );
    let (status, v) = api
        .post("/api/v1/jobs/checked/verify", json!({"mode": "fast"}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(!v.to_string().contains(SECRET));
}

/// A job's filter and db mapping apply to what it copies and to its verification: only
/// `keep:` keys, from db 1 into db 3; verify compares exactly that scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_filter_and_db_map_apply_to_the_copy_and_its_verification() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SELECT", "1"]);
    for i in 0..50 {
        source.cmd(&["SET", &format!("keep:{i}"), &i.to_string()]);
        source.cmd(&["SET", &format!("drop:{i}"), &i.to_string()]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let mut body = spec("scoped", &source, &target);
    body["filter"] = json!({"include_key_prefixes": ["keep:"]});
    body["db_map"] = json!("1:3");
    let (status, v) = api.post("/api/v1/jobs?start=true", body).await;
    assert_eq!(status, 201, "{v}");
    let shown = api.get("/api/v1/jobs/scoped").await;
    assert_eq!(shown["spec"]["db_map"], json!("1:3"), "{shown}");
    assert_eq!(
        shown["spec"]["filter"]["include_key_prefixes"],
        json!(["keep:"]),
        "{shown}"
    );
    api.wait_job("scoped", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    source.cmd(&["SET", "keep:late", "x"]);
    source.cmd(&["SET", "drop:late", "x"]);
    let mut t = target.client();
    let deadline = Instant::now() + LONG;
    loop {
        t.cmd_str(&["SELECT", "3"]);
        if t.cmd_str(&["EXISTS", "keep:late"]).as_int() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "keep:late never arrived in db 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.cmd_str(&["DBSIZE"]).as_int(), 51);
    t.cmd_str(&["SELECT", "1"]);
    assert_eq!(t.cmd_str(&["DBSIZE"]).as_int(), 0);

    let (status, v) = api.post("/api/v1/jobs/scoped/verify", json!({})).await;
    assert_eq!(status, 202, "{v}");
    let v = wait_verification(&api, "scoped").await;
    assert_eq!(v["report"]["equal"], json!(true), "{v}");
    assert_eq!(v["report"]["keys_compared"], json!(51), "{v}");

    // A key of the job's scope missing on the target is reported, in both databases.
    t.cmd_str(&["SELECT", "3"]);
    t.cmd_str(&["DEL", "keep:7"]);
    let (status, v) = api
        .post("/api/v1/jobs/scoped/verify", json!({"rounds": 1}))
        .await;
    assert_eq!(status, 202, "{v}");
    let v = wait_verification(&api, "scoped").await;
    assert_eq!(v["report"]["missing_on_target"], json!(1), "{v}");
    let d = &v["report"]["differences"][0];
    assert_eq!(
        (d["key"].clone(), d["db"].clone(), d["target_db"].clone()),
        (json!("keep:7"), json!(1), json!(3)),
        "{v}"
    );
    api.stop().await;
}

/// A source transaction over keys of several slots is applied on a cluster target as one
/// transaction per slot; `/metrics` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_transactions_split_over_slots() {
    let source = Server::start();
    let target = ferry_testkit::Cluster::start(3, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let mut body = spec("split", &source, target.masters()[0]);
    body["target"]["topology"] = json!("cluster");
    let (status, v) = api.post("/api/v1/jobs?start=true", body).await;
    assert_eq!(status, 201, "{v}");
    api.wait_job("split", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    let metric = "ferry_split_transactions_total{job=\"split\",shard=\"0\"}";
    let (_, before) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert!(before.contains(&format!("{metric} 0")), "{before}");
    // `a` and `b` hash to different slots (15495 and 3300); `{a}x` shares `a`'s.
    let mut c = source.client();
    for cmd in [
        vec!["MULTI"],
        vec!["SET", "a", "1"],
        vec!["SET", "b", "2"],
        vec!["EXEC"],
        vec!["MULTI"],
        vec!["SET", "{a}x", "3"],
        vec!["INCR", "a"],
        vec!["EXEC"],
    ] {
        c.cmd_str(&cmd);
    }
    let deadline = Instant::now() + LONG;
    while target.cmd_routed_str(&["GET", "{a}x"]).is_nil() {
        assert!(Instant::now() < deadline, "{{a}}x never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(target.cmd_routed_str(&["GET", "a"]).as_str(), "2");
    assert_eq!(target.cmd_routed_str(&["GET", "b"]).as_str(), "2");
    let (_, after) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert!(after.contains(&format!("{metric} 1")), "{after}");
    api.stop().await;
}

/// With its source gone, a job's lag is unknown, not 0: the view says the link is down and
/// since when, keeps its progress, and `/metrics` exports the link's state instead of a
/// lag; once the source is back, the link is up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_unknown_while_the_source_is_unreachable() {
    let (mut source, target) = pair_with_keys(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("gone", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    let v = api
        .wait_job("gone", "reached incremental", |v| {
            v["state"] == "incremental"
        })
        .await;
    assert_eq!(v["shards"][0]["link_up"], json!(true), "{v}");
    assert!(v["lag_bytes"].is_u64(), "{v}");
    assert!(v["shards"][0]["seconds_since_contact"].is_f64(), "{v}");
    let (_, metrics) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("ferry_source_link_up{job=\"gone\",shard=\"0\"} 1"),
        "{metrics}"
    );

    source.kill();
    let v = api
        .wait_job("gone", "saw its source gone", |v| {
            v["shards"][0]["link_up"] == json!(false)
        })
        .await;
    for view in [&v, &v["shards"][0]] {
        assert!(view.get("lag_bytes").is_none(), "lag unknown, not 0: {v:#}");
        assert!(
            view.get("lag_seconds").is_none(),
            "lag unknown, not 0: {v:#}"
        );
    }
    assert_ne!(v["progress_percent"], json!(0.0), "progress kept: {v:#}");
    assert_ne!(v["shards"][0]["progress_percent"], json!(0.0), "{v:#}");
    let first = v["shards"][0]["seconds_since_contact"]
        .as_f64()
        .unwrap_or_else(|| panic!("seconds_since_contact: {v:#}"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = api.get("/api/v1/jobs/gone").await;
    let second = v["shards"][0]["seconds_since_contact"]
        .as_f64()
        .unwrap_or_else(|| panic!("seconds_since_contact: {v:#}"));
    assert!(second > first, "{first} then {second}: {v:#}");
    assert_eq!(v["link_up"], json!(false), "{v:#}");
    assert!(v.get("lag_bytes").is_none(), "{v:#}");
    let (_, metrics) = api.call(reqwest::Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("ferry_source_link_up{job=\"gone\",shard=\"0\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_source_last_contact_seconds{job=\"gone\",shard=\"0\"} "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ferry_lag_bytes{job=\"gone\""),
        "no lag while it is unknown: {metrics}"
    );

    source.restart();
    let v = api
        .wait_job("gone", "saw its source back", |v| {
            v["shards"][0]["link_up"] == json!(true) && v["state"] == "incremental"
        })
        .await;
    assert!(v["lag_bytes"].is_u64(), "{v:#}");
    api.stop().await;
}

/// The cutover as a job action: 200 once the job's checkpoint proves the target holds every
/// write made before the pause (the source then stays paused for `hold_ms`); 409 for a job
/// that does not run, with the source unpaused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_is_a_job_action() {
    let (source, target) = pair_with_keys(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start(&store_url(&dir), None).await;
    let (status, v) = api
        .post("/api/v1/jobs?start=true", spec("moving", &source, &target))
        .await;
    assert_eq!(status, 201, "{v}");
    api.wait_job("moving", "reached incremental", |v| {
        v["state"] == "incremental"
    })
    .await;
    for i in 0..50 {
        source.cmd(&["INCR", &format!("n{}", i % 5)]);
    }
    let (status, v) = api
        .post(
            "/api/v1/jobs/moving/cutover",
            json!({"hold_ms": 2000, "verify_sample_percent": 100}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], json!(true), "{v}");
    let shard = &v["shards"][0];
    assert!(shard["applied"].as_u64() >= shard["offset"].as_u64(), "{v}");
    assert_eq!(
        v["verified"]["keys_compared"], v["verified"]["keys_equal"],
        "{v}"
    );
    // Still paused: the target equals the source key by key.
    for i in 0..5 {
        let k = format!("n{i}");
        assert_eq!(source.cmd(&["GET", &k]), target.cmd(&["GET", &k]));
    }
    assert_eq!(source.cmd(&["GET", "n0"]).as_str(), "10");

    let (status, _) = api
        .call(reqwest::Method::POST, "/api/v1/jobs/moving/stop", None)
        .await;
    assert!(status < 300);
    api.wait_job("moving", "stopped", |v| v["state"] == "stopped")
        .await;
    let (status, v) = api.post("/api/v1/jobs/moving/cutover", json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert!(v.to_string().contains("no run of job"), "{v}");
    api.stop().await;
}
