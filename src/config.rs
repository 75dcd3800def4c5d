//! The config file: parsing, `${ENV}` substitution, validation and defaults.
//!
//! Format (a contract with existing users):
//! `{"endpoints": {"<model-id>": {"displayName", "url", "apiKey", "actualModelName"}}}`.

use crate::access::ProxyKey;
use crate::tls::TlsPolicy;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest silence between two upstream bytes (a long prompt's first token can take minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// A config problem, naming the file, the place in it and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file path.
    pub file: String,
    /// Dotted location, e.g. `endpoints.gpt-4o.url`; empty for the whole file.
    pub location: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "config {}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "config {}: {}: {}",
                self.file, self.location, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Upstream timeouts for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect bound.
    pub connect: Duration,
    /// Longest silence between upstream bytes, first byte included; no total cap.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// One public model and the backend that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The public model id clients send.
    pub id: String,
    /// Shown by chat UIs; defaults to the id.
    pub display_name: String,
    /// Backend base URL, http or https, without trailing slash.
    pub url: String,
    /// Backend key; empty means no Authorization header upstream.
    pub api_key: String,
    /// The model name the backend knows; defaults to the id.
    pub actual_model_name: String,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Extra headers added to every upstream request.
    pub headers: Vec<(String, String)>,
    /// Top-level body fields removed before forwarding.
    pub drop_fields: Vec<String>,
    /// Send an SSE comment when the backend is silent this long during a stream.
    pub sse_keepalive: Option<Duration>,
    /// How the backend's certificate is checked.
    pub tls: TlsPolicy,
    /// Where requests for this model go: the single `url` of a seed config, or `backends`.
    pub backends: Vec<Backend>,
    /// Model ids tried, in order, after all of this model's own backends failed.
    pub fallbacks: Vec<String>,
}

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

impl Endpoint {
    /// Backends with equal keys can share one pooled HTTP client.
    pub fn client_key(&self, backend: &Backend) -> ClientKey {
        ClientKey {
            timeouts: self.timeouts,
            tls: self.tls.clone(),
            via_proxy: backend.via_proxy.clone(),
        }
    }
}

/// How many backends one request may try, and the pause between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request across a model's backends and its fallbacks.
    pub max_attempts: u32,
    /// Pause before each retry.
    pub backoff: Duration,
}

/// Passive health: when a backend is skipped after failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that start a cool-down.
    pub failure_threshold: u32,
    /// How long a failing backend is skipped before it is tried again.
    pub cooldown: Duration,
}

/// What an HTTP client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Certificate policy.
    pub tls: TlsPolicy,
    /// Forward proxy URL, if any.
    pub via_proxy: Option<String>,
}

/// The whole parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Endpoints in file order.
    pub endpoints: Vec<Endpoint>,
    /// Keys clients must present; empty means open access.
    pub proxy_keys: Vec<ProxyKey>,
    /// Model for requests that name none (some GET passthroughs).
    pub default_model: Option<String>,
    /// Failover attempts and backoff.
    pub retry: RetryPolicy,
    /// Passive health thresholds.
    pub health: HealthPolicy,
    /// Non-fatal findings (unknown fields), for the operator's log.
    pub warnings: Vec<String>,
}

impl Config {
    /// The endpoint serving a public model id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

/// Process-wide defaults that the config file may override or extend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Defaults {
    /// Timeouts used where neither the endpoint nor the file's top level sets one.
    pub timeouts: Timeouts,
    /// Proxy keys from the environment, added to the file's `proxyKeys`.
    pub proxy_keys: Vec<ProxyKey>,
    /// CA bundle trusted for every endpoint (`CM_OPEN_WEBUI_PROXY_CA_FILE`).
    pub ca_file: Option<String>,
}

/// Reads and validates a config file.
pub fn load_file(path: &str, defaults: &Defaults) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_string(),
        location: String::new(),
        message: format!("cannot read file: {}", e),
    })?;
    parse(path, &text, defaults, &|name| std::env::var(name).ok())
}

/// Parses config text; `env` resolves `${VAR}` references.
pub fn parse(
    file: &str,
    text: &str,
    defaults: &Defaults,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let err = |location: &str, message: String| ConfigError {
        file: file.to_string(),
        location: location.to_string(),
        message,
    };
    let mut root: Value = serde_json::from_str(text).map_err(|e| {
        err(
            "",
            format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                e
            ),
        )
    })?;
    substitute_env(&mut root, "", env).map_err(|(loc, msg)| err(&loc, msg))?;
    let root = match root {
        Value::Object(m) => m,
        _ => {
            return Err(err(
                "",
                "expected a JSON object with an \"endpoints\" object".into(),
            ))
        }
    };
    let mut warnings = Vec::new();
    for key in root.keys() {
        if !matches!(
            key.as_str(),
            "endpoints" | "timeouts" | "proxyKeys" | "defaultModel" | "retry" | "health"
        ) {
            warnings.push(format!(
                "{}: unknown top-level field \"{}\" ignored",
                file, key
            ));
        }
    }
    let global_timeouts = match root.get("timeouts") {
        Some(v) => parse_timeouts(v, defaults.timeouts).map_err(|m| err("timeouts", m))?,
        None => defaults.timeouts,
    };
    let endpoints_value = root.get("endpoints").ok_or_else(|| {
        err(
            "endpoints",
            "missing: expected an object of model id -> endpoint".into(),
        )
    })?;
    let endpoints_map = endpoints_value.as_object().ok_or_else(|| {
        err(
            "endpoints",
            format!("expected an object, got {}", type_name(endpoints_value)),
        )
    })?;
    if endpoints_map.is_empty() {
        return Err(err(
            "endpoints",
            "is empty: at least one model is required".into(),
        ));
    }
    let mut endpoints = Vec::with_capacity(endpoints_map.len());
    for (id, value) in endpoints_map {
        let loc = format!("endpoints.{}", id);
        if id.trim().is_empty() {
            return Err(err(&loc, "model id must not be empty".into()));
        }
        let obj = value.as_object().ok_or_else(|| {
            err(
                &loc,
                format!("expected an object, got {}", type_name(value)),
            )
        })?;
        let ep = parse_endpoint(id, obj, global_timeouts, defaults, env, &mut warnings, file)
            .map_err(|(field, msg)| err(&format!("{}.{}", loc, field), msg))?;
        endpoints.push(ep);
    }
    let mut proxy_keys = defaults.proxy_keys.clone();
    if let Some(v) = root.get("proxyKeys") {
        proxy_keys.extend(parse_proxy_keys(v).map_err(|(loc, m)| err(&loc, m))?);
    }
    for ep in &endpoints {
        for (i, f) in ep.fallbacks.iter().enumerate() {
            if f == &ep.id || !endpoints.iter().any(|e| &e.id == f) {
                return Err(err(
                    &format!("endpoints.{}.fallbacks[{}]", ep.id, i),
                    format!("\"{}\" is not another configured model id", f),
                ));
            }
        }
    }
    let default_model = match root.get("defaultModel") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if endpoints.iter().any(|e| &e.id == id) => Some(id.clone()),
        Some(v) => {
            return Err(err(
                "defaultModel",
                format!("expected a configured model id, got {}", v),
            ))
        }
    };
    let retry = parse_retry(root.get("retry")).map_err(|m| err("retry", m))?;
    let health = parse_health(root.get("health")).map_err(|m| err("health", m))?;
    Ok(Config {
        endpoints,
        proxy_keys,
        default_model,
        retry,
        health,
        warnings,
    })
}

/// Reads a small settings object whose fields are all numbers in a range, e.g. `retry`;
/// returns the values in `spec` order (`None` where absent). Unknown fields are errors here:
/// a typo in a safety setting should not pass silently.
fn number_fields(
    v: &Value,
    example: &str,
    spec: &[(&str, f64, f64)],
) -> Result<Vec<Option<f64>>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected an object like {}, got {}", example, type_name(v)))?;
    if let Some(key) = obj
        .keys()
        .find(|k| !spec.iter().any(|(name, _, _)| name == k))
    {
        let names: Vec<&str> = spec.iter().map(|(n, _, _)| *n).collect();
        return Err(format!(
            "unknown field \"{}\"; expected {}",
            key,
            names.join(" or ")
        ));
    }
    spec.iter()
        .map(|(name, min, max)| match obj.get(*name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n >= min && n <= max)
                .map(Some)
                .ok_or_else(|| format!("{}: expected a number from {} to {}", name, min, max)),
        })
        .collect()
}

/// `"retry": {"maxAttempts": 3, "backoffMs": 50}`.
fn parse_retry(v: Option<&Value>) -> Result<RetryPolicy, String> {
    let mut r = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_millis(50),
    };
    let Some(v) = v else { return Ok(r) };
    let n = number_fields(
        v,
        r#"{"maxAttempts": 3, "backoffMs": 50}"#,
        &[("maxAttempts", 1.0, 10.0), ("backoffMs", 0.0, 10_000.0)],
    )?;
    if let Some(a) = n[0] {
        r.max_attempts = a as u32;
    }
    if let Some(ms) = n[1] {
        r.backoff = Duration::from_millis(ms as u64);
    }
    Ok(r)
}

/// `"health": {"failureThreshold": 3, "cooldownSecs": 30}`.
fn parse_health(v: Option<&Value>) -> Result<HealthPolicy, String> {
    let mut h = HealthPolicy {
        failure_threshold: 3,
        cooldown: Duration::from_secs(30),
    };
    let Some(v) = v else { return Ok(h) };
    let n = number_fields(
        v,
        r#"{"failureThreshold": 3, "cooldownSecs": 30}"#,
        &[
            ("failureThreshold", 1.0, 1000.0),
            ("cooldownSecs", 0.0, 86_400.0),
        ],
    )?;
    if let Some(f) = n[0] {
        h.failure_threshold = f as u32;
    }
    if let Some(secs) = n[1] {
        h.cooldown = Duration::from_secs_f64(secs);
    }
    Ok(h)
}

/// `"proxyKeys": ["key", {"key": "k2", "models": ["id", ...]}]`.
fn parse_proxy_keys(v: &Value) -> Result<Vec<ProxyKey>, (String, String)> {
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

type FieldError = (String, String);

fn parse_endpoint(
    id: &str,
    obj: &Map<String, Value>,
    timeouts: Timeouts,
    defaults: &Defaults,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
    file: &str,
) -> Result<Endpoint, FieldError> {
    const KNOWN: &[&str] = &[
        "displayName",
        "url",
        "apiKey",
        "actualModelName",
        "timeouts",
        "headers",
        "dropFields",
        "sseKeepaliveSecs",
        "caFile",
        "insecureSkipVerify",
        "backends",
        "fallbacks",
    ];
    for key in obj.keys() {
        if !KNOWN.contains(&key.as_str()) {
            warnings.push(format!(
                "{}: endpoints.{}: unknown field \"{}\" ignored",
                file, id, key
            ));
        }
    }
    let url = match opt_string(obj, "url")? {
        Some(u) => Some(validate_url(&u).map_err(|m| ("url".to_string(), m))?),
        None => None,
    };
    let display_name = opt_string(obj, "displayName")?.unwrap_or_else(|| id.to_string());
    let api_key = clean_key(opt_string(obj, "apiKey")?.unwrap_or_default())
        .map_err(|m| ("apiKey".to_string(), m))?;
    let actual_model_name = opt_string(obj, "actualModelName")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string());
    let timeouts = match obj.get("timeouts") {
        Some(v) => parse_timeouts(v, timeouts).map_err(|m| ("timeouts".to_string(), m))?,
        None => timeouts,
    };
    let headers = match obj.get("headers") {
        None => Vec::new(),
        Some(Value::Object(m)) => {
            let mut out = Vec::new();
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| {
                    (
                        format!("headers.{}", k),
                        format!("expected a string, got {}", type_name(v)),
                    )
                })?;
                // Framing and routing headers are the proxy's to set: a configured one could
                // desynchronize the backend connection.
                if crate::headers::is_reserved(k) {
                    return Err((
                        format!("headers.{}", k),
                        "this header is set by modelmux (framing, hop-by-hop or Authorization) and cannot be configured".to_string(),
                    ));
                }
                if !crate::headers::is_valid_name(k) || !crate::headers::is_valid_value(v) {
                    return Err((
                        format!("headers.{}", k),
                        "not a valid HTTP header".to_string(),
                    ));
                }
                out.push((k.clone(), v.to_string()));
            }
            out
        }
        Some(v) => {
            return Err((
                "headers".to_string(),
                format!(
                    "expected an object of header name -> value, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let drop_fields = string_list(obj.get("dropFields"), "strings")
        .map_err(|m| ("dropFields".to_string(), m))?
        .unwrap_or_default();
    let sse_keepalive = match obj.get("sseKeepaliveSecs") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(0.0) => None,
            Some(s) if s > 0.0 && s <= 3600.0 => Some(Duration::from_secs_f64(s)),
            _ => {
                return Err((
                    "sseKeepaliveSecs".to_string(),
                    "expected a number of seconds between 0 (off) and 3600".to_string(),
                ))
            }
        },
    };
    let insecure = match obj.get("insecureSkipVerify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err((
                "insecureSkipVerify".to_string(),
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    if insecure {
        warnings.push(format!(
            "{}: endpoints.{}: insecureSkipVerify is on: the backend's TLS certificate is NOT verified",
            file, id
        ));
    }
    let tls = TlsPolicy {
        ca_file: opt_string(obj, "caFile")?.or_else(|| defaults.ca_file.clone()),
        insecure,
    };
    crate::tls::client_config(&tls).map_err(|m| ("caFile".to_string(), m))?;
    let backends = parse_backends(obj, url.as_deref(), &api_key, &actual_model_name, env)?;
    let fallbacks = string_list(obj.get("fallbacks"), "model ids")
        .map_err(|m| ("fallbacks".to_string(), m))?
        .unwrap_or_default();
    Ok(Endpoint {
        id: id.to_string(),
        display_name,
        api_key,
        actual_model_name,
        timeouts,
        headers,
        drop_fields,
        sse_keepalive,
        tls,
        url: url.unwrap_or_else(|| backends[0].url.clone()),
        backends,
        fallbacks,
    })
}

/// The endpoint's backends: `backends` entries inheriting missing fields from the endpoint, or
/// the endpoint's own `url` alone (a seed config).
fn parse_backends(
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

/// The forward proxy for a backend URL from the usual environment variables, honouring NO_PROXY
/// (`*`, exact hosts, and domain suffixes with or without a leading dot).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
    };
    let https = url.starts_with("https://");
    let proxy = if https {
        get(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
    } else {
        get(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
    }?;
    let authority = crate::redact::host(url);
    let host = match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => &authority[..i],
        _ => authority,
    }
    .trim_matches(['[', ']'])
    .to_ascii_lowercase();
    let no_proxy = get(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    if no_proxy.trim() == "*" {
        return None;
    }
    for entry in no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()) {
        let entry = entry
            .split(':')
            .next()
            .unwrap_or("")
            .trim_start_matches('*');
        if entry.is_empty() {
            continue;
        }
        let bare = entry.trim_start_matches('.');
        if host == bare || host.ends_with(&format!(".{}", bare)) {
            return None;
        }
    }
    Some(proxy)
}

/// An optional array of strings (`None` when absent or null); the error says what was expected.
fn string_list(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    let expected = || format!("expected an array of {}", what);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(expected))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!("{}, got {}", expected(), type_name(other))),
    }
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err((
            field.to_string(),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn parse_timeouts(v: &Value, base: Timeouts) -> Result<Timeouts, String> {
    let n = number_fields(
        v,
        r#"{"connectSecs": 10, "idleSecs": 600}"#,
        &[
            ("connectSecs", 0.001, 86_400.0),
            ("idleSecs", 0.001, 86_400.0),
        ],
    )?;
    let mut t = base;
    if let Some(secs) = n[0] {
        t.connect = Duration::from_secs_f64(secs);
    }
    if let Some(secs) = n[1] {
        t.idle = Duration::from_secs_f64(secs);
    }
    Ok(t)
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Replaces `${VAR}` in every string of the tree; the error names the location and the variable.
fn substitute_env(
    v: &mut Value,
    loc: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) if s.contains("${") => {
            *s = expand(s, env).map_err(|m| (loc.to_string(), m))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{}[{}]", loc, i), env)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let child = if loc.is_empty() {
                    k.clone()
                } else {
                    format!("{}.{}", loc, k)
                };
                substitute_env(item, &child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${...} reference".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "invalid environment variable name in ${{{}}}",
                name
            ));
        }
        let value = env(name).ok_or_else(|| format!("environment variable {} is not set", name))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-from-env".to_string())
    }

    #[test]
    fn defaults_and_env_substitution() {
        let c = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h:1/","apiKey":"${KEY}"}}}"#,
            &Defaults::default(),
            &env,
        )
        .unwrap();
        let e = &c.endpoints[0];
        assert_eq!(e.display_name, "m");
        assert_eq!(e.actual_model_name, "m");
        assert_eq!(e.url, "http://h:1");
        assert_eq!(e.api_key, "sk-from-env");
    }

    #[test]
    fn errors_name_file_model_and_field() {
        let e = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"ftp://h"}}}"#,
            &Defaults::default(),
            &env,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.json: endpoints.m.url: expected an http:// or https:// URL, got \"ftp://h\""
        );
        let e = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h","apiKey":"${NOPE}"}}}"#,
            &Defaults::default(),
            &env,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.json: endpoints.m.apiKey: environment variable NOPE is not set"
        );
    }

    #[test]
    fn unknown_fields_warn() {
        let c = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h","colour":"red"}},"x":1}"#,
            &Defaults::default(),
            &env,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2);
    }
}
