//! Errors of talking to one node. Typed, because the retry policy branches on them: a
//! connection failure (refused, reset, timed out) is retried differently from a node that
//! answers but refuses (wrong password, an error reply).

use crate::frame::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: connection lost: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: connection closed by the server{}", context.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed {
        addr: String,
        context: Option<String>,
    },
    #[error("{addr}: timed out {what}")]
    Timeout { addr: String, what: String },
    #[error("{addr}: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: DecodeError,
    },
    #[error("{addr}: authentication failed: {message}")]
    Auth { addr: String, message: String },
    #[error("{addr}: {command} failed: {message}")]
    Reply {
        addr: String,
        command: String,
        message: String,
    },
    #[error("{addr}: unexpected reply to {command}: {reply}")]
    Unexpected {
        addr: String,
        command: String,
        reply: String,
    },
    /// The TLS handshake failed (bad certificate, wrong CA, refused client certificate):
    /// a connection failure, retried like one.
    #[error("{addr}: TLS handshake failed: {message}")]
    Tls { addr: String, message: String },
    /// TLS cannot be set up on our side (unreadable CA, certificate or key file).
    #[error("{addr}: TLS configuration: {message}")]
    TlsConfig { addr: String, message: String },
}

impl Error {
    /// Refused, reset, timed out, unreachable: the link, not the node's answer.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Io { .. }
                | Error::Closed { .. }
                | Error::Timeout { .. }
                | Error::Tls { .. }
        )
    }

    /// The node's address this error is about.
    pub fn addr(&self) -> &str {
        match self {
            Error::Connect { addr, .. }
            | Error::Io { addr, .. }
            | Error::Closed { addr, .. }
            | Error::Timeout { addr, .. }
            | Error::Protocol { addr, .. }
            | Error::Auth { addr, .. }
            | Error::Reply { addr, .. }
            | Error::Unexpected { addr, .. }
            | Error::Tls { addr, .. }
            | Error::TlsConfig { addr, .. } => addr,
        }
    }
}

/// The command's name (and its first key), for messages; never arguments that may be secret.
pub fn describe_command<A: AsRef<[u8]>>(args: &[A]) -> String {
    let name = args
        .first()
        .map(|a| String::from_utf8_lossy(a.as_ref()).to_uppercase())
        .unwrap_or_default();
    match name.as_str() {
        "AUTH" | "HELLO" | "CONFIG" | "ACL" | "MIGRATE" => name,
        _ => match args.get(1) {
            Some(a) => {
                let a = a.as_ref();
                let shown = String::from_utf8_lossy(&a[..a.len().min(64)]).into_owned();
                format!("{name} {shown:?}")
            }
            None => name,
        },
    }
}
