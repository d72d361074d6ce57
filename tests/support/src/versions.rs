//! Other server versions for cross-version tests: the binaries that
//! `scripts/fetch-redis-versions.sh` put under `<workspace>/.redis-versions/<label>/`
//! (or `$FERRY_REDIS_VERSIONS_DIR/<label>/`), plus the system's `redis-server`.

use std::path::{Path, PathBuf};

use crate::server::{parse_version, which, Version};

/// Overrides where fetched server binaries are looked for.
pub const VERSIONS_DIR_ENV: &str = "FERRY_REDIS_VERSIONS_DIR";
/// When set to `1`, cross-version tests fail instead of skipping when no other version is
/// available (CI sets it, so a broken fetch cannot pass silently).
pub const REQUIRE_VERSIONS_ENV: &str = "FERRY_REQUIRE_VERSIONS";

/// The directory fetched versions live in.
pub fn versions_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(VERSIONS_DIR_ENV) {
        return PathBuf::from(d);
    }
    // tests/support -> workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(".redis-versions")
}

/// One server binary: a label such as `redis-6.0` or `valkey-8.1`, its path and version.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    pub label: String,
    pub path: PathBuf,
    pub version: Version,
    /// True for Valkey builds (their `redis_version` is a compatibility number).
    pub valkey: bool,
}

/// Every fetched binary that runs, sorted by label, then the system `redis-server` (labelled
/// `system-X.Y`) when there is one.
pub fn available_servers() -> Vec<ServerBinary> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(versions_dir()) {
        let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let label = match d.file_name().and_then(|n| n.to_str()) {
                Some(l) if !l.starts_with('.') => l.to_string(),
                _ => continue,
            };
            let path = d.join("redis-server");
            if !path.is_file() {
                continue;
            }
            if let Some(b) = probe(&label, &path) {
                out.push(b);
            }
        }
    }
    if let Some(path) = which("redis-server") {
        if let Some(mut b) = probe("system", &path) {
            b.label = format!("system-{}.{}", b.version.0, b.version.1);
            out.push(b);
        }
    }
    out
}

/// Looks a binary up by label (`redis-6.0`, `valkey-9`, `system-7.0`, …).
pub fn server_binary(label: &str) -> Option<ServerBinary> {
    available_servers().into_iter().find(|b| b.label == label)
}

/// True when [`REQUIRE_VERSIONS_ENV`] is `1`.
pub fn versions_required() -> bool {
    std::env::var(REQUIRE_VERSIONS_ENV).is_ok_and(|v| v == "1")
}

fn probe(label: &str, path: &Path) -> Option<ServerBinary> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let valkey = text.to_ascii_lowercase().contains("valkey");
    let version = parse_version(&text)?;
    Some(ServerBinary {
        label: label.to_string(),
        path: path.to_path_buf(),
        version,
        valkey,
    })
}
