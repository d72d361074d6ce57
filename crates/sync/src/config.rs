//! A job's settings, as given on the command line or in a TOML file.

use std::fmt;
use std::str::FromStr;

use std::time::Duration;

use ferry_resp::Endpoint;
use ferry_source::{SourceMethod, SourceSpec};
use serde::Deserialize;

use crate::retry::{RetryPolicy, Window};
use ferry_source::SourceType;

/// `redis://[user:pass@]h1:p1,h2:p2,…`: each address may repeat the scheme and its own
/// credentials; those without take the first one's.
fn parse_seeds(what: &str, list: &str) -> Result<Vec<Endpoint>, ConfigError> {
    let (scheme, rest) = match list.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), list),
    };
    let mut out: Vec<Endpoint> = Vec::new();
    for (i, part) in rest.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let text = if part.contains("://") || i > 0 && scheme.is_empty() {
            part.to_string()
        } else {
            format!("{scheme}{part}")
        };
        let mut ep: Endpoint = text
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
        if let Some(first) = out.first() {
            if ep.password.is_none() {
                ep.username = first.username.clone();
                ep.password = first.password.clone();
            }
            ep.tls |= first.tls;
        }
        out.push(ep);
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid(format!("{what}: no address given")));
    }
    Ok(out)
}
pub use crate::config_error::ConfigError;
use crate::scope::{self, FilterConfig, TlsConfig};

/// What to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The snapshot only; the job completes when it is applied.
    Full,
    /// Only writes from now on (the source's current offset).
    Incremental,
    /// The snapshot, then every later write, until stopped.
    #[default]
    FullIncremental,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Mode::Full),
            "incremental" | "incr" => Ok(Mode::Incremental),
            "full+incremental" | "full-incremental" | "full_incremental" => {
                Ok(Mode::FullIncremental)
            }
            _ => Err(format!(
                "unknown mode {s:?}: use full, incremental or full+incremental"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::FullIncremental => "full+incremental",
        })
    }
}

/// One sync job.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Names the job's checkpoint on the target; a re-run with the same name resumes.
    pub name: String,
    /// A Redis deployment, or files a Redis wrote (`rdb:PATH`, `aof:PATH`).
    pub source: SourceSpec,
    /// Every source address given (none for files): any one that answers is enough to
    /// discover the rest.
    pub source_seeds: Vec<Endpoint>,
    pub source_type: SourceType,
    /// Sentinel's name of the master (sentinel sources).
    pub source_master: Option<String>,
    /// Read each shard from a healthy replica when one exists, so masters carry no load.
    pub use_replica: bool,
    /// How a live source is read: PSYNC, SCAN, or PSYNC falling back to SCAN.
    pub source_method: SourceMethod,
    /// The name PSYNC goes by on the source, where a provider renamed it.
    pub psync_command: Option<String>,
    /// AOF source: stop at the first `#TS:` annotation later than this (unix seconds).
    pub aof_until: Option<i64>,
    /// The first target address (see `target_seeds`); the node written to is resolved
    /// from the seeds at every attempt, so a target failover is followed.
    pub target: Endpoint,
    pub target_seeds: Vec<Endpoint>,
    /// auto (default), standalone, replica-set (writes go to its master), cluster, sentinel.
    pub target_type: SourceType,
    /// Sentinel's name of the target's master (sentinel targets).
    pub target_master: Option<String>,
    pub mode: Mode,
    /// Replace keys and function libraries that already exist on the target.
    pub overwrite: bool,
    /// Accept a target that holds keys this job did not write (they stay beside the copy);
    /// without it (or `overwrite`) such a target is refused before anything is written.
    pub allow_nonempty_target: bool,
    /// Let a new snapshot flush a target that held other data when the job started (by
    /// default ferry deletes only what it owns, and such a snapshot fails instead).
    pub allow_flush: bool,
    /// Keep a checkpoint in the target, in the same transaction as the data, so that any
    /// restart resumes exactly (off: faster, but a failure means a new snapshot).
    pub checkpoint: bool,
    pub retry: RetryPolicy,
    /// Limit on bytes read from the source, in bytes per second.
    pub rate_limit: Option<f64>,
    /// A source silent for this long is taken as gone.
    pub source_timeout: Duration,
    /// A target that sends no reply byte for this long while writes await replies is
    /// taken as gone.
    pub target_timeout: Duration,
    /// Values with a bigger serialized size are written as chunks of commands (default
    /// 8 MB).
    pub big_key_threshold: Option<usize>,
    /// Plain lists, sets, sorted sets and hashes with at least this many elements are read
    /// and written in chunks (default 5000).
    pub big_key_elements: Option<u64>,
    /// Skip keys the target cannot hold (module values, hash field TTLs on an old target).
    pub skip_unsupported: bool,
    /// Log, count and go past replicated commands the target refuses instead of failing.
    pub skip_failed_commands: bool,
    /// Keys, databases and commands to leave out; `None` copies everything.
    pub filter: Option<std::sync::Arc<ferry_core::Filter>>,
    /// Source db → target db.
    pub db_map: ferry_core::DbMap,
    /// Run under a lease (the service's workers): nothing is written once it lapses.
    pub fence: Option<std::sync::Arc<crate::fence::Fence>>,
}

/// Retry settings as written in TOML or given as flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// "immediately" (default) or "scheduled".
    pub policy: Option<String>,
    /// Immediately: give up after this long of continuous connection failure ("10m").
    pub connection_limit: Option<String>,
    /// Immediately: give up after this long of continuous other failure.
    pub other_limit: Option<String>,
    /// Scheduled: daily window for retrying connection failures ("01:00-05:00").
    pub connection_window: Option<String>,
    /// Scheduled: daily window for retrying other failures.
    pub other_window: Option<String>,
    /// Scheduled: IANA time zone of the windows (default: the system's).
    pub time_zone: Option<String>,
}

impl RetryConfig {
    fn or(self, base: RetryConfig) -> RetryConfig {
        RetryConfig {
            policy: self.policy.or(base.policy),
            connection_limit: self.connection_limit.or(base.connection_limit),
            other_limit: self.other_limit.or(base.other_limit),
            connection_window: self.connection_window.or(base.connection_window),
            other_window: self.other_window.or(base.other_window),
            time_zone: self.time_zone.or(base.time_zone),
        }
    }

    pub fn resolve(self) -> Result<RetryPolicy, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let dur = |what: &str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.map(|v| {
                humantime::parse_duration(&v)
                    .map_err(|e| ConfigError::Invalid(format!("retry {what} {v:?}: {e}")))
            })
            .transpose()
        };
        match self.policy.as_deref().unwrap_or("immediately") {
            "immediately" => {
                if self.connection_window.is_some() || self.other_window.is_some() {
                    return Err(invalid(
                        "retry windows apply to the scheduled policy; set policy = \"scheduled\""
                            .into(),
                    ));
                }
                Ok(RetryPolicy::Immediately {
                    connection_limit: dur("connection limit", self.connection_limit)?,
                    other_limit: dur("other limit", self.other_limit)?,
                })
            }
            "scheduled" => {
                if self.connection_limit.is_some() || self.other_limit.is_some() {
                    return Err(invalid(
                        "retry limits apply to the immediately policy; the scheduled policy retries inside its windows".into(),
                    ));
                }
                let window = |what: &str, v: Option<String>| -> Result<Window, ConfigError> {
                    let v = v.ok_or_else(|| {
                        invalid(format!(
                            "the scheduled retry policy needs a {what} window (HH:MM-HH:MM)"
                        ))
                    })?;
                    v.parse()
                        .map_err(|e: String| invalid(format!("retry {what} window: {e}")))
                };
                let time_zone = match self.time_zone {
                    Some(tz) => jiff::tz::TimeZone::get(&tz)
                        .map_err(|e| invalid(format!("retry time zone {tz:?}: {e}")))?,
                    None => jiff::tz::TimeZone::system(),
                };
                Ok(RetryPolicy::Scheduled {
                    connection_window: window("connection", self.connection_window)?,
                    other_window: window("other", self.other_window)?,
                    time_zone,
                })
            }
            other => Err(invalid(format!(
                "unknown retry policy {other:?}: use immediately or scheduled"
            ))),
        }
    }
}

/// A switch in the job file: a boolean, or `"on"`/`"off"` as on the command line.
fn on_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Switch {
        Bool(bool),
        Word(String),
    }
    match Option::<Switch>::deserialize(d)? {
        None => Ok(None),
        Some(Switch::Bool(b)) => Ok(Some(b)),
        Some(Switch::Word(w)) => match w.as_str() {
            "on" | "true" => Ok(Some(true)),
            "off" | "false" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: use on or off (or true/false)"
            ))),
        },
    }
}

/// The TOML form; every field optional so the command line can fill in or override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    /// One address, or several separated by commas (credentials of the first apply to
    /// the others).
    pub source: Option<String>,
    /// auto, standalone, replica-set, cluster, sentinel.
    pub source_type: Option<String>,
    pub source_master: Option<String>,
    /// `true`/`false`, or `"on"`/`"off"` as the flag takes.
    #[serde(default, deserialize_with = "on_off")]
    pub use_replica: Option<bool>,
    /// One address, or several separated by commas.
    pub target: Option<String>,
    /// auto, standalone, replica-set, cluster, sentinel.
    pub target_type: Option<String>,
    pub target_master: Option<String>,
    pub mode: Option<String>,
    pub overwrite: Option<bool>,
    pub allow_nonempty_target: Option<bool>,
    pub allow_flush: Option<bool>,
    #[serde(default, deserialize_with = "on_off")]
    pub checkpoint: Option<bool>,
    /// MB/s read from the source.
    pub rate_limit_mb: Option<f64>,
    /// e.g. "60s".
    pub source_timeout: Option<String>,
    /// e.g. "60s".
    pub target_timeout: Option<String>,
    #[serde(default)]
    pub retry: RetryConfig,
    pub big_key_threshold: Option<usize>,
    pub big_key_elements: Option<u64>,
    pub skip_unsupported: Option<bool>,
    pub skip_failed_commands: Option<bool>,
    #[serde(default)]
    pub filter: FilterConfig,
    /// "source:target,…", e.g. "0:0,1:0,5:3".
    pub db_map: Option<String>,
    #[serde(default)]
    pub source_tls: TlsConfig,
    #[serde(default)]
    pub target_tls: TlsConfig,
    /// "psync", "scan" or "auto" (default).
    pub source_method: Option<String>,
    pub psync_command: Option<String>,
    pub aof_until: Option<i64>,
    /// A database in a URL means that database only (`ferry sync` and its siblings);
    /// `ferry verify` reads URL databases its own way and leaves this off.
    #[serde(skip)]
    pub url_databases: bool,
}

/// A timeout given as text (`"60s"`, default 60 s); 0 is refused.
fn timeout(what: &str, given: Option<String>) -> Result<Duration, ConfigError> {
    let t = match given {
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| ConfigError::Invalid(format!("{what} {t:?}: {e}")))?,
        None => Duration::from_secs(60),
    };
    if t.is_zero() {
        return Err(ConfigError::Invalid(format!(
            "{what} must be more than 0 (e.g. 60s)"
        )));
    }
    Ok(t)
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Resolves into a job, values given here overridden by `over` where it has them.
    pub fn merge(self, over: FileConfig) -> Result<JobConfig, ConfigError> {
        let source = over.source.or(self.source).ok_or_else(|| {
            ConfigError::Invalid("no source given (--source or `source` in the config)".into())
        })?;
        let target = over.target.or(self.target).ok_or_else(|| {
            ConfigError::Invalid("no target given (--target or `target` in the config)".into())
        })?;
        let mode = match over.mode.or(self.mode) {
            Some(m) => m.parse().map_err(ConfigError::Invalid)?,
            None => Mode::default(),
        };
        let source_tls = over.source_tls.or(self.source_tls);
        let source_is_file = source.starts_with("rdb:") || source.starts_with("aof:");
        let (source, source_seeds) = if source_is_file {
            let spec: SourceSpec = source
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("source: {e}")))?;
            (spec, Vec::new())
        } else {
            let mut seeds = parse_seeds("source", &source)?;
            for ep in &mut seeds {
                source_tls.clone().apply("source", ep)?;
            }
            (SourceSpec::Redis(seeds[0].clone()), seeds)
        };
        let source_type: SourceType = match over.source_type.or(self.source_type) {
            Some(t) => t.parse().map_err(ConfigError::Invalid)?,
            None => SourceType::Auto,
        };
        let source_master = over.source_master.or(self.source_master);
        if source_type == SourceType::Sentinel && source_master.is_none() {
            return Err(ConfigError::Invalid(
                "a sentinel source needs the master's name (--source-master NAME)".into(),
            ));
        }
        let target_tls = over.target_tls.or(self.target_tls);
        let mut target_seeds = parse_seeds("target", &target)?;
        for ep in &mut target_seeds {
            target_tls.clone().apply("target", ep)?;
        }
        let target = target_seeds[0].clone();
        let target_type: SourceType = match over.target_type.or(self.target_type) {
            Some(t) => t.parse().map_err(ConfigError::Invalid)?,
            None => SourceType::Auto,
        };
        let target_master = over.target_master.or(self.target_master);
        if target_type == SourceType::Sentinel && target_master.is_none() {
            return Err(ConfigError::Invalid(
                "a sentinel target needs the master's name (--target-master NAME)".into(),
            ));
        }
        if source.is_file() && mode == Mode::Incremental {
            return Err(ConfigError::Invalid(format!(
                "source {source} is a file: it is copied whole (mode full), not incrementally"
            )));
        }
        let source_method = match over.source_method.or(self.source_method) {
            Some(m) => m.parse().map_err(ConfigError::Invalid)?,
            None => SourceMethod::default(),
        };
        let aof_until = over.aof_until.or(self.aof_until);
        if aof_until.is_some() && !matches!(source, SourceSpec::Aof(_)) {
            return Err(ConfigError::Invalid(
                "--aof-until applies to an aof: source".into(),
            ));
        }
        let psync_command = over.psync_command.or(self.psync_command);
        if psync_command
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid(
                "the PSYNC command name must be one word".into(),
            ));
        }
        let rate_limit = match over.rate_limit_mb.or(self.rate_limit_mb) {
            Some(mb) if mb > 0.0 && mb.is_finite() => Some(mb * 1e6),
            Some(mb) => {
                return Err(ConfigError::Invalid(format!(
                    "rate limit must be a positive number of MB/s, got {mb}"
                )))
            }
            None => None,
        };
        let source_timeout = timeout(
            "source timeout",
            over.source_timeout.or(self.source_timeout),
        )?;
        let target_timeout = timeout(
            "target timeout",
            over.target_timeout.or(self.target_timeout),
        )?;
        let name = over
            .name
            .or(self.name)
            .unwrap_or_else(|| source.default_name());
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::Invalid(format!(
                "job name {name:?} must be non-empty, not . or .., without spaces"
            )));
        }
        // A database in a URL (`redis://host:port/3`) means that database only: the
        // source's is a filter, the target's where it goes (with the source's named too).
        let mut filter = over.filter.or(self.filter);
        let mut db_map = over.db_map.or(self.db_map);
        let url_databases = over.url_databases || self.url_databases;
        let source_db = source_seeds
            .first()
            .and_then(|e| e.db)
            .filter(|_| url_databases);
        if let Some(n) = source_db {
            match &filter.include_dbs {
                Some(dbs) if dbs != &[n] => {
                    return Err(ConfigError::Invalid(format!(
                    "the source URL names database {n}, and --include-dbs {dbs:?} others: give one"
                )))
                }
                _ => filter.include_dbs = Some(vec![n]),
            }
        }
        if let Some(m) = target.db.filter(|_| url_databases) {
            let Some(n) = source_db else {
                return Err(ConfigError::Invalid(format!(
                    "the target URL names database {m}: name the source's too (redis://…/N), or use --db-map N:{m}"
                )));
            };
            match &db_map {
                // The same pairing said twice is no conflict.
                Some(text) => {
                    let given = scope::parse_db_map(Some(text.clone()))?;
                    if given.target(n) != m {
                        return Err(ConfigError::Invalid(format!(
                            "the URLs pair source database {n} with target database {m}, --db-map with {}: give one",
                            given.target(n)
                        )));
                    }
                }
                None if n != m => db_map = Some(format!("{n}:{m}")),
                None => {}
            }
        }
        Ok(JobConfig {
            name,
            source_seeds,
            source_type,
            source_master,
            use_replica: over.use_replica.or(self.use_replica).unwrap_or(true),
            target,
            target_seeds,
            target_type,
            target_master,
            source,
            source_method,
            psync_command,
            aof_until,
            mode,
            overwrite: over.overwrite.or(self.overwrite).unwrap_or(false),
            allow_nonempty_target: over
                .allow_nonempty_target
                .or(self.allow_nonempty_target)
                .unwrap_or(false),
            allow_flush: over.allow_flush.or(self.allow_flush).unwrap_or(false),
            checkpoint: over.checkpoint.or(self.checkpoint).unwrap_or(true),
            retry: over.retry.or(self.retry).resolve()?,
            rate_limit,
            source_timeout,
            target_timeout,
            big_key_threshold: over.big_key_threshold.or(self.big_key_threshold),
            big_key_elements: over.big_key_elements.or(self.big_key_elements),
            skip_unsupported: over
                .skip_unsupported
                .or(self.skip_unsupported)
                .unwrap_or(false),
            skip_failed_commands: over
                .skip_failed_commands
                .or(self.skip_failed_commands)
                .unwrap_or(false),
            filter: filter.resolve()?,
            db_map: scope::parse_db_map(db_map)?,
            fence: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_failed_commands_from_the_file() {
        let text = "source = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\n";
        let off: FileConfig = toml::from_str(text).unwrap();
        assert!(
            !off.merge(FileConfig::default())
                .unwrap()
                .skip_failed_commands
        );
        let on: FileConfig =
            toml::from_str(&format!("{text}skip_failed_commands = true\n")).unwrap();
        assert!(
            on.merge(FileConfig::default())
                .unwrap()
                .skip_failed_commands
        );
    }

    #[test]
    fn switches_take_on_and_off() {
        let text = "source = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\n";
        let with = |extra: &str| toml::from_str::<FileConfig>(&format!("{text}{extra}"));
        assert_eq!(
            with("use_replica = \"off\"\n").unwrap().use_replica,
            Some(false)
        );
        assert_eq!(
            with("use_replica = true\n").unwrap().use_replica,
            Some(true)
        );
        assert_eq!(
            with("checkpoint = \"on\"\n").unwrap().checkpoint,
            Some(true)
        );
        assert_eq!(with("").unwrap().use_replica, None);
        let e = with("use_replica = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("use on or off"), "{e}");
    }

    #[test]
    fn refuses_a_zero_timeout_and_unaddressable_names() {
        let text = "source = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\n";
        let with = |extra: &str| {
            let f: FileConfig = toml::from_str(&format!("{text}{extra}")).unwrap();
            f.merge(FileConfig::default())
        };
        let e = with("source_timeout = \"0s\"\n").unwrap_err();
        assert!(e.to_string().contains("more than 0"), "{e}");
        for name in [".", ".."] {
            let e = with(&format!("name = \"{name}\"\n")).unwrap_err();
            assert!(e.to_string().contains("job name"), "{e}");
        }
        assert!(with("name = \"a.b\"\n").is_ok());
    }

    #[test]
    fn a_database_in_the_url_is_that_database_only() {
        let job = |src: &str, dst: &str, extra: &str| {
            let text = format!("source = \"{src}\"\ntarget = \"{dst}\"\n{extra}");
            let f: FileConfig = toml::from_str(&text).unwrap();
            f.merge(FileConfig {
                url_databases: true,
                ..Default::default()
            })
        };
        let j = job("redis://127.0.0.1:1/3", "redis://127.0.0.1:2", "").unwrap();
        let f = j.filter.expect("a filter");
        assert!(f.db_allowed(3) && !f.db_allowed(0));
        assert!(j.db_map.is_empty());
        let j = job("redis://127.0.0.1:1/3", "redis://127.0.0.1:2/0", "").unwrap();
        assert_eq!(j.db_map.target(3), 0);
        let e = job("redis://127.0.0.1:1", "redis://127.0.0.1:2/4", "").unwrap_err();
        assert!(e.to_string().contains("name the source's too"), "{e}");
        let e = job(
            "redis://127.0.0.1:1/3",
            "redis://127.0.0.1:2/4",
            "db_map = \"3:5\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("give one"), "{e}");
        let same = job(
            "redis://127.0.0.1:1/3",
            "redis://127.0.0.1:2/4",
            "db_map = \"3:4\"\n",
        )
        .unwrap();
        assert_eq!(same.db_map.target(3), 4);
        let e = job(
            "redis://127.0.0.1:1/3",
            "redis://127.0.0.1:2",
            "[filter]\ninclude_dbs = [1]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("give one"), "{e}");
    }

    #[test]
    fn merges_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "source = \"redis://:it's@127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\nmode = \"full\"\n",
        )
        .unwrap();
        let job = file
            .merge(FileConfig {
                mode: Some("incremental".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(job.mode, Mode::Incremental);
        assert_eq!(
            job.source.endpoint().and_then(|e| e.password.as_deref()),
            Some("it's")
        );
        assert_eq!(job.target.port, 2);
        assert!(!job.overwrite);
        assert!(job.checkpoint);
        assert_eq!(job.name, "127.0.0.1:1");
        let bad: FileConfig = toml::from_str(
            "source = \"a:1\"\ntarget = \"b:2\"\n[retry]\npolicy = \"scheduled\"\nconnection_window = \"01:00-02:00\"\n",
        )
        .unwrap();
        let err = bad.merge(FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("other window"), "{err}");
        let good: FileConfig = toml::from_str(
            "source = \"a:1\"\ntarget = \"b:2\"\nrate_limit_mb = 5\n[retry]\nconnection_limit = \"10m\"\n",
        )
        .unwrap();
        let job = good.merge(FileConfig::default()).unwrap();
        assert_eq!(job.rate_limit, Some(5e6));
        assert!(matches!(
            job.retry,
            RetryPolicy::Immediately { connection_limit: Some(d), other_limit: None } if d.as_secs() == 600
        ));
        assert!(FileConfig::default().merge(FileConfig::default()).is_err());
        let seeds = parse_seeds("source", "redis://:pw@a:1,b:2,redis://u:x@c:3").unwrap();
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[1].addr(), "b:2");
        assert_eq!(seeds[1].password.as_deref(), Some("pw"));
        assert_eq!(seeds[2].username.as_deref(), Some("u"));
        assert!(toml::from_str::<FileConfig>("sorce = 1").is_err());
        assert_eq!(
            "full+incremental".parse::<Mode>().unwrap(),
            Mode::FullIncremental
        );
        assert!("fast".parse::<Mode>().is_err());
    }
}
