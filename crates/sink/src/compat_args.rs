//! Arguments that later Redis versions added to existing commands: a replicated command
//! that uses one cannot run on an older target, so it is refused by name before it is
//! sent (rather than failing inside a committed `EXEC`). Taken from the `history` field of
//! Redis' `src/commands/*.json`.

use bytes::Bytes;

/// The first argument of `argv` that Redis `level` (major, minor) lacks, and the version
/// that added it; `None` when the target can run the command as it is.
///
/// Only options replicas receive are listed (read-only commands are never replicated,
/// `BITCOUNT`/`BITPOS` are kept for the table's completeness). `SET` is translated by
/// [`crate::compat::adapt_command`] instead.
pub fn unsupported_argument(
    level: (u32, u32),
    argv: &[Bytes],
) -> Option<(&'static str, (u32, u32))> {
    let name = argv.first()?;
    let upper = |i: usize| argv.get(i).map(|a| a.to_ascii_uppercase());
    let is = |a: &Bytes, t: &str| a.eq_ignore_ascii_case(t.as_bytes());
    let lacks = |what: &'static str, since: (u32, u32)| (level < since).then_some((what, since));
    let cmd = name.to_ascii_uppercase();
    match cmd.as_slice() {
        // ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member …: the options come first.
        b"ZADD" => {
            for a in argv.iter().skip(2) {
                if is(a, "GT") || is(a, "LT") {
                    return lacks(if is(a, "GT") { "GT" } else { "LT" }, (6, 2));
                }
                if !["NX", "XX", "CH", "INCR"].iter().any(|t| is(a, t)) {
                    break;
                }
            }
            None
        }
        // LPOP/RPOP key count.
        b"LPOP" | b"RPOP" if argv.len() > 2 => lacks("count", (6, 2)),
        // GEOADD key [NX|XX] [CH] longitude latitude member ….
        b"GEOADD" => {
            for a in argv.iter().skip(2) {
                if let Some(t) = ["NX", "XX", "CH"].into_iter().find(|t| is(a, t)) {
                    if let Some(r) = lacks(t, (6, 2)) {
                        return Some(r);
                    }
                } else {
                    break;
                }
            }
            None
        }
        // EXPIRE key seconds [NX|XX|GT|LT], and its three siblings.
        b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" => {
            let opt = upper(3)?;
            ["NX", "XX", "GT", "LT"]
                .into_iter()
                .find(|t| opt == t.as_bytes())
                .and_then(|t| lacks(t, (7, 0)))
        }
        // XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id …; XTRIM
        // key MAXLEN|MINID [=|~] threshold [LIMIT count].
        b"XADD" | b"XTRIM" => {
            let mut i = 2;
            while let Some(a) = argv.get(i) {
                if let Some(t) = ["NOMKSTREAM", "MINID", "LIMIT"]
                    .into_iter()
                    .find(|t| is(a, t))
                {
                    return lacks(t, (6, 2));
                }
                if !is(a, "MAXLEN") {
                    break; // the entry's id: fields and values follow
                }
                i += 1;
                if argv.get(i).is_some_and(|a| is(a, "=") || is(a, "~")) {
                    i += 1;
                }
                i += 1;
            }
            None
        }
        // HSET key field value [field value …]: one pair only before 4.0.
        b"HSET" if argv.len() > 4 => lacks("several field/value pairs", (4, 0)),
        // BITCOUNT key [start end [BYTE|BIT]]; BITPOS key bit [start [end [BYTE|BIT]]].
        b"BITCOUNT" if argv.len() > 4 => lacks("BYTE|BIT", (7, 0)),
        b"BITPOS" if argv.len() > 5 => lacks("BYTE|BIT", (7, 0)),
        // SET … KEEPTTL (6.0): SET is otherwise translated for older targets.
        b"SET" if argv.iter().skip(3).any(|a| is(a, "KEEPTTL")) => lacks("KEEPTTL", (6, 0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|p| Bytes::from(p.to_string())).collect()
    }

    #[test]
    fn arguments_newer_than_the_target() {
        let u = |level, s: &str| unsupported_argument(level, &args(s));
        assert_eq!(u((6, 0), "ZADD z GT 5 a"), Some(("GT", (6, 2))));
        assert_eq!(u((6, 0), "zadd z xx lt ch 5 a"), Some(("LT", (6, 2))));
        assert_eq!(u((6, 2), "ZADD z GT 5 a"), None);
        // A member named GT is no option.
        assert_eq!(u((6, 0), "ZADD z 5 GT"), None);
        assert_eq!(u((6, 0), "ZADD z NX CH 5 a"), None);
        assert_eq!(u((6, 0), "LPOP l 3"), Some(("count", (6, 2))));
        assert_eq!(u((6, 0), "RPOP l"), None);
        assert_eq!(u((6, 0), "GEOADD g XX 13.3 38.1 p"), Some(("XX", (6, 2))));
        assert_eq!(u((6, 0), "GEOADD g 13.3 38.1 NX"), None);
        assert_eq!(u((6, 2), "PEXPIREAT k 99 NX"), Some(("NX", (7, 0))));
        assert_eq!(u((7, 0), "PEXPIREAT k 99 NX"), None);
        assert_eq!(u((6, 2), "PEXPIREAT k 99"), None);
        assert_eq!(
            u((6, 0), "XADD s NOMKSTREAM * f v"),
            Some(("NOMKSTREAM", (6, 2)))
        );
        assert_eq!(u((6, 0), "XTRIM s MINID 5"), Some(("MINID", (6, 2))));
        assert_eq!(
            u((6, 0), "XADD s MAXLEN ~ 5 LIMIT 10 * f v"),
            Some(("LIMIT", (6, 2)))
        );
        assert_eq!(u((6, 0), "XADD s MAXLEN 5 * LIMIT MINID"), None);
        assert_eq!(
            u((3, 2), "HSET h a 1 b 2"),
            Some(("several field/value pairs", (4, 0)))
        );
        assert_eq!(u((4, 0), "HSET h a 1 b 2"), None);
        assert_eq!(u((6, 2), "BITCOUNT k 0 1 BIT"), Some(("BYTE|BIT", (7, 0))));
        assert_eq!(u((5, 0), "SET k v KEEPTTL"), Some(("KEEPTTL", (6, 0))));
        assert_eq!(u((6, 0), "SET k v KEEPTTL"), None);
    }
}
