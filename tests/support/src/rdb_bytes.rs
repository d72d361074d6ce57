//! RDB bytes written by hand, for tests of what Redis no longer writes, does not write yet,
//! or refuses at load: the length encoding and the few opcodes those tests need.

/// An RDB (or a value payload) being written. `RdbBytes::default()` starts a bare payload,
/// [`RdbBytes::new`] a file with its magic.
#[derive(Default)]
pub struct RdbBytes(pub Vec<u8>);

impl RdbBytes {
    /// A file starting with `magic` (`REDIS0009`, `VALKEY080`, …).
    pub fn new(magic: &[u8]) -> RdbBytes {
        RdbBytes(magic.to_vec())
    }
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// An RDB length: 6, 14, 32 or 64 bits.
    pub fn len(&mut self, n: u64) -> &mut Self {
        if n < 64 {
            self.u8(n as u8)
        } else if n < 16384 {
            self.u8(0x40 | (n >> 8) as u8).u8(n as u8)
        } else if n <= u64::from(u32::MAX) {
            self.u8(0x80).raw(&(n as u32).to_be_bytes())
        } else {
            self.u8(0x81).raw(&n.to_be_bytes())
        }
    }
    /// A length-prefixed string.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        self.len(s.len() as u64).raw(s)
    }
    /// A time in ms, little-endian, as expire times are stored.
    pub fn ms(&mut self, t: u64) -> &mut Self {
        self.raw(&t.to_le_bytes())
    }
    /// `SELECTDB db`.
    pub fn db(&mut self, db: u64) -> &mut Self {
        self.u8(0xfe).len(db)
    }
    /// A key of type `t`; its value follows.
    pub fn key(&mut self, t: u8, key: &str) -> &mut Self {
        self.u8(t).str(key.as_bytes())
    }
    /// A string key.
    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(0, key).str(value.as_bytes())
    }
    /// The EOF opcode and a zero checksum ("saved with checksum disabled", which Redis and
    /// ferry both accept): the finished file.
    pub fn finish(&mut self) -> Vec<u8> {
        self.u8(0xff).raw(&[0; 8]);
        std::mem::take(&mut self.0)
    }
}
