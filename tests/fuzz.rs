//! Property-based fuzzing: random paths and bodies never panic the routing/rewrite code and
//! always get a well-formed HTTP answer from the running proxy.

mod support;

use modelmux::{body, route};
use proptest::prelude::*;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[{}\\[\\]\":,a-z0-9 \\\\.-]{0,200}".prop_map(|s| s.into_bytes()),
        ("[a-z]{0,8}", "[ -~]{0,40}").prop_map(|(k, v)| format!(
            "{{\"model\":\"m\",\"{}\":\"{}\"}}",
            k,
            v.replace('"', "")
        )
        .into_bytes()),
        Just(b"{\"model\":\"m\",\"messages\":[]}".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn routing_and_rewriting_never_panic(path in "[ -~]{0,80}", body in json_like(), ct in "[ -~]{0,60}") {
        let t = route::parse_target(&path);
        prop_assert!(t.path.starts_with('/'));
        prop_assert!(!t.path.contains("//"));
        let _ = route::route(&t.path);
        if let Ok(obj) = body::JsonObject::parse(&body) {
            if let Ok(Some(_)) = obj.model() {
                let out = obj.rewrite("real", &["x".to_string()]);
                // The rewrite is valid JSON whose model is the real name.
                let v: serde_json::Value = serde_json::from_slice(&out).expect("rewrite is JSON");
                prop_assert_eq!(v["model"].as_str(), Some("real"));
            }
        }
        if let Some(b) = body::multipart_boundary(&ct) {
            let _ = body::multipart_field(&body, &b, "model");
            let _ = body::replace_multipart_field(&body, &b, "model", "real");
        }
        if let Some(q) = t.query.as_deref() {
            let _ = body::query_param(q, "model");
            let _ = body::replace_query_param(q, "model", "r e/al");
        }
    }
}

#[test]
fn random_requests_always_get_well_formed_answers() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config_for(&[(
        "m",
        &a.url(),
        "sk-fuzz-key-0123456789",
        "real-m",
    )]));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        ..ProptestConfig::default()
    });
    let paths = prop_oneof![
        Just("/v1/chat/completions".to_string()),
        Just("/v1/embeddings".to_string()),
        "/[a-z/]{0,30}".prop_map(|s| s),
        "/v1/[a-zA-Z0-9%/?=&._-]{0,40}".prop_map(|s| s),
    ];
    let methods = prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")];
    runner
        .run(&(paths, methods, json_like()), |(path, method, body)| {
            let r = request(
                p.addr,
                method,
                &path,
                &[("Content-Type", "application/json")],
                &body,
            );
            prop_assert!((200..600).contains(&r.status));
            if r.status >= 400 && r.header("x-mock-backend").is_none() {
                // Every error the proxy produces itself is OpenAI-shaped JSON.
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).expect("error body is JSON");
                prop_assert!(v["error"]["message"].is_string());
                prop_assert!(v["error"].get("type").is_some() && v["error"].get("code").is_some());
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(get(p.addr, "/health").status, 200);
}
