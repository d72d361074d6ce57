//! One sync job: configuration, the reader → writer pipeline, retries and resume, and the
//! status a user watches. Knows nothing about terminals or HTTP: the CLI and the service
//! drive it through [`job::run`] and read [`JobStatus`].

pub mod config;
mod config_error;
pub mod cutover;
pub mod evictions;
pub mod fence;
pub mod identity;
pub mod job;
pub mod lease;
pub mod ownership;
pub mod precheck;
pub mod retry;
pub mod scope;
mod source;
pub mod status;

pub use config::{FileConfig, JobConfig, Mode, RetryConfig};
pub use fence::Fence;
pub use ferry_core::{Phase, ShardStats};
pub use ferry_sink::ServerVersion;
pub use ferry_source::SourceSpec;
pub use job::{run, JobError, JobOutcome};
pub use precheck::{precheck, Check, Level};
pub use retry::{RetryPolicy, Window};
pub use scope::{FilterConfig, TlsConfig};
pub use status::{JobState, JobStatus, StatusView};
