//! Servers that speak TLS. The testkit's own client is plain TCP, so a TLS server keeps its
//! plain port for the test's checks and opens a TLS port beside it for the code under test.

use std::path::Path;

use crate::server::ServerBuilder;

/// File names [`ServerBuilder::tls`] expects in its directory (PEM).
pub const CA_CERT: &str = "ca.crt";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";

impl ServerBuilder {
    /// Also listen for TLS on `tls_port`, with `dir/server.crt` and `dir/server.key`,
    /// trusting client certificates signed by `dir/ca.crt`. `auth_clients` is
    /// `tls-auth-clients`: `yes` (a client certificate is required), `optional` or `no`.
    pub fn tls(self, dir: &Path, tls_port: u16, auth_clients: &str) -> Self {
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        self.arg("tls-port", &tls_port.to_string())
            .arg("tls-cert-file", &file(SERVER_CERT))
            .arg("tls-key-file", &file(SERVER_KEY))
            .arg("tls-ca-cert-file", &file(CA_CERT))
            .arg("tls-auth-clients", auth_clients)
    }
}
