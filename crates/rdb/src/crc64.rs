//! Incremental Redis CRC64 (Jones polynomial, reflected), as used for the RDB
//! trailer and DUMP payloads.

use crc_fast::{CrcAlgorithm, Digest};

/// Incremental CRC64 in the variant Redis uses (CRC-64/REDIS). `crc-fast` folds with
/// carry-less multiplication where the CPU has it: the checksum runs over every RDB byte
/// and again over every DUMP payload, and a table-driven CRC was a fifth of a full sync's
/// instructions.
#[derive(Clone)]
pub struct Crc64 {
    digest: Digest,
}

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Crc64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc64({:#018x})", self.finish())
    }
}

impl Crc64 {
    /// A fresh checksum (of zero bytes).
    pub fn new() -> Self {
        Crc64 {
            digest: Digest::new(CrcAlgorithm::Crc64Redis),
        }
    }

    /// Feeds more bytes.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// The checksum of all bytes fed so far.
    pub fn finish(&self) -> u64 {
        self.digest.finalize()
    }
}

/// CRC64 of one slice.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64Redis, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // Reference value from Redis' crc64.c self test.
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
        let mut c = Crc64::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn matches_table_crc_at_every_length_and_split() {
        // The SIMD path folds 128+ byte blocks: cover short tails and odd splits.
        let table = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);
        let data: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in (0..600).chain([1024, 1999, 2000]) {
            let want = table.checksum(&data[..len]);
            assert_eq!(crc64(&data[..len]), want, "len {len}");
            for split in [0, 1, 15, 16, 17, 127, 128, 129, len / 2] {
                if split <= len {
                    let mut c = Crc64::new();
                    c.update(&data[..split]);
                    c.update(&data[split..len]);
                    assert_eq!(c.finish(), want, "len {len} split {split}");
                }
            }
        }
    }
}
