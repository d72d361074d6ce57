//! `ferry cutover` while `ferry sync` runs under a write load: exit 0 only when the target
//! provably holds every write made before the pause (checked here, while the source is
//! still paused, by `ferry verify`); a cutover that cannot finish unpauses and fails; with
//! `--reverse` the writes made on the new side reach the old one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Ferry;
use ferry_testkit::{Direction, Proxy, Reply, Server};

const LONG: Duration = Duration::from_secs(90);

/// `redis-benchmark` writing to `server` until dropped.
struct Load(Child);

impl Load {
    fn start(server: &Server) -> Load {
        let child = Command::new("redis-benchmark")
            .args([
                "-p",
                &server.port().to_string(),
                "-t",
                "set,incr,lpush,hset",
                "-n",
                "100000000",
                "-r",
                "20000",
                "-P",
                "8",
                "-c",
                "4",
                "-q",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-benchmark (apt-get install redis-tools)");
        Load(child)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ferry cutover --source S --target T --name NAME <extra>`.
fn cutover(source: &str, target: &str, name: &str, extra: &[&str]) -> Ferry {
    let mut args = vec![
        "cutover", "--source", source, "--target", target, "--name", name,
    ];
    args.extend_from_slice(extra);
    Ferry::start(&args)
}

fn verify(source: &Server, target: &Server) -> (bool, String) {
    let mut v = Ferry::start(&[
        "verify",
        "--source",
        &source.url(),
        "--target",
        &target.url(),
        "--rounds",
        "1",
    ]);
    let ok = v.wait(LONG).success();
    (ok, v.output())
}

/// A write on `server` answered within `within` (the source is not paused).
fn writes_flow(server: &Server, within: Duration) -> bool {
    let mut c = server.client();
    c.set_timeout(Some(within)).unwrap();
    matches!(c.cmd(&[b"SET", b"probe", b"1"]), Ok(Reply::Status(_)))
}

#[test]
fn cutover_under_load_leaves_the_target_equal_while_paused() {
    let source = Server::start();
    let target = Server::start();
    let name = "cut";
    let mut sync = Ferry::sync(&source.url(), &target.url(), &["--name", name]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    let _load = Load::start(&source);
    crate::common::wait_until("the load on the source", LONG, || {
        source.cmd(&["DBSIZE"]).as_int() > 1000
    });
    let mut cut = cutover(
        &source.url(),
        &target.url(),
        name,
        &["--hold", "20s", "--max-pause", "10s"],
    );
    let status = cut.wait(LONG);
    let held_from = Instant::now();
    let out = cut.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("the target holds every write"), "{out}");
    assert!(out.contains("move the clients"), "{out}");
    // The source is still paused: its data cannot move, and the target must equal it.
    assert!(!writes_flow(&source, Duration::from_millis(300)), "{out}");
    let (equal, report) = verify(&source, &target);
    assert!(
        held_from.elapsed() < Duration::from_secs(15),
        "verify too slow"
    );
    assert!(equal, "{report}\n{out}");
    assert!(report.contains("EQUAL"), "{report}");
    assert!(sync.is_running(), "{}", sync.output());
    sync.signal("INT");
}

#[test]
fn a_cutover_that_cannot_catch_up_unpauses_and_fails() {
    let source = Server::start();
    let target = Server::start();
    let proxy = Proxy::start(&target.addr());
    let name = "slow";
    let mut sync = Ferry::sync(&source.url(), &proxy.url(), &["--name", name]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    // ferry's writes stop reaching the target: the checkpoint cannot catch up.
    proxy.stall(Direction::Upstream);
    for i in 0..50 {
        source.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let started = Instant::now();
    let mut cut = cutover(&source.url(), &target.url(), name, &["--max-pause", "1s"]);
    let status = cut.wait(LONG);
    let out = cut.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("did not catch up"), "{out}");
    assert!(out.contains("bytes behind"), "{out}");
    // Unpaused at once, not at the pause's end.
    assert!(writes_flow(&source, Duration::from_millis(500)), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    proxy.resume(Direction::Upstream);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    sync.signal("INT");
}

#[test]
fn a_cutover_without_a_running_job_is_refused() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "k", "v"]);
    let mut cut = cutover(&source.url(), &target.url(), "none", &[]);
    let status = cut.wait(LONG);
    let out = cut.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("no run of job \"none\""), "{out}");
    assert!(writes_flow(&source, Duration::from_millis(500)), "{out}");
}

#[test]
fn reverse_carries_writes_on_the_new_side_back() {
    let source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "seed", "1"]);
    let name = "rev";
    let mut sync = Ferry::sync(&source.url(), &target.url(), &["--name", name]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    let load = Load::start(&source);
    std::thread::sleep(Duration::from_millis(300));
    let mut cut = cutover(
        &source.url(),
        &target.url(),
        name,
        &["--reverse", "--hold", "5s"],
    );
    cut.wait_for_output("move the clients", LONG);
    // The job was stopped by the cutover.
    let status = sync.wait(LONG);
    assert!(status.success(), "{}", sync.output());
    drop(load);
    // Clients now write to the new side; the old one follows.
    target.cmd(&["INCR", "seed"]);
    target.cmd(&["SET", "back", "1"]);
    crate::common::wait_until("the write on the new side on the old one", LONG, || {
        source.cmd(&["EXISTS", "back"]) == Reply::Int(1)
    });
    // Applied in order: the INCR before it is there, once.
    assert_eq!(source.cmd(&["GET", "seed"]).as_str(), "2");
    // Everything on the new side is on the old one. (Writes the load had queued on the old
    // side during the pause run there once it ends: they are the old side's own, and
    // nothing carries them to the new one.)
    let mut v = Ferry::start(&[
        "verify",
        "--source",
        &target.url(),
        "--target",
        &source.url(),
        "--rounds",
        "1",
        "--json",
    ]);
    v.wait(LONG);
    let line = v.output();
    let report: serde_json::Value = line
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(report["missing_on_target"], 0, "{report}");
    assert_eq!(report["value_differences"], 0, "{report}");
    assert_eq!(report["type_differences"], 0, "{report}");
    assert!(cut.is_running(), "{}", cut.output());
    cut.signal("INT");
    let out = cut.output();
    assert!(out.contains("way back stopped"), "{out}");
}

/// The hold replaces the longer first pause (on 6.2+): writes flow again once it ends.
#[test]
fn the_hold_is_as_long_as_asked() {
    let source = Server::start();
    let target = Server::start();
    let name = "hold";
    let mut sync = Ferry::sync(&source.url(), &target.url(), &["--name", name]);
    crate::common::wait_caught_up(&source, &target, name, LONG);
    let mut cut = cutover(
        &source.url(),
        &target.url(),
        name,
        &["--max-pause", "60s", "--hold", "1s"],
    );
    assert!(cut.wait(LONG).success(), "{}", cut.output());
    let ended = Instant::now();
    assert!(!writes_flow(&source, Duration::from_millis(200)));
    crate::common::wait_until("writes after the hold", Duration::from_secs(20), || {
        writes_flow(&source, Duration::from_millis(500))
    });
    assert!(ended.elapsed() < Duration::from_secs(10));
    sync.signal("INT");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `ferry status` reads a job's position from any machine; `--metrics-listen` serves the
/// service's series for a CLI job.
#[test]
fn status_and_metrics_from_the_cli() {
    let source = Server::start();
    let target = Server::start();
    let name = "seen";
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sync = Ferry::sync(
        &source.url(),
        &target.url(),
        &["--name", name, "--metrics-listen", &addr],
    );
    crate::common::wait_caught_up(&source, &target, name, LONG);
    for i in 0..20 {
        source.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let (source_url, target_url) = (source.url(), target.url());
    let status = |extra: &[&str]| {
        let mut args = vec![
            "status",
            "--source",
            &source_url,
            "--target",
            &target_url,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let mut s = Ferry::start(&args);
        let code = s.wait(LONG).code();
        (code, s.output())
    };
    let (code, out) = status(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("running") && out.contains("caught up in"),
        "{out}"
    );
    let (code, out) = status(&["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).expect("json line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let shard = &v["shards"][0];
    assert!(shard["applied"].as_u64().unwrap() >= shard["source_offset"].as_u64().unwrap());
    assert_eq!(v["running"], true);

    let metrics = http_get(&addr, "/metrics");
    let applied = metrics
        .lines()
        .find(|l| l.starts_with("ferry_records_applied_total{job=\"seen\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: u64 = applied.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 20, "{applied}");
    assert!(
        metrics.contains("ferry_job_state{job=\"seen\",shard=\"all\",state=\"incremental\"} 1"),
        "{metrics}"
    );

    sync.signal("INT");
    let (code, out) = status(&["--wait", "0s"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not running"), "{out}");
}

/// A cluster source: every shard is paused and each one's checkpoint must reach its
/// master's offset.
#[test]
fn cutover_of_a_cluster_source_covers_every_shard() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cluster = ferry_testkit::Cluster::start(3, 0);
    for i in 0..300 {
        cluster.cmd_routed_str(&["SET", &format!("key:{i}"), "v"]);
    }
    let target = Server::start();
    let name = "clcut";
    let mut sync = Ferry::sync(&cluster.seed_url(), &target.url(), &["--name", name]);
    crate::common::wait_until("every shard's snapshot", LONG, || {
        sync.output().matches("snapshot applied").count() >= 3
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let urls: Vec<String> = cluster.masters().iter().map(|m| m.addr()).collect();
        std::thread::spawn(move || {
            let mut clients: Vec<_> = urls
                .iter()
                .map(|a| ferry_testkit::Client::connect(a).unwrap())
                .collect();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each master takes the keys of its own slots; a MOVED reply is no write.
                for c in clients.iter_mut() {
                    let _ = c.cmd(&[b"INCR", format!("n{}", n % 50).as_bytes()]);
                }
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut cut = cutover(&cluster.seed_url(), &target.url(), name, &["--hold", "20s"]);
    let status = cut.wait(LONG);
    let out = cut.output();
    assert!(status.success(), "{out}");
    assert_eq!(out.matches("paused (WRITE)").count(), 3, "{out}");
    let mut v = Ferry::start(&[
        "verify",
        "--source",
        &cluster.seed_url(),
        "--target",
        &target.url(),
        "--rounds",
        "1",
    ]);
    let equal = v.wait(LONG).success();
    assert!(equal, "{}\n{out}", v.output());
    stop.store(true, Ordering::Relaxed);
    for m in cluster.masters() {
        m.cmd(&["CLIENT", "UNPAUSE"]);
    }
    writer.join().unwrap();
    sync.signal("INT");
}
