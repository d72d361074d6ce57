//! Whether a source node and a target node are one server, or feed each other. Addresses
//! cannot tell (127.0.0.1 and localhost, a DNS alias, a proxy in front): a job that writes
//! into its own source feeds itself, and the flush before a new snapshot deletes the
//! source's data. The servers themselves can tell: the same `run_id` is the same process;
//! the same `master_replid` is one replication group (a replica of the target's master
//! receives every write made to the target); shared cluster node ids are one cluster.

use std::collections::HashSet;

use ferry_resp::{Connection, Endpoint};

/// What identifies a server, read from the server itself.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub run_id: Option<String>,
    pub replid: Option<String>,
    /// The node ids of its cluster (`CLUSTER NODES`), empty when not a cluster node.
    pub cluster_ids: HashSet<String>,
}

/// Reads the identity of the server at `ep`.
pub async fn identify(ep: &Endpoint) -> Result<Identity, ferry_resp::Error> {
    let mut conn = Connection::connect(ep).await?;
    identify_conn(&mut conn).await
}

/// [`identify`] on an open connection.
pub async fn identify_conn(conn: &mut Connection) -> Result<Identity, ferry_resp::Error> {
    let server = conn.info("server").await?;
    let replication = conn.info("replication").await?;
    let cluster = conn.info("cluster").await?;
    let mut id = Identity {
        run_id: server.get("run_id").map(str::to_string),
        replid: replication.get("master_replid").map(str::to_string),
        cluster_ids: HashSet::new(),
    };
    if cluster.get("cluster_enabled") == Some("1") {
        // Each line of CLUSTER NODES starts with a node id.
        if let Ok(nodes) = conn.request(&["CLUSTER", "NODES"]).await {
            id.cluster_ids = nodes
                .to_text()
                .lines()
                .filter_map(|l| l.split(' ').next())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
    }
    Ok(id)
}

/// Why two servers are not distinct, or `None` when they are.
pub fn same(a: &Identity, b: &Identity) -> Option<&'static str> {
    let eq = |x: &Option<String>, y: &Option<String>| matches!((x, y), (Some(x), Some(y)) if !x.is_empty() && x == y);
    if eq(&a.run_id, &b.run_id) {
        Some("same server (same run_id)")
    } else if eq(&a.replid, &b.replid) {
        Some("same replication group (same master_replid: one is a replica of the other or of its master)")
    } else if !a.cluster_ids.is_disjoint(&b.cluster_ids) {
        Some("same cluster (shared cluster node ids)")
    } else {
        None
    }
}

/// The error sentence for a source node and a target node that are not distinct.
pub fn refusal(source: &Endpoint, target: &Endpoint, why: &str) -> String {
    format!(
        "source {} and target {} are not distinct: {why}; writing the target would feed the source (and a new snapshot's flush would delete the source's data)",
        source.addr(),
        target.addr()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_what_is_shared() {
        let a = Identity {
            run_id: Some("r1".into()),
            replid: Some("x".into()),
            cluster_ids: HashSet::new(),
        };
        let mut b = Identity {
            run_id: Some("r2".into()),
            replid: Some("y".into()),
            cluster_ids: HashSet::new(),
        };
        assert_eq!(same(&a, &b), None);
        b.replid = Some("x".into());
        assert!(same(&a, &b).unwrap().contains("replication group"));
        b.run_id = Some("r1".into());
        assert!(same(&a, &b).unwrap().contains("run_id"));
        assert_eq!(same(&Identity::default(), &Identity::default()), None);
    }
}
