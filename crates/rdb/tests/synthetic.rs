//! Hand-built RDB streams for encodings Redis 7.0 no longer writes (ziplist,
//! zipmap, quicklist v1, string-score zsets, stream v1) or does not write yet
//! (hash field TTL types, stream v3, slot info), plus modules and functions.

use bytes::Bytes;
use ferry_rdb::consts::*;
use ferry_rdb::{
    crc64, decode_value_in, parse_dump_payload, write_dump_payload, Dialect, ErrorKind, Item,
    Parser, StreamId, Value,
};

/// RDB bytes written by hand.
type W = ferry_testkit::RdbBytes;

enum E<'a> {
    S(&'a [u8]),
    I(i64),
}

fn listpack(elems: &[E]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in elems {
        let start = body.len();
        match e {
            E::S(s) => {
                assert!(s.len() < 64);
                body.push(0x80 | s.len() as u8);
                body.extend_from_slice(s);
            }
            E::I(i) if (0..128).contains(i) => body.push(*i as u8),
            E::I(i) => {
                body.push(0xf4);
                body.extend_from_slice(&i.to_le_bytes());
            }
        }
        let l = body.len() - start;
        assert!(l <= 127);
        body.push(l as u8);
    }
    let mut lp = Vec::new();
    lp.extend_from_slice(&((6 + body.len() + 1) as u32).to_le_bytes());
    lp.extend_from_slice(&(elems.len() as u16).to_le_bytes());
    lp.extend_from_slice(&body);
    lp.push(0xff);
    lp
}

fn ziplist(elems: &[E]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut prev = 0usize;
    for e in elems {
        let start = body.len();
        body.push(prev as u8);
        match e {
            E::S(s) => {
                assert!(s.len() < 64);
                body.push(s.len() as u8);
                body.extend_from_slice(s);
            }
            E::I(i) if (0..=12).contains(i) => body.push(0xf1 + *i as u8),
            E::I(i) => {
                body.push(0xe0);
                body.extend_from_slice(&i.to_le_bytes());
            }
        }
        prev = body.len() - start;
    }
    let mut zl = Vec::new();
    zl.extend_from_slice(&((10 + body.len() + 1) as u32).to_le_bytes());
    zl.extend_from_slice(&0u32.to_le_bytes());
    zl.extend_from_slice(&(elems.len() as u16).to_le_bytes());
    zl.extend_from_slice(&body);
    zl.push(0xff);
    zl
}

fn raw_id(ms: u64, seq: u64) -> Vec<u8> {
    let mut v = ms.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

/// Stream body (after the type byte and key) in format `t`.
fn stream_payload(t: u8) -> Vec<u8> {
    let lp = listpack(&[
        // master entry: count, deleted, #fields, fields, terminator
        E::I(2),
        E::I(1),
        E::I(2),
        E::S(b"a"),
        E::S(b"b"),
        E::I(0),
        // 1-1 same fields
        E::I(2),
        E::I(0),
        E::I(1),
        E::S(b"1"),
        E::I(2),
        E::I(5),
        // 2-0 own fields
        E::I(0),
        E::I(1),
        E::I(0),
        E::I(1),
        E::S(b"c"),
        E::I(-3),
        E::I(7),
        // 2-5 deleted, same fields
        E::I(3),
        E::I(1),
        E::I(5),
        E::S(b"x"),
        E::S(b"y"),
        E::I(5),
    ]);
    let mut w = W::default();
    w.len(1).str(&raw_id(1, 0)).str(&lp);
    w.len(2).len(2).len(5); // length, last id
    if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
        w.len(1).len(1).len(2).len(5).len(3);
    }
    w.len(1).str(b"g").len(1).len(1);
    if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
        w.len(1);
    }
    w.len(1).raw(&raw_id(1, 1)).ms(1_700_000_000_000).len(2);
    w.len(1).str(b"alice").ms(1_700_000_000_001);
    if t >= RDB_TYPE_STREAM_LISTPACKS_3 {
        w.ms(1_700_000_000_002);
    }
    w.len(1).raw(&raw_id(1, 1));
    w.0
}

struct Expect {
    key: &'static [u8],
    t: u8,
    payload: Vec<u8>,
    value: Option<Value>,
}

fn bs(s: &[&str]) -> Vec<Bytes> {
    s.iter()
        .map(|x| Bytes::copy_from_slice(x.as_bytes()))
        .collect()
}

fn pairs(s: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
    s.iter()
        .map(|(a, b)| {
            (
                Bytes::copy_from_slice(a.as_bytes()),
                Bytes::copy_from_slice(b.as_bytes()),
            )
        })
        .collect()
}

fn expectations() -> Vec<Expect> {
    let mut v = Vec::new();
    let mut w = W::default();
    w.len(2).str(b"a").u8(3).raw(b"1.5").str(b"b").u8(254);
    v.push(Expect {
        key: b"zset-v1",
        t: RDB_TYPE_ZSET,
        payload: w.0,
        value: Some(Value::SortedSet(vec![
            (Bytes::from("a"), 1.5),
            (Bytes::from("b"), f64::INFINITY),
        ])),
    });
    let mut w = W::default();
    w.str(&ziplist(&[E::S(b"a"), E::I(5), E::I(-1_000_000_000_000)]));
    v.push(Expect {
        key: b"list-ziplist",
        t: RDB_TYPE_LIST_ZIPLIST,
        payload: w.0,
        value: Some(Value::List(bs(&["a", "5", "-1000000000000"]))),
    });
    let mut w = W::default();
    w.len(2)
        .str(&ziplist(&[E::S(b"x"), E::I(1)]))
        .str(&ziplist(&[E::S(b"y")]));
    v.push(Expect {
        key: b"quicklist-v1",
        t: RDB_TYPE_LIST_QUICKLIST,
        payload: w.0,
        value: Some(Value::List(bs(&["x", "1", "y"]))),
    });
    let mut w = W::default();
    w.len(2)
        .len(QUICKLIST_NODE_CONTAINER_PACKED)
        .str(&listpack(&[E::S(b"p"), E::I(9)]))
        .len(QUICKLIST_NODE_CONTAINER_PLAIN)
        .str(b"plain element");
    v.push(Expect {
        key: b"quicklist-v2",
        t: RDB_TYPE_LIST_QUICKLIST_2,
        payload: w.0,
        value: Some(Value::List(bs(&["p", "9", "plain element"]))),
    });
    let mut w = W::default();
    w.str(b"\x02\x01k\x02\x00vv\x03xyz\x00\x00\xff");
    v.push(Expect {
        key: b"hash-zipmap",
        t: RDB_TYPE_HASH_ZIPMAP,
        payload: w.0,
        value: Some(Value::Hash(pairs(&[("k", "vv"), ("xyz", "")]))),
    });
    let mut w = W::default();
    w.str(&ziplist(&[E::S(b"f"), E::I(12)]));
    v.push(Expect {
        key: b"hash-ziplist",
        t: RDB_TYPE_HASH_ZIPLIST,
        payload: w.0,
        value: Some(Value::Hash(pairs(&[("f", "12")]))),
    });
    let mut w = W::default();
    w.str(&ziplist(&[E::S(b"m"), E::S(b"-2.25"), E::S(b"n"), E::I(3)]));
    v.push(Expect {
        key: b"zset-ziplist",
        t: RDB_TYPE_ZSET_ZIPLIST,
        payload: w.0,
        value: Some(Value::SortedSet(vec![
            (Bytes::from("m"), -2.25),
            (Bytes::from("n"), 3.0),
        ])),
    });
    let mut w = W::default();
    w.str(&listpack(&[E::S(b"s1"), E::S(b"s2")]));
    v.push(Expect {
        key: b"set-listpack",
        t: RDB_TYPE_SET_LISTPACK,
        payload: w.0,
        value: Some(Value::Set(bs(&["s1", "s2"]))),
    });
    let mut w = W::default();
    w.ms(1_800_000_000_000)
        .len(2)
        .len(0)
        .str(b"a")
        .str(b"1")
        .len(5)
        .str(b"b")
        .str(b"2");
    v.push(Expect {
        key: b"hash-metadata",
        t: RDB_TYPE_HASH_METADATA,
        payload: w.0,
        value: Some(Value::HashWithTtl(vec![
            (Bytes::from("a"), Bytes::from("1"), None),
            (Bytes::from("b"), Bytes::from("2"), Some(1_800_000_000_004)),
        ])),
    });
    let mut w = W::default();
    w.len(1).len(1_800_000_000_000).str(b"a").str(b"1");
    v.push(Expect {
        key: b"hash-metadata-pre-ga",
        t: RDB_TYPE_HASH_METADATA_PRE_GA,
        payload: w.0,
        value: Some(Value::HashWithTtl(vec![(
            Bytes::from("a"),
            Bytes::from("1"),
            Some(1_800_000_000_000),
        )])),
    });
    let mut w = W::default();
    w.ms(1_800_000_000_000).str(&listpack(&[
        E::S(b"f"),
        E::S(b"v"),
        E::I(0),
        E::S(b"g"),
        E::I(7),
        E::I(1_800_000_000_000),
    ]));
    v.push(Expect {
        key: b"hash-listpack-ex",
        t: RDB_TYPE_HASH_LISTPACK_EX,
        payload: w.0,
        value: Some(Value::HashWithTtl(vec![
            (Bytes::from("f"), Bytes::from("v"), None),
            (Bytes::from("g"), Bytes::from("7"), Some(1_800_000_000_000)),
        ])),
    });
    for t in [
        RDB_TYPE_STREAM_LISTPACKS,
        RDB_TYPE_STREAM_LISTPACKS_2,
        RDB_TYPE_STREAM_LISTPACKS_3,
    ] {
        v.push(Expect {
            key: match t {
                RDB_TYPE_STREAM_LISTPACKS => b"stream-v1",
                RDB_TYPE_STREAM_LISTPACKS_2 => b"stream-v2",
                _ => b"stream-v3",
            },
            t,
            payload: stream_payload(t),
            value: None,
        });
    }
    let mut w = W::default();
    w.len(0x1234_5678_9abc_0001)
        .len(RDB_MODULE_OPCODE_SINT)
        .len(5)
        .len(RDB_MODULE_OPCODE_STRING)
        .str(b"abc")
        .len(RDB_MODULE_OPCODE_FLOAT)
        .raw(&1.5f32.to_le_bytes())
        .len(RDB_MODULE_OPCODE_DOUBLE)
        .raw(&2.5f64.to_le_bytes())
        .len(RDB_MODULE_OPCODE_EOF);
    let raw = Bytes::copy_from_slice(&w.0[9..]);
    v.push(Expect {
        key: b"module",
        t: RDB_TYPE_MODULE_2,
        payload: w.0,
        value: Some(Value::Module {
            module_id: 0x1234_5678_9abc_0001,
            raw,
        }),
    });
    // Plain types with 14-bit and 32-bit lengths.
    let big = vec![b'q'; 70_000];
    let mut w = W::default();
    w.str(&big);
    v.push(Expect {
        key: b"string-32bit-len",
        t: RDB_TYPE_STRING,
        payload: w.0,
        value: Some(Value::String(Bytes::from(big))),
    });
    v
}

/// The values of an RDB of `dialect`: in Valkey's numbering types 22..=25 are not Redis'
/// field TTL hashes; 22 is Valkey's own, and Valkey has no 23..=25.
fn expectations_in(dialect: Dialect) -> Vec<Expect> {
    let mut v = expectations();
    if dialect == Dialect::Valkey {
        v.retain(|e| !(RDB_TYPE_HASH_METADATA_PRE_GA..=RDB_TYPE_HASH_LISTPACK_EX).contains(&e.t));
        let mut w = W::default();
        w.len(2).str(b"a").str(b"1").raw(&(-1i64).to_le_bytes());
        w.str(b"b").str(b"2").ms(1_800_000_000_000);
        v.push(Expect {
            key: b"valkey-hash-2",
            t: RDB_TYPE_VALKEY_HASH_2,
            payload: w.0,
            value: Some(Value::HashWithTtl(vec![
                (Bytes::from("a"), Bytes::from("1"), None),
                (Bytes::from("b"), Bytes::from("2"), Some(1_800_000_000_000)),
            ])),
        });
    }
    v
}

fn dialect_of(header: &[u8]) -> Dialect {
    if header.starts_with(b"VALKEY") {
        Dialect::Valkey
    } else {
        Dialect::Redis
    }
}

fn build(header: &[u8]) -> Vec<u8> {
    let mut w = W::default();
    w.raw(header);
    w.u8(RDB_OPCODE_AUX).str(b"redis-ver").str(b"7.4.0");
    w.u8(RDB_OPCODE_AUX)
        .str(b"ctime")
        .u8(0xc2)
        .raw(&1_700_000_000i32.to_le_bytes());
    w.u8(RDB_OPCODE_MODULE_AUX)
        .len(77)
        .len(RDB_MODULE_OPCODE_UINT)
        .len(2)
        .len(RDB_MODULE_OPCODE_UINT)
        .len(99)
        .len(RDB_MODULE_OPCODE_EOF);
    w.u8(RDB_OPCODE_FUNCTION2).str(b"#!lua name=x\n");
    w.u8(RDB_OPCODE_SELECTDB).len(4);
    w.u8(RDB_OPCODE_RESIZEDB).len(100).len(3);
    w.u8(RDB_OPCODE_SLOT_INFO).len(5).len(10).len(2);
    for (i, e) in expectations_in(dialect_of(header)).iter().enumerate() {
        if i == 0 {
            w.u8(RDB_OPCODE_EXPIRETIME)
                .raw(&1_900_000_000i32.to_le_bytes());
        }
        if i == 1 {
            w.u8(RDB_OPCODE_EXPIRETIME_MS).ms(1_900_000_000_123);
            w.u8(RDB_OPCODE_IDLE).len(42);
        }
        if i == 2 {
            w.u8(RDB_OPCODE_FREQ).u8(7);
        }
        w.u8(e.t).str(e.key).raw(&e.payload);
    }
    w.u8(RDB_OPCODE_EOF);
    let crc = crc64(&w.0);
    w.raw(&crc.to_le_bytes());
    w.0
}

fn check(data: &[u8], version: u32) {
    let exp = expectations_in(dialect_of(data));
    let mut p = Parser::new(data);
    let mut entries = Vec::new();
    let mut others = Vec::new();
    while let Some(it) = p.next_item().unwrap() {
        match it {
            Item::Entry(e) => entries.push(e),
            o => others.push(o),
        }
    }
    assert_eq!(p.rdb_version(), Some(version));
    assert_eq!(p.offset(), data.len() as u64);
    assert_eq!(
        others,
        vec![
            Item::Aux {
                key: "redis-ver".into(),
                value: "7.4.0".into()
            },
            Item::Aux {
                key: "ctime".into(),
                value: "1700000000".into()
            },
            Item::ModuleAux {
                module_id: 77,
                raw: Bytes::from_static(&[2, 2, 2, 0x40, 99, 0]),
            },
            Item::Function {
                code: "#!lua name=x\n".into()
            },
            Item::SelectDb(4),
            Item::ResizeDb {
                db_size: 100,
                expires_size: 3
            },
            Item::SlotInfo {
                slot: 5,
                slot_size: 10,
                expires_slot_size: 2
            },
        ]
    );
    assert_eq!(entries.len(), exp.len());
    for (i, (e, x)) in entries.iter().zip(&exp).enumerate() {
        let ctx = String::from_utf8_lossy(x.key);
        assert_eq!(&e.key[..], x.key);
        assert_eq!(e.db, 4);
        assert_eq!(e.value_type, x.t, "{ctx}");
        assert!(e.payload[..] == x.payload[..], "{ctx}: payload capture");
        let expire = match i {
            0 => Some(1_900_000_000_000),
            1 => Some(1_900_000_000_123),
            _ => None,
        };
        assert_eq!(e.expire_ms, expire, "{ctx}");
        assert_eq!(e.idle, (i == 1).then_some(42), "{ctx}");
        assert_eq!(e.freq, (i == 2).then_some(7), "{ctx}");
        let v = decode_value_in(p.dialect(), e.value_type, &e.payload)
            .unwrap_or_else(|err| panic!("{ctx}: {err}"));
        match &x.value {
            Some(want) => assert_eq!(&v, want, "{ctx}"),
            None => check_stream(x.t, &v),
        }
        // DUMP framing round trip.
        let mut d = bytes::BytesMut::new();
        write_dump_payload(&mut d, e.value_type, &e.payload, 12);
        let (t, p, ver) = parse_dump_payload(&d).unwrap();
        assert_eq!((t, p, ver), (x.t, &x.payload[..], 12));
    }
}

fn check_stream(t: u8, v: &Value) {
    let Value::Stream(s) = v else {
        panic!("not a stream: {v:?}")
    };
    let id = |ms, seq| StreamId { ms, seq };
    let got: Vec<_> = s.entries.iter().map(|e| (e.id, e.fields.clone())).collect();
    assert_eq!(
        got,
        vec![
            (id(1, 1), pairs(&[("a", "1"), ("b", "2")])),
            (id(2, 0), pairs(&[("c", "-3")])),
        ]
    );
    assert_eq!(s.length, 2);
    assert_eq!(s.last_id, id(2, 5));
    let v2 = t >= RDB_TYPE_STREAM_LISTPACKS_2;
    assert_eq!(s.first_id, v2.then_some(id(1, 1)));
    assert_eq!(s.max_deleted_id, v2.then_some(id(2, 5)));
    assert_eq!(s.entries_added, v2.then_some(3));
    assert_eq!(s.groups.len(), 1);
    let g = &s.groups[0];
    assert_eq!(&g.name[..], b"g");
    assert_eq!(g.last_id, id(1, 1));
    assert_eq!(g.entries_read, v2.then_some(1));
    assert_eq!(g.pending.len(), 1);
    assert_eq!(g.pending[0].id, id(1, 1));
    assert_eq!(g.pending[0].delivery_time_ms, 1_700_000_000_000);
    assert_eq!(g.pending[0].delivery_count, 2);
    assert_eq!(g.consumers.len(), 1);
    let c = &g.consumers[0];
    assert_eq!(&c.name[..], b"alice");
    assert_eq!(c.seen_time_ms, 1_700_000_000_001);
    assert_eq!(
        c.active_time_ms,
        (t >= RDB_TYPE_STREAM_LISTPACKS_3).then_some(1_700_000_000_002)
    );
    assert_eq!(c.pending, vec![id(1, 1)]);
}

#[test]
fn synthetic_redis_rdb12() {
    check(&build(b"REDIS0012"), 12);
}

#[test]
fn synthetic_valkey_magic() {
    check(&build(b"VALKEY080"), 80);
}

#[test]
fn synthetic_truncated_at_every_offset() {
    let data = build(b"REDIS0012");
    // Every offset, except only a sample inside the trailing 70 KB string.
    let n = data.len();
    let lens = (0..n).filter(|&l| l + 70_010 < n || l + 20 > n || l % 101 == 0);
    for len in lens {
        let mut p = Parser::new(&data[..len]);
        let err = loop {
            match p.next_item() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("truncated input at {len} accepted"),
                Err(e) => break e,
            }
        };
        assert!(err.is_truncation(), "len {len}: {err}");
    }
}

#[test]
fn unsupported_opcodes_and_types() {
    let mut data = b"REDIS0010".to_vec();
    data.push(RDB_OPCODE_FUNCTION_PRE_GA);
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unsupported(_)), "{e}");

    let mut data = b"REDIS0010".to_vec();
    data.extend_from_slice(&[RDB_TYPE_MODULE_PRE_GA, 1, b'k', 0]);
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unsupported(_)), "{e}");
    assert_eq!(e.key.as_deref(), Some("k"));

    // Unknown module opcode inside a module value.
    let mut data = b"REDIS0010".to_vec();
    data.extend_from_slice(&[RDB_TYPE_MODULE_2, 1, b'k', 1, 9]);
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Corrupt(_)), "{e}");
    assert_eq!(e.offset, 14);

    // Bad length prefix byte.
    let mut data = b"REDIS0010".to_vec();
    data.extend_from_slice(&[RDB_OPCODE_SELECTDB, 0x85]);
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::BadLength(_)), "{e}");

    // A huge declared string length in a short stream: truncation, no OOM.
    let mut data = b"REDIS0010".to_vec();
    data.extend_from_slice(&[RDB_TYPE_STRING, 1, b'k', 0x81]);
    data.extend_from_slice(&u64::MAX.to_be_bytes());
    data.extend_from_slice(b"tiny");
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(e.is_truncation(), "{e}");
    let mut data = b"REDIS0010".to_vec();
    data.extend_from_slice(&[RDB_OPCODE_AUX, 0x81]);
    data.extend_from_slice(&u64::MAX.to_be_bytes());
    let e = Parser::new(&data[..]).next_item().unwrap_err();
    assert!(e.is_truncation(), "{e}");
}
