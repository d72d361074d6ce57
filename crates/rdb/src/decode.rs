//! Decoding of serialized values (the `payload` of an [`Entry`](crate::Entry)
//! or of a DUMP) into a [`Value`].

use bytes::Bytes;

use crate::consts::*;
use crate::dialect::Dialect;
use crate::error::{ErrorKind, RdbError};

/// Decoded view of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(Bytes),
    /// List elements, head to tail.
    List(Vec<Bytes>),
    /// Set members (serialization order).
    Set(Vec<Bytes>),
    /// Sorted set members with scores (serialization order).
    SortedSet(Vec<(Bytes, f64)>),
    /// Hash fields and values.
    Hash(Vec<(Bytes, Bytes)>),
    /// Hash with per-field expiration (Redis 7.4+ `HASH_METADATA`,
    /// `HASH_LISTPACK_EX`, Valkey 9 `HASH_2`): field, value, absolute expire time in
    /// unix ms.
    HashWithTtl(Vec<(Bytes, Bytes, Option<u64>)>),
    /// A stream.
    Stream(Stream),
    /// A module value (opaque).
    Module {
        /// The 64-bit module id.
        module_id: u64,
        /// The module opcode stream after the id, up to and including EOF.
        raw: Bytes,
    },
}

/// A stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A (non-deleted) stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// Entry id.
    pub id: StreamId,
    /// Field/value pairs.
    pub fields: Vec<(Bytes, Bytes)>,
}

/// A pending entry of a consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEntry {
    /// Entry id.
    pub id: StreamId,
    /// Last delivery time (unix ms).
    pub delivery_time_ms: u64,
    /// Number of deliveries.
    pub delivery_count: u64,
}

/// A consumer of a consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// Consumer name.
    pub name: Bytes,
    /// Last seen time (unix ms).
    pub seen_time_ms: u64,
    /// Last active time (unix ms), stream format v3+.
    pub active_time_ms: Option<u64>,
    /// Ids of the pending entries owned by this consumer.
    pub pending: Vec<StreamId>,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerGroup {
    /// Group name.
    pub name: Bytes,
    /// Last delivered id.
    pub last_id: StreamId,
    /// Entries read counter (stream format v2+); -1 when unknown (the
    /// server reports nil).
    pub entries_read: Option<i64>,
    /// Group PEL.
    pub pending: Vec<PendingEntry>,
    /// Consumers.
    pub consumers: Vec<Consumer>,
}

/// A decoded stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Live entries in id order.
    pub entries: Vec<StreamEntry>,
    /// Number of live entries as stored.
    pub length: u64,
    /// Last generated id.
    pub last_id: StreamId,
    /// First entry id (v2+).
    pub first_id: Option<StreamId>,
    /// Max deleted entry id (v2+).
    pub max_deleted_id: Option<StreamId>,
    /// Entries ever added (v2+).
    pub entries_added: Option<u64>,
    /// Consumer groups.
    pub groups: Vec<ConsumerGroup>,
}

/// Cap for preallocations driven by counts read from the data.
const PREALLOC_CAP: usize = 4096;

fn cap(n: u64) -> usize {
    (n as usize).min(PREALLOC_CAP)
}

/// Cursor over a payload slice.
struct Cur<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data[0]` for error messages.
    base: u64,
}

impl<'a> Cur<'a> {
    fn new(data: &'a [u8], base: u64) -> Self {
        Cur { data, pos: 0, base }
    }

    fn err(&self, kind: ErrorKind) -> RdbError {
        RdbError::new(self.base + self.pos as u64, kind)
    }

    fn corrupt(&self, msg: impl Into<String>) -> RdbError {
        self.err(ErrorKind::Corrupt(msg.into()))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RdbError> {
        let rem = (self.data.len() - self.pos) as u64;
        if n > rem {
            return Err(RdbError::new(
                self.base + self.data.len() as u64,
                ErrorKind::UnexpectedEof,
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, RdbError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Returns (value, is_encoded).
    fn len(&mut self) -> Result<(u64, bool), RdbError> {
        let b = self.u8()?;
        match b >> 6 {
            0 => Ok((u64::from(b & 0x3f), false)),
            1 => {
                let b2 = self.u8()?;
                Ok(((u64::from(b & 0x3f) << 8) | u64::from(b2), false))
            }
            2 => match b {
                RDB_32BITLEN => Ok((u64::from(u32::from_be_bytes(self.array()?)), false)),
                RDB_64BITLEN => Ok((u64::from_be_bytes(self.array()?), false)),
                _ => Err(self.err(ErrorKind::BadLength(format!(
                    "invalid length prefix byte {b:#04x}"
                )))),
            },
            _ => Ok((u64::from(b & 0x3f), true)),
        }
    }

    fn plain_len(&mut self) -> Result<u64, RdbError> {
        match self.len()? {
            (n, false) => Ok(n),
            (e, true) => Err(self.err(ErrorKind::BadLength(format!(
                "expected a length, found string encoding {e}"
            )))),
        }
    }

    fn string(&mut self) -> Result<Bytes, RdbError> {
        match self.len()? {
            (n, false) => Ok(Bytes::copy_from_slice(self.take(n)?)),
            (enc, true) => match enc as u8 {
                RDB_ENC_INT8 => Ok(Bytes::from((self.u8()? as i8).to_string())),
                RDB_ENC_INT16 => Ok(Bytes::from(i16::from_le_bytes(self.array()?).to_string())),
                RDB_ENC_INT32 => Ok(Bytes::from(i32::from_le_bytes(self.array()?).to_string())),
                RDB_ENC_LZF => {
                    let clen = self.plain_len()?;
                    let ulen = self.plain_len()?;
                    let start = self.pos;
                    let c = self.take(clen)?;
                    let ulen = usize::try_from(ulen).map_err(|_| {
                        self.err(ErrorKind::BadLength(format!("LZF length {ulen}")))
                    })?;
                    crate::lzf::decompress(c, ulen)
                        .map(Bytes::from)
                        .map_err(|m| {
                            RdbError::new(
                                self.base + start as u64 + m.input_offset,
                                ErrorKind::Lzf(m),
                            )
                        })
                }
                e => Err(self.err(ErrorKind::BadLength(format!("unknown string encoding {e}")))),
            },
        }
    }

    /// A string used as an embedded blob (ziplist, listpack, ...), with the
    /// stream offset of its start (for error reporting, approximate for LZF).
    fn blob(&mut self) -> Result<(Bytes, u64), RdbError> {
        let at = self.base + self.pos as u64;
        Ok((self.string()?, at))
    }

    fn double_string(&mut self) -> Result<f64, RdbError> {
        let n = self.u8()?;
        match n {
            253 => Ok(f64::NAN),
            254 => Ok(f64::INFINITY),
            255 => Ok(f64::NEG_INFINITY),
            n => {
                let s = self.take(u64::from(n))?;
                parse_f64(s).ok_or_else(|| self.corrupt("invalid double string"))
            }
        }
    }

    fn millis(&mut self) -> Result<u64, RdbError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn stream_id(&mut self) -> Result<StreamId, RdbError> {
        Ok(StreamId {
            ms: self.plain_len()?,
            seq: self.plain_len()?,
        })
    }

    fn raw_stream_id(&mut self) -> Result<StreamId, RdbError> {
        let r = self.take(16)?;
        Ok(raw_id(r))
    }
}

fn raw_id(r: &[u8]) -> StreamId {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&r[..8]);
    b.copy_from_slice(&r[8..16]);
    StreamId {
        ms: u64::from_be_bytes(a),
        seq: u64::from_be_bytes(b),
    }
}

fn parse_f64(s: &[u8]) -> Option<f64> {
    std::str::from_utf8(s).ok()?.trim().parse::<f64>().ok()
}

/// Decodes a value payload of RDB type `value_type`, numbered as in a `REDIS` RDB (see
/// [`decode_value_in`] for a `VALKEY` one).
///
/// Errors carry the offset within `payload`.
pub fn decode_value(value_type: u8, payload: &[u8]) -> Result<Value, RdbError> {
    decode_value_in(Dialect::Redis, value_type, payload)
}

/// Decodes a value payload of RDB type `value_type` in the numbering `dialect`
/// ([`crate::Parser::dialect`] for a snapshot, [`Dialect::of_rdb_version`] for a DUMP).
///
/// Errors carry the offset within `payload`.
pub fn decode_value_in(
    dialect: Dialect,
    value_type: u8,
    payload: &[u8],
) -> Result<Value, RdbError> {
    let mut c = Cur::new(payload, 0);
    let v = if dialect.is_valkey_hash2(value_type) {
        valkey_hash2(&mut c)?
    } else {
        decode_inner(value_type, &mut c)?
    };
    if !c.at_end() {
        return Err(c.corrupt(format!(
            "{} trailing bytes after value",
            payload.len() - c.pos
        )));
    }
    Ok(v)
}

/// Valkey 9's hash with field TTLs: a length, then field, value and expire time (ms, -1 for
/// none) per field. Valkey refuses other negative times when it loads one.
fn valkey_hash2(c: &mut Cur<'_>) -> Result<Value, RdbError> {
    let n = c.plain_len()?;
    let mut v = Vec::with_capacity(cap(n));
    for _ in 0..n {
        let f = c.string()?;
        let val = c.string()?;
        let at = c.pos;
        let exp = i64::from_le_bytes(c.array()?);
        let exp = match exp {
            -1 => None,
            t if t >= 0 => Some(t as u64),
            t => {
                let mut e = c.corrupt(format!("field expire time {t}"));
                e.offset = c.base + at as u64;
                return Err(e);
            }
        };
        v.push((f, val, exp));
    }
    Ok(Value::HashWithTtl(v))
}

fn decode_inner(t: u8, c: &mut Cur<'_>) -> Result<Value, RdbError> {
    Ok(match t {
        RDB_TYPE_STRING => Value::String(c.string()?),
        RDB_TYPE_LIST | RDB_TYPE_SET => {
            let n = c.plain_len()?;
            let mut v = Vec::with_capacity(cap(n));
            for _ in 0..n {
                v.push(c.string()?);
            }
            if t == RDB_TYPE_LIST {
                Value::List(v)
            } else {
                Value::Set(v)
            }
        }
        RDB_TYPE_ZSET | RDB_TYPE_ZSET_2 => {
            let n = c.plain_len()?;
            let mut v = Vec::with_capacity(cap(n));
            for _ in 0..n {
                let m = c.string()?;
                let s = if t == RDB_TYPE_ZSET {
                    c.double_string()?
                } else {
                    f64::from_le_bytes(c.array()?)
                };
                v.push((m, s));
            }
            Value::SortedSet(v)
        }
        RDB_TYPE_HASH => {
            let n = c.plain_len()?;
            let mut v = Vec::with_capacity(cap(n));
            for _ in 0..n {
                let f = c.string()?;
                let val = c.string()?;
                v.push((f, val));
            }
            Value::Hash(v)
        }
        RDB_TYPE_HASH_METADATA | RDB_TYPE_HASH_METADATA_PRE_GA => {
            let min_expire = if t == RDB_TYPE_HASH_METADATA {
                Some(c.millis()?)
            } else {
                None
            };
            let n = c.plain_len()?;
            let mut v = Vec::with_capacity(cap(n));
            for _ in 0..n {
                let ttl = c.plain_len()?;
                let f = c.string()?;
                let val = c.string()?;
                let exp = match (ttl, min_expire) {
                    (0, _) => None,
                    (ttl, Some(min)) => Some(ttl.wrapping_add(min).wrapping_sub(1)),
                    (ttl, None) => Some(ttl),
                };
                v.push((f, val, exp));
            }
            Value::HashWithTtl(v)
        }
        RDB_TYPE_LIST_QUICKLIST | RDB_TYPE_LIST_QUICKLIST_2 => {
            let n = c.plain_len()?;
            let mut out = Vec::new();
            for _ in 0..n {
                let container = if t == RDB_TYPE_LIST_QUICKLIST_2 {
                    c.plain_len()?
                } else {
                    QUICKLIST_NODE_CONTAINER_PACKED
                };
                let (blob, at) = c.blob()?;
                match container {
                    QUICKLIST_NODE_CONTAINER_PLAIN => out.push(blob),
                    QUICKLIST_NODE_CONTAINER_PACKED => {
                        let elems = if t == RDB_TYPE_LIST_QUICKLIST {
                            ziplist(&blob, at)?
                        } else {
                            listpack(&blob, at)?
                        };
                        out.extend(elems.into_iter().map(Elem::into_bytes));
                    }
                    other => return Err(c.corrupt(format!("bad quicklist container {other}"))),
                }
            }
            Value::List(out)
        }
        RDB_TYPE_LIST_ZIPLIST => {
            let (blob, at) = c.blob()?;
            Value::List(
                ziplist(&blob, at)?
                    .into_iter()
                    .map(Elem::into_bytes)
                    .collect(),
            )
        }
        RDB_TYPE_SET_INTSET => {
            let (blob, at) = c.blob()?;
            Value::Set(intset(&blob, at)?)
        }
        RDB_TYPE_SET_LISTPACK => {
            let (blob, at) = c.blob()?;
            Value::Set(
                listpack(&blob, at)?
                    .into_iter()
                    .map(Elem::into_bytes)
                    .collect(),
            )
        }
        RDB_TYPE_ZSET_ZIPLIST | RDB_TYPE_ZSET_LISTPACK => {
            let (blob, at) = c.blob()?;
            let elems = if t == RDB_TYPE_ZSET_ZIPLIST {
                ziplist(&blob, at)?
            } else {
                listpack(&blob, at)?
            };
            if elems.len() % 2 != 0 {
                return Err(RdbError::new(
                    at,
                    ErrorKind::Corrupt("odd zset element count".into()),
                ));
            }
            let mut v = Vec::with_capacity(elems.len() / 2);
            let mut it = elems.into_iter();
            while let (Some(m), Some(s)) = (it.next(), it.next()) {
                let score = s.as_f64().ok_or_else(|| {
                    RdbError::new(at, ErrorKind::Corrupt("invalid zset score".into()))
                })?;
                v.push((m.into_bytes(), score));
            }
            Value::SortedSet(v)
        }
        RDB_TYPE_HASH_ZIPLIST | RDB_TYPE_HASH_LISTPACK => {
            let (blob, at) = c.blob()?;
            let elems = if t == RDB_TYPE_HASH_ZIPLIST {
                ziplist(&blob, at)?
            } else {
                listpack(&blob, at)?
            };
            if elems.len() % 2 != 0 {
                return Err(RdbError::new(
                    at,
                    ErrorKind::Corrupt("odd hash element count".into()),
                ));
            }
            let mut v = Vec::with_capacity(elems.len() / 2);
            let mut it = elems.into_iter();
            while let (Some(f), Some(val)) = (it.next(), it.next()) {
                v.push((f.into_bytes(), val.into_bytes()));
            }
            Value::Hash(v)
        }
        RDB_TYPE_HASH_LISTPACK_EX | RDB_TYPE_HASH_LISTPACK_EX_PRE_GA => {
            if t == RDB_TYPE_HASH_LISTPACK_EX {
                c.millis()?;
            }
            let (blob, at) = c.blob()?;
            let elems = listpack(&blob, at)?;
            if elems.len() % 3 != 0 {
                return Err(RdbError::new(
                    at,
                    ErrorKind::Corrupt("hash listpack-ex element count not a multiple of 3".into()),
                ));
            }
            let mut v = Vec::with_capacity(elems.len() / 3);
            let mut it = elems.into_iter();
            while let (Some(f), Some(val), Some(ttl)) = (it.next(), it.next(), it.next()) {
                let ttl = ttl.as_i64().ok_or_else(|| {
                    RdbError::new(at, ErrorKind::Corrupt("invalid field TTL".into()))
                })?;
                let exp = if ttl == 0 { None } else { Some(ttl as u64) };
                v.push((f.into_bytes(), val.into_bytes(), exp));
            }
            Value::HashWithTtl(v)
        }
        RDB_TYPE_HASH_ZIPMAP => {
            let (blob, at) = c.blob()?;
            Value::Hash(zipmap(&blob, at)?)
        }
        RDB_TYPE_STREAM_LISTPACKS | RDB_TYPE_STREAM_LISTPACKS_2 | RDB_TYPE_STREAM_LISTPACKS_3 => {
            Value::Stream(stream(t, c)?)
        }
        RDB_TYPE_MODULE_2 => {
            let module_id = c.plain_len()?;
            let start = c.pos;
            skip_module_opcodes(c)?;
            Value::Module {
                module_id,
                raw: Bytes::copy_from_slice(&c.data[start..c.pos]),
            }
        }
        RDB_TYPE_MODULE_PRE_GA => {
            return Err(c.err(ErrorKind::Unsupported("pre-GA module value format".into())))
        }
        t => return Err(c.err(ErrorKind::UnknownType(t))),
    })
}

fn skip_module_opcodes(c: &mut Cur<'_>) -> Result<(), RdbError> {
    loop {
        match c.plain_len()? {
            RDB_MODULE_OPCODE_EOF => return Ok(()),
            RDB_MODULE_OPCODE_SINT | RDB_MODULE_OPCODE_UINT => {
                c.plain_len()?;
            }
            RDB_MODULE_OPCODE_FLOAT => {
                c.take(4)?;
            }
            RDB_MODULE_OPCODE_DOUBLE => {
                c.take(8)?;
            }
            RDB_MODULE_OPCODE_STRING => {
                c.string()?;
            }
            op => return Err(c.corrupt(format!("unknown module opcode {op}"))),
        }
    }
}

fn stream(t: u8, c: &mut Cur<'_>) -> Result<Stream, RdbError> {
    let nodes = c.plain_len()?;
    let mut entries = Vec::new();
    for _ in 0..nodes {
        let (key, at) = c.blob()?;
        if key.len() != 16 {
            return Err(RdbError::new(
                at,
                ErrorKind::Corrupt("stream node key is not 16 bytes".into()),
            ));
        }
        let master = raw_id(&key);
        let (lp, at) = c.blob()?;
        stream_node(master, &listpack(&lp, at)?, at, &mut entries)?;
    }
    let length = c.plain_len()?;
    let last_id = c.stream_id()?;
    let (first_id, max_deleted_id, entries_added) = if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
        (
            Some(c.stream_id()?),
            Some(c.stream_id()?),
            Some(c.plain_len()?),
        )
    } else {
        (None, None, None)
    };
    let ngroups = c.plain_len()?;
    let mut groups = Vec::with_capacity(cap(ngroups));
    for _ in 0..ngroups {
        let name = c.string()?;
        let last_id = c.stream_id()?;
        let entries_read = if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
            Some(c.plain_len()? as i64)
        } else {
            None
        };
        let npel = c.plain_len()?;
        let mut pending = Vec::with_capacity(cap(npel));
        for _ in 0..npel {
            let id = c.raw_stream_id()?;
            let delivery_time_ms = c.millis()?;
            let delivery_count = c.plain_len()?;
            pending.push(PendingEntry {
                id,
                delivery_time_ms,
                delivery_count,
            });
        }
        let ncons = c.plain_len()?;
        let mut consumers = Vec::with_capacity(cap(ncons));
        for _ in 0..ncons {
            let name = c.string()?;
            let seen_time_ms = c.millis()?;
            let active_time_ms = if t >= RDB_TYPE_STREAM_LISTPACKS_3 {
                Some(c.millis()?)
            } else {
                None
            };
            let np = c.plain_len()?;
            let mut pel = Vec::with_capacity(cap(np));
            for _ in 0..np {
                pel.push(c.raw_stream_id()?);
            }
            consumers.push(Consumer {
                name,
                seen_time_ms,
                active_time_ms,
                pending: pel,
            });
        }
        groups.push(ConsumerGroup {
            name,
            last_id,
            entries_read,
            pending,
            consumers,
        });
    }
    Ok(Stream {
        entries,
        length,
        last_id,
        first_id,
        max_deleted_id,
        entries_added,
        groups,
    })
}

const STREAM_ITEM_FLAG_DELETED: i64 = 1;
const STREAM_ITEM_FLAG_SAMEFIELDS: i64 = 2;

fn stream_node(
    master: StreamId,
    elems: &[Elem],
    at: u64,
    out: &mut Vec<StreamEntry>,
) -> Result<(), RdbError> {
    let bad = |m: &str| RdbError::new(at, ErrorKind::Corrupt(format!("stream listpack: {m}")));
    let int = |i: usize| -> Result<i64, RdbError> {
        elems
            .get(i)
            .and_then(Elem::as_i64)
            .ok_or_else(|| bad("expected an integer"))
    };
    // Master entry: count, deleted, #fields, fields..., 0
    let _count = int(0)?;
    let _deleted = int(1)?;
    let nmaster = usize::try_from(int(2)?).map_err(|_| bad("negative field count"))?;
    let master_fields = elems
        .get(3..3usize.saturating_add(nmaster))
        .ok_or_else(|| bad("master fields"))?;
    let mut i = 3 + nmaster + 1;
    if i > elems.len() {
        return Err(bad("truncated master entry"));
    }
    while i < elems.len() {
        let flags = int(i)?;
        let ms = master.ms.wrapping_add(int(i + 1)? as u64);
        let seq = master.seq.wrapping_add(int(i + 2)? as u64);
        i += 3;
        let mut fields = Vec::new();
        if flags & STREAM_ITEM_FLAG_SAMEFIELDS != 0 {
            let vals = elems
                .get(i..i + nmaster)
                .ok_or_else(|| bad("truncated entry values"))?;
            for (f, v) in master_fields.iter().zip(vals) {
                fields.push((f.clone().into_bytes(), v.clone().into_bytes()));
            }
            i += nmaster;
        } else {
            let n = usize::try_from(int(i)?).map_err(|_| bad("negative field count"))?;
            i += 1;
            let kv = elems
                .get(i..i.saturating_add(n.saturating_mul(2)))
                .ok_or_else(|| bad("truncated entry fields"))?;
            for pair in kv.chunks_exact(2) {
                fields.push((pair[0].clone().into_bytes(), pair[1].clone().into_bytes()));
            }
            i += 2 * n;
        }
        // lp-count
        int(i)?;
        i += 1;
        if flags & STREAM_ITEM_FLAG_DELETED == 0 {
            out.push(StreamEntry {
                id: StreamId { ms, seq },
                fields,
            });
        }
    }
    Ok(())
}

/// An element of a ziplist or listpack.
#[derive(Debug, Clone)]
enum Elem {
    Int(i64),
    Str(Bytes),
}

impl Elem {
    fn into_bytes(self) -> Bytes {
        match self {
            Elem::Int(i) => Bytes::from(i.to_string()),
            Elem::Str(b) => b,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Elem::Int(i) => Some(*i),
            Elem::Str(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Elem::Int(i) => Some(*i as f64),
            Elem::Str(b) => parse_f64(b),
        }
    }
}

fn get<'a>(
    blob: &'a [u8],
    from: usize,
    n: usize,
    at: u64,
    what: &str,
) -> Result<&'a [u8], RdbError> {
    blob.get(from..from.saturating_add(n)).ok_or_else(|| {
        RdbError::new(
            at,
            ErrorKind::Corrupt(format!("{what} entry at {from} runs past the end")),
        )
    })
}

fn le_int(b: &[u8]) -> i64 {
    // Sign-extend a little-endian integer of 1..=8 bytes.
    let mut v: u64 = 0;
    for (i, x) in b.iter().enumerate() {
        v |= u64::from(*x) << (8 * i);
    }
    let bits = 8 * b.len() as u32;
    if bits < 64 {
        let shift = 64 - bits;
        ((v << shift) as i64) >> shift
    } else {
        v as i64
    }
}

/// Checks the header shared by listpacks and ziplists (total bytes as u32 LE at 0, which
/// must be the blob's length) and returns the element count (u16 LE at `count_at`).
fn blob_header(blob: &[u8], min_len: usize, count_at: usize) -> Result<u16, String> {
    if blob.len() < min_len {
        return Err("too short".into());
    }
    let total = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
    if total != blob.len() {
        return Err(format!(
            "header says {total} bytes, blob has {}",
            blob.len()
        ));
    }
    Ok(u16::from_le_bytes([blob[count_at], blob[count_at + 1]]))
}

/// Decodes a listpack blob.
fn listpack(blob: &Bytes, at: u64) -> Result<Vec<Elem>, RdbError> {
    let corrupt = |m: String| RdbError::new(at, ErrorKind::Corrupt(format!("listpack: {m}")));
    let declared = blob_header(blob, 7, 4).map_err(corrupt)?;
    let mut out = Vec::with_capacity(usize::from(declared).min(PREALLOC_CAP));
    let mut p = 6usize;
    loop {
        let b = *blob
            .get(p)
            .ok_or_else(|| corrupt("missing end marker".into()))?;
        if b == 0xff {
            if p + 1 != blob.len() {
                return Err(corrupt("data after end marker".into()));
            }
            break;
        }
        let (elem, enc_len) = if b & 0x80 == 0 {
            (Elem::Int(i64::from(b & 0x7f)), 1)
        } else if b & 0xc0 == 0x80 {
            let n = usize::from(b & 0x3f);
            let s = get(blob, p + 1, n, at, "listpack")?;
            (Elem::Str(blob.slice_ref(s)), 1 + n)
        } else if b & 0xe0 == 0xc0 {
            let b2 = get(blob, p + 1, 1, at, "listpack")?[0];
            let raw = (u16::from(b & 0x1f) << 8) | u16::from(b2);
            let v = ((raw << 3) as i16) >> 3;
            (Elem::Int(i64::from(v)), 2)
        } else if b & 0xf0 == 0xe0 {
            let b2 = get(blob, p + 1, 1, at, "listpack")?[0];
            let n = (usize::from(b & 0x0f) << 8) | usize::from(b2);
            let s = get(blob, p + 2, n, at, "listpack")?;
            (Elem::Str(blob.slice_ref(s)), 2 + n)
        } else {
            match b {
                0xf0 => {
                    let l = get(blob, p + 1, 4, at, "listpack")?;
                    let n = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                    let s = get(blob, p + 5, n, at, "listpack")?;
                    (Elem::Str(blob.slice_ref(s)), 5 + n)
                }
                0xf1 => (Elem::Int(le_int(get(blob, p + 1, 2, at, "listpack")?)), 3),
                0xf2 => (Elem::Int(le_int(get(blob, p + 1, 3, at, "listpack")?)), 4),
                0xf3 => (Elem::Int(le_int(get(blob, p + 1, 4, at, "listpack")?)), 5),
                0xf4 => (Elem::Int(le_int(get(blob, p + 1, 8, at, "listpack")?)), 9),
                b => return Err(corrupt(format!("invalid encoding byte {b:#04x} at {p}"))),
            }
        };
        let backlen = match enc_len {
            0..=127 => 1,
            128..=16382 => 2,
            16383..=2097150 => 3,
            2097151..=268435454 => 4,
            _ => 5,
        };
        p = p
            .checked_add(enc_len + backlen)
            .filter(|&q| q < blob.len())
            .ok_or_else(|| corrupt("entry runs past the end".into()))?;
        out.push(elem);
    }
    if declared != u16::MAX && usize::from(declared) != out.len() {
        return Err(corrupt(format!(
            "header says {declared} elements, found {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a ziplist blob.
fn ziplist(blob: &Bytes, at: u64) -> Result<Vec<Elem>, RdbError> {
    let corrupt = |m: String| RdbError::new(at, ErrorKind::Corrupt(format!("ziplist: {m}")));
    let declared = blob_header(blob, 11, 8).map_err(corrupt)?;
    let mut out = Vec::with_capacity(usize::from(declared).min(PREALLOC_CAP));
    let mut p = 10usize;
    loop {
        let b = *blob
            .get(p)
            .ok_or_else(|| corrupt("missing end marker".into()))?;
        if b == 0xff {
            if p + 1 != blob.len() {
                return Err(corrupt("data after end marker".into()));
            }
            break;
        }
        // prevlen
        p += if b < 254 { 1 } else { 5 };
        let e = get(blob, p, 1, at, "ziplist")?[0];
        let (elem, len) = match e >> 6 {
            0 => {
                let n = usize::from(e & 0x3f);
                let s = get(blob, p + 1, n, at, "ziplist")?;
                (Elem::Str(blob.slice_ref(s)), 1 + n)
            }
            1 => {
                let b2 = get(blob, p + 1, 1, at, "ziplist")?[0];
                let n = (usize::from(e & 0x3f) << 8) | usize::from(b2);
                let s = get(blob, p + 2, n, at, "ziplist")?;
                (Elem::Str(blob.slice_ref(s)), 2 + n)
            }
            2 => {
                let l = get(blob, p + 1, 4, at, "ziplist")?;
                let n = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                let s = get(blob, p + 5, n, at, "ziplist")?;
                (Elem::Str(blob.slice_ref(s)), 5 + n)
            }
            _ => match e {
                0xc0 => (Elem::Int(le_int(get(blob, p + 1, 2, at, "ziplist")?)), 3),
                0xd0 => (Elem::Int(le_int(get(blob, p + 1, 4, at, "ziplist")?)), 5),
                0xe0 => (Elem::Int(le_int(get(blob, p + 1, 8, at, "ziplist")?)), 9),
                0xf0 => (Elem::Int(le_int(get(blob, p + 1, 3, at, "ziplist")?)), 4),
                0xfe => (Elem::Int(le_int(get(blob, p + 1, 1, at, "ziplist")?)), 2),
                0xf1..=0xfd => (Elem::Int(i64::from(e & 0x0f) - 1), 1),
                e => return Err(corrupt(format!("invalid encoding byte {e:#04x} at {p}"))),
            },
        };
        p = p
            .checked_add(len)
            .filter(|&q| q < blob.len())
            .ok_or_else(|| corrupt("entry runs past the end".into()))?;
        out.push(elem);
    }
    if declared != u16::MAX && usize::from(declared) != out.len() {
        return Err(corrupt(format!(
            "header says {declared} elements, found {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes an intset blob.
fn intset(blob: &[u8], at: u64) -> Result<Vec<Bytes>, RdbError> {
    let corrupt = |m: String| RdbError::new(at, ErrorKind::Corrupt(format!("intset: {m}")));
    if blob.len() < 8 {
        return Err(corrupt("too short".into()));
    }
    let width = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
    let n = u32::from_le_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
    if !matches!(width, 2 | 4 | 8) {
        return Err(corrupt(format!("invalid encoding {width}")));
    }
    if (n as u64) * (width as u64) + 8 != blob.len() as u64 {
        return Err(corrupt(format!(
            "{n} elements of {width} bytes do not fit {} bytes",
            blob.len()
        )));
    }
    Ok(blob[8..]
        .chunks_exact(width)
        .map(|c| Bytes::from(le_int(c).to_string()))
        .collect())
}

/// Decodes a zipmap blob (Redis < 2.6 hashes).
fn zipmap(blob: &Bytes, at: u64) -> Result<Vec<(Bytes, Bytes)>, RdbError> {
    let corrupt = |m: &str| RdbError::new(at, ErrorKind::Corrupt(format!("zipmap: {m}")));
    let mut p = 1usize;
    let read_len = |p: &mut usize| -> Result<Option<usize>, RdbError> {
        let b = *blob.get(*p).ok_or_else(|| corrupt("missing end marker"))?;
        match b {
            0xff => Ok(None),
            0xfe => {
                let l = get(blob, *p + 1, 4, at, "zipmap")?;
                *p += 5;
                Ok(Some(u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize))
            }
            b => {
                *p += 1;
                Ok(Some(usize::from(b)))
            }
        }
    };
    let mut out = Vec::new();
    if blob.is_empty() {
        return Err(corrupt("empty"));
    }
    loop {
        let Some(klen) = read_len(&mut p)? else {
            if p + 1 != blob.len() {
                return Err(corrupt("data after end marker"));
            }
            break;
        };
        let k = get(blob, p, klen, at, "zipmap")?;
        p += klen;
        let vlen = read_len(&mut p)?.ok_or_else(|| corrupt("missing value"))?;
        let free = usize::from(get(blob, p, 1, at, "zipmap")?[0]);
        p += 1;
        let v = get(blob, p, vlen, at, "zipmap")?;
        p = p.saturating_add(vlen).saturating_add(free);
        out.push((blob.slice_ref(k), blob.slice_ref(v)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listpack_ints_and_strings() {
        // Build a listpack by hand: 7-bit 5, 13-bit -3, 6-bit str "ab", int16 1000.
        let mut body = Vec::new();
        body.extend_from_slice(&[0x05, 1]);
        let raw: u16 = ((-3i16) as u16) & 0x1fff;
        body.extend_from_slice(&[0xc0 | (raw >> 8) as u8, raw as u8, 2]);
        body.extend_from_slice(&[0x82, b'a', b'b', 3]);
        body.extend_from_slice(&[0xf1, 0xe8, 0x03, 3]);
        let total = 6 + body.len() + 1;
        let mut lp = Vec::new();
        lp.extend_from_slice(&(total as u32).to_le_bytes());
        lp.extend_from_slice(&4u16.to_le_bytes());
        lp.extend_from_slice(&body);
        lp.push(0xff);
        let v: Vec<Bytes> = listpack(&Bytes::from(lp), 0)
            .unwrap()
            .into_iter()
            .map(Elem::into_bytes)
            .collect();
        assert_eq!(v, vec!["5", "-3", "ab", "1000"]);
    }

    #[test]
    fn ziplist_immediate_and_int24() {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 0xf1]); // 0
        body.extend_from_slice(&[2, 0xfd]); // 12
        body.extend_from_slice(&[2, 0xf0, 0xff, 0xff, 0xff]); // -1 (24 bit)
        body.extend_from_slice(&[5, 0x02, b'h', b'i']);
        let total = 10 + body.len() + 1;
        let mut zl = Vec::new();
        zl.extend_from_slice(&(total as u32).to_le_bytes());
        zl.extend_from_slice(&0u32.to_le_bytes());
        zl.extend_from_slice(&4u16.to_le_bytes());
        zl.extend_from_slice(&body);
        zl.push(0xff);
        let v: Vec<Bytes> = ziplist(&Bytes::from(zl), 0)
            .unwrap()
            .into_iter()
            .map(Elem::into_bytes)
            .collect();
        assert_eq!(v, vec!["0", "12", "-1", "hi"]);
    }

    #[test]
    fn intset_and_zipmap() {
        let mut is = Vec::new();
        is.extend_from_slice(&2u32.to_le_bytes());
        is.extend_from_slice(&2u32.to_le_bytes());
        is.extend_from_slice(&(-5i16).to_le_bytes());
        is.extend_from_slice(&7i16.to_le_bytes());
        assert_eq!(intset(&is, 0).unwrap(), vec!["-5", "7"]);

        let zm = Bytes::from_static(b"\x01\x01k\x02\x01vv\x00\xff");
        assert_eq!(
            zipmap(&zm, 0).unwrap(),
            vec![(Bytes::from_static(b"k"), Bytes::from_static(b"vv"))]
        );
    }

    #[test]
    fn plain_types() {
        // list of two strings, one int-encoded
        let p = b"\x02\x01a\xc0\x07";
        assert_eq!(
            decode_value(RDB_TYPE_LIST, p).unwrap(),
            Value::List(vec![Bytes::from_static(b"a"), Bytes::from_static(b"7")])
        );
        // zset v1 with special scores
        let p = b"\x02\x01a\xfe\x01b\x031.5";
        assert_eq!(
            decode_value(RDB_TYPE_ZSET, p).unwrap(),
            Value::SortedSet(vec![
                (Bytes::from_static(b"a"), f64::INFINITY),
                (Bytes::from_static(b"b"), 1.5)
            ])
        );
        assert!(decode_value(RDB_TYPE_LIST, b"\x05\x01a").is_err());
        assert!(decode_value(99, b"").is_err());
    }
}
