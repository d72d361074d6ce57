//! RESP frames and a two-step decoder: [`frame_len`] checks that a buffer holds a whole
//! frame, [`parse`] then splits exactly that many bytes off. A partial read never
//! half-consumes, and the caller always knows how many bytes a frame took — which is what
//! the replication offset counts.

use bytes::{Buf, Bytes, BytesMut};

/// A RESP2 frame (plus the RESP3 types a server may answer with, mapped onto these).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Frame>),
}

impl Frame {
    /// The frame's bytes when it is a simple string or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::Simple(b) | Frame::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// Lossy text of a simple/bulk/error frame, for messages.
    pub fn to_text(&self) -> String {
        match self {
            Frame::Simple(b) | Frame::Bulk(b) | Frame::Error(b) => {
                String::from_utf8_lossy(b).into_owned()
            }
            Frame::Integer(i) => i.to_string(),
            Frame::Null => "(nil)".into(),
            Frame::Array(items) => {
                let parts: Vec<String> = items.iter().map(Frame::to_text).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Frame::Error(_))
    }

    /// Array of bulk strings (a command as replicated), as argv.
    pub fn into_argv(self) -> Option<Vec<Bytes>> {
        match self {
            Frame::Array(items) => items
                .into_iter()
                .map(|f| match f {
                    Frame::Bulk(b) | Frame::Simple(b) => Some(b),
                    Frame::Integer(i) => Some(Bytes::from(i.to_string())),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// A malformed frame: what was wrong and where, relative to the buffer start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed RESP at byte {offset}: {reason}")]
pub struct DecodeError {
    pub offset: usize,
    pub reason: String,
}

fn bad(offset: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        offset,
        reason: reason.into(),
    }
}

/// Largest aggregate or bulk length accepted where no tighter limit is set (Redis's own
/// proto-max-bulk-len is 512 MB by default and may be raised; anything past this is
/// corruption, not data).
pub const MAX_LEN: usize = 1 << 34;
const MAX_DEPTH: usize = 64;
/// Longest line (simple string, error, integer, length header) accepted: a line is looked
/// for from its start again after each read, so it is kept short.
const MAX_LINE: usize = 1 << 20;

/// Length in bytes of the complete frame at the start of `buf`, or `None` if more bytes are
/// needed. Stateless: a caller that reads a big frame in many pieces keeps a [`Decoder`]
/// instead, which does not scan again what it has already checked.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    Decoder::new(MAX_LEN).frame_len(buf)
}

/// A frame checker that resumes where it stopped: fed a buffer that only grows at its
/// end between calls, it checks each byte once (an array of a million elements arriving
/// in small reads is linear, not quadratic), and it refuses, before the bytes arrive, a
/// frame bigger than its limit (a reply announcing `$10000000000` to a handshake).
///
/// The buffer's front must not change while a frame is incomplete: consume only whole
/// frames ([`Decoder::parse`]), or call [`Decoder::reset`] after changing it.
#[derive(Debug, Clone)]
pub struct Decoder {
    max: usize,
    /// Where checking resumes, and per open aggregate the elements still to come.
    pos: usize,
    open: Vec<u64>,
}

impl Decoder {
    /// A decoder refusing any frame (and any declared length) over `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max: max.min(MAX_LEN),
            pos: 0,
            open: Vec::new(),
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(MAX_LEN);
    }

    /// Forget a partly checked frame (the buffer's front changed).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
    }

    fn too_big(&self, at: usize, what: &str, n: u128) -> DecodeError {
        bad(
            at,
            format!("{what} {n} is over the limit of {} bytes", self.max),
        )
    }

    /// Length of the whole frame at the start of `buf`, or `None` while it is incomplete.
    pub fn frame_len(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        if buf.len() < self.pos {
            // The front was consumed behind our back: start over rather than misread.
            self.reset();
        }
        loop {
            let pos = self.pos;
            let Some(&tag) = buf.get(pos) else {
                return Ok(None);
            };
            let Some(eol) = find_crlf(buf, pos + 1) else {
                let line = buf.len() - pos;
                if line > MAX_LINE {
                    return Err(bad(pos, format!("line of over {MAX_LINE} bytes")));
                }
                if buf.len() > self.max {
                    return Err(self.too_big(0, "frame of at least", buf.len() as u128));
                }
                return Ok(None);
            };
            let line = &buf[pos + 1..eol];
            let after = eol + 2;
            match tag {
                b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                    if tag == b':' {
                        parse_int(line, pos + 1)?;
                    }
                    if after > self.max {
                        return Err(self.too_big(0, "frame of at least", after as u128));
                    }
                    self.pos = after;
                }
                b'$' | b'=' | b'!' => {
                    let len = parse_int(line, pos + 1)?;
                    if len < 0 {
                        self.pos = after;
                    } else {
                        let end = after as u128 + len as u128 + 2;
                        if end > self.max as u128 {
                            return Err(if len as u128 > self.max as u128 {
                                self.too_big(pos, "bulk length", len as u128)
                            } else {
                                self.too_big(0, "frame of at least", end)
                            });
                        }
                        let end = end as usize;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(bad(end - 2, "bulk string not terminated by CRLF"));
                        }
                        self.pos = end;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line, pos + 1)?;
                    if n > 0 && n as u128 * 3 > self.max as u128 {
                        // Each element takes at least 3 bytes (`_\r\n`).
                        return Err(self.too_big(pos, "aggregate length", n as u128));
                    }
                    self.pos = after;
                    if n > 0 || tag == b'|' {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(bad(pos, "nesting too deep"));
                        }
                        let n = n.max(0) as u64;
                        // A map's entries are two frames; an attribute is followed by the
                        // frame it describes.
                        let count = match tag {
                            b'%' => n * 2,
                            b'|' => n * 2 + 1,
                            _ => n,
                        };
                        self.open.push(count);
                        continue;
                    }
                }
                other => return Err(bad(pos, format!("unexpected type byte 0x{other:02x}"))),
            }
            // One element is complete: close the aggregates it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.reset();
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }

    /// [`parse`], checking with this decoder.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<(Frame, usize)>, DecodeError> {
        let Some(len) = self.frame_len(buf)? else {
            return Ok(None);
        };
        let mut bytes = buf.split_to(len).freeze();
        let frame = read_frame(&mut bytes)?;
        Ok(Some((frame, len)))
    }

    /// [`parse_command`], checking with this decoder.
    #[allow(clippy::type_complexity)]
    pub fn parse_command(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Option<Vec<Bytes>>, usize)>, DecodeError> {
        let Some(len) = self.frame_len(buf)? else {
            return Ok(None);
        };
        let bytes = buf.split_to(len).freeze();
        Ok(Some((command_of(bytes)?, len)))
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        match memchr_r(&buf[i..]) {
            Some(p) => {
                let at = i + p;
                if at + 1 < buf.len() {
                    if buf[at + 1] == b'\n' {
                        return Some(at);
                    }
                    i = at + 1;
                } else {
                    return None;
                }
            }
            None => return None,
        }
    }
    None
}

#[inline]
fn memchr_r(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\r')
}

fn parse_int(s: &[u8], at: usize) -> Result<i64, DecodeError> {
    if s.is_empty() || s.len() > 20 {
        return Err(bad(at, "bad integer"));
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return Err(bad(at, "bad integer"));
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad(
                at,
                format!("bad integer {:?}", String::from_utf8_lossy(s)),
            ));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as i64))
            .ok_or_else(|| bad(at, "integer overflow"))?;
    }
    Ok(if neg { -v } else { v })
}

/// Splits one whole frame off the front of `buf`; `None` (and `buf` untouched) if it is not
/// all there yet. Returns the frame and the number of bytes it took.
pub fn parse(buf: &mut BytesMut) -> Result<Option<(Frame, usize)>, DecodeError> {
    Decoder::new(MAX_LEN).parse(buf)
}

/// Splits one whole frame off the front of `buf` as a command's argv (what
/// [`Frame::into_argv`] gives), without building a frame when it is an array of bulk
/// strings, as every replicated command is. `Ok(None)` (and `buf` untouched) if it is not
/// all there yet; the inner `None` for a whole frame that is not a command. Returns the
/// number of bytes it took too.
#[allow(clippy::type_complexity)]
pub fn parse_command(
    buf: &mut BytesMut,
) -> Result<Option<(Option<Vec<Bytes>>, usize)>, DecodeError> {
    Decoder::new(MAX_LEN).parse_command(buf)
}

/// The argv of one whole, checked frame.
fn command_of(bytes: Bytes) -> Result<Option<Vec<Bytes>>, DecodeError> {
    if bytes[0] == b'*' {
        let eol = find_crlf(&bytes, 1).ok_or_else(|| bad(0, "truncated"))?;
        let n = parse_int(&bytes[1..eol], 1)?;
        if n >= 0 {
            // `frame_len` saw all `n` elements, so `n` is bounded by the frame's size.
            let mut argv = Vec::with_capacity(n as usize);
            let mut p = eol + 2;
            let mut bulks = true;
            for _ in 0..n {
                if bytes[p] != b'$' {
                    bulks = false;
                    break;
                }
                let e = find_crlf(&bytes, p + 1).ok_or_else(|| bad(p, "truncated"))?;
                let l = parse_int(&bytes[p + 1..e], p + 1)?;
                if l < 0 {
                    bulks = false;
                    break;
                }
                let start = e + 2;
                let end = start + l as usize;
                argv.push(bytes.slice(start..end));
                p = end + 2;
            }
            if bulks {
                return Ok(Some(argv));
            }
        }
    }
    let mut b = bytes;
    Ok(read_frame(&mut b)?.into_argv())
}

/// Parses a frame from a buffer already known (by [`frame_len`]) to hold it whole.
fn read_frame(b: &mut Bytes) -> Result<Frame, DecodeError> {
    let tag = b[0];
    let eol = find_crlf(b, 1).ok_or_else(|| bad(0, "truncated"))?;
    let line = b.slice(1..eol);
    b.advance(eol + 2);
    Ok(match tag {
        b'+' => Frame::Simple(line),
        b'-' | b'!' => {
            if tag == b'!' {
                let len = parse_int(&line, 1)? as usize;
                let s = b.split_to(len);
                b.advance(2);
                Frame::Error(s)
            } else {
                Frame::Error(line)
            }
        }
        b':' => Frame::Integer(parse_int(&line, 1)?),
        b'(' | b',' => Frame::Bulk(line),
        b'#' => Frame::Integer(if line.as_ref() == b"t" { 1 } else { 0 }),
        b'_' => Frame::Null,
        b'$' | b'=' => {
            let len = parse_int(&line, 1)?;
            if len < 0 {
                Frame::Null
            } else {
                let s = b.split_to(len as usize);
                b.advance(2);
                Frame::Bulk(s)
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = parse_int(&line, 1)?;
            if n < 0 {
                Frame::Null
            } else {
                let count = if tag == b'%' || tag == b'|' { n * 2 } else { n } as usize;
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    items.push(read_frame(b)?);
                }
                if tag == b'|' {
                    read_frame(b)?
                } else {
                    Frame::Array(items)
                }
            }
        }
        other => return Err(bad(0, format!("unexpected type byte 0x{other:02x}"))),
    })
}

/// Appends a command as a RESP array of bulk strings.
pub fn write_command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    write_array_header(out, args.len());
    for a in args {
        write_bulk(out, a.as_ref());
    }
}

pub fn write_array_header(out: &mut BytesMut, n: usize) {
    out.reserve(16);
    out.extend_from_slice(b"*");
    write_usize(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$<len>\r\n` — the header of a bulk string whose body the caller writes itself, followed
/// by `\r\n`.
pub fn write_bulk_header(out: &mut BytesMut, len: usize) {
    out.reserve(24);
    out.extend_from_slice(b"$");
    write_usize(out, len);
    out.extend_from_slice(b"\r\n");
}

pub fn write_bulk(out: &mut BytesMut, s: &[u8]) {
    write_bulk_header(out, s.len());
    out.reserve(s.len() + 2);
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

pub fn write_bulk_int(out: &mut BytesMut, v: i64) {
    let mut tmp = [0u8; 24];
    let s = fmt_i64(v, &mut tmp);
    write_bulk(out, s);
}

fn write_usize(out: &mut BytesMut, n: usize) {
    let mut tmp = [0u8; 24];
    out.extend_from_slice(fmt_i64(n as i64, &mut tmp));
}

fn fmt_i64(v: i64, tmp: &mut [u8; 24]) -> &[u8] {
    let mut i = tmp.len();
    let neg = v < 0;
    let mut u = v.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        tmp[i] = b'-';
    }
    &tmp[i..]
}

/// Encodes a command into a fresh buffer.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> BytesMut {
    let mut b = BytesMut::new();
    write_command(&mut b, args);
    b
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_command_gives_what_into_argv_gives() {
        let cases: Vec<&[u8]> = vec![
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"*0\r\n",
            b"*-1\r\n",
            b"*2\r\n$3\r\nGET\r\n:12\r\n",
            b"*2\r\n$3\r\nGET\r\n$-1\r\n",
            b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nx\r\n",
            b"+OK\r\n",
            b"$5\r\nhello\r\n",
        ];
        for case in cases {
            for extra in [&b""[..], b"*1\r\n$4\r\nPI"] {
                let mut a = BytesMut::from(case);
                a.extend_from_slice(extra);
                let mut b = a.clone();
                let (argv, n) = parse_command(&mut a).unwrap().unwrap();
                let (frame, m) = parse(&mut b).unwrap().unwrap();
                assert_eq!((argv, n), (frame.into_argv(), m), "{case:?}");
                assert_eq!(a, b);
            }
            // Cut anywhere before its end: not all there yet, nothing taken.
            for cut in 0..case.len() {
                let mut a = BytesMut::from(&case[..cut]);
                assert_eq!(parse_command(&mut a).unwrap(), None);
                assert_eq!(a.len(), cut);
            }
        }
        let mut bad = BytesMut::from(&b"*1\r\n$x\r\n"[..]);
        assert!(parse_command(&mut bad).is_err());
    }

    use super::*;

    fn one(input: &[u8]) -> Option<(Frame, usize)> {
        let mut b = BytesMut::from(input);
        parse(&mut b).unwrap()
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(one(b"+OK\r\n"), Some((Frame::Simple("OK".into()), 5)));
        assert_eq!(one(b"-ERR x\r\n").unwrap().0, Frame::Error("ERR x".into()));
        assert_eq!(one(b":-42\r\n").unwrap().0, Frame::Integer(-42));
        assert_eq!(one(b"$-1\r\n").unwrap().0, Frame::Null);
        assert_eq!(
            one(b"$3\r\na\r\n\r\n").unwrap().0,
            Frame::Bulk("a\r\n".into())
        );
        let (f, n) = one(b"*2\r\n$3\r\nSET\r\n:1\r\n").unwrap();
        assert_eq!(n, 17);
        assert_eq!(
            f,
            Frame::Array(vec![Frame::Bulk("SET".into()), Frame::Integer(1)])
        );
        assert_eq!(
            one(b"%1\r\n+a\r\n:1\r\n").unwrap().0,
            Frame::Array(vec![Frame::Simple("a".into()), Frame::Integer(1)])
        );
    }

    #[test]
    fn partial_input_is_not_consumed() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut b).unwrap(), None, "cut at {cut}");
            assert_eq!(b.len(), cut);
        }
        let mut b = BytesMut::from(&full[..]);
        let (f, n) = parse(&mut b).unwrap().unwrap();
        assert_eq!(n, full.len());
        assert_eq!(f.into_argv().unwrap()[2], Bytes::from("hello"));
    }

    #[test]
    fn malformed_input_names_offset() {
        let mut b = BytesMut::from(&b"*1\r\n$3\r\nabcXY"[..]);
        let e = parse(&mut b).unwrap_err();
        assert_eq!(e.offset, 11);
        let mut b = BytesMut::from(&b"?x\r\n"[..]);
        assert!(parse(&mut b).is_err());
        let mut b = BytesMut::from(&b"*1x\r\n"[..]);
        assert!(parse(&mut b).is_err());
    }

    #[test]
    fn encodes_commands() {
        let b = command(&["SET", "k", "v'\"x"]);
        assert_eq!(&b[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv'\"x\r\n");
        let mut b = BytesMut::new();
        write_bulk_int(&mut b, -1234);
        assert_eq!(&b[..], b"$5\r\n-1234\r\n");
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_its_bytes() {
        let mut d = Decoder::new(1 << 20);
        let e = d.frame_len(b"$10000000000\r\n").unwrap_err();
        assert!(e.reason.contains("bulk length 10000000000"), "{e}");
        let e = d.frame_len(b"*1000000000\r\n").unwrap_err();
        assert!(e.reason.contains("aggregate length 1000000000"), "{e}");
        // Within the limit, but the frame as a whole is not.
        let mut big = b"*3\r\n".to_vec();
        for _ in 0..3 {
            big.extend_from_slice(format!("${}\r\n", 400 << 10).as_bytes());
            big.extend(std::iter::repeat_n(b'x', 400 << 10));
            big.extend_from_slice(b"\r\n");
        }
        let e = Decoder::new(1 << 20).frame_len(&big).unwrap_err();
        assert!(e.reason.contains("over the limit of 1048576 bytes"), "{e}");
        assert!(frame_len(&big).unwrap().is_some());
        // An endless line.
        let e = frame_len(&vec![b'+'; MAX_LINE + 10]).unwrap_err();
        assert!(e.reason.contains("line of over"), "{e}");
    }

    /// A million-element array read in 16 KB pieces: each piece is checked once. (The old
    /// stateless check scanned the whole buffer again per piece, about 2,600 times here;
    /// counted in elements visited rather than timed.)
    #[test]
    fn an_array_arriving_in_pieces_is_checked_once() {
        let n = 1_000_000;
        let mut whole = format!("*{n}\r\n").into_bytes();
        for _ in 0..n {
            whole.extend_from_slice(b":1\r\n");
        }
        let mut d = Decoder::new(MAX_LEN);
        let mut got = None;
        let mut end = 0;
        while got.is_none() {
            end = (end + 16 * 1024).min(whole.len());
            let before = d.pos;
            got = d.frame_len(&whole[..end]).unwrap();
            // Never resumes behind where it stopped.
            assert!(got.is_some() || d.pos >= before);
        }
        assert_eq!(got, Some(whole.len()));
        assert_eq!(d.pos, 0, "reset after a whole frame");
    }

    /// A plain recursive checker with the same length limit: the reference the resumable
    /// one must agree with.
    fn reference_len(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, ()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        let Some(&tag) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(eol) = find_crlf(buf, pos + 1) else {
            return Ok(None);
        };
        let line = &buf[pos + 1..eol];
        let after = eol + 2;
        let int = || parse_int(line, 0).map_err(|_| ());
        match tag {
            b'+' | b'-' | b',' | b'#' | b'(' | b'_' => Ok(Some(after)),
            b':' => int().map(|_| Some(after)),
            b'$' | b'=' | b'!' => {
                let len = int()?;
                if len < 0 {
                    return Ok(Some(after));
                }
                if after as u128 + len as u128 + 2 > MAX_LEN as u128 {
                    return Err(());
                }
                let end = after + len as usize + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(());
                }
                Ok(Some(end))
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = int()?;
                if n < 0 && tag != b'|' {
                    return Ok(Some(after));
                }
                if n > 0 && n as u128 * 3 > MAX_LEN as u128 {
                    return Err(());
                }
                let n = n.max(0) as usize;
                let count = match tag {
                    b'%' => n * 2,
                    b'|' => n * 2 + 1,
                    _ => n,
                };
                let mut p = after;
                for _ in 0..count {
                    match reference_len(buf, p, depth + 1)? {
                        Some(e) => p = e,
                        None => return Ok(None),
                    }
                }
                Ok(Some(p))
            }
            _ => Err(()),
        }
    }

    fn encode(f: &Frame, out: &mut Vec<u8>) {
        match f {
            Frame::Simple(b) => {
                out.push(b'+');
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Error(b) => {
                out.push(b'-');
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Integer(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Frame::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    encode(i, out);
                }
            }
        }
    }

    fn frames() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let word = proptest::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..12,
        );
        let leaf = prop_oneof![
            word.clone().prop_map(|w| Frame::Simple(Bytes::from(w))),
            word.prop_map(|w| Frame::Error(Bytes::from(w))),
            any::<i64>().prop_map(Frame::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Frame::Bulk(Bytes::from(b))),
            Just(Frame::Null),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(Frame::Array)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Frames (and mutations of them) fed in random pieces: the resumable check agrees
        /// with the reference on the whole input, and a whole frame parses back to itself.
        #[test]
        fn resumed_checks_agree_with_the_reference(
            f in frames(),
            cuts in proptest::collection::vec(0usize..64, 0..12),
            flip in proptest::option::of((0usize..4096, proptest::prelude::any::<u8>())),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let mut whole = Vec::new();
            encode(&f, &mut whole);
            let intact = flip.is_none();
            if let Some((at, b)) = flip {
                let at = at % whole.len();
                whole[at] = b;
            }
            whole.extend_from_slice(&tail);
            let want = reference_len(&whole, 0, 0);
            let mut d = Decoder::new(MAX_LEN);
            let mut end: usize = 0;
            let mut got = Ok(None);
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                end = end.saturating_add(*c).min(whole.len());
                got = d.frame_len(&whole[..end]);
                if !matches!(got, Ok(None)) {
                    break;
                }
            }
            match (&want, &got) {
                (Ok(w), Ok(g)) => proptest::prop_assert_eq!(w, g),
                (Err(()), Err(_)) => {}
                _ => proptest::prop_assert!(false, "reference {want:?}, resumed {got:?}"),
            }
            proptest::prop_assert_eq!(frame_len(&whole).ok(), got.clone().ok());
            if intact {
                let mut b = BytesMut::from(&whole[..]);
                let (back, n) = parse(&mut b).unwrap().unwrap();
                proptest::prop_assert_eq!(n, whole.len() - tail.len());
                proptest::prop_assert_eq!(back, f);
            }
        }

        #[test]
        fn never_panics(data: Vec<u8>) {
            let mut b = BytesMut::from(&data[..]);
            let _ = parse(&mut b);
            let mut b = BytesMut::from(&data[..]);
            let _ = parse_command(&mut b);
        }

        /// The command-stream path (`parse_command`, resumed across pieces) on commands
        /// with a byte flipped: never a panic, and whatever it accepts is what the frame
        /// parser makes of the same bytes.
        #[test]
        fn the_command_path_agrees_with_the_frame_path(
            args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..6),
            flip in proptest::option::of((0usize..4096, proptest::prelude::any::<u8>())),
            cut in 0usize..200,
        ) {
            let mut bytes = command(&args).to_vec();
            if let Some((at, b)) = flip {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            let mut d = Decoder::new(1 << 16);
            let mut buf = BytesMut::from(&bytes[..cut.min(bytes.len())]);
            let first = d.parse_command(&mut buf);
            let got = match first {
                Ok(None) => {
                    buf.extend_from_slice(&bytes[cut.min(bytes.len())..]);
                    d.parse_command(&mut buf)
                }
                other => other,
            };
            let mut whole = BytesMut::from(&bytes[..]);
            let want = parse(&mut whole);
            match (got, want) {
                (Ok(Some((argv, n))), Ok(Some((f, m)))) => {
                    proptest::prop_assert_eq!(n, m);
                    proptest::prop_assert_eq!(argv, f.into_argv());
                }
                (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
                (g, w) => proptest::prop_assert!(false, "command path {g:?}, frame path {w:?}"),
            }
        }

        #[test]
        fn roundtrips_commands(args: Vec<Vec<u8>>) {
            let enc = command(&args);
            let mut b = enc.clone();
            let (f, n) = parse(&mut b).unwrap().unwrap();
            proptest::prop_assert_eq!(n, enc.len());
            let argv = f.into_argv().unwrap();
            let got: Vec<Vec<u8>> = argv.iter().map(|a| a.to_vec()).collect();
            proptest::prop_assert_eq!(got, args);
        }
    }
}
