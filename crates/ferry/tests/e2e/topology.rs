//! Source topologies: a master with replicas (read from a replica), a cluster (one reader
//! per shard, in parallel), a master named by Sentinel, and a failover while the job runs.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::common::{wait_caught_up, wait_until, Ferry};
use ferry_testkit::{
    assert_same_data, populate_every_type, wait_same_data, wait_same_data_cluster, Cluster,
    DataSide, Server,
};

const LONG: Duration = Duration::from_secs(90);

fn connected_replicas(s: &Server) -> String {
    s.info("replication")
        .get("connected_slaves")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn replica_set_source_is_read_from_its_replica() {
    let master = Server::start();
    let replica = Server::builder().replica_of(&master).start();
    master.wait_replica_synced(&replica, LONG);
    populate_every_type(&master, 1);
    let target = Server::start();
    let mut ferry = Ferry::sync(&master.url(), &target.url(), &["--name", "rs"]);
    ferry.wait_for_output("snapshot applied", LONG);
    let out = ferry.output();
    assert!(out.contains("source_type=replica-set"), "{out}");
    assert!(out.contains(&format!("0 via {}", replica.addr())), "{out}");
    // ferry hangs off the replica; the master still has only its one replica.
    assert_eq!(connected_replicas(&replica), "1");
    assert_eq!(connected_replicas(&master), "1");
    master.cmd(&["SET", "later", "1"]);
    wait_same_data(&master, &target, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn use_replica_off_reads_the_master() {
    let master = Server::start();
    let replica = Server::builder().replica_of(&master).start();
    master.wait_replica_synced(&replica, LONG);
    populate_every_type(&master, 1);
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &master.url(),
        &target.url(),
        &["--use-replica", "off", "--mode", "full"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(ferry.output().contains(&format!("0 via {}", master.addr())));
    assert_same_data(&master, &target);
}

/// Writes spread over every slot of the cluster.
fn fill_cluster(c: &Cluster, n: usize) {
    for i in 0..n {
        let k = format!("key:{i}");
        c.cmd_routed_str(&["SET", &k, &format!("value-{i}")]);
        if i % 10 == 0 {
            c.cmd_routed_str(&["RPUSH", &format!("list:{i}"), "a", "b", "c"]);
            c.cmd_routed_str(&["HSET", &format!("hash:{i}"), "f", "v", "g", "w"]);
            c.cmd_routed_str(&["ZADD", &format!("zset:{i}"), "1.5", "m"]);
            c.cmd_routed_str(&["PEXPIRE", &k, "3600000"]);
        }
    }
}

#[test]
fn cluster_source_into_a_standalone_target() {
    let cluster = Cluster::start(3, 1);
    fill_cluster(&cluster, 600);
    let target = Server::start();
    let mut ferry = Ferry::sync(&cluster.seed_url(), &target.url(), &["--name", "cl"]);
    wait_until("every shard's snapshot", LONG, || {
        ferry.output().matches("snapshot applied").count() >= 3
    });
    let out = ferry.output();
    assert!(out.contains("source_type=cluster"), "{out}");
    for i in 0..100 {
        cluster.cmd_routed_str(&["INCR", &format!("counter:{}", i % 7)]);
    }
    cluster.cmd_routed_str(&["DEL", "key:1"]);
    wait_same_data_cluster(DataSide::Cluster(&cluster), DataSide::Server(&target), LONG);
    // Every shard keeps its own checkpoint.
    target.cmd(&["SELECT", "0"]);
    let ckpts = target
        .cmd(&["KEYS", "ferry:checkpoint:cl:slots-*"])
        .as_array();
    assert_eq!(ckpts.len(), 3, "{ckpts:?}");
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn cluster_source_failover_resumes_the_shard() {
    let mut cluster = Cluster::start(3, 1);
    fill_cluster(&cluster, 300);
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &cluster.seed_url(),
        &target.url(),
        &["--name", "fo", "--use-replica", "off"],
    );
    wait_until("every shard's snapshot", LONG, || {
        ferry.output().matches("snapshot applied").count() >= 3
    });
    let master = cluster.master_indices()[0];
    cluster.failover(master);
    for i in 0..200 {
        cluster.cmd_routed_str(&["INCR", &format!("after:{}", i % 11)]);
    }
    wait_same_data_cluster(DataSide::Cluster(&cluster), DataSide::Server(&target), LONG);
    let out = ferry.output();
    assert!(out.contains("partial resync (+CONTINUE)"), "{out}");
    assert_eq!(
        out.matches("full resync").count(),
        3,
        "a shard started over:\n{out}"
    );
    let _ = &mut cluster;
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn replica_set_failover_continues_from_the_promoted_replica() {
    let master = Server::builder().arg("repl-backlog-size", "64mb").start();
    let replica = Server::builder()
        .replica_of(&master)
        .arg("repl-backlog-size", "64mb")
        .start();
    master.wait_replica_synced(&replica, LONG);
    populate_every_type(&master, 1);
    let target = Server::start();
    let seeds = format!("redis://{},{}", master.addr(), replica.addr());
    let mut ferry = Ferry::sync(&seeds, &target.url(), &["--name", "rsfo"]);
    ferry.wait_for_output("snapshot applied", LONG);
    for i in 0..300 {
        master.cmd(&["INCR", &format!("c:{}", i % 5)]);
        master.cmd(&["RPUSH", "l", &i.to_string()]);
    }
    master.wait_replica_synced(&replica, LONG);
    let mut master = master;
    master.kill();
    replica.cmd(&["REPLICAOF", "NO", "ONE"]);
    for i in 0..300 {
        replica.cmd(&["INCR", &format!("c:{}", i % 5)]);
        replica.cmd(&["RPUSH", "l", &format!("after-{i}")]);
    }
    wait_until("a resumed stream on the new master", LONG, || {
        ferry.output().matches("partial resync (+CONTINUE)").count() >= 1
    });
    wait_caught_up(&replica, &target, "rsfo", LONG);
    assert_same_data(&replica, &target);
    assert_eq!(
        ferry.output().matches("full resync").count(),
        1,
        "{}",
        ferry.output()
    );
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

struct Sentinel {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    fn start(master: &Server) -> Sentinel {
        let port = ferry_testkit::free_port();
        let dir =
            std::env::temp_dir().join(format!("ferry-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 2000\n",
                dir.display(),
                master.port()
            ),
        )
        .expect("conf");
        let child = Command::new(master.binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sentinel");
        let s = Sentinel { child, port, dir };
        wait_until("sentinel to answer", LONG, || {
            ferry_testkit::Client::connect(&format!("127.0.0.1:{port}"))
                .and_then(|mut c| c.cmd(&[b"PING"]))
                .is_ok()
        });
        s
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn sentinel_names_the_master_to_copy() {
    let master = Server::builder().password("pw'd").start();
    populate_every_type(&master, 1);
    let sentinel = Sentinel::start(&master);
    let target = Server::start();
    let url = format!("redis://:pw%27d@127.0.0.1:{}", sentinel.port);
    let mut ferry = Ferry::start(&[
        "sync",
        "--progress",
        "never",
        "--source-sentinel",
        &url,
        "--source-master",
        "mymaster",
        "--target",
        &target.url(),
        "--mode",
        "full",
    ]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("source_type=sentinel"),
        "{}",
        ferry.output()
    );
    assert_same_data(&master, &target);
    thread::sleep(Duration::from_millis(10));
}

fn cluster_into_cluster(target_masters: usize) {
    let source = Cluster::start(3, 0);
    fill_cluster(&source, 600);
    let target = Cluster::start(target_masters, 0);
    let mut ferry = Ferry::sync(&source.seed_url(), &target.seed_url(), &["--name", "c2c"]);
    wait_until("every shard's snapshot", LONG, || {
        ferry.output().matches("snapshot applied").count() >= 3
    });
    for i in 0..300 {
        source.cmd_routed_str(&["INCR", &format!("counter:{}", i % 13)]);
        source.cmd_routed_str(&["RPUSH", &format!("log:{}", i % 5), &i.to_string()]);
    }
    source.cmd_routed_str(&["DEL", "key:2"]);
    wait_same_data_cluster(DataSide::Cluster(&source), DataSide::Cluster(&target), LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn cluster_of_three_into_a_cluster_of_three() {
    cluster_into_cluster(3);
}

#[test]
fn cluster_of_three_into_a_cluster_of_two() {
    cluster_into_cluster(2);
}

#[test]
fn replica_set_target_failover_is_followed() {
    let source = Server::builder().arg("repl-backlog-size", "64mb").start();
    populate_every_type(&source, 1);
    let mut target_master = Server::start();
    let target_replica = Server::builder().replica_of(&target_master).start();
    target_master.wait_replica_synced(&target_replica, LONG);
    let seeds = format!("redis://{},{}", target_master.addr(), target_replica.addr());
    let mut ferry = Ferry::sync(
        &source.url(),
        &seeds,
        &["--name", "tfo", "--target-type", "replica-set"],
    );
    ferry.wait_for_output("snapshot applied", LONG);
    for i in 0..200 {
        source.cmd(&["INCR", &format!("c:{}", i % 5)]);
        source.cmd(&["RPUSH", "l", &i.to_string()]);
    }
    wait_caught_up(&source, &target_master, "tfo", LONG);
    target_master.wait_replica_synced(&target_replica, LONG);
    // The target's master dies; its replica (which holds the data and the checkpoint, as
    // replicated together) is promoted, and ferry goes on writing there.
    target_master.kill();
    target_replica.cmd(&["REPLICAOF", "NO", "ONE"]);
    for i in 0..200 {
        source.cmd(&["INCR", &format!("c:{}", i % 5)]);
        source.cmd(&["RPUSH", "l", &format!("after-{i}")]);
    }
    wait_caught_up(&source, &target_replica, "tfo", LONG);
    assert_same_data(&source, &target_replica);
    let out = ferry.output();
    assert!(
        out.contains(&format!("node={}", target_replica.addr())),
        "{out}"
    );
    assert!(out.contains("partial resync (+CONTINUE)"), "{out}");
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn cluster_source_full_mode_completes_when_every_shard_has() {
    let cluster = Cluster::start(3, 0);
    fill_cluster(&cluster, 300);
    let target = Server::start();
    let mut ferry = Ferry::sync(&cluster.seed_url(), &target.url(), &["--mode", "full"]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("full sync complete"),
        "{}",
        ferry.output()
    );
    wait_same_data_cluster(DataSide::Cluster(&cluster), DataSide::Server(&target), LONG);
}
