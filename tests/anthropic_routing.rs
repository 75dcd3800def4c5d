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
