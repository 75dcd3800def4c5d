//! Clients that hang up, trickle their request head or stop reading: each is dropped in
//! bounded time and its backend connection released.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, Event, MockBackend};
use support::*;

/// The backend key of model `m`; the secret scan checks it never reaches a log.
const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

fn send_stream_request(addr: std::net::SocketAddr, content: &str) -> TcpStream {
    let mut s = connect(addr);
    let body = chat_body("m", content, true);
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
fn client_hangup_closes_the_upstream_within_one_chunk_interval() {
    let interval = Duration::from_millis(300);
    let a = MockBackend::start(Behavior {
        chunk_delay: interval,
        ..Behavior::default()
    });
    let p = one_model_proxy(&a.url(), KEY, &[]);
    let s = send_stream_request(p.addr, &"word ".repeat(40));
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Read through the head and the first data chunk.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("data: ") {
            break;
        }
    }
    let hung_up = Instant::now();
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed_at = loop {
        if let Some(at) = a.events().iter().find_map(|e| match e {
            Event::ClientClosed { at, .. } => Some(*at),
            _ => None,
        }) {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "backend connection never closed: {:?}",
            a.events()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let after = closed_at.saturating_duration_since(hung_up);
    assert!(
        after <= interval + Duration::from_millis(150),
        "upstream closed {:?} after the client left",
        after
    );
    let sent = a
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ChunkSent { .. }))
        .count();
    assert!(sent < 10, "backend kept generating: {} chunks", sent);
    assert!(p
        .wait_log("outcome=client_gone", Duration::from_secs(2))
        .is_some());
}

#[test]
fn slowloris_client_is_dropped_after_the_header_bound() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(
        &a.url(),
        KEY,
        &[("CM_OPEN_WEBUI_PROXY_CLIENT_TIMEOUT_SECS", "2")],
    );
    let mut s = connect(p.addr);
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .unwrap();
    let t = Instant::now();
    let mut dropped_after = None;
    for _ in 0..20 {
        // The slowloris pace: one header line every half second, never the end of the head.
        std::thread::sleep(Duration::from_millis(500));
        if s.write_all(b"X-Slow: y\r\n").is_err() {
            dropped_after = Some(t.elapsed());
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        if let Ok(n) = n {
            dropped_after = Some(t.elapsed());
            if n > 0 {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
            }
            break;
        }
    }
    let after = dropped_after.expect("slow client never dropped");
    assert!(after < Duration::from_secs(5), "dropped after {:?}", after);
    assert_eq!(get(p.addr, "/health").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_releases_the_backend() {
    // A fast, long stream into a client that never reads: the socket buffers fill, the write
    // blocks past the bound, and the proxy gives up on the client and closes the upstream.
    let chunk = "z".repeat(16 * 1024);
    let a = MockBackend::start(Behavior {
        chunks: Some(vec![serde_json::json!({"pad": chunk}).to_string(); 2000]),
        ..Behavior::default()
    });
    let p = one_model_proxy(
        &a.url(),
        KEY,
        &[("CM_OPEN_WEBUI_PROXY_CLIENT_WRITE_TIMEOUT_SECS", "1")],
    );
    let s = send_stream_request(p.addr, "x");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a
        .events()
        .iter()
        .any(|e| matches!(e, Event::ClientClosed { .. }))
    {
        assert!(Instant::now() < deadline, "backend never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(p
        .wait_log("outcome=client_gone", Duration::from_secs(2))
        .is_some());
    drop(s);
}
