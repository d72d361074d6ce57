//! Broken and unusual inputs on the data side (issue #16): RDB files written byte by byte
//! with what Redis drops or refuses at load (empty collections, module aux data, a key
//! twice), values a target refuses for good (a module it lacks, functions on 5.0), and a
//! chained migration's own checkpoint keys on the source.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::versions::server_binary;
use ferry_testkit::{Cluster, RdbBytes, Server};

const LONG: Duration = Duration::from_secs(60);

/// An RDB file written by hand ([`RdbBytes`]), into a fresh temp dir.
type Rdb = RdbBytes;

trait WriteFile {
    fn write(&mut self) -> (tempfile::TempDir, PathBuf);
}

impl WriteFile for RdbBytes {
    fn write(&mut self) -> (tempfile::TempDir, PathBuf) {
        let bytes = self.finish();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dump.rdb");
        std::fs::write(&path, bytes).expect("write rdb");
        (dir, path)
    }
}

/// An empty ziplist: zlbytes 11, zltail 10, zllen 0, end.
const EMPTY_ZIPLIST: [u8; 11] = [11, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0xff];

/// A server that loaded `path` as its own dump: what Redis makes of the file.
fn loaded(binary: Option<&PathBuf>, path: &std::path::Path) -> Server {
    let mut b = Server::builder();
    if let Some(bin) = binary {
        b = b.binary(bin);
    }
    let mut s = b.start();
    std::fs::copy(path, s.dir().join("dump.rdb")).expect("copy rdb");
    s.restart();
    s
}

fn rdb_spec(path: &std::path::Path) -> String {
    format!("rdb:{}", path.display())
}

fn empty_collections_file() -> (tempfile::TempDir, PathBuf) {
    let mut r = Rdb::new(b"REDIS0009");
    r.db(0).string("kept", "value");
    r.key(1, "list").len(0);
    r.key(2, "set").len(0);
    r.key(3, "zset").len(0);
    r.key(4, "hash").len(0);
    r.key(13, "hash-ziplist").str(&EMPTY_ZIPLIST);
    r.key(12, "zset-ziplist").str(&EMPTY_ZIPLIST);
    // A quicklist whose only node is an empty ziplist: Redis drops the node, then the key.
    r.key(14, "quicklist").len(1).str(&EMPTY_ZIPLIST);
    r.key(1, "full-list").len(2).str(b"a").str(b"b");
    r.write()
}

/// Every empty collection is dropped with a count, as Redis drops them at load: the target
/// ends with the same digest as a Redis that loaded the file (into 5.0 too, where RESTORE
/// took them and `DEBUG DIGEST` then crashed).
#[test]
fn empty_collections_are_skipped_as_redis_does() {
    let (_dir, path) = empty_collections_file();
    let reference = loaded(None, &path);
    assert_eq!(
        reference.cmd(&["DBSIZE"]).as_int(),
        2,
        "{}",
        reference.log()
    );
    let mut targets = vec![Server::start()];
    if let Some(b) = server_binary("redis-5.0") {
        targets.push(Server::builder().binary(&b.path).start());
    }
    for target in &targets {
        let mut ferry = Ferry::sync(&rdb_spec(&path), &target.url(), &["--name", "empty"]);
        assert!(ferry.wait(LONG).success(), "{}", ferry.output());
        let out = ferry.output();
        assert!(
            out.contains("7 empty keys skipped, as Redis does at load"),
            "{out}"
        );
        target.cmd(&[
            "DEL",
            "ferry:checkpoint:empty:0",
            "ferry:checkpoint:empty:target",
        ]);
        assert_eq!(target.cmd(&["DBSIZE"]).as_int(), 2);
        assert_eq!(target.digest(), reference.digest(), "{out}");
    }
}

/// A file holding `kept`, `{modval}other` (strings) and `modval`, a value of module
/// "fakemodul" (encoding version 1: one unsigned integer, then EOF), which no target has.
fn module_value_file() -> (tempfile::TempDir, PathBuf) {
    let mut r = Rdb::new(b"REDIS0009");
    r.db(0).string("kept", "value").string("{modval}other", "x");
    let charset = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = 0u64;
    for c in b"fakemodul" {
        id = (id << 6) | charset.iter().position(|x| x == c).unwrap() as u64;
    }
    id = (id << 10) | 1;
    r.key(7, "modval").u8(0x81).raw(&id.to_be_bytes());
    r.len(2).len(42).len(0);
    r.write()
}

/// Copies the module-value file into `target`: the job fails at once naming the key; after
/// `empty()`, with `--skip-unsupported`, it completes and counts the key skipped.
fn module_value_fails_then_is_skipped(target: &str, empty: impl Fn()) {
    let (_dir, path) = module_value_file();
    let mut ferry = Ferry::sync(&rdb_spec(&path), target, &["--name", "module"]);
    let status = ferry.wait(Duration::from_secs(30));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("\"modval\""), "{out}");
    assert!(out.contains("--skip-unsupported"), "{out}");
    assert!(!out.contains("retrying"), "{out}");

    empty();
    let mut ferry = Ferry::sync(
        &rdb_spec(&path),
        target,
        &["--name", "module", "--skip-unsupported"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    let out = ferry.output();
    assert!(
        out.contains(
            "1 key(s), function(s), script(s) or module data the target cannot hold were skipped"
        ),
        "{out}"
    );
}

/// A module value whose module the target lacks: RESTORE answers "Bad data format" on
/// every attempt, so the job fails at once naming the key, or skips and counts it.
#[test]
fn a_module_value_the_target_cannot_read_fails_at_once_or_is_skipped() {
    let target = Server::start();
    module_value_fails_then_is_skipped(&target.url(), || {
        target.cmd(&["FLUSHALL"]);
    });
    assert_eq!(target.cmd(&["GET", "kept"]).as_str(), "value");
    assert_eq!(target.cmd(&["GET", "{modval}other"]).as_str(), "x");
    assert_eq!(target.cmd(&["EXISTS", "modval"]).as_int(), 0);
}

/// `FUNCTION LOAD` into Redis 5.0 ("unknown command") fails at once, or is skipped and
/// counted with `--skip-unsupported`.
#[test]
fn functions_into_redis_5_fail_at_once_or_are_skipped() {
    let Some(old) = server_binary("redis-5.0") else {
        eprintln!("redis-5.0 not available: skipped");
        return;
    };
    let source = Server::start();
    source.cmd(&["SET", "kept", "value"]);
    source.cmd(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=lib\nredis.register_function('f', function() return 1 end)",
    ]);
    let target = Server::builder().binary(&old.path).start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--name", "fn"],
    );
    let status = ferry.wait(Duration::from_secs(30));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("FUNCTION LOAD"), "{out}");
    assert!(!out.contains("retrying"), "{out}");

    target.cmd(&["FLUSHALL"]);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--name", "fn", "--skip-unsupported"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("1 key(s), function(s)"),
        "{}",
        ferry.output()
    );
    assert_eq!(target.cmd(&["GET", "kept"]).as_str(), "value");
}

/// Module aux data: Redis without the module refuses the file, and nothing can write aux
/// data into a target, so ferry fails unless told to skip what the target cannot hold.
#[test]
fn module_aux_data_fails_unless_skipped() {
    let mut r = Rdb::new(b"REDIS0009");
    let mut id = 0u64;
    for _ in 0..9 {
        id = (id << 6) | 5; // "FFFFFFFFF"
    }
    id = (id << 10) | 2;
    // Module aux: id, 'when' (opcode uint, AFTER_RDB), one uint, EOF.
    r.u8(0xf7).u8(0x81).raw(&id.to_be_bytes()).len(2).len(2);
    r.len(2).len(7).len(0);
    r.db(0).string("kept", "value");
    let (_dir, path) = r.write();

    let target = Server::start();
    let mut ferry = Ferry::sync(&rdb_spec(&path), &target.url(), &["--name", "aux"]);
    let status = ferry.wait(Duration::from_secs(30));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("aux data of module FFFFFFFFF"), "{out}");

    target.cmd(&["FLUSHALL"]);
    let mut ferry = Ferry::sync(
        &rdb_spec(&path),
        &target.url(),
        &["--name", "aux", "--skip-unsupported"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("1 key(s), function(s)"),
        "{}",
        ferry.output()
    );
    assert_eq!(target.cmd(&["GET", "kept"]).as_str(), "value");
}

/// A key the file holds twice (Redis refuses such a file) is named as the file's, with its
/// db, not blamed on the target.
#[test]
fn a_key_twice_in_the_file_is_named_as_the_files() {
    let mut r = Rdb::new(b"REDIS0009");
    r.db(2)
        .string("dup", "one")
        .string("other", "x")
        .string("dup", "two");
    let (_dir, path) = r.write();
    let target = Server::start();
    let mut ferry = Ferry::sync(&rdb_spec(&path), &target.url(), &["--name", "dup"]);
    let status = ferry.wait(Duration::from_secs(30));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("holds key \"dup\" (db 2) twice"), "{out}");
    assert!(!out.contains("already exists on the target"), "{out}");
}

/// A chained migration: the source holds another job's checkpoint keys. They are never
/// copied, neither as small values nor on the big-key path (chunks of commands).
#[test]
fn checkpoint_keys_on_the_source_are_never_copied() {
    let source = Server::start();
    source.cmd(&["SET", "kept", "value"]);
    source.cmd(&["SET", "ferry:checkpoint:upstream:0", "stream abc 1 0"]);
    let mut args: Vec<String> = vec!["RPUSH".into(), "ferry:checkpoint:upstream:big".into()];
    args.extend((0..200).map(|i| format!("e{i}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    source.cmd(&args);
    let big = "x".repeat(64 * 1024);
    source.cmd(&["SET", "ferry:checkpoint:upstream:bigstring", &big]);
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--mode",
            "full",
            "--name",
            "chained",
            "--big-key-elements",
            "50",
            "--big-key-threshold",
            "1024",
        ],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_eq!(target.cmd(&["GET", "kept"]).as_str(), "value");
    for k in [
        "ferry:checkpoint:upstream:0",
        "ferry:checkpoint:upstream:big",
        "ferry:checkpoint:upstream:bigstring",
    ] {
        assert_eq!(target.cmd(&["EXISTS", k]).as_int(), 0, "{k} was copied");
    }
}

/// A file with a module value, into a cluster target: fails at once naming the key, or is
/// skipped and counted with `--skip-unsupported`, as into a standalone one.
#[test]
fn into_a_cluster_a_module_value_fails_at_once_or_is_skipped() {
    let cluster = Cluster::start(3, 0);
    module_value_fails_then_is_skipped(&cluster.seed_url(), || {
        for m in cluster.masters() {
            m.cmd(&["FLUSHALL"]);
        }
    });
    assert_eq!(cluster.cmd_routed_str(&["GET", "kept"]).as_str(), "value");
    assert_eq!(
        cluster.cmd_routed_str(&["GET", "{modval}other"]).as_str(),
        "x"
    );
    assert_eq!(cluster.cmd_routed_str(&["EXISTS", "modval"]).as_int(), 0);
}

/// A key the file holds twice, into a cluster target: named as the file's.
#[test]
fn into_a_cluster_a_key_twice_in_the_file_is_named_as_the_files() {
    let mut r = Rdb::new(b"REDIS0009");
    r.db(0)
        .string("dup", "one")
        .string("other", "x")
        .string("dup", "two");
    let (_dir, path) = r.write();
    let cluster = Cluster::start(3, 0);
    let mut ferry = Ferry::sync(&rdb_spec(&path), &cluster.seed_url(), &["--name", "dup"]);
    let status = ferry.wait(Duration::from_secs(30));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("holds key \"dup\" (db 0) twice"), "{out}");
    assert!(!out.contains("already exists on the target"), "{out}");
}
