//! One side's connection to one node: the database it has selected, whether it allows
//! `DEBUG DIGEST-VALUE`, and pipelined reads.

use bytes::{Bytes, BytesMut};
use ferry_resp::{frame, Connection, Endpoint, Frame};

use crate::VerifyError;

/// Which side of the copy a node belongs to; named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Target,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
        }
    }
}

pub struct Node {
    conn: Connection,
    role: Role,
    db: Option<u32>,
    /// `DEBUG DIGEST-VALUE` answers here (it is refused where DEBUG is disabled).
    pub digest: bool,
    /// A reply since the last [`Node::take_moved`] was a cluster redirection (`MOVED`/`ASK`):
    /// the slot map the reads were routed by is stale.
    moved: bool,
}

fn is_redirect(f: &Frame) -> bool {
    matches!(f, Frame::Error(e) if e.starts_with(b"MOVED ") || e.starts_with(b"ASK "))
}

impl Node {
    pub async fn connect(ep: &Endpoint, role: Role) -> Result<Node, VerifyError> {
        let mut conn = Connection::connect(ep)
            .await
            .map_err(|e| VerifyError::node(role, e))?;
        // Values are read whole (`DUMP`, `GET`): as big as the servers allow.
        conn.set_max_reply(frame::MAX_LEN);
        let mut node = Node {
            conn,
            role,
            db: None,
            digest: false,
            moved: false,
        };
        let probe = node
            .request_raw(&["DEBUG", "DIGEST-VALUE", "ferry:verify:probe"])
            .await?;
        node.digest = matches!(probe, Frame::Array(_));
        Ok(node)
    }

    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    fn err(&self, e: ferry_resp::Error) -> VerifyError {
        VerifyError::node(self.role, e)
    }

    /// A command whose error reply is fatal (SELECT, SCAN, INFO).
    pub async fn request<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, VerifyError> {
        match self.conn.request(args).await {
            Ok(f) => Ok(f),
            Err(e) => Err(self.err(e)),
        }
    }

    /// A read whose error reply is data (a key that changed type while being read).
    pub async fn request_raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, VerifyError> {
        match self.conn.request_raw(args).await {
            Ok(f) => {
                self.moved |= is_redirect(&f);
                Ok(f)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Sends all commands in one write, then reads their replies in order.
    pub async fn pipeline(&mut self, cmds: &[Vec<Bytes>]) -> Result<Vec<Frame>, VerifyError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = BytesMut::new();
        for c in cmds {
            frame::write_command(&mut buf, c);
        }
        if let Err(e) = self.conn.write_all(&buf).await {
            return Err(self.err(e));
        }
        let mut out = Vec::with_capacity(cmds.len());
        for _ in cmds {
            match self.conn.read_frame("pipelined reads").await {
                Ok((f, _)) => {
                    self.moved |= is_redirect(&f);
                    out.push(f)
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(out)
    }

    /// Whether a redirection was seen since the last call; clears it.
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// `INFO server` → `redis_mode`: `standalone`, `cluster` or `sentinel`.
    pub async fn mode(&mut self) -> Result<String, VerifyError> {
        match self.conn.info("server").await {
            Ok(info) => Ok(info.get("redis_mode").unwrap_or("standalone").to_string()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Records that the node is on `db` without sending `SELECT` (a cluster node, db 0).
    pub fn assume_db(&mut self, db: u32) {
        self.db = Some(db);
    }

    pub async fn select(&mut self, db: u32) -> Result<(), VerifyError> {
        if self.db != Some(db) {
            self.request(&["SELECT".to_string(), db.to_string()])
                .await?;
            self.db = Some(db);
        }
        Ok(())
    }

    /// Databases holding keys, from `INFO keyspace`.
    pub async fn keyspace(&mut self) -> Result<Vec<(u32, u64)>, VerifyError> {
        match self.conn.info("keyspace").await {
            Ok(info) => Ok(info.keyspace()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// One `SCAN` step: the next cursor and the keys.
    pub async fn scan(
        &mut self,
        cursor: &[u8],
        count: usize,
    ) -> Result<(Bytes, Vec<Bytes>), VerifyError> {
        let (next, mut keys) = match self.conn.scan_step(cursor, None, count).await {
            Ok(page) => page,
            Err(e) => return Err(self.err(e)),
        };
        // ferry's checkpoints on a target are bookkeeping, not data.
        keys.retain(|k| !ferry_core::checkpoint::is_checkpoint_key(k));
        Ok((next, keys))
    }
}
