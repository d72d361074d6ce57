//! Redis Cluster hash slots: `CRC16(key) mod 16384` (CRC-16/XMODEM), where a key holding a
//! non-empty `{…}` hashes only what is between its first `{` and the next `}` (the hash
//! tag).

use std::sync::OnceLock;

pub const SLOTS: usize = 16384;

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The part of `key` that is hashed: its hash tag if it has a non-empty one, else all of it.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) % SLOTS as u16
}

/// A short string hashing to each slot (at most 3 characters of `[0-9a-zA-Z]`), for keys that
/// must live in a given slot: `{<tag>}…`.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut tags = vec![String::new(); SLOTS];
        let mut try_tag = |t: &[u8]| {
            let s = key_slot(t) as usize;
            if tags[s].is_empty() {
                tags[s] = String::from_utf8_lossy(t).into_owned();
            }
        };
        // Shortest first: one and two characters, then three.
        for &a in ALPHABET {
            try_tag(&[a]);
            for &b in ALPHABET {
                try_tag(&[a, b]);
            }
        }
        for &a in ALPHABET {
            for &b in ALPHABET {
                for &c in ALPHABET {
                    try_tag(&[a, b, c]);
                }
            }
        }
        tags
    });
    &tags[slot as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        // CRC-16/XMODEM check value of "123456789" is 0x31C3.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in 0..SLOTS as u16 {
            let t = slot_tag(s);
            assert!(!t.is_empty() && t.len() <= 3, "slot {s}");
            assert_eq!(
                key_slot(format!("ferry:checkpoint:{{{t}}}:job:0").as_bytes()),
                s
            );
        }
    }
}
