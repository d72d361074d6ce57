//! A target that evicts copied keys (maxmemory with an evicting policy) fails the job: the
//! copy is not equal, so ferry must never report it complete.

use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::Server;

const LONG: Duration = Duration::from_secs(120);

/// The snapshot overflows a 2 MB allkeys-lru target: it evicts while ferry writes. The
/// pre-check fails such a target already (it does not fit), so `--skip-precheck` makes the
/// job's own check the one exercised.
#[test]
fn full_sync_into_an_evicting_target_fails() {
    let source = Server::start();
    let target = Server::builder()
        .arg("maxmemory", "2mb")
        .arg("maxmemory-policy", "allkeys-lru")
        .start();
    source.cmd(&["DEBUG", "POPULATE", "20000", "key", "500"]);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--skip-precheck"],
    );
    let status = ferry.wait(LONG);
    let out = ferry.output();
    assert!(!status.success(), "exit 0 though the target evicted: {out}");
    assert!(!out.contains("full sync complete"), "{out}");
    assert!(out.contains("evicted"), "evictions not named: {out}");
    assert!(out.contains(&target.addr()), "target not named: {out}");
    assert!(out.contains("allkeys-lru"), "policy not named: {out}");
}

/// The snapshot fits; later writes on the source overflow the target, which starts
/// evicting in the stream: the job stops (it would otherwise run on, diverged).
#[test]
fn evictions_after_the_snapshot_stop_the_job() {
    let source = Server::start();
    let target = Server::builder()
        .arg("maxmemory", "8mb")
        .arg("maxmemory-policy", "allkeys-lru")
        .start();
    source.cmd(&["DEBUG", "POPULATE", "1000", "small", "100"]);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--mode",
            "full+incremental",
            "--name",
            "evict",
            // The pre-check would flag the evicting policy; the job's own check is tested.
            "--skip-precheck",
        ],
    );
    crate::common::wait_until("the snapshot is on the target", LONG, || {
        target.cmd(&["DBSIZE"]).as_int() >= 1000
    });
    assert_eq!(target.info("stats")["evicted_keys"], "0");
    // Far more than 8 MB, in the replicated stream.
    let value = "v".repeat(500);
    for chunk in 0..40 {
        let mut args = vec!["MSET".to_string()];
        for i in 0..1000 {
            args.push(format!("big:{chunk}:{i}"));
            args.push(value.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        source.cmd(&args);
    }
    let status = ferry.wait(LONG);
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("evicted"), "evictions not named: {out}");
    assert!(out.contains(&target.addr()), "target not named: {out}");
}
