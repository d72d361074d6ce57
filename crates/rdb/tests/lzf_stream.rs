//! The streaming LZF decoder against whole decompression: every way of cutting the input
//! and the output gives the same bytes, and corrupt input gives a typed error at the
//! offending operation.

use ferry_rdb::lzf::{decompress, Decoder, LzfError, LzfErrorKind, WINDOW};
use proptest::prelude::*;

/// One LZF operation.
#[derive(Debug, Clone)]
enum Op {
    Literal(Vec<u8>),
    /// Length 3..=264, distance 1..=8192 (clamped to the output so far).
    Ref {
        len: usize,
        dist: usize,
    },
}

/// Encodes `ops` and computes what they expand to.
fn encode(ops: &[Op]) -> (Vec<u8>, Vec<u8>) {
    let mut c = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    for op in ops {
        match op {
            Op::Literal(b) => {
                for part in b.chunks(32) {
                    c.push((part.len() - 1) as u8);
                    c.extend_from_slice(part);
                    out.extend_from_slice(part);
                }
            }
            Op::Ref { len, dist } => {
                if out.is_empty() {
                    continue;
                }
                let dist = (*dist).clamp(1, out.len().min(WINDOW));
                let (len, d) = ((*len).clamp(3, 264), dist - 1);
                let l = len - 2;
                if l < 7 {
                    c.push(((l as u8) << 5) | (d >> 8) as u8);
                } else {
                    c.push((7 << 5) | (d >> 8) as u8);
                    c.push((l - 7) as u8);
                }
                c.push(d as u8);
                for _ in 0..len {
                    out.push(out[out.len() - dist]);
                }
            }
        }
    }
    (c, out)
}

/// Streams `input` through a decoder, `piece` input bytes and `step` output bytes at a time.
fn stream(input: &[u8], expected: usize, piece: usize, step: usize) -> Result<Vec<u8>, LzfError> {
    let mut d = Decoder::new(expected as u64);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let end = (at + piece).min(input.len());
        let want = step.min(expected - out.len());
        let before = out.len();
        let used = d.decode(&input[at..end], &mut out, want)?;
        assert!(out.len() - before <= want, "more output than asked for");
        at += used;
        let progress = used > 0 || out.len() > before;
        if at == input.len() && (out.len() == expected || !progress) {
            break;
        }
        assert!(progress, "no progress at input {at}");
    }
    d.finish()?;
    assert_eq!(d.consumed(), input.len() as u64);
    Ok(out)
}

/// Output long enough to cross the window and the decoder's history compaction several
/// times, with references at the largest distance, overlapping ones and maximal lengths.
fn long_sample() -> (Vec<u8>, Vec<u8>) {
    let mut ops = Vec::new();
    let mut seed = 1u32;
    let mut rnd = || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (seed >> 8) as usize
    };
    for i in 0..3000 {
        match i % 5 {
            0 => ops.push(Op::Literal(
                (0..1 + rnd() % 40).map(|_| rnd() as u8).collect(),
            )),
            1 => ops.push(Op::Ref {
                len: 264,
                dist: WINDOW,
            }),
            2 => ops.push(Op::Ref {
                len: 3 + rnd() % 262,
                dist: 1 + rnd() % 4,
            }),
            3 => ops.push(Op::Ref {
                len: 3 + rnd() % 10,
                dist: WINDOW - rnd() % 3,
            }),
            _ => ops.push(Op::Ref {
                len: 9 + rnd() % 256,
                dist: 1 + rnd() % WINDOW,
            }),
        }
    }
    encode(&ops)
}

#[test]
fn every_cut_matches_whole_decompression() {
    let (c, out) = long_sample();
    assert!(out.len() > 4 * 64 * 1024, "sample of {} bytes", out.len());
    assert_eq!(decompress(&c, out.len()).unwrap(), out);
    for piece in [1, 2, 3, 4, 31, 33, 257, 4096, 65536, usize::MAX / 2] {
        for step in [
            1,
            2,
            3,
            263,
            264,
            265,
            WINDOW - 1,
            WINDOW,
            WINDOW + 1,
            64 * 1024,
            1 << 20,
        ] {
            if piece < 4 && step < 4 {
                continue; // slow and covered by the small sample below
            }
            let got = stream(&c, out.len(), piece, step).unwrap();
            assert!(got == out, "piece {piece} step {step}");
        }
    }
}

#[test]
fn every_single_boundary_on_a_small_sample() {
    let ops = vec![
        Op::Literal(b"abcdefgh".to_vec()),
        Op::Ref { len: 20, dist: 3 },
        Op::Literal((0..40).collect()),
        Op::Ref { len: 264, dist: 50 },
        Op::Ref { len: 5, dist: 1 },
    ];
    let (c, out) = encode(&ops);
    // Cut the input once at every position and the output once at every position.
    for cut in 0..=c.len() {
        for ocut in 0..=out.len() {
            let mut d = Decoder::new(out.len() as u64);
            let mut got = Vec::new();
            let mut at = 0;
            let mut input_end = cut;
            let mut room = ocut;
            while got.len() < out.len() || at < c.len() {
                if at == input_end {
                    input_end = c.len();
                }
                if room == 0 {
                    room = out.len();
                }
                let before = got.len();
                at += d.decode(&c[at..input_end], &mut got, room).unwrap();
                room -= got.len() - before;
            }
            d.finish().unwrap();
            assert_eq!(got, out, "input cut {cut}, output cut {ocut}");
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..70).prop_map(Op::Literal),
        (3usize..=264, 1usize..=WINDOW).prop_map(|(len, dist)| Op::Ref { len, dist }),
        (3usize..=264, 1usize..=4).prop_map(|(len, dist)| Op::Ref { len, dist }),
    ]
}

proptest! {
    #[test]
    fn streamed_equals_whole(
        ops in proptest::collection::vec(op(), 1..200),
        piece in 1usize..300,
        step in 1usize..10_000,
    ) {
        let (c, out) = encode(&ops);
        prop_assert_eq!(&decompress(&c, out.len()).unwrap(), &out);
        prop_assert_eq!(&stream(&c, out.len(), piece, step).unwrap(), &out);
    }

    /// Any damage: both decoders fail alike (same kind and position) or both succeed alike.
    #[test]
    fn corrupt_input_same_error(
        ops in proptest::collection::vec(op(), 1..60),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        piece in 1usize..100,
        step in 1usize..5000,
        delta in -3i64..3,
    ) {
        let (mut c, out) = encode(&ops);
        if !c.is_empty() {
            let i = at.index(c.len());
            c[i] = byte;
            let keep = cut.index(c.len() + 1);
            if keep % 3 == 0 {
                c.truncate(keep);
            }
        }
        let expected = (out.len() as i64 + delta).max(0) as usize;
        let whole = decompress(&c, expected);
        let streamed = stream(&c, expected, piece, step);
        match (whole, streamed) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "whole {:?} / streamed {:?}", a.map(|v| v.len()), b.map(|v| v.len())),
        }
    }
}

#[test]
fn corrupt_input_is_a_typed_error_with_its_offset() {
    let err = |c: &[u8], n: usize| stream(c, n, 3, 5).unwrap_err();
    // A back reference before the start, as the third operation (input byte 4).
    let e = err(&[0, b'a', 0, b'b', 0x20, 9], 10);
    assert_eq!(
        e.kind,
        LzfErrorKind::BackReferenceBeforeStart { distance: 10 }
    );
    assert_eq!((e.input_offset, e.output_offset), (4, 2));
    // A literal run cut short.
    let e = err(&[0, b'a', 5, b'x'], 7);
    assert_eq!(e.kind, LzfErrorKind::TruncatedLiteral);
    assert_eq!((e.input_offset, e.output_offset), (2, 1));
    // A long back reference whose length byte is missing.
    let e = err(&[0, b'a', 0xe0], 20);
    assert_eq!(e.kind, LzfErrorKind::TruncatedBackReference);
    assert_eq!(e.input_offset, 2);
    // More output than declared, found at the operation that overflows.
    let e = err(&[2, b'a', b'b', b'c', 0x20, 2], 5);
    assert_eq!(e.kind, LzfErrorKind::OutputTooLong { expected: 5 });
    assert_eq!((e.input_offset, e.output_offset), (4, 3));
    // Input that ends early.
    let e = err(&[2, b'a', b'b', b'c'], 9);
    assert_eq!(
        e.kind,
        LzfErrorKind::OutputTooShort {
            produced: 3,
            expected: 9
        }
    );
    assert_eq!(e.input_offset, 4);
    assert!(e.to_string().contains("compressed byte 4"), "{e}");
}
