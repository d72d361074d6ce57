//! What of the source to copy: keys (by prefix, Redis glob or regex), databases and
//! commands. Applied by the reader before an event leaves it, identically to snapshot
//! entries and to stream commands, so the writer, its checkpoints and the offsets need not
//! know filters exist: a command that is dropped still moves the offset (it becomes an
//! [`Event::Offset`]).
//!
//! Keys: kept when any include rule matches (or there is none), then dropped when any
//! exclude rule matches. Multi-key commands whose keys are independent (`DEL`, `UNLINK`,
//! `EXISTS`, `TOUCH`, `MSET`, `MSETNX`) are rewritten to keep only the kept keys; the
//! others (`RENAME`, `SMOVE`, `LMOVE`, `EVAL`, …) are kept or dropped whole by their first
//! key, and counted as "mixed" when their keys disagree.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use regex::bytes::RegexSet;

use crate::event::Event;
use crate::stats::ShardStats;

/// Command groups usable in command rules as `@name`.
///
/// | group        | commands                                                          |
/// |--------------|-------------------------------------------------------------------|
/// | `@pubsub`    | PUBLISH, SPUBLISH                                                 |
/// | `@scripting` | EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, FCALL, FCALL_RO, SCRIPT, FUNCTION |
/// | `@flush`     | FLUSHALL, FLUSHDB                                                 |
/// | `@admin`     | FLUSHALL, FLUSHDB, SWAPDB                                         |
///
/// `SCRIPT` and `FUNCTION` also cover the snapshot's Lua scripts and function libraries.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("@pubsub", &["PUBLISH", "SPUBLISH"]),
    (
        "@scripting",
        &[
            "EVAL",
            "EVALSHA",
            "EVAL_RO",
            "EVALSHA_RO",
            "FCALL",
            "FCALL_RO",
            "SCRIPT",
            "FUNCTION",
        ],
    ),
    ("@flush", &["FLUSHALL", "FLUSHDB"]),
    ("@admin", &["FLUSHALL", "FLUSHDB", "SWAPDB"]),
];

/// The filter rules as a user writes them (TOML or flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterRules {
    pub include_key_prefixes: Vec<String>,
    pub exclude_key_prefixes: Vec<String>,
    /// Redis-style globs: `*`, `?`, `[abc]`, `[^a-z]`, `\` escapes.
    pub include_keys: Vec<String>,
    pub exclude_keys: Vec<String>,
    pub include_key_regex: Vec<String>,
    pub exclude_key_regex: Vec<String>,
    pub include_dbs: Vec<u32>,
    pub exclude_dbs: Vec<u32>,
    /// Command names or `@group`s (see [`GROUPS`]).
    pub include_commands: Vec<String>,
    pub exclude_commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {0}")]
pub struct FilterError(pub String);

/// Compiled rules; cheap to share between shards behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Filter {
    include: KeyRules,
    exclude: KeyRules,
    include_dbs: Option<BTreeSet<u32>>,
    exclude_dbs: BTreeSet<u32>,
    include_commands: Option<HashSet<String>>,
    exclude_commands: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
struct KeyRules {
    prefixes: Vec<Bytes>,
    globs: Vec<Glob>,
    regex: Option<RegexSet>,
}

impl KeyRules {
    fn new(prefixes: &[String], globs: &[String], regex: &[String]) -> Result<Self, FilterError> {
        let globs = globs
            .iter()
            .map(|g| Glob::new(g))
            .collect::<Result<Vec<_>, _>>()?;
        let regex = if regex.is_empty() {
            None
        } else {
            for r in regex {
                regex::bytes::Regex::new(r)
                    .map_err(|e| FilterError(format!("bad key regex {r:?}: {e}")))?;
            }
            Some(RegexSet::new(regex).map_err(|e| FilterError(format!("key regex: {e}")))?)
        };
        Ok(KeyRules {
            prefixes: prefixes
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect(),
            globs,
            regex,
        })
    }

    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty() && self.regex.is_none()
    }

    fn matches(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
            || self.globs.iter().any(|g| g.matches(key))
            || self.regex.as_ref().is_some_and(|r| r.is_match(key))
    }
}

fn command_set(names: &[String], what: &str) -> Result<HashSet<String>, FilterError> {
    let mut set = HashSet::new();
    for n in names {
        let n = n.trim();
        if let Some(group) = n.strip_prefix('@') {
            let group = format!("@{}", group.to_ascii_lowercase());
            let (_, cmds) = GROUPS.iter().find(|(g, _)| *g == group).ok_or_else(|| {
                let known: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
                FilterError(format!(
                    "unknown command group {n:?} in {what}: use one of {}",
                    known.join(", ")
                ))
            })?;
            set.extend(cmds.iter().map(|c| c.to_string()));
        } else if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'|')
        {
            return Err(FilterError(format!("bad command name {n:?} in {what}")));
        } else {
            set.insert(n.to_ascii_uppercase());
        }
    }
    Ok(set)
}

/// What the filter made of one event.
#[derive(Debug)]
pub enum Verdict {
    Keep(Event),
    /// Nothing of it is to be applied.
    Drop,
}

impl Filter {
    pub fn new(rules: &FilterRules) -> Result<Filter, FilterError> {
        let include = KeyRules::new(
            &rules.include_key_prefixes,
            &rules.include_keys,
            &rules.include_key_regex,
        )?;
        let exclude = KeyRules::new(
            &rules.exclude_key_prefixes,
            &rules.exclude_keys,
            &rules.exclude_key_regex,
        )?;
        let include_commands = command_set(&rules.include_commands, "include_commands")?;
        Ok(Filter {
            include,
            exclude,
            include_dbs: (!rules.include_dbs.is_empty())
                .then(|| rules.include_dbs.iter().copied().collect()),
            exclude_dbs: rules.exclude_dbs.iter().copied().collect(),
            include_commands: (!include_commands.is_empty()).then_some(include_commands),
            exclude_commands: command_set(&rules.exclude_commands, "exclude_commands")?,
        })
    }

    /// True when no rule is set: the reader then skips the filter altogether.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.include_dbs.is_none()
            && self.exclude_dbs.is_empty()
            && self.include_commands.is_none()
            && self.exclude_commands.is_empty()
    }

    pub fn key_allowed(&self, key: &[u8]) -> bool {
        (self.include.is_empty() || self.include.matches(key)) && !self.exclude.matches(key)
    }

    pub fn db_allowed(&self, db: u32) -> bool {
        !matches!(&self.include_dbs, Some(s) if !s.contains(&db)) && !self.exclude_dbs.contains(&db)
    }

    /// `name` in upper case.
    pub fn command_allowed(&self, name: &str) -> bool {
        !matches!(&self.include_commands, Some(s) if !s.contains(name))
            && !self.exclude_commands.contains(name)
    }

    /// Decides about one snapshot entry (or the start of a big one).
    pub fn entry_allowed(&self, db: u32, key: &[u8]) -> bool {
        self.db_allowed(db) && self.key_allowed(key)
    }

    /// Decides about one stream command; may rewrite its argv to the kept keys. Counts
    /// what it drops in `stats`.
    pub fn command(&self, db: u32, mut argv: Vec<Bytes>, stats: &ShardStats) -> Option<Vec<Bytes>> {
        let name = argv.first()?;
        let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
        if !self.db_allowed(db) || !self.command_allowed(&upper) {
            stats.filtered_commands.fetch_add(1, Relaxed);
            return None;
        }
        if self.include.is_empty() && self.exclude.is_empty() {
            return Some(argv);
        }
        match key_spec(&upper) {
            KeySpec::None => Some(argv),
            KeySpec::Each { step } => {
                let total = (argv.len() - 1) / step;
                let mut kept = Vec::with_capacity(argv.len());
                let mut args = argv.drain(..);
                kept.extend(args.next());
                let rest: Vec<Bytes> = args.collect();
                for group in rest.chunks(step) {
                    if self.key_allowed(&group[0]) {
                        kept.extend_from_slice(group);
                    }
                }
                let kept_keys = (kept.len() - 1) / step;
                let dropped = total - kept_keys;
                stats.filtered_keys.fetch_add(dropped as u64, Relaxed);
                if kept_keys == 0 {
                    stats.filtered_commands.fetch_add(1, Relaxed);
                    return None;
                }
                Some(kept)
            }
            spec => {
                let keys = spec.keys(&argv);
                let Some(first) = keys.first() else {
                    return Some(argv);
                };
                let keep = self.key_allowed(first);
                if keys[1..].iter().any(|k| self.key_allowed(k) != keep) {
                    stats.filtered_mixed.fetch_add(1, Relaxed);
                }
                if keep {
                    Some(argv)
                } else {
                    stats.filtered_commands.fetch_add(1, Relaxed);
                    None
                }
            }
        }
    }

    /// Applies the rules to one event of the reader. Commands that are dropped become an
    /// [`Event::Offset`] so the applied offset still advances over them. Big entries are
    /// followed by their chunks: `in_dropped_big` remembers, between calls, that the
    /// current big entry was dropped.
    pub fn apply(&self, ev: Event, stats: &ShardStats, in_dropped_big: &mut bool) -> Verdict {
        match ev {
            Event::Entry(ref e) => {
                if self.entry_allowed(e.db as u32, &e.key) {
                    Verdict::Keep(ev)
                } else {
                    stats.filtered_keys.fetch_add(1, Relaxed);
                    Verdict::Drop
                }
            }
            Event::BigEntryStart(ref e) => {
                if self.entry_allowed(e.db as u32, &e.key) {
                    *in_dropped_big = false;
                    Verdict::Keep(ev)
                } else {
                    stats.filtered_keys.fetch_add(1, Relaxed);
                    *in_dropped_big = true;
                    Verdict::Drop
                }
            }
            Event::BigEntryChunk { .. } if *in_dropped_big => Verdict::Drop,
            Event::BigEntryEnd { .. } if *in_dropped_big => {
                *in_dropped_big = false;
                Verdict::Drop
            }
            Event::Function { .. } if !self.command_allowed("FUNCTION") => {
                stats.filtered_commands.fetch_add(1, Relaxed);
                Verdict::Drop
            }
            Event::Script { .. } if !self.command_allowed("SCRIPT") => {
                stats.filtered_commands.fetch_add(1, Relaxed);
                Verdict::Drop
            }
            Event::Command { db, argv, offset } => match self.command(db, argv, stats) {
                Some(argv) => Verdict::Keep(Event::Command { db, argv, offset }),
                None => Verdict::Keep(Event::Offset { offset, db }),
            },
            other => Verdict::Keep(other),
        }
    }
}

/// Where a command's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySpec {
    /// No key (`FLUSHALL`, `PUBLISH`, `MULTI`): never filtered by key.
    None,
    /// One key at this position.
    At(usize),
    /// Independent keys from position 1, one every `step` arguments: filtered per key.
    Each { step: usize },
    /// All arguments from position 1 are keys, bound together.
    All,
    /// From `from` to the end, bound together.
    From(usize),
    /// Keys at 1 and 2, bound together (`RENAME src dst`).
    Two,
    /// `numkeys` at this position, the keys after it (`EVAL script numkeys k…`).
    NumKeys(usize),
    /// A destination at 1, then `numkeys` at 2 and the keys (`ZUNIONSTORE`).
    DestNumKeys,
}

fn key_spec(upper: &str) -> KeySpec {
    match upper {
        "FLUSHALL" | "FLUSHDB" | "SWAPDB" | "PUBLISH" | "SPUBLISH" | "MULTI" | "EXEC"
        | "DISCARD" | "PING" | "SELECT" | "SCRIPT" | "FUNCTION" | "REPLCONF" => KeySpec::None,
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => KeySpec::Each { step: 1 },
        "MSET" | "MSETNX" => KeySpec::Each { step: 2 },
        "RENAME" | "RENAMENX" | "SMOVE" | "LMOVE" | "BLMOVE" | "RPOPLPUSH" | "BRPOPLPUSH"
        | "COPY" | "GEOSEARCHSTORE" | "ZRANGESTORE" => KeySpec::Two,
        "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" | "PFMERGE" => KeySpec::All,
        "BITOP" => KeySpec::From(2),
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => KeySpec::NumKeys(2),
        "LMPOP" | "ZMPOP" | "SINTERCARD" | "ZINTERCARD" => KeySpec::NumKeys(1),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => KeySpec::DestNumKeys,
        "XGROUP" | "XINFO" | "OBJECT" => KeySpec::At(2),
        _ => KeySpec::At(1),
    }
}

impl KeySpec {
    fn keys<'a>(&self, argv: &'a [Bytes]) -> Vec<&'a Bytes> {
        let numkeys_at = |at: usize| -> Vec<&'a Bytes> {
            let n = argv
                .get(at)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            argv.iter().skip(at + 1).take(n).collect()
        };
        match *self {
            KeySpec::None | KeySpec::Each { .. } => Vec::new(),
            KeySpec::At(i) => argv.get(i).into_iter().collect(),
            KeySpec::All => argv.iter().skip(1).collect(),
            KeySpec::From(i) => argv.iter().skip(i).collect(),
            KeySpec::Two => argv.iter().skip(1).take(2).collect(),
            KeySpec::NumKeys(at) => numkeys_at(at),
            KeySpec::DestNumKeys => {
                let mut keys: Vec<&Bytes> = argv.get(1).into_iter().collect();
                keys.extend(numkeys_at(2));
                keys
            }
        }
    }
}

/// A Redis-style glob (`KEYS`/`SCAN MATCH` syntax), checked when it is built.
#[derive(Debug, Clone)]
pub struct Glob(Vec<Tok>);

#[derive(Debug, Clone)]
enum Tok {
    Byte(u8),
    Any,
    Star,
    Class { negated: bool, items: Vec<(u8, u8)> },
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, FilterError> {
        let bad = |why: &str| FilterError(format!("bad key glob {pattern:?}: {why}"));
        let p = pattern.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                b'*' => {
                    if !matches!(toks.last(), Some(Tok::Star)) {
                        toks.push(Tok::Star);
                    }
                }
                b'?' => toks.push(Tok::Any),
                b'\\' => {
                    i += 1;
                    let b = *p.get(i).ok_or_else(|| bad("ends with a lone \\"))?;
                    toks.push(Tok::Byte(b));
                }
                b'[' => {
                    i += 1;
                    let negated = p.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut items = Vec::new();
                    loop {
                        let b = *p.get(i).ok_or_else(|| bad("[ without a closing ]"))?;
                        match b {
                            b']' => break,
                            b'\\' => {
                                i += 1;
                                let e = *p.get(i).ok_or_else(|| bad("ends with a lone \\"))?;
                                items.push((e, e));
                            }
                            _ if p.get(i + 1) == Some(&b'-')
                                && p.get(i + 2).is_some_and(|&c| c != b']') =>
                            {
                                let (lo, hi) = (b, p[i + 2]);
                                items.push((lo.min(hi), lo.max(hi)));
                                i += 2;
                            }
                            _ => items.push((b, b)),
                        }
                        i += 1;
                    }
                    if items.is_empty() {
                        return Err(bad("empty [] class"));
                    }
                    toks.push(Tok::Class { negated, items });
                }
                b => toks.push(Tok::Byte(b)),
            }
            i += 1;
        }
        Ok(Glob(toks))
    }

    pub fn matches(&self, s: &[u8]) -> bool {
        // Iterative matching with one backtrack point per star: linear in practice.
        let (mut t, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        let toks = &self.0;
        while i < s.len() {
            let step = match toks.get(t) {
                Some(Tok::Star) => {
                    star = Some((t, i));
                    t += 1;
                    continue;
                }
                Some(Tok::Any) => true,
                Some(Tok::Byte(b)) => *b == s[i],
                Some(Tok::Class { negated, items }) => {
                    items.iter().any(|&(lo, hi)| lo <= s[i] && s[i] <= hi) != *negated
                }
                None => false,
            };
            if step {
                t += 1;
                i += 1;
            } else if let Some((st, si)) = star {
                t = st + 1;
                i = si + 1;
                star = Some((st, si + 1));
            } else {
                return false;
            }
        }
        toks[t..].iter().all(|k| matches!(k, Tok::Star))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| Glob::new(p).unwrap().matches(s.as_bytes());
        assert!(g("user:*", "user:1"));
        assert!(g("user:*", "user:"));
        assert!(!g("user:*", "use"));
        assert!(g("*", ""));
        assert!(g("h?llo", "hello"));
        assert!(!g("h?llo", "hllo"));
        assert!(g("h[ae]llo", "hallo"));
        assert!(!g("h[ae]llo", "hillo"));
        assert!(g("h[^e]llo", "hallo"));
        assert!(!g("h[^e]llo", "hello"));
        assert!(g("k[a-c]", "kb"));
        assert!(!g("k[a-c]", "kd"));
        assert!(g("a*b*c", "axxbyyc"));
        assert!(!g("a*b*c", "axxbyy"));
        assert!(g("a\\*", "a*"));
        assert!(!g("a\\*", "ab"));
        assert!(g("*:x", "a:b:x"));
        assert!(Glob::new("a[bc").is_err());
        assert!(Glob::new("a\\").is_err());
    }

    #[test]
    fn rules_and_commands() {
        let f = Filter::new(&FilterRules {
            include_keys: vec!["user:*".into()],
            exclude_key_prefixes: vec!["user:tmp".into()],
            exclude_commands: vec!["flushall".into(), "@pubsub".into()],
            exclude_dbs: vec![2],
            ..Default::default()
        })
        .unwrap();
        let st = ShardStats::default();
        assert!(f.key_allowed(b"user:1"));
        assert!(!f.key_allowed(b"user:tmp1"));
        assert!(!f.key_allowed(b"order:1"));
        assert!(f.command(0, b(&["FLUSHALL"]), &st).is_none());
        assert!(f.command(0, b(&["publish", "c", "m"]), &st).is_none());
        assert!(f.command(0, b(&["FLUSHDB"]), &st).is_some());
        assert!(f.command(2, b(&["SET", "user:1", "v"]), &st).is_none());
        assert_eq!(
            f.command(0, b(&["DEL", "user:1", "order:1", "user:2"]), &st),
            Some(b(&["DEL", "user:1", "user:2"]))
        );
        assert_eq!(
            f.command(0, b(&["MSET", "order:1", "a", "user:2", "b"]), &st),
            Some(b(&["MSET", "user:2", "b"]))
        );
        assert!(f.command(0, b(&["DEL", "order:1"]), &st).is_none());
        assert!(f
            .command(0, b(&["RENAME", "user:1", "order:1"]), &st)
            .is_some());
        assert!(f
            .command(0, b(&["EVAL", "x", "2", "order:1", "user:1"]), &st)
            .is_none());
        assert!(f.command(0, b(&["EVAL", "x", "0"]), &st).is_some());
        assert_eq!(st.filtered_mixed.load(Relaxed), 2);
        assert_eq!(st.filtered_keys.load(Relaxed), 3);
        assert!(Filter::new(&FilterRules {
            exclude_commands: vec!["@nope".into()],
            ..Default::default()
        })
        .is_err());
        assert!(Filter::new(&FilterRules {
            include_key_regex: vec!["(".into()],
            ..Default::default()
        })
        .is_err());
        assert!(Filter::new(&FilterRules::default()).unwrap().is_empty());
    }

    #[test]
    fn dropped_command_moves_the_offset() {
        let f = Filter::new(&FilterRules {
            exclude_commands: vec!["FLUSHALL".into()],
            ..Default::default()
        })
        .unwrap();
        let st = ShardStats::default();
        let mut big = false;
        let ev = Event::Command {
            db: 3,
            argv: b(&["FLUSHALL"]),
            offset: 99,
        };
        assert!(matches!(
            f.apply(ev, &st, &mut big),
            Verdict::Keep(Event::Offset { offset: 99, db: 3 })
        ));
    }
}
