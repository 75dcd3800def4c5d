//! The Responses API through real HTTP: `POST /v1/responses` routed by the body's model with the
//! model rewritten, its `event:`/`data:` stream passed through byte for byte, usage counted;
//! `GET`/`DELETE /v1/responses/{id}` and `/input_items` routed by `X-Model-Id` or `?model=`, and a
//! clear 400 without either.

mod support;

use serde_json::json;
use std::time::Duration;
use support::mock_backend::{
    response_bytes, responses_stream_bytes, sse_data_lines, Behavior, MockBackend,
};
use support::*;

const KEY: &str = "sk-responses-backend-key-01";

/// (method, path, headers, the path the backend must see).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

fn responses_body(model: &str, input: &str, stream: bool) -> String {
    json!({"model": model, "input": input, "stream": stream}).to_string()
}

fn tokens(p: &Proxy, model: &str, direction: &str) -> u64 {
    let needle = format!(
        "modelmux_tokens_total{{model=\"{}\",direction=\"{}\",estimated=\"false\"}} ",
        model, direction
    );
    get(p.addr, "/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_response_is_routed_by_the_body_model_and_relayed_as_sent() {
    let backend = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&backend.url(), KEY, &[]);
    let r = post_json(
        p.addr,
        "/v1/responses",
        &responses_body("m", "tell me a story", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, response_bytes("real-m", "tell me a story"));
    let seen = &backend.requests()[0];
    assert_eq!(seen.path, "/v1/responses");
    assert_eq!(
        seen.body,
        responses_body("real-m", "tell me a story", false).as_bytes()
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {}", KEY).as_str())
    );
    wait_until("usage counted", Duration::from_secs(5), || {
        tokens(&p, "m", "prompt") == 4 && tokens(&p, "m", "completion") == 4
    });
}

#[test]
fn a_streamed_response_passes_through_byte_for_byte_with_its_usage_counted() {
    let backend = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let p = one_model_proxy(&backend.url(), KEY, &[]);
    let r = post_json(
        p.addr,
        "/v1/responses",
        &responses_body("m", "one two three", true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(
        r.text(),
        String::from_utf8(responses_stream_bytes("real-m", "one two three")).unwrap()
    );
    assert!(r.text().starts_with("event: response.created\ndata: {"));
    let last = sse_data_lines(&r.body).pop().unwrap();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["usage"]["output_tokens"], 3);
    wait_until("usage counted", Duration::from_secs(5), || {
        tokens(&p, "m", "prompt") == 3 && tokens(&p, "m", "completion") == 3
    });
}

#[test]
fn open_webui_responses_connection_payload_is_served() {
    // What Open WebUI 0.12.4 sends on a connection with `api_type: "responses"`
    // (convert_to_responses_payload): `input` items and `instructions`, streamed.
    let backend = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&backend.url(), KEY, &[]);
    let body = json!({
        "model": "m",
        "stream": true,
        "instructions": "You are helpful.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first question"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now"}]},
        ],
    })
    .to_string();
    let r = request(
        p.addr,
        "POST",
        "/v1/responses",
        &[
            ("Content-Type", "application/json"),
            ("X-OpenWebUI-User-Id", "u-1"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, responses_stream_bytes("real-m", "and now"));
    let seen = backend.requests()[0].json().unwrap();
    assert_eq!(seen["model"], "real-m");
    assert_eq!(seen["instructions"], "You are helpful.");
}

#[test]
fn stored_responses_are_routed_by_x_model_id_or_the_model_query() {
    let backend = MockBackend::start(Behavior::default());
    let other = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config_for(&[
        ("m", &backend.url(), KEY, "real-m"),
        ("n", &other.url(), KEY, "real-n"),
    ]));
    let cases: [Case; 5] = [
        (
            "GET",
            "/v1/responses/resp_1",
            &[("X-Model-Id", "m")],
            "/v1/responses/resp_1",
        ),
        (
            "GET",
            "/v1/responses/resp_1?model=m",
            &[],
            "/v1/responses/resp_1?model=real-m",
        ),
        (
            "GET",
            "/v1/responses/resp_1/input_items?model=m&limit=5",
            &[],
            "/v1/responses/resp_1/input_items?model=real-m&limit=5",
        ),
        (
            "DELETE",
            "/v1/responses/resp_1",
            &[("X-Model-Id", "m")],
            "/v1/responses/resp_1",
        ),
        (
            "POST",
            "/v1/responses/resp_1/cancel",
            &[("X-Model-Id", "m")],
            "/v1/responses/resp_1/cancel",
        ),
    ];
    for (i, (method, path, headers, backend_path)) in cases.iter().enumerate() {
        let r = request(p.addr, method, path, headers, b"");
        assert_eq!(r.status, 200, "{} {}: {}", method, path, r.text());
        let seen = backend.requests().pop().unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (*method, *backend_path),
            "case {}",
            i
        );
        if !headers.is_empty() {
            assert_eq!(seen.header("x-model-id"), Some("real-m"));
        }
    }
    let r = request(
        p.addr,
        "GET",
        "/v1/responses/resp_1",
        &[("X-Model-Id", "m")],
        b"",
    );
    assert_eq!(r.json()["id"], "resp_1");
    assert_eq!(r.json()["model"], "real-m");
    assert!(other.requests().is_empty());
    // Without a model: a clear 400 that says how to name one; no backend is called.
    for (method, path) in [
        ("GET", "/v1/responses/resp_1"),
        ("DELETE", "/responses/resp_1"),
        ("GET", "/v1/responses/resp_1/input_items"),
    ] {
        let e = request(p.addr, method, path, &[], b"").error(400);
        assert_eq!(
            e["code"], "missing_required_parameter",
            "{} {}",
            method, path
        );
        assert_eq!(e["param"], "model");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("X-Model-Id") && message.contains("?model="),
            "{}",
            message
        );
    }
    let e = request(
        p.addr,
        "GET",
        "/v1/responses/resp_1",
        &[("X-Model-Id", "nope")],
        b"",
    )
    .error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(backend.requests().len(), 6);
}

#[test]
fn a_discovered_model_serves_the_responses_api() {
    let ollama = MockBackend::start(Behavior {
        models: vec!["llama3".into()],
        ..Behavior::default()
    });
    let text = json!({"endpoints": {"ollama/*": {"url": format!("{}/v1", ollama.url()),
        "discoverIntervalSecs": 1}}})
    .to_string();
    let p = Proxy::start(&text);
    let r = post_json(
        p.addr,
        "/v1/responses",
        &responses_body("ollama/llama3", "hello", true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, responses_stream_bytes("llama3", "hello"));
    let r = request(
        p.addr,
        "GET",
        "/v1/responses/resp_9",
        &[("X-Model-Id", "ollama/llama3")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama3");
}
