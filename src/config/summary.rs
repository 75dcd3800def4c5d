//! What was read, for the `--check-config` report and `/debug`: every model, each of its
//! backends with its weight and cap, its fallbacks, then the client keys, identity, the usage
//! ledger, the quota rules and the limits store. URLs without credentials, keys only by name or
//! as set or not: never a secret.

use super::{Backend, Config, Endpoint, PolicySettings};
use super::{FailureMode, Priority, ProxyKey};
use crate::redact;
use serde_json::{json, Map, Value};

/// The report for a valid config loaded from `path`, warnings first, one line each.
pub fn summary(path: &str, config: &Config) -> String {
    let mut out = String::new();
    for w in &config.warnings {
        out.push_str(&format!("warning: {}\n", w));
    }
    out.push_str(&format!(
        "{}: OK, {}\n",
        path,
        count(config.endpoints.len(), "model", "models")
    ));
    for e in &config.endpoints {
        out.push_str(&endpoint_line(e));
        for b in &e.backends {
            out.push_str(&backend_line(e, b));
        }
    }
    if config.proxy_keys.is_empty() {
        out.push_str("client keys: none: anyone who reaches the port can use every model\n");
    } else {
        out.push_str(&format!(
            "client keys: {}\n",
            count(config.proxy_keys.len(), "key", "keys")
        ));
        for k in &config.proxy_keys {
            out.push_str(&format!("  {}\n", key_words(k)));
        }
    }
    out.push_str(&format!("identity: {}\n", identity_words(config)));
    let p = &config.policy;
    out.push_str(&format!("usage ledger: {}\n", ledger_words(p)));
    if let Some(line) = prices_words(config) {
        out.push_str(&format!("prices: {}\n", line));
    }
    if p.limits.is_empty() {
        out.push_str("limits: none\n");
    } else {
        out.push_str("limits:\n");
        for line in limits_words(p) {
            out.push_str(&format!("  {}\n", line));
        }
    }
    if !p.limits.is_empty() || p.limits_store.is_some() {
        out.push_str(&format!("limits store: {}\n", store_words(p)));
    }
    out.push_str(&format!(
        "metrics.perUser: {}\n",
        if p.metrics_per_user { "on" } else { "off" }
    ));
    out
}

/// `USD; priced: gpt-4o, claude; unpriced: local; file prices.json (2 models)`, when any
/// price is configured (a wildcard is priced per request: listed as such).
fn prices_words(config: &Config) -> Option<String> {
    let prices = &config.prices;
    let inline = config
        .endpoints
        .iter()
        .any(|e| e.backends.iter().any(|b| b.pricing.is_some()));
    if !inline && prices.is_empty() {
        return None;
    }
    let (mut priced, mut unpriced, mut per_request) = (Vec::new(), Vec::new(), Vec::new());
    for e in &config.endpoints {
        let id = e.id.as_str();
        if e.wildcard.is_some() {
            per_request.push(id);
        } else if e.backends.iter().all(|b| {
            prices
                .lookup(b.pricing.as_ref(), &b.actual_model_name)
                .is_some()
        }) {
            priced.push(id);
        } else {
            unpriced.push(id);
        }
    }
    let mut parts = vec![prices.currency.clone()];
    for (what, ids) in [
        ("priced", &priced),
        ("unpriced (some backend has no price)", &unpriced),
        ("priced per request", &per_request),
    ] {
        if !ids.is_empty() {
            parts.push(format!("{}: {}", what, ids.join(", ")));
        }
    }
    if let Some(f) = &prices.file {
        parts.push(format!(
            "file {} ({})",
            f.path,
            count(f.len(), "model", "models")
        ));
    }
    Some(parts.join("; "))
}

/// `web: models gpt-4o, ollama/*; trusts user headers; priority high`; never the key.
fn key_words(k: &ProxyKey) -> String {
    let models = match &k.models {
        None => "every model".to_string(),
        Some(m) if m.is_empty() => "no model".to_string(),
        Some(m) => format!("models {}", m.join(", ")),
    };
    format!(
        "{}: {}{}; priority {}",
        k.name,
        models,
        if k.trust_user_headers {
            "; trusts user headers"
        } else {
            ""
        },
        priority_name(k.priority)
    )
}

/// `low`, `normal` or `high`, as the config writes it.
fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High => "high",
    }
}

/// Where user identities come from: the signed Open WebUI token, and the keys whose plain
/// `X-OpenWebUI-User-*` headers are believed.
fn identity_words(config: &Config) -> String {
    let trusted = trusted_keys(config);
    format!(
        "Open WebUI JWT {}; plain user headers {}",
        if config.policy.jwt_secret.is_some() {
            "on (openWebUI.jwtSecret)"
        } else {
            "off"
        },
        if trusted.is_empty() {
            "trusted from no key".to_string()
        } else {
            format!("trusted from keys {}", trusted.join(", "))
        }
    )
}

/// Names of the keys with `trustUserHeaders`.
fn trusted_keys(config: &Config) -> Vec<&str> {
    config
        .proxy_keys
        .iter()
        .filter(|k| k.trust_user_headers)
        .map(|k| k.name.as_str())
        .collect()
}

/// `/srv/usage.jsonl, rotates past 67108864 bytes` or `off`.
fn ledger_words(p: &PolicySettings) -> String {
    match &p.usage_log {
        Some(path) => format!(
            "{}, rotates past {} bytes",
            path.display(),
            p.usage_log_max_bytes
        ),
        None => "off".to_string(),
    }
}

/// Each quota rule in one line, worded as its 429 words it.
fn limits_words(p: &PolicySettings) -> Vec<String> {
    p.limits
        .iter()
        .enumerate()
        .map(|(i, r)| r.in_words(i, &p.currency))
        .collect()
}

/// The store URL without its password (not connected here), and what happens while it is down.
fn store_words(p: &PolicySettings) -> String {
    match store_url(p) {
        Some(url) => format!(
            "{} (the URL is checked; --check-config does not connect), while it is down: {}",
            url,
            match p.limits_store_failure {
                FailureMode::Open => "admit without limits (open)",
                FailureMode::Closed => "refuse with 503 (closed)",
            }
        ),
        None => "local to this process".to_string(),
    }
}

/// The `limitsStore` URL with any password masked.
fn store_url(p: &PolicySettings) -> Option<String> {
    p.limits_store.as_ref().map(|u| redact::url(&u.0))
}

/// `open` or `closed`, as the config writes it.
fn failure_name(f: FailureMode) -> &'static str {
    match f {
        FailureMode::Open => "open",
        FailureMode::Closed => "closed",
    }
}

/// The same, for `/debug`: client keys by name with their settings, identity, the usage ledger,
/// each quota rule in words, the limits store (masked) and per-user metrics.
pub fn policy_view(config: &Config) -> Map<String, Value> {
    let p = &config.policy;
    let keys: Vec<Value> = config
        .proxy_keys
        .iter()
        .map(|k| {
            json!({
                "name": k.name,
                "models": k.models,
                "trustUserHeaders": k.trust_user_headers,
                "priority": priority_name(k.priority),
            })
        })
        .collect();
    let view = json!({
        "clientKeys": keys,
        "identity": {
            "jwt": p.jwt_secret.is_some(),
            "plainUserHeadersFrom": trusted_keys(config),
        },
        "usageLog": p.usage_log.as_ref().map(|path| json!({
            "path": path.display().to_string(),
            "maxBytes": p.usage_log_max_bytes,
        })),
        "limits": limits_words(p),
        "limitsStore": {
            "url": store_url(p),
            "failure": failure_name(p.limits_store_failure),
        },
        "metrics": {"perUser": p.metrics_per_user},
    });
    match view {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn endpoint_line(e: &Endpoint) -> String {
    let fallbacks = if e.fallbacks.is_empty() {
        String::new()
    } else {
        format!(", then fallbacks {}", e.fallbacks.join(", "))
    };
    let wildcard = match &e.wildcard {
        Some(w) if w.discover => format!(", discovers models every {} s", w.interval.as_secs_f64()),
        Some(w) => format!(", serves every id starting with \"{}\"", w.prefix),
        None => String::new(),
    };
    let probe = match e.probe_interval {
        Some(d) => format!(", health probe every {} s", d.as_secs_f64()),
        None => String::new(),
    };
    let mut settings = format!(", maxQueueWaitSecs {}", e.max_queue_wait.as_secs_f64());
    if e.forward_user_headers {
        settings.push_str(", forwardUserHeaders on");
    }
    if !e.inject_stream_usage {
        settings.push_str(", injectStreamUsage off");
    }
    if let Some(a) = &e.affinity {
        let mut from: Vec<&str> = a.headers.iter().map(String::as_str).collect();
        if a.by_user {
            from.push("the user");
        }
        settings.push_str(&format!(", affinity by {}", from.join(", then ")));
    }
    if e.messages_api == super::MessagesApi::Native {
        settings.push_str(", messagesApi native");
    }
    if !e.aliases.is_empty() {
        settings.push_str(&format!(", aliases {}", e.aliases.join(", ")));
    }
    format!(
        "  {} ({}): {}{}{}{}{}\n",
        e.id,
        e.display_name,
        count(e.backends.len(), "backend", "backends"),
        wildcard,
        probe,
        fallbacks,
        settings
    )
}

fn backend_line(e: &Endpoint, b: &Backend) -> String {
    let model = match &e.wildcard {
        Some(w) => format!("<the id after \"{}\">", w.prefix),
        None => b.actual_model_name.clone(),
    };
    let via = match &b.via_proxy {
        Some(p) => format!(", via proxy {}", redact::url(p)),
        None => String::new(),
    };
    let cap = match b.max_concurrent {
        Some(n) => format!(", maxConcurrent {}", n),
        None => String::new(),
    };
    format!(
        "    {} as {}, weight {}, {}{}{}\n",
        redact::url(&b.url),
        model,
        b.weight,
        match (b.api_key.is_empty(), b.key_header) {
            (true, _) => "no key",
            (false, super::KeyHeader::Bearer) => "key set",
            (false, super::KeyHeader::XApiKey) => "key set (as x-api-key)",
        },
        cap,
        via
    )
}

/// "1 model", "2 models".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", n, if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::{policy_view, summary};
    use crate::config::{parse, Defaults};

    #[test]
    fn every_backend_with_weight_key_status_and_fallbacks() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "http://u:p@proxy:3128".to_string());
        let text = r#"{"endpoints":{
            "big":{"displayName":"Big","apiKey":"sk-secret-inherited-0000","actualModelName":"big-real",
                   "backends":[{"url":"http://a:1","weight":2},
                               {"url":"https://user:pw@b:2/v1","apiKey":"","actualModelName":"big-b"}],
                   "fallbacks":["small"]},
            "small":{"url":"http://c:3","insecureSkipVerify":true}}}"#;
        let config = parse("c.json", text, &Defaults::default(), &env).unwrap();
        assert_eq!(
            summary("c.json", &config),
            "warning: c.json: endpoints.small: insecureSkipVerify is on: the backend's TLS certificate is NOT verified\n\
             c.json: OK, 2 models\n\
             \x20 big (Big): 2 backends, then fallbacks small, maxQueueWaitSecs 30\n\
             \x20   http://a:1 as big-real, weight 2, key set\n\
             \x20   https://****@b:2/v1 as big-b, weight 1, no key, via proxy http://****@proxy:3128\n\
             \x20 small (small): 1 backend, maxQueueWaitSecs 30\n\
             \x20   http://c:3 as small, weight 1, no key\n\
             client keys: none: anyone who reaches the port can use every model\n\
             identity: Open WebUI JWT off; plain user headers trusted from no key\n\
             usage ledger: off\n\
             limits: none\n\
             metrics.perUser: off\n"
        );
        let one = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h"}}}"#,
            &Defaults::default(),
            &|_| None,
        )
        .unwrap();
        assert!(summary("c.json", &one).starts_with("c.json: OK, 1 model\n"));
        let wild = parse(
            "c.json",
            r#"{"endpoints":{"ollama/*":{"url":"http://o","discoverIntervalSecs":60,
                "health":{"probeIntervalSecs":15}}}}"#,
            &Defaults::default(),
            &|_| None,
        )
        .unwrap();
        assert!(summary("c.json", &wild).contains(
            "  ollama/* (ollama/*): 1 backend, discovers models every 60 s, health probe every 15 s, maxQueueWaitSecs 30\n"
        ));
        let claude = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h","apiKey":"sk-ant-0000","apiKeyHeader":"x-api-key",
                "messagesApi":"native","aliases":["claude-*","claude-x"]}}}"#,
            &Defaults::default(),
            &|_| None,
        )
        .unwrap();
        assert!(summary("c.json", &claude).contains(
            "  m (m): 1 backend, maxQueueWaitSecs 30, messagesApi native, aliases claude-*, claude-x\n\
             \x20   http://h as m, weight 1, key set (as x-api-key)\n"
        ));
    }

    #[test]
    fn affinity_is_shown_with_where_its_key_comes_from() {
        let text = r#"{"endpoints":{"a":{"url":"http://a","affinity":true},
            "b":{"url":"http://b","affinity":{"headers":["X-Chat"],"byUser":false}}}}"#;
        let c = parse("c.json", text, &Defaults::default(), &|_| None).unwrap();
        let text = summary("c.json", &c);
        assert!(text.contains(
            "  a (a): 1 backend, maxQueueWaitSecs 30, affinity by X-OpenWebUI-Chat-Id, then X-Claude-Code-Session-Id, then the user\n"
        ), "{}", text);
        assert!(
            text.contains("  b (b): 1 backend, maxQueueWaitSecs 30, affinity by X-Chat\n"),
            "{}",
            text
        );
    }

    /// Issue 17: what was read, beside the models, and never a secret.
    const POLICY: &str = r#"{"endpoints":{
        "big":{"url":"http://a:1","apiKey":"sk-backend-secret-0000",
               "backends":[{"weight":2,"maxConcurrent":4},{"url":"http://b:2"}],
               "maxQueueWaitSecs":5,"forwardUserHeaders":true},
        "small":{"url":"http://c:3","injectStreamUsage":false}},
      "proxyKeys":["mm-plain-key-000000",{"key":"mm-web-key-111111","name":"web",
        "models":["big","ollama/*"],"trustUserHeaders":true,"priority":"high"}],
      "openWebUI":{"jwtSecret":"jwt-secret-value-222"},
      "usageLog":"/srv/usage.jsonl","usageLogMaxBytes":1048576,
      "limits":[{"match":{"user":"*"},"requestsPerMinute":20,"tokensPerDay":200000},
                {"match":{"key":"web","model":"big"},"concurrent":2}],
      "limitsStore":"redis://:redis-pw-333@redis:6379/0","limitsStoreFailure":"closed",
      "metrics":{"perUser":true}}"#;
    const SECRETS: [&str; 5] = [
        "sk-backend-secret-0000",
        "mm-plain-key-000000",
        "mm-web-key-111111",
        "jwt-secret-value-222",
        "redis-pw-333",
    ];

    #[test]
    fn keys_identity_ledger_limits_and_store_are_shown_without_a_secret() {
        let config = parse("c.json", POLICY, &Defaults::default(), &|_| None).unwrap();
        let text = summary("c.json", &config);
        assert_eq!(
            text,
            "c.json: OK, 2 models\n\
             \x20 big (big): 2 backends, maxQueueWaitSecs 5, forwardUserHeaders on\n\
             \x20   http://a:1 as big, weight 2, key set, maxConcurrent 4\n\
             \x20   http://b:2 as big, weight 1, key set\n\
             \x20 small (small): 1 backend, maxQueueWaitSecs 30, injectStreamUsage off\n\
             \x20   http://c:3 as small, weight 1, no key\n\
             client keys: 2 keys\n\
             \x20 key-1: every model; priority normal\n\
             \x20 web: models big, ollama/*; trusts user headers; priority high\n\
             identity: Open WebUI JWT on (openWebUI.jwtSecret); plain user headers trusted from keys web\n\
             usage ledger: /srv/usage.jsonl, rotates past 1048576 bytes\n\
             limits:\n\
             \x20 limits[0] (each user) allows 20 requests per minute, 200000 tokens per day\n\
             \x20 limits[1] (key \"web\", model \"big\") allows 2 concurrent requests\n\
             limits store: redis://****@redis:6379/0 (the URL is checked; --check-config does not connect), while it is down: refuse with 503 (closed)\n\
             metrics.perUser: on\n"
        );
        let view = serde_json::Value::Object(policy_view(&config));
        assert_eq!(
            view,
            serde_json::json!({
                "clientKeys": [
                    {"name": "key-1", "models": null, "trustUserHeaders": false, "priority": "normal"},
                    {"name": "web", "models": ["big", "ollama/*"], "trustUserHeaders": true, "priority": "high"}
                ],
                "identity": {"jwt": true, "plainUserHeadersFrom": ["web"]},
                "usageLog": {"path": "/srv/usage.jsonl", "maxBytes": 1048576},
                "limits": [
                    "limits[0] (each user) allows 20 requests per minute, 200000 tokens per day",
                    "limits[1] (key \"web\", model \"big\") allows 2 concurrent requests"
                ],
                "limitsStore": {"url": "redis://****@redis:6379/0", "failure": "closed"},
                "metrics": {"perUser": true}
            })
        );
        for secret in SECRETS {
            assert!(
                !text.contains(secret) && !view.to_string().contains(secret),
                "{}",
                secret
            );
        }
    }
}
