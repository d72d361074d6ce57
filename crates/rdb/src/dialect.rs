//! Whose numbering of type bytes an RDB uses.
//!
//! Redis and Valkey gave the same type byte different meanings once they parted: 22 is
//! Redis 7.4's pre-release hash metadata in a `REDIS` RDB and Valkey 9's hash with field
//! TTLs in a `VALKEY` one, with different layouts. The parser knows from the magic; a DUMP
//! payload tells by its version (Valkey writes 80 and up, Redis stays below).

use crate::consts::*;

/// The numbering of RDB type bytes a payload follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// A `REDIS` RDB, or a payload of version below 80.
    #[default]
    Redis,
    /// A `VALKEY` RDB, or a payload of version 80 and up.
    Valkey,
}

impl Dialect {
    /// The numbering of a snapshot or DUMP payload of RDB version `v`.
    pub fn of_rdb_version(v: u32) -> Dialect {
        if v >= VALKEY_MIN_RDB_VERSION {
            Dialect::Valkey
        } else {
            Dialect::Redis
        }
    }

    /// True when `t` is Valkey 9's hash with field TTLs in this numbering.
    pub fn is_valkey_hash2(self, t: u8) -> bool {
        self == Dialect::Valkey && t == RDB_TYPE_VALKEY_HASH_2
    }

    /// Human-readable name of type byte `t` in this numbering.
    pub fn type_name(self, t: u8) -> &'static str {
        if self.is_valkey_hash2(t) {
            "hash-2 (valkey)"
        } else {
            type_name(t)
        }
    }
}
