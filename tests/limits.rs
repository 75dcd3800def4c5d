//! Issue 12: limits and admission control through real HTTP, with the local counter store.
//! Every rule kind (requests and tokens per minute, tokens per day and month, concurrency),
//! `"*"` against literal matches, OpenAI's `x-ratelimit-*` headers, token reservations under a
//! race, restart persistence from the usage ledger, `/usage` budgets, fair and prioritised
//! per-backend queues, queue timeouts, and backends' own `Retry-After`.
//!
//! Identity: no Open WebUI token and no trusted headers are used, and no keys (or keys trusted
//! to name users), so the body's `user` field names the user; one test checks that a key not
//! trusted for it cannot. The mock backend echoes: prompt tokens = words of the user messages,
//! completion tokens = the same count.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::mock_backend::{echo_completion_bytes, Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-limits-backend-key-5c6d7e";
/// `/usage` is personal data: only the admin key reads it.
const ADMIN: (&str, &str) = ("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-limits-admin-key-1");
const TEN_WORDS: &str = "one two three four five six seven eight nine ten";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until more than `need` seconds are left in the current UTC minute, so every request
/// of a test falls in one fixed window (day and month windows end on a minute too).
fn room_in_this_minute(need: u64) {
    assert!(need < 50);
    wait_until(
        "room in the current UTC minute",
        Duration::from_secs(need + 2),
        || 60 - now_secs() % 60 > need,
    );
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// (year, month, day) of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Seconds until the next UTC midnight.
fn secs_to_next_day() -> u64 {
    86_400 - now_secs() % 86_400
}

/// Seconds until the first of next month, UTC.
fn secs_to_next_month() -> u64 {
    let now = now_secs();
    let (y, m, _) = civil_from_days((now / 86_400) as i64);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) * 86_400) as u64 - now
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) for a Unix time.
fn http_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let secs = t % 86_400;
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        wd,
        d,
        mon,
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The endpoint object of model `m` on `url`, with `extra` fields.
fn endpoint(url: &str, extra: Value) -> Value {
    let mut e = json!({"url": url, "apiKey": KEY, "actualModelName": "real-m"});
    merge(&mut e, extra);
    e
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// A config with these endpoints and these top-level fields (`limits`, `proxyKeys`, ...).
fn config(endpoints: Value, top: Value) -> String {
    let mut root = json!({ "endpoints": endpoints });
    merge(&mut root, top);
    root.to_string()
}

/// A chat body for model `m` from `user` with one user message, plus `extra` fields.
fn body(user: &str, content: &str, extra: Value) -> String {
    let mut b =
        json!({"model": "m", "messages": [{"role": "user", "content": content}], "user": user});
    merge(&mut b, extra);
    b.to_string()
}

/// What admission reserves for a body: ceil(bytes / 4) plus its max tokens.
fn estimate(body: &str, max_tokens: u64) -> u64 {
    (body.len() as u64).div_ceil(4) + max_tokens
}

/// How many requests in a row a token budget admits when each reserves `estimate` and is
/// settled to `usage`.
fn admitted_in_a_row(limit: u64, estimate: u64, usage: u64) -> usize {
    assert!(usage > 0);
    let (mut used, mut n) = (0, 0);
    while used + estimate <= limit {
        used += usage;
        n += 1;
    }
    n
}

fn send(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", "/v1/chat/completions", &h, body.as_bytes())
}

/// Sends until the answer is not a 429 (a reservation or slot given back at the end of an
/// earlier request may land a moment after its answer was read), for at most 5 s.
fn once_not_429(mut send: impl FnMut() -> Resp) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send();
        if r.status != 429 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chat_as(p: &Proxy, user: &str, content: &str) -> Resp {
    send(p.addr, &[], &body(user, content, json!({})))
}

/// Asserts a 429 refusal by `limits[rule]` with this code; returns its Retry-After.
fn refused(r: &Resp, code: &str, rule: usize) -> u64 {
    let e = r.error(429);
    assert_eq!(e["code"], code, "{}", e);
    let needle = format!("limits[{}]", rule);
    assert!(
        e["message"].as_str().unwrap().contains(&needle),
        "the message names {}: {}",
        needle,
        e
    );
    retry_after(r)
}

/// The Retry-After header in whole seconds, at least 1.
fn retry_after(r: &Resp) -> u64 {
    let v = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {}: {}", r.status, r.text()));
    let secs: u64 = v
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {:?} is not whole seconds", v));
    assert!(secs >= 1, "Retry-After {}", secs);
    secs
}

/// The value of one series in /metrics, e.g. `modelmux_x_total{limit="concurrent"}`.
fn metric_opt(p: &Proxy, series: &str) -> Option<f64> {
    get(p.addr, "/metrics").text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn metric(p: &Proxy, series: &str) -> f64 {
    metric_opt(p, series).unwrap_or_else(|| {
        panic!(
            "no {} in /metrics:\n{}",
            series,
            get(p.addr, "/metrics").text()
        )
    })
}

fn refusals(p: &Proxy, limit: &str) -> f64 {
    metric(
        p,
        &format!("modelmux_limit_refusals_total{{limit=\"{}\"}}", limit),
    )
}

fn queue_depth(p: &Proxy) -> f64 {
    metric_opt(p, "modelmux_backend_queue_depth{model=\"m\"}").unwrap_or(0.0)
}

/// An OpenAI reset duration (`42s`, `6m0s`, `1h2m3s`, `250ms`) in seconds, rounded up.
fn reset_secs(s: &str) -> u64 {
    let (mut total_ms, mut num) = (0f64, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad reset {:?}", s));
        num.clear();
        let unit_ms = match c {
            'h' => 3_600_000.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1.0
            }
            'm' => 60_000.0,
            's' => 1000.0,
            _ => panic!("bad reset {:?}", s),
        };
        total_ms += n * unit_ms;
    }
    assert!(num.is_empty(), "reset {:?} lacks a unit", s);
    (total_ms / 1000.0).ceil() as u64
}

fn header_u64(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {} in {:?}", name, r.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{} is not a number: {:?}", name, r.header(name)))
}

/// The user message contents the backend saw, in arrival order.
fn contents(b: &MockBackend) -> Vec<String> {
    b.requests()
        .iter()
        .map(|r| {
            r.json().unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn usage_limits(p: &Proxy, user: &str) -> Value {
    let auth = format!("Bearer {}", ADMIN.1);
    let r = request(
        p.addr,
        "GET",
        &format!("/usage?user={}", user),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list", "{}", v);
    assert!(v["data"].is_array(), "{}", v);
    v["limits"].clone()
}

#[test]
fn requests_per_minute_star_gives_each_user_a_budget_and_a_literal_rule_only_its_user() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({"limits": [
            {"match": {"user": "*"}, "requestsPerMinute": 3},
            {"match": {"user": "cat"}, "requestsPerMinute": 1},
        ]}),
    ));
    room_in_this_minute(10);
    for user in ["ann", "ben"] {
        for i in 0..3 {
            let r = chat_as(&p, user, "hi");
            assert_eq!(r.status, 200, "{} request {}: {}", user, i, r.text());
        }
    }
    let r = chat_as(&p, "ann", "hi");
    let wait = refused(&r, "rate_limit_exceeded", 0);
    assert!(wait <= 60, "a minute window resets within 60 s: {}", wait);
    assert!(!r.text().contains("ben"), "never another user's data");
    // Both rules match cat; the literal one is the smaller.
    assert_eq!(chat_as(&p, "cat", "hi").status, 200);
    let r = chat_as(&p, "cat", "hi");
    assert!(refused(&r, "rate_limit_exceeded", 1) <= 60);
    assert_eq!(
        a.requests().len(),
        7,
        "refused requests never reach the backend"
    );
    assert_eq!(refusals(&p, "requests_per_minute"), 2.0);
}

#[test]
fn x_ratelimit_headers_show_limit_remaining_and_reset() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config(
            json!({"m": endpoint(&a.url(), json!({}))}),
            json!({"limits": [
                {"match": {"user": "hal"}, "requestsPerMinute": 10, "tokensPerMinute": 1000},
            ]}),
        ),
        &[ADMIN],
        &[],
    );
    room_in_this_minute(10);
    let b1 = body("hal", "alpha beta gamma", json!({"max_tokens": 100}));
    let r = send(p.addr, &[], &b1);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 10);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 9);
    assert!(reset_secs(r.header("x-ratelimit-reset-requests").unwrap()) <= 60);
    assert_eq!(header_u64(&r, "x-ratelimit-limit-tokens"), 1000);
    assert_eq!(
        header_u64(&r, "x-ratelimit-remaining-tokens"),
        1000 - estimate(&b1, 100),
        "remaining after this request's reservation"
    );
    assert!(reset_secs(r.header("x-ratelimit-reset-tokens").unwrap()) <= 60);
    // Once settled, the first request counts its real usage (3 + 3 tokens), not its estimate.
    wait_until(
        "the first request settled to its usage",
        Duration::from_secs(5),
        || {
            usage_limits(&p, "hal")
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["limit"] == "tokens_per_minute" && l["remaining"] == 1000 - 6)
        },
    );
    let b2 = body("hal", "delta", json!({"max_tokens": 50, "stream": true}));
    let r = send(p.addr, &[], &b2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 8);
    assert_eq!(
        header_u64(&r, "x-ratelimit-remaining-tokens"),
        1000 - 6 - estimate(&b2, 50),
        "streams carry the headers too"
    );
    // A user no rule matches gets no such headers.
    let r = chat_as(&p, "ivy", "hi");
    assert_eq!(r.status, 200);
    assert!(
        !r.headers
            .iter()
            .any(|(n, _)| n.to_ascii_lowercase().starts_with("x-ratelimit-")),
        "{:?}",
        r.headers
    );
}

#[test]
fn tokens_per_day_and_month_refuse_with_insufficient_quota() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({"limits": [
            {"match": {"user": "dora"}, "tokensPerDay": 60},
            {"match": {"user": "moe"}, "tokensPerMonth": 60},
        ]}),
    ));
    room_in_this_minute(10);
    let mut served = 0;
    for (rule, user, limit, reset) in [
        (0, "dora", "tokens_per_day", secs_to_next_day()),
        (1, "moe", "tokens_per_month", secs_to_next_month()),
    ] {
        let b = body(user, TEN_WORDS, json!({"max_tokens": 10}));
        // Each request reserves its estimate and settles to 10 + 10 tokens.
        let expect = admitted_in_a_row(60, estimate(&b, 10), 20);
        assert!(expect >= 1);
        for i in 0..expect {
            // Settling an answered request may land a moment after its answer.
            let r = once_not_429(|| send(p.addr, &[], &b));
            assert_eq!(r.status, 200, "{} request {}: {}", user, i, r.text());
            served += 1;
        }
        let r = send(p.addr, &[], &b);
        let wait = refused(&r, "insufficient_quota", rule);
        assert!(
            wait.abs_diff(reset) <= 3,
            "{}: Retry-After {} but the window resets in {}",
            limit,
            wait,
            reset
        );
        assert!(refusals(&p, limit) >= 1.0);
    }
    assert_eq!(a.requests().len(), served);
    // Other users are not limited by either rule.
    assert_eq!(chat_as(&p, "eve", TEN_WORDS).status, 200);
}

#[test]
fn concurrent_tokens_per_minute_reservations_never_overspend() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": 100}]}),
    ));
    room_in_this_minute(15);
    let b = body("racer", "r", json!({"max_tokens": 25}));
    let est = estimate(&b, 25);
    let allowed = (100 / est) as usize;
    assert!(
        (1..=2).contains(&allowed),
        "the test wants a budget of one or two requests, estimate {}",
        est
    );
    let gate = std::sync::Arc::new(std::sync::Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (addr, b, gate) = (p.addr, b.clone(), gate.clone());
            std::thread::spawn(move || {
                gate.wait();
                send(addr, &[], &b)
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert!(
        (1..=allowed).contains(&ok),
        "{} admitted; a budget of 100 holds {} reservations of {}",
        ok,
        allowed,
        est
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        refused(r, "rate_limit_exceeded", 0);
    }
    assert_eq!(a.requests().len(), ok, "the backend saw only the admitted");
    assert_eq!(refusals(&p, "tokens_per_minute"), (12 - ok) as f64);
    // Settled to their real usage (1 + 1 tokens each), the budget has room again.
    a.set_behavior(Behavior::default());
    let r = once_not_429(|| send(p.addr, &[], &b));
    assert_eq!(r.status, 200, "reservations settle to usage: {}", r.text());
}

#[test]
fn a_request_failing_before_a_backend_answers_releases_its_reservation() {
    let a = MockBackend::start(Behavior::default());
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({})), "d": endpoint(&dead, json!({}))}),
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": 150}]}),
    ));
    room_in_this_minute(10);
    let mut to_dead: Value =
        serde_json::from_str(&body("rel", "x", json!({"max_tokens": 80}))).unwrap();
    to_dead["model"] = "d".into();
    let to_dead = to_dead.to_string();
    let to_good = body("rel", "x", json!({"max_tokens": 80}));
    assert!(estimate(&to_dead, 80) + estimate(&to_good, 80) > 150);
    for _ in 0..2 {
        let r = send(p.addr, &[], &to_dead);
        assert!(r.status >= 500, "{} {}", r.status, r.text());
    }
    // Without the release the failed ones' reservations would leave no room.
    let r = once_not_429(|| send(p.addr, &[], &to_good));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn max_completion_tokens_and_default_max_tokens_count_in_the_reservation() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({"defaultMaxTokens": 1000}))}),
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": 500}]}),
    ));
    room_in_this_minute(10);
    // No max_tokens: the endpoint's default (1000) alone exceeds the budget.
    refused(&chat_as(&p, "max", "hi"), "rate_limit_exceeded", 0);
    let r = send(
        p.addr,
        &[],
        &body("max", "hi", json!({"max_completion_tokens": 1000})),
    );
    refused(&r, "rate_limit_exceeded", 0);
    let r = send(p.addr, &[], &body("max", "hi", json!({"max_tokens": 10})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn concurrent_requests_beyond_the_cap_are_refused_per_user() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(700),
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({"limits": [{"match": {"user": "*"}, "concurrent": 2}]}),
    ));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let addr = p.addr;
            std::thread::spawn(move || send(addr, &[], &body("cc", "hi", json!({}))))
        })
        .collect();
    wait_until("two in flight", Duration::from_secs(5), || {
        a.requests().len() >= 2
    });
    refused(&chat_as(&p, "cc", "hi"), "rate_limit_exceeded", 0);
    assert_eq!(
        chat_as(&p, "dd", "hi").status,
        200,
        "another user's own cap"
    );
    for t in busy {
        assert_eq!(t.join().unwrap().status, 200);
    }
    assert_eq!(a.requests().len(), 3);
    assert_eq!(refusals(&p, "concurrent"), 1.0);
    // Finished requests give their slots back.
    a.set_behavior(Behavior::default());
    let r = once_not_429(|| chat_as(&p, "cc", "hi"));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_used_up_daily_budget_survives_a_restart_and_usage_shows_what_is_left() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let cfg = config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({
            "usageLog": log.display().to_string(),
            "limits": [
                {"match": {"user": "*"}, "tokensPerDay": 60},
                {"match": {"user": "zed"}, "requestsPerMinute": 5},
            ],
        }),
    );
    let p = Proxy::start_with(&cfg, &[ADMIN], &[]);
    room_in_this_minute(15);
    let b = body("pat", TEN_WORDS, json!({"max_tokens": 10}));
    let expect = admitted_in_a_row(60, estimate(&b, 10), 20);
    for i in 0..expect {
        let r = once_not_429(|| send(p.addr, &[], &b));
        assert_eq!(r.status, 200, "request {}: {}", i, r.text());
    }
    refused(&send(p.addr, &[], &b), "insufficient_quota", 0);
    let served = expect;
    let used = 20 * served as u64;
    let pat_limits = |p: &Proxy| {
        let l = usage_limits(p, "pat");
        let arr = l
            .as_array()
            .unwrap_or_else(|| panic!("no limits: {}", l))
            .clone();
        assert_eq!(arr.len(), 1, "only the rule matching pat: {}", l);
        let reset = arr[0]["reset_secs"].as_u64().unwrap();
        assert!(reset.abs_diff(secs_to_next_day()) <= 3, "{}", l);
        assert_eq!(
            (
                &arr[0]["rule"],
                &arr[0]["limit"],
                &arr[0]["max"],
                &arr[0]["remaining"]
            ),
            (
                &json!(0),
                &json!("tokens_per_day"),
                &json!(60),
                &json!(60 - used)
            ),
            "{}",
            l
        );
    };
    wait_until(
        "the settled budget in /usage",
        Duration::from_secs(5),
        || usage_limits(&p, "pat")[0]["remaining"] == 60 - used,
    );
    pat_limits(&p);
    let zed = usage_limits(&p, "zed");
    let zed = zed.as_array().unwrap();
    assert!(zed
        .iter()
        .any(|l| l["rule"] == 0 && l["limit"] == "tokens_per_day" && l["remaining"] == 60));
    assert!(zed.iter().any(|l| l["rule"] == 1
        && l["limit"] == "requests_per_minute"
        && l["max"] == 5
        && l["remaining"] == 5));
    wait_until("the ledger lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= served)
            .unwrap_or(false)
    });
    drop(p);
    let p = Proxy::start_with(&cfg, &[ADMIN], &[]);
    let r = send(p.addr, &[], &b);
    refused(&r, "insufficient_quota", 0);
    pat_limits(&p);
    let quinn = body("quinn", TEN_WORDS, json!({"max_tokens": 10}));
    assert_eq!(send(p.addr, &[], &quinn).status, 200);
    assert_eq!(a.requests().len(), served + 1);
}

#[test]
fn a_capped_backend_serves_waiting_users_round_robin() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({"maxConcurrent": 1}))}),
        json!({}),
    ));
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let addr = p.addr;
            std::thread::spawn(move || send(addr, &[], &body("A", &format!("A {}", i), json!({}))))
        })
        .collect();
    wait_until(
        "A's first at the backend, 19 queued",
        Duration::from_secs(5),
        || !a.requests().is_empty() && queue_depth(&p) >= 19.0,
    );
    let b = {
        let addr = p.addr;
        std::thread::spawn(move || send(addr, &[], &body("B", "B 0", json!({}))))
    };
    assert_eq!(b.join().unwrap().status, 200);
    for t in batch {
        assert_eq!(t.join().unwrap().status, 200);
    }
    let order = contents(&a);
    assert_eq!(order.len(), 21);
    let b_at = order.iter().position(|c| c == "B 0").unwrap();
    assert!(
        b_at <= 2,
        "B must reach the backend before A's 3rd request: {:?}",
        order
    );
    // One at a time: each request arrives after the previous one was answered.
    let times: Vec<Instant> = a.requests().iter().map(|r| r.received_at).collect();
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(150),
            "two requests at the backend at once"
        );
    }
    assert_eq!(queue_depth(&p), 0.0);
    assert!(metric(&p, "modelmux_backend_queue_wait_seconds_count{model=\"m\"}") >= 19.0);
    assert!(metric(&p, "modelmux_backend_queue_wait_seconds_sum{model=\"m\"}") > 0.0);
}

#[test]
fn high_priority_keys_go_first_and_tasks_and_low_keys_last() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({"maxConcurrent": 1}))}),
        json!({"proxyKeys": [
            {"key": "sk-limits-low-key-000001", "name": "batch", "priority": "low"},
            {"key": "sk-limits-normal-key-0002", "name": "app"},
            {"key": "sk-limits-high-key-00003", "name": "vip", "priority": "high"},
        ]}),
    ));
    let start = |key: &'static str, task: bool, who: &'static str| {
        let addr = p.addr;
        std::thread::spawn(move || {
            let auth = format!("Bearer {}", key);
            let mut h = vec![("Authorization", auth.as_str())];
            if task {
                h.push(("X-OpenWebUI-Task", "title_generation"));
            }
            send(addr, &h, &body(who, who, json!({})))
        })
    };
    let mut threads = vec![start("sk-limits-normal-key-0002", false, "blocker")];
    wait_until("the blocker at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    // Queued in this order: a low key, a task (low), a normal request, a high key.
    for (n, (key, task, who)) in [
        ("sk-limits-low-key-000001", false, "lowkey"),
        ("sk-limits-normal-key-0002", true, "task"),
        ("sk-limits-normal-key-0002", false, "normal"),
        ("sk-limits-high-key-00003", false, "high"),
    ]
    .into_iter()
    .enumerate()
    {
        threads.push(start(key, task, who));
        wait_until("queued", Duration::from_secs(5), || {
            queue_depth(&p) >= (n + 1) as f64
        });
    }
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let order = contents(&a);
    assert_eq!(order[..3], ["blocker", "high", "normal"], "{:?}", order);
    let mut last = order[3..].to_vec();
    last.sort();
    assert_eq!(last, ["lowkey", "task"], "{:?}", order);
}

#[test]
fn waiting_past_max_queue_wait_is_a_503_overloaded() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(2500),
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({"maxConcurrent": 1, "maxQueueWaitSecs": 1}))}),
        json!({}),
    ));
    let blocker = {
        let addr = p.addr;
        std::thread::spawn(move || send(addr, &[], &body("u1", "first", json!({}))))
    };
    wait_until("the blocker at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    let t0 = Instant::now();
    let r = chat_as(&p, "u2", "second");
    let waited = t0.elapsed();
    let e = r.error(503);
    assert_eq!(e["code"], "overloaded", "{}", e);
    retry_after(&r);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2300),
        "gave up after {:?}, want about 1 s",
        waited
    );
    assert_eq!(blocker.join().unwrap().status, 200);
    assert_eq!(
        a.requests().len(),
        1,
        "the refused one never reached the backend"
    );
    assert!(metric(&p, "modelmux_backend_queue_wait_seconds_count{model=\"m\"}") >= 1.0);
    assert!(metric(&p, "modelmux_backend_queue_wait_seconds_sum{model=\"m\"}") >= 0.9);
    assert_eq!(queue_depth(&p), 0.0);
}

/// Model `m` on these backends; passive health out of the way so only Retry-After cools.
fn two_backends(x: &str, y: &str) -> String {
    config(
        json!({"m": {"displayName": "M", "backends": [
            {"url": x, "apiKey": KEY, "actualModelName": "real-m"},
            {"url": y, "apiKey": KEY, "actualModelName": "real-m"},
        ]}}),
        json!({"health": {"failureThreshold": 100}}),
    )
}

#[test]
fn a_backends_retry_after_cools_it_down_and_requests_fail_over() {
    let good = MockBackend::start(Behavior::default());
    let limited = MockBackend::start(Behavior {
        status: Some((429, r#"{"error":{"message":"slow down"}}"#.into())),
        extra_headers: vec![("Retry-After".into(), "30".into())],
        ..Behavior::default()
    });
    let busy = MockBackend::start(Behavior {
        status: Some((503, r#"{"error":{"message":"busy"}}"#.into())),
        extra_headers: vec![("Retry-After".into(), http_date(now_secs() + 30))],
        ..Behavior::default()
    });
    for cooling in [&limited, &busy] {
        let p = Proxy::start(&two_backends(&cooling.url(), &good.url()));
        let before = good.requests().len();
        for _ in 0..8 {
            let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.body, echo_completion_bytes("real-m", "hi"));
        }
        assert_eq!(
            cooling.requests().len(),
            1,
            "tried once, then cooling for its Retry-After"
        );
        assert_eq!(good.requests().len() - before, 8);
    }
}

#[test]
fn when_every_backend_is_cooling_the_answer_is_429_with_the_soonest_recovery() {
    let a = MockBackend::start(Behavior {
        status: Some((429, r#"{"error":{"message":"slow down"}}"#.into())),
        extra_headers: vec![("Retry-After".into(), "20".into())],
        ..Behavior::default()
    });
    let b = MockBackend::start(Behavior {
        status: Some((503, r#"{"error":{"message":"busy"}}"#.into())),
        extra_headers: vec![("Retry-After".into(), "4".into())],
        ..Behavior::default()
    });
    let p = Proxy::start(&two_backends(&a.url(), &b.url()));
    for n in 0..2 {
        let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
        let e = r.error(429);
        assert_eq!(e["code"], "rate_limit_exceeded", "request {}: {}", n, e);
        let wait = retry_after(&r);
        assert!(wait <= 4, "the soonest recovery is 4 s away, got {}", wait);
    }
    assert_eq!(
        (a.requests().len(), b.requests().len()),
        (1, 1),
        "cooling backends are not tried"
    );
}

#[test]
fn a_single_backends_429_is_relayed_with_its_retry_after_and_it_cools_for_that_long() {
    let a = MockBackend::start(Behavior {
        status: Some((
            429,
            r#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
                .into(),
        )),
        extra_headers: vec![("Retry-After".into(), "2".into())],
        ..Behavior::default()
    });
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({"health": {"failureThreshold": 100}}),
    ));
    let t0 = Instant::now();
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"), "{:?}", r.headers);
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
    r.error(429);
    assert!(retry_after(&r) <= 2);
    assert_eq!(a.requests().len(), 1, "not tried while cooling");
    a.set_behavior(Behavior::default());
    let deadline = Instant::now() + Duration::from_secs(6);
    let r = loop {
        let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        r.status,
        200,
        "tried again after the cool-down: {}",
        r.text()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "served again after {:?}, before the Retry-After",
        t0.elapsed()
    );
    assert_eq!(a.requests().len(), 2);
}

#[test]
fn only_keys_trusted_to_name_users_spend_a_users_budget_through_the_body() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let p = Proxy::start(&config(
        json!({"m": endpoint(&a.url(), json!({}))}),
        json!({
            "proxyKeys": [
                {"key": "sk-limits-owui-key-000001", "name": "owui", "trustUserHeaders": true},
                {"key": "sk-limits-script-key-00002", "name": "scripts"},
            ],
            "limits": [{"match": {"user": "*"}, "requestsPerMinute": 2}],
            "usageLog": log.to_str().unwrap(),
        }),
    ));
    let owui = "Bearer sk-limits-owui-key-000001";
    let scripts = "Bearer sk-limits-script-key-00002";
    let as_user = |auth: &str, user: &str| {
        send(
            p.addr,
            &[("Authorization", auth)],
            &body(user, "hi", json!({})),
        )
    };
    let left = |r: &Resp| header_u64(r, "x-ratelimit-remaining-requests");
    room_in_this_minute(15);
    // The untrusted key says it is ann: counted under the key, not ann.
    let r = as_user(scripts, "ann");
    assert_eq!((r.status, left(&r)), (200, 1), "{}", r.text());
    // A new name per request mints no new budget: the key's own 2 are spent.
    let r = as_user(scripts, "fresh-1");
    assert_eq!((r.status, left(&r)), (200, 0), "{}", r.text());
    refused(&as_user(scripts, "fresh-2"), "rate_limit_exceeded", 0);
    // Ann's budget is whole: the trusted key spends it, and only it.
    let r = as_user(owui, "ann");
    assert_eq!((r.status, left(&r)), (200, 1), "{}", r.text());
    let r = as_user(owui, "ann");
    assert_eq!((r.status, left(&r)), (200, 0), "{}", r.text());
    refused(&as_user(owui, "ann"), "rate_limit_exceeded", 0);
    // A trusted key's new name is a user of its own.
    let r = as_user(owui, "bea");
    assert_eq!((r.status, left(&r)), (200, 1), "{}", r.text());
    // The ledger keeps the untrusted names as the end user's label beside the key.
    // Served lines only: the 429s are in the ledger too, as refusals.
    let served = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["status"] == 200)
            .collect()
    };
    wait_until("the ledger lines", Duration::from_secs(5), || {
        served().len() >= 5
    });
    let mut got: Vec<(String, String, String)> = served()
        .into_iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
            (s("user"), s("key"), s("end_user"))
        })
        .collect();
    got.sort();
    let want = [
        ("ann", "owui", "-"),
        ("ann", "owui", "-"),
        ("bea", "owui", "-"),
        ("scripts", "scripts", "ann"),
        ("scripts", "scripts", "fresh-1"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
}
