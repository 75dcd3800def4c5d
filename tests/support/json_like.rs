//! The proptest strategy for JSON-like request bodies, shared by the fuzzing of the routing and
//! rewriting functions (`src/fuzz_tests.rs`) and of the live proxy (`tests/fuzz.rs`).

use proptest::prelude::*;

/// Random bytes, JSON-ish punctuation soup, small objects with a model, and an empty chat.
pub fn json_like() -> impl Strategy<Value = Vec<u8>> {
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
