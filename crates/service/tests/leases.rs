//! The job leases of several workers, at the store level: on SQLite always, on PostgreSQL
//! when `FERRY_TEST_POSTGRES_URL` is set (a fresh database per run).

use std::time::Duration;

use ferry_service::{JobSpec, Store};
use serde_json::json;

fn spec(name: &str) -> JobSpec {
    serde_json::from_value(json!({
        "name": name,
        "source": {"addresses": ["127.0.0.1:1"]},
        "target": {"addresses": ["127.0.0.1:2"]},
    }))
    .expect("spec")
}

async fn fresh_postgres(base: &str) -> String {
    use sqlx::Connection;
    let name = format!(
        "ferry_leases_{}_{}",
        std::process::id(),
        ferry_service::store::now_ms()
    );
    let mut c = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to FERRY_TEST_POSTGRES_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .expect("create database");
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let (root, _) = head.rsplit_once('/').expect("database URL");
    format!("{root}/{name}{query}")
}

async fn leases_are_exclusive(store: Store, second: Store) {
    let id = store
        .create_job(&spec("leased"), "running")
        .await
        .expect("job");
    store.ensure_leases().await.expect("leases");
    // Many workers (on two pools) race for the lease: exactly one wins.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = if w % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.claim_lease(id, &format!("w{w}"), 600)
                .await
                .expect("claim")
                .map(|g| (w, g))
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(x) = t.await.expect("task") {
            winners.push(x);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (w, generation) = winners[0];
    let owner = format!("w{w}");
    assert!(store
        .renew_lease(id, &owner, generation, 600, "incremental")
        .await
        .expect("renew"));
    // Wrong generation or wrong owner: not renewed.
    assert!(!store
        .renew_lease(id, &owner, generation + 1, 600, "x")
        .await
        .expect("renew"));
    assert!(!store
        .renew_lease(id, "other", generation, 600, "x")
        .await
        .expect("renew"));
    // Held: nobody else claims it.
    assert_eq!(
        store.claim_lease(id, "late", 600).await.expect("claim"),
        None
    );
    // Expired: another worker takes it with a new generation; the old owner can neither
    // renew it nor store how the job ended.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!store
        .renew_lease(id, &owner, generation, 600, "x")
        .await
        .expect("renew"));
    let next = second
        .claim_lease(id, "next", 600)
        .await
        .expect("claim")
        .expect("expired lease claimed");
    assert_eq!(next, generation + 1);
    assert!(!store
        .finish_job(id, "failed", Some("stale"), &owner, generation)
        .await
        .expect("finish"));
    let row = store.job("leased").await.expect("job").expect("row");
    assert_eq!(row.desired_state, "running");
    let lease = store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.job_id == id)
        .expect("lease");
    assert_eq!(lease.owner.as_deref(), Some("next"));
    assert!(lease.live);
    // Released: claimable at once; a job not to run is never claimed.
    store
        .release_lease(id, "next", next)
        .await
        .expect("release");
    store.set_desired(id, "stopped", None).await.expect("stop");
    assert_eq!(store.claim_lease(id, "w9", 600).await.expect("claim"), None);
    // Workers: registered, counted live, forgotten when removed.
    store
        .worker_heartbeat("a", "127.0.0.1:1", false)
        .await
        .expect("hb");
    second
        .worker_heartbeat("b", "127.0.0.1:2", true)
        .await
        .expect("hb");
    let workers = store.workers(10_000).await.expect("workers");
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(workers.iter().all(|w| w.live));
    assert!(workers.iter().any(|w| w.id == "b" && w.draining));
    store.remove_worker("a").await.expect("remove");
    assert_eq!(store.workers(10_000).await.expect("workers").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_are_exclusive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let store = Store::open(&url).await.expect("store");
    leases_are_exclusive(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_are_exclusive() {
    let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let url = fresh_postgres(&base).await;
    let store = Store::open(&url).await.expect("store");
    let second = Store::open(&url).await.expect("second store");
    leases_are_exclusive(store.clone(), second.clone()).await;
    store.close().await;
    second.close().await;
    use sqlx::Connection;
    if let (Ok(mut c), Some(name)) = (
        sqlx::PgConnection::connect(&base).await,
        url.split('?').next().and_then(|u| u.rsplit('/').next()),
    ) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut c)
        .await;
    }
}
