//! Peers that misbehave on the network: a source that accepts `PSYNC` and then says
//! nothing is timed out (named, retried, and given up on as the retry policy says), never
//! waited on for ever.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{wait_caught_up, Ferry};
use ferry_testkit::{assert_same_data, Direction, Proxy, Server};

/// Reads one command (an array of bulk strings) from a client.
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len + 2];
        std::io::Read::read_exact(r, &mut buf).ok()?;
        args.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    Some(args)
}

/// A server that answers like a Redis master until `PSYNC`, then sends `after_psync` and
/// goes silent (the connection stays open). Returns its address.
fn fake_master(after_psync: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let after_psync = after_psync.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut held = Vec::new();
                while let Some(cmd) = read_command(&mut r) {
                    let name = cmd[0].to_ascii_uppercase();
                    let reply = match name.as_str() {
                        "PING" => "+PONG\r\n".to_string(),
                        "INFO" => {
                            let body = "# Server\r\nredis_version:7.0.15\r\nrun_id:0123456789abcdef0123456789abcdef01234567\r\n# Replication\r\nrole:master\r\nmaster_replid:fedcba9876543210fedcba9876543210fedcba98\r\nmaster_repl_offset:0\r\n# Keyspace\r\n";
                            format!("${}\r\n{body}\r\n", body.len())
                        }
                        // Then nothing more, ever: the connection is kept open.
                        "PSYNC" | "SYNC" => {
                            let _ = w.write_all(&after_psync);
                            held.push(w.try_clone().unwrap());
                            continue;
                        }
                        "ROLE" => "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".into(),
                        "CLUSTER" => "-ERR This instance has cluster support disabled\r\n".into(),
                        _ => "+OK\r\n".into(),
                    };
                    if w.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_secs(120));
                drop(held);
            });
        }
    });
    addr
}

#[test]
fn a_source_silent_after_psync_is_timed_out_and_given_up_on() {
    let source = fake_master(Vec::new());
    let target = Server::start();
    let started = Instant::now();
    let mut ferry = Ferry::sync(
        &format!("redis://{source}"),
        &target.url(),
        &[
            "--skip-precheck",
            "--source-timeout",
            "2s",
            "--retry-connection-limit",
            "6s",
            "--retry-other-limit",
            "6s",
        ],
    );
    let status = ferry.wait(Duration::from_secs(60));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("a reply to PSYNC"), "{out}");
    assert!(out.contains(&source), "{out}");
    assert!(out.contains("retrying"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(45), "{out}");
}

/// `$99999999999` announced for a small RDB followed by the command stream: a protocol
/// error naming both lengths (retried, then given up on), never the stream swallowed as
/// "bytes after the RDB's end".
#[test]
fn an_rdb_length_that_disagrees_with_the_rdb_is_a_protocol_error() {
    let real = Server::start();
    real.cmd(&["SET", "k", "v"]);
    real.cmd(&["SAVE"]);
    let dir = real.cmd(&["CONFIG", "GET", "dir"]).as_array()[1].as_str();
    let rdb = std::fs::read(std::path::Path::new(&dir).join("dump.rdb")).expect("dump.rdb");
    let mut reply =
        b"+FULLRESYNC fedcba9876543210fedcba9876543210fedcba98 0\r\n$99999999999\r\n".to_vec();
    reply.extend_from_slice(&rdb);
    reply.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$5\r\nafter\r\n$1\r\n1\r\n");
    let source = fake_master(reply);
    let target = Server::start();
    let mut ferry = Ferry::sync(
        &format!("redis://{source}"),
        &target.url(),
        &["--skip-precheck", "--source-timeout", "3s"],
    );
    ferry.wait_for_output(
        "announced an RDB of 99999999999 bytes",
        Duration::from_secs(30),
    );
    ferry.signal("INT");
    let out = ferry.output();
    assert!(out.contains("ended after"), "{out}");
    assert!(out.contains(&source), "{out}");
    assert!(!out.contains("skipped"), "{out}");
}

/// A target that runs out of memory during every snapshot: each attempt costs the source a
/// fork, so a failed snapshot is not progress. The backoff grows, `--retry-other-limit`
/// counts from the first failure, and the job gives up naming the refusal, after a handful
/// of full resyncs (it used to start one every 0.3–0.6 s, each `attempt=1`, for ever).
#[test]
fn a_snapshot_that_fails_every_time_backs_off_and_gives_up() {
    let source = Server::start();
    let value = "v".repeat(2048);
    let mut c = source.client();
    for chunk in 0..6 {
        let cmds: Vec<Vec<Vec<u8>>> = (0..500)
            .map(|i| {
                vec![
                    b"SET".to_vec(),
                    format!("key:{chunk}:{i}").into_bytes(),
                    value.clone().into_bytes(),
                ]
            })
            .collect();
        c.pipeline(&cmds).unwrap();
    }
    let target = Server::builder()
        .arg("maxmemory", "2mb")
        .arg("maxmemory-policy", "noeviction")
        .start();
    let started = Instant::now();
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--skip-precheck", "--retry-other-limit", "5s"],
    );
    let status = ferry.wait(Duration::from_secs(90));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("gave up"), "{out}");
    assert!(out.contains("OOM"), "{out}");
    assert!(out.contains(&target.addr()), "{out}");
    let full: u64 = source.info("stats")["sync_full"].parse().unwrap();
    assert!(
        full <= 10,
        "{full} full resyncs in {:?}:\n{out}",
        started.elapsed()
    );
    // The attempts are numbered, not each `attempt=1`.
    assert!(out.contains("attempt=3"), "{out}");
}

/// A target that takes the writes and never answers (a hung process, a black-holed reply
/// path): after `--target-timeout` without a reply byte the connection is taken as lost,
/// named, and retried from the checkpoint; once the target answers again the copy ends
/// exact. It used to wait on the first unanswered batch for ever.
#[test]
fn a_target_that_stops_answering_is_timed_out_and_resumed() {
    let source = Server::start();
    let target = Server::start();
    let proxy = Proxy::start(&target.addr());
    for i in 0..100 {
        source.cmd(&["SET", &format!("before:{i}"), "x"]);
    }
    let mut ferry = Ferry::sync(
        &source.url(),
        &proxy.url(),
        &[
            "--name",
            "hung",
            "--skip-precheck",
            "--target-timeout",
            "2s",
        ],
    );
    wait_caught_up(&source, &target, "hung", Duration::from_secs(30));
    proxy.stall(Direction::Downstream);
    for i in 0..100 {
        source.cmd(&["SET", &format!("during:{i}"), "y"]);
    }
    ferry.wait_for_output("waiting for the target's replies", Duration::from_secs(20));
    let out = ferry.output();
    assert!(out.contains(&proxy.addr()), "{out}");
    assert!(out.contains("retrying"), "{out}");
    proxy.resume(Direction::Downstream);
    source.cmd(&["SET", "after", "z"]);
    wait_caught_up(&source, &target, "hung", Duration::from_secs(30));
    ferry.signal("INT");
    assert_same_data(&source, &target);
}

/// A target that never answers, and a retry limit: the job gives up naming the target.
#[test]
fn a_target_that_never_answers_is_given_up_on() {
    let source = Server::start();
    let target = Server::start();
    let proxy = Proxy::start(&target.addr());
    source.cmd(&["SET", "k", "v"]);
    let mut ferry = Ferry::sync(
        &source.url(),
        &proxy.url(),
        &[
            "--name",
            "blackhole",
            "--skip-precheck",
            "--target-timeout",
            "1s",
            "--retry-connection-limit",
            "4s",
        ],
    );
    wait_caught_up(&source, &target, "blackhole", Duration::from_secs(30));
    proxy.stall(Direction::Downstream);
    source.cmd(&["SET", "k2", "v"]);
    let status = ferry.wait(Duration::from_secs(60));
    let out = ferry.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("gave up"), "{out}");
    assert!(out.contains(&proxy.addr()), "{out}");
    assert!(out.contains("timed out"), "{out}");
}

/// A server that answers the first `INFO` with `header` and then `filler` bytes for as long
/// as the client reads (up to `limit`), then holds the connection open.
fn bloating_master(header: &'static [u8], filler: &'static [u8], limit: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while let Some(cmd) = read_command(&mut r) {
                    if !cmd[0].eq_ignore_ascii_case("INFO") {
                        let _ = w.write_all(b"+OK\r\n");
                        continue;
                    }
                    let _ = w.write_all(header);
                    let chunk = filler.repeat((64 * 1024) / filler.len());
                    let mut sent = 0;
                    while sent < limit && w.write_all(&chunk).is_ok() {
                        sent += chunk.len();
                    }
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
            });
        }
    });
    addr
}

/// Peak resident memory of a process, in MB.
fn peak_rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// A reply announcing gigabytes (a bulk string, or an array of a billion elements) to a
/// handshake command is refused as soon as its header is read: named, with ferry's
/// memory flat. It used to be buffered as it came (5 GB and more), again on each retry.
#[test]
fn a_huge_handshake_reply_is_refused_before_it_is_buffered() {
    for (header, filler, says) in [
        (
            &b"$10000000000\r\n"[..],
            &b"xxxxxxxx"[..],
            "bulk length 10000000000",
        ),
        (
            &b"*1000000000\r\n"[..],
            &b":1\r\n"[..],
            "aggregate length 1000000000",
        ),
    ] {
        let source = bloating_master(header, filler, 400 << 20);
        let target = Server::start();
        let mut ferry = Ferry::sync(
            &format!("redis://{source}"),
            &target.url(),
            &[
                "--skip-precheck",
                "--retry-connection-limit",
                "3s",
                "--retry-other-limit",
                "3s",
            ],
        );
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ferry.is_running() && Instant::now() < deadline {
            if let Some(mb) = peak_rss_mb(ferry.pid()) {
                peak = peak.max(mb);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = ferry.wait(Duration::from_secs(5));
        let out = ferry.output();
        assert!(!status.success(), "{out}");
        assert!(out.contains(says), "{out}");
        assert!(out.contains(&source), "{out}");
        assert!(peak < 150, "ferry's peak RSS was {peak} MB:\n{out}");
    }
}

/// A byte flipped on a plain TCP link inside a key name passes every check there is (RESP
/// framing, Redis, the offsets): the target gets another key. This pins what the README
/// says TLS is for, and that `ferry verify` finds such a difference.
#[test]
fn a_flipped_byte_on_plain_tcp_is_only_found_by_verify() {
    // No pings from the source between the arming and the write.
    let source = Server::builder()
        .arg("repl-ping-replica-period", "60")
        .start();
    let target = Server::start();
    let proxy = Proxy::start(&source.addr());
    let mut ferry = Ferry::sync(
        &proxy.url(),
        &target.url(),
        &["--name", "flip", "--skip-precheck"],
    );
    source.cmd(&["SET", "warm", "1"]);
    wait_caught_up(&source, &target, "flip", Duration::from_secs(30));
    proxy.flip_at(Direction::Downstream, b"flipme", 0);
    source.cmd(&["SET", "flipme", "v"]);
    wait_caught_up(&source, &target, "flip", Duration::from_secs(30));
    ferry.signal("INT");
    assert_eq!(target.cmd(&["GET", "glipme"]).as_str(), "v");
    assert!(target.cmd(&["GET", "flipme"]).is_nil());
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "verify",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .output()
        .expect("ferry verify");
    let text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success(), "{text}");
    assert!(text.contains("flipme"), "{text}");
}
