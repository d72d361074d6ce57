//! Robustness tests on a small real RDB (written by redis-server 7.0.15,
//! `maxmemory-policy allkeys-lfu`, see `tests/fixtures/small-7.0.rdb`).

use std::io::Read;

use ferry_rdb::{decode_value, ErrorKind, Item, Parser, RdbError, Value};
use proptest::prelude::*;

const SMALL: &[u8] = include_bytes!("fixtures/small-7.0.rdb");

fn parse_all(data: &[u8]) -> Result<Vec<Item>, RdbError> {
    let mut p = Parser::new(data);
    let mut items = Vec::new();
    while let Some(it) = p.next_item()? {
        items.push(it);
        assert!(items.len() < 1_000_000, "runaway parser");
    }
    Ok(items)
}

/// Parses and also decodes every entry (decode errors are fine, panics not).
fn parse_and_decode(data: &[u8]) -> Result<usize, RdbError> {
    let mut p = Parser::new(data);
    let mut n = 0;
    while let Some(it) = p.next_item()? {
        if let Item::Entry(e) = it {
            let _ = decode_value(e.value_type, &e.payload);
        }
        n += 1;
    }
    Ok(n)
}

/// A reader returning at most `chunk` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn small_fixture_parses() {
    let items = parse_all(SMALL).unwrap();
    let mut keys = Vec::new();
    let mut saw_function = false;
    for it in &items {
        match it {
            Item::Entry(e) => {
                keys.push((e.db, String::from_utf8_lossy(&e.key).into_owned()));
                assert!(e.freq.is_some(), "LFU freq expected for {:?}", e.key);
                decode_value(e.value_type, &e.payload).unwrap();
                if &e.key[..] == b"str" {
                    assert!(e.expire_ms.is_some());
                    assert_eq!(
                        decode_value(e.value_type, &e.payload).unwrap(),
                        Value::String("hello".into())
                    );
                }
                if &e.key[..] == b"lzfkey" {
                    assert_eq!(
                        decode_value(e.value_type, &e.payload).unwrap(),
                        Value::String("abcabcabc".repeat(20).into())
                    );
                }
            }
            Item::Function { code } => {
                saw_function = true;
                assert!(code.starts_with(b"#!lua name=mylib"));
            }
            _ => {}
        }
    }
    assert!(saw_function);
    keys.sort();
    assert_eq!(keys.len(), 11);
    assert!(keys.contains(&(2, "other".to_string())));
    assert!(keys.contains(&(0, "st".to_string())));
}

#[test]
fn trickle_reader_gives_same_items() {
    let full = parse_all(SMALL).unwrap();
    for chunk in [1, 2, 3, 7, 64] {
        let mut p = Parser::new(Trickle { data: SMALL, chunk });
        let mut items = Vec::new();
        while let Some(it) = p.next_item().unwrap() {
            items.push(it);
        }
        assert_eq!(items, full, "chunk {chunk}");
        assert_eq!(p.offset(), SMALL.len() as u64);
    }
}

#[test]
fn truncated_at_every_offset_is_an_error() {
    for len in 0..SMALL.len() {
        let err = parse_all(&SMALL[..len]).expect_err("truncated input must fail");
        assert!(
            err.offset <= len as u64,
            "offset {} > len {len}",
            err.offset
        );
        assert!(
            matches!(err.kind, ErrorKind::UnexpectedEof),
            "len {len}: expected truncation, got {err}"
        );
        // Also through a one-byte-at-a-time reader.
        let mut p = Parser::new(Trickle {
            data: &SMALL[..len],
            chunk: 1,
        });
        let r = loop {
            match p.next_item() {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(r.is_err());
        // A failed parser stays failed.
        assert!(p.next_item().is_err());
    }
}

#[test]
fn flipped_byte_is_detected() {
    for i in 0..SMALL.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut data = SMALL.to_vec();
            data[i] ^= mask;
            let err = parse_and_decode(&data).expect_err("corruption must be detected");
            let msg = err.to_string();
            assert!(msg.contains("at offset"), "{msg}");
        }
    }
}

#[test]
fn checksum_mismatch_names_both_values() {
    let mut data = SMALL.to_vec();
    let n = data.len();
    data[n - 1] ^= 0x10;
    let err = parse_all(&data).unwrap_err();
    match err.kind {
        ErrorKind::ChecksumMismatch { expected, actual } => assert_ne!(expected, actual),
        k => panic!("unexpected {k}"),
    }
    assert_eq!(err.offset, (n - 8) as u64);
    // A zero checksum means "not computed" and is accepted.
    let mut data = SMALL.to_vec();
    for b in &mut data[n - 8..] {
        *b = 0;
    }
    parse_all(&data).unwrap();
}

#[test]
fn error_names_key_inside_entry() {
    // Cut inside the value of key "lzfkey".
    let pos = SMALL.windows(6).position(|w| w == b"lzfkey").unwrap();
    let err = parse_all(&SMALL[..pos + 12]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("lzfkey"));
    assert!(err.to_string().contains("lzfkey"), "{err}");
}

#[test]
fn bad_header() {
    let e = parse_all(b"RODIS0010\xff").unwrap_err();
    assert!(matches!(e.kind, ErrorKind::BadMagic(_)));
    let e = parse_all(b"REDIS0099\xff").unwrap_err();
    assert!(matches!(e.kind, ErrorKind::UnsupportedVersion(99)));
    // Old versions have no checksum.
    assert!(parse_all(b"REDIS0004\xff").unwrap().is_empty());
    // Valkey 9 magic.
    let mut v = b"VALKEY080\xff".to_vec();
    v.extend_from_slice(&ferry_rdb::crc64(&v).to_le_bytes());
    let mut p = Parser::new(&v[..]);
    assert!(p.next_item().unwrap().is_none());
    assert_eq!(p.rdb_version(), Some(80));
    let e = parse_all(b"REDIS0010\x42").unwrap_err();
    assert!(matches!(e.kind, ErrorKind::UnknownType(0x42)));
    assert_eq!(e.offset, 9);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut data = b"REDIS0011".to_vec();
        data.extend_from_slice(&body);
        let _ = parse_and_decode(&data);
        let _ = parse_and_decode(&body);
    }

    #[test]
    fn mutated_fixture_never_panics(
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = SMALL.to_vec();
        for (i, b) in muts {
            let i = i.index(data.len());
            data[i] = b;
        }
        let _ = parse_and_decode(&data);
        let cut = cut.index(data.len());
        let _ = parse_and_decode(&data[..cut]);
    }

    #[test]
    fn decode_random_payload_never_panics(t in 0u8..30, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_value(t, &body);
    }
}

/// A reader that fails with an I/O error after `ok` bytes.
struct Failing<'a> {
    data: &'a [u8],
    ok: usize,
    interrupted_once: bool,
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.interrupted_once {
            self.interrupted_once = true;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.ok == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        let n = self.ok.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn io_error_is_reported_with_offset() {
    let mut p = Parser::new(Failing {
        data: SMALL,
        ok: 100,
        interrupted_once: false,
    });
    let err = loop {
        match p.next_item() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("should fail"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err.kind, ErrorKind::Io(_)), "{err}");
    assert_eq!(err.offset, 100);
    assert!(err.to_string().contains("peer went away"), "{err}");
}

#[test]
fn into_parts_returns_trailing_bytes() {
    let mut data = SMALL.to_vec();
    data.extend_from_slice(b"+CONTINUE\r\n");
    let mut p = Parser::new(&data[..]);
    while p.next_item().unwrap().is_some() {}
    assert_eq!(p.offset(), SMALL.len() as u64);
    assert_eq!(p.buffered(), b"+CONTINUE\r\n");
    let (_, rest) = p.into_parts();
    assert_eq!(&rest[..], b"+CONTINUE\r\n");
}
