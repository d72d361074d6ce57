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
