//! Issue 19: `POST /v1/messages` translated to chat completions for an OpenAI-only backend
//! (`messagesApi: "translate"`, the default) or passed through (`"native"`), with the client's
//! key accepted as `x-api-key`.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use support::fake_backend::{chunk, FakeBackend, Step};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const KEY: &str = "backend-key-ABC";
const CLIENT_KEY: &str = "mm-client-key-123";

fn proxy(backend: &str, dir: &TempDir, extra_ep: &str) -> Proxy {
    Proxy::start_with(
        &format!(
            r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}","actualModelName":"real-m"{}}}}},
                "usageLog":"{}"}}"#,
            backend,
            KEY,
            extra_ep,
            dir.0.join("usage.jsonl").display()
        ),
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", CLIENT_KEY)],
        &[],
    )
}

/// A Messages request as the Anthropic SDKs send it: `x-api-key` and `anthropic-version`.
fn messages(p: &Proxy, body: &Value) -> Resp {
    request(
        p.addr,
        "POST",
        "/v1/messages",
        &[
            ("Content-Type", "application/json"),
            ("x-api-key", CLIENT_KEY),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
        ],
        body.to_string().as_bytes(),
    )
}

fn ledger(path: &Path, n: usize) -> Vec<Value> {
    let read = || -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a ledger line is JSON"))
            .collect()
    };
    wait_until("the ledger lines", Duration::from_secs(5), || {
        read().len() >= n
    });
    read()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn translated_message_non_stream_with_x_api_key() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 50,
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.14; cc_entrypoint=cli"},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
            "metadata": {"user_id": "user_1"},
            "messages": [{"role": "user", "content": "hello there friend"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        json!({"id": "msg_chatcmpl-mock", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hello there friend"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}})
        .to_string()
    );
    let got = &a.requests()[0];
    assert_eq!(got.path, "/v1/chat/completions");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        body,
        json!({"model": "real-m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there friend"}
        ], "max_tokens": 50, "user": "user_1"})
    );
    assert_eq!(
        header(&got.headers, "authorization"),
        Some(&*format!("Bearer {}", KEY))
    );
    for name in ["x-api-key", "anthropic-version", "anthropic-beta"] {
        assert_eq!(
            header(&got.headers, name),
            None,
            "{} reached the backend",
            name
        );
    }
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(
        (
            &lines[0]["path"],
            &lines[0]["prompt_tokens"],
            &lines[0]["completion_tokens"],
            &lines[0]["estimated"]
        ),
        (&json!("/messages"), &json!(5), &json!(3), &json!(false))
    );

    // Without a key, or with a wrong one, nothing reaches the backend.
    let r = request(
        p.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "wrong")],
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn translated_stream_tool_arguments_split_and_in_one_chunk_with_cached_usage() {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "real-m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let a = MockBackend::start(Behavior {
        chunks: Some(vec![
            chunk(json!({"role": "assistant", "content": "Checking", "tool_calls": []}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_p", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"Paris\"}"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 1, "id": "call_r", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]}), json!("tool_calls")),
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 14, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 11}}})
            .to_string(),
        ]),
        chunk_delay: Duration::from_millis(5),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 100, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "weather in Paris and Rome?"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    let events: Vec<(String, Value)> = text
        .split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an Anthropic event: {:?}", e));
            (
                name.to_string(),
                serde_json::from_str(data).expect("data is JSON"),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{}",
        text
    );
    assert_eq!(
        events[0].1["message"]["usage"]["cache_read_input_tokens"],
        0
    );
    assert_ne!(
        events[0].1["message"]["usage"]["input_tokens"], 0,
        "an estimate, not 0"
    );
    assert_eq!(
        events[2].1["delta"],
        json!({"type": "text_delta", "text": "Checking"})
    );
    let fragments: Vec<&Value> = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "input_json_delta")
        .map(|(_, v)| &v["delta"]["partial_json"])
        .collect();
    assert_eq!(
        fragments,
        [
            &json!("{\"city\":"),
            &json!(" \"Paris\"}"),
            &json!("{\"city\": \"Rome\"}")
        ]
    );
    assert_eq!(
        events[11].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 11, "output_tokens": 9}})
    );
    // The backend was asked for the usage chunk; the ledger counts cached tokens in the prompt.
    let sent: Value = serde_json::from_slice(&a.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(
        (
            &lines[0]["prompt_tokens"],
            &lines[0]["cached_tokens"],
            &lines[0]["completion_tokens"],
            &lines[0]["outcome"]
        ),
        (&json!(14), &json!(11), &json!(9), &json!("complete"))
    );
}

#[test]
fn translated_stream_cut_short_ends_with_an_error_event() {
    let a = MockBackend::start(Behavior {
        chunks: Some(vec![
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]}).to_string(),
            json!({"error": {"message": "CUDA out of memory", "code": 500}}).to_string(),
        ]),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    );
    let text = r.text();
    assert!(
        text.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"CUDA out of memory\"}}\n\n"),
        "{}",
        text
    );
    assert!(!text.contains("message_stop"));
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(lines[0]["outcome"], "upstream_failed");
}

#[test]
fn blocks_a_chat_backend_cannot_take_are_refused_in_anthropic_shape() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
        ]}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.0.content.0: a `document` block cannot be sent to this model's backend, which speaks only OpenAI chat completions."}}"#
    );
    assert!(a.requests().is_empty());
}

#[test]
fn backend_error_comes_back_in_anthropic_shape() {
    let a = MockBackend::start(Behavior {
        status: Some((
            400,
            r#"{"error":{"message":"context length exceeded","type":"BadRequestError"}}"#.into(),
        )),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"context length exceeded"}}"#
    );
}

#[test]
fn native_endpoint_gets_the_messages_request_as_sent() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, r#","messagesApi":"native""#);
    let body = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}]}]});
    let r = messages(&p, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = &a.requests()[0];
    assert_eq!(got.path, "/v1/messages");
    let mut want = body.clone();
    want["model"] = json!("real-m");
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap(), want);
    assert_eq!(
        header(&got.headers, "anthropic-version"),
        Some("2023-06-01")
    );
    assert_eq!(
        header(&got.headers, "anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(
        header(&got.headers, "x-api-key"),
        None,
        "the client's key stays here"
    );
}

#[test]
fn messages_api_typo_is_a_config_error() {
    let logs = Proxy::try_start(
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9","messagesApi":"nativ"}}}"#,
        &[],
        &[],
    )
    .err()
    .expect("refused");
    assert!(
        logs.iter().any(|l| l.contains("messagesApi")
            && l.contains(r#"expected "native" or "translate", got "nativ""#)),
        "{}",
        logs.join("\n")
    );
}

#[test]
fn modelmux_own_errors_quota_and_count_tokens_in_anthropic_shape() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(
        &json!({
            "endpoints": {"m": {"url": a.url(), "apiKey": KEY, "actualModelName": "real-m"}},
            "usageLog": dir.0.join("usage.jsonl").display().to_string(),
            "proxyKeys": [{"key": CLIENT_KEY, "name": "claude-code", "trustUserHeaders": true}],
            "limits": [{"match": {"user": "*"}, "requestsPerMinute": 1}]
        })
        .to_string(),
    );
    // The two requests below fall in one minute window.
    wait_until("room in this minute", Duration::from_secs(12), || {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        s % 60 < 50
    });
    let ask = |user: &str| {
        messages(
            &p,
            &json!({"model": "m", "max_tokens": 10, "metadata": {"user_id": user},
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    assert_eq!(ask("ada").status, 200);
    let r = ask("ada");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let wait: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&wait), "{}", wait);
    // metadata.user_id named the user (a trusted key).
    let lines = ledger(&dir.0.join("usage.jsonl"), 2);
    assert!(lines.iter().all(|l| l["user"] == "ada"), "{:?}", lines);

    let r = messages(
        &p,
        &json!({"model": "nope", "max_tokens": 1, "messages": []}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"type":"error","error":{"type":"not_found_error","message":"The model `nope` does not exist or you do not have access to it."}}"#
    );
    let r = request(
        p.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "wrong")],
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["type"],
        "authentication_error",
        "{}",
        r.text()
    );

    // count_tokens of a translated backend: 404, never a guess.
    let r = request(
        p.addr,
        "POST",
        "/v1/messages/count_tokens",
        &[
            ("Content-Type", "application/json"),
            ("x-api-key", CLIENT_KEY),
        ],
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    assert_eq!(
        a.requests().len(),
        1,
        "only the first request reached the backend"
    );
}

/// A native stream whose input tokens are only in message_start, with prompt-cache reads and
/// writes: the ledger's prompt is input + cache reads + cache writes (3 + 11 + 7), not 3.
#[test]
fn native_stream_usage_from_message_start_and_message_delta() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"real-m\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":11,\"output_tokens\":1}}}\n\n",
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
    let b = FakeBackend::start(move |_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in stream.as_bytes().chunks(50) {
            bytes.extend(chunk(piece));
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        vec![Step::Send(bytes)]
    });
    let dir = TempDir::new();
    let p = proxy(&b.url, &dir, r#","messagesApi":"native""#);
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 30, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), stream, "a native stream is relayed as it came");
    assert!(b.requests()[0].line.starts_with("POST /v1/messages "));
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(
        (
            &lines[0]["prompt_tokens"],
            &lines[0]["cached_tokens"],
            &lines[0]["completion_tokens"],
            &lines[0]["estimated"]
        ),
        (&json!(21), &json!(11), &json!(20), &json!(false)),
        "{}",
        lines[0]
    );
}

#[test]
fn translated_stream_pings_while_the_backend_is_silent() {
    let a = MockBackend::start(Behavior {
        silent_before_stream: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, r#","sseKeepaliveSecs":1"#);
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let text = r.text();
    assert!(
        text.starts_with("event: ping\ndata: {\"type\":\"ping\"}\n\nevent: message_start\n"),
        "{}",
        text
    );
    assert!(!text.contains(": keep-alive"));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[test]
fn backend_that_ignores_stream_still_gives_the_client_a_stream() {
    let a = MockBackend::start(Behavior {
        status: Some((
            200,
            json!({"id": "chatcmpl-j", "object": "chat.completion", "choices": [{"index": 0,
                "finish_reason": "stop", "message": {"role": "assistant", "content": "whole answer"}}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
            .to_string(),
        )),
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    let names: Vec<&str> = text
        .split_terminator("\n\n")
        .map(|e| e.lines().next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "event: message_start",
            "event: content_block_start",
            "event: content_block_delta",
            "event: content_block_stop",
            "event: message_delta",
            "event: message_stop"
        ],
        "{}",
        text
    );
    assert!(
        text.contains(r#""delta":{"type":"text_delta","text":"whole answer"}"#),
        "{}",
        text
    );
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(
        (&lines[0]["prompt_tokens"], &lines[0]["completion_tokens"]),
        (&json!(4), &json!(2))
    );
}

/// Claude Code's `metadata.user_id` is a JSON string of device, account and session, longer
/// than a user id may be: it must not get the request refused (it did, with 400
/// `user_too_long`, so Claude Code could not work at all), and the device is the user.
#[test]
fn claude_code_metadata_user_id_names_the_device() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let device = "b6614501403b1a5bf3d0b07b3af84124e5bcf1de57311bc53a71916bca223b60";
    let user_id = format!(
        r#"{{"device_id":"{}","account_uuid":"","session_id":"bfccb1a3-db91-4b17-b6ef-dd7d2fc1ae54"}}"#,
        device
    );
    assert!(user_id.chars().count() > 128);
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "metadata": {"user_id": user_id},
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = ledger(&dir.0.join("usage.jsonl"), 1);
    assert_eq!(lines[0]["end_user"], device, "{}", lines[0]);
}

/// Claude Code 2.1 sends its environment as a `role: "system"` message after the first user
/// turn; a translated backend gets it as a system message in the same place (it was refused
/// with 400 "messages.1.role: must be \"user\" or \"assistant\"", so Claude Code could not work).
#[test]
fn system_message_inside_the_conversation_stays_in_place() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = proxy(&a.url(), &dir, "");
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "system": "Be brief.", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "reminder"}, {"type": "text", "text": "task"}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment"}, {"type": "text", "text": "cwd: /tmp", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "plain"}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent: Value = serde_json::from_slice(&a.requests()[0].body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "reminder"}, {"type": "text", "text": "task"}]},
            {"role": "system", "content": "# Environment\ncwd: /tmp"},
            {"role": "system", "content": "plain"}
        ])
    );
    let r = messages(
        &p,
        &json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}
        ]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.1.content.0: a `image` block cannot be in a system message; only text blocks can."}}"#
    );
    assert_eq!(a.requests().len(), 1);
}

/// A translated stream ends at the backend's `[DONE]`; the rest of the backend's body (here
/// its last chunk, sent a moment later) is still read, so the connection goes back to the pool
/// and the next request reuses it rather than opening a new one.
#[test]
fn translated_streams_reuse_the_backend_connection() {
    use std::io::{BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while support::fake_backend::read_request(&mut r).is_some() {
                    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for data in [
                        json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}),
                        json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                    ] {
                        out.extend(chunk(format!("data: {}\n\n", data).as_bytes()));
                    }
                    out.extend(chunk(b"data: [DONE]\n\n"));
                    if w.write_all(&out).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    if w.write_all(b"0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = TempDir::new();
    let p = proxy(&url, &dir, "");
    for _ in 0..2 {
        let r = messages(
            &p,
            &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        );
        let text = r.text();
        assert!(
            text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{}",
            text
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
