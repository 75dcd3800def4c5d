//! The proxy's own endpoints: `/health`, `/models`, `/debug`, `/reload`.

use crate::api_error::ApiError;
use crate::auth::Caller;
use crate::live::{ConfigStore, Live};
use crate::policy::Policy;
use crate::redact;
use serde_json::{json, Value};

/// `GET /health`: cheap, never probes a backend. Keeps the original proxy's fields; with
/// `?backends=1` also each backend's passive-health state (no keys).
pub fn health(live: &Live, backends: bool) -> Vec<u8> {
    let models: Vec<Value> = live
        .config
        .endpoints
        .iter()
        .map(|e| json!({"id": e.id, "displayName": e.display_name}))
        .collect();
    let mut v = json!({
        "status": "ok",
        "endpoints": live.config.endpoints.len(),
        "models": models,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if backends {
        let mut by_model = serde_json::Map::new();
        for (m, e) in live.config.endpoints.iter().enumerate() {
            let list: Vec<Value> = e
                .backends
                .iter()
                .enumerate()
                .map(|(b, backend)| {
                    let view = live.balancer.view((m, b));
                    json!({
                        "backend": redact::host(&backend.url),
                        "weight": backend.weight,
                        "inFlight": view.as_ref().map(|v| v.in_flight),
                        "consecutiveFailures": view.as_ref().map(|v| v.consecutive_failures),
                        "coolingDown": view.as_ref().map(|v| v.cooldown_left.is_some()),
                        "cooldownLeftSecs": view.as_ref().and_then(|v| v.cooldown_left).map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            by_model.insert(e.id.clone(), Value::Array(list));
        }
        v["backends"] = Value::Object(by_model);
    }
    v.to_string().into_bytes()
}

fn model_entry(live: &Live, id: &str, display_name: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": live.loaded_at,
        "owned_by": display_name,
        "name": display_name,
    })
}

/// `GET /models`: the OpenAI list object.
pub fn models(live: &Live, caller: &Caller) -> Vec<u8> {
    let data: Vec<Value> = live
        .config
        .endpoints
        .iter()
        .filter(|e| caller.may_use(&e.id))
        .map(|e| model_entry(live, &e.id, &e.display_name))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

/// `GET /models/{id}`: one entry or 404.
pub fn model(live: &Live, id: &str, caller: &Caller) -> Result<Vec<u8>, ApiError> {
    let e = live
        .config
        .endpoint(id)
        .filter(|e| caller.may_use(&e.id))
        .ok_or_else(|| ApiError::model_not_found(id))?;
    Ok(model_entry(live, &e.id, &e.display_name)
        .to_string()
        .into_bytes())
}

/// `GET /usage?since=2026-11-01&until=2026-12-01&by=user,model&user=u`: usage totals.
pub fn usage(policy: &Policy, query: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let param = |name: &str| query.and_then(|q| crate::body::query_param(q, name));
    let (since, until, by, user) = (param("since"), param("until"), param("by"), param("user"));
    let q = crate::policy::query(
        since.as_deref(),
        until.as_deref(),
        by.as_deref(),
        user.as_deref(),
    )
    .map_err(|m| ApiError::invalid_request(m).with_code("invalid_query"))?;
    Ok(policy.report(&q).to_string().into_bytes())
}

/// `GET /debug`: the effective config with keys masked.
pub fn debug(shared: &ConfigStore, live: &Live) -> Vec<u8> {
    let mut endpoints = serde_json::Map::new();
    for e in &live.config.endpoints {
        let headers: serde_json::Map<String, Value> = e
            .headers
            .iter()
            .map(|(n, _)| (n.clone(), Value::String("****".into())))
            .collect();
        // The file's endpoint-level url, key and model name are its first backend's: exactly
        // that backend for a seed config; `backends` below lists every one.
        let first = e.backends.first();
        endpoints.insert(
            e.id.clone(),
            json!({
                "displayName": e.display_name,
                "url": first.map(|b| redact::url(&b.url)),
                "apiKey": first.map(|b| redact::api_key(&b.api_key)),
                "actualModelName": first.map(|b| &b.actual_model_name),
                "timeouts": {"connectSecs": e.timeouts.connect.as_secs_f64(), "idleSecs": e.timeouts.idle.as_secs_f64()},
                "headers": headers,
                "dropFields": e.drop_fields,
                "sseKeepaliveSecs": e.sse_keepalive.map(|d| d.as_secs_f64()),
                "caFile": e.tls.ca_file,
                "insecureSkipVerify": e.tls.insecure,
                "backends": e.backends.iter().map(|b| json!({
                    "url": redact::url(&b.url),
                    "apiKey": redact::api_key(&b.api_key),
                    "actualModelName": b.actual_model_name,
                    "weight": b.weight,
                    "proxy": b.via_proxy.as_deref().map(redact::url),
                })).collect::<Vec<_>>(),
                "fallbacks": e.fallbacks,
            }),
        );
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "configPath": shared.path,
        "loadedAt": live.loaded_at,
        "proxyKeys": live.config.proxy_keys.len(),
        "defaultModel": live.config.default_model,
        "retry": {"maxAttempts": live.config.retry.max_attempts, "backoffMs": live.config.retry.backoff.as_millis() as u64},
        "health": {"failureThreshold": live.config.health.failure_threshold, "cooldownSecs": live.config.health.cooldown.as_secs_f64()},
        "endpoints": endpoints,
    })
    .to_string()
    .into_bytes()
}

/// `POST /reload`: always the configured file; a `config` parameter is refused.
pub fn reload(shared: &ConfigStore, query: Option<&str>) -> Result<Vec<u8>, ApiError> {
    if query
        .and_then(|q| crate::body::query_param(q, "config"))
        .is_some()
    {
        return Err(ApiError::invalid_request(
            "The `config` parameter is not supported: modelmux always reloads the file it was started with.",
        )
        .with_param("config"));
    }
    match shared.reload() {
        Ok(live) => {
            log::info!(
                "config reloaded from {}: {} models",
                shared.path,
                live.config.endpoints.len()
            );
            Ok(json!({
                "status": "ok",
                "message": "config reloaded",
                "endpoints": live.config.endpoints.len(),
            })
            .to_string()
            .into_bytes())
        }
        Err(e) => {
            log::warn!("reload failed, keeping the old config: {}", e);
            Err(
                ApiError::invalid_request(format!("Reload failed, old config kept: {}", e))
                    .with_code("invalid_config"),
            )
        }
    }
}
