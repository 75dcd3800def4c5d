//! Where a model's requests go: its `backends`, or the endpoint's own `url` as a list of one.

use super::forward_proxy::proxy_for;
use super::json::{opt_string, type_name, FieldError};
use serde_json::{Map, Value};

/// One backend serving a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Base URL, http or https, without trailing slash.
    pub url: String,
    /// Key; empty means no Authorization header.
    pub api_key: String,
    /// The model name this backend knows.
    pub actual_model_name: String,
    /// Share of traffic relative to the model's other backends.
    pub weight: u32,
    /// Forward proxy from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, unless `NO_PROXY` exempts the host.
    pub via_proxy: Option<String>,
}

/// The endpoint's backends: `backends` entries inheriting missing fields from the endpoint, or
/// the endpoint's own `url` alone (a seed config).
pub(super) fn parse_backends(
    obj: &Map<String, Value>,
    url: Option<&str>,
    api_key: &str,
    actual_model_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Backend>, FieldError> {
    let single = |url: &str| Backend {
        url: url.to_string(),
        api_key: api_key.to_string(),
        actual_model_name: actual_model_name.to_string(),
        weight: 1,
        via_proxy: proxy_for(url, env),
    };
    let items = match obj.get("backends") {
        None | Some(Value::Null) => {
            let url = url.ok_or_else(|| {
                (
                    "url".to_string(),
                    "missing: expected the backend's http(s) base URL (or a \"backends\" list)"
                        .to_string(),
                )
            })?;
            return Ok(vec![single(url)]);
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => return Err((
            "backends".to_string(),
            "expected a non-empty array of {\"url\", \"apiKey\", \"actualModelName\", \"weight\"}"
                .to_string(),
        )),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let loc = format!("backends[{}]", i);
        let b = item.as_object().ok_or_else(|| {
            (
                loc.clone(),
                format!("expected an object, got {}", type_name(item)),
            )
        })?;
        for key in b.keys() {
            if !matches!(
                key.as_str(),
                "url" | "apiKey" | "actualModelName" | "weight"
            ) {
                return Err((
                    format!("{}.{}", loc, key),
                    "unknown field; expected url, apiKey, actualModelName or weight".to_string(),
                ));
            }
        }
        let field =
            |name: &str| opt_string(b, name).map_err(|(f, m)| (format!("{}.{}", loc, f), m));
        let burl = match field("url")? {
            Some(u) => validate_url(&u).map_err(|m| (format!("{}.url", loc), m))?,
            None => url.map(str::to_string).ok_or_else(|| {
                (
                    format!("{}.url", loc),
                    "missing, and the endpoint has no url to inherit".to_string(),
                )
            })?,
        };
        let weight = match b.get("weight") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| {
                    (
                        format!("{}.weight", loc),
                        "expected a whole number from 1 to 1000".to_string(),
                    )
                })? as u32,
        };
        out.push(Backend {
            via_proxy: proxy_for(&burl, env),
            api_key: match field("apiKey")? {
                Some(k) => clean_key(k).map_err(|m| (format!("{}.apiKey", loc), m))?,
                None => api_key.to_string(),
            },
            actual_model_name: field("actualModelName")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| actual_model_name.to_string()),
            weight,
            url: burl,
        });
    }
    Ok(out)
}

/// Checks a backend base URL and returns it without trailing slashes.
pub fn validate_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "expected an http:// or https:// URL, got \"{}\"",
                crate::redact::url(url)
            )
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!(
            "expected a host in the URL, got \"{}\"",
            crate::redact::url(url)
        ));
    }
    if url.contains('?') || url.contains('#') {
        return Err("the base URL must not carry a query or fragment".to_string());
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Trims a key (secrets mounted from files often end in a newline) and refuses control
/// characters, which would make every upstream request fail; the message never shows the key.
pub(super) fn clean_key(key: String) -> Result<String, String> {
    let trimmed = key.trim();
    if trimmed.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("the key holds control characters".to_string());
    }
    Ok(trimmed.to_string())
}
