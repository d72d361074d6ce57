//! The standard dataset and data comparison helpers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{escape_bytes, Client, Reply};
use crate::server::Server;

/// Keys ferry keeps on a target for its checkpoints; the per-key comparison skips them.
pub const FERRY_CHECKPOINT_PREFIX: &[u8] = b"ferry:checkpoint:";

/// PTTL difference tolerated by the per-key comparison.
pub const PTTL_TOLERANCE_MS: i64 = 2000;
/// How many differing keys a diff lists.
const MAX_SHOWN: usize = 20;

fn c(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

fn cs<S: AsRef<[u8]>>(args: impl IntoIterator<Item = S>) -> Vec<Vec<u8>> {
    args.into_iter().map(|a| a.as_ref().to_vec()).collect()
}

fn run(client: &mut Client, cmds: &[Vec<Vec<u8>>]) {
    let replies = client
        .pipeline(cmds)
        .unwrap_or_else(|e| panic!("populate on {}: I/O error: {e}", client.addr()));
    for (cmd, r) in cmds.iter().zip(&replies) {
        if let Reply::Error(e) = r {
            let shown: Vec<String> = cmd.iter().take(4).map(|a| escape_bytes(a)).collect();
            panic!("populate: command {shown:?}... failed: {e}");
        }
    }
}

/// Write the standard test dataset to `server`: every type in its compact and its large
/// encoding, streams with consumer groups, TTLs, binary names, keys in db 0, 1 and 15.
///
/// Keys (db 0): `str:short`, `str:int`, `str:long` (compressible, 2000 bytes), `str:bin`,
/// `list:small`, `list:large` (1500 elements), `list:longelems` (elements > 64 bytes),
/// `set:int` (intset), `set:small`, `set:large` (600 members), `set:intlarge` (600 integers),
/// `zset:small`, `zset:large` (200 members), `zset:longmember`, `hash:small`, `hash:large`
/// (600 fields), `hash:longval`, `stream:1` (150 entries, group `grp1` with consumers `alice`
/// (10 pending, 3 acked) and `bob` (2 pending), group `grp2` with no pending), `stream:empty`
/// (all entries deleted), `ttl:*` (PEXPIRE 15 s .. EXPIRE 2 h), binary key names, and
/// `key:N` / `db1:key:N` / `db15:key:N` plain strings: 100, 30 and 20 times `scale`.
/// Scale 1 gives about 200 keys. Deterministic except for TTLs (relative to now).
pub fn populate_every_type(server: &Server, scale: usize) {
    let mut client = server.client();
    let mut cmds: Vec<Vec<Vec<u8>>> = vec![c(&[b"SELECT", b"0"])];

    // Strings.
    cmds.push(c(&[b"SET", b"str:short", b"hello"]));
    cmds.push(c(&[b"SET", b"str:int", b"12345"]));
    cmds.push(cs(["SET", "str:neg", "-9223372036854775808"]));
    cmds.push(cs([
        "SET".to_string(),
        "str:long".to_string(),
        "abcdefghij".repeat(200),
    ]));
    cmds.push(c(&[
        b"SET",
        b"str:bin",
        b"bin\0ary\r\n'quote'\"\xff\xfe\x00end",
    ]));
    cmds.push(c(&[b"SET", b"str:empty", b""]));

    // Lists.
    cmds.push(c(&[
        b"RPUSH",
        b"list:small",
        b"a",
        b"b",
        b"c",
        b"1",
        b"2",
        b"-3",
    ]));
    let mut large = cs(["RPUSH", "list:large"]);
    large.extend((0..1500).map(|i| format!("item-{i}").into_bytes()));
    cmds.push(large);
    let mut long = cs(["RPUSH", "list:longelems"]);
    long.extend((0..5).map(|i| format!("{i}-{}", "x".repeat(100)).into_bytes()));
    cmds.push(long);

    // Sets.
    cmds.push(c(&[
        b"SADD", b"set:int", b"1", b"2", b"3", b"-100", b"65536",
    ]));
    cmds.push(c(&[b"SADD", b"set:small", b"apple", b"banana", b"cherry"]));
    let mut set_large = cs(["SADD", "set:large"]);
    set_large.extend((0..600).map(|i| format!("member-{i}").into_bytes()));
    cmds.push(set_large);
    let mut set_intlarge = cs(["SADD", "set:intlarge"]);
    set_intlarge.extend((0..600).map(|i| (i * 7).to_string().into_bytes()));
    cmds.push(set_intlarge);

    // Sorted sets.
    cmds.push(cs([
        "ZADD",
        "zset:small",
        "1",
        "one",
        "2.5",
        "two.five",
        "-3",
        "minus",
        "inf",
        "infinite",
    ]));
    let mut zl = cs(["ZADD", "zset:large"]);
    for i in 0..200 {
        zl.push(format!("{}", i as f64 * 1.5).into_bytes());
        zl.push(format!("zmember-{i}").into_bytes());
    }
    cmds.push(zl);
    cmds.push(cs([
        "ZADD".to_string(),
        "zset:longmember".to_string(),
        "1".to_string(),
        "short".to_string(),
        "2".to_string(),
        "long-".repeat(30),
    ]));

    // Hashes.
    cmds.push(c(&[
        b"HSET",
        b"hash:small",
        b"f1",
        b"v1",
        b"f2",
        b"2",
        b"bin\0field",
        b"bin\r\nvalue",
    ]));
    let mut hl = cs(["HSET", "hash:large"]);
    for i in 0..600 {
        hl.push(format!("field-{i}").into_bytes());
        hl.push(format!("value-{i}").into_bytes());
    }
    cmds.push(hl);
    cmds.push(cs([
        "HSET".to_string(),
        "hash:longval".to_string(),
        "f".to_string(),
        "v".repeat(200),
    ]));

    // Streams.
    for i in 1..=150u32 {
        let id = format!("1700000000000-{i}");
        let mut x = cs(["XADD", "stream:1", &id, "n", &i.to_string()]);
        if i % 3 == 0 {
            x.extend(cs(["extra", "field with spaces"]));
        }
        cmds.push(x);
    }
    cmds.push(cs(["XGROUP", "CREATE", "stream:1", "grp1", "0"]));
    cmds.push(cs([
        "XREADGROUP",
        "GROUP",
        "grp1",
        "alice",
        "COUNT",
        "10",
        "STREAMS",
        "stream:1",
        ">",
    ]));
    cmds.push(cs([
        "XACK",
        "stream:1",
        "grp1",
        "1700000000000-1",
        "1700000000000-2",
        "1700000000000-3",
    ]));
    cmds.push(cs([
        "XREADGROUP",
        "GROUP",
        "grp1",
        "bob",
        "COUNT",
        "2",
        "STREAMS",
        "stream:1",
        ">",
    ]));
    cmds.push(cs(["XGROUP", "CREATE", "stream:1", "grp2", "$"]));
    cmds.push(cs(["XADD", "stream:empty", "5-1", "a", "b"]));
    cmds.push(cs(["XDEL", "stream:empty", "5-1"]));

    // TTLs (all long enough not to expire during a test).
    cmds.push(cs(["SET", "ttl:ms", "v", "PX", "600500"]));
    cmds.push(cs(["SET", "ttl:pexpire", "v"]));
    cmds.push(cs(["PEXPIRE", "ttl:pexpire", "900250"]));
    cmds.push(cs(["SET", "ttl:minute", "v", "EX", "60"]));
    cmds.push(cs(["SET", "ttl:hours", "v", "EX", "7200"]));
    cmds.push(cs(["RPUSH", "ttl:list", "a", "b"]));
    cmds.push(cs(["EXPIRE", "ttl:list", "3600"]));
    cmds.push(cs(["HSET", "ttl:hash", "f", "v"]));
    cmds.push(cs(["PEXPIRE", "ttl:hash", "1800000"]));

    // Binary key names.
    cmds.push(c(&[b"SET", b"bin\0key\r\n", b"v"]));
    cmds.push(c(&[b"SET", b"\xff\xfe\x80", b"v"]));
    cmds.push(c(&[b"HSET", b"key with 'quotes' and \"dq\" ", b"f", b"v"]));
    cmds.push(c(&[b"SET", b"\xe2\x82\xac-utf8", b"v"]));

    // Plain keys.
    for i in 0..100 * scale {
        cmds.push(cs([
            "SET".to_string(),
            format!("key:{i}"),
            format!("value:{i}"),
        ]));
    }

    // db 1
    cmds.push(c(&[b"SELECT", b"1"]));
    cmds.push(cs(["SET", "db1:str", "in db one"]));
    cmds.push(cs(["HSET", "db1:hash", "a", "1", "b", "2"]));
    cmds.push(cs(["SADD", "db1:set", "x", "y"]));
    cmds.push(cs(["SET", "db1:ttl", "v", "EX", "600"]));
    cmds.push(cs(["SET", "key:0", "same name as db0, other value"]));
    for i in 0..30 * scale {
        cmds.push(cs([
            "SET".to_string(),
            format!("db1:key:{i}"),
            i.to_string(),
        ]));
    }

    // db 15
    cmds.push(c(&[b"SELECT", b"15"]));
    cmds.push(cs(["SET", "db15:str", "in db fifteen"]));
    cmds.push(cs(["ZADD", "db15:zset", "1", "a", "2", "b"]));
    cmds.push(cs(["RPUSH", "db15:list", "x"]));
    cmds.push(cs(["PEXPIRE", "db15:list", "900000"]));
    for i in 0..20 * scale {
        cmds.push(cs([
            "SET".to_string(),
            format!("db15:key:{i}"),
            i.to_string(),
        ]));
    }

    run(&mut client, &cmds);
}

/// What one key looks like for the comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyState {
    kind: String,
    digest: String,
    /// Absolute expiry in ms (-1: none).
    pttl: i64,
    /// Streams only: last id, groups, consumers and pending entries, which neither
    /// `DEBUG DIGEST` nor `DEBUG DIGEST-VALUE` cover.
    stream_meta: String,
}

fn databases(server: &Server) -> usize {
    let r = server.cmd(&["CONFIG", "GET", "databases"]).as_array();
    r.get(1).map(|v| v.as_int() as usize).unwrap_or(16)
}

fn pairs(r: &Reply) -> BTreeMap<String, Reply> {
    r.as_array()
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| (p[0].as_str(), p[1].clone()))
        .collect()
}

fn field(map: &BTreeMap<String, Reply>, name: &str) -> String {
    match map.get(name) {
        Some(Reply::Int(i)) => i.to_string(),
        Some(r @ (Reply::Status(_) | Reply::Bulk(Some(_)))) => escape_bytes(&r.as_bytes()),
        Some(other) => format!("{other:?}"),
        None => "-".to_string(),
    }
}

fn must(client: &mut Client, args: &[&[u8]]) -> Reply {
    let shown: Vec<String> = args.iter().map(|a| escape_bytes(a)).collect();
    match client.cmd(args) {
        Ok(Reply::Error(e)) => panic!("{shown:?} on {} failed: {e}", client.addr()),
        Ok(r) => r,
        Err(e) => panic!("{shown:?} on {}: I/O error: {e}", client.addr()),
    }
}

/// A canonical description of a stream's metadata: volatile fields (idle times) are left out,
/// and only fields that every redis version since 5.0 reports are used.
fn stream_meta(client: &mut Client, key: &[u8]) -> String {
    let mut out = String::new();
    let info = pairs(&must(client, &[b"XINFO", b"STREAM", key]));
    let _ = write!(out, "last-id={}", field(&info, "last-generated-id"));
    for g in must(client, &[b"XINFO", b"GROUPS", key]).as_array() {
        let g = pairs(&g);
        let name = g.get("name").map(Reply::as_bytes).unwrap_or_default();
        let _ = write!(
            out,
            " | group {} consumers={} pending={} last-delivered={}",
            escape_bytes(&name),
            field(&g, "consumers"),
            field(&g, "pending"),
            field(&g, "last-delivered-id")
        );
        for c in must(client, &[b"XINFO", b"CONSUMERS", key, &name]).as_array() {
            let c = pairs(&c);
            let _ = write!(
                out,
                " [consumer {} pending={}]",
                field(&c, "name"),
                field(&c, "pending")
            );
        }
        let _ = write!(out, " pel:");
        for p in must(client, &[b"XPENDING", key, &name, b"-", b"+", b"1000000"]).as_array() {
            let p = p.as_array();
            if p.len() >= 4 {
                let _ = write!(
                    out,
                    " {}/{}/{}",
                    p[0].as_str(),
                    escape_bytes(&p[1].as_bytes()),
                    p[3].as_int()
                );
            }
        }
    }
    out
}

/// The keys of the selected database, sorted, without ferry's checkpoint keys (ferry's own
/// bookkeeping on a target, not data). With `streams_only`, stream keys where the server
/// can filter by type (6.0+; callers filter older servers' keys by their TYPE).
pub(crate) fn scan_keys(client: &mut Client, server: &Server, streams_only: bool) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let mut scan: Vec<&[u8]> = vec![b"SCAN", &cursor, b"COUNT", b"1000"];
        if streams_only && server.version() >= (6, 0, 0) {
            scan.extend([&b"TYPE"[..], b"stream"]);
        }
        let r = must(client, &scan).as_array();
        cursor = r[0].as_bytes();
        keys.extend(r[1].as_array().iter().map(Reply::as_bytes));
        if cursor == b"0" {
            break;
        }
    }
    keys.retain(|k| !k.starts_with(FERRY_CHECKPOINT_PREFIX));
    keys.sort();
    keys.dedup();
    keys
}

/// What both comparisons read of a key.
pub(crate) struct KeyBasics {
    pub key: Vec<u8>,
    pub kind: String,
    pub digest: String,
    /// Absolute expiry in ms (-1: none).
    pub expire_at: i64,
}

/// TYPE, `DEBUG DIGEST-VALUE` and absolute expiry of each key, in one pipeline; keys gone
/// since they were listed are left out.
pub(crate) fn key_basics(
    client: &mut Client,
    server: &Server,
    keys: Vec<Vec<u8>>,
) -> Vec<KeyBasics> {
    // Absolute expiry times compare exactly however long the two sides take to read;
    // servers before 7.0 only give the relative PTTL.
    let absolute = server.version() >= (7, 0, 0);
    let ttl_cmd: &[u8] = if absolute { b"PEXPIRETIME" } else { b"PTTL" };
    let mut cmds = Vec::with_capacity(keys.len() * 3);
    for k in &keys {
        cmds.push(vec![b"TYPE".to_vec(), k.clone()]);
        cmds.push(vec![b"DEBUG".to_vec(), b"DIGEST-VALUE".to_vec(), k.clone()]);
        cmds.push(vec![ttl_cmd.to_vec(), k.clone()]);
    }
    let now = now_ms();
    let replies = client
        .pipeline(&cmds)
        .unwrap_or_else(|e| panic!("pipeline on {}: {e}", server.addr()));
    let mut out = Vec::with_capacity(keys.len());
    for (key, r) in keys.into_iter().zip(replies.chunks(3)) {
        let kind = r[0].as_str();
        if kind == "none" {
            continue; // expired or deleted since it was listed
        }
        let digest = match &r[1] {
            Reply::Array(Some(items)) if !items.is_empty() => items[0].as_str(),
            Reply::Error(e) => panic!("DEBUG DIGEST-VALUE on {}: {e}", server.addr()),
            other => other.as_str(),
        };
        let expire_at = match r[2].as_int() {
            t if t < 0 || absolute => t,
            t => now + t,
        };
        out.push(KeyBasics {
            key,
            kind,
            digest,
            expire_at,
        });
    }
    out
}

/// All keys of all databases with their TYPE, DEBUG DIGEST-VALUE, expiry and (streams)
/// stream metadata. With `streams_only`, only stream keys.
fn snapshot(server: &Server, dbs: usize, streams_only: bool) -> Vec<BTreeMap<Vec<u8>, KeyState>> {
    let mut client = server.client();
    let mut out = Vec::with_capacity(dbs);
    for db in 0..dbs {
        let mut map = BTreeMap::new();
        must(&mut client, &[b"SELECT", db.to_string().as_bytes()]);
        let keys = scan_keys(&mut client, server, streams_only);
        for b in key_basics(&mut client, server, keys) {
            if streams_only && b.kind != "stream" {
                continue;
            }
            let stream_meta = if b.kind == "stream" {
                stream_meta(&mut client, &b.key)
            } else {
                String::new()
            };
            let state = KeyState {
                kind: b.kind,
                digest: b.digest,
                pttl: b.expire_at,
                stream_meta,
            };
            map.insert(b.key, state);
        }
        out.push(map);
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn same_pttl(a: i64, b: i64) -> bool {
    if a < 0 || b < 0 {
        a == b
    } else {
        (a - b).abs() <= PTTL_TOLERANCE_MS
    }
}

fn show(s: Option<&KeyState>) -> String {
    match s {
        None => "missing".to_string(),
        Some(s) => {
            let mut t = format!(
                "type={} digest={} expire-at-ms={}",
                s.kind, s.digest, s.pttl
            );
            if !s.stream_meta.is_empty() {
                let meta: String = s.stream_meta.chars().take(600).collect();
                let _ = write!(t, "\n      stream: {meta}");
            }
            t
        }
    }
}

/// Per-key differences between the two servers: (total count, readable lines for the first
/// [`MAX_SHOWN`]).
fn key_diff(source: &Server, target: &Server, streams_only: bool) -> (usize, Vec<String>) {
    let dbs = databases(source).min(databases(target));
    let a = snapshot(source, dbs, streams_only);
    let b = snapshot(target, dbs, streams_only);
    let mut total = 0;
    let mut lines = Vec::new();
    for db in 0..dbs {
        let mut names: Vec<&Vec<u8>> = a[db].keys().chain(b[db].keys()).collect();
        names.sort();
        names.dedup();
        for k in names {
            let (x, y) = (a[db].get(k), b[db].get(k));
            // A key whose expiry came while the two sides were being read is gone on the
            // side read later: that is expiry, not a difference.
            let expired = |k: &KeyState| k.pttl >= 0 && k.pttl <= now_ms() + PTTL_TOLERANCE_MS;
            let differs = match (x, y) {
                (Some(x), None) if expired(x) => false,
                (None, Some(y)) if expired(y) => false,
                (Some(x), Some(y)) => {
                    x.kind != y.kind
                        || x.digest != y.digest
                        || !same_pttl(x.pttl, y.pttl)
                        || x.stream_meta != y.stream_meta
                }
                _ => true,
            };
            if !differs {
                continue;
            }
            total += 1;
            if lines.len() >= MAX_SHOWN {
                continue;
            }
            let what = match (x, y) {
                (Some(_), None) => "only in source",
                (None, Some(_)) => "only in target",
                (Some(x), Some(y)) if x.kind != y.kind => "type differs",
                // DEBUG DIGEST-VALUE mixes in whether the key has a TTL.
                (Some(x), Some(y)) if (x.pttl < 0) != (y.pttl < 0) && x.digest != y.digest => {
                    "TTL differs (DIGEST-VALUE differs because it includes the TTL flag)"
                }
                (Some(x), Some(y)) if (x.pttl < 0) != (y.pttl < 0) => "TTL differs",
                (Some(x), Some(y)) if x.digest != y.digest => "value differs",
                (Some(x), Some(y)) if x.stream_meta != y.stream_meta => {
                    "stream groups/metadata differ"
                }
                _ => "TTL differs",
            };
            lines.push(format!(
                "db{db} key \"{}\": {what}\n    source: {}\n    target: {}",
                escape_bytes(k),
                show(x),
                show(y)
            ));
        }
    }
    (total, lines)
}

/// Full comparison: the digests, then key by key if they differ, else the streams' metadata.
fn diff(source: &Server, target: &Server) -> Option<String> {
    let (da, db) = (source.digest(), target.digest());
    // Equal digests cover every key, value and expiry, but not stream consumer groups.
    let streams_only = da == db;
    let (total, lines) = key_diff(source, target, streams_only);
    if total == 0 {
        return None;
    }
    let mut msg = format!(
        "data differs between source {} and target {}\n  DEBUG DIGEST source {da}\n  \
         DEBUG DIGEST target {db}\n{total} differing key(s)",
        source.addr(),
        target.addr()
    );
    if total > lines.len() {
        let _ = write!(msg, " (first {} shown)", lines.len());
    }
    msg.push_str(":\n");
    for l in lines {
        msg.push_str(&l);
        msg.push('\n');
    }
    Some(msg)
}

/// Compare all data of `source` and `target`, panicking with a readable diff.
///
/// ferry's checkpoint keys (`ferry:checkpoint:*`) on either side are not data and are
/// skipped by the per-key comparison (`DEBUG DIGEST` includes them, so a target holding one
/// is always compared key by key).
///
/// When the `DEBUG DIGEST`s differ, every database is compared key by key (SCAN, TYPE,
/// `DEBUG DIGEST-VALUE`, PTTL with ±2 s tolerance, where no TTL must match no TTL exactly)
/// and the first 20 differing keys are listed. If that finds no difference (the digests
/// differed only because absolute expiry times differ by less than the tolerance), it
/// returns normally. Stream consumer groups, consumers and pending entries are not covered
/// by redis' digests, so stream keys are always compared on that metadata too (idle times
/// excluded).
pub fn assert_same_data(source: &Server, target: &Server) {
    if let Some(msg) = diff(source, target) {
        panic!("{msg}");
    }
}

/// Like [`assert_same_data`] but returns whether the data is the same instead of panicking.
pub fn same_data(source: &Server, target: &Server) -> bool {
    diff(source, target).is_none()
}

/// Poll until both servers hold the same data (equal `DEBUG DIGEST`s, plus the per-key
/// comparison of [`assert_same_data`], which is run at most every 250 ms), then return.
/// After `timeout`, calls [`assert_same_data`], which panics with the diff.
pub fn wait_same_data(source: &Server, target: &Server, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last_full = None::<Instant>;
    loop {
        let equal_digests = source.digest() == target.digest();
        let due = match last_full {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_millis(250),
        };
        if equal_digests || due {
            if same_data(source, target) {
                return;
            }
            last_full = Some(Instant::now());
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_same_data(source, target);
}
