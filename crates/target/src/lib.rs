//! Targets: where events are applied. A standalone Redis or Valkey node, written through
//! one pipelined connection ([`writer::write`]), or a Redis Cluster, written by slot through
//! one pipelined connection per master ([`cluster::write_cluster`]).

pub mod checkpoint;
pub mod cluster;
pub mod compat;
pub mod compat_args;
pub mod error;
mod failed;
pub mod fence;
pub mod flush;
pub mod owner;
mod replies;
pub mod rewrite;
pub mod slot;
mod translate;
pub mod version;
pub mod writer;

pub use checkpoint::Checkpoint;
pub use cluster::{delete_cluster_checkpoint, is_cluster, load_cluster_checkpoint, write_cluster};
pub use error::TargetError;
pub use version::ServerVersion;
pub use writer::{write, WriteSummary, WriterOptions};
