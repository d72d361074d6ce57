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

/// Largest aggregate or bulk length accepted (Redis's own proto-max-bulk-len is 512 MB by
/// default and may be raised; anything past this is corruption, not data).
const MAX_LEN: i64 = 1 << 34;
const MAX_DEPTH: usize = 64;

/// Length in bytes of the complete frame at the start of `buf`, or `None` if more bytes are
/// needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    check(buf, 0, 0)
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

/// Returns the end position (exclusive) of the frame starting at `pos`.
fn check(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(bad(pos, "nesting too deep"));
    }
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = find_crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..eol];
    let after = eol + 2;
    match tag {
        b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
            if tag == b':' {
                parse_int(line, pos + 1)?;
            }
            Ok(Some(after))
        }
        b'$' | b'=' | b'!' => {
            let len = parse_int(line, pos + 1)?;
            if len < 0 {
                return Ok(Some(after));
            }
            if len > MAX_LEN {
                return Err(bad(pos, format!("bulk length {len} too large")));
            }
            let end = after + len as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(bad(end - 2, "bulk string not terminated by CRLF"));
            }
            Ok(Some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = parse_int(line, pos + 1)?;
            if n < 0 {
                return Ok(Some(after));
            }
            if n > MAX_LEN {
                return Err(bad(pos, format!("aggregate length {n} too large")));
            }
            let count = if tag == b'%' || tag == b'|' { n * 2 } else { n };
            let mut p = after;
            for _ in 0..count {
                match check(buf, p, depth + 1)? {
                    Some(e) => p = e,
                    None => return Ok(None),
                }
            }
            if tag == b'|' {
                // attribute: followed by the real frame
                return check(buf, p, depth + 1);
            }
            Ok(Some(p))
        }
        other => Err(bad(pos, format!("unexpected type byte 0x{other:02x}"))),
    }
}

/// Splits one whole frame off the front of `buf`; `None` (and `buf` untouched) if it is not
/// all there yet. Returns the frame and the number of bytes it took.
pub fn parse(buf: &mut BytesMut) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let mut bytes = buf.split_to(len).freeze();
    let frame = read_frame(&mut bytes)?;
    Ok(Some((frame, len)))
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
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(len).freeze();
    Ok(Some((command_of(bytes)?, len)))
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

    proptest::proptest! {
        #[test]
        fn never_panics(data: Vec<u8>) {
            let mut b = BytesMut::from(&data[..]);
            let _ = parse(&mut b);
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
