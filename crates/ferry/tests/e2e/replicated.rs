//! Replicated commands a target would refuse from a plain client: translated exactly, or the
//! job stops naming the command — never a silent divergence, never an endless retry.

use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::versions::{available_servers, versions_required, ServerBinary};
use ferry_testkit::{Reply, Server};

const LONG: Duration = Duration::from_secs(90);

fn sync(source: &Server, target: &Server, name: &str, extra: &[&str]) -> Ferry {
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    Ferry::sync(&source.url(), &target.url(), &args)
}

/// The binary of the first server matching `pick`, or `None` (a panic when CI requires
/// every version).
fn binary(what: &str, pick: impl Fn(&ServerBinary) -> bool) -> Option<ServerBinary> {
    let found = available_servers().into_iter().find(|b| pick(b));
    if found.is_none() {
        assert!(
            !versions_required(),
            "{what} missing (FERRY_REQUIRE_VERSIONS=1)"
        );
        eprintln!("needs {what}; skipped");
    }
    found
}

fn redis_older_than(v: (u32, u32, u32)) -> impl Fn(&ServerBinary) -> bool {
    move |b| !b.valkey && b.version < v
}

/// Follows `source` into `target` until ferry's checkpoint is at the source's offset, then
/// compares the two servers' digests.
fn wait_equal(source: &Server, target: &Server, name: &str) {
    crate::common::wait_caught_up(source, target, name, LONG);
    crate::common::assert_exact_copy_with_checkpoint(source, target, name);
}

/// `XADD … MAXLEN ~ n LIMIT l` is propagated as `MAXLEN = <len> LIMIT l`, which a master
/// refuses from a client ("LIMIT cannot be used without the special ~ option"): the exact
/// trim without `LIMIT` is the same write (also `XTRIM`).
#[test]
fn approximate_trims_with_limit_are_applied_exactly() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["CONFIG", "SET", "stream-node-max-entries", "10"]);
    for i in 0..100 {
        source.cmd(&["XADD", "s", "*", "f", &i.to_string()]);
        source.cmd(&["XADD", "t", "*", "f", &i.to_string()]);
    }
    let name = "xlimit";
    let mut ferry = sync(&source, &target, name, &[]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    source.cmd(&[
        "XADD", "s", "MAXLEN", "~", "55", "LIMIT", "30", "*", "x", "y",
    ]);
    source.cmd(&["XTRIM", "t", "MAXLEN", "~", "0", "LIMIT", "20"]);
    source.cmd(&["XTRIM", "t", "MINID", "~", "0-1", "LIMIT", "20"]);
    assert!(source.cmd(&["XLEN", "s"]).as_int() < 101, "nothing trimmed");
    source.cmd(&["SET", "after", "1"]);
    wait_equal(&source, &target, name);
    assert!(ferry.is_running(), "{}", ferry.output());
    ferry.signal("INT");
}

/// `SWAPDB 0 1` moves ferry's checkpoint into db 1 with the data; ferry moves it back in
/// the same transaction, so db 1 holds only the source's data and a restart resumes.
#[test]
fn swapdb_keeps_the_checkpoint_in_its_database() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "zero", "0"]);
    let mut c = source.client();
    c.cmd_str(&["SELECT", "1"]);
    c.cmd_str(&["SET", "one", "1"]);
    let name = "swap";
    let mut ferry = sync(&source, &target, name, &[]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    source.cmd(&["SWAPDB", "0", "1"]);
    source.cmd(&["SET", "after-swap", "1"]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    let mut t = target.client();
    t.cmd_str(&["SELECT", "1"]);
    let in_one = t.cmd_str(&["KEYS", "*"]).as_array();
    assert_eq!(in_one, vec![Reply::Bulk(Some(b"zero".to_vec()))], "db 1");
    t.cmd_str(&["SELECT", "0"]);
    let mut in_zero: Vec<String> = t
        .cmd_str(&["KEYS", "*"])
        .as_array()
        .into_iter()
        .map(|k| k.as_str())
        .filter(|k| !k.starts_with("ferry:checkpoint:"))
        .collect();
    in_zero.sort();
    assert_eq!(in_zero, vec!["after-swap", "one"], "db 0");
    assert!(ferry.is_running(), "{}", ferry.output());
    ferry.signal("INT");
    // A rerun resumes from the checkpoint instead of copying again.
    source.cmd(&["SWAPDB", "1", "0"]);
    source.cmd(&["SET", "later", "1"]);
    let mut again = sync(&source, &target, name, &[]);
    again.wait_for_output("resum", LONG);
    wait_equal(&source, &target, name);
    let out = again.output();
    assert!(!out.contains("full resync"), "{out}");
    again.signal("INT");
}

/// The final summary counts what every attempt applied, not only the last one.
#[test]
fn the_summary_counts_every_attempt() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "seed", "1"]);
    let proxy = ferry_testkit::Proxy::start(&source.addr());
    let name = "summary";
    let mut ferry = Ferry::sync(&proxy.url(), &target.url(), &["--name", name]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    for i in 0..10 {
        source.cmd(&["INCR", &format!("n{i}")]);
    }
    crate::common::wait_caught_up(&source, &target, name, LONG);
    // The link breaks; the next attempt resumes and applies one more command.
    proxy.reset_all();
    ferry.wait_for_output("retrying", LONG);
    source.cmd(&["INCR", "last"]);
    crate::common::wait_until("the write after the break", LONG, || {
        target.cmd(&["EXISTS", "last"]) == Reply::Int(1)
    });
    ferry.signal("INT");
    let out = ferry.output();
    let line = out
        .lines()
        .find(|l| l.contains("keys and"))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let commands: u64 = line
        .split("keys and ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary {line:?}"));
    let keys: u64 = line
        .split("stopped: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary {line:?}"));
    assert!(commands >= 11, "{line}");
    assert_eq!(keys, 1, "{line}");
}

/// `ZADD … GT|LT`, `ZDIFFSTORE`, `GEOSEARCHSTORE … BYRADIUS`, `XGROUP CREATECONSUMER`
/// (6.2, the last also what 7.0 replicates for a new consumer of `XREADGROUP`) into a
/// 5.0/6.0 target are translated into scripts or older commands that do exactly what the
/// source did.
#[test]
fn commands_newer_than_the_target_are_translated() {
    let Some(old) = binary("Redis older than 6.2", redis_older_than((6, 2, 0))) else {
        return;
    };
    let source = Server::start();
    let target = Server::builder().binary(&old.path).start();
    source.cmd(&["ZADD", "z", "1", "a", "5", "b", "3", "c"]);
    source.cmd(&["ZADD", "y", "1", "a", "2", "x"]);
    source.cmd(&["GEOADD", "g", "13.361389", "38.115556", "Palermo"]);
    source.cmd(&["GEOADD", "g", "15.087269", "37.502669", "Catania"]);
    source.cmd(&["XADD", "s", "1-1", "f", "v"]);
    source.cmd(&["XGROUP", "CREATE", "s", "grp", "0"]);
    let name = "zsets";
    let mut ferry = sync(&source, &target, name, &[]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    source.cmd(&["ZADD", "z", "GT", "2", "a", "2", "b", "7", "new"]);
    source.cmd(&["ZADD", "z", "LT", "CH", "0", "c", "9", "a"]);
    source.cmd(&["ZADD", "z", "XX", "GT", "10", "b", "1", "absent"]);
    source.cmd(&["ZADD", "z", "GT", "INCR", "4", "c"]);
    source.cmd(&["ZADD", "z", "LT", "INCR", "-1", "c"]);
    source.cmd(&["ZDIFFSTORE", "d", "2", "z", "y"]);
    source.cmd(&["ZDIFFSTORE", "y", "1", "nothing"]);
    source.cmd(&[
        "GEOSEARCHSTORE",
        "near",
        "g",
        "FROMLONLAT",
        "15",
        "37",
        "BYRADIUS",
        "200",
        "km",
        "ASC",
        "COUNT",
        "1",
    ]);
    source.cmd(&[
        "GEOSEARCHSTORE",
        "dist",
        "g",
        "FROMMEMBER",
        "Palermo",
        "BYRADIUS",
        "300",
        "km",
        "STOREDIST",
    ]);
    source.cmd(&["XGROUP", "CREATECONSUMER", "s", "grp", "alice"]);
    // 7.0 replicates the new consumer of XREADGROUP as XGROUP CREATECONSUMER.
    source.cmd(&["XREADGROUP", "GROUP", "grp", "bob", "STREAMS", "s", ">"]);
    source.cmd(&["SET", "after", "1"]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    for key in ["z", "d", "near", "dist"] {
        assert_eq!(
            source.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            target.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            "{key}"
        );
    }
    assert_eq!(target.cmd(&["EXISTS", "y"]), Reply::Int(0));
    let consumers = |s: &Server| -> Vec<String> {
        s.cmd(&["XINFO", "CONSUMERS", "s", "grp"])
            .as_array()
            .into_iter()
            .map(|c| c.as_array()[1].as_str())
            .collect()
    };
    assert_eq!(consumers(&target), consumers(&source));
    assert_eq!(consumers(&source), vec!["alice", "bob"]);
    assert_eq!(
        target.cmd(&["XPENDING", "s", "grp"]).as_array()[0],
        source.cmd(&["XPENDING", "s", "grp"]).as_array()[0]
    );
    assert_eq!(target.cmd(&["GET", "after"]).as_str(), "1");
    assert!(ferry.is_running(), "{}", ferry.output());
    ferry.signal("INT");
}

/// Commands a 5.0 target lacks and ferry does not translate stop the job, naming them.
#[test]
fn commands_a_5_0_target_lacks_stop_the_job() {
    let Some(old) = binary("Redis 5.0", redis_older_than((6, 0, 0))) else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[(
        &[
            "GEOSEARCHSTORE",
            "dst",
            "g",
            "FROMLONLAT",
            "15",
            "37",
            "BYBOX",
            "400",
            "400",
            "km",
        ],
        "GEOSEARCHSTORE",
    )];
    for (i, (cmd, named)) in cases.iter().enumerate() {
        let source = Server::start();
        let target = Server::builder().binary(&old.path).start();
        source.cmd(&["GEOADD", "g", "13.361389", "38.115556", "Palermo"]);
        source.cmd(&["XADD", "s", "1-1", "f", "v"]);
        source.cmd(&["XGROUP", "CREATE", "s", "grp", "0"]);
        let name = format!("lacks{i}");
        let mut ferry = sync(&source, &target, &name, &[]);
        crate::common::wait_caught_up(&source, &target, &name, LONG);
        let r = source.cmd(cmd);
        assert!(!r.is_error(), "{cmd:?}: {r:?}");
        let status = ferry.wait(LONG);
        assert!(!status.success());
        let out = ferry.output();
        assert!(out.contains(named), "{named}: {out}");
        assert!(out.contains(&target.addr()), "{out}");
        assert!(!out.contains("retrying"), "{out}");
    }
}

/// A replicated `RESTORE` (a `MIGRATE` into the source, or a client's `RESTORE`) whose
/// payload is newer than the target reads is rewritten, as snapshot keys are.
#[test]
fn replicated_restore_newer_than_the_target_is_rewritten() {
    let Some(old) = binary("Redis older than 7.0", redis_older_than((7, 0, 0))) else {
        return;
    };
    let source = Server::start();
    let target = Server::builder().binary(&old.path).start();
    source.cmd(&["SET", "seed", "1"]);
    let name = "restore";
    let mut ferry = sync(&source, &target, name, &[]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    // A small hash is a listpack (RDB 10+) in 7.0; a small string is not.
    source.cmd(&["HSET", "h", "a", "1", "b", "2"]);
    source.cmd(&["RPUSH", "l", "x", "y", "z"]);
    source.cmd(&["SET", "s", "plain"]);
    let mut c = source.client();
    for (key, ttl) in [("h", "0"), ("l", "100000"), ("s", "0")] {
        let dump = c.cmd(&[b"DUMP", key.as_bytes()]).unwrap().as_bytes();
        let copy = format!("{key}-copy");
        let r = c
            .cmd(&[b"RESTORE", copy.as_bytes(), ttl.as_bytes(), &dump])
            .unwrap();
        assert!(!r.is_error(), "{r:?}");
    }
    // REPLACE replaces a key the target holds.
    source.cmd(&["HSET", "h", "c", "3"]);
    let dump = c.cmd(&[b"DUMP", b"h"]).unwrap().as_bytes();
    let r = c
        .cmd(&[b"RESTORE", b"h-copy", b"0", &dump, b"REPLACE"])
        .unwrap();
    assert!(!r.is_error(), "{r:?}");
    crate::common::wait_caught_up(&source, &target, name, LONG);
    assert!(ferry.is_running(), "{}", ferry.output());
    assert_eq!(target.cmd(&["HLEN", "h-copy"]), Reply::Int(3));
    assert_eq!(
        target.cmd(&["HGETALL", "h-copy"]),
        source.cmd(&["HGETALL", "h-copy"])
    );
    assert_eq!(
        target.cmd(&["LRANGE", "l-copy", "0", "-1"]),
        source.cmd(&["LRANGE", "l-copy", "0", "-1"])
    );
    let ttl = target.cmd(&["PTTL", "l-copy"]).as_int();
    assert!((1..=100_000).contains(&ttl), "PTTL {ttl}");
    assert_eq!(target.cmd(&["GET", "s-copy"]).as_str(), "plain");
    ferry.signal("INT");
}

/// `XCLAIM`/`XAUTOCLAIM` of entries deleted from the stream: 7.0 drops them from the
/// pending list and propagates an `XCLAIM` a 6.2 target would apply as a claim; ferry
/// makes the target drop them too.
#[test]
fn claims_of_deleted_entries_match_on_an_older_target() {
    let Some(old) = binary("Redis 6.2", |b| {
        !b.valkey && b.version >= (6, 2, 0) && b.version < (7, 0, 0)
    }) else {
        return;
    };
    let source = Server::start();
    let target = Server::builder().binary(&old.path).start();
    source.cmd(&["XADD", "s", "1-1", "f", "1"]);
    source.cmd(&["XADD", "s", "2-1", "f", "2"]);
    source.cmd(&["XADD", "s", "3-1", "f", "3"]);
    source.cmd(&["XGROUP", "CREATE", "s", "g", "0"]);
    let name = "claims";
    let mut ferry = sync(&source, &target, name, &[]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    source.cmd(&["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">"]);
    source.cmd(&["XDEL", "s", "1-1", "2-1"]);
    source.cmd(&["XCLAIM", "s", "g", "bob", "0", "1-1"]);
    source.cmd(&["XAUTOCLAIM", "s", "g", "bob", "0", "0"]);
    source.cmd(&["SET", "after", "1"]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    let pending = |s: &Server| s.cmd(&["XPENDING", "s", "g", "-", "+", "10"]);
    let ids = |r: Reply| -> Vec<String> {
        r.as_array()
            .into_iter()
            .map(|e| e.as_array()[0].as_str())
            .collect()
    };
    assert_eq!(ids(pending(&source)), vec!["3-1".to_string()]);
    assert_eq!(ids(pending(&target)), ids(pending(&source)));
    assert!(ferry.is_running(), "{}", ferry.output());
    ferry.signal("INT");
}
