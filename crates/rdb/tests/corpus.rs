//! A small corpus of RDB files written by every server version we could get
//! (`tests/corpus/<label>.rdb`, made by `scripts/make-rdb-corpus.sh`, which runs the ignored
//! test [`make_corpus`] here): each must parse and decode to the dataset below, which every
//! version since Redis 5.0 can hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_rdb::{decode_value_in, Item, Parser, Value};
use ferry_testkit::versions::available_servers;
use ferry_testkit::Server;

/// Absolute expiry used by the dataset (2100-01-01).
const FAR: i64 = 4_102_444_800_000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// The commands that write the dataset; `field_ttl` for servers with hash field TTLs.
fn dataset_commands(field_ttl: bool) -> Vec<Vec<Vec<u8>>> {
    let mut c = vec![
        cmd(&["FLUSHALL"]),
        cmd(&["SET", "s:short", "hello"]),
        cmd(&["SET", "s:int", "12345"]),
        cmd(&["SET", "s:long", &"abc".repeat(1000)]),
        cmd(&["RPUSH", "l:small", "a", "b", "1", "-3"]),
        cmd(&["SADD", "set:int", "1", "2", "3", "65536"]),
        cmd(&["SADD", "set:small", "apple", "banana"]),
        cmd(&["ZADD", "z:small", "1", "one", "2.5", "two", "-inf", "minus"]),
        cmd(&["HSET", "h:small", "f1", "v1", "f2", "2"]),
        cmd(&["SET", "ttl:1", "v"]),
        cmd(&["PEXPIREAT", "ttl:1", &FAR.to_string()]),
    ];
    let mut l = cmd(&["RPUSH", "l:large"]);
    l.extend((0..1000).map(|i| format!("item-{i}").into_bytes()));
    let mut s = cmd(&["SADD", "set:large"]);
    s.extend((0..600).map(|i| format!("m-{i}").into_bytes()));
    let mut z = cmd(&["ZADD", "z:large"]);
    for i in 0..300 {
        z.push(format!("{}", i as f64 / 7.0).into_bytes());
        z.push(format!("zm-{i}").into_bytes());
    }
    let mut h = cmd(&["HSET", "h:large"]);
    for i in 0..600 {
        h.push(format!("f-{i}").into_bytes());
        h.push(format!("v-{i}").into_bytes());
    }
    c.extend([l, s, z, h]);
    for i in 1..=50 {
        c.push(cmd(&[
            "XADD",
            "x:1",
            &format!("{i}-1"),
            "n",
            &i.to_string(),
        ]));
    }
    c.push(cmd(&["XGROUP", "CREATE", "x:1", "g", "0"]));
    c.push(cmd(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "alice",
        "COUNT",
        "5",
        "STREAMS",
        "x:1",
        ">",
    ]));
    c.push(cmd(&["XACK", "x:1", "g", "1-1"]));
    if field_ttl {
        c.push(cmd(&["HSET", "hf:ttl", "a", "1", "b", "2"]));
        c.push(cmd(&[
            "HPEXPIREAT",
            "hf:ttl",
            &FAR.to_string(),
            "FIELDS",
            "1",
            "a",
        ]));
    }
    c
}

/// A decoded value in a canonical text form: set members, hash fields and zset members
/// sorted; streams as entries, last id, groups with their pending ids and consumers.
fn canonical(v: &Value) -> String {
    fn s(b: &Bytes) -> String {
        String::from_utf8_lossy(b).into_owned()
    }
    match v {
        Value::String(b) => format!("string {}", s(b)),
        Value::List(l) => format!("list {:?}", l.iter().map(s).collect::<Vec<_>>()),
        Value::Set(m) => {
            let mut m: Vec<String> = m.iter().map(s).collect();
            m.sort();
            format!("set {m:?}")
        }
        Value::SortedSet(z) => {
            let mut z: Vec<(String, u64)> = z.iter().map(|(m, sc)| (s(m), sc.to_bits())).collect();
            z.sort();
            format!("zset {z:?}")
        }
        Value::Hash(h) => {
            let mut h: Vec<(String, String, Option<u64>)> =
                h.iter().map(|(f, v)| (s(f), s(v), None)).collect();
            h.sort();
            format!("hash {h:?}")
        }
        Value::HashWithTtl(h) => {
            let mut h: Vec<(String, String, Option<u64>)> =
                h.iter().map(|(f, v, t)| (s(f), s(v), *t)).collect();
            h.sort();
            format!("hash {h:?}")
        }
        Value::Stream(st) => {
            let mut out = format!(
                "stream last={} entries={:?}",
                st.last_id,
                st.entries
                    .iter()
                    .map(|e| (
                        e.id.to_string(),
                        e.fields
                            .iter()
                            .map(|(f, v)| (s(f), s(v)))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
            for g in &st.groups {
                out.push_str(&format!(
                    " group {} last={} pel={:?}",
                    s(&g.name),
                    g.last_id,
                    g.pending
                        .iter()
                        .map(|p| (p.id.to_string(), p.delivery_count))
                        .collect::<Vec<_>>()
                ));
                for c in &g.consumers {
                    out.push_str(&format!(
                        " consumer {} {:?}",
                        s(&c.name),
                        c.pending.iter().map(|p| p.to_string()).collect::<Vec<_>>()
                    ));
                }
            }
            out
        }
        Value::Module { module_id, .. } => format!("module {module_id}"),
    }
}

/// What the dataset decodes to: key → (canonical value, expire).
fn expected(field_ttl: bool) -> BTreeMap<String, (String, Option<i64>)> {
    let b = |s: &str| Bytes::from(s.to_string());
    let mut e = BTreeMap::new();
    let mut put = |k: &str, v: Value, ttl: Option<i64>| {
        e.insert(k.to_string(), (canonical(&v), ttl));
    };
    put("s:short", Value::String(b("hello")), None);
    put("s:int", Value::String(b("12345")), None);
    put("s:long", Value::String(b(&"abc".repeat(1000))), None);
    put(
        "l:small",
        Value::List(["a", "b", "1", "-3"].map(b).to_vec()),
        None,
    );
    put(
        "set:int",
        Value::Set(["1", "2", "3", "65536"].map(b).to_vec()),
        None,
    );
    put(
        "set:small",
        Value::Set(["apple", "banana"].map(b).to_vec()),
        None,
    );
    put(
        "z:small",
        Value::SortedSet(vec![
            (b("one"), 1.0),
            (b("two"), 2.5),
            (b("minus"), f64::NEG_INFINITY),
        ]),
        None,
    );
    put(
        "h:small",
        Value::Hash(vec![(b("f1"), b("v1")), (b("f2"), b("2"))]),
        None,
    );
    put("ttl:1", Value::String(b("v")), Some(FAR));
    put(
        "l:large",
        Value::List((0..1000).map(|i| b(&format!("item-{i}"))).collect()),
        None,
    );
    put(
        "set:large",
        Value::Set((0..600).map(|i| b(&format!("m-{i}"))).collect()),
        None,
    );
    put(
        "z:large",
        Value::SortedSet(
            (0..300)
                .map(|i| (b(&format!("zm-{i}")), i as f64 / 7.0))
                .collect(),
        ),
        None,
    );
    put(
        "h:large",
        Value::Hash(
            (0..600)
                .map(|i| (b(&format!("f-{i}")), b(&format!("v-{i}"))))
                .collect(),
        ),
        None,
    );
    let id = |ms: u64| ferry_rdb::StreamId { ms, seq: 1 };
    let pending: Vec<_> = (2..=5).map(id).collect();
    put(
        "x:1",
        Value::Stream(ferry_rdb::Stream {
            entries: (1..=50)
                .map(|i| ferry_rdb::StreamEntry {
                    id: id(i),
                    fields: vec![(b("n"), b(&i.to_string()))],
                })
                .collect(),
            length: 50,
            last_id: id(50),
            first_id: None,
            max_deleted_id: None,
            entries_added: None,
            groups: vec![ferry_rdb::ConsumerGroup {
                name: b("g"),
                last_id: id(5),
                entries_read: None,
                pending: pending
                    .iter()
                    .map(|p| ferry_rdb::PendingEntry {
                        id: *p,
                        delivery_time_ms: 0,
                        delivery_count: 1,
                    })
                    .collect(),
                consumers: vec![ferry_rdb::Consumer {
                    name: b("alice"),
                    seen_time_ms: 0,
                    active_time_ms: None,
                    pending,
                }],
            }],
        }),
        None,
    );
    if field_ttl {
        put(
            "hf:ttl",
            Value::HashWithTtl(vec![
                (b("a"), b("1"), Some(FAR as u64)),
                (b("b"), b("2"), None),
            ]),
            None,
        );
    }
    e
}

/// Redis 7.4+ and Valkey 9+ store hash field TTLs (Valkey in its own type 22).
fn has_field_ttl(label: &str) -> bool {
    if let Some(v) = label.strip_prefix("valkey-") {
        return v.split('.').next().and_then(|m| m.parse::<u32>().ok()) >= Some(9);
    }
    let Some(v) = label
        .strip_prefix("redis-")
        .or_else(|| label.strip_prefix("system-"))
    else {
        return false;
    };
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (7, 4)
}

#[test]
fn corpus_files_decode_to_the_dataset() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "rdb"));
    files.sort();
    assert!(
        !files.is_empty(),
        "no RDB files in {}",
        corpus_dir().display()
    );
    for path in files {
        let label = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let mut p = Parser::new(std::fs::File::open(&path).unwrap());
        let mut got = BTreeMap::new();
        while let Some(item) = p.next_item().unwrap_or_else(|e| panic!("{label}: {e}")) {
            if let Item::Entry(e) = item {
                let v = decode_value_in(p.dialect(), e.value_type, &e.payload)
                    .unwrap_or_else(|err| panic!("{label}: key {:?}: {err}", e.key));
                got.insert(
                    String::from_utf8_lossy(&e.key).into_owned(),
                    (canonical(&v), e.expire_ms),
                );
            }
        }
        let want = expected(has_field_ttl(&label));
        for (k, w) in &want {
            let g = got.get(k);
            // Stream metadata beyond entries and PEL is version-dependent: compare entries,
            // last id, groups, pending ids and delivery counts only (as canonical does).
            assert_eq!(g, Some(w), "{label}: key {k}");
        }
        assert_eq!(
            got.len(),
            want.len(),
            "{label}: keys {:?}",
            got.keys().collect::<Vec<_>>()
        );
        eprintln!("{label}: RDB {:?}, {} keys ok", p.rdb_version(), got.len());
    }
}

/// Writes `tests/corpus/<label>.rdb` for every available server version. Run by
/// `scripts/make-rdb-corpus.sh`.
#[test]
#[ignore]
fn make_corpus() {
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for b in available_servers() {
        let server = Server::builder().binary(&b.path).start();
        let mut c = server.client();
        let cmds = dataset_commands(has_field_ttl(&b.label));
        for (cmd, r) in cmds.iter().zip(c.pipeline(&cmds).unwrap()) {
            assert!(
                !r.is_error(),
                "{}: {:?}: {r:?}",
                b.label,
                String::from_utf8_lossy(&cmd[0])
            );
        }
        c.cmd(&[b"SAVE"]).unwrap();
        let to = corpus_dir().join(format!("{}.rdb", b.label));
        std::fs::copy(server.dir().join("dump.rdb"), &to).unwrap();
        let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
        assert!(size < 200_000, "{} is {size} bytes", to.display());
        eprintln!("{} ({:?}): {} bytes", to.display(), b.version, size);
    }
}
