//! What a job owns on its target. A job that found its target empty owns it: a new snapshot
//! may flush what the job wrote before. A job that was allowed into a target holding other
//! data shares it: ferry then deletes nothing there, ever (a new snapshot fails instead, unless
//! the user allows the flush).
//!
//! The answer is recorded once, before the job's first write, in the job's checkpoint
//! namespace (`ferry:checkpoint:<job>:target`, db 0, on the master owning its slot), so it is
//! never copied nor verified, outlives restarts, and vanishes with the data if the target is
//! flushed (a later run then finds the target empty again, or not).

use bytes::Bytes;
use ferry_resp::{Connection, Endpoint, Frame, Scan};

use crate::checkpoint::{is_job_key, PREFIX};
use crate::error::TargetError;
use crate::slot::key_slot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The job found the target empty: it may flush it before a new snapshot.
    Owned,
    /// The target held other data when the job started: the job deletes nothing.
    Shared,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Owned => "owned",
            Ownership::Shared => "shared",
        }
    }

    fn parse(v: &[u8]) -> Option<Ownership> {
        match v {
            b"owned" => Some(Ownership::Owned),
            b"shared" => Some(Ownership::Shared),
            _ => None,
        }
    }
}

/// The key recording job `job`'s ownership of its target.
pub fn key(job: &str) -> Bytes {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(job.as_bytes());
    k.extend_from_slice(b":target");
    Bytes::from(k)
}

/// The node holding `key` (its slot's master on a cluster).
pub(crate) async fn node_of(
    target: &Endpoint,
    cluster: bool,
    key: &[u8],
) -> Result<Endpoint, TargetError> {
    if !cluster {
        return Ok(target.clone());
    }
    let mut seed = target.clone();
    seed.db = None;
    let map = crate::slot::fetch_any(&[seed]).await?;
    map.endpoint(key_slot(key))
        .cloned()
        .ok_or_else(|| TargetError::Topology {
            addr: target.addr(),
            message: "the slot of ferry's ownership record is served by no master".into(),
        })
}

/// The recorded ownership, if the job recorded one on this target.
pub async fn read(
    target: &Endpoint,
    cluster: bool,
    job: &str,
) -> Result<Option<Ownership>, TargetError> {
    let k = key(job);
    let node = node_of(target, cluster, &k).await?;
    let mut conn = Connection::connect(&node).await?;
    conn.request(&[b"SELECT".as_ref(), b"0"]).await?;
    match conn.request(&[b"GET".as_ref(), &k]).await? {
        Frame::Null => Ok(None),
        Frame::Bulk(v) => Ownership::parse(&v)
            .map(Some)
            .ok_or_else(|| TargetError::ForeignValue {
                addr: node.addr(),
                what: "ownership record",
                key: String::from_utf8_lossy(&k).into_owned(),
                value: String::from_utf8_lossy(&v[..v.len().min(80)]).into_owned(),
            }),
        other => Err(TargetError::BadReply {
            addr: node.addr(),
            what: format!("GET: {}", other.to_text()),
        }),
    }
}

/// Removes the record (the job is deleted).
pub async fn forget(target: &Endpoint, cluster: bool, job: &str) -> Result<(), TargetError> {
    let k = key(job);
    let node = node_of(target, cluster, &k).await?;
    let mut conn = Connection::connect(&node).await?;
    conn.request(&[b"SELECT".as_ref(), b"0"]).await?;
    conn.request(&[b"DEL".as_ref(), &k]).await?;
    Ok(())
}

/// Where the target holds data that is not job `job`'s own: the first such key found.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub addr: String,
    pub db: u32,
    pub key: Bytes,
    /// Keys on the target in all (every node, every database), the job's own included.
    pub total: u64,
}

/// Looks for a key on the target (any node, any database) other than `job`'s own keys;
/// `None` when the target holds nothing else. Stops at the first such key, so a large
/// target costs one `SCAN` step.
pub async fn foreign_key(
    target: &Endpoint,
    cluster: bool,
    job: &str,
) -> Result<Option<Foreign>, TargetError> {
    let mut found: Option<Foreign> = None;
    let mut total = 0u64;
    for node in crate::slot::data_nodes(target, cluster).await? {
        let mut conn = Connection::connect(&node).await?;
        let keyspace = conn.info("keyspace").await?.keyspace();
        total += keyspace.iter().map(|(_, n)| n).sum::<u64>();
        if found.is_some() {
            continue;
        }
        for (db, n) in keyspace {
            if n == 0 {
                continue;
            }
            conn.request(&[b"SELECT".as_ref(), db.to_string().as_bytes()])
                .await?;
            if let Some(key) = first_foreign(&mut conn, job).await? {
                found = Some(Foreign {
                    addr: node.addr(),
                    db,
                    key,
                    total: 0,
                });
                break;
            }
        }
    }
    Ok(found.map(|f| Foreign { total, ..f }))
}

/// The first key of the selected database that is not `job`'s own.
async fn first_foreign(conn: &mut Connection, job: &str) -> Result<Option<Bytes>, TargetError> {
    let mut scan = Scan::new(1000);
    while let Some(keys) = scan.next(conn).await? {
        if let Some(k) = keys.into_iter().find(|k| !is_job_key(k, job)) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// Counts the keys on the target (every node, every database), for a flush's log line.
pub async fn count_keys(target: &Endpoint, cluster: bool) -> Result<u64, TargetError> {
    let mut total = 0;
    for node in crate::slot::data_nodes(target, cluster).await? {
        let mut conn = Connection::connect(&node).await?;
        total += conn
            .info("keyspace")
            .await?
            .keyspace()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lives_in_the_jobs_namespace() {
        assert_eq!(&key("j")[..], b"ferry:checkpoint:j:target");
        assert!(is_job_key(&key("j"), "j"));
        assert_eq!(Ownership::parse(b"owned"), Some(Ownership::Owned));
        assert_eq!(Ownership::parse(b"shared"), Some(Ownership::Shared));
        assert_eq!(Ownership::parse(b"x"), None);
    }
}
