//! Issue 12 across replicas: two modelmux processes keep one budget in one Redis
//! (`"limitsStore"`), and what `"limitsStoreFailure"` `open` and `closed` do while Redis is
//! down and after it is back. Needs `redis-server` (Debian package; `.ci/run` installs it).

mod support;

use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::mock_backend::{Behavior, MockBackend};
use support::redis::RedisServer;
use support::*;

const KEY: &str = "sk-limits-redis-backend-key-8e9f";
const TWENTY_WORDS: &str = "a b c d e f g h i j k l m n o p q r s t";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until more than `need` seconds are left in the current UTC minute, so every request
/// of a test falls in one fixed window.
fn room_in_this_minute(need: u64) {
    wait_until(
        "room in the current UTC minute",
        Duration::from_secs(need + 2),
        || 60 - now_secs() % 60 > need,
    );
}

/// A replica: model `m` on `backend`, counters in `store`, plus `extra` top-level fields.
/// Users `"*"` get 3 requests a minute; user `tok` 100 tokens a day. Requests name no
/// max_tokens and reserve 1 completion token (`defaultMaxTokens`).
fn replica(backend: &str, store: &str, extra: Value) -> Proxy {
    let mut cfg = json!({
        "endpoints": {"m": {"url": backend, "apiKey": KEY, "actualModelName": "real-m",
                            "defaultMaxTokens": 1}},
        "limitsStore": store,
        "limits": [
            {"match": {"user": "*"}, "requestsPerMinute": 3},
            {"match": {"user": "tok"}, "tokensPerDay": 100},
        ],
    });
    if let (Value::Object(cfg), Value::Object(extra)) = (&mut cfg, extra) {
        cfg.extend(extra);
    }
    Proxy::start(&cfg.to_string())
}

fn chat_as(p: &Proxy, user: &str, content: &str) -> Resp {
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": content}], "user": user});
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Asserts a 429 refusal by `limits[rule]` with this code.
fn refused(r: &Resp, code: &str, rule: usize) {
    let e = r.error(429);
    assert_eq!(e["code"], code, "{}", e);
    let needle = format!("limits[{}]", rule);
    assert!(e["message"].as_str().unwrap().contains(&needle), "{}", e);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait >= 1);
}

fn metric(p: &Proxy, series: &str) -> Option<f64> {
    get(p.addr, "/metrics").text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The answers to `n` one-word requests from `user`, alternating between the replicas.
fn alternate(replicas: &[&Proxy], user: &str, n: usize) -> Vec<Resp> {
    (0..n)
        .map(|i| chat_as(replicas[i % replicas.len()], user, "hi"))
        .collect()
}

#[test]
fn two_replicas_enforce_one_budget_through_redis() {
    let redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    let p1 = replica(&a.url(), &redis.url(), json!({}));
    let p2 = replica(&a.url(), &redis.url(), json!({}));
    room_in_this_minute(10);
    let answers = alternate(&[&p1, &p2], "ray", 6);
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 3, "one budget of 3, not 3 per replica");
    for r in answers.iter().filter(|r| r.status != 200) {
        refused(r, "rate_limit_exceeded", 0);
    }
    // Each reserves about 43 tokens and settles to 20 + 20, against 100 a day: two fit, even
    // if the first has not settled yet; a third does not.
    assert_eq!(chat_as(&p1, "tok", TWENTY_WORDS).status, 200);
    let r = chat_as(&p2, "tok", TWENTY_WORDS);
    assert_eq!(r.status, 200, "{}", r.text());
    refused(&chat_as(&p1, "tok", TWENTY_WORDS), "insufficient_quota", 1);
    assert_eq!(
        a.requests().len(),
        5,
        "refused requests never reach the backend"
    );
}

#[test]
fn redis_down_open_admits_closed_refuses_and_back_up_enforces_again() {
    let mut redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    let p1 = replica(
        &a.url(),
        &redis.url(),
        json!({"limitsStoreFailure": "open"}),
    );
    let p2 = replica(&a.url(), &redis.url(), json!({}));
    let closed = replica(
        &a.url(),
        &redis.url(),
        json!({"limitsStoreFailure": "closed"}),
    );
    room_in_this_minute(20);
    assert_eq!(chat_as(&closed, "before", "hi").status, 200);
    let failures = |p: &Proxy| metric(p, "modelmux_limits_store_failures_total").unwrap_or(0.0);
    let before = failures(&p1);
    let logged = p1.count_logs("limits store");

    redis.stop();
    // Open (explicit on p1, the default on p2): admitted, beyond the budget, and counted.
    for r in alternate(&[&p1, &p2], "outage", 5) {
        assert_eq!(
            r.status,
            200,
            "admitted while the store is down: {}",
            r.text()
        );
    }
    assert!(
        failures(&p1) > before,
        "modelmux_limits_store_failures_total rises"
    );
    assert!(failures(&p2) >= 1.0);
    assert!(
        p1.count_logs("limits store") <= logged + 1,
        "logged at most once a minute"
    );
    // Closed: 503 limits_unavailable, and nothing reaches the backend.
    let seen = a.requests().len();
    for _ in 0..2 {
        let r = chat_as(&closed, "shut", "hi");
        let e = r.error(503);
        assert_eq!(e["code"], "limits_unavailable", "{}", e);
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(wait >= 1);
    }
    assert_eq!(a.requests().len(), seen);
    assert!(
        metric(
            &closed,
            "modelmux_limit_refusals_total{limit=\"store_unavailable\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    // Back (empty: nothing was saved): the budget holds again across both replicas. A fresh
    // user per try, since requests admitted before a replica reconnects are not counted.
    redis.restart();
    let mut n = 0;
    wait_until(
        "one budget of 3 across the replicas again",
        Duration::from_secs(10),
        || {
            n += 1;
            let answers = alternate(&[&p1, &p2], &format!("back-{}", n), 4);
            answers.iter().map(|r| r.status).collect::<Vec<_>>() == [200, 200, 200, 429]
        },
    );
    refused(
        &chat_as(&p2, &format!("back-{}", n), "hi"),
        "rate_limit_exceeded",
        0,
    );
    wait_until(
        "the closed replica admits again",
        Duration::from_secs(10),
        || chat_as(&closed, "after", "hi").status == 200,
    );
}
