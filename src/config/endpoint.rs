//! One public model: its own settings and the parse of its config object.

use super::backends::{clean_key, parse_backends, validate_url, Backend};
use super::json::{opt_string, string_list, type_name, FieldError};
use super::settings::{parse_timeouts, Timeouts};
use super::Defaults;
use crate::tls::TlsPolicy;
use serde_json::{Map, Value};
use std::time::Duration;

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

pub(super) fn parse_endpoint(
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
                let reserved = crate::upstream::is_hop_by_hop(k)
                    || k.eq_ignore_ascii_case("authorization")
                    || k.eq_ignore_ascii_case("expect");
                if reserved {
                    return Err((
                        format!("headers.{}", k),
                        "this header is set by modelmux (framing, hop-by-hop or Authorization) and cannot be configured".to_string(),
                    ));
                }
                if !valid_header_name(k) || v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
                {
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

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
