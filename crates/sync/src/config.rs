//! A job's settings, as given on the command line or in a TOML file.

use std::fmt;
use std::str::FromStr;

use ferry_resp::Endpoint;
use serde::Deserialize;

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
    pub source: Endpoint,
    pub target: Endpoint,
    pub mode: Mode,
    /// Replace keys and function libraries that already exist on the target.
    pub overwrite: bool,
    /// Values with a bigger serialized size are written as chunks of commands (default
    /// 8 MB).
    pub big_key_threshold: Option<usize>,
    /// Plain lists, sets, sorted sets and hashes with at least this many elements are read
    /// and written in chunks (default 5000).
    pub big_key_elements: Option<u64>,
    /// Skip keys the target cannot hold (module values, hash field TTLs on an old target).
    pub skip_unsupported: bool,
}

/// The TOML form; every field optional so the command line can fill in or override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub source: Option<String>,
    pub target: Option<String>,
    pub mode: Option<String>,
    pub overwrite: Option<bool>,
    pub big_key_threshold: Option<usize>,
    pub big_key_elements: Option<u64>,
    pub skip_unsupported: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
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
        let parse = |what: &str, s: &str| {
            s.parse::<Endpoint>()
                .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
        };
        Ok(JobConfig {
            source: parse("source", &source)?,
            target: parse("target", &target)?,
            mode,
            overwrite: over.overwrite.or(self.overwrite).unwrap_or(false),
            big_key_threshold: over.big_key_threshold.or(self.big_key_threshold),
            big_key_elements: over.big_key_elements.or(self.big_key_elements),
            skip_unsupported: over
                .skip_unsupported
                .or(self.skip_unsupported)
                .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(job.source.password.as_deref(), Some("it's"));
        assert_eq!(job.target.port, 2);
        assert!(!job.overwrite);
        assert!(FileConfig::default().merge(FileConfig::default()).is_err());
        assert!(toml::from_str::<FileConfig>("sorce = 1").is_err());
        assert_eq!(
            "full+incremental".parse::<Mode>().unwrap(),
            Mode::FullIncremental
        );
        assert!("fast".parse::<Mode>().is_err());
    }
}
