//! The slot map a cluster reports with `CLUSTER SLOTS` (the hashing itself:
//! [`ferry_core::slot`]).

use ferry_resp::{Connection, Endpoint, Frame};

pub use ferry_core::slot::*;

use crate::error::TargetError;

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
