//! `ferry sync` between every pair of server versions available: the system `redis-server`
//! and whatever `scripts/fetch-redis-versions.sh` fetched into `.redis-versions/`.
//! Old → new goes by `RESTORE`; new → old by rewriting values into plain commands.

use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::versions::{
    assert_same_values, available_servers, versions_required, ServerBinary,
};
use ferry_testkit::{assert_same_data, populate_every_type, strip_ansi, Server};

const LONG: Duration = Duration::from_secs(120);

/// The binaries to test with; panics when other versions are required (CI) but missing.
fn servers() -> Vec<ServerBinary> {
    let all = available_servers();
    let others = all
        .iter()
        .filter(|b| !b.label.starts_with("system-"))
        .count();
    eprintln!(
        "server versions available: {:?}",
        all.iter().map(|b| b.label.as_str()).collect::<Vec<_>>()
    );
    if others == 0 {
        let msg = "no other server versions found: run scripts/fetch-redis-versions.sh";
        assert!(!versions_required(), "{msg} (FERRY_REQUIRE_VERSIONS=1)");
        eprintln!("{msg}; cross-version pairs skipped");
    }
    all
}

fn start(b: &ServerBinary) -> Server {
    Server::builder().binary(&b.path).start()
}

/// Syncs `from` into `to` with `extra` flags; returns ferry's output on failure.
fn sync_pair(
    from: &ServerBinary,
    to: &ServerBinary,
    fill: impl Fn(&Server),
    extra: &[&str],
) -> Result<String, String> {
    let source = start(from);
    let target = start(to);
    fill(&source);
    let mut args = vec!["--mode", "full"];
    args.extend_from_slice(extra);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    let status = ferry.wait(LONG);
    if !status.success() {
        return Err(ferry.output());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Digests of equal values differ across some versions (sorted-set scores).
        if from.version == to.version && from.valkey == to.valkey {
            assert_same_data(&source, &target)
        } else {
            assert_same_values(&source, &target)
        }
    }))
    .map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{msg}\n{}", ferry.output())
    })
    .map(|()| ferry.output())
}

/// Runs `check` for every ordered pair, then fails listing every pair that failed.
fn every_pair(
    name: &str,
    mut check: impl FnMut(&ServerBinary, &ServerBinary) -> Result<(), String>,
) {
    let all = servers();
    let mut failed = Vec::new();
    let mut passed = 0;
    for from in &all {
        for to in &all {
            if from.label == to.label {
                continue;
            }
            match check(from, to) {
                Ok(()) => passed += 1,
                Err(e) => {
                    eprintln!("{name}: {} -> {} FAILED:\n{e}", from.label, to.label);
                    failed.push(format!("{} -> {}", from.label, to.label));
                }
            }
        }
    }
    eprintln!("{name}: {passed} pairs passed, {} failed", failed.len());
    assert!(failed.is_empty(), "{name}: failed pairs: {failed:?}");
}

#[test]
fn cross_version_full_sync_every_pair() {
    every_pair("every type", |from, to| {
        sync_pair(from, to, |s| populate_every_type(s, 1), &[]).map(drop)
    });
}

/// Big values: `n`-element list, set, zset and hash, an `n / 4`-entry stream with a group
/// and pending entries, and an 8 MB incompressible string.
fn populate_big(server: &Server, n: usize) {
    let mut c = server.client();
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let arg = |s: &str| s.as_bytes().to_vec();
    for start in (0..n).step_by(1000) {
        let r = start..(start + 1000).min(n);
        let mut l = vec![arg("RPUSH"), arg("big:list")];
        l.extend(r.clone().map(|j| format!("element-{j}").into_bytes()));
        let mut s = vec![arg("SADD"), arg("big:set")];
        s.extend(r.clone().map(|j| format!("member-{j}").into_bytes()));
        let mut z = vec![arg("ZADD"), arg("big:zset")];
        let mut h = vec![arg("HSET"), arg("big:hash")];
        for j in r.clone() {
            z.push(format!("{}", j as f64 / 3.0).into_bytes());
            z.push(format!("m{j}").into_bytes());
            h.push(format!("field-{j}").into_bytes());
            h.push(format!("value-{j}").into_bytes());
        }
        cmds.extend([l, s, z, h]);
        if cmds.len() >= 200 {
            run(&mut c, &mut cmds);
        }
    }
    for j in 0..n / 4 {
        cmds.push(vec![
            arg("XADD"),
            arg("big:stream"),
            format!("{}-1", j + 1).into_bytes(),
            arg("f"),
            format!("v{j}").into_bytes(),
        ]);
        if cmds.len() >= 1000 {
            run(&mut c, &mut cmds);
        }
    }
    cmds.push(vec![
        arg("XGROUP"),
        arg("CREATE"),
        arg("big:stream"),
        arg("g"),
        arg("0"),
    ]);
    cmds.push(vec![
        arg("XREADGROUP"),
        arg("GROUP"),
        arg("g"),
        arg("alice"),
        arg("COUNT"),
        arg("50"),
        arg("STREAMS"),
        arg("big:stream"),
        arg(">"),
    ]);
    cmds.push(vec![arg("PEXPIRE"), arg("big:hash"), arg("3600000")]);
    let mut seed = 11u64;
    let s: Vec<u8> = (0..8 << 20)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect();
    cmds.push(vec![arg("SET"), arg("big:string"), s]);
    run(&mut c, &mut cmds);
}

fn run(c: &mut ferry_testkit::Client, cmds: &mut Vec<Vec<Vec<u8>>>) {
    for r in c.pipeline(cmds).expect("pipeline") {
        assert!(!r.is_error(), "{r:?}");
    }
    cmds.clear();
}

const BIG_FLAGS: &[&str] = &[
    "--big-key-elements",
    "5000",
    "--big-key-threshold",
    "1000000",
];

#[test]
fn big_keys_are_written_in_chunks_same_version() {
    let system = available_servers()
        .into_iter()
        .find(|b| b.label.starts_with("system-"))
        .expect("redis-server on PATH");
    let out = sync_pair(&system, &system, |s| populate_big(s, 200_000), BIG_FLAGS)
        .unwrap_or_else(|e| panic!("{e}"));
    // All six values went by commands, not RESTORE.
    assert!(strip_ansi(&out).contains("rewritten=6"), "{out}");
}

#[test]
fn big_keys_new_to_old() {
    let all = servers();
    let newest = all.iter().filter(|b| !b.valkey).max_by_key(|b| b.version);
    let oldest = all.iter().min_by_key(|b| b.version);
    match (newest, oldest) {
        (Some(n), Some(o)) if n.label != o.label => {
            let out = sync_pair(n, o, |s| populate_big(s, 200_000), BIG_FLAGS)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", n.label, o.label));
            assert!(strip_ansi(&out).contains("rewritten=6"), "{out}");
        }
        _ => eprintln!("big_keys_new_to_old: needs two versions; skipped"),
    }
}

/// Replicated commands newer than the target: what is easy is translated (7.0 replicates
/// `SET … EX` as `SET … PXAT`, `LMOVE RIGHT LEFT` is `RPOPLPUSH`), the rest stops the job
/// with an error naming the command.
#[test]
fn replicated_commands_are_adapted_or_refused_for_older_targets() {
    let all = servers();
    let system = all.iter().find(|b| b.label.starts_with("system-"));
    let old = all.iter().find(|b| !b.valkey && b.version < (6, 2, 0));
    let (Some(system), Some(old)) = (system, old) else {
        eprintln!("needs the system redis-server and one older than 6.2; skipped");
        return;
    };
    let source = start(system);
    let target = start(old);
    source.cmd(&["RPUSH", "l", "a", "b"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &[]);
    ferry.wait_for_output("full resync", LONG);
    crate::common::wait_until("the snapshot on the target", LONG, || {
        target.cmd(&["LLEN", "l"]) == ferry_testkit::Reply::Int(2)
    });
    source.cmd(&["SET", "k", "v", "EX", "100"]);
    source.cmd(&["LMOVE", "l", "l2", "RIGHT", "LEFT"]);
    crate::common::wait_until("the increment on the target", LONG, || {
        target.cmd(&["EXISTS", "l2"]) == ferry_testkit::Reply::Int(1)
    });
    assert_same_values(&source, &target);
    let ttl = target.cmd(&["TTL", "k"]).as_int();
    assert!((90..=100).contains(&ttl), "TTL {ttl}");
    // FUNCTION is 7.0: not translatable.
    source.cmd(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=xlib\nredis.register_function('xf', function() return 1 end)",
    ]);
    let status = ferry.wait(LONG);
    assert!(!status.success());
    let out = ferry.output();
    assert!(out.contains("replicated FUNCTION"), "{out}");
}

/// Hash field TTLs cannot be held before Redis 7.4: an error naming the key, or with
/// `--skip-unsupported` the key is left out and the rest copied.
#[test]
fn hash_field_ttls_into_an_old_target_fail_or_skip() {
    let all = servers();
    let new = all.iter().find(|b| !b.valkey && b.version >= (7, 4, 0));
    let old = all.iter().find(|b| !b.valkey && b.version < (7, 4, 0));
    let (Some(new), Some(old)) = (new, old) else {
        eprintln!("needs Redis >= 7.4 and an older one; skipped");
        return;
    };
    let fill = |s: &Server| {
        s.cmd(&["HSET", "hf", "a", "1", "b", "2"]);
        s.cmd(&["HPEXPIRE", "hf", "600000", "FIELDS", "1", "a"]);
        s.cmd(&["SET", "plain", "v"]);
    };
    let err = sync_pair(new, old, fill, &[]).expect_err("must refuse hash field TTLs");
    assert!(err.contains("key \"hf\"") && err.contains("7.4"), "{err}");

    let source = start(new);
    let target = start(old);
    fill(&source);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--skip-unsupported"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_eq!(target.cmd(&["EXISTS", "hf"]), ferry_testkit::Reply::Int(0));
    assert_eq!(target.cmd(&["GET", "plain"]).as_str(), "v");
}

/// A rewritten key that exists on the target is refused as `RESTORE` refuses it, and the
/// existing value is left untouched; `--overwrite` replaces it.
#[test]
fn rewritten_keys_respect_overwrite() {
    let all = servers();
    let system = all.iter().find(|b| b.label.starts_with("system-"));
    let old = all.iter().find(|b| !b.valkey && b.version < (7, 0, 0));
    let (Some(system), Some(old)) = (system, old) else {
        eprintln!("needs the system redis-server and an older one; skipped");
        return;
    };
    let source = start(system);
    let target = start(old);
    source.cmd(&["HSET", "h", "f", "new"]);
    target.cmd(&["HSET", "h", "old", "1"]);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--mode",
            "full",
            "--checkpoint",
            "off",
            "--allow-nonempty-target",
        ],
    );
    assert!(!ferry.wait(LONG).success());
    assert!(
        ferry.output().contains("already exists"),
        "{}",
        ferry.output()
    );
    assert_eq!(target.cmd(&["HGETALL", "h"]).as_array().len(), 2);
    assert_eq!(target.cmd(&["HGET", "h", "old"]).as_str(), "1");
    assert_eq!(
        target.cmd(&["DBSIZE"]).as_int(),
        1,
        "temporary key left behind"
    );
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--overwrite"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_same_values(&source, &target);
}
