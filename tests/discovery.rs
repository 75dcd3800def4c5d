//! Backend model discovery through real HTTP: wildcard ids, refreshes while the backend's list
//! changes, filters, allow-lists, base URLs with and without /v1, hanging and failing backends,
//! and reloads.

mod support;

use serde_json::{json, Value};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const WAIT: Duration = Duration::from_secs(15);
const BACKEND_KEY: &str = "sk-ollama-backend-key-0001";

fn lists(models: &[&str]) -> Behavior {
    Behavior {
        models: models.iter().map(|m| m.to_string()).collect(),
        ..Behavior::default()
    }
}

fn models_with(p: &Proxy, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let r = request(p.addr, "GET", "/v1/models", headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ids(p: &Proxy) -> Vec<String> {
    models_with(p, &[]).into_iter().map(|(id, _)| id).collect()
}

fn wait_ids(p: &Proxy, what: &str, done: impl Fn(&[String]) -> bool) {
    wait_until(what, WAIT, || done(&ids(p)));
}

fn has(list: &[String], id: &str) -> bool {
    list.iter().any(|i| i == id)
}

fn chat(p: &Proxy, model: &str) -> Resp {
    post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body(model, "hi there", false),
    )
}

/// The `model` of the chat completions a backend received, in order.
fn chat_models(m: &MockBackend) -> Vec<String> {
    m.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .filter_map(|r| r.json()?["model"].as_str().map(str::to_string))
        .collect()
}

fn config(endpoints: Value) -> String {
    json!({ "endpoints": endpoints }).to_string()
}

#[test]
fn discovered_models_appear_and_disappear_within_one_refresh() {
    let ollama = MockBackend::start(lists(&["llama3:8b", "qwen2"]));
    let p = Proxy::start(&config(json!({
        "gpt-4o": {"url": "http://127.0.0.1:9", "displayName": "GPT-4o"},
        "ollama/*": {"url": ollama.url(), "apiKey": BACKEND_KEY, "discover": true,
                     "displayName": "{model} (Ollama)", "discoverIntervalSecs": 1},
    })));
    wait_ids(&p, "the first listing", |ids| has(ids, "ollama/qwen2"));
    assert_eq!(
        models_with(&p, &[]),
        vec![
            ("gpt-4o".to_string(), "GPT-4o".to_string()),
            (
                "ollama/llama3:8b".to_string(),
                "llama3:8b (Ollama)".to_string()
            ),
            ("ollama/qwen2".to_string(), "qwen2 (Ollama)".to_string()),
        ]
    );
    // The probe is a plain GET of the list with the backend's key, by the URL rule.
    let probe = ollama
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/models")
        .expect("a GET /v1/models");
    assert_eq!(probe.method, "GET");
    assert_eq!(
        probe.header("authorization"),
        Some(format!("Bearer {}", BACKEND_KEY).as_str())
    );

    ollama.set_behavior(lists(&["llama3:8b", "mistral"]));
    wait_ids(&p, "mistral to appear and qwen2 to go", |ids| {
        has(ids, "ollama/mistral") && !has(ids, "ollama/qwen2")
    });
    let r = chat(&p, "ollama/mistral");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "mistral");
    assert_eq!(chat_models(&ollama), vec!["mistral"]);
    let one = get(p.addr, "/v1/models/ollama/mistral");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["name"], "mistral (Ollama)");
    get(p.addr, "/v1/models/ollama/qwen2").error(404);
    // Only listed ids become metric labels.
    let metrics = get(p.addr, "/metrics").text();
    assert!(
        metrics.contains("modelmux_discovered_models{model=\"ollama/*\"} 2"),
        "{}",
        metrics
    );
}

#[test]
fn a_model_pulled_after_the_last_refresh_is_served_at_once() {
    let ollama = MockBackend::start(lists(&["llama3"]));
    let p = Proxy::start(&config(json!({
        "ollama/*": {"url": ollama.url(), "discoverIntervalSecs": 3600},
    })));
    wait_ids(&p, "the first listing", |ids| has(ids, "ollama/llama3"));
    ollama.set_behavior(lists(&["llama3", "just-pulled"]));
    let r = chat(&p, "ollama/just-pulled");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat_models(&ollama), vec!["just-pulled"]);
    assert!(
        !has(&ids(&p), "ollama/just-pulled"),
        "not listed before a refresh"
    );
    // A reload refreshes at once.
    let r = request(p.addr, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_ids(&p, "the refresh after the reload", |ids| {
        has(ids, "ollama/just-pulled")
    });
}

#[test]
fn include_and_exclude_filters_decide_what_is_listed_and_served() {
    let ollama = MockBackend::start(lists(&[
        "llama3",
        "llama3-embed",
        "qwen2",
        "mistral",
        "nomic-embed-text",
    ]));
    let p = Proxy::start(&config(json!({
        "ollama/*": {"url": ollama.url(), "discoverIntervalSecs": 1,
                     "discoverInclude": ["llama*", "qwen?"], "discoverExclude": ["*embed*"]},
    })));
    wait_ids(&p, "the first listing", |ids| !ids.is_empty());
    assert_eq!(ids(&p), vec!["ollama/llama3", "ollama/qwen2"]);
    for excluded in [
        "ollama/mistral",
        "ollama/llama3-embed",
        "ollama/nomic-embed-text",
    ] {
        let e = chat(&p, excluded).error(404);
        assert_eq!(e["code"], "model_not_found", "{}", excluded);
    }
    let e = chat(&p, "ollama/").error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(chat(&p, "ollama/qwen2").status, 200);
    assert_eq!(chat_models(&ollama), vec!["qwen2"]);
}

#[test]
fn a_base_url_with_or_without_v1_lists_and_routes_the_same() {
    let backend = MockBackend::start(lists(&["m1"]));
    let p = Proxy::start(&config(json!({
        "bare/*": {"url": backend.url(), "discoverIntervalSecs": 1},
        "v1/*": {"url": format!("{}/v1", backend.url()), "discoverIntervalSecs": 1},
        "slash/*": {"url": format!("{}/v1/", backend.url()), "discoverIntervalSecs": 1},
    })));
    wait_ids(&p, "all three listings", |ids| ids.len() == 3);
    assert_eq!(ids(&p), vec!["bare/m1", "v1/m1", "slash/m1"]);
    for model in ["bare/m1", "v1/m1", "slash/m1"] {
        assert_eq!(chat(&p, model).status, 200, "{}", model);
    }
    let paths: Vec<String> = backend.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths
            .iter()
            .all(|p| p == "/v1/models" || p == "/v1/chat/completions"),
        "{:?}",
        paths
    );
    assert_eq!(chat_models(&backend), vec!["m1", "m1", "m1"]);
}

/// A backend that accepts connections and never answers.
fn hanging_backend() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

#[test]
fn models_never_waits_on_a_hanging_backend() {
    let (hang, held) = hanging_backend();
    let ok = MockBackend::start(lists(&["fine"]));
    let p = Proxy::start(&config(json!({
        "hang/*": {"url": format!("http://{}", hang), "discoverIntervalSecs": 1},
        "ok/*": {"url": ok.url(), "discoverIntervalSecs": 1},
        "plain": {"url": ok.url()},
    })));
    wait_until("the probe to reach the hanging backend", WAIT, || {
        !held.lock().unwrap().is_empty()
    });
    // The hanging probe holds no one up: the other backend is listed and refreshed.
    wait_ids(&p, "the healthy backend's list", |ids| has(ids, "ok/fine"));
    let refreshed = ok.requests().len();
    wait_until("a second refresh of the healthy backend", WAIT, || {
        ok.requests().len() > refreshed
    });
    for _ in 0..20 {
        let started = Instant::now();
        let list = ids(&p);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "/models took {:?}",
            started.elapsed()
        );
        assert_eq!(list, vec!["ok/fine", "plain"]);
    }
    let started = Instant::now();
    let health = get(p.addr, "/health?backends=1");
    assert_eq!(health.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn a_backend_that_goes_down_keeps_its_last_list_marked_stale() {
    let ollama = MockBackend::start(lists(&["llama3"]));
    let p = Proxy::start(&config(json!({
        "ollama/*": {"url": ollama.url(), "discoverIntervalSecs": 1},
    })));
    wait_ids(&p, "the first listing", |ids| has(ids, "ollama/llama3"));
    let backend_debug = |p: &Proxy| -> Value {
        let d = get(p.addr, "/debug").json();
        d["endpoints"]["ollama/*"]["discovery"]["backends"][0].clone()
    };
    assert_eq!(backend_debug(&p)["stale"], false);
    ollama.set_behavior(Behavior {
        models_status: Some(503),
        ..lists(&["other"])
    });
    wait_until("the list to be marked stale", WAIT, || {
        backend_debug(&p)["stale"] == true
    });
    let d = backend_debug(&p);
    assert!(d["lastError"].as_str().unwrap().contains("503"), "{}", d);
    assert_eq!(d["models"], json!(["llama3"]));
    assert_eq!(ids(&p), vec!["ollama/llama3"], "the last good list is kept");
    // Retried with backoff, not given up: it recovers on its own.
    ollama.set_behavior(lists(&["llama3", "qwen2"]));
    wait_ids(&p, "the recovered listing", |ids| has(ids, "ollama/qwen2"));
    assert_eq!(backend_debug(&p)["stale"], false);
    p.wait_log("marked down, keeping its last model list", WAIT)
        .expect("a warning when the backend went down");
}

#[test]
fn a_configured_id_wins_over_a_discovered_one() {
    let ollama = MockBackend::start(lists(&["llama3", "qwen2"]));
    let pinned = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(json!({
        "ollama/*": {"url": ollama.url(), "discoverIntervalSecs": 1},
        "ollama/llama3": {"url": pinned.url(), "displayName": "Pinned", "actualModelName": "pinned-llama"},
    })));
    wait_ids(&p, "the first listing", |ids| has(ids, "ollama/qwen2"));
    assert_eq!(
        models_with(&p, &[]),
        vec![
            ("ollama/qwen2".to_string(), "ollama/qwen2".to_string()),
            ("ollama/llama3".to_string(), "Pinned".to_string()),
        ]
    );
    assert_eq!(chat(&p, "ollama/llama3").status, 200);
    assert_eq!(chat_models(&pinned), vec!["pinned-llama"]);
    assert!(chat_models(&ollama).is_empty());
    p.wait_log("discovered model ollama/llama3 at 127.0.0.1", WAIT)
        .expect("a warning names the hidden discovered model");
}

#[test]
fn client_key_allow_lists_take_wildcards() {
    let ollama = MockBackend::start(lists(&["llama3", "llama3.1", "qwen2"]));
    let small = "sk-client-llama-only-0001";
    let all = "sk-client-everything-0002";
    let text = json!({
        "proxyKeys": [{"key": small, "models": ["ollama/llama*", "gpt-?o"]}, all],
        "endpoints": {
            "ollama/*": {"url": ollama.url(), "discoverIntervalSecs": 1},
            "gpt-4o": {"url": ollama.url()},
            "gpt-4o-mini": {"url": ollama.url()},
        },
    })
    .to_string();
    let p = Proxy::start(&text);
    let bearer = |k: &str| format!("Bearer {}", k);
    wait_until("the first listing", WAIT, || {
        models_with(&p, &[("Authorization", &bearer(all))]).len() == 5
    });
    let small_ids: Vec<String> = models_with(&p, &[("Authorization", &bearer(small))])
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        small_ids,
        vec!["ollama/llama3", "ollama/llama3.1", "gpt-4o"]
    );
    let send = |key: &str, model: &str| {
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", &bearer(key)),
                ("Content-Type", "application/json"),
            ],
            chat_body(model, "hi", false).as_bytes(),
        )
    };
    assert_eq!(send(small, "ollama/llama3.1").status, 200);
    // Not listed yet, but the allow-list pattern covers it.
    assert_eq!(send(small, "ollama/llama4").status, 200);
    assert_eq!(
        send(small, "ollama/qwen2").error(404)["code"],
        "model_not_found"
    );
    assert_eq!(
        send(small, "gpt-4o-mini").error(404)["code"],
        "model_not_found"
    );
    assert_eq!(send(all, "ollama/qwen2").status, 200);
}

/// Threads of the proxy process with this name.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pid)) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            let mut comm = String::new();
            std::fs::File::open(t.path().join("comm"))
                .and_then(|mut f| f.read_to_string(&mut comm))
                .is_ok()
                && comm.trim() == name
        })
        .count()
}

#[test]
fn reloads_keep_one_discovery_thread_and_apply_new_filters() {
    let a = MockBackend::start(lists(&["llama3", "qwen2"]));
    let b = MockBackend::start(lists(&["phi3"]));
    let first = config(json!({
        "a/*": {"url": a.url(), "discoverIntervalSecs": 1},
    }));
    let p = Proxy::start_with(&first, &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "0")], &[]);
    wait_ids(&p, "the first listing", |ids| ids.len() == 2);
    let configs = [
        config(json!({
            "a/*": {"url": a.url(), "discoverIntervalSecs": 1, "discoverExclude": ["qwen*"]},
            "b/*": {"url": b.url(), "discoverIntervalSecs": 1},
        })),
        first.clone(),
    ];
    for round in 0..6 {
        let text = &configs[round % 2];
        p.write_config(text);
        let r = request(p.addr, "POST", "/reload", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        if round % 2 == 0 {
            // New filters apply at once to the kept list; the new backend is listed soon.
            assert!(!has(&ids(&p), "a/qwen2"));
            wait_ids(&p, "b's listing after the reload", |ids| {
                ids == ["a/llama3", "b/phi3"]
            });
        } else {
            wait_ids(&p, "the first config's listing", |ids| {
                ids == ["a/llama3", "a/qwen2"]
            });
        }
    }
    // A probe thread starts under its parent's name for an instant: wait for a quiet moment.
    // Two real discovery threads would never get there.
    wait_until("exactly one discovery thread", WAIT, || {
        threads_named(p.pid(), "discovery") == 1
    });
    // Probe threads end with their probe: no more than one per backend at any time.
    wait_until("probe threads to finish", WAIT, || {
        threads_named(p.pid(), "probe") <= 1
    });
}

#[test]
fn the_discovery_thread_starts_with_the_first_config_that_probes() {
    let a = MockBackend::start(lists(&["llama3"]));
    // Nothing probed or discovered: an idle process has no scheduler waiting for nothing, and
    // the signals and the file watch are the main thread's (no threads of their own).
    let plain = config(json!({"echo": {"url": a.url(), "actualModelName": "llama3"}}));
    let p = Proxy::start_with(&plain, &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "1")], &[]);
    for name in ["discovery", "signals", "config-watch", "limits-sweep"] {
        assert_eq!(threads_named(p.pid(), name), 0, "a {} thread at idle", name);
    }
    // The reload that first asks for discovery starts it, and it discovers at once.
    p.write_config(&config(json!({
        "echo": {"url": a.url(), "actualModelName": "llama3"},
        "a/*": {"url": a.url(), "discoverIntervalSecs": 1},
    })));
    let r = request(p.addr, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_ids(&p, "the listing after the reload", |ids| {
        has(ids, "a/llama3")
    });
    wait_until("one discovery thread", WAIT, || {
        threads_named(p.pid(), "discovery") == 1
    });
    // Reloading back and forth never starts a second one.
    for text in [&plain, &plain] {
        p.write_config(text);
        assert_eq!(request(p.addr, "POST", "/reload", &[], b"").status, 200);
    }
    assert_eq!(threads_named(p.pid(), "discovery"), 1);
}
