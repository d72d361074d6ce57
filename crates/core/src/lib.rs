//! What the stages share, below them all: the one event a reader hands a writer
//! ([`Event`]), a shard's figures and the applied offset the reader acknowledges
//! ([`ShardStats`]), the job's key filters ([`Filter`]), database mapping ([`DbMap`]), cluster
//! slot hashing ([`slot`]) and the checkpoint format and key names ([`checkpoint`]). No I/O:
//! the readers (`ferry-source`), writers (`ferry-sink`), verification and the job service
//! build on it, and on each other only where one drives another.

pub mod checkpoint;
pub mod dbmap;
pub mod event;
pub mod filter;
pub mod slot;
pub mod stats;

pub use checkpoint::Checkpoint;
pub use dbmap::DbMap;
pub use event::Event;
pub use filter::{Filter, FilterError, FilterRules};
pub use stats::{AppliedOffset, Phase, ShardStats};
