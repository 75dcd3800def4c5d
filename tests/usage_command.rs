//! Issue 17: `modelmux usage` for a newcomer: `--help` works, a mistyped `--log` is an error,
//! and without `--log` only the config's `usageLog` is read (not its secrets).

mod support;

use std::process::{Command, Output};
use support::TempDir;

fn usage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .arg("usage")
        .args(args)
        .env_remove("CM_OPEN_WEBUI_PROXY_CONFIG_FILE")
        .env_remove("MODELMUX_TEST_UNSET_KEY")
        .output()
        .unwrap()
}

#[test]
fn usage_help_prints_its_usage_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = usage(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("modelmux usage: "), "{}", text);
        for f in [
            "--since", "--until", "--by", "--user", "--log", "--config", "--json", "--help",
        ] {
            assert!(text.contains(&format!("\n  {} ", f)), "no line for {}", f);
        }
    }
}

#[test]
fn a_missing_log_file_exits_1() {
    let dir = TempDir::new();
    let missing = dir.0.join("usgae.jsonl");
    let out = usage(&["--log", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "modelmux usage: no such ledger file: {}\n",
            missing.display()
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn without_log_only_the_configs_usage_log_is_read() {
    let dir = TempDir::new();
    let config = dir.0.join("config.json");
    // The server's secrets are not in this shell; the report needs none of them.
    std::fs::write(
        &config,
        r#"{"endpoints":{"m":{"url":"http://h","apiKey":"${MODELMUX_TEST_UNSET_KEY}"}},
            "usageLog":"usage.jsonl"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.0.join("usage.jsonl"),
        concat!(
            r#"{"ts":"2026-11-02T10:00:00Z","user":"ann","key":"web","model":"m","status":200,"#,
            r#""prompt_tokens":3,"completion_tokens":4}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = usage(&["--config", &config.display().to_string(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"][0]["user"], "ann", "{}", v);
    assert_eq!(v["data"][0]["requests"], 1, "{}", v);
}
