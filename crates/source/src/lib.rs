//! Sources: where events come from. Today, one Redis node read as its replica
//! ([`replica::replicate`]); the events it yields ([`Event`]) are the one type every later
//! stage (filters, writers) consumes.

pub mod error;
pub mod event;
pub mod filter;
pub mod pipe;
pub mod ratelimit;
pub mod replica;
pub mod stats;
pub mod topology;

pub use error::SourceError;
pub use event::Event;
pub use filter::{Filter, FilterError, FilterRules};
pub use ratelimit::RateLimiter;
pub use replica::{replicate, ReplicaOptions};
pub use stats::{Phase, ShardStats};
pub use topology::{discover, Shard, SourceType};
