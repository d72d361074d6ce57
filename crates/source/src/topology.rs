//! Where a source's data lives: one node, a master with replicas, a cluster's shards, or
//! a master that Sentinel names. Discovered again at every (re)connection, so a failover
//! is followed: the shard keeps its name, its node changes, and the reader resumes with
//! `PSYNC <replid> <offset>` on the new node (replicas of a shard share the replication
//! history, so any of them can continue it).

use std::fmt;
use std::str::FromStr;

use ferry_resp::{Connection, Endpoint, Frame};
use tracing::debug;

use crate::error::SourceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceType {
    /// Decided from the first seed that answers.
    #[default]
    Auto,
    Standalone,
    ReplicaSet,
    Cluster,
    Sentinel,
}

impl FromStr for SourceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(SourceType::Auto),
            "standalone" | "single" => Ok(SourceType::Standalone),
            "replica-set" | "replicaset" | "master-replica" => Ok(SourceType::ReplicaSet),
            "cluster" => Ok(SourceType::Cluster),
            "sentinel" => Ok(SourceType::Sentinel),
            _ => Err(format!(
                "unknown source type {s:?}: use auto, standalone, replica-set, cluster or sentinel"
            )),
        }
    }
}

impl fmt::Display for SourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceType::Auto => "auto",
            SourceType::Standalone => "standalone",
            SourceType::ReplicaSet => "replica-set",
            SourceType::Cluster => "cluster",
            SourceType::Sentinel => "sentinel",
        })
    }
}

/// One shard: a master and its healthy replicas.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Stable across failovers: "0" for a single shard, `slots-<first slot>` in a cluster.
    pub id: String,
    pub master: Endpoint,
    pub replicas: Vec<Endpoint>,
    /// The cluster slot ranges it holds (inclusive); empty outside a cluster.
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    /// The node to read from: a healthy replica when asked and one exists (the master then
    /// carries no load), else the master.
    pub fn reader_node(&self, use_replica: bool) -> &Endpoint {
        match (use_replica, self.replicas.first()) {
            (true, Some(r)) => r,
            _ => &self.master,
        }
    }
}

/// Discovers the shards. `seeds` carry the credentials every data node is logged in
/// with; `master_name` is Sentinel's name of the master.
pub async fn discover(
    seeds: &[Endpoint],
    kind: SourceType,
    master_name: Option<&str>,
) -> Result<(SourceType, Vec<Shard>), SourceError> {
    let mut last_err = None;
    for seed in seeds {
        match discover_from(seed, kind, master_name).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                debug!(seed = %seed, error = %e, "seed did not answer");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| SourceError::Protocol {
        addr: String::new(),
        message: "no source address given".into(),
    }))
}

async fn discover_from(
    seed: &Endpoint,
    kind: SourceType,
    master_name: Option<&str>,
) -> Result<(SourceType, Vec<Shard>), SourceError> {
    if kind == SourceType::Sentinel {
        let name = master_name.ok_or_else(|| SourceError::Protocol {
            addr: seed.addr(),
            message: "a sentinel source needs the master's name (--source-master NAME)".into(),
        })?;
        return sentinel(seed, name).await.map(|s| (kind, s));
    }
    let mut conn = Connection::connect(seed).await?;
    let kind = match kind {
        SourceType::Auto => {
            let info = conn.info("server").await?;
            match info.get("redis_mode") {
                Some("cluster") => SourceType::Cluster,
                Some("sentinel") => {
                    return match master_name {
                        Some(name) => sentinel(seed, name)
                            .await
                            .map(|s| (SourceType::Sentinel, s)),
                        None => Err(SourceError::Protocol {
                            addr: seed.addr(),
                            message: "this address is a Sentinel: give the master's name with --source-master NAME".into(),
                        }),
                    }
                }
                _ => SourceType::ReplicaSet,
            }
        }
        k => k,
    };
    match kind {
        SourceType::Standalone => Ok((
            kind,
            vec![Shard {
                id: "0".into(),
                master: seed.clone(),
                replicas: Vec::new(),
                slots: Vec::new(),
            }],
        )),
        SourceType::Cluster => cluster(&mut conn, seed).await.map(|s| (kind, s)),
        _ => {
            let shard = replica_set(&mut conn, seed).await?;
            // A lone master is simply a standalone source.
            let kind = if shard.replicas.is_empty() && shard.master == *seed {
                SourceType::Standalone
            } else {
                SourceType::ReplicaSet
            };
            Ok((kind, vec![shard]))
        }
    }
}

fn text(f: &Frame) -> String {
    f.to_text()
}

fn port_of(f: &Frame) -> Option<u16> {
    match f {
        Frame::Integer(i) => u16::try_from(*i).ok(),
        other => other.to_text().parse().ok(),
    }
}

/// `ROLE` of the seed; a replica leads to its master.
async fn replica_set(conn: &mut Connection, seed: &Endpoint) -> Result<Shard, SourceError> {
    let role = conn.request(&["ROLE"]).await?;
    let Frame::Array(items) = role else {
        return Err(unexpected(seed, "ROLE"));
    };
    match items.first().map(text).as_deref() {
        Some("master") => {
            let replicas = match items.get(2) {
                Some(Frame::Array(rs)) => rs
                    .iter()
                    .filter_map(|r| match r {
                        Frame::Array(r) => {
                            let host = text(r.first()?);
                            let port = port_of(r.get(1)?)?;
                            // Port 0: a tool like ferry itself, not a node to connect to.
                            (port != 0).then(|| seed.with_addr(&host, port))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let replicas = healthy(replicas).await;
            Ok(Shard {
                id: "0".into(),
                master: seed.clone(),
                replicas,
                slots: Vec::new(),
            })
        }
        Some("slave") | Some("replica") => {
            let host = items
                .get(1)
                .map(text)
                .ok_or_else(|| unexpected(seed, "ROLE"))?;
            let port = items
                .get(2)
                .and_then(port_of)
                .ok_or_else(|| unexpected(seed, "ROLE"))?;
            let master = seed.with_addr(&host, port);
            let mut mconn = match Connection::connect(&master).await {
                Ok(c) => c,
                Err(e) => {
                    // Read the given node itself: it says why it cannot serve (for
                    // instance NOMASTERLINK) and the retry policy takes it from there.
                    tracing::warn!(replica = %seed, master = %master, error = %e,
                        "the source's master is unreachable; reading the given replica");
                    return Ok(Shard {
                        id: "0".into(),
                        master: seed.clone(),
                        replicas: Vec::new(),
                        slots: Vec::new(),
                    });
                }
            };
            let mut shard = Box::pin(replica_set(&mut mconn, &master)).await?;
            if shard.replicas.is_empty() {
                // The master did not list the seed (yet): the seed itself is a replica.
                shard.replicas = healthy(vec![seed.clone()]).await;
            }
            Ok(shard)
        }
        _ => Err(unexpected(seed, "ROLE")),
    }
}

/// Replicas whose link to their master is up, so they can serve a PSYNC.
async fn healthy(candidates: Vec<Endpoint>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in candidates {
        let ok = async {
            let mut c = Connection::connect_timeout(&ep, std::time::Duration::from_secs(2)).await?;
            let info = c.info("replication").await?;
            Ok::<bool, ferry_resp::Error>(info.get("master_link_status") == Some("up"))
        }
        .await;
        match ok {
            Ok(true) => out.push(ep),
            Ok(false) => debug!(replica = %ep, "replica's master link is down; not used"),
            Err(e) => debug!(replica = %ep, error = %e, "replica unreachable; not used"),
        }
    }
    out
}

/// `CLUSTER NODES`: one shard per master that holds slots.
async fn cluster(conn: &mut Connection, seed: &Endpoint) -> Result<Vec<Shard>, SourceError> {
    let nodes = conn.request(&["CLUSTER", "NODES"]).await?.to_text();
    let parsed = parse_cluster_nodes(&nodes);
    let mut shards = Vec::new();
    for m in parsed.iter().filter(|n| n.master && !n.slots.is_empty()) {
        if m.failed {
            return Err(SourceError::Protocol {
                addr: seed.addr(),
                message: format!(
                    "cluster master {} (slots from {}) is marked failed; waiting for a failover",
                    m.addr_host_port(),
                    m.slots[0].0
                ),
            });
        }
        let replicas: Vec<Endpoint> = parsed
            .iter()
            .filter(|r| !r.master && !r.failed && r.master_id == m.id)
            .map(|r| seed.with_addr(&r.host, r.port))
            .collect();
        shards.push(Shard {
            id: format!("slots-{}", m.slots.iter().map(|r| r.0).min().unwrap_or(0)),
            master: seed.with_addr(&m.host, m.port),
            replicas: healthy(replicas).await,
            slots: m.slots.clone(),
        });
    }
    if shards.is_empty() {
        return Err(SourceError::Protocol {
            addr: seed.addr(),
            message: "CLUSTER NODES lists no master with slots".into(),
        });
    }
    shards.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(shards)
}

#[derive(Debug, Clone, PartialEq)]
struct ClusterNode {
    id: String,
    host: String,
    port: u16,
    master: bool,
    failed: bool,
    master_id: String,
    /// Slot ranges held (inclusive).
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn addr_host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            if port == 0 || flags.iter().any(|x| matches!(*x, "noaddr" | "handshake")) {
                return None;
            }
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_string(),
                host: host.trim_matches(['[', ']']).to_string(),
                port,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|x| matches!(*x, "fail" | "fail?")),
                master_id: f[3].to_string(),
                slots,
            })
        })
        .collect()
}

/// Sentinel: the master it names, and the replicas it sees healthy.
async fn sentinel(seed: &Endpoint, name: &str) -> Result<Vec<Shard>, SourceError> {
    // Sentinels often have no password of their own while the data nodes do.
    let mut bare = seed.clone();
    bare.username = None;
    bare.password = None;
    let mut conn = match Connection::connect(&bare).await {
        Ok(mut c) => match c.request(&["PING"]).await {
            Ok(_) => c,
            Err(_) => Connection::connect(seed).await?,
        },
        Err(e) => return Err(e.into()),
    };
    let addr = conn
        .request(&["SENTINEL", "get-master-addr-by-name", name])
        .await?;
    let Frame::Array(hp) = addr else {
        return Err(SourceError::Protocol {
            addr: seed.addr(),
            message: format!("Sentinel does not know a master named {name:?}"),
        });
    };
    let host = hp
        .first()
        .map(text)
        .ok_or_else(|| unexpected(seed, "SENTINEL"))?;
    let port = hp
        .get(1)
        .and_then(port_of)
        .ok_or_else(|| unexpected(seed, "SENTINEL"))?;
    let master = seed.with_addr(&host, port);
    let reps = conn.request(&["SENTINEL", "replicas", name]).await?;
    let mut replicas = Vec::new();
    if let Frame::Array(list) = reps {
        for r in list {
            let Frame::Array(kv) = r else { continue };
            let get = |k: &str| {
                kv.chunks(2)
                    .find(|p| p.first().map(text).as_deref() == Some(k))
                    .and_then(|p| p.get(1))
                    .map(text)
            };
            let flags = get("flags").unwrap_or_default();
            if flags.contains("down") || flags.contains("disconnected") {
                continue;
            }
            if let (Some(h), Some(p)) = (get("ip"), get("port").and_then(|p| p.parse().ok())) {
                if p != 0 {
                    replicas.push(seed.with_addr(&h, p));
                }
            }
        }
    }
    Ok(vec![Shard {
        id: "0".into(),
        master,
        replicas: healthy(replicas).await,
        slots: Vec::new(),
    }])
}

fn unexpected(seed: &Endpoint, command: &str) -> SourceError {
    SourceError::Protocol {
        addr: seed.addr(),
        message: format!("unexpected reply to {command}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383 [1-<-abc]
6ec2 127.0.0.1:30005@40005 slave,fail 67ed 0 1426238316232 5 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
x 127.0.0.1:0@0 master,noaddr - 0 0 1 disconnected
";
        let n = parse_cluster_nodes(text);
        assert_eq!(n.len(), 5);
        let m1 = n.iter().find(|x| x.id == "e7d1").unwrap();
        assert!(m1.master && !m1.failed);
        assert_eq!(m1.slots, vec![(0, 5460)]);
        assert_eq!(
            n.iter().find(|x| x.id == "292f").unwrap().slots,
            vec![(10923, 16383)]
        );
        let r = n.iter().find(|x| x.id == "6ec2").unwrap();
        assert!(!r.master && r.failed && r.master_id == "67ed");
        assert_eq!(n.iter().find(|x| x.id == "67ed").unwrap().port, 30002);
    }

    #[test]
    fn source_types() {
        assert_eq!(
            "replica-set".parse::<SourceType>().unwrap(),
            SourceType::ReplicaSet
        );
        assert_eq!(
            "CLUSTER".parse::<SourceType>().unwrap(),
            SourceType::Cluster
        );
        assert!("mesh".parse::<SourceType>().is_err());
    }
}
