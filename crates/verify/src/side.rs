//! One side of the comparison: a standalone node, or every master of a Redis Cluster with
//! the slot map that routes each key to the master owning its slot.
//!
//! A cluster side keeps one connection per master. When a read is redirected (`MOVED`/`ASK`:
//! slots moved since the map was fetched), the caller refreshes the map once with
//! [`Side::refresh`] and retries; connections to masters already known are kept, so node
//! indices (and a `SCAN` cursor running on one) stay valid across a refresh.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_resp::{Endpoint, Frame};
use ferry_sink::slot::{self, SlotMap};

use crate::compare::{self, Rules};
use crate::node::{Node, Role};
use crate::report::Problem;
use crate::VerifyError;

pub struct Side {
    role: Role,
    /// Endpoints to ask for the slot map (the URLs given, then the masters seen).
    seeds: Vec<Endpoint>,
    /// `None`: a standalone node, `nodes[0]`.
    map: Option<SlotMap>,
    /// Per master of `map`, an index into `nodes`.
    route: Vec<usize>,
    /// Connections, with the `host:port` each one is to.
    nodes: Vec<(String, Node)>,
}

impl Side {
    /// Connects to `seeds[0]`; if it is a cluster node, to every master of the cluster.
    pub async fn open(seeds: &[Endpoint], role: Role) -> Result<Side, VerifyError> {
        let Some(first) = seeds.first() else {
            return Err(VerifyError::Config(format!(
                "no {} node given",
                role.name()
            )));
        };
        let mut node = Node::connect(first, role).await?;
        let mode = node.mode().await?;
        if mode == "sentinel" {
            return Err(VerifyError::Config(format!(
                "the {} node {} is a Sentinel: verify reads the data nodes, give the master's \
                 address",
                role.name(),
                first.addr()
            )));
        }
        if mode != "cluster" {
            if seeds.len() > 1 {
                return Err(VerifyError::Config(format!(
                    "several {} nodes given but {} is not a cluster node",
                    role.name(),
                    first.addr()
                )));
            }
            return Ok(Side {
                role,
                seeds: seeds.to_vec(),
                map: None,
                route: vec![0],
                nodes: vec![(first.addr(), node)],
            });
        }
        if let Some(db) = seeds.iter().find_map(|e| e.db.filter(|&d| d != 0)) {
            return Err(VerifyError::Config(format!(
                "the {} is a Redis Cluster, which has only database 0 (the URL names db {db})",
                role.name()
            )));
        }
        let mut side = Side {
            role,
            seeds: seeds.to_vec(),
            map: None,
            route: Vec::new(),
            nodes: Vec::new(),
        };
        side.refresh().await?;
        Ok(side)
    }

    pub fn is_cluster(&self) -> bool {
        self.map.is_some()
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i].1
    }

    /// Every node allows `DEBUG DIGEST-VALUE`.
    pub fn digest(&self) -> bool {
        self.nodes.iter().all(|(_, n)| n.digest)
    }

    /// The node serving `key`.
    pub fn route(&self, key: &[u8]) -> usize {
        match &self.map {
            None => 0,
            Some(map) => map.owner[slot::key_slot(key) as usize]
                .and_then(|m| self.route.get(m).copied())
                .unwrap_or(0),
        }
    }

    /// The nodes serving slots now (all of a standalone side's one).
    pub fn masters(&self) -> Vec<usize> {
        let mut m = self.route.clone();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Fetches the slot map again and connects to masters not seen before.
    pub async fn refresh(&mut self) -> Result<(), VerifyError> {
        if self.map.is_none() && !self.route.is_empty() {
            return Ok(()); // standalone: nothing to refresh
        }
        let mut candidates: Vec<Endpoint> = self
            .map
            .iter()
            .flat_map(|m| m.masters.iter().cloned())
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        let map = slot::fetch_any(&candidates).await.map_err(|e| {
            VerifyError::Config(format!(
                "{}: cannot read the cluster's slot map: {e}",
                self.role.name()
            ))
        })?;
        let mut route = Vec::with_capacity(map.masters.len());
        for ep in &map.masters {
            let addr = ep.addr();
            let i = match self.nodes.iter().position(|(a, _)| *a == addr) {
                Some(i) => i,
                None => {
                    let mut node = Node::connect(ep, self.role).await?;
                    node.assume_db(0);
                    self.nodes.push((addr, node));
                    self.nodes.len() - 1
                }
            };
            route.push(i);
        }
        self.route = route;
        self.map = Some(map);
        Ok(())
    }

    /// `SELECT db` on every node (a cluster is always on db 0).
    pub async fn select(&mut self, db: u32) -> Result<(), VerifyError> {
        if self.is_cluster() {
            return Ok(());
        }
        for (_, n) in &mut self.nodes {
            n.select(db).await?;
        }
        Ok(())
    }

    /// Redirections seen on any node since the last call.
    fn take_moved(&mut self) -> bool {
        let mut any = false;
        for (_, n) in &mut self.nodes {
            any |= n.take_moved();
        }
        any
    }

    /// Which of `keys` exist, one pipeline of `EXISTS` per node.
    pub async fn exists(&mut self, keys: &[Bytes]) -> Result<Vec<bool>, VerifyError> {
        let mut out = vec![true; keys.len()];
        for attempt in 0..2 {
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, k) in keys.iter().enumerate() {
                groups.entry(self.route(k)).or_default().push(i);
            }
            for (n, idx) in groups {
                let cmds: Vec<Vec<Bytes>> = idx
                    .iter()
                    .map(|&i| vec![Bytes::from_static(b"EXISTS"), keys[i].clone()])
                    .collect();
                let replies = self.node(n).pipeline(&cmds).await?;
                for (i, r) in idx.into_iter().zip(replies) {
                    // An error (a redirection) is "absent": the recheck compares the key.
                    out[i] = matches!(r, Frame::Integer(x) if x > 0);
                }
            }
            if attempt == 0 && self.take_moved() {
                self.refresh().await?;
                continue;
            }
            break;
        }
        Ok(out)
    }
}

/// Compares `keys` between the two sides, each key read on the node serving it on each
/// side: one pipeline per (source node, target node) pair. A redirection refreshes the
/// slot maps and compares the batch once more.
pub async fn compare_keys(
    src: &mut Side,
    tgt: &mut Side,
    keys: &[Bytes],
    rules: Rules,
) -> Result<Vec<Vec<Problem>>, VerifyError> {
    let mut out = vec![Vec::new(); keys.len()];
    for attempt in 0..2 {
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            groups
                .entry((src.route(k), tgt.route(k)))
                .or_default()
                .push(i);
        }
        for ((s, t), idx) in groups {
            let group: Vec<Bytes> = idx.iter().map(|&i| keys[i].clone()).collect();
            let results =
                compare::compare_keys(&mut src.nodes[s].1, &mut tgt.nodes[t].1, &group, rules)
                    .await?;
            for (i, problems) in idx.into_iter().zip(results) {
                out[i] = problems;
            }
        }
        let (src_moved, tgt_moved) = (src.take_moved(), tgt.take_moved());
        if attempt == 0 && (src_moved || tgt_moved) {
            if src_moved {
                src.refresh().await?;
            }
            if tgt_moved {
                tgt.refresh().await?;
            }
            continue;
        }
        break;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_testkit::{Cluster, Server};

    use super::*;

    /// The master of `cluster` serving `key` now, and another one.
    fn owner_and_other(cluster: &Cluster, key: &str) -> (usize, usize) {
        let slot = cluster.keyslot(key.as_bytes());
        let masters = cluster.master_indices();
        let owner = masters
            .iter()
            .copied()
            .find(|&i| {
                let reply = cluster
                    .node(i)
                    .cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
                reply.as_int() > 0
            })
            .expect("a master holds the key");
        let other = masters
            .into_iter()
            .find(|&i| i != owner)
            .expect("two masters");
        (owner, other)
    }

    #[tokio::test]
    async fn a_stale_slot_map_is_refreshed_on_moved() {
        let source = Server::start();
        let cluster = Cluster::start(2, 0);
        source.cmd(&["SET", "foo", "bar"]);
        cluster.cmd_routed_str(&["SET", "foo", "bar"]);
        let ep = |url: String| url.parse::<Endpoint>().expect("url");
        let mut src = Side::open(&[ep(source.url())], Role::Source)
            .await
            .expect("source");
        let mut tgt = Side::open(&[ep(cluster.seed_url())], Role::Target)
            .await
            .expect("target");
        assert!(!src.is_cluster() && tgt.is_cluster());
        let rules = Rules {
            values: true,
            ttl_tolerance: Duration::from_secs(2),
            chunk: 100,
        };
        let keys = [Bytes::from_static(b"foo")];
        let before = tgt.route(b"foo");

        // The slot moves after the map was read: the first read is redirected.
        let (owner, other) = owner_and_other(&cluster, "foo");
        let slot = cluster.keyslot(b"foo");
        cluster.migrate_slot(slot, owner, other, Duration::ZERO);
        let problems = compare_keys(&mut src, &mut tgt, &keys, rules)
            .await
            .expect("compare");
        assert_eq!(problems, vec![Vec::<Problem>::new()]);
        assert_ne!(tgt.route(b"foo"), before, "the map was refreshed");

        // The same for a presence check routed by slot.
        cluster.migrate_slot(slot, other, owner, Duration::ZERO);
        assert_eq!(tgt.exists(&keys).await.expect("exists"), vec![true]);
        assert_eq!(tgt.route(b"foo"), before);
        assert_eq!(
            tgt.exists(&[Bytes::from_static(b"nope")])
                .await
                .expect("exists"),
            vec![false]
        );
    }
}
