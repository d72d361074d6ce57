//! `ferry sync` from a standalone source into a Redis Cluster target: slot routing, command
//! splitting, broadcasts, and the target changing under the writer (resharding, failover),
//! with non-idempotent writes on the source and an exact comparison at the end.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{wait_until, Churn, Ferry};
use ferry_testkit::{assert_same_data_cluster, populate_db0, Cluster, Server};

const LONG: Duration = Duration::from_secs(90);
const NAME: &str = "cluster-test";

/// Writes on the source's db 0 until stopped: counters, lists, appends, streams, a source
/// transaction spanning slots, and a new key per round (spread over every slot).
fn db0_churn(source: &Server) -> Churn {
    let mut c = source.client();
    Churn::with(move |stop| {
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = n.to_string();
                let key = format!("churn:key:{i}");
                let cmds: Vec<Vec<Vec<u8>>> = [
                    vec!["INCR", "churn:counter"],
                    vec!["LPUSH", "churn:list", i.as_str()],
                    vec!["APPEND", "churn:append", "x"],
                    vec!["XADD", "churn:stream", "*", "n", i.as_str()],
                    vec!["HINCRBYFLOAT", "churn:hash", "f", "1.5"],
                    vec!["MULTI"],
                    vec!["INCRBY", "churn:tx", "2"],
                    vec!["RPUSH", "churn:txlist", i.as_str()],
                    vec!["INCR", "{churn:tx}:same-slot"],
                    vec!["EXEC"],
                    vec!["SET", key.as_str(), i.as_str(), "PX", "600000"],
                ]
                .iter()
                .map(|c| c.iter().map(|a| a.as_bytes().to_vec()).collect())
                .collect();
                c.pipeline(&cmds).expect("churn pipeline");
                n += 1;
                thread::sleep(Duration::from_millis(2));
            }
            n
        })
    })
}

fn sync(source: &Server, cluster: &Cluster, extra: &[&str]) -> Ferry {
    let mut args = vec!["--name", NAME];
    args.extend_from_slice(extra);
    Ferry::sync(&source.url(), &cluster.seed_url(), &args)
}

/// Waits until the job's global checkpoint on the cluster names the source's current
/// offset: every write so far is applied on every master.
fn wait_caught_up(source: &Server, cluster: &Cluster, timeout: Duration) {
    let key = format!("ferry:checkpoint:{NAME}:0");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let offset = source.info("replication")["master_repl_offset"].clone();
        let r = cluster.cmd_routed(&[b"GET", key.as_bytes()]);
        if !r.is_nil() && !r.is_error() {
            last = r.as_str();
            let f: Vec<&str> = last.split(' ').collect();
            if f.len() == 4 && f[0] == "stream" && f[2] == offset {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up after {timeout:?}: source offset {offset}, checkpoint {last:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn get(cluster: &Cluster, key: &str) -> String {
    let r = cluster.cmd_routed_str(&["GET", key]);
    if r.is_nil() {
        String::new()
    } else {
        r.as_str()
    }
}

/// Counters equal, lists identical, and everything else key by key.
fn assert_exact(source: &Server, cluster: &Cluster) {
    assert_eq!(
        source.cmd(&["GET", "churn:counter"]).as_str(),
        get(cluster, "churn:counter")
    );
    assert_eq!(
        source.cmd(&["LRANGE", "churn:list", "0", "-1"]),
        cluster.cmd_routed_str(&["LRANGE", "churn:list", "0", "-1"])
    );
    assert_same_data_cluster(source, cluster);
}

/// The slot of the churn's hottest keys and its master's node index.
fn hot_slot(cluster: &Cluster) -> (u16, usize) {
    let slot = cluster.keyslot(b"churn:counter");
    let r = cluster.cmd_routed_str(&["CLUSTER", "SLOTS"]).as_array();
    for range in r {
        let range = range.as_array();
        if range[0].as_int() <= slot as i64 && slot as i64 <= range[1].as_int() {
            let port = range[2].as_array()[1].as_int() as u16;
            return (slot, cluster.index_of_port(port).expect("owner"));
        }
    }
    panic!("slot {slot} unassigned");
}

#[test]
fn standalone_to_cluster_full() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 5);
    let mut ferry = sync(&source, &cluster, &["--mode", "full"]);
    let status = ferry.wait(LONG);
    assert!(status.success(), "{}", ferry.output());
    assert_same_data_cluster(&source, &cluster);
    let per_master = cluster.keys_per_master();
    assert!(
        per_master.iter().all(|&n| n > 50),
        "keys not spread over the masters: {per_master:?}"
    );
}

#[test]
fn big_values_written_as_commands_land_in_their_slot() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 1);
    let mut ferry = sync(
        &source,
        &cluster,
        &[
            "--mode",
            "full",
            "--big-key-elements",
            "100",
            "--big-key-threshold",
            "1000",
        ],
    );
    let status = ferry.wait(LONG);
    assert!(status.success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("plain commands"),
        "{}",
        ferry.output()
    );
    assert_same_data_cluster(&source, &cluster);
}

#[test]
fn standalone_to_cluster_full_and_incremental_with_churn_then_resume() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 5);
    source.cmd(&["DEBUG", "POPULATE", "20000", "bulk", "32"]);
    let churn = db0_churn(&source);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    thread::sleep(Duration::from_millis(1500));
    let rounds = churn.stop();
    assert!(rounds > 10, "the writer ran only {rounds} rounds");
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("spanning slots"),
        "{}",
        ferry.output()
    );

    // Resume from the checkpoints: no new snapshot, nothing doubled.
    let churn = db0_churn(&source);
    thread::sleep(Duration::from_millis(300));
    let mut ferry = sync(&source, &cluster, &[]);
    wait_until("resumed", LONG, || ferry.output().contains("resuming"));
    thread::sleep(Duration::from_millis(1000));
    churn.stop();
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert!(
        !ferry.output().contains("snapshot applied"),
        "a new snapshot was taken\n{}",
        ferry.output()
    );
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

/// The global checkpoint set back to the snapshot's offset: the resumed stream replays
/// everything since, and each slot's own checkpoint must keep its commands from being
/// applied twice.
#[test]
fn resume_from_an_older_global_checkpoint_applies_nothing_twice() {
    let source = Server::builder().arg("repl-backlog-size", "64mb").start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 1);
    let churn = db0_churn(&source);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    thread::sleep(Duration::from_millis(1000));
    churn.stop();
    wait_caught_up(&source, &cluster, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    let out = ferry.output();
    let line = out
        .lines()
        .find(|l| l.contains("full resync"))
        .expect("full resync logged");
    let snapshot_offset: u64 = line
        .split("offset=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {line:?}"));
    let key = format!("ferry:checkpoint:{NAME}:0");
    let saved = cluster.cmd_routed_str(&["GET", &key]).as_str();
    let f: Vec<&str> = saved.split(' ').collect();
    assert!(
        f[2].parse::<u64>().expect("offset") > snapshot_offset + 1000,
        "{saved}"
    );
    let older = format!("stream {} {snapshot_offset} 0", f[1]);
    cluster.cmd_routed_str(&["SET", &key, &older]);

    let mut ferry = sync(&source, &cluster, &[]);
    wait_until("resumed", LONG, || ferry.output().contains("resuming"));
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert!(
        !ferry.output().contains("snapshot applied"),
        "{}",
        ferry.output()
    );
}

#[test]
fn target_resharding_mid_sync() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 5);
    let churn = db0_churn(&source);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    // Move the hottest slot and its neighbours while writes hit them.
    let (slot, from) = hot_slot(&cluster);
    let to = cluster
        .master_indices()
        .into_iter()
        .find(|&m| m != from)
        .expect("another master");
    let first = slot.saturating_sub(5);
    for s in first..first + 10 {
        // Only slots `from` owns (the neighbours may belong to another master).
        if cluster.keyslot(b"churn:counter") == s || cluster.slot_owner(s) == from {
            cluster.migrate_slot(s, from, to, Duration::from_millis(5));
        }
    }
    thread::sleep(Duration::from_millis(500));
    churn.stop();
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert_eq!(cluster.slot_owner(slot), to);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("slot map refreshed after MOVED"),
        "{}",
        ferry.output()
    );
}

#[test]
fn target_master_fails_over_mid_stream() {
    let source = Server::start();
    let cluster = Cluster::start(3, 1);
    populate_db0(&source, 2);
    let churn = db0_churn(&source);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    thread::sleep(Duration::from_millis(500));
    let (_, owner) = hot_slot(&cluster);
    cluster.failover(owner);
    thread::sleep(Duration::from_millis(1000));
    churn.stop();
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("slot map refreshed"),
        "{}",
        ferry.output()
    );
}

#[test]
fn target_master_killed_mid_stream() {
    let source = Server::start();
    let mut cluster = Cluster::start(3, 1);
    populate_db0(&source, 2);
    let churn = db0_churn(&source);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    thread::sleep(Duration::from_millis(500));
    let (_, owner) = hot_slot(&cluster);
    cluster.kill_master(owner);
    thread::sleep(Duration::from_millis(500));
    churn.stop();
    wait_caught_up(&source, &cluster, LONG);
    assert_exact(&source, &cluster);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("lost a target master"),
        "{}",
        ferry.output()
    );
}

#[test]
fn cross_slot_commands_are_split_and_flushall_reaches_every_master() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    let mut ferry = sync(&source, &cluster, &[]);
    ferry.wait_for_output("snapshot applied", LONG);
    let mut mset = vec!["MSET"];
    let names: Vec<String> = (0..30).map(|i| format!("m:{i}")).collect();
    for n in &names {
        mset.push(n);
        mset.push("v");
    }
    source.cmd(&mset);
    source.cmd(&["DEL", "m:0", "m:1", "m:2", "m:3", "m:4", "m:5"]);
    source.cmd(&["UNLINK", "m:6", "m:7", "m:8"]);
    source.cmd(&["MSETNX", "{t}a", "1", "{t}b", "2"]);
    wait_caught_up(&source, &cluster, LONG);
    assert_same_data_cluster(&source, &cluster);
    assert_eq!(get(&cluster, "m:5"), "");
    assert_eq!(get(&cluster, "m:9"), "v");

    source.cmd(&["FLUSHALL"]);
    source.cmd(&["SET", "after:flush", "1"]);
    wait_caught_up(&source, &cluster, LONG);
    assert_same_data_cluster(&source, &cluster);
    for m in cluster.masters() {
        let keys = m.cmd(&["KEYS", "*"]).as_array();
        assert!(
            keys.iter()
                .all(|k| k.as_str() == "after:flush" || k.as_str().starts_with("ferry:checkpoint:")),
            "{} kept keys after FLUSHALL: {keys:?}",
            m.addr()
        );
    }
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn cross_slot_msetnx_is_a_clear_error() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    let mut ferry = sync(
        &source,
        &cluster,
        &[
            "--retry-connection-limit",
            "0s",
            "--retry-other-limit",
            "0s",
        ],
    );
    ferry.wait_for_output("snapshot applied", LONG);
    source.cmd(&["MSETNX", "a", "1", "b", "2"]);
    let status = ferry.wait(LONG);
    assert!(!status.success(), "{}", ferry.output());
    assert!(ferry.output().contains("MSETNX"), "{}", ferry.output());
}

#[test]
fn data_outside_db0_without_mapping_is_a_clear_error() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    source.cmd(&["SET", "in:db0", "1"]);
    source.cmd(&["SELECT", "3"]);
    source.cmd(&["SET", "in:db3", "1"]);
    let mut ferry = sync(
        &source,
        &cluster,
        &[
            "--mode",
            "full",
            "--retry-connection-limit",
            "0s",
            "--retry-other-limit",
            "0s",
        ],
    );
    let status = ferry.wait(LONG);
    assert!(!status.success(), "{}", ferry.output());
    assert!(
        ferry
            .output()
            .contains("source data in db 3: a cluster target has only db 0"),
        "{}",
        ferry.output()
    );
}

/// A function library copied into a cluster target, then copied again by a new snapshot
/// of the same job: `FLUSHALL` keeps libraries, so the second `FUNCTION LOAD` must replace
/// the job's own (the standalone writer did; the cluster one failed, "already exists").
#[test]
fn a_new_snapshot_replaces_its_own_function_libraries_on_every_master() {
    const LIB: &str =
        "#!lua name=ferrylib\nredis.register_function('ferry_one', function() return 1 end)";
    let source = Server::start();
    source.cmd(&["FUNCTION", "LOAD", LIB]);
    source.cmd(&["SET", "k", "v"]);
    let cluster = Cluster::start(3, 0);
    for round in 0..2 {
        let mut ferry = sync(&source, &cluster, &["--mode", "full"]);
        let status = ferry.wait(LONG);
        assert!(status.success(), "round {round}:\n{}", ferry.output());
    }
    for m in cluster.masters() {
        let list = m.cmd(&["FUNCTION", "LIST"]);
        assert!(format!("{list:?}").contains("ferrylib"), "{list:?}");
        assert_eq!(m.cmd(&["FCALL", "ferry_one", "0"]).as_int(), 1);
    }
    assert_eq!(cluster.cmd_routed_str(&["GET", "k"]).as_str(), "v");
}
