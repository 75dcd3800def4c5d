//! Property-based fuzzing: random paths and bodies never panic the routing and rewriting code.

use crate::http::route;
use crate::stream::body;
use proptest::prelude::*;

#[path = "../tests/support/json_like.rs"]
mod json_like;

use json_like::json_like;

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
                let out = obj.rewrite("real", &["x".to_string()], &[]);
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
