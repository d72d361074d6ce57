//! Error type shared by the streaming parser and the value decoder.

use std::fmt;

/// What went wrong (without position information, see [`RdbError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream does not start with `REDIS` + 4 digits or `VALKEY` + 3 digits.
    #[error("bad magic {0:?}")]
    BadMagic(String),
    /// The RDB version is outside the supported range.
    #[error("unsupported RDB version {0}")]
    UnsupportedVersion(u32),
    /// A type byte / opcode that is not known.
    #[error("unknown RDB type or opcode {0}")]
    UnknownType(u8),
    /// A length prefix is malformed or out of range.
    #[error("bad length: {0}")]
    BadLength(String),
    /// LZF decompression failed (the error's offsets are relative to the compressed data).
    #[error("LZF error: {0}")]
    Lzf(crate::lzf::LzfError),
    /// The CRC64 trailer does not match the computed checksum.
    #[error("checksum mismatch: expected {expected:#018x}, actual {actual:#018x}")]
    ChecksumMismatch {
        /// Checksum stored in the stream.
        expected: u64,
        /// Checksum computed over the consumed bytes.
        actual: u64,
    },
    /// The input ended in the middle of an item.
    #[error("truncated input (unexpected EOF)")]
    UnexpectedEof,
    /// The underlying reader failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are structurally invalid.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A recognised but unsupported construct (pre-GA formats, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// `next_item` was called again after it returned an error.
    #[error("parser already failed")]
    Poisoned,
}

/// An error with the byte offset where it was detected and, while inside an
/// entry, the key being read.
///
/// For the streaming [`Parser`](crate::Parser) the offset is the position in
/// the RDB stream; for [`decode_value`](crate::decode_value) and
/// [`parse_dump_payload`](crate::parse_dump_payload) it is the position in the
/// given slice.
#[derive(Debug, thiserror::Error)]
#[error("{kind} at offset {offset}{}", KeyCtx(.key))]
pub struct RdbError {
    /// Byte offset at which the error was detected.
    pub offset: u64,
    /// The key whose value was being read (lossily converted), if any.
    pub key: Option<String>,
    /// The cause.
    pub kind: ErrorKind,
}

struct KeyCtx<'a>(&'a Option<String>);

impl fmt::Display for KeyCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " while reading key {k:?}"),
            None => Ok(()),
        }
    }
}

impl RdbError {
    /// Creates an error without key context.
    pub fn new(offset: u64, kind: ErrorKind) -> Self {
        RdbError {
            offset,
            key: None,
            kind,
        }
    }

    /// The cause of the error.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// True if the error is a truncation (the input ended too early).
    pub fn is_truncation(&self) -> bool {
        matches!(self.kind, ErrorKind::UnexpectedEof)
    }
}

pub(crate) fn key_ctx(key: &[u8]) -> String {
    const MAX: usize = 200;
    if key.len() > MAX {
        format!("{}...", String::from_utf8_lossy(&key[..MAX]))
    } else {
        String::from_utf8_lossy(key).into_owned()
    }
}
