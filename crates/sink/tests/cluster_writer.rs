//! The cluster writer against a real cluster. Its `still_valid` hook: a writer whose lease
//! has lapsed sends nothing more, not even the batches a lost connection left unanswered;
//! with the lease still valid the same loss is recovered by resending them. Its snapshot
//! batches: keys land once each, and an existing key is named in the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::{Event, ShardStats};
use ferry_resp::Endpoint;
use ferry_sink::fence::StillValid;
use ferry_sink::{checkpoint, write_cluster, TargetError, WriteSummary, WriterOptions};
use ferry_testkit::{Cluster, Server};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CLIENT_NAME: &str = "ferry-fence-test-g1";
const LONG: Duration = Duration::from_secs(60);

struct Run {
    rt: tokio::runtime::Runtime,
    tx: Option<mpsc::Sender<Event>>,
    writer: tokio::task::JoinHandle<Result<WriteSummary, TargetError>>,
    valid: Arc<AtomicBool>,
    offset: u64,
}

impl Run {
    fn start(cluster: &Cluster) -> Run {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let port = cluster.masters()[0].port();
        let mut opts = WriterOptions::new(Endpoint::new("127.0.0.1", port));
        opts.checkpoint_key = Some(checkpoint::key("fence-test", "0"));
        opts.client_name = Some(CLIENT_NAME.to_string());
        let valid = Arc::new(AtomicBool::new(true));
        let v = valid.clone();
        opts.still_valid = Some(StillValid::new(move || v.load(Ordering::SeqCst)));
        let (tx, rx) = mpsc::channel(1024);
        let writer = rt.spawn(write_cluster(
            opts,
            rx,
            Arc::new(ShardStats::default()),
            CancellationToken::new(),
        ));
        let mut run = Run {
            rt,
            tx: Some(tx),
            writer,
            valid,
            offset: 1000,
        };
        run.send(Event::Continue {
            replid: "f".repeat(40),
            offset: 1000,
        });
        run
    }

    /// Queues an event; a writer that stopped takes no more (its result says why).
    fn send(&mut self, ev: Event) {
        let _ = self.tx.as_ref().unwrap().blocking_send(ev);
    }

    /// `SET <prefix>:<i> <i>` for each i, as replicated commands.
    fn set_keys(&mut self, prefix: &str, n: usize) {
        for i in 0..n {
            self.offset += 40;
            let argv = vec![
                Bytes::from_static(b"SET"),
                Bytes::from(format!("{prefix}:{i}")),
                Bytes::from(i.to_string()),
            ];
            let offset = self.offset;
            self.send(Event::Command {
                db: 0,
                argv,
                offset,
            });
        }
    }

    /// One replicated command.
    fn command(&mut self, words: &[&str]) {
        self.offset += 40;
        let argv = words.iter().map(|w| Bytes::from(w.to_string())).collect();
        let offset = self.offset;
        self.send(Event::Command {
            db: 0,
            argv,
            offset,
        });
    }

    /// Closes the event queue and waits for the writer's result.
    fn finish(mut self) -> Result<WriteSummary, TargetError> {
        self.tx = None;
        let writer = self.writer;
        self.rt.block_on(async {
            tokio::time::timeout(LONG, writer)
                .await
                .expect("the writer did not stop")
                .expect("the writer panicked")
        })
    }
}

fn count_keys(cluster: &Cluster, prefix: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let key = format!("{prefix}:{i}");
            !cluster.cmd_routed(&[b"GET", key.as_bytes()]).is_nil()
        })
        .count()
}

fn wait_keys(cluster: &Cluster, prefix: &str, n: usize) {
    let deadline = Instant::now() + LONG;
    while count_keys(cluster, prefix, n) < n {
        assert!(Instant::now() < deadline, "{prefix}:* never all arrived");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Blocked clients (a paused write counts) on a node.
fn blocked(node: &Server) -> u64 {
    node.info("clients")["blocked_clients"].parse().unwrap()
}

/// Pauses writes on every master, sends `after:*`, and waits until each master holds one of
/// the writer's batches blocked by the pause (sent, unanswered).
fn send_into_pause(run: &mut Run, cluster: &Cluster, n: usize) {
    for m in cluster.masters() {
        assert_eq!(m.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).as_str(), "OK");
    }
    run.send_keys_after(n);
    let deadline = Instant::now() + LONG;
    while !cluster.masters().iter().all(|m| blocked(m) > 0) {
        assert!(
            Instant::now() < deadline,
            "the writer's batches never reached every master"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

impl Run {
    fn send_keys_after(&mut self, n: usize) {
        self.set_keys("after", n);
    }
}

/// Closes the writer's connections on every master, then lets the masters write again: the
/// batches they held are discarded with the connections.
fn kill_writer_connections_and_unpause(cluster: &Cluster) {
    for m in cluster.masters() {
        let list = m.cmd(&["CLIENT", "LIST", "TYPE", "normal"]).as_str();
        for line in list.lines() {
            let field = |k: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            };
            if field("name") == Some(CLIENT_NAME) {
                let id = field("id").unwrap();
                m.cmd(&["CLIENT", "KILL", "ID", id]);
            }
        }
        assert_eq!(m.cmd(&["CLIENT", "UNPAUSE"]).as_str(), "OK");
    }
}

#[test]
fn a_lapsed_lease_stops_the_cluster_writer_before_it_resends() {
    let cluster = Cluster::start(3, 0);
    let mut run = Run::start(&cluster);
    run.set_keys("before", 200);
    wait_keys(&cluster, "before", 200);

    send_into_pause(&mut run, &cluster, 200);
    run.valid.store(false, Ordering::SeqCst);
    kill_writer_connections_and_unpause(&cluster);

    // More events after the lease lapsed: none of them may be written either.
    let offset = run.offset + 40;
    run.send(Event::Command {
        db: 0,
        argv: vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"late"),
            Bytes::from_static(b"1"),
        ],
        offset,
    });
    let result = run.finish();
    assert!(
        matches!(result, Err(TargetError::Fenced { .. })),
        "expected a fenced writer, got {result:?}"
    );
    assert_eq!(count_keys(&cluster, "before", 200), 200);
    assert_eq!(
        count_keys(&cluster, "after", 200),
        0,
        "a batch was resent after the lease lapsed"
    );
    assert!(cluster.cmd_routed(&[b"GET", b"late"]).is_nil());
    // Nor does anything arrive later: no writer connection is left on any master.
    for m in cluster.masters() {
        let list = m.cmd(&["CLIENT", "LIST", "TYPE", "normal"]).as_str();
        assert!(
            !list.contains(CLIENT_NAME),
            "a writer connection is left: {list}"
        );
    }
}

#[test]
fn a_valid_lease_resends_what_a_lost_connection_left_unanswered() {
    let cluster = Cluster::start(3, 0);
    let mut run = Run::start(&cluster);
    run.set_keys("before", 200);
    wait_keys(&cluster, "before", 200);

    send_into_pause(&mut run, &cluster, 200);
    kill_writer_connections_and_unpause(&cluster);
    wait_keys(&cluster, "after", 200);
    let summary = run.finish().expect("the writer failed");
    assert_eq!(summary.commands, 400);
}

#[test]
fn a_lease_lapsed_before_the_start_writes_nothing() {
    let cluster = Cluster::start(3, 0);
    let mut run = Run::start(&cluster);
    run.valid.store(false, Ordering::SeqCst);
    run.set_keys("never", 50);
    let result = run.finish();
    assert!(
        matches!(result, Err(TargetError::Fenced { .. })),
        "expected a fenced writer, got {result:?}"
    );
    for m in cluster.masters() {
        assert_eq!(m.cmd(&["DBSIZE"]).as_int(), 0, "{} was written", m.addr());
    }
}

fn entry(key: &str) -> Event {
    Event::Entry(ferry_rdb::Entry {
        db: 0,
        key: Bytes::from(key.to_string()),
        value_type: 0,
        // An RDB string: length, then the bytes.
        payload: Bytes::from_static(b"\x05hello"),
        expire_ms: None,
        idle: None,
        freq: None,
    })
}

fn snapshot(run: &mut Run, keys: &[String]) {
    run.send(Event::SnapshotBegin {
        replid: "s".repeat(40),
        offset: 1,
        rdb_size: None,
    });
    run.send(Event::SnapshotHeader { rdb_version: 9 });
    for k in keys {
        run.send(entry(k));
    }
    run.send(Event::SnapshotEnd {
        rdb_version: 9,
        keys: keys.len() as u64,
    });
}

/// The snapshot's keys land on the masters of their slots, each once; the writer's own
/// bookkeeping (slot batches of many keys per master) leaves no key behind or twice.
#[test]
fn snapshot_keys_land_in_their_slots() {
    let cluster = Cluster::start(3, 0);
    let mut run = Run::start(&cluster);
    let keys: Vec<String> = (0..5000).map(|i| format!("snap:{i}")).collect();
    snapshot(&mut run, &keys);
    let summary = run.finish().expect("the writer failed");
    assert_eq!(summary.keys, 5000);
    let total: i64 = cluster
        .masters()
        .iter()
        .map(|m| m.cmd(&["DBSIZE"]).as_int())
        .sum();
    // The keys and the job's global checkpoint.
    assert_eq!(total, 5001);
    for k in keys.iter().step_by(97) {
        assert_eq!(cluster.cmd_routed_str(&["GET", k]).as_str(), "hello");
    }
}

/// A snapshot key that already exists on the target (no overwrite) stops the writer with an
/// error naming that key, read back from the command it sent.
#[test]
fn an_existing_key_is_named_in_the_error() {
    let cluster = Cluster::start(3, 0);
    cluster.cmd_routed_str(&["SET", "snap:busy", "there"]);
    let mut run = Run::start(&cluster);
    let keys = vec!["snap:a".to_string(), "snap:busy".to_string()];
    snapshot(&mut run, &keys);
    match run.finish() {
        Err(TargetError::KeyExists { key, .. }) => assert_eq!(key, "snap:busy"),
        other => panic!("expected KeyExists for snap:busy, got {other:?}"),
    }
    assert_eq!(
        cluster.cmd_routed_str(&["GET", "snap:busy"]).as_str(),
        "there"
    );
}

/// Snapshot keys are sent many to one request buffer per master; when the master refuses
/// some of them (their slot is being migrated: `ASK`) and applies the others, only the
/// refused ones are sent again, until the slot's new owner takes them. Every key lands
/// once, and the count of keys applied is exact.
#[test]
fn snapshot_keys_refused_by_a_migrating_slot_are_resent_alone() {
    let cluster = Cluster::start(3, 0);
    let slot = cluster.keyslot(b"mig");
    let from = cluster.slot_owner(slot);
    let to = cluster
        .master_indices()
        .into_iter()
        .find(|&m| m != from)
        .expect("another master");
    let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
    let s = slot.to_string();
    cluster
        .node(to)
        .cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
    cluster
        .node(from)
        .cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);

    let mut run = Run::start(&cluster);
    // The migrating slot's keys between the others, so that they share request buffers.
    let mut keys = Vec::new();
    for i in 0..3000 {
        keys.push(format!("snap:{i}"));
        if i % 50 == 0 {
            keys.push(format!("{{mig}}:{}", i / 50));
        }
    }
    snapshot(&mut run, &keys);
    // Everything else lands while the slot's keys are refused (`ASK`: the old owner does
    // not have them) and wait.
    wait_keys(&cluster, "snap", 3000);
    thread::sleep(Duration::from_millis(300));
    for m in cluster.masters() {
        assert_eq!(
            m.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &s]).as_int(),
            0,
            "{} holds a key of the migrating slot",
            m.addr()
        );
    }
    assert!(!run.writer.is_finished(), "the writer gave up");
    // The migration ends: the new owner serves the slot, the old one answers `MOVED`.
    cluster
        .node(to)
        .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
    cluster
        .node(from)
        .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
    for i in cluster.master_indices() {
        if i != from && i != to {
            cluster
                .node(i)
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
    }
    let summary = run.finish().expect("the writer failed");
    assert_eq!(summary.keys, keys.len() as u64);
    assert_eq!(
        cluster
            .node(to)
            .cmd(&["CLUSTER", "COUNTKEYSINSLOT", &s])
            .as_int(),
        60
    );
    let total: i64 = cluster
        .masters()
        .iter()
        .map(|m| m.cmd(&["DBSIZE"]).as_int())
        .sum();
    // The keys and the job's global checkpoint.
    assert_eq!(total, keys.len() as i64 + 1);
    for k in keys.iter().step_by(7) {
        assert_eq!(cluster.cmd_routed_str(&["GET", k]).as_str(), "hello");
    }
}

/// A stream command the target rejects inside one of the writer's transactions stops the
/// writer with a permanent error naming that command and its key (read back from the bytes
/// sent) and giving the target's message: an error in `EXEC`'s replies, and a command
/// refused when queued.
#[test]
fn a_rejected_stream_command_is_named() {
    let cluster = Cluster::start(3, 0);
    cluster.cmd_routed_str(&["RPUSH", "list", "x"]);
    let cases: [(&[&str], &str, &str, &str); 2] = [
        (&["INCR", "list"], "INCR", "list", "WRONGTYPE"),
        (
            &["SET", "lonely"],
            "SET",
            "lonely",
            "wrong number of arguments",
        ),
    ];
    for (words, command_is, key_is, message_has) in cases {
        let mut run = Run::start(&cluster);
        run.set_keys("before", 20);
        run.command(words);
        match run.finish() {
            Err(TargetError::CommandFailed {
                command,
                key,
                message,
                ..
            }) => {
                assert_eq!(command, command_is);
                assert_eq!(key, key_is);
                assert!(message.contains(message_has), "{message}");
            }
            other => panic!("expected {command_is} to be rejected, got {other:?}"),
        }
    }
    assert_eq!(count_keys(&cluster, "before", 20), 20);
}

/// The offset the job's global checkpoint names, if any.
fn global_offset(cluster: &Cluster) -> Option<u64> {
    let value = cluster.cmd_routed(&[b"GET", &checkpoint::key("fence-test", "0")]);
    if value.is_nil() {
        return None;
    }
    let text = String::from_utf8_lossy(&value.as_bytes()).into_owned();
    text.split(' ').nth(2).and_then(|o| o.parse().ok())
}

fn wait_global(cluster: &Cluster, offset: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while global_offset(cluster) != Some(offset) {
        assert!(
            Instant::now() < deadline,
            "the global checkpoint names {:?}, the last event's offset is {offset}",
            global_offset(cluster)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The job's global checkpoint catches up with the last stream event even when nothing
/// follows it: the position reached while an earlier checkpoint write was in flight (held
/// here by a write pause on the master that holds the checkpoint) is written once that
/// write is answered.
#[test]
fn the_global_checkpoint_reaches_the_last_event_without_a_next_one() {
    let cluster = Cluster::start(3, 0);
    let global = cluster.slot_owner(cluster.keyslot(&checkpoint::key("fence-test", "0")));
    // Keys the other masters serve: they are applied while the checkpoint's master pauses.
    let keys: Vec<String> = (0..400)
        .map(|i| format!("elsewhere:{i}"))
        .filter(|k| cluster.slot_owner(cluster.keyslot(k.as_bytes())) != global)
        .take(100)
        .collect();
    let mut run = Run::start(&cluster);
    run.command(&["SET", &keys[0], "0"]);
    wait_global(&cluster, run.offset, Duration::from_secs(10));
    cluster
        .node(global)
        .cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    for k in &keys[1..] {
        run.command(&["SET", k, "1"]);
    }
    let last = run.offset;
    wait_global(&cluster, last, Duration::from_secs(10));
    // The event queue is still open: the writer had nothing to wait for.
    assert!(!run.writer.is_finished());
    run.finish().expect("the writer failed");
    for k in &keys[1..] {
        assert_eq!(cluster.cmd_routed_str(&["GET", k]).as_str(), "1");
    }
}
