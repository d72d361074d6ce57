//! Throw-away Redis Cluster deployments: masters and replicas on free loopback ports, slots
//! spread evenly, plus the operations cluster tests need — a client that follows `MOVED`/`ASK`,
//! slot migration (resharding), failover, and a key-by-key comparison across all masters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{escape_bytes, Client, Reply};
use crate::data::{key_basics, scan_keys, PTTL_TOLERANCE_MS};
use crate::server::{parse_info, Server};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
const STABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running cluster. Nodes `0..masters` start as masters; replica `r` of master `m` is node
/// `masters + m * replicas_per_master + r`. Roles change with [`Cluster::failover`], so
/// [`Cluster::masters`] asks the nodes. Dropping it kills every node.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Server>,
}

fn must(c: &mut Client, args: &[&[u8]]) -> Reply {
    match c.cmd(args) {
        Ok(Reply::Error(e)) => panic!(
            "{:?} on {} failed: {e}",
            args.iter().map(|a| escape_bytes(a)).collect::<Vec<_>>(),
            c.addr()
        ),
        Ok(r) => r,
        Err(e) => panic!(
            "{:?} on {}: I/O error: {e}",
            escape_bytes(args[0]),
            c.addr()
        ),
    }
}

impl Cluster {
    /// Starts `masters` masters with `replicas_per_master` replicas each (cluster-node-timeout
    /// 2000 ms), assigns the 16384 slots evenly, joins them and waits until every node reports
    /// `cluster_state:ok` and the same slot map.
    pub fn start(masters: usize, replicas_per_master: usize) -> Cluster {
        assert!(masters >= 1, "a cluster needs a master");
        let total = masters * (1 + replicas_per_master);
        let nodes: Vec<Server> = (0..total)
            .map(|_| {
                Server::builder()
                    .arg("cluster-enabled", "yes")
                    // Relative to the server's own temp dir (its working dir).
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", "2000")
                    .arg("cluster-replica-validity-factor", "0")
                    .start()
            })
            .collect();
        let cluster = Cluster { nodes };
        let version = cluster.nodes[0].version();
        // Slots, each master with its own config epoch (avoids epoch collisions).
        for m in 0..masters {
            let start = SLOTS as usize * m / masters;
            let end = SLOTS as usize * (m + 1) / masters - 1;
            let node = &cluster.nodes[m];
            node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &(m + 1).to_string()]);
            if version >= (7, 0, 0) {
                node.cmd(&[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &start.to_string(),
                    &end.to_string(),
                ]);
            } else {
                let slots: Vec<String> = (start..=end).map(|s| s.to_string()).collect();
                let mut args = vec!["CLUSTER", "ADDSLOTS"];
                args.extend(slots.iter().map(String::as_str));
                node.cmd(&args);
            }
        }
        let first_port = cluster.nodes[0].port().to_string();
        for n in &cluster.nodes[1..] {
            n.cmd(&["CLUSTER", "MEET", "127.0.0.1", &first_port]);
        }
        cluster.wait_until("every node knows every other", |c| {
            c.nodes.iter().all(|n| {
                c.cluster_nodes(n)
                    .iter()
                    .filter(|l| !l.contains("handshake"))
                    .count()
                    == total
            })
        });
        for m in 0..masters {
            let master_id = cluster.node_id(m);
            for r in 0..replicas_per_master {
                let replica = &cluster.nodes[masters + m * replicas_per_master + r];
                replica.cmd(&["CLUSTER", "REPLICATE", &master_id]);
            }
        }
        cluster.wait_stable();
        if replicas_per_master > 0 {
            cluster.wait_until("replicas in sync", |c| {
                c.nodes.iter().filter(|n| c.role(n) == "slave").all(|n| {
                    n.info("replication")
                        .get("master_link_status")
                        .map(String::as_str)
                        == Some("up")
                })
            });
        }
        cluster
    }

    fn wait_until(&self, what: &str, f: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + STABLE_TIMEOUT;
        while !f(self) {
            if Instant::now() > deadline {
                let mut msg = format!("cluster: timed out waiting until {what}\n");
                for n in self.live_nodes() {
                    let _ = writeln!(
                        msg,
                        "--- {} CLUSTER NODES ---\n{}",
                        n.addr(),
                        self.cluster_nodes(n).join("\n")
                    );
                }
                panic!("{msg}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn live_nodes(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().filter(|n| n.pid() != 0)
    }

    fn try_cmd(n: &Server, args: &[&str]) -> Option<Reply> {
        let mut c = Client::connect(&n.addr()).ok()?;
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match c.cmd(&bytes) {
            Ok(Reply::Error(_)) | Err(_) => None,
            Ok(r) => Some(r),
        }
    }

    fn cluster_nodes(&self, n: &Server) -> Vec<String> {
        Self::try_cmd(n, &["CLUSTER", "NODES"])
            .map(|r| r.as_str().lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn role(&self, n: &Server) -> String {
        Self::try_cmd(n, &["INFO", "replication"])
            .map(|r| {
                parse_info(&r.as_str())
                    .get("role")
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        self.nodes[i].cmd(&["CLUSTER", "MYID"]).as_str()
    }

    /// The slot map as one node sees it: (first slot, last slot, master port), sorted.
    fn slot_map(n: &Server) -> Option<Vec<(i64, i64, i64)>> {
        let r = Self::try_cmd(n, &["CLUSTER", "SLOTS"])?;
        let mut map: Vec<(i64, i64, i64)> = r
            .as_array()
            .iter()
            .map(|range| {
                let range = range.as_array();
                (
                    range[0].as_int(),
                    range[1].as_int(),
                    range[2].as_array()[1].as_int(),
                )
            })
            .collect();
        map.sort();
        Some(map)
    }

    /// Waits (30 s) until every live node says `cluster_state:ok` and all report the same slot
    /// map covering every slot with live masters.
    pub fn wait_stable(&self) {
        self.wait_until("cluster_state:ok and one slot map on every node", |c| {
            let mut maps = BTreeSet::new();
            for n in c.live_nodes() {
                let ok = Self::try_cmd(n, &["CLUSTER", "INFO"])
                    .map(|r| r.as_str().contains("cluster_state:ok"))
                    .unwrap_or(false);
                if !ok {
                    return false;
                }
                match Self::slot_map(n) {
                    Some(m) => {
                        maps.insert(m);
                    }
                    None => return false,
                }
            }
            let Some(map) = maps.iter().next() else {
                return false;
            };
            let live: BTreeSet<i64> = c.live_nodes().map(|n| n.port() as i64).collect();
            maps.len() == 1
                && map.iter().map(|(a, b, _)| b - a + 1).sum::<i64>() == SLOTS as i64
                && map.iter().all(|(_, _, p)| live.contains(p))
        });
    }

    /// Every node, by index (see [`Cluster`] for the numbering).
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Server {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Server] {
        &self.nodes
    }

    /// Index of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The live nodes that are masters now, in node order.
    pub fn masters(&self) -> Vec<&Server> {
        self.live_nodes()
            .filter(|n| self.role(n) == "master")
            .collect()
    }

    /// Indices of the live masters now.
    pub fn master_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].pid() != 0 && self.role(&self.nodes[i]) == "master")
            .collect()
    }

    /// The live nodes that are replicas now.
    pub fn replicas(&self) -> Vec<&Server> {
        self.live_nodes()
            .filter(|n| self.role(n) == "slave")
            .collect()
    }

    /// `redis://127.0.0.1:PORT` of the first live node.
    pub fn seed_url(&self) -> String {
        self.live_nodes().next().expect("no live node").url()
    }

    /// The index (in [`Cluster::nodes`]) of the master serving `slot`, as the first master's
    /// `CLUSTER SLOTS` says.
    pub fn slot_owner(&self, slot: u16) -> usize {
        let r = self
            .node(self.master_indices()[0])
            .cmd(&["CLUSTER", "SLOTS"]);
        for range in r.as_array() {
            let range = range.as_array();
            if range[0].as_int() <= slot as i64 && slot as i64 <= range[1].as_int() {
                let port = range[2].as_array()[1].as_int() as u16;
                return self.index_of_port(port).expect("owner");
            }
        }
        panic!("slot {slot} unassigned");
    }

    /// The slot of `key` (`CLUSTER KEYSLOT` on a live node).
    pub fn keyslot(&self, key: &[u8]) -> u16 {
        let n = self.live_nodes().next().expect("no live node");
        let mut c = n.client();
        must(&mut c, &[b"CLUSTER", b"KEYSLOT", key]).as_int() as u16
    }

    /// Runs a command on the master owning its key (the first argument after the name),
    /// following `MOVED` and `ASK` and retrying `TRYAGAIN`. Error replies are returned.
    pub fn cmd_routed(&self, args: &[&[u8]]) -> Reply {
        let mut addr = self.live_nodes().next().expect("no live node").addr();
        let mut asking = false;
        for _ in 0..50 {
            let mut c = match Client::connect(&addr) {
                Ok(c) => c,
                Err(_) => {
                    thread::sleep(Duration::from_millis(100));
                    addr = self.live_nodes().next().expect("no live node").addr();
                    continue;
                }
            };
            if asking {
                must(&mut c, &[b"ASKING"]);
                asking = false;
            }
            let reply = match c.cmd(args) {
                Ok(r) => r,
                Err(_) => {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match &reply {
                Reply::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    addr = e.split(' ').nth(2).unwrap_or_default().to_string();
                }
                Reply::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => {
                    thread::sleep(Duration::from_millis(50));
                }
                _ => return reply,
            }
        }
        panic!(
            "cmd_routed: {:?} kept being redirected",
            escape_bytes(args[0])
        );
    }

    /// [`cmd_routed`](Self::cmd_routed) with string arguments; panics on an error reply.
    pub fn cmd_routed_str(&self, args: &[&str]) -> Reply {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.cmd_routed(&bytes) {
            Reply::Error(e) => panic!("{args:?} on the cluster failed: {e}"),
            r => r,
        }
    }

    /// Keys on each live master (`DBSIZE`, ferry's checkpoint keys included).
    pub fn keys_per_master(&self) -> Vec<i64> {
        self.masters()
            .iter()
            .map(|m| m.cmd(&["DBSIZE"]).as_int())
            .collect()
    }

    /// Moves `slot` from master node `from` to master node `to` as `redis-cli --cluster
    /// reshard` does: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of its keys in batches of
    /// 100 (`pause` between batches, so writes meet the migration), then `SETSLOT NODE` on
    /// every master.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize, pause: Duration) {
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        dst.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        src.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        let port = dst.port().to_string();
        let mut c = src.client();
        loop {
            let keys = must(
                &mut c,
                &[b"CLUSTER", b"GETKEYSINSLOT", s.as_bytes(), b"100"],
            )
            .as_array();
            if keys.is_empty() {
                break;
            }
            let keys: Vec<Vec<u8>> = keys.iter().map(Reply::as_bytes).collect();
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                port.as_bytes(),
                b"",
                b"0",
                b"10000",
                b"REPLACE",
            ];
            let auth;
            if let Some(pw) = src.password() {
                auth = pw.as_bytes().to_vec();
                args.push(b"AUTH");
                args.push(&auth);
            }
            args.push(b"KEYS");
            args.extend(keys.iter().map(Vec::as_slice));
            must(&mut c, &args);
            thread::sleep(pause);
        }
        // The new owner first, then the old one, then everyone else (as redis-cli does).
        dst.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        src.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        for (i, n) in self.nodes.iter().enumerate() {
            if i != from && i != to && n.pid() != 0 && self.role(n) == "master" {
                n.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            }
        }
    }

    /// Promotes a replica of master node `master` with `CLUSTER FAILOVER` on the replica and
    /// waits until it is master and the cluster is stable again. Returns the new master's
    /// index.
    pub fn failover(&self, master: usize) -> usize {
        let port = self.nodes[master].port().to_string();
        let replica = (0..self.nodes.len())
            .find(|&i| {
                let n = &self.nodes[i];
                n.pid() != 0
                    && self.role(n) == "slave"
                    && n.info("replication").get("master_port") == Some(&port)
            })
            .unwrap_or_else(|| panic!("node {master} has no live replica"));
        // A manual failover gives up after 5 s when the master has not yet learnt of its
        // replica or the replica lags: ask again.
        for _ in 0..5 {
            self.nodes[replica].cmd(&["CLUSTER", "FAILOVER"]);
            let deadline = Instant::now() + Duration::from_secs(7);
            while Instant::now() < deadline {
                if self.role(&self.nodes[replica]) == "master" {
                    self.wait_stable();
                    return replica;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "replica node {replica} of node {master} was not promoted\n{}",
            self.nodes[replica].log_tail(30)
        )
    }

    /// SIGKILLs master node `master` and waits until one of its replicas took over (after
    /// cluster-node-timeout) and the cluster is stable. Returns the new master's index.
    pub fn kill_master(&mut self, master: usize) -> usize {
        let port = self.nodes[master].port().to_string();
        let replicas: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].pid() != 0
                    && self.role(&self.nodes[i]) == "slave"
                    && self.nodes[i].info("replication").get("master_port") == Some(&port)
            })
            .collect();
        assert!(!replicas.is_empty(), "node {master} has no live replica");
        self.nodes[master].kill();
        // The election normally ends a few seconds after cluster-node-timeout; on a loaded
        // machine it can keep failing, so after 15 s a replica takes over without votes.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline
            && !replicas
                .iter()
                .any(|&r| self.role(&self.nodes[r]) == "master")
        {
            thread::sleep(Duration::from_millis(50));
        }
        if !replicas
            .iter()
            .any(|&r| self.role(&self.nodes[r]) == "master")
        {
            eprintln!(
                "cluster: no election within 15 s; CLUSTER FAILOVER TAKEOVER\n{}",
                self.nodes[replicas[0]].log_tail(20)
            );
            let _ = Self::try_cmd(
                &self.nodes[replicas[0]],
                &["CLUSTER", "FAILOVER", "TAKEOVER"],
            );
        }
        self.wait_until("a replica takes over", |c| {
            replicas.iter().any(|&r| c.role(&c.nodes[r]) == "master")
        });
        self.wait_stable();
        replicas
            .into_iter()
            .find(|&r| self.role(&self.nodes[r]) == "master")
            .expect("promoted replica")
    }
}

/// One side of a comparison: a standalone server (its db 0) or a whole cluster.
#[derive(Clone, Copy)]
pub enum DataSide<'a> {
    Server(&'a Server),
    Cluster(&'a Cluster),
}

impl<'a> From<&'a Server> for DataSide<'a> {
    fn from(s: &'a Server) -> Self {
        DataSide::Server(s)
    }
}

impl<'a> From<&'a Cluster> for DataSide<'a> {
    fn from(c: &'a Cluster) -> Self {
        DataSide::Cluster(c)
    }
}

impl DataSide<'_> {
    fn servers(&self) -> Vec<&Server> {
        match self {
            DataSide::Server(s) => vec![s],
            DataSide::Cluster(c) => c.masters(),
        }
    }

    fn name(&self) -> String {
        match self {
            DataSide::Server(s) => s.addr(),
            DataSide::Cluster(c) => format!(
                "cluster [{}]",
                c.masters()
                    .iter()
                    .map(|m| m.addr())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[derive(PartialEq, Eq, Debug)]
struct KeyState {
    kind: String,
    digest: String,
    /// Absolute expiry in ms, or -1 for none.
    expire_at: i64,
}

/// db 0 of every server of the side, key by key (checkpoint keys skipped).
fn snapshot(side: DataSide<'_>) -> BTreeMap<Vec<u8>, KeyState> {
    let mut out = BTreeMap::new();
    for server in side.servers() {
        let mut c = server.client();
        must(&mut c, &[b"SELECT", b"0"]);
        let keys = scan_keys(&mut c, server, false);
        for b in key_basics(&mut c, server, keys) {
            out.insert(
                b.key,
                KeyState {
                    kind: b.kind,
                    digest: b.digest,
                    expire_at: b.expire_at,
                },
            );
        }
    }
    out
}

fn diff_cluster(source: DataSide<'_>, target: DataSide<'_>) -> Option<String> {
    let a = snapshot(source);
    let b = snapshot(target);
    let mut names: Vec<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let mut total = 0;
    let mut lines = Vec::new();
    for k in names {
        let (x, y) = (a.get(k), b.get(k));
        let what = match (x, y) {
            (Some(_), None) => "only in source",
            (None, Some(_)) => "only in target",
            (Some(x), Some(y)) if x.kind != y.kind => "type differs",
            (Some(x), Some(y)) if x.digest != y.digest => "value differs",
            (Some(x), Some(y))
                if (x.expire_at < 0) != (y.expire_at < 0)
                    || (x.expire_at - y.expire_at).abs() > PTTL_TOLERANCE_MS =>
            {
                "TTL differs"
            }
            _ => continue,
        };
        total += 1;
        if lines.len() < 20 {
            lines.push(format!(
                "key \"{}\": {what}\n    source: {x:?}\n    target: {y:?}",
                escape_bytes(k)
            ));
        }
    }
    if total == 0 {
        return None;
    }
    let mut msg = format!(
        "data differs between {} and {}: {total} differing key(s) ({} vs {} keys)\n",
        source.name(),
        target.name(),
        a.len(),
        b.len()
    );
    for l in lines {
        msg.push_str(&l);
        msg.push('\n');
    }
    Some(msg)
}

/// Compares db 0 of a standalone server, or all masters of a cluster, with the other side
/// key by key (TYPE, `DEBUG DIGEST-VALUE`, expiry within ±2 s), skipping ferry's checkpoint
/// keys; panics with the first 20 differences. Stream consumer groups are not compared.
pub fn assert_same_data_cluster<'a, 'b>(
    source: impl Into<DataSide<'a>>,
    target: impl Into<DataSide<'b>>,
) {
    if let Some(msg) = diff_cluster(source.into(), target.into()) {
        panic!("{msg}");
    }
}

/// Polls [`assert_same_data_cluster`]'s comparison (every 250 ms) until equal; panics with
/// the diff after `timeout`.
pub fn wait_same_data_cluster<'a, 'b>(
    source: impl Into<DataSide<'a>>,
    target: impl Into<DataSide<'b>>,
    timeout: Duration,
) {
    let (source, target) = (source.into(), target.into());
    let deadline = Instant::now() + timeout;
    loop {
        match diff_cluster(source, target) {
            None => return,
            Some(msg) if Instant::now() > deadline => panic!("after {timeout:?}: {msg}"),
            Some(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A db-0-only variant of the standard dataset for cluster targets: strings, lists, sets,
/// sorted sets, hashes and a stream in compact and large encodings, TTLs, and
/// `key:N` plain strings (100 × `scale`), spread over all slots.
pub fn populate_db0(server: &Server, scale: usize) {
    let mut c = server.client();
    let mut cmds: Vec<Vec<Vec<u8>>> = vec![vec![b"SELECT".to_vec(), b"0".to_vec()]];
    let mut push = |args: &[&str]| cmds.push(args.iter().map(|a| a.as_bytes().to_vec()).collect());
    push(&["SET", "str:short", "hello"]);
    push(&["SET", "str:int", "12345"]);
    let long = "abcdefgh".repeat(250);
    push(&["SET", "str:long", &long]);
    push(&["RPUSH", "list:small", "a", "b", "c"]);
    for i in 0..1500 {
        push(&["RPUSH", "list:large", &format!("element-{i}")]);
    }
    push(&["SADD", "set:int", "1", "2", "3"]);
    push(&["SADD", "set:small", "x", "y", "z"]);
    for i in 0..600 {
        push(&["SADD", "set:large", &format!("member-{i}")]);
        push(&["HSET", "hash:large", &format!("field-{i}"), &i.to_string()]);
    }
    push(&["ZADD", "zset:small", "1", "a", "2", "b"]);
    for i in 0..200 {
        push(&["ZADD", "zset:large", &i.to_string(), &format!("m{i}")]);
        push(&["XADD", "stream:1", "*", "n", &i.to_string()]);
    }
    push(&["HSET", "hash:small", "a", "1", "b", "2"]);
    push(&["SET", "ttl:short", "v", "PX", "600000"]);
    push(&["SET", "ttl:long", "v", "EX", "7200"]);
    push(&["SET", "{tag}:a", "1"]);
    push(&["SET", "{tag}:b", "2"]);
    for i in 0..100 * scale {
        push(&["SET", &format!("key:{i}"), &format!("value-{i}")]);
    }
    let replies = c
        .pipeline(&cmds)
        .unwrap_or_else(|e| panic!("populate on {}: {e}", server.addr()));
    for r in replies {
        if let Reply::Error(e) = r {
            panic!("populate_db0: {e}");
        }
    }
}
