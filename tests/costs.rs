//! Issue 20, prices and cost: what each request cost, from its exact usage and the configured
//! prices, in the ledger, `/usage`, `modelmux usage`, `/metrics` and the access log; the
//! LiteLLM-format price file; every price the config check refuses. Every figure below is
//! computed by hand from the prices per 1M tokens in the test's config.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::fake_backend::{FakeBackend, FakeReq, Step};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const ADMIN: &str = "admin-key-costs-4f3e2d1c";
const METRICS_KEY: &str = "sk-metrics-costs-77";

fn fixture() -> String {
    format!(
        "{}/tests/fixtures/litellm_prices.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A chat completion answer whose usage depends on the request's message.
fn usage_backend(usage_for: fn(&str) -> Value) -> FakeBackend {
    FakeBackend::start(move |req: &FakeReq| {
        let body = json!({"id":"c1","object":"chat.completion","created":1,"model":"x",
            "choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
            "usage": usage_for(&req.content())})
        .to_string();
        vec![Step::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                body
            )
            .into_bytes(),
        )]
    })
}

/// The config: `endpoints` as given, a ledger in `dir`, per-user metrics, and `extra` top-level
/// fields.
fn config(endpoints: Value, dir: &TempDir, extra: Value) -> String {
    let mut c = json!({"endpoints": endpoints,
        "usageLog": dir.0.join("usage.jsonl").display().to_string(),
        "metrics": {"perUser": true, "key": METRICS_KEY}});
    merge(&mut c, extra);
    c.to_string()
}

fn start(config: &str) -> Proxy {
    Proxy::start_with(config, &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)], &[])
}

fn chat_as(p: &Proxy, user: &str, model: &str, content: &str, stream: bool) -> Resp {
    let mut body: Value = serde_json::from_str(&chat_body(model, content, stream)).unwrap();
    body["user"] = user.into();
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn ledger_lines(dir: &TempDir, n: usize) -> Vec<Value> {
    let path = dir.0.join("usage.jsonl");
    wait_until("ledger lines", Duration::from_secs(5), || {
        ledger(&path).len() >= n
    });
    ledger(&path)
}

fn admin_get(p: &Proxy, path: &str) -> Resp {
    request(
        p.addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    )
}

fn metrics(p: &Proxy) -> String {
    request(
        p.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {}", METRICS_KEY))],
        b"",
    )
    .text()
}

fn openai_usage(content: &str) -> Value {
    match content {
        // 1000 prompt tokens of which 400 cached; 200 completion tokens of which 150 reasoning.
        "cached" => json!({"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,
            "prompt_tokens_details":{"cached_tokens":400},
            "completion_tokens_details":{"reasoning_tokens":150}}),
        "long" => json!({"prompt_tokens":300000,"completion_tokens":1000,"total_tokens":301000}),
        "edge" => json!({"prompt_tokens":200000,"completion_tokens":1000,"total_tokens":201000}),
        _ => json!({"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100,
            "prompt_tokens_details":{"cached_tokens":200}}),
    }
}

/// OpenAI usage with cached and reasoning tokens: `(prompt − cached)·input +
/// cached·cachedInput + completion·output`, reasoning inside completion, once. The cost is in
/// the ledger, `/usage` (by user and model), `modelmux usage`, `/metrics` (by model and per
/// user) and the access log.
#[test]
fn openai_usage_with_cached_and_reasoning_tokens_is_priced_once_everywhere() {
    let f = usage_backend(openai_usage);
    let dir = TempDir::new();
    let cfg = config(
        json!({"m": {"url": f.url, "actualModelName": "real-m",
            "pricing": {"input": 2.50, "output": 10.00, "cachedInput": 1.25}}}),
        &dir,
        json!({}),
    );
    let p = start(&cfg);
    for user in ["ann", "ann", "ben"] {
        assert_eq!(chat_as(&p, user, "m", "cached", false).status, 200);
    }
    // 600·2.50 + 400·1.25 + 200·10.00 = 1500 + 500 + 2000 = 4000 micro-units: 0.004000 USD.
    // (Reasoning added again would make it 0.005500; cached tokens at the full rate too,
    // 0.005000.)
    let lines = ledger_lines(&dir, 3);
    for l in &lines {
        assert_eq!(
            (&l["cost"], &l["currency"], l.get("cost_estimated")),
            (&json!("0.004000"), &json!("USD"), None),
            "{}",
            l
        );
    }
    let r = admin_get(&p, "/usage?by=user,model");
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = &r.json()["data"];
    assert_eq!(
        (
            &rows[0]["user"],
            &rows[0]["cost"],
            &rows[0]["estimated_cost"],
            &rows[0]["currency"],
            &rows[0]["unpriced_requests"]
        ),
        (
            &json!("ann"),
            &json!("0.008000"),
            &json!("0.000000"),
            &json!("USD"),
            &json!(0)
        )
    );
    assert_eq!(
        (&rows[1]["user"], &rows[1]["cost"]),
        (&json!("ben"), &json!("0.004000"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["usage", "--log"])
        .arg(dir.0.join("usage.jsonl"))
        .args(["--by", "model", "--json"])
        .output()
        .unwrap();
    let by_model: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_model["data"][0]["cost"], "0.012000");
    let table = Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["usage", "--log"])
        .arg(dir.0.join("usage.jsonl"))
        .args(["--by", "user"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][7..], ["cost", "currency"], "{}", table);
    assert_eq!(rows[1][7..], ["0.008000", "USD"], "{}", table);
    // The metrics are counted just after the ledger line is written.
    wait_until("the cost in /metrics", Duration::from_secs(5), || {
        metrics(&p).contains("modelmux_cost_total{model=\"m\",currency=\"USD\"} 0.012000")
    });
    let m = metrics(&p);
    assert!(
        m.contains("modelmux_user_cost_total{user=\"ann\",currency=\"USD\"} 0.008000"),
        "{}",
        m
    );
    assert!(p
        .wait_log(
            "outcome=complete cost=0.004000 currency=USD",
            Duration::from_secs(2)
        )
        .is_some());
}

/// Native Messages API usage: `input·input + cache_read·cachedInput +
/// cache_creation_5m·cacheWrite + cache_creation_1h·cacheWrite1h + output·output`, each cache
/// write billed once, at its own rate; as a JSON answer and as a stream (input and cache counts in message_start, the
/// output in message_delta).
#[test]
fn anthropic_native_usage_bills_5_minute_and_1_hour_cache_writes_apart() {
    let usage = json!({"input_tokens": 100, "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 1500,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
        "output_tokens": 300});
    let native = MockBackend::start(Behavior {
        status: Some((
            200,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                   "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
                   "stop_sequence": null, "usage": usage})
            .to_string(),
        )),
        ..Behavior::default()
    });
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let stream = format!(
        "event: message_start\ndata: {}\n\nevent: content_block_start\ndata: {}\n\nevent: content_block_delta\ndata: {}\n\nevent: content_block_stop\ndata: {}\n\nevent: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n",
        json!({"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant",
            "content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":start_usage}}),
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}),
        json!({"type":"content_block_stop","index":0}),
        json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
            "usage":{"output_tokens":300}}),
        json!({"type":"message_stop"}),
    );
    let native_stream = FakeBackend::start(move |_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        bytes.extend(support::fake_backend::chunk(stream.as_bytes()));
        bytes.extend_from_slice(b"0\r\n\r\n");
        vec![Step::Send(bytes)]
    });
    let pricing = json!({"input": 3, "output": 15, "cachedInput": 0.30, "cacheWrite": 3.75,
        "cacheWrite1h": 6});
    let dir = TempDir::new();
    let cfg = config(
        json!({"claude": {"url": native.url(), "messagesApi": "native", "pricing": pricing},
               "claude-s": {"url": native_stream.url, "messagesApi": "native", "pricing": pricing}}),
        &dir,
        json!({}),
    );
    let p = start(&cfg);
    for (model, stream) in [("claude", false), ("claude-s", true)] {
        let body = json!({"model": model, "max_tokens": 400, "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]})
        .to_string();
        let r = request(
            p.addr,
            "POST",
            "/v1/messages",
            &[
                ("Content-Type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // 100·3 + 2000·0.30 + 1000·3.75 + 500·6 + 300·15 = 300 + 600 + 3750 + 3000 + 4500 = 12150
    // micro-units. (The writes at the input price would make it 0.009900; all at the 5-minute
    // rate, 0.011400; counted in the prompt and again as writes, 0.016650.)
    for l in ledger_lines(&dir, 2) {
        assert_eq!(
            (
                &l["prompt_tokens"],
                &l["cached_tokens"],
                &l["cache_write_tokens"],
                &l["cache_write_1h_tokens"],
                &l["completion_tokens"],
                &l["cost"]
            ),
            (
                &json!(3600),
                &json!(2000),
                &json!(1500),
                &json!(500),
                &json!(300),
                &json!("0.012150")
            ),
            "{}",
            l
        );
    }
    // `/usage` sums the cache writes too (both requests, by model); a model without any keeps
    // the answer's shape as before.
    let r = admin_get(&p, "/usage?by=model");
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{}", r.text());
    for row in &rows {
        assert_eq!(
            (
                &row["cached_tokens"],
                &row["cache_write_tokens"],
                &row["cache_write_1h_tokens"],
                &row["cost"]
            ),
            (&json!(2000), &json!(1500), &json!(500), &json!("0.012150")),
            "{}",
            row
        );
    }
}

/// `aboveInputTokens` re-prices the whole request once its prompt is above the threshold.
#[test]
fn a_prompt_above_the_threshold_reprices_the_whole_request() {
    let f = usage_backend(openai_usage);
    let dir = TempDir::new();
    let cfg = config(
        json!({"m": {"url": f.url, "pricing": {"input": 3, "output": 15,
            "aboveInputTokens": {"threshold": 200000, "input": 6, "output": 22.5}}}}),
        &dir,
        json!({}),
    );
    let p = start(&cfg);
    assert_eq!(chat_as(&p, "ann", "m", "edge", false).status, 200);
    assert_eq!(chat_as(&p, "ann", "m", "long", false).status, 200);
    // A line is written once its answer is sent: two lines may land in either order.
    let cost_of = |prompt: u64| {
        ledger_lines(&dir, 2)
            .into_iter()
            .find(|l| l["prompt_tokens"] == prompt)
            .unwrap()["cost"]
            .clone()
    };
    // At the threshold: 200000·3 + 1000·15 = 600000 + 15000 = 615000 → 0.615000.
    assert_eq!(cost_of(200_000), "0.615000");
    // Above it, every token at the tier: 300000·6 + 1000·22.5 = 1800000 + 22500 → 1.822500.
    assert_eq!(cost_of(300_000), "1.822500");
}

/// A stream whose backend reports no usage is estimated, and so is its cost, marked as such.
#[test]
fn an_estimated_stream_gets_an_estimated_cost_marked_as_such() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let cfg = config(
        json!({"m": {"url": a.url(), "injectStreamUsage": false,
            "pricing": {"input": 0.5, "output": 3}}}),
        &dir,
        json!({"currency": "EUR"}),
    );
    let p = start(&cfg);
    let r = chat_as(&p, "ann", "m", "one two three four", true);
    assert_eq!(r.status, 200);
    let l = &ledger_lines(&dir, 1)[0];
    let mut sent: Value =
        serde_json::from_str(&chat_body("m", "one two three four", true)).unwrap();
    sent["user"] = "ann".into();
    // The estimate: a token per 4 bytes of the request body, a token per 4 characters of the
    // 18 generated ("one two three four"): 5.
    let prompt = (sent.to_string().len() as u64).div_ceil(4);
    assert_eq!(
        (
            &l["prompt_tokens"],
            &l["completion_tokens"],
            &l["estimated"]
        ),
        (&json!(prompt), &json!(5), &json!(true))
    );
    // prompt·0.5 + 5·3, rounded up once to the micro-unit.
    let micros = (prompt * 500_000 + 5 * 3_000_000).div_ceil(1_000_000);
    assert_eq!(
        (&l["cost"], &l["currency"], &l["cost_estimated"]),
        (
            &json!(format!("0.{:06}", micros)),
            &json!("EUR"),
            &json!(true)
        )
    );
    let row = &admin_get(&p, "/usage").json()["data"][0];
    assert_eq!(
        (&row["cost"], &row["estimated_cost"], &row["currency"]),
        (
            &json!(format!("0.{:06}", micros)),
            &json!(format!("0.{:06}", micros)),
            &json!("EUR")
        )
    );
    assert!(p
        .wait_log("currency=EUR cost_estimated=true", Duration::from_secs(2))
        .is_some());
}

/// A stream the client abandoned after tokens were generated is charged (the estimate of what
/// was generated until then, the backend having reported nothing), never 0.
#[test]
fn an_abandoned_stream_is_charged_never_zero() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let cfg = config(
        json!({"m": {"url": a.url(), "pricing": {"input": 2, "output": 8}}}),
        &dir,
        json!({}),
    );
    let p = start(&cfg);
    let mut body: Value = serde_json::from_str(&chat_body(
        "m",
        "alpha beta gamma delta epsilon zeta eta theta iota kappa",
        true,
    ))
    .unwrap();
    body["user"] = "ann".into();
    let body = body.to_string();
    let mut s = connect(p.addr);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("data: ") {
            break;
        }
    }
    drop(r);
    let l = &ledger_lines(&dir, 1)[0];
    assert_eq!(l["outcome"], "client_gone", "{}", l);
    assert_eq!(l["estimated"], true, "{}", l);
    let (prompt, completion) = (
        l["prompt_tokens"].as_u64().unwrap(),
        l["completion_tokens"].as_u64().unwrap(),
    );
    assert!(completion >= 1, "{}", l);
    // prompt·2 + completion·8, rounded up once.
    let micros = (prompt * 2_000_000 + completion * 8_000_000).div_ceil(1_000_000);
    assert!(micros > 0);
    assert_eq!(
        (&l["cost"], &l["cost_estimated"]),
        (&json!(format!("0.{:06}", micros)), &json!(true)),
        "{}",
        l
    );
}

/// Prices from a LiteLLM-format file, looked up by the backend's actual model name; inline
/// prices win; a model priced nowhere is unpriced (no cost, shown as such, never as free).
#[test]
fn the_litellm_file_prices_by_actual_model_and_inline_prices_win() {
    let f = usage_backend(openai_usage);
    let dir = TempDir::new();
    let cfg = config(
        json!({
            "claude": {"url": f.url, "actualModelName": "fixture-claude"},
            "chat": {"url": f.url, "actualModelName": "fixture-chat",
                     "pricing": {"input": 1, "output": 1}},
            "free": {"url": f.url, "actualModelName": "not-in-the-file"}
        }),
        &dir,
        json!({"pricesFile": fixture()}),
    );
    let p = start(&cfg);
    assert!(p
        .wait_log(
            "endpoints.free: no price for backend model \"not-in-the-file\": its requests are unpriced (no cost)",
            Duration::from_secs(2)
        )
        .is_some());
    for model in ["claude", "chat", "free"] {
        assert_eq!(chat_as(&p, "ann", model, "plain", false).status, 200);
    }
    let lines = ledger_lines(&dir, 3);
    let line = |model: &str| lines.iter().find(|l| l["model"] == model).unwrap();
    // 1000 prompt (200 cached), 100 completion. fixture-claude per token: 3e-06 in, 3e-07
    // cache read, 1.5e-05 out: 800·3 + 200·0.30 + 100·15 = 2400 + 60 + 1500 → 0.003960.
    assert_eq!(line("claude")["cost"], "0.003960");
    // Inline 1 and 1 (cachedInput defaults to input): 800 + 200 + 100 → 0.001100.
    assert_eq!(line("chat")["cost"], "0.001100");
    let free = line("free");
    assert!(free.get("cost").is_none() && free.get("currency").is_none());
    let r = admin_get(&p, "/usage?by=model");
    let free = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["model"] == "free")
        .cloned()
        .unwrap();
    assert_eq!(
        (&free["cost"], &free["currency"], &free["unpriced_requests"]),
        (&Value::Null, &Value::Null, &json!(1))
    );
    let table = Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["usage", "--log"])
        .arg(dir.0.join("usage.jsonl"))
        .args(["--by", "model"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    let free_row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("free"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(free_row[7], "unpriced", "{}", table);
    wait_until("the cost in /metrics", Duration::from_secs(5), || {
        let m = metrics(&p);
        m.contains("modelmux_cost_total{model=\"chat\",currency=\"USD\"} 0.001100")
            && m.contains("modelmux_tokens_total{model=\"free\"")
    });
    let m = metrics(&p);
    assert!(!m.contains("modelmux_cost_total{model=\"free\""), "{}", m);
    assert!(
        m.contains("modelmux_cost_total{model=\"claude\",currency=\"USD\"} 0.003960"),
        "{}",
        m
    );
}

fn check_config(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .env_remove("CM_OPEN_WEBUI_PROXY_API_KEYS")
        .env_remove("CM_OPEN_WEBUI_PROXY_ADMIN_KEY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Every price the load refuses, with the line the operator reads: the file, the field and
/// what was expected.
#[test]
fn every_bad_price_fails_the_load_naming_the_file_and_the_field() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    let ep = |pricing: &str| {
        format!(
            r#"{{"endpoints":{{"m":{{"url":"http://127.0.0.1:9","pricing":{}}}}}}}"#,
            pricing
        )
    };
    let broken = dir.0.join("prices.json");
    std::fs::write(
        &broken,
        r#"{"bad-model": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06}}"#,
    )
    .unwrap();
    let cases = [
        (ep(r#"{"input":-2.5,"output":10}"#), "endpoints.m.pricing.input: expected a number of USD per 1M tokens from 0 to 1000, got -2.5".to_string()),
        (ep(r#"{"input":"2.50","output":10}"#), "endpoints.m.pricing.input: expected a number of USD per 1M tokens from 0 to 1000, got \"2.50\"".to_string()),
        (ep(r#"{"input":2.5,"output":10000}"#), "endpoints.m.pricing.output: 10000 per 1M tokens is above the sanity bound of 1000 (a price per token where a price per 1M tokens belongs?); expected a number from 0 to 1000, or \"allowHighPrices\": true for a real outlier".to_string()),
        (ep(r#"{"input":2.5,"output":10,"cacheWrite1h":1500}"#), "endpoints.m.pricing.cacheWrite1h: 1500 per 1M tokens is above the sanity bound of 1000 (a price per token where a price per 1M tokens belongs?); expected a number from 0 to 1000, or \"allowHighPrices\": true for a real outlier".to_string()),
        (ep(r#"{"input":2.5}"#), "endpoints.m.pricing.output: missing: expected a price in USD per 1M tokens".to_string()),
        (ep(r#"{"input":2.5,"output":10,"cachedInputs":1}"#), "endpoints.m.pricing.cachedInputs: unknown field; did you mean \"cachedInput\"?".to_string()),
        (ep(r#"{"input":2.5,"output":10,"aboveInputTokens":{"threshold":-1,"input":5,"output":20}}"#), "endpoints.m.pricing.aboveInputTokens.threshold: expected a whole number of prompt tokens, at least 1, got -1".to_string()),
        (r#"{"currency":"dollars","endpoints":{"m":{"url":"http://127.0.0.1:9"}}}"#.to_string(), "currency: expected a currency code of 3 capital letters such as \"USD\" or \"EUR\", got \"dollars\"".to_string()),
        (r#"{"pricing":{"gpt-4o*":{"input":0.0000025,"output":0.00001,"colour":1}},"endpoints":{"m":{"url":"http://127.0.0.1:9"}}}"#.to_string(), "pricing.gpt-4o*.colour: unknown field; expected input, output, cachedInput, cacheWrite, cacheWrite1h, aboveInputTokens or allowHighPrices".to_string()),
        (format!(r#"{{"pricesFile":"{}","endpoints":{{"m":{{"url":"http://127.0.0.1:9","actualModelName":"bad-model"}}}}}}"#, broken.display()), format!("pricesFile: {}: \"bad-model\".input_cost_per_token: expected a number of currency units per token, at least 0, got -1e-6 (the price of endpoints.m)", broken.display())),
        (r#"{"pricesFile":"missing-prices.json","endpoints":{"m":{"url":"http://127.0.0.1:9"}}}"#.to_string(), format!("pricesFile: {}: cannot read file: No such file or directory (os error 2)", dir.0.join("missing-prices.json").display())),
    ];
    for (config, expected) in &cases {
        std::fs::write(&path, config).unwrap();
        let (code, stderr, _) = check_config(&path);
        assert_eq!(code, Some(1), "{}\n{}", config, stderr);
        assert_eq!(
            stderr,
            format!("modelmux: config {}: {}\n", path.display(), expected),
            "{}",
            config
        );
    }
    // A real outlier goes through when said so; the report says what is priced.
    std::fs::write(
        &path,
        format!(
            r#"{{"pricesFile":"{}","endpoints":{{"m":{{"url":"http://127.0.0.1:9","pricing":{{"input":1500,"output":6000,"allowHighPrices":true}}}},
                "c":{{"url":"http://127.0.0.1:9","actualModelName":"fixture-claude"}},"n":{{"url":"http://127.0.0.1:9"}}}}}}"#,
            fixture()
        ),
    )
    .unwrap();
    let (code, _, stdout) = check_config(&path);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&format!(
            "\nprices: USD; priced: m, c; unpriced (some backend has no price): n; file {} (4 models)\n",
            fixture()
        )),
        "{}",
        stdout
    );
}

/// The JSON access log line carries the cost too; an unpriced request's line is unchanged.
#[test]
fn the_json_access_log_line_carries_the_cost() {
    let f = usage_backend(openai_usage);
    let dir = TempDir::new();
    let cfg = config(
        json!({"m": {"url": f.url, "pricing": {"input": 2.5, "output": 10, "cachedInput": 1.25}},
               "free": {"url": f.url}}),
        &dir,
        json!({}),
    );
    let p = Proxy::start_with(&cfg, &[("CM_OPEN_WEBUI_PROXY_LOG_FORMAT", "json")], &[]);
    assert_eq!(chat_as(&p, "ann", "m", "cached", false).status, 200);
    assert_eq!(chat_as(&p, "ann", "free", "cached", false).status, 200);
    assert!(p
        .wait_log(
            r#""tokens_in":1000,"tokens_out":200,"retries":0,"outcome":"complete","cost":"0.004000","currency":"USD"}"#,
            Duration::from_secs(2)
        )
        .is_some());
    assert!(p
        .wait_log(
            r#""tokens_in":1000,"tokens_out":200,"retries":0,"outcome":"complete"}"#,
            Duration::from_secs(2)
        )
        .is_some());
}
