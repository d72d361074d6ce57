//! What a packager relies on: `--help` of every subcommand, shell completions, man pages,
//! the example job file, the Dockerfile and the systemd unit (checked against the
//! repository and the binary's flags, since CI has no container builder).

use std::path::{Path, PathBuf};
use std::process::Command;

fn ferry(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const SUBCOMMANDS: &[&str] = &[
    "sync",
    "verify",
    "check",
    "serve",
    "job",
    "cutover",
    "status",
    "completions",
    "man",
];

#[test]
fn every_subcommand_has_help() {
    let (ok, top) = ferry(&["--help"]);
    assert!(ok, "{top}");
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "{sub} missing from ferry --help:\n{top}");
        let (ok, help) = ferry(&[sub, "--help"]);
        assert!(
            ok && help.contains("Usage: ferry"),
            "ferry {sub} --help:\n{help}"
        );
    }
    let (ok, v) = ferry(&["--version"]);
    assert!(ok && v.starts_with("ferry "), "{v}");
}

#[test]
fn completions_and_man_pages() {
    for (shell, marker) in [
        ("bash", "_ferry()"),
        ("zsh", "#compdef ferry"),
        ("fish", "complete -c ferry"),
    ] {
        let (ok, script) = ferry(&["completions", shell]);
        assert!(ok, "{script}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("cutover"), "{shell} lacks subcommands");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = ferry(&["man", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    for page in [
        "ferry.1",
        "ferry-sync.1",
        "ferry-cutover.1",
        "ferry-serve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
}

/// The example job file is one `ferry sync --config` accepts: the run gets as far as the
/// first contact with the (absent) source, never a configuration error.
#[test]
fn the_example_job_file_is_valid() {
    let file = root().join("examples/job.toml");
    let (ok, out) = ferry(&[
        "sync",
        "--config",
        file.to_str().unwrap(),
        "--source",
        "redis://127.0.0.1:1",
        "--progress",
        "never",
    ]);
    assert!(!ok);
    assert!(out.contains("first connection failed"), "{out}");
    assert!(out.contains("name=cache-move"), "{out}");
}

/// The Dockerfile copies every workspace member and only paths that exist, builds the
/// `ferry` package, and runs a subcommand (and flags) the binary has.
#[test]
fn the_dockerfile_matches_the_repository() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let known = [
        "FROM",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "VOLUME",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "ARG",
        "LABEL",
    ];
    let mut copied = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("&&") {
            continue;
        }
        let word = line.split_whitespace().next().unwrap();
        assert!(
            known.contains(&word),
            "unknown instruction {word:?} in {line:?}"
        );
        if word == "COPY" && !line.contains("--from") {
            let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
            for src in &parts[..parts.len() - 1] {
                assert!(root().join(src).exists(), "COPY of a missing path {src}");
                copied.push(src.trim_end_matches('/').to_string());
            }
        }
        // Continuation lines belong to this instruction.
        let mut l = line.to_string();
        while l.ends_with('\\') {
            l = lines.next().unwrap_or_default().trim().to_string();
        }
    }
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .split("members = [")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    for m in members {
        assert!(
            copied.iter().any(|c| m.starts_with(c.as_str())),
            "workspace member {m} is not copied into the image"
        );
    }
    assert!(text.contains("cargo build --release --locked -p ferry"));
    let cmd = text
        .lines()
        .find(|l| l.starts_with("CMD"))
        .expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD").trim()).unwrap();
    let (ok, help) = ferry(&[&args[0], "--help"]);
    assert!(ok, "{help}");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "ferry {} has no {flag}",
            args[0]
        );
    }
}

/// The systemd unit runs `ferry serve` with flags the binary has.
#[test]
fn the_systemd_unit_matches_the_binary() {
    let text = std::fs::read_to_string(root().join("contrib/systemd/ferry-serve.service"))
        .expect("unit file");
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(text.contains(section), "{section}");
    }
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert!(words[0].ends_with("/ferry"), "{exec}");
    let (ok, top) = ferry(&["--help"]);
    assert!(ok);
    let (ok, serve) = ferry(&["serve", "--help"]);
    assert!(ok);
    assert!(words.contains(&"serve"), "{exec}");
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(
            serve.contains(flag) || top.contains(flag),
            "ferry has no {flag} ({exec})"
        );
    }
}

#[test]
fn the_license_is_the_one_cargo_names() {
    let license = std::fs::read_to_string(root().join("LICENSE")).expect("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
}
