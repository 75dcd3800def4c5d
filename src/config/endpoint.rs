//! One public model: its own settings and the parse of its config object.

use super::backends::{parse_backends, Backend, Inherited};
use super::discovery::{parse_endpoint_probe, parse_wildcard, Wildcard};
use super::json::{at, check_fields, opt_string, string_list, type_name, under, FieldError};
use super::settings::{parse_timeouts, Timeouts};
use crate::tls::TlsPolicy;
use serde_json::{Map, Value};
use std::time::Duration;

/// One public model and the backends that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The public model id clients send.
    pub id: String,
    /// Shown by chat UIs; defaults to the id.
    pub display_name: String,
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
    /// Where requests for this model go, never empty: the endpoint's own `url`, `apiKey` and
    /// `actualModelName` as a list of one (a seed config), or its `backends`.
    pub backends: Vec<Backend>,
    /// Model ids tried, in order, after all of this model's own backends failed.
    pub fallbacks: Vec<String>,
    /// Set when the id ends in `*`: the endpoint serves every id with its prefix.
    pub wildcard: Option<Wildcard>,
    /// Active health: how often each backend's `GET /v1/models` is probed; `None` is off.
    pub probe_interval: Option<std::time::Duration>,
    /// `forwardUserHeaders`: pass Open WebUI's user headers and token to this backend (off:
    /// they are personal data a backend does not need).
    pub forward_user_headers: bool,
    /// `injectStreamUsage` (default on): ask this backend for the usage chunk on streams and
    /// hide it from clients that did not ask for it.
    pub inject_stream_usage: bool,
    /// `providerName` (default `openai`): `gen_ai.provider.name` on this endpoint's trace spans.
    pub provider_name: String,
    /// `maxQueueWaitSecs` (default 30): how long a request waits for a backend below its cap.
    pub max_queue_wait: Duration,
    /// `defaultMaxTokens`: the completion tokens a request without `max_tokens` reserves.
    pub default_max_tokens: Option<u64>,
    /// `capMaxTokens`: the field (`max_tokens` or `max_completion_tokens`) modelmux adds to a
    /// chat or completions request that names no max tokens field, set to what it reserved
    /// (the Responses API gets `max_output_tokens`); `None`: requests are forwarded as sent.
    pub cap_max_tokens: Option<&'static str>,
    /// `messagesApi`: how `POST /v1/messages` reaches this backend.
    pub messages_api: MessagesApi,
    /// `aliases`: other ids (exact or globs) requests may name this model by; never listed.
    pub aliases: Vec<String>,
}

/// How an Anthropic Messages request reaches a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagesApi {
    /// `"translate"` (default): as a chat completion, the answer turned back into a Message;
    /// works with every OpenAI-compatible backend.
    Translate,
    /// `"native"`: forwarded as it is (model rewritten) to the backend's `/v1/messages`;
    /// keeps every feature, needs a backend that speaks the Messages API.
    Native,
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

/// What every endpoint starts from: the file's top level and the process environment.
pub(super) struct EndpointDefaults<'a> {
    /// Top-level `timeouts` over the process defaults.
    pub timeouts: Timeouts,
    /// CA bundle from `CM_OPEN_WEBUI_PROXY_CA_FILE`.
    pub ca_file: Option<&'a str>,
    /// Environment lookup, for forward proxies.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Top-level `health.probeIntervalSecs`.
    pub probe_interval: Option<Duration>,
    /// Top-level `currency`, the unit of `pricing`.
    pub currency: &'a str,
}

/// Every field of an endpoint object; anything else is an error (see `json::check_fields`).
const KNOWN_FIELDS: &[&str] = &[
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
    "discover",
    "discoverInclude",
    "discoverExclude",
    "discoverIntervalSecs",
    "health",
    "forwardUserHeaders",
    "injectStreamUsage",
    "maxConcurrent",
    "maxQueueWaitSecs",
    "defaultMaxTokens",
    "capMaxTokens",
    "messagesApi",
    "providerName",
    "pricing",
    "aliases",
    "apiKeyHeader",
];

/// Reads one endpoint object. Errors are located from the object; `warnings` gets messages
/// about it without a location (the caller adds it).
pub(super) fn parse_endpoint(
    id: &str,
    obj: &Map<String, Value>,
    defaults: &EndpointDefaults,
    warnings: &mut Vec<String>,
) -> Result<Endpoint, FieldError> {
    check_fields(obj, KNOWN_FIELDS)?;
    let wildcard = parse_wildcard(id, obj)?;
    let inherited = Inherited::read(id, obj, defaults.currency)?;
    let display_name = opt_string(obj, "displayName")?.unwrap_or_else(|| id.to_string());
    let timeouts = match obj.get("timeouts") {
        Some(v) => parse_timeouts(v, defaults.timeouts).map_err(under("timeouts"))?,
        None => defaults.timeouts,
    };
    let headers = parse_headers(obj.get("headers"))?;
    let drop_fields = string_list(obj.get("dropFields"), "strings")
        .map_err(at("dropFields"))?
        .unwrap_or_default();
    let sse_keepalive =
        parse_keepalive(obj.get("sseKeepaliveSecs")).map_err(at("sseKeepaliveSecs"))?;
    let tls = parse_tls(obj, defaults.ca_file)?;
    if tls.insecure {
        warnings.push(
            "insecureSkipVerify is on: the backend's TLS certificate is NOT verified".to_string(),
        );
    }
    let backends = parse_backends(obj, &inherited, defaults.env, defaults.currency)?;
    let fallbacks = string_list(obj.get("fallbacks"), "model ids")
        .map_err(at("fallbacks"))?
        .unwrap_or_default();
    let probe_interval =
        parse_endpoint_probe(obj.get("health"))?.unwrap_or(defaults.probe_interval);
    let forward_user_headers = opt_bool(obj, "forwardUserHeaders")?.unwrap_or(false);
    let inject_stream_usage = opt_bool(obj, "injectStreamUsage")?.unwrap_or(true);
    let provider_name = parse_provider_name(opt_string(obj, "providerName")?)?;
    let max_queue_wait = match obj.get("maxQueueWaitSecs") {
        None | Some(Value::Null) => DEFAULT_MAX_QUEUE_WAIT,
        Some(v) => match v.as_f64() {
            Some(s) if (0.0..=3600.0).contains(&s) => Duration::from_secs_f64(s),
            _ => {
                return Err(FieldError::new(
                    "maxQueueWaitSecs",
                    "expected a number of seconds from 0 to 3600",
                ))
            }
        },
    };
    let default_max_tokens = match obj.get("defaultMaxTokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            FieldError::new(
                "defaultMaxTokens",
                "expected a whole number of tokens, at least 1",
            )
        })?),
    };
    let cap_max_tokens = match obj.get("capMaxTokens") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some("max_tokens"),
        Some(Value::String(s)) if s == "max_tokens" => Some("max_tokens"),
        Some(Value::String(s)) if s == "max_completion_tokens" => Some("max_completion_tokens"),
        Some(v) => {
            return Err(FieldError::new(
                "capMaxTokens",
                format!(
                    "expected true, false, \"max_tokens\" or \"max_completion_tokens\", got {}",
                    v
                ),
            ))
        }
    };
    let messages_api = parse_messages_api(obj.get("messagesApi"))?;
    let aliases = parse_aliases(obj.get("aliases"), wildcard.is_some())?;
    Ok(Endpoint {
        aliases,
        id: id.to_string(),
        cap_max_tokens,
        messages_api,
        max_queue_wait,
        default_max_tokens,
        forward_user_headers,
        inject_stream_usage,
        provider_name,
        display_name,
        timeouts,
        headers,
        drop_fields,
        sse_keepalive,
        tls,
        backends,
        fallbacks,
        wildcard,
        probe_interval,
    })
}

/// An optional `true`/`false` field.
fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(FieldError::new(
            field,
            format!("expected true or false, got {}", type_name(v)),
        )),
    }
}

/// `"headers": {"X-Tenant": "research"}`: extra headers for every upstream request.
fn parse_headers(v: Option<&Value>) -> Result<Vec<(String, String)>, FieldError> {
    let map = match v {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(FieldError::new(
                "headers",
                format!(
                    "expected an object of header name -> value, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    map.iter()
        .map(|(name, value)| {
            check_header(name, value)
                .map(|value| (name.clone(), value.to_string()))
                .map_err(at(&format!("headers.{}", name)))
        })
        .collect()
}

/// One configured header: a string value, a valid name, and not one the proxy sets itself.
fn check_header<'v>(name: &str, value: &'v Value) -> Result<&'v str, String> {
    let value = value
        .as_str()
        .ok_or_else(|| format!("expected a string, got {}", type_name(value)))?;
    // Framing and routing headers are the proxy's to set: a configured one could
    // desynchronize the backend connection.
    if crate::http::headers::is_reserved(name) {
        return Err("this header is set by modelmux (framing, hop-by-hop or Authorization) and cannot be configured".to_string());
    }
    if !crate::http::headers::is_valid_name(name) || !crate::http::headers::is_valid_value(value) {
        return Err("not a valid HTTP header".to_string());
    }
    Ok(value)
}

/// `"sseKeepaliveSecs": 15`; 0 or absent is off.
fn parse_keepalive(v: Option<&Value>) -> Result<Option<Duration>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(0.0) => Ok(None),
            Some(s) if s > 0.0 && s <= 3600.0 => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err("expected a number of seconds between 0 (off) and 3600".to_string()),
        },
    }
}

/// `caFile` (else the process-wide bundle) and `insecureSkipVerify`, checked by building the
/// TLS client config once, so a missing or empty CA file fails the load, not a request.
fn parse_tls(obj: &Map<String, Value>, ca_file: Option<&str>) -> Result<TlsPolicy, FieldError> {
    let insecure = match obj.get("insecureSkipVerify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FieldError::new(
                "insecureSkipVerify",
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    let tls = TlsPolicy {
        ca_file: opt_string(obj, "caFile")?.or_else(|| ca_file.map(str::to_string)),
        insecure,
    };
    crate::tls::client_config(&tls).map_err(at("caFile"))?;
    Ok(tls)
}

/// Default `maxQueueWaitSecs`.
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// `"providerName"`: the `gen_ai.provider.name` of this endpoint's trace spans (default
/// `openai`).
fn parse_provider_name(v: Option<String>) -> Result<String, FieldError> {
    match v {
        None => Ok("openai".to_string()),
        Some(p) if !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(p)
        }
        Some(_) => Err(FieldError::new(
            "providerName",
            "expected a short name without spaces, e.g. \"vllm\" or \"openai\"",
        )),
    }
}

/// `"messagesApi": "translate" | "native"` (default translate).
fn parse_messages_api(v: Option<&Value>) -> Result<MessagesApi, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(MessagesApi::Translate),
        Some(Value::String(s)) if s == "translate" => Ok(MessagesApi::Translate),
        Some(Value::String(s)) if s == "native" => Ok(MessagesApi::Native),
        Some(v) => Err(FieldError::new(
            "messagesApi",
            format!("expected \"native\" or \"translate\", got {}", v),
        )),
    }
}

/// `"aliases": ["claude-sonnet-4-5", "claude-haiku-*"]`: a list of non-empty strings, once
/// each. A wildcard endpoint serves many models, so an alias could not say which one.
pub(super) fn parse_aliases(v: Option<&Value>, wildcard: bool) -> Result<Vec<String>, FieldError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(FieldError::new(
                "aliases",
                format!(
                    "expected an array of model ids or globs (e.g. [\"claude-sonnet-*\"]), got {}",
                    type_name(v)
                ),
            ))
        }
    };
    if wildcard && !items.is_empty() {
        return Err(FieldError::new(
            "aliases",
            "a wildcard endpoint serves many models; put aliases on a model with one id",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = || format!("aliases[{}]", i);
        let alias = match item {
            Value::String(s) if !s.trim().is_empty() => s,
            Value::String(_) => {
                return Err(FieldError::new(
                    at(),
                    "expected a model id or glob, got an empty string",
                ))
            }
            v => {
                return Err(FieldError::new(
                    at(),
                    format!(
                        "expected a model id or glob as a string, got {}",
                        type_name(v)
                    ),
                ))
            }
        };
        if out.contains(alias) {
            return Err(FieldError::new(
                at(),
                format!("\"{}\" is listed twice", alias),
            ));
        }
        out.push(alias.clone());
    }
    Ok(out)
}
