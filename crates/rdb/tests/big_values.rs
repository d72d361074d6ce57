//! Big values streamed in chunks ([`Parser::set_big_values`]) decode to the same values as
//! when captured whole. The RDB comes from a real `redis-server`.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_rdb::{decode_value, BigValues, Item, Parser, Stream, Value};
use ferry_testkit::Server;

/// Appends `chunk` (a decoded chunk of a big value) to `acc`.
fn merge(acc: &mut Option<Value>, chunk: Value) {
    let Some(a) = acc else {
        *acc = Some(chunk);
        return;
    };
    match (a, chunk) {
        (Value::String(a), Value::String(b)) => {
            let mut v = a.to_vec();
            v.extend_from_slice(&b);
            *a = Bytes::from(v);
        }
        (Value::List(a), Value::List(b)) | (Value::Set(a), Value::Set(b)) => a.extend(b),
        (Value::SortedSet(a), Value::SortedSet(b)) => a.extend(b),
        (Value::Hash(a), Value::Hash(b)) => a.extend(b),
        (Value::HashWithTtl(a), Value::HashWithTtl(b)) => a.extend(b),
        (Value::Stream(a), Value::Stream(b)) => a.entries.extend(b.entries),
        (a, b) => panic!("chunk of another type: {a:?} / {b:?}"),
    }
}

fn parse(path: &std::path::Path, big: Option<BigValues>) -> (BTreeMap<Bytes, Value>, usize) {
    let mut p = Parser::new(std::fs::File::open(path).unwrap());
    p.set_big_values(big);
    let mut out = BTreeMap::new();
    let mut chunks = 0;
    let mut current: Option<(Bytes, u8, Option<Value>)> = None;
    while let Some(item) = p.next_item().unwrap() {
        match item {
            Item::Entry(e) => {
                out.insert(e.key, decode_value(e.value_type, &e.payload).unwrap());
            }
            Item::BigEntryStart(e) => current = Some((e.key, e.value_type, None)),
            Item::BigEntryChunk { payload } => {
                let (_, t, acc) = current.as_mut().expect("chunk outside a big entry");
                merge(acc, decode_value(*t, &payload).unwrap());
                chunks += 1;
            }
            Item::BigEntryEnd { payload } => {
                let (key, t, acc) = current.take().expect("end outside a big entry");
                let mut v = acc.expect("a big value with no chunk");
                if let (Value::Stream(s), Some(p)) = (&mut v, payload) {
                    let Value::Stream(meta) = decode_value(t, &p).unwrap() else {
                        panic!("stream metadata is not a stream")
                    };
                    let entries = std::mem::take(&mut s.entries);
                    *s = Stream { entries, ..meta };
                }
                out.insert(key, v);
            }
            _ => {}
        }
    }
    (out, chunks)
}

#[test]
fn big_values_stream_in_chunks_and_decode_the_same() {
    let server = Server::start();
    let mut c = server.client();
    let n = 20_000;
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    for i in (0..n).step_by(1000) {
        let r = i..(i + 1000);
        let mut l = vec![b"RPUSH".to_vec(), b"big:list".to_vec()];
        l.extend(r.clone().map(|j| format!("element-{j}").into_bytes()));
        cmds.push(l);
        let mut s = vec![b"SADD".to_vec(), b"big:set".to_vec()];
        s.extend(r.clone().map(|j| format!("member-{j}").into_bytes()));
        cmds.push(s);
        let mut z = vec![b"ZADD".to_vec(), b"big:zset".to_vec()];
        for j in r.clone() {
            z.push(format!("{}", j as f64 / 7.0).into_bytes());
            z.push(format!("m{j}").into_bytes());
        }
        cmds.push(z);
        let mut h = vec![b"HSET".to_vec(), b"big:hash".to_vec()];
        for j in r.clone() {
            h.push(format!("f{j}").into_bytes());
            h.push(format!("v{j}").into_bytes());
        }
        cmds.push(h);
    }
    for j in 0..5000 {
        cmds.push(vec![
            b"XADD".to_vec(),
            b"big:stream".to_vec(),
            format!("{}-1", j + 1).into_bytes(),
            b"f".to_vec(),
            format!("v{j}").into_bytes(),
        ]);
    }
    cmds.push(vec![
        b"XGROUP".to_vec(),
        b"CREATE".to_vec(),
        b"big:stream".to_vec(),
        b"g".to_vec(),
        b"0".to_vec(),
    ]);
    // Incompressible, so it is stored as a plain string.
    let mut seed = 7u64;
    let s: Vec<u8> = (0..3_000_000)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect();
    cmds.push(vec![b"SET".to_vec(), b"big:string".to_vec(), s]);
    cmds.push(vec![b"SET".to_vec(), b"small".to_vec(), b"v".to_vec()]);
    for r in c.pipeline(&cmds).unwrap() {
        assert!(!r.is_error(), "{r:?}");
    }
    c.cmd(&[
        b"XREADGROUP",
        b"GROUP",
        b"g",
        b"c",
        b"COUNT",
        b"3",
        b"STREAMS",
        b"big:stream",
        b">",
    ])
    .unwrap();
    c.cmd(&[b"SAVE"]).unwrap();
    let path = server.dir().join("dump.rdb");
    let (whole, no_chunks) = parse(&path, None);
    assert_eq!(no_chunks, 0);
    let big = BigValues {
        elements: 1000,
        nodes: 10,
        string_bytes: 1_000_000,
        chunk_elements: 500,
        chunk_bytes: 64 * 1024,
    };
    let (chunked, chunks) = parse(&path, Some(big));
    assert_eq!(whole.len(), 7);
    for (k, v) in &whole {
        assert_eq!(chunked.get(k), Some(v), "key {k:?}");
    }
    // 3 MB string / 64 KB, 20k elements / 500 for set, zset, hash, list and stream nodes.
    assert!(chunks > 100, "only {chunks} chunks");
}
