//! The first contact of a `ferry sync` run: before the job starts, the source and the target
//! must answer as Redis servers. What fails here (a refused port, a wrong password, a port
//! that speaks something else) is a mistake in the command line, which no retry mends: the
//! run stops at once with the cause and a hint. Once the job has connected, its retry
//! policy decides (a password changed mid-job is retried).

use std::time::Duration;

use ferry_resp::{Connection, Endpoint, Error, Frame};

/// How long the first contact may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `ep` (`role`: "source" or "target"), authenticates and sends PING; the
/// error names the role, the node, the cause and what to do.
pub(crate) async fn first_contact(role: &str, ep: &Endpoint) -> Result<(), String> {
    let addr = ep.addr();
    let fail = |e: &Error| {
        let hint = hint(e, ep.tls);
        format!("{role} {addr}: first connection failed: {e}; {hint}")
    };
    let mut conn = Connection::connect_timeout(ep, PROBE_TIMEOUT)
        .await
        .map_err(|e| fail(&e))?;
    conn.set_timeout(PROBE_TIMEOUT);
    match conn.request(&["PING"]).await {
        Ok(Frame::Simple(_)) | Ok(Frame::Bulk(_)) => Ok(()),
        Err(Error::Reply { message: e, .. }) if e.contains("NOAUTH") || e.contains("WRONGPASS") => {
            Err(format!(
            "{role} {addr}: the server requires a password ({e}); check the password in the URL \
             (redis://[user:]password@host:port)"
            ))
        }
        Ok(other) => Err(format!(
            "{role} {addr}: unexpected reply to PING ({other:?}): not a Redis server? check the \
             host and port"
        )),
        Err(e) => Err(fail(&e)),
    }
}

fn hint(e: &Error, tls: bool) -> &'static str {
    match e {
        Error::Auth { .. } => "check the password (and user) in the URL",
        Error::Connect { .. } => "check the host and port (is the server running?)",
        Error::Protocol { .. } | Error::Unexpected { .. } => {
            "not a Redis server (or a TLS port: use rediss://); check the host and port"
        }
        Error::Closed { .. } | Error::Timeout { .. } | Error::Io { .. } if !tls => {
            "not a Redis server, or a TLS port (use rediss://)"
        }
        Error::Tls { .. } | Error::TlsConfig { .. } => {
            "check the TLS settings (or use redis:// for a plain port)"
        }
        _ => "check the URL",
    }
}
