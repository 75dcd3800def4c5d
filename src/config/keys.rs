//! Client keys from the file's `proxyKeys`.

use super::json::{at, check_fields, string_list, type_name, FieldError};
use serde_json::Value;

/// Every field of a `proxyKeys` object entry; anything else is an error (see
/// `json::check_fields`).
const KEY_FIELDS: &[&str] = &["key", "models", "name", "trustUserHeaders", "priority"];

const EXPECTED: &str = "expected a key string or {\"key\": \"...\", \"models\": [\"id\", ...]}";

/// `"proxyKeys": ["key", {"key": "k2", "models": ["id", ...]}]`; errors are located from the
/// file's top level.
pub(super) fn parse_proxy_keys(v: &Value) -> Result<Vec<ProxyKey>, FieldError> {
    let items = v.as_array().ok_or_else(|| {
        FieldError::new(
            "proxyKeys",
            format!("expected an array, got {}", type_name(v)),
        )
    })?;
    let keys: Vec<ProxyKey> = items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_key(item).map_err(|e| e.within(&format!("proxyKeys[{}]", i))))
        .collect::<Result<_, _>>()?;
    for (i, k) in keys.iter().enumerate() {
        if !k.name.is_empty() && keys[..i].iter().any(|o| o.name == k.name) {
            return Err(FieldError::new(
                format!("proxyKeys[{}].name", i),
                format!("\"{}\" names another key too: names must be unique", k.name),
            ));
        }
    }
    Ok(keys)
}

/// Names appear in logs, the usage ledger and metric labels: short and plain.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One entry of `proxyKeys`: a bare key, or a key with the model ids it may use.
fn parse_key(item: &Value) -> Result<ProxyKey, FieldError> {
    let key = match item {
        Value::String(s) => ProxyKey {
            key: s.clone(),
            models: None,
            name: String::new(),
            trust_user_headers: false,
            priority: Priority::Normal,
        },
        Value::Object(m) => {
            check_fields(m, KEY_FIELDS)?;
            let key = m
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| FieldError::new("", EXPECTED))?;
            let models = string_list(m.get("models"), "model ids").map_err(at("models"))?;
            let name =
                match m.get("name") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(n)) if valid_name(n) => n.clone(),
                    Some(_) => return Err(FieldError::new(
                        "name",
                        "expected a short name of letters, digits, `-`, `_` or `.` (at most 64)",
                    )),
                };
            let trust_user_headers = match m.get("trustUserHeaders") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(FieldError::new(
                        "trustUserHeaders",
                        format!("expected true or false, got {}", type_name(v)),
                    ))
                }
            };
            let priority = match m.get("priority") {
                None | Some(Value::Null) => Priority::Normal,
                Some(Value::String(p)) if p == "normal" => Priority::Normal,
                Some(Value::String(p)) if p == "low" => Priority::Low,
                Some(Value::String(p)) if p == "high" => Priority::High,
                Some(_) => {
                    return Err(FieldError::new(
                        "priority",
                        "expected \"low\", \"normal\" or \"high\"",
                    ))
                }
            };
            ProxyKey {
                key: key.to_string(),
                models,
                name,
                trust_user_headers,
                priority,
            }
        }
        _ => return Err(FieldError::new("", EXPECTED)),
    };
    if key.key.trim().is_empty() {
        return Err(FieldError::new("", "a proxy key must not be empty"));
    }
    Ok(key)
}

/// A key clients may present, optionally limited to some model ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyKey {
    /// The bearer token.
    pub key: String,
    /// Model ids this key may use, `*` and `?` as wildcards (`"ollama/*"`); `None` means all.
    pub models: Option<Vec<String>>,
    /// What logs and usage call this key (never the key itself); `key-N` when unnamed.
    pub name: String,
    /// Requests with this key may name their user in Open WebUI's `X-OpenWebUI-User-*`
    /// headers (plain headers can be forged by anyone else who can reach the proxy).
    pub trust_user_headers: bool,
    /// How soon its requests are served when a backend is at its cap.
    pub priority: Priority,
}

/// How soon a waiting request is served relative to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Background tasks (title, tag and follow-up generation): served after everything else.
    Low,
    /// Interactive requests.
    Normal,
    /// Keys marked `"priority": "high"`.
    High,
}
