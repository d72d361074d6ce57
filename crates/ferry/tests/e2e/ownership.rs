//! ferry deletes only what it owns and notices when the target loses what it wrote: a
//! target holding other data is refused unless allowed, a target it shares is never
//! flushed, and a target flushed or emptied under a running job is copied again (or, for an
//! incremental job, the job stops).

use std::time::Duration;

use crate::common::{wait_caught_up, wait_until, Ferry};
use ferry_testkit::{
    assert_same_data, assert_same_data_cluster, populate_db0, populate_every_type, wait_same_data,
    Cluster, DataSide, Server,
};

const LONG: Duration = Duration::from_secs(60);

/// Keys nobody asked ferry to touch.
fn unrelated(target: &Server, n: usize) {
    for i in 0..n {
        target.cmd(&["SET", &format!("theirs:{i}"), "keep me"]);
    }
}

fn theirs_left(target: &Server) -> usize {
    target.cmd(&["SELECT", "0"]);
    target.cmd(&["KEYS", "theirs:*"]).as_array().len()
}

#[test]
fn a_non_empty_target_is_refused_before_anything_is_written() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 1);
    unrelated(&target, 500);
    let before = target.digest();

    // The CLI's pre-check refuses it: exit 2 and the table.
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--mode", "full"]);
    let status = ferry.wait(LONG);
    assert_eq!(status.code(), Some(2), "{}", ferry.output());
    let out = ferry.output();
    assert!(
        out.contains("FAIL") && out.contains("target empty"),
        "{out}"
    );
    assert!(out.contains("--allow-nonempty-target"), "{out}");
    assert_eq!(
        target.digest(),
        before,
        "the refused job wrote to the target"
    );

    // Without the pre-check the job itself refuses, naming a key it found.
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--skip-precheck"],
    );
    assert!(!ferry.wait(LONG).success(), "{}", ferry.output());
    let out = ferry.output();
    assert!(
        out.contains("did not write") && out.contains("theirs:"),
        "{out}"
    );
    assert!(out.contains("--allow-nonempty-target"), "{out}");
    assert_eq!(
        target.digest(),
        before,
        "the refused job wrote to the target"
    );

    // Allowed: the copy goes in beside the other keys.
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--allow-nonempty-target"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_eq!(theirs_left(&target), 500);
}

#[test]
fn a_shared_target_is_never_flushed_by_a_new_snapshot() {
    let source = Server::builder().arg("repl-backlog-size", "16kb").start();
    let target = Server::start();
    populate_every_type(&source, 1);
    unrelated(&target, 300);
    let args = ["--name", "shared", "--allow-nonempty-target"];
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    ferry.wait_for_output("snapshot applied", LONG);
    source.cmd(&["SET", "after", "1"]);
    wait_caught_up(&source, &target, "shared", LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());

    // While ferry is away the source's backlog is overrun: the next run gets a new snapshot.
    let big = "x".repeat(1000);
    for i in 0..200 {
        source.cmd(&["SET", &format!("filler:{i}"), &big]);
    }
    let mut again = Ferry::sync(&source.url(), &target.url(), &args);
    assert!(!again.wait(LONG).success(), "{}", again.output());
    let out = again.output();
    assert!(out.contains("--allow-flush"), "{out}");
    assert!(
        !out.contains("FLUSHALL) before a new snapshot: removing"),
        "{out}"
    );
    assert_eq!(
        theirs_left(&target),
        300,
        "ferry deleted keys it does not own"
    );

    // The user allows the flush: it is logged with what it removes, and the copy is exact.
    let mut flushing = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--name",
            "shared",
            "--allow-nonempty-target",
            "--allow-flush",
        ],
    );
    flushing.wait_for_output("snapshot applied", LONG);
    let out = flushing.output();
    assert!(out.contains("WARN") && out.contains("removing"), "{out}");
    wait_caught_up(&source, &target, "shared", LONG);
    assert!(flushing.signal("INT").success(), "{}", flushing.output());
    assert_same_data(&source, &target);
}

#[test]
fn an_owned_target_flushed_under_ferry_is_noticed_and_copied_again() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--name", "lost"]);
    ferry.wait_for_output("snapshot applied", LONG);
    source.cmd(&["INCR", "ctr"]);
    wait_caught_up(&source, &target, "lost", LONG);

    // Someone flushes the target; the next write's checkpoint finds its old value gone.
    target.cmd(&["FLUSHALL"]);
    for _ in 0..10 {
        source.cmd(&["INCR", "ctr"]);
    }
    ferry.wait_for_output("the target lost data", LONG);
    wait_same_data(&source, &target, LONG);
    source.cmd(&["INCR", "ctr"]);
    wait_caught_up(&source, &target, "lost", LONG);
    assert_eq!(target.cmd(&["GET", "ctr"]).as_str(), "12");
    assert!(ferry.is_running(), "{}", ferry.output());
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_same_data(&source, &target);
}

#[test]
fn an_incremental_job_stops_when_its_target_restarts_empty() {
    let source = Server::start();
    let mut target = Server::start();
    let args = ["--name", "incr", "--mode", "incremental"];
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    ferry.wait_for_output("snapshot applied", LONG);
    for i in 0..100 {
        source.cmd(&["SET", &format!("k:{i}"), "v"]);
    }
    wait_caught_up(&source, &target, "incr", LONG);
    // Restarted without its data (nothing was persisted).
    target.restart();
    assert_eq!(target.cmd(&["DBSIZE"]).as_int(), 0);
    source.cmd(&["SET", "later", "1"]);
    let status = ferry.wait(LONG);
    assert!(!status.success(), "{}", ferry.output());
    let out = ferry.output();
    assert!(out.contains("the target lost data"), "{out}");
    assert!(out.contains("full+incremental"), "{out}");
}

#[test]
fn a_cluster_target_flushed_under_ferry_is_copied_again() {
    let source = Server::start();
    let cluster = Cluster::start(3, 0);
    populate_db0(&source, 1);
    let mut ferry = Ferry::sync(&source.url(), &cluster.seed_url(), &["--name", "clost"]);
    ferry.wait_for_output("snapshot applied", LONG);
    source.cmd(&["SET", "a", "1"]);
    wait_until("the first write on the cluster", LONG, || {
        let r = cluster.cmd_routed_str(&["GET", "a"]);
        !r.is_nil() && r.as_str() == "1"
    });
    for m in cluster.masters() {
        m.cmd(&["FLUSHALL"]);
    }
    // Writes over many slots, one in the slot whose checkpoint is gone.
    source.cmd(&["SET", "a", "2"]);
    for i in 0..200 {
        source.cmd(&["INCR", &format!("ctr:{i}")]);
    }
    ferry.wait_for_output("the target lost data", LONG);
    ferry_testkit::wait_same_data_cluster(
        DataSide::Server(&source),
        DataSide::Cluster(&cluster),
        LONG,
    );
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_same_data_cluster(DataSide::Server(&source), DataSide::Cluster(&cluster));
}
