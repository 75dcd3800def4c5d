//! The config file: parsing, `${ENV}` substitution, validation and defaults.
//!
//! Format (a contract with existing users):
//! `{"endpoints": {"<model-id>": {"displayName", "url", "apiKey", "actualModelName"}}}`.
//!
//! One module per kind of setting: `endpoint` (one model), `backends` (where its requests go),
//! `settings` (timeouts, retry, health), `keys` (client keys), `env` (`${VAR}`), `forward_proxy`
//! (`HTTPS_PROXY` and friends) and `json` (typed reads of JSON values with located errors).

mod backends;
mod endpoint;
mod env;
mod forward_proxy;
mod json;
mod keys;
mod settings;

pub use backends::{validate_url, Backend};
pub use endpoint::{ClientKey, Endpoint};
pub use forward_proxy::proxy_for;
pub use settings::{
    HealthPolicy, RetryPolicy, Timeouts, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

use crate::access::ProxyKey;
use endpoint::parse_endpoint;
use env::substitute_env;
use json::type_name;
use keys::parse_proxy_keys;
use serde_json::Value;
use settings::{parse_health, parse_retry, parse_timeouts};
use std::fmt;

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
