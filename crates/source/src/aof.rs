//! Append-only files as a source: Redis 7's multi-part AOF (a directory with a manifest
//! naming one base file and the incr files after it) and the older single `appendonly.aof`.
//!
//! An AOF is the RESP commands Redis executed, in order, maybe after an RDB preamble
//! (`aof-use-rdb-preamble`, and every `*.base.rdb`), with `#TS:<unix seconds>` annotation
//! lines where `aof-timestamp-enabled` is on. Formats as in Redis's own `src/aof.c`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_rdb::Parser;
use ferry_resp::frame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::SourceError;
use crate::file_io::{file_error, open, Counting, FileOptions};
use crate::rdb_events::send_rdb_events;
use ferry_core::event::Event;
use ferry_core::stats::{Phase, ShardStats};

/// One line of a manifest: `file <name> seq <n> type <b|h|i>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManifestEntry {
    name: String,
    seq: u64,
    kind: char,
}

/// The files to read, in order: the base, then the incr files by sequence.
fn aof_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if path.is_dir() {
        let manifest = find_manifest(path)?;
        match manifest {
            Some(m) => files_of_manifest(&m, path),
            None => {
                let single = path.join("appendonly.aof");
                if single.is_file() {
                    Ok(vec![single])
                } else {
                    Err(file_error(
                        path,
                        "not an AOF directory",
                        "no *.manifest file and no appendonly.aof in it",
                    ))
                }
            }
        }
    } else if path.extension().is_some_and(|e| e == "manifest") {
        let dir = path.parent().unwrap_or(Path::new("."));
        files_of_manifest(path, dir)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn find_manifest(dir: &Path) -> Result<Option<PathBuf>, SourceError> {
    let default = dir.join("appendonly.aof.manifest");
    if default.is_file() {
        return Ok(Some(default));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, "cannot list", e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.ends_with(".manifest") && !n.starts_with("temp-"))
        })
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(file_error(
            dir,
            "several AOF manifests",
            "give the one to read as aof:<dir>/<name>.manifest",
        )),
    }
}

fn files_of_manifest(manifest: &Path, dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| file_error(manifest, "cannot read", e))?;
    let entries = parse_manifest(&text).map_err(|m| file_error(manifest, "bad AOF manifest", m))?;
    let mut base = None;
    let mut incr = Vec::new();
    for e in entries {
        match e.kind {
            'b' if base.is_some() => {
                return Err(file_error(manifest, "bad AOF manifest", "two base files"))
            }
            'b' => base = Some(e),
            'i' => incr.push(e),
            _ => {} // history: already folded into the base
        }
    }
    incr.sort_by_key(|e| e.seq);
    Ok(base
        .into_iter()
        .chain(incr)
        .map(|e| dir.join(e.name))
        .collect())
}

fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let args = split_args(line).ok_or_else(|| format!("line {}: unbalanced quotes", n + 1))?;
        if args.len() < 6 || args.len() % 2 != 0 {
            return Err(format!(
                "line {}: expected `file <name> seq <n> type <t>`",
                n + 1
            ));
        }
        let (mut name, mut seq, mut kind) = (None, None, None);
        for pair in args.chunks(2) {
            match pair[0].to_ascii_lowercase().as_str() {
                "file" => name = Some(pair[1].clone()),
                "seq" => seq = pair[1].parse::<u64>().ok(),
                "type" => kind = pair[1].chars().next(),
                _ => {} // newer keys: ignored, as Redis does
            }
        }
        match (name, seq, kind) {
            (Some(name), Some(seq), Some(kind))
                if !name.contains('/') && matches!(kind, 'b' | 'h' | 'i') =>
            {
                out.push(ManifestEntry { name, seq, kind })
            }
            _ => return Err(format!("line {}: {line:?}", n + 1)),
        }
    }
    if out.is_empty() {
        return Err("empty manifest".into());
    }
    Ok(out)
}

/// Splits a manifest line into words; a word may be double-quoted with C escapes (how
/// Redis writes a file name that needs them) or single-quoted.
fn split_args(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Some(out);
        };
        let mut word = Vec::<u8>::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                let c = chars.next()?;
                if c == first {
                    break;
                }
                if c == '\\' && first == '"' {
                    match chars.next()? {
                        'n' => word.push(b'\n'),
                        'r' => word.push(b'\r'),
                        't' => word.push(b'\t'),
                        'a' => word.push(7),
                        'b' => word.push(8),
                        'x' => {
                            let hex: String = [chars.next()?, chars.next()?].iter().collect();
                            word.push(u8::from_str_radix(&hex, 16).ok()?);
                        }
                        other => word.extend_from_slice(other.to_string().as_bytes()),
                    }
                } else if c == '\\' && chars.peek() == Some(&'\'') {
                    chars.next();
                    word.push(b'\'');
                } else {
                    word.extend_from_slice(c.to_string().as_bytes());
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.extend_from_slice(c.to_string().as_bytes());
                chars.next();
            }
        }
        out.push(String::from_utf8_lossy(&word).into_owned());
    }
}

/// Where the command reader is across files.
struct Commands<'a> {
    tx: &'a mpsc::Sender<Event>,
    stats: &'a ShardStats,
    until: Option<i64>,
    /// Bytes of AOF consumed so far, all files together: the events' offsets.
    offset: u64,
    db: u32,
    /// A transaction read up to here: sent whole once its EXEC is read, dropped if the
    /// AOF ends (or is cut by `--aof-until`) before it, as Redis does when loading.
    multi: Option<Vec<Event>>,
    commands: u64,
}

enum Flow {
    Next,
    Stop,
}

impl Commands<'_> {
    fn send(&self, ev: Event, path: &Path) -> Result<(), SourceError> {
        self.tx
            .blocking_send(ev)
            .map_err(|_| SourceError::Downstream {
                addr: path.display().to_string(),
            })
    }

    /// Reads commands from `r` (after `buf`, bytes already read from it) to its end.
    fn read<R: Read>(
        &mut self,
        r: &mut R,
        mut buf: BytesMut,
        path: &Path,
        last_file: bool,
        cancel: &CancellationToken,
    ) -> Result<Flow, SourceError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if cancel.is_cancelled() {
                return Ok(Flow::Stop);
            }
            if let Flow::Stop = self.drain(&mut buf, path)? {
                return Ok(Flow::Stop);
            }
            let n = r
                .read(&mut chunk)
                .map_err(|e| file_error(path, "read failed", e))?;
            if n == 0 {
                if buf.is_empty() {
                    return Ok(Flow::Next);
                }
                if last_file {
                    // What a crash mid-write leaves; Redis loads up to it (aof-load-truncated).
                    warn!(file = %path.display(), bytes = buf.len(), "the AOF ends with an incomplete command; ignored");
                    return Ok(Flow::Next);
                }
                return Err(file_error(
                    path,
                    "AOF file ends inside a command",
                    format!("{} bytes left at offset {}", buf.len(), self.offset),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the annotation lines at the start of a file.
    fn leading_annotations<R: BufRead>(
        &mut self,
        r: &mut R,
        path: &Path,
    ) -> Result<Flow, SourceError> {
        loop {
            let head = r
                .fill_buf()
                .map_err(|e| file_error(path, "read failed", e))?;
            if head.first() != Some(&b'#') {
                return Ok(Flow::Next);
            }
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)
                .map_err(|e| file_error(path, "read failed", e))?;
            self.offset += line.len() as u64;
            if self.past_until(&line, path) {
                return Ok(Flow::Stop);
            }
        }
    }

    /// Whether `line` is a timestamp annotation later than `--aof-until`.
    fn past_until(&mut self, line: &[u8], path: &Path) -> bool {
        match (timestamp(line), self.until) {
            (Some(ts), Some(until)) if ts > until => {
                info!(file = %path.display(), annotation = ts, until, "stopping at the AOF timestamp annotation");
                if self.multi.take().is_some() {
                    warn!("a transaction cut by --aof-until was dropped");
                }
                true
            }
            _ => false,
        }
    }

    /// Handles every whole command and annotation in `buf`.
    fn drain(&mut self, buf: &mut BytesMut, path: &Path) -> Result<Flow, SourceError> {
        loop {
            if buf.first() == Some(&b'#') {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    return Ok(Flow::Next);
                };
                let line = buf.split_to(nl + 1);
                self.offset += line.len() as u64;
                if self.past_until(&line, path) {
                    return Ok(Flow::Stop);
                }
                continue;
            }
            let (f, n) = match frame::parse(buf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(Flow::Next),
                Err(e) => {
                    return Err(file_error(
                        path,
                        "not an AOF",
                        format!("at byte {}: {e}", self.offset + e.offset as u64),
                    ))
                }
            };
            self.offset += n as u64;
            let Some(argv) = f.into_argv() else {
                return Err(file_error(
                    path,
                    "not an AOF",
                    format!("a reply, not a command, before byte {}", self.offset),
                ));
            };
            self.command(argv, path)?;
        }
    }

    fn command(&mut self, argv: Vec<Bytes>, path: &Path) -> Result<(), SourceError> {
        let Some(name) = argv.first() else {
            return Ok(());
        };
        if name.eq_ignore_ascii_case(b"SELECT") {
            self.db = argv
                .get(1)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    file_error(path, "bad SELECT", format!("before byte {}", self.offset))
                })?;
            return Ok(());
        }
        let is_multi = name.eq_ignore_ascii_case(b"MULTI");
        let is_exec = name.eq_ignore_ascii_case(b"EXEC");
        let ev = Event::Command {
            db: self.db,
            argv,
            offset: self.offset,
        };
        self.commands += 1;
        self.stats.records_read.fetch_add(1, Relaxed);
        self.stats.mark_read(self.offset);
        if is_multi {
            if self.multi.is_some() {
                return Err(file_error(
                    path,
                    "nested MULTI",
                    format!("before byte {}", self.offset),
                ));
            }
            self.multi = Some(vec![ev]);
            return Ok(());
        }
        match self.multi.as_mut() {
            Some(queued) => {
                queued.push(ev);
                if is_exec {
                    for ev in self.multi.take().unwrap_or_default() {
                        self.send(ev, path)?;
                    }
                }
                Ok(())
            }
            None => self.send(ev, path),
        }
    }
}

/// `#TS:<unix seconds>` → the seconds.
fn timestamp(line: &[u8]) -> Option<i64> {
    let rest = line.strip_prefix(b"#TS:")?;
    std::str::from_utf8(rest).ok()?.trim().parse().ok()
}

/// Reads an AOF (directory, manifest, or single file) to its end, or to the first
/// timestamp annotation past `opts.aof_until`.
pub(crate) fn read_aof(
    path: &Path,
    opts: &FileOptions,
    tx: &mpsc::Sender<Event>,
    stats: &Arc<ShardStats>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let files = aof_files(path)?;
    let mut total = 0;
    for f in &files {
        total += open(f)?.1;
    }
    info!(files = ?files, bytes = total, "reading the AOF");
    let name = path.display().to_string();
    stats.rdb_size.store(total, Relaxed);
    *stats.replid.lock().unwrap_or_else(|e| e.into_inner()) = "aof".into();
    tx.blocking_send(Event::SnapshotBegin {
        replid: "aof".into(),
        offset: 0,
        rdb_size: Some(total),
    })
    .map_err(|_| SourceError::Downstream { addr: name.clone() })?;
    stats.set_phase(Phase::Snapshot);
    let mut cmds = Commands {
        tx,
        stats,
        until: opts.aof_until,
        offset: 0,
        db: 0,
        multi: None,
        commands: 0,
    };
    for (i, file) in files.iter().enumerate() {
        let (f, _) = open(file)?;
        let mut reader = BufReader::with_capacity(
            256 * 1024,
            Counting {
                inner: f,
                stats: stats.clone(),
            },
        );
        let last = i + 1 == files.len();
        // A rewrite may put a `#TS:` annotation before the base's RDB preamble.
        if let Flow::Stop = cmds.leading_annotations(&mut reader, file)? {
            if i == 0 {
                tx.blocking_send(Event::SnapshotEnd {
                    rdb_version: 0,
                    keys: 0,
                })
                .map_err(|_| SourceError::Downstream { addr: name.clone() })?;
            }
            break;
        }
        let head = reader
            .fill_buf()
            .map_err(|e| file_error(file, "read failed", e))?;
        let preamble = head.starts_with(b"REDIS") || head.starts_with(b"VALKEY");
        let flow = if i == 0 && preamble {
            let mut parser = Parser::new(reader);
            parser.set_big_values(opts.big_values);
            let keys = send_rdb_events(
                &mut parser,
                tx,
                stats,
                false,
                &file.display().to_string(),
                None,
            )?;
            cmds.offset = parser.offset();
            info!(file = %file.display(), keys, "AOF RDB preamble read");
            stats.set_phase(Phase::Incremental);
            let (mut reader, buffered) = parser.into_parts();
            cmds.read(
                &mut reader,
                BytesMut::from(&buffered[..]),
                file,
                last,
                cancel,
            )?
        } else {
            if i == 0 {
                // A base of commands: nothing to restore, the commands rebuild everything.
                tx.blocking_send(Event::SnapshotEnd {
                    rdb_version: 0,
                    keys: 0,
                })
                .map_err(|_| SourceError::Downstream { addr: name.clone() })?;
                stats.set_phase(Phase::Incremental);
            } else if preamble {
                return Err(file_error(
                    file,
                    "unexpected RDB",
                    "only the base file of an AOF may hold an RDB",
                ));
            }
            cmds.read(&mut reader, BytesMut::new(), file, last, cancel)?
        };
        if let Flow::Stop = flow {
            break;
        }
    }
    if cmds.multi.take().is_some() {
        warn!("the AOF ends inside a MULTI without its EXEC; that transaction is dropped, as Redis does");
    }
    info!(commands = cmds.commands, "AOF read");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let m = "file appendonly.aof.2.base.rdb seq 2 type b\nfile appendonly.aof.1.incr.aof seq 1 type h\nfile \"a b.aof\" seq 4 type i\nfile appendonly.aof.3.incr.aof seq 3 type i\n";
        let e = parse_manifest(m).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[2].name, "a b.aof");
        assert!(parse_manifest("file x seq 1\n").is_err());
        assert!(parse_manifest("file ../x seq 1 type b\n").is_err());
        assert!(parse_manifest("").is_err());
        assert_eq!(
            split_args("a \"x\\x41\" 'c d'").unwrap(),
            ["a", "xA", "c d"]
        );
        assert!(split_args("\"open").is_none());
    }

    #[test]
    fn commands_and_annotations() {
        let (tx, mut rx) = mpsc::channel(100);
        let stats = ShardStats::default();
        let mut c = Commands {
            tx: &tx,
            stats: &stats,
            until: Some(100),
            offset: 0,
            db: 0,
            multi: None,
            commands: 0,
        };
        let aof = b"#TS:50\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*1\r\n$4\r\nEXEC\r\n#TS:101\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n";
        let mut r = &aof[..];
        let flow = c
            .read(
                &mut r,
                BytesMut::new(),
                Path::new("x"),
                true,
                &CancellationToken::new(),
            )
            .unwrap();
        assert!(matches!(flow, Flow::Stop));
        drop(tx);
        let mut names = Vec::new();
        while let Ok(Event::Command { db, argv, .. }) = rx.try_recv() {
            assert_eq!(db, 3);
            names.push(String::from_utf8_lossy(&argv[0]).into_owned());
        }
        assert_eq!(names, ["SET", "MULTI", "INCR", "EXEC"]);
        assert_eq!(timestamp(b"#TS:1700000000\r\n"), Some(1_700_000_000));
    }

    fn read_file_until(until: i64) -> Vec<String> {
        let path =
            std::env::temp_dir().join(format!("ferry-aof-{}-{until}.aof", std::process::id()));
        std::fs::write(
            &path,
            b"#TS:10\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n#TS:20\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        let opts = FileOptions {
            big_values: None,
            aof_until: Some(until),
        };
        let stats = Arc::new(ShardStats::default());
        read_aof(&path, &opts, &tx, &stats, &CancellationToken::new()).unwrap();
        drop(tx);
        let _ = std::fs::remove_file(&path);
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match ev {
                Event::Command { argv, .. } => String::from_utf8_lossy(&argv[1]).into_owned(),
                Event::SnapshotBegin { .. } => "begin".into(),
                Event::SnapshotEnd { .. } => "end".into(),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn stops_at_leading_and_later_annotations() {
        assert_eq!(read_file_until(5), ["begin", "end"]);
        assert_eq!(read_file_until(15), ["begin", "end", "a"]);
        assert_eq!(read_file_until(25), ["begin", "end", "a", "b"]);
    }
}
