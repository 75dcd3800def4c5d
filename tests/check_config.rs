//! Issue 17: `--check-config` checks what start checks (exit 0 means the server will start),
//! the server prints its listening line only once everything it needs is open, and both show
//! what was read without a secret.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;

fn check_config(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelmux"));
    cmd.arg("--check-config")
        .arg("--config")
        .arg(path)
        .env_remove("CM_OPEN_WEBUI_PROXY_API_KEYS")
        .env_remove("CM_OPEN_WEBUI_PROXY_ADMIN_KEY")
        .env_remove("CM_OPEN_WEBUI_PROXY_CA_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_opens_the_ledger_as_start_does_and_leaves_no_file_behind() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    // A ledger in a folder that does not exist: start cannot open it, so the check fails.
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},"usageLog":"no-such-dir/usage.jsonl"}"#,
    )
    .unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "modelmux: config {}: cannot open usage ledger {}: ",
            path.display(),
            dir.0.join("no-such-dir/usage.jsonl").display()
        )),
        "{}",
        stderr(&out)
    );
    // A ledger that does not exist yet: probed, then removed again.
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},"usageLog":"usage.jsonl"}"#,
    )
    .unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !dir.0.join("usage.jsonl").exists(),
        "the probe was left behind"
    );
    // An existing ledger is not touched.
    let line = "{\"ts\":\"2026-01-01T00:00:00Z\"}\n";
    std::fs::write(dir.0.join("usage.jsonl"), line).unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.0.join("usage.jsonl")).unwrap(),
        line
    );
}

#[test]
fn check_config_refuses_a_limits_store_url_start_would_refuse_and_an_unreadable_ca_file() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},"limitsStore":"redis://:pw-secret-1@redis:notaport/0"}"#,
    )
    .unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "modelmux: config {}: limitsStore: ",
            path.display()
        )) && !stderr(&out).contains("pw-secret-1"),
        "{}",
        stderr(&out)
    );
    // A store URL that parses is enough: --check-config does not connect.
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},"limitsStore":"redis://:pw-secret-1@127.0.0.1:9/0"}"#,
    )
    .unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pw-secret-1"), "{}", stdout(&out));
    // A CA file that is not PEM.
    std::fs::write(dir.0.join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"https://127.0.0.1:9","caFile":"CA"}}}"#
            .replace("CA", &dir.0.join("ca.pem").display().to_string()),
    )
    .unwrap();
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("endpoints.m.caFile: CA file")
            && stderr(&out).contains("holds no PEM certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_listening_line_comes_only_after_the_ledger_is_open() {
    let logs = Proxy::try_start(
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},"usageLog":"/nonexistent-modelmux-dir/usage.jsonl"}"#,
        &[],
        &[],
    )
    .err()
    .expect("a server that cannot open its ledger must not say it listens")
    .join("\n");
    assert!(
        logs.contains("cannot open usage ledger")
            && logs.contains("/nonexistent-modelmux-dir/usage.jsonl")
            && !logs.contains("listening"),
        "{}",
        logs
    );
}

#[test]
fn debug_shows_what_was_read_without_a_secret() {
    let cfg = r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9","apiKey":"sk-backend-secret-0000",
            "maxConcurrent":3,"maxQueueWaitSecs":7,"forwardUserHeaders":true,"injectStreamUsage":false}},
        "proxyKeys":[{"key":"mm-web-key-111111","name":"web","models":["m"],"trustUserHeaders":true,"priority":"low"}],
        "openWebUI":{"jwtSecret":"jwt-secret-value-222"},
        "usageLog":"usage.jsonl","usageLogMaxBytes":8192,
        "limits":[{"match":{"user":"*"},"tokensPerDay":1000}],
        "limitsStore":"redis://:redis-pw-333@127.0.0.1:9/0",
        "metrics":{"perUser":true}}"#;
    let p = Proxy::start_with(
        cfg,
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-444444")],
        &[],
    );
    let r = request(
        p.addr,
        "GET",
        "/debug",
        &[("Authorization", "Bearer mm-admin-key-444444")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for secret in [
        "sk-backend-secret-0000",
        "mm-web-key-111111",
        "jwt-secret-value-222",
        "redis-pw-333",
        "mm-admin-key-444444",
    ] {
        assert!(!r.text().contains(secret), "{} in {}", secret, r.text());
    }
    let d = r.json();
    assert_eq!(
        d["clientKeys"],
        serde_json::json!([{"name": "web", "models": ["m"], "trustUserHeaders": true, "priority": "low"}])
    );
    assert_eq!(
        d["identity"],
        serde_json::json!({"jwt": true, "plainUserHeadersFrom": ["web"]})
    );
    assert_eq!(
        d["usageLog"]["path"],
        p.config_path
            .with_file_name("usage.jsonl")
            .display()
            .to_string()
    );
    assert_eq!(d["usageLog"]["maxBytes"], 8192);
    assert_eq!(
        d["limits"],
        serde_json::json!(["limits[0] (each user) allows 1000 tokens per day"])
    );
    assert_eq!(
        d["limitsStore"],
        serde_json::json!({"url": "redis://****@127.0.0.1:9/0", "failure": "open"})
    );
    assert_eq!(d["metrics"], serde_json::json!({"perUser": true}));
    let m = &d["endpoints"]["m"];
    assert_eq!(
        (
            &m["maxQueueWaitSecs"],
            &m["forwardUserHeaders"],
            &m["injectStreamUsage"],
            &m["backends"][0]["maxConcurrent"]
        ),
        (
            &serde_json::json!(7.0),
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(3)
        )
    );
    assert!(
        p.logs().iter().all(|l| !l.contains("no client keys")),
        "keys are set"
    );
}

#[test]
fn the_listening_line_says_when_anyone_can_use_every_model() {
    let p = Proxy::start(r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}}}"#);
    let line = p
        .wait_log("listening on", std::time::Duration::from_secs(1))
        .unwrap();
    assert!(
        line.ends_with(&format!(
            " with 1 model from {} (1024 workers); no client keys: anyone who reaches {} can use every model",
            p.config_path.display(),
            p.addr
        )),
        "{}",
        line
    );
}

#[test]
fn check_config_lists_client_keys_by_name_never_the_key() {
    let dir = TempDir::new();
    let path = dir.0.join("c.json");
    std::fs::write(
        &path,
        r#"{"endpoints":{"m":{"url":"http://127.0.0.1:9"}},
            "proxyKeys":["mm-plain-key-000000",{"key":"mm-web-key-111111","name":"web","models":["m"]}]}"#,
    )
    .unwrap();
    let out = check_config(
        &path,
        &[("CM_OPEN_WEBUI_PROXY_API_KEYS", "mm-env-key-555555=m")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "client keys: 3 keys\n  key-1: models m; priority normal\n  key-2: every model; priority normal\n  web: models m; priority normal\n"
        ),
        "{}",
        text
    );
    for secret in [
        "mm-plain-key-000000",
        "mm-web-key-111111",
        "mm-env-key-555555",
    ] {
        assert!(!text.contains(secret), "{}", text);
    }
    assert!(
        text.ends_with("admin key: not set: /usage, /debug and /reload answer 403\n"),
        "{}",
        text
    );
    let out = check_config(
        &path,
        &[("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", "mm-admin-key-666666")],
    );
    assert!(
        stdout(&out).ends_with("admin key: set: /usage, /debug and /reload need it\n")
            && !stdout(&out).contains("mm-admin-key-666666"),
        "{}",
        stdout(&out)
    );
}
