//! Issue 17: a mistyped config fails closed. An unknown field anywhere is an error at start, on
//! reload (the old config keeps serving) and in `--check-config` (exit 1), naming the place and
//! the field meant; `_` keys are comments.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

fn check_config(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .env_remove("CM_OPEN_WEBUI_PROXY_API_KEYS")
        .env_remove("CM_OPEN_WEBUI_PROXY_ADMIN_KEY")
        .output()
        .unwrap()
}

/// One typo per object of the config, each as `(config, location, the field meant)`. The first
/// ones are the typos the issue found running open or unaccounted with exit 0.
fn typos() -> Vec<(String, &'static str, &'static str)> {
    let ep = r#""m":{"url":"http://127.0.0.1:9""#;
    let top = |extra: &str| format!(r#"{{"endpoints":{{{}}}}},{}}}"#, ep, extra);
    let in_ep = |extra: &str| format!(r#"{{"endpoints":{{{},{}}}}}}}"#, ep, extra);
    vec![
        (top(r#""proxyKey":["k"]"#), "proxyKey", "proxyKeys"),
        (top(r#""limit":[]"#), "limit", "limits"),
        (top(r#""openWebUi":{}"#), "openWebUi", "openWebUI"),
        (top(r#""usagelog":"u.jsonl""#), "usagelog", "usageLog"),
        (
            in_ep(r#""maxConcurent":1"#),
            "endpoints.m.maxConcurent",
            "maxConcurrent",
        ),
        (
            in_ep(r#""maxQueueWait":5"#),
            "endpoints.m.maxQueueWait",
            "maxQueueWaitSecs",
        ),
        (
            top(r#""proxyKeys":[{"key":"k","trustUserHeader":true}]"#),
            "proxyKeys[0].trustUserHeader",
            "trustUserHeaders",
        ),
        (
            top(r#""proxyKeys":["a",{"key":"k","nmae":"web"}]"#),
            "proxyKeys[1].nmae",
            "name",
        ),
        (
            top(r#""metrics":{"perUsers":true}"#),
            "metrics.perUsers",
            "perUser",
        ),
        (
            in_ep(r#""backends":[{"url":"http://127.0.0.1:9","apikey":"x"}]"#),
            "endpoints.m.backends[0].apikey",
            "apiKey",
        ),
        (
            top(r#""limits":[{"tokensPerday":5}]"#),
            "limits[0].tokensPerday",
            "tokensPerDay",
        ),
        (
            top(r#""limits":[{"match":{"users":"*"},"concurrent":1}]"#),
            "limits[0].match.users",
            "user",
        ),
        (
            top(r#""openWebUI":{"jwtSecrets":"s"}"#),
            "openWebUI.jwtSecrets",
            "jwtSecret",
        ),
        (
            top(r#""health":{"cooldownSec":5}"#),
            "health.cooldownSec",
            "cooldownSecs",
        ),
        (
            in_ep(r#""health":{"probeInterval":5}"#),
            "endpoints.m.health.probeInterval",
            "probeIntervalSecs",
        ),
        (
            top(r#""retry":{"maxAtempts":2}"#),
            "retry.maxAtempts",
            "maxAttempts",
        ),
        (
            top(r#""timeouts":{"idleSec":60}"#),
            "timeouts.idleSec",
            "idleSecs",
        ),
        (
            in_ep(r#""timeouts":{"conectSecs":1}"#),
            "endpoints.m.timeouts.conectSecs",
            "connectSecs",
        ),
        (
            r#"{"endpoints":{"w/*":{"url":"http://127.0.0.1:9","discoverInclud":["a*"]}}}"#
                .to_string(),
            "endpoints.w/*.discoverInclud",
            "discoverInclude",
        ),
    ]
}

#[test]
fn check_config_exits_1_naming_the_place_and_the_field_meant_at_every_level() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    for (config, location, meant) in typos() {
        std::fs::write(&path, &config).unwrap();
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}\n{}", config, stderr);
        assert_eq!(
            stderr,
            format!(
                "modelmux: config {}: {}: unknown field; did you mean \"{}\"?\n",
                path.display(),
                location,
                meant
            ),
            "{}",
            config
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_field_far_from_any_known_one_lists_what_is_known() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://h","backends":[{"url":"http://a","colour":"red"}]}}}"#,
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "modelmux: config {}: endpoints.m.backends[0].colour: unknown field; expected url, apiKey, actualModelName, weight, maxConcurrent, pricing or apiKeyHeader\n",
            path.display()
        )
    );
}

#[test]
fn underscore_keys_are_comments_anywhere() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    std::fs::write(
        &path,
        r#"{"_comment": "not read, so ${NOT_SET_ANYWHERE} is fine here",
            "endpoints": {"_note": "models below",
              "m": {"_owner": "ops", "url": "http://127.0.0.1:9",
                    "backends": [{"_why": "spare", "url": "http://127.0.0.1:9"}],
                    "timeouts": {"_c": 1}, "health": {"_c": 1}}},
            "proxyKeys": [{"_who": "ann", "key": "mm-commented-key-1"}],
            "limits": [{"_c": 1, "match": {"_c": 1, "user": "*"}, "concurrent": 1}],
            "openWebUI": {"_c": 1}, "metrics": {"_c": 1}, "retry": {"_c": 1}}"#,
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK, 1 model\n"));
}

#[test]
fn a_typo_stops_the_start() {
    for (config, location, meant) in typos().into_iter().take(3) {
        let logs = Proxy::try_start(&config, &[], &[])
            .err()
            .expect("must not start")
            .join("\n");
        assert!(
            logs.contains(&format!(
                "{}: unknown field; did you mean \"{}\"?",
                location, meant
            )) && !logs.contains("listening"),
            "{}",
            logs
        );
    }
}

#[test]
fn a_typo_on_reload_keeps_the_old_config_serving() {
    let a = MockBackend::start(Behavior::default());
    let good = format!(
        r#"{{"endpoints":{{"m":{{"url":"{}"}}}},"proxyKeys":["mm-reload-key-123456"]}}"#,
        a.url()
    );
    let p = Proxy::start_with(
        &good,
        &[
            ("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-123456"),
            ("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "1"),
        ],
        &[],
    );
    let auth = [("Authorization", "Bearer mm-reload-key-123456")];
    // The typo would drop every client key: the proxy would run open.
    p.write_config(&good.replace("proxyKeys", "proxyKey"));
    let e = request(
        p.addr,
        "POST",
        "/reload",
        &[("Authorization", "Bearer mm-admin-key-123456")],
        b"",
    )
    .error(400);
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("Reload failed, old config kept: config ")
            && message.ends_with(": proxyKey: unknown field; did you mean \"proxyKeys\"?"),
        "{}",
        message
    );
    assert_eq!(e["code"], "invalid_config");
    assert_eq!(get(p.addr, "/v1/models").status, 401, "still closed");
    assert_eq!(request(p.addr, "GET", "/v1/models", &auth, b"").status, 200);
    // The file watcher (an error line; /reload logs a warning) refuses it the same way. It
    // stamps the file as it starts, just after the listening line, so the write
    // is repeated until it sees a change.
    let mut written = Instant::now();
    wait_until(
        "the watcher's refused reload",
        Duration::from_secs(10),
        || {
            if written.elapsed() > Duration::from_millis(1500) {
                p.write_config(&format!("{}\n", good.replace("proxyKeys", "proxyKey")));
                written = Instant::now();
            }
            p.logs()
                .iter()
                .any(|l| l.contains("ERROR") && l.contains("proxyKey: unknown field"))
        },
    );
    assert_eq!(get(p.addr, "/v1/models").status, 401, "still closed");
}
