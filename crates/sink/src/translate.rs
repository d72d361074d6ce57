//! Replicated commands an older target lacks, rewritten into what it has with the same
//! effect: a Lua script (`EVAL`, in every Redis since 2.6) that reads what the command's
//! outcome depends on and writes exactly what the source wrote, or an older command of the
//! same meaning. A command that cannot be translated exactly is refused by name in
//! [`crate::compat::adapt_command`].
//!
//! Scores and ids are passed on as the strings the source replicated (never through Lua
//! numbers, which print with 14 digits), so the target stores the source's exact values.

use bytes::Bytes;

/// `ZADD key [XX] GT|LT [CH] [INCR] score member …` (6.2): each member is added when absent
/// (unless `XX`), updated only when the new score is greater (`GT`) or less (`LT`); with
/// `INCR` the new score is the sum, applied by `ZINCRBY` as Redis computes it.
const ZADD_GT_LT: &str = r#"
local xx, gt, incr = ARGV[1] == '1', ARGV[2] == '1', ARGV[3] == '1'
local function num(s)
  local l = string.lower(s)
  if l == 'inf' or l == '+inf' then return math.huge end
  if l == '-inf' then return -math.huge end
  return tonumber(s)
end
for i = 4, #ARGV, 2 do
  local score, member = ARGV[i], ARGV[i + 1]
  local cur = redis.call('ZSCORE', KEYS[1], member)
  if not cur then
    if not xx then redis.call('ZADD', KEYS[1], score, member) end
  else
    local c = num(cur)
    local new = num(score)
    if incr then new = c + new end
    if (gt and new > c) or ((not gt) and new < c) then
      if incr then
        redis.call('ZINCRBY', KEYS[1], score, member)
      else
        redis.call('ZADD', KEYS[1], score, member)
      end
    end
  end
end
return 0
"#;

/// `ZDIFFSTORE dst n k1 … kn` (6.2): the members of `k1` (a sorted set, or a set with score
/// 1) in none of the others, with `k1`'s scores, replace `dst` (deleted when empty).
const ZDIFFSTORE: &str = r#"
local function members(k)
  local t = redis.call('TYPE', k)['ok']
  if t == 'zset' then return redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') end
  if t == 'set' then
    local out = {}
    for _, m in ipairs(redis.call('SMEMBERS', k)) do
      out[#out + 1] = m
      out[#out + 1] = '1'
    end
    return out
  end
  return {}
end
local function has(k, m)
  local t = redis.call('TYPE', k)['ok']
  if t == 'zset' then return redis.call('ZSCORE', k, m) ~= false end
  if t == 'set' then return redis.call('SISMEMBER', k, m) == 1 end
  return false
end
local first = members(KEYS[2])
local keep = {}
for i = 1, #first, 2 do
  local m = first[i]
  local out = false
  for j = 3, #KEYS do
    if has(KEYS[j], m) then out = true break end
  end
  if not out then
    keep[#keep + 1] = first[i + 1]
    keep[#keep + 1] = m
  end
end
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  local last = math.min(i + 999, #keep)
  redis.call('ZADD', KEYS[1], unpack(keep, i, last))
end
return #keep / 2
"#;

/// The `XCLAIM … FORCE JUSTID LASTID` a 7.0+ source replicates for a claim. Of an entry no
/// longer in the stream, 7.0 drops the pending entry; before 7.0 the claim would keep it:
/// it is acknowledged first, then the claim runs as replicated (its `LASTID` applies).
const XCLAIM_DELETED: &str = r#"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1], 'COUNT', '1') == 0 then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
end
return redis.call('XCLAIM', KEYS[1], unpack(ARGV, 2))
"#;

/// A key rewritten into commands (see [`crate::rewrite`]) for a replicated `RESTORE`, run as
/// one script: `ARGV` holds each command as its length then its arguments. The final
/// `RENAMENX` of a key that exists fails as `RESTORE` without `REPLACE` fails.
const REBUILD: &str = r#"
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local cmd = {}
  for j = 1, n do cmd[j] = ARGV[i + j] end
  i = i + n + 1
  if cmd[1] == 'RENAMENX' and redis.call('EXISTS', cmd[3]) == 1 then
    redis.call('DEL', cmd[2])
    return redis.error_reply('BUSYKEY Target key name already exists.')
  end
  redis.call(unpack(cmd))
end
return 'OK'
"#;

/// The commands building `key` (under `tmp`) as one script.
pub fn rebuild(key: &Bytes, tmp: &Bytes, cmds: Vec<Vec<Bytes>>) -> Vec<Bytes> {
    let args = cmds
        .into_iter()
        .flat_map(|c| std::iter::once(Bytes::from(c.len().to_string())).chain(c));
    eval(REBUILD, &[key.clone(), tmp.clone()], args)
}

fn eval(script: &str, keys: &[Bytes], args: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = vec![
        Bytes::from_static(b"EVAL"),
        Bytes::copy_from_slice(script.as_bytes()),
        Bytes::from(keys.len().to_string()),
    ];
    out.extend(keys.iter().cloned());
    out.extend(args);
    out
}

fn flag(b: bool) -> Bytes {
    Bytes::from_static(if b { b"1" } else { b"0" })
}

fn is(a: &Bytes, t: &str) -> bool {
    a.eq_ignore_ascii_case(t.as_bytes())
}

/// `ZADD … GT|LT …` as a script; `None` when it uses neither (or is malformed, which the
/// source would not have replicated).
pub fn zadd_gt_lt(argv: &[Bytes]) -> Option<Vec<Bytes>> {
    let (mut xx, mut gt, mut lt, mut incr) = (false, false, false, false);
    let mut i = 2;
    while let Some(a) = argv.get(i) {
        match a.to_ascii_uppercase().as_slice() {
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            b"INCR" => incr = true,
            b"CH" => {}
            // NX with GT|LT is refused by Redis: never replicated.
            b"NX" => return None,
            _ => break,
        }
        i += 1;
    }
    let pairs = &argv[i.min(argv.len())..];
    if !(gt || lt) || pairs.is_empty() || !pairs.len().is_multiple_of(2) || (gt && lt) {
        return None;
    }
    let args = [flag(xx), flag(gt), flag(incr)]
        .into_iter()
        .chain(pairs.iter().cloned());
    Some(eval(ZADD_GT_LT, &argv[1..2], args))
}

/// `ZDIFFSTORE dst numkeys key …` as a script.
pub fn zdiffstore(argv: &[Bytes]) -> Option<Vec<Bytes>> {
    let n: usize = std::str::from_utf8(argv.get(2)?).ok()?.parse().ok()?;
    if n == 0 || argv.len() != 3 + n {
        return None;
    }
    let mut keys = vec![argv[1].clone()];
    keys.extend(argv[3..].iter().cloned());
    Some(eval(ZDIFFSTORE, &keys, std::iter::empty()))
}

/// `GEOSEARCHSTORE dst src FROMMEMBER m | FROMLONLAT lon lat BYRADIUS r unit [ASC|DESC]
/// [COUNT n] [STOREDIST]` as the `GEORADIUS[BYMEMBER] … STORE|STOREDIST dst` it
/// generalizes; `None` for `BYBOX` and `COUNT … ANY` (no older equivalent).
pub fn geosearchstore(argv: &[Bytes]) -> Option<Vec<Bytes>> {
    let (dst, src) = (argv.get(1)?.clone(), argv.get(2)?.clone());
    let mut from: Option<Vec<Bytes>> = None;
    let mut radius: Option<Vec<Bytes>> = None;
    let mut tail: Vec<Bytes> = Vec::new();
    let mut storedist = false;
    let mut i = 3;
    while i < argv.len() {
        let a = &argv[i];
        if is(a, "FROMMEMBER") {
            from = Some(vec![argv.get(i + 1)?.clone()]);
            i += 2;
        } else if is(a, "FROMLONLAT") {
            from = Some(vec![argv.get(i + 1)?.clone(), argv.get(i + 2)?.clone()]);
            i += 3;
        } else if is(a, "BYRADIUS") {
            radius = Some(vec![argv.get(i + 1)?.clone(), argv.get(i + 2)?.clone()]);
            i += 3;
        } else if is(a, "ASC") || is(a, "DESC") {
            tail.push(a.clone());
            i += 1;
        } else if is(a, "COUNT") {
            tail.push(a.clone());
            tail.push(argv.get(i + 1)?.clone());
            i += 2;
        } else if is(a, "STOREDIST") {
            storedist = true;
            i += 1;
        } else {
            return None; // BYBOX, ANY, or what this does not know
        }
    }
    let (from, radius) = (from?, radius?);
    let name: &'static [u8] = if from.len() == 1 {
        b"GEORADIUSBYMEMBER"
    } else {
        b"GEORADIUS"
    };
    let mut out = vec![Bytes::from_static(name), src];
    out.extend(from);
    out.extend(radius);
    out.extend(tail);
    out.push(Bytes::from_static(if storedist {
        b"STOREDIST"
    } else {
        b"STORE"
    }));
    out.push(dst);
    Some(out)
}

/// `XGROUP CREATECONSUMER key group consumer` (6.2, and what 7.0 replicates when
/// `XREADGROUP` meets a new consumer) as `XREADGROUP GROUP group consumer COUNT 1 STREAMS
/// key 0-0`: reading the consumer's own pending history creates it and changes nothing
/// else. (Scripts may not run `XREADGROUP`.)
pub fn createconsumer(argv: &[Bytes]) -> Option<Vec<Bytes>> {
    if argv.len() != 5 || !is(&argv[1], "CREATECONSUMER") {
        return None;
    }
    let s = Bytes::from_static;
    Some(vec![
        s(b"XREADGROUP"),
        s(b"GROUP"),
        argv[3].clone(),
        argv[4].clone(),
        s(b"COUNT"),
        s(b"1"),
        s(b"STREAMS"),
        argv[2].clone(),
        s(b"0-0"),
    ])
}

/// The replicated form of a claim, `XCLAIM key group consumer min-idle id … FORCE JUSTID …`,
/// as a script that first drops the pending entry of a deleted stream entry.
pub fn xclaim_deleted(argv: &[Bytes]) -> Option<Vec<Bytes>> {
    let replicated = argv.len() >= 6
        && argv[6..].iter().any(|a| is(a, "FORCE"))
        && argv[6..].iter().any(|a| is(a, "JUSTID"));
    if !replicated {
        return None;
    }
    // ARGV[1] is the id, then every argument of the XCLAIM after its key.
    let args = std::iter::once(argv[5].clone()).chain(argv[2..].iter().cloned());
    Some(eval(XCLAIM_DELETED, &argv[1..2], args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|p| Bytes::from(p.to_string())).collect()
    }

    fn tail(v: &[Bytes]) -> String {
        v.iter()
            .skip(2)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn translations() {
        let z = zadd_gt_lt(&args("ZADD z XX GT CH 2 a 3 b")).unwrap();
        assert_eq!(tail(&z), "1 z 1 1 0 2 a 3 b");
        assert_eq!(
            tail(&zadd_gt_lt(&args("zadd z lt incr 1 a")).unwrap()),
            "1 z 0 0 1 1 a"
        );
        assert!(zadd_gt_lt(&args("ZADD z 1 GT")).is_none());
        assert!(zadd_gt_lt(&args("ZADD z GT 1")).is_none());
        assert!(zadd_gt_lt(&args("ZADD z XX 1 a")).is_none());

        assert_eq!(
            tail(&zdiffstore(&args("ZDIFFSTORE d 2 a b")).unwrap()),
            "3 d a b"
        );
        assert!(zdiffstore(&args("ZDIFFSTORE d 3 a b")).is_none());

        let g = |s: &str| geosearchstore(&args(s)).map(|v| tail(&v).to_string());
        let full = |s: &str| {
            geosearchstore(&args(s)).map(|v| {
                v.iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        };
        assert_eq!(
            full("GEOSEARCHSTORE d g FROMMEMBER m BYRADIUS 10 km ASC COUNT 3 STOREDIST").as_deref(),
            Some("GEORADIUSBYMEMBER g m 10 km ASC COUNT 3 STOREDIST d")
        );
        assert_eq!(
            full("GEOSEARCHSTORE d g FROMLONLAT 15 37 BYRADIUS 200 km").as_deref(),
            Some("GEORADIUS g 15 37 200 km STORE d")
        );
        assert_eq!(g("GEOSEARCHSTORE d g FROMLONLAT 15 37 BYBOX 4 4 km"), None);
        assert_eq!(
            g("GEOSEARCHSTORE d g FROMMEMBER m BYRADIUS 1 km COUNT 1 ANY"),
            None
        );

        assert_eq!(
            tail(&createconsumer(&args("XGROUP CREATECONSUMER s g c")).unwrap()),
            "g c COUNT 1 STREAMS s 0-0"
        );
        let x = xclaim_deleted(&args(
            "XCLAIM s g c 0 1-1 TIME 5 RETRYCOUNT 1 FORCE JUSTID LASTID 3-1",
        ))
        .unwrap();
        assert_eq!(
            tail(&x),
            "1 s 1-1 g c 0 1-1 TIME 5 RETRYCOUNT 1 FORCE JUSTID LASTID 3-1"
        );
        assert!(xclaim_deleted(&args("XCLAIM s g c 0 1-1")).is_none());
    }
}
