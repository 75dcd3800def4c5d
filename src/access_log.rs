//! The per-request access log line (text or JSON) and request ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
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
}

/// Writes the line in the configured format.
pub fn write(e: &Entry) {
    let clip = crate::api_error::clip;
    match FORMAT.get().copied().unwrap_or(Format::Text) {
        Format::Text => log::info!(
            "{} {} id={} model={} backend={} status={} duration_ms={} ttfb_ms={} bytes={} tokens_in={} tokens_out={} retries={} outcome={}",
            clip(e.method, 16),
            clip(e.path, 200),
            e.request_id,
            e.model.map(|m| clip(m, 120)).unwrap_or_else(|| "-".into()),
            e.backend.unwrap_or("-"),
            e.status,
            e.duration.as_millis(),
            e.ttfb.map(|t| t.as_millis().to_string()).unwrap_or_else(|| "-".into()),
            e.bytes,
            e.tokens.map(|t| t.0.to_string()).unwrap_or_else(|| "-".into()),
            e.tokens.map(|t| t.1.to_string()).unwrap_or_else(|| "-".into()),
            e.retries,
            e.outcome,
        ),
        Format::Json => {
            let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let line = serde_json::json!({
                "ts": ts,
                "request_id": e.request_id,
                "method": clip(e.method, 16),
                "path": clip(e.path, 200),
                "model": e.model.map(|m| clip(m, 120)),
                "backend": e.backend,
                "status": e.status,
                "duration_ms": e.duration.as_secs_f64() * 1000.0,
                "ttfb_ms": e.ttfb.map(|t| t.as_secs_f64() * 1000.0),
                "bytes": e.bytes,
                "tokens_in": e.tokens.map(|t| t.0),
                "tokens_out": e.tokens.map(|t| t.1),
                "retries": e.retries,
                "outcome": e.outcome,
            });
            println!("{}", line);
        }
    }
}

/// The client's `X-Request-Id` when it is sane, else a new one.
pub fn request_id(client: Option<&str>) -> String {
    if let Some(id) = client.map(str::trim) {
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            return id.to_string();
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
    format!(
        "mm-{:012x}{:04x}{:06x}",
        t >> 8,
        pid & 0xffff,
        n & 0xff_ffff
    )
}
