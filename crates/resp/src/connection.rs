//! A plain request/response connection to one node: connect, log in, send a command, read
//! its reply. Used for handshakes, INFO, pre-checks and verification; the hot paths
//! (replication stream, pipelined writer) take the socket over with [`Connection::into_parts`].

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{self, HandshakeError, Stream};

use crate::endpoint::Endpoint;
use crate::error::{describe_command, Error};
use crate::frame::{self, Frame};

pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    /// Checks replies as they arrive, refusing one over the connection's reply limit.
    decoder: frame::Decoder,
    addr: String,
    timeout: Duration,
}

/// Default time allowed for connecting and for one reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply a connection accepts unless told otherwise
/// ([`Connection::set_max_reply`]): handshakes, `INFO`, topology and checkpoints are far
/// smaller, and a peer announcing gigabytes is refused before it is buffered. Connections
/// that read values (`DUMP`, verification) raise it.
pub const DEFAULT_MAX_REPLY: usize = 64 << 20;

impl Connection {
    /// Connects and logs in (`AUTH [user] password` when the endpoint has one).
    pub async fn connect(ep: &Endpoint) -> Result<Connection, Error> {
        Self::connect_timeout(ep, DEFAULT_TIMEOUT).await
    }

    pub async fn connect_timeout(ep: &Endpoint, timeout: Duration) -> Result<Connection, Error> {
        let addr = ep.addr();
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect((ep.host.as_str(), ep.port)))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => return Err(Error::Connect { addr, source }),
                Err(_) => {
                    return Err(Error::Timeout {
                        addr,
                        what: "connecting".into(),
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        // A peer that vanishes without a FIN (a black-holed link) is noticed by the kernel
        // within about a minute, even on a connection that is only waiting.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let stream = if ep.tls {
            match tokio::time::timeout(timeout, tls::handshake(stream, &ep.host, &ep.tls_options))
                .await
            {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(HandshakeError::Handshake(message))) => {
                    return Err(Error::Tls { addr, message })
                }
                Ok(Err(HandshakeError::Config(message))) => {
                    return Err(Error::TlsConfig { addr, message })
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        addr,
                        what: "in the TLS handshake".into(),
                    })
                }
            }
        } else {
            Stream::Plain(stream)
        };
        let mut conn = Connection {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            decoder: frame::Decoder::new(DEFAULT_MAX_REPLY),
            addr,
            timeout,
        };
        conn.auth(ep).await?;
        Ok(conn)
    }

    async fn auth(&mut self, ep: &Endpoint) -> Result<(), Error> {
        let Some(password) = &ep.password else {
            return Ok(());
        };
        let reply = match &ep.username {
            Some(user) => {
                self.request_raw(&[b"AUTH".as_ref(), user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => {
                self.request_raw(&[b"AUTH".as_ref(), password.as_bytes()])
                    .await?
            }
        };
        match reply {
            Frame::Error(m) => Err(Error::Auth {
                addr: self.addr.clone(),
                message: String::from_utf8_lossy(&m).into_owned(),
            }),
            _ => Ok(()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The largest reply accepted, in bytes (capped at [`frame::MAX_LEN`]).
    pub fn set_max_reply(&mut self, max: usize) {
        self.decoder.set_max(max);
    }

    /// Sends a command and returns its reply; an error reply becomes [`Error::Reply`].
    pub async fn request<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, Error> {
        match self.request_raw(args).await? {
            Frame::Error(m) => Err(Error::Reply {
                addr: self.addr.clone(),
                command: describe_command(args),
                message: String::from_utf8_lossy(&m).into_owned(),
            }),
            f => Ok(f),
        }
    }

    /// Sends a command and returns its reply, error replies included.
    pub async fn request_raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, Error> {
        self.send(args).await?;
        let what = describe_command(args);
        self.read_frame(&what).await.map(|(f, _)| f)
    }

    /// Writes a command without waiting for its reply.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), Error> {
        let buf = frame::command(args);
        self.write_all(&buf).await
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(buf)
            .await
            .map_err(|source| io_error(&self.addr, source))
    }

    /// Reads one reply (waiting at most the timeout); returns it with its length in bytes.
    pub async fn read_frame(&mut self, what: &str) -> Result<(Frame, usize), Error> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.read_frame_no_timeout()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: self.addr.clone(),
                what: format!("waiting for the reply to {what}"),
            }),
        }
    }

    pub async fn read_frame_no_timeout(&mut self) -> Result<(Frame, usize), Error> {
        loop {
            match self.try_frame() {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Protocol {
                        addr: self.addr.clone(),
                        source,
                    })
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes from the socket into the buffer.
    pub async fn fill(&mut self) -> Result<usize, Error> {
        self.rbuf.reserve(16 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|source| io_error(&self.addr, source))?;
        if n == 0 {
            return Err(Error::Closed {
                addr: self.addr.clone(),
                context: None,
            });
        }
        Ok(n)
    }

    /// Bytes read but not yet consumed, to look at.
    pub fn peek(&self) -> &[u8] {
        &self.rbuf
    }

    /// One whole reply from what is buffered, if there is one; never reads.
    pub fn try_frame(&mut self) -> Result<Option<(Frame, usize)>, frame::DecodeError> {
        self.decoder.parse(&mut self.rbuf)
    }

    /// Bytes read but not yet consumed. The caller may consume from the front: a reply
    /// being checked is then checked again from its start.
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.decoder.reset();
        &mut self.rbuf
    }

    /// The stream (plain or TLS; split it with `tokio::io::split`) and whatever was
    /// already read past the last reply.
    pub fn into_parts(self) -> (Stream, BytesMut, String) {
        (self.stream, self.rbuf, self.addr)
    }

    /// `INFO <section>` as `key → value` pairs.
    pub async fn info(&mut self, section: &str) -> Result<Info, Error> {
        let reply = self.request(&["INFO", section]).await?;
        let text = reply.to_text();
        Ok(Info::parse(&text))
    }
}

fn io_error(addr: &str, source: std::io::Error) -> Error {
    match tls::tls_failure(&source) {
        Some(message) => Error::Tls {
            addr: addr.to_string(),
            message,
        },
        None => Error::Io {
            addr: addr.to_string(),
            source,
        },
    }
}

/// Parsed `INFO` output.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub fields: Vec<(String, String)>,
}

impl Info {
    pub fn parse(text: &str) -> Info {
        let fields = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Info { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Keys per database from the keyspace section: `db0:keys=1,expires=0,...`.
    pub fn keyspace(&self) -> Vec<(u32, u64)> {
        self.fields
            .iter()
            .filter_map(|(k, v)| {
                let db = k.strip_prefix("db")?.parse().ok()?;
                let keys = v
                    .split(',')
                    .find_map(|p| p.strip_prefix("keys="))?
                    .parse()
                    .ok()?;
                Some((db, keys))
            })
            .collect()
    }
}
