//! LZF decompression (the format produced by Redis' `lzf_compress`), whole or streamed.
//!
//! The stream is a sequence of operations introduced by a control byte `c`:
//! * `c < 32`: a literal run of `c + 1` bytes follows;
//! * otherwise a back reference: length `c >> 5` (7 means "add the next
//!   byte"), plus 2; distance `((c & 31) << 8) + next byte + 1` back from the
//!   current output end.
//!
//! A back reference reaches at most [`WINDOW`] bytes back, so [`Decoder`] can emit the
//! output piece by piece while keeping only that much of it.

use std::fmt;

use bytes::BufMut;

/// How far back a back reference can reach: `(31 << 8) + 255 + 1`.
pub const WINDOW: usize = 8192;

/// The decoder's history is cut back to [`WINDOW`] bytes once it is longer than this.
const HISTORY_KEEP: usize = 64 * 1024;

/// What is wrong with LZF input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LzfErrorKind {
    /// A literal run goes past the end of the compressed input.
    TruncatedLiteral,
    /// The compressed input ends inside a back reference's header.
    TruncatedBackReference,
    /// A back reference reaches before the start of the output.
    BackReferenceBeforeStart {
        /// Its distance.
        distance: usize,
    },
    /// The input expands to more than the declared length.
    OutputTooLong {
        /// The declared length.
        expected: u64,
    },
    /// The input ends before the declared length was produced.
    OutputTooShort {
        /// Bytes produced.
        produced: u64,
        /// The declared length.
        expected: u64,
    },
}

/// An LZF error with the position of the offending operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LzfError {
    /// Offset in the compressed input of the operation's control byte (for an output that
    /// is too short: the end of the input).
    pub input_offset: u64,
    /// Bytes of output produced before that operation.
    pub output_offset: u64,
    /// The cause.
    pub kind: LzfErrorKind,
}

impl fmt::Display for LzfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            LzfErrorKind::TruncatedLiteral => write!(f, "literal run past the end of the input"),
            LzfErrorKind::TruncatedBackReference => write!(f, "truncated back reference"),
            LzfErrorKind::BackReferenceBeforeStart { distance } => {
                write!(f, "back reference distance {distance} before the start")
            }
            LzfErrorKind::OutputTooLong { expected } => {
                write!(f, "output longer than the declared {expected} bytes")
            }
            LzfErrorKind::OutputTooShort { produced, expected } => {
                write!(f, "decompressed {produced} bytes, expected {expected}")
            }
        }?;
        write!(
            f,
            " (compressed byte {}, output byte {})",
            self.input_offset, self.output_offset
        )
    }
}

impl std::error::Error for LzfError {}

/// Decompresses `input`, which must expand to exactly `expected_len` bytes.
///
/// Never allocates more than `expected_len` bytes (and initially at most a
/// bounded multiple of the input size, so a corrupt `expected_len` cannot
/// trigger a huge allocation).
pub fn decompress(input: &[u8], expected_len: usize) -> Result<Vec<u8>, LzfError> {
    // A back reference of 3 input bytes expands to at most 264 bytes.
    let cap = expected_len.min(input.len().saturating_mul(90).saturating_add(64));
    let mut out = Vec::with_capacity(cap);
    decompress_into(input, expected_len, &mut out)?;
    Ok(out)
}

/// Like [`decompress`] but appends to `out`.
pub fn decompress_into(
    input: &[u8],
    expected_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), LzfError> {
    let base = out.len();
    let limit = base.saturating_add(expected_len);
    let err = |at: usize, out: &Vec<u8>, kind| LzfError {
        input_offset: at as u64,
        output_offset: (out.len() - base) as u64,
        kind,
    };
    let too_long = LzfErrorKind::OutputTooLong {
        expected: expected_len as u64,
    };
    let mut ip = 0usize;
    while ip < input.len() {
        let at = ip;
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            if out.len() + run > limit {
                return Err(err(at, out, too_long));
            }
            let Some(lit) = input.get(ip..ip + run) else {
                return Err(err(at, out, LzfErrorKind::TruncatedLiteral));
            };
            out.extend_from_slice(lit);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                let Some(&extra) = input.get(ip) else {
                    return Err(err(at, out, LzfErrorKind::TruncatedBackReference));
                };
                len += extra as usize;
                ip += 1;
            }
            len += 2;
            let Some(&lo) = input.get(ip) else {
                return Err(err(at, out, LzfErrorKind::TruncatedBackReference));
            };
            ip += 1;
            let dist = ((ctrl & 0x1f) << 8) + lo as usize + 1;
            // Checked in this order by Redis' `lzf_decompress` too.
            if out.len() + len > limit {
                return Err(err(at, out, too_long));
            }
            if dist > out.len() - base {
                return Err(err(
                    at,
                    out,
                    LzfErrorKind::BackReferenceBeforeStart { distance: dist },
                ));
            }
            copy_back(out, dist, len);
        }
    }
    if out.len() != limit {
        return Err(LzfError {
            input_offset: input.len() as u64,
            output_offset: (out.len() - base) as u64,
            kind: LzfErrorKind::OutputTooShort {
                produced: (out.len() - base) as u64,
                expected: expected_len as u64,
            },
        });
    }
    Ok(())
}

/// Appends `len` bytes copied from `dist` bytes before the end of `out` (`dist <= out.len()`);
/// an overlapping reference repeats its pattern.
#[inline]
fn copy_back(out: &mut Vec<u8>, dist: usize, mut len: usize) {
    let mut from = out.len() - dist;
    while len > 0 {
        // `dist` bytes at a time never overlap what is being written.
        let n = len.min(dist);
        out.extend_from_within(from..from + n);
        from += n;
        len -= n;
    }
}

/// Where a [`Decoder`] stopped inside the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At an operation boundary: the next byte is a control byte.
    Ctrl,
    /// Inside a literal run: `left` bytes still to copy.
    Literal { left: usize },
    /// After the control byte of a long back reference: its length byte is next.
    RefLen { ctrl: u8 },
    /// Its length is known; the low distance byte is next.
    RefLo { ctrl: u8, len: usize },
    /// Copying a back reference: `left` bytes from `dist` back.
    Copy { dist: usize, left: usize },
}

/// A streaming LZF decompressor: feed it the compressed input in any pieces
/// ([`Decoder::decode`]) and take the output in pieces of any size; it keeps only the last
/// [`WINDOW`] bytes of output (plus the piece being produced), never the whole.
#[derive(Debug)]
pub struct Decoder {
    expected: u64,
    produced: u64,
    consumed: u64,
    /// Input offset of the current operation's control byte.
    op_at: u64,
    /// Output produced before the current operation.
    op_out: u64,
    state: State,
    /// The most recent output (at least the last `WINDOW` bytes, when there are that many).
    hist: Vec<u8>,
}

impl Decoder {
    /// A decoder for input that expands to exactly `expected_len` bytes.
    pub fn new(expected_len: u64) -> Decoder {
        Decoder {
            expected: expected_len,
            produced: 0,
            consumed: 0,
            op_at: 0,
            op_out: 0,
            state: State::Ctrl,
            hist: Vec::new(),
        }
    }

    /// Bytes of output produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Bytes of input consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// True once the declared length was produced and no operation is half done.
    pub fn is_done(&self) -> bool {
        self.produced == self.expected && self.state == State::Ctrl
    }

    fn err(&self, kind: LzfErrorKind) -> LzfError {
        LzfError {
            input_offset: self.op_at,
            output_offset: self.op_out,
            kind,
        }
    }

    /// Decompresses from `input` (the continuation of what earlier calls consumed),
    /// appending at most `max_out` bytes to `out`. Returns the number of input bytes
    /// consumed: all of `input`, or fewer when `max_out` bytes were written first. Once
    /// the declared length is reached any further operation is an error. After an error
    /// the decoder must not be used again.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut impl BufMut,
        max_out: usize,
    ) -> Result<usize, LzfError> {
        if self.hist.len() > HISTORY_KEEP {
            let cut = self.hist.len() - WINDOW;
            self.hist.drain(..cut);
        }
        let start = self.hist.len();
        let r = self.run(input, start, max_out);
        self.produced += (self.hist.len() - start) as u64;
        out.put_slice(&self.hist[start..]);
        let used = r?;
        self.consumed += used as u64;
        Ok(used)
    }

    /// Checks that the input ended where the output did.
    pub fn finish(&self) -> Result<(), LzfError> {
        match self.state {
            State::Ctrl if self.produced == self.expected => Ok(()),
            State::Ctrl => Err(LzfError {
                input_offset: self.consumed,
                output_offset: self.produced,
                kind: LzfErrorKind::OutputTooShort {
                    produced: self.produced,
                    expected: self.expected,
                },
            }),
            State::Literal { .. } => Err(self.err(LzfErrorKind::TruncatedLiteral)),
            State::RefLen { .. } | State::RefLo { .. } => {
                Err(self.err(LzfErrorKind::TruncatedBackReference))
            }
            // Only reachable when the caller stopped asking for output.
            State::Copy { .. } => Err(self.err(LzfErrorKind::OutputTooShort {
                produced: self.produced,
                expected: self.expected,
            })),
        }
    }

    /// The decoding loop: appends to `hist` (output from `start` on is new) and returns the
    /// input consumed. On error the consumed count is lost, which is fine: the decoder is
    /// not usable after an error.
    fn run(&mut self, input: &[u8], start: usize, max_out: usize) -> Result<usize, LzfError> {
        let mut ip = 0usize;
        // Output still allowed in this call (and in total).
        let total_left = self.expected - self.produced;
        let mut room = (max_out as u64).min(total_left) as usize;
        let out_len = |hist: &Vec<u8>| (hist.len() - start) as u64;
        loop {
            match self.state {
                State::Ctrl => {
                    if ip >= input.len() {
                        return Ok(ip);
                    }
                    if room == 0 && self.produced + out_len(&self.hist) < self.expected {
                        return Ok(ip);
                    }
                    self.op_at = self.consumed + ip as u64;
                    self.op_out = self.produced + out_len(&self.hist);
                    let ctrl = input[ip];
                    ip += 1;
                    if ctrl < 32 {
                        let run = ctrl as usize + 1;
                        if self.op_out + run as u64 > self.expected {
                            return Err(self.err(LzfErrorKind::OutputTooLong {
                                expected: self.expected,
                            }));
                        }
                        self.state = State::Literal { left: run };
                    } else if ctrl >> 5 == 7 {
                        self.state = State::RefLen { ctrl };
                    } else {
                        self.state = State::RefLo {
                            ctrl,
                            len: (ctrl >> 5) as usize + 2,
                        };
                    }
                }
                State::Literal { left } => {
                    let n = left.min(room).min(input.len() - ip);
                    if n == 0 {
                        return Ok(ip);
                    }
                    self.hist.extend_from_slice(&input[ip..ip + n]);
                    ip += n;
                    room -= n;
                    self.state = if n == left {
                        State::Ctrl
                    } else {
                        State::Literal { left: left - n }
                    };
                }
                State::RefLen { ctrl } => {
                    let Some(&extra) = input.get(ip) else {
                        return Ok(ip);
                    };
                    ip += 1;
                    self.state = State::RefLo {
                        ctrl,
                        len: 7 + extra as usize + 2,
                    };
                }
                State::RefLo { ctrl, len } => {
                    let Some(&lo) = input.get(ip) else {
                        return Ok(ip);
                    };
                    ip += 1;
                    let dist = (((ctrl & 0x1f) as usize) << 8) + lo as usize + 1;
                    if self.op_out + len as u64 > self.expected {
                        return Err(self.err(LzfErrorKind::OutputTooLong {
                            expected: self.expected,
                        }));
                    }
                    if dist as u64 > self.op_out {
                        return Err(
                            self.err(LzfErrorKind::BackReferenceBeforeStart { distance: dist })
                        );
                    }
                    self.state = State::Copy { dist, left: len };
                }
                State::Copy { dist, left } => {
                    let n = left.min(room);
                    if n == 0 {
                        return Ok(ip);
                    }
                    // `hist` holds at least `dist` bytes: the last WINDOW bytes are kept and
                    // `dist <= op_out`.
                    copy_back(&mut self.hist, dist, n);
                    room -= n;
                    self.state = if n == left {
                        State::Ctrl
                    } else {
                        State::Copy {
                            dist,
                            left: left - n,
                        }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_backref() {
        // "abc" literal, then back reference len 3+2... build by hand:
        // literal run of 3: ctrl 2, 'a','b','c'
        // backref: len=1 (->3 bytes), dist=3: ctrl = (1<<5) | 0, lo = 2
        let input = [2u8, b'a', b'b', b'c', 0x20, 2];
        assert_eq!(decompress(&input, 6).unwrap(), b"abcabc");
        // overlapping: "a" then copy 5 from dist 1
        let input = [0u8, b'a', 0x60, 0];
        assert_eq!(decompress(&input, 6).unwrap(), b"aaaaaa");
    }

    #[test]
    fn errors() {
        let kind = |r: Result<Vec<u8>, LzfError>| r.unwrap_err().kind;
        assert_eq!(
            kind(decompress(&[5, b'a'], 6)),
            LzfErrorKind::TruncatedLiteral
        );
        assert_eq!(
            kind(decompress(&[0x20, 5], 3)),
            LzfErrorKind::BackReferenceBeforeStart { distance: 6 }
        );
        assert_eq!(
            kind(decompress(&[0, b'a'], 2)),
            LzfErrorKind::OutputTooShort {
                produced: 1,
                expected: 2
            }
        );
        assert_eq!(
            kind(decompress(&[1, b'a', b'b'], 1)),
            LzfErrorKind::OutputTooLong { expected: 1 }
        );
        assert_eq!(
            kind(decompress(&[0, b'a', 0xe0], 20)),
            LzfErrorKind::TruncatedBackReference
        );
        let e = decompress(&[0, b'a', 0, b'b', 0x20, 9], 10).unwrap_err();
        assert_eq!((e.input_offset, e.output_offset), (4, 2));
    }
}
