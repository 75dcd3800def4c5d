//! Client keys and the admin key: who may call what, and with which model.

mod support;

use support::mock_backend::{Behavior, MockBackend};
use support::*;

/// The backend key of model `m`; the secret scan checks it never reaches a log.
const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

#[test]
fn proxy_keys_gate_requests_and_filter_models() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"proxyKeys":["mm-full-access-key-123",{{"key":"mm-limited-key-456","models":["open"]}}],"endpoints":{{"open":{{"url":"{u}","apiKey":"{k}"}},"secret":{{"url":"{u}","apiKey":"{k}"}}}}}}"#,
        u = a.url(),
        k = KEY
    );
    let p = Proxy::start_with(
        &cfg,
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", "mm-env-key-789=secret")],
        &[],
    );
    let with = |key: &str, method: &str, path: &str, body: &str| {
        let auth = format!("Bearer {}", key);
        request(
            p.addr,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let e = get(p.addr, "/v1/models").error(401);
    assert_eq!(e["code"], "invalid_api_key");
    with("wrong-key-000", "GET", "/v1/models", "").error(401);
    assert_eq!(get(p.addr, "/health").status, 200, "liveness needs no key");
    let ids = |r: Resp| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(with("mm-full-access-key-123", "GET", "/v1/models", "")),
        vec!["open", "secret"]
    );
    assert_eq!(
        ids(with("mm-limited-key-456", "GET", "/v1/models", "")),
        vec!["open"]
    );
    assert_eq!(
        ids(with("mm-env-key-789", "GET", "/models", "")),
        vec!["secret"]
    );
    assert_eq!(
        with(
            "mm-limited-key-456",
            "POST",
            "/v1/chat/completions",
            &chat_body("open", "x", false)
        )
        .status,
        200
    );
    let e = with(
        "mm-limited-key-456",
        "POST",
        "/v1/chat/completions",
        &chat_body("secret", "x", false),
    )
    .error(404);
    assert_eq!(e["code"], "model_not_found");
    with("mm-limited-key-456", "GET", "/v1/models/secret", "").error(404);
    // The client's proxy key never reaches a backend.
    for r in a.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", KEY).as_str())
        );
    }
    // Client keys set, no admin key: admin endpoints refused even with a client key.
    with("mm-full-access-key-123", "GET", "/debug", "").error(403);
    with("mm-full-access-key-123", "POST", "/reload", "").error(403);
}

#[test]
fn admin_key_protects_debug_and_reload() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-abcdef")],
        &[],
    );
    get(p.addr, "/debug").error(401);
    request(p.addr, "POST", "/reload", &[], b"").error(401);
    let auth = [("Authorization", "Bearer mm-admin-key-abcdef")];
    assert_eq!(request(p.addr, "GET", "/debug", &auth, b"").status, 200);
    assert_eq!(request(p.addr, "POST", "/reload", &auth, b"").status, 200);
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200,
        "no client keys: open"
    );
}

#[test]
fn a_restricted_key_cannot_smuggle_another_model_in_the_body() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"proxyKeys":[{{"key":"mm-restricted-key-1","models":["cheap"]}}],"endpoints":{{"cheap":{{"url":"{u}","actualModelName":"cheap-real"}},"pricey":{{"url":"{u}","actualModelName":"pricey-real"}}}}}}"#,
        u = a.url()
    );
    let p = Proxy::start(&cfg);
    let auth = ("Authorization", "Bearer mm-restricted-key-1");
    let r = request(
        p.addr,
        "POST",
        "/v1/completions",
        &[
            auth,
            ("X-Model-Id", "cheap"),
            ("Content-Type", "application/vnd.api+json"),
        ],
        br#"{"model":"pricey-real","prompt":"x"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.requests()[0].json().unwrap()["model"],
        "cheap-real",
        "the body's model is rewritten"
    );
    let deep = format!(
        "{{\"model\":\"pricey-real\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    request(
        p.addr,
        "POST",
        "/v1/completions",
        &[
            auth,
            ("X-Model-Id", "cheap"),
            ("Content-Type", "application/json"),
        ],
        deep.as_bytes(),
    )
    .error(400);
    assert_eq!(a.requests().len(), 1);
}
