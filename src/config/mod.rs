//! The config file: parsing, `${ENV}` substitution, validation and defaults.
//!
//! Format (a contract with existing users):
//! `{"endpoints": {"<model-id>": {"displayName", "url", "apiKey", "actualModelName"}}}`.
//!
//! One module per kind of setting: `endpoint` (one model), `backends` (where its requests go),
//! `settings` (timeouts, retry, health), `discovery` (wildcard ids and active health probes),
//! `keys` (client keys), `env` (`${VAR}`), `forward_proxy`
//! (`HTTPS_PROXY` and friends), `json` (typed reads of JSON values with located errors) and
//! `summary` (the `--check-config` report).

mod affinity;
mod aliases;
mod backends;
mod discovery;
mod endpoint;
mod env;
mod forward_proxy;
mod json;
mod keys;
mod policy;
mod pricing;
mod rules;
mod settings;
mod summary;

pub use affinity::Affinity;
pub use backends::{Backend, KeyHeader};
pub use discovery::Wildcard;
#[cfg(test)]
pub use endpoint::DEFAULT_MAX_QUEUE_WAIT;
pub use endpoint::{ClientKey, Endpoint, MessagesApi};
pub(crate) use json::{type_name, unknown_field};
pub use keys::{Priority, ProxyKey};
pub use policy::{FailureMode, PolicySettings, Secret, DEFAULT_MAX_TRACKED, STDOUT_LEDGER};
#[cfg(test)]
pub use pricing::Tier;
pub use pricing::{Prices, Pricing, Rates};
// The unit of the cost budgets' limits (the money-budgets branch reads it here).
#[allow(unused_imports)]
pub use crate::money::MICROS;
#[cfg(test)]
pub use rules::parse_rules;
pub use rules::{format_money, Limit, Rule, Subject, FIRST_COST, WINDOWED};
pub use settings::{HealthPolicy, RetryPolicy, Timeouts};
pub use summary::{policy_view, summary};

use endpoint::{parse_endpoint, EndpointDefaults};
use env::substitute_env;
use json::{check_fields, remove_comments, under, FieldError};
use keys::parse_proxy_keys;
use serde_json::{Map, Value};
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
    /// Identity sources, the usage ledger and per-user metrics.
    pub policy: PolicySettings,
    /// `currency`, top-level `pricing` by model glob and `pricesFile`; inline prices are on
    /// each backend.
    pub prices: Prices,
    /// Non-fatal findings (`insecureSkipVerify`), for the operator's log; unknown fields are
    /// errors.
    pub warnings: Vec<String>,
}

impl Config {
    /// The endpoint configured under exactly this id (a wildcard's own id included).
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// The endpoint that `id` names by one of its `aliases` (see `aliases` for the order).
    pub fn alias(&self, id: &str) -> Option<usize> {
        aliases::lookup(&self.endpoints, id)
    }

    /// True when `id` is a configured model id that is not a wildcard.
    pub fn is_configured(&self, id: &str) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.wildcard.is_none() && e.id == id)
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

/// A path named in the config file: as written when absolute, else in the config file's folder
/// (so the proxy finds it whatever its working directory).
fn beside(config_file: &str, path: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::path::Path::new(config_file)
            .parent()
            .unwrap_or_else(|| std::path::Path::new(""))
            .join(p)
    }
}

/// Only the `usageLog` of a config file, for `modelmux usage`: nothing else is read, so a
/// variable the local shell lacks (an `apiKey`'s `${VAR}`) does not stop a local report.
pub fn read_usage_log(path: &str) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_string(),
        location: String::new(),
        message: format!("cannot read file: {}", e),
    })?;
    let read = || -> Result<_, FieldError> {
        let mut root: Value = serde_json::from_str(&text)
            .map_err(|e| FieldError::new("", json_syntax_message(&e)))?;
        let mut v = root.get_mut("usageLog").map(Value::take);
        if let Some(v) = v.as_mut() {
            substitute_env(v, "usageLog", &|name| std::env::var(name).ok())?;
        }
        policy::parse_usage_log(v.as_ref(), path)
    };
    read().map_err(|e| e.in_file(path))
}

/// Parses config text; `env` resolves `${VAR}` references.
pub fn parse(
    file: &str,
    text: &str,
    defaults: &Defaults,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let config =
        read_config(file, text, defaults, env, &mut warnings).map_err(|e| e.in_file(file))?;
    Ok(Config {
        warnings: warnings
            .into_iter()
            .map(|w| format!("{}: {}", file, w))
            .collect(),
        ..config
    })
}

/// Every top-level field; anything else is an error (see `json::check_fields`).
const TOP_LEVEL_FIELDS: &[&str] = &[
    "endpoints",
    "timeouts",
    "proxyKeys",
    "defaultModel",
    "retry",
    "health",
    "openWebUI",
    "usageLog",
    "usageLogMaxBytes",
    "metrics",
    "limits",
    "store",
    "limitsStore",
    "limitsStoreFailure",
    "limitsMaxTracked",
    "limitsStoreTimeoutMs",
    "limitsStoreRetrySecs",
    "taskHeader",
    "currency",
    "pricing",
    "pricesFile",
];

/// The steps of `parse`, in the order their errors are reported; `warnings` get no file name.
fn read_config(
    file: &str,
    text: &str,
    defaults: &Defaults,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Config, FieldError> {
    let root = read_root(text, env)?;
    check_fields(&root, TOP_LEVEL_FIELDS)?;
    let health = parse_health(root.get("health")).map_err(under("health"))?;
    let prices = read_prices(&root, file)?;
    let endpoint_defaults = EndpointDefaults {
        timeouts: match root.get("timeouts") {
            Some(v) => parse_timeouts(v, defaults.timeouts).map_err(under("timeouts"))?,
            None => defaults.timeouts,
        },
        ca_file: defaults.ca_file.as_deref(),
        env,
        probe_interval: health.probe_interval,
        currency: &prices.currency,
    };
    let endpoints = read_endpoints(root.get("endpoints"), &endpoint_defaults, warnings)?;
    check_prices(&endpoints, &prices, warnings)?;
    let mut proxy_keys = defaults.proxy_keys.clone();
    if let Some(v) = root.get("proxyKeys") {
        proxy_keys.extend(parse_proxy_keys(v)?);
    }
    name_unnamed_keys(&mut proxy_keys);
    check_fallbacks(&endpoints)?;
    aliases::check_aliases(&endpoints)?;
    let default_model = read_default_model(root.get("defaultModel"), &endpoints)?;
    Ok(Config {
        retry: parse_retry(root.get("retry")).map_err(under("retry"))?,
        health,
        policy: policy::PolicySettings {
            currency: prices.currency.clone(),
            ..policy::parse_policy(&root, file)?
        },
        prices,
        endpoints,
        proxy_keys,
        default_model,
        warnings: Vec::new(),
    })
}

/// `currency`, the top-level `pricing` and `pricesFile`.
fn read_prices(root: &Map<String, Value>, file: &str) -> Result<Prices, FieldError> {
    let currency = pricing::parse_currency(root.get("currency"))?;
    Ok(Prices {
        defaults: pricing::parse_defaults(root.get("pricing"), &currency)?,
        file: pricing::parse_prices_file(root.get("pricesFile"), file)?.map(std::sync::Arc::new),
        currency,
    })
}

/// A configured model whose price comes from a bad `pricesFile` entry fails the load; one
/// with no price at all, while other models have prices, gets a warning (it is unpriced, not
/// free). Wildcards are priced per request.
fn check_prices(
    endpoints: &[Endpoint],
    prices: &Prices,
    warnings: &mut Vec<String>,
) -> Result<(), FieldError> {
    let any_inline = endpoints
        .iter()
        .any(|e| e.backends.iter().any(|b| b.pricing.is_some()));
    for ep in endpoints.iter().filter(|e| e.wildcard.is_none()) {
        for b in ep.backends.iter().filter(|b| b.pricing.is_none()) {
            let model = b.actual_model_name.as_str();
            if prices.lookup(None, model).is_some() {
                continue;
            }
            if let Some(Err(e)) = prices.file.as_ref().and_then(|f| f.entry(model)) {
                let path = prices.file.as_ref().map_or("", |f| f.path.as_str());
                return Err(FieldError::new(
                    "pricesFile",
                    format!("{}: {} (the price of endpoints.{})", path, e, ep.id),
                ));
            }
            if any_inline || !prices.is_empty() {
                warnings.push(format!(
                    "endpoints.{}: no price for backend model \"{}\": its requests are unpriced (no cost)",
                    ep.id, model
                ));
            }
        }
    }
    Ok(())
}

/// Gives every unnamed key the name `key-N` (its 1-based place), skipping names in use, so
/// logs and usage can tell keys apart without ever showing one.
fn name_unnamed_keys(keys: &mut [ProxyKey]) {
    let mut n = 0;
    for i in 0..keys.len() {
        if !keys[i].name.is_empty() {
            continue;
        }
        let name = loop {
            n += 1;
            let candidate = format!("key-{}", n);
            if !keys.iter().any(|k| k.name == candidate) {
                break candidate;
            }
        };
        keys[i].name = name;
    }
}

/// The file as a JSON object, `${VAR}` references filled in.
fn read_root(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, FieldError> {
    let mut root: Value =
        serde_json::from_str(text).map_err(|e| FieldError::new("", json_syntax_message(&e)))?;
    remove_comments(&mut root);
    substitute_env(&mut root, "", env)?;
    match root {
        Value::Object(m) => Ok(m),
        _ => Err(FieldError::new(
            "",
            "expected a JSON object with an \"endpoints\" object",
        )),
    }
}

/// "invalid JSON at line L column C: what", with the position once (serde_json's own message
/// ends with it too).
fn json_syntax_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&position) {
        Some(what) => format!("invalid JSON{}: {}", position, what),
        None => format!("invalid JSON: {}", full),
    }
}

/// `"endpoints": {"<model id>": {...}}`, in file order; at least one.
fn read_endpoints(
    v: Option<&Value>,
    defaults: &EndpointDefaults,
    warnings: &mut Vec<String>,
) -> Result<Vec<Endpoint>, FieldError> {
    let v = v.ok_or_else(|| {
        FieldError::new(
            "endpoints",
            "missing: expected an object of model id -> endpoint",
        )
    })?;
    let map = v.as_object().ok_or_else(|| {
        FieldError::new(
            "endpoints",
            format!("expected an object, got {}", type_name(v)),
        )
    })?;
    if map.is_empty() {
        return Err(FieldError::new(
            "endpoints",
            "is empty: at least one model is required",
        ));
    }
    map.iter()
        .map(|(id, value)| {
            let location = format!("endpoints.{}", id);
            let mut found = Vec::new();
            let endpoint =
                read_endpoint(id, value, defaults, &mut found).map_err(|e| e.within(&location))?;
            warnings.extend(found.into_iter().map(|w| format!("{}: {}", location, w)));
            Ok(endpoint)
        })
        .collect()
}

/// One entry of `endpoints`, located from the entry.
fn read_endpoint(
    id: &str,
    value: &Value,
    defaults: &EndpointDefaults,
    warnings: &mut Vec<String>,
) -> Result<Endpoint, FieldError> {
    if id.trim().is_empty() {
        return Err(FieldError::new("", "model id must not be empty"));
    }
    let obj = value.as_object().ok_or_else(|| {
        FieldError::new("", format!("expected an object, got {}", type_name(value)))
    })?;
    parse_endpoint(id, obj, defaults, warnings)
}

/// Every fallback names another configured model (not a wildcard: a fallback is one model).
fn check_fallbacks(endpoints: &[Endpoint]) -> Result<(), FieldError> {
    for ep in endpoints {
        for (i, f) in ep.fallbacks.iter().enumerate() {
            if f == &ep.id || !endpoints.iter().any(|e| &e.id == f && e.wildcard.is_none()) {
                return Err(FieldError::new(
                    format!("endpoints.{}.fallbacks[{}]", ep.id, i),
                    format!("\"{}\" is not another configured model id", f),
                ));
            }
        }
    }
    Ok(())
}

/// `"defaultModel": "<model id>"`, which must be configured or served by a wildcard.
fn read_default_model(
    v: Option<&Value>,
    endpoints: &[Endpoint],
) -> Result<Option<String>, FieldError> {
    let served = |id: &str| {
        endpoints.iter().any(|e| match &e.wildcard {
            None => e.id == id,
            Some(w) => w.backend_model(id).is_some(),
        })
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if served(id) => Ok(Some(id.clone())),
        Some(v) => Err(FieldError::new(
            "defaultModel",
            format!("expected a configured model id, got {}", v),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-from-env".to_string())
    }

    fn parse_text(text: &str) -> Result<Config, ConfigError> {
        parse("c.json", text, &Defaults::default(), &env)
    }

    #[test]
    fn a_seed_endpoint_is_a_list_of_one_backend() {
        let c =
            parse_text(r#"{"endpoints":{"m":{"url":"http://h:1/","apiKey":"${KEY}"}}}"#).unwrap();
        let e = &c.endpoints[0];
        assert_eq!(e.display_name, "m");
        assert_eq!(
            e.backends,
            vec![Backend {
                url: "http://h:1".into(),
                api_key: "sk-from-env".into(),
                actual_model_name: "m".into(),
                weight: 1,
                via_proxy: None,
                max_concurrent: None,
                pricing: None,
                key_header: KeyHeader::Bearer,
            }]
        );
    }

    #[test]
    fn backends_inherit_what_they_leave_out() {
        let c = parse_text(
            r#"{"endpoints":{"m":{"url":"http://base","apiKey":"sk-base","actualModelName":"real",
                "backends":[{"weight":2},{"url":"http://other/","apiKey":"sk-other","actualModelName":"other-real"}],
                "fallbacks":["n"]},
              "n":{"url":"http://n"}}}"#,
        )
        .unwrap();
        let b = &c.endpoints[0].backends;
        assert_eq!(
            (
                b[0].url.as_str(),
                b[0].api_key.as_str(),
                b[0].actual_model_name.as_str(),
                b[0].weight
            ),
            ("http://base", "sk-base", "real", 2)
        );
        assert_eq!(
            (
                b[1].url.as_str(),
                b[1].api_key.as_str(),
                b[1].actual_model_name.as_str(),
                b[1].weight
            ),
            ("http://other", "sk-other", "other-real", 1)
        );
        assert_eq!(c.endpoints[0].fallbacks, vec!["n"]);
    }

    #[test]
    fn errors_name_file_model_and_field() {
        let cases = [
            (
                r#"{"endpoints":{"m":{"url":"ftp://h"}}}"#,
                "config c.json: endpoints.m.url: expected an http:// or https:// URL, got \"ftp://h\"",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","apiKey":"${NOPE}"}}}"#,
                "config c.json: endpoints.m.apiKey: environment variable NOPE is not set",
            ),
            (
                r#"{"endpoints":{"m":{"backends":[{"url":"http://h"},{"weight":2}]}}}"#,
                "config c.json: endpoints.m.backends[1].url: missing, and the endpoint has no url to inherit",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","backends":[{"wieght":2}]}}}"#,
                "config c.json: endpoints.m.backends[0].wieght: unknown field; did you mean \"weight\"?",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","headers":{"Host":"x"}}}}"#,
                "config c.json: endpoints.m.headers.Host: this header is set by modelmux (framing, hop-by-hop or Authorization) and cannot be configured",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","fallbacks":["m"]}}}"#,
                "config c.json: endpoints.m.fallbacks[0]: \"m\" is not another configured model id",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h"}},"proxyKeys":["ok",{"key":"k","models":[1]}]}"#,
                "config c.json: proxyKeys[1].models: expected an array of model ids",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","maxConcurrent":"1"}}}"#,
                "config c.json: endpoints.m.maxConcurrent: expected a whole number from 1 to 100000, got \"1\"",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h"}},"openWebUI":{"jwtSecret":""}}"#,
                "config c.json: openWebUI.jwtSecret: expected a non-empty string (e.g. \"${OWUI_JWT_SECRET}\"), got an empty string",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h","apiKey":"${NOPE}"},"n":{"url":"${NADA}"}}}"#,
                "config c.json: environment variables not set: NOPE (at endpoints.m.apiKey), NADA (at endpoints.n.url)",
            ),
            (
                r#"{"endpoints":{"m":{"url":"http://h"}},"retry":{"maxAttempts":0}}"#,
                "config c.json: retry.maxAttempts: expected a number from 1 to 10",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_text(text).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn memory_and_personal_data_settings_fail_closed() {
        let ep = r#""endpoints":{"m":{"url":"http://h"}}"#;
        let cases = [
            (
                r#""metrics":{"perUsers":true}"#,
                "config c.json: metrics.perUsers: unknown field; did you mean \"perUser\"?",
            ),
            (
                r#""metrics":{"perUser":true,"maxUsers":0}"#,
                "config c.json: metrics.maxUsers: expected a whole number from 1 to 100000 (default 1000), got 0",
            ),
            (
                r#""metrics":{"key":"short"}"#,
                "config c.json: metrics.key: expected a string of at least 8 characters (e.g. \"${METRICS_KEY}\"), got a string",
            ),
            (
                r#""limitsMaxTracked":-5"#,
                "config c.json: limitsMaxTracked: expected a whole number of identities, at least 1 (default 100000), got -5",
            ),
        ];
        for (field, expected) in cases {
            let text = format!("{{{},{}}}", ep, field);
            assert_eq!(parse_text(&text).unwrap_err().to_string(), expected);
        }
        let c = parse_text(&format!(
            r#"{{{},"metrics":{{"perUser":true,"maxUsers":5,"key":"sk-metrics-12345"}},"limitsMaxTracked":7}}"#,
            ep
        ))
        .unwrap();
        assert_eq!(
            (c.policy.metrics_per_user, c.policy.metrics_max_users),
            (true, 5)
        );
        assert_eq!(c.policy.metrics_key.unwrap().0, "sk-metrics-12345");
        assert_eq!(c.policy.limits_max_tracked, 7);
        let d = parse_text(&format!("{{{}}}", ep)).unwrap();
        assert_eq!(
            (d.policy.metrics_max_users, d.policy.limits_max_tracked),
            (1000, 100_000)
        );
    }

    #[test]
    fn a_json_syntax_error_names_its_position_once() {
        let e = parse_text("{\"endpoints\": {,}}").unwrap_err().to_string();
        assert_eq!(
            e,
            "config c.json: invalid JSON at line 1 column 16: key must be a string"
        );
    }

    /// Every object of the file rejects a field it does not know, naming where, with a
    /// suggestion for a near miss (issue 17: a typo used to turn a feature off silently).
    #[test]
    fn unknown_fields_are_errors_at_every_level() {
        let ep = r#""m":{"url":"http://h""#;
        let cases = [
            (
                format!(r#"{{"endpoints":{{{}}}}},"proxyKey":["k"]}}"#, ep),
                "proxyKey",
                "proxyKeys",
            ),
            (
                format!(r#"{{"endpoints":{{{},"maxConcurent":1}}}}}}"#, ep),
                "endpoints.m.maxConcurent",
                "maxConcurrent",
            ),
            (
                format!(
                    r#"{{"endpoints":{{{},"backends":[{{"url":"http://a","wieght":2}}]}}}}}}"#,
                    ep
                ),
                "endpoints.m.backends[0].wieght",
                "weight",
            ),
            (
                format!(
                    r#"{{"endpoints":{{{}}}}},"proxyKeys":[{{"key":"k","trustUserHeader":true}}]}}"#,
                    ep
                ),
                "proxyKeys[0].trustUserHeader",
                "trustUserHeaders",
            ),
            (
                format!(
                    r#"{{"endpoints":{{{}}}}},"limits":[{{"match":{{"usr":"*"}},"concurrent":1}}]}}"#,
                    ep
                ),
                "limits[0].match.usr",
                "user",
            ),
            (
                format!(
                    r#"{{"endpoints":{{{}}}}},"openWebUI":{{"jwtsecret":"s"}}}}"#,
                    ep
                ),
                "openWebUI.jwtsecret",
                "jwtSecret",
            ),
            (
                format!(
                    r#"{{"endpoints":{{{}}}}},"metrics":{{"perUsers":true}}}}"#,
                    ep
                ),
                "metrics.perUsers",
                "perUser",
            ),
            (
                format!(r#"{{"endpoints":{{{}}}}},"retry":{{"maxAtempts":2}}}}"#, ep),
                "retry.maxAtempts",
                "maxAttempts",
            ),
            (
                format!(r#"{{"endpoints":{{{},"timeouts":{{"idleSec":5}}}}}}}}"#, ep),
                "endpoints.m.timeouts.idleSec",
                "idleSecs",
            ),
            (
                r#"{"endpoints":{"w/*":{"url":"http://h","discoverExlude":["x"]}}}"#.to_string(),
                "endpoints.w/*.discoverExlude",
                "discoverExclude",
            ),
        ];
        for (text, location, meant) in cases {
            let e = parse_text(&text).unwrap_err();
            assert_eq!(
                (e.location.as_str(), e.message),
                (
                    location,
                    format!("unknown field; did you mean \"{}\"?", meant)
                ),
                "{}",
                text
            );
        }
    }

    #[test]
    fn underscore_keys_are_comments_anywhere() {
        let c = parse_text(
            r#"{"_comment":"${UNSET} is not substituted in a comment",
                "endpoints":{"_note":"models below","m":{"url":"http://h","_why":1,
                  "backends":[{"url":"http://a","_owner":"ops"}]}},
                "proxyKeys":[{"key":"k","_who":"ann"}],
                "limits":[{"_c":0,"match":{"_c":0,"user":"*"},"concurrent":1}],
                "retry":{"_c":0},"metrics":{"_c":0},"openWebUI":{"_c":0}}"#,
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 1);
        assert!(c.warnings.is_empty());
    }
}
