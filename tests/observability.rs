//! Issue 4: Prometheus metrics (checked with a real parser), request ids and the JSON access log.

mod support;

use prometheus_parse::{Scrape, Value};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

fn scrape(p: &Proxy) -> Scrape {
    let r = get(p.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    Scrape::parse(r.text().lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[test]
fn metrics_change_exactly_as_the_traffic_implies() {
    let a = MockBackend::start(Behavior {
        include_usage_chunk: true,
        ..Behavior::default()
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = format!(
        r#"{{"endpoints":{{"chat":{{"url":"{u}"}},"pair":{{"backends":[{{"url":"{d}","weight":1000}},{{"url":"{u}"}}]}}}}}}"#,
        u = a.url(),
        d = dead_url
    );
    let p = Proxy::start(&cfg);
    let before = scrape(&p);
    assert_eq!(
        value(&before, "modelmux_requests_total", &[("model", "chat")]),
        0.0
    );
    // 3 non-stream chats, each "a b c" -> usage prompt 3, completion 3.
    for _ in 0..3 {
        assert_eq!(
            post_json(
                p.addr,
                "/v1/chat/completions",
                &chat_body("chat", "a b c", false)
            )
            .status,
            200
        );
    }
    // 1 stream with include_usage: "x y" -> prompt 2, completion 2.
    let body = serde_json::json!({"model":"chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x y"}]}).to_string();
    assert_eq!(post_json(p.addr, "/v1/chat/completions", &body).status, 200);
    // 1 stream without include_usage: modelmux asks for usage itself: prompt 4, completion 4.
    assert_eq!(
        post_json(
            p.addr,
            "/v1/chat/completions",
            &chat_body("chat", "p q r s", true)
        )
        .status,
        200
    );
    // 2 requests to "pair": the heavy backend is down, each is retried once on the other.
    for _ in 0..2 {
        assert_eq!(
            post_json(
                p.addr,
                "/v1/chat/completions",
                &chat_body("pair", "z", false)
            )
            .status,
            200
        );
    }
    // Errors the proxy answers itself are counted under the model too.
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("nope", "z", false),
    )
    .error(404);
    // Counters are recorded just after each response is sent: wait for all 8 to land.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let s = loop {
        let s = scrape(&p);
        let settled = value(&s, "modelmux_requests_total", &[]) == 8.0
            && value(&s, "modelmux_in_flight_requests", &[]) == 0.0;
        if settled || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let backend = a.url().trim_start_matches("http://").to_string();
    assert_eq!(
        value(
            &s,
            "modelmux_requests_total",
            &[
                ("model", "chat"),
                ("backend", &backend),
                ("status_class", "2xx")
            ]
        ),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_requests_total",
            &[("model", "pair"), ("status_class", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_requests_total",
            &[("model", "unknown"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "modelmux_requests_total", &[("model", "nope")]),
        0.0,
        "client-chosen names are no labels"
    );
    assert_eq!(
        value(
            &s,
            "modelmux_request_duration_seconds_count",
            &[("model", "chat")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_request_duration_seconds",
            &[("model", "chat")]
        ),
        5.0,
        "+Inf bucket"
    );
    assert_eq!(
        value(
            &s,
            "modelmux_time_to_first_byte_seconds_count",
            &[("model", "chat")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_tokens_total",
            &[
                ("model", "chat"),
                ("direction", "prompt"),
                ("estimated", "false")
            ]
        ),
        3.0 * 3.0 + 2.0 + 4.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_tokens_total",
            &[
                ("model", "chat"),
                ("direction", "completion"),
                ("estimated", "false")
            ]
        ),
        3.0 * 3.0 + 2.0 + 4.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_retries_total",
            &[("model", "pair"), ("cause", "connect")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "modelmux_upstream_errors_total",
            &[("model", "pair"), ("cause", "connect")]
        ),
        2.0
    );
    assert_eq!(value(&s, "modelmux_in_flight_requests", &[]), 0.0);
    assert_eq!(value(&s, "modelmux_queue_depth", &[]), 0.0);
}

#[test]
fn in_flight_gauge_counts_running_streams() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let p = Proxy::start(&config_for(&[("m", &a.url(), "", "m")]));
    let addr = p.addr;
    let streams: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                post_json(addr, "/v1/chat/completions", &chat_body("m", "a b c", true))
            })
        })
        .collect();
    wait_until(
        "three streams at the backend",
        Duration::from_secs(5),
        || a.requests().len() >= 3,
    );
    assert_eq!(value(&scrape(&p), "modelmux_in_flight_requests", &[]), 3.0);
    for s in streams {
        s.join().unwrap();
    }
}

#[test]
fn json_access_log_lines_parse_and_carry_the_request_id() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), "sk-access-log-key-0000", "real")]),
        &[("CM_OPEN_WEBUI_PROXY_LOG_FORMAT", "json")],
        &[],
    );
    let r = request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("X-Request-Id", "req-abc-123"),
        ],
        chat_body("m", "secret words in the prompt", false).as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(
        a.requests()[0].header("x-request-id"),
        Some("req-abc-123"),
        "forwarded upstream"
    );
    let r2 = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("m", "second", false),
    );
    let generated = r2.header("x-request-id").expect("generated id").to_string();
    assert_ne!(generated, "req-abc-123");
    get(p.addr, "/v1/models/none").error(404);
    // Each line is written after its response is sent: wait for all three before reading them.
    p.wait_logs(
        "three JSON access log lines",
        Duration::from_secs(5),
        |logs| {
            logs.iter()
                .filter(|l| l.starts_with('{') && l.contains("\"request_id\":\""))
                .count()
                >= 3
        },
    );
    let lines: Vec<serde_json::Value> = p
        .logs()
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({}): {}", e, l)))
        .collect();
    let first = lines
        .iter()
        .find(|v| v["request_id"] == "req-abc-123")
        .expect("line with the client's id");
    assert_eq!(first["model"], "m");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], a.url().trim_start_matches("http://"));
    assert_eq!(first["tokens_in"], 5);
    assert_eq!(first["tokens_out"], 5);
    assert_eq!(first["retries"], 0);
    assert!(
        first["duration_ms"].as_f64().is_some()
            && first["ttfb_ms"].as_f64().is_some()
            && first["bytes"].as_u64().unwrap() > 0
    );
    assert!(lines.iter().any(|v| v["request_id"] == generated.as_str()));
    assert!(
        p.logs().iter().all(|l| !l.contains("secret words")),
        "prompt text in the log"
    );
}
