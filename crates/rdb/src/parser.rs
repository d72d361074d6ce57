//! The streaming pull parser.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use crate::consts::*;
use crate::crc64::Crc64;
use crate::dialect::Dialect;
use crate::error::{key_ctx, ErrorKind, RdbError};

const BUF_SIZE: usize = 64 * 1024;
/// Largest chunk read directly into a destination buffer at once; also the
/// cap for preallocations driven by lengths read from the stream.
const DIRECT_CHUNK: usize = 1024 * 1024;
/// A capture buffer with more spare capacity than this is replaced after a
/// payload was split off (so one huge value does not pin memory).
const CAPTURE_KEEP: usize = 4 * 1024 * 1024;

/// One top-level item of an RDB stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An AUX field (`redis-ver`, `repl-id`, `lua` scripts in old RDBs, ...).
    Aux {
        /// Field name.
        key: Bytes,
        /// Field value (int-encoded values are rendered as decimal text).
        value: Bytes,
    },
    /// `SELECTDB`: following entries belong to this database.
    SelectDb(u64),
    /// `RESIZEDB` hint for the current database.
    ResizeDb {
        /// Number of keys.
        db_size: u64,
        /// Number of keys with an expire.
        expires_size: u64,
    },
    /// A key and its serialized value.
    Entry(Entry),
    /// A function library (`RDB_OPCODE_FUNCTION2`), suitable for `FUNCTION LOAD`.
    Function {
        /// The library source code.
        code: Bytes,
    },
    /// Module auxiliary data, skipped structurally.
    ModuleAux {
        /// The 64-bit module id (name + encoding version).
        module_id: u64,
        /// The raw bytes after the module id (`when` opcode, `when`, and the
        /// module opcode stream up to and including its EOF marker).
        raw: Bytes,
    },
    /// The start of a value too big to capture whole (see
    /// [`Parser::set_big_values`]): the entry with an empty `payload`, except for a string
    /// whose `payload` is its length (see [`Entry::big_string_len`]). Its elements follow
    /// as [`Item::BigEntryChunk`]s, then one [`Item::BigEntryEnd`].
    BigEntryStart(Entry),
    /// The next elements of a big value, as a complete serialized value of the entry's
    /// type holding just these elements (so [`crate::decode_value`] reads it); a part of a
    /// big string is a string.
    BigEntryChunk {
        /// The serialized elements.
        payload: Bytes,
    },
    /// The end of a big value. For a stream, `payload` is the stream without entries: its
    /// last id, counters and consumer groups.
    BigEntryEnd {
        /// Streams only: the metadata as a serialized stream with no entries.
        payload: Option<Bytes>,
    },
    /// Per-slot sizing hint (Redis 7.4+/Valkey, cluster mode).
    SlotInfo {
        /// Slot number.
        slot: u64,
        /// Keys in the slot.
        slot_size: u64,
        /// Keys with an expire in the slot.
        expires_slot_size: u64,
    },
}

/// A key/value pair with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The database selected by the last `SELECTDB` (0 if none).
    pub db: u64,
    /// The key.
    pub key: Bytes,
    /// The RDB type byte (`RDB_TYPE_*`).
    pub value_type: u8,
    /// Value bytes exactly as serialized after the key.
    pub payload: Bytes,
    /// Absolute expire time in unix milliseconds.
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds.
    pub idle: Option<u64>,
    /// LFU frequency.
    pub freq: Option<u8>,
}

impl Entry {
    /// For the entry of an [`Item::BigEntryStart`] of a string: the string's length (its
    /// whole length, decompressed), which the payload holds as an RDB length.
    pub fn big_string_len(&self) -> Option<u64> {
        if self.value_type != RDB_TYPE_STRING {
            return None;
        }
        let p = &self.payload[..];
        let (n, used) = match *p.first()? {
            b if b >> 6 == 0 => (u64::from(b & 0x3f), 1),
            b if b >> 6 == 1 => ((u64::from(b & 0x3f) << 8) | u64::from(*p.get(1)?), 2),
            RDB_32BITLEN => (
                u64::from(u32::from_be_bytes(p.get(1..5)?.try_into().ok()?)),
                5,
            ),
            RDB_64BITLEN => (u64::from_be_bytes(p.get(1..9)?.try_into().ok()?), 9),
            _ => return None,
        };
        (used == p.len()).then_some(n)
    }
}

/// When a value counts as big and is streamed in chunks instead of captured whole
/// ([`Parser::set_big_values`]). Only values stored as a sequence (plain lists, sets,
/// sorted sets, hashes, quicklists, streams) and strings (plain or LZF-compressed, the
/// latter decompressed on the way with a window of [`crate::lzf::WINDOW`] bytes) can be
/// streamed; listpack/ziplist encoded values are small by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BigValues {
    /// A plain list/set/zset/hash with at least this many elements.
    pub elements: u64,
    /// A quicklist or stream with at least this many nodes (each holds many elements).
    pub nodes: u64,
    /// A string of at least this many bytes (its length once decompressed).
    pub string_bytes: u64,
    /// Most elements in one chunk.
    pub chunk_elements: u64,
    /// Most quicklist or stream nodes in one chunk. A node holds many elements (a stream
    /// node up to 100 entries by default, each written as its own `XADD`), and a chunk is
    /// held decoded at once downstream, so this stays small.
    pub chunk_nodes: u64,
    /// A chunk ends once it holds this many bytes.
    pub chunk_bytes: u64,
}

impl Default for BigValues {
    fn default() -> Self {
        BigValues {
            elements: 5000,
            nodes: 100,
            string_bytes: 8 * 1024 * 1024,
            chunk_elements: 1000,
            chunk_nodes: 20,
            chunk_bytes: 1024 * 1024,
        }
    }
}

/// A big value being streamed.
#[derive(Debug)]
struct Big {
    t: u8,
    /// The key, for errors.
    key: Bytes,
    /// Elements (nodes; bytes for a string) not yet returned.
    left: u64,
    /// Bytes every chunk's payload starts with (hash metadata's minimum expire time).
    prefix: Vec<u8>,
    /// An LZF-compressed string: its decoder.
    lzf: Option<Box<LzfString>>,
}

/// An LZF-compressed string being decompressed chunk by chunk.
#[derive(Debug)]
struct LzfString {
    decoder: crate::lzf::Decoder,
    /// Compressed bytes not consumed yet.
    input_left: u64,
    /// Stream offset of the compressed data.
    input_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Done,
    Failed,
}

/// Result of reading a length prefix.
#[derive(Debug, Clone, Copy)]
enum Len {
    Plain(u64),
    Encoded(u8),
}

/// Streaming RDB parser over a blocking reader.
///
/// Keeps a fixed 64 KiB read buffer; memory use beyond that is bounded by the
/// size of the largest single key/value being returned.
pub struct Parser<R: Read> {
    reader: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    crc: Crc64,
    /// `buf[..crc_pos]` was already fed to `crc`.
    crc_pos: usize,
    capturing: bool,
    /// `buf[..cap_pos]` was already appended to `capture` (when capturing).
    cap_pos: usize,
    capture: BytesMut,
    state: State,
    version: Option<u32>,
    valkey_magic: bool,
    db: u64,
    expire_ms: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
    big_values: Option<BigValues>,
    big: Option<Big>,
}

impl<R: Read> std::fmt::Debug for Parser<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("offset", &self.offset())
            .field("version", &self.version)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Parser<R> {
    /// Wraps a reader. Nothing is read until [`next_item`](Self::next_item).
    pub fn new(reader: R) -> Self {
        Parser {
            reader,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
            crc: Crc64::new(),
            crc_pos: 0,
            capturing: false,
            cap_pos: 0,
            capture: BytesMut::with_capacity(BUF_SIZE),
            state: State::Header,
            version: None,
            valkey_magic: false,
            db: 0,
            expire_ms: None,
            idle: None,
            freq: None,
            big_values: None,
            big: None,
        }
    }

    /// Streams values above these thresholds in chunks ([`Item::BigEntryStart`], …)
    /// instead of returning them whole, so memory stays bounded by a chunk.
    pub fn set_big_values(&mut self, big: Option<BigValues>) {
        self.big_values = big;
    }

    /// The RDB version, once the header was read.
    pub fn rdb_version(&self) -> Option<u32> {
        self.version
    }

    /// True if the header used the `VALKEY` magic.
    pub fn is_valkey_magic(&self) -> bool {
        self.valkey_magic
    }

    /// Whose numbering the type bytes follow (by the magic; Redis' before the header).
    pub fn dialect(&self) -> Dialect {
        if self.valkey_magic {
            Dialect::Valkey
        } else {
            Dialect::Redis
        }
    }

    /// Number of bytes consumed from the stream so far.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Returns the underlying reader. Bytes that were read ahead into the
    /// internal buffer but not consumed are lost (after `Ok(None)` there are
    /// none unless the peer sent data after the RDB trailer; see
    /// [`buffered`](Self::buffered)).
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Bytes read from the reader but not consumed yet (e.g. data following
    /// the RDB in a replication stream).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Returns the reader and the read-ahead bytes not consumed by the parser.
    pub fn into_parts(self) -> (R, Bytes) {
        let rest = Bytes::copy_from_slice(&self.buf[self.pos..self.end]);
        (self.reader, rest)
    }

    fn err(&self, kind: ErrorKind) -> RdbError {
        RdbError {
            offset: self.offset(),
            key: None,
            kind,
        }
    }

    /// Next item; `Ok(None)` once the EOF opcode and the checksum were read
    /// and verified.
    pub fn next_item(&mut self) -> Result<Option<Item>, RdbError> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(self.err(ErrorKind::Poisoned)),
            _ => {}
        }
        match self.next_inner() {
            Ok(v) => Ok(v),
            Err(e) => {
                self.state = State::Failed;
                self.capturing = false;
                self.capture.clear();
                Err(e)
            }
        }
    }

    fn next_inner(&mut self) -> Result<Option<Item>, RdbError> {
        if self.state == State::Header {
            self.read_header()?;
            self.state = State::Body;
        }
        if let Some(big) = &self.big {
            let key = big.key.clone();
            return self.next_big_chunk().map(Some).map_err(|mut e| {
                e.key = Some(key_ctx(&key));
                e
            });
        }
        loop {
            let t = self.u8()?;
            match t {
                RDB_OPCODE_EOF => {
                    self.finish()?;
                    self.state = State::Done;
                    return Ok(None);
                }
                RDB_OPCODE_SELECTDB => {
                    let db = self.plain_len()?;
                    self.db = db;
                    return Ok(Some(Item::SelectDb(db)));
                }
                RDB_OPCODE_RESIZEDB => {
                    let db_size = self.plain_len()?;
                    let expires_size = self.plain_len()?;
                    return Ok(Some(Item::ResizeDb {
                        db_size,
                        expires_size,
                    }));
                }
                RDB_OPCODE_EXPIRETIME => {
                    let s = i32::from_le_bytes(self.array::<4>()?);
                    self.expire_ms = Some(i64::from(s) * 1000);
                }
                RDB_OPCODE_EXPIRETIME_MS => {
                    self.expire_ms = Some(i64::from_le_bytes(self.array::<8>()?));
                }
                RDB_OPCODE_IDLE => {
                    self.idle = Some(self.plain_len()?);
                }
                RDB_OPCODE_FREQ => {
                    self.freq = Some(self.u8()?);
                }
                RDB_OPCODE_AUX => {
                    let key = self.read_string()?;
                    let value = self.read_string()?;
                    return Ok(Some(Item::Aux { key, value }));
                }
                RDB_OPCODE_MODULE_AUX => {
                    let module_id = self.plain_len()?;
                    self.start_capture();
                    let when_op = self.plain_len()?;
                    if when_op != RDB_MODULE_OPCODE_UINT {
                        return Err(self.err(ErrorKind::Corrupt(format!(
                            "module aux 'when' opcode {when_op}, expected {RDB_MODULE_OPCODE_UINT}"
                        ))));
                    }
                    self.plain_len()?;
                    self.skip_module_opcodes()?;
                    let raw = self.end_capture();
                    return Ok(Some(Item::ModuleAux { module_id, raw }));
                }
                RDB_OPCODE_FUNCTION_PRE_GA => {
                    return Err(self.err(ErrorKind::Unsupported(
                        "pre-GA function library format (Redis 7.0 RC)".into(),
                    )));
                }
                RDB_OPCODE_FUNCTION2 => {
                    let code = self.read_string()?;
                    return Ok(Some(Item::Function { code }));
                }
                RDB_OPCODE_SLOT_INFO => {
                    let slot = self.plain_len()?;
                    let slot_size = self.plain_len()?;
                    let expires_slot_size = self.plain_len()?;
                    return Ok(Some(Item::SlotInfo {
                        slot,
                        slot_size,
                        expires_slot_size,
                    }));
                }
                // Valkey's numbering ends at 22: what Redis numbers above it is unknown there.
                t if is_value_type(t) && !(self.valkey_magic && t > RDB_TYPE_VALKEY_HASH_2) => {
                    let key = self.read_string()?;
                    if self.big_values.is_some() {
                        match self.try_big_start(t, &key) {
                            Ok(true) => {
                                let mut payload = BytesMut::new();
                                if let (RDB_TYPE_STRING, Some(big)) = (t, &self.big) {
                                    write_len(&mut payload, big.left);
                                }
                                return Ok(Some(Item::BigEntryStart(Entry {
                                    db: self.db,
                                    key,
                                    value_type: t,
                                    payload: payload.freeze(),
                                    expire_ms: self.expire_ms.take(),
                                    idle: self.idle.take(),
                                    freq: self.freq.take(),
                                })));
                            }
                            Ok(false) => {}
                            Err(mut e) => {
                                e.key = Some(key_ctx(&key));
                                return Err(e);
                            }
                        }
                    }
                    self.start_capture();
                    if let Err(mut e) = self.skip_value(t) {
                        e.key = Some(key_ctx(&key));
                        return Err(e);
                    }
                    let payload = self.end_capture();
                    let entry = Entry {
                        db: self.db,
                        key,
                        value_type: t,
                        payload,
                        expire_ms: self.expire_ms.take(),
                        idle: self.idle.take(),
                        freq: self.freq.take(),
                    };
                    return Ok(Some(Item::Entry(entry)));
                }
                t => {
                    // Report the offset of the type byte itself.
                    let mut e = self.err(ErrorKind::UnknownType(t));
                    e.offset -= 1;
                    return Err(e);
                }
            }
        }
    }

    /// Reads the element count of a value of type `t` and, when the value is big, starts
    /// streaming it; otherwise leaves the stream where it was.
    fn try_big_start(&mut self, t: u8, key: &Bytes) -> Result<bool, RdbError> {
        let Some(th) = self.big_values else {
            return Ok(false);
        };
        let (min, prefix) = match t {
            _ if self.dialect().is_valkey_hash2(t) => (th.elements, 0),
            RDB_TYPE_STRING => (th.string_bytes, 0),
            RDB_TYPE_LIST | RDB_TYPE_SET | RDB_TYPE_ZSET | RDB_TYPE_ZSET_2 | RDB_TYPE_HASH => {
                (th.elements, 0)
            }
            RDB_TYPE_HASH_METADATA_PRE_GA => (th.elements, 0),
            RDB_TYPE_HASH_METADATA => (th.elements, 8),
            RDB_TYPE_LIST_QUICKLIST
            | RDB_TYPE_LIST_QUICKLIST_2
            | RDB_TYPE_STREAM_LISTPACKS
            | RDB_TYPE_STREAM_LISTPACKS_2
            | RDB_TYPE_STREAM_LISTPACKS_3 => (th.nodes, 0),
            _ => return Ok(false),
        };
        // Peek: the prefix and the length (at most 9 bytes; an LZF string's encoding byte
        // and two lengths, 19) must be in the buffer so that the position can be restored.
        // When the stream has fewer bytes left, the value cannot be big.
        let need = prefix + if t == RDB_TYPE_STRING { 19 } else { 9 };
        self.fill_up_to(need)?;
        if self.end - self.pos < need {
            return Ok(false);
        }
        let save = self.pos;
        let mut head = Vec::new();
        if prefix > 0 {
            if self.end - self.pos < prefix {
                return Ok(false);
            }
            head.extend_from_slice(&self.buf[self.pos..self.pos + prefix]);
            self.pos += prefix;
        }
        let mut lzf = None;
        let n = match self.len() {
            Ok(Len::Plain(n)) => n,
            Ok(Len::Encoded(RDB_ENC_LZF)) if t == RDB_TYPE_STRING => {
                let (Ok(clen), Ok(ulen)) = (self.plain_len(), self.plain_len()) else {
                    self.pos = save;
                    return Ok(false);
                };
                lzf = Some(Box::new(LzfString {
                    decoder: crate::lzf::Decoder::new(ulen),
                    input_left: clen,
                    input_at: self.offset(),
                }));
                ulen
            }
            _ => {
                self.pos = save;
                return Ok(false);
            }
        };
        if n < min.max(1) {
            self.pos = save;
            return Ok(false);
        }
        self.big = Some(Big {
            t,
            key: key.clone(),
            left: n,
            prefix: head,
            lzf,
        });
        Ok(true)
    }

    /// Reads until `n` bytes are buffered or the stream ends (without failing at its end).
    fn fill_up_to(&mut self, n: usize) -> Result<(), RdbError> {
        if self.end - self.pos >= n {
            return Ok(());
        }
        self.sync();
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
            self.crc_pos = 0;
            self.cap_pos = 0;
        }
        while self.end < n {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err_at_end(ErrorKind::Io(e))),
            }
        }
        Ok(())
    }

    /// The next chunk of the big value being streamed, or its end.
    fn next_big_chunk(&mut self) -> Result<Item, RdbError> {
        let Some(big) = self.big.take() else {
            return Err(self.err(ErrorKind::Poisoned));
        };
        let th = self.big_values.unwrap_or_default();
        let t = big.t;
        if big.left == 0 {
            let payload = if matches!(
                t,
                RDB_TYPE_STREAM_LISTPACKS
                    | RDB_TYPE_STREAM_LISTPACKS_2
                    | RDB_TYPE_STREAM_LISTPACKS_3
            ) {
                self.start_capture();
                self.skip_stream_tail(t)?;
                let tail = self.end_capture();
                let mut p = BytesMut::with_capacity(tail.len() + 1);
                p.extend_from_slice(&[0]);
                p.extend_from_slice(&tail);
                Some(p.freeze())
            } else {
                None
            };
            return Ok(Item::BigEntryEnd { payload });
        }
        let mut big = big;
        let mut out = BytesMut::new();
        out.extend_from_slice(&big.prefix);
        let taken;
        if t == RDB_TYPE_STRING {
            taken = big.left.min(th.chunk_bytes.max(1));
            write_len(&mut out, taken);
            match big.lzf.as_deref_mut() {
                Some(lz) => self.read_lzf(lz, &mut out, taken, taken == big.left)?,
                None => self.read_into(&mut out, taken)?,
            }
        } else {
            let most = if is_node_type(t) {
                th.chunk_nodes
            } else {
                th.chunk_elements
            };
            self.start_capture();
            let mut n = 0u64;
            while n < big.left && n < most.max(1) {
                self.skip_element(t)?;
                n += 1;
                self.sync_capture();
                if self.capture.len() as u64 >= th.chunk_bytes {
                    break;
                }
            }
            let raw = self.end_capture();
            taken = n;
            write_len(&mut out, n);
            out.extend_from_slice(&raw);
            if matches!(
                t,
                RDB_TYPE_STREAM_LISTPACKS
                    | RDB_TYPE_STREAM_LISTPACKS_2
                    | RDB_TYPE_STREAM_LISTPACKS_3
            ) {
                // An empty stream tail: length, last id, (v2+: first id, max deleted id,
                // entries added), no groups.
                let zeros = if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
                    9
                } else {
                    4
                };
                out.extend_from_slice(&[0u8; 9][..zeros]);
            }
        }
        big.left -= taken;
        self.big = Some(big);
        Ok(Item::BigEntryChunk {
            payload: out.freeze(),
        })
    }

    /// Decompresses the next `n` bytes of an LZF string into `out`; `last` when they end
    /// it (then its compressed data must end there too).
    fn read_lzf(
        &mut self,
        lz: &mut LzfString,
        out: &mut BytesMut,
        n: u64,
        last: bool,
    ) -> Result<(), RdbError> {
        let want = lz.decoder.produced() + n;
        out.reserve(n.min(DIRECT_CHUNK as u64) as usize);
        while lz.decoder.produced() < want || (last && lz.input_left > 0) {
            if lz.input_left == 0 {
                break;
            }
            if self.pos == self.end {
                self.fill(1)?;
            }
            let avail = ((self.end - self.pos) as u64).min(lz.input_left) as usize;
            let max_out = (want - lz.decoder.produced()) as usize;
            let used = lz
                .decoder
                .decode(&self.buf[self.pos..self.pos + avail], out, max_out)
                .map_err(|e| self.lzf_err(lz, e))?;
            self.pos += used;
            lz.input_left -= used as u64;
        }
        if last || lz.input_left == 0 {
            lz.decoder.finish().map_err(|e| self.lzf_err(lz, e))?;
        }
        Ok(())
    }

    fn lzf_err(&self, lz: &LzfString, e: crate::lzf::LzfError) -> RdbError {
        RdbError::new(lz.input_at + e.input_offset, ErrorKind::Lzf(e))
    }

    /// Skips one element (one node for quicklists and streams) of a value of type `t`.
    fn skip_element(&mut self, t: u8) -> Result<(), RdbError> {
        if self.dialect().is_valkey_hash2(t) {
            return self.skip_valkey_hash2_field();
        }
        match t {
            RDB_TYPE_LIST | RDB_TYPE_SET | RDB_TYPE_LIST_QUICKLIST => self.skip_string(),
            RDB_TYPE_LIST_QUICKLIST_2 => {
                self.plain_len()?;
                self.skip_string()
            }
            RDB_TYPE_ZSET => {
                self.skip_string()?;
                self.skip_double_string()
            }
            RDB_TYPE_ZSET_2 => {
                self.skip_string()?;
                self.skip(8)
            }
            RDB_TYPE_HASH
            | RDB_TYPE_STREAM_LISTPACKS
            | RDB_TYPE_STREAM_LISTPACKS_2
            | RDB_TYPE_STREAM_LISTPACKS_3 => {
                self.skip_string()?;
                self.skip_string()
            }
            RDB_TYPE_HASH_METADATA | RDB_TYPE_HASH_METADATA_PRE_GA => {
                self.plain_len()?;
                self.skip_string()?;
                self.skip_string()
            }
            t => Err(self.err(ErrorKind::UnknownType(t))),
        }
    }

    fn read_header(&mut self) -> Result<(), RdbError> {
        let h = self.array::<9>()?;
        let (digits, valkey): (&[u8], bool) = if &h[..5] == b"REDIS" {
            (&h[5..], false)
        } else if &h[..6] == b"VALKEY" {
            (&h[6..], true)
        } else {
            return Err(RdbError::new(
                0,
                ErrorKind::BadMagic(String::from_utf8_lossy(&h).into_owned()),
            ));
        };
        if !digits.iter().all(|b| b.is_ascii_digit()) {
            return Err(RdbError::new(
                0,
                ErrorKind::BadMagic(String::from_utf8_lossy(&h).into_owned()),
            ));
        }
        let v = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let ok = if valkey {
            (80..=MAX_VALKEY_RDB_VERSION).contains(&v)
        } else {
            (1..=MAX_REDIS_RDB_VERSION).contains(&v)
        };
        if !ok {
            return Err(RdbError::new(5, ErrorKind::UnsupportedVersion(v)));
        }
        self.version = Some(v);
        self.valkey_magic = valkey;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RdbError> {
        let version = self.version.unwrap_or(0);
        if version < 5 {
            return Ok(());
        }
        self.sync();
        let actual = self.crc.finish();
        let expected = u64::from_le_bytes(self.array::<8>()?);
        // The trailer itself is not part of the checksum.
        self.crc_pos = self.pos;
        if expected != 0 && expected != actual {
            let mut e = self.err(ErrorKind::ChecksumMismatch { expected, actual });
            e.offset -= 8;
            return Err(e);
        }
        Ok(())
    }

    // ----- buffer management -------------------------------------------

    /// Feeds consumed buffer bytes to the CRC and the capture.
    fn sync(&mut self) {
        if self.crc_pos < self.pos {
            self.crc.update(&self.buf[self.crc_pos..self.pos]);
            self.crc_pos = self.pos;
        }
        self.sync_capture();
    }

    #[inline]
    fn sync_capture(&mut self) {
        if self.capturing && self.cap_pos < self.pos {
            self.capture
                .extend_from_slice(&self.buf[self.cap_pos..self.pos]);
            self.cap_pos = self.pos;
        }
    }

    /// Ensures at least `need` (<= buffer size) unconsumed bytes are buffered.
    #[cold]
    fn fill(&mut self, need: usize) -> Result<(), RdbError> {
        debug_assert!(need <= self.buf.len());
        self.fill_up_to(need)?;
        if self.end - self.pos < need {
            return Err(self.err_at_end(ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    fn err_at_end(&self, kind: ErrorKind) -> RdbError {
        let mut e = self.err(kind);
        e.offset = self.base + self.end as u64;
        e
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, RdbError> {
        if self.pos >= self.end {
            self.fill(1)?;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        if self.end - self.pos < N {
            self.fill(N)?;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    /// Empties the buffer (all bytes in it must be consumed) after syncing it.
    fn drain_buffer(&mut self) {
        debug_assert_eq!(self.pos, self.end);
        self.sync();
        self.base += self.pos as u64;
        self.pos = 0;
        self.end = 0;
        self.crc_pos = 0;
        self.cap_pos = 0;
    }

    /// Reads `n` bytes straight from the reader into `dst` (buffer must be
    /// empty), updating the CRC. Grows `dst` chunk by chunk, so a corrupt
    /// length only allocates as much as the stream really delivers.
    fn read_direct(&mut self, dst: &mut BytesMut, mut n: u64) -> Result<(), RdbError> {
        debug_assert_eq!(self.pos, self.end);
        while n > 0 {
            let chunk = n.min(DIRECT_CHUNK as u64) as usize;
            let old = dst.len();
            dst.resize(old + chunk, 0);
            let mut got = 0;
            while got < chunk {
                match self.reader.read(&mut dst[old + got..old + chunk]) {
                    Ok(0) => {
                        self.crc.update(&dst[old..old + got]);
                        self.base += got as u64;
                        dst.truncate(old + got);
                        return Err(self.err(ErrorKind::UnexpectedEof));
                    }
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.crc.update(&dst[old..old + got]);
                        self.base += got as u64;
                        dst.truncate(old + got);
                        return Err(self.err(ErrorKind::Io(e)));
                    }
                }
            }
            self.crc.update(&dst[old..]);
            self.base += chunk as u64;
            n -= chunk as u64;
        }
        Ok(())
    }

    /// Consumes `n` bytes (captured if capturing).
    fn skip(&mut self, mut n: u64) -> Result<(), RdbError> {
        loop {
            let avail = (self.end - self.pos) as u64;
            if n <= avail {
                self.pos += n as usize;
                return Ok(());
            }
            self.pos = self.end;
            n -= avail;
            if self.capturing && n >= self.buf.len() as u64 {
                self.drain_buffer();
                let mut cap = std::mem::take(&mut self.capture);
                let r = self.read_direct(&mut cap, n);
                self.capture = cap;
                return r;
            }
            self.fill(1)?;
        }
    }

    /// Appends `n` bytes to `dst` (not for use while capturing).
    fn read_into(&mut self, dst: &mut BytesMut, mut n: u64) -> Result<(), RdbError> {
        debug_assert!(!self.capturing);
        loop {
            let avail = self.end - self.pos;
            if n <= avail as u64 {
                let n = n as usize;
                dst.extend_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(());
            }
            dst.extend_from_slice(&self.buf[self.pos..self.end]);
            self.pos = self.end;
            n -= avail as u64;
            if n >= self.buf.len() as u64 {
                self.drain_buffer();
                return self.read_direct(dst, n);
            }
            self.fill(1)?;
        }
    }

    #[inline]
    fn start_capture(&mut self) {
        debug_assert!(self.capture.is_empty());
        self.capturing = true;
        self.cap_pos = self.pos;
    }

    #[inline]
    fn end_capture(&mut self) -> Bytes {
        self.sync_capture();
        self.capturing = false;
        let out = self.capture.split().freeze();
        if self.capture.capacity() > CAPTURE_KEEP {
            self.capture = BytesMut::with_capacity(BUF_SIZE);
        }
        out
    }

    // ----- primitive grammar -------------------------------------------

    fn len(&mut self) -> Result<Len, RdbError> {
        let b = self.u8()?;
        match b >> 6 {
            0 => Ok(Len::Plain(u64::from(b & 0x3f))),
            1 => {
                let b2 = self.u8()?;
                Ok(Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(b2)))
            }
            2 => match b {
                RDB_32BITLEN => Ok(Len::Plain(u64::from(u32::from_be_bytes(
                    self.array::<4>()?,
                )))),
                RDB_64BITLEN => Ok(Len::Plain(u64::from_be_bytes(self.array::<8>()?))),
                _ => Err(self.err(ErrorKind::BadLength(format!(
                    "invalid length prefix byte {b:#04x}"
                )))),
            },
            _ => Ok(Len::Encoded(b & 0x3f)),
        }
    }

    fn plain_len(&mut self) -> Result<u64, RdbError> {
        match self.len()? {
            Len::Plain(n) => Ok(n),
            Len::Encoded(e) => Err(self.err(ErrorKind::BadLength(format!(
                "expected a length, found string encoding {e}"
            )))),
        }
    }

    /// Reads a string object into a fresh `Bytes` (decoding int and LZF
    /// encodings).
    fn read_string(&mut self) -> Result<Bytes, RdbError> {
        match self.len()? {
            Len::Plain(n) => {
                let mut b = BytesMut::with_capacity(n.min(DIRECT_CHUNK as u64) as usize);
                self.read_into(&mut b, n)?;
                Ok(b.freeze())
            }
            Len::Encoded(RDB_ENC_INT8) => {
                let v = self.u8()? as i8;
                Ok(Bytes::from(v.to_string()))
            }
            Len::Encoded(RDB_ENC_INT16) => {
                let v = i16::from_le_bytes(self.array::<2>()?);
                Ok(Bytes::from(v.to_string()))
            }
            Len::Encoded(RDB_ENC_INT32) => {
                let v = i32::from_le_bytes(self.array::<4>()?);
                Ok(Bytes::from(v.to_string()))
            }
            Len::Encoded(RDB_ENC_LZF) => {
                let clen = self.plain_len()?;
                let ulen = self.plain_len()?;
                let mut c = BytesMut::with_capacity(clen.min(DIRECT_CHUNK as u64) as usize);
                self.read_into(&mut c, clen)?;
                let ulen = usize::try_from(ulen)
                    .map_err(|_| self.err(ErrorKind::BadLength(format!("LZF length {ulen}"))))?;
                let at = self.offset() - clen;
                let out = crate::lzf::decompress(&c, ulen)
                    .map_err(|m| RdbError::new(at + m.input_offset, ErrorKind::Lzf(m)))?;
                Ok(Bytes::from(out))
            }
            Len::Encoded(e) => {
                Err(self.err(ErrorKind::BadLength(format!("unknown string encoding {e}"))))
            }
        }
    }

    fn skip_string(&mut self) -> Result<(), RdbError> {
        match self.len()? {
            Len::Plain(n) => self.skip(n),
            Len::Encoded(RDB_ENC_INT8) => self.skip(1),
            Len::Encoded(RDB_ENC_INT16) => self.skip(2),
            Len::Encoded(RDB_ENC_INT32) => self.skip(4),
            Len::Encoded(RDB_ENC_LZF) => {
                let clen = self.plain_len()?;
                self.plain_len()?;
                self.skip(clen)
            }
            Len::Encoded(e) => {
                Err(self.err(ErrorKind::BadLength(format!("unknown string encoding {e}"))))
            }
        }
    }

    fn skip_strings(&mut self, count: u64) -> Result<(), RdbError> {
        for _ in 0..count {
            self.skip_string()?;
        }
        Ok(())
    }

    /// Old-style (type 3) zset score: length byte then ASCII, or a special.
    fn skip_double_string(&mut self) -> Result<(), RdbError> {
        let b = self.u8()?;
        if b < 253 {
            self.skip(u64::from(b))?;
        }
        Ok(())
    }

    fn skip_module_opcodes(&mut self) -> Result<(), RdbError> {
        loop {
            let op = self.plain_len()?;
            match op {
                RDB_MODULE_OPCODE_EOF => return Ok(()),
                RDB_MODULE_OPCODE_SINT | RDB_MODULE_OPCODE_UINT => {
                    self.plain_len()?;
                }
                RDB_MODULE_OPCODE_FLOAT => self.skip(4)?,
                RDB_MODULE_OPCODE_DOUBLE => self.skip(8)?,
                RDB_MODULE_OPCODE_STRING => self.skip_string()?,
                op => {
                    return Err(self.err(ErrorKind::Corrupt(format!("unknown module opcode {op}"))))
                }
            }
        }
    }

    /// One field of Valkey's hash with field TTLs: name, value, expire time.
    fn skip_valkey_hash2_field(&mut self) -> Result<(), RdbError> {
        self.skip_string()?;
        self.skip_string()?;
        self.skip(8)
    }

    fn skip_value(&mut self, t: u8) -> Result<(), RdbError> {
        if self.dialect().is_valkey_hash2(t) {
            let n = self.plain_len()?;
            for _ in 0..n {
                self.skip_valkey_hash2_field()?;
            }
            return Ok(());
        }
        match t {
            RDB_TYPE_STRING
            | RDB_TYPE_HASH_ZIPMAP
            | RDB_TYPE_LIST_ZIPLIST
            | RDB_TYPE_SET_INTSET
            | RDB_TYPE_ZSET_ZIPLIST
            | RDB_TYPE_HASH_ZIPLIST
            | RDB_TYPE_HASH_LISTPACK
            | RDB_TYPE_ZSET_LISTPACK
            | RDB_TYPE_SET_LISTPACK
            | RDB_TYPE_HASH_LISTPACK_EX_PRE_GA => self.skip_string(),
            RDB_TYPE_HASH_LISTPACK_EX => {
                self.skip(8)?;
                self.skip_string()
            }
            RDB_TYPE_LIST | RDB_TYPE_SET | RDB_TYPE_LIST_QUICKLIST => {
                let n = self.plain_len()?;
                self.skip_strings(n)
            }
            RDB_TYPE_LIST_QUICKLIST_2 => {
                let n = self.plain_len()?;
                for _ in 0..n {
                    let container = self.plain_len()?;
                    if container != QUICKLIST_NODE_CONTAINER_PLAIN
                        && container != QUICKLIST_NODE_CONTAINER_PACKED
                    {
                        return Err(self.err(ErrorKind::Corrupt(format!(
                            "bad quicklist container {container}"
                        ))));
                    }
                    self.skip_string()?;
                }
                Ok(())
            }
            RDB_TYPE_ZSET => {
                let n = self.plain_len()?;
                for _ in 0..n {
                    self.skip_string()?;
                    self.skip_double_string()?;
                }
                Ok(())
            }
            RDB_TYPE_ZSET_2 => {
                let n = self.plain_len()?;
                for _ in 0..n {
                    self.skip_string()?;
                    self.skip(8)?;
                }
                Ok(())
            }
            RDB_TYPE_HASH => {
                let n = self.plain_len()?;
                for _ in 0..n {
                    self.skip_string()?;
                    self.skip_string()?;
                }
                Ok(())
            }
            RDB_TYPE_HASH_METADATA | RDB_TYPE_HASH_METADATA_PRE_GA => {
                if t == RDB_TYPE_HASH_METADATA {
                    self.skip(8)?;
                }
                let n = self.plain_len()?;
                for _ in 0..n {
                    self.plain_len()?;
                    self.skip_string()?;
                    self.skip_string()?;
                }
                Ok(())
            }
            RDB_TYPE_STREAM_LISTPACKS
            | RDB_TYPE_STREAM_LISTPACKS_2
            | RDB_TYPE_STREAM_LISTPACKS_3 => self.skip_stream(t),
            RDB_TYPE_MODULE_2 => {
                self.plain_len()?;
                self.skip_module_opcodes()
            }
            RDB_TYPE_MODULE_PRE_GA => {
                Err(self.err(ErrorKind::Unsupported("pre-GA module value format".into())))
            }
            t => Err(self.err(ErrorKind::UnknownType(t))),
        }
    }

    fn skip_stream(&mut self, t: u8) -> Result<(), RdbError> {
        let nodes = self.plain_len()?;
        for _ in 0..nodes {
            self.skip_string()?; // master id
            self.skip_string()?; // listpack
        }
        self.skip_stream_tail(t)
    }

    /// Everything of a stream after its nodes.
    fn skip_stream_tail(&mut self, t: u8) -> Result<(), RdbError> {
        // length, last id
        for _ in 0..3 {
            self.plain_len()?;
        }
        if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
            // first id, max deleted id, entries added
            for _ in 0..5 {
                self.plain_len()?;
            }
        }
        let groups = self.plain_len()?;
        for _ in 0..groups {
            self.skip_string()?; // name
            self.plain_len()?; // last id ms
            self.plain_len()?; // last id seq
            if t >= RDB_TYPE_STREAM_LISTPACKS_2 {
                self.plain_len()?; // entries read
            }
            let pel = self.plain_len()?;
            for _ in 0..pel {
                self.skip(16 + 8)?; // raw id, delivery time
                self.plain_len()?; // delivery count
            }
            let consumers = self.plain_len()?;
            for _ in 0..consumers {
                self.skip_string()?;
                self.skip(8)?; // seen time
                if t >= RDB_TYPE_STREAM_LISTPACKS_3 {
                    self.skip(8)?; // active time
                }
                let pel = self.plain_len()?;
                for _ in 0..pel {
                    self.skip(16)?;
                }
            }
        }
        Ok(())
    }
}

/// Appends an RDB length prefix.
fn write_len(out: &mut BytesMut, n: u64) {
    if n < 1 << 6 {
        out.extend_from_slice(&[n as u8]);
    } else if n < 1 << 14 {
        out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else if n <= u64::from(u32::MAX) {
        out.extend_from_slice(&[RDB_32BITLEN]);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&[RDB_64BITLEN]);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Values whose big form is streamed node by node.
fn is_node_type(t: u8) -> bool {
    matches!(
        t,
        RDB_TYPE_LIST_QUICKLIST
            | RDB_TYPE_LIST_QUICKLIST_2
            | RDB_TYPE_STREAM_LISTPACKS
            | RDB_TYPE_STREAM_LISTPACKS_2
            | RDB_TYPE_STREAM_LISTPACKS_3
    )
}

fn is_value_type(t: u8) -> bool {
    t <= RDB_TYPE_MODULE_2 || (RDB_TYPE_HASH_ZIPMAP..=RDB_TYPE_HASH_LISTPACK_EX).contains(&t)
}
