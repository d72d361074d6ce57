//! One `ferry serve` per SQLite store: a second one on the same file would take over the
//! first one's jobs while the first still writes them (SQLite has no leases between
//! processes), doubling every write. An exclusive OS lock on `<db file>.lock`, held for
//! the process's life, refuses the second at start. PostgreSQL stores are shared by
//! several workers by design and take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreLockError {
    #[error("the store {path} is in use by another ferry serve (pid {pid}); stop it first, or give another --store")]
    InUse { path: String, pid: String },
    #[error("cannot lock the store {path} ({lock}): {source}")]
    Io {
        path: String,
        lock: String,
        source: std::io::Error,
    },
}

/// The SQLite file a store URL names, if it names one.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Locks the SQLite store `url` names (nothing for other stores); the lock lasts as long
/// as the returned file is open.
pub fn lock(url: &str) -> Result<Option<File>, StoreLockError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let mut lock_path = path.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let io = |source| StoreLockError::Io {
        path: path.display().to_string(),
        lock: lock_path.display().to_string(),
        source,
    };
    // Not truncated on open: the holder's pid stays readable until we hold the lock.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StoreLockError::InUse {
                path: path.display().to_string(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_files_are_locked() {
        assert_eq!(
            sqlite_path("sqlite://a/b.db"),
            Some(PathBuf::from("a/b.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:x.db?mode=rwc"),
            Some(PathBuf::from("x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
