//! `ferry sync` between every pair of server versions available: the system `redis-server`
//! and whatever `scripts/fetch-redis-versions.sh` fetched into `.redis-versions/`.
//! Old → new goes by `RESTORE`; new → old by rewriting values into plain commands.

mod common;

use std::time::Duration;

use common::Ferry;
use ferry_testkit::versions::{available_servers, versions_required, ServerBinary};
use ferry_testkit::{assert_same_data, populate_every_type, Server};

const LONG: Duration = Duration::from_secs(120);

/// The binaries to test with; panics when other versions are required (CI) but missing.
fn servers() -> Vec<ServerBinary> {
    let all = available_servers();
    let others = all
        .iter()
        .filter(|b| !b.label.starts_with("system-"))
        .count();
    eprintln!(
        "server versions available: {:?}",
        all.iter().map(|b| b.label.as_str()).collect::<Vec<_>>()
    );
    if others == 0 {
        let msg = "no other server versions found: run scripts/fetch-redis-versions.sh";
        assert!(!versions_required(), "{msg} (FERRY_REQUIRE_VERSIONS=1)");
        eprintln!("{msg}; cross-version pairs skipped");
    }
    all
}

fn start(b: &ServerBinary) -> Server {
    Server::builder().binary(&b.path).start()
}

/// Syncs `from` into `to` with `extra` flags; returns ferry's output on failure.
fn sync_pair(
    from: &ServerBinary,
    to: &ServerBinary,
    fill: impl Fn(&Server),
    extra: &[&str],
) -> Result<(), String> {
    let source = start(from);
    let target = start(to);
    fill(&source);
    let mut args = vec!["--mode", "full"];
    args.extend_from_slice(extra);
    let mut ferry = Ferry::sync(&source.url(), &target.url(), &args);
    let status = ferry.wait(LONG);
    if !status.success() {
        return Err(ferry.output());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_same_data(&source, &target)
    }))
    .map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{msg}\n{}", ferry.output())
    })
}

/// Runs `check` for every ordered pair, then fails listing every pair that failed.
fn every_pair(
    name: &str,
    mut check: impl FnMut(&ServerBinary, &ServerBinary) -> Result<(), String>,
) {
    let all = servers();
    let mut failed = Vec::new();
    let mut passed = 0;
    for from in &all {
        for to in &all {
            if from.label == to.label {
                continue;
            }
            match check(from, to) {
                Ok(()) => passed += 1,
                Err(e) => {
                    eprintln!("{name}: {} -> {} FAILED:\n{e}", from.label, to.label);
                    failed.push(format!("{} -> {}", from.label, to.label));
                }
            }
        }
    }
    eprintln!("{name}: {passed} pairs passed, {} failed", failed.len());
    assert!(failed.is_empty(), "{name}: failed pairs: {failed:?}");
}

#[test]
fn cross_version_full_sync_every_pair() {
    every_pair("every type", |from, to| {
        sync_pair(from, to, |s| populate_every_type(s, 1), &[])
    });
}
