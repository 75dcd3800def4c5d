//! Issue 24 items 2, 3 and 16, issue 17 items 5 to 7: budgets that hold (the largest max tokens
//! field reserved, a default when there is none, and the bound a backend that ignores them can
//! overspend by), mistyped core fields refused, event streams accounted as streams, estimates
//! that read spaced JSON and reasoning text, implausible token counts not believed, refusals
//! in the ledger without using up `requestsPerMinute`, and token metrics that agree.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::fake_backend::{chunk, FakeBackend, Step};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-budgets-backend-key-3e4f5a";
const ADMIN: &str = "admin-key-budgets-6b7c8d";
/// What modelmux reserves for a generating request that names no max tokens field.
const DEFAULT_MAX_TOKENS: u64 = 4096;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until more than `need` seconds are left in the current UTC minute, so every request
/// of a test falls in one per-minute window.
fn room_in_this_minute(need: u64) {
    assert!(need < 50);
    wait_until(
        "room in the current UTC minute",
        Duration::from_secs(need + 2),
        || 60 - now_secs() % 60 > need,
    );
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// Model `m` (and `d`, the same backend with `defaultMaxTokens: 700`) on `url`, the ledger in
/// `dir`, plus `top` fields and `ep` endpoint fields.
fn config(url: &str, dir: &TempDir, top: Value, ep: Value) -> String {
    let mut m = json!({"url": url, "apiKey": KEY, "actualModelName": "real-m"});
    merge(&mut m, ep);
    let mut d = m.clone();
    d["defaultMaxTokens"] = 700.into();
    let mut root = json!({
        "endpoints": {"m": m, "d": d},
        "usageLog": dir.0.join("usage.jsonl").display().to_string(),
    });
    merge(&mut root, top);
    root.to_string()
}

/// A chat body for `model` from `user`, plus `extra` fields.
fn body(model: &str, user: &str, extra: Value) -> String {
    let mut b = json!({"model": model, "user": user,
                       "messages": [{"role": "user", "content": "one two three"}]});
    merge(&mut b, extra);
    b.to_string()
}

fn post(p: &Proxy, path: &str, body: &str) -> Resp {
    request(
        p.addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn chat(p: &Proxy, body: &str) -> Resp {
    post(p, "/v1/chat/completions", body)
}

/// The prompt part of a reservation: the body's bytes / 4, rounded up.
fn prompt_estimate(body: &str) -> u64 {
    (body.len() as u64).div_ceil(4)
}

fn ledger(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {:?}: {}", l, e)))
        .collect()
}

/// Waits until the ledger holds `n` lines.
fn ledger_lines(dir: &TempDir, n: usize) -> Vec<Value> {
    let path = dir.0.join("usage.jsonl");
    wait_until("the ledger lines", Duration::from_secs(5), || {
        ledger(&path).len() >= n
    });
    ledger(&path)
}

fn header_u64(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {} in {:?}", name, r.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{} is not a number: {:?}", name, r.header(name)))
}

/// The value of one series in /metrics, e.g. `modelmux_x_total{limit="concurrent"}`.
/// `metrics.key` in the configs that turn per-user series on: only it (or the admin key) sees them.
const METRICS_KEY: &str = "metrics-reader-key";

fn metric(p: &Proxy, series: &str) -> Option<f64> {
    let auth = format!("Bearer {}", METRICS_KEY);
    let m = request(p.addr, "GET", "/metrics", &[("Authorization", &auth)], b"");
    m.text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A backend answer with exactly this JSON body.
fn json_answer(body: &str) -> Vec<Step> {
    vec![Step::Send(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            body
        )
        .into_bytes(),
    )]
}

/// A backend answer streaming these SSE `data:` payloads, then `[DONE]`.
fn sse_answer(payloads: &[&str]) -> Vec<Step> {
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for p in payloads.iter().chain(["[DONE]"].iter()) {
        out.extend(chunk(format!("data: {}\n\n", p).as_bytes()));
    }
    out.extend(b"0\r\n\r\n");
    vec![Step::Send(out)]
}

#[test]
fn the_largest_max_tokens_field_is_reserved_and_without_one_a_default() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let limit = 100_000;
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": limit}]}),
        json!({}),
    ));
    room_in_this_minute(10);
    // Each user's first request: the remaining tokens its answer shows are the limit less what
    // it reserved.
    let cases = [
        // Issue 24's case: the first field present (1) was reserved, the backend honoured 4000.
        (
            "/v1/chat/completions",
            body(
                "m",
                "both",
                json!({"max_tokens": 1, "max_completion_tokens": 4000}),
            ),
            4000,
        ),
        (
            "/v1/chat/completions",
            body(
                "m",
                "both-reversed",
                json!({"max_completion_tokens": 30, "max_tokens": 2000}),
            ),
            2000,
        ),
        // A whole number written as a float is that number, as lax validators read it.
        (
            "/v1/chat/completions",
            body("m", "float", json!({"max_tokens": 1000.0})),
            1000,
        ),
        // Each of `n` completions may be that long.
        (
            "/v1/chat/completions",
            body("m", "three", json!({"n": 3, "max_tokens": 100})),
            300,
        ),
        // No field: the built-in default, or the endpoint's defaultMaxTokens.
        (
            "/v1/chat/completions",
            body("m", "none", json!({})),
            DEFAULT_MAX_TOKENS,
        ),
        ("/v1/chat/completions", body("d", "none-d", json!({})), 700),
        (
            "/v1/chat/completions",
            body("m", "null", json!({"max_tokens": null})),
            DEFAULT_MAX_TOKENS,
        ),
        (
            "/v1/responses",
            json!({"model": "m", "user": "resp", "input": "one two", "max_output_tokens": 3000})
                .to_string(),
            3000,
        ),
        (
            "/v1/responses",
            json!({"model": "m", "user": "resp-none", "input": "one two"}).to_string(),
            DEFAULT_MAX_TOKENS,
        ),
    ];
    for (path, b, max) in &cases {
        let r = post(&p, path, b);
        assert_eq!(r.status, 200, "{} {}: {}", path, b, r.text());
        assert_eq!(
            header_u64(&r, "x-ratelimit-remaining-tokens"),
            limit - prompt_estimate(b) - max,
            "{} {}",
            path,
            b
        );
    }
    // A request whose largest field cannot fit is refused before any backend sees it (a
    // ledger of its own: one process per ledger).
    let small_dir = TempDir::new();
    let small = Proxy::start(&config(
        &a.url(),
        &small_dir,
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": 3000}]}),
        json!({}),
    ));
    let seen = a.requests().len();
    let b = body(
        "m",
        "small",
        json!({"max_tokens": 1, "max_completion_tokens": 4000}),
    );
    let e = chat(&small, &b).error(429);
    assert!(
        e["message"].as_str().unwrap().contains(&format!(
            "this request may use up to {} tokens",
            prompt_estimate(&b) + 4000
        )),
        "{}",
        e
    );
    assert_eq!(a.requests().len(), seen);
}

/// Sends `n` requests with `body` at once; returns their statuses.
fn at_once(p: &Proxy, n: usize, body: &str) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, b) = (p.addr, body.to_string());
            std::thread::spawn(move || {
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("Content-Type", "application/json")],
                    b.as_bytes(),
                )
                .status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Tokens the ledger charged to `user`.
fn charged(lines: &[Value], user: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l["user"] == user)
        .map(|l| l["prompt_tokens"].as_u64().unwrap() + l["completion_tokens"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_budget_holds_when_clients_send_no_max_tokens() {
    // Open WebUI sends no max_tokens; the model writes 3,000 tokens, within the default.
    let a = MockBackend::start(Behavior {
        status: Some((
            200,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"long"}}],"usage":{"prompt_tokens":10,"completion_tokens":3000}}"#.into(),
        )),
        first_byte_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let limit = 12_000;
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": limit}]}),
        json!({}),
    ));
    room_in_this_minute(15);
    let statuses = at_once(&p, 16, &body("m", "owui", json!({})));
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!(served >= 1, "{:?}", statuses);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{:?}",
        statuses
    );
    let lines = ledger_lines(&dir, 16);
    let spent = charged(&lines, "owui");
    // Before the fix 16 requests reserved only their prompts: 16 x 3,010 tokens were spent.
    assert!(
        spent <= limit,
        "spent {} tokens on a budget of {} ({} served)",
        spent,
        limit,
        served
    );
}

#[test]
fn a_backend_that_ignores_max_tokens_overspends_by_at_most_its_excess_over_the_reservation() {
    // The backend writes 300 tokens whatever the request allows (100, the endpoint's default).
    let a = MockBackend::start(Behavior {
        status: Some((
            200,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":300}}"#.into(),
        )),
        first_byte_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let limit = 1000;
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": limit}]}),
        json!({"defaultMaxTokens": 100}),
    ));
    room_in_this_minute(15);
    let b = body("m", "greedy", json!({}));
    let reservation = prompt_estimate(&b) + 100;
    let statuses = at_once(&p, 16, &b);
    let served = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert!(served >= 1, "{:?}", statuses);
    let lines = ledger_lines(&dir, 16);
    let spent = charged(&lines, "greedy");
    assert_eq!(spent, served * 310);
    // The README's bound: the budget is exceeded only by what admitted requests used beyond
    // their reservations (here each 310 - reservation).
    assert!(
        spent <= limit + served * (310 - reservation),
        "spent {} with {} served, each reserving {}",
        spent,
        served,
        reservation
    );
    // Once spent, the window admits nothing more.
    assert_eq!(chat(&p, &b).status, 429);
}

#[test]
fn mistyped_core_fields_get_400_invalid_type() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(&config(&a.url(), &dir, json!({}), json!({})));
    let chat_path = "/v1/chat/completions";
    let cases: [(&str, Value, &str, &str); 11] = [
        (
            chat_path,
            json!({"stream": "true"}),
            "stream",
            "a boolean, but got a string",
        ),
        (
            chat_path,
            json!({"stream": 1}),
            "stream",
            "a boolean, but got an integer",
        ),
        (
            chat_path,
            json!({"stream_options": "usage"}),
            "stream_options",
            "an object, but got a string",
        ),
        (
            chat_path,
            json!({"max_tokens": "100"}),
            "max_tokens",
            "a non-negative integer, but got a string",
        ),
        (
            chat_path,
            json!({"max_tokens": -1}),
            "max_tokens",
            "a non-negative integer, but got a number",
        ),
        (
            chat_path,
            json!({"max_completion_tokens": 1.5}),
            "max_completion_tokens",
            "a non-negative integer, but got a number",
        ),
        (
            chat_path,
            json!({"messages": "hi"}),
            "messages",
            "an array, but got a string",
        ),
        (
            chat_path,
            json!({"n": "2"}),
            "n",
            "a non-negative integer, but got a string",
        ),
        (chat_path, json!({"model": 3}), "model", ""),
        (
            "/v1/responses",
            json!({"max_output_tokens": "5"}),
            "max_output_tokens",
            "a non-negative integer, but got a string",
        ),
        (
            "/v1/completions",
            json!({"stream": "false"}),
            "stream",
            "a boolean, but got a string",
        ),
    ];
    for (path, extra, param, got) in cases {
        let b = body("m", "typo", extra.clone());
        let r = post(&p, path, &b);
        let e = r.error(400);
        assert_eq!(
            (&e["type"], &e["param"], &e["code"]),
            (
                &json!("invalid_request_error"),
                &json!(param),
                &json!("invalid_type")
            ),
            "{} {}",
            path,
            extra
        );
        if !got.is_empty() {
            assert_eq!(
                e["message"],
                format!("Invalid type for '{}': expected {} instead.", param, got),
                "{}",
                extra
            );
        }
    }
    // The exact answer, as OpenAI words it.
    let r = chat(&p, &body("m", "typo", json!({"stream": "true"})));
    assert_eq!(
        r.json(),
        json!({"error": {
            "message": "Invalid type for 'stream': expected a boolean, but got a string instead.",
            "type": "invalid_request_error", "param": "stream", "code": "invalid_type"}})
    );
    assert!(
        a.requests().is_empty(),
        "no mistyped request reached the backend"
    );
    // A `user` that is not a string is not an identity (the key is): forwarded as it was, for
    // servers such as Open WebUI's pipelines that take an object there.
    let r = chat(&p, &body("m", "typo", json!({"user": {"id": "u1"}})));
    assert_eq!(r.status, 200, "{}", r.text());
    // null is what OpenAI accepts for these fields.
    let r = chat(
        &p,
        &body(
            "m",
            "typo",
            json!({"stream": null, "max_tokens": null, "stream_options": null}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests().len(), 2);
}

#[test]
fn an_event_stream_is_accounted_as_a_stream_whatever_the_request_said() {
    let usage = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":400}}"#;
    let content = r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
    let b = FakeBackend::start(move |_| sse_answer(&[content, usage]));
    let dir = TempDir::new();
    let p = Proxy::start(&config(&b.url, &dir, json!({}), json!({})));
    // No `stream` at all, and `stream: false`: the backend streams anyway.
    for extra in [json!({}), json!({"stream": false})] {
        let r = chat(&p, &body("m", "lax", extra));
        assert_eq!(r.status, 200);
        assert!(
            r.text().contains("\"completion_tokens\":400"),
            "{}",
            r.text()
        );
    }
    for l in ledger_lines(&dir, 2) {
        assert_eq!(
            (
                &l["prompt_tokens"],
                &l["completion_tokens"],
                &l["estimated"]
            ),
            (&json!(12), &json!(400), &json!(false)),
            "{}",
            l
        );
    }
}

#[test]
fn estimates_count_reasoning_text_and_json_written_with_spaces() {
    // 4 characters of reasoning and 8 of content, without usage: 12 characters, 3 tokens.
    let compact = [
        r#"{"choices":[{"index":0,"delta":{"reasoning_content":"abcd"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"efgh"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"ijkl"},"finish_reason":"stop"}]}"#,
    ];
    // Python's json.dumps: a space after every colon and comma; `reasoning` as some servers
    // name it.
    let spaced = [
        r#"{"choices": [{"index": 0, "delta": {"reasoning": "abcd"}}]}"#,
        r#"{"choices": [{"index": 0, "delta": {"content": "efgh"}}]}"#,
        r#"{"choices": [{"index": 0, "delta": {"content" : "ijkl"}, "finish_reason": "stop"}]}"#,
    ];
    let json_reply = r#"{"choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": "abcd", "content": "efghijkl"}}]}"#;
    let b = FakeBackend::start(move |req| {
        let content = req.content();
        match content.as_str() {
            "compact" => sse_answer(&compact),
            "spaced" => sse_answer(&spaced),
            _ => json_answer(json_reply),
        }
    });
    let dir = TempDir::new();
    let p = Proxy::start(&config(
        &b.url,
        &dir,
        json!({}),
        json!({"injectStreamUsage": false}),
    ));
    for (what, stream) in [("compact", true), ("spaced", true), ("json", false)] {
        let r = chat(&p, &chat_body("m", what, stream));
        assert_eq!(r.status, 200, "{}", what);
    }
    let lines = ledger_lines(&dir, 3);
    for l in &lines {
        assert_eq!(
            (&l["completion_tokens"], &l["estimated"]),
            (&json!(3), &json!(true)),
            "{}",
            l
        );
    }
}

#[test]
fn token_counts_above_a_billion_are_not_believed() {
    let reply = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"abcdefgh"}}],"usage":{"prompt_tokens":12,"completion_tokens":18446744073709551615}}"#;
    let b = FakeBackend::start(move |_| json_answer(reply));
    let dir = TempDir::new();
    let limit = 100_000;
    let p = Proxy::start(&config(
        &b.url,
        &dir,
        json!({"limits": [{"match": {"user": "*"}, "tokensPerMinute": limit}]}),
        json!({"defaultMaxTokens": 10}),
    ));
    room_in_this_minute(10);
    let body1 = body("m", "wrap", json!({}));
    let r = chat(&p, &body1);
    assert_eq!(r.status, 200, "{}", r.text());
    let l = &ledger_lines(&dir, 1)[0];
    // Estimated instead: the prompt body / 4 and "abcdefgh" / 4.
    assert_eq!(
        (
            &l["prompt_tokens"],
            &l["completion_tokens"],
            &l["estimated"]
        ),
        (&json!(prompt_estimate(&body1)), &json!(2), &json!(true)),
        "{}",
        l
    );
    assert_eq!(metric(&p, "modelmux_invalid_usage_total"), Some(1.0));
    let warning = p
        .wait_log("are not believed", Duration::from_secs(2))
        .expect("a warning");
    assert!(
        !warning.contains("abcdefgh"),
        "no content in logs: {}",
        warning
    );
    // The quota was charged the estimate (before, 12 + 2^64-1 wrapped to a charge of 11).
    let body2 = body("m", "wrap", json!({"max_tokens": 5}));
    let r = chat(&p, &body2);
    assert_eq!(r.status, 200);
    assert_eq!(
        header_u64(&r, "x-ratelimit-remaining-tokens"),
        limit - (prompt_estimate(&body1) + 2) - (prompt_estimate(&body2) + 5)
    );
}

#[test]
fn refusals_are_in_the_ledger_and_use_no_request_budget() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(2000),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = Proxy::start_with(
        &config(
            &a.url(),
            &dir,
            json!({"limits": [{"match": {"user": "*"}, "requestsPerMinute": 2}]}),
            json!({"maxConcurrent": 1, "maxQueueWaitSecs": 1}),
        ),
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)],
        &[],
    );
    room_in_this_minute(20);
    let b = body("m", "rita", json!({"max_tokens": 5}));
    let blocker = {
        let (addr, b) = (p.addr, b.clone());
        std::thread::spawn(move || {
            request(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("Content-Type", "application/json")],
                b.as_bytes(),
            )
        })
    };
    wait_until("the blocker at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    let t0 = Instant::now();
    let r = chat(&p, &b);
    assert_eq!(r.error(503)["code"], "overloaded");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    let first = blocker.join().unwrap();
    assert_eq!(first.status, 200);
    a.set_behavior(Behavior::default());
    // Two requests a minute: the blocker and this one. Before, the 503 had used up the second.
    let r = chat(&p, &b);
    assert_eq!(r.status, 200, "{}", r.text());
    // The third is a quota 429, with the same x-ratelimit-* headers as a 200.
    let limited = chat(&p, &b);
    assert_eq!(limited.error(429)["code"], "rate_limit_exceeded");
    let names = |r: &Resp| {
        let mut n: Vec<String> = r
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .filter(|n| n.starts_with("x-ratelimit-"))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&limited), names(&r));
    assert_eq!(names(&r).len(), 3, "{:?}", r.headers);
    assert_eq!(header_u64(&limited, "x-ratelimit-limit-requests"), 2);
    assert_eq!(header_u64(&limited, "x-ratelimit-remaining-requests"), 0);
    // An unknown model is refused too, once the user is known.
    let r = chat(&p, &body("nope", "rita", json!({})));
    assert_eq!(r.error(404)["code"], "model_not_found");
    let lines = ledger_lines(&dir, 5);
    assert_eq!(lines.len(), 5, "{:?}", lines);
    let mut seen: Vec<(u64, String, String, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["user"], "rita", "{}", l);
            (
                l["status"].as_u64().unwrap(),
                l["outcome"].as_str().unwrap().to_string(),
                l["model"].as_str().unwrap().to_string(),
                l["prompt_tokens"].as_u64().unwrap() + l["completion_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let served_tokens = seen[0].3;
    assert!(served_tokens > 0);
    assert_eq!(
        seen,
        vec![
            (200, "complete".to_string(), "m".to_string(), served_tokens),
            (200, "complete".to_string(), "m".to_string(), served_tokens),
            (404, "refused".to_string(), "nope".to_string(), 0),
            (429, "refused".to_string(), "m".to_string(), 0),
            (503, "refused".to_string(), "m".to_string(), 0),
        ]
    );
    let r = request(
        p.addr,
        "GET",
        "/usage?user=rita&by=user",
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = &r.json()["data"][0];
    assert_eq!(row["requests"], 5, "{}", row);
    assert_eq!(
        row["requests_by_outcome"],
        json!({"complete": 2, "client_gone": 0, "upstream_failed": 0, "error": 0, "refused": 3})
    );
}

#[test]
fn token_metrics_include_estimates_with_a_label() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        json!({"metrics": {"perUser": true, "key": METRICS_KEY}}),
        json!({"injectStreamUsage": false}),
    ));
    let mut exact: Value = serde_json::from_str(&chat_body("m", "one two", false)).unwrap();
    exact["user"] = "mia".into();
    assert_eq!(chat(&p, &exact.to_string()).status, 200);
    // A stream without its usage chunk: estimated.
    let mut est: Value = serde_json::from_str(&chat_body("m", "three four five", true)).unwrap();
    est["user"] = "mia".into();
    assert_eq!(chat(&p, &est.to_string()).status, 200);
    let lines = ledger_lines(&dir, 2);
    let sum = |estimated: bool, field: &str| -> f64 {
        lines
            .iter()
            .filter(|l| l["estimated"] == estimated)
            .map(|l| l[field].as_u64().unwrap() as f64)
            .sum()
    };
    assert!(sum(true, "completion_tokens") > 0.0);
    wait_until("both requests in /metrics", Duration::from_secs(5), || {
        metric(&p, "modelmux_user_requests_total{user=\"mia\"}") == Some(2.0)
    });
    for (estimated, flag) in [(true, "true"), (false, "false")] {
        for (dir, field) in [
            ("prompt", "prompt_tokens"),
            ("completion", "completion_tokens"),
        ] {
            let want = Some(sum(estimated, field));
            let model = format!(
                "modelmux_tokens_total{{model=\"m\",direction=\"{}\",estimated=\"{}\"}}",
                dir, flag
            );
            assert_eq!(metric(&p, &model), want, "{}", model);
            let user = format!(
                "modelmux_user_tokens_total{{user=\"mia\",direction=\"{}\",estimated=\"{}\"}}",
                dir, flag
            );
            assert_eq!(metric(&p, &user), want, "{}", user);
        }
    }
}

#[test]
fn cap_max_tokens_forwards_what_the_reservation_covers() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let cfg = |cap: Value| {
        config(
            &a.url(),
            &dir,
            json!({}),
            json!({"defaultMaxTokens": 50, "capMaxTokens": cap}),
        )
    };
    let sent = |p: &Proxy, path: &str, b: &str| -> Value {
        let r = post(p, path, b);
        assert_eq!(r.status, 200, "{}", r.text());
        a.requests().last().unwrap().json().unwrap()
    };
    let p = Proxy::start(&cfg(json!(true)));
    let got = sent(&p, "/v1/chat/completions", &body("m", "u", json!({})));
    assert_eq!(got["max_tokens"], 50, "{}", got);
    // `n` completions each reserved 50: each may be 50 long.
    let got = sent(&p, "/v1/chat/completions", &body("m", "u", json!({"n": 2})));
    assert_eq!(got["max_tokens"], 50, "{}", got);
    // A request that names a field is forwarded as sent: its reservation covers the largest.
    let got = sent(
        &p,
        "/v1/chat/completions",
        &body("m", "u", json!({"max_completion_tokens": 7})),
    );
    assert_eq!(
        (&got["max_completion_tokens"], got.get("max_tokens")),
        (&json!(7), None),
        "{}",
        got
    );
    // The Responses API's own field.
    let got = sent(
        &p,
        "/v1/responses",
        &json!({"model": "m", "input": "hi"}).to_string(),
    );
    assert_eq!(got["max_output_tokens"], 50, "{}", got);
    // One process per ledger: the next proxy starts once this one is gone.
    drop(p);
    let p = Proxy::start(&cfg(json!("max_completion_tokens")));
    let got = sent(&p, "/v1/chat/completions", &body("m", "u", json!({})));
    assert_eq!(
        (&got["max_completion_tokens"], got.get("max_tokens")),
        (&json!(50), None),
        "{}",
        got
    );
    drop(p);
    // Off (the default): forwarded as sent.
    let p = Proxy::start(&cfg(json!(false)));
    let got = sent(&p, "/v1/chat/completions", &body("m", "u", json!({})));
    assert!(got.get("max_tokens").is_none(), "{}", got);
    drop(p);
    // A typo is an error, not a silent "off".
    let err = Proxy::try_start(&cfg(json!("max-tokens")), &[], &[])
        .err()
        .expect("refused");
    assert!(
        err.iter().any(|l| l.contains("capMaxTokens")),
        "{}",
        err.join("\n")
    );
}

#[test]
fn refusals_read_back_from_the_ledger_use_no_budget_after_a_restart() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let cfg = config(
        &a.url(),
        &dir,
        json!({"limits": [{"match": {"user": "*"}, "requestsPerMinute": 2}]}),
        json!({}),
    );
    let p = Proxy::start(&cfg);
    room_in_this_minute(15);
    let b = body("m", "sam", json!({"max_tokens": 5}));
    assert_eq!(chat(&p, &b).status, 200);
    for _ in 0..3 {
        assert_eq!(chat(&p, &body("nope", "sam", json!({}))).status, 404);
    }
    ledger_lines(&dir, 4);
    drop(p);
    // The restarted proxy counts this minute's requests from the ledger: one, not four.
    let p = Proxy::start(&cfg);
    let r = chat(&p, &b);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 0);
}
