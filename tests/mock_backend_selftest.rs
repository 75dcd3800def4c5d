//! Self-test of tests/support/mock_backend.rs using raw std TCP.

#[path = "support/mock_backend.rs"]
mod mock_backend;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use mock_backend::*;
use serde_json::{json, Value};

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

fn line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    assert!(s.ends_with("\r\n"), "line not CRLF terminated: {:?}", s);
    s.truncate(s.len() - 2);
    s
}

/// Reads one response; de-chunks manually (also checking each SSE event is its own chunk).
fn read_response(r: &mut impl BufRead) -> Resp {
    let status_line = line(r);
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let l = line(r);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    if resp.header("transfer-encoding") == Some("chunked") {
        resp.chunked = true;
        loop {
            let size = usize::from_str_radix(&line(r), 16).unwrap();
            if size == 0 {
                assert_eq!(line(r), "");
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk).unwrap();
            assert_eq!(line(r), "");
            let text = String::from_utf8(chunk.clone()).unwrap();
            assert!(
                text.starts_with("data: ") && text.ends_with("\n\n"),
                "{:?}",
                text
            );
            assert_eq!(text.matches("\n\n").count(), 1, "one event per chunk");
            resp.body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = resp.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
        resp.body = body;
    }
    resp
}

fn connect(m: &MockBackend) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(m.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn post(s: &mut TcpStream, path: &str, body: &str, extra: &str) {
    write!(
        s,
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
        path,
        body.len(),
        extra,
        body
    )
    .unwrap();
}

fn chat_body(model: &str, content: &str, stream: bool) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream})
        .to_string()
}

#[test]
fn non_stream_and_stream_exact_bytes_with_keep_alive() {
    let m = MockBackend::start(Behavior::default());
    assert_eq!(m.url(), format!("http://127.0.0.1:{}", m.addr.port()));
    let (mut s, mut r) = connect(&m);

    post(
        &mut s,
        "/v1/chat/completions",
        &chat_body("gpt-x", "hello there world", false),
        "",
    );
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    assert!(!resp.chunked);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.header("x-mock-backend"),
        Some(m.addr.port().to_string().as_str())
    );
    assert_eq!(
        resp.body,
        echo_completion_bytes("gpt-x", "hello there world")
    );
    assert_eq!(
        String::from_utf8(resp.body.clone()).unwrap(),
        r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"hello there world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}"#
    );

    // Second request on the same connection: streaming.
    post(
        &mut s,
        "/v1/chat/completions",
        &chat_body("gpt-x", "hello there world", true),
        "",
    );
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    assert!(resp.chunked);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        resp.body,
        echo_stream_bytes("gpt-x", "hello there world", false)
    );
    let data = sse_data_lines(&resp.body);
    assert_eq!(data.len(), 5);
    assert_eq!(
        data[0],
        r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x","choices":[{"index":0,"delta":{"role":"assistant","content":"hello "},"finish_reason":null}]}"#
    );
    assert_eq!(
        data[2],
        r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x","choices":[{"index":0,"delta":{"content":"world"},"finish_reason":null}]}"#
    );
    assert_eq!(
        data[3],
        r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"gpt-x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
    );
    assert_eq!(data[4], "[DONE]");

    // Third request on the same connection with Connection: close -> server closes.
    write!(
        s,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(
        resp.json(),
        json!({"object":"list","data":[{"id":"mock","object":"model","created":0,"owned_by":"mock"}]})
    );
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let reqs = m.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].header("Content-Type"), Some("application/json"));
    assert_eq!(reqs[1].json().unwrap()["stream"], json!(true));
    assert_eq!(reqs[2].method, "GET");
    assert!(reqs[0].received_at <= reqs[1].received_at);

    let ev = m.events();
    assert!(matches!(ev[0], Event::StreamStarted { .. }));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::ChunkSent { .. }))
            .count(),
        5
    );
    assert!(matches!(ev.last().unwrap(), Event::StreamFinished { .. }));
}

#[test]
fn chunked_request_body_usage_chunk_and_parts() {
    let m = MockBackend::start(Behavior {
        include_usage_chunk: true,
        ..Behavior::default()
    });
    let (mut s, mut r) = connect(&m);
    let body = json!({
        "model": "m1",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "three"}]},
        ]
    })
    .to_string();
    let (a, b) = body.split_at(17);
    write!(
        s,
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{}\r\n{:X}\r\n{}\r\n0\r\nTrailer: t\r\n\r\n",
        a.len(),
        a,
        b.len(),
        b
    )
    .unwrap();
    let resp = read_response(&mut r);
    let data = sse_data_lines(&resp.body);
    assert_eq!(data.len(), 6, "{:?}", data);
    let usage: Value = serde_json::from_str(&data[4]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );
    let text: String = data[..3]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "one two three");
    let req = &m.requests()[0];
    assert_eq!(req.body, body.as_bytes());
    assert_eq!(req.path, "/v1/chat/completions?x=1");

    // Exact bytes with usage for a single-message request.
    let body = json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a b"}]})
    .to_string();
    post(&mut s, "/v1/chat/completions", &body, "");
    let resp = read_response(&mut r);
    assert_eq!(resp.body, echo_stream_bytes("m1", "a b", true));

    // include_usage_chunk off -> no usage chunk even if requested.
    m.set_behavior(Behavior::default());
    post(&mut s, "/v1/chat/completions", &body, "");
    let resp = read_response(&mut r);
    assert_eq!(resp.body, echo_stream_bytes("m1", "a b", false));

    // Empty content: role-only first chunk.
    post(
        &mut s,
        "/v1/chat/completions",
        &json!({"model":"m","stream":true,"messages":[]}).to_string(),
        "",
    );
    let resp = read_response(&mut r);
    assert_eq!(resp.body, echo_stream_bytes("m", "", false));
    assert_eq!(sse_data_lines(&resp.body).len(), 3);
    post(
        &mut s,
        "/chat/completions",
        &json!({"messages":[{"role":"user","content":"x"}]}).to_string(),
        "",
    );
    let v = read_response(&mut r).json();
    assert_eq!(v["model"], Value::Null);
    assert_eq!(v["choices"][0]["message"]["content"], "x");
}

#[test]
fn other_endpoints_status_override_and_headers() {
    let m = MockBackend::start(Behavior {
        extra_headers: vec![("X-Extra".into(), "yes".into())],
        ..Behavior::default()
    });
    let (mut s, mut r) = connect(&m);
    post(
        &mut s,
        "/v1/embeddings",
        r#"{"model":"emb","input":"hi"}"#,
        "",
    );
    let resp = read_response(&mut r);
    assert_eq!(resp.header("x-extra"), Some("yes"));
    assert_eq!(
        String::from_utf8(resp.body).unwrap(),
        r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],"model":"emb","usage":{"prompt_tokens":1,"total_tokens":1}}"#
    );

    let mp = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
    write!(
        s,
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n{}",
        mp.len(),
        mp
    )
    .unwrap();
    assert_eq!(
        read_response(&mut r).json(),
        json!({"text": "mock transcription", "model": "whisper-1"})
    );

    write!(
        s,
        "DELETE /v1/files/abc?purpose=x HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    assert_eq!(
        read_response(&mut r).json(),
        json!({"path": "/v1/files/abc?purpose=x", "method": "DELETE"})
    );

    m.set_behavior(Behavior {
        status: Some((429, r#"{"error":{"message":"slow down"}}"#.into())),
        first_byte_delay: Duration::from_millis(150),
        extra_headers: vec![("Retry-After".into(), "1".into())],
        ..Behavior::default()
    });
    let t = Instant::now();
    post(
        &mut s,
        "/v1/chat/completions",
        &chat_body("m", "hi", true),
        "",
    );
    let resp = read_response(&mut r);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"]["message"], "slow down");
    assert_eq!(m.requests().len(), 4);
}

#[test]
fn custom_chunks_and_silence() {
    let m = MockBackend::start(Behavior {
        chunks: Some(vec![r#"{"a":1}"#.into(), r#"{"b":2}"#.into()]),
        silent_before_stream: Duration::from_millis(200),
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let (mut s, mut r) = connect(&m);
    let t = Instant::now();
    post(
        &mut s,
        "/v1/chat/completions",
        &chat_body("m", "ignored", true),
        "",
    );
    let resp = read_response(&mut r);
    assert!(t.elapsed() >= Duration::from_millis(240));
    assert_eq!(
        resp.body,
        b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n"
    );
    assert_eq!(
        sse_data_lines(&resp.body),
        vec![r#"{"a":1}"#, r#"{"b":2}"#, "[DONE]"]
    );
}

#[test]
fn client_closed_mid_stream() {
    let m = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let (mut s, mut r) = connect(&m);
    post(
        &mut s,
        "/v1/chat/completions",
        &chat_body("m", "a b c d e f g h i j", true),
        "",
    );
    // Read the head and the first chunk, then hang up.
    loop {
        if line(&mut r).is_empty() {
            break;
        }
    }
    let size = usize::from_str_radix(&line(&mut r), 16).unwrap();
    let mut chunk = vec![0; size + 2];
    r.read_exact(&mut chunk).unwrap();
    drop(r);
    drop(s);
    let t = Instant::now();
    let closed = loop {
        let ev = m.events();
        if let Some(e) = ev.iter().find(|e| matches!(e, Event::ClientClosed { .. })) {
            break e.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no ClientClosed: {:?}",
            ev
        );
        thread::sleep(Duration::from_millis(10));
    };
    // Detected during the first delay, without having to wait for a failing write.
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    match closed {
        Event::ClientClosed { after_chunks, .. } => assert_eq!(after_chunks, 1),
        _ => unreachable!(),
    }
    let ev = m.events();
    assert!(!ev.iter().any(|e| matches!(e, Event::StreamFinished { .. })));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::ChunkSent { .. }))
            .count(),
        1
    );
}

#[test]
fn stop_refuses_connections() {
    let m = MockBackend::start(Behavior::default());
    let addr = m.addr;
    let (mut s, mut r) = connect(&m);
    write!(s, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    m.stop();
    assert!(TcpStream::connect(addr).is_err());
    // The idle keep-alive connection was closed too.
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn helpers() {
    assert_eq!(
        sse_data_lines(b"event: x\r\ndata: a\r\n\r\n: comment\n\ndata:b\ndata: c\n\ndata: [DONE]"),
        vec!["a", "b\nc", "[DONE]"]
    );
    assert_eq!(
        dechunk(b"3\r\nabc\r\n1;x=y\r\nd\r\n0\r\n\r\n").unwrap(),
        b"abcd"
    );
    assert!(dechunk(b"3\r\nab").is_none());
}

#[test]
fn works_with_ureq() {
    let m = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(100),
        include_usage_chunk: true,
        ..Behavior::default()
    });
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("{}/v1/chat/completions", m.url());
    let body = json!({"model": "u", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "x y"}]});
    let resp = agent.post(&url).send_string(&body.to_string()).unwrap();
    assert_eq!(
        resp.header("x-mock-backend"),
        Some(m.addr.port().to_string().as_str())
    );
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, echo_stream_bytes("u", "x y", true));

    // Pooled connection reuse, then an early drop of a stream.
    let resp = agent.post(&url).send_string(&body.to_string()).unwrap();
    let mut reader = BufReader::new(resp.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "));
    drop(reader);
    let closed_after_one = |ev: &[Event]| {
        ev.iter().any(|e| {
            matches!(
                e,
                Event::ClientClosed {
                    after_chunks: 1,
                    ..
                }
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !closed_after_one(&m.events()) {
        assert!(Instant::now() < deadline, "{:?}", m.events());
        thread::sleep(Duration::from_millis(10));
    }
    let err = agent
        .get(&format!("{}/anything", m.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let err: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(err, json!({"path": "/anything", "method": "GET"}));
}
