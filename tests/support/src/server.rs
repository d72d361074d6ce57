//! Starting and controlling throw-away `redis-server` processes.

use crate::text::percent_encode;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{Client, Reply};

/// Environment variable overriding the default `redis-server` binary.
pub const SERVER_BINARY_ENV: &str = "FERRY_TEST_REDIS_SERVER";
/// Set to `1` to keep the servers' temp dirs after the test (for post-mortem).
pub const KEEP_DIR_ENV: &str = "FERRY_TEST_KEEP_DIR";

const START_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 8;
/// Highest port we hand out: the cluster bus uses port + 10000.
const MAX_PORT: u16 = 55000;

/// A `(major, minor, patch)` redis-server version.
pub type Version = (u32, u32, u32);

/// The version of a `redis-server` binary, from `BINARY --version` (cached per path).
/// Panics if the binary cannot be run.
pub fn server_version(binary: &Path) -> Version {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Version>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(binary) {
        return *v;
    }
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{} --version`: {e}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = parse_version(&text).unwrap_or_else(|| {
        panic!(
            "cannot parse the version of {} from {text:?}",
            binary.display()
        )
    });
    cache.lock().unwrap().insert(binary.to_path_buf(), v);
    v
}

/// Parse `Redis server v=7.0.15 sha=...` (also accepts a bare `7.0.15`).
pub fn parse_version(text: &str) -> Option<Version> {
    let start = text.find("v=").map(|i| i + 2).unwrap_or(0);
    let word = text[start..].split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| {
        p.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse::<u32>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// Path to a binary found on `PATH` (or the path itself if it contains a `/` and exists).
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        let p = PathBuf::from(bin);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    USED.get_or_init(Default::default)
}

/// A loopback port that is free right now, below 55000, whose `port + 10000` is free too, and
/// that this process has not handed out before.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if port == 0 || port >= MAX_PORT {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_err() {
            continue;
        }
        if used_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port below {MAX_PORT}");
}

fn make_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ferry-testkit-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create temp dir {}: {e}", dir.display()),
        }
    }
}

#[derive(Clone, Debug)]
struct Auth {
    user: Option<String>,
    password: String,
}

/// Builder for a [`Server`].
///
/// Every server gets `--bind 127.0.0.1 --port <free> --save "" --appendonly no --dir <tmp>
/// --logfile <tmp>/redis.log --repl-diskless-sync-delay 0 --daemonize no`, plus
/// `--enable-debug-command yes` on redis 7+. The binary is `$FERRY_TEST_REDIS_SERVER` or
/// `redis-server` from `PATH`; set `FERRY_TEST_KEEP_DIR=1` to keep the temp dirs.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    binary: Option<PathBuf>,
    args: Vec<(String, Vec<String>)>,
    password: Option<String>,
    acl_user: Option<(String, String)>,
    master: Option<(u16, Option<Auth>)>,
    diskless: Option<bool>,
}

impl ServerBuilder {
    fn new() -> Self {
        ServerBuilder {
            binary: None,
            args: Vec::new(),
            password: None,
            acl_user: None,
            master: None,
            diskless: None,
        }
    }

    /// The `redis-server` binary. Default: `$FERRY_TEST_REDIS_SERVER`, else `redis-server`
    /// from `PATH`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Extra config `--name value` (the value is passed as one argument). A name that is also
    /// a default (e.g. `save`, `appendonly`) replaces the default; a repeated name replaces the
    /// earlier value.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        let name = name.trim_start_matches('-').to_string();
        self.args.retain(|(n, _)| *n != name);
        self.args.push((name, vec![value.to_string()]));
        self
    }

    /// Extra config with several values, `--name v1 v2` (e.g. `rename-command PSYNC ""`).
    pub fn arg_values(mut self, name: &str, values: &[&str]) -> Self {
        let name = name.trim_start_matches('-').to_string();
        self.args.retain(|(n, _)| *n != name);
        self.args
            .push((name, values.iter().map(|v| v.to_string()).collect()));
        self
    }

    /// `requirepass PW`; [`Server::client`] and [`Server::cmd`] authenticate with it.
    pub fn password(mut self, pw: &str) -> Self {
        self.password = Some(pw.to_string());
        self
    }

    /// Create ACL user `user NAME on >PW ~* &* +@all` and authenticate clients as it. Unless
    /// [`password`](Self::password) is also set, the `default` user is switched off, so
    /// unauthenticated connections are refused.
    pub fn acl_user(mut self, user: &str, pw: &str) -> Self {
        self.acl_user = Some((user.to_string(), pw.to_string()));
        self
    }

    /// `replicaof 127.0.0.1 <master port>`, with `masteruser`/`masterauth` taken from the
    /// master's credentials if it has any.
    pub fn replica_of(mut self, master: &Server) -> Self {
        self.master = Some((master.port, master.auth.clone()));
        self
    }

    /// `repl-diskless-sync yes|no` (default: the server's default).
    pub fn diskless(mut self, yes: bool) -> Self {
        self.diskless = Some(yes);
        self
    }

    fn resolve_binary(&self) -> PathBuf {
        if let Some(b) = &self.binary {
            return b.clone();
        }
        match std::env::var_os(SERVER_BINARY_ENV) {
            Some(b) if !b.is_empty() => PathBuf::from(b),
            _ => which("redis-server").unwrap_or_else(|| {
                panic!("redis-server not found on PATH (set {SERVER_BINARY_ENV} to override)")
            }),
        }
    }

    fn auth(&self) -> Option<Auth> {
        if let Some((user, pw)) = &self.acl_user {
            Some(Auth {
                user: Some(user.clone()),
                password: pw.clone(),
            })
        } else {
            self.password.as_ref().map(|pw| Auth {
                user: None,
                password: pw.clone(),
            })
        }
    }

    fn config(&self, version: Version, port: u16, dir: &Path) -> Vec<(String, Vec<String>)> {
        let mut cfg: Vec<(String, Vec<String>)> = Vec::new();
        let mut set = |name: &str, vals: &[&str]| {
            cfg.push((
                name.to_string(),
                vals.iter().map(|s| s.to_string()).collect(),
            ))
        };
        set("bind", &["127.0.0.1"]);
        set("port", &[&port.to_string()]);
        set("save", &[""]);
        set("appendonly", &["no"]);
        set("dir", &[&dir.to_string_lossy()]);
        set("logfile", &[&dir.join("redis.log").to_string_lossy()]);
        set("repl-diskless-sync-delay", &["0"]);
        set("daemonize", &["no"]);
        if version.0 >= 7 {
            set("enable-debug-command", &["yes"]);
        }
        if let Some(yes) = self.diskless {
            set("repl-diskless-sync", &[if yes { "yes" } else { "no" }]);
        }
        if let Some(pw) = &self.password {
            set("requirepass", &[pw]);
        }
        if let Some((user, pw)) = &self.acl_user {
            let pass = format!(">{pw}");
            let mut rules = vec![user.as_str(), "on", &pass, "~*"];
            if version >= (6, 2, 0) {
                rules.push("&*");
            }
            rules.push("+@all");
            set("user", &rules);
            if self.password.is_none() {
                set("user", &["default", "off"]);
            }
        }
        if let Some((mport, mauth)) = &self.master {
            let directive = if version.0 >= 5 {
                "replicaof"
            } else {
                "slaveof"
            };
            set(directive, &["127.0.0.1", &mport.to_string()]);
            if let Some(a) = mauth {
                if let Some(u) = &a.user {
                    set("masteruser", &[u]);
                }
                set("masterauth", &[&a.password]);
            }
        }
        // User args replace defaults of the same name.
        for (name, vals) in &self.args {
            cfg.retain(|(n, _)| n != name);
            cfg.push((name.clone(), vals.clone()));
        }
        cfg
    }

    /// Start the server and wait until it answers `PING` (10 s, panics with the log).
    pub fn start(self) -> Server {
        let binary = self.resolve_binary();
        let version = server_version(&binary);
        let auth = self.auth();
        let mut last_log = String::new();
        for _attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = make_temp_dir();
            let mut args = Vec::new();
            for (name, vals) in self.config(version, port, &dir) {
                args.push(format!("--{name}"));
                args.extend(vals);
            }
            let child = spawn(&binary, &args, &dir);
            let mut server = Server {
                child: Some(child),
                port,
                dir,
                binary: binary.clone(),
                version,
                auth: auth.clone(),
                conn: Mutex::new(None),
                args,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(Retry::PortTaken) => {
                    last_log = server.log();
                    continue; // dropped: killed and dir removed
                }
                Err(Retry::Fatal(why)) => panic!(
                    "redis-server {} on port {port} failed to start: {why}\n--- log ---\n{}",
                    binary.display(),
                    server.log()
                ),
            }
        }
        panic!("redis-server kept failing with a busy port after {START_ATTEMPTS} attempts\n--- last log ---\n{last_log}");
    }
}

enum Retry {
    PortTaken,
    Fatal(String),
}

fn spawn(binary: &Path, args: &[String], dir: &Path) -> Child {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .expect("create stderr.log");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary.display()))
}

/// A running `redis-server` on a loopback port with its own temp dir. Dropping it kills the
/// process (SIGKILL) and removes the dir.
pub struct Server {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    version: Version,
    auth: Option<Auth>,
    conn: Mutex<Option<Client>>,
    /// The command line, for [`Server::restart`].
    args: Vec<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(|c| c.id()))
            .field("dir", &self.dir)
            .finish()
    }
}

impl Server {
    /// Start a server with the defaults.
    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://[user:password@]127.0.0.1:PORT` (`:password@` when only a password is set;
    /// user and password are percent-encoded).
    pub fn url(&self) -> String {
        match &self.auth {
            Some(Auth {
                user: Some(u),
                password,
            }) => format!(
                "redis://{}:{}@{}",
                percent_encode(u),
                percent_encode(password),
                self.addr()
            ),
            Some(Auth {
                user: None,
                password,
            }) => format!("redis://:{}@{}", percent_encode(password), self.addr()),
            None => format!("redis://{}", self.addr()),
        }
    }

    /// The ACL user clients authenticate as, if the builder set one.
    pub fn user(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|a| a.user.as_deref())
    }

    /// The password clients authenticate with, if the builder set one.
    pub fn password(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.password.as_str())
    }

    /// The binary's version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn try_client(&self) -> std::io::Result<Client> {
        let mut c = Client::connect(&self.addr())?;
        if let Some(a) = &self.auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &a.user {
                args.push(u.as_bytes());
            }
            args.push(a.password.as_bytes());
            if let Reply::Error(e) = c.cmd(&args)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("AUTH failed: {e}"),
                ));
            }
        }
        Ok(c)
    }

    /// A new connection, authenticated with the builder's credentials. Panics on failure.
    pub fn client(&self) -> Client {
        self.try_client().unwrap_or_else(|e| {
            panic!(
                "cannot connect to redis-server at {}: {e}\n--- log ---\n{}",
                self.addr(),
                self.log_tail(40)
            )
        })
    }

    /// Run one command on a cached connection. Panics with the error text on an error reply
    /// or I/O error.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self.cmd_bytes(&bytes) {
            Reply::Error(e) => panic!("command {args:?} on {} failed: {e}", self.addr()),
            r => r,
        }
    }

    /// Like [`cmd`](Self::cmd) with binary arguments, but error replies are returned as
    /// `Reply::Error` (only I/O errors panic).
    pub fn cmd_bytes(&self, args: &[&[u8]]) -> Reply {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.client());
        }
        match guard.as_mut().unwrap().cmd(args) {
            Ok(r) => r,
            Err(e) => {
                *guard = None;
                drop(guard);
                let shown: Vec<String> = args
                    .iter()
                    .map(|a| crate::client::escape_bytes(a))
                    .collect();
                panic!(
                    "command {shown:?} on {}: I/O error: {e}\n--- log ---\n{}",
                    self.addr(),
                    self.log_tail(40)
                )
            }
        }
    }

    /// `DEBUG DIGEST` (40 hex digits; all zeros for an empty dataset).
    pub fn digest(&self) -> String {
        self.cmd(&["DEBUG", "DIGEST"]).as_str()
    }

    /// `INFO section` parsed into `field -> value`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        parse_info(&self.cmd(&["INFO", section]).as_str())
    }

    /// The server's working dir (`dump.rdb` lands there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id (0 after [`kill`](Self::kill)).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL the server now and reap it. Idempotent.
    pub fn kill(&mut self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL: no save on shutdown) and starts it again with the same
    /// configuration, port and directory, so it reloads whatever it had persisted (RDB or
    /// AOF). Waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            self.child = Some(spawn(&self.binary, &self.args, &self.dir));
            match self.wait_ready() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(Retry::PortTaken) => {
                    self.kill();
                    thread::sleep(Duration::from_millis(100));
                }
                Err(Retry::Fatal(why)) => panic!(
                    "redis-server on port {} failed to restart: {why}\n--- log ---\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
        panic!("redis-server could not get port {} back", self.port);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's log file (plus anything it wrote to stderr), for assertion messages.
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let err = fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        if !err.trim().is_empty() {
            s.push_str("\n--- stderr ---\n");
            s.push_str(&err);
        }
        s
    }

    /// The last `n` lines of [`log`](Self::log).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Poll (every 20 ms) until `replica`'s `INFO replication` says `master_link_status:up`
    /// and its offset equals this master's `master_repl_offset`. Panics after `timeout` with
    /// both INFOs and the replica's log.
    pub fn wait_replica_synced(&self, replica: &Server, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = replica.info("replication");
            let m = self.info("replication");
            let link_up = r.get("master_link_status").map(String::as_str) == Some("up");
            let right_master =
                r.get("master_port").map(String::as_str) == Some(self.port.to_string().as_str());
            let r_off = r
                .get("slave_repl_offset")
                .or_else(|| r.get("master_repl_offset"));
            let m_off = m.get("master_repl_offset");
            // The master's side too: it lists the replica online only once it noticed the
            // transfer end (up to a cron tick after the replica loaded it).
            let port = format!("port={},", replica.port);
            let online = m.iter().any(|(k, v)| {
                k.starts_with("slave") && v.contains(&port) && v.contains("state=online")
            });
            if link_up && right_master && online && r_off.is_some() && r_off == m_off {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "replica {} not in sync with master {} after {timeout:?}: link_up={link_up} \
                     right_master={right_master} replica offset={r_off:?} master offset={m_off:?}\n\
                     --- replica INFO replication ---\n{}\n--- master INFO replication ---\n{}\n\
                     --- replica log ---\n{}\n--- master log ---\n{}",
                    replica.addr(),
                    self.addr(),
                    fmt_info(&r),
                    fmt_info(&m),
                    replica.log_tail(40),
                    self.log_tail(40),
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self) -> Result<(), Retry> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err: String;
        loop {
            let exited = match self.child.as_mut().unwrap().try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(status) = exited {
                let log = self.log();
                if log.contains("Address already in use") {
                    return Err(Retry::PortTaken);
                }
                return Err(Retry::Fatal(format!("process exited ({status})")));
            }
            match self.ping_own() {
                Ok(true) => return Ok(()),
                // Another server answered on our port: ours will fail to bind.
                Ok(false) => last_err = "another process answers on this port".into(),
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                return Err(Retry::Fatal(format!(
                    "no PONG within {START_TIMEOUT:?} (last error: {last_err})"
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ok(true) when the server on our port answers PING and is our process.
    fn ping_own(&self) -> Result<bool, String> {
        let mut c = self.try_client().map_err(|e| e.to_string())?;
        match c.cmd(&[b"PING"]).map_err(|e| e.to_string())? {
            Reply::Status(s) if s == "PONG" => {}
            other => return Err(format!("PING replied {other:?}")),
        }
        let info = match c.cmd(&[b"INFO", b"server"]).map_err(|e| e.to_string())? {
            Reply::Bulk(Some(b)) => parse_info(&String::from_utf8_lossy(&b)),
            other => return Err(format!("INFO server replied {other:?}")),
        };
        Ok(info.get("process_id").map(String::as_str) == Some(self.pid().to_string().as_str()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| v == "1") {
            eprintln!("ferry-testkit: keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let Ok(mut used) = used_ports().lock() {
            used.remove(&self.port);
        }
    }
}

/// Parse `INFO` output into `field -> value`.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn fmt_info(info: &HashMap<String, String>) -> String {
    let mut lines: Vec<String> = info.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    lines.sort();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0"),
            Some((7, 0, 15))
        );
        assert_eq!(parse_version("6.2"), Some((6, 2, 0)));
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-binary-xyz").is_none());
    }
}
