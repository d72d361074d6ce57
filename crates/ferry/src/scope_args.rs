//! `ferry sync` flags for filters, database mapping and TLS; the same settings as the job
//! file's `[filter]`, `db_map`, `[source_tls]` and `[target_tls]`. `ferry verify` takes
//! them too, so a job is verified with exactly its scope.

use std::path::PathBuf;

use ferry_sync::{FileConfig, FilterConfig, TlsConfig};

#[derive(clap::Args, Default, Clone)]
pub struct ScopeArgs {
    /// Copy only keys matching this Redis-style glob (repeatable; any match includes).
    #[arg(long, value_name = "GLOB", help_heading = "Filters")]
    include_keys: Vec<String>,
    /// Leave out keys matching this glob (repeatable; applied after the includes).
    #[arg(long, value_name = "GLOB", help_heading = "Filters")]
    exclude_keys: Vec<String>,
    /// Copy only keys starting with this prefix (repeatable).
    #[arg(long, value_name = "PREFIX", help_heading = "Filters")]
    include_key_prefix: Vec<String>,
    /// Leave out keys starting with this prefix (repeatable).
    #[arg(long, value_name = "PREFIX", help_heading = "Filters")]
    exclude_key_prefix: Vec<String>,
    /// Copy only keys matching this regular expression (repeatable).
    #[arg(long, value_name = "REGEX", help_heading = "Filters")]
    include_key_regex: Vec<String>,
    /// Leave out keys matching this regular expression (repeatable).
    #[arg(long, value_name = "REGEX", help_heading = "Filters")]
    exclude_key_regex: Vec<String>,
    /// Copy only these source databases, e.g. 0,1.
    #[arg(
        long,
        value_name = "DB,…",
        value_delimiter = ',',
        help_heading = "Filters"
    )]
    include_dbs: Vec<u32>,
    /// Leave out these source databases.
    #[arg(
        long,
        value_name = "DB,…",
        value_delimiter = ',',
        help_heading = "Filters"
    )]
    exclude_dbs: Vec<u32>,
    /// Apply only these commands or groups (@pubsub, @scripting, @flush, @admin).
    #[arg(
        long,
        value_name = "CMD,…",
        value_delimiter = ',',
        help_heading = "Filters"
    )]
    include_commands: Vec<String>,
    /// Never apply these commands or groups, e.g. FLUSHALL,FLUSHDB,@pubsub.
    #[arg(
        long,
        value_name = "CMD,…",
        value_delimiter = ',',
        help_heading = "Filters"
    )]
    exclude_commands: Vec<String>,
    /// Write source databases into other target databases: source:target,… e.g. 1:0,5:3
    /// (unlisted databases keep their number).
    #[arg(long, value_name = "SRC:DST,…", help_heading = "Filters")]
    db_map: Option<String>,

    #[command(flatten)]
    tls: TlsArgs,
}

/// `--source-tls-…` and `--target-tls-…`: for `ferry sync` and `ferry verify`.
#[derive(clap::Args, Default, Clone)]
pub struct TlsArgs {
    /// CA certificate (PEM) to verify the source with (rediss://).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    source_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for the source.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    source_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for the source.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    source_tls_key: Option<PathBuf>,
    /// Name the source's certificate must carry, if not the URL's host.
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    source_tls_server_name: Option<String>,
    /// Do not verify the source's certificate.
    #[arg(long, help_heading = "TLS")]
    source_tls_insecure: bool,
    /// CA certificate (PEM) to verify the target with (rediss://).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    target_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for the target.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    target_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for the target.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    target_tls_key: Option<PathBuf>,
    /// Name the target's certificate must carry, if not the URL's host.
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    target_tls_server_name: Option<String>,
    /// Do not verify the target's certificate.
    #[arg(long, help_heading = "TLS")]
    target_tls_insecure: bool,
}

impl TlsArgs {
    pub fn source(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.source_tls_ca.clone(),
            cert_file: self.source_tls_cert.clone(),
            key_file: self.source_tls_key.clone(),
            server_name: self.source_tls_server_name.clone(),
            insecure: self.source_tls_insecure.then_some(true),
        }
    }

    pub fn target(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.target_tls_ca.clone(),
            cert_file: self.target_tls_cert.clone(),
            key_file: self.target_tls_key.clone(),
            server_name: self.target_tls_server_name.clone(),
            insecure: self.target_tls_insecure.then_some(true),
        }
    }
}

fn list<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

impl ScopeArgs {
    /// Fills these flags into the command line's `FileConfig`.
    pub fn fill(self, mut over: FileConfig) -> FileConfig {
        over.filter = FilterConfig {
            include_keys: list(self.include_keys),
            exclude_keys: list(self.exclude_keys),
            include_key_prefixes: list(self.include_key_prefix),
            exclude_key_prefixes: list(self.exclude_key_prefix),
            include_key_regex: list(self.include_key_regex),
            exclude_key_regex: list(self.exclude_key_regex),
            include_dbs: list(self.include_dbs),
            exclude_dbs: list(self.exclude_dbs),
            include_commands: list(self.include_commands),
            exclude_commands: list(self.exclude_commands),
        };
        over.db_map = self.db_map;
        over.source_tls = self.tls.source();
        over.target_tls = self.tls.target();
        over
    }
}
