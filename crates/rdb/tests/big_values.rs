//! Big values streamed in chunks ([`Parser::set_big_values`]) decode to the same values as
//! when captured whole. The RDB comes from a real `redis-server`.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_rdb::lzf::LzfErrorKind;
use ferry_rdb::{decode_value, BigValues, ErrorKind, Item, Parser, Stream, Value};
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
    // Compressible: stored LZF-compressed, streamed decompressed.
    let lzf: Vec<u8> = (0..2_500_000u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize] ^ (i / 10_000) as u8)
        .collect();
    cmds.push(vec![b"SET".to_vec(), b"big:lzf".to_vec(), lzf]);
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
    let mut p = Parser::new(std::fs::File::open(&path).unwrap());
    while let Some(item) = p.next_item().unwrap() {
        if let Item::Entry(e) = item {
            if &e.key[..] == b"big:lzf" {
                assert_eq!(e.payload[0] >> 6, 3, "big:lzf is not LZF-compressed");
                assert!(e.payload.len() < 500_000, "{}", e.payload.len());
            }
        }
    }
    let big = BigValues {
        elements: 1000,
        nodes: 10,
        string_bytes: 1_000_000,
        chunk_elements: 500,
        chunk_nodes: 3,
        chunk_bytes: 64 * 1024,
    };
    let (chunked, chunks) = parse(&path, Some(big));
    assert_eq!(whole.len(), 8);
    for (k, v) in &whole {
        assert_eq!(chunked.get(k), Some(v), "key {k:?}");
    }
    // 3 MB string / 64 KB, 20k elements / 500 for set, zset, hash, list and stream nodes.
    assert!(chunks > 100, "only {chunks} chunks");
    // The LZF string is streamed too, in 64 KB chunks of its decompressed bytes, at every
    // chunk size (window edges included).
    for chunk_bytes in [7, 8191, 8192, 8193, 100_000, 3_000_000] {
        let mut p = Parser::new(std::fs::File::open(&path).unwrap());
        p.set_big_values(Some(BigValues { chunk_bytes, ..big }));
        let mut got = Vec::new();
        let mut inside = false;
        let mut n = 0;
        while let Some(item) = p.next_item().unwrap() {
            match item {
                Item::BigEntryStart(e) => {
                    inside = &e.key[..] == b"big:lzf";
                    if inside {
                        assert_eq!(e.big_string_len(), Some(2_500_000));
                    }
                }
                Item::BigEntryChunk { payload } if inside => {
                    let Value::String(s) = decode_value(0, &payload).unwrap() else {
                        panic!("a string chunk that is not a string")
                    };
                    assert!(s.len() as u64 <= chunk_bytes);
                    got.extend_from_slice(&s);
                    n += 1;
                }
                Item::BigEntryEnd { .. } => inside = false,
                _ => {}
            }
        }
        assert_eq!(n, 2_500_000u64.div_ceil(chunk_bytes.min(2_500_000)));
        assert!(
            whole.get(&b"big:lzf"[..]) == Some(&Value::String(got.into())),
            "chunk_bytes {chunk_bytes}"
        );
    }
}

/// An RDB holding one LZF-compressed string `k` with the given compressed data and declared
/// length; returns it and the offset of the compressed data.
fn lzf_rdb(data: &[u8], ulen: u32) -> (Vec<u8>, u64) {
    let mut r = b"REDIS0009".to_vec();
    r.extend_from_slice(&[0, 1, b'k', 0xc3, 0x80]);
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.push(0x80);
    r.extend_from_slice(&ulen.to_be_bytes());
    let at = r.len() as u64;
    r.extend_from_slice(data);
    r.push(0xff);
    r.extend_from_slice(&[0; 8]); // no checksum
    (r, at)
}

fn first_error(rdb: &[u8], big: BigValues) -> ferry_rdb::RdbError {
    let mut p = Parser::new(rdb);
    p.set_big_values(Some(big));
    loop {
        match p.next_item() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error"),
            Err(e) => return e,
        }
    }
}

#[test]
fn corrupt_streamed_lzf_string_names_the_offset_and_key() {
    let big = BigValues {
        string_bytes: 100,
        chunk_bytes: 1000,
        ..BigValues::default()
    };
    // 'a', then 40 back references of 264 bytes at distance 1, then a cut literal run.
    let mut data = vec![0, b'a'];
    for _ in 0..40 {
        data.extend_from_slice(&[0xe0, 255, 0]);
    }
    let good_len = 1 + 40 * 264;
    let (rdb, _) = lzf_rdb(&data, good_len);
    let mut p = Parser::new(&rdb[..]);
    p.set_big_values(Some(big));
    let mut chunks = 0;
    while let Some(item) = p.next_item().unwrap() {
        if let Item::BigEntryChunk { payload } = item {
            assert_eq!(decode_value(0, &payload).unwrap(), {
                let n = if chunks < 10 {
                    1000
                } else {
                    good_len as usize - 10_000
                };
                Value::String(vec![b'a'; n].into())
            });
            chunks += 1;
        }
    }
    assert_eq!(chunks, 11);

    let mut cut = data.clone();
    cut.extend_from_slice(&[31, b'x', b'y', b'z']);
    let (rdb, at) = lzf_rdb(&cut, good_len + 32);
    let e = first_error(&rdb, big);
    let ErrorKind::Lzf(lz) = &e.kind else {
        panic!("{e}")
    };
    assert_eq!(lz.kind, LzfErrorKind::TruncatedLiteral);
    assert_eq!(e.offset, at + 2 + 120, "{e}");
    assert_eq!(e.key.as_deref(), Some("k"));

    let (rdb, at) = lzf_rdb(&[0, b'a', 0x20, 5, 0xe0, 255, 0], 1000);
    let e = first_error(&rdb, big);
    assert!(
        matches!(&e.kind, ErrorKind::Lzf(l) if l.kind == LzfErrorKind::BackReferenceBeforeStart { distance: 6 }),
        "{e}"
    );
    assert_eq!(e.offset, at + 2);

    // Declared longer than the data expands to, and shorter.
    let (rdb, at) = lzf_rdb(&data, good_len + 5);
    let e = first_error(&rdb, big);
    assert!(
        matches!(&e.kind, ErrorKind::Lzf(l) if matches!(l.kind, LzfErrorKind::OutputTooShort { .. })),
        "{e}"
    );
    assert_eq!(e.offset, at + data.len() as u64);
    let (rdb, at) = lzf_rdb(&data, good_len - 5);
    let e = first_error(&rdb, big);
    assert!(
        matches!(&e.kind, ErrorKind::Lzf(l) if l.kind == LzfErrorKind::OutputTooLong { expected: good_len as u64 - 5 }),
        "{e}"
    );
    assert_eq!(e.offset, at + data.len() as u64 - 3);
}
