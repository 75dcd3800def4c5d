//! Property-based fuzzing of the live HTTP surface: random paths, methods and bodies always get
//! a well-formed HTTP answer from the running proxy. (The routing and rewriting functions are
//! fuzzed directly in `src/fuzz_tests.rs`.)

mod support;

use proptest::prelude::*;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

#[path = "support/json_like.rs"]
mod json_like;

use json_like::json_like;

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
