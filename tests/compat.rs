//! Issue 6: habits of the original Python proxy and of Open WebUI that users rely on.

mod support;

use std::time::{Duration, Instant};
use support::mock_backend::{echo_stream_bytes, sse_data_lines, Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-compat-key-000111222333";

fn one(behavior: Behavior, extra: &str) -> (MockBackend, Proxy) {
    let a = MockBackend::start(behavior);
    let cfg = format!(
        r#"{{"endpoints":{{"m":{{"displayName":"Model M","url":"{}","apiKey":"{}","actualModelName":"real-m"{}}}}}}}"#,
        a.url(),
        KEY,
        extra
    );
    let p = Proxy::start(&cfg);
    (a, p)
}

#[test]
fn passthrough_selects_by_x_model_id_header_then_query() {
    let (a, p) = one(Behavior::default(), "");
    let r = request(p.addr, "GET", "/v1/files", &[("X-Model-Id", "m")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests()[0].path, "/v1/files");
    let r = get(p.addr, "/files/abc/content?model=m&x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.requests()[1].path,
        "/v1/files/abc/content?model=real-m&x=1"
    );
    // Header beats the body's model.
    let r = request(
        p.addr,
        "POST",
        "/v1/embeddings",
        &[("X-Model-Id", "m"), ("Content-Type", "application/json")],
        br#"{"model":"other","input":"x"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests()[2].json().unwrap()["model"], "real-m");
    get(p.addr, "/v1/files?model=ghost").error(404);
}

#[test]
fn double_slashes_are_collapsed() {
    let (a, p) = one(Behavior::default(), "");
    let r = post_json(
        p.addr,
        "//v1//chat//completions",
        &chat_body("m", "hi", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.requests()[0].path, "/v1/chat/completions");
    assert_eq!(get(p.addr, "//models").status, 200);
}

fn send_custom_headers(p: &Proxy) {
    let body = chat_body("m", "hi", false);
    let r = request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("X-OpenWebUI-User-Name", "alice"),
            ("X-OpenWebUI-User-Id", "u-1"),
            ("X-OpenWebUI-Chat-Id", "chat-42"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Authorization", "Bearer client-secret-token"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn open_webui_user_headers_reach_a_backend_only_when_its_endpoint_forwards_them() {
    let (a, p) = one(Behavior::default(), "");
    send_custom_headers(&p);
    let rec = &a.requests()[0];
    assert_eq!(rec.header("x-openwebui-user-name"), None);
    assert_eq!(rec.header("x-openwebui-user-id"), None);
    assert_eq!(rec.header("x-openwebui-chat-id"), Some("chat-42"));
    let (a, p) = one(Behavior::default(), r#","forwardUserHeaders":true"#);
    send_custom_headers(&p);
    let rec = &a.requests()[0];
    assert_eq!(rec.header("x-openwebui-user-name"), Some("alice"));
    assert_eq!(rec.header("x-openwebui-user-id"), Some("u-1"));
}

#[test]
fn custom_client_headers_are_forwarded_hop_by_hop_are_not() {
    let (a, p) = one(Behavior::default(), "");
    send_custom_headers(&p);
    let rec = &a.requests()[0];
    assert_eq!(rec.header("x-openwebui-chat-id"), Some("chat-42"));
    assert_eq!(rec.header("keep-alive"), None);
    assert_eq!(rec.header("proxy-authorization"), None);
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {}", KEY).as_str())
    );
    assert_ne!(
        rec.header("host"),
        Some(p.addr.to_string().as_str()),
        "client Host must not be forwarded"
    );
}

#[test]
fn health_keeps_the_original_fields() {
    let (_a, p) = one(Behavior::default(), "");
    let v = get(p.addr, "/health").json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["endpoints"], 1);
    assert_eq!(
        v["models"],
        serde_json::json!([{"id": "m", "displayName": "Model M"}])
    );
    let m = get(p.addr, "/models").json();
    assert_eq!(m["data"][0]["owned_by"], "Model M");
    assert_eq!(m["data"][0]["name"], "Model M");
}

#[test]
fn reload_refuses_a_config_parameter_and_an_empty_config() {
    let (_a, p) = one(Behavior::default(), "");
    let e = request(p.addr, "POST", "/reload?config=/etc/passwd", &[], b"").error(400);
    assert_eq!(e["param"], "config");
    p.write_config(r#"{"endpoints":{}}"#);
    let e = request(p.addr, "POST", "/reload", &[], b"").error(400);
    assert!(
        e["message"].as_str().unwrap().contains("endpoints"),
        "{}",
        e
    );
    assert_eq!(
        get(p.addr, "/health").json()["endpoints"],
        1,
        "old config kept"
    );
}

#[test]
fn stream_error_status_is_not_a_200_event_stream() {
    let (_a, p) = one(
        Behavior {
            status: Some((
                400,
                r#"{"error":{"message":"bad stream_options","type":"invalid_request_error"}}"#
                    .into(),
            )),
            ..Behavior::default()
        },
        "",
    );
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", true));
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"]["message"], "bad stream_options");
}

#[test]
fn usage_only_chunk_passes_through_untouched() {
    let (_a, p) = one(
        Behavior {
            include_usage_chunk: true,
            ..Behavior::default()
        },
        "",
    );
    let body = serde_json::json!({"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count these words"}]}).to_string();
    let r = post_json(p.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "count these words", true)
    );
    let lines = sse_data_lines(&r.body);
    let usage: serde_json::Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[test]
fn sse_keepalive_comments_fill_a_silent_backend() {
    let (_a, p) = one(
        Behavior {
            silent_before_stream: Duration::from_millis(1300),
            ..Behavior::default()
        },
        r#","sseKeepaliveSecs":0.3"#,
    );
    let t = Instant::now();
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("m", "late tokens", true),
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    let comments = text.matches(": keep-alive\n\n").count();
    assert!(
        comments >= 2,
        "expected keep-alive comments during 1.3 s of silence, got {}: {}",
        comments,
        text
    );
    assert!(
        text.starts_with(": keep-alive\n\n"),
        "comments come before the first token"
    );
    assert_eq!(
        text.replace(": keep-alive\n\n", "").into_bytes(),
        echo_stream_bytes("real-m", "late tokens", false)
    );
    assert!(t.elapsed() >= Duration::from_millis(1300));
    // Off by default: no comments without the setting.
    let (_b, q) = one(
        Behavior {
            silent_before_stream: Duration::from_millis(700),
            ..Behavior::default()
        },
        "",
    );
    let r = post_json(q.addr, "/v1/chat/completions", &chat_body("m", "x", true));
    assert!(!r.text().contains("keep-alive"));
}

#[test]
fn endpoint_headers_are_added_and_drop_fields_removed() {
    let (a, p) = one(
        Behavior::default(),
        r#","headers":{"X-Gateway-Tenant":"team-a","X-Org":"acme"},"dropFields":["stream_options","user"]"#,
    );
    let body = r#"{"model":"m","stream":false,"stream_options":{"include_usage":true},"user":"u1","messages":[{"role":"user","content":"hi"}]}"#;
    let r = post_json(p.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = &a.requests()[0];
    assert_eq!(rec.header("x-gateway-tenant"), Some("team-a"));
    assert_eq!(rec.header("x-org"), Some("acme"));
    assert_eq!(
        String::from_utf8(rec.body.clone()).unwrap(),
        r#"{"model":"real-m","stream":false,"messages":[{"role":"user","content":"hi"}]}"#
    );
    let d = get(p.addr, "/debug").text();
    assert!(
        !d.contains("team-a"),
        "header values may be secrets: masked in /debug"
    );
}
