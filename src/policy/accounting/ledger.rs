//! The usage ledger: one JSON line per finished proxied request, appended with one write each
//! (a `kill -9` loses nothing already written and tears no line), rotated by size (never
//! dropping a file that may hold a line of the current month), and read back as a stream at
//! start (budgets survive restarts) and for `/usage`. One writer per ledger, enforced by a lock
//! file. Never message content, never a secret.

use crate::clock;
use crate::lifecycle::FileWatch;
use crate::stream::usage::Usage;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Rotated files always kept beside the live one (`usage.jsonl.1` … `.3`); older ones are kept
/// while they may hold a line of the current month.
const KEEP: usize = 3;

/// One finished proxied request, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// RFC 3339 UTC time the request finished.
    pub ts: String,
    /// The request id.
    pub request_id: String,
    /// The replica that served it (`CM_OPEN_WEBUI_PROXY_REPLICA`, else the hostname); absent
    /// on lines written before replicas were named.
    pub replica: Option<String>,
    /// Who asked (see `identity`).
    pub user: String,
    /// The client key's name.
    pub key: String,
    /// The body's `user` from a key not trusted to name users (`identity::Identity::label`).
    pub end_user: Option<String>,
    /// The client's conversation (Claude Code's `x-claude-code-session-id`), an identifier.
    pub session: Option<String>,
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
    /// What it cost, in micro-units of `currency` (see `cost`); `None`: unpriced (no price
    /// for its backend, or nothing was asked of one), never to be read as free.
    pub cost: Option<u64>,
    /// The currency of `cost` (empty without one).
    pub currency: String,
}

/// One ledger line's fields, borrowed: from the finished request (the line is written without
/// an owned copy of each of its strings) or from an `Entry`.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub ts: &'a str,
    pub request_id: &'a str,
    pub replica: Option<&'a str>,
    pub user: &'a str,
    pub key: &'a str,
    pub end_user: Option<&'a str>,
    pub session: Option<&'a str>,
    pub model: &'a str,
    pub backend: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub usage: Usage,
    pub duration_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub outcome: &'a str,
    pub cost: Option<u64>,
    pub currency: &'a str,
}

impl Entry {
    /// The JSON line, without its newline.
    #[cfg(test)]
    pub fn to_line(&self) -> String {
        let mut out = Vec::with_capacity(320);
        self.line().write(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Its line's fields.
    pub fn line(&self) -> Line<'_> {
        Line {
            ts: &self.ts,
            request_id: &self.request_id,
            replica: self.replica.as_deref(),
            user: &self.user,
            key: &self.key,
            end_user: self.end_user.as_deref(),
            session: self.session.as_deref(),
            model: &self.model,
            backend: self.backend.as_deref(),
            path: &self.path,
            status: self.status,
            usage: self.usage,
            duration_ms: self.duration_ms,
            ttfb_ms: self.ttfb_ms,
            outcome: &self.outcome,
            cost: self.cost,
            currency: &self.currency,
        }
    }
}

impl Line<'_> {
    /// The entry holding this line's fields.
    pub fn to_entry(self) -> Entry {
        Entry {
            ts: self.ts.to_string(),
            request_id: self.request_id.to_string(),
            replica: self.replica.map(str::to_string),
            user: self.user.to_string(),
            key: self.key.to_string(),
            end_user: self.end_user.map(str::to_string),
            session: self.session.map(str::to_string),
            model: self.model.to_string(),
            backend: self.backend.map(str::to_string),
            path: self.path.to_string(),
            status: self.status,
            usage: self.usage,
            duration_ms: self.duration_ms,
            ttfb_ms: self.ttfb_ms,
            outcome: self.outcome.to_string(),
            cost: self.cost,
            currency: self.currency.to_string(),
        }
    }

    /// Appends the JSON line (no newline) to `out`, member by member in a fixed order (the
    /// optional members only on the lines that have one, each at its place): the bytes
    /// `serde_json` writes for the same object, without building one (a map, its keys and
    /// values) per request. A non-empty `out` is an object already opened: the line's members
    /// continue it.
    fn write(&self, out: &mut Vec<u8>) {
        // Each member's `,"name":` is one literal (one copy, not three), its value after it.
        macro_rules! text {
            ($name:literal, $v:expr) => {{
                out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
                json_str(out, $v);
            }};
        }
        macro_rules! num {
            ($name:literal, $v:expr) => {{
                out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
                decimal(out, $v);
            }};
        }
        // An object already opened (stdout's marker) is continued; else the line opens one.
        out.extend_from_slice(if out.is_empty() {
            b"{\"ts\":"
        } else {
            b",\"ts\":"
        });
        json_str(out, self.ts);
        text!("request_id", self.request_id);
        if let Some(replica) = self.replica {
            text!("replica", replica);
        }
        text!("user", self.user);
        text!("key", self.key);
        if let Some(label) = self.end_user {
            text!("end_user", label);
        }
        if let Some(session) = self.session {
            text!("session", session);
        }
        text!("model", self.model);
        match self.backend {
            Some(backend) => text!("backend", backend),
            None => out.extend_from_slice(b",\"backend\":null"),
        }
        text!("path", self.path);
        num!("status", u64::from(self.status));
        num!("prompt_tokens", self.usage.prompt);
        num!("completion_tokens", self.usage.completion);
        num!("cached_tokens", self.usage.cached);
        // Cache writes are billed apart (the 1-hour ones higher); lines without any keep
        // their bytes.
        if self.usage.cache_write > 0 {
            num!("cache_write_tokens", self.usage.cache_write);
        }
        if self.usage.cache_write_1h > 0 {
            num!("cache_write_1h_tokens", self.usage.cache_write_1h);
        }
        num!("reasoning_tokens", self.usage.reasoning);
        out.extend_from_slice(if self.usage.estimated {
            b",\"estimated\":true"
        } else {
            b",\"estimated\":false"
        });
        num!("duration_ms", self.duration_ms);
        match self.ttfb_ms {
            Some(ms) => num!("ttfb_ms", ms),
            None => out.extend_from_slice(b",\"ttfb_ms\":null"),
        }
        text!("outcome", self.outcome);
        // Only priced lines carry a cost, at the end: an unpriced line is as it always was.
        if let Some(micros) = self.cost {
            text!("cost", &super::cost::format(micros));
            text!("currency", self.currency);
            if self.usage.estimated {
                out.extend_from_slice(b",\"cost_estimated\":true");
            }
        }
        out.push(b'}');
    }
}

impl Entry {
    /// Reads a line back (a line shipped from stdout, with its `"log":"usage"`, too); `None` for
    /// a line that is not one (torn by a full disk, or foreign).
    /// Read field by field, without building a JSON tree: start and `/usage` read every line.
    pub fn from_line(line: &str) -> Option<Entry> {
        serde_json::from_str::<Parsed>(line).ok()?.0
    }
}

/// A line read back: an entry, or `None` when a field it needs is missing.
struct Parsed(Option<Entry>);

impl<'de> serde::Deserialize<'de> for Parsed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> serde::de::Visitor<'de> for LineVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a usage ledger line")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        use serde_json::Value;
        let (mut ts, mut user, mut model) = (None, None, None);
        let mut e = Entry::default();
        // As before: a field of the wrong type reads as absent (a string) or 0 (a number).
        let text = |v: Value| match v {
            Value::String(s) => Some(s),
            _ => None,
        };
        let num = |v: Value| v.as_u64().unwrap_or(0);
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match k.as_ref() {
                "ts" => ts = text(map.next_value()?),
                "user" => user = text(map.next_value()?),
                "model" => model = text(map.next_value()?),
                "request_id" => e.request_id = text(map.next_value()?).unwrap_or_default(),
                "key" => e.key = text(map.next_value()?).unwrap_or_default(),
                "end_user" => e.end_user = text(map.next_value()?),
                "session" => e.session = text(map.next_value()?),
                "replica" => e.replica = text(map.next_value()?),
                "backend" => e.backend = text(map.next_value()?),
                "path" => e.path = text(map.next_value()?).unwrap_or_default(),
                "outcome" => e.outcome = text(map.next_value()?).unwrap_or_default(),
                "status" => e.status = u16::try_from(num(map.next_value()?)).unwrap_or(0),
                "prompt_tokens" => e.usage.prompt = num(map.next_value()?),
                "completion_tokens" => e.usage.completion = num(map.next_value()?),
                "cached_tokens" => e.usage.cached = num(map.next_value()?),
                "reasoning_tokens" => e.usage.reasoning = num(map.next_value()?),
                "cache_write_tokens" => e.usage.cache_write = num(map.next_value()?),
                "cache_write_1h_tokens" => e.usage.cache_write_1h = num(map.next_value()?),
                "estimated" => {
                    e.usage.estimated = map.next_value::<Value>()?.as_bool().unwrap_or(false)
                }
                "duration_ms" => e.duration_ms = num(map.next_value()?),
                "ttfb_ms" => e.ttfb_ms = map.next_value::<Value>()?.as_u64(),
                "cost" => e.cost = text(map.next_value()?).and_then(|s| super::cost::parse(&s)),
                "currency" => e.currency = text(map.next_value()?).unwrap_or_default(),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Parsed(match (ts, user, model) {
            (Some(ts), Some(user), Some(model)) => Some(Entry {
                ts,
                user,
                model,
                ..e
            }),
            _ => None,
        }))
    }
}

/// `v` in decimal digits, as `{}` writes it, without the formatting machinery.
fn decimal(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(crate::decimal::bytes(v, &mut [0u8; 20]));
}

/// A JSON string, escaped as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Most values (ids, names, paths) need no escape: copied as they are, which is what
    // serde_json writes for them, without its byte-by-byte escape table.
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(out, s);
}

/// True when `bytes` hold a control character, a quote or a backslash: what a JSON string
/// escapes. Eight bytes at a time (a word's bytes tested at once), since every line's strings
/// are looked at.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below `n` (n <= 128) sets its high bit here, and only then.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let special =
        |w: u64| below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if special(u64::from_le_bytes(w)) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The open ledger file, or stdout (`usageLog: "-"`).
pub struct Ledger {
    path: PathBuf,
    /// Lines go to stdout, marked `"log":"usage"`, and nothing is read back.
    stdout: bool,
    max_bytes: u64,
    file: Mutex<Option<Open>>,
    /// `<usageLog>.lock`, held for the life of the process: one writer per ledger.
    _lock: Option<File>,
    last_warning_ms: AtomicI64,
    /// Never delete a rotated file: a `costTotal` budget is the sum of every line.
    keep_all: std::sync::atomic::AtomicBool,
}

/// The file lines are appended to, its size, which file it is (device, inode), and the watch
/// that tells when the path may name another file.
struct Open {
    file: File,
    size: u64,
    id: (u64, u64),
    watch: Option<FileWatch>,
}

impl Ledger {
    /// Takes the ledger's writer lock and opens (creating) it for appending; an error names the
    /// path. A ledger another process writes is an error: two writers renaming one file under
    /// each other lose lines.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Ledger, String> {
        if path == Path::new(crate::config::STDOUT_LEDGER) {
            return Ok(Ledger {
                path: path.to_path_buf(),
                stdout: true,
                max_bytes,
                file: Mutex::new(None),
                _lock: None,
                last_warning_ms: AtomicI64::new(i64::MIN),
                keep_all: std::sync::atomic::AtomicBool::new(false),
            });
        }
        let lock = lock_writer(path)?;
        let file = open_append(path)?;
        Ok(Ledger {
            path: path.to_path_buf(),
            stdout: false,
            max_bytes,
            file: Mutex::new(Some(file)),
            _lock: lock,
            last_warning_ms: AtomicI64::new(i64::MIN),
            keep_all: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keeps every rotated file from now on (`true`: a rule has a `costTotal`, whose spend is
    /// read back from every line at start), or only those of open windows.
    pub fn keep_all(&self, keep: bool) {
        self.keep_all.store(keep, Ordering::Relaxed);
    }

    /// Appends one line: one `write` of the whole line, rotating first when the file would
    /// pass its size. A failure is logged (at most once a minute), never fatal; false then.
    pub fn append(&self, entry: &Line) -> bool {
        // The line is built in this thread's buffer, kept between requests (and outside the
        // file's lock): no allocation per line.
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let written = LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => self.append_in(entry, &mut line),
            Err(_) => self.append_in(entry, &mut Vec::new()),
        });
        let Err(e) = written else {
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

    /// Writes `entry`'s line, built in `line` (cleared first; a large one is not kept).
    fn append_in(&self, entry: &Line, line: &mut Vec<u8>) -> Result<(), String> {
        line.clear();
        if line.capacity() > 64 * 1024 {
            *line = Vec::new();
        }
        line.reserve(320);
        if self.stdout {
            // Marked first, so a log pipeline tells it from an access line without parsing.
            line.extend_from_slice(b"{\"log\":\"usage\"");
        }
        entry.write(line);
        line.push(b'\n');
        if self.stdout {
            crate::stdout::write_lines(line).map_err(|e| e.to_string())
        } else {
            let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
            self.write_locked(&mut guard, line)
        }
    }

    fn write_locked(&self, slot: &mut Option<Open>, line: &[u8]) -> Result<(), String> {
        // Someone moved or deleted the file (a logrotate, an operator): lines written to the
        // open descriptor would land in a file nobody reads, or in none. The path is looked at
        // when the file's watch fired (every line when there is no watch).
        if slot.as_ref().is_some_and(|o| {
            o.watch.as_ref().is_none_or(FileWatch::fired) && file_id(&self.path) != Some(o.id)
        }) {
            log::warn!(
                "usage ledger {}: the path no longer names the open file (moved or deleted); reopening it",
                self.path.display()
            );
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(open_append(&self.path)?);
        }
        let needs_rotation = slot
            .as_ref()
            .is_some_and(|o| o.size > 0 && o.size + line.len() as u64 > self.max_bytes);
        if needs_rotation {
            *slot = None;
            let now = match self.keep_all.load(Ordering::Relaxed) {
                // Nothing was last written before the epoch: no file is old enough to go.
                true => 0,
                false => clock::now_ms().div_euclid(1000),
            };
            rotate(&self.path, now)?;
            *slot = Some(open_append(&self.path)?);
        }
        let o = slot.as_mut().ok_or("ledger not open")?;
        match o.file.write_all(line) {
            Ok(()) => {
                o.size += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen next time: the size is unknown after a partial write.
                *slot = None;
                Err(e.to_string())
            }
        }
    }

    /// The ledger's files opened for reading, consistent with each other: no rotation runs
    /// while they are opened, and the live file is read up to its size now.
    pub fn sources(&self) -> Result<Vec<Source>, String> {
        // Lines on stdout are the log pipeline's now.
        if self.stdout {
            return Ok(Vec::new());
        }
        let _guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        open_sources_once(&self.path)
    }
}

/// Locks `<path>.lock` for this process, or says who holds it. A ledger that is not a regular
/// file (`/dev/null`, `/dev/full`) is never rotated and gets no lock file beside it.
fn lock_writer(path: &Path) -> Result<Option<File>, String> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(None);
    }
    let lock_path = suffixed(path, ".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            format!(
                "cannot open usage ledger lock {}: {}",
                lock_path.display(),
                e
            )
        })?;
    match crate::lifecycle::try_lock_exclusive(&file) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Err(format!(
            "usage ledger {} is already written by another process (it holds {}); give each modelmux process its own usageLog",
            path.display(),
            lock_path.display()
        )),
        Err(e) => Err(format!("cannot lock {}: {}", lock_path.display(), e)),
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn open_append(path: &Path) -> Result<Open, String> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open usage ledger {}: {}", path.display(), e))?;
    let (size, id) = file
        .metadata()
        .map(|m| (m.len(), (m.dev(), m.ino())))
        .map_err(|e| format!("cannot open usage ledger {}: {}", path.display(), e))?;
    // Watched only when the path still names the file just opened: a move in between would
    // otherwise go unnoticed.
    let watch = FileWatch::new(path).filter(|_| file_id(path) == Some(id));
    Ok(Open {
        file,
        size,
        id,
        watch,
    })
}

/// `usage.jsonl` → `.1` → `.2` → …: the first `KEEP` rotated files are always kept, and an
/// older one only while it may hold a line of the current UTC month or week (its last write is
/// in it), so no budget window still open ever loses its history, whatever `usageLogMaxBytes`
/// is. `now_secs` 0 keeps every file.
fn rotate(path: &Path, now_secs: i64) -> Result<(), String> {
    let today = now_secs.div_euclid(86_400);
    let (y, m, _) = clock::civil_from_days(today);
    // 1970-01-01 was a Thursday: weeks start three days before the day numbers' multiples of 7.
    let monday = today - (today + 3).rem_euclid(7);
    let month_start = clock::days_from_civil(y, m, 1).min(monday) * 86_400;
    let n = rotated_count(path);
    // Files are numbered by age: the first one written before this month, and every older
    // one, go.
    let last = (KEEP..=n)
        .find(|&i| last_write_before(&numbered(path, i), month_start))
        .map_or(n, |i| i - 1);
    for i in (last + 1..=n).rev() {
        match std::fs::remove_file(numbered(path, i)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
            _ => {}
        }
    }
    for i in (1..=last).rev() {
        let from = numbered(path, i);
        if from.exists() {
            std::fs::rename(&from, numbered(path, i + 1)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::rename(path, numbered(path, 1)).map_err(|e| e.to_string())
}

/// The highest number of a rotated file (numbers past `KEEP` are contiguous).
fn rotated_count(path: &Path) -> usize {
    let mut n = 0;
    let mut i = 1;
    loop {
        if numbered(path, i).exists() {
            n = i;
        } else if i > KEEP {
            return n;
        }
        i += 1;
    }
}

/// True when the file was last written before `t` (every line in it is older, since a line's
/// time is taken before it is written), or cannot be looked at.
fn last_write_before(path: &Path, t: i64) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|m| {
            m.duration_since(std::time::UNIX_EPOCH)
                .map_or(true, |d| (d.as_secs() as i64) < t)
        })
        .unwrap_or(true)
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    suffixed(path, &format!(".{}", i))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// One ledger file opened for reading, with the bytes to read of it and its last write.
pub struct Source {
    name: PathBuf,
    file: File,
    len: u64,
    modified_secs: i64,
}

/// The ledger's files, oldest first (rotated ones by number, then the live one), opened now:
/// renames while they are read change nothing. A rotation while they are being opened (by a
/// running proxy) is seen by the live file changing, and the opening is done again.
pub fn open_sources(path: &Path) -> Result<Vec<Source>, String> {
    for _ in 0..5 {
        let before = file_id(path);
        let sources = open_sources_once(path)?;
        if file_id(path) == before {
            return Ok(sources);
        }
    }
    open_sources_once(path)
}

fn open_sources_once(path: &Path) -> Result<Vec<Source>, String> {
    let files: Vec<PathBuf> = (1..=rotated_count(path))
        .rev()
        .map(|i| numbered(path, i))
        .chain(std::iter::once(path.to_path_buf()))
        .collect();
    let mut out = Vec::new();
    for name in files {
        let file = match File::open(&name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {}", name.display(), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {}", name.display(), e))?;
        // Only regular files hold lines (a device such as /dev/full or a FIFO never ends).
        if !meta.is_file() {
            continue;
        }
        let modified_secs = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| d.as_secs() as i64);
        out.push(Source {
            name,
            file,
            len: meta.len(),
            modified_secs,
        });
    }
    Ok(out)
}

/// Longest line read back; a longer one is not a ledger line (skipped, not kept in memory).
const MAX_LINE: usize = 64 * 1024;

/// Streams the entries of `sources` whose day is in `since..until` to `f`, oldest first, one
/// line in memory at a time; returns how many lines were not entries. Files last written
/// before `since` are not read, and lines outside the range are skipped by their leading
/// `ts` without being parsed.
pub fn scan(
    sources: Vec<Source>,
    since: Option<i64>,
    until: Option<i64>,
    mut f: impl FnMut(Entry),
) -> Result<usize, String> {
    let in_range = |day: i64| since.is_none_or(|s| day >= s) && until.is_none_or(|u| day < u);
    let mut skipped = 0;
    let mut line = Vec::new();
    for s in sources {
        if since.is_some_and(|d| s.modified_secs.div_euclid(86_400) < d) {
            continue;
        }
        let mut r = BufReader::with_capacity(64 * 1024, s.file.take(s.len));
        loop {
            line.clear();
            let whole = read_line(&mut r, &mut line)
                .map_err(|e| format!("cannot read {}: {}", s.name.display(), e))?;
            match whole {
                None => break,
                Some(false) => skipped += 1,
                Some(true) if line.is_empty() => {}
                Some(true) => {
                    // The ledger writes `{"ts":"YYYY-MM-DD…` first.
                    let day = line
                        .strip_prefix(b"{\"ts\":\"")
                        .and_then(|rest| rest.get(..10))
                        .and_then(|d| std::str::from_utf8(d).ok())
                        .and_then(clock::parse_day);
                    if day.is_some_and(|d| !in_range(d)) {
                        continue;
                    }
                    match std::str::from_utf8(&line).ok().and_then(Entry::from_line) {
                        Some(e) if clock::parse_day(&e.ts).is_some_and(in_range) => f(e),
                        Some(_) => {}
                        None => skipped += 1,
                    }
                }
            }
        }
    }
    Ok(skipped)
}

/// Reads one line (without its newline) into `buf`: `None` at the end, `Some(false)` for a
/// line longer than `MAX_LINE` (consumed, not kept).
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(!too_long));
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long && buf.len() + take <= MAX_LINE {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            too_long = true;
            buf.clear();
        }
        r.consume(take + usize::from(done));
        if done {
            return Ok(Some(!too_long));
        }
    }
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

    /// The watch on the open file notices each way the path can stop naming it, so the
    /// next line goes to the file the path names now.
    #[test]
    fn the_next_line_goes_to_the_file_the_path_names_after_a_move_a_delete_or_a_rename_over_it() {
        let dir = std::env::temp_dir().join(format!("mm-ledger-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        let other = dir.join("other");
        let ledger = Ledger::open(&path, 1 << 20).unwrap();
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        assert!(ledger.append(&entry(1).line()));
        std::fs::rename(&path, &other).unwrap();
        assert!(ledger.append(&entry(2).line()));
        assert_eq!((lines(&path), lines(&other)), (1, 1), "after a move");
        std::fs::remove_file(&path).unwrap();
        assert!(ledger.append(&entry(3).line()));
        assert_eq!(lines(&path), 1, "after a delete");
        std::fs::write(&other, "x\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(ledger.append(&entry(4).line()));
        assert_eq!(lines(&path), 2, "after a rename over it");
        // A change of mode fires the watch too, and the path still names the file.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(ledger.append(&entry(5).line()));
        assert_eq!(lines(&path), 3);
        let _ = std::fs::remove_dir_all(&dir);
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
            ledger.append(&entry(i).line());
        }
        assert!(numbered(&path, 3).exists() && !numbered(&path, 4).exists());
        // Nothing rotated so far was written before this month: all of it is kept.
        let written_now = rotated_count(&path);
        assert_eq!(written_now, 3);
        // A torn last line (disk full mid-write) is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ts\":\"2026")
            .unwrap();
        let mut read = Vec::new();
        let skipped = scan(open_sources(&path).unwrap(), None, None, |e| read.push(e)).unwrap();
        // Three rotated files of three lines and the live one of one: all ten, oldest first
        // (the rotated files were written this month, so none is dropped).
        let ids: Vec<String> = read.iter().map(|e| e.request_id.clone()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("r{}", i)).collect::<Vec<_>>());
        assert_eq!(skipped, 1);
        assert_eq!(read.last(), Some(&entry(9)));
        // A second writer on the same ledger is refused while the first one lives.
        let err = Ledger::open(&path, one * 3).err().unwrap();
        assert!(
            err.contains("already written by another process"),
            "{}",
            err
        );
        drop(ledger);
        assert!(Ledger::open(&path, one * 3).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_drops_only_files_written_before_this_month() {
        let dir = std::env::temp_dir().join(format!("mm-ledger-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        let now = 1_800_000_000; // 2027-01-15
        let month_start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_600);
        let write = |p: &Path, text: &str, at: std::time::SystemTime| {
            std::fs::write(p, text).unwrap();
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let hour = std::time::Duration::from_secs(3600);
        // .1 … .5 written this month, .6 and .7 the month before.
        for i in 1..=5 {
            write(
                &numbered(&path, i),
                &format!("{}", i),
                month_start + hour * (10 - i as u32),
            );
        }
        for i in 6..=7 {
            write(
                &numbered(&path, i),
                &format!("{}", i),
                month_start - hour * i as u32,
            );
        }
        write(&path, "live", month_start + hour * 10);
        rotate(&path, now).unwrap();
        let text = |i| std::fs::read_to_string(numbered(&path, i)).ok();
        assert_eq!(text(1).as_deref(), Some("live"));
        assert_eq!(text(6).as_deref(), Some("5"));
        assert_eq!((text(7), text(8)), (None, None));
        // Next month, only the first three rotated files stay.
        write(&path, "next", month_start + hour * 24 * 40);
        rotate(&path, now + 40 * 86_400).unwrap();
        assert_eq!(text(1).as_deref(), Some("next"));
        assert_eq!(text(3).as_deref(), Some("1"));
        assert_eq!((text(4), text(5)), (None, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_keeps_a_week_begun_last_month_and_everything_when_told() {
        let dir = std::env::temp_dir().join(format!("mm-ledger-week-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        // Saturday 2027-01-02; its week began on Monday 2026-12-28.
        let jan1 = 1_798_761_600u64;
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let write = |i: usize, secs: u64| {
            let p = numbered(&path, i);
            std::fs::write(&p, format!("{}", i)).unwrap();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(at(secs))
                .unwrap();
        };
        for i in 1..=3 {
            write(i, jan1 + 3600);
        }
        write(4, jan1 - 2 * 86_400); // Wednesday 2026-12-30: this week
        write(5, jan1 - 5 * 86_400); // Sunday 2026-12-27: last week
        std::fs::write(&path, "live").unwrap();
        rotate(&path, (jan1 + 86_400 + 43_200) as i64).unwrap();
        let text = |i| std::fs::read_to_string(numbered(&path, i)).ok();
        assert_eq!(text(5).as_deref(), Some("4"));
        assert_eq!(text(6), None);
        // Keeping everything (now 0): nothing goes, whatever its age.
        std::fs::write(&path, "again").unwrap();
        rotate(&path, 0).unwrap();
        assert_eq!(text(6).as_deref(), Some("4"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlong_lines_are_skipped_without_being_kept() {
        let mut data = b"short\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend_from_slice(b"\nlast");
        let mut r = BufReader::with_capacity(100, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"short");
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(false));
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), None);
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for v in [
            "",
            "plain",
            "a\"b",
            "back\\slash",
            "new\nline",
            "\u{1}\u{1f}",
            "é ünï",
            "\u{7f}</",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, v);
            assert_eq!(out, serde_json::to_vec(v).unwrap(), "{:?}", v);
        }
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for v in [0, 7, 10, 99, 1_000, 123_456_789, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
    }

    #[test]
    fn lines_read_back_field_by_field_as_the_tree_read_them() {
        let full = Entry {
            backend: Some("b:1".into()),
            ttfb_ms: Some(7),
            status: 200,
            replica: Some("pod-a".into()),
            ..entry(5)
        };
        let line = full.to_line();
        assert!(
            line.contains(r#""request_id":"r5","replica":"pod-a","user""#),
            "{}",
            line
        );
        assert_eq!(Entry::from_line(&line), Some(full));
        let priced = Entry {
            cost: Some(12_150),
            currency: "EUR".into(),
            usage: Usage {
                estimated: true,
                ..entry(5).usage
            },
            ..entry(5)
        };
        let line = priced.to_line();
        assert!(
            line.ends_with(
                r#""outcome":"complete","cost":"0.012150","currency":"EUR","cost_estimated":true}"#
            ),
            "{}",
            line
        );
        assert_eq!(Entry::from_line(&line), Some(priced));
        assert!(!entry(5).to_line().contains("cost"));
        let claude = Entry {
            end_user: Some("eu".into()),
            session: Some("0b6c1f5e-7d1a-4c39-9a57-3f0b2a4d9e11".into()),
            usage: Usage {
                prompt: 20,
                completion: 3,
                cached: 5,
                cache_write: 12,
                cache_write_1h: 8,
                ..Usage::default()
            },
            ..entry(6)
        };
        let line = claude.to_line();
        assert!(
            line.contains(r#""key":"k","end_user":"eu","session":"0b6c1f5e-7d1a-4c39-9a57-3f0b2a4d9e11","model":"m""#)
                && line.contains(r#""cached_tokens":5,"cache_write_tokens":12,"cache_write_1h_tokens":8,"reasoning_tokens":0"#),
            "{}",
            line
        );
        assert_eq!(Entry::from_line(&line), Some(claude));
        // Lines without them, old ones included, carry neither field.
        assert!(
            !entry(1).to_line().contains("session") && !entry(1).to_line().contains("cache_write")
        );
        // Wrong types read as absent or 0; unknown fields are ignored; escapes are decoded.
        let odd = r#"{"ts":"2026-11-02T10:00:00.000Z","user":"a\u00e9\n","model":"m","extra":{"x":[1]},"status":-3,"prompt_tokens":1.5,"completion_tokens":"9","key":7,"ttfb_ms":null,"estimated":true}"#;
        let e = Entry::from_line(odd).unwrap();
        assert_eq!(
            (
                e.user.as_str(),
                e.status,
                e.usage.prompt,
                e.usage.completion
            ),
            ("a\u{e9}\n", 0, 0, 0)
        );
        assert_eq!(
            (e.key.as_str(), e.ttfb_ms, e.usage.estimated),
            ("", None, true)
        );
        for bad in [
            r#"{"user":"a","model":"m"}"#,
            r#"{"ts":"2026-11-02T10:00:00.000Z","user":null,"model":"m"}"#,
            r#"["ts"]"#,
            r#"{"ts":"2026"#,
        ] {
            assert_eq!(Entry::from_line(bad), None, "{}", bad);
        }
    }

    /// The line as the ledger wrote it when it built a `serde_json` object for each: the
    /// bytes must stay the same (other tools read these files).
    fn line_from_a_tree(e: &Entry) -> String {
        let mut v = serde_json::json!({
            "ts": e.ts,
            "request_id": e.request_id,
            "user": e.user,
            "key": e.key,
            "model": e.model,
            "backend": e.backend,
            "path": e.path,
            "status": e.status,
            "prompt_tokens": e.usage.prompt,
            "completion_tokens": e.usage.completion,
            "cached_tokens": e.usage.cached,
            "reasoning_tokens": e.usage.reasoning,
            "estimated": e.usage.estimated,
            "duration_ms": e.duration_ms,
            "ttfb_ms": e.ttfb_ms,
            "outcome": e.outcome,
        });
        if let (Some(label), Some(m)) = (&e.end_user, v.as_object_mut()) {
            m.shift_insert(4, "end_user".into(), label.clone().into());
        }
        if let Some(m) = v.as_object_mut() {
            let after = |m: &serde_json::Map<String, serde_json::Value>, k: &str| {
                m.keys().position(|x| x == k).map(|i| i + 1)
            };
            if let Some(session) = &e.session {
                let at = after(m, "end_user").or(after(m, "key")).unwrap_or(0);
                m.shift_insert(at, "session".into(), session.clone().into());
            }
            let writes = [
                ("cache_write_tokens", e.usage.cache_write),
                ("cache_write_1h_tokens", e.usage.cache_write_1h),
            ];
            let at = after(m, "cached_tokens").unwrap_or(m.len());
            for (k, n) in writes.into_iter().rev().filter(|(_, n)| *n > 0) {
                m.shift_insert(at, k.into(), n.into());
            }
        }
        if let (Some(replica), Some(m)) = (&e.replica, v.as_object_mut()) {
            m.shift_insert(2, "replica".into(), replica.clone().into());
        }
        if let (Some(micros), Some(m)) = (e.cost, v.as_object_mut()) {
            m.insert("cost".into(), super::super::cost::format(micros).into());
            m.insert("currency".into(), e.currency.clone().into());
            if e.usage.estimated {
                m.insert("cost_estimated".into(), true.into());
            }
        }
        v.to_string()
    }

    #[test]
    fn escapes_are_found_at_every_place_and_only_there() {
        let plain: Vec<u8> = (0x20u8..0x7f)
            .filter(|b| *b != b'"' && *b != b'\\')
            .collect();
        assert!(!needs_escape(&plain));
        assert!(!needs_escape("é\u{2028}\u{7f}".as_bytes()));
        for len in 0..20 {
            for at in 0..len {
                for special in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut s = vec![b'a'; len];
                    s[at] = special;
                    assert!(needs_escape(&s), "{:?} at {} of {}", special, at, len);
                }
                // The bytes next to the special ones are not.
                for near in [0x20u8, b'!', b'#', b'[', b']', 0x80, 0xff] {
                    let mut s = vec![b'a'; len];
                    s[at] = near;
                    assert!(!needs_escape(&s), "{:?} at {} of {}", near, at, len);
                }
            }
        }
    }

    #[test]
    fn lines_are_the_bytes_a_json_tree_would_write() {
        let full = Entry {
            user: "\"quoted\" \\ \u{7}\n\u{e9}\u{2028}".into(),
            end_user: Some("end\tuser".into()),
            backend: Some("b:1".into()),
            path: "/chat/completions".into(),
            status: 429,
            usage: Usage {
                prompt: u64::MAX,
                completion: 0,
                cached: 5,
                reasoning: 6,
                estimated: true,
                ..Usage::default()
            },
            duration_ms: 12,
            ttfb_ms: Some(7),
            ..entry(9)
        };
        // Every combination of the optional members (each present or not), on a plain line
        // and on a full one.
        let mut checked = 0;
        for base in [entry(3), full] {
            for bits in 0u32..1 << 8 {
                let on = |i: u32| bits & (1 << i) != 0;
                let mut e = base.clone();
                e.replica = on(0).then(|| "replica-\"1\"".into());
                e.end_user = on(1).then(|| "end\tuser".into());
                e.session = on(2).then(|| "sess\u{1}ion".into());
                e.usage.cache_write = if on(3) { 11 } else { 0 };
                e.usage.cache_write_1h = if on(4) { u64::MAX } else { 0 };
                e.cost = on(5).then_some(1_234_567);
                e.currency = if on(5) { "E\"UR".into() } else { String::new() };
                e.usage.estimated = on(6);
                e.backend = on(7).then(|| "b:2".into());
                assert_eq!(
                    e.to_line(),
                    line_from_a_tree(&e),
                    "combination {:08b}",
                    bits
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 512);
    }
}
