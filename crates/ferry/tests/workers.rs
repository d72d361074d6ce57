//! Several `ferry serve` workers sharing their jobs through one PostgreSQL database
//! (`FERRY_TEST_POSTGRES_URL`; skipped with a message when it is unset): jobs spread over
//! the workers, a killed worker's jobs move, a frozen worker stops its job when it wakes,
//! a worker that joins takes a share, `--drain` hands over and exits 0 — and under a
//! non-idempotent writer every target ends equal to its source.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assert_exact_copy_with_checkpoint, wait_caught_up, Ferry};
use ferry_testkit::Server;
use serde_json::{json, Value};

const LEASE: u64 = 5;

/// Drops the test's database (best effort: a failed test leaves it for inspection).
fn drop_database(base: &str, url: &str, rt: &tokio::runtime::Runtime) {
    use sqlx::Connection;
    let Some(name) = url.split('?').next().and_then(|u| u.rsplit('/').next()) else {
        return;
    };
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(base).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(&mut c)
            .await;
        }
    });
}

/// A fresh database on the test server: the URL to use.
fn fresh_database(base: &str, rt: &tokio::runtime::Runtime) -> String {
    use sqlx::Connection;
    let name = format!(
        "ferry_workers_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(base)
            .await
            .expect("connect to FERRY_TEST_POSTGRES_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .expect("create database");
    });
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let (root, _) = head.rsplit_once('/').expect("database URL");
    format!("{root}/{name}{query}")
}

struct Worker {
    proc: Ferry,
    id: String,
    url: String,
}

fn worker(store: &str, extra: &[&str]) -> Worker {
    worker_ready(spawn_worker(store, extra))
}

fn spawn_worker(store: &str, extra: &[&str]) -> Ferry {
    let lease = LEASE.to_string();
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--lease-seconds",
        &lease,
    ];
    args.extend_from_slice(extra);
    Ferry::start(&args)
}

fn worker_ready(mut proc: Ferry) -> Worker {
    proc.wait_for_output("\nworker ", Duration::from_secs(30));
    let out = proc.output();
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("ferry service on "))
        .map(|u| u.trim_end_matches('/').to_string())
        .expect("service address");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("worker "))
        .map(str::to_string)
        .expect("worker id");
    Worker { proc, id, url }
}

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self.client.request(method, url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json().await.unwrap_or(Value::Null))
                }
                Err(e) => (0, json!({ "error": e.to_string() })),
            }
        })
    }

    /// job name → worker id running it (per the job list of the worker at `base`).
    fn owners(&self, base: &str) -> HashMap<String, Option<String>> {
        let (_, v) = self.call(reqwest::Method::GET, &format!("{base}/api/v1/jobs"), None);
        v["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|j| {
                        (
                            j["name"].as_str().unwrap_or_default().to_string(),
                            j["worker"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn job(&self, base: &str, name: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("{base}/api/v1/jobs/{name}"),
            None,
        )
        .1
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// INCR and RPUSH (neither may be applied twice) until stopped.
fn writer(source: &Server, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let mut c = source.client();
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let i = n.to_string();
            let cmds: Vec<Vec<Vec<u8>>> = [
                vec!["INCR", "counter"],
                vec!["RPUSH", "list", i.as_str()],
                vec!["INCRBY", "big", "7"],
            ]
            .iter()
            .map(|c| c.iter().map(|a| a.as_bytes().to_vec()).collect())
            .collect();
            c.pipeline(&cmds).expect("writer pipeline");
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        n
    })
}

#[test]
fn workers_share_jobs_and_survive_kill_freeze_join_and_drain() {
    let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!(
            "FERRY_TEST_POSTGRES_URL not set: skipped (scripts/start-test-postgres.sh starts one)"
        );
        return;
    };
    let http = Http {
        rt: tokio::runtime::Runtime::new().expect("runtime"),
        client: reqwest::Client::new(),
    };
    let store = fresh_database(&base, &http.rt);
    let sources: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let targets: Vec<Server> = (0..3).map(|_| Server::start()).collect();
    let names: Vec<String> = (0..3).map(|i| format!("job{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = sources.iter().map(|s| writer(s, stop.clone())).collect();

    // Started together on the new database: they migrate it one at a time.
    let spawned: Vec<Ferry> = (0..3).map(|_| spawn_worker(&store, &[])).collect();
    let mut workers: Vec<Worker> = spawned.into_iter().map(worker_ready).collect();
    // Every worker registered (and counted) before the jobs come.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        let spec = json!({
            "name": names[i],
            "source": {"addresses": [sources[i].addr()]},
            "target": {"addresses": [targets[i].addr()]},
            "mode": "full+incremental",
            "retry": {"policy": "immediately"},
        });
        let (status, v) = http.call(
            reqwest::Method::POST,
            &format!("{}/api/v1/jobs?start=true", workers[0].url),
            Some(spec),
        );
        assert_eq!(status, 201, "{v}");
    }

    // 1. The jobs spread: one per worker, every worker sees every job and its runner.
    wait_for(
        "the jobs to spread over the three workers",
        Duration::from_secs(30),
        || {
            let owners = http.owners(&workers[1].url);
            let distinct: HashSet<_> = owners.values().flatten().collect();
            if owners.len() == 3 && owners.values().all(Option::is_some) && distinct.len() == 3 {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );
    for name in &names {
        wait_for("the job to be incremental", Duration::from_secs(60), || {
            let v = http.job(&workers[2].url, name);
            if v["state"] == "incremental" {
                Ok(())
            } else {
                Err(v["state"].to_string())
            }
        });
    }

    // 2. kill -9 the worker running job0: another worker runs it within the lease time.
    let owners = http.owners(&workers[0].url);
    let victim_id = owners[&names[0]].clone().expect("job0 runs");
    let victim = workers
        .iter()
        .position(|w| w.id == victim_id)
        .expect("victim");
    let mut dead = workers.remove(victim);
    dead.proc.signal("KILL");
    let killed_at = Instant::now();
    wait_for(
        "another worker to take job0 over",
        Duration::from_secs(LEASE * 3),
        || {
            let owners = http.owners(&workers[0].url);
            match &owners[&names[0]] {
                Some(w) if *w != victim_id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    eprintln!("job0 taken over {:?} after the kill", killed_at.elapsed());
    drop(dead);

    // 3. SIGSTOP a worker past its lease: the other takes its jobs; woken up, it sees
    // its lease lost (or not renewed in time) and stops its job.
    let frozen_id = http
        .owners(&workers[0].url)
        .values()
        .flatten()
        .next()
        .cloned()
        .expect("some job runs");
    let frozen = workers
        .iter()
        .position(|w| w.id == frozen_id)
        .expect("frozen");
    let awake = 1 - frozen;
    let pid = workers[frozen].proc.pid().to_string();
    let sig = |s: &str| {
        let ok = std::process::Command::new("kill")
            .args([s, pid.as_str()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {s} {pid}");
    };
    sig("-STOP");
    let awake_url = workers[awake].url.clone();
    let awake_id = workers[awake].id.clone();
    wait_for(
        "the awake worker to run every job",
        Duration::from_secs(LEASE * 4),
        || {
            let owners = http.owners(&awake_url);
            if owners
                .values()
                .all(|o| o.as_deref() == Some(awake_id.as_str()))
            {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );
    sig("-CONT");
    wait_for(
        "the woken worker to stop its job",
        Duration::from_secs(LEASE * 2),
        || {
            let log = workers[frozen].proc.stderr();
            if log.contains("lease was lost") || log.contains("not renewed in time") {
                for l in log.lines().filter(|l| l.contains("lease")) {
                    eprintln!("frozen worker: {l}");
                }
                Ok(())
            } else {
                Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
            }
        },
    );

    // 4. A fourth worker (started with --drain) joins: it receives a job.
    let joiner = worker(&store, &["--drain"]);
    let joiner_id = joiner.id.clone();
    wait_for(
        "the new worker to receive a job",
        Duration::from_secs(LEASE * 6),
        || {
            let owners = http.owners(&joiner.url);
            if owners
                .values()
                .any(|o| o.as_deref() == Some(joiner_id.as_str()))
            {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );
    workers.push(joiner);

    // 5. Drained, it hands its job over and exits 0.
    let mut joiner = workers.pop().expect("joiner");
    let status = joiner.proc.signal("TERM");
    assert!(status.success(), "{status}\n{}", joiner.proc.output());
    assert!(
        joiner.proc.stderr().contains("worker drained"),
        "{}",
        joiner.proc.output()
    );
    wait_for(
        "every job to run on the remaining workers",
        Duration::from_secs(LEASE * 4),
        || {
            let owners = http.owners(&workers[0].url);
            let live: HashSet<&str> = workers.iter().map(|w| w.id.as_str()).collect();
            if owners
                .values()
                .all(|o| o.as_deref().is_some_and(|w| live.contains(w)))
            {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );

    // The writers stop; every target catches up and equals its source exactly.
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let n = w.join().expect("writer");
        assert!(n > 0);
    }
    for i in 0..3 {
        wait_caught_up(&sources[i], &targets[i], &names[i], Duration::from_secs(60));
    }
    // Stopped before comparing: a running job rewrites its checkpoint (the source's
    // pings advance the offset), which would race the comparison's removal of it.
    for w in &mut workers {
        let status = w.proc.signal("TERM");
        assert!(status.success(), "{}", w.proc.output());
    }
    for i in 0..3 {
        assert_eq!(
            sources[i].cmd(&["GET", "counter"]).as_str(),
            targets[i].cmd(&["GET", "counter"]).as_str(),
            "{}: counters differ",
            names[i]
        );
        assert_eq!(
            sources[i].cmd(&["LLEN", "list"]).as_int(),
            targets[i].cmd(&["LLEN", "list"]).as_int(),
            "{}",
            names[i]
        );
        let keys = |s: &Server| {
            let mut k: Vec<String> = s
                .cmd(&["KEYS", "*"])
                .as_array()
                .iter()
                .map(|k| k.as_str())
                .collect();
            k.sort();
            k
        };
        let (sk, tk) = (keys(&sources[i]), keys(&targets[i]));
        for k in ["counter", "big"] {
            assert_eq!(
                sources[i].cmd(&["GET", k]).as_str(),
                targets[i].cmd(&["GET", k]).as_str(),
                "{}: {k} differs",
                names[i]
            );
        }
        let list = |s: &Server| {
            s.cmd(&["LRANGE", "list", "0", "-1"])
                .as_array()
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
        };
        let (sl, tl) = (list(&sources[i]), list(&targets[i]));
        if sl != tl {
            let first = sl.iter().zip(&tl).position(|(a, b)| a != b);
            panic!(
                "{}: lists differ (lengths {} {}), first difference at {first:?}: {:?} / {:?}",
                names[i],
                sl.len(),
                tl.len(),
                first.map(|f| &sl[f..(f + 5).min(sl.len())]),
                first.map(|f| &tl[f..(f + 5).min(tl.len())])
            );
        }
        assert!(
            tk.len() == sk.len() + 1,
            "{}: keys {sk:?} / {tk:?}",
            names[i]
        );
        assert_exact_copy_with_checkpoint(&sources[i], &targets[i], &names[i]);
    }
    drop_database(&base, &store, &http.rt);
}
