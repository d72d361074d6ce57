//! One `ferry sync` per job and target. A run holds a connection to the target named
//! `ferry-run~<host>~<pid>~<job>` for as long as it runs; a second run of the job finds it
//! in `CLIENT LIST` and fails at once naming the holder, instead of applying every write a
//! second time. Of two runs starting together, the one whose connection is older (the
//! lower client id) wins. A run that dies, `kill -9` included, loses its connection with
//! its process, so a rerun is never blocked by a dead one. A connection rather than a key:
//! nothing is added to the target's data (a key would show in `DEBUG DIGEST`, and the
//! `FLUSHALL` before a new snapshot would delete it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_resp::{Connection, Endpoint, Frame};
use ferry_sink::TargetError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::job::JobError;

/// How often the holder's connection is checked (and, when lost, taken again).
const CHECK: Duration = Duration::from_secs(5);

const PREFIX: &str = "ferry-run~";

/// This host's name as runs record it.
pub fn this_host() -> String {
    hostname()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().replace(['~', ' '], "-"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn client_name(job: &str) -> String {
    format!(
        "{PREFIX}{}~{}~{}",
        hostname(),
        std::process::id(),
        client_name_job(job)
    )
}

/// The CLI runs holding `config`'s job on its target: `(host, pid)` of each.
pub async fn holders(config: &crate::JobConfig) -> Result<Vec<(String, u32)>, JobError> {
    let node = crate::job::lease_node(config).await?;
    let mut conn = Connection::connect(&node)
        .await
        .map_err(|e| JobError::Target(TargetError::Node(e)))?;
    let list = conn
        .request(&["CLIENT", "LIST"])
        .await
        .map_err(|e| JobError::Target(TargetError::Node(e)))?
        .to_text();
    let want = client_name_job(&config.name);
    Ok(list
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
        .filter(|n| job_of(n) == Some(want.as_str()))
        .filter_map(|n| {
            let mut it = n.strip_prefix(PREFIX)?.splitn(3, '~');
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect())
}

/// Whether a client name is one of `job`'s runs: a CLI run's hold
/// (`ferry-run~host~pid~job`) or a service worker's writer (`ferry-<job>-g<n>`,
/// `ferry-<job>:<shard>-g<n>`).
pub(crate) fn names_job(name: &str, job: &str) -> bool {
    if let Some(j) = job_of(name) {
        return j == client_name_job(job);
    }
    name.strip_prefix("ferry-")
        .and_then(|r| r.strip_prefix(job))
        .is_some_and(|r| r.starts_with("-g") || r.starts_with(':'))
}

/// A job's name as it appears in a client name (client names take no spaces or newlines).
pub(crate) fn client_name_job(job: &str) -> String {
    job.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The job's name in a run's client name.
fn job_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.splitn(3, '~').nth(2)
}

/// A description of the holder of `name`: `<host> pid <pid>`.
fn holder_of(name: &str) -> String {
    let mut it = name.strip_prefix(PREFIX).unwrap_or(name).splitn(3, '~');
    match (it.next(), it.next()) {
        (Some(h), Some(p)) => format!("{h} pid {p}"),
        _ => name.to_string(),
    }
}

/// A holder on this host whose process is gone (killed an instant ago: the server has not
/// seen its connection close yet).
fn is_dead(name: &str) -> bool {
    let mut it = name.strip_prefix(PREFIX).unwrap_or(name).splitn(3, '~');
    let (Some(host), Some(pid)) = (it.next(), it.next()) else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok()
        && !std::path::Path::new("/proc").join(pid).exists()
}

/// Names a connection as this run's and checks that no older connection of another run of
/// the job is there. Returns the connection, or the holder (`<host> pid <pid>, running for
/// N s`) that came first.
async fn claim(
    node: &Endpoint,
    name: &str,
) -> Result<Result<Connection, String>, ferry_resp::Error> {
    let mut conn = Connection::connect(node).await?;
    conn.request(&["CLIENT", "SETNAME", name]).await?;
    let me = match conn.request(&["CLIENT", "ID"]).await? {
        Frame::Integer(id) => id,
        _ => i64::MAX,
    };
    let job = job_of(name).unwrap_or_default();
    let list = conn
        .request(&["CLIENT", "LIST", "TYPE", "normal"])
        .await?
        .to_text();
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let (Some(id), Some(other)) = (
            field("id").and_then(|i| i.parse::<i64>().ok()),
            field("name"),
        ) else {
            continue;
        };
        if id < me && job_of(other) == Some(job) && !is_dead(other) {
            let age = field("age").unwrap_or("?");
            return Ok(Err(format!("{}, connected {age} s ago", holder_of(other))));
        }
    }
    Ok(Ok(conn))
}

/// This run's hold on the job; [`RunLease::finish`] lets it go.
pub struct RunLease {
    lost: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
    /// The job runs under this token: a hold lost to another run cancels it.
    pub token: CancellationToken,
}

/// Takes the job's hold on `node` (the target's master, or on a cluster its first master);
/// another live run of the job is a permanent [`JobError::LeaseHeld`].
pub async fn acquire(
    node: &Endpoint,
    job: &str,
    cancel: &CancellationToken,
) -> Result<RunLease, JobError> {
    let name = client_name(job);
    let claimed = match claim(node, &name).await {
        Ok(c) => c,
        Err(e) if e.is_connection() => return Err(JobError::Target(TargetError::Node(e))),
        // A target user without CLIENT (some managed services) cannot hold the job: the
        // run goes on unguarded, and says so.
        Err(e) => {
            warn!(target = %node, error = %e, "cannot hold the job on the target (CLIENT SETNAME/LIST refused): a second run of this job would not be refused");
            return Ok(RunLease {
                lost: Arc::new(Mutex::new(None)),
                stop: CancellationToken::new(),
                keeper: tokio::spawn(async {}),
                token: cancel.child_token(),
            });
        }
    };
    let conn = match claimed {
        Ok(c) => c,
        Err(holder) => {
            return Err(JobError::LeaseHeld(format!(
                "job {job} is already running against target {} (held by {holder}); stop it first",
                node.addr()
            )))
        }
    };
    info!(target = %node, client = %name, "this run holds the job on the target");
    let lost = Arc::new(Mutex::new(None));
    let stop = CancellationToken::new();
    let token = cancel.child_token();
    let keeper = tokio::spawn(keep(
        node.clone(),
        job.to_string(),
        name,
        conn,
        lost.clone(),
        stop.clone(),
        token.clone(),
    ));
    Ok(RunLease {
        lost,
        stop,
        keeper,
        token,
    })
}

/// Keeps the named connection open; one that broke (a target restart) is claimed again,
/// and if another run holds the job by then this one stops.
async fn keep(
    node: Endpoint,
    job: String,
    name: String,
    conn: Connection,
    lost: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    token: CancellationToken,
) {
    let mut conn = Some(conn);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK) => {}
            _ = stop.cancelled() => return,
        }
        if let Some(c) = conn.as_mut() {
            if c.request(&["PING"]).await.is_ok() {
                continue;
            }
        }
        conn = None;
        match claim(&node, &name).await {
            Ok(Ok(c)) => conn = Some(c),
            Ok(Err(holder)) => {
                let why = format!(
                    "job {job}: another run took the job over on target {} ({holder}) while this one's connection was broken; this one stopped",
                    node.addr()
                );
                warn!("{why}");
                if let Ok(mut l) = lost.lock() {
                    *l = Some(why);
                }
                token.cancel();
                return;
            }
            Err(e) => {
                warn!(target = %node, error = %e, "cannot reach the target to keep the job's hold; trying again")
            }
        }
    }
}

impl RunLease {
    /// Lets the hold go; a hold lost meanwhile turns the job's end into
    /// [`JobError::LeaseLost`].
    pub async fn finish<T>(self, result: Result<T, JobError>) -> Result<T, JobError> {
        self.stop.cancel();
        let _ = self.keeper.await;
        if let Some(why) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(JobError::LeaseLost(why));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_carry_host_pid_and_job() {
        let n = client_name("127.0.0.1:6379 x");
        assert_eq!(job_of(&n), Some("127.0.0.1:6379_x"));
        assert!(holder_of(&n).contains(&format!("pid {}", std::process::id())));
        assert_eq!(job_of("ferry-j-g3"), None);
    }
}
