//! Issue 12 across replicas: two modelmux processes keep one budget in one Redis
//! (`"limitsStore"`), and what `"limitsStoreFailure"` `open` and `closed` do while Redis is
//! down and after it is back. Needs `redis-server` (Debian package; `.ci/run` installs it).

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::redis::RedisServer;
use support::*;

const KEY: &str = "sk-limits-redis-backend-key-8e9f";
const TWENTY_WORDS: &str = "a b c d e f g h i j k l m n o p q r s t";

/// A replica: model `m` on `backend`, counters in `store`, plus `extra` top-level fields.
/// Users `"*"` get 3 requests a minute; user `tok` 100 tokens a day. Requests name no
/// max_tokens and reserve 1 completion token (`defaultMaxTokens`).
fn replica(backend: &str, store: &str, extra: Value) -> Proxy {
    let mut cfg = json!({
        "endpoints": {"m": {"url": backend, "apiKey": KEY, "actualModelName": "real-m",
                            "defaultMaxTokens": 1}},
        "limitsStore": store,
        // Not the 250 ms default: a loaded test machine can stall a debug build that long, and
        // a timeout would admit a request unchecked. Tests about timeouts set their own.
        "limitsStoreTimeoutMs": 3000,
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
    // Each reserves 31 (123 body bytes / 4) + 10 (max_tokens) = 41 tokens and settles to
    // 20 + 20, against 100 a day: two fit, even if the first has not settled yet; a third does
    // not, even if the second has not (a settle lands after its answer).
    let tok = |p: &Proxy| {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": TWENTY_WORDS}],
                          "user": "tok", "max_tokens": 10});
        let h = [("Content-Type", "application/json")];
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &h,
            body.to_string().as_bytes(),
        )
    };
    assert_eq!(tok(&p1).status, 200);
    let r = tok(&p2);
    assert_eq!(r.status, 200, "{}", r.text());
    refused(&tok(&p1), "insufficient_quota", 1);
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
        json!({"limitsStoreFailure": "open", "limitsStoreRetrySecs": 1}),
    );
    let p2 = replica(&a.url(), &redis.url(), json!({"limitsStoreRetrySecs": 1}));
    let closed = replica(
        &a.url(),
        &redis.url(),
        json!({"limitsStoreFailure": "closed", "limitsStoreRetrySecs": 1}),
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

/// The answer to one request and how long it took.
fn timed(p: &Proxy, user: &str) -> (Resp, Duration) {
    let started = Instant::now();
    let r = chat_as(p, user, "hi");
    (r, started.elapsed())
}

#[test]
fn a_paused_redis_costs_one_timeout_per_interval_and_charges_nothing_it_did_not_answer() {
    let redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    // A timeout long enough to tell from an answer that did not wait for the store at all.
    let timing = |mode: &str| json!({"limitsStoreFailure": mode, "limitsStoreTimeoutMs": 1000, "limitsStoreRetrySecs": 3});
    let open = replica(&a.url(), &redis.url(), timing("open"));
    let closed = replica(&a.url(), &redis.url(), timing("closed"));
    room_in_this_minute(40);
    let remaining = |r: &Resp| {
        r.header("x-ratelimit-remaining-requests")
            .map(str::to_string)
    };
    for (p, user) in [(&open, "pia"), (&closed, "cid")] {
        let r = chat_as(p, user, "hi");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(remaining(&r).as_deref(), Some("2"), "3 a minute, 1 used");
    }
    // Each settles its tokens after its answer: let that reach Redis before it stalls (a
    // settle that times out would open the breaker before the requests below). A request
    // counts as in flight until it has settled.
    for p in [&open, &closed] {
        wait_until("the first requests settled", Duration::from_secs(5), || {
            metric(p, "modelmux_in_flight_requests") == Some(0.0)
        });
    }

    redis.pause();
    let waited = Duration::from_millis(900)..Duration::from_millis(2500);
    let at_once = Duration::from_millis(500);
    // Open: the first request waits one timeout and is served without a quota check...
    let (r, took) = timed(&open, "pia");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(waited.contains(&took), "one timeout, took {:?}", took);
    assert_eq!(remaining(&r), None, "no budget to report");
    // ...and the next ones within the interval do not wait for the store at all.
    for _ in 0..3 {
        let (r, took) = timed(&open, "pia");
        assert_eq!(r.status, 200);
        assert!(took < at_once, "the breaker is open, took {:?}", took);
    }
    // Closed: the same, refused.
    let (r, took) = timed(&closed, "cid");
    assert_eq!(r.error(503)["code"], "limits_unavailable");
    assert!(waited.contains(&took), "one timeout, took {:?}", took);
    for _ in 0..3 {
        let (r, took) = timed(&closed, "cid");
        assert_eq!(r.error(503)["code"], "limits_unavailable");
        assert!(took < at_once, "the breaker is open, took {:?}", took);
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=3).contains(&wait), "until the next probe: {}", wait);
    }
    for p in [&open, &closed] {
        assert_eq!(metric(p, "modelmux_limits_store_failures_total"), Some(1.0));
        assert_eq!(metric(p, "modelmux_limits_store_skipped_total"), Some(3.0));
        assert_eq!(metric(p, "modelmux_limits_store_breaker_open"), Some(1.0));
        assert_eq!(
            metric(p, "modelmux_limits_store_pending_cancels"),
            Some(1.0)
        );
    }

    // Resumed, Redis runs the reservations it had buffered; their cancels take them back.
    redis.resume();
    for p in [&open, &closed] {
        wait_until(
            "the lost reservation cancelled",
            Duration::from_secs(15),
            || metric(p, "modelmux_limits_store_pending_cancels") == Some(0.0),
        );
        wait_until("the breaker interval over", Duration::from_secs(5), || {
            metric(p, "modelmux_limits_store_breaker_open") == Some(0.0)
        });
    }
    // Only the requests Redis answered count: the one before the pause and this one.
    for (p, user) in [(&open, "pia"), (&closed, "cid")] {
        let r = chat_as(p, user, "hi");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            remaining(&r).as_deref(),
            Some("1"),
            "{} was charged for nothing",
            user
        );
    }
    assert_eq!(
        metric(&open, "modelmux_limits_store_failures_total"),
        Some(1.0)
    );
}

/// Round trips to Redis per request, counted by MONITOR on the real server (commands a
/// script runs are not round trips): one to admit a request (reserve, and the counts its
/// `x-ratelimit-*` headers are made of, also for a 429) and one when it ends (its tokens
/// settled, its usage added to the shared totals).
#[test]
fn one_redis_round_trip_at_admission_and_one_at_settle() {
    let redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    let p = replica(&a.url(), &redis.url(), json!({}));
    room_in_this_minute(15);
    let quiet = || {
        wait_until("Redis hears nothing more", Duration::from_secs(10), || {
            redis
                .monitor()
                .stop_after(&redis, 1, Duration::ZERO)
                .is_empty()
        })
    };
    // Warm up: the connection is made and the scripts loaded.
    assert_eq!(chat_as(&p, "tok", "hi").status, 200);
    let r = chat_as(&p, "warm", "hi");
    assert_eq!(r.status, 200);
    quiet();
    let round_trips = |user: &str, content: &str, n: usize| {
        let m = redis.monitor();
        let r = chat_as(&p, user, content);
        let lines = m.stop_after(&redis, n, Duration::from_secs(10));
        let evals = lines.iter().filter(|l| l.contains("\"EVALSHA\"")).count();
        assert_eq!((lines.len(), evals), (n, n), "{}: {:#?}", r.status, lines);
        r
    };
    // Settled to other than the estimate: a reserve and a settle.
    let r = round_trips("tok", TWENTY_WORDS, 2);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-remaining-tokens").is_some());
    assert_eq!(round_trips("tok", "hi", 2).status, 200);
    // The fourth in the minute is refused: one round trip, headers and all.
    let r = round_trips("tok", "hi", 1);
    refused(&r, "rate_limit_exceeded", 0);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
}
