//! Active health through real HTTP: the periodic `GET /v1/models` probe takes a failing backend
//! out of selection until a probe succeeds, never sends a completion, and shows in
//! `/health?backends=1` and `/metrics`.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend, Recorded};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn backend_health(p: &Proxy, model: &str, index: usize) -> Value {
    get(p.addr, "/health?backends=1").json()["backends"][model][index].clone()
}

fn chats(m: &MockBackend) -> usize {
    m.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

fn only_model_lists(requests: &[Recorded]) -> bool {
    requests
        .iter()
        .all(|r| r.method == "GET" && r.path == "/v1/models")
}

#[test]
fn a_failing_probe_takes_a_backend_out_until_a_probe_succeeds() {
    let a = MockBackend::start(Behavior::default());
    let b = MockBackend::start(Behavior::default());
    let text = json!({
        "health": {"probeIntervalSecs": 1},
        "endpoints": {"m": {"backends": [{"url": a.url()}, {"url": b.url()}]}},
    })
    .to_string();
    let p = Proxy::start(&text);
    wait_until("both backends probed", WAIT, || {
        (0..2).all(|i| backend_health(&p, "m", i)["lastProbeAt"].is_u64())
    });
    let h = backend_health(&p, "m", 0);
    assert_eq!(h["state"], "up", "{}", h);
    assert_eq!(h["probed"], true);
    assert_eq!(h["lastProbeOk"], true);

    // a's list fails while its completions would still work: only the probe can take it out.
    a.set_behavior(Behavior {
        models_status: Some(503),
        ..Behavior::default()
    });
    wait_until("a marked down", WAIT, || {
        backend_health(&p, "m", 0)["state"] == "down"
    });
    let h = backend_health(&p, "m", 0);
    assert_eq!(h["lastProbeOk"], false);
    assert!(
        h["lastProbeError"].as_str().unwrap().contains("503"),
        "{}",
        h
    );
    let host_a = a.url().trim_start_matches("http://").to_string();
    let metrics = get(p.addr, "/metrics").text();
    assert!(
        metrics.contains(&format!(
            "modelmux_backend_up{{model=\"m\",backend=\"{}\"}} 0",
            host_a
        )),
        "{}",
        metrics
    );
    assert!(metrics.contains(&format!(
        "modelmux_backend_last_probe_timestamp_seconds{{model=\"m\",backend=\"{}\"}} ",
        host_a
    )));
    let before = chats(&a);
    for _ in 0..6 {
        let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(chats(&a), before, "a down backend got traffic");
    assert_eq!(chats(&b), 6);

    a.set_behavior(Behavior::default());
    wait_until("a marked up again", WAIT, || {
        backend_health(&p, "m", 0)["state"] == "up"
    });
    for _ in 0..4 {
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "hi", false));
    }
    assert!(chats(&a) > before, "a recovered backend gets traffic again");
    // The probe never sent a completion: everything but the chats above was a list.
    let probes: Vec<Recorded> = a
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/chat/completions"))
        .collect();
    assert!(probes.len() >= 3 && only_model_lists(&probes));
    p.wait_log("marked down", WAIT)
        .expect("the down transition is logged");
    p.wait_log("marked up", WAIT)
        .expect("the up transition is logged");
}

#[test]
fn the_only_backend_is_still_tried_when_its_probe_failed() {
    // A port nothing listens on: connection refused at every probe.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let text = json!({
        "endpoints": {"solo": {"url": dead, "health": {"probeIntervalSecs": 1}}},
    })
    .to_string();
    let p = Proxy::start(&text);
    wait_until("solo marked down", WAIT, || {
        backend_health(&p, "solo", 0)["state"] == "down"
    });
    // Trying beats refusing: the only backend is still tried, and fails as it would.
    let r = post_json(
        p.addr,
        "/v1/chat/completions",
        &chat_body("solo", "hi", false),
    );
    assert_eq!(r.error(502)["code"], "bad_gateway");
}

#[test]
fn probing_is_off_unless_configured() {
    let probed = MockBackend::start(Behavior::default());
    let quiet = MockBackend::start(Behavior::default());
    let text = json!({
        "endpoints": {
            "probed": {"url": probed.url(), "health": {"probeIntervalSecs": 1}},
            "quiet": {"url": quiet.url()},
        },
    })
    .to_string();
    let p = Proxy::start(&text);
    // Three rounds of the probed backend are time enough for the other to have been probed.
    wait_until("three probes", WAIT, || probed.requests().len() >= 3);
    assert!(quiet.requests().is_empty(), "{:?}", quiet.requests());
    let h = backend_health(&p, "quiet", 0);
    assert_eq!(h["probed"], false);
    assert!(h["lastProbeAt"].is_null());
    assert_eq!(h["state"], "up");
    assert!(only_model_lists(&probed.requests()));
}

#[test]
fn turning_probes_off_by_reload_lifts_a_down_mark() {
    let a = MockBackend::start(Behavior {
        models_status: Some(500),
        ..Behavior::default()
    });
    let probed = json!({
        "endpoints": {"m": {"url": a.url(), "health": {"probeIntervalSecs": 1}}},
    })
    .to_string();
    let p = Proxy::start_with(&probed, &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "0")], &[]);
    wait_until("a marked down", WAIT, || {
        backend_health(&p, "m", 0)["state"] == "down"
    });
    p.write_config(&json!({"endpoints": {"m": {"url": a.url()}}}).to_string());
    let r = request(p.addr, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("the down mark lifted", WAIT, || {
        backend_health(&p, "m", 0)["state"] == "up"
    });
    assert!(backend_health(&p, "m", 0)["lastProbeAt"].is_null());
}
