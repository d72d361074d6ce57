//! `ferry check` against real redis-servers: the exit code and the table name what is wrong.

use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::{free_port, Server};

/// Runs `ferry check` and returns its exit code and output.
fn check(source: &str, target: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check", "--source", source, "--target", target];
    args.extend_from_slice(extra);
    let mut f = Ferry::start(&args);
    let status = f.wait(Duration::from_secs(30));
    (status.code().unwrap_or(-1), f.output())
}

/// The table's line for a check.
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(check))
        .unwrap_or_else(|| panic!("no line for {check:?}\n{out}"))
}

#[test]
fn clean_pair_passes() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "k", "v"]);
    let (code, out) = check(&source.url(), &target.url(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "target empty").starts_with("PASS"), "{out}");
    assert!(line(&out, "PSYNC allowed").starts_with("PASS"), "{out}");
}

#[test]
fn non_empty_target_fails_unless_overwrite() {
    let source = Server::start();
    let target = Server::start();
    target.cmd(&["SET", "already", "here"]);
    // ferry's own checkpoints do not count as data.
    target.cmd(&["SET", "ferry:checkpoint:old:0", "stream x 1 0"]);
    let (code, out) = check(&source.url(), &target.url(), &[]);
    assert_eq!(code, 2, "{out}");
    let l = line(&out, "target empty");
    assert!(l.starts_with("FAIL") && l.contains("1 key ("), "{out}");
    let (code, out) = check(&source.url(), &target.url(), &["--overwrite"]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "target empty").starts_with("WARN"), "{out}");
}

#[test]
fn checkpoint_keys_alone_leave_the_target_empty() {
    let source = Server::start();
    let target = Server::start();
    target.cmd(&["SET", "ferry:checkpoint:old:0", "stream x 1 0"]);
    let (code, out) = check(&source.url(), &target.url(), &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn too_few_databases_fails() {
    let source = Server::start();
    let target = Server::builder().arg("databases", "2").start();
    source.cmd(&["SELECT", "5"]);
    source.cmd(&["SET", "in-db5", "v"]);
    source.cmd(&["SELECT", "0"]);
    let (code, out) = check(&source.url(), &target.url(), &[]);
    assert_eq!(code, 2, "{out}");
    let l = line(&out, "databases");
    assert!(
        l.starts_with("FAIL") && l.contains("db5") && l.contains("only 2"),
        "{out}"
    );
    assert!(out.contains("databases 6"), "{out}");
}

#[test]
fn wrong_password_fails_naming_the_node() {
    let source = Server::builder().password("right").start();
    let target = Server::start();
    let wrong = format!("redis://:Wr0ngPw@{}", source.addr());
    let (code, out) = check(&wrong, &target.url(), &[]);
    assert_eq!(code, 2, "{out}");
    let l = line(&out, &format!("source {} reachable", source.addr()));
    assert!(
        l.starts_with("FAIL") && l.contains("authentication failed"),
        "{out}"
    );
    // The first line echoes the arguments; nothing ferry printed may hold the password.
    let printed: Vec<&str> = out.lines().skip(1).collect();
    assert!(
        !printed.join("\n").contains("Wr0ngPw"),
        "the password is printed\n{out}"
    );
}

#[test]
fn unreachable_node_fails() {
    let source = Server::start();
    let gone = format!("127.0.0.1:{}", free_port());
    let (code, out) = check(&source.url(), &gone, &[]);
    assert_eq!(code, 2, "{out}");
    let l = line(&out, &format!("target {gone} reachable"));
    assert!(
        l.starts_with("FAIL") && l.contains("cannot connect"),
        "{out}"
    );
}

#[test]
fn slow_rate_limit_warns() {
    let source = Server::start();
    let target = Server::start();
    let (code, out) = check(&source.url(), &target.url(), &["--rate-limit", "0.5"]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "source backlog").starts_with("WARN"), "{out}");
}

/// A cluster is checked on every master: a key on a target master other than the one
/// given fails the check naming that node, and every source master is reached.
#[test]
fn every_node_of_a_cluster_is_checked() {
    use ferry_testkit::Cluster;
    let source = Cluster::start(3, 0);
    let target = Cluster::start(3, 0);
    source.cmd_routed_str(&["SET", "k", "v"]);
    let (code, out) = check(&source.seed_url(), &target.seed_url(), &[]);
    assert_eq!(code, 0, "{out}");
    for m in source.masters() {
        let l = line(&out, &format!("source {} reachable", m.addr()));
        assert!(l.starts_with("PASS"), "{out}");
        let l = line(&out, &format!("PSYNC allowed ({})", m.addr()));
        assert!(l.starts_with("PASS"), "{out}");
    }
    // A key on the last target master, not the seed the check was given.
    let last = target.masters()[2];
    assert_ne!(target.seed_url(), last.url());
    for i in 0.. {
        let key = format!("stray{i}");
        target.cmd_routed_str(&["SET", &key, "v"]);
        if last.cmd(&["DBSIZE"]).as_int() == 1 {
            break;
        }
        target.cmd_routed_str(&["DEL", &key]);
    }
    let (code, out) = check(&source.seed_url(), &target.seed_url(), &[]);
    assert_eq!(code, 2, "{out}");
    let l = line(&out, &format!("target empty ({})", last.addr()));
    assert!(l.starts_with("FAIL") && l.contains("1 key ("), "{out}");
    for m in &target.masters()[..2] {
        let l = line(&out, &format!("target empty ({})", m.addr()));
        assert!(l.starts_with("PASS"), "{out}");
    }
}

/// A target that holds a job's checkpoints is that job's to resume: `ferry check` with the
/// job's name passes it (on every master of a cluster target), another name fails it.
#[test]
fn a_job_resuming_into_its_own_data_passes() {
    use ferry_testkit::{wait_same_data_cluster, Cluster};
    let source = Cluster::start(3, 0);
    let target = Cluster::start(3, 0);
    for i in 0..300 {
        source.cmd_routed_str(&["SET", &format!("k{i}"), "v"]);
    }
    let mut job = Ferry::sync(&source.seed_url(), &target.seed_url(), &["--name", "again"]);
    wait_same_data_cluster(&source, &target, Duration::from_secs(60));
    // Each source shard's checkpoint (shard `slots-<first slot>`) is on the target.
    for m in 0..3 {
        let key = format!("ferry:checkpoint:again:slots-{}", 16384 * m / 3);
        crate::common::wait_until("the shard's checkpoint", Duration::from_secs(30), || {
            target.cmd_routed(&[b"EXISTS", key.as_bytes()]).as_int() == 1
        });
    }
    job.signal("KILL");
    let (code, out) = check(&source.seed_url(), &target.seed_url(), &["--name", "again"]);
    assert_eq!(code, 0, "{out}");
    for m in target.masters() {
        let l = line(&out, &format!("target empty ({})", m.addr()));
        assert!(l.starts_with("PASS") && l.contains("resumes"), "{out}");
    }
    let (code, out) = check(&source.seed_url(), &target.seed_url(), &["--name", "other"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("target empty")),
        "{out}"
    );
}
