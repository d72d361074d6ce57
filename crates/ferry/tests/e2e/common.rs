//! Runs the real `ferry` binary as a child process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_testkit::Server;

pub struct Ferry {
    child: Child,
    dir: PathBuf,
    args: Vec<String>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Ferry {
    /// Starts `ferry <args>`; stdout and stderr go to files read by [`Ferry::output`].
    pub fn start(args: &[&str]) -> Ferry {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = std::fs::File::create(dir.join("out")).expect("out file");
        let err = std::fs::File::create(dir.join("err")).expect("err file");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ferry");
        Ferry {
            child,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `ferry sync --source S --target T <extra>`.
    pub fn sync(source: &str, target: &str, extra: &[&str]) -> Ferry {
        let mut args = vec![
            "sync",
            "--progress",
            "never",
            "--source",
            source,
            "--target",
            target,
        ];
        args.extend_from_slice(extra);
        Ferry::start(&args)
    }

    /// stdout and stderr so far.
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("out")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.join("err")).unwrap_or_default();
        format!(
            "--- ferry {:?} stdout ---\n{out}--- stderr ---\n{err}",
            self.args
        )
    }

    /// stderr alone (the logs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
    }

    /// Waits for exit; panics (with the output) if it takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ferry did not exit within {timeout:?}\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. "INT", "TERM", "KILL") and waits for exit.
    pub fn signal(&mut self, sig: &str) -> ExitStatus {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status();
        self.wait(Duration::from_secs(20))
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "ferry exited ({s}) before printing {needle:?}\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "ferry did not print {needle:?} within {timeout:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The target holds exactly the source's data plus ferry's checkpoint, which records the
/// source's current offset: removing the checkpoint leaves identical `DEBUG DIGEST`s.
pub fn assert_exact_copy_with_checkpoint(source: &Server, target: &Server, name: &str) {
    let key = format!("ferry:checkpoint:{name}:0");
    target.cmd(&["SELECT", "0"]);
    let ckpt = target.cmd(&["GET", &key]).as_str();
    let mut parts = ckpt.split(' ');
    assert_eq!(parts.next(), Some("stream"), "checkpoint {ckpt:?}");
    let replid = parts.next().unwrap_or_default().to_string();
    let offset: u64 = parts.next().and_then(|o| o.parse().ok()).expect("offset");
    let repl = source.info("replication");
    assert_eq!(
        repl.get("master_replid"),
        Some(&replid),
        "checkpoint {ckpt:?}"
    );
    let source_offset: u64 = repl["master_repl_offset"].parse().unwrap();
    assert!(
        offset <= source_offset,
        "checkpoint {offset} past the source's {source_offset}"
    );
    // The job's other keys in ferry's namespace (its ownership record) go too.
    for k in target
        .cmd(&["KEYS", &format!("ferry:checkpoint:{name}:*")])
        .as_array()
    {
        target.cmd(&["DEL", &k.as_str()]);
    }
    target.cmd(&["DEL", &key]);
    assert_eq!(source.digest(), target.digest());
}

/// Waits until ferry's checkpoint on the target names the source's current offset: every
/// write made so far is applied (the checkpoint is written with the data it covers).
pub fn wait_caught_up(source: &Server, target: &Server, name: &str, timeout: Duration) {
    let key = format!("ferry:checkpoint:{name}:0");
    let mut last = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        let source_offset = source.info("replication")["master_repl_offset"].clone();
        let mut c = target.client();
        c.cmd_str(&["SELECT", "0"]);
        let ckpt = c.cmd(&[b"GET", key.as_bytes()]).expect("GET checkpoint");
        if !ckpt.is_nil() {
            last = ckpt.as_str();
            let fields: Vec<&str> = last.split(' ').collect();
            if fields.len() == 4 && fields[0] == "stream" && fields[2] == source_offset {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up after {timeout:?}: source offset {source_offset}, checkpoint {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes that do not commute or repeat safely, in several databases, until stopped.
pub fn churn(source: &Server, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut c = source.client();
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let i = n.to_string();
            let db = (n % 3).to_string();
            let cmds: Vec<Vec<Vec<u8>>> = [
                vec!["SELECT", db.as_str()],
                vec!["INCR", "churn:counter"],
                vec!["LPUSH", "churn:list", i.as_str()],
                vec!["APPEND", "churn:append", "x"],
                vec!["XADD", "churn:stream", "*", "n", i.as_str()],
                vec!["EXPIRE", "churn:append", "3600"],
                vec!["HINCRBYFLOAT", "churn:hash", "f", "1.5"],
                vec!["SADD", "churn:set", i.as_str()],
                vec!["MULTI"],
                vec!["INCRBY", "churn:tx", "2"],
                vec!["RPUSH", "churn:txlist", i.as_str()],
                vec!["EXEC"],
                vec!["SET", &format!("churn:key:{i}"), i.as_str(), "PX", "600000"],
            ]
            .iter()
            .map(|c| c.iter().map(|a| a.as_bytes().to_vec()).collect())
            .collect();
            c.pipeline(&cmds).expect("churn pipeline");
            n += 1;
        }
        n
    })
}

/// A writer thread on a source, stopped when dropped or by [`Churn::stop`] (which returns
/// how many rounds it wrote).
pub struct Churn {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Churn {
    /// [`churn`]: writes in databases 0–2.
    pub fn start(source: &Server) -> Churn {
        Churn::with(|stop| churn(source, stop))
    }

    /// Any writer thread that runs until its flag is set.
    pub fn with(spawn: impl FnOnce(Arc<AtomicBool>) -> std::thread::JoinHandle<u64>) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Some(spawn(stop.clone()));
        Churn { stop, handle }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("churn"))
            .unwrap_or(0)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
