//! A backend's `Retry-After` hold-off (after its 429 or 503) is capped by
//! `health.maxHoldOffSecs`, lifted by a successful health probe and by a reload, and shown in
//! `/health?backends=1` and `/metrics`.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A backend that asks to be left alone for a day.
fn a_day_429() -> Behavior {
    Behavior {
        status: Some((429, r#"{"error":{"message":"slow down"}}"#.into())),
        extra_headers: vec![("Retry-After".into(), "86400".into())],
        ..Behavior::default()
    }
}

/// Model `m` on one backend, passive health out of the way, plus `health` settings.
fn config(url: &str, health: Value) -> String {
    let mut h = json!({"failureThreshold": 100});
    if let (Value::Object(h), Value::Object(extra)) = (&mut h, health) {
        h.extend(extra);
    }
    json!({"endpoints": {"m": {"url": url, "actualModelName": "real-m"}}, "health": h}).to_string()
}

fn backend_health(p: &Proxy) -> Value {
    get(p.addr, "/health?backends=1").json()["backends"]["m"][0].clone()
}

fn chat(p: &Proxy) -> Resp {
    post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false))
}

fn metric(p: &Proxy, name: &str, a: &MockBackend) -> f64 {
    let series = format!(
        "{}{{model=\"m\",backend=\"{}\"}} ",
        name,
        a.url().trim_start_matches("http://")
    );
    let text = get(p.addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {} in /metrics:\n{}", series, text))
}

#[test]
fn a_day_long_retry_after_is_capped_at_five_minutes_by_default_and_shown() {
    let a = MockBackend::start(a_day_429());
    let p = Proxy::start(&config(&a.url(), json!({})));
    let r = chat(&p);
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("86400"),
        "the backend's own answer is relayed"
    );
    let h = backend_health(&p);
    assert_eq!(h["state"], "held", "{}", h);
    assert_eq!(h["heldOff"], true, "{}", h);
    let left = h["holdOffLeftSecs"].as_f64().unwrap();
    assert!((290.0..=300.0).contains(&left), "{}", h);
    assert_eq!(metric(&p, "modelmux_backend_up", &a), 0.0);
    let secs = metric(&p, "modelmux_backend_hold_off_seconds", &a);
    assert!((290.0..=300.0).contains(&secs), "{}", secs);
    // modelmux's own 429 while the backend is held says when it may be tried again.
    let e = chat(&p);
    e.error(429);
    let wait: u64 = e.header("retry-after").unwrap().parse().unwrap();
    assert!((290..=300).contains(&wait), "{}", wait);
    assert_eq!(a.requests().len(), 1, "a held backend is not tried");
}

#[test]
fn the_cap_is_a_setting_and_the_backend_is_tried_again_when_it_passes() {
    let a = MockBackend::start(a_day_429());
    let p = Proxy::start(&config(&a.url(), json!({"maxHoldOffSecs": 1})));
    let held_at = Instant::now();
    assert_eq!(chat(&p).status, 429);
    let h = backend_health(&p);
    assert!(h["holdOffLeftSecs"].as_f64().unwrap() <= 1.0, "{}", h);
    a.set_behavior(Behavior::default());
    wait_until("the backend tried again", WAIT, || chat(&p).status == 200);
    assert!(held_at.elapsed() >= Duration::from_millis(900));
    let h = backend_health(&p);
    assert_eq!(
        (&h["state"], &h["heldOff"]),
        (&json!("up"), &json!(false)),
        "{}",
        h
    );
    assert_eq!(h["holdOffLeftSecs"], Value::Null);
    assert_eq!(metric(&p, "modelmux_backend_up", &a), 1.0);
    assert_eq!(metric(&p, "modelmux_backend_hold_off_seconds", &a), 0.0);
    // 0: a Retry-After never holds the backend off.
    let b = MockBackend::start(a_day_429());
    let p = Proxy::start(&config(&b.url(), json!({"maxHoldOffSecs": 0})));
    assert_eq!(chat(&p).status, 429);
    assert_eq!(backend_health(&p)["heldOff"], false);
    assert_eq!(chat(&p).status, 429);
    assert_eq!(b.requests().len(), 2, "tried again at once");
}

#[test]
fn the_cap_setting_is_checked() {
    for bad in [json!(-1), json!(86_401), json!("300")] {
        let err = Proxy::try_start(
            &config("http://127.0.0.1:9", json!({"maxHoldOffSecs": bad})),
            &[],
            &[],
        )
        .err()
        .expect("must not start");
        assert!(
            err.join("\n").contains("maxHoldOffSecs"),
            "{}: {}",
            bad,
            err.join("\n")
        );
    }
}

#[test]
fn a_successful_health_probe_lifts_the_hold_off() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(&a.url(), json!({"probeIntervalSecs": 1})));
    wait_until("the backend probed", WAIT, || {
        backend_health(&p)["lastProbeOk"] == true
    });
    a.set_behavior(a_day_429());
    assert_eq!(chat(&p).status, 429);
    a.set_behavior(Behavior::default());
    wait_until("the hold-off lifted by a probe", WAIT, || {
        chat(&p).status == 200
    });
    let h = backend_health(&p);
    assert_eq!(h["heldOff"], false, "{}", h);
    assert_eq!(h["state"], "up", "{}", h);
}

#[test]
fn a_reload_lifts_the_hold_off() {
    let a = MockBackend::start(a_day_429());
    let p = Proxy::start(&config(&a.url(), json!({})));
    assert_eq!(chat(&p).status, 429);
    assert_eq!(backend_health(&p)["state"], "held");
    a.set_behavior(Behavior::default());
    chat(&p).error(429);
    assert_eq!(a.requests().len(), 1);
    let r = request(p.addr, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat(&p).status, 200);
    let h = backend_health(&p);
    assert_eq!(
        (&h["state"], &h["heldOff"]),
        (&json!("up"), &json!(false)),
        "{}",
        h
    );
    assert_eq!(metric(&p, "modelmux_backend_hold_off_seconds", &a), 0.0);
}
