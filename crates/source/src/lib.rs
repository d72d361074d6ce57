//! Sources: where events come from. A Redis node read as its replica
//! ([`replica::replicate`]) or, where it refuses `PSYNC`, by `SCAN` and keyspace
//! notifications ([`scan::scan`]), chosen by [`read_node`]; or files a Redis wrote, an RDB
//! or an AOF ([`read_file`]). The events they yield ([`Event`]) are the one type every
//! later stage (filters, writers) consumes.

mod aof;
pub mod error;
pub mod file;
mod file_io;
pub mod node;
pub mod pipe;
pub mod ratelimit;
mod rdb_events;
pub mod replica;
pub mod scan;
pub mod spec;
pub mod topology;

pub use error::SourceError;
pub use file::{read_file, FileOptions};
pub use node::read_node;
pub use ratelimit::RateLimiter;
pub use replica::{replicate, ReplicaOptions};
pub use spec::{SourceMethod, SourceSpec};
pub use topology::{discover, Shard, SourceType};
