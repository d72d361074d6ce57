//! End-to-end tests of `ferry verify` between real redis-servers: equal copies pass, and
//! every kind of difference is reported on the right key.

use std::process::{Command, Output};
use std::time::Duration;

use ferry_testkit::{free_port, populate_every_type, Server};
use serde_json::Value;

fn ferry_verify(source: &str, target: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--source", source, "--target", target])
        .args(extra)
        .output()
        .expect("run ferry verify")
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", show(out)))
}

/// A server where `DEBUG` is refused, so values are compared by their contents.
fn server(debug: bool) -> Server {
    let mut b = Server::builder();
    if !debug {
        b = b.arg("enable-debug-command", "no");
    }
    b.start()
}

/// A copy made by native replication, then detached.
fn replica_copy(source: &Server, debug: bool) -> Server {
    let mut b = Server::builder().replica_of(source);
    if !debug {
        b = b.arg("enable-debug-command", "no");
    }
    let target = b.start();
    source.wait_replica_synced(&target, Duration::from_secs(20));
    target.cmd(&["REPLICAOF", "NO", "ONE"]);
    target
}

fn identical(debug: bool, method: &str) {
    let source = Server::start();
    populate_every_type(&source, 1);
    let target = replica_copy(&source, debug);
    let out = ferry_verify(&source.url(), &target.url(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["value_method"], method, "{r}");
    assert!(r["keys_compared"].as_u64().unwrap_or(0) > 50, "{r}");
    assert_eq!(r["keys_compared"], r["keys_equal"], "{r}");
    let out = ferry_verify(&source.url(), &target.url(), &["--mode", "keys"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result: EQUAL"),
        "{}",
        show(&out)
    );
}

#[test]
fn identical_copy_is_equal_by_digest() {
    identical(true, "digest");
}

#[test]
fn identical_copy_is_equal_by_contents() {
    identical(false, "contents");
}

fn both(a: &Server, b: &Server, args: &[&str]) {
    a.cmd(args);
    b.cmd(args);
}

fn big_list(server: &Server, last: &str) {
    let mut client = server.client();
    let cmds: Vec<Vec<Vec<u8>>> = (0..50)
        .map(|chunk| {
            let mut cmd = vec![b"RPUSH".to_vec(), b"big".to_vec()];
            for i in chunk * 1000..(chunk + 1) * 1000 {
                let v = if i == 49_999 {
                    last.to_string()
                } else {
                    format!("e{i}")
                };
                cmd.push(v.into_bytes());
            }
            cmd
        })
        .collect();
    let replies = client.pipeline(&cmds).expect("RPUSH big");
    assert!(replies.iter().all(|r| !r.is_error()));
}

/// Source and target with the same commands, then one difference of each kind.
fn differing_pair(debug: bool) -> (Server, Server) {
    let (s, t) = (server(debug), server(debug));
    both(&s, &t, &["SET", "same:str", "v"]);
    both(&s, &t, &["SADD", "same:set", "a", "b", "c"]);
    both(&s, &t, &["ZADD", "same:zset", "1.5", "a", "2", "b"]);
    both(&s, &t, &["SET", "same:ttl", "v", "EX", "1000"]);
    both(&s, &t, &["SELECT", "3"]);
    both(&s, &t, &["SET", "db3:str", "v"]);
    both(&s, &t, &["SELECT", "0"]);
    s.cmd(&["SET", "missing", "v"]);
    t.cmd(&["SET", "extra", "v"]);
    both(&s, &t, &["HSET", "h", "a", "1", "b", "2"]);
    t.cmd(&["HSET", "h", "b", "3"]);
    s.cmd(&["RPUSH", "l", "a", "b", "c"]);
    t.cmd(&["RPUSH", "l", "b", "a", "c"]);
    s.cmd(&["SET", "ttl", "v", "EX", "1000"]);
    t.cmd(&["SET", "ttl", "v", "EX", "100"]);
    both(&s, &t, &["XADD", "s", "1-1", "f", "a"]);
    s.cmd(&["XADD", "s", "2-1", "f", "b"]);
    t.cmd(&["XADD", "s", "2-1", "f", "c"]);
    both(&s, &t, &["ZADD", "z", "1", "a", "2", "b"]);
    t.cmd(&["ZADD", "z", "3", "b"]);
    both(&s, &t, &["SADD", "set", "x", "y"]);
    s.cmd(&["SADD", "set", "z"]);
    t.cmd(&["SADD", "set", "w"]);
    both(&s, &t, &["XADD", "g", "1-1", "f", "v"]);
    s.cmd(&["XGROUP", "CREATE", "g", "grp", "0"]);
    big_list(&s, "last");
    big_list(&t, "LAST");
    (s, t)
}

fn problems(r: &Value, key: &str) -> Vec<Value> {
    let diffs = r["differences"].as_array().cloned().unwrap_or_default();
    let found: Vec<&Value> = diffs.iter().filter(|d| d["key"] == key).collect();
    assert_eq!(found.len(), 1, "key {key} listed once in {r}");
    assert_eq!(found[0]["db"], 0, "{r}");
    found[0]["problems"].as_array().cloned().unwrap_or_default()
}

fn kinds(r: &Value, key: &str) -> Vec<String> {
    problems(r, key)
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn differences(debug: bool) {
    let (s, t) = differing_pair(debug);
    let args = ["--json", "--rounds", "2", "--recheck-delay", "100ms"];
    let out = ferry_verify(&s.url(), &t.url(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["equal"], false);
    assert_eq!(r["keys_compared"], 14, "{r}");
    assert_eq!(r["keys_equal"], 5, "{r}");
    assert_eq!(r["missing_on_target"], 1, "{r}");
    assert_eq!(r["extra_on_target"], 1, "{r}");
    assert_eq!(r["type_differences"], 0, "{r}");
    assert_eq!(r["ttl_differences"], 1, "{r}");
    assert_eq!(r["value_differences"], 7, "{r}");
    assert_eq!(r["rounds"], 2, "{r}");
    assert_eq!(r["differences"].as_array().map(Vec::len), Some(10), "{r}");
    assert_eq!(kinds(&r, "missing"), ["missing_on_target"]);
    assert_eq!(kinds(&r, "extra"), ["extra_on_target"]);
    assert_eq!(kinds(&r, "ttl"), ["ttl"]);
    let ttl = &problems(&r, "ttl")[0];
    assert!(ttl["source_ms"].as_i64().unwrap_or(0) > 990_000, "{r}");
    assert!(ttl["target_ms"].as_i64().unwrap_or(0) <= 100_000, "{r}");
    for key in ["h", "l", "s", "big", "z", "set", "g"] {
        assert_eq!(kinds(&r, key), ["value"], "{key}: {r}");
    }
    if !debug {
        let detail = |key: &str| {
            problems(&r, key)[0]["detail"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(detail("big"), "element 49999 differs");
        assert_eq!(detail("l"), "element 0 differs");
        assert_eq!(detail("s"), "entry 2-1 differs");
        assert_eq!(detail("h"), "fields or values differ");
        assert_eq!(detail("z"), "score of element 1 differs");
        assert_eq!(detail("set"), "members differ");
    }
    let detail = problems(&r, "g")[0]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(detail, "consumer groups differ", "{r}");

    // The same as text, and keys mode leaves values alone.
    let out = ferry_verify(&s.url(), &t.url(), &["--rounds", "1", "--mode", "keys"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("db0 \"missing\": missing on target"),
        "{text}"
    );
    assert!(text.contains("db0 \"extra\": extra on target"), "{text}");
    assert!(text.contains("value differences   0"), "{text}");
    assert!(text.contains("result: DIFFERENT"), "{text}");
    // --max-diffs bounds the list, not the counts.
    let out = ferry_verify(
        &s.url(),
        &t.url(),
        &["--json", "--rounds", "1", "--max-diffs", "2"],
    );
    let r = json_report(&out);
    assert_eq!(r["differences"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["truncated"], true, "{r}");
    assert_eq!(r["value_differences"], 7, "{r}");
}

#[test]
fn each_difference_is_reported_by_digest() {
    differences(true);
}

#[test]
fn each_difference_is_reported_by_contents() {
    differences(false);
}

#[test]
fn a_key_in_flight_is_not_reported() {
    let (s, t) = (Server::start(), Server::start());
    both(&s, &t, &["SET", "stable", "v"]);
    t.cmd(&["HSET", "k", "f", "old"]);
    s.cmd(&["HSET", "k", "f", "new"]);
    let target = t.url();
    let source = s.url();
    let run = std::thread::spawn(move || {
        ferry_verify(
            &source,
            &target,
            &["--json", "--rounds", "3", "--recheck-delay", "1500ms"],
        )
    });
    // The first round over two keys takes milliseconds; the write lands before the recheck.
    std::thread::sleep(Duration::from_millis(700));
    t.cmd(&["HSET", "k", "f", "new"]);
    let out = run.join().expect("verify thread");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["transient"], 1, "{r}");
    assert_eq!(r["rounds"], 2, "{r}");
    assert_eq!(r["equal"], true, "{r}");
}

#[test]
fn unreachable_target_exits_2_naming_the_node() {
    let source = Server::start();
    let port = free_port();
    let target = format!("redis://127.0.0.1:{port}");
    let out = ferry_verify(&source.url(), &target, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("target node 127.0.0.1:{port}")),
        "{err}"
    );

    let out = ferry_verify("redis://nohost:notaport", &source.url(), &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(json_report(&out)["error"]
        .as_str()
        .unwrap_or("")
        .contains("source: bad address"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--target", &source.url()])
        .env_remove("FERRY_SOURCE")
        .output()
        .expect("run ferry verify");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no source given"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_copy_made_by_ferry_sync_verifies_equal() {
    let source = server(true);
    let target = server(true);
    populate_every_type(&source, 1);
    let sync = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sync", "--mode", "full", "--progress", "never"])
        .args(["--source", &source.url(), "--target", &target.url()])
        .output()
        .expect("run ferry sync");
    assert!(sync.status.success(), "{}", show(&sync));
    // The target also holds ferry's checkpoint: bookkeeping, not a difference.
    let out = ferry_verify(&source.url(), &target.url(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    source.cmd(&["SET", "only-on-source", "1"]);
    let out = ferry_verify(&source.url(), &target.url(), &["--rounds", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

fn ferry_sync(source: &str, target: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sync", "--mode", "full", "--progress", "never"])
        .args(["--source", source, "--target", target])
        .args(extra)
        .output()
        .expect("run ferry sync");
    assert!(out.status.success(), "sync: {}", show(&out));
}

/// `cmd` in database `db` of `server`.
fn in_db(server: &Server, db: u32, cmd: &[&str]) {
    let mut c = server.client();
    c.cmd_str(&["SELECT", &db.to_string()]);
    let reply = c.cmd_str(cmd);
    assert!(!reply.is_error(), "{cmd:?}: {reply:?}");
}

/// The one listed difference of `key`: (source db, target db, problem kinds).
fn difference(r: &Value, key: &str) -> (u64, u64, Vec<String>) {
    let diffs = r["differences"].as_array().cloned().unwrap_or_default();
    let found: Vec<&Value> = diffs.iter().filter(|d| d["key"] == key).collect();
    assert_eq!(found.len(), 1, "key {key} listed once in {r}");
    let kinds = found[0]["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    (
        found[0]["db"].as_u64().unwrap_or(99),
        found[0]["target_db"].as_u64().unwrap_or(99),
        kinds,
    )
}

/// A job's scope: user keys but not user:tmp:, db 2 left out, db 1 into db 3 and db 4
/// into db 0 (with db 0's own keys).
const SCOPE: [&str; 8] = [
    "--include-key-prefix",
    "user:",
    "--exclude-key-prefix",
    "user:tmp:",
    "--exclude-dbs",
    "2",
    "--db-map",
    "1:3,4:0",
];

/// 55 keys the job copies, 21 it leaves out.
fn populate_scoped(s: &Server) {
    for i in 0..31 {
        s.cmd(&["SET", &format!("user:{i}"), &format!("v{i}")]);
    }
    for i in 0..6 {
        s.cmd(&[
            "HSET",
            &format!("user:h:{i}"),
            "f",
            "1",
            "g",
            &i.to_string(),
        ]);
    }
    for i in 0..5 {
        s.cmd(&["SET", &format!("user:tmp:{i}"), "t"]);
    }
    for i in 0..10 {
        s.cmd(&["SET", &format!("order:{i}"), "o"]);
    }
    for i in 0..10 {
        in_db(s, 1, &["RPUSH", &format!("user:db1:{i}"), "a", "b"]);
    }
    for i in 0..5 {
        in_db(s, 2, &["SET", &format!("user:db2:{i}"), "x"]);
    }
    for i in 0..8 {
        in_db(s, 4, &["SADD", &format!("user:db4:{i}"), "m", "n"]);
    }
    in_db(s, 5, &["SET", "order:db5", "o"]);
}

#[test]
fn a_job_with_filters_and_a_db_map_verifies_with_its_scope() {
    let source = server(true);
    let target = server(true);
    populate_scoped(&source);
    ferry_sync(&source.url(), &target.url(), &SCOPE);
    let quick = ["--json", "--rounds", "2", "--recheck-delay", "100ms"];
    let with_scope: Vec<&str> = quick.iter().chain(SCOPE.iter()).copied().collect();

    let out = ferry_verify(&source.url(), &target.url(), &with_scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["keys_compared"], 55, "{r}");
    assert_eq!(r["keys_equal"], 55, "{r}");
    assert_eq!(r["target_keys_scanned"], 55, "{r}");
    assert_eq!(r["source_keys_filtered"], 21, "{r}");
    assert_eq!(r["target_keys_filtered"], 0, "{r}");

    // Without the job's scope the same copy differs: keys it leaves out are missing, and
    // the mapped databases hold keys the same-numbered source databases lack.
    let out = ferry_verify(&source.url(), &target.url(), &quick);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["source_keys_filtered"], 0, "{r}");
    // db 0: order:*, user:tmp:* (15); db 1, 2, 4, 5: 10 + 5 + 8 + 1.
    assert_eq!(r["missing_on_target"], 39, "{r}");
    // user:db4:* in target db 0, user:db1:* in target db 3.
    assert_eq!(r["extra_on_target"], 18, "{r}");

    // Keys the job does not own, changed or added on the target: not reported.
    target.cmd(&["SET", "order:1", "written on the target"]);
    target.cmd(&["SET", "user:tmp:9", "written on the target"]);
    in_db(
        &target,
        1,
        &["SET", "user:in-db1", "db 1 receives nothing now"],
    );
    in_db(&target, 2, &["SET", "user:db2:0", "db 2 is left out"]);
    in_db(
        &target,
        3,
        &["SET", "order:db3", "filtered name in a mapped db"],
    );
    let out = ferry_verify(&source.url(), &target.url(), &with_scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["target_keys_filtered"], 5, "{r}");

    // Keys the job copies: a missing one, each extra one and a changed one, exactly.
    target.cmd(&["DEL", "user:7"]);
    in_db(&target, 3, &["DEL", "user:db1:3"]);
    in_db(&target, 3, &["SET", "user:extra-in-3", "x"]);
    target.cmd(&["SET", "user:extra-in-0", "x"]);
    target.cmd(&["SADD", "user:db4:2", "changed"]);
    let out = ferry_verify(&source.url(), &target.url(), &with_scope);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["missing_on_target"], 2, "{r}");
    assert_eq!(r["extra_on_target"], 2, "{r}");
    assert_eq!(r["value_differences"], 1, "{r}");
    assert_eq!(r["type_differences"], 0, "{r}");
    assert_eq!(r["ttl_differences"], 0, "{r}");
    assert_eq!(r["differences"].as_array().map(Vec::len), Some(5), "{r}");
    let missing = || vec!["missing_on_target".to_string()];
    let extra = || vec!["extra_on_target".to_string()];
    assert_eq!(difference(&r, "user:7"), (0, 0, missing()));
    assert_eq!(difference(&r, "user:db1:3"), (1, 3, missing()));
    assert_eq!(difference(&r, "user:extra-in-3"), (1, 3, extra()));
    assert_eq!(difference(&r, "user:extra-in-0"), (0, 0, extra()));
    assert_eq!(
        difference(&r, "user:db4:2"),
        (4, 0, vec!["value".to_string()])
    );

    // The same scope from the job file, as text.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        format!(
            "source = \"{}\"\ntarget = \"{}\"\ndb_map = \"1:3,4:0\"\n\
             [filter]\ninclude_key_prefixes = [\"user:\"]\n\
             exclude_key_prefixes = [\"user:tmp:\"]\nexclude_dbs = [2]\n",
            source.url(),
            target.url()
        ),
    )
    .expect("write job.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--config", &file.display().to_string()])
        .args(["--rounds", "1", "--mode", "keys"])
        .output()
        .expect("run ferry verify");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("db1->db3 \"user:db1:3\": missing on target"),
        "{text}"
    );
    assert!(
        text.contains("db1->db3 \"user:extra-in-3\": extra on target"),
        "{text}"
    );
    assert!(text.contains("db0 \"user:7\": missing on target"), "{text}");
    assert!(text.contains("missing on target   2"), "{text}");
    assert!(
        text.contains("outside the job     21 source and 5 target"),
        "{text}"
    );
}

#[test]
fn an_extra_key_is_looked_for_in_every_source_db_mapped_to_its_db() {
    // Source dbs 0 and 4 both land in target db 0: a target key that only db 4 holds is
    // the job's copy, not an extra, and a change to it is found against db 4.
    let source = server(false);
    let target = server(false);
    source.cmd(&["SET", "zero", "0"]);
    in_db(&source, 4, &["SET", "four", "4"]);
    ferry_sync(&source.url(), &target.url(), &["--db-map", "4:0"]);
    let args = [
        "--json",
        "--rounds",
        "2",
        "--recheck-delay",
        "100ms",
        "--db-map",
        "4:0",
    ];
    let out = ferry_verify(&source.url(), &target.url(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["keys_compared"], 2, "{r}");
    assert_eq!(r["target_keys_scanned"], 2, "{r}");
    assert_eq!(r["value_method"], "contents", "{r}");

    // Target db 4 receives nothing (source db 4 goes to db 0): a key there is not the job's.
    in_db(&target, 4, &["SET", "stray", "x"]);
    let out = ferry_verify(&source.url(), &target.url(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(json_report(&out)["target_keys_filtered"], 1);

    target.cmd(&["SET", "four", "changed"]);
    target.cmd(&["SET", "none", "x"]);
    let out = ferry_verify(&source.url(), &target.url(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["value_differences"], 1, "{r}");
    assert_eq!(r["extra_on_target"], 1, "{r}");
    assert_eq!(difference(&r, "four"), (4, 0, vec!["value".to_string()]));
    assert_eq!(
        difference(&r, "none"),
        (0, 0, vec!["extra_on_target".to_string()])
    );

    // The URL databases pair up the same way: source db 4 against target db 0.
    let out = ferry_verify(
        &format!("{}/4", source.url()),
        &format!("{}/0", target.url()),
        &["--json", "--rounds", "1", "--db-map", "4:0"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = json_report(&out);
    assert_eq!(r["keys_compared"], 1, "{r}");
    assert_eq!(r["value_differences"], 1, "{r}");
    // "zero" and "none" are in target db 0, which source db 4 alone does not explain.
    assert_eq!(r["extra_on_target"], 2, "{r}");
    let out = ferry_verify(
        &format!("{}/4", source.url()),
        &format!("{}/1", target.url()),
        &["--json", "--db-map", "4:0"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn a_sentinel_given_as_a_node_is_refused_by_name() {
    let master = Server::start();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor m 127.0.0.1 {} 1\n",
            dir.path().display(),
            master.port()
        ),
    )
    .expect("write sentinel.conf");
    let mut sentinel = Command::new(master.binary())
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sentinel");
    let answers = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        ferry_testkit::Client::connect(&format!("127.0.0.1:{port}"))
            .and_then(|mut c| c.cmd(&[b"PING"]))
            .is_ok()
    });
    let out = ferry_verify(
        &format!("redis://127.0.0.1:{port}"),
        &master.url(),
        &["--json"],
    );
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    assert!(answers, "the sentinel did not start");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = json_report(&out)["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains(&format!("source node 127.0.0.1:{port} is a Sentinel")),
        "{err}"
    );
}
