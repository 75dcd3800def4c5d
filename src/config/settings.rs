//! The small numeric settings objects: `timeouts`, `retry` and `health`.

use super::json::{number_fields, FieldError};
use serde_json::Value;
use std::time::Duration;

/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest silence between two upstream bytes (a long prompt's first token can take minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// Active health: how often every backend's `GET /v1/models` is probed; `None` is off
    /// (endpoints may set their own).
    pub probe_interval: Option<Duration>,
    /// The longest a backend's `Retry-After` (on a 429 or 503) keeps it out of selection: one
    /// answer must not shut a model for a day.
    pub max_hold_off: Duration,
}

/// Default `health.maxHoldOffSecs`.
pub const DEFAULT_MAX_HOLD_OFF: Duration = Duration::from_secs(300);

/// `"retry": {"maxAttempts": 3, "backoffMs": 50}`.
pub(super) fn parse_retry(v: Option<&Value>) -> Result<RetryPolicy, FieldError> {
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

/// `"health": {"failureThreshold": 3, "cooldownSecs": 30, "probeIntervalSecs": 30,
/// "maxHoldOffSecs": 300}`.
pub(super) fn parse_health(v: Option<&Value>) -> Result<HealthPolicy, FieldError> {
    let mut h = HealthPolicy {
        failure_threshold: 3,
        cooldown: Duration::from_secs(30),
        probe_interval: None,
        max_hold_off: DEFAULT_MAX_HOLD_OFF,
    };
    let Some(v) = v else { return Ok(h) };
    let n = number_fields(
        v,
        r#"{"failureThreshold": 3, "cooldownSecs": 30, "probeIntervalSecs": 30, "maxHoldOffSecs": 300}"#,
        &[
            ("failureThreshold", 1.0, 1000.0),
            ("cooldownSecs", 0.0, 86_400.0),
            ("probeIntervalSecs", 0.0, 86_400.0),
            ("maxHoldOffSecs", 0.0, 86_400.0),
        ],
    )?;
    if let Some(secs) = n[3] {
        h.max_hold_off = Duration::from_secs_f64(secs);
    }
    if let Some(secs) = n[2] {
        h.probe_interval = super::discovery::probe_interval(secs);
    }
    if let Some(f) = n[0] {
        h.failure_threshold = f as u32;
    }
    if let Some(secs) = n[1] {
        h.cooldown = Duration::from_secs_f64(secs);
    }
    Ok(h)
}

/// `"timeouts": {"connectSecs": 10, "idleSecs": 600}` over `base`, field by field.
pub(super) fn parse_timeouts(v: &Value, base: Timeouts) -> Result<Timeouts, FieldError> {
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
