//! A mock OpenAI-compatible backend for the tests and the demo backend (`make run`).
//!
//! Only `std` and `serde_json` are used, so this file can be included both from
//! integration tests (`tests/support/mod.rs`) and from `demo/demo_backend.rs`
//! (via `#[path = "../tests/support/mock_backend.rs"]`).
//!
//! It is a raw TCP server with one thread per connection speaking HTTP/1.1 with
//! keep-alive. Request bodies may be sent with `Content-Length` or chunked
//! transfer-encoding. Every request is recorded (see [`MockBackend::requests`]),
//! and streaming responses record lifecycle [`Event`]s (see [`MockBackend::events`]).
//!
//! All `created` timestamps are the fixed value [`CREATED`] so that tests can
//! compare exact bytes (see [`echo_stream_bytes`]).
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The fixed `created` timestamp used in every chat completion (chunk) the mock sends.
pub const CREATED: u64 = 1_700_000_000;

/// The id used in every chat completion (chunk) the mock sends.
pub const COMPLETION_ID: &str = "chatcmpl-mock";

/// One request received by the mock.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target, including the query string.
    pub path: String,
    /// Header names are lowercased; values are trimmed. In the order received.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked if it was sent with chunked transfer-encoding).
    pub body: Vec<u8>,
    /// When the request (head and body) had been fully read.
    pub received_at: Instant,
}

impl Recorded {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is valid JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Stream lifecycle events, recorded in order across all connections.
#[derive(Clone, Debug)]
pub enum Event {
    /// The 200 response head of an SSE stream was written.
    StreamStarted { at: Instant },
    /// SSE event number `index` (0-based, `[DONE]` included) was written as an HTTP chunk.
    ChunkSent { index: usize, at: Instant },
    /// The terminating zero-length chunk was written.
    StreamFinished { at: Instant },
    /// A write failed or the peer was seen closed: the proxy closed the upstream connection.
    ClientClosed { after_chunks: usize, at: Instant },
}

/// How the mock answers. Can be swapped at runtime with [`MockBackend::set_behavior`].
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Pause between SSE chunks (default 0).
    pub chunk_delay: Duration,
    /// Pause before sending response headers, for every response (default 0).
    pub first_byte_delay: Duration,
    /// If set: answer every request with this status and this JSON body
    /// (`Content-Type: application/json`). Takes precedence over everything.
    pub status: Option<(u16, String)>,
    /// If set, stream exactly `data: {payload}\n\n` per entry, then `data: [DONE]\n\n`,
    /// instead of the echo words.
    pub chunks: Option<Vec<String>>,
    /// When the request has `stream_options.include_usage=true`, send a usage-only
    /// chunk with `"choices": []` before `[DONE]` (default false).
    pub include_usage_chunk: bool,
    /// After sending 200 + SSE headers, wait this long before the first chunk (default 0).
    pub silent_before_stream: Duration,
    /// Added to every response.
    pub extra_headers: Vec<(String, String)>,
    /// The model ids `GET /v1/models` lists (default `["mock"]`).
    pub models: Vec<String>,
    /// If set, `GET /v1/models` answers this status with an error body (a failing health
    /// probe) while every other path keeps working.
    pub models_status: Option<u16>,
    /// If set, a model of an inference server's prefix (KV) cache: a request whose
    /// `messages`, without its last two (the previous answer and the new question), are a
    /// prompt this backend served before waits `hit` before its first byte, any other request
    /// `miss` (the whole history prefilled again). The answer says which in
    /// `X-Mock-Prefix-Cache: hit | miss`; the wait is added to `first_byte_delay`.
    pub prefix_cache: Option<PrefixCache>,
}

/// First-byte waits of the prefix cache model (see [`Behavior::prefix_cache`]).
#[derive(Clone, Copy, Debug)]
pub struct PrefixCache {
    pub hit: Duration,
    pub miss: Duration,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
            status: None,
            chunks: None,
            include_usage_chunk: false,
            silent_before_stream: Duration::ZERO,
            extra_headers: Vec::new(),
            models: vec!["mock".to_string()],
            models_status: None,
            prefix_cache: None,
        }
    }
}

struct Inner {
    port: u16,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<Recorded>>,
    events: Mutex<Vec<Event>>,
    stopped: AtomicBool,
    next_conn_id: AtomicU64,
    /// Clones of the live connections, so that `stop` can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// Hashes of the prompts (`messages`) served, for the prefix cache model.
    prompts: Mutex<HashSet<u64>>,
}

impl Inner {
    fn event(&self, e: Event) {
        lock(&self.events).push(e);
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock backend. Stops accepting (and closes its open connections) on
/// [`MockBackend::stop`] or when dropped.
pub struct MockBackend {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept_thread: Option<JoinHandle<()>>,
}

impl MockBackend {
    /// Starts on 127.0.0.1 with an ephemeral port. Panics if binding fails.
    pub fn start(behavior: Behavior) -> MockBackend {
        Self::start_on("127.0.0.1:0", behavior).expect("mock backend: bind 127.0.0.1:0")
    }

    /// Starts on the given address (e.g. `"127.0.0.1:3334"`).
    pub fn start_on(addr: &str, behavior: Behavior) -> io::Result<MockBackend> {
        let listener = TcpListener::bind(addr)?;
        // A deeper accept queue than std's 128, for tests that open a thousand streams at once.
        {
            use std::os::fd::AsRawFd;
            unsafe {
                libc::listen(listener.as_raw_fd(), 4096);
            }
        }
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            port: addr.port(),
            behavior: Mutex::new(behavior),
            requests: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            prompts: Mutex::new(HashSet::new()),
        });
        let accept_inner = Arc::clone(&inner);
        let accept_thread = thread::Builder::new()
            .name(format!("mock-backend-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_inner))?;
        Ok(MockBackend {
            addr,
            inner,
            accept_thread: Some(accept_thread),
        })
    }

    /// `"http://127.0.0.1:PORT"` (an unspecified bind address is reported as loopback).
    pub fn url(&self) -> String {
        format!("http://{}", connectable(self.addr))
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.inner.requests).clone()
    }

    /// Replaces the behaviour; applies to requests whose body is read afterwards.
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.inner.behavior) = b;
    }

    /// Stream lifecycle events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner.events).clone()
    }

    /// Stops accepting connections and shuts down open ones (same as dropping).
    pub fn stop(self) {
        drop(self)
    }

    fn shutdown(&mut self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() with a throwaway connection.
        let woke = TcpStream::connect_timeout(&connectable(self.addr), Duration::from_secs(1));
        if let Some(handle) = self.accept_thread.take() {
            if woke.is_ok() {
                let _ = handle.join();
            }
        }
        for (_, conn) in lock(&self.inner.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let id = inner.next_conn_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&inner.conns).insert(id, clone);
        }
        let conn_inner = Arc::clone(&inner);
        let spawned = thread::Builder::new()
            .name(format!("mock-backend-{}-conn-{}", inner.port, id))
            .spawn(move || {
                let _ = serve_connection(stream, &conn_inner);
                if let Some(s) = lock(&conn_inner.conns).remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            });
        if spawned.is_err() {
            lock(&inner.conns).remove(&id);
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 server side
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_close(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return true;
        }
        self.version.eq_ignore_ascii_case("HTTP/1.0")
            && !self.header_has_token("connection", "keep-alive")
    }
}

fn bad_request(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one CRLF- (or LF-) terminated line without the terminator. `None` on EOF.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(64 * 1024).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(bad_request("line too long or truncated"));
    }
    while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads one request. `Ok(None)` when the client closed the connection cleanly
/// between requests.
fn read_request<R: BufRead>(r: &mut R, w: &mut TcpStream) -> io::Result<Option<Request>> {
    let request_line = loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) if l.trim().is_empty() => continue, // tolerate stray CRLFs
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split_whitespace();
    let (method, path, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) => (m.to_string(), p.to_string(), v.to_string()),
        _ => return Err(bad_request("malformed request line")),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad_request("EOF in headers"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad_request("malformed header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = Request {
        method,
        path,
        version,
        headers,
        body: Vec::new(),
    };
    if req.header_has_token("expect", "100-continue") {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if req.header_has_token("transfer-encoding", "chunked") {
        req.body = read_chunked_body(r)?;
    } else if let Some(len) = req.header("content-length") {
        let len: u64 = len
            .trim()
            .parse()
            .map_err(|_| bad_request("bad content-length"))?;
        let mut body = Vec::new();
        r.take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            return Err(bad_request("EOF in body"));
        }
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked_body<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad_request("EOF in chunk size"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_str, 16).map_err(|_| bad_request("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let t = read_line(r)?.ok_or_else(|| bad_request("EOF in trailers"))?;
                if t.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r)?.ok_or_else(|| bad_request("EOF after chunk"))?;
        if !crlf.is_empty() {
            return Err(bad_request("missing CRLF after chunk"));
        }
    }
}

enum Next {
    KeepAlive,
    Close,
}

fn serve_connection(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let mut writer = stream;
    let mut reader = BufReader::new(writer.try_clone()?);
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let req = match read_request(&mut reader, &mut writer) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = json!({"error": {"message": e.to_string(), "type": "mock_bad_request"}});
                let _ = write_response(
                    &mut writer,
                    inner,
                    &Vec::new(),
                    false,
                    400,
                    "application/json",
                    body.to_string().as_bytes(),
                    true,
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        lock(&inner.requests).push(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            received_at: Instant::now(),
        });
        let mut behavior = lock(&inner.behavior).clone();
        if let Some(cache) = behavior.prefix_cache {
            let hit = prefix_cache_hit(inner, &req.body);
            behavior.first_byte_delay += if hit { cache.hit } else { cache.miss };
            let outcome = if hit { "hit" } else { "miss" };
            behavior
                .extra_headers
                .push(("X-Mock-Prefix-Cache".to_string(), outcome.to_string()));
        }
        match respond(&mut writer, inner, &behavior, &req)? {
            Next::KeepAlive if !req.wants_close() => continue,
            _ => {
                let _ = writer.flush();
                let _ = writer.shutdown(Shutdown::Write);
                return Ok(());
            }
        }
    }
}

/// Whether the prompt of this request's previous turn (its `messages` without the last two) was
/// served here; remembers this prompt for the next turn.
fn prefix_cache_hit(inner: &Inner, body: &[u8]) -> bool {
    let messages = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("messages").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let hash = |prompt: &[Value]| {
        let mut h = DefaultHasher::new();
        Value::Array(prompt.to_vec()).to_string().hash(&mut h);
        h.finish()
    };
    let mut prompts = lock(&inner.prompts);
    let hit = messages.len() >= 3 && prompts.contains(&hash(&messages[..messages.len() - 2]));
    // A long-running demo backend forgets, as a full cache evicts.
    if prompts.len() >= 100_000 {
        prompts.clear();
    }
    prompts.insert(hash(&messages));
    hit
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

enum Framing {
    Length(usize),
    Chunked,
    NoBody,
}

fn response_head(
    inner: &Inner,
    extra: &[(String, String)],
    status: u16,
    content_type: &str,
    framing: Framing,
    close: bool,
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    head.push_str(&format!("Content-Type: {}\r\n", content_type));
    match framing {
        Framing::Length(n) => head.push_str(&format!("Content-Length: {}\r\n", n)),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::NoBody => {}
    }
    head.push_str(if close {
        "Connection: close\r\n"
    } else {
        "Connection: keep-alive\r\n"
    });
    head.push_str(&format!("X-Mock-Backend: {}\r\n", inner.port));
    for (k, v) in extra {
        head.push_str(&format!("{}: {}\r\n", k, v));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[allow(clippy::too_many_arguments)]
fn write_response(
    w: &mut TcpStream,
    inner: &Inner,
    extra: &[(String, String)],
    head_only: bool,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if no_body {
        Framing::NoBody
    } else {
        Framing::Length(body.len())
    };
    let mut out = response_head(inner, extra, status, content_type, framing, close);
    if !no_body && !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

fn respond(w: &mut TcpStream, inner: &Inner, b: &Behavior, req: &Request) -> io::Result<Next> {
    if !b.first_byte_delay.is_zero() {
        thread::sleep(b.first_byte_delay);
    }
    let close = req.wants_close();
    let head_only = req.method.eq_ignore_ascii_case("HEAD");
    let extra = &b.extra_headers;
    let send_json = |w: &mut TcpStream, status: u16, v: &Value| -> io::Result<Next> {
        let body = serde_json::to_vec(v).expect("serialize json");
        write_response(
            w,
            inner,
            extra,
            head_only,
            status,
            "application/json",
            &body,
            close,
        )?;
        Ok(Next::KeepAlive)
    };

    if let Some((status, body)) = &b.status {
        write_response(
            w,
            inner,
            extra,
            head_only,
            *status,
            "application/json",
            body.as_bytes(),
            close,
        )?;
        return Ok(Next::KeepAlive);
    }

    let path = path_only(&req.path);
    let is_get = req.method.eq_ignore_ascii_case("GET") || head_only;
    let is_post = req.method.eq_ignore_ascii_case("POST");

    if is_get && (path == "/models" || path.ends_with("/models")) {
        if let Some(status) = b.models_status {
            let err = json!({"error": {"message": "mock models failure", "type": "mock_error"}});
            return send_json(w, status, &err);
        }
        return send_json(w, 200, &models_json(&b.models));
    }

    if let Some(reply) = responses_api(req, path) {
        return match reply {
            ResponsesReply::Json(status, v) => send_json(w, status, &v),
            ResponsesReply::Stream(events) => stream_sse(w, inner, b, close, &events),
        };
    }

    if is_post && path.ends_with("/chat/completions") {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                let err = json!({"error": {
                    "message": format!("invalid JSON body: {}", e),
                    "type": "invalid_request_error",
                }});
                return send_json(w, 400, &err);
            }
        };
        let model = body.get("model").cloned().unwrap_or(Value::Null);
        let content = echo_content(&body);
        let prompt_tokens = prompt_word_count(&body);
        let completion_tokens = word_count(&content);
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        if !stream {
            let reply = chat_completion_json(&model, &content, prompt_tokens, completion_tokens);
            return send_json(w, 200, &reply);
        }
        let include_usage = b.include_usage_chunk
            && body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
        let events: Vec<String> = match &b.chunks {
            Some(chunks) => chunks
                .iter()
                .map(|c| format!("data: {}\n\n", c))
                .chain(std::iter::once("data: [DONE]\n\n".to_string()))
                .collect(),
            None => echo_stream_events(
                &model,
                &content,
                include_usage.then_some((prompt_tokens, completion_tokens)),
            ),
        };
        return stream_sse(w, inner, b, close, &events);
    }

    if is_post && path.ends_with("/embeddings") {
        let model = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|v| v.get("model").cloned())
            .unwrap_or(Value::Null);
        let reply = json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": model,
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        });
        return send_json(w, 200, &reply);
    }

    if is_post && path.ends_with("/audio/transcriptions") {
        let model = req
            .header("content-type")
            .and_then(multipart_boundary)
            .and_then(|boundary| multipart_field(&req.body, &boundary, "model"))
            .map(Value::String)
            .unwrap_or(Value::Null);
        return send_json(
            w,
            200,
            &json!({"text": "mock transcription", "model": model}),
        );
    }

    send_json(w, 200, &json!({"path": req.path, "method": req.method}))
}

/// Non-blocking check whether the peer has closed the connection.
fn peer_closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 1];
    let closed = match s.peek(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
        Err(_) => true,
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// Sleeps for `d`, polling for a peer hang-up. Returns true if the peer closed.
fn sleep_watching(s: &TcpStream, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if peer_closed(s) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
}

fn write_chunk(w: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut buf = format!("{:x}\r\n", data.len()).into_bytes();
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
    w.write_all(&buf)?;
    w.flush()
}

fn stream_sse(
    w: &mut TcpStream,
    inner: &Inner,
    b: &Behavior,
    close: bool,
    events: &[String],
) -> io::Result<Next> {
    let hung_up = |after_chunks: usize| {
        inner.event(Event::ClientClosed {
            after_chunks,
            at: Instant::now(),
        });
        Ok(Next::Close)
    };
    if peer_closed(w) {
        return hung_up(0);
    }
    let head = response_head(
        inner,
        &b.extra_headers,
        200,
        "text/event-stream",
        Framing::Chunked,
        close,
    );
    if w.write_all(&head).and_then(|_| w.flush()).is_err() {
        return hung_up(0);
    }
    inner.event(Event::StreamStarted { at: Instant::now() });
    if !b.silent_before_stream.is_zero() && sleep_watching(w, b.silent_before_stream) {
        return hung_up(0);
    }
    for (index, ev) in events.iter().enumerate() {
        if index > 0 && !b.chunk_delay.is_zero() && sleep_watching(w, b.chunk_delay) {
            return hung_up(index);
        }
        if peer_closed(w) || write_chunk(w, ev.as_bytes()).is_err() {
            return hung_up(index);
        }
        inner.event(Event::ChunkSent {
            index,
            at: Instant::now(),
        });
    }
    if w.write_all(b"0\r\n\r\n").and_then(|_| w.flush()).is_err() {
        return hung_up(events.len());
    }
    inner.event(Event::StreamFinished { at: Instant::now() });
    Ok(Next::KeepAlive)
}

// ---------------------------------------------------------------------------
// The echo model
// ---------------------------------------------------------------------------

fn models_json(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// Text of a message content: a string, or the `text` parts of an array joined with spaces.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn messages(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The content the echo model answers with: the last user message's text.
fn echo_content(body: &Value) -> String {
    messages(body)
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default()
}

fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn prompt_word_count(body: &Value) -> u64 {
    messages(body)
        .iter()
        .map(|m| word_count(&content_text(m.get("content"))))
        .sum()
}

fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn chat_completion_json(model: &Value, content: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": usage_json(prompt, completion),
    })
}

fn chunk_json(model: &Value, delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

fn sse_event(v: &Value) -> String {
    format!("data: {}\n\n", v)
}

/// The SSE events (each one HTTP chunk) the echo model streams.
/// `usage` = Some((prompt_tokens, completion_tokens)) adds the usage-only chunk.
fn echo_stream_events(model: &Value, content: &str, usage: Option<(u64, u64)>) -> Vec<String> {
    let words: Vec<&str> = content.split_whitespace().collect();
    let mut events = Vec::with_capacity(words.len() + 3);
    if words.is_empty() {
        let delta = json!({"role": "assistant", "content": ""});
        events.push(sse_event(&chunk_json(model, delta, Value::Null)));
    }
    for (i, word) in words.iter().enumerate() {
        let text = if i + 1 < words.len() {
            format!("{} ", word)
        } else {
            word.to_string()
        };
        let delta = if i == 0 {
            json!({"role": "assistant", "content": text})
        } else {
            json!({"content": text})
        };
        events.push(sse_event(&chunk_json(model, delta, Value::Null)));
    }
    events.push(sse_event(&chunk_json(model, json!({}), json!("stop"))));
    if let Some((prompt, completion)) = usage {
        let v = json!({
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage_json(prompt, completion),
        });
        events.push(sse_event(&v));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

// ---------------------------------------------------------------------------
// The Responses API (echo model)
// ---------------------------------------------------------------------------

/// The id of every response the mock creates.
pub const RESPONSE_ID: &str = "resp_mock";
/// The id of the output message of every response the mock creates.
pub const RESPONSE_MESSAGE_ID: &str = "msg_mock";

enum ResponsesReply {
    Json(u16, Value),
    Stream(Vec<String>),
}

/// `POST /responses`, `GET`/`DELETE /responses/{id}` and `GET /responses/{id}/input_items`.
fn responses_api(req: &Request, path: &str) -> Option<ResponsesReply> {
    let rest = &path[path.find("/responses")? + "/responses".len()..];
    let method = req.method.to_ascii_uppercase();
    if rest.is_empty() && method == "POST" {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                let err = json!({"error": {"message": format!("invalid JSON body: {}", e), "type": "invalid_request_error"}});
                return Some(ResponsesReply::Json(400, err));
            }
        };
        let model = body.get("model").cloned().unwrap_or(Value::Null);
        let text = responses_input_text(&body);
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            let events = responses_stream_events(&model, &text);
            return Some(ResponsesReply::Stream(events));
        }
        return Some(ResponsesReply::Json(
            200,
            response_json(&model, &text, true),
        ));
    }
    let rest = rest.strip_prefix('/')?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    // Which model name the request carried: proves that modelmux rewrote it for the backend.
    let named = req
        .header("x-model-id")
        .map(str::to_string)
        .or_else(|| query_model(&req.path));
    let named = named.map(Value::String).unwrap_or(Value::Null);
    let v = match (method.as_str(), tail) {
        ("GET", "") => {
            let mut v = response_json(&named, "retrieved", true);
            v["id"] = Value::String(id.to_string());
            v
        }
        ("DELETE", "") => json!({"id": id, "object": "response.deleted", "deleted": true}),
        ("GET", "input_items") => json!({
            "object": "list",
            "data": [{"type": "message", "id": "msg_input", "role": "user", "status": "completed",
                      "content": [{"type": "input_text", "text": "hello"}]}],
            "first_id": "msg_input",
            "last_id": "msg_input",
            "has_more": false,
            "model_seen": named,
        }),
        _ => return None,
    };
    Some(ResponsesReply::Json(200, v))
}

fn query_model(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "model").then(|| v.to_string())
    })
}

/// The text the echo model answers a Responses request with: `input` when it is a string,
/// else the text parts of the last user item (Open WebUI sends
/// `[{"type":"message","role":"user","content":[{"type":"input_text","text":...}]}]`).
fn responses_input_text(body: &Value) -> String {
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| content_text(m.get("content")))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn responses_usage(text: &str) -> Value {
    let n = word_count(text);
    json!({
        "input_tokens": n,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 2 * n,
    })
}

fn response_message(text: &str, done: bool) -> Value {
    json!({
        "type": "message",
        "id": RESPONSE_MESSAGE_ID,
        "status": if done { "completed" } else { "in_progress" },
        "role": "assistant",
        "content": if done { json!([{"type": "output_text", "text": text, "annotations": []}]) } else { json!([]) },
    })
}

/// A Responses API `response` object; `done` adds the output and the usage.
fn response_json(model: &Value, text: &str, done: bool) -> Value {
    json!({
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": if done { "completed" } else { "in_progress" },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "metadata": {},
        "model": model,
        "output": if done { json!([response_message(text, true)]) } else { json!([]) },
        "parallel_tool_calls": true,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": if done { responses_usage(text) } else { Value::Null },
    })
}

/// The SSE events (each one HTTP chunk) of a streamed Responses API answer: `event:` and
/// `data:` lines, one delta per word, ending with `response.completed` (no `[DONE]`).
fn responses_stream_events(model: &Value, text: &str) -> Vec<String> {
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = Value::String(kind.to_string());
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(format!("event: {}\ndata: {}\n\n", kind, data));
    };
    push(
        "response.created",
        json!({"response": response_json(model, text, false)}),
    );
    push(
        "response.in_progress",
        json!({"response": response_json(model, text, false)}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": response_message(text, false)}),
    );
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let at = json!({"item_id": RESPONSE_MESSAGE_ID, "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    push(
        "response.content_part.added",
        with(json!({"part": part("")})),
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        let delta = if i + 1 < words.len() {
            format!("{} ", word)
        } else {
            word.to_string()
        };
        push(
            "response.output_text.delta",
            with(json!({"delta": delta, "logprobs": []})),
        );
    }
    push(
        "response.output_text.done",
        with(json!({"text": text, "logprobs": []})),
    );
    push(
        "response.content_part.done",
        with(json!({"part": part(text)})),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": response_message(text, true)}),
    );
    push(
        "response.completed",
        json!({"response": response_json(model, text, true)}),
    );
    events
}

/// The exact (de-chunked) bytes of a streamed Responses answer to `input` for `model`.
pub fn responses_stream_bytes(model: &str, input: &str) -> Vec<u8> {
    responses_stream_events(&Value::String(model.to_string()), input)
        .concat()
        .into_bytes()
}

/// The exact JSON body of a non-stream Responses answer to `input` for `model`.
pub fn response_bytes(model: &str, input: &str) -> Vec<u8> {
    serde_json::to_vec(&response_json(
        &Value::String(model.to_string()),
        input,
        true,
    ))
    .expect("serialize json")
}

// ---------------------------------------------------------------------------
// multipart/form-data
// ---------------------------------------------------------------------------

fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("boundary") {
            Some(v.trim().trim_matches('"').to_string())
        } else {
            None
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the form field `name` in a multipart body, as (lossy) UTF-8.
fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    let delim = format!("--{}", boundary).into_bytes();
    let mut rest = &body[find(body, &delim)? + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            return None; // closing delimiter
        }
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let content = &rest[head_end + 4..];
        let next = find(content, &delim)?;
        let mut value = &content[..next];
        if value.ends_with(b"\r\n") {
            value = &value[..value.len() - 2];
        }
        let is_field = head.lines().any(|line| {
            let Some((k, v)) = line.split_once(':') else {
                return false;
            };
            k.trim().eq_ignore_ascii_case("content-disposition")
                && v.split(';').skip(1).any(|p| {
                    p.split_once('=').is_some_and(|(pk, pv)| {
                        pk.trim().eq_ignore_ascii_case("name")
                            && pv.trim().trim_matches('"') == name
                    })
                })
        });
        if is_field {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &content[next + delim.len()..];
    }
}

// ---------------------------------------------------------------------------
// Helpers for tests
// ---------------------------------------------------------------------------

/// Parses an SSE byte stream into the list of `data:` payloads (strings), in order.
///
/// One entry per event: several `data:` lines in one event are joined with `\n`
/// (per the SSE spec); an event without a trailing blank line is still returned.
/// One space after `data:` is stripped. Comments and other fields are ignored.
pub fn sse_data_lines(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            if let Some(data) = current.take() {
                out.push(data);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("data:") {
            let value = rest.strip_prefix(' ').unwrap_or(rest);
            match current.as_mut() {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => current = Some(value.to_string()),
            }
        }
    }
    if let Some(data) = current {
        out.push(data);
    }
    out
}

/// The exact (de-chunked) body bytes the echo model streams for a request whose
/// `model` is `model` and whose only message is a user message with `content`.
///
/// `include_usage` adds the usage-only chunk (as sent when `Behavior::include_usage_chunk`
/// is set and the request has `stream_options.include_usage=true`); its
/// `prompt_tokens` is the word count of `content` (the single-message assumption).
/// `created` is always [`CREATED`].
pub fn echo_stream_bytes(model: &str, content: &str, include_usage: bool) -> Vec<u8> {
    let words = word_count(content);
    echo_stream_events(
        &Value::String(model.to_string()),
        content,
        include_usage.then_some((words, words)),
    )
    .concat()
    .into_bytes()
}

/// The exact JSON body of a non-stream echo reply for a request whose `model` is
/// `model` and whose only message is a user message with `content`.
pub fn echo_completion_bytes(model: &str, content: &str) -> Vec<u8> {
    let words = word_count(content);
    serde_json::to_vec(&chat_completion_json(
        &Value::String(model.to_string()),
        content,
        words,
        words,
    ))
    .expect("serialize json")
}

/// Decodes an HTTP/1.1 chunked body (chunk extensions and trailers allowed).
/// `None` if `raw` is not a complete, well-formed chunked body.
pub fn dechunk(raw: &[u8]) -> Option<Vec<u8>> {
    let mut r = raw;
    read_chunked_body(&mut r).ok()
}
