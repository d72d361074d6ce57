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
        .contains("--source"));
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
