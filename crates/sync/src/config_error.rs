//! A job's configuration that cannot be used: a file that cannot be read, or a value that
//! makes no sense (both [`crate::config`] and [`crate::scope`] give them).

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}
