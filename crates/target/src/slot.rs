//! Redis Cluster key slots: CRC16 (XMODEM) of the key, or of its `{hash tag}`, mod 16384.

const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

pub const SLOTS: u16 = 16384;

/// The part of a key that is hashed: the first non-empty `{…}` if any, else the key.
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

pub fn slot_of(key: &[u8]) -> u16 {
    XMODEM.checksum(hash_tag(key)) % SLOTS
}

/// Whether `slot` is in one of the inclusive `ranges`.
pub fn in_ranges(slot: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(a, b)| slot >= a && slot <= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert!(in_ranges(5, &[(0, 5), (10, 20)]));
        assert!(!in_ranges(6, &[(0, 5), (10, 20)]));
    }
}
