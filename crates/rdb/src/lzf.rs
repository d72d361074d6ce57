//! LZF decompression (the format produced by Redis' `lzf_compress`).
//!
//! The stream is a sequence of chunks introduced by a control byte `c`:
//! * `c < 32`: a literal run of `c + 1` bytes follows;
//! * otherwise a back reference: length `c >> 5` (7 means "add the next
//!   byte"), plus 2; distance `((c & 31) << 8) + next byte + 1` back from the
//!   current output end.

/// Decompresses `input`, which must expand to exactly `expected_len` bytes.
///
/// Never allocates more than `expected_len` bytes (and initially at most a
/// bounded multiple of the input size, so a corrupt `expected_len` cannot
/// trigger a huge allocation).
pub fn decompress(input: &[u8], expected_len: usize) -> Result<Vec<u8>, String> {
    // A back reference of 3 input bytes expands to at most 264 bytes.
    let cap = expected_len.min(input.len().saturating_mul(90).saturating_add(64));
    let mut out = Vec::with_capacity(cap);
    decompress_into(input, expected_len, &mut out)?;
    Ok(out)
}

/// Like [`decompress`] but appends to `out`.
pub fn decompress_into(input: &[u8], expected_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let base = out.len();
    let limit = base
        .checked_add(expected_len)
        .ok_or_else(|| "length overflow".to_string())?;
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input
                .get(ip..ip + run)
                .ok_or_else(|| format!("literal run past end of input at {}", ip - 1))?;
            if out.len() + run > limit {
                return Err("output longer than declared length".into());
            }
            out.extend_from_slice(lit);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input
                    .get(ip)
                    .ok_or_else(|| "truncated back reference".to_string())?
                    as usize;
                ip += 1;
            }
            len += 2;
            let lo = *input
                .get(ip)
                .ok_or_else(|| "truncated back reference".to_string())?
                as usize;
            ip += 1;
            let dist = ((ctrl & 0x1f) << 8) + lo + 1;
            let produced = out.len() - base;
            if dist > produced {
                return Err(format!("back reference distance {dist} before start"));
            }
            if out.len() + len > limit {
                return Err("output longer than declared length".into());
            }
            let start = out.len() - dist;
            if dist >= len {
                out.extend_from_within(start..start + len);
            } else {
                // Overlapping copy: repeat the pattern.
                for i in 0..len {
                    let b = out[start + i];
                    out.push(b);
                }
            }
        }
    }
    if out.len() != limit {
        return Err(format!(
            "decompressed {} bytes, expected {expected_len}",
            out.len() - base
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_backref() {
        // "abc" literal, then back reference len 3+2... build by hand:
        // literal run of 3: ctrl 2, 'a','b','c'
        // backref: len=1 (->3 bytes), dist=3: ctrl = (1<<5) | 0, lo = 2
        let input = [2u8, b'a', b'b', b'c', 0x20, 2];
        assert_eq!(decompress(&input, 6).unwrap(), b"abcabc");
        // overlapping: "a" then copy 5 from dist 1
        let input = [0u8, b'a', 0x60, 0];
        assert_eq!(decompress(&input, 6).unwrap(), b"aaaaaa");
    }

    #[test]
    fn errors() {
        assert!(decompress(&[5, b'a'], 6).is_err());
        assert!(decompress(&[0x20, 5], 3).is_err());
        assert!(decompress(&[0, b'a'], 2).is_err());
        assert!(decompress(&[1, b'a', b'b'], 1).is_err());
    }
}
