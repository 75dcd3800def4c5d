//! No configured secret ever leaves the proxy, on any path.

mod support;

use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

#[test]
fn secrets_never_leave_the_proxy() {
    // Every key kind in one config, every path that could echo one: errors from dead and
    // failing backends, /debug, /health, a failed reload, access denials, debug-level logging.
    let a = MockBackend::start(Behavior {
        status: Some((500, r#"{"error":{"message":"backend broke"}}"#.into())),
        ..Behavior::default()
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = format!(
        r#"{{"proxyKeys":["mm-client-key-secret-1"],"endpoints":{{"ok":{{"url":"{u}","apiKey":"sk-endpoint-secret-2222","headers":{{"X-Gateway-Token":"gw-header-secret-3333"}}}},"dead":{{"url":"{d}","apiKey":"sk-dead-secret-4444"}},"multi":{{"backends":[{{"url":"{d}","apiKey":"sk-backend-secret-5555"}},{{"url":"{u}","apiKey":"sk-backend-secret-6666"}}]}}}}}}"#,
        u = a.url(),
        d = dead_url
    );
    let p = Proxy::start_with(
        &cfg,
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-secret-7777")],
        &[],
    );
    let client = [
        ("Authorization", "Bearer mm-client-key-secret-1"),
        ("Content-Type", "application/json"),
    ];
    let admin = [("Authorization", "Bearer mm-admin-secret-7777")];
    let mut requests = 0;
    for model in ["ok", "dead", "multi", "ghost"] {
        requests += 2;
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &client,
            chat_body(model, "x", false).as_bytes(),
        );
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &client,
            chat_body(model, "x", true).as_bytes(),
        );
    }
    request(
        p.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong-key")],
        b"",
    );
    request(p.addr, "GET", "/debug", &admin, b"");
    request(p.addr, "GET", "/debug", &client, b"");
    get(p.addr, "/health?backends=1");
    get(p.addr, "/metrics");
    p.write_config(&cfg.replace("\"endpoints\"", "\"endpoints\":{},\"x\""));
    request(p.addr, "POST", "/reload", &admin, b"");
    requests += 6;
    // The log lines are written after each response is sent: scan only once every request's
    // line and the failed reload's are in, so the scan covers what it claims to.
    p.wait_logs(
        "an access log line per request and the failed reload",
        Duration::from_secs(10),
        |logs| {
            logs.iter()
                .filter(|l| l.contains("modelmux::access_log"))
                .count()
                >= requests
                && logs.iter().any(|l| l.contains("reload failed"))
        },
    );
    p.assert_no_secret_logged(&[
        "sk-endpoint-secret-2222",
        "gw-header-secret-3333",
        "sk-dead-secret-4444",
        "sk-backend-secret-5555",
        "sk-backend-secret-6666",
        "mm-client-key-secret-1",
        "mm-admin-secret-7777",
    ]);
    // The backends did get their keys: the scan above is not vacuous.
    assert!(a
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some("Bearer sk-endpoint-secret-2222")));
    assert!(a
        .requests()
        .iter()
        .any(|r| r.header("x-gateway-token") == Some("gw-header-secret-3333")));
}
