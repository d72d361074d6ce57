//! The library API as the job service will call it: `verify(config, progress)`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ferry_resp::Endpoint;
use ferry_testkit::{populate_every_type, Server};
use ferry_verify::{verify, Config, Mode, Problem, Progress, ValueMethod};

fn endpoint(s: &Server) -> Endpoint {
    s.url().parse().expect("testkit URL parses")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn counts_progress_and_honours_the_url_database() {
    let source = Server::start();
    populate_every_type(&source, 1);
    let target = Server::builder().replica_of(&source).start();
    source.wait_replica_synced(&target, Duration::from_secs(20));
    target.cmd(&["REPLICAOF", "NO", "ONE"]);
    let rt = runtime();

    let mut config = Config::new(endpoint(&source), endpoint(&target));
    config.rate_limit = Some(1_000_000);
    config.rounds = 1;
    let progress = Progress::default();
    let report = rt.block_on(verify(&config, &progress)).expect("verify");
    assert!(report.equal, "{report:?}");
    assert_eq!(report.value_method, ValueMethod::Digest);
    assert_eq!(
        progress.source_keys_scanned.load(Relaxed),
        report.keys_compared
    );
    assert_eq!(
        progress.target_keys_scanned.load(Relaxed),
        report.target_keys_scanned
    );
    assert_eq!(report.keys_compared, report.target_keys_scanned);

    // Only db 1: a difference in db 0 is not looked at, one in db 1 is.
    target.cmd(&["SET", "only-on-target", "v"]);
    let mut db1 = target.client();
    db1.cmd_str(&["SELECT", "1"]);
    db1.cmd_str(&["SET", "db1-extra", "v"]);
    let mut config = Config::new(endpoint(&source), endpoint(&target));
    config.source[0].db = Some(1);
    config.mode = Mode::Keys;
    config.rounds = 1;
    let report = rt
        .block_on(verify(&config, &Progress::default()))
        .expect("verify db 1");
    assert_eq!(report.extra_on_target, 1, "{report:?}");
    assert_eq!(report.differences.len(), 1);
    assert_eq!(report.differences[0].db, 1);
    assert_eq!(report.differences[0].key, "db1-extra");
    assert_eq!(report.differences[0].problems, [Problem::ExtraOnTarget]);
    assert_eq!(report.value_method, ValueMethod::None);
}
