//! One writer per target, and never the source itself: a job whose target is its own
//! source (under another address, or a member of the source's replication group) is
//! refused before anything is written.

use std::process::Command;
use std::time::Duration;

use crate::common::{assert_exact_copy_with_checkpoint, wait_caught_up, wait_until, Churn, Ferry};
use ferry_testkit::Server;

const LONG: Duration = Duration::from_secs(60);

/// INCRs on a few counters until stopped: a write applied twice shows as a higher count.
fn incr_load(source: &Server) -> Churn {
    let mut c = source.client();
    Churn::with(move |stop| {
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("ctr:{}", n % 5);
                c.cmd_str(&["INCR", &key]);
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    })
}

/// A second run of a job fails at once, naming the first, which goes on alone.
fn refused_while_the_first_runs(source: &Server, target: &Server, first: &Ferry) {
    let mut second = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    let status = second.wait(Duration::from_secs(30));
    let out = second.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("job j is already running against target")
            && out.contains(&format!("pid {}", first.pid())),
        "{out}"
    );
    assert!(!out.contains("retrying"), "{out}");
}

fn fill(server: &Server, n: usize) {
    for i in 0..n {
        server.cmd(&["SET", &format!("k{i}"), "v"]);
    }
}

fn dbsize(server: &Server) -> i64 {
    server.cmd(&["DBSIZE"]).as_int()
}

#[test]
fn sync_refuses_the_source_as_its_own_target() {
    let server = Server::start();
    fill(&server, 500);
    let source = format!("redis://127.0.0.1:{}", server.port());
    let target = format!("redis://localhost:{}", server.port());
    let mut f = Ferry::sync(&source, &target, &["--name", "self", "--overwrite"]);
    let status = f.wait(Duration::from_secs(30));
    let out = f.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("are not distinct") && out.contains("run_id"),
        "{out}"
    );
    assert!(
        out.contains(&format!("127.0.0.1:{}", server.port()))
            && out.contains(&format!("localhost:{}", server.port())),
        "{out}"
    );
    assert_eq!(dbsize(&server), 500, "the source's data is intact");
    // Refused at once, not retried.
    assert!(!out.contains("retrying"), "{out}");
}

#[test]
fn check_fails_when_source_and_target_are_one_server() {
    let server = Server::start();
    fill(&server, 10);
    let source = format!("redis://127.0.0.1:{}", server.port());
    let target = format!("redis://localhost:{}", server.port());
    let mut f = Ferry::start(&["check", "--source", &source, "--target", &target]);
    let code = f.wait(Duration::from_secs(30)).code();
    let out = f.output();
    assert_eq!(code, Some(2), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("source and target differ"))
        .unwrap_or_else(|| panic!("no row\n{out}"));
    assert!(row.starts_with("FAIL") && row.contains("run_id"), "{out}");
}

#[test]
fn sync_refuses_a_source_replicating_from_the_target() {
    let target = Server::start();
    fill(&target, 300);
    let source = Server::builder().replica_of(&target).start();
    target.wait_replica_synced(&source, Duration::from_secs(30));
    let mut f = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--name", "loop", "--overwrite"],
    );
    let status = f.wait(Duration::from_secs(30));
    let out = f.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("replication group"), "{out}");
    assert_eq!(dbsize(&target), 300);
    let mut c = Ferry::start(&[
        "check",
        "--source",
        &source.url(),
        "--target",
        &target.url(),
    ]);
    assert_eq!(
        c.wait(Duration::from_secs(30)).code(),
        Some(2),
        "{}",
        c.output()
    );
}

/// Runs `ferry job --server URL <args>` to completion; returns (success, stdout+stderr).
fn job(server: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["job", "--server", server])
        .args(args)
        .output()
        .expect("run ferry job");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn serve(store: &str) -> (Ferry, String) {
    let mut serve = Ferry::start(&["serve", "--listen", "127.0.0.1:0", "--store", store]);
    serve.wait_for_output("ferry service on http://", Duration::from_secs(20));
    let url = serve
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("ferry service on "))
        .map(|u| u.trim_end_matches('/').to_string())
        .expect("service address");
    (serve, url)
}

#[test]
fn service_refuses_a_job_whose_target_is_its_source() {
    let server = Server::start();
    fill(&server, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let (_serve, url) = serve(&store);
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"self\"\nsource = \"redis://127.0.0.1:{p}\"\ntarget = \"redis://localhost:{p}\"\noverwrite = true\n",
            p = server.port()
        ),
    )
    .expect("write job.toml");
    let cfg = config.display().to_string();
    let (ok, out) = job(&url, &["create", "--config", &cfg, "--start"]);
    if ok {
        // Created and started without a pre-check: the run itself refuses.
        let mut last = String::new();
        wait_until("the job to fail", Duration::from_secs(60), || {
            last = job(&url, &["show", "self"]).1;
            last.contains("not distinct")
        });
    } else {
        assert!(out.contains("not distinct"), "{out}");
    }
    assert_eq!(dbsize(&server), 200, "the source's data is intact");
}

#[test]
fn a_second_serve_on_one_sqlite_store_fails_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.db");
    let store = format!("sqlite://{}", path.display());
    let (first, _url) = serve(&store);
    let mut second = Ferry::start(&["serve", "--listen", "127.0.0.1:0", "--store", &store]);
    let status = second.wait(Duration::from_secs(20));
    let out = second.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("is in use by another ferry serve")
            && out.contains(&format!("pid {}", first.pid())),
        "{out}"
    );
    drop(first);
    // Once the first is gone the store is free again.
    let (_third, _) = serve(&store);
}

#[test]
fn a_second_run_of_a_job_is_refused_naming_the_first() {
    let source = Server::start();
    let target = Server::start();
    fill(&source, 100);
    let load = incr_load(&source);
    let mut first = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    first.wait_for_output("snapshot applied", LONG);
    refused_while_the_first_runs(&source, &target, &first);
    assert!(first.is_running(), "{}", first.output());
    assert!(load.stop() > 10);
    wait_caught_up(&source, &target, "j", LONG);
    assert!(first.signal("INT").success(), "{}", first.output());
    // Stopped cleanly: the job can run again.
    let mut again = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    again.wait_for_output("partial resync (+CONTINUE)", LONG);
    assert!(again.signal("INT").success(), "{}", again.output());
    assert_exact_copy_with_checkpoint(&source, &target, "j");
}

#[test]
fn a_killed_run_is_taken_over_at_once() {
    let source = Server::start();
    let target = Server::start();
    fill(&source, 100);
    let load = incr_load(&source);
    let mut first = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    first.wait_for_output("snapshot applied", LONG);
    first.signal("KILL");
    let mut again = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    again.wait_for_output("partial resync (+CONTINUE)", LONG);
    assert!(load.stop() > 10);
    wait_caught_up(&source, &target, "j", LONG);
    assert!(again.signal("INT").success(), "{}", again.output());
    assert_exact_copy_with_checkpoint(&source, &target, "j");
}

#[test]
fn a_frozen_run_still_holds_its_job() {
    let source = Server::start();
    let target = Server::start();
    fill(&source, 100);
    let load = incr_load(&source);
    let mut first = Ferry::sync(&source.url(), &target.url(), &["--name", "j"]);
    first.wait_for_output("snapshot applied", LONG);
    assert!(Command::new("kill")
        .args(["-STOP", &first.pid().to_string()])
        .status()
        .expect("kill -STOP")
        .success());
    // Frozen longer than a lease would last: its connection still holds the job.
    std::thread::sleep(Duration::from_secs(3));
    refused_while_the_first_runs(&source, &target, &first);
    assert!(Command::new("kill")
        .args(["-CONT", &first.pid().to_string()])
        .status()
        .expect("kill -CONT")
        .success());
    assert!(load.stop() > 10);
    wait_caught_up(&source, &target, "j", LONG);
    assert!(first.signal("INT").success(), "{}", first.output());
    // Counters not doubled: the target equals the source.
    assert_exact_copy_with_checkpoint(&source, &target, "j");
}

#[test]
fn sync_refuses_a_target_in_the_source_cluster() {
    let cluster = ferry_testkit::Cluster::start(3, 0);
    for i in 0..200 {
        cluster.cmd_routed_str(&["SET", &format!("k{i}"), "v"]);
    }
    let target = format!("redis://localhost:{}", cluster.node(1).port());
    let mut f = Ferry::sync(
        &cluster.seed_url(),
        &target,
        // The job's own check (the pre-check refuses the shared address first).
        &["--name", "c", "--overwrite", "--skip-precheck"],
    );
    let status = f.wait(Duration::from_secs(60));
    let out = f.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("are not distinct"), "{out}");
    assert_eq!(cluster.keys_per_master().iter().sum::<i64>(), 200);
}
