//! Where a model's requests go: its `backends`, or the endpoint's own `url` as a list of one.

use super::forward_proxy::proxy_for;
use super::json::{at, check_fields, opt_string, shown, type_name, FieldError};
use super::pricing::{parse_inline, Pricing};
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
    /// `maxConcurrent`: requests this backend serves at once (per replica); more wait.
    pub max_concurrent: Option<usize>,
    /// `pricing` of the entry, else of the endpoint (see `Prices::lookup` for the rest).
    pub pricing: Option<Pricing>,
    /// `apiKeyHeader`: the header the key goes in.
    pub key_header: KeyHeader,
}

/// Which header carries a backend's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyHeader {
    /// `"authorization"` (default): `Authorization: Bearer <key>`, as OpenAI-compatible servers
    /// take it.
    #[default]
    Bearer,
    /// `"x-api-key"`: `x-api-key: <key>` and no Authorization, as api.anthropic.com takes it.
    XApiKey,
}

impl KeyHeader {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            KeyHeader::Bearer => "authorization",
            KeyHeader::XApiKey => "x-api-key",
        }
    }
}

/// The endpoint-level `url`, `apiKey` and `actualModelName`: the only backend of a seed config,
/// and what the entries of a `backends` list inherit when they leave a field out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Inherited {
    url: Option<String>,
    api_key: String,
    actual_model_name: String,
    max_concurrent: Option<usize>,
    pricing: Option<Pricing>,
    key_header: KeyHeader,
}

impl Inherited {
    /// Reads the fields of an endpoint object its backends inherit; `id` is the default model
    /// name, `currency` the unit of its prices.
    pub fn read(
        id: &str,
        obj: &Map<String, Value>,
        currency: &str,
    ) -> Result<Inherited, FieldError> {
        let url = match opt_string(obj, "url")? {
            Some(u) => Some(validate_url(&u).map_err(at("url"))?),
            None => None,
        };
        let api_key =
            clean_key(opt_string(obj, "apiKey")?.unwrap_or_default()).map_err(at("apiKey"))?;
        let actual_model_name = opt_string(obj, "actualModelName")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| id.to_string());
        let max_concurrent =
            parse_max_concurrent(obj.get("maxConcurrent")).map_err(at("maxConcurrent"))?;
        let key_header = parse_key_header(obj.get("apiKeyHeader"))?.unwrap_or_default();
        Ok(Inherited {
            url,
            api_key,
            actual_model_name,
            max_concurrent,
            pricing: parse_inline(obj, currency)?,
            key_header,
        })
    }
}

/// Every field of a `backends` entry; anything else is an error (see `json::check_fields`).
const ENTRY_FIELDS: &[&str] = &[
    "url",
    "apiKey",
    "actualModelName",
    "weight",
    "maxConcurrent",
    "pricing",
    "apiKeyHeader",
];

/// The endpoint's backends, never empty: its `backends` entries, or its own `url` as a list of
/// one (a seed config).
pub(super) fn parse_backends(
    obj: &Map<String, Value>,
    inherited: &Inherited,
    env: &dyn Fn(&str) -> Option<String>,
    currency: &str,
) -> Result<Vec<Backend>, FieldError> {
    match obj.get("backends") {
        None | Some(Value::Null) => {
            let url = inherited.url.clone().ok_or_else(|| {
                FieldError::new(
                    "url",
                    "missing: expected the backend's http(s) base URL (or a \"backends\" list)",
                )
            })?;
            Ok(vec![Backend {
                via_proxy: proxy_for(&url, env),
                url,
                api_key: inherited.api_key.clone(),
                actual_model_name: inherited.actual_model_name.clone(),
                weight: 1,
                max_concurrent: inherited.max_concurrent,
                pricing: inherited.pricing,
                key_header: inherited.key_header,
            }])
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_entry(item, inherited, env, currency)
                    .map_err(|e| e.within(&format!("backends[{}]", i)))
            })
            .collect(),
        Some(_) => Err(FieldError::new(
            "backends",
            "expected a non-empty array of {\"url\", \"apiKey\", \"actualModelName\", \"weight\"}",
        )),
    }
}

/// One entry of a `backends` list; a field it leaves out comes from the endpoint.
fn parse_entry(
    item: &Value,
    inherited: &Inherited,
    env: &dyn Fn(&str) -> Option<String>,
    currency: &str,
) -> Result<Backend, FieldError> {
    let b = item.as_object().ok_or_else(|| {
        FieldError::new("", format!("expected an object, got {}", type_name(item)))
    })?;
    check_fields(b, ENTRY_FIELDS)?;
    let url = match opt_string(b, "url")? {
        Some(u) => validate_url(&u).map_err(at("url"))?,
        None => inherited.url.clone().ok_or_else(|| {
            FieldError::new("url", "missing, and the endpoint has no url to inherit")
        })?,
    };
    let weight = parse_weight(b.get("weight")).map_err(at("weight"))?;
    let api_key = match opt_string(b, "apiKey")? {
        Some(k) => clean_key(k).map_err(at("apiKey"))?,
        None => inherited.api_key.clone(),
    };
    let actual_model_name = opt_string(b, "actualModelName")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| inherited.actual_model_name.clone());
    let max_concurrent = match b.get("maxConcurrent") {
        None => inherited.max_concurrent,
        v => parse_max_concurrent(v).map_err(at("maxConcurrent"))?,
    };
    let key_header = parse_key_header(b.get("apiKeyHeader"))?.unwrap_or(inherited.key_header);
    Ok(Backend {
        via_proxy: proxy_for(&url, env),
        url,
        api_key,
        actual_model_name,
        weight,
        max_concurrent,
        pricing: parse_inline(b, currency)?.or(inherited.pricing),
        key_header,
    })
}

/// `"apiKeyHeader": "authorization" | "x-api-key"`; a key sent in the wrong header fails every
/// request, so anything else is an error.
fn parse_key_header(v: Option<&Value>) -> Result<Option<KeyHeader>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("authorization") => {
            Ok(Some(KeyHeader::Bearer))
        }
        Some(Value::String(s)) if s.eq_ignore_ascii_case("x-api-key") => {
            Ok(Some(KeyHeader::XApiKey))
        }
        Some(v) => Err(FieldError::new(
            "apiKeyHeader",
            format!(
                "expected \"authorization\" (Bearer, the default) or \"x-api-key\", got {}",
                shown(v)
            ),
        )),
    }
}

/// A backend's concurrency cap: none when absent.
fn parse_max_concurrent(v: Option<&Value>) -> Result<Option<usize>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=100_000).contains(n))
            .map(|n| Some(n as usize))
            .ok_or_else(|| format!("expected a whole number from 1 to 100000, got {}", shown(v))),
    }
}

/// A backend's share of traffic: 1 when absent.
fn parse_weight(v: Option<&Value>) -> Result<u32, String> {
    match v {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|w| (1..=1000).contains(w))
            .map(|w| w as u32)
            .ok_or_else(|| format!("expected a whole number from 1 to 1000, got {}", shown(v))),
    }
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
fn clean_key(key: String) -> Result<String, String> {
    let trimmed = key.trim();
    if trimmed.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("the key holds control characters".to_string());
    }
    Ok(trimmed.to_string())
}
