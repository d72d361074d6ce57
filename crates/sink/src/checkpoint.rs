//! Reading, marking and deleting the checkpoints kept in the target (their format and key
//! names: [`ferry_core::checkpoint`]).

use ferry_resp::{Connection, Endpoint, Frame};

pub use ferry_core::checkpoint::*;

use crate::error::TargetError;

/// Reads a checkpoint from db 0 of the target.
pub async fn load(target: &Endpoint, key: &[u8]) -> Result<Option<Checkpoint>, TargetError> {
    let mut conn = Connection::connect(target).await?;
    conn.request(&[b"SELECT".as_ref(), b"0"]).await?;
    match conn.request(&[b"GET".as_ref(), key]).await? {
        Frame::Null => Ok(None),
        Frame::Bulk(v) => {
            Checkpoint::parse(&v)
                .map(Some)
                .ok_or_else(|| TargetError::ForeignValue {
                    addr: target.addr(),
                    what: "checkpoint key",
                    key: String::from_utf8_lossy(key).into_owned(),
                    value: String::from_utf8_lossy(&v[..v.len().min(80)]).into_owned(),
                })
        }
        other => Err(TargetError::BadReply {
            addr: target.addr(),
            what: format!("GET checkpoint: {}", other.to_text()),
        }),
    }
}

/// Replaces a shard's checkpoint with [`Checkpoint::Failed`] (on the node holding `key`, its
/// slot's master on a cluster target), so that no later run resumes past a refused command.
pub async fn mark_failed(
    target: &Endpoint,
    cluster: bool,
    key: &[u8],
    offset: u64,
) -> Result<(), TargetError> {
    let node = crate::owner::node_of(target, cluster, key).await?;
    let mut conn = Connection::connect(&node).await?;
    conn.request(&[b"SELECT".as_ref(), b"0"]).await?;
    let value = Checkpoint::Failed { offset }.encode();
    conn.request(&[b"SET".as_ref(), key, value.as_bytes()])
        .await?;
    Ok(())
}

/// Removes a job's checkpoint (when the job is deleted).
pub async fn delete(target: &Endpoint, key: &[u8]) -> Result<(), TargetError> {
    let mut conn = Connection::connect(target).await?;
    conn.request(&[b"SELECT".as_ref(), b"0"]).await?;
    conn.request(&[b"DEL".as_ref(), key]).await?;
    Ok(())
}
