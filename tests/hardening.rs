//! Issue 3: faults, overload, vanishing clients, bad input, secrets and lifecycle.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{echo_stream_bytes, Behavior, Event, MockBackend};
use support::*;

const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

fn proxy_for(a: &MockBackend, env: &[(&str, &str)]) -> Proxy {
    Proxy::start_with(&config_for(&[("m", &a.url(), KEY, "real-m")]), env, &[])
}

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
    let p = proxy_for(&a, &[]);
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
fn overload_gets_503_at_once_and_health_still_answers() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let p = proxy_for(
        &a,
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.requests().len() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
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
    let p = proxy_for(
        &a,
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

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    read_response(&mut BufReader::new(s), false).unwrap()
}

#[test]
fn bad_input_gets_clear_errors_and_disturbs_nothing() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[]);
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
fn proxy_keys_gate_requests_and_filter_models() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"proxyKeys":["mm-full-access-key-123",{{"key":"mm-limited-key-456","models":["open"]}}],"endpoints":{{"open":{{"url":"{u}","apiKey":"{k}"}},"secret":{{"url":"{u}","apiKey":"{k}"}}}}}}"#,
        u = a.url(),
        k = KEY
    );
    let p = Proxy::start_with(
        &cfg,
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", "mm-env-key-789=secret")],
        &[],
    );
    let with = |key: &str, method: &str, path: &str, body: &str| {
        let auth = format!("Bearer {}", key);
        request(
            p.addr,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let e = get(p.addr, "/v1/models").error(401);
    assert_eq!(e["code"], "invalid_api_key");
    with("wrong-key-000", "GET", "/v1/models", "").error(401);
    assert_eq!(get(p.addr, "/health").status, 200, "liveness needs no key");
    let ids = |r: Resp| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(with("mm-full-access-key-123", "GET", "/v1/models", "")),
        vec!["open", "secret"]
    );
    assert_eq!(
        ids(with("mm-limited-key-456", "GET", "/v1/models", "")),
        vec!["open"]
    );
    assert_eq!(
        ids(with("mm-env-key-789", "GET", "/models", "")),
        vec!["secret"]
    );
    assert_eq!(
        with(
            "mm-limited-key-456",
            "POST",
            "/v1/chat/completions",
            &chat_body("open", "x", false)
        )
        .status,
        200
    );
    let e = with(
        "mm-limited-key-456",
        "POST",
        "/v1/chat/completions",
        &chat_body("secret", "x", false),
    )
    .error(404);
    assert_eq!(e["code"], "model_not_found");
    with("mm-limited-key-456", "GET", "/v1/models/secret", "").error(404);
    // The client's proxy key never reaches a backend.
    for r in a.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", KEY).as_str())
        );
    }
    // Client keys set, no admin key: admin endpoints refused even with a client key.
    with("mm-full-access-key-123", "GET", "/debug", "").error(403);
    with("mm-full-access-key-123", "POST", "/reload", "").error(403);
}

#[test]
fn admin_key_protects_debug_and_reload() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-abcdef")],
        &[],
    );
    get(p.addr, "/debug").error(401);
    request(p.addr, "POST", "/reload", &[], b"").error(401);
    let auth = [("Authorization", "Bearer mm-admin-key-abcdef")];
    assert_eq!(request(p.addr, "GET", "/debug", &auth, b"").status, 200);
    assert_eq!(request(p.addr, "POST", "/reload", &auth, b"").status, 200);
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200,
        "no client keys: open"
    );
}

fn signal(p: &Proxy, sig: i32) {
    unsafe {
        libc::kill(p.pid() as i32, sig);
    }
}

#[test]
fn sighup_and_file_changes_reload_the_config() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "1")],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1100));
    p.write_config(&config_for(&[
        ("m", &a.url(), KEY, "real-m"),
        ("n", &a.url(), KEY, "real-n"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(p.addr, "/health").json()["endpoints"] != 2 {
        assert!(Instant::now() < deadline, "file change not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An invalid file keeps the old config and logs one clear line.
    p.write_config("{\"endpoints\": 7}");
    assert!(p
        .wait_log("reload failed", Duration::from_secs(5))
        .unwrap()
        .contains("endpoints"));
    assert_eq!(get(p.addr, "/health").json()["endpoints"], 2);
    // SIGHUP reloads like POST /reload (watcher off here to isolate the signal).
    let q = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "0")],
        &[],
    );
    q.write_config(&config_for(&[
        ("m", &a.url(), KEY, "real-m"),
        ("z", &a.url(), KEY, "real-z"),
    ]));
    signal(&q, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(q.addr, "/health").json()["endpoints"] != 2 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let mut p = proxy_for(&a, &[]);
    let addr = p.addr;
    let stream = std::thread::spawn(move || {
        post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("m", "one two three four five", true),
        )
    });
    while a.requests().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&p, libc::SIGTERM);
    // While the stream drains, the listener is already closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting new connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !stream.is_finished(),
        "the stream should still be running during the drain"
    );
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "one two three four five", false)
    );
    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("exited after draining");
    assert_eq!(status, Some(0));
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
}

#[test]
fn fifty_reloads_during_a_hundred_streams_break_nothing() {
    raise_fd_limit();
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    let p = proxy_for(&a, &[("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn")]);
    let addr = p.addr;
    let content = "tokens keep flowing while the config changes under us";
    let streams: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                post_json(addr, "/v1/chat/completions", &chat_body("m", content, true))
            })
        })
        .collect();
    for i in 0..50 {
        // Each generation names both models after itself; a reader must see one generation whole.
        let cfg = format!(
            r#"{{"endpoints":{{"m":{{"displayName":"gen-{i}","url":"{u}","apiKey":"{k}","actualModelName":"real-m"}},"extra-{i}":{{"displayName":"gen-{i}","url":"{u}"}}}}}}"#,
            i = i,
            u = a.url(),
            k = KEY
        );
        p.write_config(&cfg);
        let r = request(p.addr, "POST", "/reload", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let models = get(p.addr, "/v1/models").json();
        let data = models["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(
            data[0]["name"], data[1]["name"],
            "two generations mixed: {}",
            models
        );
        assert_eq!(
            data[1]["id"].as_str().unwrap().replace("extra-", "gen-"),
            data[1]["name"].as_str().unwrap()
        );
    }
    for s in streams {
        let r = s.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, echo_stream_bytes("real-m", content, false));
    }
}

#[test]
fn oversized_heads_get_431_and_long_urls_414() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[]);
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
fn slowloris_client_is_dropped_after_the_header_bound() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[("CM_OPEN_WEBUI_PROXY_CLIENT_TIMEOUT_SECS", "2")]);
    let mut s = connect(p.addr);
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .unwrap();
    let t = Instant::now();
    let mut dropped_after = None;
    for _ in 0..20 {
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
    let p = proxy_for(
        &a,
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
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Error accepting new client")),
        "the descriptor limit was never hit; the test proves nothing"
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
fn secrets_never_leave_the_proxy() {
    // Every key kind in one config, every path that could echo one: errors from dead and
    // failing backends, /debug, /health, a failed reload, access denials, debug-level logging.
    let a = MockBackend::start(Behavior {
        status: Some((500, r#"{"error":{"message":"backend broke"}}"#.into())),
        ..Behavior::default()
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = format!(
        r#"{{"proxyKeys":["mm-client-key-secret-1"],"endpoints":{{"ok":{{"url":"{u}","apiKey":"sk-endpoint-secret-2222","headers":{{"X-Gateway-Token":"gw-header-secret-3333"}}}},"dead":{{"url":"{d}","apiKey":"sk-dead-secret-4444"}},"multi":{{"backends":[{{"url":"{d}","apiKey":"sk-backend-secret-5555"}},{{"url":"{u}","apiKey":"sk-backend-secret-6666"}}]}}}}}}"#,
        u = a.url(),
        d = dead_url
    );
    let p = Proxy::start_with(
        &cfg,
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-secret-7777")],
        &[],
    );
    let client = [
        ("Authorization", "Bearer mm-client-key-secret-1"),
        ("Content-Type", "application/json"),
    ];
    let admin = [("Authorization", "Bearer mm-admin-secret-7777")];
    for model in ["ok", "dead", "multi", "ghost"] {
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &client,
            chat_body(model, "x", false).as_bytes(),
        );
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &client,
            chat_body(model, "x", true).as_bytes(),
        );
    }
    request(
        p.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong-key")],
        b"",
    );
    request(p.addr, "GET", "/debug", &admin, b"");
    request(p.addr, "GET", "/debug", &client, b"");
    get(p.addr, "/health?backends=1");
    get(p.addr, "/metrics");
    p.write_config(&cfg.replace("\"endpoints\"", "\"endpoints\":{},\"x\""));
    request(p.addr, "POST", "/reload", &admin, b"");
    std::thread::sleep(Duration::from_millis(200));
    p.assert_no_secret_logged(&[
        "sk-endpoint-secret-2222",
        "gw-header-secret-3333",
        "sk-dead-secret-4444",
        "sk-backend-secret-5555",
        "sk-backend-secret-6666",
        "mm-client-key-secret-1",
        "mm-admin-secret-7777",
    ]);
    // The backends did get their keys: the scan above is not vacuous.
    assert!(a
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer sk-endpoint-secret-2222")));
    assert!(a
        .requests()
        .iter()
        .any(|r| r.header("x-gateway-token") == Some("gw-header-secret-3333")));
}

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

#[test]
fn http10_keep_alive_stream_ends_when_the_body_does() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[]);
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
fn a_restricted_key_cannot_smuggle_another_model_in_the_body() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"proxyKeys":[{{"key":"mm-restricted-key-1","models":["cheap"]}}],"endpoints":{{"cheap":{{"url":"{u}","actualModelName":"cheap-real"}},"pricey":{{"url":"{u}","actualModelName":"pricey-real"}}}}}}"#,
        u = a.url()
    );
    let p = Proxy::start(&cfg);
    let auth = ("Authorization", "Bearer mm-restricted-key-1");
    let r = request(
        p.addr,
        "POST",
        "/v1/completions",
        &[
            auth,
            ("X-Model-Id", "cheap"),
            ("Content-Type", "application/vnd.api+json"),
        ],
        br#"{"model":"pricey-real","prompt":"x"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.requests()[0].json().unwrap()["model"],
        "cheap-real",
        "the body's model is rewritten"
    );
    let deep = format!(
        "{{\"model\":\"pricey-real\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    request(
        p.addr,
        "POST",
        "/v1/completions",
        &[
            auth,
            ("X-Model-Id", "cheap"),
            ("Content-Type", "application/json"),
        ],
        deep.as_bytes(),
    )
    .error(400);
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn health_is_not_stalled_by_requests_with_unsent_bodies() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[]);
    let _stallers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(p.addr);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(p.addr, "/health").status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "health stalled {:?}",
        t.elapsed()
    );
}

#[test]
fn a_bad_client_header_is_refused_without_blaming_the_backend() {
    let a = MockBackend::start(Behavior::default());
    let p = proxy_for(&a, &[]);
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
