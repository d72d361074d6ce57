//! RESP for ferry: frames, a decoder that reports exactly how many bytes each frame took,
//! an encoder that writes straight into a reused buffer, node addresses, and a plain
//! request/response connection.
//!
//! ferry has its own codec rather than a client library's because the replication link
//! needs what clients hide: the byte count of every frame (the replication offset counts
//! each byte of the command stream), access to the raw socket after the handshake (the
//! RDB transfer is not RESP), and zero-copy `Bytes` arguments for the writer's hot path.

pub mod connection;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod scan;
pub mod tls;

pub use connection::{Connection, Info};
pub use endpoint::Endpoint;
pub use error::Error;
pub use frame::{DecodeError, Frame};
pub use scan::Scan;
pub use tls::{Stream, TlsOptions};
