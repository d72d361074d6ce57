//! Sources other than a cooperative replica link: a server that refuses PSYNC (SCAN +
//! keyspace notifications), a renamed PSYNC, an RDB file, an AOF directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::common::{churn, wait_until, Ferry};
use ferry_testkit::{assert_same_data, populate_every_type, wait_same_data, Server};

const LONG: Duration = Duration::from_secs(60);

/// A source whose PSYNC and SYNC are renamed away, as some managed services do. (The
/// builder keeps one `rename-command`, so the second rides in its values.)
fn source_without_psync() -> Server {
    Server::builder()
        .arg_values(
            "rename-command",
            &["PSYNC", "", "--rename-command", "SYNC", ""],
        )
        .start()
}

fn config(s: &Server, name: &str) -> String {
    s.cmd(&["CONFIG", "GET", name]).as_array()[1].as_str()
}

#[test]
fn auto_falls_back_to_scan_and_follows_writes() {
    let source = source_without_psync();
    let target = Server::start();
    populate_every_type(&source, 2);
    let lib = "#!lua name=scanlib\nredis.register_function('scan_one', function() return 1 end)";
    source.cmd(&["FUNCTION", "LOAD", lib]);
    source.cmd(&["SET", "gone:soon", "x"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = churn(&source, stop.clone());
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--name", "scanjob"]);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().expect("churn") > 0);
    // Deletes, an expiry by time, an overwrite, a new key in another database.
    source.cmd(&["DEL", "gone:soon"]);
    source.cmd(&["SET", "expires", "x", "PX", "300"]);
    source.cmd(&["SET", "churn:counter", "overwritten"]);
    source.cmd(&["SELECT", "5"]);
    source.cmd(&["HSET", "late:hash", "f", "v"]);
    thread::sleep(Duration::from_millis(600));
    wait_same_data(&source, &target, LONG);
    assert!(ferry.is_running(), "{}", ferry.output());
    let out = ferry.output();
    assert!(out.contains("falling back to SCAN"), "{out}");
    // The expired key is gone from the target too, whatever expired it there.
    target.cmd(&["SELECT", "0"]);
    assert!(target.cmd(&["EXISTS", "expires"]).as_int() == 0);
    let functions = |s: &Server| format!("{:?}", s.cmd(&["FUNCTION", "LIST", "WITHCODE"]));
    assert_eq!(functions(&source), functions(&target));
    assert!(ferry.signal("INT").success(), "{}", ferry.output());

    // No offsets to resume from: a restart flushes the target and copies again, so writes
    // made while ferry was away, and stray keys on the target, end up right too.
    source.cmd(&["SELECT", "0"]);
    source.cmd(&["DEL", "churn:counter"]);
    source.cmd(&["SET", "while:away", "1"]);
    target.cmd(&["SELECT", "0"]);
    target.cmd(&["SET", "stray", "1"]);
    let mut again = Ferry::sync(&source.url(), &target.url(), &["--name", "scanjob"]);
    wait_same_data(&source, &target, LONG);
    assert!(again.is_running(), "{}", again.output());
    again.signal("INT");
}

#[test]
fn psync_method_on_a_source_without_psync_fails_clearly() {
    let source = source_without_psync();
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--source-method",
            "psync",
            "--retry-other-limit",
            "0s",
            "--skip-precheck",
        ],
    );
    let status = ferry.wait(LONG);
    assert!(!status.success());
    let out = ferry.output();
    assert!(out.contains("refused replication"), "{out}");
    assert!(out.contains("--source-method scan"), "{out}");
}

#[test]
fn scan_method_without_config_permission_explains_the_fix() {
    let source = Server::builder()
        .arg_values(
            "rename-command",
            &["PSYNC", "", "--rename-command", "CONFIG", ""],
        )
        .start();
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--source-method", "scan", "--retry-other-limit", "0s"],
    );
    assert!(!ferry.wait(LONG).success());
    let out = ferry.output();
    assert!(out.contains("notify-keyspace-events KEA"), "{out}");
}

#[test]
fn renamed_psync_command_is_used() {
    let source = Server::builder()
        .arg_values("rename-command", &["PSYNC", "xxxpsync"])
        .start();
    let target = Server::start();
    populate_every_type(&source, 2);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--source-method",
            "psync",
            "--psync-command",
            "xxxpsync",
            "--retry-other-limit",
            "0s",
        ],
    );
    wait_same_data(&source, &target, LONG);
    // The command stream follows the snapshot.
    source.cmd(&["SELECT", "2"]);
    source.cmd(&["RPUSH", "later", "a", "b"]);
    source.cmd(&["SELECT", "0"]);
    source.cmd(&["DEL", "later"]);
    wait_same_data(&source, &target, LONG);
    assert!(ferry.is_running(), "{}", ferry.output());
    ferry.signal("INT");
}

#[test]
fn rdb_file_restores_exactly() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 3);
    source.cmd(&["SAVE"]);
    let path = PathBuf::from(config(&source, "dir")).join(config(&source, "dbfilename"));
    let spec = format!("rdb:{}", path.display());
    let mut ferry = Ferry::sync(&spec, &target.url(), &["--name", "backup"]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("full sync complete"),
        "{}",
        ferry.output()
    );
    assert_same_data(&source, &target);
    // A re-run redoes the copy (no offsets in a file): flushed, then the same data.
    target.cmd(&["SELECT", "0"]);
    target.cmd(&["SET", "stray", "1"]);
    let mut again = Ferry::sync(&spec, &target.url(), &["--name", "backup"]);
    assert!(again.wait(LONG).success(), "{}", again.output());
    assert_same_data(&source, &target);
}

fn aof_source(timestamps: bool) -> Server {
    let mut b = Server::builder()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always");
    if timestamps {
        b = b.arg("aof-timestamp-enabled", "yes");
    }
    b.start()
}

fn aof_dir(s: &Server) -> String {
    let dir = PathBuf::from(config(s, "dir")).join(config(s, "appenddirname"));
    format!("aof:{}", dir.display())
}

fn rewrite_aof(s: &Server) {
    s.cmd(&["BGREWRITEAOF"]);
    wait_until("AOF rewrite", LONG, || {
        let p = s.info("persistence");
        p.get("aof_rewrite_in_progress").map(String::as_str) == Some("0")
            && p.get("aof_rewrite_scheduled").map(String::as_str) == Some("0")
    });
}

#[test]
fn aof_directory_restores_exactly() {
    let source = aof_source(false);
    let target = Server::start();
    populate_every_type(&source, 2);
    rewrite_aof(&source);
    // More writes into the incr file after the base: databases, a transaction, deletes,
    // expiries, overwrites.
    let mut c = source.client();
    for cmd in [
        vec!["SELECT", "3"],
        vec!["SET", "after:rewrite", "1"],
        vec!["MULTI"],
        vec!["INCR", "after:counter"],
        vec!["LPUSH", "after:list", "a", "b"],
        vec!["EXEC"],
        vec!["SET", "after:ttl", "v", "EX", "3600"],
        vec!["SELECT", "0"],
        vec!["DEL", "after:rewrite"],
        vec!["SET", "after:db0", "x"],
    ] {
        let r = c.cmd_str(&cmd);
        assert!(!r.is_error(), "{cmd:?}: {r:?}");
    }
    let mut ferry = Ferry::sync(&aof_dir(&source), &target.url(), &[]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("full sync complete"),
        "{}",
        ferry.output()
    );
    assert_same_data(&source, &target);
}

#[test]
fn aof_until_stops_at_the_timestamp_annotation() {
    let source = aof_source(true);
    let target = Server::start();
    let reference = Server::start();
    for i in 0..20 {
        let k = format!("before:{i}");
        source.cmd(&["SET", &k, "v"]);
        reference.cmd(&["SET", &k, "v"]);
    }
    let now = source.cmd(&["TIME"]).as_array()[0].as_str();
    thread::sleep(Duration::from_millis(2100));
    for i in 0..20 {
        source.cmd(&["SET", &format!("after:{i}"), "v"]);
    }
    source.cmd(&["SET", "before:0", "changed"]);
    let mut ferry = Ferry::sync(&aof_dir(&source), &target.url(), &["--aof-until", &now]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_same_data(&reference, &target);
}
