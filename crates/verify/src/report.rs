//! What a verification found: counts for the summary and the first differing keys.

use serde::Serialize;

/// One way a key differs. A key may differ in several ways at once (TTL and value).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// On the source, not on the target.
    MissingOnTarget,
    /// On the target, not on the source.
    ExtraOnTarget,
    /// Both have the key, with different types.
    Type { source: String, target: String },
    /// Remaining time to live, in ms (`-1`: none), further apart than the tolerance.
    Ttl { source_ms: i64, target_ms: i64 },
    /// Same type, different contents; `detail` says where, when the comparison can tell.
    Value { detail: String },
}

/// A key that still differed after the last round.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The source database. For a key found only on the target: the source database it
    /// would have been copied from (the first one, when several are mapped to its
    /// database).
    pub db: u32,
    /// The target database (`db` unless the job maps databases).
    pub target_db: u32,
    /// The key, with bytes that are not printable ASCII written as `\xNN`.
    pub key: String,
    pub problems: Vec<Problem>,
}

/// How values were compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMethod {
    /// `keys` mode: values not compared.
    None,
    /// `DEBUG DIGEST-VALUE` on both sides.
    Digest,
    /// Reading the contents in chunks (DEBUG disabled on a side).
    Contents,
}

/// The result of [`crate::verify`]. Counts are of keys; a key counted in `ttl_differences`
/// may also be counted in `value_differences`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No difference persisted through the rechecks.
    pub equal: bool,
    pub mode: crate::Mode,
    pub value_method: ValueMethod,
    /// Source keys compared (after sampling).
    pub keys_compared: u64,
    /// Source keys found equal on the target.
    pub keys_equal: u64,
    pub missing_on_target: u64,
    pub extra_on_target: u64,
    pub type_differences: u64,
    pub value_differences: u64,
    pub ttl_differences: u64,
    /// Target keys scanned for extras (after sampling).
    pub target_keys_scanned: u64,
    /// The source is a Redis Cluster (every master scanned, keys routed by slot).
    pub source_cluster: bool,
    /// The target is a Redis Cluster.
    pub target_cluster: bool,
    /// Keys in databases of a standalone source not mapped to db 0 of a cluster target:
    /// a cluster has only db 0, so they are not compared.
    pub source_keys_not_compared: u64,
    /// The same for a standalone target compared with a cluster source.
    pub target_keys_not_compared: u64,
    /// Source keys the job's filters leave out, so not compared (keys of an excluded
    /// database as `INFO keyspace` counts them, the others as scanned).
    pub source_keys_filtered: u64,
    /// Target keys the job would not have written, so never extra: with a name the filters
    /// leave out, or in a database no copied source database is mapped to (ferry's
    /// checkpoints are not counted).
    pub target_keys_filtered: u64,
    /// Differences seen in an earlier round that were gone in a recheck (keys in flight).
    pub transient: u64,
    /// Rounds run: the full pass plus the rechecks that had something to recheck.
    pub rounds: u32,
    pub duration_ms: u64,
    /// The first `max_diffs` differing keys.
    pub differences: Vec<Difference>,
    /// More keys differed than are listed.
    pub truncated: bool,
}

impl Report {
    /// Keys that differ in any way (extras included).
    pub fn keys_differing(&self) -> u64 {
        self.keys_compared - self.keys_equal + self.extra_on_target
    }
}

/// Escapes a key for display: printable ASCII as is, other bytes as `\xNN`.
pub fn escape_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_binary_keys() {
        assert_eq!(escape_key(b"a:b"), "a:b");
        assert_eq!(escape_key(b"a\x00\xff\\"), "a\\x00\\xff\\\\");
    }

    #[test]
    fn problems_serialize_with_a_kind_tag() {
        let p = Problem::Ttl {
            source_ms: 1000,
            target_ms: -1,
        };
        let json = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(json["kind"], "ttl");
        assert_eq!(json["source_ms"], 1000);
        let json = serde_json::to_value(Problem::MissingOnTarget).unwrap_or_default();
        assert_eq!(json, serde_json::json!({ "kind": "missing_on_target" }));
    }
}
