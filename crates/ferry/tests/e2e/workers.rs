//! Several `ferry serve` workers sharing one job through one PostgreSQL database
//! (`FERRY_TEST_POSTGRES_URL`; skipped with a message when it is unset): the job copies a
//! three-master source cluster into a three-master target cluster, and each source shard
//! is a task of its own. The tasks spread over the workers, a killed worker's task moves,
//! a frozen worker's task is taken over and the worker writes nothing more when it wakes,
//! a worker that joins takes a task, `--drain` hands over and exits 0 — and under a
//! non-idempotent writer the target ends equal to the source.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::Ferry;
use ferry_testkit::{wait_same_data_cluster, Cluster, Server};
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

    /// shard → worker id running it (per the job view of the worker at `base`).
    fn owners(&self, base: &str, job: &str) -> HashMap<String, Option<String>> {
        let v = self.job(base, job);
        v["shards"]
            .as_array()
            .map(|shards| {
                shards
                    .iter()
                    .filter(|s| s["retired"] != true)
                    .map(|s| {
                        (
                            s["shard"].as_str().unwrap_or_default().to_string(),
                            s["worker"].as_str().map(str::to_string),
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

/// Keys' hash tags served by `master`: the writer's keys, so that it writes to that
/// master directly.
fn tags_of(master: &Server, n: usize) -> Vec<String> {
    let mut c = master.client();
    (0..1000)
        .map(|i| format!("t{i}"))
        .filter(|t| {
            let key = format!("{{{t}}}:probe");
            !c.cmd(&[b"EXISTS", key.as_bytes()])
                .expect("EXISTS")
                .is_error()
        })
        .take(n)
        .collect()
}

/// INCR, LPUSH and APPEND (none may be applied twice) on keys of one source master
/// until stopped.
fn writer(master: &Server, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let tags = tags_of(master, 3);
    assert_eq!(tags.len(), 3, "hash tags for {}", master.addr());
    let mut c = master.client();
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let i = n.to_string();
            let t = &tags[(n % 3) as usize];
            let (counter, list, log) = (
                format!("{{{t}}}:counter"),
                format!("{{{t}}}:list"),
                format!("{{{t}}}:log"),
            );
            let piece = format!("{i},");
            let cmds: Vec<Vec<Vec<u8>>> = [
                vec!["INCR", counter.as_str()],
                vec!["LPUSH", list.as_str(), i.as_str()],
                vec!["APPEND", log.as_str(), piece.as_str()],
            ]
            .iter()
            .map(|c| c.iter().map(|a| a.as_bytes().to_vec()).collect())
            .collect();
            let replies = c.pipeline(&cmds).expect("writer pipeline");
            assert!(replies.iter().all(|r| !r.is_error()), "writer: {replies:?}");
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        n
    })
}

/// The writer connections of the job's tasks on the target's masters: (shard, lease
/// generation) of each, from `CLIENT LIST` (names `ferry-<job>:<shard>-g<generation>`).
fn writer_connections(target: &Cluster, job: &str) -> Vec<(String, u64)> {
    let prefix = format!("ferry-{job}:");
    let mut out = Vec::new();
    for m in target.masters() {
        let list = m.cmd(&["CLIENT", "LIST"]).as_str();
        for line in list.lines() {
            let Some(name) = line
                .split(' ')
                .find_map(|kv| kv.strip_prefix("name="))
                .and_then(|n| n.strip_prefix(&prefix))
            else {
                continue;
            };
            if let Some((shard, g)) = name.rsplit_once("-g") {
                if let Ok(g) = g.parse() {
                    out.push((shard.to_string(), g));
                }
            }
        }
    }
    out
}

/// Each shard's lease generation as the job view shows it.
fn generations(http: &Http, base: &str, job: &str) -> HashMap<String, u64> {
    let v = http.job(base, job);
    v["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| {
                    (
                        s["shard"].as_str().unwrap_or_default().to_string(),
                        s["lease_generation"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn workers_share_a_jobs_shards_and_survive_kill_freeze_join_and_drain() {
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
    let source = Cluster::start(3, 0);
    let target = Cluster::start(3, 0);
    let job = "c2c";
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = source
        .masters()
        .into_iter()
        .map(|m| writer(m, stop.clone()))
        .collect();

    // Started together on the new database: they migrate it one at a time.
    let spawned: Vec<Ferry> = (0..3).map(|_| spawn_worker(&store, &[])).collect();
    let mut workers: Vec<Worker> = spawned.into_iter().map(worker_ready).collect();
    // Every worker registered (and counted) before the job comes.
    std::thread::sleep(Duration::from_secs(2));
    let spec = json!({
        "name": job,
        "source": {"topology": "cluster", "addresses": [source.masters()[0].addr()]},
        "target": {"topology": "cluster", "addresses": [target.masters()[0].addr()]},
        "mode": "full+incremental",
        "retry": {"policy": "immediately"},
    });
    let (status, v) = http.call(
        reqwest::Method::POST,
        &format!("{}/api/v1/jobs?start=true", workers[0].url),
        Some(spec),
    );
    assert_eq!(status, 201, "{v}");

    // 1. One task per source shard, spread: each worker runs one, and every worker
    // shows every shard with its worker.
    wait_for(
        "the shards to spread over the three workers",
        Duration::from_secs(30),
        || {
            let owners = http.owners(&workers[1].url, job);
            let distinct: HashSet<_> = owners.values().flatten().collect();
            if owners.len() == 3 && owners.values().all(Option::is_some) && distinct.len() == 3 {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );
    wait_for(
        "every shard to be incremental",
        Duration::from_secs(60),
        || {
            let v = http.job(&workers[2].url, job);
            let states: Vec<&str> = v["shards"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["state"].as_str()).collect())
                .unwrap_or_default();
            if v["state"] == "incremental"
                && states.len() == 3
                && states.iter().all(|s| *s == "incremental")
            {
                Ok(())
            } else {
                Err(format!("{} {states:?}", v["state"]))
            }
        },
    );
    let v = http.job(&workers[0].url, job);
    for s in v["shards"].as_array().expect("shards") {
        assert!(s["worker_address"].is_string(), "{s}");
        assert!(s["node"].is_string(), "{s}");
    }

    // 2. kill -9 the worker running the first shard: another worker runs it within the
    // lease time (and a heartbeat or two).
    let owners = http.owners(&workers[0].url, job);
    let first = owners.keys().min().cloned().expect("a shard");
    let victim_id = owners[&first].clone().expect("the shard runs");
    let victim = workers
        .iter()
        .position(|w| w.id == victim_id)
        .expect("victim");
    let mut dead = workers.remove(victim);
    dead.proc.signal("KILL");
    let killed_at = Instant::now();
    wait_for(
        "another worker to take the shard over",
        Duration::from_secs(LEASE * 3),
        || {
            let owners = http.owners(&workers[0].url, job);
            match &owners[&first] {
                Some(w) if *w != victim_id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    eprintln!(
        "shard {first} taken over {:?} after the kill",
        killed_at.elapsed()
    );
    drop(dead);

    // 3. SIGSTOP a worker past its lease: the other takes its tasks, and cuts the frozen
    // worker's writer connections off the target before it reads the checkpoints.
    let owners = http.owners(&workers[0].url, job);
    let frozen_id = owners
        .values()
        .flatten()
        .next()
        .cloned()
        .expect("a shard runs");
    let frozen = workers
        .iter()
        .position(|w| w.id == frozen_id)
        .expect("frozen");
    let frozen_shards: Vec<String> = owners
        .iter()
        .filter(|(_, w)| w.as_deref() == Some(frozen_id.as_str()))
        .map(|(s, _)| s.clone())
        .collect();
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
    let before = generations(&http, &workers[awake].url, job);
    sig("-STOP");
    let awake_url = workers[awake].url.clone();
    let awake_id = workers[awake].id.clone();
    wait_for(
        "the awake worker to run every shard",
        Duration::from_secs(LEASE * 4),
        || {
            let owners = http.owners(&awake_url, job);
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
    wait_for(
        "every shard to be incremental again",
        Duration::from_secs(60),
        || {
            let v = http.job(&awake_url, job);
            if v["state"] == "incremental" {
                Ok(())
            } else {
                Err(v["state"].to_string())
            }
        },
    );
    let after = generations(&http, &awake_url, job);
    for shard in &frozen_shards {
        assert!(
            after[shard] > before[shard],
            "{shard}: {before:?} → {after:?}"
        );
    }
    // The frozen worker's writers of the shards it lost are gone from the target.
    let stale = |conns: &[(String, u64)]| -> Vec<(String, u64)> {
        conns
            .iter()
            .filter(|(s, g)| after.get(s).is_some_and(|cur| g < cur))
            .cloned()
            .collect()
    };
    let conns = writer_connections(&target, job);
    assert!(
        stale(&conns).is_empty(),
        "older writers still connected: {conns:?}"
    );
    sig("-CONT");
    wait_for(
        "the woken worker to stop its tasks",
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
    // Woken, it wrote nothing more: no writer of an older generation came back (it would
    // be one that sends what it had queued), now or after its next heartbeats.
    std::thread::sleep(Duration::from_secs(LEASE));
    let conns = writer_connections(&target, job);
    assert!(
        stale(&conns).is_empty(),
        "a fenced writer came back: {conns:?}"
    );

    // 4. A fourth worker (started with --drain) joins: it receives a task.
    let joiner = worker(&store, &["--drain"]);
    let joiner_id = joiner.id.clone();
    wait_for(
        "the new worker to receive a task",
        Duration::from_secs(LEASE * 6),
        || {
            let owners = http.owners(&joiner.url, job);
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

    // 5. Drained, it hands its task over and exits 0.
    let mut joiner = workers.pop().expect("joiner");
    let status = joiner.proc.signal("TERM");
    assert!(status.success(), "{status}\n{}", joiner.proc.output());
    assert!(
        joiner.proc.stderr().contains("worker drained"),
        "{}",
        joiner.proc.output()
    );
    wait_for(
        "every shard to run on the remaining workers",
        Duration::from_secs(LEASE * 4),
        || {
            let owners = http.owners(&workers[0].url, job);
            let live: HashSet<&str> = workers.iter().map(|w| w.id.as_str()).collect();
            if owners.len() == 3
                && owners
                    .values()
                    .all(|o| o.as_deref().is_some_and(|w| live.contains(w)))
            {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );

    // 6. Stopped and started again through the API (on any worker): every shard stops,
    // the pre-check finds the shards' checkpoints (the target holds this job's data, so
    // it is no "non-empty target"), and every shard resumes.
    let (status, v) = http.call(
        reqwest::Method::POST,
        &format!("{}/api/v1/jobs/{job}/stop", workers[1].url),
        None,
    );
    assert_eq!(status, 200, "{v}");
    wait_for(
        "every shard to stop",
        Duration::from_secs(LEASE * 2),
        || {
            let owners = http.owners(&workers[0].url, job);
            if owners.values().all(Option::is_none) {
                Ok(())
            } else {
                Err(format!("{owners:?}"))
            }
        },
    );
    let (status, v) = http.call(
        reqwest::Method::POST,
        &format!("{}/api/v1/jobs/{job}/start", workers[0].url),
        None,
    );
    assert_eq!(status, 200, "{v}");
    wait_for("every shard to resume", Duration::from_secs(60), || {
        let v = http.job(&workers[1].url, job);
        let owners = http.owners(&workers[1].url, job);
        if v["state"] == "incremental" && owners.values().all(Option::is_some) {
            Ok(())
        } else {
            Err(format!("{} {owners:?}", v["state"]))
        }
    });

    // The writers stop; the target catches up and equals the source exactly: a write
    // applied twice (a counter one too high, a list or log entry twice) never compares
    // equal.
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        let n = w.join().expect("writer");
        assert!(n > 0);
        total += n;
    }
    eprintln!("{total} writes of each kind on the source");
    wait_same_data_cluster(&source, &target, Duration::from_secs(90));
    for m in source.masters() {
        for t in tags_of(m, 3) {
            for k in [format!("{{{t}}}:counter"), format!("{{{t}}}:log")] {
                assert_eq!(
                    source.cmd_routed_str(&["GET", &k]).as_str(),
                    target.cmd_routed_str(&["GET", &k]).as_str(),
                    "{k}"
                );
            }
            let k = format!("{{{t}}}:list");
            assert_eq!(
                source.cmd_routed_str(&["LLEN", &k]).as_int(),
                target.cmd_routed_str(&["LLEN", &k]).as_int(),
                "{k}"
            );
        }
    }
    let v = http.job(&workers[0].url, job);
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(3), "{v}");
    for w in &mut workers {
        let status = w.proc.signal("TERM");
        assert!(status.success(), "{}", w.proc.output());
    }
    drop_database(&base, &store, &http.rt);
}

/// The replication links ferry holds on a source master (`CLIENT LIST TYPE replica` ids).
fn replica_links(master: &Server) -> Vec<String> {
    let list = master.cmd(&["CLIENT", "LIST", "TYPE", "replica"]).as_str();
    let mut ids: Vec<String> = list
        .lines()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

/// The unit a worker leases is one source shard, and a shard retries on its own: with
/// `ferry sync` over a three-master source, a broken link to one master restarts that
/// shard alone (it resumes with `PSYNC`), and the other shards keep their links.
#[test]
fn a_failing_shard_retries_alone() {
    let source = Cluster::start(3, 0);
    let target = Cluster::start(3, 0);
    for i in 0..300 {
        source.cmd_routed_str(&["SET", &format!("key:{i}"), &i.to_string()]);
    }
    let mut ferry = Ferry::sync(&source.seed_url(), &target.seed_url(), &["--name", "alone"]);
    wait_for("every shard's snapshot", Duration::from_secs(60), || {
        let n = ferry.output().matches("snapshot applied").count();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} applied\n{}", ferry.output()))
        }
    });
    let masters = source.masters();
    let links: Vec<Vec<String>> = masters.iter().map(|m| replica_links(m)).collect();
    assert!(links.iter().all(|l| l.len() == 1), "{links:?}");
    // The link of the second master's shard breaks.
    masters[1].cmd(&["CLIENT", "KILL", "ID", &links[1][0]]);
    wait_for("the shard to reconnect", Duration::from_secs(30), || {
        let now = replica_links(masters[1]);
        if now.len() == 1 && now != links[1] {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    for i in 0..300 {
        source.cmd_routed_str(&["INCR", &format!("counter:{}", i % 7)]);
        source.cmd_routed_str(&["RPUSH", &format!("log:{}", i % 5), &i.to_string()]);
    }
    wait_same_data_cluster(&source, &target, Duration::from_secs(60));
    let out = ferry.output();
    assert!(out.contains("retrying the shard"), "{out}");
    assert!(out.contains("partial resync (+CONTINUE)"), "{out}");
    // The other shards kept their links all along.
    assert_eq!(replica_links(masters[0]), links[0], "{out}");
    assert_eq!(replica_links(masters[2]), links[2], "{out}");
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}
