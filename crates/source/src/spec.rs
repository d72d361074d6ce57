//! Where a job reads from: a live Redis node, or files a Redis wrote (an RDB backup, an
//! append-only file). Parsed from the job's `source` string.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ferry_resp::Endpoint;

/// A job's source.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// `redis://…`, `rediss://…` or `host:port`: read as its replica (or by SCAN).
    Redis(Endpoint),
    /// `rdb:/path/dump.rdb`: one snapshot, then done.
    Rdb(PathBuf),
    /// `aof:/path/appendonlydir` (Redis 7 multi-part AOF, found by its manifest) or
    /// `aof:/path/appendonly.aof` (one file, maybe with an RDB preamble).
    Aof(PathBuf),
}

impl SourceSpec {
    /// Files are read once: the job completes when they are.
    pub fn is_file(&self) -> bool {
        !matches!(self, SourceSpec::Redis(_))
    }

    pub fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            SourceSpec::Redis(e) => Some(e),
            _ => None,
        }
    }

    /// The default job name (names the checkpoint).
    pub fn default_name(&self) -> String {
        match self {
            SourceSpec::Redis(e) => e.addr(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Redis(e) => e.fmt(f),
            SourceSpec::Rdb(p) => write!(f, "rdb:{}", p.display()),
            SourceSpec::Aof(p) => write!(f, "aof:{}", p.display()),
        }
    }
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let file = |rest: &str, what: &str| {
            if rest.is_empty() {
                Err(format!("{what}: needs a path, e.g. {what}/var/lib/redis"))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if let Some(rest) = s.strip_prefix("rdb:") {
            return file(rest, "rdb:").map(SourceSpec::Rdb);
        }
        if let Some(rest) = s.strip_prefix("aof:") {
            return file(rest, "aof:").map(SourceSpec::Aof);
        }
        s.parse::<Endpoint>()
            .map(SourceSpec::Redis)
            .map_err(|e| e.to_string())
    }
}

/// How a live source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceMethod {
    /// As a replica (`PSYNC`): exact, ordered, resumable from an offset.
    Psync,
    /// `SCAN` + `DUMP` for the snapshot, keyspace notifications for later writes.
    Scan,
    /// `PSYNC`, and `SCAN` where the source refuses it.
    #[default]
    Auto,
}

impl FromStr for SourceMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "psync" => Ok(SourceMethod::Psync),
            "scan" => Ok(SourceMethod::Scan),
            "auto" => Ok(SourceMethod::Auto),
            _ => Err(format!(
                "unknown source method {s:?}: use psync, scan or auto"
            )),
        }
    }
}

impl fmt::Display for SourceMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceMethod::Psync => "psync",
            SourceMethod::Scan => "scan",
            SourceMethod::Auto => "auto",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_sources() {
        assert!(
            matches!("rdb:/a/dump.rdb".parse(), Ok(SourceSpec::Rdb(p)) if p == Path::new("/a/dump.rdb"))
        );
        assert!(matches!("aof:dir".parse(), Ok(SourceSpec::Aof(p)) if p == Path::new("dir")));
        assert!(matches!("redis://h:1".parse(), Ok(SourceSpec::Redis(e)) if e.port == 1));
        assert!("rdb:".parse::<SourceSpec>().is_err());
        assert!("ftp://x".parse::<SourceSpec>().is_err());
        assert_eq!(
            "aof:/x".parse::<SourceSpec>().unwrap().to_string(),
            "aof:/x"
        );
        assert_eq!("SCAN".parse::<SourceMethod>(), Ok(SourceMethod::Scan));
        assert!("dump".parse::<SourceMethod>().is_err());
    }
}
