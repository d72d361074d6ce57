//! A writer's connection to a target node, shared by both writers: opening it ([`open`]),
//! and its read half ([`Replies`]), what replies are read from. A read
//! happens only while replies are awaited, so a target that sends no byte for the reply
//! timeout is taken as gone (a hung process or a black-holed reply path; TCP keepalive
//! does not see either, the peer's kernel still acknowledges).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use ferry_resp::frame::{DecodeError, Decoder};
use ferry_resp::{Connection, Endpoint, Frame};
use tokio::io::{AsyncReadExt, ReadHalf};

use crate::error::TargetError;
use crate::version::ServerVersion;

/// Largest reply accepted from a target: replies to what ferry sends are small (an
/// `EXEC`'s array of `+OK` at most); a bigger one is a broken peer, refused before it
/// is buffered.
const MAX_REPLY: usize = 256 << 20;

/// Opens a writer's connection to a target node: connected, logged in, named
/// (`CLIENT SETNAME`, what fencing finds it by), with the node's version when it tells it.
pub(crate) async fn open(
    ep: &Endpoint,
    client_name: Option<&str>,
) -> Result<(Connection, Option<ServerVersion>), TargetError> {
    let mut conn = Connection::connect(ep).await?;
    if let Some(name) = client_name {
        conn.request(&["CLIENT", "SETNAME", name]).await?;
    }
    let info = conn.info("server").await?;
    Ok((conn, ServerVersion::from_info(&info)))
}

pub(crate) struct Replies {
    rd: ReadHalf<ferry_resp::Stream>,
    timeout: Duration,
    addr: String,
    decoder: Decoder,
}

impl Replies {
    pub(crate) fn new(rd: ReadHalf<ferry_resp::Stream>, timeout: Duration, addr: &str) -> Self {
        Replies {
            rd,
            timeout,
            addr: addr.to_string(),
            decoder: Decoder::new(MAX_REPLY),
        }
    }

    /// One whole reply off the front of `buf`, if it is all there (checked once however
    /// many reads it takes). Consume `buf`'s front only through this, or between replies.
    fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<(Frame, usize)>, DecodeError> {
        self.decoder.parse(buf)
    }

    /// The next whole reply if `buf` holds it, without reading: `Some(Some(frame))`, or
    /// with `ok` (the reply expected is most likely `+OK`, as to a `RESTORE`) `Some(None)`
    /// for a `+OK` taken without building a frame; `None` while more bytes are needed. A
    /// malformed reply is [`ferry_resp::Error::Protocol`].
    pub(crate) fn try_next(
        &mut self,
        buf: &mut BytesMut,
        ok: bool,
    ) -> Result<Option<Option<Frame>>, TargetError> {
        if ok {
            if buf.starts_with(b"+OK\r\n") {
                buf.advance(5);
                return Ok(Some(None));
            }
            // Too short to tell yet, and could still be `+OK`.
            let maybe_ok = b"+OK\r\n".starts_with(&buf[..]);
            if buf.len() < 5 && maybe_ok {
                return Ok(None);
            }
        }
        match self.parse(buf) {
            Ok(Some((f, _))) => Ok(Some(Some(f))),
            Ok(None) => Ok(None),
            Err(source) => Err(ferry_resp::Error::Protocol {
                addr: self.addr.clone(),
                source,
            }
            .into()),
        }
    }

    /// [`Replies::try_next`], reading until the reply is whole.
    pub(crate) async fn next(
        &mut self,
        buf: &mut BytesMut,
        ok: bool,
    ) -> Result<Option<Frame>, TargetError> {
        loop {
            if let Some(reply) = self.try_next(buf, ok)? {
                return Ok(reply);
            }
            self.read_more(buf).await?;
        }
    }

    /// The length of the whole reply at the front of `buf`, once it is all there; the
    /// caller then splits exactly that off.
    pub(crate) fn whole_len(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        self.decoder.frame_len(buf)
    }

    /// Reads more bytes into `buf`; the connection's end, an I/O error or no byte within
    /// the timeout is an error naming the target.
    pub(crate) async fn read_more(&mut self, buf: &mut BytesMut) -> Result<(), TargetError> {
        buf.reserve(64 * 1024);
        let n = match tokio::time::timeout(self.timeout, self.rd.read_buf(buf)).await {
            Ok(n) => n,
            Err(_) => {
                return Err(ferry_resp::Error::Timeout {
                    addr: self.addr.clone(),
                    what: format!(
                        "waiting for the target's replies ({} without a byte while writes were in flight; --target-timeout)",
                        humantime_secs(self.timeout)
                    ),
                }
                .into())
            }
        };
        match n {
            Ok(0) => Err(ferry_resp::Error::Closed {
                addr: self.addr.clone(),
                context: Some("while writes were in flight".into()),
            }
            .into()),
            Ok(_) => Ok(()),
            Err(source) => Err(ferry_resp::Error::Io {
                addr: self.addr.clone(),
                source,
            }
            .into()),
        }
    }
}

fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
