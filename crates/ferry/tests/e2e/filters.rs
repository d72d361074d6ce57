//! Filters and database mapping, end to end: each rule drops exactly what it should, in
//! the snapshot and in the command stream alike.

use std::time::Duration;

use crate::common::{wait_caught_up, Ferry};
use ferry_testkit::Server;

const LONG: Duration = Duration::from_secs(60);

fn set_keys(s: &Server, db: u32, keys: &[&str]) {
    let mut c = s.client();
    c.cmd_str(&["SELECT", &db.to_string()]);
    for k in keys {
        let r = c.cmd_str(&["SET", k, "v"]);
        assert!(!r.is_error(), "SET {k}: {r:?}");
    }
}

/// The keys of one database, sorted, without ferry's checkpoint.
fn keys(s: &Server, db: u32) -> Vec<String> {
    let mut c = s.client();
    c.cmd_str(&["SELECT", &db.to_string()]);
    let mut k: Vec<String> = c
        .cmd_str(&["KEYS", "*"])
        .as_array()
        .iter()
        .map(|r| r.as_str())
        .filter(|k| !k.starts_with("ferry:checkpoint:"))
        .collect();
    k.sort();
    k
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Starts ferry with `flags` and waits until it has applied everything written so far.
fn start(source: &Server, target: &Server, flags: &[&str]) -> Ferry {
    let mut args = vec!["--name", "f"];
    args.extend_from_slice(flags);
    let ferry = Ferry::sync(&source.url(), &target.url(), &args);
    wait_caught_up(source, target, "f", LONG);
    ferry
}

/// Runs one key-filter case: `candidates` written before ferry starts (snapshot) and, with
/// a `2` appended to each, after it (stream); `kept` are the candidates that must arrive.
fn key_case(flags: &[&str], candidates: &[&str], kept: &[&str]) {
    let source = Server::start();
    let target = Server::start();
    set_keys(&source, 0, candidates);
    let ferry = start(&source, &target, flags);
    assert_eq!(
        keys(&target, 0),
        sorted(kept),
        "snapshot\n{}",
        ferry.output()
    );

    let stream: Vec<String> = candidates.iter().map(|k| format!("{k}2")).collect();
    let stream: Vec<&str> = stream.iter().map(String::as_str).collect();
    set_keys(&source, 0, &stream);
    wait_caught_up(&source, &target, "f", LONG);
    let mut expect: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
    expect.extend(kept.iter().map(|k| format!("{k}2")));
    expect.sort();
    assert_eq!(keys(&target, 0), expect, "stream\n{}", ferry.output());
}

#[test]
fn key_prefix_include_and_exclude() {
    key_case(
        &[
            "--include-key-prefix",
            "user:",
            "--include-key-prefix",
            "cart:",
            "--exclude-key-prefix",
            "user:tmp:",
        ],
        &["user:1", "user:tmp:1", "cart:1", "order:1", "xuser:1"],
        &["user:1", "cart:1"],
    );
}

#[test]
fn key_glob_include_and_exclude() {
    key_case(
        &[
            "--include-keys",
            "user:[0-9]*",
            "--include-keys",
            "s?ss:*",
            "--exclude-keys",
            "*:secret*",
        ],
        &[
            "user:1",
            "user:x",
            "user:2:secret",
            "sess:a",
            "sxss:b",
            "session:c",
            "other",
        ],
        &["user:1", "sess:a", "sxss:b"],
    );
}

#[test]
fn key_regex_include_and_exclude() {
    key_case(
        &[
            "--include-key-regex",
            r"^(a|b):\d+",
            "--exclude-key-regex",
            "^b:9",
        ],
        &["a:1", "b:22", "b:90", "c:1", "a:x", "xa:1"],
        &["a:1", "b:22"],
    );
}

#[test]
fn databases_include_and_exclude() {
    let source = Server::start();
    let target = Server::start();
    for db in 0..4 {
        set_keys(&source, db, &["k1"]);
    }
    let ferry = start(
        &source,
        &target,
        &["--include-dbs", "0,1,2", "--exclude-dbs", "1"],
    );
    let expect = |extra: &[&str]| {
        let mut all = vec!["k1"];
        all.extend_from_slice(extra);
        for db in 0..4 {
            let want = if db == 0 || db == 2 {
                sorted(&all)
            } else {
                Vec::new()
            };
            assert_eq!(keys(&target, db), want, "db {db}\n{}", ferry.output());
        }
    };
    expect(&[]);
    for db in 0..4 {
        set_keys(&source, db, &["k2"]);
    }
    // Excluded databases must not hold back the checkpoint either.
    set_keys(&source, 3, &["k3"]);
    wait_caught_up(&source, &target, "f", LONG);
    expect(&["k2"]);
}

#[test]
fn excluded_commands_are_not_applied() {
    let source = Server::start();
    let target = Server::start();
    set_keys(&source, 0, &["a", "b"]);
    set_keys(&source, 1, &["c"]);
    let mut ferry = start(
        &source,
        &target,
        &["--exclude-commands", "FLUSHALL,flushdb,@pubsub"],
    );
    source.cmd(&["FLUSHALL"]);
    source.cmd(&["PUBLISH", "ch", "m"]);
    set_keys(&source, 0, &["d"]);
    let mut c = source.client();
    c.cmd_str(&["SELECT", "1"]);
    c.cmd_str(&["FLUSHDB"]);
    c.cmd_str(&["SET", "e", "v"]);
    wait_caught_up(&source, &target, "f", LONG);
    assert_eq!(
        keys(&target, 0),
        sorted(&["a", "b", "d"]),
        "{}",
        ferry.output()
    );
    assert_eq!(keys(&target, 1), sorted(&["c", "e"]));
    ferry.signal("INT");
    let log = ferry.stderr();
    assert!(
        log.contains("filtered_commands=3"),
        "the end-of-job log counts what was dropped\n{log}"
    );
}

#[test]
fn multi_key_commands_are_split_per_key() {
    let source = Server::start();
    let target = Server::start();
    set_keys(&source, 0, &["user:a", "user:b", "order:x"]);
    let ferry = start(&source, &target, &["--include-key-prefix", "user:"]);
    assert_eq!(keys(&target, 0), sorted(&["user:a", "user:b"]));
    // The target's own key with a name the filter leaves out must survive a source DEL
    // that names it beside a copied key.
    target.cmd(&["SET", "order:x", "the target's own"]);
    source.cmd(&["DEL", "user:a", "order:x"]);
    source.cmd(&["MSET", "user:m", "1", "order:m", "2"]);
    source.cmd(&["UNLINK", "order:x", "order:y"]);
    wait_caught_up(&source, &target, "f", LONG);
    assert_eq!(
        keys(&target, 0),
        sorted(&["user:b", "user:m", "order:x"]),
        "{}",
        ferry.output()
    );
    assert_eq!(target.cmd(&["GET", "order:x"]).as_str(), "the target's own");
}

#[test]
fn db_map_moves_a_database() {
    let source = Server::start();
    let target = Server::start();
    set_keys(&source, 0, &["zero"]);
    set_keys(&source, 1, &["one"]);
    let ferry = start(&source, &target, &["--db-map", "1:3"]);
    assert_eq!(keys(&target, 0), sorted(&["zero"]), "{}", ferry.output());
    assert_eq!(keys(&target, 1), Vec::<String>::new());
    assert_eq!(keys(&target, 3), sorted(&["one"]));
    set_keys(&source, 1, &["one2"]);
    set_keys(&source, 0, &["zero2"]);
    wait_caught_up(&source, &target, "f", LONG);
    assert_eq!(keys(&target, 0), sorted(&["zero", "zero2"]));
    assert_eq!(keys(&target, 1), Vec::<String>::new());
    assert_eq!(keys(&target, 3), sorted(&["one", "one2"]));
    // The checkpoint records the source's database, and stays in target db 0.
    let mut c = target.client();
    c.cmd_str(&["SELECT", "0"]);
    let ckpt = c.cmd_str(&["GET", "ferry:checkpoint:f:0"]).as_str();
    assert!(ckpt.ends_with(" 0"), "{ckpt}");
}

#[test]
fn bad_filters_are_refused_with_a_clear_message() {
    for (flags, needle) in [
        (&["--include-keys", "a[b"][..], "bad key glob"),
        (&["--exclude-key-regex", "("][..], "bad key regex"),
        (&["--db-map", "1-3"][..], "db_map"),
        (
            &["--exclude-commands", "@nothing"][..],
            "unknown command group",
        ),
    ] {
        let mut ferry = Ferry::sync("127.0.0.1:1", "127.0.0.1:2", flags);
        let status = ferry.wait(Duration::from_secs(20));
        assert!(!status.success());
        assert!(
            ferry.stderr().contains(needle),
            "{needle}\n{}",
            ferry.output()
        );
    }
}

/// `redis://host:port/3` is database 3 only; a target URL's `/0` is where it goes.
#[test]
fn a_database_in_the_url_copies_that_database_only() {
    let source = Server::start();
    let target = Server::start();
    set_keys(&source, 0, &["zero"]);
    set_keys(&source, 3, &["three"]);
    let mut ferry = Ferry::sync(
        &format!("{}/3", source.url()),
        &format!("{}/0", target.url()),
        &["--mode", "full"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_eq!(keys(&target, 0), vec!["three".to_string()]);
    assert!(keys(&target, 3).is_empty());
    // A target database without the source's is refused, naming the fix.
    let mut bad = Ferry::sync(&source.url(), &format!("{}/2", target.url()), &[]);
    assert!(!bad.wait(LONG).success());
    assert!(
        bad.output().contains("name the source's too"),
        "{}",
        bad.output()
    );
}
