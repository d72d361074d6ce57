//! A data set for servers with hash field TTLs, shared by the RDB parser's tests and the
//! end-to-end ones.

use crate::server::Server;

/// A field TTL far ahead (2100-01-01, in ms): it never passes during a test.
pub const FIELD_TTL_FAR: u64 = 4_102_444_800_000;

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// Hashes for servers with hash field TTLs (Valkey 9, Redis ≥ 7.4): plain ones and ones
/// with some field TTLs, small and past the listpack limits (more than 512 fields; values
/// longer than 64 bytes). Returns the keys.
pub fn populate_field_ttl_hashes(s: &Server) -> Vec<&'static str> {
    let mut c = vec![
        cmd(&["HSET", "plain:small", "a", "1", "b", "2"]),
        cmd(&["HSET", "ttl:small", "a", "1", "b", "2", "c", "3"]),
        cmd(&[
            "HPEXPIREAT",
            "ttl:small",
            &FIELD_TTL_FAR.to_string(),
            "FIELDS",
            "1",
            "a",
        ]),
        cmd(&["HEXPIRE", "ttl:small", "3600", "FIELDS", "1", "b"]),
        cmd(&[
            "HSETEX",
            "ttl:setex",
            "PX",
            "7200000",
            "FIELDS",
            "2",
            "x",
            "1",
            "y",
            "2",
        ]),
        cmd(&["HSET", "ttl:setex", "z", "plain"]),
    ];
    let mut big = cmd(&["HSET", "ttl:many"]);
    let mut plain_big = cmd(&["HSET", "plain:many"]);
    for i in 0..700 {
        for h in [&mut big, &mut plain_big] {
            h.push(format!("f-{i}").into_bytes());
            h.push(format!("v-{i}").into_bytes());
        }
    }
    c.push(big);
    c.push(plain_big);
    for i in (0..700).step_by(7) {
        let at = (FIELD_TTL_FAR + i as u64).to_string();
        let f = format!("f-{i}");
        c.push(cmd(&["HPEXPIREAT", "ttl:many", &at, "FIELDS", "1", &f]));
    }
    let long = "L".repeat(2000);
    c.push(cmd(&[
        "HSET", "ttl:long", "l1", &long, "l2", &long, "s", "x",
    ]));
    c.push(cmd(&[
        "HPEXPIRE", "ttl:long", "9000000", "FIELDS", "1", "l1",
    ]));
    c.push(cmd(&["PEXPIRE", "ttl:long", "99000000"]));
    let mut client = s.client();
    for r in client.pipeline(&c).expect("pipeline") {
        assert!(!r.is_error(), "{r:?}");
    }
    vec![
        "plain:small",
        "ttl:small",
        "ttl:setex",
        "ttl:many",
        "plain:many",
        "ttl:long",
    ]
}
