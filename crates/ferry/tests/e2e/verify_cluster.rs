//! `ferry verify` with a Redis Cluster on either side: a cluster source is scanned master by
//! master, every key is read on the master owning its slot, and the extras scan covers every
//! target master. Copies are made with `ferry sync --mode full`.

use std::process::{Command, Output};

use ferry_testkit::{populate_db0, Cluster, Server};
use serde_json::Value;

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry")
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy(source: &str, target: &str) {
    let out = ferry(&[
        "sync", "--mode", "full", "--source", source, "--target", target,
    ]);
    assert_eq!(out.status.code(), Some(0), "sync: {}", show(&out));
}

/// `ferry sync --mode full` with the job's scope flags.
fn copy_scoped(source: &str, target: &str, scope: &[&str]) {
    let mut args = vec![
        "sync", "--mode", "full", "--source", source, "--target", target,
    ];
    args.extend_from_slice(scope);
    let out = ferry(&args);
    assert_eq!(out.status.code(), Some(0), "sync: {}", show(&out));
}

/// The listed differences as (key, source db, target db, first problem's kind), sorted.
fn listed(r: &Value) -> Vec<(String, u64, u64, String)> {
    let mut found: Vec<(String, u64, u64, String)> = r["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap_or_default().to_string(),
                d["db"].as_u64().unwrap_or(99),
                d["target_db"].as_u64().unwrap_or(99),
                d["problems"][0]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

fn verify(source: &str, target: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["verify", "--source", source, "--target", target, "--json"];
    args.extend_from_slice(extra);
    let out = ferry(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}\n{}", show(&out)));
    (out, report)
}

/// Strings, a hash, a list, a set, a sorted set and TTLs, spread over every master.
fn populate_cluster(cluster: &Cluster) {
    for i in 0..120 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        cluster.cmd_routed_str(&["SET", &k, &v]);
    }
    for i in 0..20 {
        let n = i.to_string();
        cluster.cmd_routed_str(&["HSET", &format!("hash:{i}"), "f", &n, "g", "x"]);
        cluster.cmd_routed_str(&["RPUSH", &format!("list:{i}"), "a", &n, "c"]);
        cluster.cmd_routed_str(&["SADD", &format!("set:{i}"), "x", &n]);
        cluster.cmd_routed_str(&["ZADD", &format!("zset:{i}"), "1", "a", "2", &n]);
        cluster.cmd_routed_str(&["SET", &format!("ttl:{i}"), &n, "EX", "7200"]);
    }
}

fn source_cluster_keys(cluster: &Cluster) -> u64 {
    cluster.keys_per_master().iter().sum::<i64>() as u64
}

#[test]
fn standalone_into_cluster_equal_and_other_dbs_not_compared() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 1);
    copy(&source.url(), &cluster.seed_url());
    // A key in db 1 cannot be on a cluster: reported as not compared, not as a difference.
    let mut c = source.client();
    c.cmd_str(&["SELECT", "1"]);
    c.cmd_str(&["SET", "db1:key", "v"]);

    let (out, r) = verify(&source.url(), &cluster.seed_url(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["target_cluster"], true, "{r}");
    assert_eq!(r["source_cluster"], false, "{r}");
    assert_eq!(r["source_keys_not_compared"], 1, "{r}");
    let db0 = source.cmd(&["DBSIZE"]).as_int() as u64;
    assert_eq!(r["keys_compared"], db0, "{r}");
    assert_eq!(r["target_keys_scanned"], db0, "{r}");

    // A cluster has only db 0.
    let (out, r) = verify(&format!("{}/1", source.url()), &cluster.seed_url(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("only database 0"),
        "{r}"
    );
}

#[test]
fn cluster_into_standalone_equal() {
    let cluster = Cluster::start(3, 0);
    let target = Server::start();
    populate_cluster(&cluster);
    copy(&cluster.seed_url(), &target.url());

    let (out, r) = verify(&cluster.seed_url(), &target.url(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["source_cluster"], true, "{r}");
    let keys = source_cluster_keys(&cluster);
    assert_eq!(r["keys_compared"], keys, "{r}");
    assert_eq!(r["target_keys_scanned"], keys, "{r}");

    // Keys mode, and a difference on the standalone target found from a cluster source.
    target.cmd(&["DEL", "hash:3"]);
    let (out, r) = verify(&cluster.seed_url(), &target.url(), &["--rounds", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["missing_on_target"], 1, "{r}");
    assert_eq!(r["differences"][0]["key"], "hash:3", "{r}");
}

#[test]
fn cluster_into_smaller_cluster_equal_then_each_difference_on_its_key() {
    let source = Cluster::start(3, 0);
    let target = Cluster::start(2, 0);
    populate_cluster(&source);
    copy(&source.seed_url(), &target.seed_url());

    let (out, r) = verify(&source.seed_url(), &target.seed_url(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["source_cluster"], true, "{r}");
    assert_eq!(r["target_cluster"], true, "{r}");
    let keys = source_cluster_keys(&source);
    assert_eq!(r["keys_compared"], keys, "{r}");
    assert_eq!(r["target_keys_scanned"], keys, "{r}");

    // Keys on different target masters: a changed value, a missing key, an extra key.
    target.cmd_routed_str(&["HSET", "hash:7", "f", "changed"]);
    target.cmd_routed_str(&["DEL", "key:42"]);
    target.cmd_routed_str(&["SET", "only:on:target", "x"]);
    let (out, r) = verify(
        &source.seed_url(),
        &target.seed_url(),
        &["--rounds", "2", "--recheck-delay", "100ms"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["equal"], false, "{r}");
    assert_eq!(r["value_differences"], 1, "{r}");
    assert_eq!(r["missing_on_target"], 1, "{r}");
    assert_eq!(r["extra_on_target"], 1, "{r}");
    assert_eq!(r["type_differences"], 0, "{r}");
    assert_eq!(r["ttl_differences"], 0, "{r}");
    let mut found: Vec<(String, String)> = r["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap_or_default().to_string(),
                d["problems"][0]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("hash:7".to_string(), "value".to_string()),
            ("key:42".to_string(), "missing_on_target".to_string()),
            ("only:on:target".to_string(), "extra_on_target".to_string()),
        ],
        "{r}"
    );
    // Source is also read by slot: the same comparison in keys mode sees no value change.
    let (out, r) = verify(
        &source.seed_url(),
        &target.seed_url(),
        &["--mode", "keys", "--rounds", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["value_differences"], 0, "{r}");
    assert_eq!(r["missing_on_target"], 1, "{r}");
    assert_eq!(r["extra_on_target"], 1, "{r}");
}

#[test]
fn standalone_into_cluster_with_a_filter_and_db_1_mapped_to_0() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    let mut c = source.client();
    for i in 0..41 {
        c.cmd_str(&["SET", &format!("user:a:{i}"), &i.to_string()]);
    }
    for i in 0..10 {
        c.cmd_str(&["SET", &format!("other:{i}"), "o"]);
    }
    c.cmd_str(&["SELECT", "1"]);
    for i in 0..21 {
        c.cmd_str(&["HSET", &format!("user:b:{i}"), "f", &i.to_string()]);
    }
    c.cmd_str(&["SELECT", "2"]);
    for i in 0..5 {
        c.cmd_str(&["SET", &format!("user:c:{i}"), "c"]);
    }
    let scope = [
        "--include-key-prefix",
        "user:",
        "--db-map",
        "1:0",
        "--exclude-dbs",
        "2",
    ];
    copy_scoped(&source.url(), &cluster.seed_url(), &scope);

    let (out, r) = verify(&source.url(), &cluster.seed_url(), &scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["keys_compared"], 62, "{r}");
    assert_eq!(r["target_keys_scanned"], 62, "{r}");
    assert_eq!(r["source_keys_filtered"], 15, "{r}");
    assert_eq!(r["source_keys_not_compared"], 0, "{r}");
    // Only source db 1, which the map sends to the cluster's db 0; the copies of db 0
    // there are not extra.
    let (out, r) = verify(&format!("{}/1", source.url()), &cluster.seed_url(), &scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["keys_compared"], 21, "{r}");
    assert_eq!(r["target_keys_scanned"], 62, "{r}");
    let (out, r) = verify(&format!("{}/2", source.url()), &cluster.seed_url(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("only database 0"),
        "{r}"
    );

    // Without the scope: other:* is missing, db 1 cannot be compared with a cluster and
    // its copies in db 0 look extra.
    let (out, r) = verify(&source.url(), &cluster.seed_url(), &["--rounds", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["missing_on_target"], 10, "{r}");
    assert_eq!(r["extra_on_target"], 21, "{r}");
    assert_eq!(r["source_keys_not_compared"], 26, "{r}");

    // On the cluster: a key the filter leaves out is not the job's; one it copies that no
    // source database mapped to db 0 holds is extra; a deleted copy of db 1 is missing.
    cluster.cmd_routed_str(&["SET", "other:new", "x"]);
    cluster.cmd_routed_str(&["SET", "other:3", "changed"]);
    cluster.cmd_routed_str(&["SET", "user:new", "x"]);
    cluster.cmd_routed_str(&["DEL", "user:b:3"]);
    let mut args = vec!["--rounds", "2", "--recheck-delay", "100ms"];
    args.extend_from_slice(&scope);
    let (out, r) = verify(&source.url(), &cluster.seed_url(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["target_keys_filtered"], 2, "{r}");
    assert_eq!(
        listed(&r),
        vec![
            (
                "user:b:3".to_string(),
                1,
                0,
                "missing_on_target".to_string()
            ),
            ("user:new".to_string(), 0, 0, "extra_on_target".to_string()),
        ],
        "{r}"
    );
}

#[test]
fn cluster_into_standalone_with_a_filter_and_db_0_mapped_to_2() {
    let cluster = Cluster::start(3, 0);
    let target = Server::start();
    for i in 0..60 {
        cluster.cmd_routed_str(&["SET", &format!("keep:{i}"), &i.to_string()]);
    }
    for i in 0..20 {
        cluster.cmd_routed_str(&["RPUSH", &format!("skip:{i}"), "a"]);
    }
    let scope = ["--include-key-prefix", "keep:", "--db-map", "0:2"];
    copy_scoped(&cluster.seed_url(), &target.url(), &scope);

    let (out, r) = verify(&cluster.seed_url(), &target.url(), &scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["equal"], true, "{r}");
    assert_eq!(r["source_cluster"], true, "{r}");
    assert_eq!(r["keys_compared"], 60, "{r}");
    assert_eq!(r["target_keys_scanned"], 60, "{r}");
    assert_eq!(r["source_keys_filtered"], 20, "{r}");
    // Db 0 holds only ferry's checkpoints: nothing of the job's, nothing to count.
    assert_eq!(r["target_keys_filtered"], 0, "{r}");
    // The target URL may name the database the cluster's db 0 is mapped to, no other.
    let (out, r) = verify(&cluster.seed_url(), &format!("{}/2", target.url()), &scope);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(r["keys_compared"], 60, "{r}");
    let (out, r) = verify(&cluster.seed_url(), &format!("{}/1", target.url()), &scope);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("only database 0"),
        "{r}"
    );

    // A stray key in db 0 (which the job no longer writes) is not the job's; an extra and a
    // changed copy in db 2 are reported against the cluster's db 0.
    target.cmd(&["SET", "keep:stray", "x"]);
    let mut db2 = target.client();
    db2.cmd_str(&["SELECT", "2"]);
    db2.cmd_str(&["SET", "keep:extra", "x"]);
    db2.cmd_str(&["SET", "keep:5", "changed"]);
    db2.cmd_str(&["SET", "skip:new", "x"]);
    let mut args = vec!["--rounds", "2", "--recheck-delay", "100ms"];
    args.extend_from_slice(&scope);
    let (out, r) = verify(&cluster.seed_url(), &target.url(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(r["target_keys_filtered"], 2, "{r}");
    assert_eq!(
        listed(&r),
        vec![
            ("keep:5".to_string(), 0, 2, "value".to_string()),
            (
                "keep:extra".to_string(),
                0,
                2,
                "extra_on_target".to_string()
            ),
        ],
        "{r}"
    );
}
