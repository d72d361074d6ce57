//! Targets: where events are applied. Today a standalone Redis or Valkey node, written
//! through one pipelined connection ([`writer::write`]).

pub mod checkpoint;
pub mod compat;
pub mod dbmap;
pub mod error;
pub mod flush;
pub mod rewrite;
pub mod slot;
pub mod version;
pub mod writer;

pub use checkpoint::Checkpoint;
pub use dbmap::DbMap;
pub use error::TargetError;
pub use version::ServerVersion;
pub use writer::{write, WriteSummary, WriterOptions};
