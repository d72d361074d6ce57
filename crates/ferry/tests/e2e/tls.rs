//! `rediss://` end to end: redis-servers with TLS ports, certificates made by the test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{churn, wait_caught_up, Ferry};
use ferry_testkit::tls::{CA_CERT, SERVER_CERT, SERVER_KEY};
use ferry_testkit::{assert_same_data, free_port, populate_every_type, Direction, Proxy, Server};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const LONG: Duration = Duration::from_secs(60);

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in a temp dir (removed on drop).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("ferry test CA {n}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
            .expect("ca cert");
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect(name);
        write(CA_CERT, ca.pem());
        let leaf = |names: &[&str], purpose: ExtendedKeyUsagePurpose, cert: &str, key: &str| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let mut p = CertificateParams::new(names).expect("params");
            p.distinguished_name.push(DnType::CommonName, "ferry test");
            p.extended_key_usages = vec![purpose];
            let k = KeyPair::generate().expect("key");
            let c = p.signed_by(&k, &ca).expect("sign");
            write(cert, c.pem());
            write(key, k.serialize_pem());
        };
        leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            SERVER_CERT,
            SERVER_KEY,
        );
        leaf(
            &["ferry"],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client.crt",
            "client.key",
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server with a plain port (for the test) and a TLS port (for ferry).
fn tls_server(pki: &Pki, auth_clients: &str) -> (Server, String) {
    let port = free_port();
    let s = Server::builder().tls(pki.dir(), port, auth_clients).start();
    (s, format!("rediss://127.0.0.1:{port}"))
}

#[test]
fn tls_sync_converges_under_writes() {
    let pki = Pki::new();
    let (source, source_url) = tls_server(&pki, "optional");
    let (target, target_url) = tls_server(&pki, "optional");
    populate_every_type(&source, 2);
    let ca = pki.path(CA_CERT);
    let mut ferry = Ferry::sync(
        &source_url,
        &target_url,
        &[
            "--name",
            "t",
            "--source-tls-ca",
            &ca,
            "--target-tls-ca",
            &ca,
            "--target-tls-server-name",
            "localhost",
        ],
    );
    wait_caught_up(&source, &target, "t", LONG);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = churn(&source, stop.clone());
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("churn");
    assert!(writes > 0);
    wait_caught_up(&source, &target, "t", LONG);
    // `ferry verify` reaches both over TLS too.
    let mut verify = Ferry::start(&[
        "verify",
        "--source",
        &source_url,
        "--target",
        &target_url,
        "--source-tls-ca",
        &ca,
        "--target-tls-ca",
        &ca,
    ]);
    assert!(verify.wait(LONG).success(), "{}", verify.output());
    target.cmd(&["DEL", "ferry:checkpoint:t:0"]);
    assert_same_data(&source, &target);
    assert!(ferry.is_running(), "{}", ferry.output());
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let (source, source_url) = tls_server(&pki, "yes");
    let (target, target_url) = tls_server(&pki, "yes");
    source.cmd(&["SET", "k", "v"]);
    let ca = pki.path(CA_CERT);
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));

    // Without a client certificate the servers refuse the handshake.
    let mut refused = Ferry::sync(
        &source_url,
        &target_url,
        &[
            "--source-tls-ca",
            &ca,
            "--target-tls-ca",
            &ca,
            "--retry-connection-limit",
            "0s",
        ],
    );
    assert!(!refused.wait(LONG).success(), "{}", refused.output());
    assert!(
        refused.stderr().contains("TLS handshake failed"),
        "{}",
        refused.output()
    );

    let _ferry = Ferry::sync(
        &source_url,
        &target_url,
        &[
            "--name",
            "m",
            "--source-tls-ca",
            &ca,
            "--source-tls-cert",
            &cert,
            "--source-tls-key",
            &key,
            "--target-tls-ca",
            &ca,
            "--target-tls-cert",
            &cert,
            "--target-tls-key",
            &key,
        ],
    );
    wait_caught_up(&source, &target, "m", LONG);
    source.cmd(&["SET", "k2", "v2"]);
    wait_caught_up(&source, &target, "m", LONG);
    assert_eq!(target.cmd(&["GET", "k2"]).as_str(), "v2");
}

#[test]
fn wrong_ca_fails_naming_the_node() {
    let pki = Pki::new();
    let other = Pki::new();
    let (_source, source_url) = tls_server(&pki, "optional");
    let (_target, target_url) = tls_server(&pki, "optional");
    let mut ferry = Ferry::sync(
        &source_url,
        &target_url,
        &[
            "--source-tls-ca",
            &other.path(CA_CERT),
            "--target-tls-ca",
            &pki.path(CA_CERT),
            "--retry-connection-limit",
            "0s",
        ],
    );
    assert!(!ferry.wait(LONG).success(), "{}", ferry.output());
    let log = ferry.stderr();
    let node = source_url.trim_start_matches("rediss://");
    assert!(
        log.contains(&format!(
            "{node}: TLS handshake failed: certificate verify failed: UnknownIssuer"
        )),
        "{}",
        ferry.output()
    );

    // Without the CA the public roots do not know the test CA either; insecure skips the
    // check altogether.
    let mut insecure = Ferry::sync(
        &source_url,
        &target_url,
        &[
            "--mode",
            "full",
            "--source-tls-insecure",
            "--target-tls-insecure",
        ],
    );
    assert!(insecure.wait(LONG).success(), "{}", insecure.output());
}

/// The same flipped byte as on plain TCP (`hostile_net.rs`), under TLS: the record fails its
/// authentication, the link is a connection failure, and the job resumes from its
/// checkpoint; the target never holds the altered key.
#[test]
fn a_flipped_byte_under_tls_is_a_failed_link_never_data() {
    let pki = Pki::new();
    let port = free_port();
    let source = Server::builder()
        .tls(pki.dir(), port, "no")
        .arg("repl-ping-replica-period", "60")
        .start();
    let target = Server::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{port}"));
    let mut ferry = Ferry::sync(
        &format!("rediss://127.0.0.1:{}", proxy.port()),
        &target.url(),
        &[
            "--name",
            "flip",
            "--skip-precheck",
            "--source-tls-ca",
            &pki.path(CA_CERT),
        ],
    );
    source.cmd(&["SET", "warm", "1"]);
    wait_caught_up(&source, &target, "flip", LONG);
    // A byte of the next TLS record's ciphertext, past its header (type 23, application
    // data; 3, 3; a 2-byte length).
    proxy.flip_at(Direction::Downstream, &[0x17, 0x03, 0x03], 8);
    source.cmd(&["SET", "flipme", "v"]);
    ferry.wait_for_output("retrying", LONG);
    wait_caught_up(&source, &target, "flip", LONG);
    ferry.signal("INT");
    assert_same_data(&source, &target);
    assert_eq!(target.cmd(&["GET", "flipme"]).as_str(), "v");
}
