//! End-to-end tests of `ferry sync` between real redis-servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::common::{assert_exact_copy_with_checkpoint, churn, wait_caught_up, wait_until, Ferry};
use ferry_testkit::{assert_same_data, populate_every_type, wait_same_data, Server};

const LONG: Duration = Duration::from_secs(60);

/// Fail at the first error instead of retrying (the default retries forever).
const NO_RETRY: [&str; 4] = [
    "--retry-connection-limit",
    "0s",
    "--retry-other-limit",
    "0s",
];

fn full_no_retry() -> Vec<&'static str> {
    let mut a = vec!["--mode", "full"];
    a.extend_from_slice(&NO_RETRY);
    a
}

const LIBRARY: &str =
    "#!lua name=ferrylib\nredis.register_function('ferry_one', function() return 1 end)";

fn function_list(s: &Server) -> String {
    format!("{:?}", s.cmd(&["FUNCTION", "LIST", "WITHCODE"]))
}

fn full_copy(diskless: bool) {
    let source = Server::builder().diskless(diskless).start();
    let target = Server::start();
    populate_every_type(&source, 3);
    source.cmd(&["FUNCTION", "LOAD", LIBRARY]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--mode", "full"]);
    let status = ferry.wait(LONG);
    assert!(status.success(), "{}", ferry.output());
    assert!(
        ferry.output().contains("full sync complete"),
        "{}",
        ferry.output()
    );
    assert_same_data(&source, &target);
    assert_eq!(function_list(&source), function_list(&target));
    assert_exact_copy_with_checkpoint(&source, &target, &source.addr());
    // Full mode leaves the source without a lingering replica.
    wait_until(
        "source to drop ferry's link",
        Duration::from_secs(10),
        || {
            source
                .info("replication")
                .get("connected_slaves")
                .map(String::as_str)
                == Some("0")
        },
    );
}

#[test]
fn full_sync_disk_based_copies_every_type() {
    full_copy(false);
}

#[test]
fn full_sync_diskless_copies_every_type() {
    full_copy(true);
}

fn full_then_incremental(diskless: bool) {
    let source = Server::builder().diskless(diskless).start();
    let target = Server::start();
    populate_every_type(&source, 2);
    // Enough data that writes land while the snapshot is being made and sent.
    source.cmd(&["DEBUG", "POPULATE", "100000", "bulk", "64"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = churn(&source, stop.clone());
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &[]);
    ferry.wait_for_output("full resync", LONG);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    assert!(rounds > 10, "the writer ran only {rounds} rounds");
    source.cmd(&["SET", "after:snapshot", "1"]);
    wait_caught_up(&source, &target, &source.addr(), LONG);
    assert_same_data(&source, &target);
    assert!(ferry.is_running(), "{}", ferry.output());
    let status = ferry.signal("INT");
    assert!(status.success(), "{}", ferry.output());
    assert!(ferry.output().contains("stopped:"), "{}", ferry.output());
    assert_exact_copy_with_checkpoint(&source, &target, &source.addr());
}

#[test]
fn full_and_incremental_disk_based_with_writes_throughout() {
    full_then_incremental(false);
}

#[test]
fn full_and_incremental_diskless_with_writes_throughout() {
    full_then_incremental(true);
}

#[test]
fn password_with_quotes_on_source_and_target() {
    let pw = "it's a \"secret\" with spaces: @/%";
    let source = Server::builder().password(pw).start();
    let target = Server::builder().password("target's").start();
    populate_every_type(&source, 1);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &[]);
    wait_same_data(&source, &target, LONG);
    source.cmd(&["SET", "later", "v"]);
    wait_same_data(&source, &target, LONG);
    assert!(
        !ferry.stderr().contains("secret"),
        "password leaked:\n{}",
        ferry.output()
    );
    assert!(ferry.signal("TERM").success(), "{}", ferry.output());
}

#[test]
fn acl_user_source() {
    let source = Server::builder().acl_user("ferry-reader", "p'w:@x").start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--mode", "full"]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_same_data(&source, &target);
}

#[test]
fn wrong_password_is_a_clear_error() {
    let source = Server::builder().password("right").start();
    let target = Server::start();
    let url = format!("redis://:wrong@{}", source.addr());
    let mut ferry = Ferry::sync(&url, &target.url(), &full_no_retry());
    let status = ferry.wait(LONG);
    assert!(!status.success());
    let out = ferry.output();
    assert!(out.contains("authentication failed"), "{out}");
    assert!(out.contains(&source.addr()), "{out}");
}

#[test]
fn psync_renamed_is_a_clear_error() {
    let source = Server::builder()
        .arg_values("rename-command", &["PSYNC", ""])
        .start();
    let target = Server::start();
    // (The default method, auto, falls back to SCAN here: see tests/sources.rs.)
    let mut args = full_no_retry();
    // The job's own refusal (the pre-check would refuse it first).
    args.extend_from_slice(&["--source-method", "psync", "--skip-precheck"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    assert!(!ferry.wait(LONG).success());
    let out = ferry.output();
    assert!(out.contains("refused replication (PSYNC)"), "{out}");
    assert!(out.contains(&source.addr()), "{out}");
}

#[test]
fn replica_without_master_link_is_a_clear_error() {
    // A replica of a master that is gone answers PSYNC with -NOMASTERLINK.
    let mut master = Server::start();
    let source = Server::builder().replica_of(&master).start();
    master.wait_replica_synced(&source, LONG);
    master.kill();
    wait_until("the replica to see its master down", LONG, || {
        source
            .info("replication")
            .get("master_link_status")
            .map(String::as_str)
            == Some("down")
    });
    let target = Server::start();
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &full_no_retry());
    assert!(!ferry.wait(LONG).success());
    let out = ferry.output();
    assert!(out.contains("NOMASTERLINK"), "{out}");
}

#[test]
fn unreachable_target_names_the_node() {
    let source = Server::start();
    let port = ferry_testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut ferry = Ferry::sync(&source.url(), &url, &full_no_retry());
    assert!(!ferry.wait(LONG).success());
    let out = ferry.output();
    assert!(
        out.contains(&format!("127.0.0.1:{port}: cannot connect")),
        "{out}"
    );
}

#[test]
fn existing_key_fails_unless_overwrite() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "shared", "from-source"]);
    source.cmd(&["SET", "other", "1"]);
    target.cmd(&["SET", "shared", "old"]);
    // The target's other keys are allowed to stay: the collision itself is the error.
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--mode", "full", "--allow-nonempty-target"],
    );
    assert!(!ferry.wait(LONG).success());
    let out = ferry.output();
    assert!(out.contains("\"shared\" already exists"), "{out}");
    assert!(out.contains("--overwrite"), "{out}");

    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        // A new job: the refused one shares the target and would need --allow-flush.
        &["--mode", "full", "--overwrite", "--name", "replacing"],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_same_data(&source, &target);
    assert_eq!(target.cmd(&["GET", "shared"]).as_str(), "from-source");
}

#[test]
fn incremental_mode_copies_only_new_writes() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "before", "1"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--mode", "incremental"]);
    ferry.wait_for_output("resync", LONG);
    source.cmd(&["SET", "after", "2"]);
    source.cmd(&["INCR", "counter"]);
    wait_until("new writes on the target", LONG, || {
        !target.cmd(&["GET", "counter"]).is_nil()
    });
    assert_eq!(target.cmd(&["GET", "after"]).as_str(), "2");
    assert!(target.cmd(&["GET", "before"]).is_nil());
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn acks_keep_the_link_while_the_target_stalls() {
    // The source drops a replica that stays silent for repl-timeout; ferry ACKs every
    // second even while its writer is blocked on a paused target.
    let source = Server::builder().arg("repl-timeout", "2").start();
    let target = Server::start();
    populate_every_type(&source, 2);
    target.cmd(&["CLIENT", "PAUSE", "5000", "WRITE"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &[]);
    ferry.wait_for_output("full resync", LONG);
    thread::sleep(Duration::from_secs(5));
    source.cmd(&["SET", "after:pause", "1"]);
    wait_same_data(&source, &target, LONG);
    let log = source.log();
    assert!(!log.contains("timedout"), "source timed ferry out:\n{log}");
    assert_eq!(
        ferry.output().matches("full resync").count(),
        1,
        "{}",
        ferry.output()
    );
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn config_file_gives_the_same_fields() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "source = \"{}\"\ntarget = \"{}\"\nmode = \"full\"\n",
            source.url(),
            target.url()
        ),
    )
    .unwrap();
    let mut ferry = Ferry::start(&[
        "sync",
        "--progress",
        "never",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_same_data(&source, &target);
    std::fs::write(&path, "sorce = \"x\"\n").unwrap();
    let mut bad = Ferry::start(&["sync", "--config", path.to_str().unwrap()]);
    assert!(!bad.wait(LONG).success());
    assert!(bad.output().contains("unknown field"), "{}", bad.output());
    let _ = std::fs::remove_dir_all(&dir);
}
