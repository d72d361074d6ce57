//! What the API takes and gives: saved endpoints (instances) and job specs, in the seed's
//! terms (topology type, addresses, username, password). Passwords are write-only: they
//! deserialize but never serialize, so no response or log line can carry one.

use std::collections::BTreeMap;

use ferry_sync::{FileConfig, FilterConfig, JobConfig, RetryConfig};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// Userinfo characters that must be escaped in a `redis://` URL.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Topologies the wizard offers, for sources and targets alike.
pub const TOPOLOGIES: [&str; 4] = ["standalone", "replica-set", "cluster", "sentinel"];

/// How a deployment is reached: one of [`TOPOLOGIES`], stored and sent as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Topology {
    #[default]
    Standalone,
    ReplicaSet,
    Cluster,
    Sentinel,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::ReplicaSet => "replica-set",
            Topology::Cluster => "cluster",
            Topology::Sentinel => "sentinel",
        }
    }
}

impl TryFrom<String> for Topology {
    type Error = String;

    fn try_from(s: String) -> Result<Topology, String> {
        [
            Topology::Standalone,
            Topology::ReplicaSet,
            Topology::Cluster,
            Topology::Sentinel,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown topology {s:?}: use one of {}",
                TOPOLOGIES.join(", ")
            )
        })
    }
}

impl From<Topology> for String {
    fn from(t: Topology) -> String {
        t.as_str().to_string()
    }
}

/// One Redis deployment: how to reach it and log in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// A saved instance to take the fields below from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default)]
    pub topology: Topology,
    /// `host:port`, one or more seeds.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Whether a password is stored (the only thing said about it); ignored on input.
    #[serde(default)]
    pub password_set: bool,
    #[serde(default)]
    pub tls: bool,
    /// Sentinel's name of the master (sentinel topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
}

impl EndpointSpec {
    pub fn validate(&self, role: &str) -> Result<(), String> {
        if self.topology == Topology::Sentinel
            && self.master_name.as_deref().unwrap_or("").is_empty()
        {
            return Err(format!(
                "{role}: a sentinel topology needs the master's name (master_name)"
            ));
        }
        if self.addresses.is_empty() {
            return Err(format!("{role}: give at least one address (host:port)"));
        }
        for a in &self.addresses {
            self.url_for(a)
                .parse::<ferry_resp::Endpoint>()
                .map_err(|e| format!("{role}: {e}"))?;
        }
        Ok(())
    }

    /// The `redis://` URL of one of the addresses, credentials included.
    pub fn url_for(&self, addr: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let enc = |s: &str| utf8_percent_encode(s, USERINFO).to_string();
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}{}", addr.trim())
    }

    pub fn url(&self) -> String {
        self.url_for(self.addresses.first().map(String::as_str).unwrap_or(""))
    }

    /// Every address, comma-separated after the first's scheme and credentials (the form
    /// `ferry sync --source` takes for several seeds).
    pub fn url_all(&self) -> String {
        let mut url = self.url();
        for a in self.addresses.iter().skip(1) {
            url.push(',');
            url.push_str(a.trim());
        }
        url
    }

    pub fn endpoint(&self) -> Result<ferry_resp::Endpoint, String> {
        self.url().parse().map_err(|e| format!("{e}"))
    }

    /// For responses: the password dropped, its presence said.
    pub fn public(&self) -> EndpointSpec {
        EndpointSpec {
            password: None,
            password_set: self.password.as_deref().is_some_and(|p| !p.is_empty()),
            ..self.clone()
        }
    }
}

/// A saved endpoint, reusable by jobs (`"instance": "name"` in a job's source or target).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    #[serde(default, skip_deserializing)]
    pub id: i64,
    pub name: String,
    pub endpoint: EndpointSpec,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Instance {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 128 {
            return Err("instance name: 1 to 128 characters".into());
        }
        if self.endpoint.instance.is_some() {
            return Err("an instance cannot refer to another instance".into());
        }
        self.endpoint.validate("endpoint")
    }

    pub fn public(&self) -> Instance {
        Instance {
            endpoint: self.endpoint.public(),
            ..self.clone()
        }
    }
}

/// Retry settings as the wizard shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// "immediately" (default) or "scheduled".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A job as created, stored and shown: every field of [`FileConfig`] plus the
/// description and the endpoints in the seed's form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub source: EndpointSpec,
    pub target: EndpointSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// Accept a target holding keys the job did not write (`--allow-nonempty-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_nonempty_target: Option<bool>,
    /// Let a new snapshot flush a target the job shares (`--allow-flush`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_flush: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<bool>,
    /// MB/s read from the source; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_mb: Option<f64>,
    /// Read from a replica of the source (seed: "use slave node").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_replica: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_timeout: Option<String>,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub big_key_threshold: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub big_key_elements: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_unsupported: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_failed_commands: Option<bool>,
    /// Which keys, databases and commands the job copies (`[filter]` of a job file).
    #[serde(default, skip_serializing_if = "FilterConfig::is_empty")]
    pub filter: FilterConfig,
    /// Source database → target database, e.g. `"1:3,4:0"` (`--db-map`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_map: Option<String>,
}

impl JobSpec {
    /// Checks every field the way `ferry sync` would, returning the job it describes.
    pub fn config(&self) -> Result<JobConfig, String> {
        if self.name.is_empty()
            || self.name == "."
            || self.name == ".."
            || self.name.len() > 128
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "job name {:?}: use 1 to 128 letters, digits, '-', '_' or '.' (not . or .. alone)",
                self.name
            ));
        }
        if self.description.len() > 1024 {
            return Err("description: at most 1024 characters".into());
        }
        self.source.validate("source")?;
        self.target.validate("target")?;
        let file = FileConfig {
            name: Some(self.name.clone()),
            source: Some(self.source.url_all()),
            source_type: Some(self.source.topology.as_str().to_string()),
            source_master: self.source.master_name.clone(),
            use_replica: self.use_replica,
            target: Some(self.target.url_all()),
            target_type: Some(self.target.topology.as_str().to_string()),
            target_master: self.target.master_name.clone(),
            mode: self.mode.clone(),
            overwrite: self.overwrite,
            allow_nonempty_target: self.allow_nonempty_target,
            allow_flush: self.allow_flush,
            checkpoint: self.checkpoint,
            rate_limit_mb: self.rate_limit_mb,
            source_timeout: self.source_timeout.clone(),
            target_timeout: self.target_timeout.clone(),
            retry: RetryConfig {
                policy: self.retry.policy.clone(),
                connection_limit: self.retry.connection_limit.clone(),
                other_limit: self.retry.other_limit.clone(),
                connection_window: self.retry.connection_window.clone(),
                other_window: self.retry.other_window.clone(),
                time_zone: self.retry.time_zone.clone(),
            },
            big_key_threshold: self.big_key_threshold,
            big_key_elements: self.big_key_elements,
            skip_unsupported: self.skip_unsupported,
            skip_failed_commands: self.skip_failed_commands,
            filter: self.filter.clone(),
            db_map: self.db_map.clone(),
            ..Default::default()
        };
        file.merge(FileConfig::default()).map_err(|e| e.to_string())
    }

    pub fn public(&self) -> JobSpec {
        JobSpec {
            source: self.source.public(),
            target: self.target.public(),
            ..self.clone()
        }
    }
}

/// A task's figures (one source shard of a job) as its owner last reported them, kept in
/// the task's row so that every worker shows every shard. Counts are the task's own,
/// earlier owners included.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskFigures {
    pub records_read: u64,
    pub records_applied: u64,
    pub keys_read: u64,
    pub keys_applied: u64,
    pub bytes_read: u64,
    /// Absent while the lag is unknown (the source link is down), never 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// The shard's reader is connected to the source and reading.
    pub link_up: bool,
    /// Seconds since anything was last read from the source (when the figures were taken).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_since_contact: Option<f64>,
    pub progress_percent: f64,
    pub read_rate: f64,
    pub apply_rate: f64,
    pub bytes_rate: f64,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_are_named_as_the_wizard_names_them() {
        let e: EndpointSpec =
            serde_json::from_str(r#"{"topology":"replica-set","addresses":["h:1"]}"#).unwrap();
        assert_eq!(e.topology, Topology::ReplicaSet);
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains(r#""topology":"replica-set""#));
        let e: EndpointSpec = serde_json::from_str(r#"{"addresses":["h:1"]}"#).unwrap();
        assert_eq!(e.topology, Topology::Standalone);
        let err = serde_json::from_str::<EndpointSpec>(r#"{"topology":"mesh"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown topology \"mesh\""),
            "{err}"
        );
        for t in TOPOLOGIES {
            assert_eq!(Topology::try_from(t.to_string()).unwrap().as_str(), t);
        }
    }

    fn spec() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "name": "j1",
            "source": {"addresses": ["127.0.0.1:1"], "password": "it's@:/"},
            "target": {"addresses": ["127.0.0.1:2"], "username": "u", "password": "p"},
            "rate_limit_mb": 5,
            "retry": {"policy": "immediately", "connection_limit": "10m"}
        }))
        .unwrap()
    }

    #[test]
    fn passwords_are_write_only() {
        let s = spec();
        let text = serde_json::to_string(&s.public()).unwrap();
        assert!(!text.contains("it's") && !text.contains("\"p\""), "{text}");
        assert!(text.contains("\"password_set\":true"), "{text}");
    }

    #[test]
    fn config_round_trips_credentials() {
        let c = spec().config().unwrap();
        assert_eq!(c.source_seeds[0].password.as_deref(), Some("it's@:/"));
        assert_eq!(c.target.username.as_deref(), Some("u"));
        assert_eq!(c.rate_limit, Some(5e6));
    }

    #[test]
    fn rejects_bad_fields() {
        let mut s = spec();
        s.mode = Some("fast".into());
        assert!(s.config().unwrap_err().contains("mode"));
        let mut s = spec();
        s.name = "a b".into();
        assert!(s.config().unwrap_err().contains("job name"));
        for bad in [".", ".."] {
            let mut t = spec();
            t.name = bad.into();
            assert!(t.config().unwrap_err().contains("job name"), "{bad}");
        }
        let mut s = spec();
        s.source.addresses.clear();
        assert!(s.config().unwrap_err().contains("source"));
        assert!(serde_json::from_value::<JobSpec>(
            serde_json::json!({"name":"x","source":{},"target":{},"sorce":1})
        )
        .is_err());
    }

    #[test]
    fn filter_and_db_map_are_checked_and_kept() {
        let mut s = spec();
        s.db_map = Some("1:x".into());
        let e = s.config().unwrap_err();
        assert!(e.contains("db") && e.contains("1:x"), "{e}");
        let mut s = spec();
        s.filter.include_key_regex = Some(vec!["(".into()]);
        let e = s.config().unwrap_err();
        assert!(
            e.contains("regex") || e.contains("regular expression"),
            "{e}"
        );
        assert!(serde_json::from_value::<JobSpec>(serde_json::json!({
            "name": "x", "source": {}, "target": {}, "filter": {"include_prefixes": ["a"]}
        }))
        .is_err());
        let mut s = spec();
        s.filter.include_key_prefixes = Some(vec!["keep:".into()]);
        s.db_map = Some("1:3".into());
        let c = s.config().unwrap();
        assert_eq!(c.db_map.target(1), 3);
        assert!(c.filter.is_some());
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.contains(r#""filter":{"include_key_prefixes":["keep:"]}"#),
            "{text}"
        );
        assert!(!serde_json::to_string(&spec()).unwrap().contains("filter"));
    }
}
