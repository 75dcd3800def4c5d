//! Issue 19, the config side of Anthropic clients: model `aliases` (exact ids and globs) on
//! every routed path, `GET /v1/models` in Anthropic's shape when the client sends
//! `anthropic-version`, `HEAD /api/hello`, which header carries a backend's key
//! (`apiKeyHeader`), cache writes and Claude Code's session in the ledger, and Claude Code's
//! background requests served at low priority.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const CLIENT_KEY: &str = "mm-client-key-123";

fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    wait_until("the ledger lines", Duration::from_secs(5), || {
        ledger(path).len() >= n
    });
    ledger(path)
}

fn send(p: &Proxy, path: &str, body: &Value) -> Resp {
    request(
        p.addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("x-api-key", CLIENT_KEY),
        ],
        body.to_string().as_bytes(),
    )
}

/// Exact aliases beat globs, the most specific glob wins, and a model id beats any alias; on
/// chat completions, Messages, Responses and a passthrough path alike. The request then counts
/// as its model (ledger, /models), and the backend is asked for its own model name.
#[test]
fn aliases_route_exact_then_most_specific_glob_on_every_path() {
    let small = MockBackend::start(Behavior::default());
    let big = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start_with(
        &json!({
            "endpoints": {
                "local": {"url": small.url(), "actualModelName": "qwen3-8b",
                          "aliases": ["claude-haiku-4-5", "claude-*"]},
                "big": {"url": big.url(), "actualModelName": "qwen3-235b",
                        "aliases": ["claude-opus-*", "claude-sonnet-4-5"]},
                "claude-3-local": {"url": small.url(), "actualModelName": "llama"}
            },
            "usageLog": dir.0.join("usage.jsonl").display().to_string()
        })
        .to_string(),
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    );
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    // An exact alias beats the glob `claude-*` of another model.
    let r = send(&p, "/v1/chat/completions", &chat("claude-sonnet-4-5"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(big.requests().len(), 1);
    assert_eq!(big.requests()[0].json().unwrap()["model"], "qwen3-235b");
    // A glob: Messages, translated; the answer names the model the client asked for.
    let r = send(
        &p,
        "/v1/messages",
        &json!({"model": "claude-haiku-4-5-20251001", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hello"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "claude-haiku-4-5-20251001");
    let got = &small.requests()[0];
    assert_eq!(
        (got.path.as_str(), &got.json().unwrap()["model"]),
        ("/v1/chat/completions", &json!("qwen3-8b"))
    );
    // `claude-opus-*` is more specific than `claude-*`.
    let r = send(
        &p,
        "/v1/responses",
        &json!({"model": "claude-opus-4-1", "input": "hi"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(big.requests()[1].path, "/v1/responses");
    assert_eq!(big.requests()[1].json().unwrap()["model"], "qwen3-235b");
    // A passthrough path.
    let r = send(
        &p,
        "/v1/embeddings",
        &json!({"model": "claude-anything", "input": "x"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(small.requests()[1].json().unwrap()["model"], "qwen3-8b");
    // A model id is matched before any alias, even one `claude-*` covers.
    let r = send(&p, "/v1/chat/completions", &chat("claude-3-local"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(small.requests()[2].json().unwrap()["model"], "llama");
    // No model, no alias: 404, and nothing reaches a backend.
    let r = send(&p, "/v1/chat/completions", &chat("gpt-4o"));
    assert_eq!(r.status, 404);
    assert_eq!(small.requests().len() + big.requests().len(), 5);

    let models: Vec<String> = lines(&dir.0.join("usage.jsonl"), 6)
        .iter()
        .map(|l| l["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        models,
        ["big", "local", "big", "local", "claude-3-local", "gpt-4o"]
    );
    // Aliases are names a request may use, not models: /models lists the models only.
    let r = request(
        p.addr,
        "GET",
        "/v1/models",
        &[("x-api-key", CLIENT_KEY)],
        b"",
    );
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["local", "big", "claude-3-local"]);
}

/// A client key limited to some models reaches an alias only when its list names the model
/// the alias stands for: an alias opens nothing.
#[test]
fn a_key_allow_list_is_checked_against_the_model_an_alias_names() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(
        &json!({
            "endpoints": {
                "cheap": {"url": a.url(), "aliases": ["claude-haiku-*"]},
                "dear": {"url": a.url(), "aliases": ["claude-opus-*"]}
            },
            "proxyKeys": [{"key": CLIENT_KEY, "models": ["cheap", "claude-*"]}]
        })
        .to_string(),
    );
    let ask = |model: &str| {
        send(
            &p,
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    assert_eq!(ask("claude-haiku-4-5").status, 200);
    let r = ask("claude-opus-4-1");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn alias_config_errors_name_the_field() {
    let cases = [
        (
            r#"{"endpoints":{"a":{"url":"http://127.0.0.1:9","aliases":["claude-*"]},
                             "b":{"url":"http://127.0.0.1:9","aliases":["claude-*"]}}}"#,
            r#"endpoints.b.aliases[0]: "claude-*" is already an alias of model "a"; an alias names one model"#,
        ),
        (
            r#"{"endpoints":{"a":{"url":"http://127.0.0.1:9","aliases":"claude-*"}}}"#,
            r#"endpoints.a.aliases: expected an array of model ids or globs (e.g. ["claude-sonnet-*"]), got a string"#,
        ),
        (
            r#"{"endpoints":{"a":{"url":"http://127.0.0.1:9","aliases":["x",{"id":"y"}]}}}"#,
            "endpoints.a.aliases[1]: expected a model id or glob as a string, got an object",
        ),
        (
            r#"{"endpoints":{"a":{"url":"http://127.0.0.1:9","alias":["x"]}}}"#,
            r#"endpoints.a.alias: unknown field; did you mean "aliases"?"#,
        ),
    ];
    for (config, want) in cases {
        let logs = Proxy::try_start(config, &[], &[]).err().expect("refused");
        assert!(
            logs.iter().any(|l| l.contains(want)),
            "want {:?} in:\n{}",
            want,
            logs.join("\n")
        );
    }
}

/// `2026-12-04T16:46:06Z` for Unix seconds.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        y,
        m,
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn models_list_in_anthropic_shape_when_the_client_sends_anthropic_version() {
    let p = Proxy::start_with(
        r#"{"endpoints":{
            "local":{"url":"http://127.0.0.1:9","displayName":"Local Qwen","aliases":["claude-*"]},
            "big":{"url":"http://127.0.0.1:9"}}}"#,
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    );
    let openai = request(
        p.addr,
        "GET",
        "/v1/models",
        &[("x-api-key", CLIENT_KEY)],
        b"",
    );
    assert_eq!(openai.status, 200);
    let loaded = openai.json()["data"][0]["created"].as_u64().unwrap();
    assert_eq!(
        openai.text(),
        json!({"object": "list", "data": [
            {"id": "local", "object": "model", "created": loaded, "owned_by": "Local Qwen", "name": "Local Qwen"},
            {"id": "big", "object": "model", "created": loaded, "owned_by": "big", "name": "big"}
        ]})
        .to_string()
    );
    let at = rfc3339(loaded);
    for path in ["/v1/models", "/models"] {
        let r = request(
            p.addr,
            "GET",
            path,
            &[
                ("x-api-key", CLIENT_KEY),
                ("anthropic-version", "2023-06-01"),
            ],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.text(),
            json!({
                "data": [
                    {"type": "model", "id": "local", "display_name": "Local Qwen", "created_at": at},
                    {"type": "model", "id": "big", "display_name": "big", "created_at": at}
                ],
                "has_more": false,
                "first_id": "local",
                "last_id": "big"
            })
            .to_string(),
            "{}",
            path
        );
    }
    let r = request(
        p.addr,
        "GET",
        "/v1/models/local",
        &[
            ("x-api-key", CLIENT_KEY),
            ("anthropic-version", "2023-06-01"),
        ],
        b"",
    );
    assert_eq!(
        r.text(),
        json!({"type": "model", "id": "local", "display_name": "Local Qwen", "created_at": at})
            .to_string()
    );
    // Still behind the client key.
    let r = request(
        p.addr,
        "GET",
        "/v1/models",
        &[("anthropic-version", "2023-06-01")],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn an_empty_anthropic_models_list_has_null_ids() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(
        &json!({"endpoints": {"m": {"url": a.url()}},
                "proxyKeys": [{"key": CLIENT_KEY, "models": ["other-*"]}]})
        .to_string(),
    );
    let r = request(
        p.addr,
        "GET",
        "/v1/models",
        &[
            ("x-api-key", CLIENT_KEY),
            ("anthropic-version", "2023-06-01"),
        ],
        b"",
    );
    assert_eq!(
        r.text(),
        r#"{"data":[],"has_more":false,"first_id":null,"last_id":null}"#
    );
}

/// Claude Code probes `HEAD /api/hello` before it starts; no key is needed to learn that
/// modelmux is up, and no backend is asked.
#[test]
fn head_api_hello_answers_200() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &json!({"endpoints": {"m": {"url": a.url()}}}).to_string(),
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    );
    let r = request(p.addr, "HEAD", "/api/hello", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = request(p.addr, "GET", "/api/hello", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    let r = request(p.addr, "POST", "/api/hello", &[], b"");
    assert_eq!(r.status, 405);
    assert!(a.requests().is_empty());
}

const BACKEND_KEY: &str = "sk-ant-backend-KEY-999";

/// `apiKeyHeader: "x-api-key"` sends the endpoint's key as `x-api-key` and never as
/// Authorization; `anthropic-version` and `anthropic-beta` reach a native backend verbatim, and
/// a native x-api-key backend (Anthropic's API requires it) gets `anthropic-version:
/// 2023-06-01` when the client sent none. A translated backend gets neither header. The
/// client's own Authorization and x-api-key reach no backend.
#[test]
fn upstream_auth_and_anthropic_headers_per_endpoint_setting() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &json!({"endpoints": {
            "nat-x": {"url": a.url(), "apiKey": BACKEND_KEY, "messagesApi": "native", "apiKeyHeader": "x-api-key"},
            "nat-b": {"url": a.url(), "apiKey": BACKEND_KEY, "messagesApi": "native"},
            "tr-x": {"url": a.url(), "apiKey": BACKEND_KEY, "apiKeyHeader": "X-Api-Key"}
        }})
        .to_string(),
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    );
    let ask = |path: &str, model: &str, extra: &[(&str, &str)]| {
        let bearer = format!("Bearer {}", CLIENT_KEY);
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Authorization", bearer.as_str()),
            ("x-api-key", "client-extra-key-456"),
        ];
        headers.extend_from_slice(extra);
        let body = json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let r = request(p.addr, "POST", path, &headers, body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{} {}: {}", path, model, r.text());
    };
    let version = [
        ("anthropic-version", "2023-01-01"),
        (
            "anthropic-beta",
            "prompt-caching-2024-07-31,output-128k-2025-02-19",
        ),
    ];
    ask("/v1/messages", "nat-x", &version);
    ask("/v1/messages", "nat-x", &[]);
    ask("/v1/messages/count_tokens", "nat-x", &[]);
    ask("/v1/messages", "nat-b", &[]);
    ask("/v1/messages", "nat-b", &version);
    ask("/v1/messages", "tr-x", &version);
    ask("/v1/chat/completions", "tr-x", &[]);
    let seen: Vec<Vec<Option<String>>> = a
        .requests()
        .iter()
        .map(|r| {
            [
                "authorization",
                "x-api-key",
                "anthropic-version",
                "anthropic-beta",
            ]
            .iter()
            .map(|h| r.header(h).map(str::to_string))
            .collect()
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    let bearer = s(&format!("Bearer {}", BACKEND_KEY));
    let beta = s("prompt-caching-2024-07-31,output-128k-2025-02-19");
    assert_eq!(
        seen,
        [
            vec![None, s(BACKEND_KEY), s("2023-01-01"), beta.clone()],
            vec![None, s(BACKEND_KEY), s("2023-06-01"), None],
            vec![None, s(BACKEND_KEY), s("2023-06-01"), None],
            vec![bearer.clone(), None, None, None],
            vec![bearer, None, s("2023-01-01"), beta],
            vec![None, s(BACKEND_KEY), None, None],
            vec![None, s(BACKEND_KEY), None, None],
        ]
    );
    let paths: Vec<String> = a.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v1/messages",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/messages",
            "/v1/messages",
            "/v1/chat/completions",
            "/v1/chat/completions"
        ]
    );
}

#[test]
fn api_key_header_typo_is_a_config_error() {
    for (ep, want) in [
        (
            r#""apiKeyHeader":"bearer""#,
            r#"endpoints.m.apiKeyHeader: expected "authorization" (Bearer, the default) or "x-api-key", got "bearer""#,
        ),
        (
            r#""backends":[{"url":"http://127.0.0.1:9","apiKeyHeader":1}]"#,
            r#"endpoints.m.backends[0].apiKeyHeader: expected "authorization" (Bearer, the default) or "x-api-key", got 1"#,
        ),
    ] {
        let logs = Proxy::try_start(
            &format!(
                r#"{{"endpoints":{{"m":{{"url":"http://127.0.0.1:9",{}}}}}}}"#,
                ep
            ),
            &[],
            &[],
        )
        .err()
        .expect("refused");
        assert!(
            logs.iter().any(|l| l.contains(want)),
            "want {:?} in:\n{}",
            want,
            logs.join("\n")
        );
    }
}

/// `/debug` shows how each model's Messages requests go, its aliases and the header its
/// backends take the key in; never the key.
#[test]
fn debug_shows_messages_api_aliases_and_key_header() {
    let p = Proxy::start(
        &json!({"endpoints": {
            "m": {"url": "http://127.0.0.1:9", "apiKey": BACKEND_KEY, "messagesApi": "native",
                  "apiKeyHeader": "x-api-key", "aliases": ["claude-*", "claude-opus-4"],
                  "backends": [{}, {"url": "http://127.0.0.1:10", "apiKeyHeader": "authorization"}]},
            "n": {"url": "http://127.0.0.1:9"}
        }})
        .to_string(),
    );
    let r = get(p.addr, "/debug");
    assert_eq!(r.status, 200);
    let m = &r.json()["endpoints"]["m"];
    assert_eq!(m["messagesApi"], "native");
    assert_eq!(m["aliases"], json!(["claude-*", "claude-opus-4"]));
    assert_eq!(m["apiKeyHeader"], "x-api-key");
    assert_eq!(m["backends"][0]["apiKeyHeader"], "x-api-key");
    assert_eq!(m["backends"][1]["apiKeyHeader"], "authorization");
    let n = &r.json()["endpoints"]["n"];
    assert_eq!(
        (&n["messagesApi"], &n["aliases"], &n["apiKeyHeader"]),
        (&json!("translate"), &json!([]), &json!("authorization"))
    );
    assert!(!r.text().contains(BACKEND_KEY));
}

const SESSION: &str = "0b6c1f5e-7d1a-4c39-9a57-3f0b2a4d9e11";

/// A ledger line with its time-dependent fields fixed, keys in the order written.
fn steady(line: &Value) -> String {
    let mut l = line.clone();
    l["ts"] = json!("T");
    l["request_id"] = json!("R");
    l["duration_ms"] = json!(0);
    l["ttfb_ms"] = json!(0);
    l.to_string()
}

/// Native answers' cache writes get ledger fields of their own (all writes, and the 1-hour
/// part, which issue 20 prices apart); a translated answer maps OpenAI's usage (cached tokens
/// are cache reads, no writes); an answer without usage is estimated, never 0/0. Claude Code's
/// session id is recorded as `session`, and one that is not a plain identifier is dropped.
#[test]
fn ledger_records_cache_writes_and_the_claude_code_session() {
    let native_json = MockBackend::start(Behavior {
        status: Some((
            200,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "real",
                   "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn", "stop_sequence": null,
                   "usage": {"input_tokens": 4, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 50,
                             "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                             "output_tokens": 6}})
            .to_string(),
        )),
        ..Behavior::default()
    });
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"real\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":11,\"cache_creation\":{\"ephemeral_5m_input_tokens\":7,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let native_stream = support::fake_backend::FakeBackend::start(move |_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        bytes.extend(support::fake_backend::chunk(stream.as_bytes()));
        bytes.extend_from_slice(b"0\r\n\r\n");
        vec![support::fake_backend::Step::Send(bytes)]
    });
    let chat = MockBackend::start(Behavior::default());
    let silent = MockBackend::start(Behavior {
        status: Some((
            200,
            json!({"id": "chatcmpl-j", "object": "chat.completion", "choices": [{"index": 0,
                "finish_reason": "stop", "message": {"role": "assistant", "content": "whole answer"}}]})
            .to_string(),
        )),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let p = Proxy::start(
        &json!({
            "endpoints": {
                "nat": {"url": native_json.url(), "messagesApi": "native"},
                "nat-s": {"url": native_stream.url, "messagesApi": "native"},
                "tr": {"url": chat.url()},
                "tr-none": {"url": silent.url()}
            },
            "proxyKeys": [{"key": CLIENT_KEY, "name": "claude-code"}],
            "usageLog": log.display().to_string()
        })
        .to_string(),
    );
    let mut n = 0;
    let mut ask = |model: &str, session: &str, stream: bool| -> (Value, usize) {
        let body = json!({"model": model, "max_tokens": 20, "stream": stream,
                          "messages": [{"role": "user", "content": "hello there friend"}]})
        .to_string();
        let r = request(
            p.addr,
            "POST",
            "/v1/messages",
            &[
                ("Content-Type", "application/json"),
                ("x-api-key", CLIENT_KEY),
                ("anthropic-version", "2023-06-01"),
                ("x-claude-code-session-id", session),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}: {}", model, r.text());
        n += 1;
        (lines(&log, n)[n - 1].clone(), body.len())
    };
    let host = |url: &str| url.trim_start_matches("http://").to_string();
    let line = |session: Option<&str>, model: &str, backend: &str, usage: &str| {
        let session = session.map_or(String::new(), |s| format!(r#""session":"{}","#, s));
        format!(
            r#"{{"ts":"T","request_id":"R","user":"claude-code","key":"claude-code",{}"model":"{}","backend":"{}","path":"/messages","status":200,{},"duration_ms":0,"ttfb_ms":0,"outcome":"complete"}}"#,
            session, model, backend, usage
        )
    };
    let (l, _) = ask("nat", SESSION, false);
    assert_eq!(
        steady(&l),
        line(
            Some(SESSION),
            "nat",
            &host(&native_json.url()),
            r#""prompt_tokens":354,"completion_tokens":6,"cached_tokens":50,"cache_write_tokens":300,"cache_write_1h_tokens":200,"reasoning_tokens":0,"estimated":false"#
        )
    );
    let (l, _) = ask("nat-s", SESSION, true);
    assert_eq!(
        steady(&l),
        line(
            Some(SESSION),
            "nat-s",
            &host(&native_stream.url),
            r#""prompt_tokens":21,"completion_tokens":20,"cached_tokens":11,"cache_write_tokens":7,"reasoning_tokens":0,"estimated":false"#
        )
    );
    // The mock counts words: 3 prompt, 3 completion, no cache fields in chat usage.
    let (l, _) = ask("tr", SESSION, false);
    assert_eq!(
        steady(&l),
        line(
            Some(SESSION),
            "tr",
            &host(&chat.url()),
            r#""prompt_tokens":3,"completion_tokens":3,"cached_tokens":0,"reasoning_tokens":0,"estimated":false"#
        )
    );
    // No usage from the backend: an estimate (a quarter of the body's bytes; "whole answer"
    // is 12 characters), marked; a session id with a space is no identifier.
    let (l, body_len) = ask("tr-none", "not an id", false);
    assert_eq!(
        steady(&l),
        line(
            None,
            "tr-none",
            &host(&silent.url()),
            &format!(
                r#""prompt_tokens":{},"completion_tokens":3,"cached_tokens":0,"reasoning_tokens":0,"estimated":true"#,
                body_len.div_ceil(4)
            )
        )
    );
}

/// `x-claude-code-request-class: auxiliary` or `compaction` is a background request, served
/// after the others when the backend is at its cap, exactly as Open WebUI's task header.
#[test]
fn claude_code_background_requests_wait_behind_the_others() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let p = Proxy::start(
        &json!({"endpoints": {"m": {"url": a.url(), "maxConcurrent": 1}}}).to_string(),
    );
    let queue_depth = || {
        get(p.addr, "/metrics")
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("modelmux_backend_queue_depth{model=\"m\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let start = |who: &'static str, class: Option<&'static str>| {
        let addr = p.addr;
        std::thread::spawn(move || {
            let mut h = vec![("Content-Type", "application/json")];
            if let Some(c) = class {
                h.push(("x-claude-code-request-class", c));
            }
            let body = json!({"model": "m", "max_tokens": 5, "metadata": {"user_id": who},
                              "messages": [{"role": "user", "content": who}]});
            request(
                addr,
                "POST",
                "/v1/messages",
                &h,
                body.to_string().as_bytes(),
            )
        })
    };
    let mut threads = vec![start("blocker", None)];
    wait_until("the blocker at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    for (n, (who, class)) in [
        ("aux", Some("auxiliary")),
        ("compact", Some("Compaction")),
        ("main", Some("main")),
        ("plain", None),
    ]
    .into_iter()
    .enumerate()
    {
        threads.push(start(who, class));
        wait_until("queued", Duration::from_secs(5), || {
            queue_depth() >= (n + 1) as f64
        });
    }
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let order: Vec<String> = a
        .requests()
        .iter()
        .map(|r| {
            r.json().unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order[..3], ["blocker", "main", "plain"], "{:?}", order);
    let mut last = order[3..].to_vec();
    last.sort();
    assert_eq!(last, ["aux", "compact"], "{:?}", order);
}

/// Health probes and discovery list a backend's models with its key in the header it takes;
/// an x-api-key backend (Anthropic's API) also gets the `anthropic-version` it requires there.
#[test]
fn probes_send_the_key_in_the_backends_header() {
    let x = MockBackend::start(Behavior::default());
    let b = MockBackend::start(Behavior::default());
    let _p = Proxy::start(
        &json!({"endpoints": {
            "x": {"url": x.url(), "apiKey": BACKEND_KEY, "apiKeyHeader": "x-api-key", "health": {"probeIntervalSecs": 1}},
            "b": {"url": b.url(), "apiKey": BACKEND_KEY, "health": {"probeIntervalSecs": 1}}
        }})
        .to_string(),
    );
    wait_until("both probed", Duration::from_secs(5), || {
        !x.requests().is_empty() && !b.requests().is_empty()
    });
    let seen = |m: &MockBackend| {
        let r = &m.requests()[0];
        (
            r.path.clone(),
            r.header("authorization").map(str::to_string),
            r.header("x-api-key").map(str::to_string),
            r.header("anthropic-version").map(str::to_string),
        )
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        seen(&x),
        ("/v1/models".into(), None, s(BACKEND_KEY), s("2023-06-01"))
    );
    assert_eq!(
        seen(&b),
        (
            "/v1/models".into(),
            s(&format!("Bearer {}", BACKEND_KEY)),
            None,
            None
        )
    );
}
