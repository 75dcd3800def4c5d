//! The per-request access log line (text or JSON) and request ids.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Access log format, `CM_OPEN_WEBUI_PROXY_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `key=value` pairs through the logger (stderr).
    Text,
    /// One JSON object per line on stdout, for log shippers.
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Sets the format once at start.
pub fn set_format(f: Format) {
    let _ = FORMAT.set(f);
}

/// One finished request, as logged. Never a key, a prompt or a completion.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// Request id (client's `X-Request-Id` or generated).
    pub request_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Public model id.
    pub model: Option<&'a str>,
    /// Backend host:port of the last attempt.
    pub backend: Option<&'a str>,
    /// Status sent to the client.
    pub status: u16,
    /// Total time.
    pub duration: Duration,
    /// Time to the first body byte.
    pub ttfb: Option<Duration>,
    /// Body bytes sent.
    pub bytes: u64,
    /// Tokens (prompt, completion) from the backend's usage.
    pub tokens: Option<(u64, u64)>,
    /// Retries on other backends or fallback models.
    pub retries: u32,
    /// How it ended.
    pub outcome: &'a str,
    /// What the ledger recorded it cost; `None`: unpriced (the field is left out).
    pub cost: Option<Cost<'a>>,
}

/// A request's cost as logged.
#[derive(Debug, Clone, Copy)]
pub struct Cost<'a> {
    /// Micro-units of `currency`.
    pub micros: u64,
    /// The configured currency.
    pub currency: &'a str,
    /// Computed from estimated usage.
    pub estimated: bool,
}

/// Formats the line in the configured format and queues it (see `Lines`). Nothing is
/// formatted when the log level leaves the text access log out.
pub fn write(e: &Entry) {
    let format = FORMAT.get().copied().unwrap_or(Format::Text);
    if format == Format::Text && !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let lines = lines(format);
    let mut pending = lines.lock();
    let was_empty = pending.is_empty();
    match format {
        Format::Text => text_line(&mut pending, e, now),
        Format::Json => json_line(&mut pending, e, now),
    }
    if pending.len() >= FLUSH_BYTES {
        drop(pending);
        lines.flush();
    } else if was_empty {
        drop(pending);
        lines.more.notify_one();
    }
}

/// Writes out every queued line; called before the process exits.
pub fn flush() {
    for format in [Format::Text, Format::Json] {
        if let Some(l) = LINES[format as usize].get() {
            l.flush();
        }
    }
}

/// The logger target the text lines name, as `log::info!` in this module did.
const TARGET: &str = "modelmux::access_log";
/// Queued lines are written at most this long after the first of them was queued...
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// ...or at once, by the request that makes them this many bytes.
const FLUSH_BYTES: usize = 32 * 1024;

/// Access log lines waiting to be written: one write per batch instead of one per line (a
/// system call, and for stderr two, per request). A thread wakes when the first line of a
/// batch arrives, waits `FLUSH_AFTER` and writes the batch; a big batch is written at once
/// by the request that filled it; `flush` writes the rest before the process exits (after a
/// SIGTERM drain, every line is out). A `kill -9` loses at most the last 50 ms of lines.
struct Lines {
    format: Format,
    pending: Mutex<Vec<u8>>,
    more: Condvar,
    /// Held while a batch is taken and written, so batches go out in order.
    out: Mutex<()>,
}

static LINES: [OnceLock<Lines>; 2] = [OnceLock::new(), OnceLock::new()];

fn lines(format: Format) -> &'static Lines {
    LINES[format as usize].get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || flusher(format));
        Lines {
            format,
            pending: Mutex::new(Vec::new()),
            more: Condvar::new(),
            out: Mutex::new(()),
        }
    })
}

fn flusher(format: Format) {
    let lines = lines(format);
    loop {
        let mut pending = lines.lock();
        while pending.is_empty() {
            pending = lines.more.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        drop(pending);
        std::thread::sleep(FLUSH_AFTER);
        lines.flush();
    }
}

impl Lines {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) {
        let _out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return;
        }
        // As `eprintln!`/`println!` did, a failed write (closed pipe) is not fatal here.
        let _ = match self.format {
            Format::Text => std::io::stderr().lock().write_all(&batch),
            // The ledger may write to stdout too (`usageLog: "-"`): one lock for both.
            Format::Json => crate::stdout::write_lines(&batch),
        };
    }
}

/// The line `log::info!` wrote through simple_logger (UTC timestamps, level, target), byte for
/// byte: `2026-01-02T03:04:05.678Z INFO  [modelmux::access_log] GET /v1/... id=... model=...`.
fn text_line(out: &mut Vec<u8>, e: &Entry, now: Duration) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(256);
    timestamp(&mut s, now);
    let _ = write!(
        s,
        " INFO  [{}] {} {} id={} model={} backend={} status={} duration_ms={} ttfb_ms=",
        TARGET,
        Clip(e.method, 16),
        Clip(e.path, 200),
        Clip(e.request_id, 128),
        Clip(e.model.unwrap_or("-"), 120),
        Clip(e.backend.unwrap_or("-"), 200),
        e.status,
        e.duration.as_millis(),
    );
    match e.ttfb {
        Some(t) => write!(s, "{}", t.as_millis()),
        None => write!(s, "-"),
    }
    .ok();
    let _ = write!(s, " bytes={} tokens_in=", e.bytes);
    match e.tokens {
        Some((i, o)) => write!(s, "{} tokens_out={}", i, o),
        None => write!(s, "- tokens_out=-"),
    }
    .ok();
    let _ = write!(s, " retries={} outcome={}", e.retries, Clip(e.outcome, 64));
    // Only priced requests, at the end: other lines keep their bytes.
    if let Some(c) = e.cost {
        let _ = write!(
            s,
            " cost={} currency={}",
            crate::money::format(c.micros),
            Clip(c.currency, 8)
        );
        if c.estimated {
            s.push_str(" cost_estimated=true");
        }
    }
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
}

/// One JSON object, keys in the order they always had, values as serde_json writes them.
fn json_line(out: &mut Vec<u8>, e: &Entry, now: Duration) {
    fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, first: bool, key: &str, v: &T) {
        out.extend_from_slice(if first { b"{\"" } else { b",\"" });
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut *out, v);
    }
    let clip = crate::http::api_error::clip;
    put(out, true, "ts", &now.as_secs_f64());
    put(out, false, "request_id", e.request_id);
    put(out, false, "method", &clip(e.method, 16));
    put(out, false, "path", &clip(e.path, 200));
    put(out, false, "model", &e.model.map(|m| clip(m, 120)));
    put(out, false, "backend", &e.backend);
    put(out, false, "status", &e.status);
    put(
        out,
        false,
        "duration_ms",
        &(e.duration.as_secs_f64() * 1000.0),
    );
    put(
        out,
        false,
        "ttfb_ms",
        &e.ttfb.map(|t| t.as_secs_f64() * 1000.0),
    );
    put(out, false, "bytes", &e.bytes);
    put(out, false, "tokens_in", &e.tokens.map(|t| t.0));
    put(out, false, "tokens_out", &e.tokens.map(|t| t.1));
    put(out, false, "retries", &e.retries);
    put(out, false, "outcome", e.outcome);
    if let Some(c) = e.cost {
        put(out, false, "cost", &crate::money::format(c.micros));
        put(out, false, "currency", &c.currency);
        if c.estimated {
            put(out, false, "cost_estimated", &true);
        }
    }
    out.extend_from_slice(b"}\n");
}

/// A client-supplied value (a model id) for any other log line: clipped to 200 bytes and
/// escaped as in the access log, so it cannot forge lines there either.
pub fn shown(value: &str) -> impl std::fmt::Display + '_ {
    Clip(value, 200)
}

/// `api_error::clip` without the allocation: at most `max` bytes (on a character boundary),
/// then `…` when something was cut; escaped (see `escape`).
struct Clip<'a>(&'a str, usize);

impl std::fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Clip(s, max) = *self;
        if s.len() <= max {
            return escape(f, s);
        }
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        escape(f, &s[..end])?;
        f.write_str("…")
    }
}

/// Values in the text line come from clients (the model id from the JSON body may hold any
/// character): a newline would forge a log line, ESC drive the terminal that shows the log,
/// a space forge a `key=value` field, a bidi override reorder what a reader sees. Such
/// characters, and `\` itself, are written as `\n`, `\r`, `\t`, `\\` or `\u{..}`; the
/// result is one line of printable characters without spaces, and the escaping is reversible.
fn escape(f: &mut std::fmt::Formatter<'_>, s: &str) -> std::fmt::Result {
    let plain = |c: char| {
        if c.is_ascii() {
            c.is_ascii_graphic() && c != '\\'
        } else {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
        }
    };
    if s.chars().all(plain) {
        return f.write_str(s);
    }
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| !plain(c)) {
        f.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\\' => f.write_str("\\\\")?,
            c => write!(f, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    f.write_str(rest)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch (UTC), as simple_logger wrote it
/// (and the ledger writes it: `clock::stamp`).
fn timestamp(s: &mut String, since_epoch: Duration) {
    let ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    s.push_str(crate::clock::stamp(ms).as_str());
}

/// A request id, on the stack: made for every request, it costs no allocation.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_REQUEST_ID],
    len: u8,
}

/// Longest client `X-Request-Id` kept.
const MAX_REQUEST_ID: usize = 128;

impl RequestId {
    fn from_ascii(s: &str) -> RequestId {
        let mut id = RequestId {
            buf: [0; MAX_REQUEST_ID],
            len: 0,
        };
        let n = s.len().min(MAX_REQUEST_ID);
        id.buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        id.len = n as u8;
        id
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        // Only ever filled with ASCII (checked, or written by `request_id`).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("-")
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The client's `X-Request-Id` when it is sane, else a new one.
pub fn request_id(client: Option<&str>) -> RequestId {
    if let Some(id) = client.map(str::trim) {
        if !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        {
            return RequestId::from_ascii(id);
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Asked once: `process::id` is a system call each time.
    static PID: OnceLock<u32> = OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Unique per process and time; not a secret, so no random source is needed.
    let mut id = RequestId {
        buf: [0; MAX_REQUEST_ID],
        len: 0,
    };
    // `mm-{:012x}{:04x}{:06x}`, written by hand: `write!` was about 3% of a proxied request's
    // instructions.
    id.buf[..3].copy_from_slice(b"mm-");
    let mut len = 3;
    for (v, width) in [
        (t >> 8, 12),
        (u64::from(pid & 0xffff), 4),
        (n & 0xff_ffff, 6),
    ] {
        len += hex(v, width, &mut id.buf[len..]);
    }
    id.len = len as u8;
    id
}

/// `v` in lowercase hex, at least `width` digits (zeros in front), at the start of `out`
/// (which has room for 16); returns the number of digits.
fn hex(v: u64, width: usize, out: &mut [u8]) -> usize {
    let mut buf = [0u8; 16];
    let digits = crate::decimal::hex(v, &mut buf);
    let zeros = width.saturating_sub(digits.len());
    out[..zeros].fill(b'0');
    out[zeros..zeros + digits.len()].copy_from_slice(digits);
    zeros + digits.len()
}

#[cfg(test)]
mod tests {
    use super::request_id;

    /// The hand-written hex digits are `format!`'s, at every width and value size.
    #[test]
    fn hex_digits_are_formats() {
        for v in [
            0u64,
            1,
            0xf,
            0x10,
            0xabc,
            0xffff,
            0x12_3456,
            1 << 47,
            u64::MAX >> 8,
            u64::MAX,
        ] {
            for width in [1, 4, 6, 12, 16] {
                let mut out = [0u8; 20];
                let n = super::hex(v, width, &mut out);
                assert_eq!(
                    std::str::from_utf8(&out[..n]).unwrap(),
                    format!("{:0w$x}", v, w = width)
                );
            }
        }
    }

    #[test]
    fn request_ids_kept_or_made() {
        let a = request_id(None);
        let b = request_id(None);
        assert!(a.starts_with("mm-") && a.len() >= 25, "{}", a.as_str());
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(request_id(Some(" req-1 ")).as_str(), "req-1");
        let max = "a".repeat(128);
        assert_eq!(request_id(Some(&max)).as_str(), max);
        assert!(request_id(Some(&"a".repeat(129))).starts_with("mm-"));
        assert!(request_id(Some("has space")).starts_with("mm-"));
    }
}
