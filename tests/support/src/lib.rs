//! Test support for ferry's integration tests. Ferry copies one Redis into another over the
//! replication protocol, and the only convincing evidence that it works is a real
//! `redis-server` on each side: replication handshakes, RDB encodings, expiry semantics and
//! ACLs are too intricate to mock faithfully, and a mock would only agree with our own
//! understanding of them. So this crate starts real, throw-away `redis-server` processes on
//! free loopback ports (each in its own temp dir, killed on drop), talks to them with a tiny
//! blocking RESP client, fills them with a dataset that covers every type in every encoding,
//! and compares servers with `DEBUG DIGEST` / `DEBUG DIGEST-VALUE`.

mod client;
pub mod cluster;
mod data;
mod field_ttl;
pub mod proxy;
mod rdb_bytes;
mod server;
mod text;
pub mod tls;
pub mod versions;

pub use client::{escape_bytes, read_reply, Client, Reply, DEFAULT_IO_TIMEOUT};
pub use cluster::{
    assert_same_data_cluster, populate_db0, wait_same_data_cluster, Cluster, DataSide,
};
pub use data::{
    assert_same_data, populate_every_type, same_data, wait_same_data, PTTL_TOLERANCE_MS,
};
pub use field_ttl::{populate_field_ttl_hashes, FIELD_TTL_FAR};
pub use proxy::{Direction, Proxy};
pub use rdb_bytes::RdbBytes;
pub use server::{
    free_port, parse_info, parse_version, server_version, which, Server, ServerBuilder, Version,
    KEEP_DIR_ENV, SERVER_BINARY_ENV,
};
pub use text::{incompressible, percent_encode, strip_ansi};
