//! The access log cannot be forged by a client: every value a client chose is escaped.

mod support;

use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

/// A model id that would write a forged line (and clear the terminal) into a raw log.
const EVIL: &str = "x\n2026-01-01T00:00:00.000Z INFO  [modelmux::access_log] GET /forged status=200\u{1b}[2J\r\\ \u{202e}";

fn evil_request(p: &Proxy) -> Resp {
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("X-Request-Id", "evil-req-1"),
        ],
        chat_body(EVIL, "hi", false).as_bytes(),
    )
}

#[test]
fn a_model_id_with_newline_and_esc_stays_one_escaped_text_log_line() {
    let a = MockBackend::start(Behavior::default());
    let p = one_model_proxy(&a.url(), "sk-access-log-escape-0001", &[]);
    assert_eq!(evil_request(&p).status, 404);
    let line = p
        .wait_log("id=evil-req-1", Duration::from_secs(5))
        .expect("access log line");
    let logs = p.logs();
    assert!(
        logs.iter().all(|l| !l.contains("/forged") || l == &line),
        "a forged line: {:#?}",
        logs
    );
    assert!(
        logs.iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains('\r')),
        "raw ESC or CR in the log: {:#?}",
        logs
    );
    let model = line
        .split(" model=")
        .nth(1)
        .and_then(|rest| rest.split(" backend=").next())
        .expect("model field");
    assert_eq!(
        model,
        "x\\n2026-01-01T00:00:00.000Z\\u{20}INFO\\u{20}\\u{20}[modelmux::access_log]\\u{20}GET\\u{20}/forged\\u{20}status=200\\u{1b}[2J\\r\\\\\\u{20}\\u{202e}",
        "{}",
        line
    );
    assert!(line.contains(" status=404 "), "{}", line);
}

#[test]
fn a_model_id_with_newline_and_esc_is_escaped_in_the_json_log() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), "sk-access-log-escape-0002", "real")]),
        &[("CM_OPEN_WEBUI_PROXY_LOG_FORMAT", "json")],
        &[],
    );
    assert_eq!(evil_request(&p).status, 404);
    let line = p
        .wait_log("\"request_id\":\"evil-req-1\"", Duration::from_secs(5))
        .expect("JSON access log line");
    assert!(
        line.contains(r#""model":"x\n2026-01-01T00:00:00.000Z INFO  [modelmux::access_log] GET /forged status=200\u001b[2J\r\\ "#),
        "{}",
        line
    );
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    assert_eq!(v["model"], EVIL);
    assert!(p.logs().iter().all(|l| !l.contains('\u{1b}')));
}
