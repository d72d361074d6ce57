//! The job settings that say *what* is copied and *how nodes are reached*: key, database
//! and command filters, the database mapping, and TLS for `rediss://` nodes. As written in
//! the TOML job file (`[filter]`, `db_map`, `[source_tls]`, `[target_tls]`) and as flags.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferry_core::DbMap;
use ferry_core::{Filter, FilterRules, ShardStats};
use ferry_resp::{Endpoint, TlsOptions};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config_error::ConfigError;

/// `[filter]` in the job file. Lists given on the command line replace the file's.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Redis-style globs (`user:*`, `session:?`, `[ab]*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_key_prefixes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_key_prefixes: Option<Vec<String>>,
    /// Regular expressions (Rust `regex` syntax), matched anywhere in the key unless
    /// anchored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_key_regex: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_key_regex: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_dbs: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_dbs: Option<Vec<u32>>,
    /// Command names or groups: `@pubsub`, `@scripting`, `@flush`, `@admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_commands: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_commands: Option<Vec<String>>,
}

impl FilterConfig {
    /// No rule: the job copies everything.
    pub fn is_empty(&self) -> bool {
        *self == FilterConfig::default()
    }

    pub(crate) fn or(self, base: FilterConfig) -> FilterConfig {
        fn pick<T>(over: Option<Vec<T>>, base: Option<Vec<T>>) -> Option<Vec<T>> {
            match over {
                Some(v) if !v.is_empty() => Some(v),
                _ => base,
            }
        }
        FilterConfig {
            include_keys: pick(self.include_keys, base.include_keys),
            exclude_keys: pick(self.exclude_keys, base.exclude_keys),
            include_key_prefixes: pick(self.include_key_prefixes, base.include_key_prefixes),
            exclude_key_prefixes: pick(self.exclude_key_prefixes, base.exclude_key_prefixes),
            include_key_regex: pick(self.include_key_regex, base.include_key_regex),
            exclude_key_regex: pick(self.exclude_key_regex, base.exclude_key_regex),
            include_dbs: pick(self.include_dbs, base.include_dbs),
            exclude_dbs: pick(self.exclude_dbs, base.exclude_dbs),
            include_commands: pick(self.include_commands, base.include_commands),
            exclude_commands: pick(self.exclude_commands, base.exclude_commands),
        }
    }

    /// The compiled filter, or `None` when no rule is set (the reader then skips it).
    pub(crate) fn resolve(self) -> Result<Option<Arc<Filter>>, ConfigError> {
        let rules = FilterRules {
            include_key_prefixes: self.include_key_prefixes.unwrap_or_default(),
            exclude_key_prefixes: self.exclude_key_prefixes.unwrap_or_default(),
            include_keys: self.include_keys.unwrap_or_default(),
            exclude_keys: self.exclude_keys.unwrap_or_default(),
            include_key_regex: self.include_key_regex.unwrap_or_default(),
            exclude_key_regex: self.exclude_key_regex.unwrap_or_default(),
            include_dbs: self.include_dbs.unwrap_or_default(),
            exclude_dbs: self.exclude_dbs.unwrap_or_default(),
            include_commands: self.include_commands.unwrap_or_default(),
            exclude_commands: self.exclude_commands.unwrap_or_default(),
        };
        let filter = Filter::new(&rules).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok((!filter.is_empty()).then(|| Arc::new(filter)))
    }
}

/// `[source_tls]` / `[target_tls]` in the job file; used when the URL is `rediss://`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA file to verify the server with (default: the public web roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that require one (mTLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name the server certificate must carry, if not the URL's host.
    pub server_name: Option<String>,
    /// Accept any server certificate (no verification).
    pub insecure: Option<bool>,
}

impl TlsConfig {
    pub(crate) fn or(self, base: TlsConfig) -> TlsConfig {
        TlsConfig {
            ca_file: self.ca_file.or(base.ca_file),
            cert_file: self.cert_file.or(base.cert_file),
            key_file: self.key_file.or(base.key_file),
            server_name: self.server_name.or(base.server_name),
            insecure: self.insecure.or(base.insecure),
        }
    }

    fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
            || self.insecure == Some(true)
    }

    /// Puts these options on `ep`, checking that its files can be read.
    pub fn apply(self, what: &str, ep: &mut Endpoint) -> Result<(), ConfigError> {
        if !ep.tls {
            if self.is_set() {
                return Err(ConfigError::Invalid(format!(
                    "TLS options are given for the {what}, but its URL is redis://; use rediss:// to connect with TLS"
                )));
            }
            return Ok(());
        }
        let opts = TlsOptions {
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
            server_name: self.server_name,
            insecure: self.insecure.unwrap_or(false),
        };
        opts.validate()
            .map_err(|e| ConfigError::Invalid(format!("{what} TLS: {e}")))?;
        if opts.insecure {
            warn!(node = %ep, "{what} TLS certificate verification is off (insecure)");
        }
        ep.tls_options = opts;
        Ok(())
    }
}

pub(crate) fn parse_db_map(s: Option<String>) -> Result<DbMap, ConfigError> {
    match s {
        Some(s) => s
            .parse()
            .map_err(|e: String| ConfigError::Invalid(format!("db_map {s:?}: {e}"))),
        None => Ok(DbMap::default()),
    }
}

/// Logs, once at the start of a job, what its filters and mapping will do.
pub fn log_scope(filter: Option<&Filter>, db_map: &DbMap) {
    if filter.is_some() {
        info!("filters are on: only the keys, databases and commands they allow are copied");
    }
    if !db_map.is_empty() {
        info!(db_map = %db_map, "databases are mapped (source:target)");
        for (target, sources) in db_map.shared_targets() {
            warn!(target_db = target, source_dbs = ?sources,
                  "several source databases are written into one target database: keys with the same name overwrite each other");
        }
    }
}

/// Logs what the filters dropped (at the end of a job).
pub fn log_filtered(stats: &ShardStats) {
    let keys = stats.filtered_keys.load(Relaxed);
    let commands = stats.filtered_commands.load(Relaxed);
    let mixed = stats.filtered_mixed.load(Relaxed);
    if keys + commands + mixed > 0 {
        info!(
            filtered_keys = keys,
            filtered_commands = commands,
            filtered_mixed = mixed,
            "filters dropped keys and commands (mixed: multi-key commands kept or dropped by their first key)"
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::FileConfig;

    #[test]
    fn filter_map_and_tls_from_toml() {
        let file: FileConfig = toml::from_str(
            r#"
source = "a:1"
target = "b:2"
db_map = "1:0,5:3"
[filter]
include_keys = ["user:*"]
exclude_key_prefixes = ["user:tmp:"]
include_dbs = [0, 1]
exclude_commands = ["FLUSHALL", "@pubsub"]
"#,
        )
        .unwrap();
        let job = file.merge(FileConfig::default()).unwrap();
        let f = job.filter.unwrap();
        assert!(f.key_allowed(b"user:1") && !f.key_allowed(b"user:tmp:1"));
        assert!(f.db_allowed(1) && !f.db_allowed(2));
        assert!(!f.command_allowed("PUBLISH"));
        assert_eq!(job.db_map.target(5), 3);

        let err = |t: &str| {
            let file: FileConfig = toml::from_str(t).unwrap();
            file.merge(FileConfig::default()).unwrap_err().to_string()
        };
        let e = err("source = \"a:1\"\ntarget = \"b:2\"\n[filter]\ninclude_keys = [\"a[b\"]\n");
        assert!(e.contains("bad key glob"), "{e}");
        let e = err("source = \"a:1\"\ntarget = \"b:2\"\n[filter]\nexclude_key_regex = [\"(\"]\n");
        assert!(e.contains("bad key regex"), "{e}");
        let e = err("source = \"a:1\"\ntarget = \"b:2\"\ndb_map = \"1-2\"\n");
        assert!(e.contains("db_map"), "{e}");
        let e = err("source = \"a:1\"\ntarget = \"b:2\"\n[target_tls]\ninsecure = true\n");
        assert!(e.contains("rediss://"), "{e}");
        let e = err("source = \"rediss://a:1\"\ntarget = \"b:2\"\n[source_tls]\nca_file = \"/nonexistent/ca.pem\"\n");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(toml::from_str::<FileConfig>("[filter]\ninclude_key = []\n").is_err());
    }
}
