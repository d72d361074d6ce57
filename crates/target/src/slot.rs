//! Redis Cluster hash slots: `CRC16(key) mod 16384` (CRC-16/XMODEM), where a key holding a
//! non-empty `{…}` hashes only what is between its first `{` and the next `}` (the hash
//! tag), and the slot map a cluster reports with `CLUSTER SLOTS`.

use std::sync::OnceLock;

use ferry_resp::{Connection, Endpoint, Frame};

use crate::error::TargetError;

pub const SLOTS: usize = 16384;

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The part of `key` that is hashed: its hash tag if it has a non-empty one, else all of it.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) % SLOTS as u16
}

/// A short string hashing to each slot (at most 3 characters of `[0-9a-zA-Z]`), for keys that
/// must live in a given slot: `{<tag>}…`.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut tags = vec![String::new(); SLOTS];
        let mut try_tag = |t: &[u8]| {
            let s = key_slot(t) as usize;
            if tags[s].is_empty() {
                tags[s] = String::from_utf8_lossy(t).into_owned();
            }
        };
        // Shortest first: one and two characters, then three.
        for &a in ALPHABET {
            try_tag(&[a]);
            for &b in ALPHABET {
                try_tag(&[a, b]);
            }
        }
        for &a in ALPHABET {
            for &b in ALPHABET {
                for &c in ALPHABET {
                    try_tag(&[a, b, c]);
                }
            }
        }
        tags
    });
    &tags[slot as usize]
}

/// Which master serves each slot.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Masters, `host:port`.
    pub masters: Vec<Endpoint>,
    /// Per slot, an index into `masters` (`None`: unassigned).
    pub owner: Vec<Option<usize>>,
}

impl SlotMap {
    /// `CLUSTER SLOTS` of the node `conn` is connected to; `ep` (that node's endpoint) gives
    /// the credentials for every node and the host when the reply leaves it empty.
    pub async fn fetch(conn: &mut Connection, ep: &Endpoint) -> Result<SlotMap, TargetError> {
        let reply = conn.request(&[b"CLUSTER".as_ref(), b"SLOTS"]).await?;
        Self::parse(&reply, ep).ok_or_else(|| TargetError::BadReply {
            addr: ep.addr(),
            what: format!(
                "CLUSTER SLOTS (not a slot map): {}",
                reply.to_text().chars().take(200).collect::<String>()
            ),
        })
    }

    fn parse(reply: &Frame, ep: &Endpoint) -> Option<SlotMap> {
        let Frame::Array(ranges) = reply else {
            return None;
        };
        let mut map = SlotMap {
            masters: Vec::new(),
            owner: vec![None; SLOTS],
        };
        for range in ranges {
            let Frame::Array(items) = range else {
                return None;
            };
            let (Some(Frame::Integer(start)), Some(Frame::Integer(end)), Some(Frame::Array(node))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return None;
            };
            let host = match node.first()? {
                Frame::Bulk(h) if !h.is_empty() && h.as_ref() != b"?" => {
                    String::from_utf8_lossy(h).into_owned()
                }
                _ => ep.host.clone(),
            };
            let Frame::Integer(port) = node.get(1)? else {
                return None;
            };
            let port = u16::try_from(*port).ok()?;
            let mut node_ep = ep.with_addr(&host, port);
            node_ep.db = None;
            let idx = match map.masters.iter().position(|m| m.addr() == node_ep.addr()) {
                Some(i) => i,
                None => {
                    map.masters.push(node_ep);
                    map.masters.len() - 1
                }
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            for s in &mut map.owner[start..=end] {
                *s = Some(idx);
            }
        }
        Some(map)
    }

    /// The master serving `slot`.
    pub fn endpoint(&self, slot: u16) -> Option<&Endpoint> {
        self.owner[slot as usize].map(|i| &self.masters[i])
    }

    /// Slots nobody serves (a cluster that is not `cluster_state:ok`).
    pub fn unassigned(&self) -> usize {
        self.owner.iter().filter(|o| o.is_none()).count()
    }
}

/// The target's nodes that hold data: every master of a cluster, else the node itself.
pub async fn data_nodes(target: &Endpoint, cluster: bool) -> Result<Vec<Endpoint>, TargetError> {
    if !cluster {
        return Ok(vec![target.clone()]);
    }
    let mut seed = target.clone();
    seed.db = None;
    Ok(fetch_any(&[seed]).await?.masters)
}

/// Fetches the slot map from the first of `candidates` that answers.
pub async fn fetch_any(candidates: &[Endpoint]) -> Result<SlotMap, TargetError> {
    let mut last = None;
    for ep in candidates {
        match Connection::connect(ep).await {
            Ok(mut c) => match SlotMap::fetch(&mut c, ep).await {
                Ok(m) => return Ok(m),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| TargetError::Topology {
        addr: String::new(),
        message: "no cluster node to ask for the slot map".into(),
    }))
}

/// Whether `slot` is in one of the inclusive `ranges`.
pub fn in_ranges(slot: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(a, b)| slot >= a && slot <= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        // CRC-16/XMODEM check value of "123456789" is 0x31C3.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in 0..SLOTS as u16 {
            let t = slot_tag(s);
            assert!(!t.is_empty() && t.len() <= 3, "slot {s}");
            assert_eq!(
                key_slot(format!("ferry:checkpoint:{{{t}}}:job:0").as_bytes()),
                s
            );
        }
    }
}
