//! Issue 4: several backends per model, failover, passive health and model fallbacks.

mod support;

use std::time::{Duration, Instant};
use support::mock_backend::{echo_completion_bytes, sse_data_lines, Behavior, Event, MockBackend};
use support::*;

fn backends_config(model_extra: &str, urls: &[(&str, u32)], top: &str) -> String {
    let list: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, (u, w))| format!(r#"{{"url":"{}","apiKey":"sk-backend-{}-secret-key","actualModelName":"real-{}","weight":{}}}"#, u, i, i, w))
        .collect();
    format!(
        r#"{{"endpoints":{{"m":{{"displayName":"M","backends":[{}]{}}}}}{}}}"#,
        list.join(","),
        model_extra,
        top
    )
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn ok(p: &Proxy) -> Resp {
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[test]
fn weighted_spread_across_three_backends() {
    let bs: Vec<MockBackend> = (0..3)
        .map(|_| MockBackend::start(Behavior::default()))
        .collect();
    let urls: Vec<String> = bs.iter().map(|b| b.url()).collect();
    let p = Proxy::start(&backends_config(
        "",
        &[(&urls[0], 1), (&urls[1], 2), (&urls[2], 3)],
        "",
    ));
    for _ in 0..120 {
        ok(&p);
    }
    let counts: Vec<usize> = bs.iter().map(|b| b.requests().len()).collect();
    for (got, want) in counts.iter().zip([20usize, 40, 60]) {
        assert!(
            got.abs_diff(want) <= 4,
            "spread {:?}, want about [20, 40, 60]",
            counts
        );
    }
    // Each backend got its own key and model name.
    let r = &bs[1].requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some("Bearer sk-backend-1-secret-key")
    );
    assert_eq!(r.json().unwrap()["model"], "real-1");
}

#[test]
fn fails_over_when_a_backend_is_down() {
    let good = MockBackend::start(Behavior::default());
    let dead = dead_url();
    let p = Proxy::start(&backends_config("", &[(&dead, 1), (&good.url(), 1)], ""));
    for _ in 0..6 {
        let r = ok(&p);
        assert_eq!(r.body, echo_completion_bytes("real-1", "hi"));
    }
    assert_eq!(good.requests().len(), 6);
    // Access log lines are written in batches, a few milliseconds after their requests.
    assert!(p.wait_log("retries=1", Duration::from_secs(2)).is_some());
}

#[test]
fn fails_over_on_503_and_429() {
    let good = MockBackend::start(Behavior::default());
    let busy = MockBackend::start(Behavior {
        status: Some((503, r#"{"error":{"message":"overloaded"}}"#.into())),
        ..Behavior::default()
    });
    let p = Proxy::start(&backends_config(
        "",
        &[(&busy.url(), 1), (&good.url(), 1)],
        r#","health":{"failureThreshold":100}"#,
    ));
    for _ in 0..4 {
        ok(&p);
    }
    assert_eq!(good.requests().len(), 4);
    assert!(
        !busy.requests().is_empty(),
        "the 503 backend was never tried"
    );
    busy.set_behavior(Behavior {
        status: Some((429, r#"{"error":{"message":"slow down"}}"#.into())),
        ..Behavior::default()
    });
    for _ in 0..4 {
        ok(&p);
    }
    assert_eq!(good.requests().len(), 8);
}

#[test]
fn the_last_backend_error_is_returned_when_every_backend_fails() {
    let a = MockBackend::start(Behavior {
        status: Some((503, r#"{"error":{"message":"a down"}}"#.into())),
        ..Behavior::default()
    });
    let b = MockBackend::start(Behavior {
        status: Some((500, r#"{"error":{"message":"b broken"}}"#.into())),
        ..Behavior::default()
    });
    let p = Proxy::start(&backends_config("", &[(&a.url(), 1), (&b.url(), 1)], ""));
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false));
    assert!(r.status == 503 || r.status == 500, "{}", r.status);
    assert_eq!(
        a.requests().len() + b.requests().len(),
        2,
        "each backend tried once"
    );
}

#[test]
fn fails_over_when_a_backend_stalls_before_its_first_byte() {
    let good = MockBackend::start(Behavior::default());
    let stall = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_secs(10),
        ..Behavior::default()
    });
    let p = Proxy::start(&backends_config(
        r#","timeouts":{"idleSecs":1}"#,
        &[(&stall.url(), 1), (&good.url(), 1)],
        "",
    ));
    let t = Instant::now();
    for _ in 0..2 {
        ok(&p);
        // The worker lets go of the backend just after the client has the last byte; the next
        // pick must see it free, or "least in flight" rather than the rotation decides.
        wait_until("the request to leave", Duration::from_secs(5), || {
            get(p.addr, "/metrics")
                .text()
                .contains("\nmodelmux_in_flight_requests 0\n")
        });
    }
    assert_eq!(good.requests().len(), 2);
    assert_eq!(
        stall.requests().len(),
        1,
        "the stalled backend was tried once"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn no_failover_once_a_stream_has_started() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let b = MockBackend::start(Behavior::default());
    let p = Proxy::start(&backends_config("", &[(&a.url(), 1000), (&b.url(), 1)], ""));
    let addr = p.addr;
    let stream = std::thread::spawn(move || {
        post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("m", "one two three four five six", true),
        )
    });
    // Stop the backend once the stream has really started: two chunks are on their way.
    wait_until("two chunks streamed", Duration::from_secs(5), || {
        a.events()
            .iter()
            .filter(|e| matches!(e, Event::ChunkSent { .. }))
            .count()
            >= 2
    });
    a.stop();
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    let lines = sse_data_lines(&r.body);
    assert!(lines.len() >= 2, "{:?}", lines);
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].is_string(),
        "stream must end with an error event: {:?}",
        lines
    );
    assert!(!r.text().contains("[DONE]"));
    assert!(
        b.requests().is_empty(),
        "another backend's tokens were spliced in"
    );
    assert!(p
        .wait_log("outcome=upstream_failed", Duration::from_secs(2))
        .is_some());
}

#[test]
fn a_failing_backend_cools_down_then_recovers() {
    let flaky = MockBackend::start(Behavior {
        status: Some((503, "{}".into())),
        ..Behavior::default()
    });
    let good = MockBackend::start(Behavior::default());
    let p = Proxy::start(&backends_config(
        "",
        &[(&flaky.url(), 1), (&good.url(), 1)],
        r#","health":{"failureThreshold":2,"cooldownSecs":1.5}"#,
    ));
    for _ in 0..4 {
        ok(&p);
    }
    let tried = flaky.requests().len();
    assert_eq!(tried, 2, "two failures start the cool-down");
    let h = get(p.addr, "/health?backends=1").json();
    let list = h["backends"]["m"].as_array().unwrap();
    assert_eq!(list[0]["coolingDown"], true, "{}", h);
    assert_eq!(list[1]["coolingDown"], false);
    assert!(!h.to_string().contains("sk-backend"), "no keys in health");
    for _ in 0..6 {
        ok(&p);
    }
    assert_eq!(flaky.requests().len(), tried, "skipped while cooling down");
    flaky.set_behavior(Behavior::default());
    wait_until("the cool-down to end", Duration::from_secs(5), || {
        get(p.addr, "/health?backends=1").json()["backends"]["m"][0]["coolingDown"] == false
    });
    for _ in 0..6 {
        ok(&p);
    }
    assert!(
        flaky.requests().len() >= tried + 2,
        "recovered backend gets traffic again"
    );
}

#[test]
fn model_fallbacks_are_tried_after_its_own_backends() {
    let down = MockBackend::start(Behavior {
        status: Some((502, "{}".into())),
        ..Behavior::default()
    });
    let spare = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"endpoints":{{"main":{{"url":"{}","actualModelName":"main-real","fallbacks":["spare"]}},"spare":{{"url":"{}","actualModelName":"spare-real"}}}}}}"#,
        down.url(),
        spare.url()
    );
    let p = Proxy::start(&cfg);
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("main", "hi", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "spare-real");
    assert_eq!(down.requests().len(), 1);
    // An unknown fallback id is a config error naming the field.
    let bad = format!(
        r#"{{"endpoints":{{"main":{{"url":"{}","fallbacks":["ghost"]}}}}}}"#,
        down.url()
    );
    let err = Proxy::try_start(&bad, &[], &[]).err().unwrap().join("\n");
    assert!(err.contains("endpoints.main.fallbacks[0]"), "{}", err);
}

#[test]
fn requests_that_name_no_model_use_the_default_model() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"defaultModel":"m","endpoints":{{"m":{{"url":"{}"}}}}}}"#,
        a.url()
    );
    let p = Proxy::start(&cfg);
    let r = get(p.addr, "/v1/files");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests()[0].path, "/v1/files");
}

#[test]
fn a_seed_config_keeps_its_meaning() {
    // One url per model, no backends list: one backend, no retries against itself.
    let a = MockBackend::start(Behavior {
        status: Some((503, r#"{"error":{"message":"down"}}"#.into())),
        ..Behavior::default()
    });
    let p = Proxy::start(&config_for(&[(
        "m",
        &a.url(),
        "sk-seed-style-key-12345",
        "real",
    )]));
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false));
    assert_eq!(r.status, 503);
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn cool_downs_and_in_flight_counts_survive_a_reload() {
    let flaky = MockBackend::start(Behavior {
        status: Some((503, "{}".into())),
        ..Behavior::default()
    });
    let good = MockBackend::start(Behavior::default());
    let cfg = backends_config(
        "",
        &[(&flaky.url(), 1), (&good.url(), 1)],
        r#","health":{"failureThreshold":1,"cooldownSecs":30}"#,
    );
    let p = Proxy::start(&cfg);
    ok(&p);
    ok(&p);
    assert_eq!(flaky.requests().len(), 1);
    // Same backends, another display name: a reload must not forget the cool-down.
    p.write_config(&cfg.replace("\"displayName\":\"M\"", "\"displayName\":\"M2\""));
    assert_eq!(request(p.addr, "POST", "/reload", &[], b"").status, 200);
    let h = get(p.addr, "/health?backends=1").json();
    assert_eq!(h["backends"]["m"][0]["coolingDown"], true, "{}", h);
    for _ in 0..4 {
        ok(&p);
    }
    assert_eq!(
        flaky.requests().len(),
        1,
        "cooling backend tried again after a reload"
    );
}
