//! Malformed and hostile requests get clear OpenAI-shaped errors and disturb nothing else.

mod support;

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};
use support::mock_backend::{echo_stream_bytes, Behavior, MockBackend};
use support::*;

/// The backend key of model `m`; the secret scan checks it never reaches a log.
const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    read_response(&mut BufReader::new(s), false).unwrap()
}

#[test]
fn bad_input_gets_clear_errors_and_disturbs_nothing() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), KEY, &[]);
    let post = |body: &[u8]| {
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    assert!(post(b"[1,2]").error(400)["message"]
        .as_str()
        .unwrap()
        .contains("JSON object"));
    assert_eq!(
        post(br#"{"model":42,"messages":[]}"#).error(400)["param"],
        "model"
    );
    assert_eq!(post(br#"{"model":null}"#).error(400)["param"], "model");
    assert!(
        post(b"{\"model\":\"m\",\"x\":\"\xff\xfe\"}").error(400)["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
    let deep = format!(
        "{{\"model\":\"m\",\"x\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(post(deep.as_bytes()).error(400)["message"]
        .as_str()
        .unwrap()
        .contains("nested"));
    post(b"").error(400);
    // Truncated chunked body: the client stops mid-chunk and closes its write side.
    let mut s = connect(p.addr);
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{\"model\":\"m\"").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{}",
        text
    );
    // Unknown method on a proxied path.
    let r = raw(
        p.addr,
        b"BREW /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    r.error(405);
    let r = raw(
        p.addr,
        b"BREW /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    r.error(405);
    // HTTP/1.0 client, streaming: no chunked framing, body until close.
    let body = chat_body("m", "old client", true);
    let r = raw(
        p.addr,
        format!("POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", body.len(), body).as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body, echo_stream_bytes("real-m", "old client", false));
    // Pipelined keep-alive requests on one connection are answered in order.
    let b1 = chat_body("m", "first", false);
    let b2 = chat_body("m", "second", true);
    let mut s = connect(p.addr);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
        b1.len(), b1, b2.len(), b2
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let one = read_response(&mut r, false).unwrap();
    let two = read_response(&mut r, false).unwrap();
    let three = read_response(&mut r, false).unwrap();
    assert!(
        one.text().contains("\"content\":\"first\""),
        "{}",
        one.text()
    );
    assert_eq!(two.json()["object"], "list");
    assert_eq!(three.body, echo_stream_bytes("real-m", "second", false));
    // Nothing above disturbed normal traffic.
    assert_eq!(
        post_json(
            p.addr,
            "/v1/chat/completions",
            &chat_body("m", "still fine", false)
        )
        .status,
        200
    );
}

#[test]
fn oversized_heads_get_431_and_long_urls_414() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), KEY, &[]);
    let big = "x".repeat(100 * 1024);
    let r = raw(
        p.addr,
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            big
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 431);
    let many: String = (0..100)
        .map(|i| format!("X-H{}: {}\r\n", i, "y".repeat(1000)))
        .collect();
    let r = raw(
        p.addr,
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n", many).as_bytes(),
    );
    assert_eq!(r.status, 431);
    let r = raw(
        p.addr,
        format!(
            "GET /v1/models?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "z".repeat(20 * 1024)
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 414);
    assert_eq!(get(p.addr, "/v1/models").status, 200);
}

#[test]
fn http10_keep_alive_stream_ends_when_the_body_does() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), KEY, &[]);
    let body = chat_body("m", "old keep alive client", true);
    let mut s = connect(p.addr);
    let t = Instant::now();
    write!(s, "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{}", body.len(), body).unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "old keep alive client", false)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "HTTP/1.0 client waited {:?} for the close",
        t.elapsed()
    );
}

#[test]
fn paths_that_climb_out_of_the_base_url_are_refused() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config_for(&[(
        "m",
        &format!("{}/openai", a.url()),
        KEY,
        "m",
    )]));
    for path in [
        "/v1/%2e%2e/%2e%2e/admin?model=m",
        "/v1/../admin?model=m",
        "/v1/x/..%2F..%2Fadmin?model=m",
        "/v1/a\\..\\b?model=m",
    ] {
        let e = raw(
            p.addr,
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                path
            )
            .as_bytes(),
        )
        .error(400);
        assert_eq!(e["code"], "invalid_path", "{}", path);
    }
    assert!(a.requests().is_empty(), "{:?}", a.requests());
}

#[test]
fn a_bad_client_header_is_refused_without_blaming_the_backend() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), KEY, &[]);
    for _ in 0..5 {
        let e = raw(
            p.addr,
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Evil: a\x01b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", chat_body("m", "x", false).len(), chat_body("m", "x", false)).as_bytes(),
        )
        .error(400);
        assert_eq!(e["code"], "invalid_header");
    }
    let h = get(p.addr, "/health?backends=1").json();
    assert_eq!(h["backends"]["m"][0]["consecutiveFailures"], 0, "{}", h);
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
}
