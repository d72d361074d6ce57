//! Incremental Redis CRC64 (Jones polynomial, reflected), as used for the RDB
//! trailer and DUMP payloads.

use crc::{Crc, Digest, Table, CRC_64_REDIS};

static CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// Incremental CRC64 in the variant Redis uses (`crc::CRC_64_REDIS`).
#[derive(Clone)]
pub struct Crc64 {
    digest: Digest<'static, u64, Table<16>>,
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
            digest: CRC64.digest(),
        }
    }

    /// Feeds more bytes.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// The checksum of all bytes fed so far.
    pub fn finish(&self) -> u64 {
        self.digest.clone().finalize()
    }
}

/// CRC64 of one slice.
pub fn crc64(data: &[u8]) -> u64 {
    CRC64.checksum(data)
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
}
