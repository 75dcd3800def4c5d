//! A request whose client hangs up while it waits for a capped backend (`maxConcurrent`) leaves
//! the queue: the backend never sees it, and the requests behind it do not wait for it.

mod support;

use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{echo_completion_bytes, Behavior, MockBackend};
use support::*;

fn queue_depth(p: &Proxy) -> f64 {
    let text = get(p.addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("modelmux_backend_queue_depth{model=\"m\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue depth in /metrics:\n{}", text))
}

/// Sends a whole chat request on a new connection and returns the still open connection.
fn send_chat(p: &Proxy, content: &str) -> TcpStream {
    let body = chat_body("m", content, false);
    let mut s = connect(p.addr);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    s
}

#[test]
fn requests_whose_clients_hung_up_in_the_queue_never_reach_the_backend() {
    const SLOW: Duration = Duration::from_secs(2);
    const GONE: usize = 8;
    let a = MockBackend::start(Behavior {
        first_byte_delay: SLOW,
        ..Behavior::default()
    });
    let p = Proxy::start(
        &json!({"endpoints": {"m": {"url": a.url(), "actualModelName": "real-m",
            "maxConcurrent": 1, "maxQueueWaitSecs": 60}}})
        .to_string(),
    );
    let addr = p.addr;
    let first = std::thread::spawn(move || {
        post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("m", "first", false),
        )
    });
    wait_until(
        "the first request at the backend",
        Duration::from_secs(5),
        || a.requests().len() == 1,
    );
    let gone: Vec<TcpStream> = (0..GONE)
        .map(|i| send_chat(&p, &format!("abandoned{}", i)))
        .collect();
    wait_until(
        "every abandoned request queued",
        Duration::from_secs(5),
        || queue_depth(&p) == GONE as f64,
    );
    drop(gone);
    // They leave the queue while the slot is still taken, not when their turn comes.
    wait_until(
        "the queue emptied by the hang-ups",
        Duration::from_millis(1500),
        || queue_depth(&p) == 0.0,
    );
    let sent = Instant::now();
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("m", "next", false),
    );
    let took = sent.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, echo_completion_bytes("real-m", "next"));
    assert_eq!(first.join().unwrap().status, 200);
    // The first request's rest plus its own time, not eight more slow answers before it.
    assert!(
        took < SLOW * 2 + Duration::from_millis(1500),
        "the next request took {:?}",
        took
    );
    let seen: Vec<String> = a
        .requests()
        .iter()
        .map(|r| {
            r.json().unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(seen, ["first", "next"]);
    p.wait_logs("the hang-ups logged", Duration::from_secs(5), |logs| {
        logs.iter()
            .filter(|l| l.contains("status=499") && l.contains("outcome=client_gone"))
            .count()
            == GONE
    });
}
