//! Rewriting a decoded value into plain commands, for targets that cannot `RESTORE` the
//! source's payload (an older server, Valkey and a Redis 7.4+ payload) and for values too big
//! for one command.
//!
//! A key is built under a temporary name and then renamed into place, so that
//! - without `--overwrite` an existing key is refused as `RESTORE` refuses it: `RENAMENX`
//!   answers 0 and the existing key is left untouched (never merged into);
//! - with `--overwrite` the old value is replaced in one step (`RENAME`);
//! - a reader of the target never sees a half-built value.
//!
//! The temporary name is the key with [`TMP_SUFFIX`] appended, and a hash tag of the key's
//! slot prepended when the key has none, so that on a cluster target it lands in the key's
//! slot.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_rdb::{Stream, StreamEntry, StreamId, Value};

use crate::version::ServerVersion;

/// Appended to a key's name while its value is being built.
pub const TMP_SUFFIX: &[u8] = b"\x00ferry-rewrite";

/// What a target supports, as far as rewriting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `HPEXPIREAT` (Redis 7.4+, Valkey 9+).
    pub hash_field_ttl: bool,
    /// `XSETID … ENTRIESADDED … MAXDELETEDID`, `XGROUP CREATE … ENTRIESREAD` (Redis 7.0+,
    /// Valkey).
    pub stream_v2: bool,
    /// `XGROUP CREATECONSUMER` (Redis 6.2+).
    pub create_consumer: bool,
}

impl Capabilities {
    pub fn of(v: &ServerVersion) -> Capabilities {
        let valkey = v.product == "valkey";
        let mv = (v.major, v.minor);
        Capabilities {
            hash_field_ttl: if valkey { v.major >= 9 } else { mv >= (7, 4) },
            stream_v2: valkey || mv >= (7, 0),
            create_consumer: valkey || mv >= (6, 2),
        }
    }

    /// Everything: for an unknown target version.
    pub fn all() -> Capabilities {
        Capabilities {
            hash_field_ttl: true,
            stream_v2: true,
            create_consumer: true,
        }
    }
}

/// How commands are cut and what to do with what the target cannot hold.
#[derive(Debug, Clone, Copy)]
pub struct RewriteOptions {
    /// Most elements (members, fields, entries) in one command.
    pub max_elements: usize,
    /// Most bytes of arguments in one command (a string is cut into `APPEND`s of this size).
    pub max_bytes: usize,
    pub overwrite: bool,
    /// Skip (and count) keys the target cannot hold instead of stopping with an error.
    pub skip_unsupported: bool,
    pub caps: Capabilities,
}

impl RewriteOptions {
    pub fn new(caps: Capabilities, overwrite: bool) -> RewriteOptions {
        RewriteOptions {
            max_elements: 1000,
            max_bytes: 1024 * 1024,
            overwrite,
            skip_unsupported: false,
            caps,
        }
    }
}

/// How the writer judges a rewrite command's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Any non-error reply.
    Ok,
    /// `RENAMENX`: 0 means the key exists on the target.
    RenameNx,
    /// The final `RENAME`/`RENAMENX` of a key whose value has a TTL: "no such key" means it
    /// expired while being built, which is fine.
    RenameExpiring,
    /// `RENAMENX` of a key with a TTL: both of the above.
    RenameNxExpiring,
}

/// One command of a rewrite.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd {
    pub argv: Vec<Bytes>,
    pub check: Check,
}

impl Cmd {
    fn new(argv: Vec<Bytes>) -> Cmd {
        Cmd {
            argv,
            check: Check::Ok,
        }
    }

    /// The command's name, for messages.
    pub fn name(&self) -> &[u8] {
        self.argv.first().map(|b| b.as_ref()).unwrap_or(b"")
    }
}

/// Why a value could not be rewritten for this target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub key: Bytes,
    pub reason: String,
}

/// What a rewrite produced.
#[derive(Debug, PartialEq)]
pub enum Rewrite {
    Commands(Vec<Cmd>),
    /// The key cannot be written to this target and the user chose to skip such keys.
    Skipped(Unsupported),
    /// The key's TTL is already past: nothing to write (as `RESTORE … ABSTTL` would do).
    Expired,
}

/// The temporary name `key` is built under.
pub fn tmp_key(key: &[u8]) -> Bytes {
    let mut t = Vec::with_capacity(key.len() + TMP_SUFFIX.len() + 6);
    if crate::slot::hash_tag(key) == key {
        // No hash tag: one naming the key's slot keeps the temporary key beside it on a
        // cluster (RENAME cannot cross slots).
        t.push(b'{');
        t.extend_from_slice(crate::slot::slot_tag(crate::slot::key_slot(key)).as_bytes());
        t.push(b'}');
    }
    t.extend_from_slice(key);
    t.extend_from_slice(TMP_SUFFIX);
    Bytes::from(t)
}

/// A score as text that parses back to exactly the same `f64` (Rust prints the shortest
/// such digits); `inf`/`-inf` as Redis spells them.
pub fn format_score(s: f64) -> String {
    if s.is_infinite() {
        return if s > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = s.abs();
    if a != 0.0 && !(1e-5..1e17).contains(&a) {
        format!("{s:e}")
    } else {
        format!("{s}")
    }
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn num(n: impl ToString) -> Bytes {
    Bytes::from(n.to_string())
}

fn id(i: StreamId) -> Bytes {
    Bytes::from(i.to_string())
}

/// Rewrites one value into commands. The whole key: `DEL tmp`, the value in chunks,
/// `PEXPIREAT tmp` for a TTL, then `RENAME`/`RENAMENX tmp key`.
pub fn rewrite_value(
    key: &Bytes,
    value: &Value,
    expire_ms: Option<i64>,
    now_ms: i64,
    opts: &RewriteOptions,
) -> Result<Rewrite, Unsupported> {
    if matches!(expire_ms, Some(ms) if ms <= now_ms) {
        return Ok(Rewrite::Expired);
    }
    let live;
    let value = match without_passed_fields(value, now_ms) {
        Some(Value::HashWithTtl(v)) if v.is_empty() => return Ok(Rewrite::Expired),
        Some(v) => {
            live = v;
            &live
        }
        None => value,
    };
    if let Err(u) = supported(key, value, opts) {
        return if opts.skip_unsupported {
            Ok(Rewrite::Skipped(u))
        } else {
            Err(u)
        };
    }
    let mut out = Chunker::begin(key, opts);
    match value {
        Value::String(s) => {
            out.string_len(s.len() as u64);
            out.string_part(s)
        }
        Value::List(v) => out.list(v),
        Value::Set(v) => out.set(v),
        Value::SortedSet(v) => out.zset(v),
        Value::Hash(v) => out.hash(v),
        Value::HashWithTtl(v) => out.hash_with_ttl(v),
        Value::Stream(s) => {
            out.stream_entries(&s.entries);
            out.stream_meta(s);
        }
        Value::Module { .. } => {}
    }
    Ok(Rewrite::Commands(out.finish(expire_ms)))
}

/// A hash's fields whose TTL has passed at `now_ms` are not written: no reader of the source
/// sees them any more (a source with lazy expiry may still hold and snapshot them), and a
/// target without field TTLs would keep them for good. The hash without them, or `None`
/// when nothing passed (or `value` is no hash with field TTLs).
pub fn without_passed_fields(value: &Value, now_ms: i64) -> Option<Value> {
    let Value::HashWithTtl(v) = value else {
        return None;
    };
    let passed =
        |t: &Option<u64>| matches!(t, Some(t) if i64::try_from(*t).is_ok_and(|t| t <= now_ms));
    if !v.iter().any(|f| passed(&f.2)) {
        return None;
    }
    Some(Value::HashWithTtl(
        v.iter().filter(|f| !passed(&f.2)).cloned().collect(),
    ))
}

/// Whether `value` can be written to the target at all.
pub fn supported(key: &Bytes, value: &Value, opts: &RewriteOptions) -> Result<(), Unsupported> {
    let reason = match value {
        Value::Module { module_id, .. } => Some(format!(
            "it is a value of module {:?}, which has no plain-command form",
            module_name(*module_id)
        )),
        Value::HashWithTtl(v) if !opts.caps.hash_field_ttl && v.iter().any(|f| f.2.is_some()) => {
            Some(
                "it has hash fields with TTLs, which the target cannot hold (they need Redis 7.4+ or Valkey 9+)"
                    .into(),
            )
        }
        _ => None,
    };
    match reason {
        Some(reason) => Err(Unsupported {
            key: key.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A module's 9-character name from its 64-bit id (Redis `moduleTypeNameByID`).
pub fn module_name(module_id: u64) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for c in name.iter_mut().rev() {
        *c = CHARS[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// Builds one key's commands incrementally, so that a big value can be written chunk by
/// chunk as its elements arrive: [`Chunker::begin`], element methods any number of times,
/// [`Chunker::finish`]. Each call returns (via [`Chunker::take`]) only the commands it made.
#[derive(Debug)]
pub struct Chunker {
    key: Bytes,
    tmp: Bytes,
    opts: RewriteOptions,
    cmds: Vec<Cmd>,
    /// A string was started (first part written with `SET`, the rest `APPEND`ed).
    string_started: bool,
    /// A string of known length written in place: it was created at its full length, and
    /// its parts are written with `SETRANGE` from this offset on.
    string_at: Option<u64>,
    /// Highest entry id written so far (stream).
    last_written: Option<StreamId>,
}

impl Chunker {
    /// Starts a key: removes a leftover temporary key of an interrupted run.
    pub fn begin(key: &Bytes, opts: &RewriteOptions) -> Chunker {
        let tmp = tmp_key(key);
        Chunker {
            cmds: vec![Cmd::new(vec![b(b"DEL"), tmp.clone()])],
            key: key.clone(),
            tmp,
            opts: *opts,
            string_started: false,
            string_at: None,
            last_written: None,
        }
    }

    /// Commands made since the last call.
    pub fn take(&mut self) -> Vec<Cmd> {
        std::mem::take(&mut self.cmds)
    }

    /// Emits `name tmp <prefix…> items…` in chunks bounded by element count and bytes.
    fn chunked<T>(
        &mut self,
        name: &'static [u8],
        items: &[T],
        mut push: impl FnMut(&mut Vec<Bytes>, &T),
    ) {
        let mut argv: Vec<Bytes> = Vec::new();
        let mut bytes = 0usize;
        let mut n = 0usize;
        for it in items {
            if argv.is_empty() {
                argv.push(b(name));
                argv.push(self.tmp.clone());
                bytes = 0;
                n = 0;
            }
            let before = argv.len();
            push(&mut argv, it);
            bytes += argv[before..].iter().map(|a| a.len()).sum::<usize>();
            n += 1;
            if n >= self.opts.max_elements || bytes >= self.opts.max_bytes {
                self.cmds.push(Cmd::new(std::mem::take(&mut argv)));
            }
        }
        if !argv.is_empty() {
            self.cmds.push(Cmd::new(argv));
        }
    }

    /// Announces a string's whole length before its parts. A string longer than one
    /// command is then created at its full length at once (`SETRANGE` of its last byte) and
    /// its parts written in place with `SETRANGE`: growing it by `APPEND`s makes the target
    /// reallocate (and often copy) the value over and over, several times slower for
    /// hundreds of megabytes.
    pub fn string_len(&mut self, len: u64) {
        if self.string_started || len <= self.opts.max_bytes as u64 {
            return;
        }
        self.cmds.push(Cmd::new(vec![
            b(b"SETRANGE"),
            self.tmp.clone(),
            num(len - 1),
            b(b"\0"),
        ]));
        self.string_started = true;
        self.string_at = Some(0);
    }

    /// A part of a string value: the first `SET`, later ones `APPEND` (`SETRANGE` after
    /// [`Chunker::string_len`]); each cut to `max_bytes`.
    pub fn string_part(&mut self, s: &Bytes) {
        if let Some(at) = self.string_at.as_mut() {
            for part in s.chunks(self.opts.max_bytes.max(1)) {
                let argv = vec![
                    b(b"SETRANGE"),
                    self.tmp.clone(),
                    num(*at),
                    s.slice_ref(part),
                ];
                *at += part.len() as u64;
                self.cmds.push(Cmd::new(argv));
            }
            return;
        }
        let step = self.opts.max_bytes.max(1);
        let mut at = 0;
        loop {
            let end = (at + step).min(s.len());
            let part = s.slice(at..end);
            let name = if self.string_started {
                b(b"APPEND")
            } else {
                b(b"SET")
            };
            if self.string_started && part.is_empty() {
                break;
            }
            self.string_started = true;
            self.cmds.push(Cmd::new(vec![name, self.tmp.clone(), part]));
            at = end;
            if at >= s.len() {
                break;
            }
        }
    }

    pub fn list(&mut self, items: &[Bytes]) {
        self.chunked(b"RPUSH", items, |a, x| a.push(x.clone()));
    }

    pub fn set(&mut self, items: &[Bytes]) {
        self.chunked(b"SADD", items, |a, x| a.push(x.clone()));
    }

    pub fn zset(&mut self, items: &[(Bytes, f64)]) {
        self.chunked(b"ZADD", items, |a, (m, s)| {
            a.push(Bytes::from(format_score(*s)));
            a.push(m.clone());
        });
    }

    pub fn hash(&mut self, items: &[(Bytes, Bytes)]) {
        self.chunked(b"HSET", items, |a, (f, v)| {
            a.push(f.clone());
            a.push(v.clone());
        });
    }

    /// Fields, then one `HPEXPIREAT` per distinct expiry time (fields in chunks).
    pub fn hash_with_ttl(&mut self, items: &[(Bytes, Bytes, Option<u64>)]) {
        let plain: Vec<(Bytes, Bytes)> = items
            .iter()
            .map(|(f, v, _)| (f.clone(), v.clone()))
            .collect();
        self.hash(&plain);
        if !self.opts.caps.hash_field_ttl {
            return;
        }
        let mut by_time: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        for (f, _, t) in items {
            if let Some(t) = t {
                by_time.entry(*t).or_default().push(f.clone());
            }
        }
        for (t, fields) in by_time {
            for chunk in fields.chunks(self.opts.max_elements.max(1)) {
                let mut argv = vec![
                    b(b"HPEXPIREAT"),
                    self.tmp.clone(),
                    num(t),
                    b(b"FIELDS"),
                    num(chunk.len()),
                ];
                argv.extend(chunk.iter().cloned());
                self.cmds.push(Cmd::new(argv));
            }
        }
    }

    /// Stream entries with their ids, one `XADD` each (an entry is one command).
    pub fn stream_entries(&mut self, entries: &[StreamEntry]) {
        for e in entries {
            let mut argv = Vec::with_capacity(3 + e.fields.len() * 2);
            argv.push(b(b"XADD"));
            argv.push(self.tmp.clone());
            argv.push(id(e.id));
            for (f, v) in &e.fields {
                argv.push(f.clone());
                argv.push(v.clone());
            }
            if e.fields.is_empty() {
                // XADD needs a field; an entry without any cannot come from Redis.
                continue;
            }
            self.cmds.push(Cmd::new(argv));
            self.last_written = Some(e.id);
        }
    }

    /// The stream's last id and counters, its groups, consumers and pending entries (after
    /// all entries were written).
    pub fn stream_meta(&mut self, s: &Stream) {
        let tmp = self.tmp.clone();
        if self.last_written.is_none() {
            // No live entries: XADD + trim creates the key with the right last id.
            let mut argv = vec![b(b"XADD"), tmp.clone(), b(b"MAXLEN"), b(b"0")];
            let idv = if s.last_id == StreamId::default() {
                StreamId { ms: 0, seq: 1 }
            } else {
                s.last_id
            };
            argv.extend([id(idv), b(b"f"), b(b"v")]);
            self.cmds.push(Cmd::new(argv));
        }
        let mut setid = vec![b(b"XSETID"), tmp.clone(), id(s.last_id)];
        if self.opts.caps.stream_v2 {
            if let Some(n) = s.entries_added {
                setid.extend([b(b"ENTRIESADDED"), num(n.max(s.length))]);
            }
            if let Some(m) = s.max_deleted_id {
                setid.extend([b(b"MAXDELETEDID"), id(m.min(s.last_id))]);
            }
        }
        self.cmds.push(Cmd::new(setid));
        for g in &s.groups {
            let mut argv = vec![
                b(b"XGROUP"),
                b(b"CREATE"),
                tmp.clone(),
                g.name.clone(),
                id(g.last_id),
            ];
            if self.opts.caps.stream_v2 {
                if let Some(n) = g.entries_read.filter(|n| *n >= 0) {
                    argv.extend([b(b"ENTRIESREAD"), num(n)]);
                }
            }
            self.cmds.push(Cmd::new(argv));
            let pel: BTreeMap<StreamId, (u64, u64)> = g
                .pending
                .iter()
                .map(|p| (p.id, (p.delivery_time_ms, p.delivery_count)))
                .collect();
            for c in &g.consumers {
                if self.opts.caps.create_consumer {
                    self.cmds.push(Cmd::new(vec![
                        b(b"XGROUP"),
                        b(b"CREATECONSUMER"),
                        tmp.clone(),
                        g.name.clone(),
                        c.name.clone(),
                    ]));
                }
                // Same time and count share one XCLAIM.
                let mut by: BTreeMap<(u64, u64), Vec<StreamId>> = BTreeMap::new();
                for p in &c.pending {
                    let (t, n) = pel.get(p).copied().unwrap_or((0, 1));
                    by.entry((t, n)).or_default().push(*p);
                }
                for ((t, n), ids) in by {
                    for chunk in ids.chunks(self.opts.max_elements.max(1)) {
                        let mut argv = vec![
                            b(b"XCLAIM"),
                            tmp.clone(),
                            g.name.clone(),
                            c.name.clone(),
                            b(b"0"),
                        ];
                        argv.extend(chunk.iter().map(|i| id(*i)));
                        argv.extend([
                            b(b"TIME"),
                            num(t),
                            b(b"RETRYCOUNT"),
                            num(n),
                            b(b"FORCE"),
                            b(b"JUSTID"),
                        ]);
                        self.cmds.push(Cmd::new(argv));
                    }
                }
            }
        }
    }

    /// Ends the key: its TTL, then the rename into place. Returns all remaining commands.
    pub fn finish(mut self, expire_ms: Option<i64>) -> Vec<Cmd> {
        if let Some(ms) = expire_ms {
            self.cmds
                .push(Cmd::new(vec![b(b"PEXPIREAT"), self.tmp.clone(), num(ms)]));
        }
        let (name, check) = match (self.opts.overwrite, expire_ms.is_some()) {
            (true, false) => (b(b"RENAME"), Check::Ok),
            (true, true) => (b(b"RENAME"), Check::RenameExpiring),
            (false, false) => (b(b"RENAMENX"), Check::RenameNx),
            (false, true) => (b(b"RENAMENX"), Check::RenameNxExpiring),
        };
        self.cmds.push(Cmd {
            argv: vec![name, self.tmp.clone(), self.key.clone()],
            check,
        });
        if !self.opts.overwrite {
            // A refused RENAMENX leaves the temporary key: remove it (no-op otherwise).
            self.cmds.push(Cmd::new(vec![b(b"DEL"), self.tmp.clone()]));
        }
        self.cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_rdb::{Consumer, ConsumerGroup, PendingEntry};

    fn text(c: &Cmd) -> String {
        c.argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).replace('\0', "\\0"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn opts() -> RewriteOptions {
        let mut o = RewriteOptions::new(Capabilities::all(), false);
        o.max_elements = 2;
        o.max_bytes = 8;
        o
    }

    fn cmds(v: &Value, expire: Option<i64>, o: &RewriteOptions) -> Vec<String> {
        match rewrite_value(&Bytes::from_static(b"k"), v, expire, 0, o).unwrap() {
            Rewrite::Commands(c) => c.iter().map(text).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scores_round_trip() {
        for s in [
            0.1,
            1.5,
            -3.0,
            1e300,
            -2.5e-300,
            f64::MIN_POSITIVE,
            f64::MAX,
            1.0 / 3.0,
            123456789012345680.0,
            -0.0,
        ] {
            let t = format_score(s);
            assert_eq!(t.parse::<f64>().unwrap().to_bits(), s.to_bits(), "{t}");
        }
        assert_eq!(format_score(f64::INFINITY), "inf");
        assert_eq!(format_score(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_score(2.5), "2.5");
    }

    #[test]
    fn list_chunks_and_ttl() {
        let v = Value::List([&b"a"[..], b"b", b"c"].map(Bytes::from_static).to_vec());
        assert_eq!(
            cmds(&v, Some(5000), &opts()),
            [
                "DEL {k}k\\0ferry-rewrite",
                "RPUSH {k}k\\0ferry-rewrite a b",
                "RPUSH {k}k\\0ferry-rewrite c",
                "PEXPIREAT {k}k\\0ferry-rewrite 5000",
                "RENAMENX {k}k\\0ferry-rewrite k",
                "DEL {k}k\\0ferry-rewrite",
            ]
        );
        assert_eq!(
            rewrite_value(&Bytes::from_static(b"k"), &v, Some(5), 10, &opts()),
            Ok(Rewrite::Expired)
        );
    }

    #[test]
    fn big_string_is_appended() {
        let v = Value::String(Bytes::from_static(b"0123456789abcdefXYZ"));
        let mut o = opts();
        o.overwrite = true;
        assert_eq!(
            cmds(&v, None, &o)[1..],
            [
                "SETRANGE {k}k\\0ferry-rewrite 18 \\0",
                "SETRANGE {k}k\\0ferry-rewrite 0 01234567",
                "SETRANGE {k}k\\0ferry-rewrite 8 89abcdef",
                "SETRANGE {k}k\\0ferry-rewrite 16 XYZ",
                "RENAME {k}k\\0ferry-rewrite k",
            ]
        );
        // Parts of a string of unknown length are appended.
        let mut ch = Chunker::begin(&Bytes::from_static(b"k"), &o);
        ch.string_part(&Bytes::from_static(b"0123456789"));
        ch.string_part(&Bytes::from_static(b"XYZ"));
        assert_eq!(
            ch.finish(None).iter().map(text).collect::<Vec<_>>()[1..4],
            [
                "SET {k}k\\0ferry-rewrite 01234567",
                "APPEND {k}k\\0ferry-rewrite 89",
                "APPEND {k}k\\0ferry-rewrite XYZ",
            ]
        );
        // One that fits one command is one SET.
        assert_eq!(
            cmds(&Value::String(Bytes::from_static(b"abc")), None, &o)[1],
            "SET {k}k\\0ferry-rewrite abc"
        );
        assert_eq!(
            cmds(&Value::String(Bytes::new()), None, &o)[1],
            "SET {k}k\\0ferry-rewrite "
        );
    }

    #[test]
    fn hash_field_ttls() {
        let v = Value::HashWithTtl(vec![
            (Bytes::from_static(b"a"), Bytes::from_static(b"1"), Some(99)),
            (Bytes::from_static(b"b"), Bytes::from_static(b"2"), None),
        ]);
        let c = cmds(&v, None, &opts());
        assert_eq!(c[2], "HPEXPIREAT {k}k\\0ferry-rewrite 99 FIELDS 1 a");
        let mut o = opts();
        o.caps.hash_field_ttl = false;
        let err = rewrite_value(&Bytes::from_static(b"k"), &v, None, 0, &o).unwrap_err();
        assert!(err.reason.contains("7.4"), "{err:?}");
        o.skip_unsupported = true;
        assert!(matches!(
            rewrite_value(&Bytes::from_static(b"k"), &v, None, 0, &o),
            Ok(Rewrite::Skipped(_))
        ));
    }

    #[test]
    fn passed_field_ttls_are_not_written() {
        let k = Bytes::from_static(b"k");
        let v = Value::HashWithTtl(vec![
            (Bytes::from_static(b"a"), Bytes::from_static(b"1"), Some(99)),
            (Bytes::from_static(b"b"), Bytes::from_static(b"2"), None),
        ]);
        // At 99 field a is gone; what is left has no TTL, which any target holds.
        let mut o = opts();
        o.caps.hash_field_ttl = false;
        let Ok(Rewrite::Commands(c)) = rewrite_value(&k, &v, None, 99, &o) else {
            panic!("not rewritten")
        };
        let c: Vec<String> = c.iter().map(text).collect();
        assert_eq!(c[1], "HSET {k}k\\0ferry-rewrite b 2", "{c:?}");
        assert!(!c.iter().any(|c| c.contains("HPEXPIREAT")), "{c:?}");
        // Before 99 it is written with its TTL, and refused where TTLs cannot be held.
        assert!(rewrite_value(&k, &v, None, 98, &o).is_err());
        // A hash whose every field has passed is no key.
        let gone = Value::HashWithTtl(vec![(
            Bytes::from_static(b"a"),
            Bytes::from_static(b"1"),
            Some(5),
        )]);
        assert!(matches!(
            rewrite_value(&k, &gone, None, 5, &o),
            Ok(Rewrite::Expired)
        ));
    }

    #[test]
    fn stream_with_groups() {
        let id = |ms, seq| StreamId { ms, seq };
        let s = Stream {
            entries: vec![StreamEntry {
                id: id(1, 1),
                fields: vec![(Bytes::from_static(b"f"), Bytes::from_static(b"v"))],
            }],
            length: 1,
            last_id: id(5, 0),
            first_id: Some(id(1, 1)),
            max_deleted_id: Some(id(2, 0)),
            entries_added: Some(3),
            groups: vec![ConsumerGroup {
                name: Bytes::from_static(b"g"),
                last_id: id(1, 1),
                entries_read: Some(1),
                pending: vec![PendingEntry {
                    id: id(1, 1),
                    delivery_time_ms: 77,
                    delivery_count: 4,
                }],
                consumers: vec![Consumer {
                    name: Bytes::from_static(b"c"),
                    seen_time_ms: 0,
                    active_time_ms: None,
                    pending: vec![id(1, 1)],
                }],
            }],
        };
        let c = cmds(&Value::Stream(s.clone()), None, &opts());
        let t = "{k}k\\0ferry-rewrite";
        assert_eq!(
            c[1..c.len() - 2],
            [
                format!("XADD {t} 1-1 f v"),
                format!("XSETID {t} 5-0 ENTRIESADDED 3 MAXDELETEDID 2-0"),
                format!("XGROUP CREATE {t} g 1-1 ENTRIESREAD 1"),
                format!("XGROUP CREATECONSUMER {t} g c"),
                format!("XCLAIM {t} g c 0 1-1 TIME 77 RETRYCOUNT 4 FORCE JUSTID"),
            ]
        );
        let mut empty = s;
        empty.entries.clear();
        empty.groups.clear();
        let mut o = opts();
        o.caps = Capabilities {
            hash_field_ttl: false,
            stream_v2: false,
            create_consumer: false,
        };
        let c = cmds(&Value::Stream(empty), None, &o);
        assert_eq!(c[1], format!("XADD {t} MAXLEN 0 5-0 f v"));
        assert_eq!(c[2], format!("XSETID {t} 5-0"));
    }

    #[test]
    fn module_names() {
        // "mymodule1" version 3, as Redis' moduleTypeEncodeId computes it.
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for ch in b"mymodule1" {
            id = (id << 6) | CHARS.iter().position(|c| c == ch).unwrap() as u64;
        }
        id = (id << 10) | 3;
        assert_eq!(module_name(id), "mymodule1");
    }
}
