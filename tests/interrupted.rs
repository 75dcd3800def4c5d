//! The proxy stopped and continued (SIGSTOP, then SIGCONT: Ctrl-Z and `fg`, an operator's
//! `kill -STOP`/`-CONT`, a debugger or `strace -p` attaching). Linux then makes a blocking
//! receive or send on a socket with SO_RCVTIMEO/SO_SNDTIMEO fail with EINTR (signal(7)); every
//! connection, request and stream in flight must carry on as if nothing happened.

mod support;

use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::fake_backend::{chunk, FakeBackend, Step};
use support::mock_backend::{echo_completion_bytes, Behavior, MockBackend};
use support::redis::RedisServer;
use support::*;

const KEY: &str = "sk-interrupted-key-4c3b2a1f";
const CLIENT_KEY: &str = "mm-interrupted-client-7d6e";

/// The process state letter in /proc/PID/stat ('T' while stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    // The command name (in parentheses) may hold spaces: the state follows its closing one.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

/// Stops the proxy, keeps it stopped for 200 ms, continues it, and waits until it runs again.
fn stop_and_continue(p: &Proxy) {
    let pid = p.pid();
    unsafe {
        libc::kill(pid as i32, libc::SIGSTOP);
    }
    wait_until("the proxy to be stopped", Duration::from_secs(5), || {
        state(pid) == 'T'
    });
    std::thread::sleep(Duration::from_millis(200));
    unsafe {
        libc::kill(pid as i32, libc::SIGCONT);
    }
    wait_until("the proxy to run again", Duration::from_secs(5), || {
        state(pid) != 'T'
    });
}

/// A proxy serving model `m` (backend model `real-m`) with a usage ledger in `dir`.
fn proxy_with_ledger(backend: &str, dir: &TempDir) -> Proxy {
    Proxy::start_with(
        &format!(
            r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}","actualModelName":"real-m"}}}},
                "usageLog":"{}"}}"#,
            backend,
            KEY,
            dir.0.join("usage.jsonl").display()
        ),
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    )
}

/// The ledger's lines once there are at least `n`.
fn ledger_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_until("the ledger lines", Duration::from_secs(5), || {
        ledger(path).len() >= n
    });
    ledger(path)
}

/// A keep-alive chat completion request (no `Connection: close`).
fn chat_request(content: &str, stream: bool) -> Vec<u8> {
    let body = chat_body("m", content, stream);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{}",
        CLIENT_KEY,
        body.len(),
        body
    )
    .into_bytes()
}

#[test]
fn an_idle_keep_alive_connection_serves_its_next_request_after_a_stop() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy_with_ledger(&a.url(), &dir);
    let mut s = connect(p.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(&chat_request("before the stop", false))
        .unwrap();
    let first = read_response(&mut r, false).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.body,
        echo_completion_bytes("real-m", "before the stop")
    );
    // The connection's thread is back in its blocking read of the next request head.
    std::thread::sleep(Duration::from_millis(100));
    stop_and_continue(&p);
    s.write_all(&chat_request("after the stop", false)).unwrap();
    let second = read_response(&mut r, false).expect("the same connection answers again");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.body,
        echo_completion_bytes("real-m", "after the stop")
    );
    // New connections are still accepted as well.
    let fresh = post_json_with_key(&p, "a new connection");
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_eq!(
        fresh.body,
        echo_completion_bytes("real-m", "a new connection")
    );
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 3);
    let outcomes: Vec<&Value> = lines.iter().map(|l| &l["outcome"]).collect();
    assert_eq!(outcomes, [&json!("complete"); 3]);
}

fn post_json_with_key(p: &Proxy, content: &str) -> Resp {
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {}", CLIENT_KEY)),
        ],
        chat_body("m", content, false).as_bytes(),
    )
}

/// SSE events of a chat completion stream: `words` content deltas, a finish, a usage chunk
/// (`completion_tokens` = `words`) and `[DONE]`.
fn sse_events(words: usize) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-i", "object": "chat.completion.chunk", "created": 1, "model": "real-m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = (0..words)
        .map(|i| chunk(json!({"content": format!("w{} ", i)}), Value::Null))
        .collect();
    events.push(chunk(json!({}), json!("stop")));
    events.push(
        json!({"id": "chatcmpl-i", "object": "chat.completion.chunk", "created": 1,
        "model": "real-m", "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": words, "total_tokens": 7 + words}}),
    );
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {}\n\n", e)).collect();
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// A backend streaming `sse_events(words)` with a pause inside every HTTP chunk, between its
/// data and its closing CRLF: a stop of the proxy lands while it waits for those two bytes.
fn split_chunk_backend(words: usize) -> FakeBackend {
    FakeBackend::start(move |_| {
        let mut steps = vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        )];
        for e in sse_events(words) {
            let whole = chunk(e.as_bytes());
            let (data, crlf) = whole.split_at(whole.len() - 2);
            steps.push(Step::Send(data.to_vec()));
            steps.push(Step::Pause(Duration::from_millis(60)));
            steps.push(Step::Send(crlf.to_vec()));
        }
        steps.push(Step::Send(b"0\r\n\r\n".to_vec()));
        steps
    })
}

/// Counts the bytes read through it, so that a test can act once a stream has begun.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicUsize>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

/// Sends `request`, stops and continues the proxy once the first bytes of the answer have
/// arrived (when `stop` is set), and returns the whole answer.
fn answer_with_stop(p: &Proxy, request: &[u8], stop: bool) -> Resp {
    let mut s = connect(p.addr);
    s.write_all(request).unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        inner: s,
        read: Arc::clone(&read),
    };
    let reader = std::thread::spawn(move || read_response(&mut BufReader::new(counting), false));
    if stop {
        wait_until("the stream to begin", Duration::from_secs(10), || {
            read.load(Ordering::SeqCst) > 0
        });
        stop_and_continue(p);
    }
    reader.join().unwrap().expect("the whole answer")
}

#[test]
fn a_stream_in_flight_delivers_every_event_once_across_a_stop() {
    let backend = split_chunk_backend(8);
    let dir = TempDir::new();
    let p = proxy_with_ledger(&backend.url, &dir);
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count to eight"}]})
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{}",
        CLIENT_KEY,
        body.len(),
        body
    );
    let r = answer_with_stop(&p, request.as_bytes(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), sse_events(8).concat());
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(
        (
            &l["outcome"],
            &l["prompt_tokens"],
            &l["completion_tokens"],
            &l["estimated"]
        ),
        (&json!("complete"), &json!(7), &json!(8), &json!(false)),
        "{}",
        l
    );
}

#[test]
fn a_request_body_sent_in_two_parts_around_a_stop_is_answered() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy_with_ledger(&a.url(), &dir);
    let request = chat_request("split across a stop", false);
    let mut s = connect(p.addr);
    let half = request.len() - 20;
    s.write_all(&request[..half]).unwrap();
    // The connection's thread is now blocked reading the rest of the body.
    std::thread::sleep(Duration::from_millis(100));
    stop_and_continue(&p);
    s.write_all(&request[half..]).unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.body,
        echo_completion_bytes("real-m", "split across a stop")
    );
}

#[test]
fn a_backend_answer_delayed_across_a_stop_is_relayed() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(600),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy_with_ledger(&a.url(), &dir);
    let mut s = connect(p.addr);
    s.write_all(&chat_request("slow to answer", false)).unwrap();
    wait_until("the request at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    stop_and_continue(&p);
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, echo_completion_bytes("real-m", "slow to answer"));
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(lines[0]["outcome"], "complete", "{}", lines[0]);
}

/// An Anthropic Messages stream translated from a chat completions stream, as the client sees
/// it, with the message id (new for every request) blanked.
fn messages_stream(p: &Proxy, stop: bool) -> Vec<(String, Value)> {
    let body = json!({"model": "m", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "count to six"}]})
    .to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         x-api-key: {}\r\nanthropic-version: 2023-06-01\r\nContent-Length: {}\r\n\r\n{}",
        CLIENT_KEY,
        body.len(),
        body
    );
    let r = answer_with_stop(p, request.as_bytes(), stop);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an Anthropic event: {:?}", e));
            let mut data: Value = serde_json::from_str(data).expect("data is JSON");
            if let Some(id) = data.pointer_mut("/message/id") {
                *id = Value::Null;
            }
            (name.to_string(), data)
        })
        .collect()
}

#[test]
fn a_translated_messages_stream_is_whole_across_a_stop() {
    let backend = split_chunk_backend(6);
    let dir = TempDir::new();
    let p = proxy_with_ledger(&backend.url, &dir);
    let undisturbed = messages_stream(&p, false);
    assert_eq!(
        undisturbed.last().map(|e| e.0.as_str()),
        Some("message_stop")
    );
    let text: String = undisturbed
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 w5 ");
    let stopped = messages_stream(&p, true);
    assert_eq!(stopped, undisturbed);
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 2);
    for l in &lines {
        assert_eq!(
            (&l["outcome"], &l["completion_tokens"]),
            (&json!("complete"), &json!(6)),
            "{}",
            l
        );
    }
}

fn metric(p: &Proxy, series: &str) -> Option<f64> {
    get(p.addr, "/metrics").text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn a_limits_check_waiting_on_redis_across_a_stop_is_not_a_store_failure() {
    let redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(
        &json!({
            "endpoints": {"m": {"url": a.url(), "apiKey": KEY, "actualModelName": "real-m",
                                "defaultMaxTokens": 1}},
            "limitsStore": redis.url(),
            "limitsStoreTimeoutMs": 3000,
            "limitsStoreFailure": "closed",
            "limitsStoreRetrySecs": 30,
            "limits": [{"match": {"user": "*"}, "requestsPerMinute": 3}],
        })
        .to_string(),
    );
    let addr = p.addr;
    let chat = move || {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "user": "ada"});
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    room_in_this_minute(20);
    let first = chat();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("2"));
    wait_until("the first request settled", Duration::from_secs(5), || {
        metric(&p, "modelmux_in_flight_requests") == Some(0.0)
    });
    // Redis holds its reply while the proxy is stopped and continued: the proxy is blocked
    // receiving it at that moment.
    redis.pause();
    let second = std::thread::spawn(chat);
    std::thread::sleep(Duration::from_millis(300));
    stop_and_continue(&p);
    redis.resume();
    let second = second.join().unwrap();
    for l in p
        .logs()
        .iter()
        .filter(|l| l.contains("redis") || l.contains("limits"))
    {
        eprintln!("LOG {}", l);
    }
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.header("x-ratelimit-remaining-requests"),
        Some("1"),
        "counted once"
    );
    assert_eq!(
        metric(&p, "modelmux_limits_store_failures_total"),
        Some(0.0)
    );
    assert_eq!(metric(&p, "modelmux_limits_store_breaker_open"), Some(0.0));
}
