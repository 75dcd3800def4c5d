//! Client keys from the file's `proxyKeys`.

use super::json::{at, string_list, type_name, FieldError};
use crate::auth::ProxyKey;
use serde_json::Value;

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
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_key(item).map_err(|e| e.within(&format!("proxyKeys[{}]", i))))
        .collect()
}

/// One entry of `proxyKeys`: a bare key, or a key with the model ids it may use.
fn parse_key(item: &Value) -> Result<ProxyKey, FieldError> {
    let key = match item {
        Value::String(s) => ProxyKey {
            key: s.clone(),
            models: None,
        },
        Value::Object(m) => {
            let key = m
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| FieldError::new("", EXPECTED))?;
            let models = string_list(m.get("models"), "model ids").map_err(at("models"))?;
            ProxyKey {
                key: key.to_string(),
                models,
            }
        }
        _ => return Err(FieldError::new("", EXPECTED)),
    };
    if key.key.trim().is_empty() {
        return Err(FieldError::new("", "a proxy key must not be empty"));
    }
    Ok(key)
}
