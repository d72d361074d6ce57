//! `ferry-rdb`: a streaming parser for Redis RDB files / replication payloads.
//!
//! # Why ferry has its own parser
//!
//! ferry copies one Redis into another over the replication protocol. The
//! source sends an RDB snapshot that can be tens of gigabytes, and each key
//! must be replayed on the target with `RESTORE`. This crate is built for
//! exactly that job:
//!
//! * **Streaming, bounded memory.** [`Parser`] is a pull parser over any
//!   blocking [`std::io::Read`] (a socket) with its own 64 KiB buffer. It
//!   yields one [`Item`] at a time and never holds more than the current
//!   key/value in memory.
//! * **Raw payload capture.** For every key, [`Entry::payload`] holds the
//!   value bytes *exactly as serialized in the RDB*. Together with
//!   [`write_dump_payload`] that is a valid `RESTORE` payload, byte-identical
//!   to what `DUMP` returns, with no decode/re-encode step (and so no risk of
//!   changing encodings, scores or stream metadata on the way).
//! * **Precise errors.** Every [`RdbError`] carries the byte offset in the
//!   stream and the key being read, which matters when a 50 GB transfer fails.
//! * **Coverage.** Existing Rust crates decode everything eagerly, are
//!   async-only or blocking on whole files, and skip streams, module values,
//!   functions or the Redis 7.x encodings. Here all RDB types up to RDB 12
//!   (including streams v1–v3 with consumer groups, module values via the
//!   module opcode grammar, function libraries, hash field TTL types) are
//!   walked structurally; [`decode_value`] gives a decoded [`Value`] view
//!   when one is needed (verification, logging, tests).
//!
//! The CRC64 trailer (RDB >= 5) is verified incrementally over every consumed
//! byte; a stored checksum of zero (`rdbchecksum no`) is accepted.
//!
//! # Notes for callers
//!
//! * The parser reads ahead (up to 64 KiB). When the RDB is followed by other
//!   data on the same connection (the replication command stream), use
//!   [`Parser::into_parts`] (or [`Parser::buffered`]) after `Ok(None)` to get
//!   the bytes read past the RDB trailer, or wrap the socket in
//!   [`std::io::Read::take`] with the announced `$<len>`.
//! * `RESTORE` rejects payloads whose version is newer than the target's RDB
//!   version; pass a version the target accepts to [`write_dump_payload`]
//!   (the source's [`Parser::rdb_version`] reproduces `DUMP` exactly).
//! * After an error the parser is poisoned: further calls return
//!   [`ErrorKind::Poisoned`].
//! * Supported: `REDIS` magic with versions 1..=12 and `VALKEY` magic with
//!   version 80. Type 22 is read by the magic ([`Dialect`]): Redis 7.4's
//!   pre-release hash metadata, or Valkey 9's hash with field TTLs; decode a
//!   payload with [`decode_value_in`] and [`Parser::dialect`] (or, for a DUMP,
//!   [`Dialect::of_rdb_version`] of its version). Other types/opcodes not in
//!   Redis' `rdb.h` up to RDB 12 are reported as [`ErrorKind::UnknownType`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = std::fs::File::open("dump.rdb")?;
//! let mut parser = ferry_rdb::Parser::new(file);
//! while let Some(item) = parser.next_item()? {
//!     if let ferry_rdb::Item::Entry(e) = item {
//!         let mut restore = bytes::BytesMut::new();
//!         let version = parser.rdb_version().unwrap_or(0) as u16;
//!         ferry_rdb::write_dump_payload(&mut restore, e.value_type, &e.payload, version);
//!         // send: RESTORE <e.key> <ttl> <restore> ...
//!     }
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod consts;
mod crc64;
mod decode;
mod dialect;
mod dump;
mod empty;
mod error;
pub mod lzf;
mod parser;

pub use crc64::{crc64, Crc64};
pub use decode::{
    decode_value, decode_value_in, Consumer, ConsumerGroup, PendingEntry, Stream, StreamEntry,
    StreamId, Value,
};
pub use dialect::Dialect;
pub use dump::{dump_payload_len, parse_dump_payload, write_dump_payload};
pub use empty::{is_empty_value, module_name};
pub use error::{ErrorKind, RdbError};
pub use parser::{BigValues, Entry, Item, Parser};
