//! Big strings copied in chunks: an LZF-compressed string in the snapshot (what Redis
//! writes for any string over 20 bytes with `rdbcompression yes`, the default) is
//! decompressed on the way a window at a time and written in pieces, never held whole,
//! and arrives exactly, with its TTL.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::Ferry;
use ferry_testkit::{assert_same_data, incompressible, strip_ansi, Reply, Server};

const LONG: Duration = Duration::from_secs(120);

/// Strings of at least this many bytes are streamed (the default is 8 MB).
const THRESHOLD: &str = "1000000";

/// A compressible value (LZF shrinks it several times) that is not one repeated pattern.
fn compressible(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b"the quick brown fox jumps "[i % 26] ^ ((i / 5000) as u8).wrapping_add(salt))
        .collect()
}

fn ok(r: Reply) {
    assert!(!r.is_error(), "{r:?}");
}

/// Big strings (compressed, with and without a TTL, and plain), next to small keys.
fn populate(source: &Server) {
    let ttl_at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    ok(source.cmd_bytes(&[b"SET", b"big:lzf", &compressible(3_000_000, 0)]));
    ok(source.cmd_bytes(&[
        b"SET",
        b"big:lzf:ttl",
        &compressible(2_500_001, 7),
        b"PXAT",
        ttl_at.as_bytes(),
    ]));
    ok(source.cmd_bytes(&[
        b"SET",
        b"big:raw",
        &incompressible(1_500_000, 0x2545_f491_4f6c_dd1d),
    ]));
    // In a cluster this would be a key with a hash tag; the temporary key must keep it.
    ok(source.cmd_bytes(&[b"SET", b"{tag}big", &compressible(1_200_000, 3)]));
    source.cmd(&["SET", "small", "v"]);
    source.cmd(&["SET", "small:ttl", "w", "PX", "3600000"]);
    // The source really stores the big ones compressed: DEBUG OBJECT reports the RDB
    // serialized length.
    for key in ["big:lzf", "big:lzf:ttl", "{tag}big"] {
        let info = source.cmd(&["DEBUG", "OBJECT", key]).as_str();
        let len: usize = info
            .split(' ')
            .find_map(|f| f.strip_prefix("serializedlength:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no serializedlength in {info:?}"));
        assert!(len < 1_000_000, "{key} is not compressed: {info}");
    }
}

/// The digests of every big key are equal on both sides, and their expiry too.
fn assert_big_keys_equal(source: &Server, target: &Server) {
    for key in ["big:lzf", "big:lzf:ttl", "big:raw", "{tag}big"] {
        let digest = |s: &Server| format!("{:?}", s.cmd(&["DEBUG", "DIGEST-VALUE", key]));
        assert_eq!(digest(source), digest(target), "digest of {key}");
        let expiry = |s: &Server| s.cmd(&["PEXPIRETIME", key]).as_int();
        assert_eq!(expiry(source), expiry(target), "expiry of {key}");
        let len = |s: &Server| s.cmd(&["STRLEN", key]).as_int();
        assert_eq!(len(source), len(target), "length of {key}");
    }
    assert!(target.cmd(&["PEXPIRETIME", "big:lzf:ttl"]).as_int() > 0);
    assert_eq!(target.cmd(&["PEXPIRETIME", "big:lzf"]).as_int(), -1);
    // No temporary key is left behind.
    assert!(
        target
            .cmd(&["KEYS", "*ferry-rewrite"])
            .as_array()
            .is_empty(),
        "{:?}",
        target.cmd(&["KEYS", "*"])
    );
    assert_same_data(source, target);
}

fn assert_streamed(ferry: &Ferry) {
    let out = strip_ansi(&ferry.output());
    assert!(out.contains("full sync complete"), "{out}");
    // The four big strings went through the chunked path (written as commands).
    assert!(out.contains("rewritten=4"), "{out}");
}

fn replica_source(diskless: bool) {
    let source = Server::builder().diskless(diskless).start();
    let target = Server::start();
    populate(&source);
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--mode",
            "full",
            "--big-key-threshold",
            THRESHOLD,
            "--retry-connection-limit",
            "0s",
            "--retry-other-limit",
            "0s",
        ],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_streamed(&ferry);
    assert_big_keys_equal(&source, &target);
}

#[test]
fn compressed_big_strings_from_a_replica_link_arrive_exactly() {
    replica_source(false);
}

#[test]
fn compressed_big_strings_from_a_diskless_transfer_arrive_exactly() {
    replica_source(true);
}

#[test]
fn compressed_big_strings_from_an_rdb_file_arrive_exactly() {
    let source = Server::start();
    let target = Server::start();
    populate(&source);
    source.cmd(&["SAVE"]);
    let config = |name: &str| source.cmd(&["CONFIG", "GET", name]).as_array()[1].as_str();
    let path = PathBuf::from(config("dir")).join(config("dbfilename"));
    let spec = format!("rdb:{}", path.display());
    let mut ferry = Ferry::sync(&spec, &target.url(), &["--big-key-threshold", THRESHOLD]);
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_streamed(&ferry);
    assert_big_keys_equal(&source, &target);
}

/// With `--overwrite` the big string replaces what the target held under its name in one
/// step; without it an existing key is refused and left as it was.
#[test]
fn streamed_big_string_respects_overwrite() {
    let source = Server::start();
    populate(&source);
    let target = Server::start();
    target.cmd(&["SET", "big:lzf", "old"]);
    let mut refused = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--allow-nonempty-target",
            "--mode",
            "full",
            "--big-key-threshold",
            THRESHOLD,
            "--retry-connection-limit",
            "0s",
            "--retry-other-limit",
            "0s",
        ],
    );
    assert!(!refused.wait(LONG).success(), "{}", refused.output());
    assert!(
        refused.output().contains("big:lzf"),
        "the error names the key: {}",
        refused.output()
    );
    assert_eq!(target.cmd(&["GET", "big:lzf"]).as_str(), "old");

    // A new job (the refused one, sharing the target, would need --allow-flush to start over).
    let mut ferry = Ferry::sync(
        &source.url(),
        &target.url(),
        &[
            "--name",
            "replacing",
            "--mode",
            "full",
            "--overwrite",
            "--big-key-threshold",
            THRESHOLD,
        ],
    );
    assert!(ferry.wait(LONG).success(), "{}", ferry.output());
    assert_big_keys_equal(&source, &target);
}
