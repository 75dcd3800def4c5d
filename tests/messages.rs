//! Issue 17, item 12: small messages a newcomer reads, said right.

mod support;

use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

#[test]
fn discovery_logs_only_ids_it_serves_and_health_shows_no_raw_template() {
    let a = MockBackend::start(Behavior {
        models: vec!["llama3".into(), "nomic-embed-text".into()],
        ..Behavior::default()
    });
    let p = Proxy::start(&format!(
        r#"{{"endpoints":{{"ollama/*":{{"url":"{}","displayName":"{{model}} (Ollama)",
            "discoverExclude":["*embed*"]}}}}}}"#,
        a.url()
    ));
    let line = p
        .wait_log("discovery for ollama/*", Duration::from_secs(10))
        .expect("the first listing is logged");
    assert!(
        line.ends_with(&format!(
            "discovery for ollama/* at {}: 1 model (1 more filtered out by discoverInclude/discoverExclude); added: llama3",
            a.url().trim_start_matches("http://")
        )),
        "{}",
        line
    );
    let h = get(p.addr, "/health").json();
    assert_eq!(
        h["models"],
        serde_json::json!([{"id": "ollama/*", "displayName": "* (Ollama)"}])
    );
    // The listing itself resolves the template per model.
    let models = get(p.addr, "/v1/models").json();
    assert_eq!(models["data"][0]["name"], "llama3 (Ollama)", "{}", models);
}

#[test]
fn the_listening_and_reload_lines_count_one_model_as_one_model() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), "", "m")]),
        &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "0")],
        &[],
    );
    let line = p.wait_log("listening on", Duration::from_secs(1)).unwrap();
    assert!(line.contains(" with 1 model from "), "{}", line);
    assert_eq!(request(p.addr, "POST", "/reload", &[], b"").status, 200);
    let line = p
        .wait_log("config reloaded from", Duration::from_secs(5))
        .unwrap();
    assert!(line.ends_with(": 1 model"), "{}", line);
}
