//! Runs the real `ferry` binary as a child process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Ferry {
    child: Child,
    dir: PathBuf,
    args: Vec<String>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Ferry {
    /// Starts `ferry <args>`; stdout and stderr go to files read by [`Ferry::output`].
    pub fn start(args: &[&str]) -> Ferry {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = std::fs::File::create(dir.join("out")).expect("out file");
        let err = std::fs::File::create(dir.join("err")).expect("err file");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("RUST_LOG", "info")
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
