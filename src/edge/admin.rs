//! The proxy's own endpoints: `/health`, `/models`, `/debug`, `/reload`.

use crate::backend::balance::BackendView;
use crate::backend::catalog;
use crate::backend::live::{ConfigStore, Live};
use crate::config::{Endpoint, MessagesApi, Wildcard};
use crate::http::api_error::ApiError;
use crate::policy::identity::auth::Caller;
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
        .map(|e| {
            // A wildcard's `{model}` stands for each model it serves: `*` here, not the raw
            // template.
            let name = match &e.wildcard {
                Some(_) => e.display_name.replace("{model}", "*"),
                None => e.display_name.clone(),
            };
            json!({"id": e.id, "displayName": name})
        })
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
                    let probe = view.as_ref().and_then(|v| v.probe.as_ref());
                    json!({
                        "backend": redact::host(&backend.url),
                        "weight": backend.weight,
                        "state": view.as_ref().map(backend_state),
                        "inFlight": view.as_ref().map(|v| v.in_flight),
                        "consecutiveFailures": view.as_ref().map(|v| v.consecutive_failures),
                        "coolingDown": view.as_ref().map(|v| v.cooldown_left.is_some()),
                        "cooldownLeftSecs": view.as_ref().and_then(|v| v.cooldown_left).map(|d| d.as_secs_f64()),
                        "heldOff": view.as_ref().map(|v| v.held_left.is_some()),
                        "holdOffLeftSecs": view.as_ref().and_then(|v| v.held_left).map(|d| d.as_secs_f64()),
                        "probed": e.probe_interval.is_some() || e.wildcard.as_ref().is_some_and(|w| w.discover),
                        "lastProbeAt": probe.map(|p| p.at),
                        "lastProbeOk": probe.map(|p| p.up),
                        "lastProbeError": probe.and_then(|p| p.error.as_deref()),
                    })
                })
                .collect();
            by_model.insert(e.id.clone(), Value::Array(list));
        }
        v["backends"] = Value::Object(by_model);
    }
    v.to_string().into_bytes()
}

/// `up`, `down` (its last health probe failed), `held` (it answered 429 or 503 with
/// `Retry-After`; never selected until that passes) or `cooling` (passive cool-down after failures).
fn backend_state(v: &BackendView) -> &'static str {
    if v.probe.as_ref().is_some_and(|p| !p.up) {
        "down"
    } else if v.held_left.is_some() {
        "held"
    } else if v.cooldown_left.is_some() {
        "cooling"
    } else {
        "up"
    }
}

/// Prometheus lines for every backend's state: `modelmux_backend_up` (0 while down or cooling),
/// the time of its last probe, and how many models each wildcard discovered.
pub fn backend_metrics(live: &Live) -> String {
    use std::fmt::Write;
    let mut up = String::new();
    let mut probed = String::new();
    let mut held = String::new();
    for (m, e) in live.config.endpoints.iter().enumerate() {
        for (b, backend) in e.backends.iter().enumerate() {
            let Some(view) = live.balancer.view((m, b)) else {
                continue;
            };
            let labels = format!(
                "model=\"{}\",backend=\"{}\"",
                esc(&e.id),
                esc(redact::host(&backend.url))
            );
            let _ = writeln!(
                up,
                "modelmux_backend_up{{{}}} {}",
                labels,
                u8::from(backend_state(&view) == "up")
            );
            let _ = writeln!(
                held,
                "modelmux_backend_hold_off_seconds{{{}}} {}",
                labels,
                view.held_left.map_or(0.0, |d| d.as_secs_f64())
            );
            if let Some(p) = &view.probe {
                let _ = writeln!(
                    probed,
                    "modelmux_backend_last_probe_timestamp_seconds{{{}}} {}",
                    labels, p.at
                );
            }
        }
    }
    let mut out = String::new();
    out.push_str("# HELP modelmux_backend_up 1 when the backend is selectable, 0 while its health probe fails, it is held off after a Retry-After or it cools down after failures.\n# TYPE modelmux_backend_up gauge\n");
    out.push_str(&up);
    out.push_str("# HELP modelmux_backend_hold_off_seconds Seconds left in the hold-off the backend asked for with Retry-After on a 429 or 503 (0 when none).\n# TYPE modelmux_backend_hold_off_seconds gauge\n");
    out.push_str(&held);
    out.push_str("# HELP modelmux_backend_last_probe_timestamp_seconds Unix time of the backend's last health probe.\n# TYPE modelmux_backend_last_probe_timestamp_seconds gauge\n");
    out.push_str(&probed);
    out.push_str("# HELP modelmux_discovered_models Models a wildcard endpoint discovered on its backends (after filters).\n# TYPE modelmux_discovered_models gauge\n");
    live.catalog.read(|targets| {
        for e in live
            .config
            .endpoints
            .iter()
            .filter(|e| e.wildcard.as_ref().is_some_and(|w| w.discover))
        {
            let _ = writeln!(
                out,
                "modelmux_discovered_models{{model=\"{}\"}} {}",
                esc(&e.id),
                catalog::discovered(e, targets).len()
            );
        }
    });
    out
}

/// Escapes a label value as the exposition format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// One model in Anthropic's shape (`created_at` is when the config was loaded).
fn anthropic_entry(live: &Live, id: &str, display_name: &str) -> Value {
    let t = crate::clock::rfc3339(live.loaded_at as i64 * 1000);
    json!({
        "type": "model",
        "id": id,
        "display_name": display_name,
        "created_at": format!("{}Z", &t[..19]),
    })
}

/// `GET /models`: configured models and the last discovered lists (never waits on a backend),
/// as OpenAI's list object or, for a client that sent `anthropic-version` (`anthropic`),
/// Anthropic's, all on one page. Aliases are names a request may use, not models: not listed.
pub fn models(live: &Live, caller: &Caller, anthropic: bool) -> Vec<u8> {
    let listed: Vec<_> = live
        .models()
        .into_iter()
        .filter(|m| caller.may_use(&m.id))
        .collect();
    let v = if anthropic {
        let data: Vec<Value> = listed
            .iter()
            .map(|m| anthropic_entry(live, &m.id, &m.display_name))
            .collect();
        json!({
            "data": data,
            "has_more": false,
            "first_id": listed.first().map(|m| &m.id),
            "last_id": listed.last().map(|m| &m.id),
        })
    } else {
        let data: Vec<Value> = listed
            .iter()
            .map(|m| model_entry(live, &m.id, &m.display_name))
            .collect();
        json!({"object": "list", "data": data})
    };
    v.to_string().into_bytes()
}

/// `GET /models/{id}`: one entry of `/models` (in Anthropic's shape for `anthropic`) or 404.
pub fn model(live: &Live, id: &str, caller: &Caller, anthropic: bool) -> Result<Vec<u8>, ApiError> {
    let m = live
        .models()
        .into_iter()
        .find(|m| m.id == id && caller.may_use(&m.id))
        .ok_or_else(|| ApiError::model_not_found(id))?;
    let v = match anthropic {
        true => anthropic_entry(live, &m.id, &m.display_name),
        false => model_entry(live, &m.id, &m.display_name),
    };
    Ok(v.to_string().into_bytes())
}

/// `GET /usage?since=2026-11-01&until=2026-12-01&by=user,model&user=u`: usage totals.
pub fn usage(policy: &Policy, live: &Live, query: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let param = |name: &str| query.and_then(|q| crate::stream::body::query_param(q, name));
    let (since, until, by, user) = (param("since"), param("until"), param("by"), param("user"));
    let q = crate::policy::query(
        since.as_deref(),
        until.as_deref(),
        by.as_deref(),
        user.as_deref(),
    )
    .map_err(|m| ApiError::invalid_request(m).with_code("invalid_query"))?;
    let mut report = policy.report(&q).map_err(|e| {
        log::warn!("/usage: {}", e);
        ApiError::internal("The usage ledger could not be read; see the proxy's log.")
    })?;
    // One user's answer also says what is left of each quota rule that limits them.
    if let Some(u) = user.as_deref() {
        report["limits"] = policy.budgets(&live.config.policy, u);
    }
    Ok(report.to_string().into_bytes())
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
                    "maxConcurrent": b.max_concurrent,
                    "apiKeyHeader": b.key_header.name(),
                    "proxy": b.via_proxy.as_deref().map(redact::url),
                })).collect::<Vec<_>>(),
                "fallbacks": e.fallbacks,
                "probeIntervalSecs": e.probe_interval.map(|d| d.as_secs_f64()),
                "discovery": e.wildcard.as_ref().map(|w| discovery_view(live, e, w)),
                "maxQueueWaitSecs": e.max_queue_wait.as_secs_f64(),
                "forwardUserHeaders": e.forward_user_headers,
                "injectStreamUsage": e.inject_stream_usage,
                "messagesApi": match e.messages_api {
                    MessagesApi::Native => "native",
                    MessagesApi::Translate => "translate",
                },
                "aliases": e.aliases,
                "apiKeyHeader": first.map(|b| b.key_header.name()),
            }),
        );
    }
    let mut view = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "configPath": shared.path,
        "loadedAt": live.loaded_at,
        "proxyKeys": live.config.proxy_keys.len(),
        "defaultModel": live.config.default_model,
        "retry": {"maxAttempts": live.config.retry.max_attempts, "backoffMs": live.config.retry.backoff.as_millis() as u64},
        "health": {"failureThreshold": live.config.health.failure_threshold, "cooldownSecs": live.config.health.cooldown.as_secs_f64(), "maxHoldOffSecs": live.config.health.max_hold_off.as_secs_f64()},
        "endpoints": endpoints,
    });
    // What was read beside the models: client keys by name, identity, ledger, quotas, store.
    if let Value::Object(m) = &mut view {
        m.extend(crate::config::policy_view(&live.config));
    }
    view.to_string().into_bytes()
}

/// A wildcard's settings and, per backend, its last list and whether it is stale.
fn discovery_view(live: &Live, e: &Endpoint, w: &Wildcard) -> Value {
    live.catalog.read(|targets| {
        let backends: Vec<Value> = e
            .backends
            .iter()
            .map(|b| {
                let t = targets.get(&(e.id.clone(), b.url.clone()));
                json!({
                    "url": redact::url(&b.url),
                    "models": t.and_then(|t| t.models.as_ref()),
                    "listedAt": t.and_then(|t| t.listed_at),
                    "lastProbeAt": t.and_then(|t| t.probed_at),
                    "stale": t.is_some_and(|t| t.error.is_some()),
                    "lastError": t.and_then(|t| t.error.as_deref()),
                    "failuresInARow": t.map(|t| t.failures),
                })
            })
            .collect();
        json!({
            "prefix": w.prefix,
            "discover": w.discover,
            "include": w.include,
            "exclude": w.exclude,
            "intervalSecs": w.interval.as_secs_f64(),
            "models": catalog::discovered(e, targets).iter().map(|m| w.public_id(m)).collect::<Vec<_>>(),
            "backends": backends,
        })
    })
}

/// `POST /reload`: always the configured file; a `config` parameter is refused.
pub fn reload(shared: &ConfigStore, query: Option<&str>) -> Result<Vec<u8>, ApiError> {
    if query
        .and_then(|q| crate::stream::body::query_param(q, "config"))
        .is_some()
    {
        return Err(ApiError::invalid_request(
            "The `config` parameter is not supported: modelmux always reloads the file it was started with.",
        )
        .with_param("config"));
    }
    match shared.reload() {
        Ok(live) => Ok(json!({
            "status": "ok",
            "message": "config reloaded",
            "endpoints": live.config.endpoints.len(),
        })
        .to_string()
        .into_bytes()),
        Err(e) => {
            log::warn!("reload failed, keeping the old config: {}", e);
            Err(
                ApiError::invalid_request(format!("Reload failed, old config kept: {}", e))
                    .with_code("invalid_config"),
            )
        }
    }
}
