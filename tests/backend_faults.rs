//! Backends that never answer or cut their answer short: bounded waits, honest endings.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

/// A listener that never accepts, with a zero backlog: once its queue is full, further SYNs are
/// dropped and a connect attempt hangs, the way a blackholed backend behaves.
fn blackhole() -> (std::net::TcpListener, Vec<TcpStream>, String) {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    unsafe {
        libc::listen(l.as_raw_fd(), 0);
    }
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        match s {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (l, fill, format!("http://{}", addr))
}

#[test]
fn upstream_connect_and_idle_timeouts_bound_a_request() {
    let (_l, _fill, url) = blackhole();
    let cfg = format!(
        r#"{{"endpoints":{{"hole":{{"url":"{}","timeouts":{{"connectSecs":1}}}}}}}}"#,
        url
    );
    let p = Proxy::start(&cfg);
    let t = Instant::now();
    let e = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("hole", "x", false),
    )
    .error(504);
    assert_eq!(e["code"], "gateway_timeout");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "connect bound: {:?}",
        took
    );
    // Global idle default from the environment applies where the config sets none.
    let stall = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_secs(10),
        ..Behavior::default()
    });
    let q = Proxy::start_with(
        &config_for(&[("s", &stall.url(), "", "s")]),
        &[("CM_OPEN_WEBUI_PROXY_IDLE_TIMEOUT_SECS", "1")],
        &[],
    );
    let t = Instant::now();
    post_json(q.addr, "/v1/chat/completions", &chat_body("s", "x", false)).error(504);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

/// A backend that answers every connection with these exact bytes, then closes.
fn raw_backend(reply: &'static [u8]) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    url
}

#[test]
fn a_body_cut_short_by_the_backend_closes_the_client_connection() {
    let url = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"short\":1}");
    let p = Proxy::start(&config_for(&[("m", &url, "", "m")]));
    let mut s = connect(p.addr);
    let body = chat_body("m", "x", false);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    let t = Instant::now();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let err = read_response(&mut r, false).expect_err("a truncated body must not read as complete");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{:?}", err);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "client left waiting {:?}",
        t.elapsed()
    );
    // The connection is closed, so no later response can be misread as the rest of this body.
    let _ = write!(s, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "connection reused after a truncated body: {}",
        String::from_utf8_lossy(&rest)
    );
    // 204 carries no Content-Length.
    let url = raw_backend(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n");
    let q = Proxy::start(&config_for(&[("n", &url, "", "n")]));
    let r = request(q.addr, "DELETE", "/v1/files/x?model=n", &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
}
