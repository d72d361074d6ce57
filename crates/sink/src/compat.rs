//! Writing any source version into any target version: which snapshot entries the target
//! can `RESTORE` (and with which payload version), which must be rewritten into plain
//! commands ([`crate::rewrite`]), and which replicated commands an older target lacks.

use bytes::Bytes;
use ferry_core::Event;
use ferry_rdb::consts::*;
use tracing::{info, warn};

use crate::error::TargetError;
use crate::failed::Failures;
use crate::rewrite::{self, Capabilities, Chunker, Cmd, Rewrite, RewriteOptions};
use crate::version::ServerVersion;
use ferry_rdb::{Dialect, Value};

/// Default size above which a value is written as chunks of commands instead of one
/// `RESTORE` (a giant `RESTORE` blocks the target and needs the whole value in one buffer).
pub const DEFAULT_BIG_VALUE_BYTES: usize = 8 * 1024 * 1024;

/// The oldest RDB version that knows value type `t` (from Redis' `rdb.h` history).
pub fn type_min_rdb(t: u8) -> u16 {
    match t {
        RDB_TYPE_STRING..=RDB_TYPE_HASH => 1,
        RDB_TYPE_HASH_ZIPMAP..=RDB_TYPE_HASH_ZIPLIST => 4,
        RDB_TYPE_LIST_QUICKLIST => 7,
        RDB_TYPE_ZSET_2 | RDB_TYPE_MODULE_2 => 8,
        RDB_TYPE_STREAM_LISTPACKS => 9,
        RDB_TYPE_HASH_LISTPACK..=RDB_TYPE_STREAM_LISTPACKS_2 => 10,
        RDB_TYPE_SET_LISTPACK | RDB_TYPE_STREAM_LISTPACKS_3 => 11,
        RDB_TYPE_HASH_METADATA_PRE_GA..=RDB_TYPE_HASH_LISTPACK_EX => 12,
        _ => u16::MAX,
    }
}

/// The oldest RDB version that knows value type `t` in the numbering `dialect`: Valkey's
/// hash with field TTLs needs Valkey's own RDB 80.
pub fn type_min_rdb_in(dialect: Dialect, t: u8) -> u16 {
    if dialect.is_valkey_hash2(t) {
        VALKEY_MIN_RDB_VERSION as u16
    } else {
        type_min_rdb(t)
    }
}

/// The newest payload version `target` accepts in a `RESTORE` of a snapshot in
/// `source_rdb`. Valkey reads Redis RDB up to 11 only (Redis 7.4+ reused numbers Valkey did
/// not adopt); Valkey 9 also reads its own `VALKEY080` payloads.
pub fn restore_rdb_limit(target: &ServerVersion, source_rdb: u16) -> u16 {
    if target.product == "valkey" {
        if target.major >= 9 && source_rdb == 80 {
            80
        } else {
            11
        }
    } else {
        target.max_rdb_version()
    }
}

/// What to do with an event.
#[derive(Debug)]
pub(crate) enum Routed {
    Pass(Event),
    /// A snapshot key written as commands; `completes_key` when these are its last.
    Rewrite {
        db: u32,
        key: Bytes,
        cmds: Vec<Cmd>,
        completes_key: bool,
    },
    Drop,
}

/// Per-writer state of the version adaptation.
#[derive(Debug)]
pub(crate) struct Compat {
    target: Option<ServerVersion>,
    opts: RewriteOptions,
    big_value_bytes: usize,
    /// Payload version written in `RESTORE`s (the source's, lowered to what the target reads).
    restore_rdb: u16,
    /// Whose numbering the snapshot's type bytes follow.
    dialect: Dialect,
    addr: String,
    pub rewritten: u64,
    pub skipped: u64,
    /// The big value being written chunk by chunk.
    big: Option<BigKey>,
    /// Where a replicated command the target cannot run goes (see [`crate::failed`]).
    pub(crate) failures: Option<Failures>,
    /// Where what the target cannot hold goes (module aux data): an error, or under
    /// `--skip-unsupported` a warning and a count.
    pub(crate) unsupported: Option<Failures>,
}

/// A big value in progress; `chunker` is `None` while its chunks are being dropped
/// (expired or skipped).
#[derive(Debug)]
struct BigKey {
    db: u32,
    key: Bytes,
    value_type: u8,
    expire_ms: Option<i64>,
    chunker: Option<Chunker>,
    /// Elements written so far: a hash whose every field's TTL had passed has none.
    written: u64,
}

impl Compat {
    /// The one set-up of both writers: the target's version, the job's options, and where
    /// refusals go (`--skip-failed-commands` for commands; what the target can never hold
    /// is an error, or skipped and counted under `--skip-unsupported`).
    pub(crate) fn for_writer(
        version: Option<ServerVersion>,
        opts: &crate::writer::WriterOptions,
        stats: &std::sync::Arc<ferry_core::ShardStats>,
        addr: &str,
    ) -> Compat {
        let mut c = Compat::new(
            version,
            opts.overwrite,
            opts.skip_unsupported,
            opts.big_value_bytes,
            addr,
        );
        c.failures = opts
            .skip_failed_commands
            .then(|| Failures::new(opts, stats));
        c.unsupported = Some(Failures {
            skip: false,
            ..Failures::new(opts, stats)
        });
        c
    }

    pub fn new(
        target: Option<ServerVersion>,
        overwrite: bool,
        skip_unsupported: bool,
        big_value_bytes: usize,
        addr: &str,
    ) -> Compat {
        let caps = target
            .as_ref()
            .map(Capabilities::of)
            .unwrap_or_else(Capabilities::all);
        let mut opts = RewriteOptions::new(caps, overwrite);
        opts.skip_unsupported = skip_unsupported;
        Compat {
            target,
            opts,
            big_value_bytes,
            restore_rdb: 0,
            dialect: Dialect::Redis,
            addr: addr.to_string(),
            rewritten: 0,
            skipped: 0,
            big: None,
            failures: None,
            unsupported: None,
        }
    }

    pub fn route(&mut self, ev: Event) -> Result<Routed, TargetError> {
        match ev {
            Event::SnapshotHeader { rdb_version } => {
                let limit = self
                    .target
                    .as_ref()
                    .map(|t| restore_rdb_limit(t, rdb_version))
                    .unwrap_or(rdb_version);
                self.restore_rdb = rdb_version.min(limit);
                self.dialect = Dialect::of_rdb_version(u32::from(rdb_version));
                if self.restore_rdb < rdb_version {
                    if let Some(t) = &self.target {
                        info!(target = %self.addr, "snapshot is RDB {rdb_version}, {t} reads RDB {limit}: values of newer encodings are rewritten into commands");
                    }
                }
                Ok(Routed::Pass(Event::SnapshotHeader {
                    rdb_version: self.restore_rdb,
                }))
            }
            // A chained migration's source holds ferry's own checkpoints: never data.
            Event::Entry(e) if crate::checkpoint::is_checkpoint_key(&e.key) => Ok(Routed::Drop),
            Event::Entry(e)
                if type_min_rdb_in(self.dialect, e.value_type) > self.restore_rdb
                    || e.payload.len() > self.big_value_bytes
                    || self.has_passed_fields(e.value_type, &e.payload) =>
            {
                let value = ferry_rdb::decode_value_in(self.dialect, e.value_type, &e.payload)
                    .map_err(|err| {
                        self.incompatible(format!(
                            "cannot decode key {:?} to rewrite it for the target: {err}",
                            lossy(&e.key)
                        ))
                    })?;
                let rw = rewrite::rewrite_value(&e.key, &value, e.expire_ms, now_ms(), &self.opts)
                    .map_err(|u| {
                        self.incompatible(format!(
                            "key {:?} cannot be written to the target{}: {}; pass --skip-unsupported to skip such keys",
                            lossy(&u.key),
                            self.target_name(),
                            u.reason
                        ))
                    })?;
                match rw {
                    Rewrite::Commands(cmds) => {
                        self.rewritten += 1;
                        Ok(Routed::Rewrite {
                            db: e.db as u32,
                            key: e.key,
                            cmds,
                            completes_key: true,
                        })
                    }
                    Rewrite::Skipped(u) => {
                        self.skipped += 1;
                        warn!(target = %self.addr, key = %lossy(&u.key), "skipped: {}", u.reason);
                        Ok(Routed::Drop)
                    }
                    Rewrite::Expired => Ok(Routed::Drop),
                }
            }
            Event::Command { db, argv, offset } => {
                let argv = exact_trim(argv, self.target.as_ref().map(redis_level));
                let argv = match self.restore_for_target(&argv) {
                    RestoreFix::AsIs => argv,
                    RestoreFix::Replace(a) => a,
                    RestoreFix::Gone => return Ok(Routed::Pass(Event::Offset { offset, db })),
                    RestoreFix::Refuse(message) => {
                        let e = TargetError::CommandFailed {
                            addr: self.addr.clone(),
                            command: "RESTORE".into(),
                            key: lossy(&argv[1]),
                            db,
                            offset,
                            message,
                        };
                        return match &self.failures {
                            Some(f) => f
                                .handle(e)
                                .map(|()| Routed::Pass(Event::Offset { offset, db })),
                            None => Err(e),
                        };
                    }
                };
                let argv = match &self.target {
                    Some(t) => adapt_command(t, argv).map_err(|m| self.incompatible(m))?,
                    None => argv,
                };
                // What translation left that the target cannot run.
                if let Err(e) = self.check_arguments(db, &argv, offset) {
                    return match &self.failures {
                        // Gone past: its bytes still move the checkpoint.
                        Some(f) => f
                            .handle(e)
                            .map(|()| Routed::Pass(Event::Offset { offset, db })),
                        None => Err(e),
                    };
                }
                Ok(Routed::Pass(Event::Command { db, argv, offset }))
            }
            Event::ModuleAux { module_id } => {
                let e = TargetError::Unsupported {
                    addr: self.addr.clone(),
                    what: format!(
                        "the snapshot's aux data of module {} (id {module_id})",
                        ferry_rdb::module_name(module_id)
                    ),
                    message: "no command writes module aux data, and a Redis without the module refuses such an RDB".into(),
                };
                match &self.unsupported {
                    Some(f) => f.handle(e).map(|()| Routed::Drop),
                    None => Err(e),
                }
            }
            Event::BigEntryStart(e) => {
                let live = !matches!(e.expire_ms, Some(ms) if ms <= now_ms())
                    && !crate::checkpoint::is_checkpoint_key(&e.key);
                let chunker = live.then(|| {
                    let mut ch = Chunker::begin(&e.key, &self.opts);
                    if let Some(n) = e.big_string_len() {
                        ch.string_len(n);
                    }
                    ch
                });
                let mut big = BigKey {
                    db: e.db as u32,
                    key: e.key,
                    value_type: e.value_type,
                    expire_ms: e.expire_ms,
                    chunker,
                    written: 0,
                };
                let cmds = big.chunker.as_mut().map(Chunker::take).unwrap_or_default();
                let routed = self.big_commands(&big, cmds, false);
                self.big = Some(big);
                Ok(routed)
            }
            Event::BigEntryChunk { payload } => {
                let Some(mut big) = self.big.take() else {
                    return Err(
                        self.incompatible("a chunk of a big value came without its start".into())
                    );
                };
                let routed = match big.chunker.as_mut() {
                    None => Routed::Drop,
                    Some(ch) => {
                        let value =
                            ferry_rdb::decode_value_in(self.dialect, big.value_type, &payload)
                                .map_err(|err| {
                                    self.incompatible(format!(
                                        "cannot decode a chunk of key {:?}: {err}",
                                        lossy(&big.key)
                                    ))
                                })?;
                        let value =
                            rewrite::without_passed_fields(&value, now_ms()).unwrap_or(value);
                        match rewrite::supported(&big.key, &value, &self.opts) {
                            Ok(()) => {
                                big.written += elements(&value);
                                add_chunk(ch, &value);
                                let cmds = ch.take();
                                self.big_commands(&big, cmds, false)
                            }
                            Err(u) if self.opts.skip_unsupported => {
                                // The value only ever lived under its temporary name.
                                self.skipped += 1;
                                warn!(target = %self.addr, key = %lossy(&u.key), "skipped: {}", u.reason);
                                let tmp = rewrite::tmp_key(&big.key);
                                big.chunker = None;
                                let del = Cmd { argv: vec![Bytes::from_static(b"DEL"), tmp], check: rewrite::Check::Ok };
                                self.big_commands(&big, vec![del], false)
                            }
                            Err(u) => {
                                return Err(self.incompatible(format!(
                                    "key {:?} cannot be written to the target{}: {}; pass --skip-unsupported to skip such keys",
                                    lossy(&u.key),
                                    self.target_name(),
                                    u.reason
                                )))
                            }
                        }
                    }
                };
                self.big = Some(big);
                Ok(routed)
            }
            Event::BigEntryEnd { payload } => {
                let Some(mut big) = self.big.take() else {
                    return Err(
                        self.incompatible("the end of a big value came without its start".into())
                    );
                };
                let Some(mut ch) = big.chunker.take() else {
                    return Ok(Routed::Drop);
                };
                if let Some(p) = payload {
                    match ferry_rdb::decode_value_in(self.dialect, big.value_type, &p) {
                        Ok(Value::Stream(meta)) => ch.stream_meta(&meta),
                        Ok(_) => {}
                        Err(err) => {
                            return Err(self.incompatible(format!(
                                "cannot decode the metadata of stream {:?}: {err}",
                                lossy(&big.key)
                            )))
                        }
                    }
                }
                if big.written == 0 {
                    // Nothing was left to write: no key (and no rename of a key never made).
                    let del = Cmd {
                        argv: vec![Bytes::from_static(b"DEL"), rewrite::tmp_key(&big.key)],
                        check: rewrite::Check::Ok,
                    };
                    return Ok(self.big_commands(&big, vec![del], true));
                }
                self.rewritten += 1;
                let cmds = ch.finish(big.expire_ms);
                Ok(self.big_commands(&big, cmds, true))
            }
            ev => Ok(Routed::Pass(ev)),
        }
    }

    /// Refuses, before it is sent, a replicated command using an argument the target's
    /// version lacks ([`crate::compat_args`]): inside ferry's transaction it would fail at
    /// `EXEC` after the rest of the batch and its checkpoint are applied.
    pub(crate) fn check_arguments(
        &self,
        db: u32,
        argv: &[Bytes],
        offset: u64,
    ) -> Result<(), TargetError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        let Some((arg, since)) = crate::compat_args::unsupported_argument(redis_level(t), argv)
        else {
            return Ok(());
        };
        Err(TargetError::CommandFailed {
            addr: self.addr.clone(),
            command: lossy(&argv[0]).to_uppercase(),
            key: argv.get(1).map(|k| lossy(k)).unwrap_or_default(),
            db,
            offset,
            message: format!(
                "its argument {arg} needs Redis {}.{}+, the target is {t}; upgrade the target",
                since.0, since.1
            ),
        })
    }

    /// A replicated `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` (a
    /// `MIGRATE` into the source, a client's `RESTORE`) whose payload the target cannot
    /// read, made readable as snapshot keys are: the payload re-framed with the target's
    /// RDB version when its encoding is one the target knows, else the value rewritten
    /// into commands run as one script.
    fn restore_for_target(&mut self, argv: &[Bytes]) -> RestoreFix {
        let Some(t) = &self.target else {
            return RestoreFix::AsIs;
        };
        if argv.len() < 4 || !argv[0].eq_ignore_ascii_case(b"RESTORE") {
            return RestoreFix::AsIs;
        }
        let Ok((value_type, body, version)) = ferry_rdb::parse_dump_payload(&argv[3]) else {
            return RestoreFix::AsIs; // the target refuses it by name
        };
        let limit = restore_rdb_limit(t, version);
        let dialect = Dialect::of_rdb_version(u32::from(version));
        if version <= limit {
            return RestoreFix::AsIs;
        }
        let mut out = argv.to_vec();
        if type_min_rdb_in(dialect, value_type) <= limit {
            let mut p = bytes::BytesMut::new();
            ferry_rdb::write_dump_payload(&mut p, value_type, body, limit);
            out[3] = p.freeze();
            return RestoreFix::Replace(out);
        }
        let key = argv[1].clone();
        let flag = |f: &str| {
            argv[4..]
                .iter()
                .any(|a| a.eq_ignore_ascii_case(f.as_bytes()))
        };
        let ttl: i64 = std::str::from_utf8(&argv[2])
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let now = now_ms();
        let expire_ms = match ttl {
            0 => None,
            t if flag("ABSTTL") => Some(t),
            t => Some(now + t),
        };
        let value = match ferry_rdb::decode_value_in(dialect, value_type, body) {
            Ok(v) => v,
            Err(e) => {
                return RestoreFix::Refuse(format!(
                    "its payload (RDB {version}) is newer than the target ({t}) reads, and cannot be decoded to rewrite it: {e}"
                ))
            }
        };
        let mut opts = self.opts;
        opts.overwrite = flag("REPLACE");
        match rewrite::rewrite_value(&key, &value, expire_ms, now, &opts) {
            Ok(Rewrite::Commands(cmds)) => {
                self.rewritten += 1;
                let tmp = rewrite::tmp_key(&key);
                let cmds = cmds.into_iter().map(|c| c.argv).collect();
                RestoreFix::Replace(crate::translate::rebuild(&key, &tmp, cmds))
            }
            Ok(Rewrite::Expired) => RestoreFix::Gone,
            Ok(Rewrite::Skipped(u)) => {
                self.skipped += 1;
                warn!(target = %self.addr, key = %lossy(&u.key), "replicated RESTORE skipped: {}", u.reason);
                RestoreFix::Gone
            }
            Err(u) => RestoreFix::Refuse(format!(
                "the target ({t}) cannot hold its value: {}; pass --skip-unsupported to skip such keys",
                u.reason
            )),
        }
    }

    /// A Valkey hash with field TTLs holding a field whose TTL has passed: its payload as is
    /// would plant that field (Valkey loads it, to expire it later), so it is written as
    /// commands without it.
    fn has_passed_fields(&self, t: u8, payload: &[u8]) -> bool {
        if !self.dialect.is_valkey_hash2(t) {
            return false;
        }
        let now = now_ms();
        match ferry_rdb::decode_value_in(self.dialect, t, payload) {
            Ok(v) => rewrite::without_passed_fields(&v, now).is_some(),
            // Rewriting reports it by name.
            Err(_) => true,
        }
    }

    fn big_commands(&self, big: &BigKey, cmds: Vec<Cmd>, completes_key: bool) -> Routed {
        if cmds.is_empty() {
            return Routed::Drop;
        }
        Routed::Rewrite {
            db: big.db,
            key: big.key.clone(),
            cmds,
            completes_key,
        }
    }

    fn target_name(&self) -> String {
        self.target
            .as_ref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default()
    }

    fn incompatible(&self, message: String) -> TargetError {
        TargetError::Incompatible {
            addr: self.addr.clone(),
            message,
        }
    }
}

/// What a replicated `RESTORE` becomes for the target.
enum RestoreFix {
    AsIs,
    Replace(Vec<Bytes>),
    /// Nothing to write: a past TTL, or a value skipped with `--skip-unsupported`.
    Gone,
    /// The target cannot hold it: why.
    Refuse(String),
}

/// How many elements a decoded chunk holds (what matters is whether it is none).
fn elements(v: &Value) -> u64 {
    match v {
        Value::List(v) | Value::Set(v) => v.len() as u64,
        Value::SortedSet(v) => v.len() as u64,
        Value::Hash(v) => v.len() as u64,
        Value::HashWithTtl(v) => v.len() as u64,
        Value::Stream(s) => s.entries.len().max(1) as u64,
        Value::String(_) | Value::Module { .. } => 1,
    }
}

/// Feeds one decoded chunk of a big value to its chunker.
fn add_chunk(ch: &mut Chunker, v: &Value) {
    match v {
        Value::String(s) => ch.string_part(s),
        Value::List(v) => ch.list(v),
        Value::Set(v) => ch.set(v),
        Value::SortedSet(v) => ch.zset(v),
        Value::Hash(v) => ch.hash(v),
        Value::HashWithTtl(v) => ch.hash_with_ttl(v),
        Value::Stream(s) => ch.stream_entries(&s.entries),
        Value::Module { .. } => {}
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// The Redis version whose command set `t` has (Valkey forked from Redis 7.2).
fn redis_level(t: &ServerVersion) -> (u32, u32) {
    if t.product == "valkey" {
        (7, 2)
    } else {
        (t.major, t.minor)
    }
}

/// Commands that appeared in a Redis version, and for Valkey the first major that has them
/// when it is not in Valkey's Redis 7.2 base.
const INTRODUCED: &[(&str, (u32, u32), u32)] = &[
    ("HEXPIRE", (7, 4), 9),
    ("HPEXPIRE", (7, 4), 9),
    ("HEXPIREAT", (7, 4), 9),
    ("HPEXPIREAT", (7, 4), 9),
    ("HPERSIST", (7, 4), 9),
    ("HSETEX", (8, 0), 9),
    ("HGETEX", (8, 0), 9),
    ("HGETDEL", (8, 0), 9),
    ("LMPOP", (7, 0), 0),
    ("BLMPOP", (7, 0), 0),
    ("ZMPOP", (7, 0), 0),
    ("BZMPOP", (7, 0), 0),
    ("FUNCTION", (7, 0), 0),
    ("FCALL", (7, 0), 0),
    ("COPY", (6, 2), 0),
    ("GETDEL", (6, 2), 0),
    ("GETEX", (6, 2), 0),
    ("LMOVE", (6, 2), 0),
    ("BLMOVE", (6, 2), 0),
    ("ZRANGESTORE", (6, 2), 0),
    ("ZDIFFSTORE", (6, 2), 0),
    ("GEOSEARCHSTORE", (6, 2), 0),
    ("XAUTOCLAIM", (6, 2), 0),
];

/// Makes a replicated command acceptable to an older target where that is easy, or says
/// which command the target lacks.
///
/// Translated exactly by [`crate::translate`] (scripts or older commands): `ZADD … GT|LT`,
/// `ZDIFFSTORE`, `GEOSEARCHSTORE … BYRADIUS`, `XGROUP CREATECONSUMER` before 6.2, the
/// replicated `XCLAIM` (which drops deleted entries from the pending list) before 7.0.
/// Translated: `SET … PXAT|EXAT` → `SET … PX` (relative to now) and `SET … GET` → `SET`
/// before 6.2; `LMOVE src dst RIGHT LEFT` → `RPOPLPUSH` before 6.2; the stream counters
/// (`XSETID … ENTRIESADDED|MAXDELETEDID`, `XGROUP CREATE|SETID … ENTRIESREAD`) dropped before
/// 7.0 (the older target has nowhere to keep them), `EXPIRE`-family `NX|XX|GT|LT` dropped
/// before 7.0. A command newer than the target is an error naming it; arguments newer than
/// the target are refused afterwards by [`crate::compat_args`].
pub fn adapt_command(t: &ServerVersion, mut argv: Vec<Bytes>) -> Result<Vec<Bytes>, String> {
    let Some(name) = argv.first().map(|n| n.to_ascii_uppercase()) else {
        return Ok(argv);
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let level = redis_level(t);
    let valkey = t.product == "valkey";
    let lacks = |name: &str, since: (u32, u32)| {
        format!(
            "the source replicated {name}, which the target ({t}) does not have (Redis {}.{}+); upgrade the target",
            since.0, since.1
        )
    };
    // Exact translations into what the older target has (see `crate::translate`).
    let translated = match name.as_str() {
        "ZADD" if level < (6, 2) => crate::translate::zadd_gt_lt(&argv),
        "ZDIFFSTORE" if level < (6, 2) => crate::translate::zdiffstore(&argv),
        "GEOSEARCHSTORE" if level < (6, 2) => crate::translate::geosearchstore(&argv),
        "XGROUP" if level < (6, 2) => crate::translate::createconsumer(&argv),
        "XCLAIM" if level < (7, 0) => crate::translate::xclaim_deleted(&argv),
        _ => None,
    };
    if let Some(t) = translated {
        return Ok(t);
    }
    if name == "XGROUP"
        && level < (6, 2)
        && argv
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"CREATECONSUMER"))
    {
        return Err(lacks("XGROUP CREATECONSUMER", (6, 2)));
    }
    if let Some((_, since, valkey_major)) = INTRODUCED.iter().find(|(n, ..)| *n == name) {
        let has = if valkey && *valkey_major > 0 {
            t.major >= *valkey_major
        } else {
            level >= *since
        };
        if !has {
            if name == "LMOVE"
                && argv.len() == 5
                && argv[3].eq_ignore_ascii_case(b"RIGHT")
                && argv[4].eq_ignore_ascii_case(b"LEFT")
            {
                argv.truncate(3);
                argv[0] = Bytes::from_static(b"RPOPLPUSH");
                return Ok(argv);
            }
            return Err(lacks(&name, *since));
        }
        return Ok(argv);
    }
    match name.as_str() {
        "SET" if level < (6, 2) && argv.len() > 3 => {
            let mut out = argv[..3].to_vec();
            let mut i = 3;
            while i < argv.len() {
                let opt = argv[i].to_ascii_uppercase();
                match opt.as_slice() {
                    b"GET" => {}
                    b"PXAT" | b"EXAT" => {
                        let at = argv
                            .get(i + 1)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.parse::<i64>().ok())
                            .ok_or_else(|| format!("SET with a malformed {}", lossy(&opt)))?;
                        let at_ms = if opt == b"EXAT" { at * 1000 } else { at };
                        let rel = (at_ms - now_ms()).max(1);
                        out.push(Bytes::from_static(b"PX"));
                        out.push(Bytes::from(rel.to_string()));
                        i += 1;
                    }
                    b"KEEPTTL" if level < (6, 0) => return Err(lacks("SET … KEEPTTL", (6, 0))),
                    _ => {
                        out.push(argv[i].clone());
                        if matches!(opt.as_slice(), b"EX" | b"PX") {
                            if let Some(v) = argv.get(i + 1) {
                                out.push(v.clone());
                            }
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            Ok(out)
        }
        // The source replicates `EXPIRE … NX|XX|GT|LT` (as `PEXPIREAT k ms FLAG`) only when
        // the condition held and the TTL was set, so without the flag it is the same write.
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT"
            if level < (7, 0)
                && argv.len() == 4
                && [b"NX".as_ref(), b"XX", b"GT", b"LT"]
                    .iter()
                    .any(|f| argv[3].eq_ignore_ascii_case(f)) =>
        {
            argv.truncate(3);
            Ok(argv)
        }
        "XSETID" if level < (7, 0) => Ok(strip_options(
            argv,
            3,
            &[b"ENTRIESADDED".as_ref(), b"MAXDELETEDID"],
        )),
        "XGROUP" if level < (7, 0) => Ok(strip_options(argv, 5, &[b"ENTRIESREAD".as_ref()])),
        _ => Ok(argv),
    }
}

/// `XADD`/`XTRIM` as the source replicates an approximate trim: `MAXLEN|MINID = n LIMIT l`,
/// the exact result of the source's trim, with the `LIMIT` only a replica accepts (a master
/// refuses `LIMIT` without `~` from any client). Without `LIMIT` it is the same write on
/// every target; before 6.2 (`level`), which has no `=`, the `=` goes too.
pub fn exact_trim(mut argv: Vec<Bytes>, level: Option<(u32, u32)>) -> Vec<Bytes> {
    let Some(name) = argv.first() else {
        return argv;
    };
    let xadd = name.eq_ignore_ascii_case(b"XADD");
    if !xadd && !name.eq_ignore_ascii_case(b"XTRIM") {
        return argv;
    }
    let is = |a: &Bytes, t: &str| a.eq_ignore_ascii_case(t.as_bytes());
    let mut i = 2;
    if xadd && argv.get(i).is_some_and(|a| is(a, "NOMKSTREAM")) {
        i += 1;
    }
    if !argv
        .get(i)
        .is_some_and(|a| is(a, "MAXLEN") || is(a, "MINID"))
    {
        return argv;
    }
    i += 1;
    let op = i;
    let approx = match argv.get(op) {
        Some(a) if is(a, "~") => {
            i += 1;
            true
        }
        Some(a) if is(a, "=") => {
            i += 1;
            false
        }
        _ => false,
    };
    i += 1; // the threshold
    if !approx && argv.get(i).is_some_and(|a| is(a, "LIMIT")) && argv.len() > i + 1 {
        argv.drain(i..i + 2);
    }
    if level.is_some_and(|l| l < (6, 2)) && argv.get(op).is_some_and(|a| is(a, "=")) {
        argv.remove(op);
    }
    argv
}

/// Drops `opt value` pairs named in `opts` from `argv[from..]`.
fn strip_options(argv: Vec<Bytes>, from: usize, opts: &[&[u8]]) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(argv.len());
    let mut skip = false;
    for (i, a) in argv.into_iter().enumerate() {
        if skip {
            skip = false;
            continue;
        }
        if i >= from && opts.iter().any(|o| a.eq_ignore_ascii_case(o)) {
            skip = true;
            continue;
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(product: &str, major: u32, minor: u32) -> ServerVersion {
        ServerVersion {
            product: product.into(),
            major,
            minor,
            patch: 0,
        }
    }

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|p| Bytes::from(p.to_string())).collect()
    }

    fn text(a: &[Bytes]) -> String {
        a.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn exact_trims_lose_their_limit() {
        let t = |s: &str, level| text(&exact_trim(args(s), level));
        let new = Some((7, 0));
        assert_eq!(
            t("xadd s MAXLEN = 3 LIMIT 1 1-1 a 4", new),
            "xadd s MAXLEN = 3 1-1 a 4"
        );
        assert_eq!(
            t("XADD s NOMKSTREAM MINID = 5-0 LIMIT 100 * f v", None),
            "XADD s NOMKSTREAM MINID = 5-0 * f v"
        );
        assert_eq!(
            t("XTRIM s MAXLEN = 70 LIMIT 30", new),
            "XTRIM s MAXLEN = 70"
        );
        // An approximate trim keeps its LIMIT; without one there is nothing to drop.
        assert_eq!(
            t("XTRIM s MAXLEN ~ 70 LIMIT 30", new),
            "XTRIM s MAXLEN ~ 70 LIMIT 30"
        );
        assert_eq!(
            t("XADD s MAXLEN 5 * LIMIT 3", new),
            "XADD s MAXLEN 5 * LIMIT 3"
        );
        assert_eq!(t("XADD s LIMIT 5 * f v", new), "XADD s LIMIT 5 * f v");
        // Before 6.2 the `=` goes too.
        assert_eq!(
            t("XADD s MAXLEN = 3 LIMIT 1 1-1 a 4", Some((6, 0))),
            "XADD s MAXLEN 3 1-1 a 4"
        );
        assert_eq!(t("XTRIM s MAXLEN = 3", Some((5, 0))), "XTRIM s MAXLEN 3");
        assert_eq!(
            t("SET s MAXLEN = 3 LIMIT 1", new),
            "SET s MAXLEN = 3 LIMIT 1"
        );
    }

    #[test]
    fn restore_limits() {
        assert_eq!(restore_rdb_limit(&v("valkey", 9, 0), 12), 11);
        assert_eq!(restore_rdb_limit(&v("valkey", 9, 0), 80), 80);
        assert_eq!(restore_rdb_limit(&v("redis", 6, 0), 12), 9);
        assert_eq!(type_min_rdb(RDB_TYPE_STRING), 1);
        assert_eq!(type_min_rdb(RDB_TYPE_HASH_LISTPACK), 10);
        assert_eq!(type_min_rdb(RDB_TYPE_HASH_LISTPACK_EX), 12);
        assert_eq!(type_min_rdb(200), u16::MAX);
        assert_eq!(type_min_rdb_in(Dialect::Valkey, RDB_TYPE_VALKEY_HASH_2), 80);
        assert_eq!(
            type_min_rdb_in(Dialect::Redis, RDB_TYPE_HASH_METADATA_PRE_GA),
            12
        );
        assert_eq!(type_min_rdb_in(Dialect::Valkey, RDB_TYPE_HASH_LISTPACK), 10);
    }

    /// A replicated `RESTORE` of a Valkey 9 hash with field TTLs (type 22, payload version
    /// 80): as is into Valkey 9; into Redis 8.2 (which would read type 22 as its own
    /// pre-release layout) rewritten with its field's time; refused into Redis 7.0.
    #[test]
    fn replicated_restore_of_a_valkey_hash_with_field_ttls() {
        let mut body = vec![2u8];
        for (f, val, t) in [(b"a", b"1", 4_102_444_800_000i64), (b"b", b"2", -1)] {
            body.extend_from_slice(&[1, f[0], 1, val[0]]);
            body.extend_from_slice(&t.to_le_bytes());
        }
        let mut dump = bytes::BytesMut::new();
        ferry_rdb::write_dump_payload(&mut dump, RDB_TYPE_VALKEY_HASH_2, &body, 80);
        let argv = vec![
            Bytes::from_static(b"RESTORE"),
            Bytes::from_static(b"h"),
            Bytes::from_static(b"0"),
            dump.freeze(),
        ];
        let route = |t: ServerVersion| {
            let mut c = Compat::new(Some(t), false, false, DEFAULT_BIG_VALUE_BYTES, "t");
            c.restore_for_target(&argv)
        };
        assert!(matches!(route(v("valkey", 9, 0)), RestoreFix::AsIs));
        let RestoreFix::Replace(script) = route(v("redis", 8, 2)) else {
            panic!("not rewritten for Redis 8.2")
        };
        let s = text(&script);
        assert!(s.starts_with("EVAL"), "{s}");
        assert!(s.contains("HSET") && s.contains("a 1 b 2"), "{s}");
        assert!(
            s.contains("HPEXPIREAT") && s.contains("4102444800000 FIELDS 1 a"),
            "{s}"
        );
        let RestoreFix::Refuse(why) = route(v("redis", 7, 0)) else {
            panic!("not refused for Redis 7.0")
        };
        assert!(why.contains("hash fields with TTLs"), "{why}");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 500,
            ..ProptestConfig::default()
        })]

        /// A replicated `RESTORE` of any payload (a valid checksum over random bytes, of any
        /// type and version, with a huge length inserted or not) into any target is passed
        /// on, rewritten or refused: never a panic.
        #[test]
        fn replicated_restore_of_any_payload(
            t in 0u8..=30,
            version in prop_oneof![Just(9u16), Just(11), Just(12), Just(80)],
            body in proptest::collection::vec(any::<u8>(), 0..200),
            huge in any::<bool>(),
            target in 0usize..5,
        ) {
            let mut body = body;
            if huge {
                body.splice(0..0, [0x80, 0xff, 0xff, 0xff, 0xff]);
            }
            let mut dump = bytes::BytesMut::new();
            ferry_rdb::write_dump_payload(&mut dump, t, &body, version);
            let argv = vec![
                Bytes::from_static(b"RESTORE"),
                Bytes::from_static(b"k"),
                Bytes::from_static(b"0"),
                dump.freeze(),
            ];
            let t = [v("redis", 6, 0), v("redis", 7, 0), v("redis", 8, 2), v("valkey", 8, 1), v("valkey", 9, 0)];
            let mut c = Compat::new(Some(t[target].clone()), false, false, DEFAULT_BIG_VALUE_BYTES, "t");
            let _ = c.restore_for_target(&argv);
        }
    }

    #[test]
    fn commands_for_old_targets() {
        let old = v("redis", 6, 0);
        let err = adapt_command(&old, args("HEXPIRE h 10 FIELDS 1 f")).unwrap_err();
        assert!(err.contains("HEXPIRE") && err.contains("7.4"), "{err}");
        assert!(adapt_command(&v("valkey", 9, 0), args("HEXPIRE h 10 FIELDS 1 f")).is_ok());
        assert!(adapt_command(&v("valkey", 8, 1), args("HPEXPIREAT h 10 FIELDS 1 f")).is_err());
        assert_eq!(
            text(&adapt_command(&old, args("lmove a b RIGHT LEFT")).unwrap()),
            "RPOPLPUSH a b"
        );
        assert!(adapt_command(&old, args("LMOVE a b LEFT LEFT")).is_err());
        let set = adapt_command(&old, args("SET k v PXAT 99999999999999 GET")).unwrap();
        assert_eq!(text(&set[..4]), "SET k v PX");
        assert_eq!(set.len(), 5);
        assert_eq!(
            text(&adapt_command(&old, args("SET k v EX 10 NX")).unwrap()),
            "SET k v EX 10 NX"
        );
        assert_eq!(
            text(
                &adapt_command(&old, args("XSETID s 5-0 ENTRIESADDED 7 MAXDELETEDID 3-0")).unwrap()
            ),
            "XSETID s 5-0"
        );
        assert_eq!(
            text(&adapt_command(&old, args("XGROUP SETID s g 5-0 ENTRIESREAD 3")).unwrap()),
            "XGROUP SETID s g 5-0"
        );
        // Refused by `compat_args` (a named, skippable failure), not here.
        assert!(adapt_command(&v("redis", 5, 0), args("XADD s MINID 5 * f v")).is_ok());
        assert_eq!(
            text(&adapt_command(&old, args("PEXPIREAT k 99 NX")).unwrap()),
            "PEXPIREAT k 99"
        );
        assert_eq!(
            text(&adapt_command(&v("redis", 7, 0), args("PEXPIREAT k 99 GT")).unwrap()),
            "PEXPIREAT k 99 GT"
        );
        let new = v("redis", 7, 4);
        assert_eq!(
            text(&adapt_command(&new, args("SET k v PXAT 5 GET")).unwrap()),
            "SET k v PXAT 5 GET"
        );
    }
}
