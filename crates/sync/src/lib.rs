//! One sync job: configuration, the reader → writer pipeline, and its outcome. Knows
//! nothing about terminals or HTTP: the CLI and the service drive it through [`job::run`].

pub mod config;
pub mod job;

pub use config::{FileConfig, JobConfig, Mode};
pub use ferry_source::{Phase, ShardStats};
pub use job::{run, JobError, JobOutcome};
