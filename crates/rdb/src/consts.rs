//! Constants of the RDB format (from Redis' `rdb.h`).
#![allow(missing_docs)]

/// Highest `REDIS`-magic RDB version accepted (Redis 7.4/8.x write 12).
pub const MAX_REDIS_RDB_VERSION: u32 = 12;
/// Highest `VALKEY`-magic RDB version accepted (Valkey 9 writes 80).
pub const MAX_VALKEY_RDB_VERSION: u32 = 80;

pub const RDB_32BITLEN: u8 = 0x80;
pub const RDB_64BITLEN: u8 = 0x81;

pub const RDB_ENC_INT8: u8 = 0;
pub const RDB_ENC_INT16: u8 = 1;
pub const RDB_ENC_INT32: u8 = 2;
pub const RDB_ENC_LZF: u8 = 3;

pub const RDB_TYPE_STRING: u8 = 0;
pub const RDB_TYPE_LIST: u8 = 1;
pub const RDB_TYPE_SET: u8 = 2;
pub const RDB_TYPE_ZSET: u8 = 3;
pub const RDB_TYPE_HASH: u8 = 4;
pub const RDB_TYPE_ZSET_2: u8 = 5;
pub const RDB_TYPE_MODULE_PRE_GA: u8 = 6;
pub const RDB_TYPE_MODULE_2: u8 = 7;
pub const RDB_TYPE_HASH_ZIPMAP: u8 = 9;
pub const RDB_TYPE_LIST_ZIPLIST: u8 = 10;
pub const RDB_TYPE_SET_INTSET: u8 = 11;
pub const RDB_TYPE_ZSET_ZIPLIST: u8 = 12;
pub const RDB_TYPE_HASH_ZIPLIST: u8 = 13;
pub const RDB_TYPE_LIST_QUICKLIST: u8 = 14;
pub const RDB_TYPE_STREAM_LISTPACKS: u8 = 15;
pub const RDB_TYPE_HASH_LISTPACK: u8 = 16;
pub const RDB_TYPE_ZSET_LISTPACK: u8 = 17;
pub const RDB_TYPE_LIST_QUICKLIST_2: u8 = 18;
pub const RDB_TYPE_STREAM_LISTPACKS_2: u8 = 19;
pub const RDB_TYPE_SET_LISTPACK: u8 = 20;
pub const RDB_TYPE_STREAM_LISTPACKS_3: u8 = 21;
/// In a `REDIS` RDB (and a DUMP payload of version <= 12): Redis 7.4's pre-release hash
/// metadata. In a `VALKEY` RDB it is [`RDB_TYPE_VALKEY_HASH_2`] (see [`crate::Dialect`]).
pub const RDB_TYPE_HASH_METADATA_PRE_GA: u8 = 22;
/// In a `VALKEY` RDB (and a DUMP payload of version >= 80): Valkey 9's hash with field
/// TTLs, `RDB_TYPE_HASH_2`: a length, then per field its name, its value and its absolute
/// expire time in unix ms (8 bytes, little endian; -1 for none).
pub const RDB_TYPE_VALKEY_HASH_2: u8 = 22;
pub const RDB_TYPE_HASH_LISTPACK_EX_PRE_GA: u8 = 23;
pub const RDB_TYPE_HASH_METADATA: u8 = 24;
pub const RDB_TYPE_HASH_LISTPACK_EX: u8 = 25;

pub const RDB_OPCODE_SLOT_INFO: u8 = 244;
pub const RDB_OPCODE_FUNCTION2: u8 = 245;
pub const RDB_OPCODE_FUNCTION_PRE_GA: u8 = 246;
pub const RDB_OPCODE_MODULE_AUX: u8 = 247;
pub const RDB_OPCODE_IDLE: u8 = 248;
pub const RDB_OPCODE_FREQ: u8 = 249;
pub const RDB_OPCODE_AUX: u8 = 250;
pub const RDB_OPCODE_RESIZEDB: u8 = 251;
pub const RDB_OPCODE_EXPIRETIME_MS: u8 = 252;
pub const RDB_OPCODE_EXPIRETIME: u8 = 253;
pub const RDB_OPCODE_SELECTDB: u8 = 254;
pub const RDB_OPCODE_EOF: u8 = 255;

pub const RDB_MODULE_OPCODE_EOF: u64 = 0;
pub const RDB_MODULE_OPCODE_SINT: u64 = 1;
pub const RDB_MODULE_OPCODE_UINT: u64 = 2;
pub const RDB_MODULE_OPCODE_FLOAT: u64 = 3;
pub const RDB_MODULE_OPCODE_DOUBLE: u64 = 4;
pub const RDB_MODULE_OPCODE_STRING: u64 = 5;

pub const QUICKLIST_NODE_CONTAINER_PLAIN: u64 = 1;
pub const QUICKLIST_NODE_CONTAINER_PACKED: u64 = 2;

/// The first RDB version written with the `VALKEY` magic. Valkey keeps the versions below it
/// (up to 79) for Redis' numbering, so a DUMP payload's version alone tells whose numbering
/// of type bytes it uses.
pub const VALKEY_MIN_RDB_VERSION: u32 = 80;

/// Human-readable name of an RDB type byte in a `REDIS` RDB (for logs and errors); see
/// [`crate::Dialect::type_name`] for either numbering.
pub fn type_name(t: u8) -> &'static str {
    match t {
        RDB_TYPE_STRING => "string",
        RDB_TYPE_LIST => "list",
        RDB_TYPE_SET => "set",
        RDB_TYPE_ZSET => "zset",
        RDB_TYPE_HASH => "hash",
        RDB_TYPE_ZSET_2 => "zset-v2",
        RDB_TYPE_MODULE_PRE_GA => "module-pre-ga",
        RDB_TYPE_MODULE_2 => "module",
        RDB_TYPE_HASH_ZIPMAP => "hash-zipmap",
        RDB_TYPE_LIST_ZIPLIST => "list-ziplist",
        RDB_TYPE_SET_INTSET => "set-intset",
        RDB_TYPE_ZSET_ZIPLIST => "zset-ziplist",
        RDB_TYPE_HASH_ZIPLIST => "hash-ziplist",
        RDB_TYPE_LIST_QUICKLIST => "list-quicklist",
        RDB_TYPE_STREAM_LISTPACKS => "stream",
        RDB_TYPE_HASH_LISTPACK => "hash-listpack",
        RDB_TYPE_ZSET_LISTPACK => "zset-listpack",
        RDB_TYPE_LIST_QUICKLIST_2 => "list-quicklist-v2",
        RDB_TYPE_STREAM_LISTPACKS_2 => "stream-v2",
        RDB_TYPE_SET_LISTPACK => "set-listpack",
        RDB_TYPE_STREAM_LISTPACKS_3 => "stream-v3",
        RDB_TYPE_HASH_METADATA_PRE_GA => "hash-metadata-pre-ga",
        RDB_TYPE_HASH_LISTPACK_EX_PRE_GA => "hash-listpack-ex-pre-ga",
        RDB_TYPE_HASH_METADATA => "hash-metadata",
        RDB_TYPE_HASH_LISTPACK_EX => "hash-listpack-ex",
        _ => "unknown",
    }
}
