//! Valkey 9 hashes with field TTLs (its own RDB type 22 in a `VALKEY080` snapshot), copied
//! by `ferry sync` from a real Valkey 9:
//! - into Valkey 9 as they are (`RESTORE` of the same payload): equal `DEBUG DIGEST-VALUE`
//!   per key and `HPEXPIRETIME` per field;
//! - into Redis 7.4+ as `HSET` + `HPEXPIREAT`: the same fields, values and absolute times;
//! - into a server without field TTLs (Redis 7.0, Valkey 8.1): refused, naming the key;
//! - fields whose TTL has passed are never planted, and a key left with none is no key;
//! - the commands Valkey 9 replicates for field TTLs arrive on a Valkey 9 target, and one
//!   that a target lacks stops the job naming the command.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::versions::{available_servers, server_binary, versions_required, ServerBinary};
use ferry_testkit::{Reply, Server};

const LONG: Duration = Duration::from_secs(120);
/// 2100-01-01, in ms.
const FAR: u64 = ferry_testkit::FIELD_TTL_FAR;

fn binary(label: &str) -> Option<ServerBinary> {
    let b = server_binary(label);
    if b.is_none() {
        assert!(!versions_required(), "{label} is required but missing");
        eprintln!("{label} not available; skipped");
    }
    b
}

fn system() -> ServerBinary {
    available_servers()
        .into_iter()
        .find(|b| b.label.starts_with("system-"))
        .expect("redis-server on PATH")
}

fn start(b: &ServerBinary) -> Server {
    let mut s = Server::builder().binary(&b.path);
    if b.version.0 >= 7 || b.valkey {
        s = s.arg("enable-debug-command", "yes");
    }
    s.start()
}

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

fn run(s: &Server, cmds: &[Vec<Vec<u8>>]) {
    let mut c = s.client();
    for r in c.pipeline(cmds).expect("pipeline") {
        assert!(!r.is_error(), "{r:?}");
    }
}

/// The testkit's field-TTL hashes, and a string. Returns the hash keys.
fn fill(s: &Server) -> Vec<&'static str> {
    let keys = ferry_testkit::populate_field_ttl_hashes(s);
    run(s, &[cmd(&["SET", "s", "v"])]);
    keys
}

/// Field -> (value, `HPEXPIRETIME`), -1 for none.
fn fields(s: &Server, key: &str) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let all = s.cmd(&["HGETALL", key]).as_array();
    let mut out = BTreeMap::new();
    for kv in all.chunks_exact(2) {
        let f = kv[0].as_bytes();
        let t = s.cmd_bytes(&[b"HPEXPIRETIME", key.as_bytes(), b"FIELDS", b"1", &f]);
        out.insert(f, (kv[1].as_bytes(), t.as_array()[0].as_int()));
    }
    out
}

/// Fields and values as a client sees them (for a target without `HPEXPIRETIME`).
fn plain_fields(s: &Server, key: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    s.cmd(&["HGETALL", key])
        .as_array()
        .chunks_exact(2)
        .map(|kv| (kv[0].as_bytes(), kv[1].as_bytes()))
        .collect()
}

fn sync_full(source: &Server, target: &Server, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--mode", "full"];
    args.extend_from_slice(extra);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    let ok = ferry.wait(LONG).success();
    (ok, ferry.output())
}

#[test]
fn valkey9_field_ttls_into_valkey9_are_exact() {
    let Some(v9) = binary("valkey-9") else { return };
    let source = start(&v9);
    let target = start(&v9);
    let keys = fill(&source);
    let (ok, out) = sync_full(&source, &target, &[]);
    assert!(ok, "{out}");
    for k in &keys {
        assert_eq!(
            source.cmd(&["DEBUG", "DIGEST-VALUE", k]),
            target.cmd(&["DEBUG", "DIGEST-VALUE", k]),
            "{k}\n{out}"
        );
        assert_eq!(fields(&source, k), fields(&target, k), "{k}");
    }
    let t = fields(&target, "ttl:small");
    assert_eq!(t[&b"a"[..]].1, FAR as i64);
    assert_eq!(
        target.cmd(&["TTL", "ttl:long"]),
        source.cmd(&["TTL", "ttl:long"])
    );
    ferry_testkit::assert_same_data(&source, &target);
}

#[test]
fn valkey9_field_ttls_into_redis82_keep_their_times() {
    let (Some(v9), Some(r82)) = (binary("valkey-9"), binary("redis-8.2")) else {
        return;
    };
    let source = start(&v9);
    let target = start(&r82);
    let keys = fill(&source);
    let (ok, out) = sync_full(&source, &target, &[]);
    assert!(ok, "{out}");
    for k in &keys {
        let want = fields(&source, k);
        assert!(!want.is_empty(), "{k}");
        assert_eq!(fields(&target, k), want, "{k}\n{out}");
    }
    assert_eq!(target.cmd(&["GET", "s"]).as_str(), "v");
    // Nothing else arrived (ferry's own keys aside).
    let data_keys = |s: &Server| {
        let mut k: Vec<String> = s
            .cmd(&["KEYS", "*"])
            .as_array()
            .iter()
            .map(|k| k.as_str())
            .filter(|k| !k.starts_with("ferry:"))
            .collect();
        k.sort();
        k
    };
    assert_eq!(data_keys(&source), data_keys(&target));
    let pttl = target.cmd(&["PTTL", "ttl:long"]).as_int();
    assert!((98_000_000..=99_000_000).contains(&pttl), "PTTL {pttl}");
}

#[test]
fn valkey9_field_ttls_into_targets_without_them_fail_naming_the_key() {
    let Some(v9) = binary("valkey-9") else { return };
    let mut targets = vec![system()];
    targets.extend(binary("valkey-8.1"));
    for to in targets {
        let source = start(&v9);
        let target = start(&to);
        run(
            &source,
            &[
                cmd(&["HSET", "plain", "a", "1"]),
                cmd(&["HSET", "hf", "a", "1", "b", "2"]),
                cmd(&["HPEXPIRE", "hf", "600000", "FIELDS", "1", "a"]),
            ],
        );
        let (ok, out) = sync_full(&source, &target, &[]);
        assert!(!ok, "{}: must refuse field TTLs\n{out}", to.label);
        assert!(
            out.contains("key \"hf\"")
                && out.contains("hash fields with TTLs")
                && !out.contains("cannot decode"),
            "{}: {out}",
            to.label
        );
        // With --skip-unsupported the key is left out and the rest copied.
        let target = start(&to);
        let (ok, out) = sync_full(&source, &target, &["--skip-unsupported"]);
        assert!(ok, "{}: {out}", to.label);
        assert_eq!(target.cmd(&["EXISTS", "hf"]), Reply::Int(0), "{}", to.label);
        assert_eq!(target.cmd(&["HGET", "plain", "a"]).as_str(), "1");
    }
}

/// Fields whose TTL passed before the copy are not written: with active expiry off, the
/// source still holds (and snapshots) them.
#[test]
fn passed_field_ttls_are_not_planted() {
    let Some(v9) = binary("valkey-9") else { return };
    for to in [v9.clone(), system()] {
        let source = start(&v9);
        let target = start(&to);
        source.cmd(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
        target.cmd(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
        run(
            &source,
            &[
                cmd(&["HSET", "some", "gone", "1", "kept", "2", "later", "3"]),
                cmd(&["HPEXPIRE", "some", "50", "FIELDS", "1", "gone"]),
                cmd(&["HSET", "all", "a", "1", "b", "2"]),
                cmd(&["HPEXPIRE", "all", "50", "FIELDS", "2", "a", "b"]),
            ],
        );
        if to.valkey {
            source.cmd(&["HPEXPIRE", "some", "600000", "FIELDS", "1", "later"]);
        }
        std::thread::sleep(Duration::from_millis(200));
        // The source still counts them.
        assert_eq!(source.cmd(&["HLEN", "some"]), Reply::Int(3));
        assert_eq!(source.cmd(&["EXISTS", "all"]), Reply::Int(1));
        let (ok, out) = sync_full(&source, &target, &[]);
        assert!(ok, "{}: {out}", to.label);
        assert_eq!(
            target.cmd(&["HLEN", "some"]),
            Reply::Int(2),
            "{}\n{out}",
            to.label
        );
        assert_eq!(
            plain_fields(&target, "some")
                .into_keys()
                .collect::<Vec<_>>(),
            vec![b"kept".to_vec(), b"later".to_vec()],
            "{}",
            to.label
        );
        assert_eq!(
            target.cmd(&["EXISTS", "all"]),
            Reply::Int(0),
            "{}\n{out}",
            to.label
        );
        if to.valkey {
            assert_eq!(fields(&target, "some"), fields(&source, "some"));
        }
    }
}

/// Writes during the incremental phase: what Valkey 9 replicates for field TTLs
/// (`HSETEX`, `HEXPIRE`, `HPERSIST`, `HGETEX`, field expiry) lands on a Valkey 9 target
/// (equal digests) and on Redis 8.2 (equal fields, values and times).
#[test]
fn replicated_field_ttl_commands_reach_valkey9_and_redis82() {
    let Some(v9) = binary("valkey-9") else { return };
    let mut targets = vec![v9.clone()];
    targets.extend(binary("redis-8.2"));
    for to in targets {
        replicated_field_ttl_commands(&v9, &to);
    }
}

fn replicated_field_ttl_commands(v9: &ServerBinary, to: &ServerBinary) {
    let source = start(v9);
    let target = start(to);
    source.cmd(&["HSET", "h0", "a", "1"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--name", "hfe"]);
    ferry.wait_for_output("full resync", LONG);
    crate::common::wait_until("the snapshot on the target", LONG, || {
        target.cmd(&["EXISTS", "h0"]) == Reply::Int(1)
    });
    let at = (FAR + 5).to_string();
    run(
        &source,
        &[
            cmd(&[
                "HSETEX", "h1", "PX", "600000", "FIELDS", "2", "a", "1", "b", "2",
            ]),
            cmd(&["HSET", "h1", "c", "3"]),
            cmd(&["HEXPIRE", "h1", "9000", "FIELDS", "1", "c"]),
            cmd(&["HPERSIST", "h1", "FIELDS", "1", "b"]),
            cmd(&["HSET", "h2", "x", "1", "y", "2", "z", "3"]),
            cmd(&["HPEXPIREAT", "h2", &at, "FIELDS", "2", "x", "y"]),
            cmd(&["HGETEX", "h2", "PERSIST", "FIELDS", "1", "y"]),
            cmd(&["HGETEX", "h0", "EX", "7000", "FIELDS", "1", "a"]),
            cmd(&["HSET", "h3", "gone", "1", "kept", "2"]),
            cmd(&["HPEXPIRE", "h3", "1", "FIELDS", "1", "gone"]),
            cmd(&["SET", "done", "1"]),
        ],
    );
    crate::common::wait_until("the increment on the target", LONG, || {
        target.cmd(&["EXISTS", "done"]) == Reply::Int(1)
    });
    // The expired field is gone on the source before the comparison.
    crate::common::wait_until("the field expiry on the source", LONG, || {
        source.cmd(&["HLEN", "h3"]) == Reply::Int(1)
    });
    crate::common::wait_until("the field expiry on the target", LONG, || {
        target.cmd(&["HLEN", "h3"]) == Reply::Int(1)
    });
    for k in ["h0", "h1", "h2", "h3"] {
        assert_eq!(
            fields(&source, k),
            fields(&target, k),
            "{}: {k}\n{}",
            to.label,
            ferry.output()
        );
        if to.valkey {
            assert_eq!(
                source.cmd(&["DEBUG", "DIGEST-VALUE", k]),
                target.cmd(&["DEBUG", "DIGEST-VALUE", k]),
                "{k}"
            );
        }
    }
    assert_eq!(fields(&target, "h2")[&b"x"[..]].1, FAR as i64 + 5);
    drop(ferry);
}

/// A replicated field TTL command into a target that has none stops the job, naming it.
#[test]
fn replicated_field_ttl_command_into_redis70_is_refused_by_name() {
    let Some(v9) = binary("valkey-9") else { return };
    let source = start(&v9);
    let target = start(&system());
    source.cmd(&["HSET", "h", "a", "1"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--name", "hfe-old"]);
    ferry.wait_for_output("full resync", LONG);
    crate::common::wait_until("the snapshot on the target", LONG, || {
        target.cmd(&["EXISTS", "h"]) == Reply::Int(1)
    });
    source.cmd(&["HEXPIRE", "h", "600", "FIELDS", "1", "a"]);
    let status = ferry.wait(LONG);
    assert!(!status.success());
    let out = ferry.output();
    assert!(
        out.contains("replicated HPEXPIREAT") || out.contains("replicated HEXPIRE"),
        "{out}"
    );
}

/// Big hashes with field TTLs go in chunks of commands (`--big-key-elements`), with their
/// times; one whose every field's TTL has passed becomes no key.
#[test]
fn big_hashes_with_field_ttls_go_in_chunks() {
    let Some(v9) = binary("valkey-9") else { return };
    let mut targets = vec![v9.clone()];
    targets.extend(binary("redis-8.2"));
    for to in targets {
        let source = start(&v9);
        let target = start(&to);
        source.cmd(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
        fill(&source);
        let mut gone = cmd(&["HSET", "gone:big"]);
        let mut expire = cmd(&["HPEXPIRE", "gone:big", "50", "FIELDS", "300"]);
        for i in 0..300 {
            gone.push(format!("g-{i}").into_bytes());
            gone.push(b"v".to_vec());
            expire.push(format!("g-{i}").into_bytes());
        }
        run(&source, &[gone, expire]);
        std::thread::sleep(Duration::from_millis(200));
        let (ok, out) = sync_full(&source, &target, &["--big-key-elements", "100"]);
        assert!(ok, "{}: {out}", to.label);
        for k in ["ttl:many", "plain:many", "ttl:small"] {
            assert_eq!(fields(&target, k), fields(&source, k), "{}: {k}", to.label);
        }
        assert_eq!(
            target.cmd(&["EXISTS", "gone:big"]),
            Reply::Int(0),
            "{}",
            to.label
        );
        let tmp = target.cmd(&["KEYS", "*ferry-rewrite*"]).as_array();
        assert!(tmp.is_empty(), "{}: left {tmp:?}", to.label);
    }
}
