//! A cluster target's checkpoints: one per slot beside the job's global one, read back and
//! deleted; and whether an endpoint is a cluster at all.

use super::*;

/// The key of one slot's checkpoint, derived from the job's (global) checkpoint key.
pub fn slot_checkpoint_key(global: &[u8], slot: u16) -> Bytes {
    let rest = global.strip_prefix(PREFIX).unwrap_or(global);
    let tag = slot_tag(slot);
    let mut k = Vec::with_capacity(PREFIX.len() + tag.len() + 3 + rest.len());
    k.extend_from_slice(PREFIX);
    k.push(b'{');
    k.extend_from_slice(tag.as_bytes());
    k.extend_from_slice(b"}:");
    k.extend_from_slice(rest);
    Bytes::from(k)
}

/// The key of an encoded `RESTORE` (`*n`, `$7 RESTORE`, then the key's bulk string), read
/// back from the command for an error message.
pub(super) fn restore_key(cmd: &Bytes) -> Option<Bytes> {
    let head = b"\r\n$7\r\nRESTORE\r\n$".len();
    let start = cmd.iter().position(|&b| b == b'\r')? + head;
    let cr = start + cmd.get(start..)?.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&cmd[start..cr]).ok()?.parse().ok()?;
    let key = cr + 2;
    (cmd.len() >= key + len).then(|| cmd.slice(key..key + len))
}

/// The masters of the cluster `seed` belongs to.
pub(super) async fn masters_of(seed: &Endpoint) -> Result<SlotMap, TargetError> {
    let mut seed = seed.clone();
    seed.db = None;
    slot::fetch_any(&[seed]).await
}

/// `SCAN` pattern matching every slot checkpoint of a job's shard.
pub(super) fn slot_pattern(job: &str, shard: &str) -> Vec<u8> {
    let mut p = PREFIX.to_vec();
    p.extend_from_slice(b"{*}:");
    for b in job
        .bytes()
        .chain(std::iter::once(b':'))
        .chain(shard.bytes())
    {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p
}

pub(super) async fn scan_slot_keys(
    ep: &Endpoint,
    pattern: &[u8],
) -> Result<Vec<(Bytes, Option<Bytes>)>, TargetError> {
    let mut conn = Connection::connect(ep).await?;
    let mut out = Vec::new();
    let mut scan = Scan::new(1000).matching(Bytes::copy_from_slice(pattern));
    while let Some(keys) = scan.next(&mut conn).await? {
        for k in keys {
            let v = conn.request(&[b"GET".as_ref(), &k]).await?;
            out.push((k, v.as_bytes().cloned()));
        }
    }
    Ok(out)
}

/// Reads a job shard's checkpoint from a cluster target: the global one and, per slot, the
/// offset that slot's own checkpoint records (`None` when there is no global checkpoint).
pub async fn load_cluster_checkpoint(
    seed: &Endpoint,
    job: &str,
    shard: &str,
) -> Result<Option<(Checkpoint, HashMap<u16, u64>)>, TargetError> {
    let map = masters_of(seed).await?;
    let global = checkpoint::key(job, shard);
    let Some(owner) = map.endpoint(key_slot(&global)) else {
        return Err(TargetError::Topology {
            addr: seed.addr(),
            message: "the checkpoint's slot is served by no master".into(),
        });
    };
    let Some(c) = checkpoint::load(owner, &global).await? else {
        return Ok(None);
    };
    let mut slots = HashMap::new();
    let pattern = slot_pattern(job, shard);
    for ep in &map.masters {
        for (k, v) in scan_slot_keys(ep, &pattern).await? {
            if let Some(Checkpoint::Stream { offset, .. }) =
                v.as_deref().and_then(Checkpoint::parse)
            {
                slots.insert(key_slot(&k), offset);
            }
        }
    }
    Ok(Some((c, slots)))
}

/// Removes a job shard's checkpoints (global and per slot) from a cluster target.
pub async fn delete_cluster_checkpoint(
    seed: &Endpoint,
    job: &str,
    shard: &str,
) -> Result<(), TargetError> {
    let map = masters_of(seed).await?;
    let global = checkpoint::key(job, shard);
    if let Some(owner) = map.endpoint(key_slot(&global)) {
        checkpoint::delete(owner, &global).await?;
    }
    let pattern = slot_pattern(job, shard);
    for ep in &map.masters {
        let keys = scan_slot_keys(ep, &pattern).await?;
        if keys.is_empty() {
            continue;
        }
        let mut conn = Connection::connect(ep).await?;
        for (k, _) in keys {
            conn.request(&[b"DEL".as_ref(), &k]).await?;
        }
    }
    Ok(())
}

/// Whether the node at `ep` runs in cluster mode (`INFO server` → `redis_mode:cluster`).
pub async fn is_cluster(ep: &Endpoint) -> Result<bool, TargetError> {
    let mut conn = Connection::connect(ep).await?;
    let info = conn.info("server").await?;
    Ok(info.get("redis_mode") == Some("cluster"))
}
