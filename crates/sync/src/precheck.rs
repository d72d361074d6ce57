//! The pre-check: what can be known about a job before it starts, from the two servers
//! themselves. Each check passes, warns or fails with a sentence and a fix, so that a job
//! that cannot work is refused before it half-copies anything, and one that can go wrong
//! later (evicted keys, a reader dropped by its master) is flagged.

use ferry_resp::{Connection, Endpoint, Frame, Info};
use ferry_sink::ServerVersion;
use serde::Serialize;

use crate::config::JobConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub message: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, level: Level, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level,
            message: message.into(),
            fix: None,
        }
    }
    fn pass(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Level::Pass, message)
    }
    fn warn(name: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Level::Warn, message).with_fix(fix)
    }
    fn fail(name: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Level::Fail, message).with_fix(fix)
    }
    fn with_fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// The worst level among the checks (pass when there are none).
pub fn worst(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
}

/// What was learnt about one node.
struct Node {
    endpoint: Endpoint,
    addr: String,
    conn: Connection,
    version: Option<ServerVersion>,
    server: Info,
    keyspace: Info,
    memory: Info,
    replication: Info,
}

/// Connects to the node and reads its INFO; the check says whether that worked.
async fn reach(role: &str, ep: &Endpoint) -> (Check, Option<Node>) {
    let name = format!("{role} {} reachable", ep.addr());
    let mut conn = match Connection::connect(ep).await {
        Ok(c) => c,
        Err(e) => return (unreachable(name, &e), None),
    };
    let [server, keyspace, memory, replication] = match read_info(&mut conn).await {
        Ok(i) => i,
        Err(e) => return (unreachable(name, &e), None),
    };
    let version = ServerVersion::from_info(&server);
    let login = match &ep.password {
        Some(_) => format!(
            ", logged in as {}",
            ep.username.as_deref().unwrap_or("default")
        ),
        None => String::new(),
    };
    let what = version
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "an unknown server".into());
    let check = Check::pass(name, format!("{what}{login}"));
    let node = Node {
        endpoint: ep.clone(),
        addr: ep.addr(),
        conn,
        version,
        server,
        keyspace,
        memory,
        replication,
    };
    (check, Some(node))
}

async fn read_info(conn: &mut Connection) -> Result<[Info; 4], ferry_resp::Error> {
    Ok([
        conn.info("server").await?,
        conn.info("keyspace").await?,
        conn.info("memory").await?,
        conn.info("replication").await?,
    ])
}

fn unreachable(name: String, e: &ferry_resp::Error) -> Check {
    let fix = match e {
        ferry_resp::Error::Auth { .. } => {
            "check the username and password (an ACL user needs both)"
        }
        ferry_resp::Error::Reply { message, .. } if message.starts_with("NOAUTH") => {
            "the node requires a password: give one"
        }
        ferry_resp::Error::Tls { .. } => {
            "check the CA (--*-tls-ca), the server name (--*-tls-server-name) and, for mutual TLS, the client certificate and key"
        }
        ferry_resp::Error::TlsConfig { .. } => "check that the TLS files exist and are PEM",
        e if e.is_connection() => {
            "check the address and port, that the server runs, and that no firewall is in between"
        }
        _ => "check that the node is a Redis server and accepts this login",
    };
    Check::fail(name, e.to_string(), fix)
}

/// A source read from files: the files must be there; the target is checked as usual.
async fn file_source_checks(config: &JobConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let path = match &config.source {
        ferry_source::SourceSpec::Rdb(p) | ferry_source::SourceSpec::Aof(p) => p.clone(),
        ferry_source::SourceSpec::Redis(_) => return checks,
    };
    checks.push(if path.exists() {
        Check::pass("source files", format!("{} is there", config.source))
    } else {
        Check::fail(
            "source files",
            format!("{} does not exist", path.display()),
            "give the path of the RDB file or the AOF directory",
        )
    });
    let (dst_check, target) = reach("target", &config.target).await;
    checks.push(dst_check);
    if let Some(mut target) = target {
        checks.push(target_role(&target));
        let resumes = holds_checkpoint(&mut target, &config.name, &["0".to_string()]).await;
        checks.push(target_empty(&mut target, config, resumes).await);
    }
    checks
}

/// The nodes a job reads from (one per source shard) or writes to (each master of a
/// cluster target, the master of a replica set): what the topology discovery finds, or the
/// address given when it cannot run (then the reachability check says why).
async fn nodes_of(
    seeds: &[Endpoint],
    kind: ferry_source::SourceType,
    master: Option<&str>,
    use_replica: bool,
    given: &Endpoint,
) -> Vec<(String, Endpoint)> {
    let alone = || vec![("0".to_string(), given.clone())];
    if kind == ferry_source::SourceType::Standalone {
        return alone();
    }
    match ferry_source::discover(seeds, kind, master).await {
        Ok((_, shards)) if !shards.is_empty() => shards
            .iter()
            .map(|s| (s.id.clone(), s.reader_node(use_replica).clone()))
            .collect(),
        _ => alone(),
    }
}

/// Whether a target node holds a checkpoint of this job for one of `shards`: the job then
/// resumes there, and the data it finds is its own. (On a cluster node, a key of another
/// node's slot answers MOVED: not here.)
async fn holds_checkpoint(target: &mut Node, job: &str, shards: &[String]) -> bool {
    for shard in shards {
        let key = ferry_sink::checkpoint::key(job, shard);
        if let Ok(Frame::Integer(1)) = target
            .conn
            .request_raw(&[b"EXISTS".as_ref(), key.as_ref()])
            .await
        {
            return true;
        }
    }
    false
}

/// A check about one of several nodes names the node.
fn on(mut check: Check, node: &Node, several: bool) -> Check {
    if several {
        check.name = format!("{} ({})", check.name, node.addr);
    }
    check
}

/// Runs every check on every node the job uses (each source shard, each target master);
/// never fails itself — what cannot be checked is a warning.
pub async fn precheck(config: &JobConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(source_ep) = config.source.endpoint() else {
        return file_source_checks(config).await;
    };
    let source_shards = nodes_of(
        &config.source_seeds,
        config.source_type,
        config.source_master.as_deref(),
        config.use_replica,
        source_ep,
    )
    .await;
    let (shard_ids, source_eps): (Vec<String>, Vec<Endpoint>) = source_shards.into_iter().unzip();
    let target_eps: Vec<Endpoint> = nodes_of(
        &config.target_seeds,
        config.target_type,
        config.target_master.as_deref(),
        false,
        &config.target,
    )
    .await
    .into_iter()
    .map(|(_, ep)| ep)
    .collect();
    let mut sources = Vec::new();
    for ep in &source_eps {
        let (check, node) = reach("source", ep).await;
        checks.push(check);
        sources.extend(node);
    }
    let mut targets = Vec::new();
    for ep in &target_eps {
        let (check, node) = reach("target", ep).await;
        checks.push(check);
        targets.extend(node);
    }
    let same: Vec<&Endpoint> = source_eps
        .iter()
        .chain([source_ep])
        .filter(|s| {
            target_eps
                .iter()
                .chain([&config.target])
                .any(|t| s.host == t.host && s.port == t.port)
        })
        .collect();
    if let Some(node) = same.first() {
        checks.push(Check::fail(
            "source and target differ",
            format!("source and target are the same node {}", node.addr()),
            "give a different target",
        ));
    }
    if same.is_empty() {
        checks.extend(distinct(&mut sources, &mut targets).await);
    }
    if sources.len() < source_eps.len() || targets.len() < target_eps.len() {
        return checks;
    }
    let several_sources = sources.len() > 1;
    let several_targets = targets.len() > 1;
    // The newest format read against the oldest server written to.
    let newest = sources
        .iter()
        .max_by_key(|n| n.version.as_ref().map(|v| v.max_rdb_version()))
        .expect("at least one source node");
    let oldest = targets
        .iter()
        .min_by_key(|n| n.version.as_ref().map(|v| v.max_rdb_version()))
        .expect("at least one target node");
    checks.push(versions(newest, oldest));
    for source in &mut sources {
        let ep = source.endpoint.clone();
        let psync = config.psync_command.as_deref().unwrap_or("psync");
        for c in psync_allowed(source, &ep, psync).await {
            // A source read with SCAN does not need PSYNC; `auto` falls back to SCAN.
            let c = match config.source_method {
                ferry_source::SourceMethod::Psync => c,
                _ if c.level == Level::Fail => Check::warn(
                    c.name,
                    format!(
                        "{}; ferry reads it with SCAN instead (--source-method)",
                        c.message
                    ),
                    c.fix.unwrap_or_default(),
                ),
                _ => c,
            };
            checks.push(on(c, source, several_sources));
        }
    }
    let mut resumes = false;
    for target in &mut targets {
        resumes = resumes || holds_checkpoint(target, &config.name, &shard_ids).await;
    }
    for target in &mut targets {
        checks.push(on(target_role(target), target, several_targets));
        let c = target_empty(target, config, resumes).await;
        checks.push(on(c, target, several_targets));
    }
    checks.push(databases(&sources, &mut targets[0], config).await);
    checks.push(memory(&sources, &targets));
    for target in &targets {
        checks.push(on(eviction(target), target, several_targets));
    }
    for source in &mut sources {
        for c in replication_buffers(source, config.rate_limit).await {
            checks.push(on(c, source, several_sources));
        }
    }
    checks.push(modules(&mut sources, &mut targets).await);
    checks
}

/// Source and target told apart by what the servers say of themselves (addresses cannot:
/// 127.0.0.1 and localhost are one server): a failure names both nodes and why.
async fn distinct(sources: &mut [Node], targets: &mut [Node]) -> Option<Check> {
    let mut target_ids = Vec::new();
    for t in targets.iter_mut() {
        if let Ok(id) = crate::identity::identify_conn(&mut t.conn).await {
            target_ids.push((t.endpoint.clone(), id));
        }
    }
    for s in sources.iter_mut() {
        let Ok(sid) = crate::identity::identify_conn(&mut s.conn).await else {
            continue;
        };
        for (tep, tid) in &target_ids {
            if let Some(why) = crate::identity::same(&sid, tid) {
                return Some(Check::fail(
                    "source and target differ",
                    crate::identity::refusal(&s.endpoint, tep, why),
                    "give a target that is neither the source nor in its replication group or cluster",
                ));
            }
        }
    }
    (!sources.is_empty() && !target_ids.is_empty()).then(|| {
        Check::pass(
            "source and target differ",
            "source and target are different servers",
        )
    })
}

fn versions(source: &Node, target: &Node) -> Check {
    let name = "versions";
    let (Some(sv), Some(tv)) = (&source.version, &target.version) else {
        return Check::warn(
            name,
            "could not read the server version of source or target",
            "check that both are Redis or Valkey servers",
        );
    };
    if sv.product == "redis" && (sv.major, sv.minor) < (2, 8) {
        return Check::fail(
            name,
            format!("source is {sv}: PSYNC needs Redis 2.8 or later"),
            "upgrade the source",
        );
    }
    let rdb = sv.max_rdb_version();
    let can = tv.max_rdb_version();
    if can >= rdb {
        Check::pass(
            name,
            format!(
                "source {sv} (RDB {rdb}) → target {tv} (RDB {can}): values are copied with RESTORE"
            ),
        )
    } else {
        Check::warn(
            name,
            format!(
                "source {sv} writes RDB {rdb} but target {tv} loads at most RDB {can}: values of encodings the target lacks are rewritten into plain commands (slower; module values cannot be, nor hash field TTLs into a target before Redis 7.4 or Valkey 9)"
            ),
            "use a target of the source's version or newer, or accept the rewrite (--skip-unsupported skips what cannot be rewritten)",
        )
    }
}

/// `COMMAND INFO psync` answers nil when the command is renamed away or disabled; on Redis
/// 7 `ACL DRYRUN` tells whether this user may run it.
async fn psync_allowed(source: &mut Node, ep: &Endpoint, psync: &str) -> Vec<Check> {
    let name = "PSYNC allowed";
    let mut out = Vec::new();
    match source.conn.request(&["COMMAND", "INFO", psync]).await {
        Ok(Frame::Array(items)) if items.first().is_some_and(|f| matches!(f, Frame::Array(_))) => {
            out.push(Check::pass(name, "PSYNC is available on the source"))
        }
        Ok(_) => out.push(Check::fail(
            name,
            "PSYNC is disabled or renamed on the source (rename-command)",
            "remove `rename-command PSYNC` from the source's configuration (managed services: enable SYNC/PSYNC in the console)",
        )),
        Err(e) => out.push(Check::warn(
            name,
            format!("could not ask the source about PSYNC: {e}"),
            "make sure PSYNC and SYNC are allowed for this user",
        )),
    }
    let v7 = source.version.as_ref().is_some_and(|v| v.major >= 7);
    if v7 {
        let user = ep.username.as_deref().unwrap_or("default");
        let name = "ACL permits PSYNC";
        match source
            .conn
            .request_raw(&["ACL", "DRYRUN", user, psync, "?", "-1"])
            .await
        {
            Ok(Frame::Simple(s)) if s.as_ref() == b"OK" => {
                out.push(Check::pass(name, format!("user {user} may run PSYNC")))
            }
            Ok(Frame::Error(e)) if e.starts_with(b"NOPERM") || e.starts_with(b"ERR unknown") => {
                out.push(Check::warn(
                    name,
                    format!(
                        "could not run ACL DRYRUN as {user}: {}",
                        String::from_utf8_lossy(&e)
                    ),
                    "make sure the user may run PSYNC, SYNC and REPLCONF (+@admin or +psync +sync +replconf)",
                ))
            }
            Ok(other) => out.push(Check::fail(
                name,
                format!("user {user} may not run PSYNC: {}", other.to_text()),
                format!("ACL SETUSER {user} +psync +sync +replconf"),
            )),
            Err(e) => out.push(Check::warn(
                name,
                format!("could not check the ACL: {e}"),
                "make sure the user may run PSYNC, SYNC and REPLCONF",
            )),
        }
    }
    out
}

fn target_role(target: &Node) -> Check {
    let name = "target writable";
    match target.replication.get("role") {
        Some("slave") | Some("replica") => Check::fail(
            name,
            "the target is a replica and refuses writes",
            "give the target's master, or REPLICAOF NO ONE on the target",
        ),
        _ => Check::pass(name, "the target is a master"),
    }
}

/// A db 0 this small is scanned to leave ferry's own checkpoint keys out of the count.
const SCAN_LIMIT: u64 = 1000;

async fn target_empty(target: &mut Node, config: &JobConfig, resumes: bool) -> Check {
    let name = "target empty";
    let mut keys: Vec<(u32, u64)> = target.keyspace.keyspace();
    // Checkpoint keys live in db 0; a small db 0 is scanned to leave them out.
    if let Some(db0) = keys.iter_mut().find(|(db, _)| *db == 0) {
        if db0.1 <= SCAN_LIMIT {
            match count_checkpoints(&mut target.conn).await {
                Ok(n) => db0.1 = db0.1.saturating_sub(n),
                Err(e) => {
                    return Check::warn(
                        name,
                        format!("could not scan the target: {e}"),
                        "make sure the target is empty",
                    )
                }
            }
        }
    }
    keys.retain(|(_, n)| *n > 0);
    if keys.is_empty() {
        return Check::pass(name, "the target holds no data");
    }
    let total: u64 = keys.iter().map(|(_, n)| n).sum();
    let dbs: Vec<String> = keys.iter().map(|(db, n)| format!("db{db}: {n}")).collect();
    let message = format!(
        "the target already holds {total} key{} ({})",
        if total == 1 { "" } else { "s" },
        dbs.join(", ")
    );
    if resumes {
        Check::pass(
            name,
            format!("the target holds this job's data: it resumes from its checkpoint ({message})"),
        )
    } else if config.mode == crate::Mode::Incremental {
        Check::pass(
            name,
            format!("{message}; an incremental job applies new writes on top of them"),
        )
    } else if config.overwrite || config.allow_nonempty_target {
        let replaced = if config.overwrite {
            "keys that also exist on the source will be replaced"
        } else {
            "keys that also exist on the source are an error (--overwrite replaces them)"
        };
        Check::warn(
            name,
            format!("{message}; they stay beside the copy and {replaced}; this job will never flush the target"),
            "empty the target first if its other keys must not stay (a new snapshot then fails unless --allow-flush)",
        )
    } else {
        Check::fail(
            name,
            message,
            "empty the target (FLUSHALL), or pass --allow-nonempty-target to keep its keys beside the copy (and --overwrite to replace the ones the source also has)",
        )
    }
}

async fn count_checkpoints(conn: &mut Connection) -> Result<u64, ferry_resp::Error> {
    conn.request(&["SELECT", "0"]).await?;
    let mut n = 0;
    let mut scan = ferry_resp::Scan::new(1000).matching(&b"ferry:checkpoint:*"[..]);
    while let Some(keys) = scan.next(conn).await? {
        n += keys.len() as u64;
    }
    Ok(n)
}

/// `CONFIG GET name`'s value.
async fn config_get(
    conn: &mut Connection,
    name: &str,
) -> Result<Option<String>, ferry_resp::Error> {
    let reply = conn.request(&["CONFIG", "GET", name]).await?;
    Ok(match reply {
        Frame::Array(items) => items.get(1).map(Frame::to_text),
        _ => None,
    })
}

async fn databases(sources: &[Node], target: &mut Node, config: &JobConfig) -> Check {
    let name = "databases";
    // The target databases the job writes: the source's non-empty ones the filter keeps,
    // through the db map.
    let highest = sources
        .iter()
        .flat_map(|s| s.keyspace.keyspace())
        .map(|(db, _)| db)
        .filter(|db| config.filter.as_ref().is_none_or(|f| f.db_allowed(*db)))
        .map(|db| config.db_map.target(db))
        .max();
    let Some(highest) = highest else {
        return Check::pass(name, "the source holds no data the job copies");
    };
    let cluster = target.server.get("redis_mode") == Some("cluster");
    let count = if cluster {
        Some(1)
    } else {
        match config_get(&mut target.conn, "databases").await {
            Ok(v) => v.and_then(|v| v.parse::<u32>().ok()),
            Err(_) => None,
        }
    };
    let Some(count) = count else {
        return Check::warn(
            name,
            format!(
                "could not read the target's number of databases; the source has data up to db{highest}"
            ),
            format!("make sure the target has at least {} databases", highest + 1),
        );
    };
    if cluster && highest > 0 {
        return Check::fail(
            name,
            format!("source data in db {highest}: a cluster target has only db 0"),
            format!("map it with --db-map {highest}:0 (or leave that database out with a filter)"),
        );
    }
    if count > highest {
        Check::pass(
            name,
            format!("the source has data up to db{highest}; the target has {count} databases"),
        )
    } else {
        Check::fail(
            name,
            format!(
                "the job writes into db{highest} but the target has only {count} database{}",
                if count == 1 { "" } else { "s" }
            ),
            format!("start the target with `databases {}` or more", highest + 1),
        )
    }
}

fn number(info: &Info, key: &str) -> Option<u64> {
    info.get(key).and_then(|v| v.parse().ok())
}

fn mb(bytes: u64) -> String {
    match bytes {
        b if b < 1_000 => format!("{b} bytes"),
        b if b < 1_000_000 => format!("{:.1} KB", b as f64 / 1e3),
        b if b < 1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.2} GB", b as f64 / 1e9),
    }
}

/// What every source node uses against what every target master has free: keys are spread
/// over the target's masters by slot, so this is the total, not a per-node guarantee.
fn memory(sources: &[Node], targets: &[Node]) -> Check {
    let name = "target memory";
    let need: Option<u64> = sources
        .iter()
        .map(|s| number(&s.memory, "used_memory"))
        .sum();
    let Some(need) = need else {
        return Check::warn(
            name,
            "could not read the source's used memory",
            "compare the memory of source and target by hand",
        );
    };
    let maxes: Vec<u64> = targets
        .iter()
        .map(|t| number(&t.memory, "maxmemory").unwrap_or(0))
        .collect();
    if maxes.contains(&0) {
        return Check::pass(
            name,
            format!(
                "the source uses {}; the target has no maxmemory limit",
                mb(need)
            ),
        );
    }
    let max: u64 = maxes.iter().sum();
    let used: u64 = targets
        .iter()
        .map(|t| number(&t.memory, "used_memory").unwrap_or(0))
        .sum();
    let free = max.saturating_sub(used);
    let message = format!(
        "the source uses {}; the target has {} free of {} maxmemory",
        mb(need),
        mb(free),
        mb(max)
    );
    if need > free {
        Check::fail(
            name,
            message,
            "raise the target's maxmemory or use a bigger target",
        )
    } else if need as f64 > free as f64 * 0.8 {
        Check::warn(
            name,
            message,
            "leave headroom: raise the target's maxmemory",
        )
    } else {
        Check::pass(name, message)
    }
}

fn eviction(target: &Node) -> Check {
    let name = "target eviction policy";
    match target.memory.get("maxmemory_policy") {
        Some("noeviction") => Check::pass(name, "noeviction: no copied key can be evicted"),
        Some(p) => Check::warn(
            name,
            format!("{p}: the target may evict copied keys when it fills up"),
            "CONFIG SET maxmemory-policy noeviction on the target",
        ),
        None => Check::warn(
            name,
            "could not read the target's eviction policy",
            "make sure the target uses noeviction",
        ),
    }
}

/// A reader slower than the source's writes is dropped by its master (output buffer over
/// its limit, or silent past repl-timeout), and a new full sync follows — a loop.
async fn replication_buffers(source: &mut Node, rate: Option<f64>) -> Vec<Check> {
    let mut out = Vec::new();
    let timeout = config_get(&mut source.conn, "repl-timeout").await;
    let buffers = config_get(&mut source.conn, "client-output-buffer-limit").await;
    let backlog = match source.replication.get("repl_backlog_size") {
        Some(v) => v.parse::<u64>().ok(),
        None => config_get(&mut source.conn, "repl-backlog-size")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok()),
    };
    let rate_text = rate.map(|r| format!("{} MB/s", r / 1e6));

    let name = "source repl-timeout";
    match timeout {
        Ok(Some(t)) => {
            match t.parse::<u64>() {
                Ok(secs) => {
                    let drain = rate.map(|r| r * secs as f64);
                    if secs < 60 {
                        out.push(Check::warn(
                        name,
                        format!("repl-timeout is {secs} s: a slow or throttled reader may be dropped"),
                        "CONFIG SET repl-timeout 300 on the source",
                    ))
                    } else if let (Some(d), Some(r)) = (drain, &rate_text) {
                        if d < 64e6 {
                            out.push(Check::warn(
                                name,
                                format!(
                                    "at {r}, only {} can be read within repl-timeout ({secs} s)",
                                    mb(d as u64)
                                ),
                                "raise the rate limit or CONFIG SET repl-timeout 300 on the source",
                            ))
                        } else {
                            out.push(Check::pass(name, format!("repl-timeout is {secs} s")))
                        }
                    } else {
                        out.push(Check::pass(name, format!("repl-timeout is {secs} s")))
                    }
                }
                Err(_) => out.push(Check::warn(
                    name,
                    format!("unexpected repl-timeout {t:?}"),
                    "check the source's configuration",
                )),
            }
        }
        _ => out.push(Check::warn(
            name,
            "could not read repl-timeout (CONFIG may be disabled)",
            "make sure repl-timeout is at least 300 s",
        )),
    }

    let name = "source replica output buffer";
    match buffers {
        Ok(Some(text)) => {
            let limits = replica_limits(&text);
            match limits {
                Some((0, 0)) => {
                    out.push(Check::pass(name, "the replica output buffer is unlimited"))
                }
                Some((hard, soft)) => {
                    let limit = [hard, soft]
                        .into_iter()
                        .filter(|v| *v > 0)
                        .min()
                        .unwrap_or(0);
                    let used = number(&source.memory, "used_memory").unwrap_or(0);
                    let slow = rate.map(|r| limit as f64 / r);
                    let message = format!(
                        "replica buffer limit {} (hard {}, soft {})",
                        mb(limit),
                        mb(hard),
                        mb(soft)
                    );
                    if (limit as f64) < used as f64 * 0.2 {
                        out.push(Check::warn(
                            name,
                            format!("{message}: below 20% of the source's {} used memory; writes during the snapshot may overflow it", mb(used)),
                            "CONFIG SET client-output-buffer-limit \"replica 0 0 0\" (or at least 20% of maxmemory) on the source",
                        ))
                    } else if let Some(s) = slow.filter(|s| *s > 60.0) {
                        out.push(Check::warn(
                            name,
                            format!(
                                "{message}: at {} a full buffer takes {s:.0} s to drain",
                                rate_text.clone().unwrap_or_default()
                            ),
                            "raise the rate limit or the replica output buffer limit",
                        ))
                    } else {
                        out.push(Check::pass(name, message))
                    }
                }
                None => out.push(Check::warn(
                    name,
                    "could not read the replica class of client-output-buffer-limit",
                    "check it by hand",
                )),
            }
        }
        _ => out.push(Check::warn(
            name,
            "could not read client-output-buffer-limit (CONFIG may be disabled)",
            "make sure the replica class allows at least 20% of the source's memory",
        )),
    }

    let name = "source backlog";
    match backlog {
        Some(b) => match (rate, rate_text) {
            (Some(r), Some(at)) if (b as f64) < r * 60.0 => out.push(Check::warn(
                name,
                format!("repl-backlog-size is {}: less than a minute at {at}; a longer break forces a new full sync", mb(b)),
                format!("CONFIG SET repl-backlog-size {}mb on the source", ((r * 60.0 / 1048576.0).ceil() as u64).max(64)),
            )),
            _ => out.push(Check::pass(name, format!("repl-backlog-size is {}", mb(b)))),
        },
        None => out.push(Check::warn(name, "could not read repl-backlog-size", "make sure the backlog holds a few minutes of writes")),
    }
    out
}

/// `(hard, soft)` of the replica (or slave) class in `client-output-buffer-limit`.
fn replica_limits(text: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "replica" || *w == "slave")?;
    let hard = words.get(i + 1)?.parse().ok()?;
    let soft = words.get(i + 2)?.parse().ok()?;
    Some((hard, soft))
}

async fn module_names(conn: &mut Connection) -> Vec<String> {
    let Ok(Frame::Array(mods)) = conn.request(&["MODULE", "LIST"]).await else {
        return Vec::new();
    };
    mods.into_iter()
        .filter_map(|m| match m {
            Frame::Array(fields) => fields
                .chunks(2)
                .find(|kv| kv.first().map(Frame::to_text).as_deref() == Some("name"))
                .and_then(|kv| kv.get(1).map(Frame::to_text)),
            _ => None,
        })
        .collect()
}

async fn modules(sources: &mut [Node], targets: &mut [Node]) -> Check {
    let name = "modules";
    let mut have: Vec<String> = Vec::new();
    for source in sources.iter_mut() {
        for m in module_names(&mut source.conn).await {
            if !have.contains(&m) {
                have.push(m);
            }
        }
    }
    let several = targets.len() > 1;
    let mut lacking = Vec::new();
    for target in targets.iter_mut() {
        let can = module_names(&mut target.conn).await;
        let missing: Vec<&str> = have
            .iter()
            .filter(|m| !can.contains(m))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let on = if several {
                format!(" ({})", target.addr)
            } else {
                String::new()
            };
            lacking.push(format!("{}{on}", missing.join(", ")));
        }
    }
    if lacking.is_empty() {
        if have.is_empty() {
            Check::pass(name, "the source loads no modules")
        } else {
            Check::pass(
                name,
                format!(
                    "the target loads the source's modules ({})",
                    have.join(", ")
                ),
            )
        }
    } else {
        // A warning: a server's own built-in modules (Redis 8's vectorset, Valkey's lua)
        // hold no keys of their own types; a value the target cannot hold stops the job
        // naming its key (or is skipped with --skip-unsupported).
        Check::warn(
            name,
            format!(
                "the target lacks module(s) the source loads: {}; keys of their types cannot be copied",
                lacking.join("; ")
            ),
            "load the same modules on the target (loadmodule), or pass --skip-unsupported to skip such keys",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(mb(512), "512 bytes");
        assert_eq!(mb(16_384), "16.4 KB");
        assert_eq!(mb(1_048_576), "1.0 MB");
        assert_eq!(mb(3_000_000_000), "3.00 GB");
    }

    #[test]
    fn reads_replica_limits() {
        assert_eq!(
            replica_limits("normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
            Some((268435456, 67108864))
        );
        assert_eq!(replica_limits("replica 0 0 0"), Some((0, 0)));
        assert_eq!(replica_limits("normal 0 0 0"), None);
    }

    #[test]
    fn worst_level() {
        let c = |l| Check::new("x", l, "m");
        assert_eq!(worst(&[]), Level::Pass);
        assert_eq!(worst(&[c(Level::Pass), c(Level::Warn)]), Level::Warn);
        assert_eq!(worst(&[c(Level::Fail), c(Level::Warn)]), Level::Fail);
    }
}
