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

/// Issue 17: `/usage` is personal data and always needs the admin key; a valid client key that
/// is not the admin key gets 403 `admin only` (it is known, so not 401) on every admin endpoint.
#[test]
fn usage_always_needs_the_admin_key_and_a_client_key_gets_403_admin_only() {
    let a = MockBackend::start(Behavior::default());
    let get_with = |p: &Proxy, method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {}", t));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|v| vec![("Authorization", v)])
            .unwrap_or_default();
        request(p.addr, method, path, &headers, b"")
    };
    let message = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").to_string();

    // Neither client keys nor an admin key: /debug stays open as in the original proxy, but
    // /usage is refused with a message that says how to set the admin key.
    let open = Proxy::start(&config_for(&[("m", &a.url(), KEY, "real-m")]));
    assert_eq!(get_with(&open, "GET", "/debug", None).status, 200);
    let e = get_with(&open, "GET", "/usage", None).error(403);
    assert_eq!(e["code"], "admin_key_not_set");
    assert!(
        message(&e).contains("set CM_OPEN_WEBUI_PROXY_ADMIN_KEY")
            && message(&e).contains("`modelmux usage`"),
        "{}",
        e
    );
    drop(open);

    let with_keys = format!(
        r#"{{"proxyKeys":["mm-client-key-123456"],"endpoints":{{"m":{{"url":"{}","apiKey":"{}"}}}}}}"#,
        a.url(),
        KEY
    );
    // Client keys but no admin key: /usage still says how to set one; /debug is disabled.
    let p = Proxy::start(&with_keys);
    let e = get_with(&p, "GET", "/usage", Some("mm-client-key-123456")).error(403);
    assert_eq!(e["code"], "admin_key_not_set");
    let e = get_with(&p, "GET", "/debug", Some("mm-client-key-123456")).error(403);
    assert_eq!(e["code"], "admin_disabled");
    drop(p);

    // Both: the admin key opens every admin endpoint; a client key gets 403 `admin only`; no
    // key or an unknown one gets 401.
    let p = Proxy::start_with(
        &with_keys,
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-abcdef")],
        &[],
    );
    for (method, path) in [("GET", "/usage"), ("GET", "/debug"), ("POST", "/reload")] {
        let e = get_with(&p, method, path, Some("mm-client-key-123456")).error(403);
        assert_eq!(e["code"], "admin_only", "{} {}", method, path);
        assert!(message(&e).starts_with("admin only"), "{}", e);
        assert_eq!(
            get_with(&p, method, path, None).error(401)["code"],
            "invalid_api_key"
        );
        assert_eq!(
            get_with(&p, method, path, Some("mm-wrong-key-000000")).error(401)["code"],
            "invalid_api_key"
        );
        let r = get_with(&p, method, path, Some("mm-admin-key-abcdef"));
        assert_eq!(r.status, 200, "{} {}: {}", method, path, r.text());
    }
    drop(p);

    // An admin key and no client keys: /usage with the admin key only.
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-abcdef")],
        &[],
    );
    get_with(&p, "GET", "/usage", None).error(401);
    assert_eq!(
        get_with(&p, "GET", "/usage", Some("mm-admin-key-abcdef")).status,
        200
    );
}
