//! Issue 24 item 12: with `metrics.perUser`, `/metrics` names people (user ids, e-mails), so the
//! per-user series go only to the admin key or `metrics.key`; everyone else still gets every
//! other series. Item 4's share here: per-user series are capped by `metrics.maxUsers`, later
//! users summed in `modelmux_user_other_*`.
//!
//! Users are named by Open WebUI's plain header through a key trusted for it.

mod support;

use support::mock_backend::{Behavior, MockBackend};
use support::*;

const BACKEND_KEY: &str = "sk-privacy-backend-key-4d5e6f";
const CLIENT: &str = "sk-privacy-owui-key-7a8b9c";
const ADMIN: &str = "mm-privacy-admin-key-1a2b3c";
const READER: &str = "sk-privacy-metrics-reader-5d6e";

fn config(backend: &str, metrics: &str) -> String {
    format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}"}}}},
            "proxyKeys":[{{"key":"{}","name":"owui","trustUserHeaders":true}}],
            "metrics":{}}}"#,
        backend, BACKEND_KEY, CLIENT, metrics
    )
}

/// One chat request for `user` ("a b": 2 prompt and 2 completion tokens from the echo backend).
fn chat_as(p: &Proxy, user: &str) {
    let r = request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {}", CLIENT)),
            ("X-OpenWebUI-User-Id", user),
        ],
        chat_body("m", "a b", false).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn scrape(p: &Proxy, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Bearer {}", t));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = request(p.addr, "GET", "/metrics", &headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

const ANN: &str = "ann.lee@example.com";

#[test]
fn per_user_series_go_only_to_the_admin_or_metrics_key() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config(
            &a.url(),
            &format!(r#"{{"perUser":true,"key":"{}"}}"#, READER),
        ),
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)],
        &[],
    );
    chat_as(&p, ANN);
    chat_as(&p, ANN);
    let ann_requests = format!("modelmux_user_requests_total{{user=\"{}\"}} 2\n", ANN);
    let ann_prompt = format!(
        "modelmux_user_tokens_total{{user=\"{}\",direction=\"prompt\",estimated=\"false\"}} 4\n",
        ANN
    );
    for token in [Some(READER), Some(ADMIN)] {
        wait_until("per-user series", std::time::Duration::from_secs(5), || {
            scrape(&p, token).contains(&ann_requests)
        });
        assert!(scrape(&p, token).contains(&ann_prompt));
    }
    // No key, a client key, a wrong key: everything but the people.
    for token in [None, Some(CLIENT), Some("sk-privacy-metrics-reader-5d6f")] {
        let m = scrape(&p, token);
        assert!(!m.contains(ANN), "{:?} sees a user:\n{}", token, m);
        assert!(!m.contains("modelmux_user_"), "{:?}:\n{}", token, m);
        assert!(
            m.contains("modelmux_requests_total{model=\"m\",backend=\"127.0.0.1"),
            "{:?}:\n{}",
            token,
            m
        );
        assert!(m.contains(
            "modelmux_tokens_total{model=\"m\",direction=\"prompt\",estimated=\"false\"} 4\n"
        ));
        prometheus_parse::Scrape::parse(m.lines().map(|l| Ok(l.to_string()))).unwrap();
    }
}

#[test]
fn without_any_key_per_user_series_are_served_to_no_one() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(&a.url(), r#"{"perUser":true}"#));
    assert!(
        p.wait_log(
            "per-user series are served only to the admin key or metrics.key and neither is set",
            std::time::Duration::from_secs(5)
        )
        .is_some(),
        "{:#?}",
        p.logs()
    );
    chat_as(&p, ANN);
    for token in [None, Some(CLIENT)] {
        wait_until(
            "the request counted",
            std::time::Duration::from_secs(5),
            || {
                scrape(&p, token)
                    .contains("modelmux_tokens_total{model=\"m\",direction=\"prompt\",estimated=\"false\"} 2\n")
            },
        );
        let m = scrape(&p, token);
        assert!(!m.contains(ANN), "{}", m);
        assert!(!m.contains("modelmux_user_"), "{}", m);
    }
}

#[test]
fn per_user_series_stop_at_max_users_and_the_rest_are_summed() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start(&config(
        &a.url(),
        &format!(r#"{{"perUser":true,"maxUsers":2,"key":"{}"}}"#, READER),
    ));
    // A request is counted once its answer is sent, so the next one could be counted before
    // it: each is waited for, so that users take their places in the order sent.
    let counted = |m: &str| -> u64 {
        m.lines()
            .filter(|l| {
                l.starts_with("modelmux_user_requests_total{")
                    || l.starts_with("modelmux_user_other_requests_total ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    for (i, u) in ["u1", "u2", "u3", "u1", "u4", "u3"].into_iter().enumerate() {
        chat_as(&p, u);
        wait_until(
            &format!("request {} counted", i + 1),
            std::time::Duration::from_secs(5),
            || counted(&scrape(&p, Some(READER))) == i as u64 + 1,
        );
    }
    let m = scrape(&p, Some(READER));
    let user_lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("modelmux_user_"))
        .collect();
    assert_eq!(
        user_lines,
        [
            "modelmux_user_requests_total{user=\"u1\"} 2",
            "modelmux_user_requests_total{user=\"u2\"} 1",
            "modelmux_user_tokens_total{user=\"u1\",direction=\"prompt\",estimated=\"false\"} 4",
            "modelmux_user_tokens_total{user=\"u1\",direction=\"completion\",estimated=\"false\"} 4",
            "modelmux_user_tokens_total{user=\"u2\",direction=\"prompt\",estimated=\"false\"} 2",
            "modelmux_user_tokens_total{user=\"u2\",direction=\"completion\",estimated=\"false\"} 2",
            "modelmux_user_other_requests_total 3",
            "modelmux_user_other_tokens_total{direction=\"prompt\",estimated=\"false\"} 6",
            "modelmux_user_other_tokens_total{direction=\"completion\",estimated=\"false\"} 6",
        ],
        "{}",
        m
    );
    prometheus_parse::Scrape::parse(m.lines().map(|l| Ok(l.to_string()))).unwrap();
}
