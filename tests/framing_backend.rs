//! Issue 9, backend side: interim (1xx) and switching answers, responses whose framing
//! disagrees or whose head is too big, SSE keep-alive comments that must not corrupt a stream,
//! and `X-Model-Id` on passthrough requests.
//!
//! The mock backend only speaks well-formed HTTP, so most cases here use a tiny raw-TCP fake
//! backend that writes exactly the bytes (and pauses) a test scripts.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::fake_backend::{chunk, FakeBackend, FakeReq, Step};
use support::mock_backend::{echo_completion_bytes, echo_stream_bytes, Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-framing-backend-key-9c8d7e6f";

/// A complete 200 with a JSON body naming the request's content.
fn echo_200(req: &FakeReq) -> Vec<u8> {
    let body = serde_json::json!({ "echo": req.content() }).to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Client side helpers
// ---------------------------------------------------------------------------------------------

fn assert_healthy(p: &Proxy) {
    let h = get(p.addr, "/health");
    assert_eq!(h.status, 200, "/health after the case: {}", h.text());
}

/// A keep-alive chat request.
fn chat_request(model: &str, content: &str, stream: bool, extra_headers: &str) -> Vec<u8> {
    let body = chat_body(model, content, stream);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n{}",
        extra_headers,
        body.len(),
        body
    )
    .into_bytes()
}

/// One client connection with a reader that outlives single responses.
struct Client {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(p: &Proxy) -> Client {
        let s = connect(p.addr);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Client { s, r }
    }

    /// Sends a request and reads its final response: interim 1xx answers (other than 101) a
    /// proxy may forward are skipped, as an HTTP/1.1 client must.
    fn call(&mut self, request: &[u8]) -> std::io::Result<Resp> {
        self.s.write_all(request)?;
        loop {
            let r = read_response(&mut self.r, false)?;
            if (100..200).contains(&r.status) && r.status != 101 {
                continue;
            }
            return Ok(r);
        }
    }
}

/// A few workers are plenty for these one-connection tests, and start faster than the default.
fn start(config: &str) -> Proxy {
    Proxy::start_with(config, &[("CM_OPEN_WEBUI_PROXY_WORKERS", "8")], &[])
}

fn proxy_one(url: &str) -> Proxy {
    start(&config_for(&[("m", url, KEY, "real-m")]))
}

/// Model `m` served by `first`, then `second` (smooth round-robin tries them in this order).
fn proxy_two(first: &str, second: &str) -> Proxy {
    let cfg = serde_json::json!({"endpoints": {"m": {
        "apiKey": KEY,
        "actualModelName": "real-m",
        "backends": [{"url": first}, {"url": second}],
    }}});
    start(&cfg.to_string())
}

// ---------------------------------------------------------------------------------------------
// 1xx before the answer
// ---------------------------------------------------------------------------------------------

fn assert_interim_skipped(interim: &'static [u8]) {
    let b = FakeBackend::start(move |req| {
        vec![Step::Send(interim.to_vec()), Step::Send(echo_200(req))]
    });
    let p = proxy_one(&b.url);
    let mut c = Client::new(&p);
    for content in ["first answer", "second answer"] {
        let r = c
            .call(&chat_request("m", content, false, ""))
            .unwrap_or_else(|e| panic!("{:?}: no final answer within 3 s ({})", content, e));
        assert_eq!(r.status, 200, "{:?}: {}", content, r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({ "echo": content }),
            "{:?}: the answer belongs to another request",
            content
        );
    }
    assert_healthy(&p);
}

#[test]
fn a_100_continue_before_the_answer_is_not_taken_for_the_answer() {
    assert_interim_skipped(b"HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn a_103_early_hints_before_the_answer_is_not_taken_for_the_answer() {
    assert_interim_skipped(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n");
}

// ---------------------------------------------------------------------------------------------
// 101 Switching Protocols
// ---------------------------------------------------------------------------------------------

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";

#[test]
fn a_101_switching_protocols_answer_is_a_502() {
    let b = FakeBackend::start(|_| vec![Step::Send(SWITCHING.to_vec())]);
    let p = proxy_one(&b.url);
    let r = Client::new(&p)
        .call(&chat_request("m", "x", false, ""))
        .expect("an answer");
    let e = r.error(502);
    assert_eq!(e["code"], "bad_gateway", "{}", e);
    assert_healthy(&p);
}

/// `bad` first and a good backend second: the client gets the good one's answer, `bad` was
/// asked once first (`not_first` says otherwise), and the proxy stays healthy.
fn fails_over_from(bad: &FakeBackend, not_first: &str) {
    let good = MockBackend::start(Behavior::default());
    let p = proxy_two(&bad.url, &good.url());
    let r = Client::new(&p)
        .call(&chat_request("m", "fail over", false, ""))
        .expect("an answer");
    assert_eq!(
        r.status,
        200,
        "did not fail over: {:?} {}",
        r.headers,
        r.text()
    );
    assert_eq!(r.body, echo_completion_bytes("real-m", "fail over"));
    let tried = bad.requests();
    assert_eq!(tried.len(), 1, "{}", not_first);
    assert_eq!(tried[0].line, "POST /v1/chat/completions HTTP/1.1");
    assert_healthy(&p);
}

#[test]
fn a_101_switching_protocols_backend_fails_over_to_a_good_one() {
    let bad = FakeBackend::start(|_| vec![Step::Send(SWITCHING.to_vec())]);
    fails_over_from(&bad, "the 101 backend was not tried first");
}

// ---------------------------------------------------------------------------------------------
// Transfer-Encoding and Content-Length in one response
// ---------------------------------------------------------------------------------------------

#[test]
fn a_response_with_both_chunked_and_content_length_is_relayed_by_its_chunks() {
    let b = FakeBackend::start(|_| {
        vec![Step::Send(
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".to_vec(),
                chunk(b"{\"a"),
                chunk(b"\":1}"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        )]
    });
    let p = proxy_one(&b.url);
    let mut c = Client::new(&p);
    for i in 0..2 {
        let r = c
            .call(&chat_request("m", "x", false, ""))
            .unwrap_or_else(|e| panic!("request {}: no clean answer ({})", i + 1, e));
        assert_eq!(r.status, 200, "request {}", i + 1);
        if let Some(len) = r.header("content-length") {
            assert!(
                r.header("transfer-encoding").is_none(),
                "request {}: both Content-Length and Transfer-Encoding: {:?}",
                i + 1,
                r.headers
            );
            assert_eq!(len, "7", "request {}: Content-Length disagrees", i + 1);
        }
        assert_eq!(
            r.text(),
            "{\"a\":1}",
            "request {}: not the backend's de-chunked body",
            i + 1
        );
    }
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// The backend's own headers
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backends_repeated_headers_reach_the_client_once_each_in_order() {
    let b = FakeBackend::start(|_| {
        vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Trace: t\r\nSet-Cookie: b=2\r\nConnection: x-trace\r\nX-Request-Id: up-1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
        )]
    });
    let p = proxy_one(&b.url);
    let r = Client::new(&p)
        .call(&chat_request("m", "x", false, ""))
        .expect("an answer");
    assert_eq!(r.status, 200);
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"], "{:?}", r.headers);
    // Named by the backend's Connection header: hop-by-hop for that message only.
    assert_eq!(r.header("x-trace"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-upstream-request-id"), Some("up-1"));
    assert_eq!(r.text(), "{}");
    assert_healthy(&p);
}

// ---------------------------------------------------------------------------------------------
// More response headers than ureq accepts
// ---------------------------------------------------------------------------------------------

/// 200 headers; ureq 2.12 refuses a response head with more than 100 (MAX_HEADER_COUNT).
fn too_many_headers() -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-Pad-{}: v\r\n", i));
    }
    head.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    head.into_bytes()
}

#[test]
fn a_response_with_too_many_headers_is_a_502_that_does_not_blame_the_request() {
    let b = FakeBackend::start(|_| vec![Step::Send(too_many_headers())]);
    let p = proxy_one(&b.url);
    let r = Client::new(&p)
        .call(&chat_request("m", "x", false, ""))
        .expect("an answer");
    let e = r.error(502);
    let message = e["message"].as_str().unwrap();
    assert!(
        !message.contains("check the endpoint's url and headers"),
        "{}",
        message
    );
    assert_healthy(&p);
}

#[test]
fn a_response_with_too_many_headers_fails_over_to_a_good_backend() {
    let bad = FakeBackend::start(|_| vec![Step::Send(too_many_headers())]);
    fails_over_from(&bad, "the bad backend was not tried first");
}

// ---------------------------------------------------------------------------------------------
// SSE keep-alive comments
// ---------------------------------------------------------------------------------------------

/// Keep-alive interval for these tests, and a backend pause well beyond it.
const KEEPALIVE_SECS: f64 = 0.2;
const PAUSE: Duration = Duration::from_millis(700);

fn proxy_with_keepalive(url: &str) -> Proxy {
    let cfg = serde_json::json!({"endpoints": {"m": {
        "url": url,
        "apiKey": KEY,
        "actualModelName": "real-m",
        "sseKeepaliveSecs": KEEPALIVE_SECS,
    }}});
    start(&cfg.to_string())
}

#[test]
fn streaming_requests_do_not_forward_the_clients_accept_encoding() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_with_keepalive(&a.url());
    let r = Client::new(&p)
        .call(&chat_request(
            "m",
            "plain tokens",
            true,
            "Accept-Encoding: gzip\r\n",
        ))
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, echo_stream_bytes("real-m", "plain tokens", false));
    let rec = &a.requests()[0];
    let ae = rec.header("accept-encoding");
    assert!(
        ae.is_none() || ae == Some("identity"),
        "the backend was offered a compressed stream: Accept-Encoding: {:?}",
        ae
    );
    assert_healthy(&p);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65_535);
    let len = data.len() as u16;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // BFINAL, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn gzip_stream_bytes_are_valid_gzip() {
    // Known answer: CRC-32 of "123456789" is 0xcbf43926.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    let g = gzip_stored(b"abc");
    assert_eq!(&g[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(g.len(), 10 + 5 + 3 + 8);
}

#[test]
fn a_gzip_event_stream_gets_no_keepalive_comments() {
    let gz = gzip_stored(b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
    let sent = gz.clone();
    let b = FakeBackend::start(move |_| {
        let (one, rest) = sent.split_at(8);
        let (two, three) = rest.split_at(rest.len() / 2);
        vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            ),
            Step::Send(chunk(one)),
            Step::Pause(PAUSE),
            Step::Send(chunk(two)),
            Step::Pause(PAUSE),
            Step::Send([chunk(three), b"0\r\n\r\n".to_vec()].concat()),
        ]
    });
    let p = proxy_with_keepalive(&b.url);
    let r = Client::new(&p)
        .call(&chat_request("m", "x", true, "Accept-Encoding: gzip\r\n"))
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.body == gz,
        "the gzip stream was altered: sent {} bytes, client got {} bytes: {:?}",
        gz.len(),
        r.body.len(),
        String::from_utf8_lossy(&r.body)
    );
    assert_healthy(&p);
}

/// `body` with SSE comment blocks (`:...` up to a blank line) removed where they start at an
/// event boundary (the start, or right after `\n\n`); comments anywhere else stay and so make
/// the result differ from the backend's bytes.
fn without_boundary_comments(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let at_boundary = out.is_empty() || out.ends_with(b"\n\n");
        if at_boundary && body[i] == b':' {
            match body[i..].windows(2).position(|w| w == b"\n\n") {
                Some(end) => {
                    i += end + 2;
                    continue;
                }
                None => {
                    out.extend_from_slice(&body[i..]);
                    break;
                }
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

#[test]
fn keepalive_comments_never_split_an_event() {
    let b = FakeBackend::start(|_| {
        vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            ),
            Step::Send(chunk(b"data: {\"x\":")),
            Step::Pause(PAUSE),
            Step::Send(chunk(b"1}\n\n")),
            Step::Pause(PAUSE),
            Step::Send([chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n".to_vec()].concat()),
        ]
    });
    let p = proxy_with_keepalive(&b.url);
    let t = Instant::now();
    let r = Client::new(&p)
        .call(&chat_request("m", "x", true, ""))
        .expect("an answer");
    assert!(t.elapsed() >= 2 * PAUSE);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("data: {\"x\":1}\n\n"),
        "the event was split: {:?}",
        text
    );
    assert_eq!(
        String::from_utf8_lossy(&without_boundary_comments(&r.body)),
        "data: {\"x\":1}\n\ndata: [DONE]\n\n",
        "a comment outside an event boundary: {:?}",
        text
    );
    assert_healthy(&p);
}

#[test]
fn boundary_comment_filter_keeps_comments_inside_events() {
    assert_eq!(
        without_boundary_comments(b": keep-alive\n\ndata: 1\n\n: keep-alive\n\ndata: 2\n\n"),
        b"data: 1\n\ndata: 2\n\n"
    );
    assert_eq!(
        without_boundary_comments(b"data: {\"x\":: keep-alive\n\n1}\n\n"),
        b"data: {\"x\":: keep-alive\n\n1}\n\n"
    );
}

// ---------------------------------------------------------------------------------------------
// X-Model-Id on passthrough requests
// ---------------------------------------------------------------------------------------------

#[test]
fn x_model_id_reaches_the_backend_as_the_actual_model_name() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_one(&a.url());
    let r = request(p.addr, "GET", "/v1/files", &[("X-Model-Id", "m")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        p.addr,
        "POST",
        "/v1/audio/speech",
        &[("X-Model-Id", "m"), ("Content-Type", "application/json")],
        br#"{"model":"m","input":"hello","voice":"alloy"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = a.requests();
    assert_eq!(reqs.len(), 2);
    for rec in &reqs {
        assert_eq!(
            rec.header("x-model-id"),
            Some("real-m"),
            "{} {}: {:?}",
            rec.method,
            rec.path,
            rec.headers
        );
    }
    assert_eq!(reqs[1].json().unwrap()["model"], "real-m");
    assert_healthy(&p);
}

/// The head modelmux sends a backend, byte for byte where modelmux decides it: the request line
/// (with the query of a passthrough path), `Host` with the backend's port, the backend's key,
/// the body's exact `Content-Length`, CRLF line ends and one empty line before the body.
#[test]
fn the_backend_gets_an_exact_request_head() {
    use std::io::{BufRead, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push((head, body));
                    let answer = br#"{"object":"list","data":[]}"#;
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        answer.len()
                    );
                    let _ = s.write_all(answer);
                }
            });
        }
    });
    let p = one_model_proxy(&format!("http://127.0.0.1:{}/v1", port), KEY, &[]);
    let body = chat_body("m", "exact head", false);
    let r = request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        p.addr,
        "GET",
        "/v1/files?limit=2&order=asc",
        &[("X-Model-Id", "m")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{:?}", heads);

    let (chat, sent) = &heads[0];
    let chat_lines: Vec<&str> = chat.split("\r\n").collect();
    assert_eq!(
        chat_lines[0], "POST /v1/chat/completions HTTP/1.1",
        "{}",
        chat
    );
    assert!(
        chat.ends_with("\r\n\r\n") && !chat.ends_with("\r\n\r\n\r\n"),
        "{:?}",
        chat
    );
    assert!(
        !chat.replace("\r\n", "").contains('\n'),
        "bare LF in {:?}",
        chat
    );
    let host = format!("Host: 127.0.0.1:{}", port);
    let auth = format!("Authorization: Bearer {}", KEY);
    let length = format!("Content-Length: {}", sent.len());
    for want in [host.as_str(), auth.as_str(), length.as_str()] {
        assert_eq!(
            chat_lines.iter().filter(|l| **l == want).count(),
            1,
            "{} once in {:?}",
            want,
            chat
        );
    }
    let sent: serde_json::Value = serde_json::from_slice(sent).unwrap();
    assert_eq!(sent["model"], "real-m");

    let (files, _) = &heads[1];
    assert!(
        files.starts_with("GET /v1/files?limit=2&order=asc HTTP/1.1\r\n"),
        "{:?}",
        files
    );
    assert_eq!(files.matches(&host).count(), 1, "{:?}", files);
    assert!(!files.contains("Content-Length"), "{:?}", files);
}
