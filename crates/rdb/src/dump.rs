//! DUMP / RESTORE payload framing.

use bytes::{BufMut, BytesMut};

use crate::crc64::{crc64, Crc64};
use crate::error::{ErrorKind, RdbError};

/// Length [`write_dump_payload`] appends for a payload of `payload_len` bytes:
/// type byte + payload + 2-byte version + 8-byte CRC64.
pub fn dump_payload_len(payload_len: usize) -> usize {
    payload_len + 11
}

/// Appends a DUMP/RESTORE payload: type byte, payload, RDB version (u16 LE)
/// and the CRC64 (LE) of everything before it.
pub fn write_dump_payload(out: &mut BytesMut, value_type: u8, payload: &[u8], rdb_version: u16) {
    out.reserve(dump_payload_len(payload.len()));
    let start = out.len();
    out.put_u8(value_type);
    out.extend_from_slice(payload);
    out.put_u16_le(rdb_version);
    let mut c = Crc64::new();
    c.update(&out[start..]);
    out.put_u64_le(c.finish());
}

/// Parses a DUMP payload: checks the CRC64 and returns the type byte, the
/// value payload and the RDB version.
pub fn parse_dump_payload(dump: &[u8]) -> Result<(u8, &[u8], u16), RdbError> {
    if dump.len() < 11 {
        return Err(RdbError::new(dump.len() as u64, ErrorKind::UnexpectedEof));
    }
    let body = dump.len() - 8;
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&dump[body..]);
    let expected = u64::from_le_bytes(tail);
    let actual = crc64(&dump[..body]);
    if expected != actual {
        return Err(RdbError::new(
            body as u64,
            ErrorKind::ChecksumMismatch { expected, actual },
        ));
    }
    let version = u16::from_le_bytes([dump[body - 2], dump[body - 1]]);
    Ok((dump[0], &dump[1..body - 2], version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut out = BytesMut::new();
        write_dump_payload(&mut out, 0, b"\x03abc", 10);
        assert_eq!(out.len(), dump_payload_len(4));
        let (t, p, v) = parse_dump_payload(&out).unwrap();
        assert_eq!((t, p, v), (0, &b"\x03abc"[..], 10));
        let mut bad = out.to_vec();
        bad[2] ^= 1;
        assert!(matches!(
            parse_dump_payload(&bad).unwrap_err().kind,
            ErrorKind::ChecksumMismatch { .. }
        ));
        assert!(parse_dump_payload(&out[..5]).is_err());
    }
}
