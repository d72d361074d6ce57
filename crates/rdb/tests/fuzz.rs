//! Bounded fuzzing of the streaming parser and of the DUMP payload reader, seeded with the
//! real RDB files of `tests/corpus` and `tests/fixtures` (and a `VALKEY080` file holding
//! Valkey's hash with field TTLs) and their mutations: flipped bytes, truncations, length
//! prefixes with huge values inserted or written over the data, and random splits of the
//! input into the reads the parser gets.
//!
//! For every case: no panic; every error is an [`RdbError`] whose offset lies within the
//! input; the result does not depend on how the input is split into reads; and memory stays
//! bounded (a 4 GB length declared in a 20 KB input must not make anyone allocate 4 GB),
//! checked with a counting allocator.

// The counting allocator below is the one unsafe code in the workspace: a `GlobalAlloc`
// cannot be written without it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use bytes::BytesMut;
use ferry_rdb::{
    decode_value_in, parse_dump_payload, write_dump_payload, BigValues, Dialect, Item, Parser,
    RdbError,
};
use proptest::prelude::*;

// ------------------------------------------------------------ allocation accounting

/// Counts, per thread, the bytes live and their peak since the last [`reset_peak`].
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get().saturating_add(n);
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size);
        sub(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most bytes it held at once (beyond what was
/// live when it started).
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, peak.saturating_sub(base))
}

/// What parsing `len` bytes may hold at once: the parser's 64 KiB buffer and capture, one
/// read chunk (1 MiB) and preallocation caps, and a few copies of what the input holds
/// (payloads, decoded values, LZF output, which expands at most ~90 times).
fn memory_bound(len: usize) -> usize {
    8 * 1024 * 1024 + 200 * len
}

// ------------------------------------------------------------ seeds

fn seeds() -> &'static [(String, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut out = Vec::new();
        for dir in ["corpus", "fixtures"] {
            let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("{dir}: {e}"))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "rdb"))
                .collect();
            files.sort();
            for f in files {
                out.push((f.display().to_string(), std::fs::read(&f).unwrap()));
            }
        }
        assert!(out.len() >= 2, "no seed files");
        out.push(("valkey-hash-2".into(), valkey_hash2_rdb()));
        out
    })
}

/// A `VALKEY080` RDB with Valkey's hash with field TTLs (type 22) and a string.
fn valkey_hash2_rdb() -> Vec<u8> {
    let mut v = b"VALKEY080".to_vec();
    v.extend_from_slice(&[0xfe, 0, 22, 1, b'h', 2]);
    for (f, val, t) in [
        (&b"a"[..], &b"1"[..], -1i64),
        (b"b", b"2", 1_800_000_000_000),
    ] {
        v.push(f.len() as u8);
        v.extend_from_slice(f);
        v.push(val.len() as u8);
        v.extend_from_slice(val);
        v.extend_from_slice(&t.to_le_bytes());
    }
    v.extend_from_slice(&[0, 1, b's', 3, b'x', b'y', b'z', 0xff]);
    let crc = ferry_rdb::crc64(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// Length prefixes and string encodings that declare far more than any input holds.
const HUGE: &[&[u8]] = &[
    &[0x80, 0xff, 0xff, 0xff, 0xff],
    &[0x80, 0x7f, 0xff, 0xff, 0xff],
    &[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x81, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
    &[0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff],
    // LZF: 4 compressed bytes said to expand to 4 GB, then to 2^64-1.
    &[
        0xc3, 0x04, 0x80, 0xff, 0xff, 0xff, 0xff, 0x00, b'a', b'b', b'c',
    ],
    &[
        0xc3, 0x04, 0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, b'a',
    ],
    // LZF whose compressed length is huge.
    &[0xc3, 0x80, 0xff, 0xff, 0xff, 0xff, 0x05],
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, usize),
    Overwrite(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        2 => (any::<prop::sample::Index>(), 0..HUGE.len()).prop_map(|(i, h)| Mutation::Insert(i, h)),
        2 => (any::<prop::sample::Index>(), 0..HUGE.len()).prop_map(|(i, h)| Mutation::Overwrite(i, h)),
    ]
}

fn apply(data: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        if data.is_empty() {
            return;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i.index(data.len());
                data[i] ^= x;
            }
            Mutation::Truncate(i) => data.truncate(i.index(data.len())),
            Mutation::Insert(i, h) => {
                let i = i.index(data.len());
                data.splice(i..i, HUGE[*h].iter().copied());
            }
            Mutation::Overwrite(i, h) => {
                let i = i.index(data.len());
                let end = (i + HUGE[*h].len()).min(data.len());
                data[i..end].copy_from_slice(&HUGE[*h][..end - i]);
            }
        }
    }
}

/// Recomputes the trailing CRC64, so that a mutation is judged by the structure it breaks
/// and not only by the checksum.
fn fix_crc(data: &mut [u8]) {
    if data.len() > 17 {
        let n = data.len() - 8;
        let crc = ferry_rdb::crc64(&data[..n]);
        data[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

// ------------------------------------------------------------ running the parser

/// A reader that hands out the input in reads of the given sizes (cycled).
struct Splits<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    next: usize,
}

impl Read for Splits<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What a parse gave: the items in a comparable form, then `Ok` or the error's offset and
/// cause.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<String>,
    end: Result<(), (u64, String)>,
}

fn check_error(e: &RdbError, len: usize, what: &str) {
    assert!(
        e.offset <= len as u64,
        "{what}: error offset {} past the input's {len} bytes: {e}",
        e.offset
    );
}

fn parse<R: Read>(r: R, len: usize, big: Option<BigValues>) -> Outcome {
    let mut p = Parser::new(r);
    p.set_big_values(big);
    let mut items = Vec::new();
    let mut current = None;
    let end = loop {
        match p.next_item() {
            Ok(None) => break Ok(()),
            Ok(Some(item)) => {
                if let Item::Entry(e) = &item {
                    decode_entry(p.dialect(), e.value_type, &e.payload, p.rdb_version());
                }
                if let Item::BigEntryStart(e) = &item {
                    current = Some(e.value_type);
                }
                if let (Item::BigEntryChunk { payload }, Some(t)) = (&item, current) {
                    if let Err(e) = decode_value_in(p.dialect(), t, payload) {
                        check_error(&e, payload.len(), "decoding a chunk");
                    }
                }
                items.push(format!("{item:?}"));
                assert!(items.len() < 1_000_000, "runaway parser");
            }
            Err(e) => {
                check_error(&e, len, "parsing");
                // After an error the parser stays failed.
                assert!(p.next_item().is_err());
                break Err((e.offset, format!("{:?}", std::mem::discriminant(&e.kind))));
            }
        }
    };
    Outcome { items, end }
}

/// Decodes an entry's payload, and the same as a DUMP payload: same result either way.
fn decode_entry(dialect: Dialect, t: u8, payload: &[u8], version: Option<u32>) {
    let direct = decode_value_in(dialect, t, payload);
    if let Err(e) = &direct {
        check_error(e, payload.len(), "decoding an entry");
    }
    let mut d = BytesMut::new();
    write_dump_payload(&mut d, t, payload, version.unwrap_or(0) as u16);
    let (t2, body, v) = parse_dump_payload(&d).expect("own DUMP framing");
    assert_eq!((t2, body), (t, payload));
    let via_dump = decode_value_in(Dialect::of_rdb_version(u32::from(v)), t2, body);
    assert_eq!(
        format!("{direct:?}"),
        format!("{via_dump:?}"),
        "a DUMP decodes as the entry"
    );
}

fn small_big_values() -> BigValues {
    BigValues {
        elements: 3,
        nodes: 1,
        string_bytes: 64,
        chunk_elements: 2,
        chunk_nodes: 1,
        chunk_bytes: 100,
    }
}

fn check_input(data: &[u8], sizes: &[usize]) {
    let len = data.len();
    let (whole, peak) = measured(|| parse(data, len, None));
    assert!(
        peak <= memory_bound(len),
        "parsing {len} bytes held {peak} bytes at once"
    );
    let split = parse(
        Splits {
            data,
            sizes,
            next: 0,
        },
        len,
        None,
    );
    assert_eq!(whole, split, "reads of sizes {sizes:?} changed the outcome");
    let (streamed, peak) = measured(|| {
        parse(
            Splits {
                data,
                sizes,
                next: 0,
            },
            len,
            Some(small_big_values()),
        )
    });
    assert!(
        peak <= memory_bound(len),
        "streaming {len} bytes held {peak} bytes at once"
    );
    let streamed_whole = parse(data, len, Some(small_big_values()));
    assert_eq!(
        streamed, streamed_whole,
        "reads of sizes {sizes:?} changed the streamed outcome"
    );
}

/// The entries (type, payload, RDB version) of the unmutated seeds: DUMP payloads to mutate.
fn payloads() -> &'static [(u8, Vec<u8>, u16)] {
    static P: OnceLock<Vec<(u8, Vec<u8>, u16)>> = OnceLock::new();
    P.get_or_init(|| {
        let mut out = Vec::new();
        for (name, data) in seeds() {
            let mut p = Parser::new(&data[..]);
            while let Some(item) = p.next_item().unwrap_or_else(|e| panic!("{name}: {e}")) {
                if let Item::Entry(e) = item {
                    let v = p.rdb_version().unwrap_or(0) as u16;
                    out.push((e.value_type, e.payload.to_vec(), v));
                }
            }
        }
        out
    })
}

#[test]
fn seeds_parse_whole_and_split() {
    for (name, data) in seeds() {
        let out = parse(&data[..], data.len(), None);
        assert_eq!(out.end, Ok(()), "{name}");
        for sizes in [&[1usize][..], &[7, 1, 4096], &[65_537, 3]] {
            check_input(data, sizes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn mutated_rdb_files(
        seed in any::<prop::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..6),
        crc in any::<bool>(),
        sizes in proptest::collection::vec(1usize..70_000, 1..6),
    ) {
        let (_, data) = &seeds()[seed.index(seeds().len())];
        let mut data = data.clone();
        apply(&mut data, &muts);
        if crc {
            fix_crc(&mut data);
        }
        check_input(&data, &sizes);
    }

    #[test]
    fn mutated_dump_payloads(
        which in any::<prop::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..5),
        crc in any::<bool>(),
    ) {
        let (t, payload, version) = &payloads()[which.index(payloads().len())];
        let mut d = BytesMut::new();
        write_dump_payload(&mut d, *t, payload, *version);
        let mut d = d.to_vec();
        apply(&mut d, &muts);
        if crc {
            fix_crc(&mut d);
        }
        let len = d.len();
        let ((), peak) = measured(|| match parse_dump_payload(&d) {
            Err(e) => check_error(&e, len, "reading a DUMP"),
            Ok((t, body, v)) => {
                if let Err(e) = decode_value_in(Dialect::of_rdb_version(u32::from(v)), t, body) {
                    check_error(&e, body.len(), "decoding a DUMP");
                }
            }
        });
        prop_assert!(peak <= memory_bound(len), "a {len}-byte DUMP held {peak} bytes");
    }

    #[test]
    fn random_payloads_of_every_type(
        t in 0u8..=30,
        valkey in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        huge in proptest::option::of((0..HUGE.len(), any::<prop::sample::Index>())),
    ) {
        let mut body = body;
        if let Some((h, at)) = huge {
            let at = if body.is_empty() { 0 } else { at.index(body.len()) };
            body.splice(at..at, HUGE[h].iter().copied());
        }
        let dialect = if valkey { Dialect::Valkey } else { Dialect::Redis };
        let len = body.len();
        let (r, peak) = measured(|| decode_value_in(dialect, t, &body));
        if let Err(e) = r {
            check_error(&e, len, "decoding");
        }
        prop_assert!(peak <= memory_bound(len), "a {len}-byte payload held {peak} bytes");
    }
}

/// Every huge length prefix, in a tiny RDB as a key's string, as an AUX field, as an element
/// count of each collection type, and in a tiny payload of each type: a truncation or a
/// typed error within the input, and never more held than the bound (far below the 4 GB to
/// 16 EB declared).
#[test]
fn huge_declared_lengths_in_tiny_inputs() {
    for h in HUGE {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let mut aux = b"REDIS0011\xfa".to_vec();
        aux.extend_from_slice(h);
        cases.push(aux);
        for t in [0u8, 1, 2, 3, 4, 5, 14, 15, 18, 19, 21, 22, 24] {
            for magic in [&b"REDIS0011"[..], b"VALKEY080"] {
                let mut v = magic.to_vec();
                v.extend_from_slice(&[t, 1, b'k']);
                v.extend_from_slice(h);
                v.extend_from_slice(b"tiny");
                cases.push(v);
            }
        }
        for data in &cases {
            let len = data.len();
            let (out, peak) = measured(|| parse(&data[..], len, None));
            assert!(out.end.is_err(), "{data:?} accepted");
            assert!(peak <= memory_bound(len), "{data:?}: held {peak} bytes");
            let (_, peak) = measured(|| parse(&data[..], len, Some(small_big_values())));
            assert!(
                peak <= memory_bound(len),
                "{data:?} streamed: held {peak} bytes"
            );
        }
        for t in 0u8..=30 {
            for dialect in [Dialect::Redis, Dialect::Valkey] {
                let mut body = h.to_vec();
                body.extend_from_slice(b"tiny");
                let (r, peak) = measured(|| decode_value_in(dialect, t, &body));
                if let Err(e) = r {
                    check_error(&e, body.len(), "decoding");
                }
                assert!(
                    peak <= memory_bound(body.len()),
                    "type {t}: held {peak} bytes"
                );
            }
        }
    }
}
