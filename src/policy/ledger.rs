//! The usage ledger: one JSON line per finished proxied request, appended with one write each
//! (a `kill -9` loses nothing already written and tears no line), rotated by size, and read
//! back at start so totals survive restarts. Never message content, never a secret.

use super::clock;
use crate::usage::Usage;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Rotated files kept beside the live one (`usage.jsonl.1` … `.3`).
const KEEP: usize = 3;

/// One finished proxied request, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// RFC 3339 UTC time the request finished.
    pub ts: String,
    /// The request id.
    pub request_id: String,
    /// Who asked (see `identity`).
    pub user: String,
    /// The client key's name.
    pub key: String,
    /// The body's `user` from a key not trusted to name users (`identity::Identity::label`).
    pub end_user: Option<String>,
    /// The public model id.
    pub model: String,
    /// The backend host that answered last, if any.
    pub backend: Option<String>,
    /// The normalized path.
    pub path: String,
    /// Status sent to the client.
    pub status: u16,
    /// Tokens used.
    pub usage: Usage,
    /// Total time, in milliseconds.
    pub duration_ms: u64,
    /// Time to the first body byte, in milliseconds.
    pub ttfb_ms: Option<u64>,
    /// `complete`, `client_gone`, `upstream_failed` or `error`.
    pub outcome: String,
}

impl Entry {
    /// The JSON line, without its newline.
    pub fn to_line(&self) -> String {
        let mut v = serde_json::json!({
            "ts": self.ts,
            "request_id": self.request_id,
            "user": self.user,
            "key": self.key,
            "model": self.model,
            "backend": self.backend,
            "path": self.path,
            "status": self.status,
            "prompt_tokens": self.usage.prompt,
            "completion_tokens": self.usage.completion,
            "cached_tokens": self.usage.cached,
            "reasoning_tokens": self.usage.reasoning,
            "estimated": self.usage.estimated,
            "duration_ms": self.duration_ms,
            "ttfb_ms": self.ttfb_ms,
            "outcome": self.outcome,
        });
        // Only on the lines that have one, after `key`, so other lines keep their bytes.
        if let (Some(label), Some(m)) = (&self.end_user, v.as_object_mut()) {
            m.shift_insert(4, "end_user".into(), label.clone().into());
        }
        v.to_string()
    }

    /// Reads a line back; `None` for a line that is not one (torn by a full disk, or foreign).
    pub fn from_line(line: &str) -> Option<Entry> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        Some(Entry {
            ts: s("ts")?,
            request_id: s("request_id").unwrap_or_default(),
            user: s("user")?,
            key: s("key").unwrap_or_default(),
            end_user: s("end_user"),
            model: s("model")?,
            backend: s("backend"),
            path: s("path").unwrap_or_default(),
            status: u16::try_from(n("status")).unwrap_or(0),
            usage: Usage {
                prompt: n("prompt_tokens"),
                completion: n("completion_tokens"),
                cached: n("cached_tokens"),
                reasoning: n("reasoning_tokens"),
                estimated: v
                    .get("estimated")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(false),
            },
            duration_ms: n("duration_ms"),
            ttfb_ms: v.get("ttfb_ms").and_then(|x| x.as_u64()),
            outcome: s("outcome").unwrap_or_default(),
        })
    }
}

/// The open ledger file.
pub struct Ledger {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
    last_warning_ms: AtomicI64,
}

impl Ledger {
    /// Opens (creating) the ledger for appending; an error names the path.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Ledger, String> {
        let file = open_append(path)?;
        Ok(Ledger {
            path: path.to_path_buf(),
            max_bytes,
            file: Mutex::new(Some(file)),
            last_warning_ms: AtomicI64::new(i64::MIN),
        })
    }

    /// Appends one entry: one `write` of the whole line, rotating first when the file would
    /// pass its size. A failure is logged (at most once a minute), never fatal; false then.
    pub fn append(&self, entry: &Entry) -> bool {
        let mut line = entry.to_line();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Err(e) = self.write_locked(&mut guard, line.as_bytes()) else {
            return true;
        };
        {
            let now = clock::now_ms();
            let last = self.last_warning_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 60_000 {
                self.last_warning_ms.store(now, Ordering::Relaxed);
                log::warn!(
                    "usage ledger {}: cannot write ({}); traffic goes on, usage lines are lost until this is fixed",
                    self.path.display(),
                    e
                );
            }
        }
        false
    }

    fn write_locked(&self, slot: &mut Option<(File, u64)>, line: &[u8]) -> Result<(), String> {
        if slot.is_none() {
            *slot = Some(open_append(&self.path)?);
        }
        let needs_rotation = slot
            .as_ref()
            .is_some_and(|(_, size)| *size > 0 && size + line.len() as u64 > self.max_bytes);
        if needs_rotation {
            *slot = None;
            rotate(&self.path)?;
            *slot = Some(open_append(&self.path)?);
        }
        let (file, size) = slot.as_mut().ok_or("ledger not open")?;
        match file.write_all(line) {
            Ok(()) => {
                *size += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen next time: the size is unknown after a partial write.
                *slot = None;
                Err(e.to_string())
            }
        }
    }
}

fn open_append(path: &Path) -> Result<(File, u64), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open usage ledger {}: {}", path.display(), e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// `usage.jsonl` → `.1` → `.2` → `.3`; the oldest is dropped.
fn rotate(path: &Path) -> Result<(), String> {
    for i in (1..KEEP).rev() {
        let from = numbered(path, i);
        if from.exists() {
            std::fs::rename(&from, numbered(path, i + 1)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::rename(path, numbered(path, 1)).map_err(|e| e.to_string())
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}", i));
    PathBuf::from(s)
}

/// Every entry of the ledger and its rotated files, oldest first, and how many lines were not
/// entries. Missing files are empty.
pub fn read_all(path: &Path) -> Result<(Vec<Entry>, usize), String> {
    let mut entries = Vec::new();
    let mut skipped = 0;
    let files: Vec<PathBuf> = (1..=KEEP)
        .rev()
        .map(|i| numbered(path, i))
        .chain(std::iter::once(path.to_path_buf()))
        .collect();
    for f in files {
        let file = match File::open(&f) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {}", f.display(), e)),
        };
        // Only regular files hold lines (a device such as /dev/full or a FIFO never ends).
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            continue;
        }
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| format!("cannot read {}: {}", f.display(), e))?;
            if line.is_empty() {
                continue;
            }
            match std::str::from_utf8(&line).ok().and_then(Entry::from_line) {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
    }
    Ok((entries, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            ts: clock::rfc3339(1_800_000_000_000 + i as i64),
            request_id: format!("r{}", i),
            user: "u".into(),
            key: "k".into(),
            model: "m".into(),
            usage: Usage {
                prompt: i,
                completion: 1,
                ..Usage::default()
            },
            outcome: "complete".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn appends_rotates_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("mm-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        let one = entry(0).to_line().len() as u64 + 1;
        let ledger = Ledger::open(&path, one * 3).unwrap();
        for i in 0..10 {
            ledger.append(&entry(i));
        }
        assert!(numbered(&path, 3).exists() && !numbered(&path, 4).exists());
        // A torn last line (disk full mid-write) is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ts\":\"2026")
            .unwrap();
        let (read, skipped) = read_all(&path).unwrap();
        // Three rotated files of three lines and the live one of one: all ten, oldest first.
        let ids: Vec<String> = read.iter().map(|e| e.request_id.clone()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("r{}", i)).collect::<Vec<_>>());
        assert_eq!(skipped, 1);
        assert_eq!(read.last(), Some(&entry(9)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
