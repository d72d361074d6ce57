//! Checkpoints kept in the target itself, written in the same `MULTI`/`EXEC` as the data
//! they cover, so that data and checkpoint can never disagree — whatever instant ferry dies
//! at, the target holds both or neither.
//!
//! Value format: `stream <replid> <offset> <db>` once the snapshot is applied (resume with
//! `PSYNC <replid> <offset+1>`, in database `db`: a partial resync continues the stream
//! without a new `SELECT`), `snapshot <replid> <offset>` while one is being applied (a
//! restart must take a new one, after flushing what the half-applied one left).

use bytes::Bytes;

/// Every checkpoint key starts with this; keys with it are never copied as data.
pub const PREFIX: &[u8] = b"ferry:checkpoint:";

pub fn is_checkpoint_key(key: &[u8]) -> bool {
    key.starts_with(PREFIX)
}

/// The key holding one source shard's checkpoint for one job.
pub fn key(job: &str, shard: &str) -> Bytes {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(job.as_bytes());
    k.push(b':');
    k.extend_from_slice(shard.as_bytes());
    Bytes::from(k)
}

/// Whether `key` is one of job `job`'s own keys in ferry's namespace: a shard's checkpoint
/// (`ferry:checkpoint:<job>:<shard>`), its ownership record, or a cluster target's slot
/// checkpoint (`ferry:checkpoint:{<tag>}:<job>:<shard>`). Other jobs' keys are not.
pub fn is_job_key(key: &[u8], job: &str) -> bool {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return false;
    };
    let rest = match rest.strip_prefix(b"{") {
        Some(tagged) => match tagged.iter().position(|&b| b == b'}') {
            Some(end) => match tagged[end + 1..].strip_prefix(b":") {
                Some(r) => r,
                None => return false,
            },
            None => return false,
        },
        None => rest,
    };
    rest.strip_prefix(job.as_bytes())
        .is_some_and(|r| r.first() == Some(&b':'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// A snapshot was being applied and may be incomplete.
    Snapshot { replid: String, offset: u64 },
    /// Everything up to `offset` (inclusive) of `replid`'s stream is applied; `db` is the
    /// database selected there.
    Stream {
        replid: String,
        offset: u64,
        db: u32,
    },
    /// The job stopped at a replicated command the target refused, at source offset
    /// `offset`: batches already in flight may have been applied past it, so the job must not
    /// resume from here (value `failed - <offset>`).
    Failed { offset: u64 },
}

impl Checkpoint {
    /// [`Checkpoint::Stream`]'s value, without building one (written once per batch).
    pub fn encode_stream(replid: &str, offset: u64, db: u32) -> String {
        format!("stream {replid} {offset} {db}")
    }

    /// [`Checkpoint::Snapshot`]'s value, without building one.
    pub fn encode_snapshot(replid: &str, offset: u64) -> String {
        format!("snapshot {replid} {offset}")
    }

    pub fn encode(&self) -> String {
        match self {
            Checkpoint::Snapshot { replid, offset } => Self::encode_snapshot(replid, *offset),
            Checkpoint::Stream { replid, offset, db } => Self::encode_stream(replid, *offset, *db),
            Checkpoint::Failed { offset } => format!("failed - {offset}"),
        }
    }

    pub fn parse(v: &[u8]) -> Option<Checkpoint> {
        let text = std::str::from_utf8(v).ok()?;
        let mut it = text.split(' ');
        let kind = it.next()?;
        let replid = it.next()?.to_string();
        let offset = it.next()?.parse().ok()?;
        let db = match it.next() {
            Some(d) => Some(d.parse().ok()?),
            None => None,
        };
        if it.next().is_some() {
            return None;
        }
        match (kind, db) {
            ("snapshot", None) => Some(Checkpoint::Snapshot { replid, offset }),
            ("failed", None) if replid == "-" => Some(Checkpoint::Failed { offset }),
            ("stream", Some(db)) => Some(Checkpoint::Stream { replid, offset, db }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Checkpoint::Stream {
            replid: "a".repeat(40),
            offset: 1234,
            db: 7,
        };
        assert_eq!(Checkpoint::parse(c.encode().as_bytes()), Some(c));
        let s = Checkpoint::Snapshot {
            replid: "b".repeat(40),
            offset: 0,
        };
        assert_eq!(Checkpoint::parse(s.encode().as_bytes()), Some(s));
        let f = Checkpoint::Failed { offset: 42 };
        assert_eq!(Checkpoint::parse(f.encode().as_bytes()), Some(f));
        assert_eq!(Checkpoint::parse(b"failed x 1"), None);
        assert_eq!(Checkpoint::parse(b"stream x"), None);
        assert_eq!(Checkpoint::parse(b"other x 1"), None);
        assert_eq!(Checkpoint::parse(b"stream x 1"), None);
        assert_eq!(Checkpoint::parse(b"stream x 1 2 3"), None);
        assert!(is_checkpoint_key(&key("job", "0")));
        assert_eq!(&key("job", "0")[..], b"ferry:checkpoint:job:0");
        assert!(is_job_key(b"ferry:checkpoint:job:0", "job"));
        assert!(is_job_key(b"ferry:checkpoint:job:target", "job"));
        assert!(is_job_key(b"ferry:checkpoint:{a1}:job:slots-0", "job"));
        assert!(!is_job_key(b"ferry:checkpoint:job2:0", "job"));
        assert!(!is_job_key(b"ferry:checkpoint:{a1}:job2:0", "job"));
        assert!(!is_job_key(b"ferry:checkpoint:{a1job:0", "job"));
        assert!(!is_job_key(b"job:0", "job"));
    }
}
