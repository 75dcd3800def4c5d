//! Who-used-what settings: where identities come from, the usage ledger and per-user metrics.

use super::json::{check_fields, type_name, under, FieldError};
use super::rules::{parse_rules, Limit, Rule};
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default of `metrics.maxUsers`.
pub const DEFAULT_METRICS_MAX_USERS: usize = 1000;

/// The `usageLog` that writes ledger lines to stdout (each marked `"log":"usage"`) instead of
/// a file.
pub const STDOUT_LEDGER: &str = "-";

/// Default size at which the usage ledger rotates.
pub const DEFAULT_USAGE_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A secret from the config: compared and used, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The top-level `openWebUI`, `usageLog`, `usageLogMaxBytes` and `metrics` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// `openWebUI.jwtSecret`: verifies Open WebUI's `X-OpenWebUI-User-Jwt`.
    pub jwt_secret: Option<Secret>,
    /// `openWebUI.jwtAudience`: the token's `aud` must be (or contain) this.
    pub jwt_audience: Option<String>,
    /// `openWebUI.jwtIssuer`: the token's `iss` must be this.
    pub jwt_issuer: Option<String>,
    /// `usageLog`, resolved against the config file's folder; `STDOUT_LEDGER` for stdout.
    pub usage_log: Option<PathBuf>,
    /// `usageLogMaxBytes`: the ledger rotates past this size.
    pub usage_log_max_bytes: u64,
    /// `metrics.perUser`: requests and tokens per user in /metrics (label cardinality!).
    pub metrics_per_user: bool,
    /// `metrics.maxUsers`: users given series of their own; later ones are summed as others.
    pub metrics_max_users: usize,
    /// `metrics.key`: a bearer token besides the admin key that may read per-user series.
    pub metrics_key: Option<Secret>,
    /// `limitsMaxTracked`: identities the local limits store holds counters for at once.
    pub limits_max_tracked: usize,
    /// `limits`: quota rules, in file order.
    pub limits: Vec<Rule>,
    /// `store` (or its older name `limitsStore`): a `redis://` or `rediss://` URL (may hold a
    /// password) that keeps quota counters and usage totals for every replica; local when absent.
    pub limits_store: Option<Secret>,
    /// `limitsStoreFailure`: admit (`open`) or refuse (`closed`) while the store is down.
    pub limits_store_failure: FailureMode,
    /// `limitsStoreTimeoutMs`: connect, read and write timeout of each store operation.
    pub limits_store_timeout: Duration,
    /// `limitsStoreRetrySecs`: after a store failure, requests go without it this long.
    pub limits_store_retry: Duration,
    /// `taskHeader`: a request carrying it (non-empty) is a background task, served last.
    pub task_header: String,
    /// Top-level `currency` (see `Prices`): the unit of the cost budgets of `limits`.
    pub currency: String,
}

/// Every field of `openWebUI`; anything else is an error (see `json::check_fields`).
const OPEN_WEBUI_FIELDS: &[&str] = &["jwtSecret", "jwtAudience", "jwtIssuer"];
/// Every field of `metrics`.
const METRICS_FIELDS: &[&str] = &["perUser", "maxUsers", "key"];

/// Reads the settings from the file's top level; `config_file` anchors a relative `usageLog`.
pub(super) fn parse_policy(
    root: &Map<String, Value>,
    config_file: &str,
) -> Result<PolicySettings, FieldError> {
    let (jwt_secret, jwt_audience, jwt_issuer) = parse_open_webui(root.get("openWebUI"))?;
    let usage_log = parse_usage_log(root.get("usageLog"), config_file)?;
    let usage_log_max_bytes = match root.get("usageLogMaxBytes") {
        None | Some(Value::Null) => DEFAULT_USAGE_LOG_MAX_BYTES,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 4096 => n,
            _ => {
                return Err(FieldError::new(
                    "usageLogMaxBytes",
                    "expected a whole number of bytes, at least 4096",
                ))
            }
        },
    };
    let (metrics_per_user, metrics_max_users, metrics_key) = parse_metrics(root.get("metrics"))?;
    let limits_max_tracked = match root.get("limitsMaxTracked") {
        None | Some(Value::Null) => DEFAULT_MAX_TRACKED,
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n >= 1 => n,
            _ => {
                return Err(FieldError::new(
                    "limitsMaxTracked",
                    format!(
                        "expected a whole number of identities, at least 1 (default {}), got {}",
                        DEFAULT_MAX_TRACKED, v
                    ),
                ))
            }
        },
    };
    let limits = match root.get("limits") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_rules(v).map_err(|e| FieldError::new(e.location, e.message))?,
    };
    // `store` is the newer name (it holds usage totals too, not only limits); both mean one
    // setting, so naming both is a mistake rather than a choice.
    let given = |name: &'static str| root.get(name).filter(|v| !v.is_null()).map(|v| (name, v));
    let limits_store = match (given("store"), given("limitsStore")) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "store",
                "store and limitsStore name the same setting (the shared store); keep one",
            ))
        }
        (None, None) => None,
        (Some((_, Value::String(u))), None) | (None, Some((_, Value::String(u))))
            if u.starts_with("redis://") || u.starts_with("rediss://") =>
        {
            Some(Secret(u.clone()))
        }
        (Some((name, _)), None) | (None, Some((name, _))) => {
            return Err(FieldError::new(
                name,
                "expected a redis:// or rediss:// URL (e.g. \"redis://redis:6379/0\")",
            ))
        }
    };
    check_prepaid_kept(&limits, usage_log.as_deref(), limits_store.is_some())?;
    let limits_store_failure = FailureMode::parse(root.get("limitsStoreFailure"))
        .map_err(|m| FieldError::new("limitsStoreFailure", m))?;
    let whole = |name: &str, default: u64, max: u64| match root.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            FieldError::new(name, format!("expected a whole number from 1 to {}", max))
        }),
    };
    let limits_store_timeout = Duration::from_millis(whole("limitsStoreTimeoutMs", 250, 60_000)?);
    let limits_store_retry = Duration::from_secs(whole("limitsStoreRetrySecs", 5, 3_600)?);
    let task_header = parse_task_header(root.get("taskHeader"))?;
    Ok(PolicySettings {
        jwt_secret,
        jwt_audience,
        jwt_issuer,
        usage_log,
        usage_log_max_bytes,
        metrics_per_user,
        metrics_max_users,
        metrics_key,
        limits_max_tracked,
        limits,
        limits_store,
        limits_store_failure,
        limits_store_timeout,
        limits_store_retry,
        task_header,
        currency: "USD".to_string(),
    })
}

/// `taskHeader`: the header that marks Open WebUI's background tasks (low priority).
fn parse_task_header(v: Option<&Value>) -> Result<String, FieldError> {
    match v {
        None | Some(Value::Null) => Ok("X-OpenWebUI-Task".to_string()),
        Some(Value::String(h)) if crate::http::headers::is_valid_name(h) => Ok(h.clone()),
        Some(_) => Err(FieldError::new(
            "taskHeader",
            "expected a header name such as \"X-OpenWebUI-Task\"",
        )),
    }
}

/// A prepaid balance (`costTotal`) that a restart forgets would be spent again: it needs a
/// ledger file (read back at start) or the shared store. Fails closed.
fn check_prepaid_kept(
    limits: &[Rule],
    usage_log: Option<&Path>,
    shared_store: bool,
) -> Result<(), FieldError> {
    let remembered = shared_store || usage_log.is_some_and(|p| p != Path::new(STDOUT_LEDGER));
    if remembered || !limits.iter().any(|r| r.limit(Limit::CostTotal).is_some()) {
        return Ok(());
    }
    Err(FieldError::new(
        "limits",
        "costTotal (a prepaid budget that never resets) needs usageLog (a file, read back at start) or store (Redis); without either a restart would forget what was spent",
    ))
}

/// The JWT secret, audience and issuer of `openWebUI`.
type OpenWebUi = (Option<Secret>, Option<String>, Option<String>);

/// `"openWebUI": {"jwtSecret": ..., "jwtAudience": ..., "jwtIssuer": ...}`: the secret that
/// signs Open WebUI's tokens and the claims they must carry.
fn parse_open_webui(v: Option<&Value>) -> Result<OpenWebUi, FieldError> {
    Ok(match v {
        None | Some(Value::Null) => (None, None, None),
        Some(Value::Object(m)) => {
            check_fields(m, OPEN_WEBUI_FIELDS).map_err(under("openWebUI"))?;
            let text = |name: &str, example: &str| match m.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(v) => Err(FieldError::new(
                    format!("openWebUI.{}", name),
                    format!(
                        "expected a non-empty string (e.g. {}), got {}",
                        example,
                        match v {
                            Value::String(_) => "an empty string",
                            v => type_name(v),
                        }
                    ),
                )),
            };
            let secret = text("jwtSecret", "\"${OWUI_JWT_SECRET}\"")?.map(Secret);
            let audience = text("jwtAudience", "\"modelmux\"")?;
            let issuer = text("jwtIssuer", "\"open-webui\"")?;
            // A claim check without a secret would be silently skipped: say so instead.
            if secret.is_none() && (audience.is_some() || issuer.is_some()) {
                return Err(FieldError::new(
                    "openWebUI",
                    "jwtAudience and jwtIssuer need jwtSecret (tokens are not checked without it)",
                ));
            }
            (secret, audience, issuer)
        }
        Some(v) => {
            return Err(FieldError::new(
                "openWebUI",
                format!("expected {{\"jwtSecret\": \"...\"}}, got {}", type_name(v)),
            ))
        }
    })
}

/// `"metrics": {"perUser": true, "maxUsers": 1000, "key": "${METRICS_KEY}"}`. Every field is
/// checked: these settings decide who sees personal data.
fn parse_metrics(v: Option<&Value>) -> Result<(bool, usize, Option<Secret>), FieldError> {
    let m = match v {
        None | Some(Value::Null) => return Ok((false, DEFAULT_METRICS_MAX_USERS, None)),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(FieldError::new(
                "metrics",
                format!("expected {{\"perUser\": true}}, got {}", type_name(v)),
            ))
        }
    };
    check_fields(m, METRICS_FIELDS).map_err(under("metrics"))?;
    let per_user = match m.get("perUser") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FieldError::new(
                "metrics.perUser",
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    let max_users = match m.get("maxUsers") {
        None | Some(Value::Null) => DEFAULT_METRICS_MAX_USERS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            _ => {
                return Err(FieldError::new(
                    "metrics.maxUsers",
                    format!(
                        "expected a whole number from 1 to 100000 (default {}), got {}",
                        DEFAULT_METRICS_MAX_USERS, v
                    ),
                ))
            }
        },
    };
    let key = match m.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() >= 8 => Some(Secret(s.clone())),
        Some(v) => {
            return Err(FieldError::new(
                "metrics.key",
                format!(
                "expected a string of at least 8 characters (e.g. \"${{METRICS_KEY}}\"), got {}",
                type_name(v)
            ),
            ))
        }
    };
    Ok((per_user, max_users, key))
}

/// `"usageLog": "usage.jsonl"`, resolved against the config file's folder.
pub(super) fn parse_usage_log(
    v: Option<&Value>,
    config_file: &str,
) -> Result<Option<PathBuf>, FieldError> {
    Ok(match v {
        None | Some(Value::Null) => None,
        // The ledger on stdout, for a log shipper; not a file, so not resolved.
        Some(Value::String(s)) if s == STDOUT_LEDGER => Some(PathBuf::from(STDOUT_LEDGER)),
        Some(Value::String(s)) if !s.is_empty() => Some(super::beside(config_file, s)),
        Some(v) => {
            return Err(FieldError::new(
                "usageLog",
                format!(
                    "expected a file path such as \"usage.jsonl\", got {}",
                    type_name(v)
                ),
            ))
        }
    })
}

/// How many buckets the local store holds at once unless `"limitsMaxTracked"` says otherwise.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// What to do when the limits store cannot be reached (`"limitsStoreFailure"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Admit without limits while the store is down (the default): an outage of the
    /// accounting side should not become an outage of the service.
    #[default]
    Open,
    /// Refuse with 503 while the store is down: for budgets that must never be overspent.
    Closed,
}

impl FailureMode {
    /// Reads `"limitsStoreFailure"`: absent or null is `open`.
    pub fn parse(v: Option<&Value>) -> Result<FailureMode, String> {
        match v {
            None | Some(Value::Null) => Ok(FailureMode::Open),
            Some(Value::String(s)) if s == "open" => Ok(FailureMode::Open),
            Some(Value::String(s)) if s == "closed" => Ok(FailureMode::Closed),
            Some(other) => Err(format!("expected \"open\" or \"closed\", got {}", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PolicySettings, String> {
        let v: Value = serde_json::from_str(text).unwrap();
        parse_policy(v.as_object().unwrap(), "/etc/c.json")
            .map_err(|e| format!("{}: {}", e.location, e.message))
    }

    #[test]
    fn token_checks_and_store_timings_are_strict() {
        let s =
            parse(r#"{"openWebUI":{"jwtSecret":"s","jwtAudience":"mm","jwtIssuer":"i"}}"#).unwrap();
        assert_eq!(
            (s.jwt_audience.as_deref(), s.jwt_issuer.as_deref()),
            (Some("mm"), Some("i"))
        );
        assert_eq!(s.limits_store_timeout, Duration::from_millis(250));
        assert_eq!(s.limits_store_retry, Duration::from_secs(5));
        for name in ["store", "limitsStore"] {
            let s = parse(&format!(r#"{{"{}":"redis://r:6379/0"}}"#, name)).unwrap();
            assert_eq!(
                s.limits_store,
                Some(Secret("redis://r:6379/0".into())),
                "{}",
                name
            );
        }
        let s = parse(r#"{"limitsStoreTimeoutMs":50,"limitsStoreRetrySecs":1}"#).unwrap();
        assert_eq!(
            (s.limits_store_timeout, s.limits_store_retry),
            (Duration::from_millis(50), Duration::from_secs(1))
        );
        for (text, error) in [
            (
                r#"{"openWebUI":{"jwtSecret":"s","jwtAudience":["mm"]}}"#,
                "openWebUI.jwtAudience: expected a non-empty string (e.g. \"modelmux\"), got an array",
            ),
            (
                r#"{"openWebUI":{"jwtSecret":"s","jwtIssuer":""}}"#,
                "openWebUI.jwtIssuer: expected a non-empty string (e.g. \"open-webui\"), got an empty string",
            ),
            (
                r#"{"openWebUI":{"jwtSecret":"s","jwtAud":"mm"}}"#,
                "openWebUI.jwtAud: unknown field; expected jwtSecret, jwtAudience or jwtIssuer",
            ),
            (
                r#"{"openWebUI":{"jwtAudience":"mm"}}"#,
                "openWebUI: jwtAudience and jwtIssuer need jwtSecret (tokens are not checked without it)",
            ),
            (
                r#"{"limitsStoreTimeoutMs":0}"#,
                "limitsStoreTimeoutMs: expected a whole number from 1 to 60000",
            ),
            (
                r#"{"limitsStoreTimeoutMs":"250"}"#,
                "limitsStoreTimeoutMs: expected a whole number from 1 to 60000",
            ),
            (
                r#"{"limitsStoreRetrySecs":0.5}"#,
                "limitsStoreRetrySecs: expected a whole number from 1 to 3600",
            ),
            (
                r#"{"store":"redis://a/0","limitsStore":"redis://b/0"}"#,
                "store: store and limitsStore name the same setting (the shared store); keep one",
            ),
            (
                r#"{"store":"http://a/0"}"#,
                "store: expected a redis:// or rediss:// URL (e.g. \"redis://redis:6379/0\")",
            ),
            (
                r#"{"limitsStore":5}"#,
                "limitsStore: expected a redis:// or rediss:// URL (e.g. \"redis://redis:6379/0\")",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), error, "{}", text);
        }
    }
}
