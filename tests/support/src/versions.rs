//! Other server versions for cross-version tests: the binaries that
//! `scripts/fetch-redis-versions.sh` put under `<workspace>/.redis-versions/<label>/`
//! (or `$FERRY_REDIS_VERSIONS_DIR/<label>/`), plus the system's `redis-server`.

use std::path::{Path, PathBuf};

use crate::server::{parse_version, which, Version};

/// Overrides where fetched server binaries are looked for.
pub const VERSIONS_DIR_ENV: &str = "FERRY_REDIS_VERSIONS_DIR";
/// When set to `1`, cross-version tests fail instead of skipping when no other version is
/// available (CI sets it, so a broken fetch cannot pass silently).
pub const REQUIRE_VERSIONS_ENV: &str = "FERRY_REQUIRE_VERSIONS";

/// The directory fetched versions live in.
pub fn versions_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(VERSIONS_DIR_ENV) {
        return PathBuf::from(d);
    }
    // tests/support -> workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(".redis-versions")
}

/// One server binary: a label such as `redis-6.0` or `valkey-8.1`, its path and version.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    pub label: String,
    pub path: PathBuf,
    pub version: Version,
    /// True for Valkey builds (their `redis_version` is a compatibility number).
    pub valkey: bool,
}

/// Every fetched binary that runs, sorted by label, then the system `redis-server` (labelled
/// `system-X.Y`) when there is one.
pub fn available_servers() -> Vec<ServerBinary> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(versions_dir()) {
        let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let label = match d.file_name().and_then(|n| n.to_str()) {
                Some(l) if !l.starts_with('.') => l.to_string(),
                _ => continue,
            };
            let path = d.join("redis-server");
            if !path.is_file() {
                continue;
            }
            if let Some(b) = probe(&label, &path) {
                out.push(b);
            }
        }
    }
    if let Some(path) = which("redis-server") {
        if let Some(mut b) = probe("system", &path) {
            b.label = format!("system-{}.{}", b.version.0, b.version.1);
            out.push(b);
        }
    }
    out
}

/// Looks a binary up by label (`redis-6.0`, `valkey-9`, `system-7.0`, …).
pub fn server_binary(label: &str) -> Option<ServerBinary> {
    available_servers().into_iter().find(|b| b.label == label)
}

/// True when [`REQUIRE_VERSIONS_ENV`] is `1`.
pub fn versions_required() -> bool {
    std::env::var(REQUIRE_VERSIONS_ENV).is_ok_and(|v| v == "1")
}

fn probe(label: &str, path: &Path) -> Option<ServerBinary> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let valkey = text.to_ascii_lowercase().contains("valkey");
    let version = parse_version(&text)?;
    Some(ServerBinary {
        label: label.to_string(),
        path: path.to_path_buf(),
        version,
        valkey,
    })
}

/// Compares every key of every database by value, as a client sees it: for servers of
/// different versions, whose `DEBUG DIGEST-VALUE`s differ for equal values (Redis 8 hashes
/// sorted-set scores in another text form than earlier versions). Lists in order; sets,
/// hashes as sorted pairs; sorted sets with scores compared as `f64`; streams by entries,
/// last id, groups, consumers and pending entries (ids, consumer, delivery count); TTLs
/// within [`crate::PTTL_TOLERANCE_MS`]. Panics listing up to 20 differences.
pub fn assert_same_values(source: &crate::Server, target: &crate::Server) {
    let mut a = source.client();
    let mut b = target.client();
    let mut diffs = Vec::new();
    let mut total = 0usize;
    for db in 0..16 {
        let sel = db.to_string();
        for c in [&mut a, &mut b] {
            must(c, &[b"SELECT", sel.as_bytes()]);
        }
        let ka = keys(&mut a);
        let kb = keys(&mut b);
        let mut names: Vec<&Vec<u8>> = ka.iter().chain(kb.iter()).collect();
        names.sort();
        names.dedup();
        for k in names {
            // Both TTLs first: reading a big value takes time.
            let ta = must(&mut a, &[b"PTTL", k]).as_int();
            let tb = must(&mut b, &[b"PTTL", k]).as_int();
            let va = describe(&mut a, k);
            let vb = describe(&mut b, k);
            let same_ttl = if ta < 0 || tb < 0 {
                ta == tb
            } else {
                (ta - tb).abs() <= crate::PTTL_TOLERANCE_MS
            };
            if va != vb || !same_ttl {
                total += 1;
                if diffs.len() < 20 {
                    let cut = |s: &str| s.chars().take(400).collect::<String>();
                    diffs.push(format!(
                        "db{db} key {}:\n    source: pttl={ta} {}\n    target: pttl={tb} {}",
                        crate::escape_bytes(k),
                        cut(&va),
                        cut(&vb)
                    ));
                }
            }
        }
    }
    assert!(
        total == 0,
        "values differ between source {} and target {}: {total} key(s)\n{}",
        source.addr(),
        target.addr(),
        diffs.join("\n")
    );
}

fn must(c: &mut crate::Client, args: &[&[u8]]) -> crate::Reply {
    match c.cmd(args) {
        Ok(crate::Reply::Error(e)) => {
            panic!("{:?} on {}: {e}", crate::escape_bytes(args[0]), c.addr())
        }
        Ok(r) => r,
        Err(e) => panic!("I/O error on {}: {e}", c.addr()),
    }
}

fn keys(c: &mut crate::Client) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let r = must(c, &[b"SCAN", &cursor, b"COUNT", b"1000"]).as_array();
        cursor = r[0].as_bytes();
        out.extend(
            r[1].as_array()
                .iter()
                .map(crate::Reply::as_bytes)
                .filter(|k| !k.starts_with(crate::data::FERRY_CHECKPOINT_PREFIX)),
        );
        if cursor == b"0" {
            return out;
        }
    }
}

fn flat(r: &crate::Reply) -> Vec<Vec<u8>> {
    r.as_array().iter().map(crate::Reply::as_bytes).collect()
}

fn pairs_sorted(r: &crate::Reply) -> Vec<(Vec<u8>, Vec<u8>)> {
    let f = flat(r);
    let mut p: Vec<(Vec<u8>, Vec<u8>)> =
        f.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
    p.sort();
    p
}

/// A comparable description of one key's value ("missing" when absent).
fn describe(c: &mut crate::Client, k: &[u8]) -> String {
    let kind = must(c, &[b"TYPE", k]).as_str();
    let value = match kind.as_str() {
        "none" => return "missing".into(),
        "string" => format!("{:?}", must(c, &[b"GET", k]).as_bytes()),
        "list" => format!("{:?}", flat(&must(c, &[b"LRANGE", k, b"0", b"-1"]))),
        "set" => {
            let mut m = flat(&must(c, &[b"SMEMBERS", k]));
            m.sort();
            format!("{m:?}")
        }
        "hash" => format!("{:?}", pairs_sorted(&must(c, &[b"HGETALL", k]))),
        "zset" => {
            let f = flat(&must(c, &[b"ZRANGE", k, b"0", b"-1", b"WITHSCORES"]));
            let z: Vec<(Vec<u8>, u64)> = f
                .chunks(2)
                .map(|p| {
                    let s = String::from_utf8_lossy(&p[1])
                        .parse::<f64>()
                        .unwrap_or(f64::NAN);
                    (p[0].clone(), s.to_bits())
                })
                .collect();
            format!("{z:?}")
        }
        "stream" => {
            let entries = must(c, &[b"XRANGE", k, b"-", b"+"]);
            let info = must(c, &[b"XINFO", b"STREAM", k]).as_array();
            let last = info
                .chunks(2)
                .find(|p| p[0].as_str() == "last-generated-id")
                .map(|p| p[1].as_str())
                .unwrap_or_default();
            let mut out = format!("{entries:?} last={last}");
            for g in must(c, &[b"XINFO", b"GROUPS", k]).as_array() {
                let g = g.as_array();
                let get = |n: &str| {
                    g.chunks(2)
                        .find(|p| p[0].as_str() == n)
                        .map(|p| format!("{:?}", p[1]))
                        .unwrap_or_default()
                };
                let name = g
                    .chunks(2)
                    .find(|p| p[0].as_str() == "name")
                    .map(|p| p[1].as_bytes())
                    .unwrap_or_default();
                out.push_str(&format!(
                    " | group {} consumers={} pending={} last={}",
                    crate::escape_bytes(&name),
                    get("consumers"),
                    get("pending"),
                    get("last-delivered-id")
                ));
                for p in must(c, &[b"XPENDING", k, &name, b"-", b"+", b"1000000"]).as_array() {
                    let p = p.as_array();
                    if p.len() >= 4 {
                        out.push_str(&format!(
                            " {}/{}/{}",
                            p[0].as_str(),
                            crate::escape_bytes(&p[1].as_bytes()),
                            p[3].as_int()
                        ));
                    }
                }
            }
            out
        }
        other => format!("(type {other})"),
    };
    format!("{kind} {value}")
}
