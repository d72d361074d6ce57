//! A small blocking RESP2 client over `std::net::TcpStream`.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Default read/write timeout of a [`Client`], so a hung server fails a test instead of hanging it.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One reply from the server.
///
/// RESP3 replies (only seen after `HELLO 3`) are mapped onto these variants: null to
/// `Bulk(None)`, doubles and big numbers to `Status`, booleans to `Int(0|1)`, maps, sets
/// and pushes to flat `Array`s, verbatim strings to `Bulk`.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply (bulk decoded lossily as UTF-8). Panics otherwise.
    pub fn as_str(&self) -> String {
        match self {
            Reply::Status(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a status or bulk string reply, got {other:?}"),
        }
    }

    /// The bytes of a bulk or status reply. Panics otherwise.
    pub fn as_bytes(&self) -> Vec<u8> {
        match self {
            Reply::Status(s) => s.clone().into_bytes(),
            Reply::Bulk(Some(b)) => b.clone(),
            other => panic!("expected a bulk string reply, got {other:?}"),
        }
    }

    /// An integer reply, or a status/bulk reply holding a decimal integer. Panics otherwise.
    pub fn as_int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            Reply::Status(_) | Reply::Bulk(Some(_)) => {
                let s = self.as_str();
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("expected an integer reply, got {self:?}"))
            }
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of a (non-nil) array reply. Panics otherwise.
    pub fn as_array(&self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(items)) => items.clone(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// True for a nil bulk or nil array.
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "Status({s:?})"),
            Reply::Error(s) => write!(f, "Error({s:?})"),
            Reply::Int(i) => write!(f, "Int({i})"),
            Reply::Bulk(None) => write!(f, "Bulk(nil)"),
            Reply::Bulk(Some(b)) => write!(f, "Bulk(\"{}\")", escape_bytes(b)),
            Reply::Array(None) => write!(f, "Array(nil)"),
            Reply::Array(Some(items)) => f.debug_list().entries(items).finish(),
        }
    }
}

/// Render bytes as a printable string with Rust-style escapes (`\0`, `\r`, `\xff`, ...).
pub fn escape_bytes(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

/// A blocking RESP2 connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish()
    }
}

impl Client {
    /// Connect to `host:port`. Read and write timeouts default to [`DEFAULT_IO_TIMEOUT`].
    pub fn connect(addr: &str) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_IO_TIMEOUT))?;
        stream.set_write_timeout(Some(DEFAULT_IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            addr: addr.to_string(),
        })
    }

    /// The address this client connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Change the read/write timeout (`None` blocks forever, e.g. for long blocking commands).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)
    }

    /// Send one command and read its reply. Error replies are `Ok(Reply::Error(..))`.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut buf = Vec::new();
        encode_command(&mut buf, args.iter().copied());
        self.writer.write_all(&buf)?;
        read_reply(&mut self.reader)
    }

    /// Send one command given as strings; panics on I/O error or error reply (message includes
    /// the command).
    pub fn cmd_str(&mut self, args: &[&str]) -> Reply {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.cmd(&bytes) {
            Ok(Reply::Error(e)) => panic!("command {args:?} on {} failed: {e}", self.addr),
            Ok(r) => r,
            Err(e) => panic!("command {args:?} on {}: I/O error: {e}", self.addr),
        }
    }

    /// Send all commands, then read all replies (one per command, in order). Error replies
    /// are returned in place, not as `Err`.
    pub fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> io::Result<Vec<Reply>> {
        // Write in chunks so one huge pipeline does not need one huge buffer.
        let mut buf = Vec::with_capacity(64 * 1024);
        for c in cmds {
            encode_command(&mut buf, c.iter().map(|a| a.as_slice()));
            if buf.len() >= 1 << 20 {
                self.writer.write_all(&buf)?;
                buf.clear();
            }
        }
        self.writer.write_all(&buf)?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(read_reply(&mut self.reader)?);
        }
        Ok(replies)
    }

    /// `AUTH [user] password`; panics if refused.
    pub fn auth(&mut self, user: Option<&str>, password: &str) {
        match user {
            Some(u) => self.cmd_str(&["AUTH", u, password]),
            None => self.cmd_str(&["AUTH", password]),
        };
    }
}

fn encode_command<'a>(buf: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

fn proto_err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by server",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(proto_err(format!(
            "malformed RESP line: {:?}",
            escape_bytes(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| proto_err(format!("bad RESP length/integer {s:?}")))
}

fn read_blob(r: &mut impl BufRead, len: i64) -> io::Result<Option<Vec<u8>>> {
    if len < 0 {
        return Ok(None);
    }
    let mut data = vec![0u8; len as usize + 2];
    r.read_exact(&mut data)?;
    if !data.ends_with(b"\r\n") {
        return Err(proto_err("bulk string not terminated by CRLF".into()));
    }
    data.truncate(len as usize);
    Ok(Some(data))
}

fn read_items(r: &mut impl BufRead, n: i64) -> io::Result<Option<Vec<Reply>>> {
    if n < 0 {
        return Ok(None);
    }
    let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        items.push(read_reply(r)?);
    }
    Ok(Some(items))
}

/// Read one RESP reply.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(r)?;
    let Some(&kind) = line.as_bytes().first() else {
        return Err(proto_err("empty RESP line".into()));
    };
    let rest = line.get(1..).unwrap_or("");
    Ok(match kind {
        b'+' => Reply::Status(rest.to_string()),
        b'-' => Reply::Error(rest.to_string()),
        b':' => Reply::Int(parse_len(rest)?),
        b'$' => Reply::Bulk(read_blob(r, parse_len(rest)?)?),
        b'*' | b'~' | b'>' => Reply::Array(read_items(r, parse_len(rest)?)?),
        // RESP3 extras, mapped onto RESP2 shapes.
        b'%' | b'|' => {
            let items = read_items(r, parse_len(rest)? * 2)?;
            if kind == b'|' {
                // Attribute: skip it and return the reply it annotates.
                return read_reply(r);
            }
            Reply::Array(items)
        }
        b'_' => Reply::Bulk(None),
        b',' | b'(' => Reply::Status(rest.to_string()),
        b'#' => Reply::Int(i64::from(rest == "t")),
        b'=' => {
            let blob = read_blob(r, parse_len(rest)?)?;
            Reply::Bulk(blob.map(|b| if b.len() >= 4 { b[4..].to_vec() } else { b }))
        }
        b'!' => {
            let blob = read_blob(r, parse_len(rest)?)?.unwrap_or_default();
            Reply::Error(String::from_utf8_lossy(&blob).into_owned())
        }
        _ => {
            return Err(proto_err(format!(
                "unknown RESP type byte in line {line:?}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Reply {
        read_reply(&mut io::Cursor::new(b.to_vec())).unwrap()
    }

    #[test]
    fn parses_resp2() {
        assert_eq!(parse(b"+OK\r\n"), Reply::Status("OK".into()));
        assert_eq!(parse(b"-ERR x\r\n"), Reply::Error("ERR x".into()));
        assert_eq!(parse(b":-12\r\n"), Reply::Int(-12));
        assert_eq!(parse(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n"),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n:1\r\n"),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Int(1)]))
        );
        assert_eq!(parse(b"$2\r\n42\r\n").as_int(), 42);
    }

    #[test]
    fn encodes() {
        let mut buf = Vec::new();
        encode_command(&mut buf, [&b"GET"[..], b"k\0"].into_iter());
        assert_eq!(buf, b"*2\r\n$3\r\nGET\r\n$2\r\nk\0\r\n");
    }
}
