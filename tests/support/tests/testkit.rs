use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ferry_testkit::{
    assert_same_data, populate_every_type, wait_same_data, which, Client, Reply, Server,
};

fn encodings(server: &Server, keys: &[&str]) -> HashMap<String, String> {
    keys.iter()
        .map(|k| {
            (
                k.to_string(),
                server.cmd(&["OBJECT", "ENCODING", k]).as_str(),
            )
        })
        .collect()
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic>".to_string()
    }
}

#[test]
fn default_server_basics() {
    let server = Server::start();
    assert!(server.port() > 0 && server.port() < 55000);
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert!(server.pid() > 0);
    assert!(server.dir().is_dir());
    assert_eq!(server.cmd(&["PING"]).as_str(), "PONG");
    assert_eq!(server.digest(), "0".repeat(40));
    assert_eq!(
        server.cmd(&["CONFIG", "GET", "save"]).as_array()[1].as_str(),
        ""
    );

    let mut c = server.client();
    assert_eq!(c.cmd_str(&["SET", "k", "v"]).as_str(), "OK");
    assert_eq!(
        c.cmd(&[b"GET", b"k"]).unwrap(),
        Reply::Bulk(Some(b"v".to_vec()))
    );
    assert!(c.cmd(&[b"GET", b"nope"]).unwrap().is_nil());
    assert!(matches!(c.cmd(&[b"NOSUCHCMD"]).unwrap(), Reply::Error(_)));
    let replies = c
        .pipeline(&[
            vec![b"INCR".to_vec(), b"n".to_vec()],
            vec![b"INCR".to_vec(), b"n".to_vec()],
            vec![b"LPUSH".to_vec(), b"k".to_vec(), b"x".to_vec()],
        ])
        .unwrap();
    assert_eq!(replies[1].as_int(), 2);
    assert!(replies[2].is_error());
    assert_ne!(server.digest(), "0".repeat(40));

    let err = catch_unwind(AssertUnwindSafe(|| server.cmd(&["LPUSH", "k", "x"])))
        .expect_err("error reply must panic");
    assert!(panic_message(err).contains("WRONGTYPE"));

    server.cmd(&["SAVE"]);
    assert!(server.dir().join("dump.rdb").exists());
    assert!(server.log().contains("Ready to accept connections"));

    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "temp dir must be removed on drop");
    assert!(which("redis-server").is_some());
}

#[test]
fn kill_stops_the_server() {
    let mut server = Server::start();
    let addr = server.addr();
    server.kill();
    assert!(Client::connect(&addr).is_err());
    server.kill(); // idempotent
}

#[test]
fn password_server() {
    let server = Server::builder().password("s3cret pw").start();
    assert_eq!(
        server.url(),
        format!("redis://:s3cret%20pw@127.0.0.1:{}", server.port())
    );
    assert_eq!(server.client().cmd_str(&["PING"]).as_str(), "PONG");
    let mut anon = Client::connect(&server.addr()).unwrap();
    match anon.cmd(&[b"GET", b"x"]).unwrap() {
        Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("expected NOAUTH, got {other:?}"),
    }
}

#[test]
fn acl_user_server() {
    let server = Server::builder().acl_user("ferry", "pw1").start();
    assert_eq!(
        server.url(),
        format!("redis://ferry:pw1@127.0.0.1:{}", server.port())
    );
    assert_eq!(server.cmd(&["ACL", "WHOAMI"]).as_str(), "ferry");
    server.cmd(&["SET", "k", "v"]);
    let mut anon = Client::connect(&server.addr()).unwrap();
    assert!(anon.cmd(&[b"GET", b"k"]).unwrap().is_error());
}

#[test]
fn populate_covers_compact_and_large_encodings() {
    let server = Server::start();
    let t = Instant::now();
    populate_every_type(&server, 1);
    assert!(t.elapsed() < Duration::from_secs(3), "populate too slow");
    let v = server.version();

    let enc = encodings(
        &server,
        &[
            "str:short",
            "str:int",
            "str:long",
            "list:small",
            "list:large",
            "list:longelems",
            "set:int",
            "set:small",
            "set:large",
            "set:intlarge",
            "zset:small",
            "zset:large",
            "zset:longmember",
            "hash:small",
            "hash:large",
            "hash:longval",
        ],
    );
    let e = |k: &str| enc[k].as_str();
    let compact = ["listpack", "ziplist"];
    assert_eq!(e("str:short"), "embstr");
    assert_eq!(e("str:int"), "int");
    assert_eq!(e("str:long"), "raw");
    // Lists have a listpack encoding only since 7.2; before that every list is a quicklist.
    if v >= (7, 2, 0) {
        assert!(compact.contains(&e("list:small")), "{enc:?}");
    } else {
        assert_eq!(e("list:small"), "quicklist");
    }
    assert!(["quicklist", "linkedlist"].contains(&e("list:large")));
    assert!(["quicklist", "linkedlist"].contains(&e("list:longelems")));
    assert_eq!(e("set:int"), "intset");
    // Small non-integer sets are listpacks only since 7.2.
    if v >= (7, 2, 0) {
        assert_eq!(e("set:small"), "listpack");
    } else {
        assert_eq!(e("set:small"), "hashtable");
    }
    assert_eq!(e("set:large"), "hashtable");
    assert_eq!(e("set:intlarge"), "hashtable");
    assert!(compact.contains(&e("zset:small")), "{enc:?}");
    assert_eq!(e("zset:large"), "skiplist");
    assert_eq!(e("zset:longmember"), "skiplist");
    assert!(compact.contains(&e("hash:small")), "{enc:?}");
    assert_eq!(e("hash:large"), "hashtable");
    assert_eq!(e("hash:longval"), "hashtable");

    assert_eq!(server.cmd(&["TYPE", "stream:1"]).as_str(), "stream");
    assert_eq!(server.cmd(&["XLEN", "stream:1"]).as_int(), 150);
    let groups = server.cmd(&["XINFO", "GROUPS", "stream:1"]).as_array();
    assert_eq!(groups.len(), 2);
    let pending = server.cmd(&["XPENDING", "stream:1", "grp1"]).as_array();
    assert_eq!(pending[0].as_int(), 9);
    let pending2 = server.cmd(&["XPENDING", "stream:1", "grp2"]).as_array();
    assert_eq!(pending2[0].as_int(), 0);

    let pttl = server.cmd(&["PTTL", "ttl:ms"]).as_int();
    assert!(pttl > 590_000 && pttl <= 600_500, "{pttl}");
    assert!(server.cmd(&["TTL", "ttl:hours"]).as_int() > 3600);

    let keyspace = server.info("keyspace");
    for db in ["db0", "db1", "db15"] {
        assert!(keyspace.contains_key(db), "{keyspace:?}");
    }
    let total: i64 = [0, 1, 15]
        .iter()
        .map(|db| {
            let mut c = server.client();
            c.cmd_str(&["SELECT", &db.to_string()]);
            c.cmd_str(&["DBSIZE"]).as_int()
        })
        .sum();
    assert!((150..=260).contains(&total), "{total} keys");
    assert_eq!(
        server.cmd_bytes(&[b"GET", b"bin\0key\r\n"]).as_bytes(),
        b"v"
    );
}

#[test]
fn populate_scale_adds_keys() {
    let a = Server::start();
    populate_every_type(&a, 3);
    assert_eq!(a.cmd(&["EXISTS", "key:299"]).as_int(), 1);
}

#[test]
fn replica_matches_and_diff_names_the_key() {
    let master = Server::builder().password("mpw").start();
    populate_every_type(&master, 1);
    let replica = Server::builder()
        .replica_of(&master)
        .diskless(true)
        .arg("replica-read-only", "no")
        .start();
    master.wait_replica_synced(&replica, Duration::from_secs(10));
    assert_same_data(&master, &replica);
    assert_eq!(master.digest(), replica.digest());

    // Writes after the sync are replicated too.
    master.cmd(&["SET", "after-sync", "1"]);
    wait_same_data(&master, &replica, Duration::from_secs(5));

    // A key written only on the replica must be reported.
    let mut c = replica.client();
    c.cmd_str(&["SELECT", "1"]);
    c.cmd_str(&["SET", "only-on-replica", "x"]);
    let err = catch_unwind(AssertUnwindSafe(|| assert_same_data(&master, &replica)))
        .expect_err("assert_same_data must panic");
    let msg = panic_message(err);
    assert!(msg.contains("only-on-replica"), "{msg}");
    assert!(msg.contains("only in target"), "{msg}");
    assert!(msg.contains("db1"), "{msg}");
    assert!(!msg.contains("key:1\""), "unrelated keys listed: {msg}");

    // A changed value is reported as such.
    c.cmd_str(&["DEL", "only-on-replica"]);
    c.cmd_str(&["SELECT", "0"]);
    c.cmd_str(&["HSET", "hash:large", "field-1", "changed"]);
    let err = catch_unwind(AssertUnwindSafe(|| assert_same_data(&master, &replica)))
        .expect_err("assert_same_data must panic");
    let msg = panic_message(err);
    assert!(msg.contains("\"hash:large\": value differs"), "{msg}");
}

#[test]
fn ttl_within_tolerance_is_same_data() {
    let a = Server::start();
    let b = Server::start();
    for s in [&a, &b] {
        s.cmd(&["SET", "k", "v"]);
        s.cmd(&["SET", "t", "v", "EX", "100"]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_same_data(&a, &b);
    b.cmd(&["PERSIST", "t"]);
    let err = catch_unwind(AssertUnwindSafe(|| assert_same_data(&a, &b))).unwrap_err();
    let msg = panic_message(err);
    assert!(msg.contains("\"t\": TTL differs"), "{msg}");
}

#[test]
fn many_servers_in_parallel() {
    let handles: Vec<_> = (0..6).map(|_| std::thread::spawn(Server::start)).collect();
    let servers: Vec<Server> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = servers.iter().map(Server::port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6);
}

#[test]
fn acl_master_disk_based_replica() {
    let master = Server::builder().acl_user("repl", "rpw").start();
    populate_every_type(&master, 1);
    let replica = Server::builder()
        .replica_of(&master)
        .diskless(false)
        .arg("save", "900 1")
        .start();
    assert_eq!(
        replica.cmd(&["CONFIG", "GET", "save"]).as_array()[1].as_str(),
        "900 1"
    );
    master.wait_replica_synced(&replica, Duration::from_secs(10));
    assert_same_data(&master, &replica);
    assert_eq!(master.digest(), replica.digest());
}

#[test]
fn stream_group_differences_are_reported() {
    let a = Server::start();
    let b = Server::start();
    for s in [&a, &b] {
        s.cmd(&["XADD", "s", "1-1", "f", "v"]);
        s.cmd(&["XADD", "s", "1-2", "f", "v"]);
        s.cmd(&["XGROUP", "CREATE", "s", "g", "0"]);
        s.cmd(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "COUNT",
            "1",
            "STREAMS",
            "s",
            ">",
        ]);
    }
    assert_same_data(&a, &b);
    b.cmd(&["XACK", "s", "g", "1-1"]);
    assert_eq!(a.digest(), b.digest(), "redis digests ignore the PEL");
    let err = catch_unwind(AssertUnwindSafe(|| assert_same_data(&a, &b))).unwrap_err();
    let msg = panic_message(err);
    assert!(
        msg.contains("\"s\": stream groups/metadata differ"),
        "{msg}"
    );
    assert!(!ferry_testkit::same_data(&a, &b));
}

#[test]
fn server_and_client_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Server>();
    send_sync::<Reply>();
    send::<Client>();
}
