//! The sink: the writers that apply a reader's events to the target (the destination
//! Redis), as `ferry-source` holds the readers of the source. A standalone Redis or Valkey
//! node is written through one pipelined connection ([`writer::write`]), a Redis Cluster by
//! slot through one pipelined connection per master ([`cluster::write_cluster`]). (Named
//! `sink`, not `target`: that word is the destination server, and Cargo's build folder.)

pub mod checkpoint;
pub mod cluster;
pub mod compat;
pub mod compat_args;
pub mod error;
mod failed;
pub mod fence;
pub mod flush;
mod link;
pub mod owner;
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
