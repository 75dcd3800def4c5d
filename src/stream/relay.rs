//! Copies a backend response to the client as it arrives: status and headers as they are, the
//! body re-framed (chunked or Content-Length) and flushed after every read so SSE tokens never
//! wait in a buffer.
//!
//! System calls are what a relay costs, so each piece of the body goes out in one write (chunk
//! size line, data and CRLF together), and a response head that is not a stream's goes out with
//! the first piece of its body. An event stream's head is sent at once.

use crate::stream::messages_usage::Tap;
use crate::stream::usage::Usage;
use crate::stream::usage_strip::UsageStrip;
use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The body is read with a buffer of this size at first, doubled up to `READ_BUF_MAX` while
/// reads fill it.
const READ_BUF_MIN: usize = 2 * 1024;
const READ_BUF_MAX: usize = 32 * 1024;
/// The smallest buffer for a body of known length.
const SMALL_BODY: usize = 256;

/// Pieces the keep-alive reader thread may read ahead of the client.
const PIECES_IN_FLIGHT: usize = 4;

/// How often, at most, a chunk's size line is sent on its own to learn whether the client
/// has hung up (see `Sink::piece`).
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How the relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte the backend sent reached the client.
    Complete,
    /// The client went away; the backend connection was dropped to stop generation.
    ClientGone,
    /// The backend failed or went silent mid-body.
    UpstreamFailed(String),
}

/// Numbers for the access log.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Body bytes written to the client.
    pub bytes: u64,
    /// Time from request start to the first body byte to the client.
    pub ttfb: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
    /// The backend's `usage`, if it reported it.
    pub usage: Option<Usage>,
    /// Characters of generated text a stream carried (for an estimate when no usage came).
    pub content_chars: u64,
    /// The client connection must be closed now: the body ends by closing (HTTP/1.0), or it
    /// was cut short and the client must not wait for, or misread, the missing bytes.
    pub close_connection: bool,
}

/// The response head to send.
pub struct Head<'a> {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers to send, hop-by-hop already removed: the backend's copied, modelmux's own
    /// (the request id, `x-ratelimit-*`) borrowed where they are kept.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Body length when the backend declared it.
    pub content_length: Option<u64>,
}

/// What the client can take.
pub struct ClientSide {
    /// The client spoke HTTP/1.0 (no chunked encoding).
    pub http10: bool,
    /// The request was HEAD: headers only.
    pub head_only: bool,
    /// Send `keepalive` when the backend is silent this long.
    pub sse_keepalive: Option<Duration>,
    /// modelmux asked for the stream's usage chunk; the client did not: hide it.
    pub strip_usage: bool,
    /// The answer is an Anthropic Messages one: its counts are read the Messages API's way.
    pub messages_usage: bool,
    /// The usage is read from the body as it passes; off when the caller counts it itself
    /// (a translated stream, whose translator has the backend's counts).
    pub read_usage: bool,
    /// What fills the silence: `KEEPALIVE_COMMENT`, or an event the client's protocol has.
    pub keepalive: &'static [u8],
}

/// The SSE comment sent while a backend is silent.
pub const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// Writes the head, then streams `body` through; returns what happened.
pub fn relay(
    started: Instant,
    out: &mut dyn Write,
    mut head: Head<'_>,
    body: Box<dyn Read + Send>,
    client: &ClientSide,
) -> Stats {
    let is_sse = has_content_type(&head, "text/event-stream");
    if is_sse {
        // Without these an nginx or ingress in front buffers the tokens.
        add_if_missing(&mut head.headers, "Cache-Control", "no-cache");
        add_if_missing(&mut head.headers, "X-Accel-Buffering", "no");
    }
    let framing = framing_of(&head, client, is_sse);
    let text = head_text(&head, client, framing);
    let mut sink = Sink {
        out,
        framing,
        head: Vec::new(),
        buf: Vec::new(),
        last_probe: None,
        started,
    };
    let mut stats = Stats {
        bytes: 0,
        ttfb: None,
        outcome: Outcome::Complete,
        usage: None,
        content_chars: 0,
        close_connection: framing == Framing::UntilClose,
    };
    let encoding = content_encoding(&head);
    // Usage is read from plain or gzip bodies; other codings (br, zstd) are not counted.
    let (mut tap, mut strip) = taps(&head, client, is_sse, encoding.as_deref());
    if is_sse || framing == Framing::None {
        // A stream's client learns at once that its stream started.
        if sink
            .out
            .write_all(text.as_bytes())
            .and_then(|_| sink.out.flush())
            .is_err()
        {
            stats.outcome = Outcome::ClientGone;
            stats.close_connection = true;
            return stats;
        }
        if framing == Framing::None {
            return stats;
        }
    } else {
        sink.head = text.into_bytes();
    }
    // A comment inserted into a compressed body would corrupt it for the client's decoder.
    let keepalive = if is_sse && encoding.is_none() {
        client.sse_keepalive
    } else {
        None
    };
    let mut pass = Pass {
        tap: &mut tap,
        strip: &mut strip,
        stripped: Vec::new(),
    };
    let result = match keepalive {
        Some(every) => pump_with_keepalive(
            &mut sink,
            body,
            (every, client.keepalive),
            &mut stats,
            &mut pass,
        ),
        None => {
            // A body of known length is read in one go when it fits; a small one (most
            // non-streamed answers) with a buffer of its size: zeroing a whole `READ_BUF_MIN`
            // for it was about 3% of a request's instructions.
            let fixed = match framing {
                Framing::Length => Some(
                    (head.content_length.unwrap_or(0) as usize).clamp(SMALL_BODY, READ_BUF_MAX),
                ),
                _ => None,
            };
            pump(&mut sink, body, fixed, &mut stats, &mut pass)
        }
    };
    (stats.usage, stats.content_chars) = tap.map_or((None, 0), Tap::finish);
    stats.outcome = outcome(
        result,
        &mut sink,
        &mut stats,
        is_sse && framing == Framing::Chunked,
    );
    stats
}

/// True when the head's `Content-Type` is `mime` (parameters aside).
fn has_content_type(head: &Head, mime: &str) -> bool {
    head.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("content-type")
            && v.trim_start()
                .get(..mime.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(mime))
    })
}

/// How the body is delimited for this client.
fn framing_of(head: &Head, client: &ClientSide, is_sse: bool) -> Framing {
    let no_body = client.head_only
        || head.status == 204
        || head.status == 304
        || (100..200).contains(&head.status);
    if no_body {
        Framing::None
    } else if head.content_length.is_some() && !is_sse {
        Framing::Length
    } else if client.http10 {
        Framing::UntilClose
    } else {
        Framing::Chunked
    }
}

/// The status line and headers, with the framing header, up to the blank line.
fn head_text(head: &Head, client: &ClientSide, framing: Framing) -> String {
    // Digits written by hand: `write!` here was about 1% of a proxied request's instructions.
    fn decimal(text: &mut String, v: u64) {
        let mut digits = [0u8; 20];
        for &d in crate::decimal::bytes(v, &mut digits) {
            text.push(char::from(d));
        }
    }
    // Sized once for the whole head: growing it line by line would reallocate several times.
    let size: usize = head
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum::<usize>()
        + head.reason.len()
        + 64;
    let mut text = String::with_capacity(size);
    text.push_str(if client.http10 {
        "HTTP/1.0 "
    } else {
        "HTTP/1.1 "
    });
    decimal(&mut text, u64::from(head.status));
    text.push(' ');
    text.push_str(&head.reason);
    text.push_str("\r\n");
    for (n, v) in &head.headers {
        text.push_str(n);
        text.push_str(": ");
        text.push_str(v);
        text.push_str("\r\n");
    }
    match framing {
        Framing::Length => {
            text.push_str("Content-Length: ");
            decimal(&mut text, head.content_length.unwrap_or(0));
            text.push_str("\r\n");
        }
        Framing::Chunked => text.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose => text.push_str("Connection: close\r\n"),
        Framing::None if client.head_only => {
            if let Some(len) = head.content_length {
                text.push_str("Content-Length: ");
                decimal(&mut text, len);
                text.push_str("\r\n");
            }
        }
        // 1xx, 204 and 304 carry no body and no length (RFC 9110 8.6).
        Framing::None if head.status < 200 || head.status == 204 || head.status == 304 => {}
        Framing::None => text.push_str("Content-Length: 0\r\n"),
    }
    text.push_str("\r\n");
    text
}

/// The body's `Content-Encoding`, lowercased; `None` for none or `identity`.
fn content_encoding(head: &Head) -> Option<String> {
    head.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-encoding"))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .filter(|v| v != "identity")
}

/// The usage reader (plain or gzip JSON and SSE bodies) and the usage stripper (plain SSE
/// when modelmux asked for the usage chunk).
fn taps(
    head: &Head,
    client: &ClientSide,
    is_sse: bool,
    encoding: Option<&str>,
) -> (Option<Tap>, Option<UsageStrip>) {
    let is_json = has_content_type(head, "application/json");
    let gzip = matches!(encoding, Some("gzip" | "x-gzip"));
    let tap = (client.read_usage && (is_sse || is_json) && (encoding.is_none() || gzip))
        .then(|| Tap::new(client.messages_usage, is_sse, gzip));
    let strip = (is_sse && encoding.is_none() && client.strip_usage).then(UsageStrip::default);
    (tap, strip)
}

/// How the relay ended; a failed upstream ends a chunked SSE stream with an error event,
/// anything else is cut short with the connection closed.
fn outcome(
    result: Result<(), Failure>,
    sink: &mut Sink,
    stats: &mut Stats,
    sse_chunked: bool,
) -> Outcome {
    match result {
        Ok(()) => Outcome::Complete,
        Err(Failure::Client) => {
            stats.close_connection = true;
            Outcome::ClientGone
        }
        Err(Failure::Upstream(msg)) => {
            if sse_chunked {
                // End the stream honestly with the error event the OpenAI API uses, so the
                // client can tell a cut-off answer from a finished one.
                let event = format!(
                    "data: {}\n\n",
                    String::from_utf8_lossy(
                        &crate::http::api_error::ApiError::bad_gateway(msg.clone()).body()
                    )
                );
                let _ = sink.piece(event.as_bytes()).and_then(|_| sink.end());
            } else {
                // The head still goes out (if no body byte did), as it always did.
                let _ = sink.flush_head();
                // Any other body stops short of its length (or of its last chunk) and the
                // connection closes: the client sees a truncated body, never a complete-looking
                // one, and never reads the next response as the rest of this one.
                stats.close_connection = true;
            }
            Outcome::UpstreamFailed(msg)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
    UntilClose,
}

enum Failure {
    Client,
    Upstream(String),
}

fn add_if_missing(
    headers: &mut Vec<(Cow<'_, str>, Cow<'_, str>)>,
    name: &'static str,
    value: &'static str,
) {
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
        headers.push((Cow::Borrowed(name), Cow::Borrowed(value)));
    }
}

fn upstream_failure(e: &io::Error) -> Failure {
    if crate::backend::upstream::is_timeout(e) {
        Failure::Upstream("the backend went silent longer than the idle timeout".to_string())
    } else {
        Failure::Upstream(format!(
            "the backend connection failed mid-response ({:?})",
            e.kind()
        ))
    }
}

/// What every piece of the body passes through on its way to the client.
struct Pass<'a> {
    tap: &'a mut Option<Tap>,
    strip: &'a mut Option<UsageStrip>,
    /// The stripped bytes of the last piece (reused: no allocation per piece).
    stripped: Vec<u8>,
}

impl Pass<'_> {
    /// Feeds the tap with the backend's bytes; returns the bytes for the client.
    fn through<'d>(&'d mut self, data: &'d [u8]) -> &'d [u8] {
        if let Some(t) = self.tap.as_mut() {
            t.feed(data);
        }
        crate::telemetry::response_bytes(data);
        match self.strip.as_mut() {
            Some(s) => {
                self.stripped.clear();
                if s.feed_unchanged(data, &mut self.stripped) {
                    data
                } else {
                    &self.stripped
                }
            }
            None => data,
        }
    }

    /// What an unfinished last event held back, as it came.
    fn rest(&mut self) -> Vec<u8> {
        self.strip
            .take()
            .map(UsageStrip::finish)
            .unwrap_or_default()
    }
}

fn pump(
    sink: &mut Sink,
    mut body: Box<dyn Read + Send>,
    fixed: Option<usize>,
    stats: &mut Stats,
    pass: &mut Pass,
) -> Result<(), Failure> {
    // A body of known length: one buffer that holds it (or `READ_BUF_MAX` of it), never
    // grown. Else small at first (a stream's events are small, and a thousand open streams
    // each hold one), doubled while reads fill it.
    let grow = fixed.is_none();
    let mut buf = vec![0u8; fixed.unwrap_or(READ_BUF_MIN)];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(upstream_failure(&e)),
        };
        let piece = pass.through(&buf[..n]);
        write_piece(sink, piece, stats)?;
        // More than half full: more was waiting. (The chunked decoder fills a buffer with the
        // whole chunks that fit, so a stream's reads rarely fill it exactly: growing only then
        // kept a backlog of small events at one write per 2 KiB.)
        if grow && n * 2 > buf.len() && buf.len() < READ_BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
    write_piece(sink, &pass.rest(), stats)?;
    sink.end().map_err(|_| Failure::Client)
}

/// Like `pump`, but a reader thread feeds a channel so silence can be filled with SSE comments.
fn pump_with_keepalive(
    sink: &mut Sink,
    mut body: Box<dyn Read + Send>,
    (every, keepalive): (Duration, &[u8]),
    stats: &mut Stats,
    pass: &mut Pass,
) -> Result<(), Failure> {
    // Bounded so a slow client pushes back on the backend instead of growing memory.
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PIECES_IN_FLIGHT);
    // Written pieces go back to the reader to be filled again: no allocation per piece. Room
    // for every piece there can be (queued, being written, being read).
    let (used_tx, used_rx) = mpsc::sync_channel::<Vec<u8>>(PIECES_IN_FLIGHT + 2);
    let reader = std::thread::Builder::new()
        .name("sse-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let msg = match body.read(&mut buf) {
                    Ok(n) => {
                        let mut piece = used_rx.try_recv().unwrap_or_default();
                        piece.clear();
                        piece.extend_from_slice(&buf[..n]);
                        Ok(piece)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let done = !matches!(msg, Ok(ref v) if !v.is_empty());
                // A send error means the writer side gave up: dropping `body` closes the backend.
                if tx.send(msg).is_err() || done {
                    return;
                }
            }
        })
        .map_err(|e| Failure::Upstream(format!("cannot start stream reader: {}", e)))?;
    let mut boundary = EventBoundary::default();
    let result = loop {
        match rx.recv_timeout(every) {
            Ok(Ok(data)) if data.is_empty() => {
                break write_piece(sink, &pass.rest(), stats)
                    .and_then(|_| sink.end().map_err(|_| Failure::Client))
            }
            Ok(Ok(data)) => {
                let piece = pass.through(&data);
                boundary.feed(piece);
                if let Err(f) = write_piece(sink, piece, stats) {
                    break Err(f);
                }
                // Full only if the reader is gone: then the buffer is just dropped.
                let _ = used_tx.try_send(data);
            }
            Ok(Err(e)) => break Err(upstream_failure(&e)),
            // Only between events: inside one, the comment would become part of its data.
            Err(mpsc::RecvTimeoutError::Timeout) if boundary.at_boundary() => {
                if let Err(f) = write_piece(sink, keepalive, stats) {
                    break Err(f);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Failure::Upstream("stream reader stopped".to_string()))
            }
        }
    };
    drop(rx);
    // The reader thread ends at its next read; for a client hang-up that read returns soon
    // because the backend keeps sending, and the dropped body then closes the connection.
    let _ = reader;
    result
}

/// Tracks whether the bytes relayed so far end between two SSE events (a blank line, with any
/// of the three line endings the SSE format allows) or inside one.
#[derive(Debug, Default)]
struct EventBoundary {
    /// The last (up to) four bytes relayed.
    tail: Vec<u8>,
    /// Some bytes were relayed.
    started: bool,
}

impl EventBoundary {
    fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.started = true;
        self.tail
            .extend_from_slice(&data[data.len().saturating_sub(4)..]);
        let excess = self.tail.len().saturating_sub(4);
        self.tail.drain(..excess);
    }

    fn at_boundary(&self) -> bool {
        !self.started
            || self.tail.ends_with(b"\n\n")
            || self.tail.ends_with(b"\r\r")
            || self.tail.ends_with(b"\r\n\r\n")
    }
}

fn write_piece(sink: &mut Sink, data: &[u8], stats: &mut Stats) -> Result<(), Failure> {
    // An empty chunk would end a chunked body: nothing to send is nothing to write.
    if data.is_empty() {
        return Ok(());
    }
    if stats.ttfb.is_none() {
        stats.ttfb = Some(sink.started.elapsed());
    }
    sink.piece(data).map_err(|_| Failure::Client)?;
    stats.bytes += data.len() as u64;
    Ok(())
}

/// The client side of a relay: framing, the head when it waits for the body, a reused buffer.
struct Sink<'a> {
    out: &'a mut dyn Write,
    framing: Framing,
    /// The response head, while it waits to go out with the first piece of the body.
    head: Vec<u8>,
    /// Where a piece is assembled with its framing, to go out in one write.
    buf: Vec<u8>,
    /// When a size line was last sent on its own (see `piece`).
    last_probe: Option<Instant>,
    started: Instant,
}

impl Sink<'_> {
    /// Sends one piece of the body (with the head, if it still waits), flushed.
    ///
    /// In a chunked body the size line is now and then (at most every `PROBE_EVERY`, and for
    /// the first chunk) flushed on its own: when the client has hung up, that first write
    /// draws its reset and the data write fails at once, so the backend is released on this
    /// chunk rather than a later one. Other chunks go out in a single write.
    fn piece(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.clear();
        self.buf.append(&mut self.head);
        if self.framing == Framing::Chunked {
            push_hex(&mut self.buf, data.len());
            self.buf.extend_from_slice(b"\r\n");
            if self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
                self.last_probe = Some(Instant::now());
                self.out.write_all(&self.buf)?;
                self.out.flush()?;
                self.buf.clear();
            }
            self.buf.extend_from_slice(data);
            self.buf.extend_from_slice(b"\r\n");
        } else if self.buf.is_empty() {
            self.out.write_all(data)?;
            return self.out.flush();
        } else {
            self.buf.extend_from_slice(data);
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()
    }

    /// Sends the head if it is still waiting (a body that failed before its first byte).
    fn flush_head(&mut self) -> io::Result<()> {
        if self.head.is_empty() {
            return Ok(());
        }
        let head = std::mem::take(&mut self.head);
        self.out.write_all(&head)?;
        self.out.flush()
    }

    /// Ends the body: the last chunk of a chunked one, the waiting head of an empty one.
    fn end(&mut self) -> io::Result<()> {
        if self.framing == Framing::Chunked {
            self.head.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush_head()
    }
}

/// `n` in lowercase hex, as a chunk size line has it.
fn push_hex(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(crate::decimal::hex(n as u64, &mut [0u8; 16]));
}

#[cfg(test)]
mod tests {
    use super::{push_hex, EventBoundary};

    #[test]
    fn hex_sizes() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 0xabcdef, usize::MAX] {
            let mut buf = Vec::new();
            push_hex(&mut buf, n);
            assert_eq!(buf, format!("{:x}", n).into_bytes());
        }
    }

    #[test]
    fn event_boundaries() {
        let cases: [(&[&[u8]], bool); 7] = [
            (&[], true),
            (&[b"data: {\"x\":"], false),
            (&[b"data: 1\n\n"], true),
            (&[b"data: 1\n", b"\n"], true),
            (&[b"data: 1\r\n\r", b"\n"], true),
            (&[b"data: 1\n\n", b"data: 2\n"], false),
            (&[b"data: 1\r\r"], true),
        ];
        for (pieces, want) in cases {
            let mut b = EventBoundary::default();
            for p in pieces {
                b.feed(p);
            }
            assert_eq!(b.at_boundary(), want, "{:?}", pieces);
        }
    }
}
