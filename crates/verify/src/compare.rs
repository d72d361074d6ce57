//! Comparing keys: the header (presence, type, TTL) of a whole batch in one pipeline per
//! side, then the value — by `DEBUG DIGEST-VALUE` where both sides allow it, otherwise by
//! reading the contents in bounded chunks from both sides at once.
//!
//! Ordered values (strings, lists, sorted sets, streams) are compared chunk against chunk,
//! which also tells where they first differ. Sets and hashes have no order a `SSCAN`/`HSCAN`
//! cursor would share between two servers (their encodings and hash tables may differ), so
//! each side is folded into an order-independent digest: the wrapping sum of a 128-bit hash
//! of every member (or field and value). A sum, unlike a xor, does not cancel two equal
//! elements; memory stays constant whatever the size of the value. A `*SCAN` may return an
//! element twice while the server rehashes; that shows as a difference in one round and is
//! gone in the recheck, like any key in flight.

use std::hash::{DefaultHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use ferry_resp::Frame;

use crate::node::Node;
use crate::report::Problem;
use crate::VerifyError;

/// Largest string slice read at once.
const STRING_CHUNK: usize = 512 * 1024;

/// How a batch is compared.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub values: bool,
    pub ttl_tolerance: Duration,
    /// Elements per chunk of a big value.
    pub chunk: usize,
}

/// A key as one side sees it.
#[derive(Debug)]
struct KeyHead {
    /// `none` when the key does not exist.
    kind: Bytes,
    pttl: i64,
    digest: Option<Frame>,
}

fn bytes_arg(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn heads(node: &mut Node, keys: &[Bytes], digest: bool) -> Result<Vec<KeyHead>, VerifyError> {
    let per_key = if digest { 3 } else { 2 };
    let mut cmds = Vec::with_capacity(keys.len() * per_key);
    for k in keys {
        cmds.push(vec![bytes_arg("TYPE"), k.clone()]);
        cmds.push(vec![bytes_arg("PTTL"), k.clone()]);
        if digest {
            cmds.push(vec![
                bytes_arg("DEBUG"),
                bytes_arg("DIGEST-VALUE"),
                k.clone(),
            ]);
        }
    }
    let replies = node.pipeline(&cmds).await?;
    let mut out = Vec::with_capacity(keys.len());
    let mut it = replies.into_iter();
    while let (Some(kind), Some(pttl)) = (it.next(), it.next()) {
        let digest = if digest {
            it.next().filter(|f| !f.is_error())
        } else {
            None
        };
        out.push(KeyHead {
            kind: kind
                .as_bytes()
                .cloned()
                .unwrap_or_else(|| bytes_arg("none")),
            pttl: match pttl {
                Frame::Integer(i) => i,
                _ => -2,
            },
            digest,
        });
    }
    Ok(out)
}

/// Compares `keys` (all in the database both nodes have selected); returns the problems of
/// each key, empty where it is equal. A key gone from both sides counts as equal.
pub async fn compare_keys(
    src: &mut Node,
    tgt: &mut Node,
    keys: &[Bytes],
    rules: Rules,
) -> Result<Vec<Vec<Problem>>, VerifyError> {
    let digest = rules.values && src.digest && tgt.digest;
    let (a, b) = tokio::try_join!(heads(src, keys, digest), heads(tgt, keys, digest))?;
    let mut out = Vec::with_capacity(keys.len());
    for ((key, s), t) in keys.iter().zip(a).zip(b) {
        let mut problems = Vec::new();
        let (s_none, t_none) = (s.kind.as_ref() == b"none", t.kind.as_ref() == b"none");
        if s_none && t_none {
        } else if t_none {
            problems.push(Problem::MissingOnTarget);
        } else if s_none {
            problems.push(Problem::ExtraOnTarget);
        } else if s.kind != t.kind {
            problems.push(Problem::Type {
                source: String::from_utf8_lossy(&s.kind).into_owned(),
                target: String::from_utf8_lossy(&t.kind).into_owned(),
            });
        } else {
            if !ttl_equal(s.pttl, t.pttl, rules.ttl_tolerance) {
                problems.push(Problem::Ttl {
                    source_ms: s.pttl,
                    target_ms: t.pttl,
                });
            }
            if rules.values {
                let kind = String::from_utf8_lossy(&s.kind).into_owned();
                let detail = match (&s.digest, &t.digest) {
                    (Some(x), Some(y)) if x != y => Some("DEBUG DIGEST-VALUE differs".to_string()),
                    (Some(_), Some(_)) if kind == "stream" => stream_meta(src, tgt, key).await?,
                    (Some(_), Some(_)) => None,
                    _ => compare_value(src, tgt, key, &kind, rules.chunk).await?,
                };
                if let Some(detail) = detail {
                    problems.push(Problem::Value { detail });
                }
            }
        }
        out.push(problems);
    }
    Ok(out)
}

/// `-1` (no TTL) equals only `-1`; two TTLs are equal within the tolerance.
pub fn ttl_equal(source_ms: i64, target_ms: i64, tolerance: Duration) -> bool {
    if source_ms < 0 || target_ms < 0 {
        return source_ms == target_ms;
    }
    source_ms.abs_diff(target_ms) as u128 <= tolerance.as_millis()
}

/// Compares one value's contents; `Some(where)` when they differ.
async fn compare_value(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
    kind: &str,
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    let chunk = chunk.max(1);
    match kind {
        "string" => compare_string(src, tgt, key).await,
        "list" => {
            compare_ranked(
                src,
                tgt,
                key,
                "LLEN",
                chunk,
                |s, e| vec![bytes_arg("LRANGE"), key.clone(), int(s), int(e)],
                false,
            )
            .await
        }
        "zset" => {
            compare_ranked(
                src,
                tgt,
                key,
                "ZCARD",
                chunk,
                |s, e| {
                    vec![
                        bytes_arg("ZRANGE"),
                        key.clone(),
                        int(s),
                        int(e),
                        bytes_arg("WITHSCORES"),
                    ]
                },
                true,
            )
            .await
        }
        "set" => compare_unordered(src, tgt, key, "SCARD", "SSCAN", chunk, "members").await,
        "hash" => {
            compare_unordered(src, tgt, key, "HLEN", "HSCAN", chunk, "fields or values").await
        }
        "stream" => match compare_stream(src, tgt, key, chunk).await? {
            Some(d) => Ok(Some(d)),
            None => stream_meta(src, tgt, key).await,
        },
        // Module types: the serialized value is the only common view.
        _ => {
            let cmd = [bytes_arg("DUMP"), key.clone()];
            let (a, b) = tokio::try_join!(src.request_raw(&cmd), tgt.request_raw(&cmd))?;
            Ok((a != b).then(|| format!("{kind} value differs (DUMP)")))
        }
    }
}

fn int(i: usize) -> Bytes {
    Bytes::from(i.to_string())
}

fn integer(f: &Frame) -> Option<i64> {
    match f {
        Frame::Integer(i) => Some(*i),
        _ => None,
    }
}

const CHANGED: &str = "changed while being read";

async fn lengths(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
    cmd: &str,
) -> Result<Result<i64, String>, VerifyError> {
    let args = [bytes_arg(cmd), key.clone()];
    let (a, b) = tokio::try_join!(src.request_raw(&args), tgt.request_raw(&args))?;
    Ok(match (integer(&a), integer(&b)) {
        (Some(x), Some(y)) if x == y => Ok(x),
        (Some(x), Some(y)) => Err(format!("length {x} on source, {y} on target")),
        _ => Err(CHANGED.to_string()),
    })
}

async fn compare_string(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
) -> Result<Option<String>, VerifyError> {
    let len = match lengths(src, tgt, key, "STRLEN").await? {
        Ok(n) => n.max(0) as usize,
        Err(d) => return Ok(Some(d)),
    };
    let mut at = 0;
    while at < len {
        let end = (at + STRING_CHUNK).min(len) - 1;
        let args = [bytes_arg("GETRANGE"), key.clone(), int(at), int(end)];
        let (a, b) = tokio::try_join!(src.request_raw(&args), tgt.request_raw(&args))?;
        if a.is_error() || b.is_error() {
            return Ok(Some(CHANGED.to_string()));
        }
        if let (Some(x), Some(y)) = (a.as_bytes(), b.as_bytes()) {
            if let Some(i) = x.iter().zip(y.iter()).position(|(p, q)| p != q) {
                return Ok(Some(format!("bytes differ from offset {}", at + i)));
            }
            if x.len() != y.len() {
                return Ok(Some(CHANGED.to_string()));
            }
        }
        at = end + 1;
    }
    Ok(None)
}

fn items(f: Frame) -> Option<Vec<Frame>> {
    match f {
        Frame::Array(v) => Some(v),
        _ => None,
    }
}

/// Scores as numbers: servers of different versions print the same double differently.
fn same_score(a: &Frame, b: &Frame) -> bool {
    let num = |f: &Frame| {
        f.as_bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<f64>().ok())
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Lists and sorted sets: the same index range from both sides, chunk by chunk.
async fn compare_ranked(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
    len_cmd: &str,
    chunk: usize,
    range: impl Fn(usize, usize) -> Vec<Bytes>,
    scored: bool,
) -> Result<Option<String>, VerifyError> {
    let len = match lengths(src, tgt, key, len_cmd).await? {
        Ok(n) => n.max(0) as usize,
        Err(d) => return Ok(Some(d)),
    };
    let width = if scored { 2 } else { 1 };
    let mut at = 0;
    while at < len {
        let args = range(at, at + chunk - 1);
        let (a, b) = tokio::try_join!(src.request_raw(&args), tgt.request_raw(&args))?;
        let (Some(a), Some(b)) = (items(a), items(b)) else {
            return Ok(Some(CHANGED.to_string()));
        };
        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            let equal = if scored && i % 2 == 1 {
                same_score(x, y)
            } else {
                x == y
            };
            if !equal {
                let what = if scored && i % 2 == 1 {
                    "score of element"
                } else {
                    "element"
                };
                return Ok(Some(format!("{what} {} differs", at + i / width)));
            }
        }
        if a.len() != b.len() || a.is_empty() {
            return Ok(Some(CHANGED.to_string()));
        }
        at += chunk;
    }
    Ok(None)
}

fn element_hash(parts: &[&[u8]]) -> u128 {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        h.write_u8(seed);
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Walks a `SSCAN`/`HSCAN` to its end, folding each element (member, or field and value)
/// into a sum of hashes. Returns `None` if the key changed type under the scan.
async fn scan_digest(
    node: &mut Node,
    cmd: &str,
    key: &Bytes,
    chunk: usize,
    pair: bool,
) -> Result<Option<(u128, u64)>, VerifyError> {
    let mut cursor = Bytes::from_static(b"0");
    let (mut sum, mut n) = (0u128, 0u64);
    loop {
        let args = [
            bytes_arg(cmd),
            key.clone(),
            cursor.clone(),
            bytes_arg("COUNT"),
            int(chunk),
        ];
        let reply = node.request_raw(&args).await?;
        let Some(mut parts) = items(reply) else {
            return Ok(None);
        };
        let (Some(Frame::Array(elems)), Some(Frame::Bulk(next))) = (parts.pop(), parts.pop())
        else {
            return Ok(None);
        };
        let bulks: Vec<&[u8]> = elems
            .iter()
            .filter_map(|f| f.as_bytes().map(|b| b.as_ref()))
            .collect();
        if pair {
            for fv in bulks.chunks(2) {
                sum = sum.wrapping_add(element_hash(fv));
                n += 1;
            }
        } else {
            for m in bulks {
                sum = sum.wrapping_add(element_hash(&[m]));
                n += 1;
            }
        }
        if next.as_ref() == b"0" {
            return Ok(Some((sum, n)));
        }
        cursor = next;
    }
}

#[allow(clippy::too_many_arguments)]
async fn compare_unordered(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
    len_cmd: &str,
    scan_cmd: &str,
    chunk: usize,
    what: &str,
) -> Result<Option<String>, VerifyError> {
    if let Err(d) = lengths(src, tgt, key, len_cmd).await? {
        return Ok(Some(d));
    }
    let pair = scan_cmd == "HSCAN";
    let (a, b) = tokio::try_join!(
        scan_digest(src, scan_cmd, key, chunk, pair),
        scan_digest(tgt, scan_cmd, key, chunk, pair)
    )?;
    Ok(match (a, b) {
        (Some(x), Some(y)) if x == y => None,
        (Some(_), Some(_)) => Some(format!("{what} differ")),
        _ => Some(CHANGED.to_string()),
    })
}

fn entry_id(entry: &Frame) -> Option<Bytes> {
    match entry {
        Frame::Array(parts) => parts.first().and_then(|f| f.as_bytes().cloned()),
        _ => None,
    }
}

/// Stream entries, `XRANGE … COUNT chunk` from both sides, resuming after the last id.
async fn compare_stream(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    if let Err(d) = lengths(src, tgt, key, "XLEN").await? {
        return Ok(Some(d));
    }
    let mut start = Bytes::from_static(b"-");
    loop {
        let args = [
            bytes_arg("XRANGE"),
            key.clone(),
            start.clone(),
            bytes_arg("+"),
            bytes_arg("COUNT"),
            int(chunk),
        ];
        let (a, b) = tokio::try_join!(src.request_raw(&args), tgt.request_raw(&args))?;
        let (Some(a), Some(b)) = (items(a), items(b)) else {
            return Ok(Some(CHANGED.to_string()));
        };
        for (x, y) in a.iter().zip(b.iter()) {
            if x != y {
                let id = entry_id(x)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return Ok(Some(format!("entry {id} differs")));
            }
        }
        if a.len() != b.len() {
            return Ok(Some(CHANGED.to_string()));
        }
        if a.len() < chunk {
            return Ok(None);
        }
        let Some(last) = a.last().and_then(entry_id) else {
            return Ok(None);
        };
        let mut next = b"(".to_vec();
        next.extend_from_slice(&last);
        start = Bytes::from(next);
    }
}

/// The parts of `XINFO STREAM` that a copy must carry (not the radix tree's shape).
fn stream_fields(f: Frame) -> Vec<(Bytes, Frame)> {
    let keep: [&[u8]; 4] = [
        b"length",
        b"last-generated-id",
        b"max-deleted-entry-id",
        b"entries-added",
    ];
    let Some(flat) = items(f) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        if let Some(n) = name.as_bytes() {
            if keep.contains(&n.as_ref()) {
                out.push((n.clone(), value));
            }
        }
    }
    out
}

/// The parts of each `XINFO GROUPS` entry that replication carries. Not `entries-read` or
/// `lag`: Redis 7.x replicates `XREADGROUP` as `XCLAIM … LASTID`, which does not carry the
/// group's read counter, so even a native replica shows it unset where its master has it.
fn group_fields(f: Frame) -> Vec<Vec<(Bytes, Frame)>> {
    let keep: [&[u8]; 4] = [b"name", b"consumers", b"pending", b"last-delivered-id"];
    items(f)
        .unwrap_or_default()
        .into_iter()
        .map(|g| {
            let flat = items(g).unwrap_or_default();
            let mut out = Vec::new();
            let mut it = flat.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                if let Some(n) = name.as_bytes() {
                    if keep.contains(&n.as_ref()) {
                        out.push((n.clone(), value));
                    }
                }
            }
            out
        })
        .collect()
}

/// Stream metadata the value digest does not cover: last id, consumer groups and their
/// pending entries (idle times excluded: they differ by nature).
async fn stream_meta(
    src: &mut Node,
    tgt: &mut Node,
    key: &Bytes,
) -> Result<Option<String>, VerifyError> {
    let info = [bytes_arg("XINFO"), bytes_arg("STREAM"), key.clone()];
    let (a, b) = tokio::try_join!(src.request_raw(&info), tgt.request_raw(&info))?;
    if stream_fields(a) != stream_fields(b) {
        return Ok(Some(
            "stream metadata (last id, entries added) differs".to_string(),
        ));
    }
    let groups = [bytes_arg("XINFO"), bytes_arg("GROUPS"), key.clone()];
    let (a, b) = tokio::try_join!(src.request_raw(&groups), tgt.request_raw(&groups))?;
    if group_fields(a.clone()) != group_fields(b) {
        return Ok(Some("consumer groups differ".to_string()));
    }
    for group in items(a).unwrap_or_default() {
        let Some(fields) = items(group) else { continue };
        let name = fields
            .chunks(2)
            .find(|p| p.first().and_then(Frame::as_bytes).map(|b| b.as_ref()) == Some(b"name"))
            .and_then(|p| p.get(1))
            .and_then(Frame::as_bytes)
            .cloned();
        let Some(name) = name else { continue };
        let pending = [bytes_arg("XPENDING"), key.clone(), name.clone()];
        let (a, b) = tokio::try_join!(src.request_raw(&pending), tgt.request_raw(&pending))?;
        if a != b {
            return Ok(Some(format!(
                "pending entries of group {} differ",
                String::from_utf8_lossy(&name)
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_tolerance() {
        let t = Duration::from_secs(2);
        assert!(ttl_equal(-1, -1, t));
        assert!(!ttl_equal(-1, 5000, t));
        assert!(!ttl_equal(5000, -1, t));
        assert!(ttl_equal(5000, 3000, t));
        assert!(!ttl_equal(5000, 2999, t));
    }

    #[test]
    fn element_hashes_are_order_independent_when_summed() {
        let a = element_hash(&[b"x"]).wrapping_add(element_hash(&[b"y"]));
        let b = element_hash(&[b"y"]).wrapping_add(element_hash(&[b"x"]));
        assert_eq!(a, b);
        // Length prefixes keep ("ab","c") apart from ("a","bc").
        assert_ne!(element_hash(&[b"ab", b"c"]), element_hash(&[b"a", b"bc"]));
        // A sum does not cancel duplicates the way a xor would.
        let x = element_hash(&[b"x"]);
        assert_ne!(x.wrapping_add(x), 0);
    }

    #[test]
    fn scores_compare_as_numbers() {
        let f = |s: &'static str| Frame::Bulk(Bytes::from_static(s.as_bytes()));
        assert!(same_score(&f("0.1"), &f("0.10000000000000001")));
        assert!(!same_score(&f("1"), &f("2")));
    }
}
