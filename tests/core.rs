//! Issue 2: the seed's behaviour through the real HTTP surface.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};
use support::mock_backend::{echo_completion_bytes, echo_stream_bytes, Behavior, MockBackend};
use support::*;

const KEY_A: &str = "sk-alpha-0123456789abcdef";
const KEY_B: &str = "sk-bravo-fedcba9876543210";

fn two_backends() -> (MockBackend, MockBackend, Proxy) {
    let a = MockBackend::start(Behavior::default());
    let b = MockBackend::start(Behavior::default());
    let cfg = config_for(&[
        ("alpha", &a.url(), KEY_A, "real-alpha"),
        ("bravo", &format!("{}/v1", b.url()), KEY_B, "real-bravo"),
    ]);
    let p = Proxy::start(&cfg);
    (a, b, p)
}

#[test]
fn routes_each_model_to_its_backend_with_its_key_and_real_name() {
    let (a, b, p) = two_backends();
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("alpha", "hello there", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, echo_completion_bytes("real-alpha", "hello there"));
    let r = post_json(
        p.addr,
        "/chat/completions",
        &chat_body("bravo", "hi", false),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, echo_completion_bytes("real-bravo", "hi"));

    let ra = a.requests();
    let rb = b.requests();
    assert_eq!(ra.len(), 1);
    assert_eq!(rb.len(), 1);
    assert_eq!(ra[0].path, "/v1/chat/completions");
    assert_eq!(
        rb[0].path, "/v1/chat/completions",
        "a url ending in /v1 gets no second /v1"
    );
    assert_eq!(
        ra[0].header("authorization"),
        Some(format!("Bearer {}", KEY_A).as_str())
    );
    assert_eq!(
        rb[0].header("authorization"),
        Some(format!("Bearer {}", KEY_B).as_str())
    );
    assert_eq!(ra[0].json().unwrap()["model"], "real-alpha");
    for rec in ra.iter().chain(rb.iter()) {
        let all = format!("{:?}", rec.headers);
        assert!(
            !all.contains("client-token-XYZ"),
            "client auth reached a backend: {}",
            all
        );
    }
}

#[test]
fn body_fields_pass_through_byte_for_byte_in_order() {
    let (a, _b, p) = two_backends();
    let body = r#"{"temperature":0.70,"model":"alpha","messages":[{"role":"user","content":"x y"}],"max_tokens":1e2,"zzz":{"b":1,"a":2}}"#;
    let r = post_json(p.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200);
    let sent = String::from_utf8(a.requests()[0].body.clone()).unwrap();
    assert_eq!(
        sent,
        body.replace(r#""model":"alpha""#, r#""model":"real-alpha""#)
    );
    assert_eq!(
        a.requests()[0].header("content-length"),
        Some(sent.len().to_string().as_str())
    );
}

#[test]
fn no_api_key_means_no_authorization_upstream() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&format!(
        r#"{{"endpoints":{{"m":{{"url":"{}"}}}}}}"#,
        a.url()
    ));
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
    assert_eq!(r.status, 200);
    let rec = &a.requests()[0];
    assert_eq!(rec.header("authorization"), None);
    assert_eq!(
        rec.json().unwrap()["model"],
        "m",
        "actualModelName defaults to the id"
    );
}

#[test]
fn streaming_is_live_and_byte_exact() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let p = Proxy::start(&config_for(&[("s", &a.url(), KEY_A, "real-s")]));
    let mut s = connect(p.addr);
    let body = chat_body("s", "one two three", true);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    let mut r = BufReader::new(s);
    // Head.
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l == "\r\n" {
            break;
        }
        head.push(l.trim_end().to_ascii_lowercase());
    }
    assert!(head[0].starts_with("http/1.1 200"), "{:?}", head);
    assert!(
        head.contains(&"transfer-encoding: chunked".to_string()),
        "{:?}",
        head
    );
    assert!(
        head.contains(&"content-type: text/event-stream".to_string()),
        "{:?}",
        head
    );
    assert!(
        head.contains(&"cache-control: no-cache".to_string()),
        "{:?}",
        head
    );
    assert!(
        head.contains(&"x-accel-buffering: no".to_string()),
        "{:?}",
        head
    );
    // Each chunk must arrive before the backend sends the next one.
    let mut received = Vec::new();
    let mut arrivals = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        let mut c = vec![0; n + 2];
        r.read_exact(&mut c).unwrap();
        received.extend_from_slice(&c[..n]);
        arrivals.push(Instant::now());
    }
    assert_eq!(
        received,
        echo_stream_bytes("real-s", "one two three", false)
    );
    let sent: Vec<Instant> = a
        .events()
        .iter()
        .filter_map(|e| match e {
            support::mock_backend::Event::ChunkSent { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    assert!(sent.len() >= 3);
    assert!(arrivals.len() >= 2);
    assert!(
        arrivals[0] < sent[1],
        "chunk 1 reached the client only after the backend sent chunk 2"
    );
}

#[test]
fn v1_and_bare_paths_and_models_list() {
    let (_a, _b, p) = two_backends();
    for path in ["/models", "/v1/models", "//v1//models"] {
        let r = get(p.addr, path);
        assert_eq!(r.status, 200, "{}", path);
        let v = r.json();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["id"], "alpha");
        assert_eq!(data[0]["object"], "model");
        assert_eq!(data[0]["name"], "alpha (display)");
        assert_eq!(data[0]["owned_by"], "alpha (display)");
        assert!(data[0]["created"].is_u64());
    }
    let r = get(p.addr, "/v1/models/bravo");
    assert_eq!(r.json()["id"], "bravo");
    let e = get(p.addr, "/v1/models/nope").error(404);
    assert_eq!(e["code"], "model_not_found");
}

#[test]
fn passthrough_embeddings_and_multipart_route_by_model() {
    let (a, b, p) = two_backends();
    let r = post_json(p.addr, "/v1/embeddings", r#"{"model":"bravo","input":"x"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "real-bravo");
    assert_eq!(b.requests()[0].path, "/v1/embeddings");
    assert_eq!(
        b.requests()[0].header("authorization"),
        Some(format!("Bearer {}", KEY_B).as_str())
    );

    let boundary = "XyZbOuNdArY";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....WAVE\r\n--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nalpha\r\n--{b}--\r\n",
        b = boundary
    );
    let ct = format!("multipart/form-data; boundary={}", boundary);
    let r = request(
        p.addr,
        "POST",
        "/audio/transcriptions",
        &[("Content-Type", &ct)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["model"],
        "real-alpha",
        "multipart model field rewritten to the real name"
    );
    let rec = a
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/audio/transcriptions")
        .unwrap();
    assert!(String::from_utf8_lossy(&rec.body).contains("RIFF....WAVE"));
    assert_eq!(
        rec.header("content-length"),
        Some(rec.body.len().to_string().as_str())
    );
}

#[test]
fn proxy_errors_have_openai_shape_and_status() {
    let (_a, _b, p) = two_backends();
    let e = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("ghost", "x", false),
    )
    .error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    assert!(
        !e["message"].as_str().unwrap().contains("alpha"),
        "must not list configured models"
    );
    post_json(p.addr, "/v1/chat/completions", "{not json").error(400);
    let e = post_json(p.addr, "/v1/chat/completions", r#"{"messages":[]}"#).error(400);
    assert_eq!(e["param"], "model");
    post_json(p.addr, "/v1/embeddings", r#"{"input":"no model"}"#).error(400);
    let e = request(p.addr, "GET", "/v1/chat/completions", &[], b"").error(405);
    assert!(e["message"].as_str().unwrap().contains("POST"));
    let r = request(p.addr, "DELETE", "/v1/models", &[], b"");
    r.error(405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn body_over_limit_is_413() {
    let (_a, _b, p0) = two_backends();
    drop(p0);
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("alpha", &a.url(), KEY_A, "real")]),
        &[("CM_OPEN_WEBUI_PROXY_MAX_BODY_BYTES", "1000")],
        &[],
    );
    let big = chat_body("alpha", &"w ".repeat(1000), false);
    post_json(p.addr, "/v1/chat/completions", &big).error(413);
    // A declared length far beyond the limit is refused without reading it.
    let mut s = connect(p.addr);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{{"
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    r.error(413);
    // The server will not read that body, so it must tell the client not to reuse the connection.
    assert_eq!(r.header("connection"), Some("close"));
    assert!(a.requests().is_empty());
    // The proxy is still fine.
    assert_eq!(
        post_json(
            p.addr,
            "/v1/chat/completions",
            &chat_body("alpha", "ok", false)
        )
        .status,
        200
    );
}

#[test]
fn backend_errors_pass_through_and_failures_map_to_502_504() {
    let a = MockBackend::start(Behavior {
        status: Some((
            429,
            r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into(),
        )),
        extra_headers: vec![("Retry-After".into(), "7".into())],
        ..Behavior::default()
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let stall = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_secs(5),
        ..Behavior::default()
    });
    let cfg = format!(
        r#"{{"endpoints":{{"limited":{{"url":"{}","apiKey":"{}"}},"dead":{{"url":"{}","apiKey":"{}"}},"slow":{{"url":"{}","timeouts":{{"idleSecs":1}}}}}}}}"#,
        a.url(),
        KEY_A,
        dead_url,
        KEY_B,
        stall.url()
    );
    let p = Proxy::start(&cfg);
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("limited", "x", true),
    );
    assert_eq!(
        r.status, 429,
        "a backend error status reaches the client even for a stream request"
    );
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"slow down","type":"rate_limit"}}"#
    );
    assert_eq!(r.header("retry-after"), Some("7"));
    let e = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("dead", "x", false),
    )
    .error(502);
    assert!(!e["message"].as_str().unwrap().contains(KEY_B));
    let t = Instant::now();
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("slow", "x", false),
    )
    .error(504);
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
fn reload_adds_models_keeps_old_on_error_and_spares_streams() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let p = Proxy::start(&config_for(&[("one", &a.url(), KEY_A, "real-one")]));
    // A stream that spans the reloads.
    let addr = p.addr;
    let streaming = std::thread::spawn(move || {
        post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("one", "a b c d e f g h", true),
        )
    });
    wait_until("the stream at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    p.write_config(&config_for(&[
        ("one", &a.url(), KEY_A, "real-one"),
        ("two", &a.url(), KEY_A, "real-two"),
    ]));
    let r = request(p.addr, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["endpoints"], 2);
    assert_eq!(
        get(p.addr, "/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        post_json(
            p.addr,
            "/v1/chat/completions",
            &chat_body("two", "hi", false)
        )
        .status,
        200
    );

    p.write_config("{ this is not json");
    let e = request(p.addr, "POST", "/reload", &[], b"").error(400);
    assert!(
        e["message"].as_str().unwrap().contains("config.json"),
        "{}",
        e
    );
    assert_eq!(
        get(p.addr, "/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "old config kept"
    );

    let r = streaming.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        echo_stream_bytes("real-one", "a b c d e f g h", false)
    );
}

/// Issue 23: a backend's URL and key are built once per config load and swapped with it. A
/// reload that moves the backend and changes its key mid-traffic: every request reaches the
/// URL of one generation with that generation's key, and the first request after the reload
/// goes to the new URL with the new key.
#[test]
fn reload_swaps_a_backends_url_and_key_together_mid_traffic() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let a = MockBackend::start(Behavior::default());
    let b = MockBackend::start(Behavior::default());
    // Even generations on A, odd ones on B, each with its own key.
    let key = |g: usize| format!("sk-generation-{:02}-secret", g);
    let config = |g: usize| {
        let url = if g.is_multiple_of(2) {
            a.url()
        } else {
            b.url()
        };
        config_for(&[("m", &url, &key(g), "real-m")])
    };
    let p = Proxy::start_with(
        &config(0),
        &[("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn")],
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let addr = p.addr;
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = post_json(addr, "/v1/chat/completions", &chat_body("m", "x", false));
                    assert_eq!(r.status, 200, "{}", r.text());
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    const GENERATIONS: usize = 12;
    for g in 1..=GENERATIONS {
        std::thread::sleep(Duration::from_millis(30));
        p.write_config(&config(g));
        let r = request(p.addr, "POST", "/reload", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let probe = format!("first after reload {}", g);
        let r = post_json(
            p.addr,
            "/v1/chat/completions",
            &chat_body("m", &probe, false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let (now, before) = if g.is_multiple_of(2) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let seen = |m: &MockBackend| {
            m.requests()
                .into_iter()
                .find(|q| String::from_utf8_lossy(&q.body).contains(&probe))
        };
        assert!(seen(before).is_none(), "generation {}: old URL asked", g);
        let q = seen(now).unwrap_or_else(|| panic!("generation {}: new URL not asked", g));
        assert_eq!(
            q.header("authorization"),
            Some(format!("Bearer {}", key(g)).as_str()),
            "generation {}: the new URL got another key",
            g
        );
    }
    stop.store(true, Ordering::SeqCst);
    let sent: usize = traffic.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        sent >= GENERATIONS,
        "too little traffic to mean anything: {}",
        sent
    );
    // No request paired one generation's URL with another's key.
    for (m, parity) in [(&a, 0), (&b, 1)] {
        for q in m.requests() {
            let auth = q.header("authorization").unwrap_or("");
            let g: usize = auth
                .strip_prefix("Bearer sk-generation-")
                .and_then(|r| r.get(..2))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected key header {:?}", auth));
            assert_eq!(
                g % 2,
                parity,
                "generation {}'s key sent to the other URL",
                g
            );
        }
    }
}

#[test]
fn health_and_debug_never_show_keys() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"endpoints":{{"long":{{"url":"{u}","apiKey":"{k}"}},"short":{{"url":"{u}","apiKey":"sk-short"}},"none":{{"url":"{u}"}}}}}}"#,
        u = a.url(),
        k = KEY_A
    );
    let p = Proxy::start(&cfg);
    let h = get(p.addr, "/health");
    assert_eq!(h.status, 200);
    let v = h.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["endpoints"], 3);
    assert_eq!(v["models"][0]["id"], "long");
    assert_eq!(v["models"][0]["displayName"], "long");
    let d = get(p.addr, "/debug");
    assert_eq!(d.status, 200);
    let text = d.text();
    assert!(
        !text.contains(KEY_A) && !text.contains("sk-short") && !text.contains("0123456789"),
        "{}",
        text
    );
    let v = d.json();
    assert_eq!(v["endpoints"]["long"]["apiKey"], "****cdef");
    assert_eq!(v["endpoints"]["short"]["apiKey"], "****");
    assert_eq!(v["endpoints"]["none"]["apiKey"], "");
    assert!(v["configPath"].as_str().unwrap().ends_with("config.json"));
    assert!(v["version"].is_string() && v["loadedAt"].is_u64());
    // Exercise the proxy path so the log holds request lines too, then scan it.
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("long", "x", true),
    );
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("long", "x", false),
    );
    assert!(p.wait_log("model=long", Duration::from_secs(2)).is_some());
    p.assert_no_secret_logged(&["sk-short", "client-token-XYZ"]);
}

#[test]
fn access_log_line_has_the_fields() {
    let (_a, _b, p) = two_backends();
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("alpha", "secret prompt words", false),
    );
    let line = p
        .wait_log("model=alpha", Duration::from_secs(2))
        .expect("access log line");
    for field in [
        "POST",
        "/chat/completions",
        "backend=127.0.0.1:",
        "status=200",
        "duration_ms=",
        "ttfb_ms=",
        "bytes=",
    ] {
        assert!(line.contains(field), "{} missing in {}", field, line);
    }
    assert!(
        p.logs().iter().all(|l| !l.contains("secret prompt")),
        "prompt text logged"
    );
}

#[test]
fn config_errors_name_file_model_and_field_and_exit_nonzero() {
    let err = Proxy::try_start(r#"{"endpoints":{"m1":{"url":"ftp://x"}}}"#, &[], &[])
        .err()
        .expect("must not start");
    let all = err.join("\n");
    assert!(
        all.contains("config.json") && all.contains("endpoints.m1.url") && all.contains("http"),
        "{}",
        all
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["--check-config", "--config", "/nonexistent/x.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.json"));
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://h:1","apiKey":"${MODELMUX_TEST_KEY}"}}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env("MODELMUX_TEST_KEY", "sk-from-the-environment-123")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK, 1 model\n")
            && stdout.contains("http://h:1 as m, weight 1, key set")
            && !stdout.contains("sk-from-the-environment"),
        "{}",
        stdout
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env_remove("MODELMUX_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODELMUX_TEST_KEY"));
}

#[test]
fn config_refuses_reserved_headers_and_trims_keys() {
    let a = MockBackend::start(Behavior::default());
    let err = Proxy::try_start(
        &format!(
            r#"{{"endpoints":{{"m":{{"url":"{}","headers":{{"Content-Length":"5"}}}}}}}}"#,
            a.url()
        ),
        &[],
        &[],
    )
    .err()
    .expect("must refuse")
    .join("\n");
    assert!(
        err.contains("endpoints.m.headers.Content-Length"),
        "{}",
        err
    );
    // A key mounted from a file often ends in a newline: trimmed, not sent as a broken header.
    let p = Proxy::start(&format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"sk-trailing-newline-key\n"}}}}}}"#,
        a.url()
    ));
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
    assert_eq!(
        a.requests()[0].header("authorization"),
        Some("Bearer sk-trailing-newline-key")
    );
}
