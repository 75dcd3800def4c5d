//! Client keys from the file's `proxyKeys`.

use super::json::{string_list, type_name};
use crate::access::ProxyKey;
use serde_json::Value;

/// `"proxyKeys": ["key", {"key": "k2", "models": ["id", ...]}]`.
pub(super) fn parse_proxy_keys(v: &Value) -> Result<Vec<ProxyKey>, (String, String)> {
    let items = v.as_array().ok_or_else(|| {
        (
            "proxyKeys".to_string(),
            format!("expected an array, got {}", type_name(v)),
        )
    })?;
    let expected = "expected a key string or {\"key\": \"...\", \"models\": [\"id\", ...]}";
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let loc = format!("proxyKeys[{}]", i);
        let key = match item {
            Value::String(s) => ProxyKey {
                key: s.clone(),
                models: None,
            },
            Value::Object(m) => {
                let key = m
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| (loc.clone(), expected.to_string()))?;
                let models = string_list(m.get("models"), "model ids")
                    .map_err(|msg| (format!("{}.models", loc), msg))?;
                ProxyKey {
                    key: key.to_string(),
                    models,
                }
            }
            _ => return Err((loc, expected.to_string())),
        };
        if key.key.trim().is_empty() {
            return Err((loc, "a proxy key must not be empty".to_string()));
        }
        out.push(key);
    }
    Ok(out)
}
