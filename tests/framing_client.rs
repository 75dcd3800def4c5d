//! Issue 9, client side: request framing the proxy must refuse (request smuggling), HTTP/2
//! attempts, h2c upgrade offers, bad bytes in the request head, lingering after 431/414, and
//! how refused requests are logged and counted.
//!
//! Contract: a refused framing request gets 400 with the OpenAI error shape and
//! `code: "invalid_framing"`, `Connection: close`, and then the connection is closed. A request
//! hidden in the body is never executed: the backend receives nothing and the client gets
//! exactly one response, then EOF.

mod support;

use prometheus_parse::{Scrape, Value};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::mock_backend::{echo_completion_bytes, Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-framing-client-key-5e6f7a8b";

/// A complete request that, if the proxy ever parsed it as a request of its own, would reach
/// the backend (a passthrough routed by `?model=m`). Exactly 31 bytes: the body of the
/// Content-Length cases, so that `Content-Length: 31` covers it.
const SMUGGLED: &[u8] = b"GET /files?model=m HTTP/1.1\r\n\r\n";

/// 31 bytes too: 5 filler bytes, then a 26-byte request that reaches the backend
/// (`GET /?model=m` is a passthrough). Read with `Content-Length: 5`, the request runs.
const SMUGGLED_AFTER_5: &[u8] = b"12345GET /?model=m HTTP/1.1\r\n\r\n";

/// An empty chunked body followed by the smuggled request (36 bytes): a parser that takes the
/// body as chunked runs the smuggled request next.
fn chunked_then_smuggled() -> Vec<u8> {
    [b"0\r\n\r\n".as_slice(), SMUGGLED].concat()
}

/// How long the client waits for the answer and the close; the close must come within 2 s.
const COLLECT: Duration = Duration::from_millis(2500);
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

fn setup() -> (MockBackend, Proxy) {
    let a = MockBackend::start(Behavior::default());
    // A few workers are plenty for one connection at a time, and start faster than the default.
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_WORKERS", "8")],
        &[],
    );
    (a, p)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_healthy(p: &Proxy) {
    let h = get(p.addr, "/health");
    assert_eq!(h.status, 200, "/health after the case: {}", h.text());
}

/// Everything the proxy sent on one connection, until it closed it or the deadline passed.
struct Wire {
    bytes: Vec<u8>,
    /// Time from the end of the request to EOF (or reset); `None` if still open.
    closed_after: Option<Duration>,
}

/// Sends `request` and collects the answer while keeping the socket open (the client never
/// half-closes), until the proxy closes the connection or `within` passes.
fn send_and_collect(addr: SocketAddr, request: &[u8], within: Duration) -> Wire {
    let mut s = TcpStream::connect(addr).unwrap();
    // The proxy may refuse early and close while we still write: that is not a test failure.
    let _ = s.write_all(request);
    let sent = Instant::now();
    let deadline = sent + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Wire {
                bytes,
                closed_after: None,
            };
        }
        s.set_read_timeout(Some(deadline - now)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // Reset or aborted: closed as well.
            Err(_) => break,
        }
    }
    Wire {
        bytes,
        closed_after: Some(sent.elapsed()),
    }
}

/// The first response in `bytes` and what follows it.
fn first_response(bytes: &[u8]) -> (std::io::Result<Resp>, Vec<u8>) {
    let mut c = std::io::Cursor::new(bytes);
    let r = read_response(&mut c, false);
    let rest = bytes[c.position() as usize..].to_vec();
    (r, rest)
}

fn says_close(r: &Resp) -> bool {
    r.header("connection")
        .map(|v| v.to_ascii_lowercase().contains("close"))
        .unwrap_or(false)
}

/// Sends one request that must be refused as `invalid_framing` and checks the whole contract,
/// reporting every deviation at once.
fn assert_refused_framing(case: &str, a: &MockBackend, p: &Proxy, request: &[u8]) {
    let wire = send_and_collect(p.addr, request, COLLECT);
    let (first, rest) = first_response(&wire.bytes);
    let mut problems = Vec::new();
    match &first {
        Err(e) => problems.push(format!("no complete response ({})", e)),
        Ok(r) => {
            if r.status != 400 {
                problems.push(format!("status {} instead of 400", r.status));
            }
            match serde_json::from_slice::<serde_json::Value>(&r.body) {
                Ok(v) => {
                    let e = &v["error"];
                    if e["code"] != "invalid_framing" {
                        problems.push(format!(
                            "error.code {} instead of \"invalid_framing\"",
                            e["code"]
                        ));
                    }
                    if e["type"] != "invalid_request_error" {
                        problems.push(format!("error.type {}", e["type"]));
                    }
                    if !e["param"].is_null() {
                        problems.push(format!("error.param {} instead of null", e["param"]));
                    }
                    if e["message"].as_str().map(str::is_empty).unwrap_or(true) {
                        problems.push("no error.message".to_string());
                    }
                }
                Err(_) => problems.push(format!("body is not JSON: {:?}", r.text())),
            }
            if !says_close(r) {
                problems.push("no `Connection: close` header".to_string());
            }
        }
    }
    if !rest.is_empty() {
        problems.push(format!(
            "more than one response: after the first came {:?}",
            lossy(&rest)
        ));
    }
    match wire.closed_after {
        None => problems.push(format!(
            "connection still open {:?} after the request",
            COLLECT
        )),
        Some(t) if t > CLOSE_WITHIN => {
            problems.push(format!("connection closed only after {:?}", t))
        }
        Some(_) => {}
    }
    let reqs = a.requests();
    if !reqs.is_empty() {
        problems.push(format!(
            "the backend received {} request(s): {:?}",
            reqs.len(),
            reqs.iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        ));
    }
    let health = get(p.addr, "/health").status;
    if health != 200 {
        problems.push(format!("/health answered {} afterwards", health));
    }
    assert!(
        problems.is_empty(),
        "{}: {}\n--- the proxy sent:\n{}",
        case,
        problems.join("; "),
        lossy(&wire.bytes)
    );
}

/// `POST /v1/chat/completions` with `headers` (each ending in CRLF) and `body`.
fn post(version: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST /v1/chat/completions {}\r\nHost: x\r\nContent-Type: application/json\r\n{}\r\n",
        version, headers
    );
    [head.as_bytes(), body].concat()
}

macro_rules! refused_framing {
    ($($name:ident => $request:expr;)*) => {$(
        #[test]
        fn $name() {
            let (a, p) = setup();
            assert_refused_framing(stringify!($name), &a, &p, &$request);
        }
    )*};
}

#[test]
fn the_smuggled_payloads_have_the_lengths_the_cases_declare() {
    assert_eq!(SMUGGLED.len(), 31);
    assert_eq!(SMUGGLED_AFTER_5.len(), 31);
    assert_eq!(chunked_then_smuggled().len(), 36);
}

refused_framing! {
    content_length_and_chunked_together_are_refused => post(
        "HTTP/1.1",
        "Content-Length: 36\r\nTransfer-Encoding: chunked\r\n",
        &chunked_then_smuggled(),
    );
    transfer_encoding_xchunked_is_refused => post(
        "HTTP/1.1",
        "Transfer-Encoding: xchunked\r\n",
        &chunked_then_smuggled(),
    );
    transfer_encoding_chunked_identity_is_refused => post(
        "HTTP/1.1",
        "Transfer-Encoding: chunked, identity\r\n",
        &chunked_then_smuggled(),
    );
    transfer_encoding_gzip_chunked_is_refused => post(
        "HTTP/1.1",
        "Transfer-Encoding: gzip, chunked\r\n",
        &chunked_then_smuggled(),
    );
    // The raw bytes after the colon are the two cases' values (smuggler.py's "valueprefix1" and
    // "tabprefix1"). RFC 9112 would strip this whitespace; the lead's contract refuses anything
    // but exactly `chunked`.
    transfer_encoding_with_two_leading_spaces_is_refused => post(
        "HTTP/1.1",
        "Transfer-Encoding:  chunked\r\n",
        &chunked_then_smuggled(),
    );
    transfer_encoding_with_a_leading_tab_is_refused => post(
        "HTTP/1.1",
        "Transfer-Encoding:\tchunked\r\n",
        &chunked_then_smuggled(),
    );
    // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. Keep-alive
    // asked for, so a lenient server would go on to the smuggled request.
    transfer_encoding_on_http10_is_refused => post(
        "HTTP/1.0",
        "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
        &chunked_then_smuggled(),
    );
    two_equal_content_lengths_are_refused => post(
        "HTTP/1.1",
        "Content-Length: 31\r\nContent-Length: 31\r\n",
        SMUGGLED,
    );
    two_different_content_lengths_are_refused => post(
        "HTTP/1.1",
        "Content-Length: 31\r\nContent-Length: 5\r\n",
        SMUGGLED_AFTER_5,
    );
    a_content_length_list_is_refused => post(
        "HTTP/1.1",
        "Content-Length: 31, 31\r\n",
        SMUGGLED,
    );
    a_negative_content_length_is_refused => post(
        "HTTP/1.1",
        "Content-Length: -1\r\n",
        SMUGGLED,
    );
    a_content_length_with_a_plus_sign_is_refused => post(
        "HTTP/1.1",
        "Content-Length: +31\r\n",
        SMUGGLED,
    );
    a_hexadecimal_content_length_is_refused => post(
        "HTTP/1.1",
        "Content-Length: 0x1f\r\n",
        SMUGGLED,
    );
    a_twenty_digit_content_length_is_refused => post(
        "HTTP/1.1",
        "Content-Length: 99999999999999999999\r\n",
        SMUGGLED,
    );
    // A parser that unfolds (or drops) the continuation line uses Content-Length; one that takes
    // the line as a header of its own uses chunked and runs the smuggled request.
    an_obs_fold_line_starting_with_a_space_is_refused => post(
        "HTTP/1.1",
        "Content-Length: 36\r\nX-Foo: bar\r\n Transfer-Encoding: chunked\r\n",
        &chunked_then_smuggled(),
    );
    an_obs_fold_line_starting_with_a_tab_is_refused => post(
        "HTTP/1.1",
        "Content-Length: 36\r\nX-Foo: bar\r\n\tTransfer-Encoding: chunked\r\n",
        &chunked_then_smuggled(),
    );
}

fn chat_head(framing: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}\r\n",
        framing
    )
}

fn assert_echo(r: &Resp, content: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.body,
        echo_completion_bytes("real-m", content),
        "{}",
        r.text()
    );
}

#[test]
fn a_well_formed_chunked_request_is_served_and_the_connection_kept() {
    let (a, p) = setup();
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let body = chat_body("m", "chunked first", false);
    let (one, two) = body.as_bytes().split_at(body.len() / 2);
    let mut req = chat_head("Transfer-Encoding: chunked\r\n").into_bytes();
    for part in [one, two] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    assert_echo(&read_response(&mut r, false).unwrap(), "chunked first");
    // Keep-alive: a second request on the same connection is served.
    let body = chat_body("m", "then a second", false);
    write!(
        s,
        "{}{}",
        chat_head(&format!("Content-Length: {}\r\n", body.len())),
        body
    )
    .unwrap();
    assert_echo(&read_response(&mut r, false).unwrap(), "then a second");
    assert_eq!(a.requests().len(), 2);
    assert_healthy(&p);
}

#[test]
fn a_well_formed_content_length_request_is_served_and_the_connection_kept() {
    let (a, p) = setup();
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for content in ["length first", "then a second"] {
        let body = chat_body("m", content, false);
        write!(
            s,
            "{}{}",
            chat_head(&format!("Content-Length: {}\r\n", body.len())),
            body
        )
        .unwrap();
        assert_echo(&read_response(&mut r, false).unwrap(), content);
    }
    assert_eq!(a.requests().len(), 2);
    assert_healthy(&p);
}

/// Pipelining: three requests written at once (one with a body), each answered in order on the
/// same connection, and each backend request carries its own headers (the request heads share
/// buffers the connection reuses).
#[test]
fn pipelined_requests_are_answered_in_order_with_their_own_headers() {
    let (a, p) = setup();
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut wire = Vec::new();
    for (i, content) in ["first in line", "second in line"].iter().enumerate() {
        let body = chat_body("m", content, false);
        wire.extend_from_slice(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pipelined: n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                i,
                body.len(),
                body
            )
            .as_bytes(),
        );
    }
    wire.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(&wire).unwrap();
    assert_echo(&read_response(&mut r, false).unwrap(), "first in line");
    assert_echo(&read_response(&mut r, false).unwrap(), "second in line");
    let h = read_response(&mut r, false).unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    let seen: Vec<Option<String>> = a
        .requests()
        .iter()
        .map(|q| q.header("x-pipelined").map(str::to_string))
        .collect();
    assert_eq!(seen, [Some("n0".to_string()), Some("n1".to_string())]);
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 attempts
// ---------------------------------------------------------------------------------------------

const HTTP2_REQUEST_LINE: &[u8] = b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n";
const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A 505 (and nothing after it) or a close without a byte, and the connection closed within 1 s.
fn assert_h2_refused(case: &str, p: &Proxy, request: &[u8]) {
    let wire = send_and_collect(p.addr, request, Duration::from_millis(1500));
    let mut problems = Vec::new();
    match wire.closed_after {
        None => problems.push("connection still open after 1.5 s".to_string()),
        Some(t) if t > Duration::from_secs(1) => {
            problems.push(format!("connection closed only after {:?}", t))
        }
        Some(_) => {}
    }
    if !wire.bytes.is_empty() {
        let (first, rest) = first_response(&wire.bytes);
        match first {
            Ok(r) if r.status == 505 => {}
            Ok(r) => problems.push(format!("status {} instead of 505", r.status)),
            Err(e) => problems.push(format!("an incomplete response ({})", e)),
        }
        if !rest.is_empty() {
            problems.push(format!("more after the first response: {:?}", lossy(&rest)));
        }
    }
    assert!(
        problems.is_empty(),
        "{}: {}\n--- the proxy sent:\n{}",
        case,
        problems.join("; "),
        lossy(&wire.bytes)
    );
}

#[test]
fn an_http2_request_line_gets_505_and_the_connection_closed_within_a_second() {
    let (_a, p) = setup();
    assert_h2_refused("GET /health HTTP/2.0", &p, HTTP2_REQUEST_LINE);
    assert_healthy(&p);
}

#[test]
fn the_h2c_preface_gets_505_and_the_connection_closed_within_a_second() {
    let (_a, p) = setup();
    assert_h2_refused("h2c preface", &p, H2C_PREFACE);
    assert_healthy(&p);
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", pid))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", pid))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// (threads, sockets) once two samples 100 ms apart agree (at most 2 s).
fn settled_counts(pid: u32) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = (thread_count(pid), socket_count(pid));
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = (thread_count(pid), socket_count(pid));
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn http2_attempts_leave_no_threads_or_sockets_behind() {
    let (_a, p) = setup();
    // The serve loop and every pool exist once a request has been answered.
    assert_healthy(&p);
    let (threads0, sockets0) = settled_counts(p.pid());
    for i in 0..20 {
        let request = if i % 2 == 0 {
            HTTP2_REQUEST_LINE
        } else {
            H2C_PREFACE
        };
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(request).unwrap();
        // Read what comes (a 505 or the close), then the client closes.
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        drop(s);
    }
    // Slack of 2 threads: tiny_http's connection pool starts a new thread when no idle one is
    // registered as waiting at that instant; a thread whose connection just closed may not be
    // back in its wait yet when the next connection arrives. Such an extra thread idles 5 s
    // (longer than this poll) before it exits. Sockets get no slack.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut threads, mut sockets);
    loop {
        threads = thread_count(p.pid());
        sockets = socket_count(p.pid());
        if (threads <= threads0 + 2 && sockets <= sockets0) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads <= threads0 + 2 && sockets <= sockets0,
        "after 20 HTTP/2 attempts: {} threads (baseline {}), {} sockets (baseline {})",
        threads,
        threads0,
        sockets,
        sockets0
    );
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// h2c upgrade offer
// ---------------------------------------------------------------------------------------------

#[test]
fn an_h2c_upgrade_offer_is_answered_over_http11_at_once() {
    let (a, p) = setup();
    let body = chat_body("m", "upgrade offered", false);
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    let t = Instant::now();
    // The client keeps its socket open (no half-close): the body ends where Content-Length says.
    let r = read_response(&mut BufReader::new(s.try_clone().unwrap()), false)
        .unwrap_or_else(|e| panic!("no answer within 2.5 s ({})", e));
    let took = t.elapsed();
    assert_echo(&r, "upgrade offered");
    assert!(took <= Duration::from_secs(2), "answered after {:?}", took);
    let reqs = a.requests();
    assert_eq!(reqs.len(), 1);
    for h in ["upgrade", "http2-settings"] {
        assert_eq!(
            reqs[0].header(h),
            None,
            "the backend received `{}`: {:?}",
            h,
            reqs[0].headers
        );
    }
    drop(s);
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// Bad bytes in the request head
// ---------------------------------------------------------------------------------------------

/// Sends one request and reads one response (2.5 s at most).
fn exchange(p: &Proxy, request: &[u8]) -> Resp {
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let _ = s.write_all(request);
    read_response(&mut BufReader::new(s), false)
        .unwrap_or_else(|e| panic!("no complete response within 2.5 s ({})", e))
}

fn chat_with_header(header_line: &[u8]) -> Vec<u8> {
    let body = chat_body("m", "x", false);
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n".as_slice(),
        header_line,
        b"\r\n",
        format!("Content-Length: {}\r\n\r\n{}", body.len(), body).as_bytes(),
    ]
    .concat()
}

#[test]
fn a_control_byte_in_a_header_name_gets_400_not_500() {
    let (a, p) = setup();
    let r = exchange(&p, &chat_with_header(b"X-Bad\x01Name: 1"));
    let e = r.error(400);
    assert_eq!(e["code"], "invalid_header", "{}", e);
    assert!(a.requests().is_empty(), "{:?}", a.requests());
    assert_healthy(&p);
}

#[test]
fn a_non_ascii_request_target_gets_400() {
    let (a, p) = setup();
    let r = exchange(
        &p,
        b"GET /v1/mod\xc3\xa9ls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(a.requests().is_empty(), "{:?}", a.requests());
    assert_healthy(&p);
}

#[test]
fn a_utf8_header_value_gets_400_naming_the_header() {
    let (a, p) = setup();
    let r = exchange(
        &p,
        &chat_with_header("X-OpenWebUI-User-Name: José Núñez".as_bytes()),
    );
    let e = r.error(400);
    assert_eq!(e["code"], "invalid_header", "{}", e);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-openwebui-user-name"),
        "the message does not name the header: {}",
        e
    );
    assert!(a.requests().is_empty(), "{:?}", a.requests());
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// 431 and 414 close the connection at once
// ---------------------------------------------------------------------------------------------

fn huge_header_line() -> Vec<u8> {
    format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "x".repeat(100 * 1024)
    )
    .into_bytes()
}

fn many_headers() -> Vec<u8> {
    let many: String = (0..100)
        .map(|i| format!("X-H{}: {}\r\n", i, "y".repeat(1000)))
        .collect();
    format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n", many).into_bytes()
}

fn long_target() -> Vec<u8> {
    format!(
        "GET /v1/models?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "z".repeat(20 * 1024)
    )
    .into_bytes()
}

/// The refusal arrives and EOF follows within 2 s, though the client keeps its socket open and
/// sends nothing more.
fn assert_refused_and_closed(p: &Proxy, request: &[u8], status: u16) {
    let wire = send_and_collect(p.addr, request, Duration::from_secs(3));
    let (first, _) = first_response(&wire.bytes);
    let first = first.unwrap_or_else(|e| panic!("no {} ({}): {:?}", status, e, lossy(&wire.bytes)));
    assert_eq!(first.status, status);
    match wire.closed_after {
        Some(t) => assert!(t <= CLOSE_WITHIN, "connection closed only after {:?}", t),
        None => panic!("connection still open 3 s after the {}", status),
    }
    assert_healthy(p);
}

#[test]
fn after_431_for_a_huge_header_line_the_connection_closes_at_once() {
    let (_a, p) = setup();
    assert_refused_and_closed(&p, &huge_header_line(), 431);
}

#[test]
fn after_431_for_too_many_header_bytes_the_connection_closes_at_once() {
    let (_a, p) = setup();
    assert_refused_and_closed(&p, &many_headers(), 431);
}

#[test]
fn after_414_the_connection_closes_at_once() {
    let (_a, p) = setup();
    assert_refused_and_closed(&p, &long_target(), 414);
}

// ---------------------------------------------------------------------------------------------
// Refused requests are logged and counted
// ---------------------------------------------------------------------------------------------

fn bytes_of(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
}

/// Waits (2 s at most) for an access-log line with this status and non-zero bytes.
fn access_line(p: &Proxy, status: u16) -> Result<String, String> {
    let needle = format!(" status={} ", status);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let lines: Vec<String> = p
            .logs()
            .into_iter()
            .filter(|l| l.contains(&needle) && l.contains(" outcome="))
            .collect();
        if let Some(l) = lines.iter().find(|l| bytes_of(l).unwrap_or(0) > 0) {
            return Ok(l.clone());
        }
        if Instant::now() >= deadline {
            return Err(if lines.is_empty() {
                format!("no access-log line with status={}", status)
            } else {
                format!(
                    "access-log lines with status={} but no bytes: {:?}",
                    status, lines
                )
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn refused_count(p: &Proxy, status: &str, code: &str) -> f64 {
    let r = get(p.addr, "/metrics");
    assert_eq!(r.status, 200);
    let s = Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    s.samples
        .iter()
        .filter(|x| {
            x.metric == "modelmux_refused_requests_total"
                && x.labels.get("status") == Some(status)
                && x.labels.get("code") == Some(code)
        })
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Untyped(v) | Value::Gauge(v) => *v,
            _ => 0.0,
        })
        .fold(0.0, |a, b| a + b)
}

/// A 400 modelmux refused with `code` has its access log line and its count in
/// `modelmux_refused_requests_total`, and the proxy stays healthy.
fn assert_logged_and_counted(p: &Proxy, code: &str) {
    let line = access_line(p, 400);
    let count = refused_count(p, "400", code);
    assert!(
        line.is_ok() && count >= 1.0,
        "access log: {:?}; modelmux_refused_requests_total{{status=\"400\",code=\"{}\"}} = {}",
        line,
        code,
        count
    );
    assert_healthy(p);
}

#[test]
fn a_refused_framing_request_is_access_logged_and_counted() {
    let (_a, p) = setup();
    let _ = send_and_collect(
        p.addr,
        &post(
            "HTTP/1.1",
            "Content-Length: 36\r\nTransfer-Encoding: chunked\r\n",
            &chunked_then_smuggled(),
        ),
        COLLECT,
    );
    assert_logged_and_counted(&p, "invalid_framing");
}

#[test]
fn a_refused_header_is_access_logged_and_counted() {
    let (_a, p) = setup();
    let _ = send_and_collect(
        p.addr,
        &chat_with_header("X-OpenWebUI-User-Name: José Núñez".as_bytes()),
        COLLECT,
    );
    assert_logged_and_counted(&p, "invalid_header");
}

#[test]
fn refused_heads_431_and_414_are_access_logged_with_their_bytes() {
    let (_a, p) = setup();
    // Only the log lines matter here; the close is checked by the tests above.
    let _ = send_and_collect(p.addr, &huge_header_line(), Duration::from_secs(1));
    let _ = send_and_collect(p.addr, &long_target(), Duration::from_secs(1));
    let l431 = access_line(&p, 431);
    let l414 = access_line(&p, 414);
    assert!(
        l431.is_ok() && l414.is_ok(),
        "431: {:?}; 414: {:?}",
        l431,
        l414
    );
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// A request head read in pieces
// ---------------------------------------------------------------------------------------------

/// `request` written in pieces cut at `cuts`, each piece its own TCP segment (a pause between
/// them), then the status of the first answer.
fn status_in_pieces(p: &Proxy, request: &[u8], cuts: &[usize]) -> u16 {
    let mut s = connect(p.addr);
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut at = 0;
    for &cut in cuts.iter().chain([request.len()].iter()) {
        let _ = s.write_all(&request[at..cut]);
        at = cut;
        std::thread::sleep(Duration::from_millis(15));
    }
    read_response(&mut BufReader::new(s), false)
        .map(|r| r.status)
        .unwrap_or_else(|e| panic!("no answer with cuts {:?} ({})", cuts, e))
}

/// The head's lines are found the same however the head arrives: cut between a CR and its
/// LF, just before or after either, inside a name, or one byte per read at the start. A head of
/// exactly `CM_OPEN_WEBUI_PROXY_MAX_HEADER_BYTES` bytes is served and one more byte gets 431,
/// whole or in pieces; a bare LF inside a header line is refused the same whole or cut.
#[test]
fn a_head_in_pieces_is_read_as_the_whole_head_is() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[
            ("CM_OPEN_WEBUI_PROXY_WORKERS", "8"),
            ("CM_OPEN_WEBUI_PROXY_MAX_HEADER_BYTES", "1024"),
        ],
        &[],
    );
    let body = chat_body("m", "pieces", false);
    // A head (up to and including its empty line) of `len` bytes: a padding header makes
    // up the length.
    let head_of = |len: usize| -> Vec<u8> {
        let fixed = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Pad: \r\n\r\n",
            body.len()
        );
        let pad = "p".repeat(len - fixed.len());
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Pad: {}\r\n\r\n",
            body.len(),
            pad
        );
        assert_eq!(head.len(), len);
        [head.as_bytes(), body.as_bytes()].concat()
    };
    let at_limit = head_of(1024);
    let over = head_of(1025);
    let crlf = |req: &[u8], n: usize| -> usize {
        req.windows(2)
            .enumerate()
            .filter(|(_, w)| w == b"\r\n")
            .nth(n)
            .map(|(i, _)| i)
            .unwrap()
    };
    let first_cr = crlf(&at_limit, 0);
    let last_cr = crlf(&at_limit, 5);
    let cut_sets: Vec<Vec<usize>> = vec![
        vec![],
        vec![1, 2, 3, 4],
        vec![first_cr],
        vec![first_cr + 1],
        vec![first_cr + 2],
        vec![first_cr - 1, first_cr + 1, first_cr + 3],
        vec![last_cr],
        vec![last_cr + 1],
        vec![1023],
        vec![1024],
    ];
    for cuts in &cut_sets {
        assert_eq!(
            status_in_pieces(&p, &at_limit, cuts),
            200,
            "cuts {:?}",
            cuts
        );
        assert_eq!(status_in_pieces(&p, &over, cuts), 431, "cuts {:?}", cuts);
    }
    let bare_lf = chat_with_header(b"X-A: b\nX-C: d");
    let whole = status_in_pieces(&p, &bare_lf, &[]);
    assert!((400..500).contains(&whole), "{}", whole);
    let bare = bare_lf
        .windows(2)
        .position(|w| w[0] != b'\r' && w[1] == b'\n')
        .map(|i| i + 1)
        .unwrap();
    for cuts in [vec![bare], vec![bare + 1], vec![bare - 1, bare]] {
        assert_eq!(
            status_in_pieces(&p, &bare_lf, &cuts),
            whole,
            "cuts {:?}",
            cuts
        );
    }
    assert_healthy(&p);
}
