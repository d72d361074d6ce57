//! Never start over, never lose or double a write: checkpoints, resume and retries under
//! faults, each with non-idempotent writes running on the source throughout and an exact
//! comparison at the end (counters equal, lists identical).

use std::thread;
use std::time::{Duration, Instant};

use crate::common::{assert_exact_copy_with_checkpoint, wait_caught_up, wait_until, Churn, Ferry};
use ferry_testkit::{assert_same_data, populate_every_type, Direction, Proxy, Server};

const LONG: Duration = Duration::from_secs(60);
const NAME: &str = "resume-test";

/// A source whose backlog outlasts a few seconds of the churn writer (~15 MB/s).
fn source_builder() -> ferry_testkit::ServerBuilder {
    Server::builder().arg("repl-backlog-size", "512mb")
}

fn sync_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--name", NAME];
    a.extend_from_slice(extra);
    a
}

fn wait_incremental(ferry: &mut Ferry) {
    ferry.wait_for_output("snapshot applied", LONG);
}

#[test]
fn kill_9_mid_stream_resumes_with_continue() {
    let source = source_builder().start();
    let target = Server::start();
    populate_every_type(&source, 2);
    let writes = Churn::start(&source);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &sync_args(&[]));
    wait_incremental(&mut ferry);
    thread::sleep(Duration::from_millis(800));
    ferry.signal("KILL");
    thread::sleep(Duration::from_millis(500));
    let mut again = Ferry::sync(&source.url(), &target.url(), &sync_args(&[]));
    again.wait_for_output("partial resync (+CONTINUE)", LONG);
    thread::sleep(Duration::from_millis(500));
    assert!(writes.stop() > 10);
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(again.signal("INT").success(), "{}", again.output());
    assert!(
        !again.output().contains("full resync"),
        "restart took a new snapshot:\n{}",
        again.output()
    );
    assert_same_data(&source, &target);
    assert_exact_copy_with_checkpoint(&source, &target, NAME);
}

#[test]
fn source_link_cut_mid_snapshot_and_mid_stream() {
    let source = source_builder().diskless(false).start();
    let target = Server::start();
    populate_every_type(&source, 2);
    source.cmd(&["DEBUG", "POPULATE", "100000", "bulk", "100"]);
    let proxy = Proxy::start(&source.addr());
    // Mid-snapshot: the RDB is ~12 MB; cut after 3 MB of it.
    proxy.cut_after(Direction::Downstream, 3_000_000);
    let writes = Churn::start(&source);
    let mut ferry = Ferry::sync(&proxy.url(), &target.url(), &sync_args(&[]));
    ferry.wait_for_output("retrying", LONG);
    wait_incremental(&mut ferry);
    thread::sleep(Duration::from_millis(500));
    // Mid-stream.
    proxy.reset_all();
    ferry.wait_for_output("partial resync (+CONTINUE)", LONG);
    thread::sleep(Duration::from_millis(500));
    writes.stop();
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_same_data(&source, &target);
    assert_exact_copy_with_checkpoint(&source, &target, NAME);
}

#[test]
fn stalled_source_past_its_timeout_is_reconnected() {
    let source = source_builder().arg("repl-timeout", "2").start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let proxy = Proxy::start(&source.addr());
    let writes = Churn::start(&source);
    let mut ferry = Ferry::sync(
        &proxy.url(),
        &target.url(),
        &sync_args(&["--source-timeout", "2s"]),
    );
    wait_incremental(&mut ferry);
    proxy.stall(Direction::Downstream);
    ferry.wait_for_output("nothing received for 2 s", LONG);
    proxy.resume(Direction::Downstream);
    wait_until("a resumed stream", LONG, || {
        ferry.output().matches("partial resync (+CONTINUE)").count() >= 1
    });
    writes.stop();
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_same_data(&source, &target);
}

#[test]
fn target_restart_resumes_from_its_persisted_checkpoint() {
    let source = source_builder().start();
    // The target persists every write: after a kill -9 it holds data and checkpoint as
    // they were, together.
    let mut target = Server::builder()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    populate_every_type(&source, 1);
    let writes = Churn::start(&source);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &sync_args(&[]));
    wait_incremental(&mut ferry);
    thread::sleep(Duration::from_millis(500));
    target.restart();
    ferry.wait_for_output("retrying", LONG);
    ferry.wait_for_output("partial resync (+CONTINUE)", LONG);
    thread::sleep(Duration::from_millis(300));
    writes.stop();
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_same_data(&source, &target);
}

#[test]
fn password_changed_mid_job_then_back_resumes_and_past_the_limit_fails() {
    let source = source_builder().password("first").start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let writes = Churn::start(&source);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--retry-other-limit", "4s"]),
    );
    wait_incremental(&mut ferry);
    source.cmd(&["CONFIG", "SET", "requirepass", "second"]);
    source.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    ferry.wait_for_output("authentication failed", LONG);
    // Back within the limit: the job resumes where it was.
    source.cmd(&["CONFIG", "SET", "requirepass", "first"]);
    ferry.wait_for_output("partial resync (+CONTINUE)", LONG);
    writes.stop();
    wait_caught_up(&source, &target, NAME, LONG);
    assert_same_data(&source, &target);
    // Changed for longer than the limit: the job fails and says why.
    source.cmd(&["CONFIG", "SET", "requirepass", "third"]);
    source.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    let status = ferry.wait(LONG);
    assert!(!status.success(), "{}", ferry.output());
    let out = ferry.output();
    assert!(out.contains("gave up after"), "{out}");
    assert!(out.contains("authentication failed"), "{out}");
}

#[test]
fn backlog_gone_takes_a_new_snapshot_without_stale_keys() {
    let source = Server::builder().arg("repl-backlog-size", "16kb").start();
    let target = Server::start();
    populate_every_type(&source, 1);
    source.cmd(&["SET", "doomed", "1"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &sync_args(&[]));
    wait_incremental(&mut ferry);
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    assert_eq!(target.cmd(&["EXISTS", "doomed"]).as_int(), 1);
    // While ferry is away: a delete, then far more writes than the backlog holds.
    source.cmd(&["DEL", "doomed"]);
    let big = "x".repeat(1000);
    for i in 0..200 {
        source.cmd(&["SET", &format!("filler:{i}"), &big]);
    }
    let mut again = Ferry::sync(&source.url(), &target.url(), &sync_args(&[]));
    again.wait_for_output("full resync", LONG);
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(again.signal("INT").success(), "{}", again.output());
    assert_eq!(
        target.cmd(&["EXISTS", "doomed"]).as_int(),
        0,
        "a key deleted on the source lingers"
    );
    assert_same_data(&source, &target);
    assert_exact_copy_with_checkpoint(&source, &target, NAME);
}

#[test]
fn incremental_mode_refuses_a_gone_backlog() {
    let source = Server::builder().arg("repl-backlog-size", "16kb").start();
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--mode", "incremental"]),
    );
    ferry.wait_for_output("snapshot applied", LONG);
    source.cmd(&["SET", "a", "1"]);
    wait_caught_up(&source, &target, NAME, LONG);
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
    let big = "x".repeat(1000);
    for i in 0..200 {
        source.cmd(&["SET", &format!("filler:{i}"), &big]);
    }
    let mut again = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--mode", "incremental"]),
    );
    assert!(!again.wait(LONG).success());
    assert!(
        again.output().contains("no longer holds its stream"),
        "{}",
        again.output()
    );
}

#[test]
fn immediately_policy_gives_up_after_its_connection_limit() {
    let mut source = Server::start();
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--retry-connection-limit", "3s"]),
    );
    ferry.wait_for_output("snapshot applied", LONG);
    let started = Instant::now();
    source.kill();
    let status = ferry.wait(LONG);
    assert!(!status.success());
    assert!(started.elapsed() >= Duration::from_secs(3));
    let out = ferry.output();
    assert!(out.contains("gave up after"), "{out}");
    assert!(out.contains("connection failure"), "{out}");
    assert!(out.contains(&source.addr()), "{out}");
}

#[test]
fn scheduled_policy_waits_for_its_window() {
    let source = Server::start();
    let target = Server::start();
    let proxy = Proxy::start(&source.addr());
    // A one-minute window twelve hours away: the job waits instead of retrying now.
    let now = jiff_free_utc_hour();
    let start = (now + 12) % 24;
    let window = format!("{start:02}:00-{start:02}:01");
    let mut ferry = Ferry::sync(
        &proxy.url(),
        &target.url(),
        &sync_args(&[
            "--retry",
            "scheduled",
            "--retry-connection-window",
            &window,
            "--retry-other-window",
            &window,
            "--retry-time-zone",
            "UTC",
        ]),
    );
    // Connected first (a first contact that fails stops the CLI at once), then cut off.
    wait_incremental(&mut ferry);
    proxy.refuse(true);
    proxy.reset_all();
    ferry.wait_for_output("waiting for the retry window", LONG);
    let accepted = proxy.accepted();
    thread::sleep(Duration::from_secs(2));
    assert!(ferry.is_running(), "{}", ferry.output());
    assert_eq!(proxy.accepted(), accepted, "retried outside its window");
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

fn jiff_free_utc_hour() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 3600) % 24
}

#[test]
fn checkpoint_off_still_copies() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--checkpoint", "off"]),
    );
    wait_incremental(&mut ferry);
    source.cmd(&["INCR", "after"]);
    ferry_testkit::wait_same_data(&source, &target, LONG);
    target.cmd(&["SELECT", "0"]);
    assert!(target
        .cmd(&["KEYS", "ferry:checkpoint:*"])
        .as_array()
        .is_empty());
    assert!(ferry.signal("INT").success(), "{}", ferry.output());
}

#[test]
fn rate_limit_slows_the_snapshot() {
    let source = Server::builder().diskless(false).start();
    let target = Server::start();
    // ~3 MB of incompressible values.
    let mut c = source.client();
    let cmds: Vec<Vec<Vec<u8>>> = (0..3000u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let value: String = (0..1000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            vec![
                b"SET".to_vec(),
                format!("k{i}").into_bytes(),
                value.into_bytes(),
            ]
        })
        .collect();
    c.pipeline(&cmds).expect("load");
    let started = Instant::now();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &sync_args(&["--mode", "full", "--rate-limit", "1"]),
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    // The first second's worth is a burst; the rest is paid at 1 MB/s.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_same_data(&source, &target);
}
