//! Valkey 9 hashes with field TTLs: a real `valkey-server` 9 writes them into a `VALKEY080`
//! RDB as its own type 22 (field, value, expire time in ms or -1, per field), a number that a
//! `REDIS` RDB uses for Redis 7.4's pre-release hash metadata. The file is made here, by the
//! server, then parsed (whole and streamed in chunks) and decoded; every field, value and
//! expire time must be what the server reports, and the server's own `DUMP` of each hash
//! must decode to the same.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_rdb::{decode_value_in, parse_dump_payload, BigValues, Dialect, Item, Parser, Value};
use ferry_testkit::versions::{server_binary, versions_required};
use ferry_testkit::Server;

/// Field -> (value, absolute expire time in ms).
type Fields = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

fn valkey9() -> Option<Server> {
    match server_binary("valkey-9") {
        Some(b) => Some(
            Server::builder()
                .binary(&b.path)
                .arg("enable-debug-command", "yes")
                .start(),
        ),
        None => {
            assert!(!versions_required(), "valkey-9 is required but missing");
            eprintln!("valkey-9 not available; skipped");
            None
        }
    }
}

fn fill(s: &Server) -> Vec<String> {
    ferry_testkit::populate_field_ttl_hashes(s)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// What the server holds: every field, its value and `HPEXPIRETIME`.
fn server_fields(s: &Server, key: &str) -> Fields {
    let all = s.cmd(&["HGETALL", key]).as_array();
    let mut out = Fields::new();
    for kv in all.chunks_exact(2) {
        let f = kv[0].as_bytes();
        let t = s.cmd_bytes(&[b"HPEXPIRETIME", key.as_bytes(), b"FIELDS", b"1", &f]);
        let t = t.as_array()[0].as_int();
        let t = (t >= 0).then_some(t as u64);
        out.insert(f, (kv[1].as_bytes(), t));
    }
    out
}

fn fields_of(v: &Value) -> Fields {
    let mut out = Fields::new();
    match v {
        Value::Hash(h) => {
            for (f, v) in h {
                out.insert(f.to_vec(), (v.to_vec(), None));
            }
        }
        Value::HashWithTtl(h) => {
            for (f, v, t) in h {
                out.insert(f.to_vec(), (v.to_vec(), *t));
            }
        }
        v => panic!("not a hash: {v:?}"),
    }
    out
}

fn save(s: &Server) -> Vec<u8> {
    assert_eq!(s.cmd(&["SAVE"]).as_str(), "OK");
    std::fs::read(s.dir().join("dump.rdb")).expect("dump.rdb")
}

#[test]
fn valkey9_hashes_with_field_ttls_parse_and_decode() {
    let Some(s) = valkey9() else { return };
    let keys = fill(&s);
    let rdb = save(&s);
    assert_eq!(&rdb[..9], b"VALKEY080");

    let mut p = Parser::new(&rdb[..]);
    let mut got = BTreeMap::new();
    let mut types = BTreeMap::new();
    while let Some(item) = p.next_item().unwrap_or_else(|e| panic!("{e}")) {
        if let Item::Entry(e) = item {
            let v = decode_value_in(p.dialect(), e.value_type, &e.payload)
                .unwrap_or_else(|err| panic!("key {:?}: {err}", e.key));
            let k = String::from_utf8_lossy(&e.key).into_owned();
            types.insert(k.clone(), e.value_type);
            got.insert(k, fields_of(&v));
        }
    }
    assert_eq!(p.dialect(), Dialect::Valkey);
    assert_eq!(got.len(), keys.len(), "{:?}", got.keys());
    for k in &keys {
        let want = server_fields(&s, k);
        assert_eq!(got.get(k), Some(&want), "key {k}");
    }
    // The field TTL hashes went as Valkey's type 22, the others in a plain encoding.
    for k in ["ttl:small", "ttl:setex", "ttl:many", "ttl:long"] {
        assert_eq!(types[k], 22, "{k}");
    }

    // The server's DUMP of each hash: version 80, decoded by its footer's version.
    for k in &keys {
        let d = s.cmd(&["DUMP", k]).as_bytes();
        let (t, body, version) = parse_dump_payload(&d).unwrap();
        assert_eq!(version, 80);
        let v = decode_value_in(Dialect::of_rdb_version(u32::from(version)), t, body).unwrap();
        assert_eq!(fields_of(&v), got[k], "DUMP of {k}");
    }

    // Streamed in chunks: the big hashes come as chunks of the same type, each decodable.
    let mut p = Parser::new(&rdb[..]);
    p.set_big_values(Some(BigValues {
        elements: 100,
        chunk_elements: 64,
        ..BigValues::default()
    }));
    let mut streamed: BTreeMap<String, Fields> = BTreeMap::new();
    let mut current: Option<(String, u8)> = None;
    let mut chunks = 0;
    while let Some(item) = p.next_item().unwrap_or_else(|e| panic!("{e}")) {
        match item {
            Item::Entry(e) => {
                let v = decode_value_in(p.dialect(), e.value_type, &e.payload).unwrap();
                streamed.insert(String::from_utf8_lossy(&e.key).into_owned(), fields_of(&v));
            }
            Item::BigEntryStart(e) => {
                current = Some((String::from_utf8_lossy(&e.key).into_owned(), e.value_type))
            }
            Item::BigEntryChunk { payload } => {
                let (k, t) = current.clone().expect("chunk without start");
                let v = decode_value_in(p.dialect(), t, &payload).unwrap();
                streamed.entry(k).or_default().extend(fields_of(&v));
                chunks += 1;
            }
            Item::BigEntryEnd { .. } => current = None,
            _ => {}
        }
    }
    assert!(chunks >= 2 * 11, "{chunks} chunks");
    assert_eq!(streamed, got);
}

/// A `VALKEY080` RDB holding one type-22 value with `fields`, and its checksum.
fn valkey_rdb(fields: &[(&[u8], &[u8], i64)]) -> Vec<u8> {
    let mut v = b"VALKEY080".to_vec();
    v.extend_from_slice(&[22, 1, b'h', fields.len() as u8]);
    for (f, val, t) in fields {
        v.push(f.len() as u8);
        v.extend_from_slice(f);
        v.push(val.len() as u8);
        v.extend_from_slice(val);
        v.extend_from_slice(&t.to_le_bytes());
    }
    v.push(0xff);
    let crc = ferry_rdb::crc64(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

#[test]
fn type_22_is_read_by_the_magic() {
    let rdb = valkey_rdb(&[(b"a", b"1", -1), (b"b", b"2", 1_700_000_000_000)]);
    let mut p = Parser::new(&rdb[..]);
    let Some(Item::Entry(e)) = p.next_item().unwrap() else {
        panic!("no entry")
    };
    assert_eq!(
        decode_value_in(p.dialect(), e.value_type, &e.payload).unwrap(),
        Value::HashWithTtl(vec![
            (Bytes::from("a"), Bytes::from("1"), None),
            (Bytes::from("b"), Bytes::from("2"), Some(1_700_000_000_000)),
        ])
    );
    assert!(p.next_item().unwrap().is_none());
    // The same bytes under the REDIS magic are Redis' pre-release layout: not this value.
    let mut redis = rdb.clone();
    redis[..9].copy_from_slice(b"REDIS0012");
    let n = redis.len();
    let crc = ferry_rdb::crc64(&redis[..n - 8]);
    redis[n - 8..].copy_from_slice(&crc.to_le_bytes());
    let mut p = Parser::new(&redis[..]);
    assert!(p.next_item().is_err());

    // An expire time below -1 is corrupt, reported where it starts in the payload.
    let rdb = valkey_rdb(&[(b"a", b"1", -7)]);
    let mut p = Parser::new(&rdb[..]);
    let Some(Item::Entry(e)) = p.next_item().unwrap() else {
        panic!("no entry")
    };
    let err = decode_value_in(p.dialect(), e.value_type, &e.payload).unwrap_err();
    assert!(
        matches!(err.kind, ferry_rdb::ErrorKind::Corrupt(_)),
        "{err}"
    );
    assert_eq!(err.offset, 5, "{err}");
    // Redis numbers 23..25 as its field TTL types; a VALKEY RDB cannot hold them.
    let mut v = b"VALKEY080".to_vec();
    v.extend_from_slice(&[25, 1, b'h']);
    let e = Parser::new(&v[..]).next_item().unwrap_err();
    assert!(
        matches!(e.kind, ferry_rdb::ErrorKind::UnknownType(25)),
        "{e}"
    );
}
