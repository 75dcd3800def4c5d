//! Capacity: a full pool answers 503 at once, `/health` keeps answering, a thousand streams
//! each get their bytes, and running out of descriptors is survived.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{echo_stream_bytes, Behavior, MockBackend};
use support::*;

/// The backend key of model `m`; the secret scan checks it never reaches a log.
const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

#[test]
fn overload_gets_503_at_once_and_health_still_answers() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let p = one_model_proxy(
        &a.url(),
        KEY,
        &[
            ("CM_OPEN_WEBUI_PROXY_WORKERS", "2"),
            ("CM_OPEN_WEBUI_PROXY_QUEUE", "1"),
        ],
    );
    let addr = p.addr;
    // Two streams take both workers, a third waits in the queue.
    let streams: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                post_json(
                    addr,
                    "/v1/chat/completions",
                    &chat_body("m", "a b c d", true),
                )
            })
        })
        .collect();
    wait_until("two streams at the backend", Duration::from_secs(5), || {
        a.requests().len() >= 2
    });
    wait_until(
        "the third request in the queue",
        Duration::from_secs(5),
        || {
            get(p.addr, "/metrics")
                .text()
                .lines()
                .any(|l| l == "modelmux_queue_depth 1")
        },
    );
    let t = Instant::now();
    let h = get(p.addr, "/health");
    assert_eq!(h.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "health took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false));
    let e = r.error(503);
    assert_eq!(e["code"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "503 took {:?}",
        t.elapsed()
    );
    for s in streams {
        let r = s.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, echo_stream_bytes("real-m", "a b c d", false));
    }
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
}

#[test]
fn a_thousand_concurrent_streams_each_get_their_exact_bytes() {
    raise_fd_limit();
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let p = one_model_proxy(
        &a.url(),
        KEY,
        &[
            ("CM_OPEN_WEBUI_PROXY_WORKERS", "1100"),
            ("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn"),
        ],
    );
    let addr = p.addr;
    let clients: Vec<_> = (0..1000)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let content = format!("client {} says hello to the proxy", i);
                    let r = post_json(
                        addr,
                        "/v1/chat/completions",
                        &chat_body("m", &content, true),
                    );
                    let same = r.body == echo_stream_bytes("real-m", &content, false);
                    (
                        r.status,
                        same,
                        r.text().chars().take(300).collect::<String>(),
                    )
                })
                .unwrap()
        })
        .collect();
    let results: Vec<(u16, bool, String)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = results
        .iter()
        .filter(|(s, same, _)| *s == 200 && *same)
        .count();
    let bad: Vec<_> = results
        .iter()
        .filter(|(s, same, _)| *s != 200 || !*same)
        .take(5)
        .collect();
    if ok != 1000 {
        for l in p
            .logs()
            .iter()
            .filter(|l| {
                l.contains("panick")
                    || l.contains("status=500")
                    || l.contains("ERROR")
                    || l.contains("WARN")
            })
            .take(10)
        {
            eprintln!("proxy: {}", l);
        }
    }
    assert_eq!(ok, 1000, "failures: {:?}", bad);
}

#[test]
fn exhausted_descriptors_recover_when_connections_close() {
    raise_fd_limit();
    let a = MockBackend::start(Behavior::default());
    let cfg = config_for(&[("m", &a.url(), KEY, "real-m")]);
    let dir = TempDir::new();
    let path = dir.0.join("config.json");
    std::fs::write(&path, &cfg).unwrap();
    // A low hard limit so that a few dozen idle connections exhaust it; the proxy cannot raise it.
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_modelmux"))
        .args(["--host", "127.0.0.1", "--port", "0", "--config"])
        .arg(&path)
        .env("CM_OPEN_WEBUI_PROXY_WORKERS", "8")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs modelmux");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr: std::net::SocketAddr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "proxy exited");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let mut idle = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(addr) {
            idle.push(s);
        }
    }
    wait_until(
        "the descriptor limit to be hit (else the test proves nothing)",
        Duration::from_secs(5),
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("Error accepting new client"))
        },
    );
    drop(idle);
    // Served again once descriptors are free, without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = std::panic::catch_unwind(|| get(addr, "/health").status == 200).unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy stopped accepting for good"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        post_json(addr, "/v1/chat/completions", &chat_body("m", "back", false)).status,
        200
    );
    assert!(child.try_wait().unwrap().is_none(), "proxy must stay up");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn health_is_not_stalled_by_requests_with_unsent_bodies() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), KEY, &[]);
    let _stallers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(p.addr);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Every staller's head has been read and answered (its access log line is out) while its
    // body never comes; only then is the probe below meaningful.
    p.wait_logs(
        "the eight stalled /health requests answered",
        Duration::from_secs(5),
        |logs| logs.iter().filter(|l| l.contains("GET /health")).count() >= 8,
    );
    let t = Instant::now();
    assert_eq!(get(p.addr, "/health").status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "health stalled {:?}",
        t.elapsed()
    );
}
