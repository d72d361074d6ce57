//! `ferry serve` as a process, driven by `ferry job …`: the CLI's view of the service.

use std::process::Command;
use std::time::Duration;

use crate::common::{wait_until, Ferry};
use ferry_testkit::Server;

/// `ferry serve` on a free port with a SQLite store in `dir` (and `--token t0ken` when
/// `token`); returns the process and the service's base URL.
fn start_serve(dir: &tempfile::TempDir, token: bool) -> (Ferry, String) {
    let store = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--store", &store];
    if token {
        args.extend_from_slice(&["--token", "t0ken"]);
    }
    // Port 0: the service picks a free port and prints it.
    let mut serve = Ferry::start(&args);
    serve.wait_for_output("ferry service on http://", Duration::from_secs(20));
    let server = serve
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("ferry service on "))
        .map(|u| u.trim_end_matches('/').to_string())
        .expect("service address");
    (serve, server)
}

/// Runs `ferry job --server URL <args>` to completion; returns (success, stdout+stderr).
fn job(server: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["job", "--server", server])
        .args(args)
        .env("FERRY_TOKEN", "t0ken")
        .output()
        .expect("run ferry job");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn job_commands_drive_a_running_service() {
    let source = Server::builder().password("pw'1").start();
    let target = Server::start();
    for i in 0..100 {
        source.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut serve, server) = start_serve(&dir, true);

    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"cli\"\ndescription = \"from the CLI\"\nsource = \"{}\"\ntarget = \"{}\"\n",
            source.url(),
            target.url()
        ),
    )
    .expect("write job.toml");
    let cfg = config.display().to_string();
    let (ok, out) = job(&server, &["create", "--config", &cfg, "--start"]);
    assert!(ok, "{out}");
    let mut last = String::new();
    wait_until("the job to be incremental", Duration::from_secs(60), || {
        last = job(&server, &["list"]).1;
        // The STATE column (the MODE column says "full+incremental" from the start).
        last.lines()
            .any(|l| l.split_whitespace().take(2).eq(["cli", "incremental"]))
    });
    assert!(
        last.contains("NAME") && last.contains("cli") && last.contains("100%"),
        "{last}"
    );
    let (ok, out) = job(&server, &["show", "cli"]);
    assert!(ok, "{out}");
    assert!(out.contains("Target transactions executed"), "{out}");
    assert!(!out.contains("pw'1"), "{out}");
    // One worker (SQLite: one process) runs the job's one shard, and the job's view
    // says so, with the node the shard is read from.
    let worker_id = serve
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("worker "))
        .expect("worker id")
        .to_string();
    assert!(out.contains(&worker_id), "{out}");
    // `job show` lists the shards: shard 0, its state, the node read and its worker.
    let row = out
        .lines()
        .skip_while(|l| !l.starts_with("Shards:"))
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no row for shard 0\n{out}"));
    assert!(
        row.contains("incremental") && row.contains(&source.addr()) && row.contains(&worker_id),
        "{out}"
    );
    let view: serde_json::Value = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{server}/api/v1/jobs/cli"))
                .bearer_auth("t0ken")
                .send()
                .await?
                .json()
                .await
        })
        .expect("GET the job");
    let shards = view["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 1, "{view}");
    assert_eq!(shards[0]["shard"], "0", "{view}");
    assert_eq!(
        shards[0]["worker"].as_str(),
        Some(worker_id.as_str()),
        "{view}"
    );
    assert_eq!(shards[0]["state"], "incremental", "{view}");
    assert_eq!(
        shards[0]["node"].as_str(),
        Some(source.addr().as_str()),
        "{view}"
    );

    // A second job of the same name is refused.
    let (ok, out) = job(&server, &["create", "--config", &cfg]);
    assert!(!ok && out.contains("409"), "{out}");

    let (ok, out) = job(&server, &["stop", "cli"]);
    assert!(ok && out.contains("stopped"), "{out}");
    let (ok, out) = job(&server, &["start", "cli"]);
    assert!(ok, "{out}");
    let (ok, out) = job(&server, &["delete", "cli"]);
    assert!(ok && out.contains("deleted job cli"), "{out}");
    assert_eq!(
        target.cmd(&["EXISTS", "ferry:checkpoint:cli:0"]).as_int(),
        0
    );
    let (ok, out) = job(&server, &["show", "cli"]);
    assert!(!ok && out.contains("404"), "{out}");

    // Without the token the service refuses.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["job", "--server", &server, "list"])
        .env_remove("FERRY_TOKEN")
        .output()
        .expect("run ferry job");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    serve.signal("TERM");
    assert!(
        !serve.output().contains("pw'1"),
        "a password is logged\n{}",
        serve.output()
    );
}

/// `ferry job show` with the job's source gone: the lag is unknown (and since when the
/// source is unreachable), not a reassuring 0.
#[test]
fn job_show_says_the_lag_is_unknown_while_the_source_is_unreachable() {
    let mut source = Server::start();
    let target = Server::start();
    source.cmd(&["SET", "k", "v"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_serve, server) = start_serve(&dir, true);
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"gone\"\nsource = \"{}\"\ntarget = \"{}\"\n",
            source.url(),
            target.url()
        ),
    )
    .expect("write job.toml");
    let cfg = config.display().to_string();
    let (ok, out) = job(&server, &["create", "--config", &cfg, "--start"]);
    assert!(ok, "{out}");
    let mut last = String::new();
    wait_until("the job to be incremental", Duration::from_secs(60), || {
        last = job(&server, &["show", "gone"]).1;
        last.lines()
            .any(|l| l.starts_with("Status") && l.ends_with("incremental"))
    });
    assert!(last.contains(" bytes, "), "a known lag: {last}");

    source.kill();
    wait_until("the lag to be unknown", Duration::from_secs(30), || {
        last = job(&server, &["show", "gone"]).1;
        last.contains("lag unknown (source unreachable for ")
    });
    assert!(!last.contains(" bytes, "), "{last}");
    assert!(last.contains("unknown"), "the shard's row too: {last}");
    let (_, list) = job(&server, &["list"]);
    assert!(list.contains("unknown"), "{list}");
}

fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// `ferry job create --config` carries what `ferry sync --config` honours (topology,
/// every address, use_replica as on/off), and refuses by name what a service job cannot
/// hold (TLS files, another read method, a file source) instead of dropping it.
#[test]
fn job_create_carries_every_field_or_refuses_it() {
    let master = Server::start();
    let replica = Server::builder().replica_of(&master).start();
    let target = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut serve, server) = start_serve(&dir, false);
    let write = |name: &str, extra: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nsource = \"redis://{},{}\"\ntarget = \"{}\"\n{extra}",
                master.addr(),
                replica.addr(),
                target.url()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["job", "--server", &server])
            .args(args)
            .output()
            .expect("run ferry job");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let cfg = write(
        "carried",
        "source_type = \"replica-set\"\nuse_replica = \"off\"\nmode = \"full\"\n",
    );
    let (ok, out) = run(&["create", "--config", &cfg]);
    assert!(ok, "{out}");
    let view: serde_json::Value =
        serde_json::from_str(&http_get(&server, "/api/v1/jobs/carried")).expect("job json");
    let text = view.to_string();
    assert!(text.contains("\"replica-set\""), "{view:#}");
    assert!(text.contains(&replica.addr()), "{view:#}");
    assert!(text.contains("\"use_replica\":false"), "{view:#}");
    for (name, extra, named) in [
        (
            "tls",
            "[source_tls]\nca_file = \"/etc/ca.pem\"\n",
            "[source_tls]",
        ),
        ("scan", "source_method = \"scan\"\n", "source_method"),
        ("auto", "source_type = \"auto\"\n", "not auto"),
    ] {
        let (ok, out) = run(&["create", "--config", &write(name, extra)]);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains(named), "{name}: {out}");
    }
    serve.signal("TERM");
}
