//! Outcomes told honestly: a run that did not copy everything never exits 0.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::{populate_every_type, Server};

const LONG: Duration = Duration::from_secs(60);

fn config(s: &Server, name: &str) -> String {
    s.cmd(&["CONFIG", "GET", name]).as_array()[1].as_str()
}

/// A cut or foreign RDB file fails the job (naming the file) every time: the reader's
/// error used to be lost when the writer, seeing the channel close, finished first.
#[test]
fn rdb_file_with_read_error_fails() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 3);
    source.cmd(&["SAVE"]);
    let path = PathBuf::from(config(&source, "dir")).join(config(&source, "dbfilename"));
    let full = std::fs::read(&path).expect("dump.rdb");
    let dir = tempfile_dir();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..10 {
        cases.push((format!("cut100-{i}"), full[..100.min(full.len())].to_vec()));
    }
    for frac in [3, 2] {
        let n = full.len() * (frac - 1) / frac;
        cases.push((format!("cut{n}"), full[..n].to_vec()));
    }
    cases.push(("nocrc".into(), full[..full.len() - 4].to_vec()));
    for i in 0..5 {
        cases.push((
            format!("http-{i}"),
            b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec(),
        ));
    }
    for (name, bytes) in cases {
        let file = dir.join(format!("{name}.rdb"));
        std::fs::write(&file, &bytes).expect("write cut file");
        let spec = format!("rdb:{}", file.display());
        let mut ferry = Ferry::sync(&spec, &target.url(), &["--name", "cut"]);
        let status = ferry.wait(LONG);
        let out = ferry.output();
        assert!(!status.success(), "{name}: exit 0 on a bad file: {out}");
        assert!(!out.contains("full sync complete"), "{name}: {out}");
        assert!(
            out.contains(&file.display().to_string()),
            "{name}: file not named: {out}"
        );
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-outcomes-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `ferry <args>` with stdout a pipe whose read end is closed at once (`| head -0`);
/// returns the exit status and stderr.
fn run_with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait ferry");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A closed stdout (`ferry … | head -2`) never makes ferry panic (exit 101).
#[test]
fn closed_stdout_does_not_panic() {
    let source = Server::start();
    let target = Server::start();
    populate_every_type(&source, 1);
    let (s, t) = (source.url(), target.url());
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "sync",
            "--progress",
            "never",
            "--mode",
            "full",
            "--source",
            &s,
            "--target",
            &t,
        ],
        vec!["check", "--source", &s, "--target", &t],
        vec!["verify", "--source", &s, "--target", &t],
    ];
    for args in runs {
        let (status, stderr) = run_with_closed_stdout(&args);
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

fn dbsize(s: &Server) -> i64 {
    s.cmd(&["DBSIZE"]).as_int()
}

/// SIGINT while the snapshot is being applied exits 130 and says the copy is incomplete,
/// in `--mode full` and in full+incremental (whose clean stop once streaming stays 0).
#[test]
fn stop_before_snapshot_applied_is_not_success() {
    let source = Server::start();
    source.cmd(&["DEBUG", "POPULATE", "200000", "k", "100"]);
    for mode in ["full", "full+incremental"] {
        let target = Server::start();
        let mut ferry = Ferry::sync(
            &source.url(),
            &target.url(),
            &["--mode", mode, "--rate-limit", "1"],
        );
        crate::common::wait_until("some keys applied", LONG, || dbsize(&target) > 0);
        assert!(dbsize(&target) < 200_000, "{mode}: copy already done");
        let status = ferry.signal("INT");
        let out = ferry.output();
        assert_eq!(status.code(), Some(130), "{mode}: {out}");
        assert!(out.contains("incomplete"), "{mode}: {out}");
        assert!(!out.contains("full sync complete"), "{mode}: {out}");
    }
    // Once streaming, a stop is clean.
    let target = Server::start();
    let small = Server::start();
    small.cmd(&["SET", "a", "1"]);
    let mut ferry = Ferry::sync(&small.url(), &target.url(), &[]);
    crate::common::wait_until("snapshot applied", LONG, || {
        target.cmd(&["EXISTS", "a"]).as_int() == 1
    });
    small.cmd(&["SET", "b", "2"]);
    crate::common::wait_until("stream applied", LONG, || {
        target.cmd(&["EXISTS", "b"]).as_int() == 1
    });
    let status = ferry.signal("INT");
    assert!(status.success(), "{}", ferry.output());
}

/// A first contact that cannot succeed (wrong password, nothing listening, not Redis)
/// ends the run at once with exit 2 and the cause, instead of retrying for ever.
#[test]
fn first_contact_failure_exits_2_with_the_cause() {
    let target = Server::start();
    let locked = Server::builder().password("right").start();
    // A free port with nothing on it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = format!("redis://{}", free.local_addr().expect("addr"));
    drop(free);
    // A listener that answers HTTP.
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_url = format!("redis://{}", http.local_addr().expect("addr"));
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in http.incoming().flatten().take(20) {
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let wrong = format!("redis://:wrong@{}", locked.addr());
    let no_pass = format!("redis://{}", locked.addr());
    let cases = [
        (wrong.as_str(), "password"),
        (no_pass.as_str(), "password"),
        (refused.as_str(), "cannot connect"),
        (http_url.as_str(), "not a Redis server"),
    ];
    for (source, cause) in cases {
        let mut ferry = Ferry::sync(source, &target.url(), &[]);
        let status = ferry.wait(Duration::from_secs(30));
        let out = ferry.output();
        assert_eq!(status.code(), Some(2), "{source}: {out}");
        assert!(out.contains(cause), "{source}: {out}");
    }
    // The target too.
    let mut ferry = Ferry::sync(&target.url(), &refused, &[]);
    let status = ferry.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", ferry.output());
    assert!(ferry.output().contains("target"), "{}", ferry.output());
}

/// `--log-format json`: progress and the summary carry numbers as numbers, the total the
/// snapshot is measured against, rates; an unknown lag is said, never 0.
#[test]
fn json_logs_carry_numbers() {
    let source = Server::start();
    let target = Server::start();
    for i in 0..200 {
        source.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let mut ferry = Ferry::start(&[
        "--log-format",
        "json",
        "sync",
        "--progress",
        "never",
        "--source",
        &source.url(),
        "--target",
        &target.url(),
    ]);
    ferry.wait_for_output("\"progress\"", Duration::from_secs(30));
    ferry.signal("INT");
    let out = ferry.output();
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let progress = events
        .iter()
        .find(|e| e["fields"]["message"] == "progress")
        .unwrap_or_else(|| panic!("{out}"));
    let f = &progress["fields"];
    assert!(f["progress"].is_number(), "{progress}");
    assert_eq!(f["keys_total"], 200, "{progress}");
    assert!(
        f["keys_applied"].is_number() && f["records_per_sec"].is_number(),
        "{progress}"
    );
    assert!(
        f["lag_bytes"].is_number() || f["lag"] == "unknown",
        "{progress}"
    );
    let summary = events
        .iter()
        .find(|e| e["fields"]["message"] == "summary")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(summary["fields"]["keys"], 200, "{summary}");
    assert!(summary["fields"]["seconds"].is_number(), "{summary}");
    assert!(out.contains("keys/s"), "{out}");
}

/// The replica connection is named on the source: `CLIENT LIST` says whose it is.
#[test]
fn the_source_sees_whose_replica_it_is() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "k", "v"]);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &["--name", "named"]);
    crate::common::wait_until("the named replica on the source", LONG, || {
        source
            .cmd(&["CLIENT", "LIST"])
            .as_str()
            .lines()
            .any(|l| l.contains("name=ferry-reader~named ") && l.contains("flags=S"))
    });
    ferry.signal("INT");
}
