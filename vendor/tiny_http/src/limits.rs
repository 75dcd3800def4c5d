//! modelmux: process-global limits and socket timeouts (not part of upstream tiny_http 0.12.0).
//!
//! Upstream tiny_http reads request lines and headers without any size or time bound and
//! never sets socket timeouts, so a single client can make the server allocate without limit
//! or hold a connection thread forever (slowloris). These settings bound that. They are
//! process-global (atomics) so that they can be changed without touching the `Server` API;
//! they are read when a connection is accepted (timeouts) or when a request head is read
//! (sizes), so changing them affects new connections / requests only.

use std::convert::TryFrom;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Default for [`header_read_timeout`]: 30 seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`max_header_line`]: 16 KiB.
pub const DEFAULT_MAX_HEADER_LINE: usize = 16 * 1024;

/// Default for [`max_header_bytes`]: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

// Durations are stored as nanoseconds; 0 means "no timeout".
static HEADER_READ_TIMEOUT_NANOS: AtomicU64 = AtomicU64::new(30_000_000_000);
static WRITE_TIMEOUT_NANOS: AtomicU64 = AtomicU64::new(0);
static MAX_HEADER_LINE: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_HEADER_LINE);
static MAX_HEADER_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_HEADER_BYTES);

// The answer to a request dropped without a response: (content type, body); unset: empty.
static UNANSWERED: OnceLock<(String, Vec<u8>)> = OnceLock::new();

/// Sets, once, the 500 body sent for a request the application dropped without answering
/// (a bug or a panic in a handler); upstream sends an empty 500. Later calls are ignored.
pub fn set_unanswered_body(content_type: &str, body: Vec<u8>) {
    let _ = UNANSWERED.set((content_type.to_string(), body));
}

/// The body set by [`set_unanswered_body`], if any.
pub(crate) fn unanswered_body() -> Option<&'static (String, Vec<u8>)> {
    UNANSWERED.get()
}

fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn from_nanos(n: u64) -> Option<Duration> {
    if n == 0 {
        None
    } else {
        Some(Duration::from_nanos(n))
    }
}

/// Sets the header-read timeout (default 30 s).
///
/// It is used in two ways:
/// - as the read timeout (`SO_RCVTIMEO`) of every accepted socket, so it bounds every single
///   read: waiting for the next request on an idle keep-alive connection (the connection is
///   then closed silently), reading the request head (answered with `408`), and reading a
///   request body (the handler's read returns an error);
/// - as the total time allowed for reading a request line and its headers, measured from the
///   first byte of the request line (answered with `408 Request Timeout` and closed).
///
/// `Duration::ZERO` disables both.
pub fn set_header_read_timeout(timeout: Duration) {
    HEADER_READ_TIMEOUT_NANOS.store(to_nanos(timeout), Relaxed);
}

/// Returns the current header-read timeout, `None` if disabled.
pub fn header_read_timeout() -> Option<Duration> {
    from_nanos(HEADER_READ_TIMEOUT_NANOS.load(Relaxed))
}

/// Sets the write timeout (`SO_SNDTIMEO`) of every accepted socket (default `None`: no
/// timeout). `Some(Duration::ZERO)` is treated as `None`.
pub fn set_write_timeout(timeout: Option<Duration>) {
    WRITE_TIMEOUT_NANOS.store(timeout.map(to_nanos).unwrap_or(0), Relaxed);
}

/// Returns the current write timeout, `None` if disabled.
pub fn write_timeout() -> Option<Duration> {
    from_nanos(WRITE_TIMEOUT_NANOS.load(Relaxed))
}

/// Sets the maximum length in bytes of one request line or header line, without its CRLF
/// (default 16 KiB, minimum 1). A longer request line is answered with `414 URI Too Long`,
/// a longer header line with `431 Request Header Fields Too Large`; the connection is closed.
pub fn set_max_header_line(bytes: usize) {
    MAX_HEADER_LINE.store(bytes.max(1), Relaxed);
}

/// Returns the current maximum line length.
pub fn max_header_line() -> usize {
    MAX_HEADER_LINE.load(Relaxed)
}

/// Sets the maximum total size in bytes of a request head: request line, header lines and
/// their CRLFs (default 64 KiB, minimum 1). A bigger head is answered with
/// `431 Request Header Fields Too Large`; the connection is closed.
pub fn set_max_header_bytes(bytes: usize) {
    MAX_HEADER_BYTES.store(bytes.max(1), Relaxed);
}

/// Returns the current maximum request head size.
pub fn max_header_bytes() -> usize {
    MAX_HEADER_BYTES.load(Relaxed)
}
