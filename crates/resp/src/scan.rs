//! `SCAN`, once: one step of it ([`Connection::scan_step`]) for callers that keep the
//! cursor themselves, and a whole keyspace walk ([`Scan`]) for the rest.

use bytes::Bytes;

use crate::connection::Connection;
use crate::error::Error;
use crate::frame::Frame;

impl Connection {
    /// One `SCAN cursor [MATCH pattern] COUNT count` in the selected database: the next
    /// cursor (`0` once the walk is complete) and the keys. A reply that is not
    /// `[cursor, [key…]]` is [`Error::Unexpected`].
    pub async fn scan_step(
        &mut self,
        cursor: &[u8],
        pattern: Option<&[u8]>,
        count: usize,
    ) -> Result<(Bytes, Vec<Bytes>), Error> {
        let count = count.to_string();
        let mut args: Vec<&[u8]> = vec![b"SCAN", cursor];
        if let Some(p) = pattern {
            args.extend_from_slice(&[b"MATCH", p]);
        }
        args.extend_from_slice(&[b"COUNT", count.as_bytes()]);
        let reply = self.request(&args).await?;
        let unexpected = |reply: &Frame| Error::Unexpected {
            addr: self.addr().to_string(),
            command: "SCAN".into(),
            reply: reply.to_text().chars().take(200).collect(),
        };
        let Frame::Array(parts) = &reply else {
            return Err(unexpected(&reply));
        };
        match parts.as_slice() {
            [c, Frame::Array(keys)] => {
                let next = c.as_bytes().cloned().ok_or_else(|| unexpected(&reply))?;
                let keys = keys
                    .iter()
                    .map(|k| k.as_bytes().cloned())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| unexpected(&reply))?;
                Ok((next, keys))
            }
            _ => Err(unexpected(&reply)),
        }
    }
}

/// A walk over every key of the selected database, a page at a time:
/// `while let Some(keys) = scan.next(&mut conn).await? { … }`.
pub struct Scan {
    cursor: Bytes,
    done: bool,
    pattern: Option<Bytes>,
    count: usize,
}

impl Scan {
    /// Pages of about `count` keys (a hint to the server).
    pub fn new(count: usize) -> Scan {
        Scan {
            cursor: Bytes::from_static(b"0"),
            done: false,
            pattern: None,
            count,
        }
    }

    /// Only keys matching the glob `pattern` (`SCAN … MATCH`).
    pub fn matching(mut self, pattern: impl Into<Bytes>) -> Scan {
        self.pattern = Some(pattern.into());
        self
    }

    /// The next page (possibly empty: `SCAN` may return none before the end), or `None`
    /// once the walk is complete.
    pub async fn next(&mut self, conn: &mut Connection) -> Result<Option<Vec<Bytes>>, Error> {
        if self.done {
            return Ok(None);
        }
        let (next, keys) = conn
            .scan_step(&self.cursor, self.pattern.as_deref(), self.count)
            .await?;
        self.done = next.as_ref() == b"0";
        self.cursor = next;
        Ok(Some(keys))
    }
}
