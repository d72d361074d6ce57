//! Empty collections: Redis drops them when it loads an RDB ("empty keys skipped") and
//! refuses them in `RESTORE`, so a copy must skip them too.

use crate::consts::*;

/// Largest blob (ziplist, listpack, intset, zipmap) that can be empty: an empty ziplist is
/// 11 bytes, the others are smaller.
const EMPTY_BLOB_MAX: u64 = 16;

/// True when a value of type `t` holds no element (a list, set, sorted set or hash with
/// none), as Redis' `rdbLoadObject` reports with `RDB_LOAD_ERR_EMPTY_KEY`. Strings,
/// streams and module values are never empty collections. Cheap: it reads a length or a
/// blob header, never the elements; a payload it cannot read is not called empty (the
/// target judges it).
pub fn is_empty_value(t: u8, payload: &[u8]) -> bool {
    let mut c = Slice(payload);
    match t {
        RDB_TYPE_LIST
        | RDB_TYPE_SET
        | RDB_TYPE_ZSET
        | RDB_TYPE_ZSET_2
        | RDB_TYPE_HASH
        | RDB_TYPE_HASH_METADATA_PRE_GA => c.len() == Some(0),
        RDB_TYPE_HASH_METADATA => c.skip(8).is_some() && c.len() == Some(0),
        RDB_TYPE_LIST_ZIPLIST
        | RDB_TYPE_ZSET_ZIPLIST
        | RDB_TYPE_HASH_ZIPLIST
        | RDB_TYPE_SET_INTSET
        | RDB_TYPE_SET_LISTPACK
        | RDB_TYPE_ZSET_LISTPACK
        | RDB_TYPE_HASH_LISTPACK
        | RDB_TYPE_HASH_ZIPMAP
        | RDB_TYPE_HASH_LISTPACK_EX_PRE_GA => c.empty_blob(t) == Some(true),
        RDB_TYPE_HASH_LISTPACK_EX => c.skip(8).is_some() && c.empty_blob(t) == Some(true),
        // Redis drops a quicklist's empty nodes, and the key when no node is left.
        RDB_TYPE_LIST_QUICKLIST | RDB_TYPE_LIST_QUICKLIST_2 => {
            let Some(nodes) = c.len() else {
                return false;
            };
            for _ in 0..nodes {
                if t == RDB_TYPE_LIST_QUICKLIST_2 {
                    match c.len() {
                        Some(QUICKLIST_NODE_CONTAINER_PACKED) => {}
                        // A plain node holds one element.
                        _ => return false,
                    }
                }
                if c.empty_blob(t) != Some(true) {
                    return false;
                }
            }
            true
        }
        _ => false,
    }
}

struct Slice<'a>(&'a [u8]);

impl Slice<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.0.first()?;
        self.0 = &self.0[1..];
        Some(b)
    }

    /// A plain RDB length (not a string encoding).
    fn len(&mut self) -> Option<u64> {
        let b = self.u8()?;
        match b >> 6 {
            0 => Some(u64::from(b & 0x3f)),
            1 => Some((u64::from(b & 0x3f) << 8) | u64::from(self.u8()?)),
            _ if b == RDB_32BITLEN => {
                let v = self.0.get(..4)?;
                let n = u32::from_be_bytes(v.try_into().ok()?);
                self.skip(4)?;
                Some(u64::from(n))
            }
            _ if b == RDB_64BITLEN => {
                let v = self.0.get(..8)?;
                let n = u64::from_be_bytes(v.try_into().ok()?);
                self.skip(8)?;
                Some(n)
            }
            _ => None,
        }
    }

    /// Reads a string holding a blob of a value of type `t` and tells whether the blob
    /// holds no element; `None` when it cannot tell (not a small plain or LZF string).
    fn empty_blob(&mut self, t: u8) -> Option<bool> {
        let first = *self.0.first()?;
        let blob: Vec<u8> = if first >> 6 == 3 {
            if first & 0x3f != RDB_ENC_LZF {
                return Some(false);
            }
            self.skip(1)?;
            let clen = self.len()?;
            let ulen = self.len()?;
            let data = self.0.get(..usize::try_from(clen).ok()?)?;
            self.skip(data.len())?;
            if ulen > EMPTY_BLOB_MAX {
                return Some(false);
            }
            crate::lzf::decompress(data, ulen as usize).ok()?
        } else {
            let n = self.len()?;
            let data = self.0.get(..usize::try_from(n).ok()?)?;
            self.skip(data.len())?;
            if n > EMPTY_BLOB_MAX {
                return Some(false);
            }
            data.to_vec()
        };
        let count = |at: usize, width: usize| -> Option<bool> {
            let b = blob.get(at..at + width)?;
            Some(b.iter().all(|&x| x == 0))
        };
        match t {
            // zlbytes, zltail, zllen (u16)
            RDB_TYPE_LIST_ZIPLIST
            | RDB_TYPE_ZSET_ZIPLIST
            | RDB_TYPE_HASH_ZIPLIST
            | RDB_TYPE_LIST_QUICKLIST => count(8, 2),
            // encoding (u32), length (u32)
            RDB_TYPE_SET_INTSET => count(4, 4),
            // zmlen (u8), then the end marker
            RDB_TYPE_HASH_ZIPMAP => Some(blob.get(1) == Some(&0xff)),
            // total bytes (u32), element count (u16)
            _ => count(4, 2),
        }
    }
}

/// The name of the module whose 64-bit type id is `id` (9 characters from Redis'
/// `ModuleTypeNameCharSet`, then a 10-bit encoding version), as Redis prints it.
pub fn module_name(id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..9)
        .map(|j| CHARSET[((id >> (10 + 6 * (8 - j))) & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_not() {
        assert!(is_empty_value(RDB_TYPE_LIST, &[0]));
        assert!(!is_empty_value(RDB_TYPE_LIST, &[1, 1, b'a']));
        assert!(!is_empty_value(RDB_TYPE_STRING, &[0]));
        // An empty listpack: 7 bytes total, 0 elements, end marker.
        let lp = [7u8, 0, 0, 0, 0, 0, 0xff];
        let mut p = vec![7u8];
        p.extend_from_slice(&lp);
        assert!(is_empty_value(RDB_TYPE_HASH_LISTPACK, &p));
        let mut q = vec![1u8, 2];
        q.extend_from_slice(&p);
        assert!(is_empty_value(RDB_TYPE_LIST_QUICKLIST_2, &q));
        // One element.
        let lp1 = [9u8, 0, 0, 0, 1, 0, 0x01, 0x01, 0xff];
        let mut p1 = vec![9u8];
        p1.extend_from_slice(&lp1);
        assert!(!is_empty_value(RDB_TYPE_SET_LISTPACK, &p1));
        // An empty intset (encoding 2, length 0).
        assert!(is_empty_value(
            RDB_TYPE_SET_INTSET,
            &[8, 2, 0, 0, 0, 0, 0, 0, 0]
        ));
        assert!(!is_empty_value(RDB_TYPE_SET_INTSET, &[]));
    }

    #[test]
    fn module_names() {
        // "ReJSON-RL" encoding version 3, as Redis encodes it.
        let set = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for c in b"ReJSON-RL" {
            id = (id << 6) | set.iter().position(|x| x == c).unwrap() as u64;
        }
        id = (id << 10) | 3;
        assert_eq!(module_name(id), "ReJSON-RL");
    }
}
